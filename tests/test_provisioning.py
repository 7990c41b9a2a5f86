"""JetPack provisioning and the flashing overlay, run here against fakes (no Jetson)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools import flash_overlay

ROOT = Path(__file__).resolve().parents[1]
R36_4 = (
    "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, "
    "DATE: Fri Sep 13 04:36:44 UTC 2024\n"
)
WHEEL = "/w/tensorrt_llm-0.12.0-cp310-cp310-linux_aarch64.whl"
TORCH = "/w/torch-2.5.0a0+872d972e41.nv24.08-cp310-cp310-linux_aarch64.whl"


def install_sh(tmp_path, release: str | None, *args, ram_kb: int = 64 << 20):
    env = dict(os.environ)
    if release is not None:
        (tmp_path / "nv_tegra_release").write_text(release)
    env["L4T_RELEASE_FILE"] = str(tmp_path / "nv_tegra_release")
    (tmp_path / "meminfo").write_text(f"MemTotal:       {ram_kb} kB\nMemFree:        1000 kB\n")
    env["MEMINFO"] = str(tmp_path / "meminfo")
    return subprocess.run(["bash", str(ROOT / "jetpack/install.sh"), *args], capture_output=True, text=True, env=env)


def install_step(script: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """install.sh sourced (its steps defined, nothing run), then `script`."""
    return subprocess.run(
        ["bash", "-c", f'set -euo pipefail; source "$1"; {script}', "bash", str(ROOT / "jetpack/install.sh")],
        capture_output=True,
        text=True,
        env=env or dict(os.environ),
        timeout=timeout,
    )


def test_install_dry_run_prints_every_action_and_changes_nothing(tmp_path):
    r = install_sh(
        tmp_path, R36_4, "--dry-run", "--trtllm-wheel", WHEEL, "--torch-wheel", TORCH, "--maxn", "--headless", "--kiosk"
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    actions = [
        "nvidia-jetpack",
        "python3-libnvinfer",
        "libopenmpi-dev",
        "cage cog xwayland",
        "+ python3 -m venv --system-site-packages /opt/edge-llm/venv",
        '+ env CUDA_VERSION=12.6 bash -c cd "$(mktemp -d)" && exec bash "$0" /tmp/install_cusparselt.sh',
        f"-m pip install -q {TORCH}",
        "-m pip install -q numpy==1.26.1",
        f"-m pip install -q --no-deps {WHEEL}",
        "pip3 install -q jetson-stats==4.2.12",
        "+ systemctl enable jtop.service",
        "+ systemctl start --no-block jtop.service",  # After=multi-user.target: no blocking start at first boot
        "+ usermod -a -G jtop edge-llm",
        "EDGE_LLM_CUDA=1 CUDA_ARCH=87 CUDACXX=/usr/local/cuda/bin/nvcc CUDA_PATH=/usr/local/cuda "
        "PATH=/usr/local/cuda/bin:",
        f"+ install -m 0644 {ROOT}/systemd/edge-llm.service /etc/systemd/system/edge-llm.service",
        "+ systemctl enable edge-llm.service",
        "+ systemctl enable edge-llm-kiosk.service",
        "+ systemctl enable edge-llm-clocks.service",
        "+ fallocate -l 16G /var/swap-edge-llm",
        "+ mkswap /var/swap-edge-llm",
        "+ nvpmodel -m 0",
        "+ jetson_clocks",
        "+ write /etc/edge-llm/edge-llm.toml",
    ]
    at = [out.find(a) for a in actions]
    assert -1 not in at, [a for a, i in zip(actions, at, strict=True) if i == -1]
    # CUDA torch before TensorRT-LLM; jtop's group only once jetson-stats made it
    assert out.find(TORCH) < out.find(WHEEL) and out.find("jtop.service") < out.find("usermod -a -G jtop")
    assert "chromium" not in out and "jetson-stats>=" not in out
    assert "edge-llm plan" not in r.stdout + r.stderr  # swap is sized without loading a model
    assert not Path("/opt/edge-llm").exists() and not Path("/var/swap-edge-llm").exists()


def test_install_trtllm_wheel_needs_a_cuda_torch_wheel(tmp_path):
    r = install_sh(tmp_path, R36_4, "--dry-run", "--trtllm-wheel", WHEEL)
    assert r.returncode == 2 and "--trtllm-wheel needs --torch-wheel" in r.stderr


def test_setup_extra_pins_the_jetson_stats_that_installs_its_service():
    setup = (ROOT / "setup.py").read_text()
    assert '"jetson-stats==4.2.12"' in setup and "JETSON_STATS=4.2.12" in (ROOT / "jetpack/install.sh").read_text()


def test_doctor_names_each_missing_jetson_prerequisite_with_its_fix():
    from edge_llm import doctor

    c = {
        "l4t_release": R36_4.strip(),
        "nvidia_jetpack": None,
        "cusparselt": None,
        "torch_cuda": "2.3.0 False",
        "jtop_group": "no",
        "cuda": None,
        "tensorrt": None,
        "tensorrt_llm": None,
        "jetson_stats": "4.2.12",
        "jtop_service": None,
        "swap": "16384 MiB (0 used)",
        "nvpmodel": "NV Power Mode: MAXN",
        "llama_cpp": "0.3.36",
        "llama_cpp_gpu_offload": "true",
        "llama_cpp_cpu_features": "NEON",
        "nvml": None,
    }
    advice = "\n".join(doctor.advice(c))
    for fix in (
        "sudo apt install nvidia-jetpack",
        "CUDA_VERSION=12.6 bash TensorRT-LLM/docker/common/install_cusparselt.sh",
        "--torch-wheel",
        "sudo usermod -aG jtop edge-llm",
        "sudo pip3 install jetson-stats==4.2.12",
        "--trtllm-wheel",
    ):
        assert fix in advice, fix
    ready = dict(
        c,
        nvidia_jetpack="6.1+b123",
        cusparselt="present",
        torch_cuda="2.5.0a0 True",
        jtop_group="yes",
        tensorrt_llm="0.12.0",
        jtop_service="active",
    )
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
    scripts = [
        ROOT / "jetpack/install.sh",
        ROOT / "tools/setup.sh",
        ROOT / ".ci/run",
        ROOT / "tools/twin/standin.sh",
        ROOT / "tools/twin/nvcc",
    ]
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
    assert (
        flash_overlay.main(["--l4t", str(l4t), "--kiosk", "--trtllm-wheel", str(wheel), "--torch-wheel", str(torch)])
        == 0
    )
    rootfs = l4t / "rootfs"
    assert (rootfs / "opt/edge-llm/src/edge_llm/daemon.py").is_file()
    assert (rootfs / "opt/edge-llm/src/jetpack/install.sh").is_file()
    assert (rootfs / "opt/edge-llm/wheels" / wheel.name).read_bytes() == b"wheel"
    unit = rootfs / "etc/systemd/system/edge-llm.service"
    assert unit.read_text() == (ROOT / "systemd/edge-llm.service").read_text()
    firstboot = (rootfs / "etc/systemd/system/edge-llm-firstboot.service").read_text()
    assert (
        "ExecStart=/opt/edge-llm/src/jetpack/install.sh --headless --kiosk --trtllm-wheel "
        f"/opt/edge-llm/wheels/{wheel.name} --torch-wheel /opt/edge-llm/wheels/{torch.name}"
    ) in firstboot
    assert "ConditionPathExists=!/var/lib/edge-llm/.provisioned" in firstboot
    # apt refuses a repository whose Release file is dated after a board's wrong clock
    assert "After=network-online.target NetworkManager.service time-sync.target\n" in firstboot
    # L4T disables NetworkManager-wait-online: wait for NetworkManager itself, retry on failure
    assert "ExecStartPre=/usr/bin/nm-online -s -q" in firstboot and "Restart=on-failure" in firstboot
    assert "ExecStartPost=/bin/systemctl disable edge-llm-firstboot.service" in firstboot
    # install.sh --headless boots multi-user.target: everything, the kiosk too, is wanted there
    for unit in ("edge-llm-firstboot.service", "edge-llm.service", "edge-llm-kiosk.service"):
        link = rootfs / f"etc/systemd/system/multi-user.target.wants/{unit}"
        assert link.is_symlink() and str(link.readlink()) == f"/etc/systemd/system/{unit}"
    # the kiosk comes back with the daemon (Requires= stops it with the daemon)
    link = rootfs / "etc/systemd/system/edge-llm.service.wants/edge-llm-kiosk.service"
    assert link.is_symlink() and str(link.readlink()) == "/etc/systemd/system/edge-llm-kiosk.service"
    assert not (rootfs / "etc/systemd/system/graphical.target.wants").exists()
    assert "sudo ./flash.sh jetson-agx-orin-devkit internal" in capsys.readouterr().out
    assert not list(rootfs.rglob("__pycache__"))
    # a second run changes nothing it does not have to
    ov = flash_overlay.build(
        flash_overlay.argparse.Namespace(
            l4t=str(l4t),
            wheelhouse=None,
            trtllm_wheel=str(wheel),
            torch_wheel=str(torch),
            kiosk=True,
            dry_run=True,
            target="emmc",
            oem_config=False,
            install_arg=[],
        )
    )
    assert not any(a.startswith(("enable", "write")) for a in ov.actions)


def test_overlay_dry_run_writes_nothing_and_nvme_command_is_r36_4s(tmp_path, capsys):
    l4t = fake_l4t(tmp_path)
    assert flash_overlay.main(["--l4t", str(l4t), "--dry-run", "--target", "nvme"]) == 0
    assert not (l4t / "rootfs/opt").exists()
    out = capsys.readouterr().out
    assert "+ enable edge-llm.service" in out
    assert (
        "sudo ./tools/kernel_flash/l4t_initrd_flash.sh --external-device nvme0n1p1 -c "
        "tools/kernel_flash/flash_l4t_t234_nvme.xml --showlogs --network usb0 "
        "jetson-agx-orin-devkit external"
    ) in out


def test_overlay_passes_install_args_as_single_words_only(tmp_path, capsys):
    l4t = fake_l4t(tmp_path)
    assert (
        flash_overlay.main(["--l4t", str(l4t), "--install-arg=--maxn", "--install-arg=--swap-gb", "--install-arg=16"])
        == 0
    )
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


# -- first boot on the device's own path, step by step (the twin runs them all for real) ---------


def fake_bin(tmp_path: Path, **scripts: str) -> dict:
    """An environment whose PATH starts with a folder of stand-in commands (sh scripts)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        (bindir / name).write_text("#!/bin/sh\n" + body)
        (bindir / name).chmod(0o755)
    return dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", LOG=str(tmp_path / "calls.log"))


