"""Scheduler and KV bookkeeping without a model: hand-made requests and sampled tokens."""

from edge_llm.engine.kv_cache import KVCacheManager, MemoryOp
from edge_llm.engine.request import Request, RequestStatus, SamplingParams
from edge_llm.engine.scheduler import SampledToken, Scheduler

EOS = 2


def create_scheduler(num_slots=6, kv_tokens=1000, max_batch=4, chunk=16, max_queue=8, cached=2):
    return Scheduler(KVCacheManager(num_slots, kv_tokens, cached), max_batch, chunk, max_queue)


def create_requests(n, num_tokens=10, max_tokens=5, first=100, **kw):
    return [
        Request(
            list(range(first + i * 1000, first + i * 1000 + num_tokens)), SamplingParams(max_tokens=max_tokens, **kw)
        )
        for i in range(n)
    ]


def run_step(s: Scheduler, token=7, piece=b"x", eos_for=()):
    out = s.schedule()
    sampled = {
        c.request.seq_id: SampledToken(
            EOS if c.request in eos_for else token, b"" if c.request in eos_for else piece, c.request in eos_for
        )
        for c in out.chunks
        if c.sample
    }
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
    # the running decode is never starved, and while an interactive stream decodes, prefill
    # takes half a chunk per step (the stream's gaps stay short)
    assert [len(c.tokens) for c in out.chunks] == [1, 4]
    a.priority = Priority.BACKGROUND
    out, _ = run_step(s)
    assert [len(c.tokens) for c in out.chunks] == [1, 8]


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
    assert s.kv.cached == {slot_a: tuple(a.all_tokens[: a.num_computed])}
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


# -- priorities, preemption, growing reservations (issue 13) ------------------------------------

from edge_llm.engine.request import Priority  # noqa: E402


def model_step(s: Scheduler):
    """A deterministic stand-in model: the next token is a function of the whole context."""
    out = s.schedule()
    sampled = {}
    for c in out.chunks:
        if c.sample:
            context = c.request.all_tokens[: c.start_pos] + c.tokens
            sampled[c.request.seq_id] = SampledToken(
                10 + sum(t * (i + 1) for i, t in enumerate(context)) % 50, b"t", False
            )
    return out, s.postprocess(out, sampled)


def run_until_done(s: Scheduler, reqs, limit=2000):
    for _ in range(limit):
        if all(r.is_finished for r in reqs):
            return
        model_step(s)
    raise AssertionError("did not finish")


def background(n, num_tokens=40, max_tokens=30, first=100):
    reqs = create_requests(n, num_tokens=num_tokens, max_tokens=max_tokens, first=first)
    for r in reqs:
        r.priority = Priority.BACKGROUND
    return reqs


def test_interactive_request_arriving_during_background_prefill_is_admitted_next_step():
    s = create_scheduler(num_slots=6, kv_tokens=2000, max_batch=2, chunk=64, cached=2)
    bg = background(2, num_tokens=40)
    for r in bg:
        s.add(r)
    model_step(s)  # both admitted, the second still prefilling: the batch is full
    assert all(r.status == RequestStatus.RUNNING for r in bg) and bg[1].is_prefilling
    (chat,) = create_requests(1, num_tokens=10, max_tokens=5, first=9000)
    s.add(chat)
    out, _ = model_step(s)
    assert chat.status == RequestStatus.RUNNING
    prefills = [c for c in out.chunks if c.request.prefill_len > c.start_pos]  # after the running decodes
    assert prefills[0].request is chat and len(prefills[0].tokens) == 10  # its prefill comes first
    assert sum(r.status == RequestStatus.PREEMPTED for r in bg) == 1  # the newest made room
    assert bg[1].status == RequestStatus.PREEMPTED and s.num_preemptions == 1


def test_preempted_background_resumes_with_the_same_greedy_tokens_and_no_leaked_kv():
    alone = create_scheduler(max_batch=1)
    (ref,) = background(1)
    alone.add(ref)
    run_until_done(alone, [ref])

    s = create_scheduler(num_slots=6, kv_tokens=1000, max_batch=1, chunk=16, cached=2)
    (bg,) = background(1)
    s.add(bg)
    for _ in range(8):  # prefilled, a few tokens decoded
        model_step(s)
    assert 0 < len(bg.output_tokens) < 30
    chats = create_requests(2, num_tokens=12, max_tokens=6, first=5000)
    for c in chats:
        s.add(c)
    run_until_done(s, chats)
    assert bg.num_preemptions == 1 and not bg.is_finished
    run_until_done(s, [bg])
    assert bg.output_tokens == ref.output_tokens and bg.finish_reason == "length"
    assert s.num_resumptions == 1 and bg.num_reused > 0  # it came back from its cached prefix
    assert s.kv.num_reserved == 0 and not s.running and not s.waiting
    assert len(s.kv.free_slots) + len(s.kv.cached) == 6


