"""A stalled step beside a summary job: does the visitor's stream keep its pace after it?

On a busy machine a step of the engine is now and then preempted for a second or more (tests, a
build, a backup on the same cores). The visitor's share of each step is set from what its steps
cost alone (engine/share.py); one such step taken for the visitor's cost once let the background
take ~10x its share for dozens of steps (kiosk-clear-213, session 17). This starts a daemon,
gives it a summary job of --parts parts, and then --trials times streams a chat of --tokens
tokens (logprobs on, so each token is counted where a delta carries several) and stops the
daemon's process (SIGSTOP) for --stop-s seconds once --stop-at tokens have come. Reported per
trial: ms a token before the stop (tokens 5 to stop-at) and over the 50 and 100 after it.

    .venv/bin/python tools/stall_probe.py [--trials 6] [--parts 4] [--tokens 200] [--stop-at 30] [--stop-s 1]
                                          [--set SECTION.KEY=VALUE ...] [--out F]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kiosk_bench  # noqa: E402


def per_token_ms(stamps: list[float], start: int, count: int) -> float | None:
    end = min(len(stamps) - 1, start + count)
    return round((stamps[end] - stamps[start]) / (end - start) * 1000, 2) if end > start else None


def trial(kiosk: kiosk_bench.Kiosk, pid: int, k: int, args) -> dict:
    stamps: list[float] = []
    resumed: list[float] = []

    def stall() -> None:
        while len(stamps) < args.stop_at and not done.is_set():
            time.sleep(0.005)
        if done.is_set():
            return
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(args.stop_s)
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed.append(time.monotonic())

    done = threading.Event()
    thread = threading.Thread(target=stall, daemon=True)
    thread.start()
    try:
        for chunk in kiosk.client.chat.completions.create(
            model=kiosk.model,
            messages=[{"role": "user", "content": kiosk_bench.QUESTIONS[k % len(kiosk_bench.QUESTIONS)]}],
            max_tokens=args.tokens,
            stream=True,
            logprobs=True,
            **kiosk.sampling,
        ):
            if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
                now = time.monotonic()
                stamps.extend([now] * len(chunk.choices[0].logprobs.content))
    finally:
        done.set()
        thread.join()
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    record = {
        "tokens": len(stamps),
        "before_ms": per_token_ms(stamps, 5, args.stop_at - 6),
        "longest_gap_ms": round(max(gaps, default=0.0) * 1000, 1),
    }
    if resumed:
        first = next((i for i, t in enumerate(stamps) if t > resumed[0]), len(stamps))
        record |= {"after_50_ms": per_token_ms(stamps, first, 50), "after_100_ms": per_token_ms(stamps, first, 100)}
    engine = kiosk.get("/api/status").get("engine") or {}
    return record | {"visitor_step_ms": engine.get("visitor_step_ms")}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--parts", type=int, default=4, help="the summary job's parts")
    ap.add_argument("--tokens", type=int, default=200, help="tokens per chat (the answer may end sooner)")
    ap.add_argument("--stop-at", type=int, default=30, help="stop the daemon once this many tokens came")
    ap.add_argument("--stop-s", type=float, default=1.0, help="for this long")
    ap.add_argument("--temperature", type=float, default=0.2)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="the daemon's config")
    ap.add_argument("--out", help="write the results here as JSON")
    args = ap.parse_args(argv)
    if args.trials < 1 or args.stop_at < 12 or args.tokens < args.stop_at + 50 or not 0 < args.stop_s <= 30:
        ap.error("need --trials >= 1, --stop-at >= 12, --tokens >= stop-at + 50 and 0 < --stop-s <= 30")
    with tempfile.TemporaryDirectory() as state:
        proc, url = kiosk_bench.serve(args.set, state)
        try:
            kiosk = kiosk_bench.Kiosk(url, temperature=args.temperature)
            kiosk.chat(4)  # warm up
            chars, _ = kiosk_bench.fit_text(kiosk, args.parts)
            job = kiosk.submit(kiosk_bench.text(chars, 7000))
            time.sleep(4)  # chunked, its parts prefilling
            trials = []
            for k in range(args.trials):
                trials.append(trial(kiosk, proc.pid, k, args))
                print(json.dumps(trials[-1]), flush=True)
                time.sleep(1.5)
            status = kiosk.get(f"/api/summaries/{job}")["status"]
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    after = [t["after_50_ms"] for t in trials if t.get("after_50_ms")]
    before = [t["before_ms"] for t in trials if t.get("before_ms")]
    result = {
        "tool": "stall_probe",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "job_status_at_end": status,
        "trials": trials,
        "before_ms_median": statistics.median(before) if before else None,
        "after_50_ms_median": statistics.median(after) if after else None,
        "after_50_ms_worst": max(after) if after else None,
    }
    print(
        f"ms a token: before the stop {result['before_ms_median']} (median), the 50 after it "
        f"{result['after_50_ms_median']} (median), {result['after_50_ms_worst']} (worst); job {status}"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
