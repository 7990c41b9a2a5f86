"""The GPU path with the real model on a real GPU. Runs only where llama.cpp was built with
CUDA and NVML sees a GPU (the lent H100/H200); skipped on the CPU-only CI machines."""

import json
import threading

import pytest

llama_cpp = pytest.importorskip("llama_cpp")
try:
    import pynvml

    pynvml.nvmlInit()
    HAS_GPU = pynvml.nvmlDeviceGetCount() > 0
except Exception:
    HAS_GPU = False
pytestmark = pytest.mark.skipif(
    not (HAS_GPU and llama_cpp.llama_supports_gpu_offload()),
    reason="needs a CUDA build of llama.cpp and an NVIDIA GPU (not on CI)",
)


@pytest.fixture(scope="module")
def gpu_daemon(tmp_path_factory):
    from conftest import RunningDaemon, make_config

    d = RunningDaemon(
        make_config(
            **{
                "daemon.state_dir": str(tmp_path_factory.mktemp("state")),
                "limits.max_batch_size": 16,
                "limits.kv_cache_tokens": 32768,
            }
        )
    )
    yield d
    d.stop()


def test_layers_and_kv_on_the_gpu_planned_from_gpu_memory(gpu_daemon):
    rt = gpu_daemon.daemon.runtime
    assert rt.backend.gpu_offload
    assert rt.plan.memory.startswith("GPU"), rt.plan.memory
    snap = rt.telemetry.latest
    assert snap.source == "nvml+psutil" and snap.gpu_mem_total_bytes > 0 and snap.gpu_name


def test_generation_on_the_gpu_batched(gpu_daemon, http):
    results = []

    def one(i):
        r = http.post("/v1/completions", {"prompt": f"Story {i}: once upon a time", "max_tokens": 64, "temperature": 0})
        results.append((r.status_code, r.json()))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert all(code == 200 and body["choices"][0]["text"] for code, body in results)
    assert gpu_daemon.engine.scheduler.kv.peak_reserved > 16 * 64


def test_telemetry_endpoint_has_nvml_readings(http):
    body = http.get("/api/telemetry").json()
    assert body["source"] == "nvml+psutil" and body["gpu_mem_used_bytes"] > 0 and body["power_total_mw"] > 0
    print(
        "\nGPU telemetry:",
        json.dumps(
            {
                k: body[k]
                for k in (
                    "gpu_name",
                    "gpu_mem_total_bytes",
                    "gpu_mem_used_bytes",
                    "gpu_load_percent",
                    "power_total_mw",
                    "temperatures_c",
                )
            }
        ),
    )


@pytest.fixture()
def http(gpu_daemon):
    from conftest import Http

    return Http(gpu_daemon.daemon.port)
