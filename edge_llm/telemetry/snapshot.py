"""One reading of the device: plain data, units in the field names."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Snapshot:
    source: str  # "jtop" | "nvml+psutil" | "psutil" | "profile:<name>"
    ram_total_bytes: int
    ram_available_bytes: int  # what can be allocated without swapping (psutil "available")
    ram_used_bytes: int
    swap_total_bytes: int = 0
    swap_used_bytes: int = 0
    unified_memory: bool = False  # GPU allocations are RAM (Jetson)
    gpu_name: str = ""
    gpu_mem_total_bytes: int = 0  # discrete GPU memory; on Jetson 0 (it is RAM)
    gpu_mem_used_bytes: int = 0  # discrete: NVML used; Jetson: NvMap "shared" RAM
    gpu_load_percent: float | None = None
    temperatures_c: dict[str, float] = field(default_factory=dict)
    power_total_mw: float | None = None
    nvpmodel: str | None = None  # power mode name, Jetson only
    jetson_clocks: bool | None = None
    time: float = field(default_factory=time.time)  # unix seconds

    @property
    def swap_free_bytes(self) -> int:
        return max(0, self.swap_total_bytes - self.swap_used_bytes)

    @property
    def gpu_mem_free_bytes(self) -> int:
        return max(0, self.gpu_mem_total_bytes - self.gpu_mem_used_bytes)

    def to_dict(self) -> dict:
        return asdict(self)
