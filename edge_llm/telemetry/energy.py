"""Energy per request (issue 24): a power source read around each engine step, and the step's
joules shared among the sequences in it by the tokens each processed.

Sources, best first for where the model runs:
- "nvml-energy": NVML's total energy counter (mJ since the driver loaded; Volta and later), when
  the model runs on an NVIDIA GPU; "nvml-power": NVML's power reading, integrated, where the
  counter is not supported;
- "rapl": Linux RAPL, /sys/class/powercap/intel-rapl:N/energy_uj (package domains summed; each
  wraps at its max_energy_range_uj), when the model runs on the CPU and the kernel lets us read it
  (energy_uj is root-only since Linux 5.10);
- "jtop-power": on a Jetson, jtop's total power (the telemetry snapshot's power_total_mw, one
  reading per telemetry interval), integrated over the step;
- "unavailable" elsewhere, said so wherever energy is reported (never a made-up 0).

The pure functions (counter_delta, step_joules, share_by_tokens) carry the accounting; the
meter only reads a source at the start and the end of each step."""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
UNAVAILABLE = "unavailable"
CARRY_S = 0.02  # a step starting this soon after the last one ended is charged for the gap too
WINDOW_S = 60.0  # tokens per joule is reported over the steps of the last minute
RAPL_ROOT = "/sys/class/powercap"
_RAPL_PACKAGE = re.compile(r"^intel-rapl:\d+$")  # top-level (package) domains; subzones are inside them


@dataclass(frozen=True)
class Reading:
    time_s: float  # time.monotonic()
    energy_j: float | None = None  # cumulative counter (counter sources)
    power_w: float | None = None  # instantaneous power (power sources)


# -- pure accounting -------------------------------------------------------------------------
def counter_delta(before: int, after: int, max_range: int) -> int:
    """A wrapping counter's increase: RAPL's energy_uj restarts from 0 after max_energy_range_uj."""
    return after - before if after >= before else max_range - before + after


def step_joules(start: Reading, end: Reading) -> float | None:
    """Energy between two readings: a counter's difference, or power integrated (trapezoid)."""
    if start.energy_j is not None and end.energy_j is not None:
        return max(0.0, end.energy_j - start.energy_j)
    if start.power_w is not None and end.power_w is not None:
        return max(0.0, (start.power_w + end.power_w) / 2 * (end.time_s - start.time_s))
    return None


def share_by_tokens(joules: float, shares: list[tuple[object, int]]) -> dict[object, float]:
    """joules split in proportion to the tokens each key processed in the step."""
    total = sum(n for _, n in shares)
    if total <= 0:
        return {}
    out: dict[object, float] = {}
    for key, n in shares:
        out[key] = out.get(key, 0.0) + joules * n / total
    return out


# -- sources ---------------------------------------------------------------------------------
class RaplSource:
    """Package domains of Linux RAPL, summed; each counter's wraparound handled on every read
    (a read at least once per wrap period, minutes at any realistic power, is assumed)."""

    name = "rapl"

    def __init__(self, root: str = RAPL_ROOT):
        self.domains = sorted(p for p in Path(root).glob("intel-rapl:*") if _RAPL_PACKAGE.match(p.name))
        if not self.domains:
            raise OSError(f"no RAPL package domain under {root}")
        self._max = [int((d / "max_energy_range_uj").read_text()) for d in self.domains]
        self._last = [self._raw(d) for d in self.domains]  # PermissionError: root-only (Linux >= 5.10)
        self._total_uj = 0
        self._lock = threading.Lock()

    @staticmethod
    def _raw(domain: Path) -> int:
        return int((domain / "energy_uj").read_text())

    def read(self) -> Reading:
        with self._lock:
            for i, d in enumerate(self.domains):
                now = self._raw(d)
                self._total_uj += counter_delta(self._last[i], now, self._max[i])
                self._last[i] = now
            return Reading(time.monotonic(), energy_j=self._total_uj / 1e6)


