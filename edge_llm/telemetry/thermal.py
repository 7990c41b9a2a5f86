"""Thermal-aware admission (issue 24): back off before the device throttles.

Each telemetry snapshot gives the headroom: the smallest (throttle temperature - reading) over
the sensors whose throttle temperature is known. Within thermal.margin_c of it, admission lowers
the batch cap to half the plan's and defers background work (level 1, "warm"); within half the
margin, the cap is 1 (level 2, "hot"). Nothing running is ended for heat: the cap applies to
admissions (a waiting interactive request may still preempt background sequences above the cap,
kept and resumed later, as at any full batch). The level comes down only once the headroom is hysteresis_c beyond the
level's threshold and the level has been held hold_s (no flapping at a boundary).

Throttle temperatures, first found wins: thermal.throttle_c (every sensor); NVML's slowdown
threshold for the GPU sensor (nvmlDeviceGetTemperatureThreshold); psutil's "high" for a host
sensor; the device profile's (Jetson, below)."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)
NORMAL, WARM, HOT = 0, 1, 2
LEVEL_NAMES = ("normal", "warm", "hot")
# Jetson Orin: the software-throttling trip point of its thermal zones as given in NVIDIA's Jetson
# Linux developer guide ("Thermal management in BPMP", Orin series); not read on a device here, and
# the zone's own trip point, when the kernel exposes one, should be preferred (thermal.throttle_c).
DEVICE_THROTTLE_C = {
    "agx-orin-64gb": 99.0,
    "agx-orin-32gb": 99.0,
    "orin-nx-16gb": 99.0,
    "orin-nx-8gb": 99.0,
    "orin-nano-8gb": 99.0,
}
JETSON_DEFAULT_C = 99.0  # any Orin when the exact module is not known


@dataclass(frozen=True)
class Rule:
    margin_c: float = 10.0  # start backing off this far below the throttle temperature
    hysteresis_c: float = 5.0  # come back only this much cooler than the threshold that was crossed
    hold_s: float = 10.0  # and not before a level has been held this long


@dataclass(frozen=True)
class State:
    level: int = NORMAL
    since: float = 0.0  # when this level was entered (monotonic seconds)
    headroom_c: float | None = None
    sensor: str | None = None  # the sensor nearest its limit


# -- pure --------------------------------------------------------------------------------------
def headroom(
    temps: dict[str, float], throttle_c: dict[str, float], default_c: float | None
) -> tuple[float, str] | None:
    """(degrees below the nearest throttle point, that sensor), or None when no limit is known."""
    best = None
    for name, t in temps.items():
        limit = throttle_c.get(name, default_c)
        if limit is None or t is None:
            continue
        if best is None or limit - t < best[0]:
            best = (limit - t, name)
    return best


def level_for(headroom_c: float, rule: Rule) -> int:
    if headroom_c <= rule.margin_c / 2:
        return HOT
    return WARM if headroom_c <= rule.margin_c else NORMAL


def next_state(state: State, reading: tuple[float, str] | None, now: float, rule: Rule) -> State:
    """Up at once; down one level at a time, past the hysteresis band and after hold_s."""
    if reading is None:  # no sensor with a known limit: stay where we are
        return state
    h, sensor = reading
    target = level_for(h, rule)
    if target > state.level:
        return State(target, now, h, sensor)
    cooled = level_for(h - rule.hysteresis_c, rule)  # the level even hysteresis_c hotter would be
    if cooled < state.level and now - state.since >= rule.hold_s:
        return State(state.level - 1, now, h, sensor)
    return State(state.level, state.since, h, sensor)


def batch_cap(level: int, planned: int) -> int:
    return planned if level == NORMAL else max(1, planned // 2) if level == WARM else 1


# -- limits from the device --------------------------------------------------------------------
def host_limits() -> dict[str, float]:
    """psutil's "high" per sensor, named as telemetry/host.py names them."""
    try:
        import psutil

        sensors = psutil.sensors_temperatures()
    except (AttributeError, OSError, ImportError):
        return {}
    return {f"{chip}/{t.label or i}": t.high for chip, temps in sensors.items() for i, t in enumerate(temps) if t.high}


