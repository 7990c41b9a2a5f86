"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator

from flask import Blueprint, Response, current_app, jsonify, request

from edge_llm.engine.chat_template import ChatTemplateError
from edge_llm.engine.front import PromptTooLong, QueueFull
from edge_llm.engine.request import Priority, Request, RequestOutput
from edge_llm.runtime import Runtime
from edge_llm.server import validation
from edge_llm.server.errors import APIError, error_body
from edge_llm.telemetry.energy import format_joules

log = logging.getLogger(__name__)
bp = Blueprint("openai", __name__, url_prefix="/v1")
POLL_S = 0.5  # how often a waiting handler checks for a vanished client
KEEPALIVE_S = 5.0  # SSE comment lines while nothing else is sent (long prefill, queue)
CAPPED_HEADER = "X-Max-Tokens-Capped"
ENERGY_HEADER = "X-Energy-Joules"  # the request's share of its steps' energy, or "unavailable" (issue 24)
RETRY_AFTER_S = 2


def runtime() -> Runtime:
    return current_app.config["RUNTIME"]


def ready_engine(rt: Runtime):
    if not rt.is_ready:
        raise APIError(
            503, f"the model is {rt.phase.value}; try again shortly", rt.phase.value, headers={"Retry-After": "5"}
        )
    return rt.engine


def model_names(rt: Runtime) -> list[str]:
    return [rt.model_id] + [a for a in rt.config.model.aliases if a != rt.model_id]


def check_model(rt: Runtime, model: str | None) -> None:
    """The served id or a configured alias; any name with model.accept_any_name."""
    if model is not None and model not in model_names(rt) and not rt.config.model.accept_any_name:
        raise APIError(
            404,
            f"model '{model}' does not exist; this server serves '{rt.model_id}'"
            " (other names: model.aliases, or model.accept_any_name = true)",
            "model_not_found",
            "model",
        )


def check_features(rt: Runtime, gen: validation.GenerationRequest) -> None:
    missing = sorted(gen.features - rt.backend.supports)
    if missing:
        raise APIError(
            400,
            f"'{missing[0]}' is not supported by the {rt.config.model.backend} backend",
            "unsupported_parameter",
            missing[0],
        )
    n_vocab = rt.backend.profile.n_vocab
    for token, _ in gen.params.logit_bias:
        if token >= n_vocab:
            raise validation.bad("logit_bias", f"token id {token} is not in the vocabulary (0 to {n_vocab - 1})")


def _model_object(name: str) -> dict:
    return {"id": name, "object": "model", "created": int(time.time()), "owned_by": "edge-llm"}


@bp.get("/models")
def models():
    return jsonify({"object": "list", "data": [_model_object(name) for name in model_names(runtime())]})


@bp.get("/models/<path:model>")
def model(model: str):
    rt = runtime()
    if model not in model_names(rt):
        raise APIError(
            404, f"model '{model}' does not exist; this server serves '{rt.model_id}'", "model_not_found", "model"
        )
    return jsonify(_model_object(model))


@bp.post("/chat/completions")
def chat_completions():
    rt = runtime()
    body = validation.json_body(request)
    gen = validation.generation(body, "chat")
    msgs = validation.messages(body)
    check_model(rt, gen.model)
    engine = ready_engine(rt)
    check_features(rt, gen)
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
    gen = validation.generation(body, "completion")
    text = validation.prompt(body)
    check_model(rt, gen.model)
    engine = ready_engine(rt)
    check_features(rt, gen)
    return _respond(engine, rt.backend.tokenize(text, True), gen, "text_completion", _text_choice, _text_delta)


def _entry(token: bytes, logprob: float) -> dict:
    return {"token": token.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(token)}


def _chat_logprobs(lps: list | None) -> dict | None:
    """OpenAI chat shape: {"content": [{token, logprob, bytes, top_logprobs: [...]}]}."""
    if lps is None:
        return None
    return {
        "content": [
            {**_entry(lp.piece, lp.logprob), "top_logprobs": [_entry(p, v) for _, p, v in lp.top]} for lp in lps
        ],
        "refusal": None,
    }


def _text_logprobs(lps: list | None, offset: int = 0) -> dict | None:
    """OpenAI completions shape: parallel lists, text_offset counted in characters."""
    if lps is None:
        return None
    tokens = [lp.piece.decode("utf-8", "replace") for lp in lps]
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": [lp.logprob for lp in lps],
        "top_logprobs": [{p.decode("utf-8", "replace"): v for _, p, v in lp.top} for lp in lps],
        "text_offset": offsets,
    }


def _chat_choice(text: str, finish: str | None, lps: list | None = None) -> dict:
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
    return {**choice, "logprobs": _chat_logprobs(lps)} if lps is not None else choice


