"""`edge-llm bench --energy-s S` (issue 24's goal on an NVIDIA GPU): `batch` streams of requests
kept busy for S seconds, then the sum of every request's joules (the engine's meter, shared by
tokens) against NVML's total energy counter read by this module before and after the run.

The reference is nvidia-ml-py's pynvml.nvmlDeviceGetTotalEnergyConsumption (a c_uint64 of mJ
since the driver loaded; NVMLError_NotSupported before Volta), read here directly at the run's
two ends (NvmlCounter), apart from the meter's source (which samples the counter on a thread of
its own and extrapolates between samples). What the meter leaves out is the time the engine was not in a step
(idle gaps of more than energy.CARRY_S, the run's first and last moments): `metered_s` against
`wall_s` and the idle power (nvmlDeviceGetPowerUsage, mW) say how much that can be."""

from __future__ import annotations

import json
import threading
import time

from edge_llm.engine.request import Priority, SamplingParams
from edge_llm.telemetry.energy import Reading


def chat_tokens(backend, text: str) -> list[int]:
    """A user message as the model's chat template renders it, tokenized."""
    rendered = backend.render_chat([{"role": "user", "content": text}])
    return backend.tokenize(rendered, backend.chat_add_special(rendered))


TOLERANCE = 0.10  # issue 24's goal: within 10%


class NvmlCounter:
    """NVML's total energy counter of one GPU, read when asked: no thread, no extrapolation."""

    def __init__(self, index: int = 0):
        import pynvml  # nvidia-ml-py; ImportError without it

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.read()  # NVMLError_NotSupported before Volta

    def read(self) -> Reading:
        return Reading(time.monotonic(), energy_j=self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1000)

    def power_w(self) -> float:
        return self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000  # mW


def open_reference(index: int = 0) -> tuple[NvmlCounter | None, str | None]:
    """NVML's energy counter of GPU `index`, or (None, why not)."""
    try:
        return NvmlCounter(index), None
    except ImportError:
        return None, "no pynvml here (pip install nvidia-ml-py)"
    except Exception as e:  # NVMLError_NotSupported, _LibraryNotFound, _DriverNotLoaded, _InvalidArgument
        if type(e).__name__ == "NVMLError_NotSupported":
            return None, "nvmlDeviceGetTotalEnergyConsumption: NVMLError_NotSupported on this GPU (before Volta)"
        return None, f"NVML unavailable: {type(e).__name__}: {e}"


def compare(per_request_j: float, reference_j: float) -> dict:
    """The goal's figures: both sums, their ratio, and whether it is within 10%."""
    ratio = per_request_j / reference_j if reference_j > 0 else None
    ok = ratio is not None and abs(ratio - 1) <= TOLERANCE
    return {
        "per_request_joules": round(per_request_j, 3),
        "nvml_counter_joules": round(reference_j, 3),
        "ratio": None if ratio is None else round(ratio, 4),
        "within_10_percent": ok,
        "status": "within 10%" if ok else "NOT within 10%",
    }


