"""Probe: a kiosk timeline on 2 CPU cores without the engine. A background job (parts: a long
prompt prefilled in chunks, then a short decode) runs alone, then with a visitor asking every
~4 s (a short prompt, 48 tokens). Two ways to share the cores:
  slice: one context's step at a time on both cores; while the visitor has work the background
         waits between its chunks (128-token chunks while a visitor is expected, as the engine's
         visitor chunk; a chunk running when the visitor arrives is let finish)
  split: two contexts on threads of their own; while the visitor has work each uses one core,
         the background both otherwise (its thread count is set before each chunk)."""

import argparse
import random
import threading
import time

import llama_cpp

from edge_llm.config import embedded_model_path

PATH = str(embedded_model_path())
WORDS = " ".join(f"At {i} o'clock gate {i % 9} let {i * 13 % 70} cars through." for i in range(600))


def context(threads: int) -> llama_cpp.Llama:
    return llama_cpp.Llama(
        PATH,
        n_ctx=4096,
        n_threads=threads,
        n_threads_batch=threads,
        n_batch=256,
        n_ubatch=256,
        flash_attn=True,
        verbose=False,
    )


def set_threads(llm: llama_cpp.Llama, n: int) -> None:
    llama_cpp.llama_set_n_threads(llm.ctx, n, n)


class Kiosk:
    def __init__(self, mode: str):
        self.mode = mode
        self.cores = threading.Lock()  # slice: one context at a time
        self.visitor_active = threading.Event()
        self.visitor_near = 0.0  # monotonic time the visitor last ended (expected back within 8 s)
        self.job_running = False  # split: the visitor takes one core only while the job runs

    def job(self, llm: llama_cpp.Llama, parts: int, prompt_tokens: int, decode: int) -> float:
        tokens = llm.tokenize(WORDS.encode())[:prompt_tokens]
        self.job_running = True
        t0 = time.perf_counter()
        for _ in range(parts):
            llm.reset()
            pos = 0
            while pos < len(tokens):
                expected = self.visitor_active.is_set() or time.monotonic() - self.visitor_near < 8
                if self.mode == "slice":
                    while self.visitor_active.is_set():
                        time.sleep(0.001)
                    chunk = 128 if expected else 256
                    with self.cores:
                        llm.eval(tokens[pos : pos + chunk])
                else:
                    chunk = 256
                    set_threads(llm, 1 if self.visitor_active.is_set() else 2)
                    llm.eval(tokens[pos : pos + chunk])
                pos += chunk
            for i in range(decode):
                if self.mode == "slice":
                    while self.visitor_active.is_set():
                        time.sleep(0.001)
                    with self.cores:
                        llm.eval([1000 + i % 50])
                else:
                    set_threads(llm, 1 if self.visitor_active.is_set() else 2)
                    llm.eval([1000 + i % 50])
        self.job_running = False
        return time.perf_counter() - t0

    def chat(self, llm: llama_cpp.Llama, n: int) -> tuple[float, float]:
        """One visitor question: (first token s, decode tok/s)."""
        self.visitor_active.set()
        t0 = time.perf_counter()
        if self.mode == "split":
            set_threads(llm, 1 if self.job_running else 2)
        with self.cores if self.mode == "slice" else _Null():
            llm.reset()
            llm.eval(llm.tokenize(b"You are a helpful kiosk. Which gate is open at noon today, and why?"))
            first = time.perf_counter() - t0
            t1 = time.perf_counter()
            for i in range(n - 1):
                llm.eval([2000 + i % 50])
            rate = (n - 1) / (time.perf_counter() - t1)
        self.visitor_near = time.monotonic()
        self.visitor_active.clear()
        return first, rate


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["slice", "split"], required=True)
    ap.add_argument("--parts", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=2000)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    bg, vis = context(2), context(2)
    k = Kiosk(args.mode)
    idle = [k.chat(vis, 48) for _ in range(3)]
    alone = k.job(bg, args.parts, args.prompt, args.decode)
    chats, done = [], threading.Event()

    def visitor():
        rnd = random.Random(args.seed)
        time.sleep(1.0)
        while not done.is_set():
            chats.append(k.chat(vis, 48))
            time.sleep(max(0.0, rnd.uniform(3.0, 5.0) - 0.5))

    t = threading.Thread(target=visitor, daemon=True)
    t.start()
    together = k.job(bg, args.parts, args.prompt, args.decode)
    done.set()
    t.join()
    idle_rate = sorted(r for _, r in idle)[1]
    print(
        f"{args.mode}: job alone {alone:.1f} s, with a visitor {together:.1f} s, ratio {together / alone:.3f}; "
        f"{len(chats)} chats, worst first token {max(f for f, _ in chats):.2f} s, "
        f"slowest chat {min(r for _, r in chats):.1f} tok/s of {idle_rate:.1f} idle "
        f"({min(r for _, r in chats) / idle_rate:.2f})",
        flush=True,
    )


if __name__ == "__main__":
    main()
