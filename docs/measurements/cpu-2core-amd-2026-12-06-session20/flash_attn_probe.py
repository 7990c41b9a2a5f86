"""Flash attention on or off for a decode step on this CPU: is there a faster choice than
llama.cpp's default (auto, which llama-server uses too)? Bare contexts, 4 sequences x 150 tokens.
    .venv/bin/python docs/measurements/cpu-2core-amd-2026-12-06-session20/flash_attn_probe.py"""

import time

import llama_cpp as L

from edge_llm.config import embedded_model_path
from edge_llm.engine.backends import llamacpp_context as LC
from edge_llm.engine.backends.llamacpp import LlamaCppBackend

DEFAULT_PARAMS = L.llama_context_default_params
NAMES = {-1: "auto", 0: "off"}  # llama.h enum llama_flash_attn_type


def ms_a_step(be, fa: int, batch: int, ctx_len: int = 150, steps: int = 150) -> float:
    def params():
        p = DEFAULT_PARAMS()
        p.flash_attn_type = fa
        return p

    LC.L.llama_context_default_params = params
    with LC.Context(be, batch * (ctx_len + 256), batch, 512, False) as sc:
        toks = be._filler(ctx_len)
        for s in range(batch):
            sc.prefill([(t, p, s) for p, t in enumerate(toks)])
        pos = ctx_len
        sc.decode([(toks[-1], pos, s) for s in range(batch)])
        t0 = time.perf_counter()
        for _ in range(steps):
            pos += 1
            sc.decode([(toks[-1], pos, s) for s in range(batch)])
        return 1000 * (time.perf_counter() - t0) / steps


if __name__ == "__main__":
    be = LlamaCppBackend(embedded_model_path())
    for r in range(3):
        for batch in (1, 4):
            for fa in (-1, 0) if r % 2 == 0 else (0, -1):
                print(r, batch, NAMES[fa], round(ms_a_step(be, fa, batch), 2), flush=True)