class NvmlSource:
    """NVML's total energy counter (mJ) or, where the GPU does not support it, its power (mW).
    nvidia-ml-py's pynvml: nvmlDeviceGetTotalEnergyConsumption returns a c_uint64 of mJ since the
    driver loaded, raising NVMLError_NotSupported before Volta; nvmlDeviceGetPowerUsage a c_uint of mW.

    NVML is read by a thread of its own every SAMPLE_S, never by the engine thread: a driver call
    per step was read beside every 2 ms decode step on an H200. read() extrapolates the counter
    from its newest sample at the recent power, never backwards, so the steps' joules still add
    up to the counter's difference (within one sample's worth of extrapolation)."""

    SAMPLE_S = 0.02
    SLOPE_S = 0.1  # the recent power is the counter's rise over at least this long
    STALE_S = 5 * SAMPLE_S  # the longest a reading is extrapolated past the newest sample

    def __init__(self, index: int = 0):
        import pynvml  # nvidia-ml-py; ImportError without it

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        try:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
            self.name = "nvml-energy"
        except pynvml.NVMLError_NotSupported:
            pynvml.nvmlDeviceGetPowerUsage(self._handle)
            self.name = "nvml-power"
        self._samples: collections.deque = collections.deque([self._sample()], maxlen=16)  # (time, J or W)
        self._last_j = self._samples[-1][1]
        self._failed: Exception | None = None
        self._stop = threading.Event()
        self.sampler = threading.Thread(target=self._run, name="nvml-energy", daemon=True)
        self.sampler.start()

    def _sample(self) -> tuple[float, float]:
        n, h = self._nvml, self._handle
        if self.name == "nvml-energy":
            return time.monotonic(), n.nvmlDeviceGetTotalEnergyConsumption(h) / 1000
        return time.monotonic(), n.nvmlDeviceGetPowerUsage(h) / 1000

    def _run(self) -> None:
        while not self._stop.wait(self.SAMPLE_S):
            try:
                self._samples.append(self._sample())
            except Exception as e:  # handed to the engine thread's next read (the meter stops)
                self._failed = e
                return

    def close(self) -> None:
        self._stop.set()

    def read(self) -> Reading:
        if self._failed is not None:
            raise self._failed
        now = time.monotonic()
        t1, v1 = self._samples[-1]
        if self.name == "nvml-power":
            return Reading(now, power_w=v1)
        ahead = min(now - t1, self.STALE_S)  # a stopped or stuck sampler is not extrapolated for ever
        self._last_j = max(self._last_j, v1 + self._power(t1, v1) * ahead)
        return Reading(now, energy_j=self._last_j)

    def _power(self, t1: float, v1: float) -> float:
        older = [(t, v) for t, v in list(self._samples) if t1 - t >= self.SLOPE_S] or [self._samples[0]]
        t0, v0 = older[-1]
        return (v1 - v0) / (t1 - t0) if t1 > t0 else 0.0

    def power_w(self) -> float:
        return self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000


class SnapshotPowerSource:
    """The telemetry snapshot's total power (jtop's rails on a Jetson), fed by the sampler."""

    def __init__(self, snap):
        self.name = f"{snap.source}-power"
        self.power_w = snap.power_total_mw / 1000

    def feed(self, snap) -> None:
        if snap.power_total_mw is not None:
            self.power_w = snap.power_total_mw / 1000

    def read(self) -> Reading:
        return Reading(time.monotonic(), power_w=self.power_w)


def open_source(gpu: bool, snapshot=None):
    """The best source for where the model runs (see the module doc), or None."""
    if snapshot is not None and snapshot.source == "jtop" and snapshot.power_total_mw is not None:
        return SnapshotPowerSource(snapshot)  # the whole module's rails: right for CPU and GPU work alike
    openers = [NvmlSource, RaplSource] if gpu else [RaplSource]
    for opener in openers:
        try:
            return opener()
        except Exception as e:  # no library, no device, no permission
            log.debug("energy source %s unavailable: %s", opener.__name__, e)
    if snapshot is not None and snapshot.power_total_mw is not None:
        return SnapshotPowerSource(snapshot)
    return None


