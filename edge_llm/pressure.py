"""Live memory pressure: pause admission below the low-water mark; below the critical mark ask
the engine to give back what it can show freed (the step engine preempts background work; an
engine with nothing to free ends nothing), rather than let the kernel OOM-kill the daemon.

The thresholds follow the memory the plan sees: absolute defaults (a 1 GiB reserve, 512 MiB
low water) stopped start-up in a 600 MiB cgroup, or paused admission for good once the plan
had used what it was given. planner.*_mb = 0 (the default) scales each to the memory total,
up to the old absolute value; the watermarks always stay below the reserve the plan left."""

from __future__ import annotations

import logging

from edge_llm.telemetry.snapshot import Snapshot

log = logging.getLogger(__name__)
MiB = 1 << 20
RESUME_FACTOR = 1.25  # resume admitting only once clearly above the low-water mark
# planner.*_mb = 0: this fraction of the memory total, at most the absolute default
AUTO = {"reserve": (0.25, 1024), "low_water": (0.10, 512), "critical": (0.05, 256)}


def _auto(name: str, configured_mb: int, total_bytes: int | None) -> int:
    if configured_mb:
        return configured_mb * MiB
    fraction, default_mb = AUTO[name]
    return default_mb * MiB if total_bytes is None else min(default_mb * MiB, int(fraction * total_bytes))


def reserve_bytes(planner_cfg, total_bytes: int | None) -> int:
    """Memory the plan leaves for the OS and the kiosk browser."""
    return _auto("reserve", planner_cfg.reserve_mb, total_bytes)


def watermarks(planner_cfg, total_bytes: int, planned_reserve_bytes: int) -> tuple[int, int]:
    """(low water, critical) in bytes. Below half the reserve the plan left (what is free
    once the plan's memory is in use), so a machine at its plan is not under pressure."""
    low = min(_auto("low_water", planner_cfg.low_water_mb, total_bytes), planned_reserve_bytes // 2)
    critical = min(_auto("critical", planner_cfg.critical_mb, total_bytes), low // 2)
    return low, critical


class PressureGuard:
    def __init__(self, engine, low_water_bytes: int, critical_bytes: int):
        self.engine = engine
        self.low_water_bytes = low_water_bytes
        self.critical_bytes = critical_bytes
        self.paused = False
        self.num_pauses = 0
        self.num_preemptions = 0

    def __call__(self, snap: Snapshot) -> None:
        avail = snap.ram_available_bytes
        self.engine.metrics.ram_available.set(avail)
        self.engine.metrics.swap_used.set(snap.swap_used_bytes)
        if avail < self.critical_bytes and self.engine.num_running:
            self.num_preemptions += 1
            log.error(
                "available RAM %d MiB < critical %d MiB: the engine gives back the newest sequence "
                "if that frees memory",
                avail // MiB,
                self.critical_bytes // MiB,
            )
            self.engine.preempt_newest(
                1, f"available memory {avail // MiB} MiB fell below {self.critical_bytes // MiB} MiB"
            )
        if not self.paused and avail < self.low_water_bytes:
            self.paused = True
            self.num_pauses += 1
            log.warning(
                "available RAM %d MiB < low water %d MiB: admission paused", avail // MiB, self.low_water_bytes // MiB
            )
            self.engine.set_admission_paused(True)
        elif self.paused and avail > self.low_water_bytes * RESUME_FACTOR:
            self.paused = False
            log.warning("available RAM %d MiB: admission resumed", avail // MiB)
            self.engine.set_admission_paused(False)