def _chat_delta(text: str | None, finish: str | None, lps: list | None = None) -> dict:
    delta = {"role": "assistant", "content": ""} if text is None else ({"content": text} if text else {})
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {**choice, "logprobs": _chat_logprobs(lps)} if lps is not None else choice


def _text_choice(text: str, finish: str | None, lps: list | None = None) -> dict:
    return {"index": 0, "text": text, "logprobs": _text_logprobs(lps), "finish_reason": finish}


def _text_delta(text: str | None, finish: str | None, lps: list | None = None) -> dict:
    return {"index": 0, "text": text or "", "logprobs": _text_logprobs(lps), "finish_reason": finish}


def _respond(
    engine, tokens: list[int], gen: validation.GenerationRequest, kind: str, choice: Callable, delta: Callable
) -> Response:
    rt = runtime()
    if gen.params.grammar:  # a grammar llama.cpp cannot parse is this request's 400, not a failed batch
        check_grammar(rt, gen.params.grammar)
    try:
        req, capped = engine.make_request(tokens, gen.params, gen.max_tokens, priority_of(gen, tokens, rt))
    except PromptTooLong as e:
        raise APIError(
            400,
            str(e),
            "context_length_exceeded",
            "messages" if kind == "chat.completion" else "prompt",
            prompt_tokens=e.num_tokens,
            max_input_tokens=e.limit,
        ) from None
    req.stream = gen.stream  # one that does not stream is woken with its end only
    if engine.scheduler.admission_paused:
        raise APIError(
            503,
            "memory is low: new requests are paused; retry later",
            "memory_pressure",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    try:
        engine.submit(req)
    except QueueFull as e:
        raise APIError(
            429, f"the server is busy: {e}; retry later", "queue_full", headers={"Retry-After": str(RETRY_AFTER_S)}
        ) from None
    meta = {
        "id": f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex[:24]}",
        "created": int(time.time()),
        "model": rt.model_id,
    }
    headers = {CAPPED_HEADER: str(req.params.max_tokens)} if capped else {}
    watch = Watch(rt, req, request.environ)
    if gen.stream:
        stream = _sse(
            engine, req, meta, kind + (".chunk" if kind == "chat.completion" else ""), delta, gen.include_usage, watch
        )
        return Response(
            stream,
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
        )
    text, last, lps = "", None, ([] if gen.params.logprobs is not None else None)
    for out in _outputs(engine, req, watch):
        if out is not None:
            text, last = text + out.text, out
            if lps is not None:
                lps += out.logprobs or []
    _log_finished(req, rt.model_id, engine.energy)
    headers[ENERGY_HEADER] = format_joules(engine.energy.joules(req))
    if last is None or last.finish_reason is None:
        raise watch.error()
    if last.error:
        raise APIError(503, last.error, "engine_error", headers={"Retry-After": "5"})
    body = {**meta, "object": kind, "choices": [choice(text, last.finish_reason, lps)], "usage": _usage(last)}
    return Response(json.dumps(body), mimetype="application/json", headers=headers)


def priority_of(gen: validation.GenerationRequest, tokens: list[int], rt: Runtime) -> Priority:
    """The priority asked for; else a prompt over limits.bulk_prompt_tokens is a document, which
    is scheduled as summary parts are (background: prefilled in abortable steps, beside a
    visitor's stream only as limits.chat_slowdown allows). Any OpenAI client marks nothing: four
    3,000-token prompts sent as interactive took 1.57x llama-server's wall on 2 cores (prefill
    cut to 32-token chunks while any of them decoded, 12.4 ms a token at 2,048 tokens of context
    against 5.75 in 512-token chunks); as documents, 0.955-1.076x (with the background chunk)."""
    if gen.priority is not None:
        return gen.priority
    bulk = rt.config.limits.bulk_prompt_tokens
    return Priority.BACKGROUND if 0 < bulk < len(tokens) else Priority.INTERACTIVE


def check_grammar(rt: Runtime, gbnf: str) -> None:
    """llama.cpp parses the grammar here, in this HTTP thread (it reads only the vocabulary),
    never on the engine thread; grammar.py has bounded its size and nesting already."""
    try:
        rt.backend.check_grammar(gbnf)
    except ValueError as e:
        raise validation.bad("response_format", str(e)) from None


