"""Lanes: the sequence slots spread over several llama.cpp contexts over one model, whose steps a
GPU runs at once (engine/kv_cache.py Lanes). Model-free: the slot mapping, the KV manager never
copying between lanes, the plan following measured costs. With the real model (on the CPU here,
the lanes' steps one after another): every token of sequences spread over two lanes is the
model's greedy token, and each sequence's KV is in its own lane's context."""

import json
import threading
from dataclasses import replace

import pytest
from test_calibration import roomy
from test_lookup import _greedy_gaps, assert_greedy

from edge_llm import calibration, planner, profiles
from edge_llm.calibration import Calibration, choose, choose_lanes
from edge_llm.engine.kv_cache import MIN_STREAM_COPY, KVCacheManager, Lanes
from edge_llm.engine.request import Request, SamplingParams
from edge_llm.planner import GiB, Policy, plan
from edge_llm.telemetry.snapshot import Snapshot

KEY = {"model": "m.gguf", "build": "b", "gpu": "NVIDIA H200", "power_mode": None}
# an H200's figures (tools/lanes_probe.py, 2026-12-04): 16 sequences as one context 3.76 ms a step
H200_DECODE = {1: 0.0011, 4: 0.0014, 8: 0.00185, 16: 0.00376, 32: 0.0047}
H200_LANES = {16: {16: 0.00376, 4: 0.0023, 8: 0.0021}, 32: {32: 0.0047, 4: 0.0030, 8: 0.0028, 16: 0.0044}}


def cal(lanes_s, decode=None, can_abort=False) -> Calibration:
    return Calibration(
        KEY,
        {64: 0.006, 128: 0.008, 256: 0.009},
        decode or H200_DECODE,
        {"per_slot": 0.002, "unified": 0.0022},
        4,
        256,
        can_abort,
        1.0,
        lanes_s=lanes_s,
    )


def gpu() -> Snapshot:
    return replace(roomy(), gpu_name="NVIDIA H200", gpu_mem_total_bytes=140 * GiB, gpu_mem_used_bytes=10 * GiB)


MODEL = profiles.MODELS[next(iter(profiles.MODELS))]


def test_slots_fill_lanes_in_blocks_with_consecutive_ids_in_each():
    lanes = Lanes(count=2, size=8)
    assert [lanes.lane(s) for s in (0, 7, 8, 15, 16, 19, 24)] == [0, 0, 1, 1, 0, 0, 1]
    for lane in (0, 1):
        locals_ = [lanes.local(s) for s in lanes.slots(lane, 28)]
        assert locals_ == list(range(len(locals_)))  # increasing, no gaps: split_equal's order
    assert lanes.slots(0, 20) == [*range(8), 16, 17, 18, 19] and lanes.slots(1, 20) == list(range(8, 16))
    one = Lanes()
    assert [one.lane(s) for s in range(5)] == [0] * 5 and [one.local(s) for s in range(5)] == list(range(5))


def test_a_pinned_prefix_is_copied_within_its_lane_only():
    def scenario(lanes):
        kv = KVCacheManager(num_slots=4, kv_cache_tokens=10_000, max_cached=2, streams=True, lanes=lanes)
        owner = Request(list(range(100, 300)), SamplingParams(max_tokens=5))
        kv.allocate(owner, [])
        owner.num_computed = 200
        kv.free(owner, [], keep_prefix=True, pin=True)  # preempted: slot 0 pinned for it
        other = Request(list(owner.prompt_tokens)[: MIN_STREAM_COPY + 36] + [5], SamplingParams(max_tokens=5))
        ops = []
        kv.allocate(other, ops)  # the lowest unpinned slot, 1
        return other, ops

    other, ops = scenario(Lanes())
    assert other.seq_id == 1 and [op.kind for op in ops] == ["cp"] and other.num_computed == MIN_STREAM_COPY + 36
    other, ops = scenario(Lanes(count=2, size=1))  # slot 1 is in the other lane: computed again
    assert other.seq_id == 1 and not any(op.kind == "cp" for op in ops) and other.num_computed == 0
    with pytest.raises(ValueError, match="stream per slot"):
        KVCacheManager(4, 10_000, 2, streams=False, lanes=Lanes(2, 2))


