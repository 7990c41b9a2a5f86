"""Memory pressure: the real daemon in a memory-limited cgroup under a flood of long prompts,
and the live low-water / critical guard."""

import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import Http

from edge_llm.pressure import PressureGuard
from edge_llm.telemetry.snapshot import Snapshot

CGROUP_V1 = Path("/sys/fs/cgroup/memory")
LIMIT = 450_000_000  # bytes: room for Python, the model and a small planned KV cache


def make_cgroup(name: str) -> Path | None:
    """A memory-limited cgroup (v1 here; v2 where unified); None when we may not make one."""
    for parent, limit_file in ((CGROUP_V1, "memory.limit_in_bytes"), (Path("/sys/fs/cgroup"), "memory.max")):
        if not (parent / "cgroup.procs").exists() or not os.access(parent, os.W_OK):
            continue
        try:
            path = parent / name
            path.mkdir(exist_ok=True)
            (path / limit_file).write_text(str(LIMIT))
            return path
        except OSError:
            continue
    return None


def oom_kills(cg: Path) -> int:
    text = (cg / "memory.oom_control").read_text() if (cg / "memory.oom_control").exists() \
        else (cg / "memory.events").read_text()
    m = re.search(r"oom_kill (\d+)", text)
    return int(m.group(1)) if m else 0


@pytest.fixture()
def limited_daemon():
    cg = make_cgroup(f"edge-llm-test-{os.getpid()}")
    if cg is None:
        pytest.skip("cannot create a memory cgroup here (needs root and a writable cgroup fs)")
    cmd = (f"echo $$ > {cg}/cgroup.procs && exec {sys.executable} -m edge_llm serve --port 0 "
           "--set planner.reserve_mb=160 --set planner.low_water_mb=48 --set planner.critical_mb=24 "
           "--set limits.max_queue=8 --set limits.max_output_len=64 "
           # memory, not measured speed, must bound the batch here: a cap above what memory allows
           "--set limits.max_batch_size=8")
    proc = subprocess.Popen(["sh", "-c", cmd], stderr=subprocess.PIPE, text=True)
    log, port = [], None
    for line in proc.stderr:
        log.append(line)
        m = re.search(r"ready: http://127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()
    assert port, "".join(log)
    yield proc, Http(port), cg, log
    proc.terminate()
    proc.wait(60)
    deadline = time.monotonic() + 30  # the kernel can refuse rmdir for a moment after the last task left
    while True:
        try:
            cg.rmdir()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_flood_in_a_memory_limited_cgroup(limited_daemon):
    proc, http, cg, log = limited_daemon
    plan = http.get("/api/plan").json()
    assert plan["available_bytes"] < LIMIT  # planned for the cgroup, not the host
    assert plan["predicted_resident_bytes"] < LIMIT
    long_prompt = "Summarize this report. " + " ".join(f"Line {i}: the pump ran at {i % 90} percent." for i in
                                                       range(40))
    too_long = "word " * (plan["max_input_len"] + 100)

    def one(i):
        prompt = too_long if i % 10 == 9 else long_prompt + f" (copy {i})"
        r = http.post("/v1/completions", {"prompt": prompt, "max_tokens": 64, "temperature": 0.7, "seed": i})
        return r.status_code, r.headers.get("retry-after")

    with ThreadPoolExecutor(30) as pool:
        results = list(pool.map(one, range(30)))
    codes = [c for c, _ in results]
    assert set(codes) <= {200, 400, 429}, codes  # every request answered: done, refused, or too long
    assert codes.count(200) >= 5 and codes.count(400) == 3 and codes.count(429) >= 1
    assert all(ra for c, ra in results if c == 429)
    assert proc.poll() is None, "the daemon died"
    assert oom_kills(cg) == 0
    assert http.get("/health").status_code == 200
    stats = http.get("/health").json()
    usage_file = "memory.max_usage_in_bytes" if (cg / "memory.max_usage_in_bytes").exists() else "memory.peak"
    peak = int((cg / usage_file).read_text())
    print(f"\nplan: kv {plan['kv_cache_tokens']} tokens, batch {plan['max_batch_size']}; "
          f"peak KV reserved {stats['kv_tokens_reserved_peak']} "
          f"({100 * stats['kv_tokens_reserved_peak'] / plan['kv_cache_tokens']:.0f}%); "
          f"cgroup peak {peak >> 20} MiB of {LIMIT >> 20}; codes {sorted(set(codes))}: "
          f"{[codes.count(c) for c in sorted(set(codes))]}")
    assert peak <= LIMIT
    assert stats["kv_tokens_reserved_peak"] >= 0.8 * plan["kv_cache_tokens"]


class EngineProbe:
    """Records what the guard asks of the engine (the guard's only collaborator)."""

    def __init__(self, running=2):
        from edge_llm.engine.metrics import EngineMetrics
        self.metrics, self.num_running, self.calls = EngineMetrics(), running, []

    def set_admission_paused(self, paused):
        self.calls.append(("pause", paused))

    def preempt_newest(self, n, message):
        self.calls.append(("preempt", n))


def snap(avail_mib: int) -> Snapshot:
    return Snapshot("test", ram_total_bytes=8 << 30, ram_available_bytes=avail_mib << 20, ram_used_bytes=0)


def test_pressure_guard_pauses_preempts_and_resumes_with_hysteresis():
    engine = EngineProbe()
    guard = PressureGuard(engine, low_water_bytes=512 << 20, critical_bytes=256 << 20)
    for mib in (900, 500, 400, 200, 550, 700):
        guard(snap(mib))
    assert engine.calls == [("pause", True), ("preempt", 1), ("pause", False)]
    assert (guard.num_pauses, guard.num_preemptions) == (1, 1)
    assert engine.metrics.ram_available._value.get() == 700 << 20
