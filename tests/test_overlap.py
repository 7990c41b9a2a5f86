"""Decodes launched ahead (StepEngine._launch_ahead, model.overlap_steps): the next step of decodes
is queued before the step before it is applied, so on a GPU the engine's Python runs while the
device computes. It must give the same tokens and leave the same KV cells as stepping in turn,
whatever ends meanwhile (an end token, a stop string, a cancel, a preemption).

The engine's rules run against a stand-in backend (no model: its token at each position is fixed,
and it keeps the KV cells each slot holds, applying the memory operations as llama.cpp does);
then the real model on this CPU, forced on (the same tokens; nothing overlaps on a CPU)."""

from __future__ import annotations

import threading
import types

import pytest
from conftest import NO_EOS, make_config, stand_in_plan, wait_until

from edge_llm.engine.backends.base import BackendError
from edge_llm.engine.batch import SampledToken
from edge_llm.engine.request import Priority, Request, RequestStatus, SamplingParams
from edge_llm.engine.step_engine import StepEngine

END = 2  # the stand-in's end-of-generation token


class Cells:
    """Stands in for llama.cpp's backend: the token after position p of a slot's sequence is
    token_at(p), END at a request's chosen position; it records which KV positions each slot
    holds (memory ops, each step's tokens, trims) and what was launched ahead."""

    def __init__(self, ends_at: dict[int, int] | None = None):
        self.cells: dict[int, set[int]] = {}
        self.ends_at = ends_at or {}  # first prompt token -> position whose next token is END
        self.launches: list[list[tuple[int, int]]] = []  # per launch ahead: (num_computed, start_pos)
        self.trims: list[tuple[int, int]] = []
        self.in_flight = None
        self.fail_launch: set[int] = set()  # launches ahead (counted from 0) that fail, as llama_decode may
        self.fail_collect: set[int] = set()  # collects that fail
        self.num_launch = self.num_collect = 0
        self.wrong: list[str] = []

    def token_at(self, chunk, pos: int) -> SampledToken:
        if self.ends_at.get(chunk.request.prompt_tokens[0]) == pos:
            return SampledToken(END, b"", True)
        t = 100 + (pos * 7 + chunk.request.prompt_tokens[0]) % 50
        return SampledToken(t, f" w{t}".encode(), False)

    def _ops(self, ops) -> None:
        for op in ops:
            if op.kind == "rm":
                self.cells[op.seq_id] = {p for p in self.cells.get(op.seq_id, set()) if p < op.pos}
            else:  # cp: the source's cells below pos, as the KV manager asks
                self.cells[op.seq_id] = {p for p in self.cells.get(op.src_seq_id, set()) if p < op.pos}

    def _run(self, chunks) -> dict[int, SampledToken]:
        sampled = {}
        for c in chunks:
            cells = self.cells.setdefault(c.seq_id, set())
            for k in range(len(c.tokens)):
                assert c.start_pos + k not in cells, "a position written twice"
                cells.add(c.start_pos + k)
            if c.sample and not c.dropped:
                sampled[c.seq_id] = self.token_at(c, c.start_pos + len(c.tokens) - 1)
        return sampled

    def execute(self, out):
        assert self.in_flight is None, "a step ran while another was in flight"
        self._ops(out.memory_ops)
        return self._run(out.chunks)

    def launch_decodes(self, out):
        # (the engine logs a failed launch and goes on: what is wrong is kept for held_cells to assert)
        if self.in_flight is not None:
            self.wrong.append("two steps in flight")
        if any(c.start_pos >= c.request.reserved_tokens for c in out.chunks):
            self.wrong.append("a cell past the reservation")
        self.num_launch += 1
        if self.num_launch - 1 in self.fail_launch:  # (the real one removes what it queued: nothing here)
            raise BackendError("llama_decode failed with 1")
        self.launches.append([(c.request.num_computed, c.start_pos) for c in out.chunks])
        self.in_flight = out
        return out

    def collect(self, launched):
        assert launched is self.in_flight
        self.in_flight = None
        self.num_collect += 1
        sampled = self._run(launched.chunks)
        if self.num_collect - 1 in self.fail_collect:
            raise BackendError("the device failed")
        return sampled

    def trim(self, seq_id, pos):
        self.trims.append((seq_id, pos))
        self.cells[seq_id] = {p for p in self.cells.get(seq_id, set()) if p < pos}

    def release(self, request_id):
        pass

    def interrupt(self, requested):
        pass


