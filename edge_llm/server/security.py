"""Who may call the API. Loopback by default; beyond it a Bearer key. The Host header is
checked against an allow-list so a web page elsewhere cannot reach a local server through
DNS rebinding (a request carrying the right key needs no such check: a page cannot know it)."""

from __future__ import annotations

import hmac

from flask import Flask, request

from edge_llm.config import Config, is_loopback
from edge_llm.server.errors import APIError

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
OPEN_PATHS = ("/health",)


def _hostname(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def init_app(app: Flask, cfg: Config) -> None:
    allowed = LOOPBACK_NAMES | {h.lower() for h in cfg.server.allowed_hosts}
    if cfg.server.host not in ("0.0.0.0", "::"):
        allowed.add(cfg.server.host.lower().strip("[]"))
    key = cfg.server.api_key

    @app.before_request
    def guard():
        auth = request.headers.get("Authorization", "")
        has_key = bool(key) and auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].encode(), key.encode())
        if has_key:
            return None
        if key and not is_loopback(request.remote_addr or "") and not request.path.startswith(OPEN_PATHS):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "invalid_api_key")
        if _hostname(request.host) not in allowed:
            raise APIError(403, f"Host '{request.host}' is not allowed (server.allowed_hosts)", "host_not_allowed")
        return None
