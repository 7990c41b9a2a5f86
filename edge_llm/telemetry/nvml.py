"""Telemetry of a discrete NVIDIA GPU through NVML (nvidia-ml-py), on top of psutil's RAM."""

from __future__ import annotations

from dataclasses import replace

from edge_llm.telemetry.host import HostSource
from edge_llm.telemetry.snapshot import Snapshot


class NvmlSource:
    name = "nvml+psutil"

    def __init__(self, index: int = 0):
        import pynvml  # nvidia-ml-py; raises when absent

        pynvml.nvmlInit()  # raises NVMLError without a driver
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(self._handle)
        self._gpu_name = name.decode() if isinstance(name, bytes) else name
        self._host = HostSource()

    def read(self) -> Snapshot:
        n, h = self._nvml, self._handle
        mem = n.nvmlDeviceGetMemoryInfo(h)
        host = self._host.read()
        temps = dict(host.temperatures_c, gpu=float(n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)))
        return replace(
            host,
            source=self.name,
            gpu_name=self._gpu_name,
            gpu_mem_total_bytes=mem.total,
            gpu_mem_used_bytes=mem.used,
            gpu_load_percent=float(n.nvmlDeviceGetUtilizationRates(h).gpu),
            temperatures_c=temps,
            power_total_mw=float(n.nvmlDeviceGetPowerUsage(h)),
        )

    def close(self) -> None:
        self._nvml.nvmlShutdown()
