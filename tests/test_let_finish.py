"""A step of background prefill alone is stopped when a visitor arrives, and its work so far is
lost; with limits.background_finish_ms, one expected to end within 0.75 of it (LATE_GRACE to spare)
is let finish instead, and stopped after all if it runs a LATE_GRACE of the window past its
expected end, so the window bounds the visitor's wait (no model: a stand-in backend whose
background step waits to be released). The daemon's default is in config.LimitsConfig."""

import threading
import time

import pytest
from conftest import stand_in_plan
from test_stream_interval import PLAN, OneToken

from edge_llm.engine.batch import ScheduledChunk, SchedulerOutput
from edge_llm.engine.request import Priority, Request, SamplingParams
from edge_llm.engine.step_engine import PrefillCost, StepEngine

FINISH_WITHIN_S = 0.4  # the window these tests give (limits.background_finish_ms = 400)


class HeldStep(OneToken):
    """Background prefill steps wait for `release` (or 5 s) once `hold` is set, and are stopped as
    llama.cpp's abort callback stops one: an interrupt makes the step end with its chunks not done
    (LlamaCppBackend.execute). Interrupts are recorded."""

    def __init__(self):
        self.hold, self.running, self.release, self.interrupts = False, threading.Event(), threading.Event(), []
        self.stop = False

    def execute(self, out):
        if out.abortable and self.hold:
            self.stop = False
            self.started = time.monotonic()
            self.running.set()
            deadline = time.monotonic() + 5
            while not self.release.is_set() and not self.stop and time.monotonic() < deadline:
                time.sleep(0.002)
            if self.stop:
                for chunk in out.chunks:
                    chunk.done = False
                return {}
        return super().execute(out)

    def interrupt(self, requested):
        self.interrupts.append((requested, time.monotonic()))
        self.stop = requested


def chunk_step(start: int, tokens: int = 64) -> SchedulerOutput:
    """A step of one background prompt chunk: tokens at positions start.. (what PrefillCost reads)."""
    req = Request([1] * (start + tokens), SamplingParams(max_tokens=1), priority=Priority.BACKGROUND)
    return SchedulerOutput([ScheduledChunk(req, [1] * tokens, start, False)], abortable=True)


def learnt(token_s: float) -> PrefillCost:
    """A cost model that has seen steps of token_s a token, early and late in a prompt."""
    cost = PrefillCost()
    for start in (0, 1000):
        cost.observe(chunk_step(start), 64 * token_s)
    return cost


def engine_in_a_long_prompt(token_s: float, finish_within: float = FINISH_WITHIN_S):
    backend = HeldStep()
    engine = StepEngine(backend, PLAN, finish_within=finish_within)
    engine._add(Request(list(range(1, 400)), SamplingParams(temperature=0, max_tokens=4), priority=Priority.BACKGROUND))
    engine.step()  # a first stoppable step measures a prompt token's cost
    assert engine.prefill_cost.num_observed == 1
    engine.prefill_cost = learnt(token_s)  # what this device would have measured
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
    # counted as a stopped step, with the time it ran (its work lost)
    stats = engine.stats()
    assert stats["background_steps_stopped"] == 1 and stats["background_stopped_s"] > 0
    # and the engine's time by kind of step: the first (run out) and the stopped one, which ran at
    # least from its start to the visitor's arrival
    times = engine.step_time_s
    assert times["background"] > 0 and times["stopped"] >= backend.interrupts[0][1] - backend.started
    assert times["visitor"] == times["shared"] == times["failed"] == 0


def test_a_step_near_its_end_finishes_and_is_stopped_only_if_it_overruns():
    backend, engine, worker = engine_in_a_long_prompt(token_s=FINISH_WITHIN_S / 2 / 64)  # half the window
    before = engine.prefill_cost.predict(chunk_step(64))
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
    assert waited <= FINISH_WITHIN_S + 0.5  # a sanity bound (a loaded machine's timer may run late)
    assert backend.interrupts[0][1] - backend.started >= FINISH_WITHIN_S / 2  # not before its expected end
    backend.release.set()
    worker.join(5)
    # it ran past its estimate and was stopped: counted, and learnt from (a step there costs more)
    stats = engine.stats()
    assert stats["background_steps_stopped_late"] == 1 and stats["background_steps_stopped"] == 1
    assert engine.prefill_cost.predict(chunk_step(64)) > before * 1.1  # (a lower bound: it cost more)


def test_a_step_expected_to_end_within_the_window_but_without_its_grace_stops_at_once():
    # expected 1.95 s from its start, in a 2 s window: with the 0.5 s grace an overrun would keep
    # the visitor waiting past the window, so it is stopped now (the rule before let it finish).
    # The visitor may come up to 0.45 s after the step's start and still be past the threshold
    backend, engine, worker = engine_in_a_long_prompt(token_s=1.95 / 64, finish_within=2.0)
    engine.submit(visitor())
    assert [r for r, _ in backend.interrupts] == [True] and engine.num_let_finish == 0
    backend.release.set()
    worker.join(5)
    assert engine.stats()["background_steps_stopped"] == 1


