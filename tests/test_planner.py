"""The memory planner: properties over made-up devices and models, and named profiles."""

from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from edge_llm import planner, profiles
from edge_llm.calibration import SpeedChoices
from edge_llm.planner import GiB, MiB, PlanError, Policy, plan
from edge_llm.profile import ModelProfile
from edge_llm.telemetry.snapshot import Snapshot

models = st.builds(
    ModelProfile,
    name=st.just("m"),
    n_layers=st.integers(4, 80),
    n_kv_heads=st.integers(1, 64),
    head_dim=st.sampled_from([64, 80, 128]),
    n_ctx_train=st.sampled_from([2048, 4096, 8192, 32768]),
    weights_bytes=st.integers(50 * MiB, 40 * GiB),
    n_embd=st.sampled_from([576, 2048, 4096]),
    n_vocab=st.sampled_from([32000, 49152, 128256]),
)
snapshots = st.builds(
    Snapshot,
    source=st.just("test"),
    ram_total_bytes=st.just(64 * GiB),
    ram_available_bytes=st.integers(1 * GiB, 64 * GiB),
    ram_used_bytes=st.just(0),
    swap_total_bytes=st.integers(0, 16 * GiB),
    swap_used_bytes=st.just(0),
    unified_memory=st.booleans(),
)
caps = st.fixed_dictionaries({}, optional={name: st.integers(1, 20000) for name in planner.LIMITS})
speeds = st.builds(  # calibration's choices (calibration.choose), the background chunk among them
    SpeedChoices,
    prefill_chunk_tokens=st.sampled_from([32, 64, 128, 256, 1024, 2048]),
    max_batch_size=st.integers(1, 64),
    per_slot=st.booleans(),
    reasons=st.just(
        {
            k: "measured"
            for k in ("prefill_chunk_tokens", "max_batch_size", "kv_layout", "background_chunk_tokens", "lanes")
        }
    ),
    background_chunk_tokens=st.sampled_from([0, 64, 256, 512]),
    lane_size=st.sampled_from([0, 4, 8, 16]),
)
policies = st.builds(
    Policy,
    reserve_bytes=st.integers(0, 4 * GiB),
    caps=caps,
    per_sequence_kv=st.sampled_from([True, False, None]),
    speed=st.one_of(st.none(), speeds),
)


def try_plan(m, s, p):
    try:
        return plan(m, s, p)
    except PlanError:
        return None


@settings(max_examples=300, deadline=None)
@given(models, snapshots, policies, st.integers(1, 32 * GiB))
def test_more_memory_never_lowers_a_limit(m, s, p, extra):
    small = try_plan(m, s, p)
    assume(small is not None)
    big = plan(m, replace(s, ram_available_bytes=s.ram_available_bytes + extra), p)
    for name in planner.LIMITS:
        assert getattr(big, name) >= getattr(small, name), name


@settings(max_examples=300, deadline=None)
@given(models, snapshots, policies, st.integers(16, 8192), st.integers(1, 8192))
def test_a_longer_max_seq_len_never_raises_the_batch(m, s, p, seq, more):
    a = try_plan(m, s, replace(p, caps={**p.caps, "max_seq_len": seq}))
    b = try_plan(m, s, replace(p, caps={**p.caps, "max_seq_len": seq + more}))
    assume(a is not None and b is not None)
    assert b.max_batch_size <= a.max_batch_size


@settings(max_examples=300, deadline=None)
@given(models, snapshots, policies)
def test_the_plan_never_exceeds_the_budget_and_caps_win(m, s, p):
    pl = try_plan(m, s, p)
    assume(pl is not None)
    assert pl.kv_cache_bytes <= pl.kv_budget_bytes
    assert pl.weights_bytes + pl.kv_cache_bytes + pl.workspace_bytes + pl.reserve_bytes <= s.ram_available_bytes
    for name, cap in p.caps.items():
        assert getattr(pl, name) <= cap, name
    assert pl.max_seq_len <= pl.kv_cache_tokens and pl.max_input_len < pl.max_seq_len
    assert pl.max_output_len < pl.max_seq_len and pl.prefill_chunk_tokens <= pl.max_input_len
    assert pl.max_seq_len <= m.n_ctx_train
    assert set(pl.reasons) == set(planner.LIMITS) | {"kv_layout", "background_chunk_tokens", "lanes", "chat_slowdown"}
    assert pl.prefill_chunk_tokens <= pl.background_visitor_chunk <= pl.background_chunk <= pl.max_input_len
    # lanes only with a stream per slot, each lane one block or more of the batch
    assert pl.lanes == 1 or (pl.kv_layout == "per_slot" and (pl.lanes - 1) * pl.lane_size < pl.max_batch_size)


@given(models, snapshots, policies, st.integers(0, 16 * GiB))
def test_swap_never_raises_the_kv_budget_beyond_ram(m, s, p, swap):
    pl = try_plan(m, replace(s, swap_total_bytes=swap), p)
    assume(pl is not None)
    assert pl.reserve_bytes >= p.reserve_bytes // 2  # swap may shrink the reserve by half at most
    assert pl.kv_budget_bytes <= s.ram_available_bytes - pl.weights_bytes - pl.workspace_bytes