def test_jetson_stats_setup_py_does_not_wait_for_jtop_at_first_boot(tmp_path):
    """jetson-stats 4.2.12's setup.py (pip as root) runs `systemctl start jtop.service` with no
    timeout (jtop/service.py install_service, jtop/core/command.py). At first boot that start job
    waits for multi-user.target, which waits for install.sh: here a systemctl that blocks on a
    start job without --no-block stands for it, and pip3 does what that setup.py does."""
    env = fake_bin(
        tmp_path,
        systemctl="""echo "systemctl $*" >> "$LOG"
case " $* " in *" start "*) case " $* " in *" --no-block "*) ;; *) sleep 600 ;; esac ;; esac  # the job waits
exit 0
""",
        pip3="""[ "$1" = show ] && exit 1
echo "pip3 $*" >> "$LOG"
systemctl daemon-reload && systemctl enable jtop.service && systemctl start jtop.service
""",
        usermod='echo "usermod $*" >> "$LOG"',
    )
    r = install_step("DRY=0; jtop_service", env, timeout=30)
    assert r.returncode == 0, r.stderr
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert "pip3 install -q jetson-stats==4.2.12" in calls
    assert "systemctl --no-block start jtop.service" in calls  # setup.py's own start, not waited for
    assert "systemctl start jtop.service" not in calls
    assert "systemctl daemon-reload" in calls and "systemctl start --no-block jtop.service" in calls


