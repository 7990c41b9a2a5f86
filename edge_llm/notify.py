"""systemd's notify protocol: systemd-python where installed, else the datagram itself
(one AF_UNIX datagram to $NOTIFY_SOCKET; a leading '@' is the abstract namespace)."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, env: dict[str, str] | None = None):
        env = os.environ if env is None else env
        self.address = env.get("NOTIFY_SOCKET", "")
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_usec = int(usec) if usec.isdigit() and mine else 0

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, **fields: object) -> None:
        """notify(READY=1, STATUS="...") -> "READY=1\\nSTATUS=..." in one datagram."""
        if not self.address:
            return
        msg = "\n".join(f"{k}={v}" for k, v in fields.items())
        addr = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(msg.encode(), addr)
        except OSError as e:
            log.warning("sd_notify to %s failed: %s", self.address, e)
