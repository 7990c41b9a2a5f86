"""Continuous batching: every step decodes one token for each running sequence and feeds
up to prefill_chunk_tokens of prompt (chunked prefill) from sequences still prefilling or
newly admitted. The scheduler decides who runs; it never calls the backend."""

from __future__ import annotations

import time
from collections import deque

from edge_llm.engine.batch import SampledToken, ScheduledChunk, SchedulerOutput, TokenLogprob  # noqa: F401
from edge_llm.engine.kv_cache import KVCacheManager, MemoryOp
from edge_llm.engine.lookup import Draft, Drafter
from edge_llm.engine.request import Priority, Request, RequestStatus
from edge_llm.engine.share import BackgroundShare
from edge_llm.planner import VISITOR_CLEAR_THINKS, VISITOR_NEAR_S, VISITOR_NEAR_THINKS


class Scheduler:
    """Who runs this step. Interactive requests come first: they are admitted and get prefill
    budget before background ones, and when the batch or the KV budget is full, running
    background sequences are preempted (their KV kept as a cached prefix, their request put
    back at the head of the background queue, resumed by recompute when room returns).
    Within a class, the shortest remaining prompt (aged) is admitted and prefilled first, and an
    interactive prompt still prefilling yields its slot to a shorter one that waits (its KV
    kept, it resumes where it was), so nothing needs marking for a question to pass a document.
    Background work is never starved, nor does it slow a visitor's stream past chat_slowdown
    times its pace alone: beside a visitor's decode it rides along in the steps that measured
    step times allow (engine/share.py), prefill included. A step of
    background work alone is abortable: an interactive request arriving mid-step stops it
    (Backend.interrupt), and its unfinished chunks are scheduled again."""

    STARVATION_S = 5.0  # a request waiting this long is no longer bypassed by smaller ones
    # Shortest remaining prefill first within a class, with aging (_urgency): each second of
    # waiting counts as this many prompt tokens less, so a 3,000-token prompt waiting for a slot
    # yields to short ones for at most ~30 s. A client marks nothing (any OpenAI client), yet a
    # short question should not wait behind someone else's 12,000 tokens of prefill.
    AGING_TOKENS_PER_S = 100.0
    # A step of background prefill alone takes visitor_chunk_tokens of prompt while a visitor is
    # expected back (Plan.background_visitor_chunk says why the smaller step: a visitor's arrival
    # stops such a step and its work so far is lost), background_chunk_tokens otherwise. Expected
    # back: an interactive request arrived or ended within NEAR_THINKS times the visitors' usual
    # pause between one's end and the next's arrival (a moving average, THINK_ALPHA the newest's
    # weight; a pause longer than NEAR_S counts as NEAR_S; an arrival while another visitor runs or
    # waits is no pause, and counts not), and at most NEAR_S. A kiosk visitor reading each answer
    # pauses seconds, and the smaller steps go on; a client asking one question right after another
    # pauses ~0, and the bigger steps come back once it has done. Within the pause, a step that by
    # the recent steps' pace (ALONE_ALPHA the newest's weight) ends within CLEAR_THINKS times the
    # usual pause after the last visitor's end is of the bigger size still: no visitor is likely
    # back so soon, and the smaller steps cost more a token (planner.VISITOR_WHY).
    NEAR_S = VISITOR_NEAR_S
    NEAR_THINKS = VISITOR_NEAR_THINKS
    CLEAR_THINKS = VISITOR_CLEAR_THINKS
    THINK_ALPHA = 0.5
    ALONE_ALPHA = 0.3

    def __init__(
        self,
        kv: KVCacheManager,
        max_batch_size: int,
        prefill_chunk_tokens: int,
        max_queue: int,
        chat_slowdown: float = 1.5,
        background_chunk_tokens: int = 0,
        drafter: Drafter | None = None,
        max_step_tokens: int = 0,
        visitor_chunk_tokens: int = 0,
    ):
        self.kv = kv
        self.max_batch_size = max_batch_size
        self.prefill_chunk_tokens = prefill_chunk_tokens
        # a step of background prefill alone (stopped when a visitor arrives, where the backend can):
        # bigger chunks cost less a token late in a long prompt (calibration.choose_background_chunk)
        self.background_chunk_tokens = max(background_chunk_tokens, prefill_chunk_tokens)
        # ... and while a visitor is expected back (NEAR_S): 0 = the same
        near = visitor_chunk_tokens or self.background_chunk_tokens
        self.visitor_chunk_tokens = min(near, self.background_chunk_tokens)
        self.last_visitor = float("-inf")  # monotonic time an interactive request last arrived or ended
        self.think_s: float | None = None  # the visitors' pause between one's end and the next's arrival
        self.last_end = float("-inf")  # monotonic time a visitor last ended with no other running or waiting
        self.alone_token_s: float | None = None  # seconds a token of a background-alone prefill step took
        self.max_queue = max_queue
        self.waiting: deque[Request] = deque()  # by priority, then arrival (preempted ones first)
        self.running: list[Request] = []
        self.admission_paused = False  # memory pressure or draining: keep requests waiting
        self.defer_background = False  # near the throttle temperature: background waits (telemetry/thermal.py)
        self.num_preemptions = 0
        self.num_preempted_waiting = 0  # of self.waiting, the preempted ones (any thread may read it)
        self.num_resumptions = 0
        self._preempted: list[Request] = []  # since the last take_events() (for metrics)
        self._num_resumed = 0
        self._ops: list[MemoryOp] = []  # frees decided between steps
        self.share = BackgroundShare(chat_slowdown)  # background work beside a visitor's decode
        self.drafter = drafter  # prompt lookup: decodes carry draft tokens to verify (None: off)
        self.max_step_tokens = max_step_tokens  # tokens a step may hold (the backend's batch)
        self.num_new_tokens = 0  # tokens the last postprocess appended to outputs

    @property
    def has_work(self) -> bool:
        return bool(
            self.running
            or self._ops
            or (
                self.waiting
                and not self.admission_paused
                and not (self.defer_background and all(r.priority == Priority.BACKGROUND for r in self.waiting))
            )
        )

    def add(self, req: Request) -> None:
        """Never refused: the engine front alone bounds the queue (a bound here also counted the
        preempted requests and ended a request the front had let in)."""
        if req.priority == Priority.INTERACTIVE:
            self._visitor_arrived()
        self._enqueue(req, front_of_class=False)

    def _enqueue(self, req: Request, front_of_class: bool) -> None:
        at = next(
            (
                i
                for i, w in enumerate(self.waiting)
                if w.priority > req.priority or (front_of_class and w.priority == req.priority)
            ),
            len(self.waiting),
        )
        self.waiting.insert(at, req)

    def abort(self, req: Request, status: RequestStatus = RequestStatus.FINISHED_CANCELLED) -> bool:
        """End a request wherever it is; its KV is freed before the next batch runs."""
        if req.is_finished:
            return False
        if req in self.running:
            self.running.remove(req)
            self.kv.free(req, self._ops, keep_prefix=False)
        elif req in self.waiting:
            self.waiting.remove(req)
            if req.status == RequestStatus.PREEMPTED:
                self.num_preempted_waiting -= 1
                self.kv.unpin(req)  # its kept prefix is an ordinary cached one now, evictable
        req.finish(status)
        self._saw(req)
        if self.drafter is not None:
            self.drafter.forget(req)
        return True

    def preempt(self, req: Request) -> None:
        """Stop a running request for now: its computed KV stays as a cached prefix (while the
        cache has room), and it waits at the head of its class to resume."""
        self.running.remove(req)
        self.kv.free(req, self._ops, keep_prefix=True, pin=True)
        req.status = RequestStatus.PREEMPTED
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.num_preempted_waiting += 1  # before it is seen waiting: a reader may over-count, never let in more
        self._preempted.append(req)
        self._enqueue(req, front_of_class=True)

    @property
    def has_pending_ops(self) -> bool:
        """Memory operations decided since the last schedule() (frees, a cleared cache), not yet run."""
        return bool(self._ops)

    def take_events(self) -> tuple[list[Request], int]:
        """Preempted requests and the number resumed since the last call (scheduling or memory
        pressure alike), for the engine's metrics."""
        events = self._preempted, self._num_resumed
        self._preempted, self._num_resumed = [], 0
        return events

    def clear_prefix_cache(self) -> None:
        self.kv.clear_cache(self._ops)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(memory_ops=self._ops)
        self._ops = []
        # running sequences grow first: room freed for a waiting interactive request is not
        # then taken by growth in the same step (it was, and the preemption bought nothing)
        self._grow_reservations()
        self._make_room_for_interactive()
        out.memory_ops.extend(self._ops)
        self._ops = []
        num_visitors = sum(1 for r in self.running if r.priority == Priority.INTERACTIVE and not r.is_prefilling)
        # a visitor's stream is decoding: half a chunk of prefill per step, since a chunk late in a
        # long prompt attends over more cells and took ~1.75x a lone chunk's step
        budget = self.prefill_chunk_tokens // 2 if num_visitors else self.prefill_chunk_tokens
        self._add_decodes(out, Priority.INTERACTIVE)
        budget = self._prefill_class(Priority.INTERACTIVE, out, budget)
        visitor_prefill = len(out.chunks) > num_visitors  # the chunks so far: visitors' decodes, then prefill
        wants_prefill = any(r.priority == Priority.BACKGROUND for r in self.waiting) or any(
            r.priority == Priority.BACKGROUND and r.is_prefilling for r in self.running
        )
        background_runs = any(r.priority == Priority.BACKGROUND for r in self.running)
        if (num_visitors or visitor_prefill) and (wants_prefill or background_runs):
            self.share.beside()  # how long background has waited beside visitors (BackgroundShare.MAX_HOLD_S)
        if visitor_prefill or self.share.allows_background(num_visitors, wants_prefill):
            self._add_decodes(out, Priority.BACKGROUND)
            if not any(r.priority == Priority.INTERACTIVE and r.is_prefilling for r in self.running):
                # a prompt still prefilling keeps its turn; beside a decoding visitor, what the credit pays for
                if all(c.request.priority == Priority.BACKGROUND for c in out.chunks):
                    budget = self._background_alone_chunk()  # background alone: a step a visitor stops
                self._prefill_class(Priority.BACKGROUND, out, min(budget, self.share.prefill_tokens(num_visitors)))
        elif background_runs:
            self.share.held()
        out.chunks.sort(key=lambda c: not c.decode)  # decodes first, then prefill
        if self.drafter is not None:
            self._draft(out)
        out.abortable = any(c.request.is_prefilling for c in out.chunks) and all(
            c.request.priority == Priority.BACKGROUND for c in out.chunks
        )
        return out

    def _background_alone_chunk(self) -> int:
        big = self.background_chunk_tokens
        if big == self.visitor_chunk_tokens or not self.visitor_expected() or self._clear_until(big):
            return big
        return self.visitor_chunk_tokens

    def _clear_until(self, tokens: int) -> bool:
        """Would a step of `tokens` prompt tokens end before the next visitor is likely back
        (CLEAR_THINKS of the usual pause after the last one's end, none arrived since)?"""
        if self.think_s is None or self.alone_token_s is None or self.last_end < self.last_visitor:
            return False
        return time.monotonic() + tokens * self.alone_token_s < self.last_end + self.CLEAR_THINKS * self.think_s

    def visitor_expected(self) -> bool:
        """Is a visitor expected back (NEAR_S)?"""
        window = self.NEAR_S if self.think_s is None else min(self.NEAR_S, self.NEAR_THINKS * self.think_s)
        return time.monotonic() - self.last_visitor < window

    def _visitor_arrived(self) -> None:
        now = time.monotonic()
        if self.last_visitor > float("-inf") and not self._other_visitor():
            pause = min(now - self.last_visitor, self.NEAR_S)
            self.think_s = pause if self.think_s is None else self.think_s + self.THINK_ALPHA * (pause - self.think_s)
        self.last_visitor = now

    def _saw(self, req: Request) -> None:
        """A request ended: a visitor's marks the time (its pause before the next counts from it)."""
        if req.priority == Priority.INTERACTIVE:
            self.last_visitor = time.monotonic()
            if not self._other_visitor(req):
                self.last_end = self.last_visitor

    def _other_visitor(self, req: Request | None = None) -> bool:
        """Is an interactive request other than req running or waiting (no pause between them)?"""
        return any(r.priority == Priority.INTERACTIVE and r is not req for r in (*self.running, *self.waiting))

    def _add_decodes(self, out: SchedulerOutput, cls: Priority) -> None:
        for req in self.running:
            if req.priority == cls and not req.is_prefilling:
                out.chunks.append(ScheduledChunk(req, [req.output_tokens[-1]], req.num_computed, True, decode=True))

    def _draft(self, out: SchedulerOutput) -> None:
        """Prompt lookup: give greedy decodes draft tokens to verify, as many as the drafter finds
        worth their cost. Background sequences draft only while no visitor decodes (a longer step
        would slow the visitor's stream); a draft never runs past a reservation or max_tokens."""
        decodes = [c for c in out.chunks if c.decode]
        if not decodes:
            return
        visitors = any(c.request.priority == Priority.INTERACTIVE for c in decodes)
        drafts = [self._propose(c.request, visitors) for c in decodes]
        uniform = self.drafter.uniform
        # with a stream per slot the decodes are a llama_decode of their own (prefill runs apart);
        # with one pool every chunk of the step is in one batch of at most max_step_tokens
        other = 0 if self.kv.streams else out.num_tokens - len(decodes)
        room = self.max_step_tokens - len(decodes) - other
        counts = self.drafter.choose(drafts, other, room)
        if uniform:  # every decode as long (pads never kept), none past its reservation
            k = min([counts[0]] + [c.request.reserved_tokens - c.request.num_tokens for c in decodes])
            counts = [max(k, 0)] * len(decodes)
        for chunk, draft, k in zip(decodes, drafts, counts, strict=True):
            if k:
                chunk.num_draft = min(k, len(draft.tokens))
                chunk.num_pad = k - chunk.num_draft
                chunk.draft_order = draft.order
                chunk.tokens = chunk.tokens + draft.tokens[: chunk.num_draft] + chunk.tokens[:1] * chunk.num_pad

    def _propose(self, req: Request, visitors: bool) -> Draft:
        room = min(req.reserved_tokens - req.num_tokens, req.params.max_tokens - len(req.output_tokens) - 1)
        eligible = req.params.is_plain_greedy and req.params.logprobs is None
        if room <= 0 or not eligible or (visitors and req.priority == Priority.BACKGROUND):
            return Draft([], 0, 0.0)
        return self.drafter.propose(req, room)

    def observe_step(
        self, out: SchedulerOutput, seconds: float, stopped: bool = False, wall: float | None = None
    ) -> None:
        """The engine ran out in seconds: a step that decoded visitors and prefilled none is a
        measure of what background work beside them costs (wall: what it cost the visitors, from
        the step before's end, StepEngine._visitor_wall; seconds where not given); one of
        background prefill alone, of the pace such steps go at (_clear_until); a stopped one ran
        only part of its work."""
        if out.abortable and not stopped and (tokens := out.num_tokens) > 0 and seconds > 0:
            pace, a = seconds / tokens, self.ALONE_ALPHA
            self.alone_token_s = (
                pace if self.alone_token_s is None else self.alone_token_s + a * (pace - self.alone_token_s)
            )
        background = [c for c in out.chunks if c.request.priority == Priority.BACKGROUND]
        if any(c.request.priority == Priority.INTERACTIVE and c.start_pos < c.request.prefill_len for c in out.chunks):
            self.share.observe(0, bool(background), seconds)  # a visitor's prompt: no decode to measure
            return
        num_visitors = sum(1 for c in out.chunks if c.request.priority == Priority.INTERACTIVE)
        prefill = sum(len(c.tokens) for c in background if c.start_pos < c.request.prefill_len)
        self.share.observe(num_visitors, bool(background), seconds if wall is None else wall, prefill)

    def _prefill_class(self, cls: Priority, out: SchedulerOutput, budget: int) -> int:
        """Spend the prefill budget on this class, most urgent first, running or waiting: a short
        prompt that waits is admitted before a long one that runs gets more of the step."""
        running = sorted((r for r in self.running if r.priority == cls and r.is_prefilling), key=self._urgency)
        order = self._admission_order(cls)
        while budget > 0:
            waiting = self._next_admissible(order)
            if waiting is not None and (not running or self._urgency(waiting) < self._urgency(running[0])):
                self._admit(waiting, out)
                order.remove(waiting)
                req = waiting
            elif running:
                req = running.pop(0)
            else:
                break
            budget -= self._add_prefill(out, req, budget)
        return budget

    def _admit(self, req: Request, out: SchedulerOutput) -> None:
        self.waiting.remove(req)
        if req.status == RequestStatus.PREEMPTED:
            self.num_preempted_waiting -= 1
            self.num_resumptions += 1
            self._num_resumed += 1
        self.kv.allocate(req, out.memory_ops)
        req.status = RequestStatus.RUNNING
        if req.admitted_time is None:
            req.admitted_time = time.monotonic()
        self.running.append(req)

    def _urgency(self, req: Request, promote: bool = True) -> tuple[int, float]:
        """The smaller, the sooner: prompt tokens left to prefill. A prompt one chunk finishes
        comes before every longer one, however long that has waited: aging long prompts past
        questions made every question asked 10 s into four 3,000-token prompts wait for all of
        them (9.7-28.9 s on 2 cores), and a long prompt is not starved by short ones, which take
        one step each and leave it the rest of the budget. Among longer ones, each second waited
        counts as AGING_TOKENS_PER_S tokens less; and while more requests want a slot than there
        are, one waiting that has aged past its length comes before all, so a stream of short
        prompts cannot keep every slot from it (promote; never a reason to preempt, or two aged long
        prompts preempted each other every step)."""
        running = req.status == RequestStatus.RUNNING
        remaining = req.prefill_len - req.num_computed if running else req.num_tokens
        if remaining <= self.prefill_chunk_tokens:
            return 0, remaining
        aged = remaining - self.AGING_TOKENS_PER_S * (time.monotonic() - req.arrival_time)
        slots_short = len(self.running) + len(self.waiting) > self.max_batch_size
        return (0 if promote and aged <= 0 and slots_short and not running else 1), aged

    def _admission_order(self, cls: Priority) -> list[Request]:
        """This class's waiting requests, most urgent first (shortest prompt, aged)."""
        if cls == Priority.BACKGROUND and self.defer_background:
            return []
        return sorted((r for r in self.waiting if r.priority == cls), key=self._urgency)

    def _next_admissible(self, order: list[Request]) -> Request | None:
        """The first request in order that fits now; none passes an older one that has waited
        STARVATION_S for room and still does not fit."""
        if self.admission_paused or len(self.running) >= self.max_batch_size:
            return None
        now = time.monotonic()
        blocked_since = min(
            (w.arrival_time for w in order if now - w.arrival_time > self.STARVATION_S and not self.kv.can_allocate(w)),
            default=float("inf"),
        )
        req = next((r for r in order if self.kv.can_allocate(r)), None)
        return req if req is not None and req.arrival_time <= blocked_since else None

    def _make_room_for_interactive(self) -> None:
        """Preempt while the most urgent interactive request waits and could run if they were
        gone: background sequences (newest first), then interactive ones still prefilling a
        longer prompt than it has (the longest first; their KV stays, they resume where they were)."""
        if self.admission_paused:
            return
        waiting = sorted((r for r in self.waiting if r.priority == Priority.INTERACTIVE), key=self._urgency)
        if not waiting:
            return
        req = waiting[0]
        victims = self._by_newest(Priority.BACKGROUND) + sorted(
            (
                r
                for r in self.running
                if r.priority == Priority.INTERACTIVE
                and r.is_prefilling
                and self._urgency(r, promote=False) > self._urgency(req, promote=False)
            ),
            key=self._urgency,
            reverse=True,
        )
        freeable = sum(r.reserved_tokens for r in victims)
        if self.kv.num_reserved - freeable + self.kv.reservation(req) > self.kv.kv_cache_tokens:
            return  # even preempting all of them would not make room
        while victims and not (len(self.running) < self.max_batch_size and self.kv.can_allocate(req)):
            self.preempt(victims.pop(0))

    def _grow_reservations(self) -> None:
        """Each decoding sequence needs room for its next token; when the KV budget is full,
        preempt the lowest-priority, newest sequence (perhaps the one growing)."""
        for req in sorted(self.running, key=lambda r: (r.priority, r.arrival_time)):
            if req not in self.running or req.is_prefilling or not self.kv.needs_growth(req):
                continue
            while not self.kv.can_grow(req):
                self.preempt(self._victim())
                if req not in self.running:
                    break
            else:
                self.kv.grow(req, self._ops)

    def _victim(self) -> Request:
        return max(self.running, key=lambda r: (r.priority, r.arrival_time))

    def _by_newest(self, cls: Priority) -> list[Request]:
        return sorted((r for r in self.running if r.priority == cls), key=lambda r: r.arrival_time, reverse=True)

    @staticmethod
    def _add_prefill(out: SchedulerOutput, req: Request, budget: int) -> int:
        start = req.num_computed
        n = min(budget, req.prefill_len - start)
        last = start + n == req.prefill_len
        out.chunks.append(ScheduledChunk(req, req.all_tokens[start : start + n], start, last))
        return n

    def postprocess(self, out: SchedulerOutput, sampled: dict[int, SampledToken]) -> list[Request]:
        """Apply one step's results (keyed by the chunks' seq_id); return the requests that changed."""
        changed, self.num_new_tokens = [], 0
        for chunk in out.chunks:
            req = chunk.request
            if req.is_finished or not chunk.done:  # cancelled while its batch ran, or the step was cut short
                continue  # (an unfinished chunk is scheduled again: num_computed did not move)
            if chunk.decode:
                self._apply_decode(chunk, chunk.verified or [sampled[chunk.seq_id]])
            else:
                req.num_computed += len(chunk.tokens)
                if not chunk.sample:
                    continue
                self._append(req, sampled[chunk.seq_id])
            if req.is_finished:
                self.running.remove(req)
                self.kv.free(req, self._ops, keep_prefix=True)
                self._saw(req)
                if self.drafter is not None:
                    self.drafter.forget(req)
            changed.append(req)
        return changed

    def _apply_decode(self, chunk: ScheduledChunk, samples: list[SampledToken]) -> None:
        """A decode step, drafts included: samples[i] is the token after chunk.tokens[i], so
        tokens[i + 1] (a draft) stands, and samples[i + 1] with it, while it is what was sampled.
        The positions past the last kept token (rejected drafts, pads) leave the KV cache."""
        req, n = chunk.request, 0
        while True:
            req.num_computed += 1  # chunk.tokens[n] is in the KV cache for good
            self._append(req, samples[n])
            n += 1
            if req.is_finished or n > chunk.num_draft or chunk.tokens[n] != samples[n - 1].token:
                break
        if n < len(chunk.tokens):
            self._ops.append(MemoryOp("rm", req.seq_id, req.num_computed))
        if chunk.num_draft:
            self.drafter.observe(req, chunk.draft_order, chunk.num_draft, n - 1)

    def _append(self, req: Request, s: SampledToken) -> None:
        req.append_token(s.token, b"" if s.is_eog else s.piece, None if s.is_eog else s.logprob)
        self.num_new_tokens += 1
        if s.is_eog:
            req.finish(RequestStatus.FINISHED_STOPPED)
        elif len(req.output_tokens) >= req.params.max_tokens:
            req.finish(RequestStatus.FINISHED_LENGTH)

    def newest_running(self, n: int) -> list[Request]:
        """The n sequences to give up first under memory pressure: background before
        interactive, newest first."""
        order = sorted(self.running, key=lambda r: (r.priority, r.arrival_time), reverse=True)
        return order[:n] if n > 0 else []