def test_background_work_runs_whenever_no_interactive_request_runs():
    s = create_scheduler(max_batch=4, chunk=32)
    bg = background(2)
    for r in bg:
        s.add(r)
    model_step(s)
    (chat,) = create_requests(1, num_tokens=8, max_tokens=3, first=7000)
    s.add(chat)
    while not chat.is_finished:  # while the chat runs, steps carry no background prefill
        out, _ = model_step(s)
        assert not any(c.request in bg and c.request.prefill_len > c.start_pos for c in out.chunks)
    before = [r.num_computed for r in bg]
    model_step(s)
    assert [r.num_computed for r in bg] > before  # and background work goes on right after
    run_until_done(s, bg)


def test_a_large_waiting_request_does_not_block_smaller_ones_until_it_starves(monkeypatch):
    s = create_scheduler(kv_tokens=100, max_batch=4, chunk=64)
    (running,) = create_requests(1, num_tokens=40, max_tokens=20)  # reserves 60
    s.add(running)
    model_step(s)
    big, small = create_requests(2, num_tokens=50, max_tokens=20, first=3000)  # 70 each: does not fit
    small.prompt_tokens = small.prompt_tokens[:10]  # 30: fits
    s.add(big)
    s.add(small)
    model_step(s)
    assert small.status == RequestStatus.RUNNING and big.status == RequestStatus.WAITING
    s.abort(small)
    (later,) = create_requests(1, num_tokens=10, max_tokens=20, first=4000)
    s.add(later)
    big.arrival_time -= Scheduler.STARVATION_S + 1  # the big one has waited too long: no more passing
    model_step(s)
    assert later.status == RequestStatus.WAITING


def test_reservations_start_small_and_grow_and_a_full_budget_preempts_the_newest_background():
    from edge_llm.engine.kv_cache import RESERVE_STEP

    s = create_scheduler(num_slots=6, kv_tokens=200, max_batch=4, chunk=64, cached=0)
    first, second = background(2, num_tokens=20, max_tokens=150)
    s.add(first)
    s.add(second)
    model_step(s)
    assert first.reserved_tokens == 20 + RESERVE_STEP and s.kv.num_reserved == 2 * (20 + RESERVE_STEP)
    while first.status == RequestStatus.RUNNING and second.status == RequestStatus.RUNNING:
        model_step(s)
        assert s.kv.num_reserved <= 200
    assert second.status == RequestStatus.PREEMPTED and first.status == RequestStatus.RUNNING
    assert first.reserved_tokens > 20 + RESERVE_STEP  # it grew
    run_until_done(s, [first, second])
    assert s.kv.num_reserved == 0 and second.finish_reason == "length" and len(second.output_tokens) == 150


def test_memory_pressure_gives_up_background_first_then_the_newest():
    s = create_scheduler(max_batch=4, chunk=64)
    bg = background(1, first=2000)
    s.add(bg[0])
    model_step(s)
    old_chat, new_chat = create_requests(2, first=100)
    for r in (old_chat, new_chat):
        s.add(r)
    model_step(s)
    assert s.newest_running(2) == [bg[0], new_chat]


def test_only_background_prefill_steps_are_abortable_and_an_unfinished_chunk_runs_again():
    s = create_scheduler(max_batch=4, chunk=16)
    (bg,) = background(1, num_tokens=40)
    s.add(bg)
    out = s.schedule()
    assert out.abortable and [(c.start_pos, len(c.tokens)) for c in out.chunks] == [(0, 16)]
    out.chunks[0].done = False  # the backend stopped the step before this chunk finished
    assert s.postprocess(out, {}) == [] and bg.num_computed == 0
    again = s.schedule()
    assert [(c.request, c.start_pos, len(c.tokens)) for c in again.chunks] == [(bg, 0, 16)]
    s.postprocess(again, {})
    (chat,) = create_requests(1, num_tokens=8, max_tokens=3, first=7000)
    s.add(chat)
    out, _ = model_step(s)
    assert chat in [c.request for c in out.chunks] and not out.abortable  # a chat's step runs to its end
    run_until_done(s, [chat])
    out, _ = model_step(s)
    assert out.abortable and bg.is_prefilling  # background prefill alone again
    run_until_done(s, [bg])
    out = s.schedule()
    assert not out.abortable  # nothing to prefill
    assert s.kv.num_reserved == 0


def test_the_preempted_count_follows_every_change_of_the_waiting_queue():
    """The front bounds the queue by waiting requests that are not preempted ones; the count is
    kept as the queue changes (it was recounted only after some steps: a stale count gave a 429
    with nothing new waiting)."""
    s = create_scheduler(num_slots=4, max_batch=2, cached=2)
    a, b, c = create_requests(3, max_tokens=50)
    for r in (a, b):
        s.add(r)
    run_step(s)

    def true_count():
        return sum(1 for r in s.waiting if r.status == RequestStatus.PREEMPTED)

    s.preempt(a)
    assert s.num_preempted_waiting == true_count() == 1
    s.add(c)
    s.preempt(b)
    assert s.num_preempted_waiting == true_count() == 2
    s.abort(b)
    assert s.num_preempted_waiting == true_count() == 1
    run_step(s)  # a resumes (and c is admitted)
    assert s.num_preempted_waiting == true_count() == 0
