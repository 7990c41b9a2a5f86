"""Print what a TensorRT-LLM 0.12.0-jetson wheel needs besides itself, one requirement a line,
for `pip install` (jetpack/install.sh installs the wheel itself with --no-deps).

    python3 jetpack/trtllm_needs.py tensorrt_llm-0.12.0-cp310-cp310-linux_aarch64.whl

The wheel's Requires-Dist comes from requirements-jetson.txt on the v0.12.0-jetson branch
(setup.py parse_requirements, on "tegra" kernels). Taken as it is, except:
- torch: `torch @ https://developer.download.nvidia.cn/...` is a direct URL that pip fetches even
  with --no-index; the CUDA torch comes from --torch-wheel, installed before.
- nvidia-modelopt~=0.15.0: no aarch64 build of 0.15.x exists; only quantize.py (AWQ) imports it.
- tensorrt: JetPack's own (python3-libnvinfer, seen through --system-site-packages).
- any other direct URL: refused, since it could not install offline.
Added: mpi4py, which tensorrt_llm/_utils.py imports at import time but the list does not name
(dusty-nv/jetson-containers installs it beside the list for the same reason:
packages/llm/tensorrt_optimizer/tensorrt_llm/install.sh). Requirements for extras are left out.
Only the standard library: it runs with the system python3 before the venv has anything."""

from __future__ import annotations

import re
import sys
import zipfile
from email.parser import HeaderParser

DROPPED = {
    "torch": "the CUDA torch comes from --torch-wheel",
    "nvidia-modelopt": "no aarch64 build of 0.15.x; only quantize.py (AWQ) needs it",
    "tensorrt": "JetPack's python3-libnvinfer",
}
ADDED = ["mpi4py"]
NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requires_dist(wheel: str) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        return HeaderParser().parsestr(z.read(meta).decode()).get_all("Requires-Dist") or []


def needs(requirements: list[str]) -> tuple[list[str], list[str]]:
    """(to install, what was left out and why)"""
    keep, left = [], []
    for req in requirements:
        spec, _, marker = req.partition(";")
        if "extra ==" in marker.replace('"', "").replace("'", ""):
            continue
        name = canonical(NAME.match(req).group(1))
        if name in DROPPED:
            left.append(f"{spec.strip()}: {DROPPED[name]}")
        elif "@" in spec:
            raise SystemExit(f"trtllm_needs: {req!r} is a direct URL, which cannot install offline")
        else:
            keep.append(req.strip())
    names = {canonical(NAME.match(r).group(1)) for r in keep}
    return keep + [a for a in ADDED if a not in names], left


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.splitlines()[2].strip(), file=sys.stderr)
        return 2
    keep, left = needs(requires_dist(argv[0]))
    for line in left:
        print(f"trtllm_needs: left out {line}", file=sys.stderr)
    print("\n".join(keep))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
