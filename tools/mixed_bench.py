"""Interactive chat while documents are summarized: ours against llama.cpp's own server on the
same GGUF and the same llama.cpp build (tools/build_llama_server.sh), one after the other.

Workload: four background requests with ~3,000-token prompts (what a summary job sends: a
chunk of a document and a 64-token summary), all sent at t=0; from t=1 s a visitor asks short
questions one after another (streaming, 16 tokens each). Reported: the visitor's TTFTs (worst,
median) and the background wall time (t=0 until the last background request is done).

Run-to-run spread on a shared 2-core VM is 10-15%, more than the differences measured, so
--rounds N runs both targets N times, alternating which goes first, and reports each round's
ratio (ours / llama-server), pooled: their median, their geometric mean with a 95% bootstrap
interval, and how many rounds ours won. Both targets of a round see the same stretch of machine
time. --report F... pools the rounds of earlier --json files the same way.

    .venv/bin/python tools/mixed_bench.py [--llama-server PATH] [--questions 6] [--rounds 1]
                                          [--set k=v ...] [--json F]
    .venv/bin/python tools/mixed_bench.py --report F [F ...]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_llm.summarize.pipeline import MAP_PROMPT  # noqa: E402
from tools.bench import free_port, start  # noqa: E402

QUESTIONS = [
    "What is the capital of France?",
    "Name a colour.",
    "What is 2 + 2?",
    "Say hello.",
    "Name an animal.",
    "What day comes after Monday?",
    "Name a fruit.",
    "What is water made of?",
]
BG_TOKENS, VISITOR_TOKENS, VISITOR_START_S = 64, 16, 1.0


def document(k: int, sentences: int = 142) -> str:  # about 3,000 tokens
    return " ".join(
        f"Report {k}.{i}: station {(i * 7 + k) % 31} logged {(i * 13 + k) % 97} litres and {(i * 3 + k) % 11} visitors."
        for i in range(sentences)
    )


def background_prompt(k: int) -> str:
    """What a summary job sends for one chunk (the pipeline's map prompt): the background work."""
    return MAP_PROMPT.format(text=document(k))


def post(port: int, body: dict, stream: bool) -> tuple[float | None, float]:
    """(seconds to the first content, seconds to the end), from the request's start."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    t0 = time.monotonic()
    conn.request(
        "POST", "/v1/chat/completions", json.dumps({**body, "stream": stream}), {"Content-Type": "application/json"}
    )
    resp = conn.getresponse()
    first = None
    if resp.status != 200:  # a refused request must not make a round look faster (it once did: a 503)
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    if stream:
        for line in resp:
            if line.startswith(b"data: {") and first is None:
                delta = json.loads(line[6:])["choices"]
                if delta and delta[0]["delta"].get("content"):
                    first = time.monotonic() - t0
    else:
        resp.read()
    conn.close()
    return first, time.monotonic() - t0


def workload(port: int, questions: int, priority: dict) -> dict:
    bg_end: list[float] = []
    failed: list[str] = []
    t0 = time.monotonic()

    def background(k: int):
        try:
            post(
                port,
                {
                    "messages": [{"role": "user", "content": background_prompt(k)}],
                    "max_tokens": BG_TOKENS,
                    "temperature": 0,
                    **priority,
                },
                stream=False,
            )
        except Exception as e:  # the round is void: its wall would leave this request out
            failed.append(f"background request {k}: {e}")
            return
        bg_end.append(time.monotonic() - t0)

    threads = [threading.Thread(target=background, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(VISITOR_START_S)
    ttfts = []
    for q in QUESTIONS[:questions]:
        first, _ = post(
            port,
            {"messages": [{"role": "user", "content": q}], "max_tokens": VISITOR_TOKENS, "temperature": 0},
            stream=True,
        )
        ttfts.append(first)
    for t in threads:
        t.join()
    if failed:
        raise RuntimeError("; ".join(failed))
    if not ttfts:  # --questions 0: the background alone (each engine's prefill-heavy speed)
        return {
            "visitor_ttft_worst_s": None,
            "visitor_ttft_median_s": None,
            "visitor_ttfts_s": [],
            "background_wall_s": max(bg_end),
        }
    return {
        "visitor_ttft_worst_s": max(ttfts),
        "visitor_ttft_median_s": statistics.median(ttfts),
        "visitor_ttfts_s": [round(t, 3) for t in ttfts],
        "background_wall_s": max(bg_end),
    }


def serve_ours(port: int, overrides: list[str]) -> subprocess.Popen:
    # llama-server's context per slot; the rest is the default plan (model.kv_layout = auto)
    cmd = [
        sys.executable,
        "-m",
        "edge_llm",
        "serve",
        "--port",
        str(port),
        "--set=limits.max_seq_len=4096",
        *[f"--set={o}" for o in overrides],
    ]
    return start(cmd, port, "/health")


def serve_llama(port: int, binary: str, threads: int, extra: str = "") -> subprocess.Popen:
    from edge_llm.config import embedded_model_path

    cmd = [
        binary,
        "-m",
        str(embedded_model_path()),
        "--port",
        str(port),
        "-c",
        "20480",
        "-np",
        "5",
        "-t",
        str(threads),
        "--no-webui",
        *extra.split(),
    ]
    return start(cmd, port, "/health")


def plan(port: int) -> dict:
    """Ours: the layout, batch and KV the planner chose (llama-server has no /api/plan)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/api/plan")
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        return {}
    p = json.loads(body)
    # chat_slowdown: the plan's (from this start's calibration, where the config leaves it to the plan)
    return {k: p.get(k) for k in ("kv_layout", "max_batch_size", "kv_cache_tokens", "chat_slowdown")}


def run(name: str, proc: subprocess.Popen, port: int, questions: int, priority: dict) -> dict:
    try:
        post(port, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}, stream=False)  # warm up
        return {"target": name, **plan(port), **workload(port, questions, priority)}
    finally:
        proc.terminate()
        proc.wait(60)


