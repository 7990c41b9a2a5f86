"""Defects from the review of the engine (issue 21), each shown against the real model where the
defect lives in llama.cpp's use, and without a model where it lives in the bookkeeping."""

import time

import llama_cpp as L
import pytest

from edge_llm.engine.backends.base import BackendError
from edge_llm.engine.kv_cache import KVCacheManager
from edge_llm.engine.loop import EngineBusy
from edge_llm.engine.request import Request, SamplingParams
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
        result["r"] = http.post("/v1/completions", {"prompt": "Count: one, two,", "max_tokens": 48,
                                                    "temperature": 0})

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


from test_trtllm import fake_trtllm, make_engine_dir, start_engine  # noqa: E402,F401 (the fixture too)


def test_memory_pressure_on_the_executor_engine_generates_nothing_twice(fake_trtllm, tmp_path):  # noqa: F811
    """Against the FAKE tensorrt_llm: pressure while a background request runs in the executor."""
    from edge_llm.engine.request import Priority
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
        assert engine.call(lambda: (engine._by_id, engine.scheduler.has_work)) == ({}, False)
    finally:
        engine.stop()
