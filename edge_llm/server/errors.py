"""Every error leaves the server in OpenAI's shape: {"error": {"message", "type", "code", "param"}}."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from edge_llm.engine.front import EngineBusy

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    431: "invalid_request_error",
    501: "invalid_request_error",
    429: "rate_limit_error",
    503: "unavailable_error",
}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        **extra,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}
        self.extra = extra  # more fields for the error object (e.g. token counts)


def error_body(status: int, message: str, code: str | None = None, param: str | None = None, **extra) -> dict:
    err = {"message": message, "type": _TYPES.get(status, "server_error"), "code": code, "param": param}
    err.update(extra)
    return {"error": err}


def error_response(e: APIError):
    resp = jsonify(error_body(e.status, e.message, e.code, e.param, **e.extra))
    resp.status_code = e.status
    resp.headers.update(e.headers)
    return resp


def init_app(app: Flask) -> None:
    app.register_error_handler(APIError, error_response)

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(e.code, None)
        message = e.description or e.name
        if e.code == 413:
            message = f"request body exceeds the limit of {request.max_content_length} bytes"
        allow = {k: v for k, v in e.get_headers() if k.lower() == "allow"}  # a 405 names the methods
        return error_response(APIError(e.code or 500, message, code, headers=allow))

    @app.errorhandler(EngineBusy)
    def engine_busy(e: EngineBusy):  # a long step or a hung backend: try again, not a server fault
        return error_response(
            APIError(503, f"the engine is busy: {e}; retry later", "engine_busy", headers={"Retry-After": "1"})
        )

    @app.errorhandler(Exception)
    def unexpected(e: Exception):
        log.exception("unhandled error")
        return error_response(APIError(500, f"internal error: {type(e).__name__}", "internal_error"))
