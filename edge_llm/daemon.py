"""Process life: serve HTTP at once (503 while loading), load and warm up the model, tell
systemd (EXTEND_TIMEOUT while loading, READY=1 after warm-up, STATUS, WATCHDOG while the
engine makes progress), drain on SIGTERM, reload what is safe on SIGHUP."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import threading
import time

from edge_llm import appliance, pressure, telemetry
from edge_llm import config as config_mod
from edge_llm.config import Config
from edge_llm.engine.backends.base import BackendError
from edge_llm.logs import setup_logging
from edge_llm.notify import Notifier
from edge_llm.planner import PlanError
from edge_llm.pressure import PressureGuard
from edge_llm.runtime import Phase, Runtime
from edge_llm.server import create_app, wsgi
from edge_llm.telemetry import heat

log = logging.getLogger("edge_llm.daemon")
MiB = 1 << 20
EXTEND_EVERY_S = 5.0  # while loading, ask systemd for more start time this often
EXTEND_BY_USEC = 20_000_000
MIN_STALL_S = 5.0  # an engine loop silent this long (or half WatchdogSec, if longer) is hung
JTOP_RETRY_S = 30.0  # jtop.service starts after multi-user.target, so after us: ask for it again this often
CUT_MARGIN_S = 1.0  # drain: requests still running this long before the deadline are ended with an error
LOCK_FILE = "edge-llm.lock"
# The engine thread gives up the GIL in every llama.cpp call (ctypes) and must take it back after;
# while a thread of Python work (an HTTP handler, a summary part's thread, telemetry) holds it,
# CPython makes the engine wait up to the switch interval (5 ms) before asking it to let go. On an
# H200 (tools/profile_step.py --busy-thread 2, 3 runs): a 4-sequence step went from 1.76-1.86 ms
# to 2.12-2.15 beside a thread busy 2 ms in 12, and to 1.91-2.12 with 0.5 ms; over HTTP at 16
# streams, with summary parts and unstreamed requests woken at their end only, 5,261 tok/s
# (median of 7 rounds) against 5,019 (5) before (docs/measurements/h200-2026-12-04-session12).
GIL_SWITCH_S = 0.0005


class StateDirError(RuntimeError):
    """The state directory cannot be used: it cannot be made, is a file, or is not writable."""


class StateDirLocked(StateDirError):
    """Another process holds the state directory's lock."""