PLAN = stand_in_plan(num_seqs=8, kv_cache_tokens=8 * 512, max_batch_size=4)


def engine_of(backend, overlap: bool) -> StepEngine:
    return StepEngine(backend, PLAN, stream_interval=0.0, overlap=overlap)


def request(first: int, max_tokens: int, stop=(), priority=Priority.INTERACTIVE) -> Request:
    return Request(
        [first, 11, 12, 13, 14], SamplingParams(temperature=0, max_tokens=max_tokens, stop=stop), priority=priority
    )


def run_all(engine, reqs) -> None:
    for r in reqs:
        engine._add(r)
    while engine.has_work:
        engine.step()


def run_until_ahead(engine, reqs, tokens: int = 5) -> None:
    """Add reqs and step until each has tokens outputs and a step runs ahead."""
    for r in reqs:
        engine._add(r)
    while engine._ahead is None or min(len(r.output_tokens) for r in reqs) < tokens:
        engine.step()


def held_cells(engine, backend) -> dict[int, int]:
    """Positions held per slot, checked to be exactly what the KV manager keeps as cached prefixes
    (and no launch ahead was wrong)."""
    assert backend.wrong == []
    cached = {slot: len(tokens) for slot, tokens in engine.scheduler.kv.cached.items()}
    held = {slot: cells for slot, cells in backend.cells.items() if cells}
    assert {s: sorted(c) for s, c in held.items()} == {s: list(range(n)) for s, n in cached.items()}
    return cached


def test_the_same_tokens_and_kv_cells_as_stepping_in_turn():
    """Lengths (one past two reservation growths), an end token, a stop string: every request's
    text, token count and end as without overlap, and the KV cells left are the cached prefixes
    exactly (no extra cell of a row dropped)."""

    def make():
        stop_text = " w" + str(100 + (9 * 7 + 3) % 50)  # the token after position 9 of request 3
        return [request(1, 150), request(2, 12), request(3, 40, stop=(stop_text,)), request(4, 40)]

    results = {}
    for overlap in (False, True):
        backend = Cells(ends_at={4: 20})  # request 4 samples its end token after position 20
        engine = engine_of(backend, overlap)
        reqs = make()
        run_all(engine, reqs)
        results[overlap] = [(r.output_tokens, r.text, r.status) for r in reqs], held_cells(engine, backend)
        if overlap:
            assert engine.num_steps_ahead > 0.8 * engine.num_steps
            assert backend.trims, "the stop string ended request 3 while its next step ran ahead"
    assert results[True] == results[False]
    statuses = [s for _, _, s in results[True][0]]
    assert statuses == [RequestStatus.FINISHED_LENGTH] * 2 + [RequestStatus.FINISHED_STOPPED] * 2


def test_a_step_is_launched_before_the_step_before_it_is_applied():
    backend = Cells()
    engine = engine_of(backend, True)
    run_all(engine, [request(1, 20), request(2, 20)])
    assert len(backend.launches) > 10
    for launch in backend.launches:  # each row's position is one past what the scheduler has applied
        assert all(start == computed + 1 for computed, start in launch)


def test_a_request_that_ends_with_a_step_gets_no_row_in_the_step_ahead():
    """An end token or the last token by length is seen before the launch: no row is wasted on it."""
    backend = Cells(ends_at={1: 8})
    engine = engine_of(backend, True)
    run_all(engine, [request(1, 40), request(2, 10)])
    assert not backend.trims
    rows = [len(launch) for launch in backend.launches]
    assert rows[0] == 2 and rows[-1] == 1