def test_kv_bytes_per_token_formula():
    llama3 = profiles.MODELS["llama-3-8b-int4"]
    assert llama3.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2 == 131072


def test_named_profiles_what_fits_before_flashing():
    orin64, nano = profiles.DEVICES["agx-orin-64gb"], profiles.DEVICES["orin-nano-8gb"]
    p = Policy()
    big = plan(profiles.MODELS["llama-3-8b-int4"], orin64, p)
    assert big.memory == "unified RAM" and big.max_batch_size == p.default_max_batch_size
    assert "policy default" in big.reasons["max_batch_size"]
    with pytest.raises(PlanError, match="does not fit"):
        plan(profiles.MODELS["llama-3-8b-int4"], nano, p)
    tight = plan(profiles.MODELS["llama-2-7b-int4"], nano, p)
    assert "KV budget holds only" in tight.reasons["max_seq_len"] and tight.kv_cache_tokens == tight.max_seq_len
    assert tight.max_batch_size == p.default_max_batch_size  # short requests still share the KV
    assert plan(profiles.MODELS["smollm2-135m-q4_1"], nano, p).max_seq_len == 4096


def test_swap_recommendation_is_bounded():
    assert planner.recommend_swap(profiles.DEVICES["agx-orin-64gb"]) == 16 * GiB
    assert planner.recommend_swap(profiles.DEVICES["orin-nano-8gb"]) == 4 * GiB


# -- GPU memory (NVML-shaped readings) ------------------------------------------------------------


def h200(ram_gib=24, used_gib=1.0) -> Snapshot:
    return Snapshot(
        source="nvml+psutil",
        ram_total_bytes=ram_gib * GiB,
        ram_available_bytes=ram_gib * GiB - GiB,
        ram_used_bytes=GiB,
        gpu_name="NVIDIA H200",
        gpu_mem_total_bytes=143771 * MiB,
        gpu_mem_used_bytes=int(used_gib * GiB),
    )


def test_discrete_gpu_plans_from_gpu_memory_not_ram():
    model = profiles.MODELS["llama-3-8b-int4"]
    on_gpu = plan(model, h200(ram_gib=2), Policy(gpu_offload=True, default_max_batch_size=64))
    assert on_gpu.memory == "GPU NVIDIA H200" and "GPU NVIDIA H200" not in on_gpu.reasons["max_batch_size"]
    assert on_gpu.available_bytes == 143771 * MiB - GiB
    assert on_gpu.kv_budget_bytes > 100 * GiB  # 2 GiB of RAM would not hold one sequence
    with pytest.raises(PlanError):
        plan(model, h200(ram_gib=2), Policy(gpu_offload=False))
    busy = plan(model, h200(used_gib=132), Policy(gpu_offload=True))  # another program holds most of it
    assert busy.memory.startswith("GPU") and busy.kv_cache_tokens < on_gpu.kv_cache_tokens
    assert "GPU NVIDIA H200" in busy.reasons["max_seq_len"] or "GPU NVIDIA H200" in busy.reasons["kv_cache_tokens"]


def test_unified_memory_stays_ram_even_with_offload():
    orin = profiles.DEVICES["agx-orin-64gb"]
    assert plan(profiles.MODELS["llama-3-8b-int4"], orin, Policy(gpu_offload=True)).memory == "unified RAM"


@settings(max_examples=300, deadline=None)
@given(models, snapshots, policies)
def test_a_stream_per_slot_holds_max_seq_len_for_every_slot(m, s, p):
    pl = try_plan(m, s, replace(p, per_sequence_kv=True))
    assume(pl is not None)
    assert pl.kv_cache_tokens == pl.num_seqs * pl.max_seq_len
    assert pl.num_seqs == pl.max_batch_size + p.prefix_cache_slots


def test_stream_per_slot_plan_for_the_mixed_benchmark():
    model = profiles.MODELS["smollm2-135m-q4_1"]
    pl = plan(
        model,
        profiles.DEVICES["agx-orin-64gb"],
        Policy(per_sequence_kv=True, prefix_cache_slots=1, caps={"kv_cache_tokens": 20480}),
    )
    assert (pl.max_batch_size, pl.max_seq_len, pl.kv_cache_tokens) == (4, 4096, 20480)


def test_auto_layout_splits_the_cache_only_when_it_costs_no_concurrency():
    model = profiles.MODELS["smollm2-135m-q4_1"]
    roomy = plan(model, profiles.DEVICES["agx-orin-64gb"], Policy(per_sequence_kv=None))
    assert roomy.kv_layout == "per_slot" and roomy.max_batch_size == 8
    assert roomy.kv_cache_tokens == (8 + 4) * roomy.max_seq_len
    tight = plan(model, profiles.DEVICES["agx-orin-64gb"], Policy(per_sequence_kv=None, caps={"kv_cache_tokens": 3930}))
    assert tight.kv_layout == "unified" and tight.max_batch_size > 1
