"""What `edge-llm plan` prints: the plan for this machine's model (loaded and calibrated here, as
the daemon would plan it) or for named device and model profiles, with each choice's reason."""

from __future__ import annotations

import json
import sys

from edge_llm import planner

MiB = 1 << 20
GiB = 1 << 30


def report(args, cfg) -> int:
    """Print (or write as JSON) the plan for each row `args` asks for; 0 whether or not each fits."""
    results = []
    for where, snap, prof, policy in _plan_rows(args, cfg):
        try:
            results.append((where, prof, planner.plan(prof, snap, policy), None))
        except planner.PlanError as e:
            results.append((where, prof, None, str(e)))
    if args.json:
        json.dump(
            [
                {
                    "device": w,
                    "model": p.name,
                    "plan": pl.to_dict() if pl else None,
                    "error": err,
                    "swap_reason": planner.SWAP_REASON,
                }
                for w, p, pl, err in results
            ],
            sys.stdout,
            indent=2,
        )
        print()
        return 0
    for where, prof, pl, err in results:
        print(f"== {prof.name} on {where}")
        print(f"   does not fit: {err}" if err else _describe(pl))
    return 0


def _plan_rows(args, cfg) -> list[tuple]:
    """(where, memory snapshot, model profile, policy) for each plan asked for: this machine's
    model here without --device or --model-profile; a named model without --device, here too."""
    from edge_llm import profiles
    from edge_llm.appliance import policy_from_config

    rows = [_this_model_here(cfg)] if not args.device and not args.model_profile else []
    devices = args.device or (list(profiles.DEVICES) if args.all else [])
    models = args.model_profile or list(profiles.MODELS)
    policy = policy_from_config(cfg)
    rows += [(d, profiles.DEVICES[d], profiles.MODELS[m], policy) for d in devices for m in models]
    if args.model_profile and not devices:  # its memory here, the speed defaults: the model is not measured
        snap = _this_machine()
        here = policy_from_config(cfg, total_bytes=snap.ram_total_bytes)
        rows += [("this machine", snap, profiles.MODELS[m], here) for m in models]
    return rows


def _this_machine():
    from edge_llm.telemetry import Sampler, open_sources

    return Sampler(open_sources()).read()


def _this_model_here(cfg) -> tuple:
    """The configured model, loaded and calibrated here (as the daemon would plan it)."""
    from edge_llm.appliance import calibrate, policy_from_config
    from edge_llm.engine.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(cfg.model_path, n_gpu_layers=cfg.model.n_gpu_layers, name=cfg.model_id)
    try:
        snap = _this_machine()
        cal = calibrate(cfg, backend, snap)
        policy = policy_from_config(cfg, gpu_offload=backend.gpu_offload, total_bytes=snap.ram_total_bytes, cal=cal)
        return "this machine", snap, backend.profile, policy
    finally:
        backend.close()


def _describe(pl) -> str:
    lines = [f"   {name:<22} {getattr(pl, name):>8}   {pl.reasons[name]}" for name in pl.reasons]
    lines.append(
        f"   memory: {pl.available_bytes / GiB:.1f} GiB available ({pl.memory}) - {pl.reserve_bytes / GiB:.1f}"
        f" reserve - {pl.weights_bytes / GiB:.2f} weights - {pl.workspace_bytes / MiB:.0f} MiB workspace;"
        f" KV {pl.kv_cache_bytes / MiB:.0f} MiB at {pl.kv_bytes_per_token} B/token"
    )
    lines.append(f"   predicted resident: {pl.predicted_resident_bytes / MiB:.0f} MiB")
    lines.append(f"   swap: recommend {pl.recommended_swap_bytes / GiB:.0f} GiB: {planner.SWAP_REASON}")
    if pl.calibration:
        key = pl.calibration["key"]
        lines.append(
            f"   calibration: measured in {pl.calibration['measured_s']:.1f} s on {key['gpu'] or key['cpu']}"
            f" ({key['threads']} threads, power mode {key['power_mode'] or 'n/a'}), cached until the model,"
            " build, device or power mode changes"
            + (
                "; measured on busy CPUs, so not followed: defaults now, measured again at the next start"
                if pl.calibration.get("contended")
                else ""
            )
        )
    else:
        lines.append("   calibration: none (speed choices are defaults)")
    return "\n".join(lines)
