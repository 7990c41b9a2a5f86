"""The plan's speed choices follow measured step costs (no model: the costs are scripted, as a
device would report them), and a cached calibration is redone when what it was measured on changes."""

import json

import pytest

from edge_llm import calibration, profiles
from edge_llm.calibration import Calibration, choose, choose_batch, choose_chunk, choose_layout, load_or_measure
from edge_llm.engine.share import BackgroundShare
from edge_llm.planner import GiB, Policy, plan
from edge_llm.telemetry.snapshot import Snapshot

KEY = {
    "model": "m.gguf",
    "model_bytes": 1,
    "model_mtime_ns": 1,
    "build": "b",
    "threads": 2,
    "cpu": "c",
    "cpus": 2,
    "gpu": None,
    "power_mode": None,
}


def cal(layout=(10.0, 10.0), prefill=None, decode=None, can_abort=True) -> Calibration:
    return Calibration(
        KEY,
        prefill or {64: 0.1, 128: 0.15, 256: 0.3},
        decode or {1: 0.01, 2: 0.011, 4: 0.013},
        {"per_slot": layout[0] / 1000, "unified": layout[1] / 1000},
        4,
        256,
        can_abort,
        1.0,
    )


def roomy() -> Snapshot:
    return Snapshot(
        source="test",
        ram_total_bytes=64 * GiB,
        ram_available_bytes=60 * GiB,
        ram_used_bytes=0,
        swap_total_bytes=0,
        swap_used_bytes=0,
    )


def test_the_cheaper_layout_wins():
    assert choose_layout({"per_slot": 0.010, "unified": 0.020}, 4, 256)[0] is True
    assert choose_layout({"per_slot": 0.030, "unified": 0.020}, 4, 256)[0] is False
    model = profiles.MODELS[next(iter(profiles.MODELS))]
    slow_streams = plan(model, roomy(), Policy(per_sequence_kv=None, speed=choose(cal(layout=(30, 10)), 0.15)))
    fast_streams = plan(model, roomy(), Policy(per_sequence_kv=None, speed=choose(cal(layout=(10, 30)), 0.15)))
    assert (slow_streams.kv_layout, fast_streams.kv_layout) == ("unified", "per_slot")
    assert "calibrated" in slow_streams.reasons["kv_layout"] and "calibrated" in fast_streams.reasons["kv_layout"]


def test_one_pool_only_where_it_is_faster_at_both_decode_and_prefill_beside_held_sequences():
    """Session 19: one pool won a decode step at 4 x 128 tokens by noise, and a kiosk summary job
    then took 1.3-1.5x as long (a prompt's tokens attend over every held sequence's cells there)."""
    from dataclasses import replace

    decode_pool_faster = {"per_slot": 0.030, "unified": 0.020}
    use, why = choose_layout(decode_pool_faster, 4, 1024, {"per_slot": 0.39, "unified": 0.46}, 128)
    assert use is True and "128-token prefill step beside them 390 ms against 460 ms" in why
    assert choose_layout(decode_pool_faster, 4, 1024, {"per_slot": 0.46, "unified": 0.39}, 128)[0] is False
    assert choose_layout(decode_pool_faster, 4, 1024, {"per_slot": 0.40, "unified": 0.39}, 128)[0] is True  # within 5%
    model = profiles.MODELS[next(iter(profiles.MODELS))]
    measured = replace(cal(layout=(30, 10)), layout_prefill_s={"per_slot": 0.39, "unified": 0.46}, layout_chunk=128)
    chosen = plan(model, roomy(), Policy(per_sequence_kv=None, speed=choose(measured, 0.15)))
    assert chosen.kv_layout == "per_slot" and "prefill step beside them" in chosen.reasons["kv_layout"]


