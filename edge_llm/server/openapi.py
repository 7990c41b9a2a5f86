"""GET /openapi.json: an OpenAPI 3.1 description of every route, request and error shape.
Kept true by tests that validate real responses against it and fuzz the server from it
(tests/test_openapi.py)."""

from __future__ import annotations

from flask import Blueprint, jsonify

bp = Blueprint("openapi", __name__)

_REF = "#/components/schemas/"


def ref(name: str) -> dict:
    return {"$ref": _REF + name}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    what = {
        400: "invalid request (the field is named in param)",
        401: "missing or wrong API key",
        403: "Host or Origin not allowed",
        404: "not found",
        405: "method not allowed",
        413: "body too large",
        415: "unsupported media type",
        429: "queue full (Retry-After)",
        503: "loading, draining, memory pressure or not admitted in time (Retry-After)",
    }
    return {str(c): _json(ref("Error"), what[c]) for c in codes}


def _num(lo: float, hi: float, default: float) -> dict:
    return {"type": ["number", "null"], "minimum": lo, "maximum": hi, "default": default}


_SAMPLING = {
    "model": {"type": ["string", "null"], "description": "the served id or an alias (model.aliases)"},
    "max_tokens": {"type": ["integer", "null"], "minimum": 1},
    "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1},
    # left out: the model's defaults (GET /api/sampling; SmolLM2: 0.2 and 0.9), not OpenAI's 1 and 1
    "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
    "top_p": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1},
    "top_k": {"type": ["integer", "null"], "minimum": 0},
    "min_p": _num(0, 1, 0),
    "presence_penalty": _num(-2, 2, 0),
    "frequency_penalty": _num(-2, 2, 0),
    "logit_bias": {
        "type": ["object", "null"],
        "propertyNames": {"pattern": "^[0-9]+$"},
        "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
        "maxProperties": 300,
    },
    "seed": {"type": ["integer", "null"], "minimum": -(2**63), "maximum": 2**64 - 1},
    "stop": {
        "oneOf": [
            {"type": "string", "minLength": 1},
            {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 4},
            {"type": "null"},
        ]
    },
    "n": {"type": ["integer", "null"], "const": 1},
    "best_of": {"type": ["integer", "null"], "const": 1},
    # this server does no tool calling: only the values that ask for none (validation.NO_TOOL_CHOICE)
    "tool_choice": {"enum": ["none", "auto", None]},
    "function_call": {"enum": ["none", "auto", None]},
    "priority": {
        "enum": ["interactive", "background", None],
        "description": "background work is admitted after interactive work and may be preempted; "
        "left out: background for a prompt over limits.bulk_prompt_tokens (1024), else interactive",
    },
    "stream": {"type": ["boolean", "null"]},
    "stream_options": {"type": ["object", "null"], "properties": {"include_usage": {"type": "boolean"}}},
    "response_format": {
        "type": ["object", "null"],
        "required": ["type"],
        "properties": {
            "type": {"enum": ["text", "json_object", "json_schema"]},
            "json_schema": {
                "type": "object",
                "required": ["name", "schema"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "schema": {"type": "object"},
                    "strict": {"type": "boolean"},
                },
            },
        },
    },
}
_CONTENT = {
    "oneOf": [
        {"type": "string"},
        {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "text"],
                "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
            },
        },
    ]
}
# content may be null or left out on an assistant turn only (clients send that after a refusal)
_MESSAGE = {
    "oneOf": [
        {
            "type": "object",
            "required": ["role", "content"],
            "properties": {"role": {"enum": ["system", "developer", "user"]}, "content": _CONTENT},
        },
        {
            "type": "object",
            "required": ["role"],
            "properties": {
                "role": {"const": "assistant"},
                "content": {"oneOf": [*_CONTENT["oneOf"], {"type": "null"}]},
            },
        },
    ]
}
_USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        k: {"type": "integer", "minimum": 0} for k in ("prompt_tokens", "completion_tokens", "total_tokens")
    },
}
_FINISH = {"enum": ["stop", "length", None]}
_TOP = {
    "type": "object",
    "required": ["token", "logprob", "bytes"],
    "properties": {
        "token": {"type": "string"},
        "logprob": {"type": "number", "maximum": 0},
        "bytes": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}},
    },
}
_CHAT_ENTRY = {
    **_TOP,
    "required": ["token", "logprob", "bytes", "top_logprobs"],
    "properties": {**_TOP["properties"], "top_logprobs": {"type": "array", "items": _TOP}},
}
_CHAT_LOGPROBS = {
    "type": ["object", "null"],
    "required": ["content"],
    "properties": {"content": {"type": "array", "items": _CHAT_ENTRY}},
}
_TEXT_LOGPROBS = {
    "type": ["object", "null"],
    "required": ["tokens", "token_logprobs", "top_logprobs", "text_offset"],
    "properties": {
        "tokens": {"type": "array", "items": {"type": "string"}},
        "token_logprobs": {"type": "array", "items": {"type": "number"}},
        "top_logprobs": {"type": "array", "items": {"type": "object"}},
        "text_offset": {"type": "array", "items": {"type": "integer"}},
    },
}
_OBJ_HEAD = {"id": {"type": "string"}, "created": {"type": "integer"}, "model": {"type": "string"}}
_JOB_PROPS = {
    "id": {"type": "string"},
    "filename": {"type": "string"},
    "status": {"enum": ["queued", "running", "done", "error"]},
    "error": {"type": ["string", "null"]},
    "num_chars": {"type": "integer"},
    "created": {"type": "number"},
    "updated": {"type": "number"},
    "level": {"type": "integer"},
    "energy_joules": {"type": ["number", "null"]},
    "progress": {
        "type": "object",
        "required": ["chunks_done", "chunks_total"],
        "properties": {
            "chunks_done": {"type": "integer"},
            "chunks_total": {"type": "integer"},
            "chunks_partial": {
                "type": "number",
                "minimum": 0,
                "description": "while running: parts' worth of work done by the parts "
                "in the engine (prompt read, summary written)",
            },
        },
    },
}

SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "code", "param"],
                "properties": {
                    "message": {"type": "string", "minLength": 1},
                    "type": {"type": "string"},
                    "code": {"type": ["string", "null"]},
                    "param": {"type": ["string", "null"]},
                },
            }
        },
    },
    "ChatCompletionRequest": {
        "type": "object",
        "required": ["messages"],
        "properties": {
            **_SAMPLING,
            "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
            "logprobs": {"type": ["boolean", "null"]},
            "top_logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
        },
    },
    "CompletionRequest": {
        "type": "object",
        "required": ["prompt"],
        "properties": {
            **_SAMPLING,
            "prompt": {
                "oneOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": 1},
                ]
            },
            "logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 5},
        },
    },
    "ChatCompletion": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {
            **_OBJ_HEAD,
            "object": {"const": "chat.completion"},
            "usage": _USAGE,
            "choices": {
                "type": "array",
                "minItems": 1,
                "maxItems": 1,
                "items": {
                    "type": "object",
                    "required": ["index", "message", "finish_reason"],
                    "properties": {
                        "index": {"const": 0},
                        "finish_reason": _FINISH,
                        "logprobs": _CHAT_LOGPROBS,
                        "message": {
                            "type": "object",
                            "required": ["role", "content"],
                            "properties": {"role": {"const": "assistant"}, "content": {"type": "string"}},
                        },
                    },
                },
            },
        },
    },
    "Completion": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {
            **_OBJ_HEAD,
            "object": {"const": "text_completion"},
            "usage": _USAGE,
            "choices": {
                "type": "array",
                "minItems": 1,
                "maxItems": 1,
                "items": {
                    "type": "object",
                    "required": ["index", "text", "logprobs", "finish_reason"],
                    "properties": {
                        "index": {"const": 0},
                        "text": {"type": "string"},
                        "logprobs": _TEXT_LOGPROBS,
                        "finish_reason": _FINISH,
                    },
                },
            },
        },
    },
    "Model": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "model"},
            "created": {"type": "integer"},
            "owned_by": {"type": "string"},
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": ref("Model")}},
    },
    "Health": {
        "type": "object",
        "required": ["status", "model"],
        "properties": {
            "status": {"enum": ["loading", "ready", "draining", "failed", "stalled"]},
            "model": {"type": "string"},
            "detail": {"type": "string"},
            "running": {"type": "integer"},
            "waiting": {"type": "integer"},
        },
    },
    "Plan": {
        "type": "object",
        "required": [
            "max_batch_size",
            "max_input_len",
            "max_output_len",
            "max_seq_len",
            "kv_cache_tokens",
            "prefill_chunk_tokens",
            "reasons",
        ],
        "properties": {"reasons": {"type": "object", "additionalProperties": {"type": "string"}}},
    },
    "Telemetry": {
        "type": "object",
        "required": ["source", "ram_total_bytes", "ram_available_bytes"],
        "properties": {
            "source": {"type": "string"},
            "ram_total_bytes": {"type": "integer"},
            "ram_available_bytes": {"type": "integer"},
        },
    },
    "SummaryJob": {
        "type": "object",
        "required": [*_JOB_PROPS, "result"],
        "properties": {**_JOB_PROPS, "result": {"type": ["string", "null"]}},
    },
    "SummaryJobList": {
        "type": "object",
        "required": ["data", "has_more"],
        "properties": {
            "has_more": {"type": "boolean"},
            "data": {
                "type": "array",
                "description": "newest first, without the results (GET a job for its result)",
                "items": {
                    "type": "object",
                    "required": list(_JOB_PROPS),
                    "properties": _JOB_PROPS,
                    "not": {"required": ["result"]},
                },
            },
        },
    },
}

