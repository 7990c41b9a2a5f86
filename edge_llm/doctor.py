"""`edge-llm doctor`: what this device has, and what each backend would need."""

from __future__ import annotations

import grp
import importlib.metadata
import json
import shutil
import subprocess
import sys
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


DAEMON_USER = "edge-llm"
JETSON_STATS = "4.2.12"  # the version jetpack/install.sh pins (its sdist installs jtop.service)


def _jtop_group() -> str | None:
    """'yes' when the daemon's user may open /run/jtop.sock (0660 root:jtop)."""
    try:
        members = grp.getgrnam("jtop").gr_mem
    except KeyError:
        return None
    return "yes" if DAEMON_USER in members else "no"


def _torch_cuda() -> str | None:
    """torch's version and whether it sees CUDA, in a child (importing torch costs seconds)."""
    out = _run([sys.executable, "-c", "import torch; print(torch.__version__, torch.cuda.is_available())"])
    return out.splitlines()[-1] if out else None


def llama_cpu_features() -> str | None:
    """The instruction sets llama.cpp was compiled with, as it reports them itself."""
    try:
        import llama_cpp

        info = llama_cpp.llama_print_system_info().decode()
    except Exception:
        return None
    feats = [
        part.split("=")[0].strip() for part in info.replace("CPU :", "|").split("|") if part.strip().endswith("= 1")
    ]
    return " ".join(feats) or info.strip()


def nvml() -> str | None:
    """'present' when NVML answers (nvmlInit), not merely when pynvml imports: the package is
    a wrapper, and without the driver's libnvidia-ml every NVML reading fails."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return f"library missing: pynvml is installed, NVML does not start ({type(e).__name__})"
    pynvml.nvmlShutdown()
    return "present"


def checks() -> dict[str, str | None]:
    l4t = Path("/etc/nv_tegra_release")
    sw = psutil.swap_memory()
    llama_gpu = None
    try:
        import llama_cpp

        llama_gpu = bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:
        pass
    jetson = l4t.is_file()
    cusparselt = _run(["ldconfig", "-p"]) or ""
    return {
        "l4t_release": l4t.read_text().splitlines()[0] if jetson else None,
        "nvidia_jetpack": _run(["dpkg-query", "-W", "-f", "${Version}", "nvidia-jetpack"]) if jetson else None,
        "cusparselt": ("present" if "libcusparseLt" in cusparselt else None) if jetson else None,
        "torch_cuda": _torch_cuda() if jetson else None,
        "jtop_group": _jtop_group(),
        "cuda": _cuda(),
        "tensorrt": _version("tensorrt", "tensorrt-libs"),
        "tensorrt_llm": _version("tensorrt_llm", "tensorrt-llm"),
        "jetson_stats": _version("jetson-stats"),
        "jtop_service": "active" if Path("/run/jtop.sock").exists() else None,
        "swap": f"{sw.total >> 20} MiB ({sw.used >> 20} used)" if sw.total else None,
        "nvpmodel": _run(["nvpmodel", "-q"]),
        "llama_cpp": _version("llama_cpp_python", "llama-cpp-python"),
        "llama_cpp_gpu_offload": None if llama_gpu is None else str(llama_gpu).lower(),
        "llama_cpp_cpu_features": llama_cpu_features(),
        "nvml": nvml(),
    }


def advice(c: dict[str, str | None]) -> list[str]:
    out = []
    jetson = c["l4t_release"] is not None
    if not jetson:
        out.append(
            "not a Jetson: the daemon runs llama.cpp"
            + (" on the GPU" if c["llama_cpp_gpu_offload"] == "true" else " on the CPU")
            + " with psutil telemetry"
        )
    else:
        if "R36" not in c["l4t_release"] or "REVISION: 4." not in c["l4t_release"]:
            out.append("TensorRT-LLM 0.12.0-jetson needs JetPack 6.1 (L4T R36.4)")
        if not c["nvidia_jetpack"]:
            out.append("no CUDA/TensorRT (a flashed BSP has none): sudo apt install nvidia-jetpack")
        if not c["tensorrt_llm"]:
            out.append(
                "for the trtllm backend: jetpack/install.sh --trtllm-wheel <tensorrt_llm-0.12.0 wheel> "
                "--torch-wheel <NVIDIA's CUDA torch wheel for JetPack 6.1>"
            )
        if not c["cusparselt"]:
            out.append(
                "cuSPARSELt missing (TensorRT-LLM needs it, README4Jetson 1.2): CUDA_VERSION=12.6 bash "
                "TensorRT-LLM/docker/common/install_cusparselt.sh"
            )
        if not c["torch_cuda"] or not c["torch_cuda"].endswith("True"):
            out.append(
                "no CUDA build of torch (PyPI's aarch64 torch is CPU-only): install NVIDIA's torch wheel for "
                "JetPack 6.1 (jetpack/install.sh --torch-wheel W)"
            )
        if not c["jetson_stats"] or not c["jtop_service"]:
            out.append(
                f"jtop service not running: sudo pip3 install jetson-stats=={JETSON_STATS} (installs and starts "
                "jtop.service; telemetry falls back to psutil meanwhile)"
            )
        if c["jtop_group"] != "yes":
            out.append(
                f"the {DAEMON_USER} user cannot read jtop (/run/jtop.sock is 0660 root:jtop): sudo usermod "
                f"-aG jtop {DAEMON_USER} && sudo systemctl restart edge-llm"
            )
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
