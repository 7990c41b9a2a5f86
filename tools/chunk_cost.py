"""What one llama_decode of N prompt tokens costs at a given context: the price of a background
step's size (engine/scheduler.py, planner.py VISITOR_CHUNK_FACTOR). One sequence, one context per
flash-attention setting; each context is first filled to the context length, then every size is
timed on top of it (its cells removed again), the sizes and settings interleaved round by round so
the machine's minute-to-minute speed hits all alike. Prints the median of --reps a size.

    .venv/bin/python tools/chunk_cost.py [--flash-attn auto,off] [--contexts 0,2048]
                                         [--sizes 16,64,128,256,512] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llama_cpp as L  # noqa: E402

from edge_llm.config import embedded_model_path  # noqa: E402
from edge_llm.engine.backends.llamacpp import LlamaCppBackend  # noqa: E402
from tools.mixed_bench import background_prompt  # noqa: E402

FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}  # llama.h enum llama_flash_attn_type
N_CTX, N_BATCH = 4096, 512


def ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': expected numbers separated by commas") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"'{text}': expected numbers of 0 or more")
    return values


def settings(text: str) -> list[str]:
    names = text.split(",")
    if not names or any(n not in FLASH_ATTN for n in names):
        raise argparse.ArgumentTypeError(f"'{text}': expected some of {', '.join(FLASH_ATTN)}")
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flash-attn", type=settings, default=["auto", "off"])
    ap.add_argument("--contexts", type=ints, default=[0, 2048])
    ap.add_argument("--sizes", type=ints, default=[16, 64, 128, 256, 512])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if max(args.sizes) > N_BATCH or min(args.sizes) < 1 or max(args.contexts) + max(args.sizes) > N_CTX:
        ap.error(f"sizes 1 to {N_BATCH}, and a context plus a size within {N_CTX} tokens")
    backend = LlamaCppBackend(embedded_model_path())
    tokens = backend.tokenize(background_prompt(0) + background_prompt(1))
    if len(tokens) < max(args.contexts) + max(args.sizes):
        ap.error(f"the prompts hold {len(tokens)} tokens, fewer than a context plus a size")
    contexts = {}
    for name in args.flash_attn:
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = N_CTX, N_BATCH, N_BATCH, 1
        cp.n_threads = cp.n_threads_batch = backend.n_threads
        cp.flash_attn_type = FLASH_ATTN[name]
        cp.no_perf = True
        contexts[name] = L.llama_init_from_model(backend.model, cp)
        if not contexts[name]:
            raise SystemExit(f"llama.cpp could not create a context with flash attention {name}")
    batch = L.llama_batch_init(N_BATCH, 0, 1)

    def decode(ctx, start: int, n: int) -> float:
        batch.n_tokens = n
        for i in range(n):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tokens[start + i], start + i, 1
            batch.seq_id[i][0], batch.logits[i] = 0, i == n - 1
        t = time.perf_counter()
        rc = L.llama_decode(ctx, batch)
        if rc != 0:
            raise SystemExit(f"llama_decode failed with {rc}")
        return time.perf_counter() - t

    print(f"{backend.n_threads} threads; ms a token (ms the call), median of {args.reps}")
    for c in args.contexts:
        for ctx in contexts.values():
            L.llama_memory_seq_rm(L.llama_get_memory(ctx), 0, 0, -1)
            for p in range(0, c, N_BATCH):
                decode(ctx, p, min(N_BATCH, c - p))
        times: dict[tuple[str, int], list[float]] = {(f, n): [] for f in contexts for n in args.sizes}
        for _ in range(args.reps):
            for n in args.sizes:
                for name, ctx in contexts.items():
                    times[(name, n)].append(decode(ctx, c, n))
                    L.llama_memory_seq_rm(L.llama_get_memory(ctx), 0, c, -1)
        for n in args.sizes:
            medians = {f: statistics.median(times[(f, n)]) * 1000 for f in contexts}
            cells = [f"{f}: {ms / n:6.2f} ({ms:7.1f})" for f, ms in medians.items()]
            print(f"context {c:5d}  {n:4d} tokens  " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
