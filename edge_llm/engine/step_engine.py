"""The llama.cpp step engine: each step the scheduler picks the work (prefill chunks and one
decode token per running sequence), the backend runs it, the scheduler applies the tokens."""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque

from edge_llm.engine.backends.base import Backend
from edge_llm.engine.batch import Lanes, SampledToken, ScheduledChunk, SchedulerOutput
from edge_llm.engine.front import EngineFront
from edge_llm.engine.kv_cache import KVCacheManager
from edge_llm.engine.lookup import Drafter, StepCosts
from edge_llm.engine.metrics import EngineMetrics
from edge_llm.engine.request import Priority, Request, RequestStatus
from edge_llm.engine.scheduler import Scheduler

log = logging.getLogger(__name__)
HOLD_STEPS = 16  # steps a GPU keeps a drafted step's shape (engine/lookup.py: CUDA graphs)
# A step of background prefill alone that a visitor's arrival would stop loses all its work so far
# (llama.cpp keeps no part of a stopped ubatch): one expected to end within 0.75 of finish_within
# (limits.background_finish_ms) is let finish, and the visitor waits for it instead. On 2 CPU
# cores a 256-token chunk late in a long prompt took ~1.6 s, and a visitor every 4 s threw away
# half of one each time. Session 11 let finish within 0.4 s on an estimate of one figure a token,
# which ran short late in a prompt, and saw no gain; with PrefillCost and 0.6 s the work lost to
# stops in a kiosk job fell from 11-19 s to 2-5 s (session 13). finish_within now bounds the
# visitor's wait (below): the daemon's default is 350 ms (config.LimitsConfig).
# Run as two calls of 128 tokens, a stopped step would lose only the call it stopped: on 2 CPU
# cores the work stops lost fell from 10.2-14.7 s of a ~105 s kiosk job to 6.2-6.9 s, but 256
# prompt tokens late in a prompt took ~6% longer so (1.38 s against 1.30), and the job with a
# visitor took no less in 7 rounds (94-111 s against 98-113 in 4): not done
# (docs/measurements/cpu-2core-amd-2026-12-04-session12). background_stopped_s counts that loss.
# How far past its expected end a step let finish may run, in finish_within: a step is let finish
# only if it is expected to end that much before finish_within, and is stopped that much past its
# expected end if it is still running: finish_within after the visitor came at the latest. (Session 13
# let finish within 600 ms and stopped 150 ms past the expected end: the visitor of the mixed
# workload waited up to 0.75 s, its worst first token 0.74-0.88 s in 2 of 6 rounds, session 14.)
# PrefillCost's median miss was 1.2-5.2% of a ~1.3 s step (session 13).
LATE_GRACE = 0.25
# streams that get limits.stream_interval_ms as it is; with more, each one's interval grows in
# proportion up to STREAM_INTERVAL_MAX_S, so that all streams' events together keep one rate
# (StepEngine.interval_for): at 20 ms, 200 events a second
STREAMS_AT_INTERVAL = 4
STREAM_INTERVAL_MAX_S = 0.1  # a reader's text still comes 10 times a second


