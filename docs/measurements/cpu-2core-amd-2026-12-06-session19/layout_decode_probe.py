"""Decode step of 4 sequences at contexts 128..2048: one KV pool against a stream per slot."""

import sys

from edge_llm.config import embedded_model_path
from edge_llm.engine.backends.llamacpp import LlamaCppBackend

b = LlamaCppBackend(embedded_model_path())
for rnd in range(2):
    for c in [int(x) for x in sys.argv[1:]] or [128, 512, 1024, 2048]:
        u = b.time_decode(4, c, unified=True)
        p = b.time_decode(4, c, unified=False)
        print(
            f"round {rnd} ctx {c:5d}: unified {1000 * u:6.1f} ms  per_slot {1000 * p:6.1f} ms  "
            f"per_slot/unified {p / u:.2f}",
            flush=True,
        )
b.close()
