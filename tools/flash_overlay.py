"""Install the edge-llm appliance into a Linux_for_Tegra rootfs before flashing an AGX Orin.

    sudo .venv/bin/python tools/flash_overlay.py --l4t ~/nvidia/Linux_for_Tegra \\
        [--wheelhouse DIR] [--trtllm-wheel WHEEL --torch-wheel WHEEL] [--kiosk] [--target emmc|nvme]
        [--oem-config] [--install-arg=ARG ...] [--dry-run]

It copies the source and the units into rootfs/, enables them with the symlinks systemctl
would make, adds a first-boot unit that runs jetpack/install.sh on the device (it needs the
device's own CUDA and TensorRT) and then disables itself, and prints the flash command.

Without a default user made before flashing (l4t_create_default_user.sh), first boot stops
in oem-config and waits for a person: the tool refuses such a rootfs unless --oem-config
says that is wanted. Written from NVIDIA's documented JetPack 6.1 (L4T R36.4) layout; tested
here against a fake Linux_for_Tegra tree only.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ITEMS = ["setup.py", "README.md", "ruff.toml", "edge_llm", "jetpack", "systemd", "tools"]
BOARD = "jetson-agx-orin-devkit"
# L4T disables NetworkManager-wait-online, so network-online.target says nothing about DHCP:
# nm-online -s waits for NetworkManager's own startup to finish (what wait-online does), and
# a failed run (apt unreachable) is retried every minute until it succeeds. After=time-sync.target:
# apt refuses repositories whose Release files are dated in the future of a board's wrong clock.
FIRSTBOOT_UNIT = """[Unit]
Description=edge-llm first-boot provisioning (runs jetpack/install.sh once)
After=network-online.target NetworkManager.service time-sync.target
Wants=network-online.target
Before=edge-llm.service
ConditionPathExists=!/var/lib/edge-llm/.provisioned
StartLimitIntervalSec=0

[Service]
Type=oneshot
RemainAfterExit=yes
TimeoutStartSec=3h
ExecStartPre=/usr/bin/nm-online -s -q --timeout=600
ExecStart=/opt/edge-llm/src/jetpack/install.sh {args}
ExecStartPost=/bin/sh -c 'mkdir -p /var/lib/edge-llm && touch /var/lib/edge-llm/.provisioned'
ExecStartPost=/bin/systemctl disable edge-llm-firstboot.service
ExecStartPost=/bin/systemctl start --no-block edge-llm.service
Restart=on-failure
RestartSec=60

