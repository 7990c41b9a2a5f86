"""A STAND-IN for the TensorRT-LLM 0.12.0 (v0.12.0-jetson) wheel: the real wheel's name, version,
entry points and Requires-Dist, and no code that runs (the real one is CUDA for sm_87, aarch64).
Used by tests/test_provisioning.py to install it the way jetpack/install.sh does.

Requires-Dist is what the branch's setup.py writes on a Jetson (platform.release() has "tegra"):
requirements-jetson.txt at NVIDIA/TensorRT-LLM 20a7cec991b83dace860bfc32e57eb59d65a6ad3
(v0.12.0-jetson), comment lines and --extra-index-url dropped (setup.py parse_requirements), and
the "benchmarking" extra (click, pydantic). The "devel" extra (requirements-dev-jetson.txt) is
not copied: it was not read here. Tagged py3-none-any (the real one is cp310-cp310-linux_aarch64,
which pip refuses on another machine)."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

NAME, VERSION = "tensorrt_llm", "0.12.0"
REQUIRES_DIST = [
    "accelerate>=0.25.0",
    "build",
    "colored",
    "cuda-python",
    "diffusers>=0.27.0",
    "lark",
    "numpy<2",
    "onnx>=1.12.0",
    "polygraphy",
    "psutil",
    "pulp",
    "pandas",
    "h5py==3.10.0",
    "StrEnum",
    "sentencepiece>=0.1.99",
    "torch@ https://developer.download.nvidia.cn/compute/redist/jp/v61/pytorch/"
    "torch-2.5.0a0+872d972e41.nv24.08.17622132-cp310-cp310-linux_aarch64.whl",
    "nvidia-modelopt~=0.15.0",
    "transformers>=4.38.2",
    "pillow==10.2.0",
    "wheel",
    "optimum",
    "evaluate",
    "janus",
    "mpmath>=1.3.0",
    'click; extra == "benchmarking"',
    'pydantic; extra == "benchmarking"',
]
ENTRY_POINTS = (
    "[console_scripts]\ntrtllm-bench = tensorrt_llm.commands.bench:main\n"
    "trtllm-build = tensorrt_llm.commands.build:main\ntrtllm-prune = tensorrt_llm.commands.prune:main\n"
    "trtllm-refit = tensorrt_llm.commands.refit:main\n"
)


def _metadata() -> str:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {NAME}",
        f"Version: {VERSION}",
        "Summary: STAND-IN for TensorRT-LLM 0.12.0 (v0.12.0-jetson): its metadata, none of its code",
        "Requires-Python: >=3.7, <4",
        "Provides-Extra: benchmarking",
        "Provides-Extra: devel",
    ]
    return "\n".join(lines + [f"Requires-Dist: {r}" for r in REQUIRES_DIST]) + "\n"


def build(dest: Path) -> Path:
    files = {
        f"{NAME}/__init__.py": f'"""STAND-IN (edge-llm): not TensorRT-LLM."""\n__version__ = "{VERSION}"\n',
        f"{NAME}-{VERSION}.dist-info/METADATA": _metadata(),
        f"{NAME}-{VERSION}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: edge-llm\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
        f"{NAME}-{VERSION}.dist-info/entry_points.txt": ENTRY_POINTS,
    }
    record = f"{NAME}-{VERSION}.dist-info/RECORD"
    rows = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        rows.append(f"{path},sha256={digest},{len(text.encode())}")
    files[record] = "\n".join(rows + [f"{record},,"]) + "\n"
    wheel = Path(dest) / f"{NAME}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel
