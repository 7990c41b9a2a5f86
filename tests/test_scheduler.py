"""Scheduler and KV bookkeeping without a model: hand-made requests and sampled tokens."""

import pytest

from edge_llm.engine.kv_cache import KVCacheManager, MemoryOp
from edge_llm.engine.request import Request, RequestStatus, SamplingParams
from edge_llm.engine.scheduler import QueueFull, SampledToken, Scheduler

EOS = 2


def create_scheduler(num_slots=6, kv_tokens=1000, max_batch=4, chunk=16, max_queue=8, cached=2):
    return Scheduler(KVCacheManager(num_slots, kv_tokens, cached), max_batch, chunk, max_queue)


def create_requests(n, num_tokens=10, max_tokens=5, first=100, **kw):
    return [Request(list(range(first + i * 1000, first + i * 1000 + num_tokens)),
                    SamplingParams(max_tokens=max_tokens, **kw)) for i in range(n)]


def run_step(s: Scheduler, token=7, piece=b"x", eos_for=()):
    out = s.schedule()
    sampled = {c.request.seq_id: SampledToken(EOS if c.request in eos_for else token,
                                              b"" if c.request in eos_for else piece, c.request in eos_for)
               for c in out.chunks if c.sample}
    return out, s.postprocess(out, sampled)


def test_prompt_is_fed_in_chunks_then_one_decode_token_per_step():
    s = create_scheduler(chunk=4)
    (req,) = create_requests(1, num_tokens=10)
    s.add(req)
    sizes = []
    for _ in range(3):
        out, _ = run_step(s)
        sizes.append([(len(c.tokens), c.start_pos, c.sample) for c in out.chunks])
    assert sizes == [[(4, 0, False)], [(4, 4, False)], [(2, 8, True)]]
    out, _ = run_step(s)
    assert [(c.tokens, c.start_pos) for c in out.chunks] == [([7], 10)]


def test_new_request_joins_running_batch_at_next_step():
    s = create_scheduler(chunk=32)
    a, b = create_requests(2, num_tokens=8, max_tokens=50)
    s.add(a)
    run_step(s)
    s.add(b)
    out, _ = run_step(s)
    assert [(c.request, len(c.tokens)) for c in out.chunks] == [(a, 1), (b, 8)]


def test_decode_tokens_come_before_prefill_budget():
    s = create_scheduler(chunk=8)
    a, b = create_requests(2, num_tokens=30, max_tokens=50)
    s.add(a)
    for _ in range(4):
        run_step(s)  # a is decoding now
    s.add(b)
    out, _ = run_step(s)
    assert [len(c.tokens) for c in out.chunks] == [1, 8]  # the running decode is never starved


def test_max_tokens_gives_length_and_eos_gives_stop():
    s = create_scheduler()
    a, b = create_requests(2, max_tokens=3)
    s.add(a)
    s.add(b)
    run_step(s)
    _, changed = run_step(s, eos_for=(b,))
    assert b.status is RequestStatus.FINISHED_STOPPED and b.finish_reason == "stop"
    run_step(s)
    assert a.status is RequestStatus.FINISHED_LENGTH and len(a.output_tokens) == 3
    assert s.running == [] and s.kv.num_reserved == 0


def test_stop_string_across_tokens_is_cut_and_held_back():
    s = create_scheduler()
    (req,) = create_requests(1, max_tokens=20, stop=("END",))
    s.add(req)
    pieces = [b"ab", b"E", b"N", b"D", b"zz"]
    deltas = []
    for p in pieces:
        if req.is_finished:
            break
        run_step(s, piece=p)
        deltas.append(req.take_delta())
    assert deltas == ["ab", "", "", ""]  # "E", "EN" could start the stop string: held back
    assert req.text == "ab" and req.finish_reason == "stop"


