"""Two ways of prefilling the same long prompts, compared in one process: their llama_decode
calls are interleaved (whichever has spent less time goes next), so the machine's minute-to-
minute speed, which on a shared 2-core VM moves by 10-15%, hits both alike.

Prompts: the mixed benchmark's background prompts (tools/mixed_bench.py, ~3,000 tokens each),
one KV stream per sequence (the per-slot layout). A strategy is
  seq:N     one sequence per call, N tokens of it (our engine's background prefill)
  packed:N  every unfinished sequence's next N tokens in one call (llama-server's ubatches)

    .venv/bin/python tools/prefill_pairs.py seq:256 seq:512 [--seqs 4] [--flash-attn auto|on|off]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llama_cpp as L  # noqa: E402

from edge_llm.config import embedded_model_path  # noqa: E402
from edge_llm.engine.backends.llamacpp import LlamaCppBackend  # noqa: E402
from tools.mixed_bench import background_prompt  # noqa: E402

FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}  # llama.h enum llama_flash_attn_type


def strategy_spec(text: str) -> tuple[str, int]:
    mode, _, n = text.partition(":")
    if mode not in ("seq", "packed") or not n.isdigit() or not 1 <= int(n) <= 4096:
        raise argparse.ArgumentTypeError(f"'{text}': expected seq:N or packed:N with N from 1 to 4096")
    return mode, int(n)


class Strategy:
    def __init__(self, backend: LlamaCppBackend, prompts: list[list[int]], spec: tuple[str, int], flash_attn: int):
        self.mode, self.per = spec
        self.name = f"{self.mode}:{self.per}"
        self.prompts = prompts
        n_batch = self.per * (len(prompts) if self.mode == "packed" else 1)
        cp = L.llama_context_default_params()
        cp.n_ctx = len(prompts) * 4096
        cp.n_batch = cp.n_ubatch = n_batch
        cp.n_seq_max = len(prompts)
        cp.kv_unified = False
        cp.n_threads = cp.n_threads_batch = backend.n_threads
        cp.flash_attn_type = flash_attn
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(backend.model, cp)
        if not self.ctx:
            raise SystemExit(f"llama.cpp could not create a context for {self.name}")
        self.batch = L.llama_batch_init(n_batch, 0, 1)
        self.seconds, self.calls = 0.0, 0
        self._calls = self._plan()

    def _plan(self):
        if self.mode == "seq":
            for s, prompt in enumerate(self.prompts):
                for p in range(0, len(prompt), self.per):
                    yield [(s, prompt[p : p + self.per], p)]
            return
        pos = [0] * len(self.prompts)
        while True:
            items = [
                (s, prompt[pos[s] : pos[s] + self.per], pos[s])
                for s, prompt in enumerate(self.prompts)
                if pos[s] < len(prompt)
            ]
            if not items:
                return
            yield items
            for s, tokens, _ in items:
                pos[s] += len(tokens)

    def step(self) -> bool:
        items = next(self._calls, None)
        if items is None:
            return False
        b, i = self.batch, 0
        for seq, tokens, start in items:
            for k, token in enumerate(tokens):
                b.token[i], b.pos[i], b.n_seq_id[i] = token, start + k, 1
                b.seq_id[i][0] = seq
                b.logits[i] = k == len(tokens) - 1
                i += 1
        b.n_tokens = i
        t0 = time.perf_counter()
        rc = L.llama_decode(self.ctx, b)
        self.seconds += time.perf_counter() - t0
        if rc != 0:
            raise SystemExit(f"{self.name}: llama_decode returned {rc}")
        self.calls += 1
        return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=strategy_spec)
    ap.add_argument("b", type=strategy_spec)
    ap.add_argument("--seqs", type=int, default=4, choices=range(1, 9), metavar="1-8")
    ap.add_argument("--flash-attn", choices=FLASH_ATTN, default="auto")
    args = ap.parse_args()
    backend = LlamaCppBackend(embedded_model_path())
    prompts = []
    for k in range(args.seqs):
        text = backend.render_chat([{"role": "user", "content": background_prompt(k)}])
        prompts.append(backend.tokenize(text, backend.chat_add_special(text)))
    live = [Strategy(backend, prompts, spec, FLASH_ATTN[args.flash_attn]) for spec in (args.a, args.b)]
    a, b = live
    while live:
        s = min(live, key=lambda s: s.seconds)
        if not s.step():
            live.remove(s)
    print(f"{sum(map(len, prompts))} prompt tokens in {args.seqs} sequences, flash attention {args.flash_attn}")
    for s in (a, b):
        print(f"  {s.name:<12} {s.seconds:6.1f} s in {s.calls} llama_decode calls")
    print(f"  {b.name} / {a.name}: {b.seconds / a.seconds:.3f}")


if __name__ == "__main__":
    main()
