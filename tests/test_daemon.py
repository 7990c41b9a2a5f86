"""The real daemon as a child process, with this test listening on its own NOTIFY_SOCKET
(systemd is never booted here). Also: unit files checked with systemd-analyze."""

import http.client as httplib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import NO_EOS, TEST_LIMITS, Http, wait_until

ROOT = Path(__file__).resolve().parents[1]


class NotifyListener:
    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def times(self, key: str, value: str | None = None) -> list[float]:
        return [t for t, f in self.messages if key in f and (value is None or f[key] == value)]

    def wait_for(self, key: str, value: str | None = None, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.times(key, value)
            if found:
                return found[0]
            time.sleep(0.02)
        raise AssertionError(f"no {key}={value} in {self.messages}")

    def close(self):
        self._stop = True
        self._thread.join()
        self.sock.close()


def spawn(tmp_path, *args):
    """The daemon as a child process: (proc, http, notify listener, its log lines so far)."""
    listener = NotifyListener(tmp_path / "notify.sock")
    env = dict(
        os.environ,
        NOTIFY_SOCKET=str(tmp_path / "notify.sock"),
        WATCHDOG_USEC="1000000",
        EDGE_LLM_DAEMON_DEBUG_HOOKS="true",
        EDGE_LLM_DAEMON_DRAIN_TIMEOUT_S="60",
        PYTHONUNBUFFERED="1",
        EDGE_LLM_DAEMON_STATE_DIR=str(tmp_path / "state"),
    )
    sets = [f"--set={k}={v}" for k, v in TEST_LIMITS.items()]
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_llm", "serve", "--port", "0", *sets, *args],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    log, port, deadline = [], None, time.monotonic() + 60
    for line in proc.stderr:  # the daemon logs its port once bound
        log.append(line)
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if m or time.monotonic() > deadline:
            port = int(m.group(1)) if m else None
            break
    threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()  # keep draining
    assert port, "daemon did not report its port: " + "".join(log)
    return proc, Http(port), listener, log


@pytest.fixture()
def daemon_proc(tmp_path):
    proc, http, listener, _ = spawn(tmp_path)
    yield proc, http, listener
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)
    listener.close()


