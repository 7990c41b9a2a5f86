"""A visitor's arrival during a step of background prefill: stopped now, or let finish when it is
about to end (model-free: a hand-driven clock and timer)."""

from edge_llm.engine.stopper import FINISH_WITHIN_S, OVERRUN_S, StepStopper


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Timers:
    """threading.Timer's interface, fired by hand."""

    def __init__(self):
        self.pending = []

    def __call__(self, delay, fn, args):
        timers = self

        class T:
            daemon = False

            def start(self):
                timers.pending.append((delay, fn, args))

        return T()

    def fire(self):
        for _, fn, args in self.pending:
            fn(*args)
        self.pending = []


def make():
    calls, clock, timers = [], Clock(), Timers()
    return StepStopper(calls.append, clock=clock, timer=timers), calls, clock, timers


def test_until_a_step_has_been_timed_every_arrival_stops_it():
    s, calls, clock, _ = make()
    s.begin(256)
    clock.now += 0.9
    s.visitor_arrived()
    assert calls == [True] and s.num_stopped == 1


def test_a_step_about_to_end_finishes_and_one_far_from_it_stops():
    s, calls, clock, timers = make()
    s.begin(256)
    clock.now += 1.28  # 5 ms a token
    s.end(256, completed=True)
    assert abs(s.seconds_per_token - 0.005) < 1e-9
    s.begin(256)
    clock.now += 0.3  # about 1 s left
    s.visitor_arrived()
    assert calls == [True]
    s.end(256, completed=False)  # stopped: not a measure of the cost
    s.begin(256)
    clock.now += 1.28 - FINISH_WITHIN_S / 2  # within the window
    s.visitor_arrived()
    assert calls == [True] and s.num_let_finish == 1
    assert abs(timers.pending[0][0] - (FINISH_WITHIN_S / 2 + OVERRUN_S)) < 1e-9  # the visitor's longest wait
    clock.now += FINISH_WITHIN_S / 2
    s.end(256, completed=True)
    timers.fire()  # the step ended in time: the timer stops nothing
    assert calls == [True]


def test_a_step_let_finish_that_runs_over_is_stopped_by_the_timer():
    s, calls, clock, timers = make()
    s.begin(100)
    clock.now += 0.5
    s.end(100, completed=True)
    s.begin(100)
    clock.now += 0.45
    s.visitor_arrived()
    assert calls == []
    timers.fire()  # still running at its expected end plus the margin
    assert calls == [True]


def test_an_arrival_between_steps_stops_the_next_background_step_at_once():
    s, calls, _, _ = make()
    s.visitor_arrived()
    assert calls == [True] and s.num_stopped == 0  # nothing was running
