"""Other work on the daemon's cores, in bursts: what tests, a build or a backup beside the kiosk do
(issue 23: "on a machine already busy with other work"). Seeded, so two runs of a bench beside it
meet the same neighbour.

Every burst starts --procs processes that spin for a time drawn from --busy, then all rest for
a time drawn from --rest; until --seconds have passed (0: until interrupted).

    .venv/bin/python tools/busy_neighbour.py [--procs 2] [--busy 0.2 1.5] [--rest 0.5 3] [--seed 0] [--seconds 0]
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import signal
import time


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def stop(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM too: a shell without job control starts `... &` with SIGINT ignored


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=2, help="processes spinning in a burst")
    ap.add_argument("--busy", type=float, nargs=2, default=[0.2, 1.5], metavar=("LO", "HI"), help="a burst, seconds")
    ap.add_argument("--rest", type=float, nargs=2, default=[0.5, 3.0], metavar=("LO", "HI"), help="a pause, seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: run until interrupted)")
    args = ap.parse_args(argv)
    for lo, hi in (args.busy, args.rest):
        if not 0 <= lo <= hi:
            ap.error(f"a range is LO HI with 0 <= LO <= HI, not {lo} {hi}")
    if args.procs < 1:
        ap.error("--procs must be at least 1")
    signal.signal(signal.SIGTERM, stop)
    rng = random.Random(args.seed)
    end = time.monotonic() + args.seconds if args.seconds > 0 else float("inf")
    busy_s = bursts = 0.0
    try:
        while time.monotonic() < end:
            seconds = rng.uniform(*args.busy)
            procs = [multiprocessing.Process(target=spin, args=(seconds,)) for _ in range(args.procs)]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
            busy_s += seconds
            bursts += 1
            time.sleep(rng.uniform(*args.rest))
    except KeyboardInterrupt:
        pass
    print(f"{bursts:.0f} bursts of {args.procs} processes, {busy_s:.1f} s busy")


if __name__ == "__main__":
    main()
