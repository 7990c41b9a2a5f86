"""Check OpenAI request bodies field by field; every problem is a 400 naming the field."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Request

from edge_llm.engine.request import SamplingParams
from edge_llm.server.errors import APIError

ROLES = {"system", "user", "assistant", "developer"}
MAX_STOPS = 4


def bad(param: str, message: str) -> APIError:
    return APIError(400, f"'{param}': {message}", "invalid_value", param)


def json_body(request: Request) -> dict:
    if request.mimetype != "application/json":
        raise APIError(415, f"expected Content-Type: application/json, got {request.mimetype or 'none'}",
                       "unsupported_media_type")
    body = request.get_json(silent=True)
    if body is None:
        raise APIError(400, "the request body is not valid JSON", "invalid_json")
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", "invalid_json")
    return body


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise bad(name, f"must be a number, got {v!r}")
    if v > hi or v < lo or (lo_open and v == lo):
        raise bad(name, f"must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}")
    return float(v)


def _int(body: dict, name: str, lo: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(name, f"must be an integer, got {v!r}")
    if lo is not None and v < lo:
        raise bad(name, f"must be >= {lo}, got {v}")
    return v


def _flag(body: dict, name: str) -> bool:
    v = body.get(name, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise bad(name, f"must be true or false, got {v!r}")
    return v


def _stops(body: dict) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad("stop", "must be a non-empty string or a list of non-empty strings")
    if len(stops) > MAX_STOPS:
        raise bad("stop", f"at most {MAX_STOPS} stop sequences, got {len(stops)}")
    return tuple(stops)


@dataclass(frozen=True)
class GenerationRequest:
    model: str | None
    params: SamplingParams  # max_tokens is set later, from the plan
    max_tokens: int | None  # as asked; None = the plan's max_output_len
    stream: bool
    include_usage: bool


def generation(body: dict) -> GenerationRequest:
    """The fields both endpoints share."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("model", "must be a string")
    n = _int(body, "n", lo=1)
    if n not in (None, 1):
        raise bad("n", f"only n=1 is supported, got {n}")
    for name in ("logprobs", "echo"):
        if body.get(name) not in (None, False, 0):
            raise bad(name, "is not supported by this server")
    for name in ("tools", "functions", "suffix"):
        if body.get(name):
            raise bad(name, "is not supported by this server")
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise bad("response_format", "only {\"type\": \"text\"} is supported")
    max_tokens = _int(body, "max_completion_tokens", lo=1)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", lo=1)
    stream = _flag(body, "stream")
    opts = body.get("stream_options")
    if opts is not None and (not isinstance(opts, dict) or not isinstance(opts.get("include_usage", False), bool)):
        raise bad("stream_options", "must be an object like {\"include_usage\": true}")
    if opts is not None and not stream:
        raise bad("stream_options", "is only allowed with stream: true")
    seed = _int(body, "seed")
    params = SamplingParams(
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        top_k=_int(body, "top_k", lo=0) or 0,
        seed=seed, stop=_stops(body))
    return GenerationRequest(model, params, max_tokens, stream, bool(opts and opts.get("include_usage")))


def messages(body: dict) -> list[dict[str, str]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad("messages", "must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(where, "must be an object")
        role = m.get("role")
        if role not in ROLES:
            raise bad(f"{where}.role", f"must be one of {sorted(ROLES)}, got {role!r}")
        out.append({"role": "system" if role == "developer" else role, "content": _content(m.get("content"), where)})
    return out


def _content(content: object, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"{where}.content", "only text parts ({\"type\": \"text\", \"text\": ...}) are supported")
            texts.append(part["text"])
        return "".join(texts)
    raise bad(f"{where}.content", "must be a string or a list of text parts")


def prompt(body: dict) -> str:
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1:
        p = p[0]
    if not isinstance(p, str) or not p:
        raise bad("prompt", "must be a non-empty string (one prompt per request)")
    return p