def sustained(engine, prompts, max_tokens: int, duration_s: float) -> list:
    """One thread per prompt list, each submitting its next request when the last one finishes,
    until duration_s has passed; returns every request (all finished). Stream i asks for
    max_tokens less i/(2 streams) of it: streams end at different steps, so one's next request
    arrives while the others decode (the engine is never idle between them, as under real load)."""
    reqs, lock = [], threading.Lock()
    stop_at = time.monotonic() + duration_s

    def stream(i: int, mine: list[list[int]]) -> None:
        n, tokens = 0, max_tokens - i * max_tokens // (2 * len(prompts))
        while time.monotonic() < stop_at:
            req = engine.make_request(
                mine[n % len(mine)], SamplingParams(temperature=0.0), tokens, Priority.INTERACTIVE
            )[0]
            with lock:
                reqs.append(req)
            for _ in engine.generate(req):
                pass
            n += 1

    threads = [threading.Thread(target=stream, args=(i, p)) for i, p in enumerate(prompts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return reqs


def check(engine, reference, batch: int, duration_s: float, max_tokens: int) -> dict:
    """The sustained run, with the reference counter read just before and just after it."""
    meter = engine.energy
    prompts = [
        [
            chat_tokens(
                engine.backend,
                f"Story {i}.{k}: write a long story about a lighthouse keeper and the ships he saw, in many chapters.",
            )
            for k in range(4)
        ]
        for i in range(batch)
    ]
    idle_w = reference.power_w()
    total0, metered0 = meter.total_j, meter.metered_s
    start = reference.read()
    reqs = sustained(engine, prompts, max_tokens, duration_s)
    end = reference.read()
    failed = [r.request_id for r in reqs if r.finish_reason not in ("stop", "length")]
    if failed:
        raise RuntimeError(f"energy check requests failed: {failed}")
    per_request = [meter.joules(r) for r in reqs]
    wall = end.time_s - start.time_s
    out = {
        "batch": batch,
        "requests": len(reqs),
        "wall_s": round(wall, 3),
        "energy_source": meter.source_name,
        "metered_s": round(meter.metered_s - metered0, 3),
        "metered_joules": round(meter.total_j - total0, 3),
        "idle_power_w": round(idle_w, 1),
        "generated_tokens": sum(len(r.output_tokens) for r in reqs),
    }
    if None in per_request:
        return {**out, "status": f"not run: the meter has no source ({meter.disabled or 'unavailable'})"}
    reference_j = end.energy_j - start.energy_j
    out.update(compare(sum(per_request), reference_j))
    out["generated_tokens_per_joule"] = round(out["generated_tokens"] / reference_j, 3) if reference_j > 0 else None
    return out


def report(r: dict) -> str:
    lines = [
        f"  {r['requests']} requests in {r['wall_s']} s, {r['batch']} streams; meter ({r['energy_source']}) "
        f"in steps {r['metered_s']} s; idle power {r['idle_power_w']} W before the run"
    ]
    if "ratio" in r:
        lines.append(
            f"  per-request sum {r['per_request_joules']} J, NVML energy counter difference "
            f"{r['nvml_counter_joules']} J, ratio {r['ratio']}: {r['status']}"
        )
    else:
        lines.append(f"  {r['status']}")
    return "\n".join(lines)


def run(cfg, batch: int, duration_s: float, max_tokens: int, json_path: str = "", gpu_index: int = 0) -> int:
    """In process: the daemon's engine and meter; 0 only when the check ran and agreed within 10%."""
    from edge_llm import appliance, telemetry
    from edge_llm.telemetry import heat

    reference, why = open_reference(gpu_index)
    result: dict = {"status": f"not run: {why}"} if why else {}
    snap = None
    if reference is not None:
        snap = telemetry.Sampler(
            telemetry.open_sources(cfg.daemon.telemetry_interval_s), cfg.daemon.telemetry_interval_s
        ).read()
        backend, plan, engine = appliance.build_engine(cfg, snap)
        try:
            heat.attach_energy(engine, backend, snap)
            if not getattr(backend, "gpu_offload", False):
                result = {
                    "status": "not run: the model runs on the CPU (a CPU build of llama.cpp); NVML's "
                    "counter measures the GPU"
                }
            else:
                batch = min(batch, plan.max_batch_size)
                print(
                    f"edge-llm bench --energy-s {duration_s:g}: {cfg.model_id} on {snap.gpu_name}, batch {batch}, "
                    f"meter {engine.energy.source_name}, reference NVML's total energy counter"
                )
                result = check(engine, reference, batch, duration_s, max_tokens)
        finally:
            engine.stop()
    print(report(result) if "requests" in result else f"  energy check {result['status']}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(
                {
                    "model": cfg.model_id,
                    "device": getattr(snap, "gpu_name", None),
                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "goal": "per-request "
                    "joules summed within 10% of NVML's energy counter difference over the run (issue 24)",
                    "result": result,
                },
                f,
                indent=1,
            )
    return 0 if result.get("within_10_percent") else 1
