"""A 128-token prefill chunk of a 5th sequence while 4 others hold N tokens each: one KV pool
against a stream per slot (what a summary part's prefill meets beside the other parts)."""

import sys
import time

from edge_llm.config import embedded_model_path
from edge_llm.engine.backends.llamacpp import LlamaCppBackend
from edge_llm.engine.backends.llamacpp_context import Context

b = LlamaCppBackend(embedded_model_path())
n = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
for rnd in range(2):
    for unified in (True, False):
        cells = 5 * (n + 512) if not unified else -(-5 * (n + 512) // 256) * 256
        with Context(b, cells, 5, 512, unified) as c:
            tok = b._filler(n)
            for s in range(4):
                for i in range(0, n, 512):
                    c.prefill([(t, i + p, s) for p, t in enumerate(tok[i : i + 512])])
            chunk = b._filler(128 * 4)
            best = []
            for k in range(4):
                t0 = time.perf_counter()
                c.prefill([(t, 128 * k + p, 4) for p, t in enumerate(chunk[128 * k : 128 * (k + 1)])])
                best.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            c.decode([(tok[-1], n + j, s) for j, s in [(0, 0), (0, 1), (0, 2), (0, 3)]])
            d = time.perf_counter() - t0
        print(
            f"round {rnd} {'unified ' if unified else 'per_slot'} 4 x {n} held: "
            f"128-token chunks {[round(1000 * x) for x in best]} ms; a decode of the 4: {1000 * d:.1f} ms",
            flush=True,
        )
b.close()
