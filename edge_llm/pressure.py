"""Live memory pressure: pause admission below the low-water mark, end the newest
sequences below the critical mark, rather than let the kernel OOM-kill the daemon."""

from __future__ import annotations

import logging

from edge_llm.telemetry.snapshot import Snapshot

log = logging.getLogger(__name__)
MiB = 1 << 20
RESUME_FACTOR = 1.25  # resume admitting only once clearly above the low-water mark


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
            log.error("available RAM %d MiB < critical %d MiB: ending the newest sequence",
                      avail // MiB, self.critical_bytes // MiB)
            self.engine.preempt_newest(1, f"ended to protect the device: available memory {avail // MiB} MiB "
                                          f"fell below {self.critical_bytes // MiB} MiB")
        if not self.paused and avail < self.low_water_bytes:
            self.paused = True
            self.num_pauses += 1
            log.warning("available RAM %d MiB < low water %d MiB: admission paused",
                        avail // MiB, self.low_water_bytes // MiB)
            self.engine.set_admission_paused(True)
        elif self.paused and avail > self.low_water_bytes * RESUME_FACTOR:
            self.paused = False
            log.warning("available RAM %d MiB: admission resumed", avail // MiB)
            self.engine.set_admission_paused(False)