def test_a_request_cancelled_while_its_step_runs_ahead_gets_no_more_tokens_and_leaves_no_cell():
    backend = Cells()
    engine = engine_of(backend, True)
    keep, gone = request(1, 30), request(2, 30)
    run_until_ahead(engine, [keep, gone])
    n, slot = len(gone.output_tokens), gone.seq_id
    engine._end(gone, RequestStatus.FINISHED_CANCELLED)  # what the front does with a cancel
    while engine.has_work:
        engine.step()
    assert len(gone.output_tokens) == n and gone.status == RequestStatus.FINISHED_CANCELLED
    assert backend.trims[0][0] == slot
    assert len(keep.output_tokens) == 30 and keep.status == RequestStatus.FINISHED_LENGTH
    held_cells(engine, backend)


def test_a_preempted_request_resumes_with_the_same_tokens():
    """Memory pressure preempts a summary part while its step runs ahead: its row is dropped, its
    cell removed, and resumed from its kept prefix it goes on exactly as it would have."""
    reference = engine_of(Cells(), False)
    ref = request(5, 30, priority=Priority.BACKGROUND)
    run_all(reference, [ref])
    backend = Cells()
    engine = engine_of(backend, True)
    req = request(5, 30, priority=Priority.BACKGROUND)
    run_until_ahead(engine, [req], tokens=6)
    engine._relieve_pressure(1, "test pressure")  # what the front does under memory pressure
    assert req.status == RequestStatus.PREEMPTED
    while engine.has_work:
        engine.step()
    assert req.num_preemptions == 1 and backend.trims
    assert req.output_tokens == ref.output_tokens and req.status == RequestStatus.FINISHED_LENGTH
    held_cells(engine, backend)


def test_a_waiting_request_goes_to_the_scheduler_first():
    """A request that arrives while a step runs ahead is admitted by the next scheduled step: no
    further step is launched ahead until it has been prefilled."""
    backend = Cells()
    engine = engine_of(backend, True)
    first = request(1, 40)
    run_until_ahead(engine, [first], tokens=0)
    launches = len(backend.launches)
    late = request(2, 10)
    engine._add(late)
    engine.step()  # collects the step ahead; the waiting request stops the next launch
    assert len(backend.launches) == launches and engine._ahead is None
    engine.step()  # scheduled: the late request admitted and prefilled beside the first one's decode
    assert late.status == RequestStatus.RUNNING and late.num_computed == len(late.prompt_tokens)
    while engine.has_work:
        engine.step()
    assert len(late.output_tokens) == 10 and len(first.output_tokens) == 40


def test_visitors_beside_background_are_scheduled_each_step():
    """The background share decides each step (engine/share.py): nothing of a mixed batch runs ahead."""
    backend = Cells()
    engine = engine_of(backend, True)
    visitor, part = request(1, 40), request(2, 40, priority=Priority.BACKGROUND)
    for r in (visitor, part):
        engine._add(r)
    while visitor.status != RequestStatus.FINISHED_LENGTH:
        engine.step()
        if engine._ahead is not None:  # launched only with every running sequence in it, of one class
            chunks = engine._ahead[0].chunks
            assert {c.request for c in chunks} >= set(engine.scheduler.running)
            assert len({c.request.priority for c in chunks}) == 1
    while engine.has_work:
        engine.step()
    assert len(part.output_tokens) == 40


def test_a_call_on_the_engine_thread_sees_no_step_in_flight():
    backend = Cells()
    engine = engine_of(backend, True)
    run_until_ahead(engine, [request(1, 30)], tokens=0)
    box = []
    engine._handle("call", (lambda: (engine._ahead, backend.in_flight), types.SimpleNamespace(put=box.append)))
    assert box == [(True, (None, None))]