def round_ratios(results: list[dict]) -> list[float]:
    """Ours / llama-server per round, from a --json file's results (a round is the two results
    that carry its number; a round without both targets is skipped)."""
    rounds: dict[int, dict[str, float]] = {}
    for r in results:
        who = "theirs" if r["target"] == "llama-server" else "ours"
        rounds.setdefault(r["round"], {})[who] = r["background_wall_s"]
    return [r["ours"] / r["theirs"] for _, r in sorted(rounds.items()) if len(r) == 2]


def pooled(ratios: list[float], draws: int = 20000, seed: int = 0) -> dict:
    """Geometric mean of the ratios and a 95% percentile-bootstrap interval for it (resampling
    rounds; seeded, so a report reads the same twice)."""
    if not ratios:
        raise ValueError("no complete rounds to pool")
    logs = [math.log(r) for r in ratios]
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(logs, k=len(logs))) for _ in range(draws))
    return {
        "rounds": len(ratios),
        "ours_faster": sum(r < 1 for r in ratios),
        "median": statistics.median(ratios),
        "geomean": math.exp(statistics.fmean(logs)),
        "ci95": (math.exp(means[int(0.025 * draws)]), math.exp(means[int(0.975 * draws) - 1])),
    }


def print_pooled(ratios: list[float]) -> None:
    p = pooled(ratios)
    print(
        f"pooled {p['rounds']} rounds: ours faster in {p['ours_faster']}, median {p['median']:.3f}, "
        f"geometric mean {p['geomean']:.3f} (95% bootstrap interval {p['ci95'][0]:.3f}-{p['ci95'][1]:.3f})"
    )


def report(paths: list[str]) -> None:
    ratios = []
    for path in paths:
        mine = round_ratios(json.loads(Path(path).read_text()))
        print(f"{path}: {' '.join(f'{r:.3f}' for r in mine)}")
        ratios += mine
    print_pooled(ratios)


def main() -> None:
    import os

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-server", help="llama-server binary (tools/build_llama_server.sh prints it)")
    ap.add_argument("--llama-args", default="", help='more llama-server flags, e.g. "-ngl 99" on a GPU')
    ap.add_argument("--questions", type=int, default=6)
    ap.add_argument(
        "--unmarked",
        action="store_true",
        help='send the long prompts to ours without "priority": "background" (as any OpenAI client)',
    )
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config for ours")
    ap.add_argument("--rounds", type=int, default=1, help="run both targets this many times, alternating")
    ap.add_argument("--json", help="append the results to this file")
    ap.add_argument("--report", nargs="+", metavar="JSON", help="pool the rounds of these --json files; run nothing")
    args = ap.parse_args()
    if args.report:
        try:
            report(args.report)
        except (OSError, ValueError, KeyError, TypeError) as e:  # not a --json file of this tool
            ap.error(f"--report: {e!r}")
        return
    if args.rounds < 1 or args.questions < 0:
        ap.error("--rounds must be at least 1 and --questions at least 0")
    label = "edge-llm" + (f" ({', '.join(args.set)})" if args.set else "")
    threads = len(os.sched_getaffinity(0))

    def ours() -> dict:
        port = free_port()
        marking = {} if args.unmarked else {"priority": "background"}
        return run(
            label + (" unmarked" if args.unmarked else ""), serve_ours(port, args.set), port, args.questions, marking
        )

    def theirs() -> dict:
        port = free_port()
        proc = serve_llama(port, args.llama_server, threads, args.llama_args)
        return run("llama-server", proc, port, args.questions, {})

    results = []
    for k in range(args.rounds):
        targets = [ours, theirs] if args.llama_server else [ours]
        if k % 2:
            targets.reverse()
        pair = [{"round": k + 1, **target()} for target in targets]
        for r in pair:
            worst, median = (
                float("nan") if r[key] is None else r[key] for key in ("visitor_ttft_worst_s", "visitor_ttft_median_s")
            )
            print(
                f"round {k + 1} {r['target']:<52} TTFT worst {worst:6.2f} s  median "
                f"{median:6.2f} s  background {r['background_wall_s']:6.1f} s  "
                f"{r['visitor_ttfts_s']} {r.get('kv_layout', '')}"
                + (f" chat_slowdown {r['chat_slowdown']}" if r.get("chat_slowdown") is not None else ""),
                flush=True,
            )
        results += pair
    ratios = round_ratios(results)
    if ratios:
        print(f"background wall, ours / llama-server: {' '.join(f'{r:.3f}' for r in ratios)}")
        print_pooled(ratios)
    if args.json:
        prior = json.loads(Path(args.json).read_text()) if Path(args.json).exists() else []
        Path(args.json).write_text(json.dumps(prior + results, indent=2))


if __name__ == "__main__":
    main()
