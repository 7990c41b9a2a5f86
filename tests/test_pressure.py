"""Memory pressure: the real daemon in a memory-limited cgroup under a flood of long prompts,
and the live low-water / critical guard."""

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import NO_EOS, Http, wait_until

from edge_llm.pressure import PressureGuard
from edge_llm.telemetry import cgroup
from edge_llm.telemetry.snapshot import Snapshot

CGROUP_V1 = Path("/sys/fs/cgroup/memory")
LIMIT = 450_000_000  # bytes: room for Python, the model and a small planned KV cache


def make_cgroup(name: str, limit: int = LIMIT) -> Path | None:
    """A memory-limited cgroup (v1 here; v2 where unified); None when we may not make one."""
    for parent, limit_file in ((CGROUP_V1, "memory.limit_in_bytes"), (Path("/sys/fs/cgroup"), "memory.max")):
        if not (parent / "cgroup.procs").exists() or not os.access(parent, os.W_OK):
            continue
        try:
            path = parent / name
            path.mkdir(exist_ok=True)
            (path / limit_file).write_text(str(limit))
            return path
        except OSError:
            continue
    return None


def remove_cgroup(cg: Path) -> None:
    deadline = time.monotonic() + 30  # the kernel can refuse rmdir for a moment after the last task left
    while cg.exists():
        try:
            cg.rmdir()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def oom_kills(cg: Path) -> int:
    text = (
        (cg / "memory.oom_control").read_text()
        if (cg / "memory.oom_control").exists()
        else (cg / "memory.events").read_text()
    )
    m = re.search(r"oom_kill (\d+)", text)
    return int(m.group(1)) if m else 0


@contextlib.contextmanager
def daemon_in_cgroup(name: str, limit: int, *settings: str):
    """`edge-llm serve` as a child process in a new cgroup of `limit` bytes, ready:
    (process, Http, cgroup path, its log lines). Skips where no cgroup can be made."""
    cg = make_cgroup(name, limit)
    if cg is None:
        pytest.skip("cannot create a memory cgroup here (needs root and a writable cgroup fs)")
    sets = " ".join(f"--set {s}" for s in settings)
    proc = subprocess.Popen(
        ["sh", "-c", f"echo $$ > {cg}/cgroup.procs && exec {sys.executable} -m edge_llm serve --port 0 {sets}"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        log, port = [], None
        for line in proc.stderr:
            log.append(line)
            m = re.search(r"ready: http://127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()
        assert port, "".join(log[-15:])
        yield proc, Http(port), cg, log
    finally:
        proc.terminate()
        proc.wait(60)
        remove_cgroup(cg)


@pytest.fixture()
def limited_daemon():
    with daemon_in_cgroup(
        f"edge-llm-test-{os.getpid()}",
        LIMIT,
        "planner.reserve_mb=160",
        "planner.low_water_mb=48",
        "planner.critical_mb=24",
        "limits.max_queue=8",
        "limits.max_output_len=64",
        # memory, not measured speed, must bound the batch here: a cap above what memory allows
        "limits.max_batch_size=8",
    ) as d:
        yield d


def test_flood_in_a_memory_limited_cgroup(limited_daemon):
    proc, http, cg, log = limited_daemon
    plan = http.get("/api/plan").json()
    assert plan["available_bytes"] < LIMIT  # planned for the cgroup, not the host
    assert plan["predicted_resident_bytes"] < LIMIT
    long_prompt = "Summarize this report. " + " ".join(
        f"Line {i}: the pump ran at {i % 90} percent." for i in range(40)
    )
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
    stats = http.get("/health").json()
    assert stats["status"] == "ready"
    # the plan, not the pressure guard, kept the flood in its memory: admission was never paused
    assert not [line for line in log if "admission paused" in line], "".join(log[-20:])
    print(
        f"\nplan: kv {plan['kv_cache_tokens']} tokens, batch {plan['max_batch_size']}; "
        f"peak KV reserved {stats['kv_tokens_reserved_peak']} "
        f"({100 * stats['kv_tokens_reserved_peak'] / plan['kv_cache_tokens']:.0f}%); "
        f"codes {sorted(set(codes))}: {[codes.count(c) for c in sorted(set(codes))]}"
    )
    assert stats["kv_tokens_reserved_peak"] >= 0.8 * plan["kv_cache_tokens"]


BALLAST = """import sys
held = []
for line in sys.stdin:
    block = bytearray(int(line) << 20)
    memoryview(block)[::4096] = bytes(len(range(0, len(block), 4096)))  # written: resident, not lazy
    held.append(block)
    print("ok", flush=True)
"""


class Ballast:
    """Memory held in a cgroup by a child process (the one the OOM killer would take first)."""

    def __init__(self, cg: Path):
        self.proc = subprocess.Popen(
            [
                "sh",
                "-c",
                f'echo $$ > {cg}/cgroup.procs && echo 1000 > /proc/self/oom_score_adj && exec {sys.executable} -c "$0"',
                BALLAST,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def grow(self, mib: int) -> None:
        self.proc.stdin.write(f"{mib}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "ok\n", "the ballast died"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(30)


def available_mib(pid: int) -> float:
    """RAM available to process pid's cgroup, read now as its telemetry reads it (which lags)."""
    return cgroup.read(f"/proc/{pid}/cgroup").available_bytes / (1 << 20)


def test_pressure_in_a_cgroup_stops_admission_and_ends_nothing(tmp_path):
    """Memory taken by another process in the daemon's cgroup, down past the critical mark while
    a chat streams: new requests get 503 memory_pressure, the chat runs to its end (on llama.cpp,
    ending it would free no memory), and admission comes back once the memory does."""
    from test_daemon import StreamReader

    with daemon_in_cgroup(
        f"edge-llm-pressure-{os.getpid()}",
        LIMIT,
        f"daemon.state_dir={tmp_path}",
        "planner.calibrate=false",
        "planner.reserve_mb=160",
        "planner.low_water_mb=48",
        "planner.critical_mb=24",
        "daemon.telemetry_interval_s=0.25",
        "limits.max_output_len=600",
    ) as (proc, http, cg, log):
        chat = StreamReader(
            http.port,
            "/v1/chat/completions",
            {
                "messages": [{"role": "user", "content": "Tell a long story."}],
                "max_tokens": 600,
                "temperature": 0,
                "logit_bias": NO_EOS,
                "stream": True,
            },
        )
        wait_until(lambda: chat.num_events >= 3 or chat.done_at, what="the chat's first tokens")
        ballast = Ballast(cg)
        try:

            def critical_reached() -> bool:
                if chat.done_at or any("keeps running" in line for line in log):
                    return True
                avail = available_mib(proc.pid)
                if avail > 16:
                    ballast.grow(int(avail) - 14)  # 14 MiB left: under the critical 24
                return False

            wait_until(critical_reached, what="the guard at the critical mark")
            assert chat.done_at is None, "the chat ended before the pressure came: make it longer"
            r = http.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
            assert r.status_code == 503 and r.json()["error"]["code"] == "memory_pressure"
        finally:
            ballast.close()
        wait_until(lambda: not http.get("/health").json()["admission_paused"], what="admission to resume")
        chat.join(300)
        assert json.loads(chat.events[-2][6:])["choices"][0]["finish_reason"] == "length"  # ran to its end
        assert chat.events[-1] == "data: [DONE]"
        r = http.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        assert r.status_code == 200
        assert proc.poll() is None and oom_kills(cg) == 0
        assert any("keeps running (ending it would free no memory)" in line for line in log)


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
