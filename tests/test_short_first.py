"""Short prompts first without marking (no model): among requests of one class, admission and
prefill go to the shortest remaining prompt, aged so that a long one is never starved, and a long
prompt still prefilling yields its slot to a short one that waits."""

import time

import pytest

from edge_llm.engine.kv_cache import KVCacheManager
from edge_llm.engine.request import Request, RequestStatus, SamplingParams
from edge_llm.engine.scheduler import SampledToken, Scheduler


def scheduler(max_batch=1, chunk=64, slots=4):
    return Scheduler(KVCacheManager(slots, 100_000, max_cached=slots - max_batch, streams=True), max_batch, chunk, 16)


def request(n, first, max_tokens=3):
    return Request(list(range(first, first + n)), SamplingParams(max_tokens=max_tokens))


def step(s):
    out = s.schedule()
    sampled = {c.request.seq_id: SampledToken(7, b"x", False) for c in out.chunks if c.sample}
    s.postprocess(out, sampled)
    return out


def test_a_short_prompt_is_admitted_before_an_older_long_one():
    s = scheduler(max_batch=1)
    long, short = request(3000, 1000), request(20, 9000)
    s.add(long)
    s.add(short)
    step(s)
    assert short.status == RequestStatus.RUNNING and long.status == RequestStatus.WAITING


def test_aging_lets_a_long_prompt_that_waited_go_first():
    s = scheduler(max_batch=1)
    long, short = request(3000, 1000), request(20, 9000)
    long.arrival_time = time.monotonic() - 40  # 40 s x 100 tokens/s of credit outweighs 2,980 tokens
    s.add(long)
    s.add(short)
    step(s)
    assert long.status == RequestStatus.RUNNING and short.status == RequestStatus.WAITING


def test_a_long_prefill_yields_its_slot_to_a_short_prompt_and_resumes_where_it_was():
    s = scheduler(max_batch=1, chunk=64)
    long = request(1000, 1000)
    s.add(long)
    for _ in range(3):
        step(s)
    done_before = long.num_computed
    assert done_before == 192 and long.is_prefilling
    short = request(10, 9000)
    s.add(short)
    out = step(s)
    assert long.status == RequestStatus.PREEMPTED and short.status == RequestStatus.RUNNING
    assert [c.request for c in out.chunks] == [short]
    while not short.is_finished:
        step(s)
    step(s)  # the long one is back, adopting its own slot: nothing recomputed
    assert long.status == RequestStatus.RUNNING and long.num_reused == done_before < long.num_computed


def test_prefill_budget_goes_to_the_shortest_remaining_prompt_first():
    s = scheduler(max_batch=2, chunk=64)
    long, short = request(500, 1000), request(40, 9000)
    s.add(long)
    step(s)  # long admitted, 64 of its tokens
    s.add(short)
    out = step(s)
    assert [(c.request, len(c.tokens)) for c in out.chunks] == [(short, 40), (long, 24)]


def test_a_question_one_chunk_finishes_goes_before_long_running_prompts_however_long_they_waited():
    # the mixed workload unmarked: four 3,000-token prompts (one prefilling, the others waiting
    # their turn, slots to spare), and a question asked 40 s in. Aged, the prompts came first, and
    # questions waited 9.7-28.9 s on 2 cores
    s = scheduler(max_batch=8, chunk=64, slots=9)
    longs = [request(3000, 1000 * (k + 1)) for k in range(4)]
    for r in longs:
        s.add(r)
    step(s)
    for r in longs:
        r.arrival_time -= 40  # 4,000 tokens of aging credit: more than any of them has left
    question = request(40, 9000)
    s.add(question)
    out = step(s)
    assert question.status == RequestStatus.RUNNING
    # the rest of the step went to the long one prefilling
    assert [(c.request, len(c.tokens)) for c in out.chunks] == [(question, 40), (longs[0], 24)]


def test_background_prefill_alone_takes_the_background_chunk_and_beside_a_visitor_the_chunk():
    from edge_llm.engine.request import Priority

    s = Scheduler(KVCacheManager(4, 100_000, max_cached=0, streams=True), 4, 64, 16, background_chunk_tokens=256)
    part = Request(list(range(1000, 4000)), SamplingParams(max_tokens=3), priority=Priority.BACKGROUND)
    s.add(part)
    out = step(s)
    assert [(c.request, len(c.tokens)) for c in out.chunks] == [(part, 256)] and out.abortable
    visitor = request(10, 9000, max_tokens=50)
    s.add(visitor)
    out = step(s)  # the visitor's prompt: background prefill waits
    assert [c.request for c in out.chunks] == [visitor]
    for _ in range(40):
        out = step(s)
        assert sum(len(c.tokens) for c in out.chunks if c.request is part) <= 32  # half the chunk at most


