"""A step of background prefill alone is stopped when a visitor arrives, and its work so far is
lost; one expected to end within FINISH_WITHIN_S is let finish instead, and stopped after all if
it runs past that (no model: a stand-in backend whose background step waits to be released)."""

import threading
import time

from test_stream_interval import PLAN, OneToken

from edge_llm.engine.request import Priority, Request, SamplingParams
from edge_llm.engine.step_engine import FINISH_WITHIN_S, StepEngine


class HeldStep(OneToken):
    """Background prefill steps wait for `release` (or 5 s) once `hold` is set; interrupts are recorded."""

    def __init__(self):
        self.hold, self.running, self.release, self.interrupts = False, threading.Event(), threading.Event(), []

    def execute(self, out):
        if out.abortable and self.hold:
            self.running.set()
            self.release.wait(5)
        return super().execute(out)

    def interrupt(self, requested):
        self.interrupts.append((requested, time.monotonic()))


def engine_in_a_long_prompt(token_s: float, finish_within: float = FINISH_WITHIN_S):
    backend = HeldStep()
    engine = StepEngine(backend, PLAN, finish_within=finish_within)
    engine._add(Request(list(range(1, 400)), SamplingParams(temperature=0, max_tokens=4), priority=Priority.BACKGROUND))
    engine.step()  # a first stoppable step measures a prompt token's cost
    assert engine._background_token_s is not None
    engine._background_token_s = token_s  # what this device would have measured
    backend.hold = True
    worker = threading.Thread(target=engine.step)
    worker.start()
    assert backend.running.wait(5)
    return backend, engine, worker


def visitor():
    return Request([5, 6, 7], SamplingParams(temperature=0, max_tokens=2))


def test_a_step_far_from_its_end_stops_for_a_visitor_at_once():
    backend, engine, worker = engine_in_a_long_prompt(token_s=1.0)  # 64 tokens: a minute to go
    engine.submit(visitor())
    assert [r for r, _ in backend.interrupts] == [True]
    backend.release.set()
    worker.join(5)
    assert engine.num_let_finish == 0


def test_a_step_near_its_end_finishes_and_is_stopped_only_if_it_overruns():
    backend, engine, worker = engine_in_a_long_prompt(token_s=FINISH_WITHIN_S / 2 / 64)  # half the window
    t0 = time.monotonic()
    engine.submit(visitor())
    assert backend.interrupts == []  # let finish
    assert engine.num_let_finish == 1 and engine.stats()["background_steps_let_finish"] == 1
    # the stand-in step never ends by itself: stopped once past its expected end (and a little)
    deadline = time.monotonic() + 2
    while not backend.interrupts and time.monotonic() < deadline:
        time.sleep(0.005)
    assert [r for r, _ in backend.interrupts] == [True]
    waited = backend.interrupts[0][1] - t0
    assert waited <= FINISH_WITHIN_S * 1.1 + 0.05
    backend.release.set()
    worker.join(5)


def test_a_step_that_ends_in_time_is_not_stopped_by_the_late_check():
    backend, engine, worker = engine_in_a_long_prompt(token_s=FINISH_WITHIN_S / 2 / 64)
    engine.submit(visitor())
    backend.release.set()  # it ends now, before its expected end
    worker.join(5)
    time.sleep(FINISH_WITHIN_S)  # past the late check
    assert backend.interrupts == []


def test_without_a_measured_cost_a_visitor_stops_the_step():
    backend = HeldStep()
    engine = StepEngine(backend, PLAN)
    engine._add(Request(list(range(1, 400)), SamplingParams(temperature=0, max_tokens=4), priority=Priority.BACKGROUND))
    backend.hold = True
    worker = threading.Thread(target=engine.step)
    worker.start()
    assert backend.running.wait(5)
    engine.submit(visitor())
    assert [r for r, _ in backend.interrupts] == [True]
    backend.release.set()
    worker.join(5)


def test_with_background_finish_ms_0_a_visitor_always_stops_the_step():
    backend, engine, worker = engine_in_a_long_prompt(token_s=FINISH_WITHIN_S / 2 / 64, finish_within=0.0)
    engine.submit(visitor())
    assert [r for r, _ in backend.interrupts] == [True] and engine.num_let_finish == 0
    backend.release.set()
    worker.join(5)
