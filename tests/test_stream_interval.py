"""A stream's text goes to its reader at most every limits.stream_interval_ms (the first text and
the end at once), all of it, in order (no model: a stand-in backend that samples a fixed token)."""

from conftest import stand_in_plan

from edge_llm.engine.batch import SampledToken
from edge_llm.engine.request import Request, RequestStatus, SamplingParams
from edge_llm.engine.step_engine import StepEngine


class OneToken:
    """Stands in for a backend: every sampled token is ' a' (the engine's own code runs)."""

    def execute(self, out):
        return {c.request.seq_id: SampledToken(7, b" a", False) for c in out.chunks if c.sample}

    def release(self, request_id):
        pass

    def interrupt(self, requested):
        pass


PLAN = stand_in_plan()


def outputs_of(interval: float, max_tokens: int = 20) -> list:
    engine = StepEngine(OneToken(), PLAN, stream_interval=interval)
    req = Request([1, 2, 3], SamplingParams(temperature=0, max_tokens=max_tokens))
    engine._add(req)
    while engine.has_work:
        engine.step()
    return drained(req)


def drained(req: Request) -> list:
    """Every output waiting in req's queue, in order."""
    outs = []
    while not req.outputs.empty():
        outs.append(req.outputs.get())
    return outs


def test_every_token_is_an_output_without_an_interval():
    outs = outputs_of(0.0)
    assert [o.text for o in outs] == [" a"] * 20 and outs[-1].finish_reason == "length"


def test_within_the_interval_text_waits_and_nothing_is_lost():
    outs = outputs_of(60.0)  # longer than the whole run: the first token, then the rest with the end
    assert [o.text for o in outs] == [" a", " a" * 19]
    assert outs[-1].finish_reason == "length" and outs[-1].num_output_tokens == 20


def test_the_interval_lets_text_through_once_it_has_passed():
    req = Request([1], SamplingParams(max_tokens=10))
    for i, now in enumerate((0.0, 0.01, 0.019, 0.021, 0.03)):
        req.append_token(7, f"{i}".encode())
        req.publish(interval=0.02, now=now)
    req.finish(RequestStatus.FINISHED_STOPPED)
    req.publish(interval=0.02, now=0.031)  # the end goes at once
    assert [o.text for o in drained(req)] == ["0", "123", "4"]


def test_a_preempted_stream_gets_its_held_text_at_once():
    engine = StepEngine(OneToken(), PLAN, stream_interval=60.0)
    req = Request([1, 2, 3], SamplingParams(temperature=0, max_tokens=50))
    engine._add(req)
    for _ in range(6):
        engine.step()
    engine.scheduler.preempt(req)
    held = req.text
    engine.step()  # counts the preemption and publishes what was held (then resumes it: room is back)
    assert held == " a" * 6 and [o.text for o in drained(req)] == [" a", " a" * 5]


def _count_to_fifty(server, max_tokens: int) -> dict:
    """A greedy request that runs to max_tokens (no end of text), with each token's logprob."""
    from conftest import NO_EOS

    return dict(
        model=server.model_id,
        messages=[{"role": "user", "content": "Count from one to fifty."}],
        temperature=0,
        max_tokens=max_tokens,
        logit_bias=NO_EOS,
        logprobs=True,
    )


def _text_of(tokens) -> str:
    """The text of the tokens' bytes, as the request generated them."""
    return bytes(b for t in tokens for b in t.bytes).decode("utf-8", "replace")


def test_over_http_a_stream_carries_several_tokens_an_event_and_loses_none(server, client):
    """The real server and the openai client: with an interval the events are fewer than the
    tokens, and the streamed text is exactly the text of the tokens the request generated (their
    logprobs' bytes, sent along in the same events), none lost, none twice. (Not compared with an
    unstreamed twin: on a shared server a twin's prompt comes from the prefix cache, its batches
    differ, and greedy text can part at a near-tie.)"""
    ask = _count_to_fifty(server, 48)
    server.engine.stream_interval = 0.25  # the engine reads it each step (the test server's is 0)
    try:
        chunks = [c for c in client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True})]
    finally:
        server.engine.stream_interval = 0.0
    events = [c.choices[0] for c in chunks if c.choices and c.choices[0].delta.content]
    text = "".join(e.delta.content for e in events)
    tokens = [t for e in events for t in (e.logprobs.content if e.logprobs else [])]
    assert len(tokens) == 48 and chunks[-1].usage.completion_tokens == 48
    assert _text_of(tokens) == text and len(text) > 48
    assert len(events) < 48 / 2, len(events)  # ~10 ms a token here, a GPU faster: several tokens an event


