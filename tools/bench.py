"""Decode speed and TTFT: the raw llama.cpp batch loop (the ceiling), our engine in process,
and the daemon over HTTP (a separate process), at several concurrencies; optionally
llama-cpp-python's own server. Same prompt, same length, greedy.

    .venv/bin/python tools/bench.py [--concurrency 1 4 8] [--tokens 128] [--llama-server]
    .venv/bin/python tools/bench.py --targets http native --native $(tools/build_llama_server.sh) \
        --native-args "-ngl 99" --rounds 3      # ours against llama.cpp's own server, alternating
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

PROMPT = "Once upon a time, in a small village by the sea, there lived"


@dataclass
class Run:
    ttft_s: float
    tokens: int
    decode_s: float  # first token to last


def summarize(name: str, n: int, runs: list[Run], wall_s: float) -> dict:
    ttfts = sorted(r.ttft_s for r in runs)
    tpot = [r.decode_s / (r.tokens - 1) for r in runs if r.tokens > 1]
    return {
        "target": name,
        "concurrency": n,
        "aggregate_tok_s": sum(r.tokens for r in runs) / wall_s,
        "per_stream_tok_s": statistics.mean(1 / t for t in tpot),
        "ttft_p50_ms": 1000 * ttfts[len(ttfts) // 2],
        "ttft_p99_ms": 1000 * ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.99))],
        "tpot_ms": 1000 * statistics.mean(tpot),
        "tokens": sum(r.tokens for r in runs),
    }


def concurrent(n: int, fn) -> tuple[list[Run], float]:
    out: list[Run] = [None] * n
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, fn(i))) for i in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out, time.monotonic() - t0


# -- targets ------------------------------------------------------------------------------------
def bench_lowlevel(n: int, tokens: int) -> dict:
    """n sequences decoded together through llama_batch with no scheduler and no HTTP."""
    import llama_cpp as L

    from edge_llm.config import embedded_model_path
    from edge_llm.engine.backends.base import ContextShape
    from edge_llm.engine.backends.llamacpp import LlamaCppBackend

    be = LlamaCppBackend(embedded_model_path(), n_gpu_layers=-1)  # a CPU build ignores the offload
    be.create_context(ContextShape(4096, n, 512))
    prompt = be.tokenize(PROMPT, True)
    b, ctx = be.contexts[0].batch, be.ctx
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())

    def decode(items):
        b.n_tokens = len(items)
        for i, (tok, pos, seq, lg) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, lg
            b.seq_id[i][0] = seq
        assert L.llama_decode(ctx, b) == 0

    t0 = time.monotonic()
    decode([(t, p, s, p == len(prompt) - 1) for s in range(n) for p, t in enumerate(prompt)])
    last = [L.llama_sampler_sample(chain, ctx, s * len(prompt) + len(prompt) - 1) for s in range(n)]
    ttft = time.monotonic() - t0
    for step in range(tokens - 1):
        decode([(last[s], len(prompt) + step, s, True) for s in range(n)])
        last = [L.llama_sampler_sample(chain, ctx, s) for s in range(n)]
    wall = time.monotonic() - t0
    return summarize("lowlevel", n, [Run(ttft, tokens, wall - ttft)] * n, wall)


def bench_inproc(engine, n: int, tokens: int) -> dict:
    from edge_llm.engine.request import SamplingParams

    prompt = engine.backend.tokenize(PROMPT, True)

    def one(i):
        req, _ = engine.make_request(prompt, SamplingParams(temperature=0.0), tokens)
        first = None
        for _out in engine.generate(req):
            first = first or time.monotonic()
        return Run(req.first_token_time - req.arrival_time, len(req.output_tokens), time.monotonic() - first)

    engine.call(engine.clear_prefix_cache)  # as a fresh daemon: the first stream prefills
    runs, wall = concurrent(n, one)
    return summarize("in-process", n, runs, wall)


def sse_stream(port: int, path: str, body: dict) -> Run:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.monotonic()
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    first = last = None
    count = usage = 0
    for line in resp:
        if not line.startswith(b"data: {"):
            continue
        data = json.loads(line[6:])
        if data.get("usage"):
            usage = data["usage"]["completion_tokens"]
        if data.get("choices") and data["choices"][0].get("text"):
            last = time.monotonic()
            first = first or last
            count += 1
    conn.close()
    return Run(first - t0, usage or count, last - first)


def bench_http(port: int, n: int, tokens: int, name: str, extra: dict | None = None) -> dict:
    body = {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": True, **(extra or {})}
    runs, wall = concurrent(n, lambda i: sse_stream(port, "/v1/completions", body))
    return summarize(name, n, runs, wall)


WARMUP_TOKENS = 16  # a short unmeasured run per concurrency before the measured ones, for every server


# -- servers ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int, health: str) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", health)
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{cmd[0]} did not start")


def run_target(
    target: str,
    concurrency: list[int],
    tokens: int,
    native: str = "",
    native_args: str = "",
    sets: list[str] | None = None,
) -> list[dict]:
    """One target, in this process (each target gets a process of its own: ggml's OpenMP
    team belongs to the thread that first decodes, and a second team would contend)."""
    limits = [("limits.max_batch_size", max(concurrency)), ("limits.max_output_len", tokens)]
    if target == "lowlevel":
        return [bench_lowlevel(n, tokens) for n in concurrency]
    if target == "in-process":
        from edge_llm import appliance, config
        from edge_llm.telemetry.host import HostSource

        _, _, engine = appliance.build_engine(config.load(overrides=limits), HostSource().read())
        try:
            return [bench_inproc(engine, n, tokens) for n in concurrency]
        finally:
            engine.stop()
    port = free_port()
    if target == "http":
        cmd = [
            sys.executable,
            "-m",
            "edge_llm",
            "serve",
            "--port",
            str(port),
            *[f"--set={k}={v}" for k, v in limits],
            *[f"--set={o}" for o in sets or []],
        ]
        proc, name, extra = start(cmd, port, "/health"), "edge-llm http", {"stream_options": {"include_usage": True}}
    elif target == "native":  # llama.cpp's own server, a slot per stream, 4096 tokens each
        from edge_llm.config import embedded_model_path

        n = max(concurrency)
        cmd = [
            native,
            "-m",
            str(embedded_model_path()),
            "--port",
            str(port),
            "-c",
            str(4096 * n),
            "-np",
            str(n),
            "-t",
            str(len(os.sched_getaffinity(0))),
            "--no-webui",
            *native_args.split(),
        ]
        proc, name, extra = start(cmd, port, "/health"), "llama-server", {}
    else:
        from edge_llm.config import embedded_model_path

        cmd = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(embedded_model_path()),
            "--port",
            str(port),
            "--n_ctx",
            "4096",
            "--n_threads",
            str(len(os.sched_getaffinity(0))),
        ]
        proc, name, extra = start(cmd, port, "/v1/models"), "llama_cpp.server", {}
    try:
        for n in concurrency:  # unmeasured: each batch size's first steps (a GPU captures its graphs), either server
            bench_http(port, n, WARMUP_TOKENS, name, extra)
        if target != "http":
            return [bench_http(port, n, tokens, name, extra) for n in concurrency]
        results = []
        for n in concurrency:  # ours: the engine's own step times over the run, beside the client's view
            before = engine_stats(port)
            results.append({**bench_http(port, n, tokens, name, extra), **engine_delta(before, engine_stats(port))})
        return results
    finally:
        proc.terminate()
        proc.wait(30)


def engine_stats(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/health")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def engine_delta(before: dict, after: dict) -> dict:
    """What the engine thread spent a step over a run: in llama.cpp's steps (launch to tokens) and
    on the host around them (schedule, apply, publish; GIL waits included): against
    tools/profile_step.py's figures, what serving over HTTP adds inside the engine. With steps
    launched ahead (a GPU) a step's time runs from its launch to its tokens and holds the host's
    work done meanwhile, so "host" counts only steps that were not. Nothing for an engine that
    does not report step times (TensorRT-LLM's)."""
    if "step_time_s" not in before or "step_time_s" not in after:
        return {}
    steps = after["steps"] - before["steps"]
    t0, t1 = before["step_time_s"], after["step_time_s"]
    device = sum(t1[k] - t0[k] for k in ("visitor", "shared", "background"))
    return {
        "engine_steps": steps,
        "engine_step_ms": round(1000 * device / max(steps, 1), 3),
        "engine_host_ms": round(1000 * (t1["host"] - t0["host"]) / max(steps, 1), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--llama-server", action="store_true", help="also llama-cpp-python's server (needs its extras)")
    ap.add_argument(
        "--targets",
        nargs="+",
        choices=["lowlevel", "in-process", "http", "llama-server", "native"],
        help="the targets to run (default: lowlevel in-process http)",
    )
    ap.add_argument("--native", default="", help="llama.cpp's llama-server binary (tools/build_llama_server.sh)")
    ap.add_argument("--native-args", default="", help='more llama-server flags, e.g. "-ngl 99"')
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config for ours")
    ap.add_argument("--rounds", type=int, default=1, help="run the targets this many times, order alternating")
    ap.add_argument("--target", help="run one target and print its results as JSON (used by the full run)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.target:
        print(
            json.dumps(run_target(args.target, args.concurrency, args.tokens, args.native, args.native_args, args.set))
        )
        return
    targets = args.targets or ["lowlevel", "in-process", "http"] + (["llama-server"] if args.llama_server else [])
    if "native" in targets and not args.native:
        ap.error("--targets native needs --native PATH")
    results = []
    for rnd in range(args.rounds):
        for target in targets if rnd % 2 == 0 else targets[::-1]:
            cmd = [
                sys.executable,
                __file__,
                "--target",
                target,
                "--tokens",
                str(args.tokens),
                "--native",
                args.native,
                f"--native-args={args.native_args}",
                *[f"--set={o}" for o in args.set],
                "--concurrency",
                *map(str, args.concurrency),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            results += [{**r, "round": rnd} for r in json.loads(out.strip().splitlines()[-1])]
    print(
        f"{'target':<18}{'round':>6}{'conc':>5}{'agg tok/s':>11}{'stream tok/s':>14}{'TTFT p50':>10}"
        f"{'p99 ms':>8}{'TPOT ms':>9}"
    )
    for r in results:
        print(
            f"{r['target']:<18}{r['round']:>6}{r['concurrency']:>5}{r['aggregate_tok_s']:>11.1f}"
            f"{r['per_stream_tok_s']:>14.1f}{r['ttft_p50_ms']:>10.0f}{r['ttft_p99_ms']:>8.0f}{r['tpot_ms']:>9.2f}"
        )
    for r in results:
        if "engine_steps" in r:
            print(
                f"  engine, round {r['round']}, {r['concurrency']} streams: {r['engine_steps']} steps, "
                f"{r['engine_step_ms']:.3f} ms in llama.cpp + {r['engine_host_ms']:.3f} ms on the host a step"
            )
    for line in ratio_lines(results, "edge-llm http", "llama-server"):
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def ratio_lines(results: list[dict], ours: str, theirs: str) -> list[str]:
    """Aggregate tok/s, ours / theirs, per concurrency, each round paired with the same round."""
    by = {(r["target"], r["concurrency"], r.get("round", 0)): r["aggregate_tok_s"] for r in results}
    lines = []
    for n in sorted({r["concurrency"] for r in results}):
        ratios = [
            by[(ours, n, k)] / by[(theirs, n, k)]
            for (t, c, k) in sorted(by)
            if t == ours and c == n and (theirs, n, k) in by
        ]
        if ratios:
            lines.append(f"{n:>3} streams, {ours} / {theirs}: " + " ".join(f"{x:.2f}" for x in ratios))
    return lines


if __name__ == "__main__":
    main()
