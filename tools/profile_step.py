"""Where one engine step's time goes, with N sequences decoding: schedule, fill the batch,
llama_decode, sample, postprocess + publish. Runs the step engine's step() on this thread
(no HTTP, no consumer threads) and reports mean microseconds per phase and a cProfile.
    python tools/profile_step.py [--seqs 16] [--steps 200]"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections import defaultdict

import llama_cpp as L

from edge_llm import appliance
from edge_llm import config as config_mod
from edge_llm.engine.request import SamplingParams
from edge_llm.telemetry.host import HostSource


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", type=int, default=16)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--no-cprofile", action="store_true", help="phase times only (cProfile slows Python ~2x)")
    args = ap.parse_args()
    cfg = config_mod.load(
        overrides=[
            ("limits.max_batch_size", args.seqs),
            ("model.warmup", "false"),
            ("limits.max_output_len", args.steps + 8),
        ]
    )
    backend, plan, engine = appliance.build_engine(cfg, HostSource().read())
    engine.stop()  # drive step() here instead
    for i in range(args.seqs):
        req, _ = engine.make_request(
            backend.tokenize(f"Story {i}: once upon a time"), SamplingParams(temperature=0.0), args.steps + 8
        )
        engine.scheduler.add(req)
    while any(r.is_prefilling for r in engine.scheduler.running) or engine.scheduler.waiting:
        engine.step()
    phases = defaultdict(float)
    orig_decode, orig_sample = L.llama_decode, L.llama_sampler_sample

    def timed(name, fn):
        def wrapper(*a):
            t = time.perf_counter()
            try:
                return fn(*a)
            finally:
                phases[name] += time.perf_counter() - t

        return wrapper

    L.llama_decode = timed("llama_decode", orig_decode)
    L.llama_get_logits = timed("llama_get_logits (GPU wait)", L.llama_get_logits)
    # with model.gpu_greedy the wait is in reading the device's tokens instead
    L.llama_get_sampled_token_ith = timed("llama_get_logits (GPU wait)", L.llama_get_sampled_token_ith)
    L.llama_sampler_sample = timed("sample (C sampler)", orig_sample)
    # the engine's own phases (each includes the llama.cpp calls made inside it)
    s = engine.scheduler
    s.schedule = timed("[schedule]", s.schedule)
    s.postprocess = timed("[postprocess]", s.postprocess)
    engine._publish = timed("[publish]", engine._publish)
    backend._fill_batch = timed("[fill batch]", backend._fill_batch)
    backend._sample = timed("[sample incl. wait]", backend._sample)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    if not args.no_cprofile:
        prof.enable()
    for _ in range(args.steps):
        engine.step()
    prof.disable()
    total = time.perf_counter() - t0
    print(
        f"{args.seqs} sequences, {args.steps} steps: {1e6 * total / args.steps:.0f} us/step, "
        f"{args.seqs * args.steps / total:.0f} tok/s"
    )
    for name, secs in phases.items():
        print(f"  {name:<22} {1e6 * secs / args.steps:8.0f} us/step")
    flat = sum(v for k, v in phases.items() if not k.startswith("["))
    print(f"  {'Python (not llama.cpp)':<22} {1e6 * (total - flat) / args.steps:8.0f} us/step")
    if not args.no_cprofile:
        pstats.Stats(prof).sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    main()
