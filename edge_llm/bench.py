"""`edge-llm bench` (issue 24): prefill and decode rates and tokens per joule on this device, the
same engine the daemon runs, in process. On a Jetson it can walk the nvpmodel power modes
(`--power-modes all` or `0,2`: the modes /etc/nvpmodel.conf lists) and record each.

Energy comes from the engine's meter (telemetry/energy.py). The run also checks the meter: the
sum of every request's joules against the source's own difference over the run (issue 24's goal:
within 10% on an NVIDIA GPU). Only a counter (NVML's total energy, RAPL) makes that check
independent; with a power reading (jtop) it is printed but says so. Where llama.cpp runs on an
NVIDIA GPU, the difference is NVML's energy counter read directly (bench_energy.NvmlCounter), not
the meter's sampled source; `--energy-s` is the longer, sustained form of the same check.

nvpmodel's CLI, as jetson-stats 4.2.12 (jtop/core/nvpmodel.py) drives it: `nvpmodel -q` prints
"NV Power Mode: <name>" and the id on the next line; `nvpmodel -m <id>` sets a mode and prints
"NVPM ERROR ..." when it cannot. A mode that needs a reboot asks for one on stdin: we never
answer (stdin is /dev/null), so such a mode does not take effect and is reported as skipped."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

from edge_llm.bench_energy import chat_tokens
from edge_llm.engine.request import Priority, SamplingParams

POWER_MODEL_RE = re.compile(r"<\s*POWER_MODEL\s+ID=(?P<id>\d+)\s+NAME=(?P<name>[^\s>]+)\s*>")
PM_DEFAULT_RE = re.compile(r"<\s*PM_CONFIG\s+DEFAULT=(?P<id>\d+)\s*>")
NV_POWER_MODE_RE = re.compile(r"NV Power Mode: (?P<name>\S+)")
NVPMODEL_TIMEOUT_S = 20.0
TOLERANCE = 0.10  # issue 24's goal: per-request sum within 10% of the counter's difference
FILLER = (
    "The lighthouse keeper wrote down the weather, the ships that passed and the state of the lamp "
    "every hour of the night, and in the morning he read it all again. "
)


class BenchError(ValueError):
    """What stops a bench before it runs: power modes without nvpmodel, an unknown mode, an
    output file that cannot be written."""


def check_output(path: str) -> None:
    """BenchError unless the results can be written to path (checked before minutes of running)."""
    if not path:
        return
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        raise BenchError(f"--json {path}: is a directory")
    if not folder.is_dir():
        raise BenchError(f"--json {path}: no directory {folder}")
    if not os.access(target if target.exists() else folder, os.W_OK):
        raise BenchError(f"--json {path}: not writable")


# -- nvpmodel ----------------------------------------------------------------------------------
def read_modes(conf: str, wanted: str) -> list[tuple[int, str]]:
    """The power modes asked for ('all' or ids), checked against nvpmodel.conf; BenchError where
    there is no nvpmodel (not a Jetson) or a mode is not listed."""
    try:
        text = Path(conf).read_text()
    except OSError as e:
        raise BenchError(f"power modes need a Jetson's nvpmodel: cannot read {conf} ({e.strerror})") from None
    if shutil.which("nvpmodel") is None:
        raise BenchError("power modes need a Jetson's nvpmodel: no nvpmodel command on PATH")
    modes, _ = parse_nvpmodel_conf(text)
    return select_modes(modes, wanted)


def parse_nvpmodel_conf(text: str) -> tuple[list[tuple[int, str]], int | None]:
    """(modes as (id, name) in file order, the default id) from /etc/nvpmodel.conf."""
    modes = [(int(m["id"]), m["name"]) for m in POWER_MODEL_RE.finditer(text)]
    default = PM_DEFAULT_RE.search(text)
    return modes, int(default["id"]) if default else None


def select_modes(modes: list[tuple[int, str]], wanted: str) -> list[tuple[int, str]]:
    """'all' or a comma list of ids; an id the file does not list is an error."""
    if wanted == "all":
        return modes
    known = dict(modes)
    parts = [x.strip() for x in wanted.split(",") if x.strip()]
    if not parts or not all(x.isascii() and x.isdigit() for x in parts):
        raise BenchError(f"--power-modes {wanted!r}: expected 'all' or ids like 0,2")
    ids = [int(x) for x in parts]
    missing = [i for i in ids if i not in known]
    if missing:
        raise BenchError(f"power modes {missing} are not in nvpmodel.conf (it lists {sorted(known)})")
    return [(i, known[i]) for i in ids]


def _nvpmodel(*args: str) -> str:
    done = subprocess.run(
        ["nvpmodel", *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=NVPMODEL_TIMEOUT_S
    )
    return done.stdout + done.stderr


def query_mode() -> tuple[int, str] | None:
    lines = _nvpmodel("-q").splitlines()
    for i, line in enumerate(lines):
        m = NV_POWER_MODE_RE.search(line)
        if m and i + 1 < len(lines) and lines[i + 1].strip().isdigit():
            return int(lines[i + 1]), m["name"]
    return None


def set_mode(mode_id: int) -> str | None:
    """None when the mode is in effect, else why not."""
    out = _nvpmodel("-m", str(mode_id))
    if "NVPM ERROR" in out:
        return out.strip()
    now = query_mode()
    if now is None or now[0] != mode_id:
        return f"mode {mode_id} did not take effect (a reboot may be needed): {out.strip()[-200:]}"
    return None


def walk_modes(modes: list[tuple[int, str]], measure, settle_s: float = 5.0, log=print) -> list[dict]:
    """measure() in each mode; the mode in effect before is set again at the end."""
    before = query_mode()
    results = []
    try:
        for mode_id, name in modes:
            why = set_mode(mode_id)
            if why:
                log(f"power mode {mode_id} ({name}): skipped: {why}")
                results.append({"power_mode": name, "power_mode_id": mode_id, "skipped": why})
                continue
            time.sleep(settle_s)  # clocks and fans settle
            log(f"power mode {mode_id} ({name}):")
            results.append({"power_mode": name, "power_mode_id": mode_id, **measure()})
    finally:
        if before is not None:
            set_mode(before[0])
    return results


# -- measuring ---------------------------------------------------------------------------------
def _run_all(engine, reqs) -> float:
    """Submit every request at once and wait for all; returns the wall time."""
    t0 = time.monotonic()
    threads = [threading.Thread(target=lambda r=r: [None for _ in engine.generate(r)]) for r in reqs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - t0


def _reading(meter):
    return meter.source.read() if meter.is_available else None


def _phase(engine, meter, prompts: list[list[int]], max_tokens: int, reference=None) -> dict:
    from edge_llm.telemetry.energy import step_joules

    engine.call(engine.clear_prefix_cache)  # every prompt token is computed, none reused
    reqs = [
        engine.make_request(p, SamplingParams(temperature=0.0), max_tokens, Priority.INTERACTIVE)[0] for p in prompts
    ]
    start = reference.read() if reference is not None else _reading(meter)
    wall = _run_all(engine, reqs)
    end = reference.read() if reference is not None else _reading(meter)
    errors = [r.request_id for r in reqs if r.finish_reason not in ("stop", "length")]
    if errors:
        raise RuntimeError(f"bench requests failed: {errors}")
    counter = step_joules(start, end) if start is not None and end is not None else None
    per_request = [meter.joules(r) for r in reqs]
    return {
        "reqs": reqs,
        "wall_s": wall,
        "counter_j": counter,
        "per_request_j": None if None in per_request else sum(per_request),
    }


def _prompts(engine, n: int, num_tokens: int, tag: str) -> list[list[int]]:
    """n prompts of num_tokens each, distinct from their first token (no prefix is shared)."""
    out = []
    for i in range(n):
        tokens = engine.backend.tokenize(f"{tag} {i}. " + FILLER * (num_tokens // 20 + 2), True)
        out.append(tokens[:num_tokens])
    return out


def measure(engine, batch: int, prompt_tokens: int, decode_tokens: int, reference=None) -> dict:
    """reference: a counter read at each phase's ends instead of the meter's source (NvmlCounter)."""
    meter = engine.energy
    pre = _phase(engine, meter, _prompts(engine, batch, prompt_tokens, "Log"), 1, reference)
    dec = _phase(
        engine,
        meter,
        [
            chat_tokens(
                engine.backend,
                f"Story {i}: write a long story about a lighthouse keeper and the ships he saw, in many chapters.",
            )
            for i in range(batch)
        ],
        decode_tokens,
        reference,
    )
    n_prompt = sum(r.num_prompt_tokens for r in pre["reqs"])
    first = min(r.first_token_time for r in dec["reqs"])
    last = max(r.finish_time for r in dec["reqs"])
    n_decode = sum(len(r.output_tokens) - 1 for r in dec["reqs"])
    out = {
        "batch": batch,
        "prefill_tokens": n_prompt,
        "prefill_tok_s": round(n_prompt / pre["wall_s"], 1),
        "decode_tokens": n_decode,
        "decode_tok_s": round(n_decode / max(last - first, 1e-9), 1),
        "energy_source": meter.source_name,
    }
    for name, ph, tokens in (("prefill", pre, n_prompt), ("decode", dec, n_decode + batch)):
        joules = ph["counter_j"]
        out[f"{name}_joules"] = None if joules is None else round(joules, 3)
        out[f"{name}_tokens_per_joule"] = round(tokens / joules, 2) if joules else None
    out["check"] = energy_check([pre, dec], meter, "NVML energy counter" if reference is not None else None)
    return out


def energy_check(phases: list[dict], meter, reference: str | None = None) -> dict:
    """Sum of per-request joules against the source's (or reference's) difference over the same runs."""
    if not meter.is_available:
        return {"status": "not run: energy unavailable on this machine"}
    counter = sum(p["counter_j"] for p in phases if p["counter_j"] is not None)
    per_request = sum(p["per_request_j"] or 0.0 for p in phases)
    ratio = per_request / counter if counter > 0 else None
    independent = reference is not None or meter.source_name in ("rapl", "nvml-energy")
    status = "within 10%" if ratio is not None and abs(ratio - 1) <= TOLERANCE else "NOT within 10%"
    if not independent:
        status += f" (not independent: {meter.source_name} is not NVML's or RAPL's energy counter)"
    out = {
        "counter_joules": round(counter, 3),
        "per_request_joules": round(per_request, 3),
        "ratio": None if ratio is None else round(ratio, 4),
        "status": status,
    }
    return {**out, "reference": reference} if reference else out


def report(result: dict) -> str:
    lines = [
        f"  batch {result['batch']}: prefill {result['prefill_tok_s']} tok/s ({result['prefill_tokens']} tokens), "
        f"decode {result['decode_tok_s']} tok/s ({result['decode_tokens']} tokens)"
    ]
    if result["energy_source"] == "unavailable":
        lines.append("  energy: unavailable (no NVML energy counter, readable RAPL or jtop power here)")
    else:
        lines.append(
            f"  energy ({result['energy_source']}): prefill {result['prefill_joules']} J = "
            f"{result['prefill_tokens_per_joule']} tokens/J, decode {result['decode_joules']} J = "
            f"{result['decode_tokens_per_joule']} tokens/J"
        )
    c = result["check"]
    if "counter_joules" in c:
        lines.append(
            f"  check: per-request sum {c['per_request_joules']} J vs {c.get('reference', 'source')} "
            f"difference {c['counter_joules']} J (ratio {c['ratio']}): {c['status']}"
        )
    else:
        lines.append(f"  check: {c['status']}")
    return "\n".join(lines)


def run(
    cfg,
    batch: int,
    prompt_tokens: int,
    decode_tokens: int,
    power_modes: str = "",
    nvpmodel_conf: str = "/etc/nvpmodel.conf",
    settle_s: float = 5.0,
    json_path: str = "",
) -> int:
    from edge_llm import appliance, telemetry
    from edge_llm.telemetry import heat

    modes = read_modes(nvpmodel_conf, power_modes) if power_modes else None  # before the model loads
    sampler = telemetry.Sampler(
        telemetry.open_sources(cfg.daemon.telemetry_interval_s), cfg.daemon.telemetry_interval_s
    )
    snap = sampler.read()
    backend, plan, engine = appliance.build_engine(cfg, snap)
    try:
        meter = heat.attach_energy(engine, backend, snap)
        sampler.on_snapshot = meter.on_snapshot  # jtop's power reaches the meter each interval
        sampler.start()
        batch = min(batch, plan.max_batch_size)
        prompt_tokens = min(prompt_tokens, plan.max_input_len)
        print(
            f"edge-llm bench: {cfg.model_id}, {backend.__class__.__name__}, plan batch {plan.max_batch_size}, "
            f"energy {meter.source_name}"
        )

        reference = None
        if getattr(backend, "gpu_offload", False) and meter.source_name.startswith("nvml"):
            from edge_llm.bench_energy import open_reference

            reference, why = open_reference()
            print(
                "energy check against NVML's energy counter, read directly"
                if reference
                else f"energy check against the meter's source ({why})"
            )

        def one() -> dict:
            result = measure(engine, batch, prompt_tokens, decode_tokens, reference)
            print(report(result))
            return result

        if modes is not None:
            results = walk_modes(modes, one, settle_s)
        else:
            results = [{"power_mode": snap.nvpmodel, **one()}]
    finally:
        sampler.stop()
        engine.stop()
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"model": cfg.model_id, "device": snap.gpu_name or "cpu", "results": results}, f, indent=1)
    return 0
