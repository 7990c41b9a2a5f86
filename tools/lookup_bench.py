"""Prompt lookup decoding in process: the same greedy requests with limits.lookup_draft_tokens 0
and N, each in an engine of its own (calibrated as the daemon is); tokens/s per prompt, whether
the texts agree, the drafter's counters and what drafted steps of each size took against
calibration's figure for as many tokens.

    .venv/bin/python tools/lookup_bench.py [--streams 1] [--tokens 256] [--draft 8] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_llm import appliance, config  # noqa: E402
from edge_llm.engine.request import SamplingParams  # noqa: E402
from edge_llm.telemetry.host import HostSource  # noqa: E402

PROMPTS = {
    "story": "Once upon a time, in a small village by the sea, there lived",
    "code": "Write a Python function that checks whether a number is prime.",
    "summary": "Summarize: The Jetson AGX Orin is a module for robots. It has a GPU with 2048 cores, "
    "64 GB of memory, and runs Linux. The Jetson AGX Orin is made by NVIDIA.",
}


def run(draft: int, streams: int, tokens: int, sets: list[tuple[str, str]]) -> dict[str, tuple[str, float]]:
    overrides = [
        ("limits.max_batch_size", max(streams, 4)),
        ("limits.max_output_len", tokens),
        ("limits.lookup_draft_tokens", draft),
        *sets,
    ]
    backend, plan, engine = appliance.build_engine(config.load(overrides=overrides), HostSource().read())
    results = {}
    try:
        for name, text in PROMPTS.items():
            prompt, reqs = engine.backend.tokenize(text, True), [None] * streams

            def one(i, prompt=prompt, reqs=reqs):
                reqs[i] = engine.make_request(prompt, SamplingParams(temperature=0.0), tokens)[0]
                list(engine.generate(reqs[i]))

            threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rate = sum(len(r.output_tokens) for r in reqs) / (time.monotonic() - t0)
            results[name] = (reqs[0].text, rate)
            print(f"lookup {draft}, {streams} streams, {name}: {rate:.1f} tok/s", flush=True)
        drafter = engine.scheduler.drafter
        if drafter is not None:
            print({k: v for k, v in engine.stats().items() if k.startswith("draft")}, plan.kv_layout)
            print("drafted steps, ms by tokens:", {n: round(1000 * s, 1) for n, s in sorted(drafter.measured.items())})
            print(
                "calibration's figure, ms:   ", {n: round(1000 * drafter.costs.seconds(n), 1) for n in drafter.measured}
            )
    finally:
        engine.stop()
        backend.close()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--draft", type=int, default=8, help="limits.lookup_draft_tokens of the second engine")
    ap.add_argument("--set", action="append", default=[], metavar="K=V", help="a config override for both")
    ap.add_argument("--rounds", type=int, default=2, help="off/on pairs, the order alternating (the second ran faster)")
    args = ap.parse_args()
    sets = [tuple(s.split("=", 1)) for s in args.set]
    for k in range(args.rounds):
        order = (0, args.draft) if k % 2 == 0 else (args.draft, 0)
        res = {draft: run(draft, args.streams, args.tokens, sets) for draft in order}
        off, on = res[0], res[args.draft]
        for name in PROMPTS:
            same = "same text" if off[name][0] == on[name][0] else "texts differ"
            print(
                f"round {k + 1} ({'off first' if order[0] == 0 else 'on first'}), {name}: "
                f"{on[name][1] / off[name][1]:.2f}x, {same}"
            )


if __name__ == "__main__":
    main()
