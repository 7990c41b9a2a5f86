"""The one front every caller sees (HTTP handlers, summaries, the CLI, benchmarks): submit,
cancel, stream, call; the queue bound (429); per-request output queues; metrics and the
energy meter. Behind it one engine thread owns the backend (llama.cpp contexts are not
thread safe): HTTP threads put work in the inbox and read each request's own queue (the
mlx-lm pattern). The engines are siblings below this class: the llama.cpp step engine
(step_engine.py) and the TensorRT-LLM executor engine (trt_engine.py); each has its own
rules for admission, cancelling, pausing and memory pressure."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from edge_llm.engine.metrics import EngineMetrics
from edge_llm.engine.request import Priority, Request, RequestOutput, RequestStatus, SamplingParams
from edge_llm.telemetry.energy import EnergyMeter

if TYPE_CHECKING:
    from edge_llm.planner import Plan

log = logging.getLogger(__name__)
IDLE_WAIT_S = 0.25  # an idle loop still wakes this often (watchdog liveness)


class PromptTooLong(ValueError):
    def __init__(self, num_tokens: int, limit: int, what: str):
        super().__init__(f"the prompt has {num_tokens} tokens; {what} allows at most {limit}")
        self.num_tokens, self.limit = num_tokens, limit


class QueueFull(Exception):
    """The waiting queue is at its bound; the caller should retry later (HTTP 429)."""


class EngineBusy(TimeoutError):
    """The engine thread did not run a call in time (a long step, a hung backend): HTTP 503."""


class EngineFront:
    """What the engines share. An engine implements, for its thread only: step(), has_work,
    num_queued, num_running, _add, _end, _pause, _relieve_pressure, _update_gauges, stats()
    and clear_prefix_cache()."""

    def __init__(self, backend, plan: Plan, max_queue: int = 64, metrics: EngineMetrics | None = None):
        self.backend = backend
        self.plan = plan
        self.max_queue = max_queue  # requests not yet admitted (preempted ones are not new load)
        self.metrics = metrics or EngineMetrics()
        self.metrics.kv_budget.set(plan.kv_cache_tokens)
        self.energy = EnergyMeter(self.metrics)  # joules per request (issue 24); a source is attached later
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._num_pending = 0  # submitted, not yet taken by the engine thread
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self.last_progress = time.monotonic()  # last step or idle wake-up
        self.num_steps = 0
        self.hang_seconds = 0.0  # debug hook: the next loop iteration sleeps this long

    # -- called from any thread ------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._inbox.put(("wake", None))
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.energy.use(None)  # a source's own thread (NVML's sampler) stops with the engine

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def num_waiting(self) -> int:
        """Everything not running: submitted, queued, preempted (a drain waits for all of it)."""
        return self._num_pending + self.num_queued + self.num_preempted

    @property
    def num_preempted(self) -> int:
        return 0

    def make_request(
        self,
        prompt_tokens: list[int],
        params: SamplingParams,
        max_tokens: int | None,
        priority: Priority = Priority.INTERACTIVE,
    ) -> tuple[Request, bool]:
        """Check a prompt against the plan and fix max_tokens; returns (request, capped)
        where capped says max_tokens was lowered to the plan's max_output_len."""
        n, p = len(prompt_tokens), self.plan
        if n == 0:
            raise PromptTooLong(0, p.max_input_len, "an empty prompt")
        if n > p.max_input_len:
            raise PromptTooLong(n, p.max_input_len, f"max_input_len (max_seq_len {p.max_seq_len})")
        wanted = p.max_output_len if max_tokens is None else max_tokens
        capped = wanted > p.max_output_len
        # past the context a request stops with finish_reason "length"
        limit = min(wanted, p.max_output_len, p.max_seq_len - n)
        return Request(list(prompt_tokens), replace(params, max_tokens=limit), priority=priority), capped

    def submit(self, req: Request) -> None:
        """Queue a request, or raise QueueFull: the only bound; the engine thread takes every
        request this lets in (it refused some after preemptions had refilled its queue)."""
        with self._lock:
            queued = self._num_pending + self.num_queued
            if queued >= self.max_queue:
                self.metrics.rejected.labels("queue_full").inc()
                raise QueueFull(f"{queued} requests are waiting (limit {self.max_queue})")
            self._num_pending += 1
        self._inbox.put(("add", req))
        if req.priority == Priority.INTERACTIVE:  # a step of background prefill stops for it
            self._interrupt_for_visitor()

    def _interrupt_for_visitor(self) -> None:
        """Any thread: an interactive request arrived (an engine may let a step nearly done finish)."""
        self.backend.interrupt(True)

    def cancel(self, req: Request) -> None:
        if not req.is_finished:
            self._inbox.put(("abort", req))

    def preempt_newest(self, n: int, message: str) -> None:
        """Memory pressure: each engine frees what it can show freed, and ends nothing else."""
        self._inbox.put(("preempt", (n, message)))

    def set_admission_paused(self, paused: bool) -> None:
        self._inbox.put(("pause", paused))

    def call(self, fn, timeout: float = 10.0):
        """Run fn() on the engine thread (which owns the backend) and return its result."""
        box: queue.SimpleQueue = queue.SimpleQueue()
        self._inbox.put(("call", (fn, box)))
        try:
            ok, value = box.get(timeout=timeout)
        except queue.Empty:
            raise EngineBusy(f"the engine thread did not answer within {timeout:.0f} s") from None
        if not ok:
            raise value
        return value

    def generate(self, req: Request) -> Iterator[RequestOutput]:
        """Submit req and yield its outputs (in-process use: CLI, benchmarks)."""
        self.submit(req)
        yield from self.stream(req)

    def stream(
        self, req: Request, poll_s: float | None = None, is_abandoned: Callable[[], bool] = lambda: False
    ) -> Iterator[RequestOutput | None]:
        """Yield a submitted request's outputs until it finishes. With poll_s, yield None after
        each poll_s seconds without output, and stop when is_abandoned(). The request is
        cancelled whenever the consumer stops early (a closed stream, a vanished client)."""
        try:
            while True:
                try:
                    out = req.outputs.get(timeout=poll_s)
                except queue.Empty:
                    if is_abandoned():
                        return
                    yield None
                    continue
                yield out
                if out.finish_reason is not None:
                    return
        finally:
            self.cancel(req)

    # -- the engine thread ------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.backend.interrupt(False)  # what arrives from here on is seen by this step's schedule
                self._drain_inbox(block=not self.has_work)
                if self.hang_seconds:
                    hang, self.hang_seconds = self.hang_seconds, 0.0
                    time.sleep(hang)
                self.step()
            except Exception:  # keep serving; the failing batch was already ended
                log.exception("engine step failed")
                continue  # not progress: an engine failing every step stops the watchdog's pings
            self.last_progress = time.monotonic()

    def _drain_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=IDLE_WAIT_S) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(*item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
        self._update_gauges()

    def _handle(self, kind: str, arg) -> None:
        if kind == "add":
            with self._lock:
                self._num_pending -= 1
                if not arg.is_finished:  # else cancelled before the loop saw it
                    self._add(arg)  # under the lock: submit counts it as pending or queued, never neither
        elif kind == "abort":
            self._end(arg, RequestStatus.FINISHED_CANCELLED)
        elif kind == "preempt":
            self._relieve_pressure(*arg)
        elif kind == "pause":
            self._pause(arg)
            self.metrics.admission_paused.set(1 if arg else 0)
        elif kind == "call":
            fn, box = arg
            try:
                box.put((True, fn()))
            except Exception as e:  # handed back to the caller's thread
                box.put((False, e))

    def _finished(self, req: Request) -> None:
        """A request ended (counted before the client can see its end)."""
        self.backend.release(req.request_id)
        self.metrics.observe_finished(req)
