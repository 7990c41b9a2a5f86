"""Check OpenAI request bodies field by field; every problem is a 400 naming the field."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from flask import Request, current_app, has_app_context

from edge_llm.engine import grammar
from edge_llm.engine.request import Priority, SamplingParams
from edge_llm.server import sampling
from edge_llm.server.errors import APIError
from edge_llm.server.sampling import SamplingDefaults

ROLES = {"system", "user", "assistant", "developer"}
MAX_STOPS = 4
MAX_TOP_LOGPROBS = {"chat": 20, "completion": 5}  # OpenAI's limits
MAX_LOGIT_BIAS = 300
SEED_RANGE = (-(2**63), 2**64 - 1)  # int64 or uint64: every engine takes it (wrapped to its width)
MAX_JSON_DEPTH = 64  # nested objects and arrays in a request body
_TOKEN_ID = re.compile(r"[0-9]{1,9}")  # ASCII digits only: "²".isdigit() is true, int("²") fails
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # "\ud800" parses as JSON but is no UTF-8 text


def bad(param: str, message: str) -> APIError:
    return APIError(400, f"'{param}': {message}", "invalid_value", param)


def json_body(request: Request) -> dict:
    if request.mimetype != "application/json":
        raise APIError(
            415, f"expected Content-Type: application/json, got {request.mimetype or 'none'}", "unsupported_media_type"
        )
    body = parse_json(request.get_data())
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", "invalid_json")
    check_json_values(body)
    return body


def parse_json(data: bytes) -> object:
    """The body as JSON; what is wrong with it, if anything, as a 400 that says so."""
    try:
        return json.loads(data)
    except RecursionError:
        raise APIError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels", "invalid_json") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise APIError(400, "the request body is not valid JSON", "invalid_json") from None
    except ValueError:  # valid JSON, but Python refuses to read an integer of over 4300 digits
        raise APIError(400, "a number in the request body has too many digits", "invalid_json") from None


def check_json_values(body: object) -> None:
    """Iteratively: no nesting past MAX_JSON_DEPTH, no lone surrogate in any string or key."""
    stack = [(body, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if _SURROGATE.search(node):
                raise APIError(
                    400,
                    "the request body holds a lone UTF-16 surrogate (e.g. \\ud800), which is not text",
                    "invalid_json",
                )
        elif isinstance(node, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise APIError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels", "invalid_json")
            items = [*node.keys(), *node.values()] if isinstance(node, dict) else node
            stack.extend((v, depth + 1) for v in items)


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise bad(name, f"must be a finite number, got {v!r}")
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
    features: frozenset[str]  # optional features asked for (a backend may not have them all)
    priority: Priority | None = None  # None: not said (the server infers it, openai_api.priority_of)


def generation(body: dict, endpoint: str = "chat", defaults: SamplingDefaults | None = None) -> GenerationRequest:
    """The fields both endpoints share; endpoint is "chat" or "completion" (logprobs differ).
    Fields left out take defaults (the running model's, server/sampling.py)."""
    d = defaults or _running_defaults()
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("model", "must be a string")
    _refuse_unsupported(body)
    max_tokens = _int(body, "max_completion_tokens", lo=1)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", lo=1)
    stream, include_usage = _stream(body)
    params = _sampling_params(body, endpoint, d)
    return GenerationRequest(model, params, max_tokens, stream, include_usage, _features(params), _priority(body))


# fields of OpenAI's API that this server has no use for, and why
UNSUPPORTED = {
    "tools": "this server does not do tool calling",
    "functions": "this server does not do function calling",
    "suffix": "this server does not insert text (fill-in-the-middle); it continues the prompt only",
}
NO_TOOL_CHOICE = ("none", "auto")  # tool_choice / function_call values that ask for no tool call


def _refuse_unsupported(body: dict) -> None:
    for name in ("n", "best_of"):  # one choice per request; best_of would pick it from several
        v = _int(body, name, lo=1)
        if v not in (None, 1):
            raise bad(name, f"only {name}=1 is supported, got {v}")
    if body.get("echo") not in (None, False):
        raise bad("echo", "is not supported by this server")
    for name, why in UNSUPPORTED.items():
        if body.get(name):
            raise bad(name, f"is not supported: {why}")
    for name in ("tool_choice", "function_call"):
        v = body.get(name)
        if v is not None and v not in NO_TOOL_CHOICE:
            why = "this server does not do tool calling"
            raise bad(name, f"must be {' or '.join(map(repr, NO_TOOL_CHOICE))} ({why}), got {json.dumps(v)[:80]}")


def _stream(body: dict) -> tuple[bool, bool]:
    """stream, and whether the last chunk carries usage (stream_options.include_usage)."""
    stream = _flag(body, "stream")
    opts = body.get("stream_options")
    if opts is not None and (not isinstance(opts, dict) or not isinstance(opts.get("include_usage", False), bool)):
        raise bad("stream_options", 'must be an object like {"include_usage": true}')
    if opts is not None and not stream:
        raise bad("stream_options", "is only allowed with stream: true")
    return stream, bool(opts and opts.get("include_usage"))


def _sampling_params(body: dict, endpoint: str, d: SamplingDefaults) -> SamplingParams:
    seed = _int(body, "seed")
    if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise bad("seed", f"must fit in 64 bits ({SEED_RANGE[0]} to {SEED_RANGE[1]}), got {seed}")
    return SamplingParams(
        temperature=_number(body, "temperature", d.temperature, 0.0, 2.0),
        top_p=_number(body, "top_p", d.top_p, 0.0, 1.0, lo_open=True),
        top_k=d.top_k if body.get("top_k") is None else _int(body, "top_k", lo=0),
        min_p=_number(body, "min_p", 0.0, 0.0, 1.0),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        logit_bias=_logit_bias(body),
        grammar=_response_format(body),
        logprobs=_logprobs(body, endpoint),
        seed=seed,
        stop=_stops(body),
    )


def _features(params: SamplingParams) -> frozenset[str]:
    """The optional features a request uses (a backend may not have them all)."""
    return frozenset(
        name
        for name, used in (
            ("min_p", params.min_p),
            ("presence_penalty", params.presence_penalty),
            ("frequency_penalty", params.frequency_penalty),
            ("logit_bias", params.logit_bias),
            ("response_format", params.grammar),
            ("logprobs", params.logprobs is not None),
        )
        if used
    )


def _running_defaults() -> SamplingDefaults:
    if has_app_context() and "RUNTIME" in current_app.config:
        return sampling.for_runtime(current_app.config["RUNTIME"])
    return SamplingDefaults()


def _priority(body: dict) -> Priority | None:
    v = body.get("priority")
    if v is None:
        return None
    names = [p.name.lower() for p in Priority]
    if not isinstance(v, str) or v not in names:
        raise bad("priority", f"must be one of {names}, got {v!r}")
    return Priority[v.upper()]


def _logit_bias(body: dict) -> tuple[tuple[int, float], ...]:
    v = body.get("logit_bias")
    if v is None:
        return ()
    if not isinstance(v, dict) or len(v) > MAX_LOGIT_BIAS:
        raise bad("logit_bias", f"must be an object of at most {MAX_LOGIT_BIAS} token ids to biases")
    out = []
    for key, bias in v.items():
        if not _TOKEN_ID.fullmatch(key):
            raise bad("logit_bias", f"keys must be token ids (up to 9 ASCII digits), got {key[:20]!r}")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
            raise bad("logit_bias", f"biases must be numbers in [-100, 100], got {bias!r} for {key}")
        out.append((int(key), float(bias)))
    return tuple(sorted(out))


def _logprobs(body: dict, endpoint: str) -> int | None:
    """None = off, else the number of top alternatives per token (0 = the chosen token's only)."""
    limit = MAX_TOP_LOGPROBS[endpoint]
    if endpoint == "completion":  # logprobs: an integer, the number of alternatives
        v = body.get("logprobs")
        if v is None or v is False:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= limit:
            raise bad("logprobs", f"must be an integer in [0, {limit}], got {v!r}")
        return v
    on = _flag(body, "logprobs")
    top = _int(body, "top_logprobs", lo=0)
    if top is not None and top > limit:
        raise bad("top_logprobs", f"must be in [0, {limit}], got {top}")
    if top and not on:
        raise bad("top_logprobs", "requires logprobs: true")
    return (top or 0) if on else None


def _response_format(body: dict) -> str | None:
    fmt = body.get("response_format")
    if fmt is None:
        return None
    kinds = ("text", "json_object", "json_schema")
    if not isinstance(fmt, dict) or fmt.get("type") not in kinds:
        raise bad("response_format", f"must be an object with type one of {list(kinds)}")
    if fmt["type"] == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise bad("response_format.json_schema", "must be an object with a 'name' and a 'schema'")
        if not isinstance(spec.get("schema"), dict):
            raise bad("response_format.json_schema.schema", "must be a JSON Schema object")
    try:
        return grammar.for_response_format(fmt)
    except grammar.GrammarError as e:
        raise bad("response_format.json_schema.schema", str(e)) from None


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
        content = m.get("content")
        if content is None and role == "assistant":  # clients send it after a tool or refusal turn
            content = ""
        out.append({"role": "system" if role == "developer" else role, "content": _content(content, where)})
    return out


def _content(content: object, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"{where}.content", 'only text parts ({"type": "text", "text": ...}) are supported')
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
