"""Telemetry sources. jtop is faked (named as such): no Jetson is here. The fake returns
exactly the structures jetson-stats documents (memory in KB, power in mW, temperature in C)."""

import sys
import time

import pytest

from edge_llm.telemetry import Sampler, open_sources
from edge_llm.telemetry.host import HostSource
from edge_llm.telemetry.jtop import JtopSource, snapshot_from_jtop


def test_jtop_snapshot_maps_units(fake_jtop):
    s = snapshot_from_jtop(fake_jtop.jtop())
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


def test_jtop_service_down_or_wrong_group_falls_back_to_psutil(fake_jtop, caplog):
    fake_jtop.SERVICE.running = False
    with pytest.raises(fake_jtop.JtopException, match="jtop.service is not active"):
        JtopSource()
    assert [s.name for s in open_sources()][-1] == "psutil" and "jtop" not in [s.name for s in open_sources()]
    fake_jtop.SERVICE.running, fake_jtop.SERVICE.member_of_jtop_group = True, False
    with pytest.raises(fake_jtop.JtopException, match="group jtop"):
        JtopSource()
    assert [s.name for s in open_sources()][-1] == "psutil"
    assert any("jtop unavailable" in r.message and "group jtop" in r.message for r in caplog.records)


def test_jtop_that_starts_after_the_daemon_is_taken_up(fake_jtop, caplog):
    # at boot jtop.service (After=multi-user.target) starts after the daemon has opened its sources
    caplog.set_level("INFO")
    fake_jtop.SERVICE.running = False
    sampler = Sampler(open_sources(0.05), 0.05, retry_jtop_s=0.1)
    assert [s.name for s in sampler.sources] == ["psutil"]
    sampler.start()
    try:
        time.sleep(0.4)
        assert sampler.latest.source == "psutil"  # still down: asked again, nothing changes
        fake_jtop.SERVICE.running = True
        deadline = time.monotonic() + 5
        while sampler.latest.source != "jtop" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sampler.stop()
    assert sampler.latest.source == "jtop" and [s.name for s in sampler.sources] == ["jtop", "psutil"]
    assert any("jtop answers now; using it instead of psutil" in r.message for r in caplog.records)


def test_without_jetson_stats_jtop_is_not_asked_again(monkeypatch):
    monkeypatch.setitem(sys.modules, "jtop", None)  # import jtop raises ImportError
    sampler = Sampler(open_sources(), 0.05, retry_jtop_s=0.05)
    sampler._retry_jtop()
    assert sampler.retry_jtop_s == 0.0 and [s.name for s in sampler.sources] == ["psutil"]


def test_jtop_that_dies_is_dropped_never_served_stale(fake_jtop, caplog):
    src = JtopSource()
    sampler = Sampler([src, HostSource()])
    assert sampler.read().source == "jtop"
    fake_jtop.SERVICE.running = False  # the attributes still hold the last values
    assert src._jetson.memory["RAM"]["tot"] > 0
    snap = sampler.read()
    assert snap.source == "psutil" and [s.name for s in sampler.sources] == ["psutil"]
    assert any("telemetry source jtop failed" in r.message for r in caplog.records)


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

    def nvmlInit(self):
        pass  # noqa: E704,N802

    def nvmlDeviceGetHandleByIndex(self, i):
        return f"gpu{i}"  # noqa: E704,N802

    def nvmlDeviceGetName(self, h):
        return "NVIDIA H200"  # noqa: E704,N802

    def nvmlDeviceGetMemoryInfo(self, h):
        return self.Mem()  # noqa: E704,N802

    def nvmlDeviceGetUtilizationRates(self, h):
        return self.Util()  # noqa: E704,N802

    def nvmlDeviceGetTemperature(self, h, kind):
        return 41  # noqa: E704,N802

    def nvmlDeviceGetPowerUsage(self, h):
        return 118_000  # noqa: E704,N802 (mW)

    def nvmlShutdown(self):
        self.shutdown = True  # noqa: E704,N802


def test_nvml_source_maps_readings(monkeypatch):
    import sys

    fake = FakePynvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    from edge_llm.telemetry.nvml import NvmlSource

    src = NvmlSource()
    s = src.read()
    assert (s.source, s.gpu_name, s.gpu_mem_total_bytes, s.gpu_mem_used_bytes) == (
        "nvml+psutil",
        "NVIDIA H200",
        FakePynvml.Mem.total,
        FakePynvml.Mem.used,
    )
    assert s.gpu_load_percent == 37 and s.temperatures_c["gpu"] == 41 and s.power_total_mw == 118_000
    assert s.ram_total_bytes > 0 and not s.unified_memory
    src.close()
    assert fake.shutdown


def test_jtop_that_stops_sampling_is_left_for_psutil(fake_jtop):
    """jetson-stats 4.2.12's ok() waits up to 3 intervals for a sample, then marks the client
    stopped: a service that is up but silent must not be read as a live source (issue 20)."""
    src = JtopSource(interval_s=0.1)
    assert src.read().source == "jtop"
    fake_jtop.SERVICE.sampling = False
    sampler = Sampler([src, HostSource()])
    assert sampler.read().source == "psutil"
    fake_jtop.SERVICE.sampling = True  # stopped is stopped: jtop does not come back by itself
    with pytest.raises(RuntimeError, match="stopped reporting"):
        src.read()