_GEN_ERRORS = _errors(400, 404, 413, 415, 429, 503)
# one server-sent event: "data" holds a chunk's JSON (a ChatCompletionChunk or Completion
# object, or an Error object), and the last event of a stream is "data: [DONE]"
_SSE = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "required": ["data"],
            "description": "one SSE event",
            "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}},
        }
    }
}
_JOB_ID = [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}]

PATHS = {
    "/v1/chat/completions": {
        "post": {
            "operationId": "createChatCompletion",
            "summary": "chat completion (stream: SSE)",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ref("ChatCompletionRequest")}},
            },
            "responses": {
                "200": {
                    "description": "the completion, or an SSE stream of chunks",
                    "content": {"application/json": {"schema": ref("ChatCompletion")}, **_SSE},
                },
                **_GEN_ERRORS,
            },
        }
    },
    "/v1/completions": {
        "post": {
            "operationId": "createCompletion",
            "summary": "plain-prompt completion (stream: SSE)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref("CompletionRequest")}}},
            "responses": {
                "200": {
                    "description": "the completion, or an SSE stream of chunks",
                    "content": {"application/json": {"schema": ref("Completion")}, **_SSE},
                },
                **_GEN_ERRORS,
            },
        }
    },
    "/v1/models": {"get": {"operationId": "listModels", "responses": {"200": _json(ref("ModelList"), "models")}}},
    "/v1/models/{model}": {
        "get": {
            "operationId": "retrieveModel",
            "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": _json(ref("Model"), "the model"), **_errors(404)},
        }
    },
    "/health": {
        "get": {
            "operationId": "health",
            "responses": {"200": _json(ref("Health"), "ready"), "503": _json(ref("Health"), "loading or draining")},
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "responses": {
                "200": {
                    "description": "Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/api/plan": {
        "get": {"operationId": "plan", "responses": {"200": _json(ref("Plan"), "the memory plan"), **_errors(503)}}
    },
    "/api/telemetry": {
        "get": {
            "operationId": "telemetry",
            "responses": {"200": _json(ref("Telemetry"), "the latest reading"), **_errors(503)},
        }
    },
    "/api/summaries": {
        "post": {
            "operationId": "createSummary",
            "summary": "summarize a .txt, .md, .html or .pdf",
            "parameters": [{"name": "filename", "in": "query", "schema": {"type": "string"}}],
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {
                                "file": {
                                    "type": "string",
                                    "contentMediaType": "application/octet-stream",
                                    "minLength": 1,
                                }
                            },
                        }
                    },
                    "text/plain": {"schema": {"type": "string", "minLength": 1}},
                },
            },
            "responses": {"202": _json(ref("SummaryJob"), "the job, queued"), **_errors(400, 413, 415, 503)},
        },
        "get": {
            "operationId": "listSummaries",
            "parameters": [
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 10**9}},
            ],
            "responses": {"200": _json(ref("SummaryJobList"), "jobs, newest first"), **_errors(400, 503)},
        },
    },
    "/api/summaries/{job_id}": {
        "get": {
            "operationId": "getSummary",
            "parameters": _JOB_ID,
            "responses": {"200": _json(ref("SummaryJob"), "the job"), **_errors(404, 503)},
        },
        "delete": {
            "operationId": "deleteSummary",
            "parameters": _JOB_ID,
            "responses": {"204": {"description": "deleted"}, **_errors(404, 503)},
        },
    },
    "/api/summaries/{job_id}/events": {
        "get": {
            "operationId": "summaryEvents",
            "parameters": _JOB_ID,
            "responses": {"200": {"description": "SSE progress until done", "content": _SSE}, **_errors(404, 429, 503)},
        }
    },
    "/openapi.json": {
        "get": {
            "operationId": "openapi",
            "responses": {
                "200": {"description": "this document", "content": {"application/json": {"schema": {"type": "object"}}}}
            },
        }
    },
}


def document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "edge-llm",
            "version": "0.1.0",
            "description": "OpenAI-compatible API, operations and document summaries of edge-llm",
        },
        "paths": PATHS,
        "components": {"schemas": SCHEMAS},
    }


@bp.get("/openapi.json")
def openapi():
    return jsonify(document())
