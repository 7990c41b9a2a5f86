"""The benchmark tools' own arithmetic (tools/mixed_bench.py): how rounds are paired and pooled.
The benchmarks themselves are run by hand, never timed in tests."""

import math

import pytest

from tools.mixed_bench import pooled, round_ratios


def result(round_: int, target: str, wall: float) -> dict:
    return {"round": round_, "target": target, "background_wall_s": wall}


def test_rounds_pair_by_number_whichever_target_ran_first_and_an_incomplete_round_is_skipped():
    results = [result(1, "edge-llm", 80.0), result(1, "llama-server", 100.0),
               result(2, "llama-server", 50.0), result(2, "edge-llm (model.kv_layout=unified)", 60.0),
               result(3, "edge-llm", 70.0)]  # round 3 was cut short: llama-server never ran
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