CMAKE_CUDA_PROBE = "cmake_minimum_required(VERSION 3.18)\nproject(probe LANGUAGES CUDA)\n"
UNIT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # systemd's PATH for units


@pytest.mark.skipif(not shutil.which("cmake"), reason="cmake not installed")
def test_cuda_build_from_a_unit_finds_nvcc_the_way_cmake_looks(tmp_path):
    """A unit's PATH has no /usr/local/cuda/bin: CMake's CUDA check (CMakeDetermineCUDACompiler)
    then stops with "No CMAKE_CUDA_COMPILER could be found". The real CMake runs here on a probe
    project, in the environment install.sh gives tools/setup.sh; the nvcc is a STAND-IN that
    records its calls and compiles nothing, so CMake gets as far as asking it and no further."""
    cuda = tmp_path / "cuda"
    (cuda / "bin").mkdir(parents=True)
    (cuda / "bin/nvcc").write_text(
        '#!/bin/sh\n[ "$1" = --version ] && { echo "Cuda compilation tools, release 12.6"; '
        f'exit 0; }}\necho "nvcc $*" >> {tmp_path}/nvcc.log\n'
        'echo "STAND-IN nvcc: compiles nothing" >&2; exit 1\n'
    )
    (cuda / "bin/nvcc").chmod(0o755)
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe/CMakeLists.txt").write_text(CMAKE_CUDA_PROBE)
    r = install_step("DRY=0; CPU=0; check_nvcc; cuda_env", dict(os.environ, CUDA_HOME=str(cuda), PATH=UNIT_PATH))
    assert r.returncode == 0, r.stderr
    build_env = r.stdout.split()
    assert f"CUDACXX={cuda}/bin/nvcc" in build_env

    def cmake(env_words):
        return subprocess.run(
            [
                "env",
                "-i",
                f"PATH={UNIT_PATH}",
                *env_words,
                shutil.which("cmake"),
                "-S",
                str(tmp_path / "probe"),
                "-B",
                str(tmp_path / f"build{len(env_words)}"),
            ],
            capture_output=True,
            text=True,
        )

    if not shutil.which("nvcc", path=UNIT_PATH):  # the unit's environment alone: the defect
        bare = cmake([])
        assert "No CMAKE_CUDA_COMPILER could be found" in bare.stdout + bare.stderr
    found = cmake(build_env)
    assert "No CMAKE_CUDA_COMPILER could be found" not in found.stdout + found.stderr
    assert (tmp_path / "nvcc.log").read_text().strip(), "CMake never ran the nvcc it was given"


