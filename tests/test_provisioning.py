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
TORCH = "/w/torch-2.5.0a0+872d972e41.nv24.08-cp310-cp310-linux_aarch64.whl"


def install_sh(tmp_path, release: str | None, *args):
    env = dict(os.environ)
    if release is not None:
        (tmp_path / "nv_tegra_release").write_text(release)
    env["L4T_RELEASE_FILE"] = str(tmp_path / "nv_tegra_release")
    return subprocess.run(["bash", str(ROOT / "jetpack/install.sh"), *args], capture_output=True, text=True, env=env)


def test_install_dry_run_prints_every_action_and_changes_nothing(tmp_path):
    r = install_sh(tmp_path, R36_4, "--dry-run", "--trtllm-wheel", WHEEL, "--torch-wheel", TORCH, "--maxn",
                   "--headless", "--kiosk")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    actions = ["nvidia-jetpack", "python3-libnvinfer", "cage cog",
               "+ python3 -m venv --system-site-packages /opt/edge-llm/venv",
               "+ env CUDA_VERSION=12.6 bash /tmp/install_cusparselt.sh",
               f"-m pip install -q {TORCH}", "-m pip install -q numpy==1.26.1",
               f"-m pip install -q {WHEEL}",
               "+ pip3 install -q jetson-stats==4.2.12", "+ systemctl enable jtop.service",
               "+ systemctl start --no-block jtop.service",  # After=multi-user.target: no blocking start at first boot
               "+ usermod -a -G jtop edge-llm",
               "EDGE_LLM_CUDA=1 CUDA_ARCH=87",
               f"+ install -m 0644 {ROOT}/systemd/edge-llm.service /etc/systemd/system/edge-llm.service",
               "+ systemctl enable edge-llm.service", "+ systemctl enable edge-llm-kiosk.service",
               "+ systemctl enable edge-llm-clocks.service",
               "+ fallocate -l 16G /var/swap-edge-llm", "+ mkswap /var/swap-edge-llm",
               "+ nvpmodel -m 0", "+ jetson_clocks", "+ write /etc/edge-llm/edge-llm.toml"]
    at = [out.find(a) for a in actions]
    assert -1 not in at, [a for a, i in zip(actions, at, strict=True) if i == -1]
    # CUDA torch before TensorRT-LLM; jtop's group only once jetson-stats made it
    assert out.find(TORCH) < out.find(WHEEL) and out.find("jtop.service") < out.find("usermod -a -G jtop")
    assert "chromium" not in out and "jetson-stats>=" not in out
    assert not Path("/opt/edge-llm").exists() and not Path("/var/swap-edge-llm").exists()


def test_install_trtllm_wheel_needs_a_cuda_torch_wheel(tmp_path):
    r = install_sh(tmp_path, R36_4, "--dry-run", "--trtllm-wheel", WHEEL)
    assert r.returncode == 2 and "--trtllm-wheel needs --torch-wheel" in r.stderr


def test_setup_extra_pins_the_jetson_stats_that_installs_its_service():
    setup = (ROOT / "setup.py").read_text()
    assert '"jetson-stats==4.2.12"' in setup and "JETSON_STATS=4.2.12" in (ROOT / "jetpack/install.sh").read_text()


def test_doctor_names_each_missing_jetson_prerequisite_with_its_fix():
    from edge_llm import doctor
    c = {"l4t_release": R36_4.strip(), "nvidia_jetpack": None, "cusparselt": None, "torch_cuda": "2.3.0 False",
         "jtop_group": "no", "cuda": None, "tensorrt": None, "tensorrt_llm": None, "jetson_stats": "4.2.12",
         "jtop_service": None, "swap": "16384 MiB (0 used)", "nvpmodel": "NV Power Mode: MAXN",
         "llama_cpp": "0.3.36", "llama_cpp_gpu_offload": "true", "llama_cpp_cpu_features": "NEON", "nvml": None}
    advice = "\n".join(doctor.advice(c))
    for fix in ("sudo apt install nvidia-jetpack",
                "CUDA_VERSION=12.6 bash TensorRT-LLM/docker/common/install_cusparselt.sh", "--torch-wheel",
                "sudo usermod -aG jtop edge-llm", "sudo pip3 install jetson-stats==4.2.12", "--trtllm-wheel"):
        assert fix in advice, fix
    ready = dict(c, nvidia_jetpack="6.1+b123", cusparselt="present", torch_cuda="2.5.0a0 True", jtop_group="yes",
                 tensorrt_llm="0.12.0", jtop_service="active")
    assert doctor.advice(ready) == []


