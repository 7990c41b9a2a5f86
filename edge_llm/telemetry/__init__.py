"""Pick the best telemetry source the device has and sample it in a background thread."""

from __future__ import annotations

import logging
import threading
import time

from edge_llm.telemetry.host import HostSource
from edge_llm.telemetry.snapshot import Snapshot

log = logging.getLogger(__name__)


def open_jtop(interval_s: float = 1.0) -> list:
    """[JtopSource] when jtop.service answers, [] when it does not (yet); None without
    jetson-stats (not a Jetson: never worth asking again)."""
    try:
        from edge_llm.telemetry.jtop import JtopSource

        return [JtopSource(interval_s)]
    except ImportError:
        return None
    except Exception as e:  # JtopException: the jtop service is not running
        log.warning("jtop unavailable (%s); using the next telemetry source", e)
        return []


def open_sources(interval_s: float = 1.0) -> list:
    """Sources in order of preference; the last (psutil) always works."""
    sources = open_jtop(interval_s) or []
    try:
        from edge_llm.telemetry.nvml import NvmlSource

        sources.append(NvmlSource())
    except Exception as e:  # no NVML library or no NVIDIA GPU
        log.debug("NVML unavailable: %s", e)
    sources.append(HostSource())
    return sources


class Sampler:
    """Reads the first working source about once per interval; a source that fails is
    dropped with one warning and the next one takes over."""

    def __init__(self, sources: list, interval_s: float = 1.0, on_snapshot=None, retry_jtop_s: float = 0.0):
        self.sources = list(sources)
        self.interval_s = interval_s
        self.on_snapshot = on_snapshot  # called on the sampler thread with each Snapshot
        # jetson-stats' jtop.service starts after multi-user.target, so after the daemon at boot:
        # while jtop is not the source, the sampler thread asks for it again every retry_jtop_s
        self.retry_jtop_s = retry_jtop_s
        self.latest: Snapshot | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)

    def read(self) -> Snapshot:
        while True:
            source = self.sources[0]
            try:
                snap = source.read()
                break
            except Exception as e:
                if len(self.sources) == 1:
                    raise
                log.warning("telemetry source %s failed (%s); falling back to %s", source.name, e, self.sources[1].name)
                self.sources.pop(0)
                _close(source)
        self.latest = snap
        if self.on_snapshot is not None:
            self.on_snapshot(snap)
        return snap

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        next_jtop = time.monotonic() + self.retry_jtop_s
        while not self._stop.wait(self.interval_s):
            if self.retry_jtop_s and self.sources[0].name != "jtop" and time.monotonic() >= next_jtop:
                next_jtop = time.monotonic() + self.retry_jtop_s
                self._retry_jtop()
            try:
                self.read()
            except Exception:
                log.exception("telemetry read failed")

    def _retry_jtop(self) -> None:
        found = open_jtop(self.interval_s)
        if found is None:  # no jetson-stats: not a Jetson
            self.retry_jtop_s = 0.0
        elif found:
            log.info("telemetry: jtop answers now; using it instead of %s", self.sources[0].name)
            self.sources = found + self.sources

    def stop(self) -> None:
        self._stop.set()
        for s in self.sources:
            _close(s)


def _close(source) -> None:
    try:
        source.close()
    except Exception:
        log.debug("closing %s failed", source.name, exc_info=True)