[Install]
WantedBy=multi-user.target
"""


class OverlayError(RuntimeError):
    pass


def flash_command(target: str) -> str:
    """R36.4, AGX Orin devkit (JETSON.md): eMMC with flash.sh, NVMe with the initrd flash."""
    if target == "nvme":
        return (
            "sudo ./tools/kernel_flash/l4t_initrd_flash.sh --external-device nvme0n1p1 "
            "-c tools/kernel_flash/flash_l4t_t234_nvme.xml --showlogs --network usb0 "
            f"{BOARD} external"
        )
    return f"sudo ./flash.sh {BOARD} internal"


CREATE_USER = "sudo ./tools/l4t_create_default_user.sh -u USER -p PASSWORD -n HOSTNAME --accept-license"


def has_default_user(rootfs: Path) -> bool:
    """l4t_create_default_user.sh writes a login user (uid >= 1000) into rootfs/etc/passwd."""
    passwd = rootfs / "etc/passwd"
    if not passwd.is_file():
        return False
    for line in passwd.read_text().splitlines():
        fields = line.split(":")
        if (
            len(fields) >= 7
            and fields[2].isdigit()
            and 1000 <= int(fields[2]) < 60000
            and not fields[6].endswith(("nologin", "false"))
        ):
            return True
    return False


class Overlay:
    def __init__(self, l4t: Path, dry_run: bool):
        self.l4t, self.rootfs, self.dry_run = l4t, l4t / "rootfs", dry_run
        self.actions: list[str] = []

    def check(self, oem_config: bool = False) -> None:
        if not (self.l4t / "flash.sh").is_file():
            raise OverlayError(f"{self.l4t} is not a Linux_for_Tegra folder (no flash.sh)")
        release = self.rootfs / "etc/nv_tegra_release"
        if not release.is_file():
            raise OverlayError(f"{self.rootfs} has no etc/nv_tegra_release: run apply_binaries.sh first")
        first = release.read_text().splitlines()[0] if release.read_text() else ""
        if "R36" not in first or "REVISION: 4." not in first:
            raise OverlayError(f"the rootfs is not L4T R36.4 (JetPack 6.1): {first!r}")
        if not oem_config and not has_default_user(self.rootfs):
            raise OverlayError(
                f"the rootfs has no default user, so first boot would wait in oem-config for a person "
                f"(and the appliance would not start): from {self.l4t} run\n  {CREATE_USER}\n"
                "first, or pass --oem-config if a person will finish the setup on the device"
            )

    def _do(self, what: str, fn, *args) -> None:
        self.actions.append(what)
        if not self.dry_run:
            fn(*args)

    def copy(self, src: Path, rel: str) -> None:
        dst = self.rootfs / rel
        if src.is_dir():
            self._do(
                f"copy {src} -> {dst}",
                lambda: shutil.copytree(
                    src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                ),
            )
        else:
            self._do(
                f"copy {src} -> {dst}", lambda: (dst.parent.mkdir(parents=True, exist_ok=True), shutil.copy2(src, dst))
            )

    def write(self, rel: str, text: str) -> None:
        dst = self.rootfs / rel
        if dst.is_file() and dst.read_text() == text:
            return
        self._do(f"write {dst}", lambda: (dst.parent.mkdir(parents=True, exist_ok=True), dst.write_text(text)))

    def enable(self, unit: str, target: str) -> None:
        """What `systemctl enable` does for one WantedBy=: a symlink in <target>.wants to the unit."""
        link = self.rootfs / f"etc/systemd/system/{target}.wants/{unit}"
        dest = f"/etc/systemd/system/{unit}"
        if link.is_symlink() and str(link.readlink()) == dest:
            return

        def make():
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink():
                link.unlink()
            link.symlink_to(dest)

        self._do(f"enable {unit} ({link} -> {dest})", make)


def build(args) -> Overlay:
    ov = Overlay(Path(args.l4t), args.dry_run)
    ov.check(args.oem_config)
    for item in SOURCE_ITEMS:
        ov.copy(ROOT / item, f"opt/edge-llm/src/{item}")
    install_args = ["--headless"] + (["--kiosk"] if args.kiosk else []) + list(args.install_arg)
    if args.wheelhouse:
        ov.copy(Path(args.wheelhouse), "opt/edge-llm/wheelhouse")
        install_args += ["--wheelhouse", "/opt/edge-llm/wheelhouse"]
    for option, path in (("--trtllm-wheel", args.trtllm_wheel), ("--torch-wheel", args.torch_wheel)):
        if path:
            wheel = Path(path)
            ov.copy(wheel, f"opt/edge-llm/wheels/{wheel.name}")
            install_args += [option, f"/opt/edge-llm/wheels/{wheel.name}"]
    for unit in ("edge-llm.service", "edge-llm-kiosk.service", "edge-llm-clocks.service"):
        ov.copy(ROOT / "systemd" / unit, f"etc/systemd/system/{unit}")
    ov.write("etc/systemd/system/edge-llm-firstboot.service", FIRSTBOOT_UNIT.format(args=" ".join(install_args)))
    ov.enable("edge-llm-firstboot.service", "multi-user.target")
    ov.enable("edge-llm.service", "multi-user.target")
    if args.kiosk:  # its [Install]: install.sh --headless boots multi-user.target; back with the daemon
        for target in ("multi-user.target", "edge-llm.service"):
            ov.enable("edge-llm-kiosk.service", target)
    return ov


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--l4t", required=True, help="the Linux_for_Tegra folder (with rootfs/)")
    ap.add_argument("--wheelhouse", help="wheels for an offline first boot (aarch64, cp310)")
    ap.add_argument("--trtllm-wheel", help="tensorrt_llm-0.12.0-cp310-cp310-linux_aarch64.whl")
    ap.add_argument("--torch-wheel", help="NVIDIA's CUDA torch wheel for JetPack 6.1 (with --trtllm-wheel)")
    ap.add_argument(
        "--oem-config",
        action="store_true",
        help="allow a rootfs without a default user: first boot waits in oem-config for a person",
    )
    ap.add_argument("--kiosk", action="store_true", help="enable the kiosk browser on the local display")
    ap.add_argument("--target", choices=["emmc", "nvme"], default="emmc")
    ap.add_argument(
        "--install-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for jetpack/install.sh at first boot (repeatable), e.g."
        " --install-arg=--maxn --install-arg=--swap-gb --install-arg=16",
    )
    ap.add_argument("--dry-run", action="store_true", help="print every action, change nothing")
    args = ap.parse_args(argv)
    for a in args.install_arg:  # they go into ExecStart= as words: no quoting, no specifiers
        if not a or any(c.isspace() or c in "\"'\\%$;" for c in a):
            ap.error(f"--install-arg {a!r}: one word without spaces, quotes, backslashes, %, $ or ;")
    if args.trtllm_wheel and not args.torch_wheel:
        ap.error("--trtllm-wheel needs --torch-wheel (PyPI's aarch64 torch is CPU-only)")
    try:
        ov = build(args)
    except OverlayError as e:
        print(f"flash_overlay: {e}", file=sys.stderr)
        return 1
    for a in ov.actions:
        print(("+ " if args.dry_run else "") + a)
    print(
        f"\nnow put the Orin in recovery mode, connect USB-C, and from {args.l4t} run:\n  {flash_command(args.target)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