def test_install_stops_early_when_jetpack_left_no_nvcc(tmp_path):
    r = install_step("DRY=0; CPU=0; check_nvcc", dict(os.environ, CUDA_HOME=str(tmp_path / "none")))
    assert r.returncode == 1 and "no CUDA compiler at" in r.stderr and "--cpu" in r.stderr


@pytest.mark.parametrize("ram_gib", [8, 16, 30, 62, 64])
def test_swap_is_sized_from_ram_alone_by_the_planners_rule(tmp_path, ram_gib):
    """`edge-llm plan --json` loaded the model (CUDA, as root) during provisioning, and any failure
    aborted install.sh. The size depends only on RAM (planner.recommend_swap)."""
    from edge_llm.planner import recommend_swap
    from edge_llm.telemetry import Snapshot

    kb = ram_gib << 20
    (tmp_path / "meminfo").write_text(f"MemTotal:       {kb} kB\n")
    r = install_step("swap_gb", dict(os.environ, MEMINFO=str(tmp_path / "meminfo")))
    assert r.returncode == 0, r.stderr
    want = recommend_swap(Snapshot("test", ram_total_bytes=kb << 10, ram_available_bytes=0, ram_used_bytes=0)) >> 30
    assert int(r.stdout) == want
    dry = install_sh(tmp_path, R36_4, "--dry-run", ram_kb=kb)
    assert f"+ fallocate -l {want}G /var/swap-edge-llm" in dry.stdout and "edge-llm plan" not in dry.stdout