def test_utf8_split_across_tokens_is_decoded_whole():
    s = create_scheduler()
    (req,) = create_requests(1, max_tokens=2)
    s.add(req)
    run_step(s, piece="é".encode()[:1])
    run_step(s, piece="é".encode()[1:])
    assert req.text == "é"


def test_admission_waits_for_kv_reservation_and_batch_slots():
    s = create_scheduler(kv_tokens=40, max_batch=4)
    reqs = create_requests(3, num_tokens=10, max_tokens=10)  # 20 tokens each
    for r in reqs:
        s.add(r)
    run_step(s)
    assert [r.status for r in reqs] == [RequestStatus.RUNNING, RequestStatus.RUNNING, RequestStatus.WAITING]
    assert s.kv.num_reserved == 40
    s.abort(reqs[0])
    run_step(s)
    assert reqs[2].status is RequestStatus.RUNNING


def test_bounded_queue_raises():
    s = create_scheduler(max_queue=2)
    a, b, c = create_requests(3)
    s.add(a)
    s.add(b)
    with pytest.raises(QueueFull):
        s.add(c)


def test_abort_frees_the_sequence_before_the_next_batch():
    s = create_scheduler()
    (req,) = create_requests(1, max_tokens=50)
    s.add(req)
    run_step(s)
    slot = req.seq_id
    assert s.abort(req)
    out = s.schedule()
    assert out.memory_ops == [MemoryOp("rm", slot, 0)] and out.chunks == []
    assert req.finish_reason == "cancelled" and s.kv.num_reserved == 0 and slot in s.kv.free_slots


def test_finished_prefix_is_reused_by_a_later_request():
    s = create_scheduler(chunk=64)
    (a,) = create_requests(1, num_tokens=20, max_tokens=2)
    s.add(a)
    run_step(s)
    slot_a = a.seq_id
    while not a.is_finished:
        run_step(s)
    assert s.kv.cached == {slot_a: tuple(a.all_tokens[:a.num_computed])}
    b = Request(a.prompt_tokens[:15] + [9, 9, 9], SamplingParams(max_tokens=2))
    s.add(b)
    out = s.schedule()
    assert MemoryOp("cp", b.seq_id, 15, src_seq_id=slot_a) in out.memory_ops
    assert b.seq_id != slot_a and b.num_reused == 15 and [len(c.tokens) for c in out.chunks] == [3]


def cache_finished(kv: KVCacheManager, **request_kw) -> tuple[Request, int]:
    """Run a request's prompt through kv and finish it, leaving its prompt as a cached prefix."""
    (req,) = create_requests(1, **request_kw)
    kv.allocate(req, [])
    req.num_computed = req.num_prompt_tokens
    slot = req.seq_id
    kv.free(req, [], keep_prefix=True)
    return req, slot


def test_reuse_leaves_one_prompt_token_to_compute():
    kv = KVCacheManager(num_slots=1, kv_cache_tokens=100, max_cached=1)
    a, _ = cache_finished(kv, num_tokens=10, max_tokens=1)
    b = Request(list(a.prompt_tokens), SamplingParams(max_tokens=1))
    ops = []
    kv.allocate(b, ops)
    # the only slot is the cached one: it is adopted, and its tail beyond 9 tokens dropped
    assert ops == [MemoryOp("rm", 0, 9)] and b.num_computed == 9 and kv.cached == {}


def test_cache_is_evicted_when_reservations_need_the_room():
    kv = KVCacheManager(num_slots=4, kv_cache_tokens=100, max_cached=3)
    _, slot_a = cache_finished(kv, num_tokens=50, max_tokens=10)
    assert kv.num_cached_tokens == 50
    (b,) = create_requests(1, num_tokens=60, max_tokens=20, first=5)
    assert kv.can_allocate(b)
    ops = []
    kv.allocate(b, ops)
    assert kv.cached == {} and ops == [MemoryOp("rm", slot_a, 0)]
    assert kv.num_reserved + kv.num_cached_tokens <= kv.kv_cache_tokens
