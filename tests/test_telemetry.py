"""Telemetry sources. jtop is faked (named as such): no Jetson is here. The fake returns
exactly the structures jetson-stats documents (memory in KB, power in mW, temperature in C)."""

import pytest

from edge_llm.telemetry import Sampler
from edge_llm.telemetry.host import HostSource
from edge_llm.telemetry.jtop import JtopSource, snapshot_from_jtop


class FakeJtop:
    """A stand-in for jtop.jtop on an AGX Orin 64GB, shaped like jetson-stats 4.x."""

    def __init__(self, interval=1.0, fail_start=False):
        self.interval, self.fail_start, self.closed = interval, fail_start, False
        self.memory = {
            "RAM": {"tot": 62_795_216, "used": 9_120_000, "free": 40_000_000, "buffers": 300_000,
                    "cached": 12_000_000, "shared": 5_500_000, "lfb": 1200},
            "SWAP": {"tot": 16_777_216, "used": 1_048_576, "cached": 0,
                     "table": {"/swapfile": {"type": "file", "prio": 10, "size": 16_777_216, "used": 1_048_576,
                                             "boot": True}}},
            "EMC": {"online": True, "val": 12, "cur": 3_199_000, "max": 3_199_000, "min": 204_000},
        }
        self.stats = {"RAM": 0.15, "nvp model": "MAXN", "jetson_clocks": "ON", "GPU": 41.0}
        self.temperature = {"CPU": {"online": True, "temp": 48.5}, "GPU": {"online": True, "temp": 47.0},
                            "tj": {"online": False, "temp": -256}}
        self.power = {"tot": {"power": 14230, "avg": 13900, "online": True}, "rail": {}}
        self.gpu = {"gpu": {"status": {"load": 41.0, "railgate": False}, "freq": {"cur": 1300500}}}

    def start(self):
        if self.fail_start:
            raise RuntimeError("The jtop.service is not active. Please run: sudo systemctl restart jtop.service")

    def close(self):
        self.closed = True


def test_jtop_snapshot_maps_units():
    s = snapshot_from_jtop(FakeJtop())
    assert s.source == "jtop" and s.unified_memory
    assert s.ram_total_bytes == 62_795_216 * 1024
    assert s.ram_available_bytes == (40_000_000 + 300_000 + 12_000_000) * 1024
    assert s.swap_total_bytes == 16 * 1024**3 and s.swap_used_bytes == 1024**3
    assert s.gpu_mem_used_bytes == 5_500_000 * 1024  # NvMap "shared"
    assert s.gpu_load_percent == 41.0 and s.power_total_mw == 14230
    assert s.temperatures_c == {"CPU": 48.5, "GPU": 47.0}  # offline sensor dropped
    assert s.nvpmodel == "MAXN" and s.jetson_clocks is True


def test_failing_source_degrades_to_the_next_with_one_warning(caplog):
    class Broken:
        name = "jtop"
        calls = 0

        def read(self):
            Broken.calls += 1
            raise RuntimeError("jtop socket closed")

        def close(self):
            pass

    sampler = Sampler([Broken(), HostSource()])
    for _ in range(3):
        snap = sampler.read()
    assert snap.source == "psutil" and snap.ram_total_bytes > 0
    assert Broken.calls == 1
    assert sum("falling back to psutil" in r.message for r in caplog.records) == 1


def test_jtop_service_down_raises_at_start():
    with pytest.raises(RuntimeError, match="jtop.service is not active"):
        JtopSource(jtop_factory=lambda interval: FakeJtop(interval, fail_start=True))
    src = JtopSource(jtop_factory=lambda interval: FakeJtop(interval))
    assert src.read().ram_total_bytes > 0
    src.close()


def test_telemetry_endpoint_serves_the_latest_snapshot(http):
    body = http.get("/api/telemetry").json()
    assert body["source"] == "psutil" and body["ram_total_bytes"] > 0 and body["ram_available_bytes"] > 0


class FakePynvml:
    """A stand-in for nvidia-ml-py (pynvml), shaped like its documented calls, for one H200."""

    NVML_TEMPERATURE_GPU = 0

    class Mem:
        total, used, free = 150_323_855_360, 2_147_483_648, 148_176_371_712

    class Util:
        gpu, memory = 37, 12

    def __init__(self):
        self.shutdown = False

    def nvmlInit(self): pass  # noqa: E704,N802
    def nvmlDeviceGetHandleByIndex(self, i): return f"gpu{i}"  # noqa: E704,N802
    def nvmlDeviceGetName(self, h): return "NVIDIA H200"  # noqa: E704,N802
    def nvmlDeviceGetMemoryInfo(self, h): return self.Mem()  # noqa: E704,N802
    def nvmlDeviceGetUtilizationRates(self, h): return self.Util()  # noqa: E704,N802
    def nvmlDeviceGetTemperature(self, h, kind): return 41  # noqa: E704,N802
    def nvmlDeviceGetPowerUsage(self, h): return 118_000  # noqa: E704,N802 (mW)
    def nvmlShutdown(self): self.shutdown = True  # noqa: E704,N802


def test_nvml_source_maps_readings(monkeypatch):
    import sys
    fake = FakePynvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    from edge_llm.telemetry.nvml import NvmlSource
    src = NvmlSource()
    s = src.read()
    assert (s.source, s.gpu_name, s.gpu_mem_total_bytes, s.gpu_mem_used_bytes) == (
        "nvml+psutil", "NVIDIA H200", FakePynvml.Mem.total, FakePynvml.Mem.used)
    assert s.gpu_load_percent == 37 and s.temperatures_c["gpu"] == 41 and s.power_total_mw == 118_000
    assert s.ram_total_bytes > 0 and not s.unified_memory
    src.close()
    assert fake.shutdown