def lock_state_dir(path) -> int:
    """An exclusive lock on the state directory for this process's life (two daemons on one
    store would both resume its jobs); returns the descriptor that holds it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        why = "it is not a directory" if isinstance(e, FileExistsError) else e.strerror
        raise StateDirError(f"cannot use the state directory {path} (daemon.state_dir): {why}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise StateDirLocked(f"state directory {path} is in use by pid {holder} (daemon.state_dir)") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class Daemon:
    def __init__(self, cfg: Config, reload_config=None):
        self.cfg = cfg
        self.reload_config = reload_config  # () -> Config, for SIGHUP
        self.runtime = Runtime(cfg)
        self.notifier = Notifier()
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.server = None
        self.port = None
        self.stall_s = MIN_STALL_S
        self.guard: PressureGuard | None = None

    # -- life ------------------------------------------------------------------------------
    def run(self) -> int:
        try:
            lock = lock_state_dir(config_mod.state_dir(self.cfg))
        except StateDirError as e:
            log.error("%s", e)
            self.runtime.phase, self.runtime.status = Phase.FAILED, str(e)
            return 1
        try:
            return self._run()
        finally:
            os.close(lock)

    def _run(self) -> int:
        sys.setswitchinterval(GIL_SWITCH_S)
        self._install_signals()
        self._step("starting HTTP server")
        self._start_http()
        sampler = telemetry.Sampler(
            telemetry.open_sources(self.cfg.daemon.telemetry_interval_s),
            self.cfg.daemon.telemetry_interval_s,
            retry_jtop_s=JTOP_RETRY_S,
        )
        self.runtime.telemetry = sampler
        snapshot = sampler.read()
        log.info(
            "telemetry from %s: %d MiB RAM available of %d, swap %d/%d MiB",
            snapshot.source,
            snapshot.ram_available_bytes // MiB,
            snapshot.ram_total_bytes // MiB,
            snapshot.swap_used_bytes // MiB,
            snapshot.swap_total_bytes // MiB,
        )
        try:
            self._load(snapshot)
        except Exception as e:
            if isinstance(e, (BackendError, PlanError)):  # a model that does not load or fit: its message says why
                log.error("loading the model failed: %s", e)
            else:
                log.exception("loading the model failed")
            self.runtime.phase, self.runtime.status = Phase.FAILED, f"load failed: {e}"
            self.notifier.send(STATUS=f"load failed: {e}", ERRNO=1)
            self._close_http()
            return 1
        self.guard = PressureGuard(self.runtime.engine, *self._watermarks(snapshot.ram_total_bytes))
        log.info(
            "memory pressure: admission pauses below %d MiB available, sequences end below %d MiB",
            self.guard.low_water_bytes // MiB,
            self.guard.critical_bytes // MiB,
        )
        wsgi.resize(self.server, self.cfg, self.runtime.plan.max_batch_size)
        sampler.on_snapshot = heat.wire(self.runtime, sampler, self.guard)  # energy meter, thermal admission
        sampler.start()
        self.runtime.phase = Phase.READY
        self._step(self._summary())
        self.notifier.send(READY=1, STATUS=self._summary())
        log.info("ready: http://%s:%d", self.cfg.server.host, self.port)
        self._serve_until_stopped()
        self._drain()
        sampler.stop()
        return 0

    def _watermarks(self, total_bytes: int) -> tuple[int, int]:
        self.ram_total_bytes = total_bytes
        return pressure.watermarks(self.cfg.planner, total_bytes, self.runtime.plan.reserve_bytes)

    def _start_http(self) -> None:
        s = self.cfg.server
        app = create_app(self.runtime)
        self.server = wsgi.create_server(
            app, self.cfg, self.cfg.limits.max_batch_size or self.cfg.planner.default_max_batch_size
        )
        self.port = int(self.server.effective_port)
        log.info("listening on http://%s:%d (503 until the model is ready)", s.host, self.port)
        threading.Thread(target=self.server.run, name="http", daemon=True).start()

    def _close_http(self) -> None:
        if self.server is not None:
            self.server.close()

    def _load(self, snapshot) -> None:
        loaded = threading.Event()

        def extend():
            while not loaded.wait(EXTEND_EVERY_S):
                self.notifier.send(EXTEND_TIMEOUT_USEC=EXTEND_BY_USEC, STATUS=self.runtime.status)

        if self.notifier.enabled:
            self.notifier.send(EXTEND_TIMEOUT_USEC=EXTEND_BY_USEC)
            threading.Thread(target=extend, name="extend-timeout", daemon=True).start()
        try:
            backend, plan, engine = appliance.build_engine(self.cfg, snapshot, self._step)
        finally:
            loaded.set()
        self.runtime.backend, self.runtime.plan, self.runtime.engine = backend, plan, engine
        self._step("resuming summary jobs")
        self.runtime.extensions["summaries"] = appliance.open_summaries(self.cfg, backend, plan, engine)

    def _serve_until_stopped(self) -> None:
        wd_interval = self.notifier.watchdog_usec / 2e6 if self.notifier.watchdog_usec else None
        self.stall_s = self.runtime.stall_s = max(MIN_STALL_S, wd_interval or 0.0)
        tick = min(wd_interval or 2.0, 2.0)
        last_status = ""
        while not self.stop_requested.wait(tick):
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self._reload()
            if wd_interval and self.engine_is_healthy():
                self.notifier.send(WATCHDOG=1)
            status = self._summary()
            if status != last_status:
                self.notifier.send(STATUS=status)
                last_status = status

    def engine_is_healthy(self) -> bool:
        engine = self.runtime.engine
        return engine is not None and engine.is_alive and time.monotonic() - engine.last_progress < self.stall_s

    def _drain(self) -> None:
        """Let what runs finish until shortly before the deadline; then end the rest with an
        error (an SSE error event, a 503) and close once those answers are written."""
        engine, gate = self.runtime.engine, self.server.gate
        self.runtime.phase = Phase.DRAINING
        self.notifier.send(STOPPING=1, STATUS="draining")
        timeout = self.cfg.daemon.drain_timeout_s
        deadline = time.monotonic() + timeout
        cut_at = deadline - min(CUT_MARGIN_S, timeout / 2)
        if "summaries" in self.runtime.extensions:  # chunks in flight resume after the restart
            self.runtime.extensions["summaries"].stop(max(0.0, cut_at - time.monotonic()))
        log.info(
            "SIGTERM: draining %d running and %d waiting requests, %d HTTP responses (up to %.0f s)",
            engine.num_running,
            engine.num_waiting,
            gate.num_long,
            timeout,
        )

        def busy() -> bool:
            return bool(engine.num_running or engine.num_waiting or gate.num_long)

        while busy() and time.monotonic() < cut_at:
            time.sleep(0.05)
        if busy():
            log.warning(
                "drain timeout: ending %d requests (%d HTTP responses) with an error",
                engine.num_running + engine.num_waiting,
                gate.num_long,
            )
            self.runtime.cut_off.set()
            while gate.num_long and time.monotonic() < deadline:
                time.sleep(0.05)
        time.sleep(0.2)  # let waitress write the last bytes
        self._close_http()
        engine.stop(max(1.0, deadline - time.monotonic()))  # a loop stuck in a step is left to the exit
        log.info("stopped")

    # -- signals and reload -----------------------------------------------------------------
    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, lambda *_: self.stop_requested.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop_requested.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())

    def _reload(self) -> None:
        if self.reload_config is None:
            return
        self.notifier.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)
        try:
            new = self.reload_config()
        except config_mod.ConfigError as e:
            log.error("SIGHUP: config not reloaded: %s", e)
        else:
            applied, restart = apply_reload(self.cfg, new, self.runtime.engine)
            self.guard.low_water_bytes, self.guard.critical_bytes = self._watermarks(self.ram_total_bytes)
            log.info(
                "SIGHUP: applied %s; needs a restart: %s",
                ", ".join(applied) or "nothing",
                ", ".join(restart) or "nothing",
            )
        self.notifier.send(READY=1, STATUS=self._summary())

    # -- status ---------------------------------------------------------------------------------
    def _step(self, text: str) -> None:
        self.runtime.status = text
        self.notifier.send(STATUS=text)
        log.info("%s", text)

    def _summary(self) -> str:
        rt, engine, plan = self.runtime, self.runtime.engine, self.runtime.plan
        if engine is None or plan is None:
            return rt.status
        return (
            f"{rt.phase.value}: {rt.model_id}; batch {plan.max_batch_size}, seq {plan.max_seq_len}, "
            f"KV {plan.kv_cache_tokens}; {engine.num_running} running, {engine.num_waiting} queued"
        )


SAFE_TO_RELOAD = {
    "daemon.log_level",
    "limits.max_queue",
    "planner.low_water_mb",
    "planner.critical_mb",
    "daemon.drain_timeout_s",
}


def apply_reload(old: Config, new: Config, engine) -> tuple[list[str], list[str]]:
    """Copy the changed settings that are safe to change live; list those needing a restart."""
    applied, restart = [], []
    for section in ("server", "model", "limits", "planner", "daemon", "summarize", "thermal"):
        a, b = getattr(old, section), getattr(new, section)
        for key, value in vars(b).items():
            if getattr(a, key) == value:
                continue
            name = f"{section}.{key}"
            if name in SAFE_TO_RELOAD:
                setattr(a, key, value)
                applied.append(name)
            else:
                restart.append(name)
    if "daemon.log_level" in applied:
        logging.getLogger().setLevel(old.daemon.log_level.upper())
    if "limits.max_queue" in applied and engine is not None:
        engine.max_queue = old.limits.max_queue  # the front alone bounds the queue
    return applied, restart


def serve(cfg: Config, reload_config=None) -> int:
    setup_logging(cfg.daemon.log_level, cfg.daemon.log_format)
    log.info("edge-llm %s starting (pid %d)", _version(), os.getpid())
    return Daemon(cfg, reload_config).run()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edge-llm")
    except PackageNotFoundError:
        return "dev"
