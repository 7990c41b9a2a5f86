"""Where one engine step's time goes, with N sequences decoding: schedule, fill the batch,
llama_decode, sample, postprocess + publish. Runs the step engine's step() on this thread
(no HTTP, no consumer threads) and reports mean microseconds per phase and a cProfile.
With --resident N, N background sequences with --resident-tokens of prompt each are prefilled
and held first (chat_slowdown 1.0: none rides beside a visitor), as summary parts are while a
kiosk visitor chats: do the visitor's steps alone cost more with them resident in the KV cache?
    python tools/profile_step.py [--seqs 16] [--steps 200] [--resident 0 --resident-tokens 1500]"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import threading
import time
from collections import defaultdict

import llama_cpp as L

from edge_llm import appliance
from edge_llm import config as config_mod
from edge_llm.engine.request import Priority, SamplingParams
from edge_llm.telemetry.host import HostSource


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", type=int, default=16)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--no-cprofile", action="store_true", help="phase times only (cProfile slows Python ~2x)")
    ap.add_argument("--resident", type=int, default=0, help="background sequences held in the KV cache meanwhile")
    ap.add_argument("--resident-tokens", type=int, default=1500, help="prompt tokens of each resident sequence")
    ap.add_argument(
        "--busy-thread",
        type=float,
        default=0.0,
        metavar="MS",
        help="a thread of Python work in bursts of MS ms, 10 ms apart (an HTTP handler, a summary thread)",
    )
    ap.add_argument("--switch-ms", type=float, default=0.0, help="sys.setswitchinterval (0: leave it)")
    args = ap.parse_args()
    if args.switch_ms:
        sys.setswitchinterval(args.switch_ms / 1000)
    overrides = [
        ("limits.max_batch_size", args.seqs + args.resident),
        ("model.warmup", "false"),
        ("limits.max_output_len", args.steps + 8),
    ]
    if args.resident:
        overrides.append(("limits.chat_slowdown", "1.0"))
    cfg = config_mod.load(overrides=overrides)
    backend, plan, engine = appliance.build_engine(cfg, HostSource().read())
    engine.stop()  # drive step() here instead
    if args.resident:
        words = " ".join(f"item{i % 97}" for i in range(args.resident_tokens))
        for i in range(args.resident):
            tokens = backend.tokenize(f"Part {i}: {words}")[: args.resident_tokens]
            req, _ = engine.make_request(tokens, SamplingParams(temperature=0.0), 4096, Priority.BACKGROUND)
            engine.scheduler.add(req)
        t = time.perf_counter()
        while any(r.is_prefilling for r in engine.scheduler.running) or engine.scheduler.waiting:
            engine.step()
        engine.step()  # each has decoded a token: held from here on, beside the visitors
        print(f"{args.resident} resident background sequences prefilled in {time.perf_counter() - t:.1f} s")
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

    decodes = [0]

    def counted_decode(*a):
        decodes[0] += 1
        return orig_decode(*a)

    L.llama_decode = timed("llama_decode", counted_decode)
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
    done = threading.Event()
    if args.busy_thread:
        threading.Thread(target=busy, args=(args.busy_thread / 1000, done), daemon=True).start()
        print(
            f"a thread busy in Python {args.busy_thread:g} ms in every {args.busy_thread + 10:g}, switch interval "
            f"{sys.getswitchinterval() * 1000:g} ms"
        )
    reused0 = graphs_reused(backend)
    t0 = time.perf_counter()
    if not args.no_cprofile:
        prof.enable()
    for _ in range(args.steps):
        engine.step()
    prof.disable()
    total = time.perf_counter() - t0
    reused = graphs_reused(backend) - reused0
    done.set()
    if args.resident:
        held = sum(1 for r in engine.scheduler.running if r.priority == Priority.BACKGROUND)
        print(f"  resident background sequences still held: {held} (of {args.resident})")
    print(
        f"{args.seqs} sequences, {args.steps} steps: {1e6 * total / args.steps:.0f} us/step, "
        f"{args.seqs * args.steps / total:.0f} tok/s"
    )
    for name, secs in phases.items():
        print(f"  {name:<22} {1e6 * secs / args.steps:8.0f} us/step")
    flat = sum(v for k, v in phases.items() if not k.startswith("["))
    print(f"  {'Python (not llama.cpp)':<22} {1e6 * (total - flat) / args.steps:8.0f} us/step")
    print(f"  graphs reused          {reused} of {decodes[0]} llama_decode calls (llama.cpp built the rest anew)")
    if not args.no_cprofile:
        pstats.Stats(prof).sort_stats("tottime").print_stats(14)


def graphs_reused(backend) -> int:
    """How many steps llama.cpp ran on the graph of the step before (llama_context::process_ubatch:
    same ubatch shape, sequences and outputs) instead of building and allocating one anew."""
    return sum(L.llama_perf_context(c.ctx).n_reused for c in backend.contexts)


def busy(burst_s: float, done: threading.Event) -> None:
    """Pure Python for burst_s (it holds the GIL but where the interpreter switches), then sleep."""
    while not done.is_set():
        end = time.perf_counter() + burst_s
        while time.perf_counter() < end:
            sum(i * i for i in range(200))
        time.sleep(0.01)


if __name__ == "__main__":
    main()
