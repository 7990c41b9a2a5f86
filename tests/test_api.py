"""The OpenAI-compatible API, driven by the official openai client and raw HTTP."""

import json

import openai
import pytest

GREEDY = {"temperature": 0, "max_tokens": 24}
HELLO = [{"role": "user", "content": "Name three colours."}]


def test_models_lists_the_served_model_and_its_aliases(client, server):
    ids = [m.id for m in client.models.list().data]
    assert ids == [server.model_id, "gpt-4o-mini"]  # the alias configured in conftest
    assert client.models.retrieve(server.model_id).id == server.model_id
    assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-17")


def test_chat_non_stream(client, server):
    r = client.chat.completions.create(model=server.model_id, messages=HELLO, **GREEDY)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.strip()
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_matches_non_stream_and_reports_usage(client, server):
    whole = client.chat.completions.create(model=server.model_id, messages=HELLO, **GREEDY)
    chunks = list(
        client.chat.completions.create(
            model=server.model_id, messages=HELLO, stream=True, stream_options={"include_usage": True}, **GREEDY
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_sse_wire_format_ends_with_done(http, server):
    r = http.post("/v1/chat/completions", {"model": server.model_id, "messages": HELLO, "stream": True, **GREEDY})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line for line in r.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0][len("data: ") :])
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"]["role"] == "assistant"


def test_greedy_is_deterministic(client, server):
    def once():
        return client.chat.completions.create(model=server.model_id, messages=HELLO, **GREEDY)

    a, b = server.from_empty_cache(once), server.from_empty_cache(once)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_seed_makes_sampling_repeatable(client, server):
    kw = {
        "model": server.model_id,
        "messages": HELLO,
        "temperature": 1.0,
        "top_p": 0.9,
        "extra_body": {"top_k": 40},
        "max_tokens": 16,
        "seed": 1234,
    }
    a = server.from_empty_cache(lambda: client.chat.completions.create(**kw)).choices[0].message.content
    b = server.from_empty_cache(lambda: client.chat.completions.create(**kw)).choices[0].message.content
    assert a == b


def test_system_and_assistant_turns_go_through_the_template(client, server):
    msgs = [
        {"role": "system", "content": "You answer with one word."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "What is 2+2?"},
    ]
    r = client.chat.completions.create(model=server.model_id, messages=msgs, **GREEDY)
    # chatml turns: 4 messages, each wrapped in <|im_start|>role ... <|im_end|>
    prompt = server.daemon.runtime.backend.render_chat(msgs)
    assert prompt.count("<|im_start|>") == 5 and prompt.endswith("<|im_start|>assistant\n")
    assert r.usage.prompt_tokens == len(server.daemon.runtime.backend.tokenize(prompt, False))


def test_stop_string_ends_generation_and_is_not_returned(client, server):
    free = client.completions.create(model=server.model_id, prompt="1, 2, 3, 4,", temperature=0, max_tokens=20)
    text = free.choices[0].text
    assert " 6" in text  # the model counts on
    r = client.completions.create(
        model=server.model_id, prompt="1, 2, 3, 4,", temperature=0, max_tokens=20, stop=[" 6"]
    )
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == text[: text.index(" 6")]


