"""Defects from the review of the engine (issue 21), each shown against the real model where the
defect lives in llama.cpp's use, and without a model where it lives in the bookkeeping."""

import time

import llama_cpp as L
import pytest
from conftest import NO_EOS, stand_in_plan

from edge_llm.engine.backends.base import BackendError
from edge_llm.engine.front import EngineBusy
from edge_llm.engine.kv_cache import KVCacheManager
from edge_llm.engine.request import Priority, Request, SamplingParams
from edge_llm.engine.scheduler import Scheduler


def test_aborting_a_preempted_request_unpins_its_kept_prefix():
    s = Scheduler(KVCacheManager(3, 10_000, max_cached=2, streams=True), 2, 64, 8)
    req = Request(list(range(100, 300)), SamplingParams(max_tokens=5))
    s.add(req)
    s.schedule()
    req.num_computed = 64
    s.preempt(req)
    assert s.kv.pinned  # kept for its owner
    assert s.abort(req)
    assert not s.kv.pinned and req.request_id not in s.kv.pinned_for  # nobody comes back for it


def test_a_failing_grammar_leaks_no_sampler_made_before_it(server):
    backend = server.engine.backend
    params = SamplingParams(temperature=0.7, logit_bias=((5, 1.0),), grammar='root ::= "unterminated')

    def build():
        with pytest.raises(BackendError):
            backend._sampler("leak-check", params)
        chain = backend._samplers["leak-check"]
        n = L.llama_sampler_chain_n(chain)  # what release() will free with the chain
        backend.release("leak-check")
        return n

    assert server.engine.call(build) == 1  # the logit-bias sampler, in the chain, freed with it


def test_memory_pressure_does_not_end_an_interactive_request_for_nothing(server, http):
    import threading

    result = {}

    def ask():
        result["r"] = http.post("/v1/completions", {"prompt": "Count: one, two,", "max_tokens": 48, "temperature": 0})

    t = threading.Thread(target=ask)
    t.start()
    deadline = time.monotonic() + 60
    while not server.engine.num_running:  # wait for the state, not for a time
        assert time.monotonic() < deadline and t.is_alive()
        time.sleep(0.01)
    server.engine.preempt_newest(1, "available RAM below critical (test)")
    t.join(120)
    body = result["r"].json()
    assert result["r"].status_code == 200 and body["choices"][0]["finish_reason"] == "length", body


def test_a_call_the_engine_thread_cannot_run_in_time_is_an_engine_busy_error(server):
    with pytest.raises(EngineBusy, match="did not answer within"):
        server.engine.call(lambda: time.sleep(0.6), timeout=0.1)
    server.engine.call(lambda: None, timeout=30)  # the loop goes on
    assert isinstance(EngineBusy("x"), TimeoutError)


RUNS_ON = tuple((int(t), float(b)) for t, b in NO_EOS.items())  # logit_bias: no end token, max_tokens ends it


def _running(engine, req, deadline_s: float = 120) -> None:
    """Wait for a state: req has generated a token and still runs."""
    deadline = time.monotonic() + deadline_s
    while not req.output_tokens:
        assert time.monotonic() < deadline and not req.is_finished, engine.stats()
        time.sleep(0.01)


def test_a_sampler_failing_for_one_sequence_ends_only_its_request(server):
    """The grammar sampler is built on the engine thread at the request's first sample; when
    llama.cpp cannot make it, that request ends with the error and a request decoding in the
    same step goes on (the BackendError ended every request in the step)."""
    engine, backend = server.engine, server.engine.backend
    steady, _ = engine.make_request(
        backend.tokenize("Count from 1 to 500: 1, 2, 3, 4,"), SamplingParams(temperature=0, logit_bias=RUNS_ON), 400
    )
    engine.submit(steady)
    try:
        _running(engine, steady)
        bad = Request(
            backend.tokenize("Hi"), SamplingParams(temperature=0.7, max_tokens=8, grammar='root ::= "unterminated')
        )
        outs = list(engine.generate(bad))  # the HTTP layer checks grammars first: made by hand here
        assert outs[-1].finish_reason == "error" and "grammar" in outs[-1].error
        assert not steady.is_finished, steady.finish_reason  # it decoded in the step that failed
    finally:
        engine.cancel(steady)
    assert list(engine.stream(steady))[-1].finish_reason == "cancelled"


