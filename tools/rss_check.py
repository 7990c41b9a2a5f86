"""Predicted resident memory of the daemon vs measured RSS, for a few plans.
Each plan runs in a fresh process: baseline RSS (Python, libraries) + the plan's prediction
(weights + KV cache + workspace) against RSS after a load that fills the KV cache.
    .venv/bin/python tools/rss_check.py [--kv 4096 16384 32768]"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading

import psutil


def measure(kv_tokens: int) -> dict:
    from edge_llm import appliance
    from edge_llm import config as config_mod
    from edge_llm.engine.request import SamplingParams
    from edge_llm.telemetry.host import HostSource

    proc = psutil.Process()
    baseline = proc.memory_info().rss
    cfg = config_mod.load(overrides=[("limits.kv_cache_tokens", kv_tokens), ("limits.max_batch_size", 8)])
    backend, plan, engine = appliance.build_engine(cfg, HostSource().read())
    text = " ".join(f"Line {i}: the pump ran at {i % 90} percent." for i in range(400))
    tokens = backend.tokenize(text)
    per_req = min(plan.max_input_len - 64, max(64, plan.kv_cache_tokens // plan.max_batch_size - 64))

    def one(i):
        req, _ = engine.make_request(tokens[: per_req - i], SamplingParams(temperature=0.0), 64)
        for _ in engine.generate(req):
            pass

    threads = [threading.Thread(target=one, args=(i,)) for i in range(plan.max_batch_size)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    rss = proc.memory_info().rss
    engine.stop()
    predicted = baseline + plan.predicted_resident_bytes
    return {
        "kv_cache_tokens": plan.kv_cache_tokens,
        "baseline_mib": baseline >> 20,
        "weights_mib": plan.weights_bytes >> 20,
        "kv_mib": plan.kv_cache_bytes >> 20,
        "workspace_mib": plan.workspace_bytes >> 20,
        "predicted_mib": predicted >> 20,
        "rss_mib": rss >> 20,
        "peak_reserved": engine.scheduler.kv.peak_reserved,
        "error_pct": 100 * (predicted - rss) / rss,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kv", type=int, nargs="+", default=[4096, 16384, 32768])
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    for kv in args.kv:
        out = subprocess.run([sys.executable, __file__, "--one", str(kv)], capture_output=True, text=True, check=True)
        print(json.loads(out.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    main()
