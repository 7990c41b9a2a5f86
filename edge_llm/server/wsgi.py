"""Serving the app with waitress, sized so that a flood or slow clients cannot take the
kiosk and /health offline.

waitress answers each request on one of a fixed set of worker threads; a generation request
holds its thread until it ends (waiting in the engine's queue, then streaming). With fewer
threads than the engine can hold (batch + queue), excess clients waited unbounded in
waitress's own backlog instead of getting 429, and /health waited behind them. So:
- threads = what the engine can hold (batch + max_queue) + a few event streams + SPARE_THREADS;
- the Gate lets long requests (generation, job events) hold at most all but SPARE_THREADS of
  them, and answers one more at once with 429 + Retry-After;
- connection_limit follows the open-file limit (raised to its hard limit), with poll()
  rather than select() (which stops at descriptor 1024), so slow or idle connections cannot
  fill it; an idle connection is closed after server.channel_timeout_s;
- waitress's own errors (400 bad request, 413, 431 header too large) leave in OpenAI's shape.
"""

from __future__ import annotations

import json
import logging
import re
import resource
import threading

import waitress
from waitress.channel import HTTPChannel
from waitress.task import ErrorTask
from werkzeug.wsgi import ClosingIterator

from edge_llm.config import Config
from edge_llm.server.errors import error_body
from edge_llm.server.summaries import too_large_message

log = logging.getLogger(__name__)
SPARE_THREADS = 16  # always free for /health, the pages, /metrics and the quick API routes
EVENT_STREAMS = 8  # summary-progress SSE streams held open at once
MAX_THREADS = 512
FD_HEADROOM = 128  # descriptors kept for the model file, SQLite, logs, uploads spooled to disk
MAX_CONNECTIONS = 4096
RETRY_AFTER_S = 2
_EVENTS = re.compile(r"^/api/summaries/[^/]+/events$")
_CODES = {
    400: "invalid_request",
    413: "request_too_large",
    431: "request_header_fields_too_large",
    500: "internal_error",
    501: "not_implemented",
}


def long_capacity(max_batch_size: int, max_queue: int) -> int:
    """Long requests at once: every one the engine can hold, plus a few event streams."""
    return max_batch_size + max_queue + EVENT_STREAMS


def thread_count(cfg: Config, max_batch_size: int) -> int:
    if cfg.server.threads:
        return cfg.server.threads
    return min(MAX_THREADS, long_capacity(max_batch_size, cfg.limits.max_queue) + SPARE_THREADS)


def gate_capacity(cfg: Config, max_batch_size: int) -> int:
    """Long requests the Gate lets in: never so many that no thread is left spare."""
    threads = thread_count(cfg, max_batch_size)
    spare = SPARE_THREADS if threads > 2 * SPARE_THREADS else max(1, threads // 2)
    return max(1, min(long_capacity(max_batch_size, cfg.limits.max_queue), threads - spare))


def connection_limit(cfg: Config) -> int:
    """server.connection_limit, else what the open-file limit allows (raised to its hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, MAX_CONNECTIONS + FD_HEADROOM) if hard != resource.RLIM_INFINITY else MAX_CONNECTIONS + FD_HEADROOM
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    if cfg.server.connection_limit:
        return cfg.server.connection_limit
    return max(64, min(MAX_CONNECTIONS, soft - FD_HEADROOM))


def _is_long(environ: dict) -> bool:
    path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
    return (method == "POST" and path in ("/v1/chat/completions", "/v1/completions")) or (
        method == "GET" and bool(_EVENTS.match(path))
    )


def _json_response(start_response, status: str, body: dict, headers: list[tuple[str, str]]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers])
    return [data]


class Gate:
    """WSGI middleware: at most `capacity` long requests hold worker threads at once."""

    def __init__(self, app, capacity: int):
        self.app, self.capacity = app, capacity
        self.num_long = 0
        self.num_refused = 0
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        if not _is_long(environ):
            return self.app(environ, start_response)
        with self._lock:
            full = self.num_long >= self.capacity
            if full:
                self.num_refused += 1
            else:
                self.num_long += 1
        if full:
            body = error_body(
                429, f"the server is busy: {self.capacity} requests are in progress; retry later", "too_many_requests"
            )
            return _json_response(start_response, "429 Too Many Requests", body, [("Retry-After", str(RETRY_AFTER_S))])
        try:
            result = self.app(environ, start_response)
        except BaseException:
            self._release()
            raise
        return ClosingIterator(result, self._release)

    def _release(self) -> None:
        with self._lock:
            self.num_long -= 1


class OpenAIErrorTask(ErrorTask):
    """waitress's own error responses (malformed request, body or headers too large) as JSON."""

    def execute(self):
        e = self.request.error
        message = f"{e.reason}: {' '.join(str(e.body).split()) or e.reason}"
        if e.code == 413 and self.request.path.startswith("/api/summaries"):
            # the limit a sender can set, not waitress's max_body (the document's + 64 KiB)
            message = too_large_message(self.channel.server.max_document_bytes)
        data = json.dumps(error_body(e.code, message, _CODES.get(e.code))).encode()
        self.status = f"{e.code} {e.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(data)
        self.write(data)


class Channel(HTTPChannel):
    error_task_class = OpenAIErrorTask


def create_server(app, cfg: Config, max_batch_size: int):
    """A waitress server for app behind a Gate; resize() it once the plan is known."""
    s = cfg.server
    gate = Gate(app, gate_capacity(cfg, max_batch_size))
    server = waitress.create_server(
        gate,
        host=s.host,
        port=s.port,
        threads=thread_count(cfg, max_batch_size),
        ident="edge-llm",
        connection_limit=connection_limit(cfg),
        channel_timeout=s.channel_timeout_s,
        cleanup_interval=max(1, min(30, int(s.channel_timeout_s / 2))),
        asyncore_use_poll=True,
        channel_request_lookahead=8,  # lets a handler see a client that went away
        max_request_body_size=max(s.max_body_bytes, s.max_document_bytes) + 65536,
    )
    server.channel_class = Channel
    server.gate = gate
    server.max_document_bytes = s.max_document_bytes  # named in the 413 of a document over it
    return server


def resize(server, cfg: Config, max_batch_size: int) -> None:
    """Threads and the gate for the plan's batch (the server starts before the plan exists)."""
    threads = thread_count(cfg, max_batch_size)
    server.task_dispatcher.set_thread_count(threads)
    server.gate.capacity = gate_capacity(cfg, max_batch_size)
    log.info(
        "HTTP: %d worker threads, %d of them for generation and event streams; %d connections, "
        "idle ones closed after %g s",
        threads,
        server.gate.capacity,
        server.adj.connection_limit,
        server.adj.channel_timeout,
    )
