"""The TensorRT-LLM executor engine: TensorRT-LLM's Executor batches in flight (chunked context,
KV block reuse, its own iterations); this engine only admits (the plan's batch and KV budget),
enqueues, cancels and turns the executor's streamed responses into our outputs.

A sibling of the llama.cpp step engine, not a subclass: it never preempts. Preempting frees a
step engine's slot and runs the request again later; here it would free nothing (the executor
owns the request's KV blocks, in a pool sized at load) and the executor would go on generating
while the request was enqueued again (once: 117 tokens for max_tokens 60). Under memory pressure
it pauses admission and ends nothing: cancelling returns blocks to the executor's pool, not
memory to the device (KvCacheConfig sizes the pool once, when the Executor is built: JETSON.md),
so there is no freed memory to show for the work lost."""

from __future__ import annotations

import datetime
import logging
import time

from edge_llm.engine.front import EngineFront
from edge_llm.engine.kv_cache import KVCacheManager
from edge_llm.engine.metrics import EngineMetrics
from edge_llm.engine.request import Priority, Request, RequestOutput, RequestStatus
from edge_llm.engine.scheduler import Scheduler

log = logging.getLogger(__name__)
AWAIT_S = 0.02  # how long one loop iteration waits for executor responses
UINT64 = 1 << 64


