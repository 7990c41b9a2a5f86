"""Telemetry from psutil: works on every Linux machine."""

from __future__ import annotations

import psutil

from edge_llm.telemetry.snapshot import Snapshot


class HostSource:
    name = "psutil"

    def read(self) -> Snapshot:
        vm, sw = psutil.virtual_memory(), psutil.swap_memory()
        return Snapshot(
            source=self.name, ram_total_bytes=vm.total, ram_available_bytes=vm.available,
            ram_used_bytes=vm.total - vm.available, swap_total_bytes=sw.total, swap_used_bytes=sw.used,
            temperatures_c=_temperatures())

    def close(self) -> None:
        pass


def _temperatures() -> dict[str, float]:
    try:
        sensors = psutil.sensors_temperatures()
    except (AttributeError, OSError):
        return {}
    return {f"{chip}/{t.label or i}": t.current for chip, temps in sensors.items() for i, t in enumerate(temps)}
