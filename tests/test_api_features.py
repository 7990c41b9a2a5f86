"""What clients expect from a local OpenAI-compatible server: JSON mode and JSON Schema
(constrained decoding), logprobs, penalties, min_p, logit_bias, aliases. The real model,
the real server on loopback, the official openai client."""

import json
import math
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from edge_llm.engine.request import Request, RequestStatus, SamplingParams

ASK = [{"role": "user", "content": "Give a JSON object with the keys name and age for a cat called Tom who is 3."}]
REVIEW = [{"role": "user", "content": "Review: 'The soup was cold and the waiter was rude.' Give the sentiment."}]
SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["sentiment", "score", "summary"],
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "score": {"type": "integer"},
        "summary": {"type": "string", "maxLength": 40},
    },
}


def test_json_object_mode_output_parses(client, server):
    r = client.chat.completions.create(
        model=server.model_id, messages=ASK, temperature=0, max_tokens=300, response_format={"type": "json_object"}
    )
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_json_schema_is_always_satisfied_over_20_seeded_samples(client, server):
    def sample(seed):
        return client.chat.completions.create(
            model=server.model_id,
            messages=REVIEW,
            temperature=0.9,
            seed=seed,
            max_tokens=120,
            response_format={"type": "json_schema", "json_schema": {"name": "review", "schema": SCHEMA}},
        )

    with ThreadPoolExecutor(8) as pool:  # continuous batching runs them together
        results = list(pool.map(sample, range(20)))
    for r in results:
        assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
        doc = json.loads(r.choices[0].message.content)
        assert set(doc) == {"sentiment", "score", "summary"}
        assert doc["sentiment"] in ("positive", "negative", "neutral")
        assert isinstance(doc["score"], int) and isinstance(doc["summary"], str) and len(doc["summary"]) <= 40
    assert len({r.choices[0].message.content for r in results}) > 1  # sampled, not one fixed answer


def test_json_strings_cannot_hold_control_characters():
    """llama-cpp-python's converter allowed them (json.loads refuses them): llama.cpp's rule is used."""
    from edge_llm.engine import grammar

    g = grammar.from_json_schema({"type": "object", "properties": {"s": {"type": "string"}}})
    char = next(line for line in g.splitlines() if line.startswith("char ::="))
    assert "\\x00-\\x1F" in char and "\\x7F" in char


def test_streamed_json_mode_also_parses(client, server):
    chunks = client.chat.completions.create(
        model=server.model_id,
        messages=ASK,
        temperature=0,
        max_tokens=300,
        response_format={"type": "json_object"},
        stream=True,
    )
    assert isinstance(json.loads("".join(c.choices[0].delta.content or "" for c in chunks if c.choices)), dict)


def test_chat_logprobs_are_finite_and_greedy_picks_the_top_entry(client, server):
    r = client.chat.completions.create(
        model=server.model_id, messages=REVIEW, temperature=0, max_tokens=12, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens - (r.choices[0].finish_reason == "stop")
    assert "".join(e.token for e in content).startswith(r.choices[0].message.content)
    for e in content:
        assert math.isfinite(e.logprob) and e.logprob <= 0 and len(e.top_logprobs) == 3
        assert e.top_logprobs[0].token == e.token and e.top_logprobs[0].logprob == pytest.approx(e.logprob)
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
        assert bytes(e.bytes).decode("utf-8", "replace") == e.token
    total = sum(math.exp(t.logprob) for t in content[0].top_logprobs)
    assert 0 < total <= 1.0 + 1e-6


def test_chat_logprobs_stream_and_without_top(client, server):
    chunks = list(
        client.chat.completions.create(
            model=server.model_id, messages=REVIEW, temperature=0, max_tokens=8, logprobs=True, stream=True
        )
    )
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(entries) >= 1 and all(e.top_logprobs == [] and math.isfinite(e.logprob) for e in entries)
    plain = client.chat.completions.create(model=server.model_id, messages=REVIEW, temperature=0, max_tokens=8)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_in_the_legacy_shape(client, server):
    r = client.completions.create(
        model=server.model_id, prompt="The capital of France is", temperature=0, max_tokens=6, logprobs=2
    )
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) >= 1
    assert lp.text_offset[0] == 0 and all(b > a for a, b in zip(lp.text_offset, lp.text_offset[1:], strict=False))
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) == 2 and max(top.values()) == pytest.approx(logprob) and top[token] == pytest.approx(logprob)


def test_logit_bias_forces_and_forbids_tokens(client, server):
    base = client.completions.create(
        model=server.model_id, prompt="One, two, three,", temperature=0, max_tokens=1, logprobs=0
    )
    first = server.engine.backend.tokenize(base.choices[0].text, False)
    assert len(first) == 1
    banned = client.completions.create(
        model=server.model_id, prompt="One, two, three,", temperature=0, max_tokens=1, logit_bias={str(first[0]): -100}
    )
    assert banned.choices[0].text != base.choices[0].text
    forced_id = server.engine.backend.tokenize(" banana", False)[-1]
    forced = client.completions.create(
        model=server.model_id, prompt="One, two, three,", temperature=0, max_tokens=3, logit_bias={str(forced_id): 100}
    )
    assert forced.choices[0].text == server.engine.backend.sampled(forced_id).piece.decode() * 3


def test_min_p_one_keeps_only_the_most_likely_token(client, server):
    greedy = (
        server.from_empty_cache(
            lambda: client.completions.create(
                model=server.model_id, prompt="Once upon a time", temperature=0, max_tokens=16
            )
        )
        .choices[0]
        .text
    )
    for seed in (1, 2, 3):
        sampled = (
            server.from_empty_cache(
                lambda s=seed: client.completions.create(
                    model=server.model_id,
                    prompt="Once upon a time",
                    temperature=2.0,
                    seed=s,
                    extra_body={"min_p": 1.0},
                    max_tokens=16,
                )
            )
            .choices[0]
            .text
        )
        assert sampled == greedy


def test_penalties_change_repetitive_greedy_output(client, server):
    prompt = "Repeat after me forever: la la la la la la la la"
    plain = client.completions.create(model=server.model_id, prompt=prompt, temperature=0, max_tokens=24)
    penalized = client.completions.create(
        model=server.model_id, prompt=prompt, temperature=0, max_tokens=24, frequency_penalty=2.0, presence_penalty=2.0
    )
    words = plain.choices[0].text.split()
    assert penalized.choices[0].text != plain.choices[0].text
    pwords = penalized.choices[0].text.split()
    assert len(set(pwords)) / max(1, len(pwords)) >= len(set(words)) / max(1, len(words))


def test_an_alias_is_served_and_unknown_names_stay_404(client, server):
    r = client.chat.completions.create(model="gpt-4o-mini", messages=REVIEW, temperature=0, max_tokens=4)
    assert r.choices[0].message.content and r.model == server.model_id
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-17", messages=REVIEW, max_tokens=4)


def test_assistant_content_null_is_accepted(client, server):
    msgs = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "Say yes."},
    ]
    r = client.chat.completions.create(model=server.model_id, messages=msgs, temperature=0, max_tokens=4)
    assert r.choices[0].message.content


def test_earliest_stop_string_wins_whatever_its_place_in_the_list():
    req = Request([1], SamplingParams(max_tokens=10, stop=("b", "a")))
    req.append_token(7, b"xab")
    assert req.status == RequestStatus.FINISHED_STOPPED and req.text == "x"
    req = Request([1], SamplingParams(max_tokens=10, stop=("lo", "hel")))
    for piece in (b"say ", b"he", b"llo"):
        req.append_token(7, piece)
    assert req.text == "say "


def test_an_unmarked_long_prompt_is_scheduled_as_a_document_and_a_marked_one_as_asked(server, client, http):
    """Any OpenAI client marks nothing: a prompt over limits.bulk_prompt_tokens is background
    work (as a summary part is), a short one interactive, and a priority said is kept."""

    def admitted() -> dict[str, float]:
        counts = {"interactive": 0.0, "background": 0.0}
        for line in http.get("/metrics").text.splitlines():
            for p in counts:
                if line.startswith(f'edge_llm_queue_seconds_count{{priority="{p}"}}'):
                    counts[p] = float(line.split()[-1])
        return counts

    document = " ".join(f"Gate {i} let {i * 7 % 50} cars through at {i} o'clock." for i in range(80))
    assert server.daemon.runtime.config.limits.bulk_prompt_tokens == 1024
    cases = [
        ({}, document, "background"),
        ({"priority": "interactive"}, document, "interactive"),
        ({}, "Hi!", "interactive"),
        ({"priority": "background"}, "Hi!", "background"),
    ]
    for extra, text, expected in cases:
        before = admitted()
        r = client.chat.completions.with_raw_response.create(
            model=server.model_id,
            messages=[{"role": "user", "content": text}],
            max_tokens=1,
            temperature=0,
            extra_body=extra,
        )
        usage = r.parse().usage
        assert (usage.prompt_tokens > 1024) == (text == document)
        after = admitted()
        assert after[expected] == before[expected] + 1, (extra, usage.prompt_tokens, before, after)
        assert sum(after.values()) == sum(before.values()) + 1
