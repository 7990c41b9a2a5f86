"""Pick the best telemetry source the device has and sample it in a background thread."""

from __future__ import annotations

import logging
import threading

from edge_llm.telemetry.host import HostSource
from edge_llm.telemetry.snapshot import Snapshot

log = logging.getLogger(__name__)


def open_sources(interval_s: float = 1.0) -> list:
    """Sources in order of preference; the last (psutil) always works."""
    sources = []
    try:
        from edge_llm.telemetry.jtop import JtopSource
        sources.append(JtopSource(interval_s))
    except ImportError:
        pass  # not a Jetson (jetson-stats not installed)
    except Exception as e:  # JtopException: the jtop service is not running
        log.warning("jtop unavailable (%s); using the next telemetry source", e)
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

    def __init__(self, sources: list, interval_s: float = 1.0, on_snapshot=None):
        self.sources = list(sources)
        self.interval_s = interval_s
        self.on_snapshot = on_snapshot  # called on the sampler thread with each Snapshot
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
                log.warning("telemetry source %s failed (%s); falling back to %s", source.name, e,
                            self.sources[1].name)
                self.sources.pop(0)
                _close(source)
        self.latest = snap
        if self.on_snapshot is not None:
            self.on_snapshot(snap)
        return snap

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.read()
            except Exception:
                log.exception("telemetry read failed")

    def stop(self) -> None:
        self._stop.set()
        for s in self.sources:
            _close(s)


def _close(source) -> None:
    try:
        source.close()
    except Exception:
        log.debug("closing %s failed", source.name, exc_info=True)