# -- the meter -------------------------------------------------------------------------------
class EnergyMeter:
    """Reads the source at the start and end of each step (engine thread only) and keeps each
    request's joules; any thread may read them (joules()) once the request has finished."""

    def __init__(self, metrics=None, source=None, clock=time.monotonic):
        self.metrics = metrics
        self.clock = clock  # the sources' clock (Reading.time_s)
        self.source = None
        self._by_request: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._start: Reading | None = None
        self._last_end: Reading | None = None
        self._window: collections.deque = collections.deque()  # (time, tokens, joules) per step
        self._window_tokens, self._window_j = 0, 0.0  # their sums, kept as steps come and go
        self.total_j = 0.0
        self.metered_s = 0.0  # time inside metered steps (with the gaps carried into them)
        self.unattributed_j = 0.0  # steps with no sequence in them (KV copies only)
        self.disabled: str | None = None  # why this engine is not metered at all
        self.use(source)

    def disable(self, reason: str) -> None:
        self.disabled = reason
        self.use(None)

    @property
    def source_name(self) -> str:
        return self.source.name if self.source is not None else UNAVAILABLE

    @property
    def is_available(self) -> bool:
        return self.source is not None

    def use(self, source) -> None:
        old = self.source
        if old is not None and old is not source and hasattr(old, "close"):
            old.close()  # NVML's sampler thread ends with it
        self.source, self._start, self._last_end = source, None, None
        if self.metrics is not None:
            self.metrics.set_energy_source(self.source_name)

    def on_snapshot(self, snap) -> None:
        """Telemetry thread: keep a snapshot power source fed; take jtop's once it answers."""
        if isinstance(self.source, SnapshotPowerSource):
            self.source.feed(snap)
        elif not self.disabled and snap.source == "jtop" and snap.power_total_mw is not None:
            self.use(SnapshotPowerSource(snap))

    def _read(self) -> Reading | None:
        try:
            return self.source.read()
        except Exception:
            log.warning("energy source %s failed; energy is unavailable from now on", self.source_name, exc_info=True)
            self.use(None)
            return None

    def start(self, carry: bool = False) -> None:
        """Before a step runs. Back-to-back steps carry over: the gap since the last step ended
        (postprocess, scheduling) is charged to this one, so a busy run is metered whole. carry:
        this step ran since the last one ended, however long ago (a step launched ahead)."""
        if self.source is None:
            return
        last = self._last_end
        near = last is not None and (carry or self.clock() - last.time_s < CARRY_S)
        self._start = last if near else self._read()

    def finish(self, shares: list[tuple[object, int]]) -> float | None:
        """After a step ran: shares are (request, tokens it processed). Returns the joules."""
        start, self._start = self._start, None
        if self.source is None or start is None:
            return None
        end = self._read()
        joules = step_joules(start, end) if end is not None else None
        self._last_end = end
        if joules is None:
            return None
        self.total_j += joules
        self.metered_s += end.time_s - start.time_s
        split = share_by_tokens(joules, shares)
        if not split:
            self.unattributed_j += joules
        for req, j in split.items():
            self._by_request[req] = self._by_request.get(req, 0.0) + j
        self._observe(end.time_s, shares, split, joules)
        return joules

    def finish_step(self, out) -> float | None:
        """finish() for a SchedulerOutput: each chunk's scheduled tokens (a chunk of a step that
        was stopped early still cost its share)."""
        return self.finish([(c.request, len(c.tokens)) for c in out.chunks])

    def joules(self, req) -> float | None:
        """A request's energy so far (0.0 if it never ran); None when energy is unavailable."""
        if self.source is None and req not in self._by_request:
            return None
        return self._by_request.get(req, 0.0)

    def tokens_per_joule(self) -> float | None:
        joules = self._window_j
        return self._window_tokens / joules if joules > 1e-9 else None

    def _observe(self, now: float, shares, split: dict, joules: float) -> None:
        n = sum(n for _, n in shares)
        self._window.append((now, n, joules))
        self._window_tokens += n
        self._window_j += joules
        while self._window and now - self._window[0][0] > WINDOW_S:
            _, n, j = self._window.popleft()
            self._window_tokens -= n
            self._window_j -= j
        if self.metrics is None:
            return
        by_priority: dict[str, list] = {}  # summed first: two metric updates per step, not two per sequence
        for req, n in shares:
            by_priority.setdefault(req.priority.name.lower(), [0.0, 0])[1] += n
        for req, j in split.items():
            by_priority[req.priority.name.lower()][0] += j
        for priority, (j, n) in by_priority.items():
            self.metrics.observe_energy(priority, j, n)
        if not split:
            self.metrics.energy_unattributed.inc(joules)
        tpj = self.tokens_per_joule()
        if tpj is not None:
            self.metrics.tokens_per_joule.set(tpj)

    def to_dict(self) -> dict:
        tpj = self.tokens_per_joule()
        return {
            "source": self.source_name,
            "why_unavailable": self.disabled,
            "total_joules": round(self.total_j, 3),
            "unattributed_joules": round(self.unattributed_j, 3),
            "tokens_per_joule_last_minute": None if tpj is None else round(tpj, 3),
        }


def format_joules(j: float | None) -> str:
    return UNAVAILABLE if j is None else f"{j:.3f}"