def test_completions_stream(client, server):
    chunks = list(
        client.completions.create(
            model=server.model_id, prompt="The capital of France is", stream=True, temperature=0, max_tokens=8
        )
    )
    assert "".join(c.choices[0].text for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_max_tokens_gives_length(client, server):
    r = client.completions.create(model=server.model_id, prompt="Once upon a time", temperature=0, max_tokens=5)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5


def test_max_tokens_above_plan_is_capped_and_said_in_a_header(http, server):
    limit = server.engine.plan.max_output_len
    r = http.post(
        "/v1/completions", {"model": server.model_id, "prompt": "Hi", "max_tokens": limit + 100, "temperature": 0}
    )
    assert r.status_code == 200
    assert r.headers["x-max-tokens-capped"] == str(limit)
    assert r.json()["usage"]["completion_tokens"] <= limit


def test_generation_past_the_context_stops_with_length(http, server):
    plan = server.engine.plan
    words = " ".join(["apple"] * (plan.max_seq_len - 8))
    tokens = server.daemon.runtime.backend.tokenize(words, True)
    assert plan.max_seq_len - len(tokens) < 20
    r = http.post("/v1/completions", {"model": server.model_id, "prompt": words, "max_tokens": 100, "temperature": 0})
    body = r.json()
    assert r.status_code == 200, body
    assert body["choices"][0]["finish_reason"] in ("length", "stop")
    assert body["usage"]["total_tokens"] <= plan.max_seq_len


# -- errors: OpenAI's shape, honest codes, and the server keeps serving --------------------------


def error_of(r, status):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "code"} and err["message"]
    return err


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content"),
        ({"messages": HELLO, "temperature": "hot"}, "temperature"),
        ({"messages": HELLO, "temperature": 3}, "temperature"),
        ({"messages": HELLO, "top_p": 0}, "top_p"),
        ({"messages": HELLO, "max_tokens": 0}, "max_tokens"),
        ({"messages": HELLO, "max_tokens": True}, "max_tokens"),
        ({"messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": HELLO, "stop": [""]}, "stop"),
        ({"messages": HELLO, "n": 2}, "n"),
        ({"messages": HELLO, "stream": "yes"}, "stream"),
        ({"messages": HELLO, "stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": HELLO, "logprobs": "yes"}, "logprobs"),
        ({"messages": HELLO, "top_logprobs": 2}, "top_logprobs"),
        ({"messages": HELLO, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"messages": HELLO, "seed": 2**64}, "seed"),
        ({"messages": HELLO, "presence_penalty": 2.5}, "presence_penalty"),
        ({"messages": HELLO, "min_p": -0.1}, "min_p"),
        ({"messages": HELLO, "logit_bias": {"abc": 1}}, "logit_bias"),
        ({"messages": HELLO, "logit_bias": {"5": 101}}, "logit_bias"),
        ({"messages": HELLO, "logit_bias": {"99999999": 1}}, "logit_bias"),
        ({"messages": HELLO, "response_format": {"type": "xml"}}, "response_format"),
        (
            {"messages": HELLO, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format.json_schema.schema",
        ),
        (
            {
                "messages": HELLO,
                "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wizard"}}},
            },
            "response_format.json_schema.schema",
        ),
        ({"messages": HELLO, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
    ],
)
def test_invalid_fields_are_400_naming_the_field(http, server, body, param):
    err = error_of(http.post("/v1/chat/completions", {"model": server.model_id, **body}), 400)
    assert err["param"] == param and err["type"] == "invalid_request_error"


def test_invalid_json_and_wrong_media_type(http):
    err = error_of(http.post("/v1/chat/completions", b"{not json", {"Content-Type": "application/json"}), 400)
    assert err["code"] == "invalid_json"
    error_of(http.post("/v1/chat/completions", b"[1, 2]", {"Content-Type": "application/json"}), 400)
    error_of(http.post("/v1/chat/completions", b"hello", {"Content-Type": "text/plain"}), 415)


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-17", messages=HELLO)
    assert "gpt-17" in e.value.body["message"]


def test_body_over_the_limit_is_413(http, server):
    big = "x" * (server.daemon.cfg.server.max_body_bytes + 10)
    err = error_of(http.post("/v1/completions", {"model": server.model_id, "prompt": big}), 413)
    assert "exceeds the limit" in err["message"]


def test_prompt_beyond_the_context_names_both_counts(client, server):
    limit = server.engine.plan.max_input_len
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=server.model_id, prompt="hello " * (limit + 50), max_tokens=4)
    err = e.value.body
    assert err["code"] == "context_length_exceeded"
    assert err["prompt_tokens"] > limit and err["max_input_tokens"] == limit
    assert str(err["prompt_tokens"]) in err["message"] and str(limit) in err["message"]


def test_unknown_route_and_method_are_openai_shaped(http):
    error_of(http.get("/v1/nothing"), 404)
    error_of(http.get("/v1/chat/completions"), 405)


def test_server_still_serves_after_errors(client, server, http):
    http.post("/v1/chat/completions", b"{", {"Content-Type": "application/json"})
    http.post("/v1/completions", {"model": server.model_id, "prompt": "x" * 2_000_000})
    r = client.chat.completions.create(model=server.model_id, messages=HELLO, **GREEDY)
    assert r.choices[0].message.content


def test_health_and_plan(http, server):
    r = http.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ready"
    plan = http.get("/api/plan").json()
    assert plan["max_batch_size"] == 8
    # the layout `auto` picks: the test limits leave room for a stream per slot, so a pool is never forced
    assert "cannot hold" not in plan["reasons"]["kv_layout"], plan["reasons"]["kv_layout"]
    if plan["kv_layout"] == "per_slot":
        assert plan["kv_cache_tokens"] == plan["num_seqs"] * plan["max_seq_len"]
    else:
        assert plan["kv_layout"] == "unified" and "ms in one pool" in plan["reasons"]["kv_layout"]  # measured
    assert set(plan["reasons"]) >= {"max_batch_size", "max_seq_len", "kv_cache_tokens"}


def test_dns_rebinding_host_is_refused(http, server):
    err = error_of(http.get("/v1/models", {"Host": "evil.example:8000"}), 403)
    assert err["code"] == "host_not_allowed"
    assert http.get("/v1/models", {"Host": f"localhost:{server.daemon.port}"}).status_code == 200
