"""GET /openapi.json: a valid OpenAPI 3.1 document, true of the real responses, and a
bounded schemathesis run against a live server (no 5xx; every error OpenAI-shaped)."""

import collections
import json

import jsonschema
import pytest
import schemathesis
from conftest import RunningDaemon, make_config
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from edge_llm.server.openapi import document

FUZZ_CASES = 30  # per operation; bounded so CI stays in budget


def conforms(name: str, instance) -> None:
    schema = {"$ref": f"#/components/schemas/{name}", "components": document()["components"]}
    jsonschema.Draft202012Validator(schema).validate(instance)


def test_document_is_valid_openapi_3_1_and_served(http):
    doc = http.get("/openapi.json").json()
    validate(doc)
    assert doc["openapi"] == "3.1.0" and doc == json.loads(json.dumps(document()))
    assert {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/models/{model}",
        "/health",
        "/metrics",
        "/api/plan",
        "/api/telemetry",
        "/api/summaries",
        "/api/summaries/{job_id}",
    } <= set(doc["paths"])


def test_real_responses_match_the_document(http, server):
    chat = http.post(
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 2,
        },
    )
    conforms("ChatCompletion", chat.json())
    text = http.post("/v1/completions", {"prompt": "Hello", "max_tokens": 4, "logprobs": 1})
    conforms("Completion", text.json())
    conforms("ModelList", http.get("/v1/models").json())
    conforms("Model", http.get(f"/v1/models/{server.model_id}").json())
    conforms("Health", http.get("/health").json())
    conforms("Plan", http.get("/api/plan").json())
    conforms("Telemetry", http.get("/api/telemetry").json())
    job = http.post("/api/summaries?filename=a.txt", b"One sentence. Two sentences.", {"Content-Type": "text/plain"})
    conforms("SummaryJob", job.json())
    conforms("SummaryJob", http.get(f"/api/summaries/{job.json()['id']}").json())
    conforms("SummaryJobList", http.get("/api/summaries").json())
    for r in (
        http.post("/v1/chat/completions", {"messages": []}),
        http.get("/v1/models/nope"),
        http.post("/v1/chat/completions", b"x", {"Content-Type": "text/plain"}),
        http.get("/nope"),
        http.post("/api/summaries?filename=a.png", b"x", {"Content-Type": "image/png"}),
    ):
        assert r.status_code >= 400
        conforms("Error", r.json())
    with pytest.raises(jsonschema.ValidationError):  # the check can fail
        conforms("ChatCompletion", text.json())


def conforms_to(name: str, instance) -> bool:
    try:
        conforms(name, instance)
    except jsonschema.ValidationError:
        return False
    return True


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("best_of", 1),
        ("best_of", 2),
        ("tool_choice", "auto"),
        ("tool_choice", None),
        ("tool_choice", "required"),
        ("tool_choice", {"type": "function", "function": {"name": "f"}}),
        ("function_call", "none"),
        ("function_call", {"name": "f"}),
    ],
)
def test_the_document_allows_the_values_the_server_accepts(http, field, value):
    """best_of and tool_choice are validated by the server; the document says the same."""
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, field: value}
    r = http.post("/v1/chat/completions", body)
    assert r.status_code in (200, 400), r.content
    assert conforms_to("ChatCompletionRequest", body) == (r.status_code == 200), r.content


@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory):
    """Its own daemon with tiny generations, so thousands of fuzzed requests stay cheap."""
    d = RunningDaemon(
        make_config(
            **{
                "daemon.state_dir": str(tmp_path_factory.mktemp("fuzz")),
                "limits.max_output_len": 8,
                "limits.max_seq_len": 512,
                "limits.kv_cache_tokens": 4096,
                "summarize.summary_tokens": 8,
            }
        )
    )
    yield d
    d.stop()


@schemathesis.check
def openai_shaped_error(ctx, response, case):
    if response.status_code >= 400:
        conforms("Error", json.loads(response.content))


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    openai_shaped_error,
]


def test_fuzzed_requests_get_no_5xx_and_openai_shaped_errors(fuzz_daemon):
    """schemathesis' strategies driven by hypothesis directly (its pytest plugin does not load
    under pytest 9): every operation, FUZZ_CASES generated requests each."""
    api = schemathesis.openapi.from_url(fuzz_daemon.url + "/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 13
    calls = []
    for op in operations:

        @given(case=op.as_strategy())
        @settings(max_examples=FUZZ_CASES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def fuzz(case):
            calls.append(case.call_and_validate(base_url=fuzz_daemon.url, checks=CHECKS, timeout=60).status_code)

        fuzz()
    print(sorted(collections.Counter(calls).items()))
    assert len(calls) >= 2 * len(operations) and any(c >= 400 for c in calls) and any(c < 300 for c in calls)
