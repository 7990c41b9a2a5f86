"""A flashed Orin runs JetPack 6.1's Python 3.10 (Ubuntu 22.04; JETSON.md), while this machine,
CI and the device twin (Debian bookworm) run 3.11: nothing here would catch a 3.11-only module or
call. vermin reads the code for the Python versions it needs (modules, functions, syntax)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ON_DEVICE = ["edge_llm", "tools/build_engine.py", "jetpack/trtllm_needs.py"]  # what a flashed Orin runs


def vermin(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("vermin", path=str(Path(sys.executable).parent)) or pytest.skip("vermin is not installed")
    return subprocess.run(
        [exe, "-q", "-t=3.10-", "--violations", "--eval-annotations", "--no-tips", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_code_a_jetson_runs_needs_no_newer_python_than_3_10():
    r = vermin(*ON_DEVICE)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_check_finds_a_3_11_module(tmp_path):
    (tmp_path / "uses_tomllib.py").write_text("import tomllib\n")
    r = vermin(str(tmp_path))
    assert r.returncode != 0 and "tomllib" in r.stdout
