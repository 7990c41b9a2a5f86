"""The engine thread: it alone owns the backend. HTTP threads submit requests and read
RequestOutputs from each request's own queue (the mlx-lm pattern)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

from edge_llm.engine.backends.base import Backend
from edge_llm.engine.kv_cache import KVCacheManager
from edge_llm.engine.metrics import EngineMetrics
from edge_llm.engine.request import Priority, Request, RequestOutput, RequestStatus, SamplingParams
from edge_llm.engine.scheduler import QueueFull, Scheduler, SchedulerOutput
from edge_llm.planner import Plan
from edge_llm.telemetry.energy import EnergyMeter

log = logging.getLogger(__name__)
IDLE_WAIT_S = 0.25  # an idle loop still wakes this often (watchdog liveness)


class PromptTooLong(ValueError):
    def __init__(self, num_tokens: int, limit: int, what: str):
        super().__init__(f"the prompt has {num_tokens} tokens; {what} allows at most {limit}")
        self.num_tokens, self.limit = num_tokens, limit


class EngineBusy(TimeoutError):
    """The engine thread did not run a call in time (a long step, a hung backend)."""


class Engine:
    def __init__(self, backend: Backend, plan: Plan, max_queue: int = 64, metrics: EngineMetrics | None = None):
        self.backend = backend
        self.plan = plan
        self.metrics = metrics or EngineMetrics()
        self.metrics.kv_budget.set(plan.kv_cache_tokens)
        self.energy = EnergyMeter(self.metrics)  # joules per request (issue 24); a source is attached later
        kv = KVCacheManager(plan.num_seqs, plan.kv_cache_tokens, max_cached=plan.num_seqs - plan.max_batch_size,
                            streams=plan.kv_layout == "per_slot")
        self.scheduler = Scheduler(kv, plan.max_batch_size, plan.prefill_chunk_tokens, max_queue)
        self.max_queue = max_queue
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._num_pending = 0  # submitted, not yet taken by the loop
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

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def num_waiting(self) -> int:
        return self._num_pending + len(self.scheduler.waiting)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    def make_request(self, prompt_tokens: list[int], params: SamplingParams, max_tokens: int | None,
                     priority: Priority = Priority.INTERACTIVE) -> tuple[Request, bool]:
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
        with self._lock:
            if self.num_waiting >= self.max_queue:
                self.metrics.rejected.labels("queue_full").inc()
                raise QueueFull(f"{self.num_waiting} requests are waiting (limit {self.max_queue})")
            self._num_pending += 1
        self._inbox.put(("add", req))
        if req.priority == Priority.INTERACTIVE:  # a step of background prefill stops for it
            self.backend.interrupt(True)

    def cancel(self, req: Request) -> None:
        if not req.is_finished:
            self._inbox.put(("abort", req))

    def preempt_newest(self, n: int, message: str) -> None:
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

    def stream(self, req: Request, poll_s: float | None = None,
               is_abandoned: Callable[[], bool] = lambda: False) -> Iterator[RequestOutput | None]:
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
                self._drain_inbox(block=not self.scheduler.has_work)
                if self.hang_seconds:
                    hang, self.hang_seconds = self.hang_seconds, 0.0
                    time.sleep(hang)
                self.step()
            except Exception:  # keep serving; the failing batch was already ended
                log.exception("engine step failed")
                continue  # not progress: an engine failing every step stops the watchdog's pings
            self.last_progress = time.monotonic()

    def step(self) -> None:
        out = self.scheduler.schedule()
        if out.is_empty:
            self._count_admissions(out)
            return
        t0 = time.perf_counter()
        self.energy.start()
        try:
            sampled = self.backend.execute(out)
        except Exception as e:
            self._fail_batch(out, str(e))
            raise
        self.scheduler.observe_step(out, time.perf_counter() - t0)
        self.energy.finish_step(out)  # before postprocess publishes: a finished request's energy is final
        self._count_admissions(out)
        if not all(c.done for c in out.chunks):
            self.metrics.interrupted_steps.inc()
        changed = self.scheduler.postprocess(out, sampled)
        for req in changed:
            if req.is_finished:  # counted before the client can see its end
                self._finished(req)
            req.publish()
        self.metrics.generated_tokens.inc(len(changed))
        self.num_steps += 1
        self.metrics.step_seconds.observe(time.perf_counter() - t0)
        self.metrics.batch_tokens.observe(out.num_tokens)
        self._update_gauges()

    def _count_admissions(self, out: SchedulerOutput) -> None:
        m = self.metrics
        preempted, num_resumed = self.scheduler.take_events()
        for req in preempted:
            m.preemptions.labels(req.priority.name.lower()).inc()
        if num_resumed:
            m.resumptions.inc(num_resumed)
        for chunk in out.chunks:  # after the batch ran, before postprocess moves num_computed
            req = chunk.request
            if (chunk.done and chunk.start_pos == req.num_reused and req.is_prefilling
                    and not req.num_preemptions):  # first chunk
                m.prompt_tokens.inc(req.num_prompt_tokens)
                m.reused_tokens.inc(req.num_reused)
                m.queue_time.labels(req.priority.name.lower()).observe(req.admitted_time - req.arrival_time)

    def clear_prefix_cache(self) -> None:
        """Engine thread only (use call()): drop every cached prefix now."""
        self.scheduler.clear_prefix_cache()
        self.step()

    def _fail_batch(self, out: SchedulerOutput, message: str) -> None:
        for chunk in out.chunks:
            self._end(chunk.request, RequestStatus.FINISHED_ERROR, f"engine error: {message}")

    def _end(self, req: Request, status: RequestStatus, error: str | None = None) -> None:
        if self.scheduler.abort(req, status):
            self._finished(req)
            req.publish(error)

    def _finished(self, req: Request) -> None:
        self.backend.release(req.request_id)
        self.metrics.observe_finished(req)

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
            if arg.is_finished:  # cancelled before the loop saw it
                return
            try:
                self.scheduler.add(arg)
            except QueueFull as e:
                arg.finish(RequestStatus.FINISHED_ERROR)
                arg.publish(str(e))
        elif kind == "abort":
            self._end(arg, RequestStatus.FINISHED_CANCELLED)
        elif kind == "preempt":
            self._relieve_pressure(*arg)
        elif kind == "pause":
            self.scheduler.admission_paused = arg
            self.metrics.admission_paused.set(1 if arg else 0)
        elif kind == "call":
            fn, box = arg
            try:
                box.put((True, fn()))
            except Exception as e:  # handed back to the caller's thread
                box.put((False, e))

    def _relieve_pressure(self, n: int, message: str) -> None:
        """Memory pressure: give back the newest background sequences. llama.cpp's KV cache is
        allocated with the context, so ending an interactive request would free no memory, only
        lose its work; admission is already paused (low water)."""
        for req in self.scheduler.newest_running(n):
            if req.priority == Priority.BACKGROUND:
                self.scheduler.preempt(req)  # resumed when admission reopens (counted by the next step)
            else:
                log.warning("%s; %s keeps running (ending it would free no memory)", message, req.request_id)

    def _update_gauges(self) -> None:
        m, s = self.metrics, self.scheduler
        m.running.set(len(s.running))
        m.waiting.set(self.num_waiting)
        m.kv_used.set(s.kv.num_reserved)
        m.kv_cached.set(s.kv.num_cached_tokens)

    def stats(self) -> dict:
        kv = self.scheduler.kv
        return {"running": self.num_running, "waiting": self.num_waiting, "steps": self.num_steps,
                "kv_tokens_reserved": kv.num_reserved, "kv_tokens_reserved_peak": kv.peak_reserved,
                "kv_tokens_cached": kv.num_cached_tokens,
                "kv_cache_tokens": kv.kv_cache_tokens, "admission_paused": self.scheduler.admission_paused,
                "preemptions": self.scheduler.num_preemptions, "resumptions": self.scheduler.num_resumptions}