@pytest.mark.parametrize("release", ["# R35 (release), REVISION: 4.1, GCID: 1\n", None])
def test_install_refuses_anything_but_l4t_r36_4(tmp_path, release):
    r = install_sh(tmp_path, release, "--dry-run")
    assert r.returncode == 1 and "not JetPack 6.1" in r.stderr


def test_install_rejects_unknown_options(tmp_path):
    r = install_sh(tmp_path, R36_4, "--dry-run", "--bogus")
    assert r.returncode == 2 and "unknown option --bogus" in r.stderr


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck not installed")
def test_shell_scripts_are_shellcheck_clean():
    scripts = [ROOT / "jetpack/install.sh", ROOT / "tools/setup.sh", ROOT / ".ci/run", ROOT / "tools/twin/standin.sh"]
    r = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def fake_l4t(tmp_path: Path, release: str = R36_4, default_user: bool = True) -> Path:
    """A Linux_for_Tegra tree as NVIDIA's BSP unpacks it, reduced to what the tool touches;
    default_user: l4t_create_default_user.sh has written a login user into the rootfs."""
    l4t = tmp_path / "Linux_for_Tegra"
    (l4t / "rootfs/etc/systemd/system").mkdir(parents=True)
    (l4t / "flash.sh").write_text("#!/bin/sh\n")
    (l4t / "rootfs/etc/nv_tegra_release").write_text(release)
    passwd = "root:x:0:0:root:/root:/bin/bash\nsyslog:x:104:110::/home/syslog:/usr/sbin/nologin\n"
    if default_user:
        passwd += "kiosk:x:1000:1000:kiosk,,,:/home/kiosk:/bin/bash\n"
    (l4t / "rootfs/etc/passwd").write_text(passwd)
    return l4t


def test_overlay_installs_files_units_and_first_boot(tmp_path, capsys):
    l4t = fake_l4t(tmp_path)
    wheel = tmp_path / "tensorrt_llm-0.12.0-cp310-cp310-linux_aarch64.whl"
    wheel.write_bytes(b"wheel")
    torch = tmp_path / "torch-2.5.0-cp310-cp310-linux_aarch64.whl"
    torch.write_bytes(b"torch")
    assert flash_overlay.main(["--l4t", str(l4t), "--kiosk", "--trtllm-wheel", str(wheel),
                               "--torch-wheel", str(torch)]) == 0
    rootfs = l4t / "rootfs"
    assert (rootfs / "opt/edge-llm/src/edge_llm/daemon.py").is_file()
    assert (rootfs / "opt/edge-llm/src/jetpack/install.sh").is_file()
    assert (rootfs / "opt/edge-llm/wheels" / wheel.name).read_bytes() == b"wheel"
    unit = rootfs / "etc/systemd/system/edge-llm.service"
    assert unit.read_text() == (ROOT / "systemd/edge-llm.service").read_text()
    firstboot = (rootfs / "etc/systemd/system/edge-llm-firstboot.service").read_text()
    assert ("ExecStart=/opt/edge-llm/src/jetpack/install.sh --headless --kiosk --trtllm-wheel "
            f"/opt/edge-llm/wheels/{wheel.name} --torch-wheel /opt/edge-llm/wheels/{torch.name}") in firstboot
    assert "ConditionPathExists=!/var/lib/edge-llm/.provisioned" in firstboot
    # L4T disables NetworkManager-wait-online: wait for NetworkManager itself, retry on failure
    assert "ExecStartPre=/usr/bin/nm-online -s -q" in firstboot and "Restart=on-failure" in firstboot
    assert "ExecStartPost=/bin/systemctl disable edge-llm-firstboot.service" in firstboot
    # install.sh --headless boots multi-user.target: everything, the kiosk too, is wanted there
    for unit in ("edge-llm-firstboot.service", "edge-llm.service", "edge-llm-kiosk.service"):
        link = rootfs / f"etc/systemd/system/multi-user.target.wants/{unit}"
        assert link.is_symlink() and str(link.readlink()) == f"/etc/systemd/system/{unit}"
    assert not (rootfs / "etc/systemd/system/graphical.target.wants").exists()
    assert "sudo ./flash.sh jetson-agx-orin-devkit internal" in capsys.readouterr().out
    assert not list(rootfs.rglob("__pycache__"))
    # a second run changes nothing it does not have to
    ov = flash_overlay.build(flash_overlay.argparse.Namespace(
        l4t=str(l4t), wheelhouse=None, trtllm_wheel=str(wheel), torch_wheel=str(torch), kiosk=True, dry_run=True,
        target="emmc", oem_config=False, install_arg=[]))
    assert not any(a.startswith(("enable", "write")) for a in ov.actions)


