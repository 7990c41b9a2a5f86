"""Measure how often greedy output inside a mixed batch equals the output alone.

llama.cpp's CPU matmuls take different paths for different batch shapes, so logits differ in
the last bits and greedy decoding can flip at near-ties. This reports, over several prompts,
the tokens generated before the first divergence (of max_tokens).
    .venv/bin/python tools/batch_agreement.py [--prompts 10] [--max-tokens 48]"""

from __future__ import annotations

import argparse
import statistics
import threading

from edge_llm import appliance
from edge_llm import config as config_mod
from edge_llm.engine.request import SamplingParams
from edge_llm.telemetry.host import HostSource

PROMPTS = [
    "Explain what a battery does in two sentences.",
    "Why do birds migrate?",
    "What is photosynthesis?",
    "Give me a tip for learning to cook.",
    "Describe the moon.",
    "What is a computer network?",
    "How do magnets work?",
    "Why is exercise healthy?",
    "What is the capital of Italy?",
    "Tell me about volcanoes.",
    "What does a compiler do?",
    "How do plants drink water?",
]
OTHERS = [
    "Write a story about a dragon.",
    "List ten animals.",
    "Describe a busy market.",
    "Talk about the sea.",
    "Explain gravity to a child.",
]


def run(engine, backend, text: str, params: SamplingParams, max_tokens: int) -> list[int]:
    prompt = backend.render_chat([{"role": "user", "content": text}])
    req, _ = engine.make_request(backend.tokenize(prompt, False), params, max_tokens)
    for _ in engine.generate(req):
        pass
    return req.output_tokens


def agreement(engine, backend, text: str, max_tokens: int) -> int:
    greedy = SamplingParams(temperature=0.0)
    engine.call(engine.clear_prefix_cache)
    alone = run(engine, backend, text, greedy, max_tokens)
    engine.call(engine.clear_prefix_cache)
    threads = [
        threading.Thread(target=run, args=(engine, backend, o, SamplingParams(temperature=0.9, seed=i), 20 + 9 * i))
        for i, o in enumerate(OTHERS)
    ]
    for t in threads:
        t.start()
    mixed = run(engine, backend, text, greedy, max_tokens)
    for t in threads:
        t.join()
    n = 0
    while n < min(len(alone), len(mixed)) and alone[n] == mixed[n]:
        n += 1
    return max_tokens if alone == mixed else n


def measure(num_prompts: int, max_tokens: int) -> list[int]:
    cfg = config_mod.load(
        overrides=[
            ("limits.max_batch_size", 8),
            ("limits.max_seq_len", 2048),
            ("limits.kv_cache_tokens", 16384),
            ("limits.prefill_chunk_tokens", 64),
        ]
    )
    backend, _, engine = appliance.build_engine(cfg, HostSource().read())
    try:
        return [agreement(engine, backend, PROMPTS[i % len(PROMPTS)], max_tokens) for i in range(num_prompts)]
    finally:
        engine.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()
    agree = measure(args.prompts, args.max_tokens)
    same = sum(a == args.max_tokens for a in agree)
    print(
        f"identical: {same}/{len(agree)}; tokens before first divergence: {agree}; "
        f"mean {statistics.mean(agree):.1f} of {args.max_tokens}, min {min(agree)}"
    )


if __name__ == "__main__":
    main()
