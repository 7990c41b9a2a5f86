"""JetPack provisioning and the flashing overlay, run here against fakes (no Jetson)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tools import flash_overlay

ROOT = Path(__file__).resolve().parents[1]
R36_4 = ("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, "
         "DATE: Fri Sep 13 04:36:44 UTC 2024\n")
WHEEL = "/w/tensorrt_llm-0.12.0-cp310-cp310-linux_aarch64.whl"


def install_sh(tmp_path, release: str | None, *args):
    env = dict(os.environ)
    if release is not None:
        (tmp_path / "nv_tegra_release").write_text(release)
    env["L4T_RELEASE_FILE"] = str(tmp_path / "nv_tegra_release")
    return subprocess.run(["bash", str(ROOT / "jetpack/install.sh"), *args], capture_output=True, text=True, env=env)


def test_install_dry_run_prints_every_action_and_changes_nothing(tmp_path):
    r = install_sh(tmp_path, R36_4, "--dry-run", "--trtllm-wheel", WHEEL, "--maxn", "--headless", "--kiosk")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for action in ("+ python3 -m venv --system-site-packages /opt/edge-llm/venv",
                   f"-m pip install -q {WHEEL}",
                   "+ systemctl enable --now jtop.service",
                   "EDGE_LLM_CUDA=1 CUDA_ARCH=87",
                   f"+ install -m 0644 {ROOT}/systemd/edge-llm.service /etc/systemd/system/edge-llm.service",
                   "+ systemctl enable edge-llm.service", "+ systemctl enable edge-llm-kiosk.service",
                   "+ fallocate -l 16G /var/swap-edge-llm", "+ mkswap /var/swap-edge-llm",
                   "+ nvpmodel -m 0", "+ jetson_clocks", "+ write /etc/edge-llm/edge-llm.toml"):
        assert action in out, action
    assert not Path("/opt/edge-llm").exists() and not Path("/var/swap-edge-llm").exists()


@pytest.mark.parametrize("release", ["# R35 (release), REVISION: 4.1, GCID: 1\n", None])
def test_install_refuses_anything_but_l4t_r36_4(tmp_path, release):
    r = install_sh(tmp_path, release, "--dry-run")
    assert r.returncode == 1 and "not JetPack 6.1" in r.stderr


def test_install_rejects_unknown_options(tmp_path):
    r = install_sh(tmp_path, R36_4, "--dry-run", "--bogus")
    assert r.returncode == 2 and "unknown option --bogus" in r.stderr


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck not installed")
def test_shell_scripts_are_shellcheck_clean():
    scripts = [ROOT / "jetpack/install.sh", ROOT / "tools/setup.sh", ROOT / ".ci/run"]
    r = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def fake_l4t(tmp_path: Path, release: str = R36_4) -> Path:
    """A Linux_for_Tegra tree as NVIDIA's BSP unpacks it, reduced to what the tool touches."""
    l4t = tmp_path / "Linux_for_Tegra"
    (l4t / "rootfs/etc/systemd/system").mkdir(parents=True)
    (l4t / "flash.sh").write_text("#!/bin/sh\n")
    (l4t / "rootfs/etc/nv_tegra_release").write_text(release)
    return l4t


def test_overlay_installs_files_units_and_first_boot(tmp_path, capsys):
    l4t = fake_l4t(tmp_path)
    wheel = tmp_path / "tensorrt_llm-0.12.0-cp310-cp310-linux_aarch64.whl"
    wheel.write_bytes(b"wheel")
    assert flash_overlay.main(["--l4t", str(l4t), "--kiosk", "--trtllm-wheel", str(wheel)]) == 0
    rootfs = l4t / "rootfs"
    assert (rootfs / "opt/edge-llm/src/edge_llm/daemon.py").is_file()
    assert (rootfs / "opt/edge-llm/src/jetpack/install.sh").is_file()
    assert (rootfs / "opt/edge-llm/wheels" / wheel.name).read_bytes() == b"wheel"
    unit = rootfs / "etc/systemd/system/edge-llm.service"
    assert unit.read_text() == (ROOT / "systemd/edge-llm.service").read_text()
    firstboot = (rootfs / "etc/systemd/system/edge-llm-firstboot.service").read_text()
    assert "ExecStart=/opt/edge-llm/src/jetpack/install.sh --headless --kiosk --trtllm-wheel" in firstboot
    assert "ConditionPathExists=!/var/lib/edge-llm/.provisioned" in firstboot
    for target, unit in (("multi-user.target", "edge-llm-firstboot.service"), ("multi-user.target", "edge-llm.service"),
                         ("graphical.target", "edge-llm-kiosk.service")):
        link = rootfs / f"etc/systemd/system/{target}.wants/{unit}"
        assert link.is_symlink() and str(link.readlink()) == f"/etc/systemd/system/{unit}"
    assert "sudo ./flash.sh jetson-agx-orin-devkit internal" in capsys.readouterr().out
    assert not list(rootfs.rglob("__pycache__"))
    # a second run changes nothing it does not have to
    ov = flash_overlay.build(flash_overlay.argparse.Namespace(l4t=str(l4t), wheelhouse=None, trtllm_wheel=str(wheel),
                                                              kiosk=True, dry_run=True, target="emmc"))
    assert not any(a.startswith(("enable", "write")) for a in ov.actions)


def test_overlay_dry_run_writes_nothing_and_nvme_command(tmp_path, capsys):
    l4t = fake_l4t(tmp_path)
    assert flash_overlay.main(["--l4t", str(l4t), "--dry-run", "--target", "nvme"]) == 0
    assert not (l4t / "rootfs/opt").exists()
    out = capsys.readouterr().out
    assert "+ enable edge-llm.service" in out and "l4t_initrd_flash.sh --external-device nvme0n1p1" in out


def test_overlay_refuses_a_wrong_tree(tmp_path, capsys):
    assert flash_overlay.main(["--l4t", str(tmp_path)]) == 1
    assert "not a Linux_for_Tegra folder" in capsys.readouterr().err
    l4t = fake_l4t(tmp_path, "# R35 (release), REVISION: 5.0\n")
    assert flash_overlay.main(["--l4t", str(l4t)]) == 1
    assert "not L4T R36.4" in capsys.readouterr().err


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_first_boot_unit_verifies(tmp_path):
    l4t = fake_l4t(tmp_path)
    flash_overlay.main(["--l4t", str(l4t)])
    unit = l4t / "rootfs/etc/systemd/system/edge-llm-firstboot.service"
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True)
    assert [line for line in r.stderr.splitlines() if line and "is not executable" not in line] == []
