"""The benchmark tools' own arithmetic (tools/mixed_bench.py): how rounds are paired and pooled;
tools/kiosk_bench.py run end to end on a tiny job. The benchmarks' numbers are taken by hand,
never judged in tests."""

import json
import math

import pytest

from tools import kiosk_bench
from tools.mixed_bench import pooled, round_ratios


def result(round_: int, target: str, wall: float) -> dict:
    return {"round": round_, "target": target, "background_wall_s": wall}


def test_rounds_pair_by_number_whichever_target_ran_first_and_an_incomplete_round_is_skipped():
    results = [
        result(1, "edge-llm", 80.0),
        result(1, "llama-server", 100.0),
        result(2, "llama-server", 50.0),
        result(2, "edge-llm (model.kv_layout=unified)", 60.0),
        result(3, "edge-llm", 70.0),
    ]  # round 3 was cut short: llama-server never ran
    assert round_ratios(results) == [0.8, 1.2]


def test_pooled_ratio_is_the_geometric_mean_inside_its_interval_and_reads_the_same_twice():
    ratios = [0.8, 1.25, 0.9, 1.1, 1.0]
    p = pooled(ratios)
    assert p["geomean"] == pytest.approx(math.exp(sum(map(math.log, ratios)) / 5))
    assert p["ci95"][0] < p["geomean"] < p["ci95"][1]
    assert p["rounds"] == 5 and p["ours_faster"] == 2 and p["median"] == 1.0
    assert pooled(ratios) == p
    assert pooled([1.1] * 4)["ci95"] == pytest.approx((1.1, 1.1))
    with pytest.raises(ValueError, match="no complete rounds"):
        pooled([])


def kiosk_round(ttfts: list[float | None], rates: list[float | None], idle: float, alone: float, together: float):
    chats = [{"ttft_s": t, "decode_tok_s": r} for t, r in zip(ttfts, rates, strict=True)]
    return kiosk_bench.round_result({"decode_tok_s": idle}, {"wall_s": alone}, {"wall_s": together, "chats": chats})


def test_kiosk_goals_are_judged_on_the_worst_round_and_a_round_without_chats_meets_none():
    good = kiosk_round([0.2, 0.4], [60.0, 50.0], 80.0, 100.0, 110.0)
    slow = kiosk_round([0.9, 0.3], [30.0, None], 80.0, 100.0, 125.0)
    assert (good["ttft_worst_s"], good["decode_ratio"], good["wall_ratio"]) == (0.4, 0.625, 1.1)
    s = kiosk_bench.judge([good, slow])
    assert (s["ttft_worst_s"], s["decode_ratio_min"], s["wall_ratio_max"]) == (0.9, 0.375, 1.25)
    assert s["met"] == {"ttft_worst_s": True, "decode_ratio_min": False, "wall_ratio_max": False}
    assert kiosk_bench.judge([good])["met"] == dict.fromkeys(kiosk_bench.GOALS, True)
    failed = kiosk_round([None], [None], 80.0, 100.0, 100.0)  # the one question got no answer
    assert failed["chat_errors"] == 1 and not any(kiosk_bench.judge([good, failed])["met"].values())


def test_kiosk_ratio_is_split_into_the_visitors_own_steps_and_the_rest():
    """1.3 = 1 + 0.2 (20 s of steps with only the visitor's work, over the job's 100 s alone) + 0.1;
    a daemon that reports no step times gives neither."""
    chats = [{"ttft_s": 0.2, "decode_tok_s": 60.0}]
    engine = {"step_time_s": {"visitor": 20.0, "background": 95.0, "stopped": 3.0}}
    r = kiosk_bench.round_result(
        {"decode_tok_s": 80.0}, {"wall_s": 100.0}, {"wall_s": 130.0, "chats": chats, "engine": engine}
    )
    assert (r["wall_ratio"], r["visitor_share"], r["rest_share"]) == (1.3, 0.2, 0.1)
    assert (kiosk_round([0.2], [60.0], 80.0, 100.0, 130.0)["visitor_share"]) is None
    s = kiosk_bench.judge([r, kiosk_round([0.2], [60.0], 80.0, 100.0, 130.0)])
    assert (s["visitor_share_median"], s["rest_share_median"]) == (0.2, 0.1)