def test_lanes_are_chosen_where_measured_faster_and_the_plan_follows():
    size, why = choose_lanes(cal(H200_LANES), 16)
    assert size == 8 and "3.76 ms" in why and "2.10 ms" in why
    assert choose_lanes(cal(H200_LANES), 64)[0] == 8  # the largest measured batch up to it
    slower = {16: {16: 0.00376, 8: 0.0036}}  # not 10% better than one context: one context
    assert choose_lanes(cal(slower), 16)[0] == 0
    # the baseline is one context with a stream per slot, as lanes have, not decode_s's one pool
    per_slot_slow = {16: {16: 0.0060, 8: 0.0036}}
    assert choose_lanes(cal(per_slot_slow), 16)[0] == 8
    cpu = cal({}, decode={1: 0.008, 4: 0.023}, can_abort=True)
    assert choose_lanes(cpu, 4) == (0, "one context: a step of one context at a time (the CPU's cores run one)")
    speed = choose(cal(H200_LANES), 0.15)
    assert speed.max_batch_size == 32 and speed.lane_size == 8
    # the batch follows the lanes' costs: where 32 as one context is no faster a token than 8, 8
    flat = H200_DECODE | {16: 0.0037, 32: 0.0075}
    assert (choose(cal({}, decode=flat), 0.15).max_batch_size, choose(cal({}, decode=flat), 0.15).lane_size) == (8, 0)
    with_lanes = choose(cal(H200_LANES, decode=flat), 0.15)
    assert (with_lanes.max_batch_size, with_lanes.one_context_batch) == (32, 8)
    # where the plan cannot have lanes, the batch is one context's choice
    no_lanes = plan(MODEL, gpu(), Policy(gpu_offload=True, per_sequence_kv=None, speed=with_lanes, lanes=False))
    assert (no_lanes.max_batch_size, no_lanes.lanes) == (8, 1) and "no lanes" in no_lanes.reasons["max_batch_size"]
    pooled = plan(MODEL, gpu(), Policy(gpu_offload=True, per_sequence_kv=False, speed=with_lanes))
    assert pooled.max_batch_size == 8
    lanes_plan = plan(MODEL, gpu(), Policy(gpu_offload=True, per_sequence_kv=None, speed=with_lanes))
    assert (lanes_plan.max_batch_size, lanes_plan.lanes) == (32, 4)
    p = plan(MODEL, gpu(), Policy(gpu_offload=True, per_sequence_kv=None, speed=speed, calibration={}))
    assert (p.kv_layout, p.max_batch_size, p.lanes, p.lane_size) == ("per_slot", 32, 4, 8)
    assert "4 lanes of 8" in p.reasons["lanes"] and "calibrated" in p.reasons["lanes"]
    capped = plan(
        MODEL, gpu(), Policy(gpu_offload=True, per_sequence_kv=None, speed=speed, caps={"max_batch_size": 12})
    )
    assert (capped.lanes, capped.lane_size) == (2, 8)
    small = plan(MODEL, gpu(), Policy(gpu_offload=True, per_sequence_kv=None, speed=speed, caps={"max_batch_size": 8}))
    assert small.lanes == 1 and "fills one lane" in small.reasons["lanes"]
    off = plan(MODEL, gpu(), Policy(gpu_offload=True, per_sequence_kv=None, speed=speed, lanes=False))
    assert off.lanes == 1 and "planner.lanes" in off.reasons["lanes"]
    pool = plan(MODEL, gpu(), Policy(gpu_offload=True, per_sequence_kv=False, speed=speed))
    assert pool.lanes == 1 and "stream per slot" in pool.reasons["lanes"]
    more = (
        p.workspace_bytes
        - plan(MODEL, gpu(), Policy(gpu_offload=True, per_sequence_kv=None, speed=speed, lanes=False)).workspace_bytes
    )
    assert more > 0  # three more contexts' compute buffers are counted


def test_lane_figures_survive_the_cache_and_an_older_calibration_is_measured_again(tmp_path):
    c = cal(H200_LANES)
    again = Calibration.from_json(json.loads(json.dumps(c.to_json())))  # as cached: keys become strings
    assert again.lanes_s == H200_LANES
    old = c.to_json() | {"version": calibration.VERSION - 1}
    with pytest.raises(ValueError):
        Calibration.from_json(old)


PROMPTS = ["Once upon a time", "List the days of the week.", "What is 2 + 2?", "Name three colors."]


def _engine(tmp_path, lanes: int):
    from conftest import make_config

    from edge_llm import appliance
    from edge_llm.telemetry.host import HostSource

    cfg = make_config(
        **{
            "daemon.state_dir": str(tmp_path),
            "model.kv_layout": "per_slot",
            "limits.max_batch_size": 4,
            "limits.prefix_cache_slots": 4,
            "limits.kv_cache_tokens": 8 * 512,
            "limits.max_seq_len": 512,
        }
    )
    real_plan = planner.plan
    planner.plan = lambda *a: replace(real_plan(*a), lanes=lanes, lane_size=2 if lanes > 1 else 0)
    try:
        return appliance.build_engine(cfg, HostSource().read())
    finally:
        planner.plan = real_plan


def _record_slots(engine) -> dict[str, int]:
    """The slot each request the engine admits from now on is given, by request id."""
    slots = {}
    allocate = engine.scheduler.kv.allocate

    def record(req, ops):
        allocate(req, ops)
        slots[req.request_id] = req.seq_id

    engine.scheduler.kv.allocate = record
    return slots


