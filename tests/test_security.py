"""Who may call the API when it listens beyond loopback (the app alone, no model needed)."""

import pytest

from edge_llm import config
from edge_llm.runtime import Runtime
from edge_llm.server import create_app


@pytest.fixture()
def lan_app():
    cfg = config.load(
        env={},
        overrides=[("server.host", "0.0.0.0"), ("server.api_key", "s3cret"), ("server.allowed_hosts", "kiosk.local")],
    )
    return create_app(Runtime(cfg)).test_client()


def call(app, path, remote, host="kiosk.local:8000", key=None):
    headers = {"Host": host}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return app.get(path, headers=headers, environ_base={"REMOTE_ADDR": remote})


def test_remote_clients_need_the_key(lan_app):
    r = call(lan_app, "/v1/models", "192.168.1.20")
    assert r.status_code == 401 and r.json["error"]["code"] == "invalid_api_key"
    assert call(lan_app, "/v1/models", "192.168.1.20", key="wrong").status_code == 401
    assert call(lan_app, "/v1/models", "192.168.1.20", key="s3cret").status_code == 200
    # a client with the key may use any Host name: a rebinding page cannot know the key
    assert call(lan_app, "/v1/models", "192.168.1.20", host="10.0.0.9:8000", key="s3cret").status_code == 200


def test_loopback_kiosk_needs_no_key_but_a_known_host(lan_app):
    assert call(lan_app, "/v1/models", "127.0.0.1", host="localhost:8000").status_code == 200
    r = call(lan_app, "/v1/models", "127.0.0.1", host="attacker.example")
    assert r.status_code == 403 and r.json["error"]["code"] == "host_not_allowed"


def test_health_stays_open_for_probes(lan_app):
    r = call(lan_app, "/health", "192.168.1.20")
    assert r.status_code == 503 and r.json["status"] == "loading"  # no model in this app


def test_cross_site_posts_are_refused_and_nothing_is_created(http, server):
    """A page on another origin, open in the kiosk's browser, must not drive the local API."""
    evil = {"Origin": "http://evil.example"}
    before = len(http.get("/api/summaries").json()["data"])
    r = http.post("/api/summaries?filename=a.txt", b"Hello world. " * 20, {"Content-Type": "text/plain", **evil})
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
    assert len(http.get("/api/summaries").json()["data"]) == before
    chat = {"model": server.model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    assert http.post("/v1/chat/completions", chat, evil).status_code == 403
    assert http.post("/v1/chat/completions", chat, {"Origin": "null"}).status_code == 403
    own = http.post("/v1/chat/completions", chat, {"Origin": f"http://127.0.0.1:{server.daemon.port}"})
    assert own.status_code == 200 and "access-control-allow-origin" not in own.headers  # our own page
    r = http.get("/v1/models", evil)  # reads are harmless and get no CORS headers: the page cannot read them
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_configured_origins_get_cors():
    cfg = config.load(env={}, overrides=[("server.cors_origins", "http://dashboard.local:3000")])
    app = create_app(Runtime(cfg)).test_client()
    h = {"Host": "localhost:8000", "Origin": "http://dashboard.local:3000"}
    pre = app.options("/v1/chat/completions", headers={**h, "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == "http://dashboard.local:3000"
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    r = app.post("/v1/chat/completions", json={"messages": []}, headers=h)
    assert r.status_code != 403 and r.headers["Access-Control-Allow-Origin"] == "http://dashboard.local:3000"
    other = app.post("/v1/chat/completions", json={"messages": []}, headers={**h, "Origin": "http://x.example"})
    assert other.status_code == 403 and "Access-Control-Allow-Origin" not in other.headers


def test_a_malformed_origin_is_refused_not_a_server_error():
    app = create_app(Runtime(config.load(env={}))).test_client()
    h = {"Host": "localhost:8000", "Origin": "http://[bad"}  # urlsplit raises ValueError on it
    assert app.post("/v1/chat/completions", json={"messages": []}, headers=h).status_code == 403
    assert app.get("/v1/models", headers=h).status_code == 200