def test_kiosk_bench_runs_a_whole_job_with_the_visitor_against_the_daemon(server, tmp_path):
    """The tool end to end on a tiny job (2 parts of the session daemon's 160-token chunks, sized by
    the tool's trial uploads) and 4-token questions: every number is there and plausible (on 2 idle
    cores, seconds; minutes on a machine shared by several test runs)."""
    pytest.importorskip("openai")
    out = tmp_path / "kiosk.json"
    kiosk_bench.main(["--url", server.url, "--parts", "2", "--tokens", "4", "--idle-chats", "1", "--out", str(out)])
    r = json.loads(out.read_text())
    (rnd,) = r["rounds"]
    assert r["settings"]["parts_fitted"] in (2, 3) and rnd["alone"]["parts"] == rnd["together"]["parts"] >= 2
    assert rnd["alone"]["levels"] >= 2 and rnd["alone"]["wall_s"] > 0 and rnd["together"]["wall_s"] > 0
    assert len(rnd["idle"]["chats"]) == 1 and rnd["idle"]["decode_tok_s"] > 0
    chats = rnd["together"]["chats"]
    assert chats and rnd["chat_errors"] == 0 and all(0 < c["ttft_s"] < 120 and c["tokens"] >= 1 for c in chats)
    assert [c["t_s"] for c in chats] == sorted(c["t_s"] for c in chats) and chats[0]["t_s"] >= 1
    assert rnd["decode_ratio"] == pytest.approx(rnd["decode_slowest_tok_s"] / rnd["idle"]["decode_tok_s"], abs=1e-3)
    assert rnd["wall_ratio"] == pytest.approx(rnd["together"]["wall_s"] / rnd["alone"]["wall_s"], abs=1e-3)
    assert rnd["wall_ratio"] == pytest.approx(1 + rnd["visitor_share"] + rnd["rest_share"], abs=2e-3)
    assert (
        0
        < rnd["visitor_share"]
        == pytest.approx(rnd["together"]["engine"]["step_time_s"]["visitor"] / rnd["alone"]["wall_s"], abs=1e-3)
    )
    assert r["summary"]["rounds"] == 1 and set(r["summary"]["met"]) == set(kiosk_bench.GOALS)
    # the engine's counters over each job (alone, then with the visitor): its steps' time, within
    # the time between the two readings
    for job in (rnd["alone"], rnd["together"]):
        spent = sum(job["engine"]["step_time_s"].values())
        assert 0 < spent <= job["engine_window_s"] + 0.01 and 0 < job["engine"]["steps"] < server.engine.num_steps
    assert rnd["alone"]["engine"]["step_time_s"]["visitor"] == 0  # nothing else ran then
    assert server.engine.num_running == 0 and not server.engine.num_waiting  # it cleaned up behind it
    jobs = json.loads(kiosk_bench.requests.get(server.url + "/api/summaries?limit=500", timeout=10).text)["data"]
    assert not [j for j in jobs if j["filename"] == "kiosk-bench.txt"]  # and deleted its jobs


def test_stall_probe_stops_its_daemon_mid_chat_and_reports_the_pace_after(tmp_path):
    """tools/stall_probe.py end to end, one short chat: its own daemon (a process it can stop),
    stopped 0.3 s once 12 tokens came, and running again after (the job is read at the end)."""
    pytest.importorskip("openai")
    from tools import stall_probe

    out = tmp_path / "stall.json"
    r = stall_probe.main(
        ["--trials", "1", "--parts", "2", "--tokens", "64", "--stop-at", "12", "--stop-s", "0.3", "--out", str(out)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(r))
    (t,) = r["trials"]
    assert t["tokens"] >= 1 and r["job_status_at_end"] in ("queued", "running", "done")
    if t["tokens"] > 12:  # the answer outlasted the stop: the stop is in its pace
        assert t["before_ms"] > 0 and t["after_50_ms"] > 0 and t["longest_gap_ms"] >= 300


@pytest.mark.parametrize(
    "argv", [["--trials", "0"], ["--stop-at", "5"], ["--tokens", "40", "--stop-at", "30"], ["--stop-s", "0"]]
)
def test_stall_probe_refuses_settings_it_cannot_measure_with(argv):
    from tools import stall_probe

    with pytest.raises(SystemExit) as e:
        stall_probe.main(argv)
    assert e.value.code == 2


@pytest.mark.parametrize("argv", [["--procs", "0"], ["--busy", "2", "1"], ["--rest", "-1", "1"]])
def test_busy_neighbour_refuses_bad_ranges(argv):
    from tools import busy_neighbour

    with pytest.raises(SystemExit) as e:
        busy_neighbour.main(argv)
    assert e.value.code == 2


def test_busy_neighbour_spins_for_its_bursts_and_stops(capsys):
    from tools import busy_neighbour

    busy_neighbour.main(["--procs", "1", "--busy", "0.05", "0.05", "--rest", "0.05", "0.05", "--seconds", "0.3"])
    words = capsys.readouterr().out.split()  # "3 bursts of 1 processes, 0.2 s busy"
    assert int(words[0]) >= 2 and words[3] == "1" and float(words[5]) >= 0.1
