"""/api/summaries: create a job from a document, read it, follow it (SSE), list, delete."""

from __future__ import annotations

import json
import time

from flask import Blueprint, Response, current_app, jsonify, request

from edge_llm.runtime import Runtime
from edge_llm.server.errors import APIError, error_response
from edge_llm.summarize import extract

bp = Blueprint("summaries", __name__, url_prefix="/api/summaries")
EVENT_POLL_S = 0.5


def service():
    rt: Runtime = current_app.config["RUNTIME"]
    svc = rt.extensions.get("summaries")
    if svc is None or not rt.is_ready:
        raise APIError(
            503,
            f"summaries are not available while the model is {rt.phase.value}",
            rt.phase.value,
            headers={"Retry-After": "5"},
        )
    return svc


@bp.before_request
def document_limit():
    request.max_content_length = current_app.config["RUNTIME"].config.server.max_document_bytes


def too_large_message(max_document_bytes: int) -> str:
    """The limit a sender can act on: the document's, in MB, with its setting (not the body
    limit of the HTTP server, which adds room for multipart headers)."""
    return (
        f"the document is over the limit of {max_document_bytes / 2**20:.3g} MB "
        f"(server.max_document_bytes = {max_document_bytes})"
    )


@bp.errorhandler(413)
def document_too_large(e):
    limit = current_app.config["RUNTIME"].config.server.max_document_bytes
    return error_response(APIError(413, too_large_message(limit), "document_too_large"))


def _header_text(value: str) -> str:
    """A header value as UTF-8 where it is (PEP 3333 hands headers over as latin-1-decoded
    bytes: X-Filename: résumé.txt was stored as rÃ©sumÃ©.txt), else as it came."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def _document() -> tuple[str, bytes, str]:
    """(filename, bytes, media type) from a multipart 'file' field or a raw body."""
    if request.mimetype == "multipart/form-data":
        f = request.files.get("file")
        if f is None:
            raise APIError(400, "multipart upload without a 'file' field", "missing_file", "file")
        name, data, ctype = f.filename or "document", f.read(), f.mimetype
    else:
        name = request.args.get("filename") or _header_text(request.headers.get("X-Filename", "")) or "document"
        data, ctype = request.get_data(), request.mimetype
    try:
        kind = extract.media_type(name, ctype if ctype not in ("application/octet-stream", "") else None, data)
    except extract.UnsupportedType as e:
        raise APIError(415, str(e), "unsupported_media_type") from None
    if not data:
        raise APIError(400, "the document is empty", "empty_document")
    return name, data, kind


@bp.post("")
def create():
    svc = service()
    name, data, kind = _document()
    try:
        job = svc.create(name, data, kind)
    except extract.TooLarge as e:
        raise APIError(413, str(e), "document_too_large") from None
    except extract.ExtractError as e:
        raise APIError(400, str(e), "unreadable_document") from None
    resp = jsonify(job.to_dict())
    resp.status_code = 202
    resp.headers["Location"] = f"/api/summaries/{job.id}"
    return resp


def _query_int(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 10) or not lo <= int(raw) <= hi:
        raise APIError(400, f"'{name}' must be an integer in [{lo}, {hi}], got {raw!r}", "invalid_value", name)
    return int(raw)


@bp.get("")
def list_jobs():
    """Newest first, without the results (GET /api/summaries/<id> has it)."""
    jobs, more = service().store.list(_query_int("limit", 50, 1, 500), _query_int("offset", 0, 0, 10**9))
    return jsonify({"data": [j.to_dict(with_result=False) for j in jobs], "has_more": more})


def _job(job_id: str):
    job = service().store.get(job_id)
    if job is None:
        raise APIError(404, f"no summary job {job_id}", "not_found")
    return job


def _state(job, summarizer) -> dict:
    """The job, with progress inside the parts being summarized (chunks_partial, in parts)."""
    d = job.to_dict()
    if job.status == "running":
        d["progress"]["chunks_partial"] = round(summarizer.partial_progress(job.id), 2)
    return d


@bp.get("/<job_id>")
def get(job_id: str):
    return jsonify(_state(_job(job_id), service().summarizer))


@bp.delete("/<job_id>")
def delete(job_id: str):
    _job(job_id)
    service().delete(job_id)
    return "", 204


@bp.get("/<job_id>/events")
def events(job_id: str):
    store, summarizer = service().store, service().summarizer
    cut_off = current_app.config["RUNTIME"].cut_off
    _job(job_id)

    def stream():
        last = None
        while True:
            if cut_off.is_set():
                yield 'event: error\ndata: {"message": "the server is shutting down"}\n\n'
                return
            job = store.get(job_id)
            if job is None:
                yield 'event: error\ndata: {"message": "the job was deleted"}\n\n'
                return
            state = _state(job, summarizer)
            if state != last:
                kind = "done" if job.status in ("done", "error") else "progress"
                yield f"event: {kind}\ndata: {json.dumps(state)}\n\n"
                last = state
                if kind == "done":
                    return
            else:
                yield ": waiting\n\n"
            time.sleep(EVENT_POLL_S)

    return Response(stream(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})
