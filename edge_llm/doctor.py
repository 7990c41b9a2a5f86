"""`edge-llm doctor`: what this device has, and what each backend would need."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import psutil


def _version(*dists: str) -> str | None:
    for d in dists:
        try:
            return importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _run(cmd: list[str]) -> str | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _cuda() -> str | None:
    f = Path("/usr/local/cuda/version.json")
    if f.is_file():
        return json.loads(f.read_text()).get("cuda", {}).get("version")
    out = _run(["nvcc", "--version"])
    return out.splitlines()[-1] if out else None


def checks() -> dict[str, str | None]:
    l4t = Path("/etc/nv_tegra_release")
    sw = psutil.swap_memory()
    llama_gpu = None
    try:
        import llama_cpp
        llama_gpu = bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:
        pass
    return {
        "l4t_release": l4t.read_text().splitlines()[0] if l4t.is_file() else None,
        "cuda": _cuda(),
        "tensorrt": _version("tensorrt", "tensorrt-libs"),
        "tensorrt_llm": _version("tensorrt_llm", "tensorrt-llm"),
        "jetson_stats": _version("jetson-stats"),
        "jtop_service": "active" if Path("/run/jtop.sock").exists() else None,
        "swap": f"{sw.total >> 20} MiB ({sw.used >> 20} used)" if sw.total else None,
        "nvpmodel": _run(["nvpmodel", "-q"]),
        "llama_cpp": _version("llama_cpp_python", "llama-cpp-python"),
        "llama_cpp_gpu_offload": None if llama_gpu is None else str(llama_gpu).lower(),
        "nvml": "present" if importlib.util.find_spec("pynvml") else None,
    }


def advice(c: dict[str, str | None]) -> list[str]:
    out = []
    jetson = c["l4t_release"] is not None
    if not jetson:
        out.append("not a Jetson: the daemon runs llama.cpp" + (" on the GPU" if c["llama_cpp_gpu_offload"] == "true"
                                                                 else " on the CPU") + " with psutil telemetry")
    else:
        if "R36" not in c["l4t_release"] or "REVISION: 4." not in c["l4t_release"]:
            out.append("TensorRT-LLM 0.12.0-jetson needs JetPack 6.1 (L4T R36.4)")
        if not c["tensorrt_llm"]:
            out.append("for the trtllm backend: jetpack/install.sh --trtllm-wheel <tensorrt_llm-0.12.0 wheel>")
        if not c["jtop_service"]:
            out.append("jtop service not running: sudo systemctl enable --now jtop.service (telemetry falls back "
                       "to psutil)")
        if not c["swap"]:
            out.append("no swap: see `edge-llm plan` for the recommended size (jetpack/install.sh sets it up)")
    if not c["llama_cpp"]:
        out.append("llama-cpp-python is missing: run tools/setup.sh")
    return out


def report(as_json: bool = False) -> str:
    c = checks()
    if as_json:
        return json.dumps({"checks": c, "advice": advice(c)}, indent=2)
    lines = [f"{k:<22} {v if v is not None else 'not found'}" for k, v in c.items()]
    return "\n".join(lines + [""] + [f"- {a}" for a in advice(c)])
