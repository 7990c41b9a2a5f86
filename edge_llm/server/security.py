"""Who may call the API. Loopback by default; beyond it a Bearer key. The Host header is
checked against an allow-list so a web page elsewhere cannot reach a local server through
DNS rebinding (a request carrying the right key needs no such check: a page cannot know it).

A page open in a browser on the device can still send a "simple" cross-site request (a form
POST, multipart) to 127.0.0.1 with a valid Host: every state-changing request that carries
an Origin header must come from this server's own pages or from server.cors_origins.
Only those configured origins get CORS headers; no one else does."""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from flask import Flask, request

from edge_llm.config import Config, is_loopback
from edge_llm.server.errors import APIError

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
OPEN_PATHS = ("/health",)
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
CORS_HEADERS = {
    "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "600",
}


def _hostname(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def init_app(app: Flask, cfg: Config) -> None:
    """Cross-site requests are checked first, then the key and the Host; answers to the
    configured origins get CORS headers."""
    cors = {o.rstrip("/").lower() for o in cfg.server.cors_origins}
    allowed = _allowed_hosts(cfg)
    key = cfg.server.api_key
    app.before_request(lambda: _check_origin(cors))
    app.after_request(lambda resp: _cors_headers(resp, cors))
    app.before_request(lambda: _guard(key, allowed))


def _allowed_hosts(cfg: Config) -> set[str]:
    allowed = LOOPBACK_NAMES | {h.lower() for h in cfg.server.allowed_hosts}
    if cfg.server.host not in ("0.0.0.0", "::"):
        allowed.add(cfg.server.host.lower().strip("[]"))
    return allowed


def _same_origin(origin: str) -> bool:
    """The page was served by this server: its origin names the Host the request went to."""
    try:
        parts = urlsplit(origin)
    except ValueError:  # "http://[bad": not an origin at all, so not ours (it was a 500)
        return False
    return parts.scheme in ("http", "https") and parts.netloc.lower() == request.host.lower()


def _check_origin(cors: set[str]):
    origin = request.headers.get("Origin")
    if origin is None:
        return None  # not from a browser page (curl, SDKs), or a same-origin GET
    listed = origin.rstrip("/").lower() in cors
    allowed = listed or _same_origin(origin)
    if request.method == "OPTIONS" and listed:
        return "", 204, {"Access-Control-Allow-Origin": origin, "Vary": "Origin", **CORS_HEADERS}
    if request.method not in SAFE_METHODS and not allowed:
        raise APIError(403, f"cross-site request from {origin} refused (server.cors_origins)", "origin_not_allowed")
    return None


def _cors_headers(resp, cors: set[str]):
    origin = request.headers.get("Origin", "")
    if origin.rstrip("/").lower() in cors:
        resp.headers["Access-Control-Allow-Origin"] = origin
        resp.headers["Vary"] = "Origin"
    return resp


def _has_key(key: str) -> bool:
    auth = request.headers.get("Authorization", "")
    return bool(key) and auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].encode(), key.encode())


def _guard(key: str, allowed: set[str]):
    if _has_key(key):
        return None
    if key and not is_loopback(request.remote_addr or "") and not request.path.startswith(OPEN_PATHS):
        raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "invalid_api_key")
    if _hostname(request.host) not in allowed:
        raise APIError(403, f"Host '{request.host}' is not allowed (server.allowed_hosts)", "host_not_allowed")
    return None