def test_notify_protocol_ready_status_watchdog_and_drain(daemon_proc):
    proc, http, notify = daemon_proc
    health_before = []
    while not notify.times("READY", "1"):
        health_before.append(http.get("/health").status_code)
        time.sleep(0.01)
    ready_at = notify.wait_for("READY", "1")
    assert http.get("/health").status_code == 200  # READY=1 is sent only once /health says 200
    # 503 while loading, then 200 for good (the phase turns ready, then READY=1 is sent)
    assert health_before[0] == 503
    assert health_before == sorted(health_before, key=lambda code: code == 200)
    extend = notify.times("EXTEND_TIMEOUT_USEC")
    assert extend and extend[0] < ready_at  # start timeout extended while loading
    statuses = [f["STATUS"] for t, f in notify.messages if "STATUS" in f and t <= ready_at]
    assert any("warming up" in s for s in statuses) and "ready" in statuses[-1]

    # WATCHDOG_USEC=1s: a ping every 0.5 s. The median gap, since one late ping on a loaded
    # machine says nothing about the cadence the daemon keeps.
    wait_until(lambda: len([t for t in notify.times("WATCHDOG", "1") if t > ready_at]) >= 7, what="7 pings")
    pings = [t for t in notify.times("WATCHDOG", "1") if t > ready_at]
    gaps = sorted(b - a for a, b in zip(pings, pings[1:], strict=False))
    assert 0.3 < gaps[len(gaps) // 2] < 0.8, gaps

    # SIGTERM with a stream in flight: STOPPING=1, the stream still completes, exit 0
    stream = StreamReader(
        http.port,
        "/v1/completions",
        {"prompt": "Once upon a time", "max_tokens": 150, "temperature": 0, "stream": True, "logit_bias": NO_EOS},
    )
    wait_until(lambda: stream.num_events >= 2 or stream.done_at, what="the stream's first tokens")
    proc.send_signal(signal.SIGTERM)
    stopping_at = notify.wait_for("STOPPING", "1", timeout=30)
    r = http.post("/v1/completions", {"prompt": "late", "max_tokens": 2})
    assert r.status_code == 503 and r.json()["error"]["code"] == "draining"
    stream.join(120)
    assert proc.wait(60) == 0
    assert stream.done_at > stopping_at  # it was in flight when the drain began
    assert stream.events[-1] == "data: [DONE]"
    assert json.loads(stream.events[-2][6:])["choices"][0]["finish_reason"] == "length"


class StreamReader(threading.Thread):
    """An SSE response read event by event on its own thread, so a test can act mid-stream."""

    def __init__(self, port: int, path: str, body: dict):
        super().__init__(daemon=True)
        self.port, self.path, self.body = port, path, body
        self.events: list[str] = []
        self.done_at: float | None = None
        self.start()

    @property
    def num_events(self) -> int:
        return len(self.events)

    def run(self):
        conn = httplib.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request("POST", self.path, json.dumps(self.body), {"Content-Type": "application/json"})
            for line in conn.getresponse():
                if line.strip():
                    self.events.append(line.decode().strip())
        finally:
            self.done_at = time.monotonic()
            conn.close()


def test_a_hung_engine_loop_stops_the_watchdog_pings(daemon_proc):
    """No ping while /health says the loop is stalled (the same rule), pings again once it moves."""
    proc, http, notify = daemon_proc
    notify.wait_for("READY", "1")
    assert http.post("/debug/hang?seconds=12", {}).status_code == 200
    wait_until(lambda: http.get("/health").status_code == 503, what="/health to see the stall")
    stalled_from = time.monotonic()
    wait_until(lambda: http.get("/health").status_code == 200, what="the loop to come back")
    stalled_until = time.monotonic()
    assert stalled_until - stalled_from > 2  # a stall long enough to have missed several pings
    # a ping sent just before /health saw the stall may be received just after
    late = [t for t in notify.times("WATCHDOG", "1") if stalled_from + 0.6 < t < stalled_until - 0.6]
    assert late == [], "watchdog kept pinging while the engine loop was hung"
    wait_until(lambda: [t for t in notify.times("WATCHDOG", "1") if t > stalled_until], what="pings again")


def test_debug_hook_is_off_by_default(http):
    assert http.post("/debug/hang?seconds=1", {}).status_code == 404


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_units_verify_and_exposure_is_at_most_2_5(tmp_path):
    # verify complains only about the absent install paths (/opt/edge-llm, cage) here
    for unit in sorted((ROOT / "systemd").glob("*.service")):
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True)
        problems = [line for line in r.stderr.splitlines() if line and "is not executable" not in line]
        assert problems == [], (unit.name, problems)
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(ROOT / "systemd/edge-llm.service")],
        capture_output=True,
        text=True,
    )
    m = re.search(r"Overall exposure level for edge-llm.service: ([\d.]+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.5
    settings = [
        line.split("=")[0]
        for line in (ROOT / "systemd/edge-llm.service").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    # PrivateDevices hides the GPU nodes, MemoryDenyWriteExecute breaks CUDA's JIT; on systemd < 252
    # (JetPack 6.1 has 249) ProtectClock implies DeviceAllow=char-rtc, which closes the GPU nodes
    for forbidden in ("PrivateDevices", "MemoryDenyWriteExecute", "ProtectClock", "DeviceAllow", "DevicePolicy"):
        assert forbidden not in settings, forbidden


def test_sighup_applies_safe_changes_and_names_those_needing_a_restart(tmp_path):
    conf = tmp_path / "edge.toml"
    conf.write_text('[daemon]\nlog_level = "info"\n[planner]\nlow_water_mb = 512\n')
    proc, http, notify, log = spawn(tmp_path, "--config", str(conf))
    try:
        notify.wait_for("READY", "1")
        conf.write_text('[daemon]\nlog_level = "debug"\n[planner]\nlow_water_mb = 300\n[model]\nn_threads = 1\n')
        proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING", "1", timeout=10)
        deadline = time.monotonic() + 10
        while not any("SIGHUP: applied" in line for line in log) and time.monotonic() < deadline:
            time.sleep(0.05)
        line = next(line for line in log if "SIGHUP: applied" in line)
        assert "applied planner.low_water_mb, daemon.log_level;" in line and "needs a restart: model.n_threads" in line
        conf.write_text('[daemon]\nlog_levl = "debug"\n')  # a typo: refused, the daemon keeps running
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not any("config not reloaded" in line for line in log) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any("unknown key 'log_levl'" in line for line in log)
        assert http.get("/health").status_code == 200
    finally:
        proc.terminate()
        assert proc.wait(60) == 0
        notify.close()