def test_background_prefill_alone_takes_the_visitor_chunk_while_visitors_come():
    """A stopped step's work is lost: while a visitor is expected back (arrived or ended within
    NEAR_S, no pause seen yet), a step of background prefill alone takes the visitor chunk
    (Plan.background_visitor_chunk), else the background chunk."""
    from edge_llm.engine.request import Priority

    kv = KVCacheManager(4, 100_000, max_cached=0, streams=True)
    s = Scheduler(kv, 4, 64, 16, background_chunk_tokens=256, visitor_chunk_tokens=128)
    part = Request(list(range(1000, 9000)), SamplingParams(max_tokens=3), priority=Priority.BACKGROUND)
    s.add(part)

    def alone():
        out = step(s)
        assert out.abortable
        return [len(c.tokens) for c in out.chunks if c.request is part]

    assert alone() == [256]  # no visitor yet
    visitor = request(10, 20_000, max_tokens=4)
    s.add(visitor)
    assert not step(s).abortable  # the visitor's prompt and decodes are in every step
    s.last_visitor -= Scheduler.NEAR_S  # as if it had run NEAR_S: its end is what counts
    while not visitor.is_finished:
        assert not step(s).abortable
    assert alone() == [128]  # a visitor was just here: its next question stops a shorter step
    s.last_visitor -= Scheduler.NEAR_S  # as if NEAR_S had passed since it ended
    assert alone() == [256]
    cancelled = request(10, 30_000, max_tokens=4)
    s.add(cancelled)  # seen on arrival
    s.last_visitor -= Scheduler.NEAR_S
    s.abort(cancelled)  # ... and on its end
    assert alone() == [128]
    s.last_visitor -= Scheduler.NEAR_S
    background = Request(list(range(50_000, 50_100)), SamplingParams(max_tokens=2), priority=Priority.BACKGROUND)
    s.add(background)  # a background request is no visitor: the step stays the background chunk
    out = step(s)
    assert out.abortable and [(c.request, len(c.tokens)) for c in out.chunks] == [(background, 100), (part, 156)]


def test_a_visitor_is_expected_back_for_twice_the_visitors_usual_pause():
    """A kiosk visitor reading each answer pauses seconds between questions: the smaller background
    steps go on between them. A client asking one question right after another pauses ~0: once it
    has done, the background chunk comes back at once (the mixed benchmark's visitor)."""
    from edge_llm.engine.request import Priority

    kv = KVCacheManager(4, 100_000, max_cached=0, streams=True)
    s = Scheduler(kv, 4, 64, 16, background_chunk_tokens=256, visitor_chunk_tokens=128)
    part = Request(list(range(1000, 20_000)), SamplingParams(max_tokens=3), priority=Priority.BACKGROUND)
    s.add(part)

    def ask(first: int, paused: float) -> None:
        s.last_visitor -= paused  # as if the visitor had paused this long since the last answer ended
        visitor = request(10, first, max_tokens=2)
        s.add(visitor)
        while not visitor.is_finished:
            step(s)

    def alone() -> int:
        out = step(s)
        assert out.abortable
        return sum(len(c.tokens) for c in out.chunks)

    for k in range(4):  # a reader: 3 s between an answer and the next question
        ask(20_000 + 100 * k, 3.0)
        assert alone() == 128
    assert s.think_s == pytest.approx(3.0, abs=0.5)
    s.last_visitor -= 5.0  # within twice the pause: still expected
    assert alone() == 128
    s.last_visitor -= 2.0  # past it
    assert alone() == 256
    for k in range(6):  # one question right after another: the usual pause falls to ~0
        ask(30_000 + 100 * k, 0.0)
    assert s.think_s < 0.5
    s.last_visitor -= 1.0
    assert alone() == 256
    # a visitor arriving while another runs is no pause: the usual one stands
    running = request(10, 40_000, max_tokens=50)
    s.add(running)
    step(s)
    before = s.think_s
    s.last_visitor -= 10.0
    beside = request(10, 41_000, max_tokens=2)
    s.add(beside)
    assert s.think_s == before
    first = Scheduler(kv, 4, 64, 16, background_chunk_tokens=256, visitor_chunk_tokens=128)
    first.last_visitor = time.monotonic() - Scheduler.NEAR_S + 1  # one visitor, no pause seen yet: NEAR_S
    assert first.visitor_expected()
    first.last_visitor -= 1.0
    assert not first.visitor_expected()


