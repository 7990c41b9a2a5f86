"""Fixtures: the real model behind the real daemon on an ephemeral loopback port."""

from __future__ import annotations

import http.client as httplib
import json as jsonlib
import os
import shutil
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import fakes
import llama_cpp  # noqa: F401  first: see below
import pytest

from edge_llm import config as config_mod
from edge_llm.daemon import Daemon

# llama_cpp is imported before anything imports numpy: in the GPU image (Ubuntu 24.04, Python 3.12,
# numpy with scipy-openblas64, llama.cpp built with CUDA) a daemon started after `import numpy`
# segfaulted in a native thread (the openai client, jsonschema and others import numpy first in a
# test module), and after `import llama_cpp` it started and served (session 19, H100).

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/ (benchmarks reused by tests)

# One calibration per test session (the first daemon measures, the others read it), as one device
# would keep it across restarts.
CALIBRATION_FILE = Path(tempfile.mkdtemp(prefix="edge-llm-calibration-")) / "calibration.json"
# Small enough to start fast, large enough for the batching tests. The KV cap holds a stream of
# max_seq_len for every slot (8 running + 4 prefix cache), so the layout is the one `auto` picks
# (measured, on CI), not one pool forced by a cap too small for per-slot streams.
TEST_LIMITS = {
    "planner.calibration_file": str(CALIBRATION_FILE),
    "limits.max_batch_size": 8,
    "limits.max_seq_len": 2048,
    "limits.kv_cache_tokens": 12 * 2048,
    "limits.max_output_len": 512,
    "limits.prefill_chunk_tokens": 64,
    "limits.max_queue": 128,
    "summarize.chunk_tokens": 160,
    "summarize.summary_tokens": 32,
    "model.aliases": ["gpt-4o-mini"],
    # a streamed token per event: tests that count a stream's steps count its events (the default
    # interval is tested on this server in test_stream_interval.py, set on the engine for a test)
    "limits.stream_interval_ms": 0,
}
NO_EOS = {"0": -100, "2": -100, "4": -100}  # SmolLM2's end-of-generation tokens: a request runs to max_tokens
if os.environ.get("EDGE_LLM_TEST_CALIBRATE") == "0":  # a developer's loaded machine, never CI: planner defaults
    TEST_LIMITS["planner.calibrate"] = False


def wait_until(condition, timeout: float = 120, what: str = "the state"):
    """Poll condition() until it is true: tests wait for a state (with a generous deadline for a
    loaded machine), never for a time."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(0.02)
    return value


def stand_in_plan(**changes) -> types.SimpleNamespace:
    """What StepEngine reads of a planner.Plan, for engines over a stand-in backend (no model): one
    place to add what the engine comes to read (Plan.background_chunk, background_visitor_chunk)."""
    fields = dict(
        num_seqs=4,
        kv_cache_tokens=4096,
        max_batch_size=2,
        prefill_chunk_tokens=64,
        background_chunk=64,
        background_visitor_chunk=64,
        kv_layout="per_slot",
        lanes=1,
        lane_size=0,
        calibration=None,
    )
    return types.SimpleNamespace(**{**fields, **changes})


def make_config(**overrides) -> config_mod.Config:
    items = {"server.port": 0, **TEST_LIMITS, **overrides}
    return config_mod.load(env={}, overrides=list(items.items()))


class RunningDaemon:
    def __init__(self, cfg: config_mod.Config):
        self.daemon = Daemon(cfg)
        self.thread = threading.Thread(target=self.daemon.run, name="daemon", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.daemon.runtime.is_ready:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"daemon did not become ready: {self.daemon.runtime.status}")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.daemon.port}"
        self.engine = self.daemon.runtime.engine
        self.model_id = self.daemon.runtime.model_id

    def stop(self) -> None:
        self.daemon.stop_requested.set()
        self.thread.join(60)

    def kv_lengths(self) -> dict[int, int]:
        """Tokens in the KV cache per sequence slot, read on the engine thread."""
        return self.engine.call(self.engine.backend.seq_lengths)

    def from_empty_cache(self, make):
        """make() from a cache holding nothing: with one unified KV cache, attention runs over
        every occupied cell (masked or not), so the floating-point order, and with it a
        near-tie, can depend on what other sequences left there. Comparisons of outputs that
        must be equal start from the same state."""
        self.wait_idle()
        self.engine.call(self.engine.clear_prefix_cache)
        return make()

    def wait_idle(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.engine.num_running or self.engine.num_waiting:
            assert time.monotonic() < deadline, f"engine still busy: {self.engine.stats()}"
            time.sleep(0.02)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    d = RunningDaemon(make_config(**{"daemon.state_dir": str(tmp_path_factory.mktemp("state"))}))
    yield d
    d.stop()


@pytest.fixture()
def client(server):
    import openai  # imported here: the GPU machine's tests run without it

    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


class Http:
    """Raw HTTP over a real loopback socket (stdlib), for what the openai client hides."""

    def __init__(self, port: int):
        self.port = port

    def request(
        self, method: str, path: str, body: bytes | str | dict | None = None, headers: dict[str, str] | None = None
    ):
        headers = dict(headers or {})
        if isinstance(body, dict):
            body = jsonlib.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        conn = httplib.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)

    def post(self, path, body=None, headers=None):
        return self.request("POST", path, body, headers)

    def get(self, path, headers=None):
        return self.request("GET", path, None, headers)


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status_code, self.headers, self.content = status, headers, body

    def json(self):
        return jsonlib.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode()


@pytest.fixture()
def http(server) -> Http:
    return Http(server.daemon.port)


# Pages run in Debian's headless Chromium through Playwright.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = os.environ.get("EDGE_LLM_SCREENSHOTS")  # a folder to keep screenshots in, for a person to look at


@pytest.fixture(scope="session")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser, server):
    """A fresh browser context (empty localStorage) on the daemon; nothing may leave the device."""
    ctx = browser.new_context(viewport={"width": 1024, "height": 600}, base_url=server.url)
    pg = ctx.new_page()
    external = []
    pg.on("request", lambda r: external.append(r.url) if not r.url.startswith(server.url) else None)
    yield pg
    ctx.close()
    assert external == [], f"the page reached outside the device: {external}"


@pytest.fixture()
def shot():
    """shot(page, name): a screenshot kept in $EDGE_LLM_SCREENSHOTS, when it is set."""

    def take(page, name):
        if SHOTS:
            page.screenshot(path=os.path.join(SHOTS, name))

    return take


@pytest.fixture()
def fake_jtop(monkeypatch):
    """The FAKE jtop module (tests/fakes/jtop), with its service up and our user in group jtop."""
    with fakes.imported("jtop", monkeypatch) as jtop:
        yield jtop


def pytest_configure(config):
    config.addinivalue_line("markers", "twin: boots the device twin (systemd-nspawn; tools/device_twin.py)")