def _generate_together(engine, backend, prompts, max_tokens: int | list[int] = 40):
    """The prompts admitted in one step (admission held while they are submitted), so each gets
    its own slot: one that ended at its first token before another was submitted would have its
    cached slot taken by that one, the lowest not running (kv_cache._streams_slot; a CI run saw
    "What is 2 + 2?" end at once and its prefix gone for the second turn)."""
    limits = max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(prompts)
    reqs = [
        engine.make_request(backend.tokenize(t, True), SamplingParams(temperature=0), n)[0]
        for t, n in zip(prompts, limits, strict=True)
    ]
    engine.set_admission_paused(True)
    for r in reqs:
        engine.submit(r)
    engine.set_admission_paused(False)
    threads = [threading.Thread(target=lambda r=r: list(engine.stream(r))) for r in reqs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return reqs


def test_sequences_in_two_lanes_get_the_models_greedy_tokens(tmp_path, monkeypatch):
    """Every output token is the argmax at its position when the whole text is scored in one pass,
    within this device's rounding (the same prompts in one context, scored the same way: a GPU's
    batched kernels differ from a one-pass scoring by up to ~0.8 logits at a near tie). Logits read
    from another lane's rows, or a sequence's KV in the wrong context, give far larger gaps."""
    backend, p, engine = _engine(tmp_path, lanes=1)
    try:
        plain = _generate_together(engine, backend, PROMPTS)
        rounding = max(max(_greedy_gaps(backend, r.all_tokens, r.num_prompt_tokens)) for r in plain)
    finally:
        engine.stop()
        backend.close()
    from edge_llm.engine.backends.llamacpp import LlamaCppBackend

    warmed = []
    real_warm = LlamaCppBackend.warm_lanes
    monkeypatch.setattr(LlamaCppBackend, "warm_lanes", lambda self, t: warmed.append(len(t)) or real_warm(self, t))
    backend, p, engine = _engine(tmp_path, lanes=2)
    try:
        assert (p.lanes, p.num_seqs, len(backend.contexts)) == (2, 8, 2), p
        assert warmed and engine.call(backend.seq_lengths) == {}  # warm-up ran in lane 1 too and left no KV
        slots = _record_slots(engine)
        reqs = _generate_together(engine, backend, PROMPTS)
        assert {Lanes(2, 2).lane(slots[r.request_id]) for r in reqs} == {0, 1}, slots
        # each finished sequence's KV stays (a cached prefix) in its own lane's context, at its local id
        lengths = engine.call(backend.seq_lengths)
        assert lengths == {slots[r.request_id]: r.num_tokens - 1 for r in reqs}, (slots, lengths)
        # a second turn adopts its first turn's slot in place, in that lane
        text2 = reqs[2].all_tokens + backend.tokenize(" And 3 + 3?", False)
        turn2 = engine.make_request(text2, SamplingParams(temperature=0), 24)[0]
        list(engine.generate(turn2))
        assert turn2.num_reused > 0 and slots[turn2.request_id] == slots[reqs[2].request_id]
        assert all(r.output_tokens for r in [*reqs, turn2])
        assert_greedy(backend, [*reqs, turn2], rounding, wrong_in=reqs[1], wrong_at=-5)
    finally:
        engine.stop()
        backend.close()


def test_decodes_with_a_gap_between_their_slots_run_with_a_filler_that_leaves_nothing(tmp_path):
    """With a stream per slot llama.cpp puts only consecutive sequence ids in one ubatch, so a GPU
    backend fills a gap between decodes with a row of its own (LlamaCppBackend._fillers), here
    made to on the CPU too: the prompt in slot 1 ends after 3 tokens and its prefix stays cached in slot
    1 while slots 0, 2 and 3 decode on. Every token is still the model's greedy one, the fillers
    left no cell in slot 1 (its cached length is its request's), and a second turn that adopts
    that prefix in place continues it correctly. Without removal slot 1 would hold a filler cell
    per step (and the length check fails); a filler's logits read as a token would break greedy."""
    backend, p, engine = _engine(tmp_path, lanes=1)
    try:
        assert backend.fill_gaps == backend.gpu_offload  # on a CPU rows cost about what a pass costs
        backend.fill_gaps = False
        plain = _generate_together(engine, backend, PROMPTS)
        rounding = max(max(_greedy_gaps(backend, r.all_tokens, r.num_prompt_tokens)) for r in plain)
        engine.call(engine.clear_prefix_cache)
        backend.fill_gaps = True
        slots = _record_slots(engine)
        # admitted shortest prompt first: the fourth prompt takes slot 1
        reqs = _generate_together(engine, backend, PROMPTS, max_tokens=[40, 40, 40, 3])
        assert [slots[r.request_id] for r in reqs] == [0, 2, 3, 1] and len(reqs[3].output_tokens) == 3
        assert backend.num_filled_steps >= 5, backend.num_filled_steps  # slots 0 and 2-3 ran on, slot 1 idle (12 here)
        lengths = engine.call(backend.seq_lengths)
        assert lengths == {slots[r.request_id]: r.num_tokens - 1 for r in reqs}, lengths
        text2 = reqs[3].all_tokens + backend.tokenize(" And two more?", False)
        turn2 = engine.make_request(text2, SamplingParams(temperature=0), 24)[0]
        list(engine.generate(turn2))
        assert turn2.num_reused > 0 and slots[turn2.request_id] == 1
        assert_greedy(backend, [*reqs, turn2], rounding, wrong_in=reqs[0], wrong_at=-5)
    finally:
        engine.stop()
        backend.close()
