"""A decode step of N sequences whose slots run without gaps, against the same N spread over
every other slot, in one llama.cpp context with a KV stream per slot (per_slot; the daemon's
contexts are 8 slots each on a GPU, lanes): llama.cpp runs only consecutive sequence ids in one
ubatch (llama_batch_allocr::split_equal, "accept only increasing sequence ids"), so gaps make a
step several passes over the weights. `python gap_probe.py [N_SEQ] [CTX]` (session 22)."""

import statistics
import sys
import time

import llama_cpp as L

from edge_llm.config import embedded_model_path
from edge_llm.engine.backends.llamacpp import LlamaCppBackend
from edge_llm.engine.backends.llamacpp_context import Context

n_seq = int(sys.argv[1]) if len(sys.argv) > 1 else 8
ctx_len = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
b = LlamaCppBackend(embedded_model_path(), n_gpu_layers=-1)  # all layers on a GPU (a CPU build ignores it)
tokens = b._filler(ctx_len)
sets = {
    "runs of 1 (every other slot)": list(range(0, n_seq, 2)),
    "one run (the same count)": list(range(n_seq // 2)),
    "2 runs": list(range(n_seq // 4)) + list(range(n_seq // 2, n_seq // 2 + n_seq // 4)),
    "all slots": list(range(n_seq)),
}
with Context(b, n_seq * (ctx_len + 256), n_seq, 2048, unified=False) as sc:
    for s in range(n_seq):
        sc.prefill([(t, p, s) for p, t in enumerate(tokens)])
    pos = ctx_len
    for rnd in range(3):
        for name, seqs in sets.items():
            times = []
            for _ in range(12):
                t0 = time.perf_counter()
                sc.decode([(tokens[pos % ctx_len], pos, s) for s in seqs])
                times.append(time.perf_counter() - t0)
                for s in seqs:  # the same cells next time
                    L.llama_memory_seq_rm(sc.memory, s, ctx_len, -1)
            print(
                f"round {rnd} {n_seq} slots, ctx {ctx_len}: {len(seqs):2d} seqs, {name:<30} "
                f"median {1000 * statistics.median(times[2:]):7.2f} ms  first {1000 * times[0]:7.2f} ms",
                flush=True,
            )
b.close()