def test_overlay_dry_run_writes_nothing_and_nvme_command_is_r36_4s(tmp_path, capsys):
    l4t = fake_l4t(tmp_path)
    assert flash_overlay.main(["--l4t", str(l4t), "--dry-run", "--target", "nvme"]) == 0
    assert not (l4t / "rootfs/opt").exists()
    out = capsys.readouterr().out
    assert "+ enable edge-llm.service" in out
    assert ("sudo ./tools/kernel_flash/l4t_initrd_flash.sh --external-device nvme0n1p1 -c "
            "tools/kernel_flash/flash_l4t_t234_nvme.xml --showlogs --network usb0 "
            "jetson-agx-orin-devkit external") in out


def test_overlay_passes_install_args_as_single_words_only(tmp_path, capsys):
    l4t = fake_l4t(tmp_path)
    assert flash_overlay.main(["--l4t", str(l4t), "--install-arg=--maxn", "--install-arg=--swap-gb",
                               "--install-arg=16"]) == 0
    unit = (l4t / "rootfs/etc/systemd/system/edge-llm-firstboot.service").read_text()
    assert "ExecStart=/opt/edge-llm/src/jetpack/install.sh --headless --maxn --swap-gb 16\n" in unit
    for bad in ("--swap-gb 16", "--x;reboot", "%h", "$HOME", "'a'", ""):
        with pytest.raises(SystemExit) as e:
            flash_overlay.main(["--l4t", str(l4t), f"--install-arg={bad}"])
        assert e.value.code == 2
        assert "one word without spaces" in capsys.readouterr().err


def test_install_cpu_option_builds_llama_cpp_for_the_cpu(tmp_path):
    r = install_sh(tmp_path, R36_4, "--dry-run", "--cpu")
    assert r.returncode == 0, r.stderr
    assert "EDGE_LLM_CUDA=0" in r.stdout and "CUDA_ARCH=87" not in r.stdout
    assert "llama.cpp (on the CPU)" in r.stdout


def test_overlay_refuses_a_rootfs_that_would_stop_in_oem_config(tmp_path, capsys):
    l4t = fake_l4t(tmp_path, default_user=False)
    assert flash_overlay.main(["--l4t", str(l4t)]) == 1
    err = capsys.readouterr().err
    assert "oem-config" in err and "l4t_create_default_user.sh -u USER -p PASSWORD -n HOSTNAME --accept-license" in err
    assert not (l4t / "rootfs/opt").exists()
    assert flash_overlay.main(["--l4t", str(l4t), "--oem-config"]) == 0  # a person will finish the setup


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
