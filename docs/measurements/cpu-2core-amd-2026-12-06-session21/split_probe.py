"""Probe (session 21): on 2 CPU cores, a visitor's decode on one thread beside background prefill
on the other, each in a llama.cpp context of its own, against each alone on 1 and 2 threads.
    .venv/bin/python split_probe.py alone | split"""

import sys
import threading
import time

import llama_cpp

from edge_llm.config import embedded_model_path

PATH = str(embedded_model_path())
WORDS = " ".join(f"item{i % 97} is near gate {i % 13}." for i in range(800))


def context(threads: int, n_batch: int = 256) -> llama_cpp.Llama:
    return llama_cpp.Llama(
        PATH,
        n_ctx=4096,
        n_threads=threads,
        n_threads_batch=threads,
        n_batch=n_batch,
        n_ubatch=n_batch,
        verbose=False,
        flash_attn=True,
    )


def visitor(llm: llama_cpp.Llama, n: int = 150, out: list | None = None) -> float:
    """Tokens/s of n single-token decode steps after a short prompt."""
    llm.reset()
    llm.eval(llm.tokenize(b"Tell me a short story about a lighthouse keeper."))
    t = time.perf_counter()
    for i in range(n):
        llm.eval([1000 + i % 50])
    rate = n / (time.perf_counter() - t)
    if out is not None:
        out.append(rate)
    return rate


def background(
    llm: llama_cpp.Llama,
    ctx_start: int = 1024,
    n: int = 1024,
    chunk: int = 128,
    out: list | None = None,
    stop: threading.Event | None = None,
) -> float:
    """Prompt tokens/s of n tokens in chunks, after ctx_start tokens of context."""
    llm.reset()
    tokens = llm.tokenize(WORDS.encode())[: ctx_start + n]
    llm.eval(tokens[:ctx_start])
    t, done = time.perf_counter(), 0
    for i in range(ctx_start, ctx_start + n, chunk):
        llm.eval(tokens[i : i + chunk])
        done += chunk
        if stop is not None and stop.is_set():
            break
    rate = done / (time.perf_counter() - t)
    if out is not None:
        out.append(rate)
    return rate


def main() -> None:
    if sys.argv[1] == "alone":
        for threads in (2, 1):
            v, b = context(threads), context(threads)
            print(f"{threads} threads: visitor {visitor(v):.1f} tok/s, background prefill {background(b):.1f} tok/s")
            print(f"{threads} threads: background in 256-token chunks {background(b, chunk=256):.1f} tok/s")
        return
    v, b = context(1), context(1)
    for n in (2048, 1024):
        vo, bo, stop = [], [], threading.Event()
        tb = threading.Thread(target=background, args=(b,), kwargs={"out": bo, "stop": stop, "n": n})
        tb.start()
        time.sleep(0.5)
        visitor(v, n=300, out=vo)
        stop.set()
        tb.join()
        print(f"split 1+1 threads: visitor {vo[0]:.1f} tok/s beside background prefill {bo[0]:.1f} tok/s")


if __name__ == "__main__":
    main()