def test_a_full_background_step_still_runs_where_it_ends_before_the_visitor_is_likely_back():
    """Right after a kiosk visitor's answer, the next question is seconds away: a step of background
    prefill alone that, at the pace of the recent ones, ends within CLEAR_THINKS of the usual pause
    after that end is of the background chunk (the cheaper a token); later in the pause, or with a
    visitor arrived since, the visitor chunk. A stopped step's time is no pace."""
    from edge_llm.engine.request import Priority

    kv = KVCacheManager(4, 100_000, max_cached=0, streams=True)
    s = Scheduler(kv, 4, 64, 16, background_chunk_tokens=256, visitor_chunk_tokens=128)
    part = Request(list(range(1000, 30_000)), SamplingParams(max_tokens=3), priority=Priority.BACKGROUND)
    s.add(part)

    def alone(seconds_a_token: float | None = None, stopped: bool = False) -> int:
        out = step(s)
        assert out.abortable
        if seconds_a_token is not None:
            s.observe_step(out, seconds_a_token * out.num_tokens, stopped)
        return out.num_tokens

    def ask(first: int, paused: float) -> None:
        s.last_visitor -= paused
        s.last_end -= paused
        visitor = request(10, first, max_tokens=2)
        s.add(visitor)
        while not visitor.is_finished:
            step(s)

    for k in range(3):  # a reader: 4 s between an answer and the next question
        ask(40_000 + 100 * k, 4.0)
    assert s.think_s == pytest.approx(4.0, abs=0.5) and s.alone_token_s is None
    assert alone(0.005) == 128  # no pace measured yet: the smaller step
    assert s.alone_token_s == pytest.approx(0.005)
    assert alone() == 256  # 256 x 5 ms = 1.3 s, ends before 0.5 x 4 s after the answer
    s.last_visitor -= 1.0
    s.last_end -= 1.0  # a second into the pause: 1 + 1.3 s runs past 2 s
    assert alone() == 128
    assert s.visitor_expected()
    s.observe_step(s.schedule(), 0.0001, stopped=True)  # stopped early: its time is no pace
    assert s.alone_token_s == pytest.approx(0.005)
    ask(41_000, 4.0)
    for _ in range(6):  # the steps slow down (late in a long prompt): 256 x 10 ms = 2.6 s, past the
        alone(0.010)  # half pause (4.5 s since the last pause counted 5)
    assert s.think_s == pytest.approx(4.5, abs=0.1) and s.alone_token_s > 0.009
    s.last_end = s.last_visitor = time.monotonic()
    assert alone() == 128
    s.alone_token_s = 0.005
    assert alone() == 256
    late = request(10, 42_000, max_tokens=50)
    s.add(late)  # arrived: no pause now, though the last end was just now
    while late.is_prefilling:
        step(s)
    s.abort(late)
    assert s.last_end >= s.last_visitor  # it ended alone: its end counts
    beside = request(10, 43_000, max_tokens=50)
    other = request(10, 44_000, max_tokens=2)
    s.add(beside)
    s.add(other)
    while not other.is_finished:
        step(s)
    assert s.last_end < s.last_visitor  # ended while another visitor ran: no pause begins


def test_two_aged_long_prompts_for_one_slot_do_not_preempt_each_other():
    """A waiting prompt aged past its length gets the next slot while slots are short, but that is
    no reason to preempt one that runs: the two preempted each other every step, and with no
    prefix cache slot neither got past its first chunk (found in review)."""
    s = Scheduler(KVCacheManager(1, 100_000, max_cached=0, streams=True), 1, 128, 16)
    first, second = request(800, 1000), request(800, 5000)
    now = time.monotonic()
    first.arrival_time, second.arrival_time = now - 20, now - 10
    s.add(first)
    s.add(second)
    for _ in range(12):
        step(s)
    assert s.num_preemptions == 0
    assert first.is_finished and second.status == RequestStatus.RUNNING  # one after the other
