"""Wiring: config -> backend -> plan -> sized context -> warmed-up engine. Used by the
daemon, the CLI and the benchmarks, so that all of them run the same engine."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from edge_llm import calibration, planner, pressure
from edge_llm import config as config_mod
from edge_llm.config import Config
from edge_llm.engine.backends.base import BackendError, ContextShape
from edge_llm.engine.batch import Lanes
from edge_llm.engine.front import EngineFront
from edge_llm.engine.request import Priority, SamplingParams
from edge_llm.engine.step_engine import StepEngine
from edge_llm.telemetry.snapshot import Snapshot

log = logging.getLogger(__name__)
MiB = 1 << 20


def policy_from_config(
    cfg: Config,
    build_limits: dict[str, int] | None = None,
    gpu_offload: bool = False,
    total_bytes: int | None = None,
    cal: calibration.Calibration | None = None,
) -> planner.Policy:
    """User caps, tightened by the limits a TensorRT-LLM engine was built with (runtime
    limits must not exceed them). total_bytes: the RAM the plan sees (scales the reserve)."""
    lim, p = cfg.limits, cfg.planner
    caps = {name: getattr(lim, name) for name in planner.LIMITS}
    for name, built in (build_limits or {}).items():
        if name in caps:
            caps[name] = min(caps[name], built) if caps[name] else built
    return planner.Policy(
        reserve_bytes=pressure.reserve_bytes(p, total_bytes),
        default_max_batch_size=p.default_max_batch_size,
        default_max_seq_len=p.default_max_seq_len,
        prefix_cache_slots=lim.prefix_cache_slots,
        caps=caps,
        gpu_offload=gpu_offload,
        gpu_reserve_bytes=p.gpu_reserve_mb * MiB,
        per_sequence_kv={"per_slot": True, "unified": False}.get(cfg.model.kv_layout)
        if cfg.model.backend == "llamacpp"
        else False,
        # figures measured while others held the CPUs are shown, not followed (defaults this start)
        speed=calibration.choose(cal, p.max_step_ms / 1000) if cal and not cal.contended else None,
        calibration=cal.to_json() if cal else None,
        lanes=p.lanes,
        chat_slowdown=lim.chat_slowdown,
    )


def calibrate(cfg: Config, backend, snapshot: Snapshot) -> calibration.Calibration | None:
    """The device's step costs for the plan's speed choices: cached, measured when the model,
    the build, the device or its power mode changed (llama.cpp only; TensorRT-LLM's executor
    schedules itself)."""
    if cfg.model.backend != "llamacpp" or not cfg.planner.calibrate:
        return None
    path = Path(cfg.planner.calibration_file or config_mod.state_dir(cfg) / "calibration.json")
    key = calibration.device_key(backend, cfg.model_path, snapshot.gpu_name, snapshot.nvpmodel)
    try:
        return calibration.load_or_measure(path, backend, key, max(calibration.BATCHES), cfg.planner.max_step_ms / 1000)
    except BackendError as e:  # a timing context llama.cpp could not make (memory): serve on defaults
        log.warning("calibration failed (%s): the plan's speed choices are defaults; measured again next start", e)
        return None


def load_backend(cfg: Config):
    if cfg.model.backend == "trtllm":
        from edge_llm.engine.backends.trtllm import TrtLlmBackend  # imported only on a Jetson

        return TrtLlmBackend(cfg.model.path)
    from edge_llm.engine.backends.llamacpp import LlamaCppBackend

    path = cfg.model_path
    backend = LlamaCppBackend(path, cfg.model.n_threads, cfg.model.n_gpu_layers, cfg.model_id)
    log.info(
        "model %s: %s (%.1f MiB) memory-mapped (mmap, pages load on first use), %d threads, %s",
        cfg.model_id,
        path,
        backend.file_bytes / MiB,
        backend.n_threads,
        "all layers and the KV cache on the GPU" if backend.gpu_offload else "on the CPU",
    )
    return backend


def log_plan(plan: planner.Plan) -> None:
    log.info(
        "plan: batch %d, seq %d (input %d, output %d), KV %d tokens = %.0f MiB, chunk %d; %s binds: "
        "%.0f MiB available - %.0f reserve - %.0f weights - %.0f workspace",
        plan.max_batch_size,
        plan.max_seq_len,
        plan.max_input_len,
        plan.max_output_len,
        plan.kv_cache_tokens,
        plan.kv_cache_bytes / MiB,
        plan.prefill_chunk_tokens,
        plan.memory,
        plan.available_bytes / MiB,
        plan.reserve_bytes / MiB,
        plan.weights_bytes / MiB,
        plan.workspace_bytes / MiB,
    )
    for name, why in plan.reasons.items():
        log.info("plan: %s = %s because %s", name, getattr(plan, name), why)


def build_engine(cfg: Config, snapshot: Snapshot, on_step: Callable[[str], None] = lambda s: None):
    """Load, plan, size the context and warm up; returns (backend, plan, engine), running."""
    on_step("mapping the model")
    backend = load_backend(cfg)
    on_step("calibrating step costs")
    cal = calibrate(cfg, backend, snapshot)
    on_step("planning memory")
    policy = policy_from_config(
        cfg,
        getattr(backend, "build_limits", None),
        getattr(backend, "gpu_offload", False),
        snapshot.ram_total_bytes,
        cal,
    )
    plan = planner.plan(backend.profile, snapshot, policy)
    log_plan(plan)
    on_step(f"allocating {plan.kv_cache_tokens} KV tokens")
    if cfg.model.backend == "trtllm":
        from edge_llm.engine.trt_engine import TrtLlmEngine

        backend.load(plan)  # maps the engine file (use_mmap) and sizes the paged KV cache
        engine = TrtLlmEngine(backend, plan, cfg.limits.max_queue)
    else:
        backend.create_context(
            ContextShape(
                plan.kv_cache_tokens,
                plan.num_seqs,
                plan.max_batch_tokens,
                plan.kv_layout == "unified",
                Lanes(plan.lanes, plan.lane_size),
                # not with prompt lookup: its drafted rows are verified from the logits on the host
                device_greedy=cfg.model.gpu_greedy and backend.gpu_offload and not cfg.limits.lookup_draft_tokens,
            )
        )
        engine = StepEngine(
            backend,
            plan,
            cfg.limits.max_queue,
            chat_slowdown=plan.chat_slowdown,  # the user's, or the calibration's choice
            max_draft_tokens=cfg.limits.lookup_draft_tokens,
            stream_interval=cfg.limits.stream_interval_ms / 1000,
            finish_within=cfg.limits.background_finish_ms / 1000,
            overlap={"on": True, "off": False}.get(cfg.model.overlap_steps, backend.overlaps),
        )
    engine.start()
    if cfg.model.warmup:
        on_step("warming up")
        warm_up(engine)
    return backend, plan, engine


def open_summaries(cfg: Config, backend, plan: planner.Plan, engine: EngineFront, path: Path | None = None):
    """The summary service over a running engine, its store open and its runner started: the
    daemon's store is in the state directory (jobs survive restarts), `edge-llm summarize
    --in-process` gives one of its own."""
    from edge_llm.summarize.jobs import JobStore
    from edge_llm.summarize.pipeline import SummaryService

    store = JobStore(path or config_mod.state_dir(cfg) / "summaries.sqlite3")
    service = SummaryService(engine, backend, store, plan, cfg.summarize)
    service.start()
    return service


def warm_up(engine: EngineFront) -> None:
    """One short generation so the first user does not pay for first-touch page faults. It runs as
    background work: a visitor's request would make background steps smaller for 30 s after every
    start (engine/scheduler.py visitor_expected; the mixed workload's first question then waited
    0.34 s for a step let finish, against 0.11 s for one stopped, session 16)."""
    tokens = engine.backend.tokenize("Hello", True)
    req, _ = engine.make_request(tokens, SamplingParams(temperature=0.0), 4, Priority.BACKGROUND)
    for out in engine.generate(req):
        if out.error:
            raise RuntimeError(f"warm-up failed: {out.error}")
    engine.call(engine.clear_prefix_cache)
    if len(getattr(engine.backend, "contexts", ())) > 1:  # the generation ran in lane 0; the other lanes too
        engine.call(lambda: engine.backend.warm_lanes(tokens), timeout=60)