def test_chunk_is_the_knee_of_the_cost_per_token_and_bounded_where_steps_cannot_stop():
    cpu = {64: 0.20, 128: 0.30, 256: 0.56, 512: 1.2}  # per token: 3.1, 2.3, 2.2, 2.3 ms
    assert choose_chunk(cpu, 0.15, can_abort=True)[0] == 128  # abortable: the knee, though its step is long
    gpu = {64: 0.004, 128: 0.005, 256: 0.006, 512: 0.008, 1024: 0.013, 2048: 0.024}
    # steps cannot stop: the largest efficient one (fewer steps: each costs as much again outside the chunk)
    assert choose_chunk(gpu, 0.15, can_abort=False)[0] == 2048
    assert choose_chunk(gpu, 0.010, can_abort=False)[0] == 512  # the largest step that fits the stall bound
    h200 = {64: 0.010, 128: 0.009, 256: 0.010, 512: 0.014, 1024: 0.020, 2048: 0.039}  # measured 2026-12-03
    assert choose_chunk(h200, 0.15, can_abort=False)[0] == 2048
    assert choose_chunk({64: 0.004, 128: 0.005, 256: 0.02}, 0.15, can_abort=False)[0] == 128  # 256 costs 2x per token


def test_batch_is_the_smallest_near_the_best_throughput():
    cpu = {1: 0.012, 2: 0.015, 4: 0.024, 8: 0.045, 16: 0.090}  # 83, 133, 167, 178, 178 tok/s
    assert choose_batch(cpu, 0.15)[0] == 4
    # seen on an H200: throughput paused at 16 (3446 tok/s against 3253 at 8), then climbed again
    h200 = {1: 1 / 517, 2: 2 / 912, 4: 4 / 1805, 8: 8 / 3253, 16: 16 / 3446, 32: 32 / 5731, 64: 64 / 8323}
    assert choose_batch(h200, 0.15)[0] == 64
    assert choose_batch(h200, 0.005)[0] == 8  # steps <= 5 ms: up to 16, and 8 is within 10% of it


def test_user_caps_still_win_over_calibrated_choices():
    model = profiles.MODELS[next(iter(profiles.MODELS))]
    p = plan(model, roomy(), Policy(caps={"max_batch_size": 3, "prefill_chunk_tokens": 32}, speed=choose(cal(), 0.15)))
    assert (p.max_batch_size, p.prefill_chunk_tokens) == (3, 32) and p.reasons["max_batch_size"] == "user cap 3"
    assert p.background_chunk == 32  # a capped chunk is every step's size, background's too


def test_background_steps_a_visitor_stops_take_bigger_chunks_and_the_batch_holds_them():
    """2 CPU cores, 2,048 tokens into a prompt: 7.2 ms a token in 64-token chunks, 5.75 in 512
    (an empty context, what first-start calibration times, shows 3.9-4.1 for all)."""
    model = profiles.MODELS[next(iter(profiles.MODELS))]
    cpu = plan(model, roomy(), Policy(speed=choose(cal(), 0.15)))
    assert cpu.prefill_chunk_tokens == 128  # the knee of the costs per token (choose_chunk)
    assert cpu.background_chunk_tokens == 512 and cpu.max_batch_tokens == 512 + cpu.max_batch_size
    assert "stops a background step" in cpu.reasons["background_chunk_tokens"]
    small = plan(model, roomy(), Policy(speed=choose(cal(prefill={32: 0.05, 64: 0.1}), 0.15)))
    assert (small.prefill_chunk_tokens, small.background_chunk_tokens) == (32, 128)  # 4x the chunk
    # while visitors come, twice the chunk: a visitor's arrival stops it, and a smaller step loses less
    assert (cpu.background_visitor_chunk, small.background_visitor_chunk) == (256, 64)
    assert "256 while a visitor is expected back" in cpu.reasons["background_chunk_tokens"]
    assert cpu.to_dict()["background_visitor_chunk_tokens"] == 256
    gpu = plan(model, roomy(), Policy(speed=choose(cal(can_abort=False), 0.15)))
    assert gpu.background_chunk == gpu.prefill_chunk_tokens  # nothing stops a GPU step: the chunk bounds it
    assert gpu.background_visitor_chunk == gpu.prefill_chunk_tokens
    assert "while a visitor" not in gpu.reasons["background_chunk_tokens"]
    assert plan(model, roomy(), Policy()).background_chunk == 256  # no calibration: the default chunk