def nvml_limits(index: int = 0) -> dict[str, float]:
    """The GPU's slowdown temperature (the sensor NvmlSource names "gpu")."""
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        return {"gpu": float(pynvml.nvmlDeviceGetTemperatureThreshold(h, pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN))}
    except Exception as e:  # no library, no GPU, or not supported
        log.debug("no NVML slowdown temperature: %s", e)
        return {}


def default_throttle_c(snapshot, configured_c: float, device: str = "") -> tuple[dict[str, float], float | None, str]:
    """(per-sensor limits, limit for any other sensor, where they came from)."""
    if configured_c:
        return {}, configured_c, "thermal.throttle_c"
    if snapshot.source == "jtop":
        return {}, DEVICE_THROTTLE_C.get(device, JETSON_DEFAULT_C), f"device profile {device or 'orin'}"
    limits, where = host_limits(), "psutil high"
    if snapshot.source.startswith("nvml"):
        limits.update(nvml_limits())
        where = "NVML slowdown threshold" + (", psutil high" if len(limits) > 1 else "")
    return limits, None, where if limits else "none known"


# -- the guard -----------------------------------------------------------------------------------
class ThermalGuard:
    """Called with each telemetry snapshot (the sampler thread). Sets the scheduler's batch cap
    and background deferral: plain attributes the engine reads at its next admission."""

    def __init__(
        self,
        engine,
        planned_batch: int,
        rule: Rule,
        throttle_c: dict[str, float],
        default_c: float | None,
        source: str,
        clock=time.monotonic,
    ):
        self.engine, self.planned_batch, self.rule = engine, planned_batch, rule
        self.throttle_c, self.default_c, self.limits_from = throttle_c, default_c, source
        self.clock = clock
        self.state = State(NORMAL, clock())
        self.enabled = bool(throttle_c) or default_c is not None
        self._apply()

    def __call__(self, snap) -> None:
        if not self.enabled:
            return
        new = next_state(
            self.state, headroom(snap.temperatures_c, self.throttle_c, self.default_c), self.clock(), self.rule
        )
        changed = new.level != self.state.level
        self.state = new
        if changed:
            log.warning(
                "thermal: %s (%s %.1f C below its throttle point): batch cap %d, background %s",
                LEVEL_NAMES[new.level],
                new.sensor,
                new.headroom_c,
                self.cap,
                "deferred" if self.background_deferred else "admitted",
            )
        self._apply()

    @property
    def cap(self) -> int:
        return batch_cap(self.state.level, self.planned_batch)

    @property
    def background_deferred(self) -> bool:
        return self.state.level > NORMAL

    def _apply(self) -> None:
        s = self.engine.scheduler
        s.max_batch_size = self.cap
        s.defer_background = self.background_deferred
        m = self.engine.metrics
        m.thermal_level.set(self.state.level)
        m.thermal_batch_cap.set(self.cap)
        m.thermal_background_deferred.set(1 if self.background_deferred else 0)
        # NaN, not 0, while no sensor with a known throttle temperature has been read
        m.thermal_headroom.set(float("nan") if self.state.headroom_c is None else self.state.headroom_c)

    def to_dict(self) -> dict:
        st = self.state
        return {
            "enabled": self.enabled,
            "level": LEVEL_NAMES[st.level],
            "batch_cap": self.cap,
            "planned_batch": self.planned_batch,
            "background_deferred": self.background_deferred,
            "headroom_c": None if st.headroom_c is None else round(st.headroom_c, 1),
            "sensor": st.sensor,
            "throttle_c": {**self.throttle_c, **({"*": self.default_c} if self.default_c else {})},
            "limits_from": self.limits_from,
            "rule": asdict(self.rule),
            "why": self._why(),
        }

    def _why(self) -> str:
        if not self.enabled:
            return "no throttle temperature known for any sensor: set thermal.throttle_c to enable"
        st, r = self.state, self.rule
        if st.level == NORMAL:
            return f"normal: admission at the plan's batch until within {r.margin_c:g} C of a throttle point"
        return (
            f"{LEVEL_NAMES[st.level]}: {st.sensor} is {st.headroom_c:.1f} C below its throttle point; batch cap "
            f"{self.cap}, background deferred, until {r.hysteresis_c:g} C cooler for {r.hold_s:g} s"
        )
