"""Slot numbers with a KV stream per slot (no model): llama.cpp batches only sequences whose ids
follow each other (llama-batch.cpp split_equal, "accept only increasing sequence ids"), so the
running sequences must stay in the lowest, consecutive slots, and a prefix is reused in place."""

from types import SimpleNamespace

from edge_llm.engine.kv_cache import KVCacheManager, MemoryOp
from edge_llm.engine.request import Request, SamplingParams
from edge_llm.engine.scheduler import ScheduledChunk


def make(n, num_tokens=10, first=100, max_tokens=5):
    return [
        Request(list(range(first + i * 1000, first + i * 1000 + num_tokens)), SamplingParams(max_tokens=max_tokens))
        for i in range(n)
    ]


def runs_of_consecutive_ids(slots) -> int:
    """How many ubatches llama.cpp makes of one decode per slot, given in slot order."""
    ordered = sorted(slots)
    return sum(1 for i, s in enumerate(ordered) if i == 0 or s != ordered[i - 1] + 1)


def allocated(n, streams):
    """A KV manager of 8 slots and n requests given slots in it."""
    kv = KVCacheManager(num_slots=8, kv_cache_tokens=10_000, max_cached=4, streams=streams)
    reqs = make(n)
    for r in reqs:
        kv.allocate(r, [])
    return kv, reqs


def finish(kv, req, ops=None):
    req.num_computed = req.num_tokens
    kv.free(req, ops if ops is not None else [], keep_prefix=True)


def test_a_newcomer_fills_the_gap_a_finished_sequence_left():
    kv, reqs = allocated(4, streams=True)
    assert sorted(r.seq_id for r in reqs) == [0, 1, 2, 3]
    finish(kv, reqs[1])  # slot 1 now caches its prompt
    (new,) = make(1, first=50_000)
    ops = []
    kv.allocate(new, ops)
    running = [reqs[0].seq_id, new.seq_id, reqs[2].seq_id, reqs[3].seq_id]
    assert new.seq_id == 1 and ops == [MemoryOp("rm", 1, 0)] and runs_of_consecutive_ids(running) == 1


def test_unified_pool_keeps_the_cached_prefix_and_shares_it():
    kv, reqs = allocated(2, streams=False)
    finish(kv, reqs[0])
    again = Request(list(reqs[0].prompt_tokens) + [7, 8], SamplingParams(max_tokens=5))
    ops = []
    kv.allocate(again, ops)
    # a copy shares cells in one pool: the cached entry stays for the next one
    assert ops == [MemoryOp("cp", again.seq_id, 10, src_seq_id=0)] and 0 in kv.cached and again.seq_id == 2


def test_streams_adopt_a_matching_prefix_in_place_without_a_copy():
    kv, reqs = allocated(3, streams=True)
    finish(kv, reqs[2])
    turn2 = Request(list(reqs[2].prompt_tokens)[:8] + [1, 2, 3], SamplingParams(max_tokens=5))
    ops = []
    kv.allocate(turn2, ops)
    assert turn2.seq_id == 2 and turn2.num_computed == 8 and ops == [MemoryOp("rm", 2, 8)] and not kv.cached


def test_streams_copy_a_pinned_prefix_only_when_it_is_worth_a_whole_stream():
    kv = KVCacheManager(num_slots=8, kv_cache_tokens=10_000, max_cached=4, streams=True)
    (owner,) = make(1, num_tokens=200)
    kv.allocate(owner, [])
    owner.num_computed = 200
    kv.free(owner, [], keep_prefix=True, pin=True)  # preempted: its prefix is pinned for it
    short = Request(list(owner.prompt_tokens)[:30] + [5], SamplingParams(max_tokens=5))
    long = Request(list(owner.prompt_tokens)[:100] + [5], SamplingParams(max_tokens=5))
    ops_short, ops_long = [], []
    kv.allocate(short, ops_short)
    kv.allocate(long, ops_long)
    assert short.num_computed == 0 and not any(op.kind == "cp" for op in ops_short)
    assert ops_long == [MemoryOp("cp", long.seq_id, 100, src_seq_id=0)] and long.num_computed == 100
    assert (short.seq_id, long.seq_id) == (1, 2) and 0 in kv.pinned
    ops = []
    kv.allocate(owner, ops)  # the owner is back: its whole prefix, adopted in place
    assert owner.seq_id == 0 and owner.num_computed == 199 and ops == [MemoryOp("rm", 0, 199)]


def test_backend_sends_per_slot_decodes_in_slot_order_and_prefill_chunks_of_one_length_together():
    from edge_llm.engine.backends.llamacpp import LlamaCppBackend

    be = LlamaCppBackend.__new__(LlamaCppBackend)
    be.shape = SimpleNamespace(kv_unified=False)
    reqs = make(7)
    for r, slot in zip(reqs, (3, 0, 2, 1, 6, 4, 5), strict=True):
        r.seq_id = slot
    chunks = (
        [ScheduledChunk(r, [1], 10, True, decode=True) for r in reqs[:3]]
        + [ScheduledChunk(reqs[3], [1, 2, 3], 0, True)]
        + [ScheduledChunk(r, [1, 2], 0, True) for r in reqs[4:]]
    )
    groups = be._groups(chunks)
    assert [[c.request.seq_id for c in g] for g in groups] == [[0, 2, 3], [1], [4, 5, 6]]
    be.shape = SimpleNamespace(kv_unified=True)
    assert be._groups(chunks) == [chunks]