def test_cusparselt_present_is_not_reinstalled_despite_sigpipe(tmp_path):
    """`ldconfig -p | grep -q` under pipefail: grep exits at the first match, ldconfig dies of
    SIGPIPE and the pipeline fails, so a present library looked missing."""
    env = fake_bin(
        tmp_path,
        ldconfig='echo "\tlibcusparseLt.so.0 (libc6,AArch64) => /usr/lib/libcusparseLt.so.0"\nexec seq 1 2000000\n',
    )
    r = install_step(f"DRY=1; VENV={tmp_path}/venv; TORCH_WHEEL=/w/torch.whl; trtllm_prerequisites", env)
    assert r.returncode == 0, r.stderr
    assert "cuSPARSELt" not in r.stdout, r.stdout


def test_cusparselt_retry_after_a_failed_attempt_runs_the_script_again(tmp_path):
    """PyTorch's install_cusparselt.sh starts with `mkdir tmp_cusparselt` (no -p) where it runs:
    after one failed attempt (e.g. its download), every retry of the first-boot unit failed there."""
    script = tmp_path / "install_cusparselt.sh"
    script.write_text(
        'mkdir tmp_cusparselt && cd tmp_cusparselt && echo "made $PWD" >> "$LOG"\n'
        'echo "curl: (6) Could not resolve host" >&2; exit 1\n'
    )
    env = fake_bin(tmp_path, ldconfig="exit 0\n")
    for _ in range(2):
        r = subprocess.run(
            [
                "bash",
                "-c",
                'set -euo pipefail; source "$1"; DRY=0; CUSPARSELT_SCRIPT=$2; trtllm_prerequisites',
                "bash",
                str(ROOT / "jetpack/install.sh"),
                str(script),
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        assert r.returncode != 0 and "Could not resolve host" in r.stderr, r.stderr
    assert len((tmp_path / "calls.log").read_text().splitlines()) == 2  # the script got as far both times


def test_trtllm_wheel_installs_offline_with_no_deps_and_its_needs_named(tmp_path):
    """The v0.12.0-jetson wheel's Requires-Dist (requirements-jetson.txt) has `torch @ https://...`
    and nvidia-modelopt~=0.15.0 (no aarch64 build): a STAND-IN wheel with that metadata installs
    offline with --no-deps (real pip), and its needs are installed by name, without those two."""
    from tools.twin import trtllm_wheel

    wheel = trtllm_wheel.build(tmp_path)
    r = subprocess.run(
        [sys.executable, str(ROOT / "jetpack/trtllm_needs.py"), str(wheel)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    needs = r.stdout.split()
    assert "accelerate>=0.25.0" in needs and "h5py==3.10.0" in needs and "mpi4py" in needs
    assert not [n for n in needs if n.startswith(("torch", "nvidia-modelopt", "click", "pydantic")) or "@" in n]
    assert "torch@ https://" in r.stderr and "nvidia-modelopt~=0.15.0" in r.stderr
    step = install_step(f"DRY=1; VENV=/v; WHEELHOUSE={tmp_path}/wh; TRTLLM_WHEEL={wheel}; trtllm_wheel")
    assert step.returncode == 0, step.stderr
    lines = step.stdout.splitlines()
    assert f"+ /v/bin/python -m pip install -q --no-index --find-links {tmp_path}/wh {' '.join(needs)}" in lines
    assert f"+ /v/bin/python -m pip install -q --no-index --find-links {tmp_path}/wh --no-deps {wheel}" in lines
    (tmp_path / "wh").mkdir()
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--find-links",
            str(tmp_path / "wh"),
            "--no-deps",
            "--target",
            str(tmp_path / "site"),
            str(wheel),
        ],
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, pip.stderr
    assert (tmp_path / "site/tensorrt_llm-0.12.0.dist-info/METADATA").is_file()


def test_headless_first_boot_stops_the_display_manager_now(tmp_path):
    """set-default multi-user.target applies from the next boot: on the first one gdm still holds
    the display (and its memory) that the kiosk wants."""
    env = fake_bin(
        tmp_path,
        systemctl="""echo "systemctl $*" >> "$LOG"
case "$1" in get-default) echo graphical.target ;; is-active) exit 0 ;; esac
""",
    )
    r = install_step("DRY=1; HEADLESS=1; power", env)
    assert r.returncode == 0, r.stderr
    assert "+ systemctl set-default multi-user.target" in r.stdout
    assert "+ systemctl stop --no-block display-manager.service" in r.stdout
