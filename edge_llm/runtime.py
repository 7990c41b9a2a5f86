"""What the HTTP layer reads about the running appliance: its phase, engine, plan, telemetry."""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field

from edge_llm.config import Config


class Phase(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


@dataclass
class Runtime:
    config: Config
    phase: Phase = Phase.LOADING
    status: str = "starting"  # one line: what the daemon is doing
    engine: object | None = None  # an edge_llm.engine.front.EngineFront once loaded
    backend: object | None = None
    plan: object | None = None  # edge_llm.planner.Plan
    telemetry: object | None = None  # edge_llm.telemetry.Sampler
    extensions: dict = field(default_factory=dict)  # e.g. the summary job store
    cut_off: threading.Event = field(default_factory=threading.Event)  # drain deadline: end what still runs
    stall_s: float = 5.0  # an engine loop silent this long is hung (the daemon sets it from the watchdog)

    @property
    def is_ready(self) -> bool:
        return self.phase is Phase.READY and self.engine is not None

    @property
    def model_id(self) -> str:
        return self.config.model_id
