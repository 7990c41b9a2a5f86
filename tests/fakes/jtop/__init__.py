"""FAKE jtop (jetson-stats), see tests/fakes/README.md. Mirrors jetson-stats 4.2.12's
jtop/jtop.py and jtop/service.py as summarized in JETSON.md (shared):
- start() connects to the service's socket /run/jtop.sock (mode 0660, group jtop): no socket
  is "jtop.service is not active", a user outside group jtop gets a permission error; both
  reach the caller as JtopException (jtop/jtop.py start()).
- ok() re-raises an error of jtop's reader thread (jtop/jtop.py ok() -> _raise_error());
  once the service is gone, the attributes keep returning the last values forever.
- ok() waits up to TIMEOUT_GAIN (3) intervals for a new sample; when none comes (a service
  that is up but no longer samples) it marks the client stopped and returns False, then and
  on every later call (jetson-stats 4.2.12 jtop/jtop.py ok(), read in its sdist).
- memory in KB, power in mW, temperature in C (-256 when offline), shapes of AGX Orin 64GB."""

from __future__ import annotations

import copy
import os
import time

TIMEOUT_GAIN = 3  # jtop/jtop.py


class JtopException(Exception):
    """jtop/core/exceptions.py"""


class Service:
    """The state of the (fake) jtop.service that a test controls."""

    def __init__(self):
        self.running = True  # the socket exists
        self.member_of_jtop_group = True  # the calling user is in group jtop
        self.sampling = True  # the service sends a new sample every interval

    def reset(self):
        self.__init__()


SERVICE = Service()

_MEMORY = {
    "RAM": {
        "tot": 62_795_216,
        "used": 9_120_000,
        "free": 40_000_000,
        "buffers": 300_000,
        "cached": 12_000_000,
        "shared": 5_500_000,
        "lfb": 1200,
    },
    "SWAP": {
        "tot": 16_777_216,
        "used": 1_048_576,
        "cached": 0,
        "table": {"/swapfile": {"type": "file", "prio": 10, "size": 16_777_216, "used": 1_048_576, "boot": True}},
    },
    "EMC": {"online": True, "val": 12, "cur": 3_199_000, "max": 3_199_000, "min": 204_000},
}


class jtop:  # noqa: N801 (the real name)
    def __init__(self, interval: float = 1.0):
        if not isinstance(interval, (int, float)) or interval < 0.1:  # jtop.__init__ checks the interval
            raise JtopException("interval must be a number >= 0.1 s")
        self.interval = interval
        self.started = self.closed = False
        self._running = True
        self.memory = copy.deepcopy(_MEMORY)
        self.stats = {"RAM": 0.15, "nvp model": "MAXN", "jetson_clocks": "ON", "GPU": 41.0}
        self.temperature = {
            "CPU": {"online": True, "temp": 48.5},
            "GPU": {"online": True, "temp": 47.0},
            "tj": {"online": False, "temp": -256},
        }
        self.power = {"tot": {"power": 14230, "avg": 13900, "online": True}, "rail": {}}
        self.gpu = {"gpu": {"status": {"load": 41.0, "railgate": False}, "freq": {"cur": 1300500}}}

    def start(self) -> None:
        if not SERVICE.running:
            raise JtopException("The jtop.service is not active. Please run:\nsudo systemctl restart jtop.service")
        if not SERVICE.member_of_jtop_group:
            raise JtopException(
                f"Permission denied on /run/jtop.sock: add user {os.environ.get('USER', '?')} "
                "to group jtop (socket mode 0660 root:jtop)"
            )
        self.started = True

    def ok(self, spin: bool = False) -> bool:
        if not self.started:
            raise JtopException("jtop not started: call start() or use `with jtop() as jetson`")
        if not spin and not SERVICE.sampling and self._running:
            time.sleep(self.interval * TIMEOUT_GAIN)  # _trigger.wait(interval * TIMEOUT_GAIN) timed out
            self._running = False
        if not SERVICE.running:  # the reader thread lost the socket; ok() re-raises it
            raise JtopException("Lost connection with jtop server")
        return self._running and not self.closed

    def close(self) -> None:
        self.closed = True

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()
