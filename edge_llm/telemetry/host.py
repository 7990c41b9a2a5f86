"""Telemetry from psutil: works on every Linux machine."""

from __future__ import annotations

import psutil

from edge_llm.telemetry import cgroup
from edge_llm.telemetry.snapshot import Snapshot


class HostSource:
    """RAM from psutil, bounded by this process's cgroup memory limit when it has one."""

    name = "psutil"

    def read(self) -> Snapshot:
        vm, sw = psutil.virtual_memory(), psutil.swap_memory()
        total, available = vm.total, vm.available
        cg = cgroup.read()
        if cg is not None and cg.limit_bytes < total:
            total, available = cg.limit_bytes, min(available, cg.available_bytes)
        return Snapshot(
            source=self.name if cg is None or cg.limit_bytes >= vm.total else "psutil+cgroup",
            ram_total_bytes=total,
            ram_available_bytes=available,
            ram_used_bytes=total - available,
            swap_total_bytes=sw.total,
            swap_used_bytes=sw.used,
            temperatures_c=_temperatures(),
        )

    def close(self) -> None:
        pass


def _temperatures() -> dict[str, float]:
    try:
        sensors = psutil.sensors_temperatures()
    except (AttributeError, OSError):
        return {}
    return {f"{chip}/{t.label or i}": t.current for chip, temps in sensors.items() for i, t in enumerate(temps)}