class TrtLlmEngine(EngineFront):
    def __init__(self, backend, plan, max_queue: int = 64, metrics: EngineMetrics | None = None):
        super().__init__(backend, plan, max_queue, metrics)
        from tensorrt_llm.bindings import executor as trtllm  # Jetson only

        self.trtllm = trtllm
        # the admission book only (waiting by priority, running, KV reservations, the batch cap the
        # thermal guard sets): its schedule() and preempt() are never called, the executor schedules
        kv = KVCacheManager(plan.num_seqs, plan.kv_cache_tokens, max_cached=0)
        self.scheduler = Scheduler(kv, plan.max_batch_size, plan.prefill_chunk_tokens, max_queue)
        self._by_id: dict[int, Request] = {}  # executor request id -> request
        self._detok: dict[int, object] = {}  # executor request id -> its IncrementalDetokenizer
        self._metering = False  # the energy meter's step is open (reads with no tokens carry it on)

    @property
    def has_work(self) -> bool:
        return bool(self._by_id) or self._can_admit()

    @property
    def num_queued(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def num_running(self) -> int:
        return len(self._by_id)

    # -- the engine thread ------------------------------------------------------------------
    def step(self) -> None:
        while self._can_admit():
            req = self.scheduler.waiting.popleft()
            try:
                self._enqueue(req)
            except Exception as e:  # the bindings' or the executor's checks refused this request alone
                self._finish(req, RequestStatus.FINISHED_ERROR, f"engine error: {e}")
        if not self._by_id:
            return
        if not self._metering:
            self.energy.start()
            self._metering = True
        responses = self.backend.executor.await_responses(timeout=datetime.timedelta(seconds=AWAIT_S))
        self._meter(responses)  # before any is applied: a finished request's energy is final
        for resp in responses:  # each is delivered once: one that fails to apply ends its request alone
            req = self._by_id.get(resp.request_id)
            try:
                self._apply(resp)
            except Exception as e:
                log.exception("executor response for request %s could not be applied", resp.request_id)
                if req is not None:
                    self._fail(req, resp.request_id, f"engine error: {e}")
        self.num_steps += 1
        self._update_gauges()

    def _can_admit(self) -> bool:
        """The executor would run up to the engine's build-time batch: the plan's is ours to keep;
        its KV cannot be grown or preempted by us, so each request reserves all it may need."""
        s = self.scheduler
        if not s.waiting or s.admission_paused or len(self._by_id) >= s.max_batch_size:
            return False
        head = s.waiting[0]
        if s.defer_background and head.priority == Priority.BACKGROUND:
            return False
        return s.kv.num_reserved + s.kv.full_reservation(head) <= s.kv.kv_cache_tokens

    def _enqueue(self, req: Request) -> None:
        rid = self.backend.executor.enqueue_request(self._executor_request(req))
        try:
            detok = self.backend.detokenizer(req.prompt_tokens)
            self.scheduler.kv.reserve(req, self.scheduler.kv.full_reservation(req))
        except Exception:  # else the executor generates for a request nobody tracks
            self._cancel_quietly(rid)
            raise  # the caller ends req (and returns any reservation)
        req.seq_id, req.status = rid, RequestStatus.RUNNING
        self._detok[rid] = detok
        self.scheduler.running.append(req)
        self._by_id[rid] = req
        if req.admitted_time is None:  # admitted: the HTTP Watch's queue timeout no longer applies
            req.admitted_time = time.monotonic()
            self.metrics.queue_time.labels(req.priority.name.lower()).observe(req.admitted_time - req.arrival_time)
        self.metrics.prompt_tokens.inc(req.num_prompt_tokens)

    def _cancel_quietly(self, rid: int) -> None:
        try:
            self.backend.executor.cancel_request(rid)
        except Exception:
            log.exception("cancelling executor request %s failed", rid)

    def _executor_request(self, req: Request):
        p, t = req.params, self.trtllm
        seed = None if p.seed is None else p.seed % UINT64  # uint64 in the bindings; negatives wrap
        sampling = t.SamplingConfig(
            beam_width=1,
            top_k=1 if p.is_greedy else (p.top_k or None),
            top_p=None if p.is_greedy else p.top_p,
            temperature=None if p.is_greedy else p.temperature,
            random_seed=seed,
            presence_penalty=p.presence_penalty or None,
            frequency_penalty=p.frequency_penalty or None,
        )
        return t.Request(
            input_token_ids=req.prompt_tokens,
            max_new_tokens=p.max_tokens,
            streaming=True,
            sampling_config=sampling,
            **self.backend.request_kwargs(),
        )

    def _meter(self, responses) -> None:
        """Close the meter's step when a read brings responses; a read with none (a prompt's
        prefill under way) leaves it open, so the next read with tokens is charged for it too.
        A step closed without tokens to share (errors only) is shared by the work in flight."""
        if not self._metering or not any(r.request_id in self._by_id for r in responses):
            return
        try:
            shares = self._shares(responses)
        except Exception:
            log.exception("sharing a read's energy failed; shared by the work in flight")
            shares = []
        self._close_meter(shares)

    def _close_meter(self, shares: list[tuple[Request, int]]) -> None:
        if not self._metering:
            return
        self._metering = False
        if sum(n for _, n in shares) <= 0:
            shares = self._outstanding()
        try:
            self.energy.finish(shares)
        except Exception:  # the meter is not worth a request: its responses are applied regardless
            log.exception("energy meter failed")

    def _outstanding(self) -> list[tuple[Request, int]]:
        """The requests in flight by the work they hold in the executor: a prompt still
        prefilling, else the one token of the iteration under way."""
        return [(req, req.num_prompt_tokens if not req.output_tokens else 1) for req in self._by_id.values()]

    def _shares(self, responses) -> list[tuple[Request, int]]:
        """Tokens each request took of the executor's work since the last read: the new output
        tokens, and the prompt with a request's first ones (its prefill ran meanwhile)."""
        shares = []
        for resp in responses:
            req = self._by_id.get(resp.request_id)
            if req is None or resp.has_error():
                continue
            n = len(resp.result.output_token_ids[0])
            shares.append((req, n + (req.num_prompt_tokens if not req.output_tokens else 0)))
        return shares

    def _apply(self, resp) -> None:
        req = self._by_id.get(resp.request_id)
        if req is None:
            return
        if resp.has_error():  # error_msg raises on a response without one
            self._finish(req, RequestStatus.FINISHED_ERROR, resp.error_msg)
            return
        result = resp.result
        self._append(req, result.output_token_ids[0], self._detok[resp.request_id])
        if req.is_finished and not result.is_final:  # a stop string matched: stop the executor too
            self.backend.executor.cancel_request(resp.request_id)
        if result.is_final and not req.is_finished:  # no finish reason in Result: count the tokens
            full = len(req.output_tokens) >= req.params.max_tokens
            req.finish(RequestStatus.FINISHED_LENGTH if full else RequestStatus.FINISHED_STOPPED)
        if req.is_finished:
            self._finish(req, req.status)
        else:
            req.publish()

    def _append(self, req: Request, tokens: list[int], detok) -> None:
        for token in tokens:  # streaming: only the new tokens; never end_id
            if token in self.backend.end_ids:  # another end id, sent as a stop word: it ends the text
                req.finish(RequestStatus.FINISHED_STOPPED)
                return
            req.append_token(token, detok.step(token).encode())
            self.metrics.generated_tokens.inc()
            if req.is_finished:
                return

    def _finish(self, req: Request, status: RequestStatus, error: str | None = None) -> None:
        self._by_id.pop(req.seq_id, None)
        self._detok.pop(req.seq_id, None)
        self.scheduler.kv.unreserve(req)
        if req in self.scheduler.running:
            self.scheduler.running.remove(req)
        req.finish(status)
        try:
            self._finished(req)
        except Exception:  # its client waits for this end whatever failed
            log.exception("counting the end of request %s failed", req.request_id)
        req.publish(error)

    def _fail(self, req: Request, rid: int, error: str) -> None:
        """A response of req's could not be applied: the executor sends each response once, so
        req is ended here (an error to its client, its slot back, the executor told to stop)."""
        self._cancel_quietly(rid)
        try:
            self._finish(req, RequestStatus.FINISHED_ERROR, error)
        except Exception:  # nothing was published (_finish publishes last)
            log.exception("ending request %s failed; its client is sent the error", req.request_id)
            self._by_id.pop(rid, None)
            self._detok.pop(rid, None)
            req.finish(RequestStatus.FINISHED_ERROR)
            req.outputs.put(
                RequestOutput("", req.num_prompt_tokens, len(req.output_tokens), req.finish_reason, error, None)
            )

    # -- the front's hooks (engine thread) --------------------------------------------------------
    def _add(self, req: Request) -> None:
        self.scheduler.add(req)

    def _end(self, req: Request, status: RequestStatus, error: str | None = None) -> None:
        """Cancel (client gone, drain): the executor drops the request and frees its KV blocks."""
        if req.is_finished:
            return
        if self._by_id.get(req.seq_id) is req:
            self._close_meter([])  # its energy is final before its end is published
            self.backend.executor.cancel_request(req.seq_id)
            self._finish(req, status, error)
        elif self.scheduler.abort(req, status):  # still waiting in our queue
            self._finished(req)
            req.publish(error)

    def _pause(self, paused: bool) -> None:
        self.scheduler.admission_paused = paused  # what the executor runs goes on

    def _relieve_pressure(self, n: int, message: str) -> None:
        """Admission is paused (low water); nothing the executor runs is ended (the module doc)."""
        log.warning(
            "%s; %d executor requests keep running (cancelling frees no device memory: the KV "
            "pool was sized at load), admission paused",
            message,
            len(self._by_id),
        )

    def clear_prefix_cache(self) -> None:
        pass  # block reuse lives inside TensorRT-LLM's KV cache manager

    def _update_gauges(self) -> None:
        m, kv = self.metrics, self.scheduler.kv
        m.running.set(len(self._by_id))
        m.waiting.set(self.num_waiting)
        m.kv_used.set(kv.num_reserved)

    def stats(self) -> dict:
        kv = self.scheduler.kv
        return {
            "running": self.num_running,
            "waiting": self.num_waiting,
            "steps": self.num_steps,
            "kv_tokens_reserved": kv.num_reserved,
            "kv_tokens_reserved_peak": kv.peak_reserved,
            "kv_tokens_cached": 0,
            "kv_cache_tokens": kv.kv_cache_tokens,
            "admission_paused": self.scheduler.admission_paused,
            "preemptions": 0,
            "resumptions": 0,
        }
