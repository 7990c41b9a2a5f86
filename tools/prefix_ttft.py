"""TTFT with a ~500-token shared system prompt: cold (nothing cached) vs reused (the
prefix cache holds the system prompt from an earlier conversation).
    .venv/bin/python tools/prefix_ttft.py [--repeats 5]"""

from __future__ import annotations

import argparse
import statistics

from edge_llm import appliance
from edge_llm import config as config_mod
from edge_llm.engine.request import SamplingParams
from edge_llm.telemetry.host import HostSource

SYSTEM = "You are the help desk of the Harbor Museum. " + " ".join(
    f"Rule {i}: answer politely, mention opening hours 9 to 17, and keep answers short." for i in range(30)
)


def ask(engine, backend, question: str):
    prompt = backend.render_chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}])
    req, _ = engine.make_request(backend.tokenize(prompt, False), SamplingParams(temperature=0.0), 1)
    for _ in engine.generate(req):
        pass
    return req.first_token_time - req.arrival_time, req.num_reused, req.num_prompt_tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    backend, _, engine = appliance.build_engine(config_mod.load(), HostSource().read())
    cold, warm = [], []
    for i in range(args.repeats):
        engine.call(engine.clear_prefix_cache)
        t, reused, n = ask(engine, backend, f"When do you open on day {i}?")
        cold.append(t)
        t, reused, n = ask(engine, backend, f"Is there a cafe? ({i})")
        warm.append(t)
    engine.stop()
    c, w = statistics.median(cold), statistics.median(warm)
    print(
        f"prompt {n} tokens, {reused} reused: TTFT cold median {1000 * c:.0f} ms, "
        f"reused median {1000 * w:.0f} ms ({c / w:.1f}x)"
    )


if __name__ == "__main__":
    main()
