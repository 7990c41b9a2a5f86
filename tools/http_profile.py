"""Where the daemon's time goes while serving N concurrent streams over HTTP: py-spy samples
every thread of a real daemon process during a tools/bench.py load, and this prints the
functions that held the CPU (own time) grouped by thread role.
    python tools/http_profile.py [--streams 16] [--tokens 256] [--py-spy PATH]"""

from __future__ import annotations

import argparse
import collections
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def role(frames: list[str]) -> str:
    """Which thread a stack belongs to, from the frames near its root."""
    text = " ".join(frames)
    if "EngineFront._run (" in text:  # the engine thread (engine/front.py)
        return "engine thread"
    if "waitress/task.py" in text or "handler_thread" in text:
        return "HTTP worker threads"
    if "wasyncore" in text or "waitress/server.py" in text:
        return "waitress I/O thread"
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--py-spy", default="py-spy")
    args = ap.parse_args()
    port = bench.free_port()
    proc = bench.start(
        [
            sys.executable,
            "-m",
            "edge_llm",
            "serve",
            "--port",
            str(port),
            f"--set=limits.max_batch_size={args.streams}",
            f"--set=limits.max_output_len={args.tokens}",
        ],
        port,
        "/health",
    )
    out = Path(tempfile.mkdtemp()) / "profile.txt"
    spy = subprocess.Popen(
        [
            args.py_spy,
            "record",
            "--pid",
            str(proc.pid),
            "--threads",
            "--format",
            "raw",
            "--rate",
            "500",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        result = bench.bench_http(
            port, args.streams, args.tokens, "edge-llm http", {"stream_options": {"include_usage": True}}
        )
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        spy.wait(60)
        proc.terminate()
        proc.wait(30)
    print(f"{args.streams} streams: {result['aggregate_tok_s']:.0f} tok/s aggregate, TPOT {result['tpot_ms']:.2f} ms")
    by_role: collections.Counter = collections.Counter()
    leaf: collections.Counter = collections.Counter()
    for line in out.read_text().splitlines():  # "thread;frame;frame;... count", root first
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        r = role(frames)
        by_role[r] += int(count)
        leaf[(r, frames[-1])] += int(count)
    total = sum(by_role.values()) or 1
    for r, n in by_role.most_common():
        print(f"{r:<22} {100 * n / total:5.1f}% of samples")
    for (r, fn), n in leaf.most_common(25):
        print(f"  {100 * n / total:5.1f}%  {r:<20} {fn}")


if __name__ == "__main__":
    main()