def test_a_step_that_fails_to_launch_ahead_runs_in_turn():
    reference = engine_of(Cells(), False)
    ref = [request(1, 30), request(2, 30)]
    run_all(reference, ref)
    backend = Cells()
    backend.fail_launch = {3, 4}
    engine = engine_of(backend, True)
    reqs = [request(1, 30), request(2, 30)]
    run_all(engine, reqs)
    assert [r.output_tokens for r in reqs] == [r.output_tokens for r in ref]
    assert all(r.status == RequestStatus.FINISHED_LENGTH for r in reqs) and engine.num_steps_ahead > 10
    held_cells(engine, backend)


def test_a_step_ahead_that_fails_ends_the_requests_in_it_but_not_one_that_ended_before():
    backend = Cells()
    engine = engine_of(backend, True)
    failing, cancelled = request(1, 30), request(2, 30)
    run_until_ahead(engine, [failing, cancelled])
    engine._end(cancelled, RequestStatus.FINISHED_CANCELLED)
    backend.fail_collect = {backend.num_collect}
    with pytest.raises(BackendError):
        engine.step()
    assert failing.status == RequestStatus.FINISHED_ERROR and cancelled.status == RequestStatus.FINISHED_CANCELLED
    while engine.has_work:  # the memory operations of both ends
        engine.step()
    held_cells(engine, backend)


def test_a_call_is_answered_when_the_step_in_flight_fails():
    backend = Cells()
    engine = engine_of(backend, True)
    req = request(1, 30)
    run_until_ahead(engine, [req], tokens=0)
    backend.fail_collect = {backend.num_collect}
    box = []
    engine._handle("call", (lambda: "answered", types.SimpleNamespace(put=box.append)))
    assert box == [(True, "answered")] and req.status == RequestStatus.FINISHED_ERROR


def test_a_backend_without_launch_decodes_steps_in_turn():
    backend = types.SimpleNamespace(execute=Cells().execute, release=None, interrupt=None)
    engine = StepEngine(backend, PLAN, overlap=True)
    assert engine.overlap is False


# -- the real model on this CPU ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    from edge_llm import appliance
    from edge_llm.telemetry.host import HostSource

    made = {}
    for mode in ("off", "on"):
        cfg = make_config(
            **{
                "daemon.state_dir": str(tmp_path_factory.mktemp(mode)),
                "model.overlap_steps": mode,
                "limits.max_batch_size": 4,
                "model.warmup": False,
            }
        )
        made[mode] = appliance.build_engine(cfg, HostSource().read())
    yield made
    for backend, _, engine in made.values():
        engine.stop()
        backend.close()


@pytest.fixture(scope="module")
def scorer():
    """The embedded model in llama-cpp-python's own Llama, every position's logits kept: to
    re-score a sequence as the engine ran it (greedy_gaps)."""
    import llama_cpp

    from edge_llm.config import embedded_model_path

    llm = llama_cpp.Llama(str(embedded_model_path()), n_ctx=512, n_gpu_layers=-1, logits_all=True, verbose=False)
    yield llm
    llm.close()


