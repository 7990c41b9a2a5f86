"""Wiring of issue 24's energy meter and thermal guard to a running engine and its telemetry,
shared by the daemon and `edge-llm bench`."""

from __future__ import annotations

import logging

from edge_llm.telemetry import energy, thermal

log = logging.getLogger(__name__)


def attach_energy(engine, backend, snapshot) -> energy.EnergyMeter:
    meter = engine.energy  # each engine meters its own steps (the executor engine: each read of its responses)
    meter.use(energy.open_source(bool(getattr(backend, "gpu_offload", False)), snapshot))
    log.info(
        "energy per request: %s",
        meter.source_name
        if meter.is_available
        else "unavailable (no NVML energy counter, readable RAPL or jtop power on this machine)",
    )
    return meter


def attach_thermal(engine, plan, snapshot, cfg) -> thermal.ThermalGuard:
    t = cfg.thermal
    per_sensor, default_c, where = thermal.default_throttle_c(snapshot, t.throttle_c)
    guard = thermal.ThermalGuard(
        engine, plan.max_batch_size, thermal.Rule(t.margin_c, t.hysteresis_c, t.hold_s), per_sensor, default_c, where
    )
    log.info("thermal admission: %s (limits from %s)", guard.to_dict()["why"], where)
    return guard


def wire(runtime, sampler, *also):
    """Attach both to the runtime's engine; returns the sampler's on_snapshot: also's callables,
    then the thermal guard, then the meter (which takes jtop's power once jtop answers)."""
    snap = sampler.latest
    engine = runtime.engine
    attach_energy(engine, runtime.backend, snap)
    guard = attach_thermal(engine, runtime.plan, snap, runtime.config)
    runtime.extensions["thermal"] = guard

    def on_snapshot(s) -> None:
        for fn in (*also, guard, engine.energy.on_snapshot):
            fn(s)

    return on_snapshot