def test_background_waits_beside_a_visitor_where_a_step_of_two_costs_over_one_and_a_half():
    """The plan's chat_slowdown: where a step of 2 sequences costs r steps of one, a background
    sequence beside a visitor costs it r - 1 and saves the job 2 - r: rides along only for r < 1.5."""
    model = profiles.MODELS[next(iter(profiles.MODELS))]
    cpu = {1: 1 / 95, 2: 2 / 107, 4: 4 / 133}  # 2 AMD cores (session 21's calibration): r = 1.78
    h100 = {1: 1 / 899, 2: 2 / 1398, 4: 4 / 2590}  # an H100 (session 20's): r = 1.29
    assert calibration.choose_chat_slowdown(cpu)[0] == 1.0
    assert calibration.choose_chat_slowdown(h100)[0] == 1.5
    assert "took 1.78x one" in calibration.choose_chat_slowdown(cpu)[1]
    assert calibration.choose_chat_slowdown({1: 0.010, 2: 0.0149})[0] == 1.5  # 1.49: just under
    assert calibration.choose_chat_slowdown({1: 0.010, 2: 0.0150})[0] == 1.0
    assert calibration.choose_chat_slowdown({4: 0.01})[0] == 1.5  # not measured: the default
    held = plan(model, roomy(), Policy(speed=choose(cal(decode=cpu), 0.15)))
    assert held.chat_slowdown == 1.0 and "waits while a visitor decodes" in held.reasons["chat_slowdown"]
    b = BackgroundShare
    waited = f"after {b.MAX_HOLD_S:g} s beside visitors with no {b.FREE_S:g} s pause it rides along at "
    assert waited + f"{b.WAITED_SLOWDOWN:g}" in held.reasons["chat_slowdown"]  # as share.py does
    rides = plan(model, roomy(), Policy(speed=choose(cal(decode=h100, can_abort=False), 0.15)))
    assert rides.chat_slowdown == 1.5 and "rides along" in rides.reasons["chat_slowdown"]
    # the user's setting wins, 0 included; no calibration: 1.5
    for setting in (0.0, 1.0, 2.5):
        mine = plan(model, roomy(), Policy(speed=choose(cal(decode=cpu), 0.15), chat_slowdown=setting))
        assert mine.chat_slowdown == setting and mine.reasons["chat_slowdown"].startswith("user setting")
    default = plan(model, roomy(), Policy())
    assert default.chat_slowdown == 1.5 and default.reasons["chat_slowdown"].startswith("policy default")
    assert held.to_dict()["chat_slowdown"] == 1.0


class ScriptedDevice:
    """Step costs as a device would report them; counts how often it was measured."""

    gpu_offload = False
    n_threads = 2

    def __init__(self):
        self.calls = 0

    def time_prefill(self, chunk):
        self.calls += 1
        return 0.001 * chunk

    def time_decode(self, batch, ctx_len, unified):
        self.calls += 1
        return 0.01 * batch

    def time_layouts(self, batch, ctx_len, chunk):
        self.calls += 1
        self.layouts_at = (batch, ctx_len, chunk)
        return {"unified": (0.01 * batch, 0.002 * chunk), "per_slot": (0.01 * batch, 0.001 * chunk)}


def test_cached_calibration_is_reused_and_redone_when_the_device_changes(tmp_path):
    path = tmp_path / "calibration.json"
    dev = ScriptedDevice()
    first = load_or_measure(path, dev, KEY, 8, 0.15, contended=idle)
    n = dev.calls
    assert n > 0 and json.loads(path.read_text())["key"] == KEY
    assert load_or_measure(path, dev, KEY, 8, 0.15, contended=idle) == first and dev.calls == n  # cached
    for changed in ({"power_mode": "15W"}, {"build": "b2"}, {"model_mtime_ns": 2}, {"gpu": "Orin"}):
        again = load_or_measure(path, dev, {**KEY, **changed}, 8, 0.15, contended=idle)
        assert dev.calls > n and again.key == {**KEY, **changed}
        n = dev.calls


def idle(cpu_share: float) -> bool:
    return False


def test_a_calibration_measured_on_busy_cpus_is_used_once_and_measured_again(tmp_path):
    path = tmp_path / "calibration.json"
    dev = ScriptedDevice()
    busy = load_or_measure(path, dev, KEY, 8, 0.15, contended=lambda share: True)
    n = dev.calls
    assert busy.contended and Calibration.from_json(json.loads(path.read_text())).contended
    quiet = load_or_measure(path, dev, KEY, 8, 0.15, contended=idle)
    assert dev.calls > n and not quiet.contended
    assert load_or_measure(path, dev, KEY, 8, 0.15, contended=idle) == quiet


