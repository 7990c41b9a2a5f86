"""Continuous batching: every step decodes one token for each running sequence and feeds
up to prefill_chunk_tokens of prompt (chunked prefill) from sequences still prefilling or
newly admitted. The scheduler decides who runs; it never calls the backend."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from edge_llm.engine.kv_cache import KVCacheManager, MemoryOp
from edge_llm.engine.request import Request, RequestStatus


class QueueFull(Exception):
    """The waiting queue is at its bound; the caller should retry later (HTTP 429)."""


@dataclass
class ScheduledChunk:
    request: Request
    tokens: list[int]
    start_pos: int  # position of tokens[0] in the sequence
    sample: bool  # sample a token from the logits of the last token


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    memory_ops: list[MemoryOp] = field(default_factory=list)  # run in order, before the batch

    @property
    def num_tokens(self) -> int:
        return sum(len(c.tokens) for c in self.chunks)

    @property
    def is_empty(self) -> bool:
        return not self.chunks and not self.memory_ops


@dataclass(frozen=True)
class TokenLogprob:
    """The model's log-probability of a sampled token, before any sampling filter."""

    token: int
    piece: bytes
    logprob: float
    top: tuple[tuple[int, bytes, float], ...] = ()  # the most likely tokens: (id, piece, logprob)


@dataclass(frozen=True)
class SampledToken:
    token: int
    piece: bytes  # the token's text bytes (empty for control tokens)
    is_eog: bool  # end of generation (EOS, EOT)
    logprob: TokenLogprob | None = None  # when the request asked for logprobs


class Scheduler:
    def __init__(self, kv: KVCacheManager, max_batch_size: int, prefill_chunk_tokens: int, max_queue: int):
        self.kv = kv
        self.max_batch_size = max_batch_size
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.max_queue = max_queue
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.admission_paused = False  # memory pressure or draining: keep requests waiting
        self._ops: list[MemoryOp] = []  # frees decided between steps

    @property
    def has_work(self) -> bool:
        return bool(self.running or self._ops or (self.waiting and not self.admission_paused))

    def add(self, req: Request) -> None:
        if len(self.waiting) >= self.max_queue:
            raise QueueFull(f"{len(self.waiting)} requests are already waiting")
        self.waiting.append(req)

    def abort(self, req: Request, status: RequestStatus = RequestStatus.FINISHED_CANCELLED) -> bool:
        """End a request wherever it is; its KV is freed before the next batch runs."""
        if req.is_finished:
            return False
        if req in self.running:
            self.running.remove(req)
            self.kv.free(req, self._ops, keep_prefix=False)
        elif req in self.waiting:
            self.waiting.remove(req)
        req.finish(status)
        return True

    def clear_prefix_cache(self) -> None:
        self.kv.clear_cache(self._ops)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(memory_ops=self._ops)
        self._ops = []
        budget = self.prefill_chunk_tokens
        for req in self.running:
            if not req.is_prefilling:
                out.chunks.append(ScheduledChunk(req, [req.output_tokens[-1]], req.num_computed, True))
        for req in self.running:
            if req.is_prefilling and budget > 0:
                budget -= self._add_prefill(out, req, budget)
        while budget > 0 and self._can_admit():
            req = self.waiting.popleft()
            self.kv.allocate(req, out.memory_ops)
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            budget -= self._add_prefill(out, req, budget)
        return out

    def _can_admit(self) -> bool:
        return (bool(self.waiting) and not self.admission_paused
                and len(self.running) < self.max_batch_size and self.kv.can_allocate(self.waiting[0]))

    @staticmethod
    def _add_prefill(out: SchedulerOutput, req: Request, budget: int) -> int:
        start = req.num_computed
        n = min(budget, req.num_prompt_tokens - start)
        last = start + n == req.num_prompt_tokens
        out.chunks.append(ScheduledChunk(req, req.prompt_tokens[start:start + n], start, last))
        return n

    def postprocess(self, out: SchedulerOutput, sampled: dict[int, SampledToken]) -> list[Request]:
        """Apply one step's results (keyed by seq_id); return the requests that changed."""
        changed = []
        for chunk in out.chunks:
            req = chunk.request
            if req.is_finished:  # aborted while its batch ran
                continue
            req.num_computed += len(chunk.tokens)
            if not chunk.sample:
                continue
            s = sampled[req.seq_id]
            req.append_token(s.token, b"" if s.is_eog else s.piece, None if s.is_eog else s.logprob)
            if s.is_eog:
                req.finish(RequestStatus.FINISHED_STOPPED)
            elif len(req.output_tokens) >= req.params.max_tokens:
                req.finish(RequestStatus.FINISHED_LENGTH)
            if req.is_finished:
                self.running.remove(req)
                self.kv.free(req, self._ops, keep_prefix=True)
            changed.append(req)
        return changed

    def newest_running(self, n: int) -> list[Request]:
        return sorted(self.running, key=lambda r: r.arrival_time)[-n:] if n > 0 else []
