"""When a visitor arrives during a step of background prefill alone (a step ggml can stop), stop
it now, unless it is about to end: then it finishes and its work is kept, and the visitor waits
at most that long (a timer stops it if it runs over).

Stopping throws the step's work away. On 2 cores a background step is 256 prompt tokens, ~1-1.5 s,
and in a kiosk run each chat stopped one: 42 stops lost 39.4 s of a 178 s summary job (session 8's
step trace), which is most of what the visitor cost the job. A step in its last FINISH_WITHIN_S
is worth finishing: the visitor's first token comes at most that much later (0.24-0.26 s measured
against a 1 s goal), and the work of the whole step is kept.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

FINISH_WITHIN_S = 0.4  # a step expected to end within this is let finish
OVERRUN_S = 0.1  # past its expected end, a step let finish is stopped after all
COST_EMA = 0.3  # weight of the newest finished step in the cost per token


class StepStopper:
    def __init__(
        self,
        interrupt: Callable[[bool], None],
        finish_within_s: float = FINISH_WITHIN_S,
        clock: Callable[[], float] = time.perf_counter,
        timer: Callable[..., threading.Timer] = threading.Timer,
    ):
        self._interrupt = interrupt
        self.finish_within_s = finish_within_s
        self._clock = clock
        self._timer = timer
        self.seconds_per_token: float | None = None  # learned from background steps that ran to their end
        self._step: tuple[int, float, float | None] | None = None  # (serial, began, expected end)
        self._serial = 0
        self._lock = threading.Lock()
        self.num_let_finish = 0  # visitors who waited for a step's end rather than stop it
        self.num_stopped = 0

    # -- the engine thread --------------------------------------------------------------------
    def begin(self, num_tokens: int) -> None:
        """A stoppable step of num_tokens starts."""
        now = self._clock()
        end = now + self.seconds_per_token * num_tokens if self.seconds_per_token else None
        with self._lock:
            self._serial += 1
            self._step = (self._serial, now, end)

    def end(self, num_tokens: int, completed: bool) -> None:
        """It ended; completed: it ran to its end (not stopped, not failed)."""
        with self._lock:
            step, self._step = self._step, None
        if step is None or not completed or num_tokens <= 0:
            return
        cost = (self._clock() - step[1]) / num_tokens
        old = self.seconds_per_token
        self.seconds_per_token = cost if old is None else old + COST_EMA * (cost - old)

    # -- any thread ----------------------------------------------------------------------------
    def visitor_arrived(self) -> None:
        """An interactive request was submitted."""
        with self._lock:
            step = self._step
        if step is not None and step[2] is not None:
            left = step[2] - self._clock()
            if 0 <= left <= self.finish_within_s and self.finish_within_s > 0:
                self.num_let_finish += 1
                t = self._timer(left + OVERRUN_S, self._stop_if_running, (step[0],))
                t.daemon = True
                t.start()
                return
        if step is not None:
            self.num_stopped += 1
        self._interrupt(True)  # no step running: the next one, if it is background, stops at once

    def _stop_if_running(self, serial: int) -> None:
        with self._lock:
            running = self._step is not None and self._step[0] == serial
        if running:
            self._interrupt(True)

    def stats(self) -> dict:
        return {"background_steps_let_finish": self.num_let_finish, "background_steps_stopped": self.num_stopped}