@pytest.mark.parametrize("content", ["not json", json.dumps({"version": 999}), json.dumps({"version": 1})])
def test_an_unreadable_or_old_calibration_is_measured_again(tmp_path, content):
    path = tmp_path / "calibration.json"
    path.write_text(content)
    dev = ScriptedDevice()
    load_or_measure(path, dev, KEY, 4, 0.15, contended=idle)
    assert dev.calls > 0 and Calibration.from_json(json.loads(path.read_text())).key == KEY


def test_measuring_stops_a_series_once_larger_candidates_cannot_be_chosen():
    dev = ScriptedDevice()
    c = calibration.measure(dev, KEY, 64, 0.15, contended=idle)
    # prefill cost per token is flat (1 ms): 128 is no better than 64 within 10%, so no larger one
    assert sorted(c.prefill_s) == [64, 128]
    assert max(c.decode_s) == 64 or max(c.decode_s.values()) > 0.6  # stops once a step takes 4x the bound
    # the layouts at held sequences as long as both fills take <= 6 s at 1,000 tokens/s, at most 2,048
    assert dev.layouts_at == (4, 2048, 128) and c.layout_ctx == 2048 and c.layout_chunk == 128
    assert c.layout_prefill_s == {"unified": 0.256, "per_slot": 0.128}
    again = Calibration.from_json(json.loads(json.dumps(c.to_json())))
    assert again == c and choose(again, 0.15).per_slot is True


def test_figures_from_busy_cpus_are_reported_but_not_followed():
    from dataclasses import replace

    from edge_llm import config
    from edge_llm.appliance import policy_from_config

    cfg = config.load(env={})
    busy = replace(cal(layout=(30, 10)), contended=True)
    assert policy_from_config(cfg, cal=busy).speed is None
    assert policy_from_config(cfg, cal=busy).calibration["contended"] is True
    assert policy_from_config(cfg, cal=replace(busy, contended=False)).speed.per_slot is False


def test_a_calibration_that_fails_leaves_the_defaults_and_is_measured_again(tmp_path, caplog):
    """A timing context llama.cpp cannot make (memory on a small device) must not stop the
    daemon: it serves on the default speed choices and measures again at the next start."""
    from edge_llm import appliance, config
    from edge_llm.engine.backends.base import BackendError

    class NoRoom(ScriptedDevice):
        def build_id(self):
            return "b"

        def time_prefill(self, chunk):
            raise BackendError(f"llama.cpp could not create a context of {chunk + 256} tokens for 1 sequences")

    path = tmp_path / "calibration.json"
    cfg = config.load(env={}, overrides=[("planner.calibration_file", str(path))])
    with caplog.at_level("WARNING"):
        assert appliance.calibrate(cfg, NoRoom(), roomy()) is None
    assert "calibration failed" in caplog.text and not path.exists()

    class Roomy(NoRoom):
        time_prefill = ScriptedDevice.time_prefill

    assert appliance.calibrate(cfg, Roomy(), roomy()) is not None  # the next start measures it
    assert path.exists()


def test_layouts_that_could_not_be_timed_leave_a_stream_per_slot_and_the_other_figures(tmp_path, caplog):
    """time_layouts gives {} where llama.cpp could not make its two contexts; a state directory
    that cannot be written loses the cache, not the start."""

    class NoLayouts(ScriptedDevice):
        def time_layouts(self, batch, ctx_len, chunk):
            self.calls += 1
            return {}

    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the state directory should be: mkdir fails
    with caplog.at_level("WARNING"):
        c = load_or_measure(blocked / "calibration.json", NoLayouts(), KEY, 8, 0.15, contended=idle)
    assert "calibration not saved" in caplog.text
    assert c.layout_s == {} and c.prefill_s and c.decode_s
    chosen = choose(c, 0.15)
    assert chosen.per_slot is True and "could not be timed" in chosen.reasons["kv_layout"]
    assert Calibration.from_json(json.loads(json.dumps(c.to_json()))) == c
