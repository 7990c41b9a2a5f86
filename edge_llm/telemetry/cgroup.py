"""The memory limit of this process's cgroup (v2 or v1), so that a daemon in a container or a
memory-limited slice plans for its limit, not for the host's RAM."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

UNLIMITED = 1 << 60  # v1 reports ~2^63 for "no limit"


@dataclass(frozen=True)
class CgroupMemory:
    limit_bytes: int  # the smallest limit on the path to the root
    usage_bytes: int  # charged to this cgroup, minus inactive page cache (reclaimable)

    @property
    def available_bytes(self) -> int:
        return max(0, self.limit_bytes - self.usage_bytes)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return UNLIMITED if text == "max" else int(text)


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except OSError:
        pass
    return 0


def _limit_along(base: Path, rel: str, filename: str) -> int:
    limit, path = UNLIMITED, base / rel.lstrip("/")
    while True:
        value = _read_int(path / filename)
        if value is not None:
            limit = min(limit, value)
        if path == base:
            return limit
        path = path.parent


def read(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> CgroupMemory | None:
    """None when no memory limit applies (or cgroups are not readable)."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    base = Path(root)
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if "memory" in controllers.split(","):  # v1
            d = base / "memory"
            limit = _limit_along(d, rel, "memory.limit_in_bytes")
            usage = _read_int(d / rel.lstrip("/") / "memory.usage_in_bytes")
            inactive = _stat(d / rel.lstrip("/") / "memory.stat", "total_inactive_file")
        elif controllers == "" and (base / "cgroup.controllers").exists():  # v2, unified at root
            limit = _limit_along(base, rel, "memory.max")
            usage = _read_int(base / rel.lstrip("/") / "memory.current")
            inactive = _stat(base / rel.lstrip("/") / "memory.stat", "inactive_file")
        else:
            continue
        if limit < UNLIMITED and usage is not None:
            return CgroupMemory(limit, max(0, usage - inactive))
    return None