class PrefillCost:
    """How long a step of background prefill will take: seconds = a x tokens + b x the tokens'
    context (each token attends over the cells before it), fitted to recent stoppable steps by
    least squares that forget (DECAY a step). One figure a token was not enough: on 2 CPU cores one
    token took 13.2 ms at 2,000 cells of context against 6.9 at 32, and a prompt token late in a
    3,000-token prompt 4.6-9 ms (session 11), so an average of recent steps ran short late in a
    prompt and long at the next one's start; a step let finish then overran its estimate, and the
    late check stopped it, all of it lost and the visitor kept waiting too."""

    DECAY = 0.85  # weight left to the past at each new step (~7 steps remembered)
    SCALE = 1e-3  # context in thousands of tokens, so the two columns are of a size

    def __init__(self):
        self._sums = [0.0] * 5  # decayed sums of x1*x1, x1*x2, x2*x2, x1*y, x2*y
        self.num_observed = 0

    def features(self, out: SchedulerOutput) -> tuple[float, float]:
        tokens = sum(len(c.tokens) for c in out.chunks)
        context = sum(len(c.tokens) * (c.start_pos + (len(c.tokens) - 1) / 2) for c in out.chunks)
        return float(tokens), context * self.SCALE

    def observe(self, out: SchedulerOutput, seconds: float) -> None:
        x1, x2 = self.features(out)
        if x1 <= 0 or seconds <= 0:
            return
        new = (x1 * x1, x1 * x2, x2 * x2, x1 * seconds, x2 * seconds)
        self._sums = [self.DECAY * old + n for old, n in zip(self._sums, new, strict=True)]
        self.num_observed += 1

    def coefficients(self) -> tuple[float, float] | None:
        """(a, b), both >= 0; None before the first step. Steps that cannot tell a from b (all of
        one tokens-to-context ratio: the first step, say) give a alone (b = 0): a cost a token.
        Where the best fit has a negative term, the better of a alone and b alone (b alone only
        where it fits clearly better)."""
        s11, s12, s22, s1y, s2y = self._sums
        if s11 <= 0:
            return None
        a_only = (s1y / s11, 0.0)
        det = s11 * s22 - s12 * s12
        if s22 <= 0 or det <= 1e-9 * s11 * s22:
            return a_only
        a, b = (s22 * s1y - s12 * s2y) / det, (s11 * s2y - s12 * s1y) / det
        if a >= 0 and b >= 0:
            return a, b
        # the squared error each one-term fit removes: s1y^2 / s11 and s2y^2 / s22
        return (0.0, s2y / s22) if s2y * s2y / s22 > 1.01 * s1y * s1y / s11 else a_only

    def predict(self, out: SchedulerOutput) -> float | None:
        coef = self.coefficients()
        if coef is None:
            return None
        x1, x2 = self.features(out)
        return coef[0] * x1 + coef[1] * x2