def test_a_request_the_front_let_in_is_not_refused_when_preemption_refills_the_queue(server):
    """Between a submit and the engine thread's add, memory pressure preempted a sequence back
    into the waiting queue: the scheduler's own bound, counting it, ended the request that the
    front had accepted with an error (not a 429). Now the front alone bounds the queue."""
    import threading

    engine, backend = server.engine, server.engine.backend
    bg, _ = engine.make_request(
        backend.tokenize("Count from 1 to 500: 1, 2, 3, 4,"),
        SamplingParams(temperature=0, logit_bias=RUNS_ON),
        400,
        Priority.BACKGROUND,
    )
    engine.submit(bg)
    blocking, submitted, preempted = threading.Event(), threading.Event(), []

    def preempt_after_the_submit():  # on the engine thread, before it takes the new request
        blocking.set()
        submitted.wait(30)
        if bg in engine.scheduler.running:
            engine.scheduler.preempt(bg)  # what the pressure rule does to background work
            preempted.append(bg)

    old = engine.max_queue
    try:
        _running(engine, bg)
        engine.max_queue = engine.scheduler.max_queue = 1  # as a SIGHUP reload set both
        caller = threading.Thread(target=engine.call, args=(preempt_after_the_submit, 60))
        caller.start()
        assert blocking.wait(60)
        req, _ = engine.make_request(backend.tokenize("Hello"), SamplingParams(temperature=0), 4)
        engine.submit(req)  # nothing waits yet: accepted
        submitted.set()
        caller.join(60)
        assert preempted, "the background request was not running: nothing shown"
        outs = list(engine.stream(req))
        assert outs[-1].finish_reason == "length" and outs[-1].error is None, outs[-1]
    finally:
        engine.max_queue = engine.scheduler.max_queue = old
        submitted.set()
        engine.cancel(bg)


def test_a_call_past_its_timeout_is_a_503_with_retry_after(server):
    """EngineBusy reaches a client as 503 engine_busy, never a 500."""
    from edge_llm.server import create_app

    app = create_app(server.daemon.runtime)
    app.add_url_rule("/test-busy", "test_busy", lambda: server.engine.call(lambda: time.sleep(0.5), timeout=0.05))
    r = app.test_client().get("/test-busy", headers={"Host": "127.0.0.1"})
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert r.get_json()["error"]["code"] == "engine_busy"


from test_trtllm import fake_trtllm, make_engine_dir, start_engine  # noqa: E402,F401 (the fixture too)


def test_memory_pressure_on_the_executor_engine_generates_nothing_twice(fake_trtllm, tmp_path):  # noqa: F811
    """Against the FAKE tensorrt_llm: pressure while a background request runs in the executor."""
    backend, plan, engine = start_engine(make_engine_dir(tmp_path))
    try:
        req, _ = engine.make_request(backend.tokenize("hi"), SamplingParams(temperature=0), 60)
        req.priority = Priority.BACKGROUND
        outs = []
        for out in engine.generate(req):
            if not outs:
                engine.preempt_newest(1, "available RAM below critical (test)")
            outs.append(out)
        assert len(req.output_tokens) == 60 and outs[-1].finish_reason == "length"
        assert engine.call(lambda: (engine._by_id, engine.has_work)) == ({}, False)
    finally:
        engine.stop()


def _two_finishing(monkeypatch=None):
    """A step engine (no model) with one step scheduled in which two requests finish."""
    import types

    from edge_llm.engine.step_engine import StepEngine

    plan = stand_in_plan(max_batch_size=4, kv_layout="unified")
    engine = StepEngine(types.SimpleNamespace(release=lambda rid: None, interrupt=lambda r: None), plan)
    reqs = [Request([1, 2, 3, i], SamplingParams(temperature=0, max_tokens=1)) for i in (4, 5)]
    for r in reqs:
        engine._add(r)
    out = engine.scheduler.schedule()
    assert [c.request for c in out.chunks] == reqs and all(c.sample for c in out.chunks)
    return engine, reqs, out


def _ends(req) -> list:
    outs = []
    while not req.outputs.empty():
        outs.append(req.outputs.get_nowait())
    return [o.finish_reason for o in outs if o.finish_reason is not None]


def test_a_failure_counting_one_end_publishes_every_end(monkeypatch):
    """_finished() raising for the first finished request left the second finished and never
    published: its client waited for ever (cancel() ignores finished requests)."""
    from edge_llm.engine.batch import SampledToken

    engine, reqs, out = _two_finishing()
    sampled = {c.request.seq_id: SampledToken(7, b"x", False) for c in out.chunks}
    real = engine._finished

    def finished(req):
        if req is reqs[0]:
            raise RuntimeError("release failed")
        real(req)

    monkeypatch.setattr(engine, "_finished", finished)
    with pytest.raises(RuntimeError, match="release failed"):  # still raised: the loop logs it
        engine._apply(out, sampled)
    assert [_ends(r) for r in reqs] == [["length"], ["length"]]


def test_requests_postprocess_finished_before_it_failed_are_published():
    from edge_llm.engine.batch import SampledToken

    engine, reqs, out = _two_finishing()
    sampled = {reqs[0].seq_id: SampledToken(7, b"x", False)}  # the second's token is missing: KeyError
    with pytest.raises(KeyError):
        engine._apply(out, sampled)
    assert reqs[0].is_finished and _ends(reqs[0]) == ["length"]
    assert not reqs[1].is_finished and _ends(reqs[1]) == []
