"""KV bookkeeping: sequence slots, token reservations and the prefix cache.

Pure Python: it decides, and records what the backend must do to its KV memory as ordered
MemoryOps (remove a sequence's tail, copy a prefix between sequences). The cells of a
copied prefix are shared by both sequences in llama.cpp's unified KV cache.

With a KV stream per slot (streams=True) the slot numbers matter: llama.cpp runs a batch's
sequences together only while their ids are consecutive (llama_batch_allocr::split_equal,
"accept only increasing sequence ids"), and each run of ids is a ubatch of its own, a whole
pass over the weights. So a new sequence takes the lowest slot no running sequence holds
(a cached prefix there is evicted, or adopted when it matches), and a copy between streams
(a whole buffer) is made only for a pinned prefix worth it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from edge_llm.engine.request import Request

RESERVE_STEP = 64  # output tokens reserved at a time: a reservation grows as a request generates
MIN_STREAM_COPY = 64  # tokens of a pinned prefix worth copying a whole stream for (per-slot KV)


@dataclass(frozen=True)
class MemoryOp:
    kind: str  # "rm": drop positions >= pos of seq; "cp": share positions < pos of src with seq
    seq_id: int
    pos: int = 0
    src_seq_id: int = -1


@dataclass(frozen=True)
class Lanes:
    """Sequence slots spread over `count` llama.cpp contexts over one model (lanes), in blocks of
    `size` slots: slot s is in lane (s // size) % count, as local sequence id `local(s)`. On a GPU
    the contexts' steps run at once, each on its own CUDA stream (an H200 ran 16 sequences as two
    lanes of 8 in 2.1 ms a step, as one context in 3.8: tools/lanes_probe.py); the lowest free slot
    is taken first, so a few sequences share lane 0 and more fill the others. A stream's KV cannot
    be copied to another lane's context."""

    count: int = 1
    size: int = 0  # slots in a block; 0 = one lane

    def lane(self, slot: int) -> int:
        return (slot // self.size) % self.count if self.count > 1 else 0

    def local(self, slot: int) -> int:
        """The slot's sequence id in its lane's context (increasing with the slot, no gaps)."""
        if self.count <= 1:
            return slot
        return (slot // (self.size * self.count)) * self.size + slot % self.size

    def slots(self, lane: int, num_slots: int) -> list[int]:
        return [s for s in range(num_slots) if self.lane(s) == lane]


def common_prefix_len(a: list[int] | tuple[int, ...], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class KVCacheManager:
    def __init__(
        self,
        num_slots: int,
        kv_cache_tokens: int,
        max_cached: int,
        min_reuse: int = 1,
        streams: bool = False,
        lanes: Lanes = Lanes(),
    ):
        self.kv_cache_tokens = kv_cache_tokens  # KV cells the context holds
        self.max_cached = max_cached
        self.min_reuse = min_reuse  # shorter matches are not worth a copy
        self.streams = streams  # a KV stream per slot: keep running slots low and consecutive
        self.lanes = lanes  # contexts the slots are spread over: a prefix is copied within one only
        if lanes.count > 1 and not streams:  # one pool per lane would fill apart from the count kept here
            raise ValueError("lanes need a KV stream per slot")
        self.free_slots: set[int] = set(range(num_slots))
        self.num_reserved = 0  # tokens reserved by running requests
        self.peak_reserved = 0  # the most ever reserved at once
        self.cached: OrderedDict[int, tuple[int, ...]] = OrderedDict()  # slot -> tokens in its KV (LRU first)
        self.pinned: set[int] = set()  # cached slots of preempted requests: evicted last (they will be reused)
        self.pinned_for: dict[str, int] = {}  # request id -> the slot pinned for it
        self.num_cached_tokens = 0

    def can_allocate(self, req: Request) -> bool:
        has_slot = bool(self.free_slots) or bool(self.cached)
        return has_slot and self.num_reserved + self.reservation(req) <= self.kv_cache_tokens

    @staticmethod
    def full_reservation(req: Request) -> int:
        """All a request may ever hold: for engines whose reservations cannot grow (TensorRT-LLM)."""
        return req.num_prompt_tokens + req.params.max_tokens

    @staticmethod
    def reservation(req: Request) -> int:
        """What admission reserves: the tokens so far and the next RESERVE_STEP of output, never
        more than the request may ever hold (its prompt + max_tokens)."""
        return min(KVCacheManager.full_reservation(req), req.num_tokens + RESERVE_STEP)

    def needs_growth(self, req: Request) -> bool:
        """The next decode step would write past the reservation."""
        return req.num_tokens >= req.reserved_tokens

    def can_grow(self, req: Request) -> bool:
        return self.num_reserved + self._growth(req) <= self.kv_cache_tokens

    def grow(self, req: Request, ops: list[MemoryOp]) -> None:
        self.reserve(req, self._growth(req))
        self._fit_cache(ops)

    def reserve(self, req: Request, n: int) -> None:
        """Add n cells to req's reservation (an engine without slots calls it directly)."""
        req.reserved_tokens += n
        self.num_reserved += n
        self.peak_reserved = max(self.peak_reserved, self.num_reserved)

    def unreserve(self, req: Request) -> None:
        self.num_reserved -= req.reserved_tokens
        req.reserved_tokens = 0

    @staticmethod
    def _growth(req: Request) -> int:
        return min(RESERVE_STEP, KVCacheManager.full_reservation(req) - req.reserved_tokens)

    def _fit_cache(self, ops: list[MemoryOp]) -> None:
        while self.cached and self.num_reserved + self.num_cached_tokens > self.kv_cache_tokens:
            self.free_slots.add(self._evict(ops))

    def allocate(self, req: Request, ops: list[MemoryOp]) -> None:
        """Give req a slot and its reservation, reusing the longest cached prefix of its tokens
        (a preempted request's own work, kept as a prefix, comes back this way)."""
        match, reuse = self._best_match(req.all_tokens)
        slot, copy_from = (self._streams_slot if self.streams else self._pool_slot)(match, reuse, ops)
        if copy_from is not None:
            ops.append(MemoryOp("cp", slot, reuse, src_seq_id=copy_from))
            self.cached.move_to_end(copy_from)
            if not self.streams:  # (with streams the owner adopts its slot; a copy is someone else's)
                self.pinned.discard(copy_from)  # its owner is back
        elif slot != match:
            reuse = 0
        req.seq_id = slot
        req.num_computed = req.num_reused = reuse
        req.prefill_len = req.num_tokens
        req.reserved_tokens = 0
        self.reserve(req, self.reservation(req))
        self._fit_cache(ops)

    def _pool_slot(self, match: int | None, reuse: int, ops: list[MemoryOp]) -> tuple[int, int | None]:
        """Unified KV: a copied prefix shares its cells, so copy and keep the cached entry."""
        if self.free_slots:
            return self._take_lowest_free(), match
        if len(self.cached) > 1 or match is None:
            return self._evict(ops, keep=match), match
        return self._adopt(match, reuse, ops), None  # the only cached slot is the match

    def _streams_slot(self, match: int | None, reuse: int, ops: list[MemoryOp]) -> tuple[int, int | None]:
        """A stream per slot: adopt a matching prefix in place (no copy) unless it is pinned for
        a preempted request that this one is not (a preempted request's whole prefix matches);
        otherwise the lowest slot not running, evicting what it caches."""
        if match is not None and (match not in self.pinned or reuse >= len(self.cached[match]) - 1):
            return self._adopt(match, reuse, ops), None
        unpinned = [s for s in self.cached if s not in self.pinned and s != match]
        slot = min(list(self.free_slots) + unpinned, default=None)
        if slot is None:  # every non-running slot holds a pinned prefix
            slot = self._evict(ops, keep=match)
        elif slot in self.free_slots:
            self.free_slots.discard(slot)
        else:
            self._uncache(slot)
            ops.append(MemoryOp("rm", slot, 0))
        worth = match is not None and reuse >= MIN_STREAM_COPY and self.lanes.lane(match) == self.lanes.lane(slot)
        return slot, (match if worth else None)

    def _adopt(self, slot: int, reuse: int, ops: list[MemoryOp]) -> int:
        """Take over a cached slot with its prefix, dropping its tail beyond reuse."""
        self._uncache(slot)
        ops.append(MemoryOp("rm", slot, reuse))
        return slot

    def _take_lowest_free(self) -> int:
        slot = min(self.free_slots)
        self.free_slots.discard(slot)
        return slot

    def free(self, req: Request, ops: list[MemoryOp], keep_prefix: bool, pin: bool = False) -> None:
        """Release req's slot; a finished (or preempted: pin) sequence's KV may stay as a
        cached prefix."""
        self.unreserve(req)
        slot, req.seq_id = req.seq_id, -1
        tokens = tuple(req.all_tokens[: req.num_computed])
        if keep_prefix and self.max_cached > 0 and len(tokens) >= self.min_reuse:
            if len(self.cached) >= self.max_cached:
                self.free_slots.add(self._evict(ops))
            self.cached[slot] = tokens
            self.num_cached_tokens += len(tokens)
            if pin:
                self.pinned.add(slot)
                self.pinned_for[req.request_id] = slot
            self._fit_cache(ops)
        else:
            ops.append(MemoryOp("rm", slot, 0))
            self.free_slots.add(slot)

    def unpin(self, req: Request) -> None:
        """A preempted request ended while waiting: nobody will come back for its prefix."""
        slot = self.pinned_for.pop(req.request_id, None)
        if slot is not None:
            self.pinned.discard(slot)

    def clear_cache(self, ops: list[MemoryOp]) -> None:
        while self.cached:
            self.free_slots.add(self._evict(ops))

    def _best_match(self, prompt: list[int]) -> tuple[int | None, int]:
        best, best_len = None, 0
        for slot, tokens in self.cached.items():
            n = min(common_prefix_len(tokens, prompt), len(prompt) - 1)  # one token left for logits
            if n >= max(best_len, self.min_reuse) and n > 0:
                best, best_len = slot, n
        return best, best_len

    def _evict(self, ops: list[MemoryOp], keep: int | None = None) -> int:
        """The least recently used cached slot, unpinned ones first."""
        candidates = [s for s in self.cached if s != keep]
        slot = next((s for s in candidates if s not in self.pinned), candidates[0])
        self._uncache(slot)
        ops.append(MemoryOp("rm", slot, 0))
        return slot

    def _uncache(self, slot: int) -> None:
        self.num_cached_tokens -= len(self.cached.pop(slot))
        self.pinned.discard(slot)
