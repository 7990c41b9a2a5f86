"""Operations: /health, /metrics, /api/plan, /api/telemetry, /api/status."""

from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, jsonify, request
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from edge_llm.runtime import Runtime
from edge_llm.server.errors import APIError

bp = Blueprint("ops", __name__)


def runtime() -> Runtime:
    return current_app.config["RUNTIME"]


@bp.get("/health")
def health():
    """503 while loading or draining, and while the engine loop makes no progress (the
    watchdog's rule: a loop silent for stall_s is hung, e.g. stuck in one decode)."""
    rt = runtime()
    body = {"status": rt.phase.value, "model": rt.model_id, "detail": rt.status}
    healthy = rt.is_ready
    if rt.engine is not None:
        stats = rt.engine.stats()
        age = time.monotonic() - rt.engine.last_progress
        body.update(stats, last_progress_age_s=round(age, 3))
        if rt.is_ready:
            body["detail"] = f"{stats['running']} running, {stats['waiting']} waiting, {stats['steps']} steps"
            if age > rt.stall_s or not rt.engine.is_alive:
                healthy = False
                body["status"] = "stalled"
                body["detail"] = f"the engine loop has made no progress for {age:.1f} s"
    resp = jsonify(body)
    if not healthy:
        resp.status_code = 503
        resp.headers["Retry-After"] = "5"
    return resp


@bp.get("/metrics")
def metrics():
    rt = runtime()
    if rt.engine is None:
        return Response("", mimetype=CONTENT_TYPE_LATEST)
    return Response(generate_latest(rt.engine.metrics.registry), mimetype=CONTENT_TYPE_LATEST)


@bp.get("/api/plan")
def plan():
    rt = runtime()
    if rt.plan is None:
        raise APIError(503, "no plan yet: the model is still loading", "loading", headers={"Retry-After": "5"})
    body = rt.plan.to_dict()
    if body.get("calibration") and rt.telemetry is not None and rt.telemetry.latest is not None:
        # a plan is valid for the power mode it was measured in (nvpmodel, Jetson): a restart re-plans
        now, then = rt.telemetry.latest.nvpmodel, body["calibration"]["key"].get("power_mode")
        body["calibration_current"] = now == then
    _energy_and_heat(rt, body)
    return jsonify(body)


def _energy_and_heat(rt: Runtime, body: dict) -> None:
    """Issue 24: the thermal admission rule's state and the energy meter's source and totals."""
    if "thermal" in rt.extensions:
        body["thermal"] = rt.extensions["thermal"].to_dict()
    if rt.engine is not None:
        body["energy"] = rt.engine.energy.to_dict()


@bp.get("/api/telemetry")
def telemetry():
    rt = runtime()
    snap = rt.telemetry.latest if rt.telemetry is not None else None
    if snap is None:
        raise APIError(503, "no telemetry reading yet", "loading", headers={"Retry-After": "1"})
    return jsonify(snap.to_dict())


@bp.post("/debug/hang")
def debug_hang():
    """Test hook (daemon.debug_hooks, off by default): stall the engine loop for ?seconds=N."""
    rt = runtime()
    if not rt.config.daemon.debug_hooks:
        raise APIError(404, "not found", "not_found")
    try:
        seconds = float(request.args.get("seconds", "10"))
    except ValueError:
        raise APIError(400, "seconds must be a number", "invalid_value", "seconds") from None
    rt.engine.hang_seconds = seconds
    return jsonify({"hanging_for_s": seconds})


@bp.get("/api/status")
def status():
    """What the pages' status panel shows, in one request."""
    rt = runtime()
    snap = rt.telemetry.latest if rt.telemetry is not None else None
    plan = rt.plan
    return jsonify(
        {
            "model": rt.model_id,
            "phase": rt.phase.value,
            "detail": rt.status,
            "plan": None
            if plan is None
            else {
                k: getattr(plan, k)
                for k in ("max_batch_size", "max_seq_len", "max_input_len", "max_output_len", "kv_cache_tokens")
            },
            "engine": rt.engine.stats() if rt.engine is not None else None,
            "energy": rt.engine.energy.to_dict() if rt.engine is not None else None,
            "thermal": rt.extensions["thermal"].to_dict() if "thermal" in rt.extensions else None,
            "telemetry": None
            if snap is None
            else {
                "ram_total_bytes": snap.ram_total_bytes,
                "ram_available_bytes": snap.ram_available_bytes,
                "swap_total_bytes": snap.swap_total_bytes,
                "swap_used_bytes": snap.swap_used_bytes,
                "temperatures_c": snap.temperatures_c,
                "power_total_mw": snap.power_total_mw,
                "source": snap.source,
            },
        }
    )
