"""Who may call the API when it listens beyond loopback (the app alone, no model needed)."""

import pytest

from edge_llm import config
from edge_llm.runtime import Runtime
from edge_llm.server import create_app


@pytest.fixture()
def lan_app():
    cfg = config.load(env={}, overrides=[("server.host", "0.0.0.0"), ("server.api_key", "s3cret"),
                                         ("server.allowed_hosts", "kiosk.local")])
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