def test_a_step_that_ends_in_time_is_not_stopped_by_the_late_check():
    # expected to end 1.2 s from its start, within 0.75 of a 2 s window: let finish, the late check
    # ~1.7 s after the visitor came
    backend, engine, worker = engine_in_a_long_prompt(token_s=1.2 / 64, finish_within=2.0)
    engine.submit(visitor())
    backend.release.set()  # it ends now, well before its expected end
    worker.join(5)
    time.sleep(2.0)  # past the late check
    assert backend.interrupts == [] and engine.num_let_finish == 1
    assert engine.stats()["background_steps_stopped"] == 0  # it finished: nothing lost


def test_without_a_measured_cost_a_visitor_stops_the_step():
    backend = HeldStep()
    engine = StepEngine(backend, PLAN, finish_within=FINISH_WITHIN_S)
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


def test_the_cost_model_follows_a_prompt_token_s_cost_growing_with_its_context():
    # 4.4 ms a token plus 1.5 ms per 1,000 cells it attends over: 4.6 ms at the start of a
    # 3,000-token prompt, 8.9 at its end (2 CPU cores: 4.6-9 ms late in one, session 11), with +-3%
    # noise, in 256-token steps along 3 prompts
    def seconds(out):
        x1, x2 = PrefillCost().features(out)
        return 0.0044 * x1 + 0.0015 * x2

    cost, noise = PrefillCost(), [1.03, 0.97, 1.0, 1.02, 0.98, 1.01]
    steps = [chunk_step(start, 256) for _ in range(3) for start in range(0, 3000, 256)]
    recent = None  # the engine's estimate before: one figure a token, 0.3 to the newest step's
    for k, out in enumerate(steps):
        took = seconds(out) * noise[k % len(noise)]
        cost.observe(out, took)
        recent = took / 256 if recent is None else recent + 0.3 * (took / 256 - recent)
    late, early = chunk_step(3072, 256), chunk_step(0, 256)
    assert abs(cost.predict(late) / seconds(late) - 1) < 0.05
    assert abs(cost.predict(early) / seconds(early) - 1) < 0.05
    # where one recent figure a token ran 10% short late in a prompt and 40% long at its start
    assert recent * 256 < 0.9 * seconds(late) and recent * 256 > 1.4 * seconds(early)


def test_the_cost_model_without_two_contexts_to_tell_apart():
    cost = PrefillCost()
    assert cost.predict(chunk_step(0)) is None
    cost.observe(chunk_step(0), 0.32)  # a first step: a cost a token alone, whatever its context
    assert cost.coefficients() == (pytest.approx(0.005), 0.0)
    assert cost.predict(chunk_step(0, 128)) == pytest.approx(0.64)  # more tokens cost more
    cost.observe(chunk_step(0), 0.0)  # nothing learnt from a step of no time (a stand-in's)
    assert cost.num_observed == 1
    # a step late in a prompt that took less than one at its start would make b, the context's
    # cost, negative: a cost a token alone is kept (never a negative cost)
    cost.observe(chunk_step(2000), 0.30)
    assert cost.coefficients() == (pytest.approx(0.00483, rel=1e-2), 0.0)


def test_the_engine_s_time_by_kind_of_step():
    """A visitor alone, then beside a background request, then that alone (no model: OneToken's
    steps; chat_slowdown 0: background always rides along)."""
    engine = StepEngine(OneToken(), PLAN, chat_slowdown=0)
    engine._add(visitor())  # 2 tokens: its prompt's step samples the first
    engine.step()
    times = engine.step_time_s
    assert times["visitor"] > 0 and times["shared"] == times["background"] == 0
    engine._add(Request([9] * 10, SamplingParams(temperature=0, max_tokens=4), priority=Priority.BACKGROUND))
    engine.step()  # the visitor's last token beside the background prompt
    assert times["shared"] > 0 and times["background"] == 0
    engine.step()
    assert times["background"] > 0 and times["host"] > 0 and times["stopped"] == times["failed"] == 0


def test_the_daemons_warm_up_is_no_visitor():
    """appliance.warm_up runs as background work: as a visitor's request it made background steps
    smaller for NEAR_S after every start (Scheduler.visitor_expected), and the mixed workload's first
    question waited for a step let finish (0.34 s against 0.11, session 16)."""
    from edge_llm.appliance import warm_up

    class Tokenizing(OneToken):
        def tokenize(self, text, add_special=True):
            return [5, 6, 7]

    plan = stand_in_plan(max_input_len=512, max_seq_len=1024, max_output_len=512)
    engine = StepEngine(Tokenizing(), plan)
    engine.start()
    try:
        warm_up(engine)
        stats = engine.call(engine.stats)
        assert stats["visitor_expected"] is False and stats["visitor_pause_s"] is None
        req, _ = engine.make_request([5, 6, 8], SamplingParams(temperature=0), 2)  # a visitor
        assert [o for o in engine.generate(req)][-1].finish_reason == "length"
        assert engine.call(engine.stats)["visitor_expected"] is True
    finally:
        engine.stop()