class StepEngine(EngineFront):
    def __init__(
        self,
        backend: Backend,
        plan,
        max_queue: int = 64,
        metrics: EngineMetrics | None = None,
        chat_slowdown: float = 1.5,
        max_draft_tokens: int = 0,
        stream_interval: float = 0.0,
        finish_within: float = 0.0,
        overlap: bool = False,
    ):
        super().__init__(backend, plan, max_queue, metrics)
        # decodes launched ahead (_launch_ahead): only a backend that can (launch_decodes)
        self.overlap = overlap and hasattr(backend, "launch_decodes")
        self._ahead: tuple | None = None  # (the step launched ahead, what the backend launched, when)
        self.num_steps_ahead = 0
        self._visitor_seen: float | None = None  # when the last step ended, if it ran visitor work
        self.finish_within = finish_within  # seconds: the longest a visitor waits for a stoppable step
        self.stream_interval = stream_interval  # seconds between a stream's outputs (Request.publish)
        self._held: dict[int, Request] = {}  # requests whose last publish was held back by the interval
        # the stoppable step running now: (step number, started, expected seconds), read by submit()
        self._stoppable: tuple[int, float, float] | None = None
        self._stoppable_lock = threading.Lock()  # a late check never stops the step after the one it was for
        self._stopped_late = False  # the late check stopped the running step: it overran its estimate
        self.prefill_cost = PrefillCost()  # what a stoppable step will take, from the recent ones
        self._estimate_errors: deque[float] = deque(maxlen=64)  # |actual / expected - 1|, recent stoppable steps
        self.num_stopped_late = 0  # steps let finish that overran their estimate and were stopped after all
        self.num_let_finish = 0  # arrivals that let a stoppable step finish (two in one step: 2)
        self.num_stopped = 0  # stoppable steps a visitor stopped (their unfinished chunks run again)
        # seconds in the steps that ran, from schedule to publish, by what they ran (since start;
        # host: outside llama.cpp calls; stopped: the time stopped steps ran, lost but for the
        # background decodes in them, what arrivals cost): with a job's wall, what a visitor costs
        # it (tools/kiosk_bench.py takes the difference)
        self.step_time_s = dict.fromkeys(("background", "visitor", "shared", "stopped", "failed", "host"), 0.0)
        self.clock = time.monotonic  # what the interval is measured with (a test steps its own)
        kv = KVCacheManager(
            plan.num_seqs,
            plan.kv_cache_tokens,
            max_cached=plan.num_seqs - plan.max_batch_size,
            streams=plan.kv_layout == "per_slot",
            lanes=Lanes(plan.lanes, plan.lane_size),
        )
        self.scheduler = Scheduler(
            kv,
            plan.max_batch_size,
            plan.prefill_chunk_tokens,
            max_queue,
            chat_slowdown=chat_slowdown or float("inf"),  # 0: background always rides along
            background_chunk_tokens=plan.background_chunk,
            visitor_chunk_tokens=plan.background_visitor_chunk,
            drafter=(drafter := self._drafter(plan, max_draft_tokens)),
            max_step_tokens=plan.max_batch_tokens if drafter else 0,
        )

    @staticmethod
    def _drafter(plan, max_draft_tokens: int) -> Drafter | None:
        """Prompt lookup, chosen step by step by this device's measured step costs: off without
        them (no calibration, or one made on busy CPUs) or when max_draft_tokens is 0."""
        costs = StepCosts.from_calibration(plan.calibration) if max_draft_tokens > 0 else None
        if costs is None:
            return None
        gpu = not (plan.calibration or {}).get("can_abort", True)  # steps cannot be stopped: a GPU (calibration.py)
        return Drafter(
            costs, max_draft_tokens, uniform=plan.kv_layout == "per_slot" or gpu, hold_steps=HOLD_STEPS if gpu else 1
        )

    @property
    def has_work(self) -> bool:
        return self._ahead is not None or self.scheduler.has_work

    @property
    def num_queued(self) -> int:
        return max(0, len(self.scheduler.waiting) - self.scheduler.num_preempted_waiting)

    @property
    def num_preempted(self) -> int:
        return self.scheduler.num_preempted_waiting

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    # -- the engine thread ------------------------------------------------------------------
    def step(self) -> None:
        if self._ahead is not None:
            self._step_ahead()
            return
        begin = time.perf_counter()
        out = self.scheduler.schedule()
        if out.is_empty:
            self._count_admissions(out)
            return
        t0 = time.perf_counter()
        self.energy.start()
        expected = self.prefill_cost.predict(out) if out.abortable else None
        if expected is not None:
            self._stoppable = (self.num_steps, time.monotonic(), expected)
        try:
            sampled = self.backend.execute(out)
        except Exception as e:  # the batch failed as a whole (llama_decode): every request in it ends
            self.step_time_s["failed"] += time.perf_counter() - t0
            self._fail_batch(out, str(e))
            raise
        finally:
            with self._stoppable_lock:  # a late check that fired for a step that failed is forgotten
                self._stoppable = None
                late, self._stopped_late = self._stopped_late, False
        elapsed = time.perf_counter() - t0
        ahead = self._launch_ahead(out, sampled)  # the device computes it while this step is applied
        stopped = out.abortable and not all(c.done for c in out.chunks)  # only such a step is stopped
        if stopped:
            kind = "stopped"
        elif not out.chunks:  # memory operations only (cells removed, a prefix cache cleared)
            kind = "host"
        else:
            classes = {c.request.priority for c in out.chunks}  # one pass (a GPU step: 16-48 chunks)
            kind = "background" if Priority.INTERACTIVE not in classes else "shared" if len(classes) > 1 else "visitor"
        self.step_time_s[kind] += elapsed
        if stopped:
            self.num_stopped += 1
        if out.abortable and (late or not stopped):  # run out, or stopped late: it cost at least this
            self.prefill_cost.observe(out, elapsed)
            if expected:  # a late stop's miss is a lower bound
                self._estimate_errors.append(abs(elapsed / expected - 1))
            if late and stopped:
                self.num_stopped_late += 1
        self.scheduler.observe_step(out, elapsed, stopped, wall=self._visitor_wall(out, elapsed))
        self.energy.finish_step(out)  # before postprocess publishes: a finished request's energy is final
        self._count_admissions(out)
        self._apply(out, sampled, ahead)
        self.num_steps += 1
        self.metrics.step_seconds.observe(time.perf_counter() - t0)
        self.metrics.batch_tokens.observe(out.num_tokens)
        self._update_gauges()
        drafter = self.scheduler.drafter
        if drafter is not None and out.chunks and all(c.decode for c in out.chunks):
            extra = sum(len(c.tokens) - 1 for c in out.chunks)
            drafter.observe_step(out.num_tokens, extra, time.perf_counter() - begin)
        if ahead is None:  # (else this host time overlapped the step ahead, counted in its time)
            self.step_time_s["host"] += time.perf_counter() - begin - elapsed
        self._ahead = ahead

    # -- decodes launched ahead ------------------------------------------------------------------
    # On a GPU llama_decode returns once the step is queued, and the engine's Python between two
    # steps (applying the tokens, publishing, metrics, scheduling the next) left the device idle:
    # on an H200 a 4-sequence step took 1.80 ms in the engine against 1.46 in a bare context, 0.24-
    # 0.31 ms of it Python (docs/measurements/h200-2026-12-05-session14). A step that decoded every
    # running sequence, all of one class, with nothing waiting to be admitted and no memory
    # operation pending, is followed by the same decodes: those are launched with the tokens just
    # sampled, before this step is applied, and collected by the next step() (vLLM's async
    # scheduling, in the small). Anything else (a prompt to prefill, a request waiting, visitors
    # beside background, a reservation to grow) is the scheduler's, the next step. A request that
    # ends with this step (its end token or its length, seen before the launch) is left out; one
    # that ends otherwise meanwhile (a stop string, a cancel, a preemption) has its row dropped
    # when collected and its one extra KV cell removed.
    def _launch_ahead(self, out: SchedulerOutput, sampled: dict[int, SampledToken]):
        """The step after out, launched now if it may be (None: the scheduler's turn)."""
        try:
            if not self.overlap or not self._can_run_ahead(out):
                return None
            chunks = []
            for c in out.chunks:
                req, s = c.request, sampled.get(c.seq_id)
                if s is None or s.is_eog or len(req.output_tokens) + 1 >= req.params.max_tokens:
                    continue  # it ends with this step
                if req.num_tokens + 1 >= req.reserved_tokens:
                    return None  # its next cell is past its reservation: the scheduler grows it
                chunks.append(ScheduledChunk(req, [s.token], c.start_pos + 1, True, decode=True, seq_id=c.seq_id))
            if not chunks:
                return None
            ahead = SchedulerOutput(chunks)
            return ahead, self.backend.launch_decodes(ahead), time.perf_counter()
        except Exception:  # nothing of it stays (launch_decodes): the next step runs it in turn
            log.warning("a step could not be launched ahead; it is scheduled in turn", exc_info=True)
            return None

    def _can_run_ahead(self, out: SchedulerOutput) -> bool:
        s = self.scheduler
        if not out.chunks or out.abortable or s.drafter is not None or s.has_pending_ops:
            return False
        if len(out.chunks) != len(s.running):  # one left out (background the share held back): the share's turn
            return False
        if s.waiting and not self._none_admissible():
            return False
        kinds = set()
        for c in out.chunks:
            if not c.decode or not c.done or c.error is not None or c.num_draft or c.num_pad:
                return False
            kinds.add(c.request.priority)
        return len(kinds) == 1  # visitors beside background: the share decides each step (engine/share.py)

    def _none_admissible(self) -> bool:
        """Requests wait, but the scheduler would admit none of them now: the batch is full (or
        admission paused) and none is a visitor (which may preempt background work)."""
        s = self.scheduler
        if any(r.priority == Priority.INTERACTIVE for r in s.waiting):
            return False
        return s.admission_paused or len(s.running) >= s.max_batch_size

    def _visitor_wall(self, out: SchedulerOutput, elapsed: float) -> float:
        """What a step of visitor work cost the visitors in time: since the step before ended, where
        that one ran visitor work too (the engine's Python between the two included: a reader's
        tokens come that far apart), else its own time. BackgroundShare charges and measures the
        visitor's steps so: on an H100 the steps' own times kept the visitor within 1.5x of its
        steps alone, yet its stream ran at 0.47-0.59 of idle (session 22). A step of memory
        operations only ends the run (the next visitor step is charged its own time); a step
        launched ahead whose rows were all dropped does not, and the next one's time includes it."""
        now = time.perf_counter()
        since = self._visitor_seen
        visitors = any(c.request.priority == Priority.INTERACTIVE for c in out.chunks)
        self._visitor_seen = now if visitors else None
        return now - since if visitors and since is not None else elapsed

    def _step_ahead(self, launch_next: bool = True) -> None:
        """Collect the step launched ahead, launch the next one if it may, then apply this one."""
        out, launched, t0 = self._ahead
        self._ahead = None
        for c in out.chunks:  # ended, or preempted, while it ran: its token is not wanted
            c.dropped = c.request.status != RequestStatus.RUNNING or c.request.seq_id != c.seq_id
        try:
            sampled = self._collect(out, launched)
        except Exception as e:
            self.step_time_s["failed"] += time.perf_counter() - t0
            self._fail_batch(SchedulerOutput([c for c in out.chunks if not c.dropped]), str(e))
            raise
        out.chunks = [c for c in out.chunks if not c.dropped]
        elapsed = time.perf_counter() - t0  # launch to tokens: the applying of the step before overlapped it
        ahead = self._launch_ahead(out, sampled) if launch_next else None
        if out.chunks:
            kind = "background" if out.chunks[0].request.priority == Priority.BACKGROUND else "visitor"
            self.step_time_s[kind] += elapsed
            self.scheduler.observe_step(out, elapsed, wall=self._visitor_wall(out, elapsed))
            self.energy.start(carry=True)  # it ran since the step before ended
            self.energy.finish_step(out)
        self._count_admissions(out)
        self._apply(out, sampled, ahead)
        if out.chunks:
            self.num_steps += 1
            self.num_steps_ahead += 1
            self.metrics.step_seconds.observe(elapsed)
            self.metrics.batch_tokens.observe(out.num_tokens)
        self._update_gauges()
        self._ahead = ahead

    def _abandon(self, ahead) -> None:
        """The step before failed to apply: the step launched ahead of it is waited for, its rows
        dropped and their cells removed (the requests go on, if at all, from the scheduler's state)."""
        if ahead is None:
            return
        try:
            for c in ahead[0].chunks:
                c.dropped = True
            self._collect(ahead[0], ahead[1])
        except Exception:
            log.exception("a step launched ahead could not be dropped")

    def _collect(self, out: SchedulerOutput, launched) -> dict[int, SampledToken]:
        """Wait for a step launched ahead and sample its rows; the dropped rows' cells are removed
        whether or not that succeeds."""
        try:
            return self.backend.collect(launched)
        finally:
            for c in out.chunks:
                if c.dropped:
                    self.backend.trim(c.seq_id, c.start_pos)

    def _settle(self) -> None:
        """Engine thread (or after it ended): collect a step in flight and launch none."""
        while self._ahead is not None:
            self._step_ahead(launch_next=False)

    def _handle(self, kind: str, arg) -> None:
        if kind == "call":  # a call sees no step in flight: the backend's state is the scheduler's
            try:
                self._settle()
            except Exception:  # its batch was failed; the call runs all the same
                log.exception("engine step failed")
        super()._handle(kind, arg)

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        if not self.is_alive and self._ahead is not None:  # the loop ended with a step in flight
            try:
                self._settle()
            except Exception:
                log.exception("a step in flight at stop failed")

    def _interrupt_for_visitor(self) -> None:
        """Any thread: stop the running step of background prefill, unless it is expected to end
        with LATE_GRACE of finish_within to spare; then stop it only if it is still running a
        LATE_GRACE past its expected end: the visitor waits finish_within at most."""
        running = self._stoppable
        if running is None or self.finish_within <= 0:
            self.backend.interrupt(True)
            return
        left = running[1] + running[2] - time.monotonic()
        grace = LATE_GRACE * self.finish_within
        if left + grace > self.finish_within:
            self.backend.interrupt(True)
            return
        self.num_let_finish += 1
        timer = threading.Timer(max(left, 0.0) + grace, self._interrupt_if_running, (running,))
        timer.daemon = True
        timer.start()

    def _interrupt_if_running(self, step: tuple) -> None:
        with self._stoppable_lock:
            if self._stoppable is step:  # the same step, past its expected end: the estimate was short
                self._stopped_late = True
                self.backend.interrupt(True)

    def _apply(self, out: SchedulerOutput, sampled: dict[int, SampledToken], ahead=None) -> None:
        """End the requests whose own part failed (the others' tokens stand), then apply the rest;
        if that fails, the step launched ahead of this one is abandoned."""
        try:
            self._apply_step(out, sampled)
        except Exception:
            self._abandon(ahead)
            raise

    def _apply_step(self, out: SchedulerOutput, sampled: dict[int, SampledToken]) -> None:
        for chunk in out.chunks:
            if chunk.error is not None:
                self._end(chunk.request, RequestStatus.FINISHED_ERROR, f"engine error: {chunk.error}")
        if not all(c.done for c in out.chunks):
            self.metrics.interrupted_steps.inc()
        ended = {id(c.request) for c in out.chunks if c.request.is_finished}  # published already
        try:
            changed = self.scheduler.postprocess(out, sampled)
        except Exception:  # the requests it finished before it failed still reach their clients
            self._publish(
                {
                    id(c.request): c.request for c in out.chunks if c.request.is_finished and id(c.request) not in ended
                }.values()
            )
            raise
        self._publish(changed)
        self.metrics.generated_tokens.inc(self.scheduler.num_new_tokens)

    def _publish(self, reqs) -> None:
        """Publish every request, each end counted first; a failure for one stops none of the
        others (a finished request not published waits for ever), then is raised."""
        error, now = None, self.clock()
        reqs = list(reqs)
        # and text held back from requests this step did not advance (a background stream the
        # chat share left out, for instance) once their interval has passed
        seen = {id(r) for r in reqs}
        for k, r in list(self._held.items()):
            if r.is_finished:  # ended elsewhere (cancelled, failed): its end went out with its text
                del self._held[k]
            elif k not in seen:
                reqs.append(r)
        interval = self.interval_for(sum(1 for r in reqs if r.stream))
        for req in reqs:
            try:
                if req.is_finished:  # counted before the client can see its end
                    self._finished(req)
            except Exception as e:
                error = error or e
            try:
                if req.publish(interval=interval, now=now):
                    self._held[id(req)] = req
                else:
                    self._held.pop(id(req), None)
            except Exception as e:
                self._held.pop(id(req), None)
                error = error or e
        if error is not None:
            raise error

    def interval_for(self, streams: int) -> float:
        """A stream's interval with this many streams advancing: stream_interval up to
        STREAMS_AT_INTERVAL of them, then in proportion (the events of all streams together stay
        at one rate: each wakes a reader thread that takes turns with this one at the GIL), at most
        STREAM_INTERVAL_MAX_S (or stream_interval, where that is longer: it then stays as it is).
        On an H100 at 16 streams (a fixed interval, 2 rounds each) 20 ms gave 3,395-3,462 tok/s,
        50 ms 3,741-3,771, 100 ms 4,036-4,058; with this rule (80 ms there) 5,680-5,928 on another
        H100 (docs/measurements/h100-2026-12-06-session20); on 2 CPU cores 20 and 50 ms were alike.
        Every streaming request counts, a kiosk visitor's and an API caller's alike: beside 16
        streams a visitor's text comes every 80 ms."""
        if streams <= STREAMS_AT_INTERVAL or not self.stream_interval:
            return self.stream_interval
        cap = max(self.stream_interval, STREAM_INTERVAL_MAX_S)
        return min(cap, self.stream_interval * streams / STREAMS_AT_INTERVAL)

    def _count_admissions(self, out: SchedulerOutput) -> None:
        m = self.metrics
        preempted, num_resumed = self.scheduler.take_events()
        for req in preempted:
            m.preemptions.labels(req.priority.name.lower()).inc()
            if not req.is_finished:  # text held back by the stream interval goes now (an ended one has)
                req.publish()
                self._held.pop(id(req), None)
        if num_resumed:
            m.resumptions.inc(num_resumed)
        for chunk in out.chunks:  # after the batch ran, before postprocess moves num_computed
            req = chunk.request
            if (
                chunk.done and chunk.start_pos == req.num_reused and req.is_prefilling and not req.num_preemptions
            ):  # first chunk
                m.prompt_tokens.inc(req.num_prompt_tokens)
                m.reused_tokens.inc(req.num_reused)
                m.queue_time.labels(req.priority.name.lower()).observe(req.admitted_time - req.arrival_time)

    def clear_prefix_cache(self) -> None:
        """Engine thread only (use call()): drop every cached prefix now."""
        self._settle()
        self.scheduler.clear_prefix_cache()
        self.step()

    def _fail_batch(self, out: SchedulerOutput, message: str) -> None:
        for chunk in out.chunks:
            self._end(chunk.request, RequestStatus.FINISHED_ERROR, f"engine error: {message}")

    # -- the front's hooks (engine thread) --------------------------------------------------------
    def _add(self, req: Request) -> None:
        self.scheduler.add(req)

    def _end(self, req: Request, status: RequestStatus, error: str | None = None) -> None:
        if self.scheduler.abort(req, status):
            self._finished(req)
            req.publish(error)

    def _pause(self, paused: bool) -> None:
        self.scheduler.admission_paused = paused

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
        return {
            "running": self.num_running,
            "waiting": self.num_waiting,
            "steps": self.num_steps,
            "kv_tokens_reserved": kv.num_reserved,
            "kv_tokens_reserved_peak": kv.peak_reserved,
            "kv_tokens_cached": kv.num_cached_tokens,
            "kv_cache_tokens": kv.kv_cache_tokens,
            "admission_paused": self.scheduler.admission_paused,
            "preemptions": self.scheduler.num_preemptions,
            "resumptions": self.scheduler.num_resumptions,
            **self.scheduler.share.to_dict(),
            "steps_ahead": self.num_steps_ahead,
            # decode batches whose slot gaps got filler rows (LlamaCppBackend._fillers; None: no such backend)
            "steps_filled": getattr(self.backend, "num_filled_steps", None),
            # a visitor expected back: background prefill alone in smaller steps (Scheduler.NEAR_S)
            "visitor_expected": self.scheduler.visitor_expected(),
            "visitor_pause_s": None if (pause := self.scheduler.think_s) is None else round(pause, 2),
            "background_steps_let_finish": self.num_let_finish,
            "background_steps_stopped": self.num_stopped,
            "background_stopped_s": round(self.step_time_s["stopped"], 3),
            "background_steps_stopped_late": self.num_stopped_late,
            "step_time_s": {k: round(v, 3) for k, v in self.step_time_s.items()},
            "background_step_estimate_error": (
                round(statistics.median(self._estimate_errors), 3) if self._estimate_errors else None
            ),
            **(self.scheduler.drafter.stats() if self.scheduler.drafter else {"draft_tokens": None}),
        }