def test_held_text_of_a_stream_no_step_advances_goes_once_its_interval_passed():
    """A running request left out of steps (a background stream the chat share holds back) still
    gets its held text, at the next step after its interval: clock stepped by hand."""
    clock = [100.0]
    engine = StepEngine(OneToken(), PLAN, stream_interval=0.02)
    engine.clock = lambda: clock[0]
    a = Request([1, 2, 3], SamplingParams(temperature=0, max_tokens=50))
    engine._add(a)
    engine.step()  # its first token: at once
    clock[0] += 0.005
    engine.step()  # within the interval: held
    assert [a.outputs.get_nowait().text] == [" a"] and a.outputs.empty()
    clock[0] += 0.05
    engine._publish([])  # a step that advanced other requests only
    assert not a.outputs.empty() and a.outputs.get_nowait().text == " a" and a.outputs.empty()
    engine.scheduler.abort(a)  # ended elsewhere: no second end from the held list
    a.publish()
    assert a.outputs.get_nowait().finish_reason == "cancelled"
    engine._publish([])
    assert a.outputs.empty() and not engine._held


def test_a_request_that_does_not_stream_gets_its_end_only_with_all_its_text():
    """stream=False (a summary part, a non-streaming API request): one output, the end, with every
    token's text, through a preemption too (whose flush of held text is for streams only)."""
    engine = StepEngine(OneToken(), PLAN, stream_interval=0.0)  # 0: a stream would get every token
    req = Request([1, 2, 3], SamplingParams(temperature=0, max_tokens=30))
    req.stream = False
    engine._add(req)
    for _ in range(8):
        engine.step()
    assert req.outputs.empty() and len(req.output_tokens) == 8
    engine.scheduler.preempt(req)
    while engine.has_work:
        engine.step()
    outs = drained(req)
    assert [o.text for o in outs] == [" a" * 30]
    assert outs[0].finish_reason == "length" and outs[0].num_output_tokens == 30


def test_a_stop_string_is_found_however_little_text_was_sent():
    """The stop search looks at the new text's neighbourhood, not at what went to the reader: a
    request that does not stream (nothing sent until its end) still stops at once, and the stop
    string spanning two tokens is cut off."""
    req = Request([1], SamplingParams(max_tokens=50, stop=("END",)))
    req.stream = False
    for piece in (b"one ", b"two E", b"ND three"):
        req.append_token(7, piece)
    assert req.status == RequestStatus.FINISHED_STOPPED and req.text == "one two "
    assert req.publish() is False and req.outputs.get_nowait().text == "one two "


def test_over_http_a_request_that_does_not_stream_gets_all_its_text_and_logprobs(server, client):
    """The real server and the openai client: an unstreamed answer is the whole of its tokens'
    text (their logprobs' bytes), though the engine sent it to the handler only at the end."""
    r = client.chat.completions.create(**_count_to_fifty(server, 40))
    tokens = r.choices[0].logprobs.content
    assert len(tokens) == 40 and r.usage.completion_tokens == 40 and r.choices[0].finish_reason == "length"
    assert _text_of(tokens) == r.choices[0].message.content


def test_with_many_streams_each_ones_interval_grows_so_all_events_keep_one_rate():
    engine = StepEngine(OneToken(), PLAN, stream_interval=0.02)
    assert [engine.interval_for(n) for n in (0, 1, 4)] == [0.02] * 3
    assert engine.interval_for(8) == 0.04 and engine.interval_for(16) == 0.08
    assert engine.interval_for(64) == 0.1  # at most 100 ms between a reader's texts
    assert StepEngine(OneToken(), PLAN, stream_interval=0.0).interval_for(64) == 0.0  # 0: every token
    assert StepEngine(OneToken(), PLAN, stream_interval=0.25).interval_for(64) == 0.25  # a longer one stays


def test_sixteen_streams_get_fewer_events_than_four_and_lose_no_text():
    """Through the engine: 16 streams of 40 tokens each send fewer events per stream than 4
    streams do at the same interval (steps 2 ms apart on a stepped clock), and every stream's
    text arrives whole."""

    def events_per_stream(n: int) -> float:
        plan = stand_in_plan(num_seqs=16, max_batch_size=16, kv_cache_tokens=16 * 64)
        engine = StepEngine(OneToken(), plan, stream_interval=0.02)
        clock = iter(i * 0.002 for i in range(100_000))
        engine.clock = lambda: next(clock)
        reqs = [Request([1, 2, 3], SamplingParams(temperature=0, max_tokens=40)) for _ in range(n)]
        for r in reqs:
            engine._add(r)
        while engine.has_work:
            engine.step()
        counts = []
        for r in reqs:
            outs = drained(r)
            assert "".join(o.text for o in outs) == " a" * 40 and outs[-1].finish_reason == "length"
            counts.append(len(outs))
        return sum(counts) / n

    four, sixteen = events_per_stream(4), events_per_stream(16)
    assert sixteen <= four / 2, (four, sixteen)  # 80 ms against 20: here 2 events a stream against 5
