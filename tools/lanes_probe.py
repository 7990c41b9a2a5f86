"""Does a GPU run several llama.cpp contexts' decode steps at once? A probe, no daemon.

One model, K contexts over it (a KV stream per sequence, as the default plan), N sequences in
all split over the contexts, greedy decode steps with every row's logits read and argmaxed (as
the engine does). Modes:
  serial   K contexts one after another: decode, wait, read (what one context per step costs)
  launch   one thread: llama_decode on every context (it returns once the work is queued on the
           context's own CUDA stream), then wait for and read each
  threads  a thread per context, each its own decode-wait-read loop (ctypes lets go of the GIL)
    python tools/lanes_probe.py [--seqs 1 4 16] [--lanes 1 2 4] [--steps 64]"""

from __future__ import annotations

import argparse
import threading
import time

import llama_cpp as L
import numpy as np

from edge_llm.config import embedded_model_path
from edge_llm.engine.backends.llamacpp import LlamaCppBackend
from edge_llm.engine.backends.llamacpp_context import Context


class Lane:
    """One context (the backend's own Context class) decoding n_seq greedy sequences."""

    def __init__(self, backend: LlamaCppBackend, n_seq: int, ctx_len: int):
        self.context = Context(backend, n_seq * (ctx_len + 512), n_seq, max(ctx_len, n_seq), unified=False)
        self.n_seq, self.n_vocab = n_seq, backend.profile.n_vocab
        self.pos = ctx_len
        filler = backend._filler(ctx_len)
        for s in range(n_seq):
            self.context.prefill([(t, p, s) for p, t in enumerate(filler)])
        self.last = [filler[-1]] * n_seq

    def launch(self):
        self.context.launch([(self.last[s], self.pos, s) for s in range(self.n_seq)])
        self.pos += 1

    def wait_read(self):
        logits = np.ctypeslib.as_array(L.llama_get_logits(self.context.ctx), shape=(self.n_seq, self.n_vocab))
        self.last = logits.argmax(axis=1).tolist()

    def close(self):
        self.context.close()


def run(backend, seqs, lanes, steps, mode, ctx_len):
    per = [seqs // lanes + (1 if i < seqs % lanes else 0) for i in range(lanes)]
    ls = [Lane(backend, n, ctx_len) for n in per if n]
    for lane in ls:  # warm: graphs captured
        for _ in range(3):
            lane.launch()
            lane.wait_read()
    launch_s = 0.0
    t0 = time.perf_counter()
    if mode == "serial":
        for _ in range(steps):
            for lane in ls:
                lane.launch()
                lane.wait_read()
    elif mode == "launch":
        for _ in range(steps):
            t = time.perf_counter()
            for lane in ls:
                lane.launch()
            launch_s += time.perf_counter() - t
            for lane in ls:
                lane.wait_read()
    else:

        def loop(lane):
            for _ in range(steps):
                lane.launch()
                lane.wait_read()

        threads = [threading.Thread(target=loop, args=(lane,)) for lane in ls]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    wall = time.perf_counter() - t0
    for lane in ls:
        lane.close()
    return seqs * steps / wall, wall / steps * 1e3, launch_s / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--lanes", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--modes", nargs="+", default=["serial", "launch", "threads"])
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--ctx-len", type=int, default=64)
    ap.add_argument("--gpu-layers", type=int, default=-1)
    args = ap.parse_args()
    backend = LlamaCppBackend(embedded_model_path(), n_gpu_layers=args.gpu_layers)
    print(backend.build_id())
    print("seqs lanes mode      tok/s   ms/step  launch-ms/step")
    for seqs in args.seqs:
        for lanes in args.lanes:
            if lanes > seqs:
                continue
            for mode in args.modes if lanes > 1 else ["serial"]:
                tps, ms, launch = run(backend, seqs, lanes, args.steps, mode, args.ctx_len)
                print(f"{seqs:4d} {lanes:5d} {mode:8s} {tps:8.0f} {ms:8.2f} {launch:8.2f}", flush=True)
    backend.close()


if __name__ == "__main__":
    main()
