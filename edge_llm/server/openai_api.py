"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator

from flask import Blueprint, Response, current_app, jsonify, request

from edge_llm.engine.chat_template import ChatTemplateError
from edge_llm.engine.loop import PromptTooLong
from edge_llm.engine.request import Request, RequestOutput
from edge_llm.engine.scheduler import QueueFull
from edge_llm.runtime import Runtime
from edge_llm.server import validation
from edge_llm.server.errors import APIError, error_body

log = logging.getLogger(__name__)
bp = Blueprint("openai", __name__, url_prefix="/v1")
POLL_S = 0.5  # how often a waiting handler checks for a vanished client
KEEPALIVE_S = 5.0  # SSE comment lines while nothing else is sent (long prefill, queue)
CAPPED_HEADER = "X-Max-Tokens-Capped"


def runtime() -> Runtime:
    return current_app.config["RUNTIME"]


def ready_engine(rt: Runtime):
    if not rt.is_ready:
        raise APIError(503, f"the model is {rt.phase.value}; try again shortly", rt.phase.value,
                       headers={"Retry-After": "5"})
    return rt.engine


def check_model(rt: Runtime, model: str | None) -> None:
    if model is not None and model != rt.model_id:
        raise APIError(404, f"model '{model}' does not exist; this server serves '{rt.model_id}'",
                       "model_not_found", "model")


@bp.get("/models")
def models():
    rt = runtime()
    return jsonify({"object": "list", "data": [
        {"id": rt.model_id, "object": "model", "created": int(time.time()), "owned_by": "edge-llm"}]})


@bp.post("/chat/completions")
def chat_completions():
    rt = runtime()
    body = validation.json_body(request)
    gen = validation.generation(body)
    msgs = validation.messages(body)
    check_model(rt, gen.model)
    engine = ready_engine(rt)
    try:
        text = rt.backend.render_chat(msgs)
    except ChatTemplateError as e:
        raise APIError(400, str(e), "invalid_messages", "messages") from None
    tokens = rt.backend.tokenize(text, rt.backend.chat_add_special(text))
    return _respond(engine, tokens, gen, "chat.completion", _chat_choice, _chat_delta)


@bp.post("/completions")
def completions():
    rt = runtime()
    body = validation.json_body(request)
    gen = validation.generation(body)
    text = validation.prompt(body)
    check_model(rt, gen.model)
    engine = ready_engine(rt)
    return _respond(engine, rt.backend.tokenize(text, True), gen, "text_completion", _text_choice, _text_delta)


def _chat_choice(text: str, finish: str | None) -> dict:
    return {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}


def _chat_delta(text: str | None, finish: str | None) -> dict:
    delta = {"role": "assistant", "content": ""} if text is None else ({"content": text} if text else {})
    return {"index": 0, "delta": delta, "finish_reason": finish}


def _text_choice(text: str, finish: str | None) -> dict:
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}


def _text_delta(text: str | None, finish: str | None) -> dict:
    return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}


def _respond(engine, tokens: list[int], gen: validation.GenerationRequest, kind: str,
             choice: Callable, delta: Callable) -> Response:
    rt = runtime()
    try:
        req, capped = engine.make_request(tokens, gen.params, gen.max_tokens)
    except PromptTooLong as e:
        raise APIError(400, str(e), "context_length_exceeded", "messages" if kind == "chat.completion" else "prompt",
                       prompt_tokens=e.num_tokens, max_input_tokens=e.limit) from None
    try:
        engine.submit(req)
    except QueueFull as e:
        raise APIError(429, f"the server is busy: {e}; retry later", "queue_full",
                       headers={"Retry-After": "2"}) from None
    meta = {"id": f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()), "model": rt.model_id}
    headers = {CAPPED_HEADER: str(req.params.max_tokens)} if capped else {}
    disconnected = request.environ.get("waitress.client_disconnected", lambda: False)
    if gen.stream:
        stream = _sse(engine, req, meta, kind + (".chunk" if kind == "chat.completion" else ""),
                      delta, gen.include_usage, disconnected)
        return Response(stream, mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})
    text, last = "", None
    for out in engine.stream(req, POLL_S, disconnected):
        if out is not None:
            text, last = text + out.text, out
    _log_finished(req, rt.model_id)
    if last is None or last.finish_reason is None:
        raise APIError(499, "client went away", "cancelled")
    if last.error:
        raise APIError(503, last.error, "engine_error", headers={"Retry-After": "5"})
    body = {**meta, "object": kind, "choices": [choice(text, last.finish_reason)], "usage": _usage(last)}
    return Response(json.dumps(body), mimetype="application/json", headers=headers)


def _log_finished(req: Request, model: str) -> None:
    """One line per request; under journald the extra keys become structured fields."""
    ttft = (req.first_token_time - req.arrival_time) if req.first_token_time else None
    log.info("%s %s: %d prompt (%d reused) + %d generated tokens, ttft %s", req.request_id, req.finish_reason,
             req.num_prompt_tokens, req.num_reused, len(req.output_tokens),
             f"{1000 * ttft:.0f} ms" if ttft is not None else "-",
             extra={"REQUEST_ID": req.request_id, "MODEL": model, "FINISH_REASON": req.finish_reason,
                    "PROMPT_TOKENS": req.num_prompt_tokens, "COMPLETION_TOKENS": len(req.output_tokens)})


def _usage(out: RequestOutput) -> dict:
    return {"prompt_tokens": out.num_prompt_tokens, "completion_tokens": out.num_output_tokens,
            "total_tokens": out.num_prompt_tokens + out.num_output_tokens}


def _sse(engine, req: Request, meta: dict, obj: str, delta: Callable, include_usage: bool,
         disconnected: Callable[[], bool]) -> Iterator[str]:
    def event(choices: list, **extra) -> str:
        return f"data: {json.dumps({**meta, 'object': obj, 'choices': choices, **extra})}\n\n"

    if obj == "chat.completion.chunk":
        yield event([delta(None, None)])
    quiet_since = time.monotonic()
    for out in engine.stream(req, POLL_S, disconnected):
        now = time.monotonic()
        if out is None:
            if now - quiet_since >= KEEPALIVE_S:
                quiet_since = now
                yield f": keepalive {req.num_computed}/{req.num_prompt_tokens}\n\n"
            continue
        quiet_since = now
        if out.error:
            yield f"data: {json.dumps(error_body(503, out.error, 'engine_error'))}\n\n"
            break
        if out.text or out.finish_reason:
            yield event([delta(out.text, out.finish_reason)])
        if out.finish_reason and include_usage:
            yield event([], usage=_usage(out))
    _log_finished(req, meta["model"])
    yield "data: [DONE]\n\n"