def test_the_model_gives_the_same_text_with_steps_launched_ahead(engines, scorer):
    prompts = ["Once upon a time", "The capital of France is", "def fib(n):", "List three colors:"]
    texts, sequences = {}, {}
    for mode, (backend, _, engine) in engines.items():
        assert engine.overlap is (mode == "on")
        engine.call(engine.clear_prefix_cache)
        reqs = [
            engine.make_request(
                backend.tokenize(p, True), SamplingParams(temperature=0, stop=(".",) if i == 1 else ()), 16 + 8 * i
            )[0]
            for i, p in enumerate(prompts)
        ]
        threads = [threading.Thread(target=lambda r=r, e=engine: list(e.generate(r))) for r in reqs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        texts[mode] = [(r.text, r.finish_reason, len(r.output_tokens)) for r in reqs]
        sequences[mode] = [(r.prompt_tokens, r.output_tokens) for r in reqs]
        cached = {slot: len(t) for slot, t in engine.scheduler.kv.cached.items()}
        assert engine.call(backend.seq_lengths) == cached  # no cell of a dropped row left behind
    assert engines["on"][2].num_steps_ahead > 0 and engines["off"][2].num_steps_ahead == 0
    if not engines["on"][0].gpu_offload:  # the CPU's sums do not depend on the batch: the same tokens
        assert texts["on"] == texts["off"]
        assert texts["on"][1][1] == "stop"
    # On a GPU a batch's shape picks the kernels, and their sums differ in the last bits: where two
    # tokens nearly tie, greedy text may part (an H100, session 17: "def fib(n):" went on
    # differently). What ahead steps must never do is feed a row a token it did not pick: each
    # token is the model's greedy pick after the tokens before it, re-scored as the engine ran it,
    # within this device's rounding: the gaps of the run with no step ahead (on an H100 one token
    # of that run was 0.50 logits below the scorer's best: a batch of 4 in a stream per slot
    # against one sequence in one pool, session 20). The check can fail: a token changed by hand
    # gives a gap far past it.
    gaps = {mode: [greedy_gaps(scorer, p, o) for p, o in seqs] for mode, seqs in sequences.items()}
    rounding = max(max(g, default=0.0) for g in gaps["off"])
    assert rounding <= 1.0, gaps["off"]  # rounding (test_lanes' docstring saw ~0.8), not a wrong token
    for (_, output), g in zip(sequences["on"], gaps["on"], strict=True):
        assert max(g, default=0.0) <= max(0.5, 2 * rounding), (output, g, rounding)
    prompt, output = sequences["on"][2]
    assert len(output) > 3, output
    wrong = list(output)
    wrong[3] = (wrong[3] + 1) % scorer.n_vocab()  # a token the model did not choose there
    assert greedy_gaps(scorer, prompt, wrong)[3] > max(2.0, 4 * rounding)


def greedy_gaps(scorer, prompt: list[int], output: list[int]) -> list[float]:
    """How far each output token's logit is below the best token the model gives after
    prompt + output[:i]: the prompt evaluated in one batch and each output token on its own, as
    the engine runs them (on the GPU where the build offloads). Scored in one batch instead, the
    output went through ggml-cuda's kernels for many tokens rather than its per-token ones, whose
    sums round otherwise (session 18: a token the engine picked with no step ahead missed that
    pass's greedy pick by more than 0.5)."""
    scorer.reset()
    scorer.eval(prompt)
    for token in output:
        scorer.eval([token])
    scores = scorer.scores[len(prompt) - 1 : len(prompt) - 1 + len(output)]
    return [round(float(row.max() - row[t]), 3) for row, t in zip(scores, output, strict=True)]


def test_a_stream_given_up_mid_way_leaves_the_kv_cache_as_the_scheduler_thinks(engines):
    backend, _, engine = engines["on"]
    tokens = backend.tokenize("Write a long story about a dragon.", True)
    no_end = SamplingParams(temperature=0, logit_bias=tuple((int(t), b) for t, b in NO_EOS.items()))
    other, _ = engine.make_request(tokens, no_end, 120)
    quit_, _ = engine.make_request(tokens[:-1], no_end, 120)
    t = threading.Thread(target=lambda: list(engine.generate(other)))
    t.start()
    for n, _out in enumerate(engine.generate(quit_)):
        if n == 5:
            break  # the consumer gives up: the request is cancelled while the other one decodes
    wait_until(lambda: quit_.is_finished, what="the cancel")
    t.join()
    assert quit_.status == RequestStatus.FINISHED_CANCELLED and len(quit_.output_tokens) < 100
    assert len(other.output_tokens) == 120
    cached = {slot: len(t) for slot, t in engine.scheduler.kv.cached.items()}
    assert engine.call(backend.seq_lengths) == cached
