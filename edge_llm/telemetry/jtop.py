"""Telemetry from jetson-stats (jtop) on a Jetson. Written from jetson-stats' documented
structures and behaviour (shared JETSON.md); no Jetson was available where this was written,
so the tests drive it with a fake jtop module (tests/fakes/jtop) of the same checks.

jtop's attributes keep their last values forever once jtop.service dies; only ok() tells,
by raising the reader thread's error. So every read calls ok() first and raises, and the
Sampler falls back to the next source rather than serving stale numbers."""

from __future__ import annotations

from edge_llm.telemetry.snapshot import Snapshot

KB = 1024


class JtopSource:
    name = "jtop"

    def __init__(self, interval_s: float = 1.0):
        from jtop import jtop  # jetson-stats, Jetson only

        self._jetson = jtop(interval=max(interval_s, 0.1))
        # JtopException when jtop.service is down, or when this user is not in group jtop
        # (/run/jtop.sock is 0660 root:jtop): the caller falls back to psutil
        self._jetson.start()

    def read(self) -> Snapshot:
        if not self._jetson.ok():  # raises the reader thread's error (service gone)
            raise RuntimeError("jtop stopped reporting")
        return snapshot_from_jtop(self._jetson)

    def close(self) -> None:
        self._jetson.close()


def snapshot_from_jtop(jetson) -> Snapshot:
    """Map a jtop object (memory in KB, power in mW, temperatures in C) to a Snapshot."""
    ram, swap = jetson.memory["RAM"], jetson.memory["SWAP"]
    total, free = ram["tot"] * KB, ram["free"] * KB
    reclaimable = (ram.get("buffers", 0) + ram.get("cached", 0)) * KB
    # On unified memory the page cache is reclaimable but cuMemGetInfo ignores it (JETSON.md).
    available = min(total, free + reclaimable)
    stats = jetson.stats
    temps = {
        name: t["temp"]
        for name, t in jetson.temperature.items()
        if isinstance(t, dict) and t.get("temp", -256) > -256 and t.get("online", True)
    }
    gpu_load = None
    for gpu in jetson.gpu.values():
        gpu_load = gpu["status"]["load"]
        break
    power = jetson.power.get("tot", {}).get("power") if isinstance(jetson.power, dict) else None
    clocks = stats.get("jetson_clocks")
    return Snapshot(
        source="jtop",
        ram_total_bytes=total,
        ram_available_bytes=available,
        ram_used_bytes=ram["used"] * KB,
        swap_total_bytes=swap["tot"] * KB,
        swap_used_bytes=swap["used"] * KB,
        unified_memory=True,
        gpu_name="Orin (nvgpu)",
        gpu_mem_used_bytes=ram.get("shared", 0) * KB,
        gpu_load_percent=gpu_load,
        temperatures_c=temps,
        power_total_mw=power,
        nvpmodel=str(stats["nvp model"]) if "nvp model" in stats else None,
        jetson_clocks=(clocks in (True, "ON", "on", 1)) if clocks is not None else None,
    )