class Watch:
    """Polled while a handler waits for its request: why it should stop waiting, if it should.
    The client went away (waitress says so), the drain deadline passed, or the request was
    not admitted within server.queue_timeout_s (memory pressure pauses admission)."""

    def __init__(self, rt: Runtime, req: Request, environ: dict):
        self.rt, self.req = rt, req
        self.disconnected = environ.get("waitress.client_disconnected", lambda: False)
        self.reason: str | None = None

    def __call__(self) -> bool:
        if self.disconnected():
            self.reason = "client"
        elif self.rt.cut_off.is_set():
            self.reason = "draining"
        elif self._waited_too_long():
            self.reason = "queue_timeout"
        return self.reason is not None

    def _waited_too_long(self) -> bool:
        """Not admitted within server.queue_timeout_s. A background request waits by design (its
        prompts are prefilled one at a time, shortest first: the fourth of four 3,000-token prompts
        waited over 60 s on 2 cores and got a 503 though the server was working through them), so
        for it the wait counts only while nothing comes free: admission paused (memory pressure)
        or background deferred (heat). Unmarked prompts that long are background now too."""
        if self.req.admitted_time is not None:
            return False
        s = self.rt.engine.scheduler
        if self.req.priority == Priority.BACKGROUND and not (s.admission_paused or s.defer_background):
            return False
        return time.monotonic() - self.req.arrival_time > self.rt.config.server.queue_timeout_s

    def error(self) -> APIError:
        retry = {"Retry-After": str(RETRY_AFTER_S)}
        if self.reason == "draining":
            return APIError(503, "the server is shutting down; retry shortly", "draining", headers=retry)
        if self.reason == "queue_timeout":
            return APIError(
                503,
                f"not admitted within {self.rt.config.server.queue_timeout_s:g} s "
                "(the server is busy or short of memory); retry later",
                "queue_timeout",
                headers=retry,
            )
        return APIError(499, "client went away", "cancelled")


def _outputs(engine, req: Request, watch: Watch) -> Iterator[RequestOutput | None]:
    """engine.stream, with the watch checked at least every POLL_S even while tokens flow
    (engine.stream alone checks it only when no output came for POLL_S)."""
    stream = engine.stream(req, POLL_S, watch)
    next_check = time.monotonic() + POLL_S
    try:
        for out in stream:
            if out is not None and time.monotonic() >= next_check:
                next_check = time.monotonic() + POLL_S
                if watch():
                    return
            yield out
    finally:
        stream.close()  # cancels the request if it has not finished


def _log_finished(req: Request, model: str, meter=None) -> None:
    """One line per request; under journald the extra keys become structured fields."""
    ttft = (req.first_token_time - req.arrival_time) if req.first_token_time else None
    joules = meter.joules(req) if meter is not None else None
    log.info(
        "%s %s: %d prompt (%d reused) + %d generated tokens, ttft %s, energy %s",
        req.request_id,
        req.finish_reason,
        req.num_prompt_tokens,
        req.num_reused,
        len(req.output_tokens),
        f"{1000 * ttft:.0f} ms" if ttft is not None else "-",
        "unavailable" if joules is None else f"{joules:.3f} J ({meter.source_name})",
        extra={
            "REQUEST_ID": req.request_id,
            "MODEL": model,
            "FINISH_REASON": req.finish_reason,
            "PROMPT_TOKENS": req.num_prompt_tokens,
            "COMPLETION_TOKENS": len(req.output_tokens),
            "ENERGY_JOULES": format_joules(joules),
        },
    )


def _usage(out: RequestOutput) -> dict:
    return {
        "prompt_tokens": out.num_prompt_tokens,
        "completion_tokens": out.num_output_tokens,
        "total_tokens": out.num_prompt_tokens + out.num_output_tokens,
    }


def _sse(
    engine, req: Request, meta: dict, obj: str, delta: Callable, include_usage: bool, watch: Watch
) -> Iterator[str]:
    def event(choices: list, **extra) -> str:
        return f"data: {json.dumps({**meta, 'object': obj, 'choices': choices, **extra})}\n\n"

    if obj == "chat.completion.chunk":
        yield event([delta(None, None)])
    quiet_since = time.monotonic()
    finished = False
    for out in _outputs(engine, req, watch):
        now = time.monotonic()
        if out is None:
            if now - quiet_since >= KEEPALIVE_S:
                quiet_since = now
                yield f": keepalive {req.num_computed}/{req.num_prompt_tokens}\n\n"
            continue
        quiet_since = now
        if out.error:
            if out.text:  # text held back by the stream interval, sent before the error
                yield event([delta(out.text, None, out.logprobs)])
            yield f"data: {json.dumps(error_body(503, out.error, 'engine_error'))}\n\n"
            break
        if out.text or out.finish_reason:
            yield event([delta(out.text, out.finish_reason, out.logprobs)])
        if out.finish_reason and include_usage:
            yield event([], usage=_usage(out))
        finished = out.finish_reason is not None
    _log_finished(req, meta["model"], engine.energy)  # a stream's headers left before its energy was known
    if not finished and watch.reason in ("draining", "queue_timeout"):  # an OpenAI client raises on it
        e = watch.error()
        yield f"data: {json.dumps(error_body(e.status, e.message, e.code))}\n\n"
    yield "data: [DONE]\n\n"
