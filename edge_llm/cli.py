"""edge-llm serve | plan | chat | summarize | bench | doctor"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path

from edge_llm import config as config_mod

MiB = 1 << 20
GiB = 1 << 30


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file (default: $EDGE_LLM_CONFIG)")
    p.add_argument("--host", help="bind address (server.host)")
    p.add_argument("--port", help="port, 0 = any free (server.port)")
    p.add_argument("--model", help="GGUF file or TensorRT-LLM engine dir (model.path)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="any config key, e.g. --set limits.max_batch_size=4",
    )


def _load(args) -> config_mod.Config:
    overrides = [
        (k, getattr(args, a))
        for a, k in (("host", "server.host"), ("port", "server.port"), ("model", "model.path"))
        if getattr(args, a) is not None
    ]
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise config_mod.ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        overrides.append((key, value))
    return config_mod.load(args.config, overrides=overrides)


def cmd_serve(args) -> int:
    from edge_llm.daemon import serve

    cfg = _load(args)
    try:
        return serve(cfg, reload_config=lambda: _load(args))
    except OSError as e:
        if e.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise
        print(
            f"edge-llm serve: cannot listen on {cfg.server.host}:{cfg.server.port}: {e.strerror}"
            + (
                " (another edge-llm, or another program, has it; choose a port with --port)"
                if e.errno == errno.EADDRINUSE
                else ""
            ),
            file=sys.stderr,
        )
        return 1


def cmd_plan(args) -> int:
    from edge_llm import planner, profiles
    from edge_llm.appliance import policy_from_config

    cfg = _load(args)
    policy = policy_from_config(cfg)
    rows = []
    if not args.device and not args.model_profile:
        from edge_llm.engine.backends.llamacpp import LlamaCppBackend
        from edge_llm.telemetry import Sampler, open_sources

        backend = LlamaCppBackend(cfg.model_path, n_gpu_layers=cfg.model.n_gpu_layers, name=cfg.model_id)
        snap = Sampler(open_sources()).read()
        from edge_llm.appliance import calibrate

        here = policy_from_config(
            cfg, gpu_offload=backend.gpu_offload, total_bytes=snap.ram_total_bytes, cal=calibrate(cfg, backend, snap)
        )
        rows.append(("this machine", snap, backend.profile, here))
        backend.close()
    devices = args.device or (list(profiles.DEVICES) if args.all else [])
    models = args.model_profile or list(profiles.MODELS)
    for d in devices:
        for m in models:
            rows.append((d, profiles.DEVICES[d], profiles.MODELS[m], policy))  # speed defaults: not measured there
    results = []
    for where, snap, prof, policy in rows:
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


def _describe(pl) -> str:
    from edge_llm.planner import SWAP_REASON

    lines = [f"   {name:<22} {getattr(pl, name):>8}   {pl.reasons[name]}" for name in pl.reasons]
    lines.append(
        f"   memory: {pl.available_bytes / GiB:.1f} GiB available ({pl.memory}) - {pl.reserve_bytes / GiB:.1f}"
        f" reserve - {pl.weights_bytes / GiB:.2f} weights - {pl.workspace_bytes / MiB:.0f} MiB workspace;"
        f" KV {pl.kv_cache_bytes / MiB:.0f} MiB at {pl.kv_bytes_per_token} B/token"
    )
    lines.append(f"   predicted resident: {pl.predicted_resident_bytes / MiB:.0f} MiB")
    lines.append(f"   swap: recommend {pl.recommended_swap_bytes / GiB:.0f} GiB: {SWAP_REASON}")
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


def cmd_chat(args) -> int:
    from edge_llm import client

    return client.chat(args)


def cmd_summarize(args) -> int:
    from edge_llm.summarize import extract

    path = Path(args.file)
    try:
        data = path.read_bytes()
        kind = extract.media_type(path.name, None)
    except (OSError, extract.UnsupportedType) as e:
        print(f"edge-llm summarize: {e}", file=sys.stderr)
        return 2
    if args.in_process:
        return _summarize_in_process(args, path, data, kind)
    return _summarize_remote(args, path, data, kind)


def _summarize_remote(args, path, data: bytes, kind: str) -> int:
    from edge_llm import client

    return client.summarize(args, path.name, data, kind)


def _summarize_in_process(args, path, data: bytes, kind: str) -> int:
    """The daemon's summary service over an engine of this process, with a job store of its own."""
    import tempfile

    from edge_llm import appliance
    from edge_llm.summarize import extract
    from edge_llm.telemetry.host import HostSource

    cfg = _load(args)
    backend, plan, engine = appliance.build_engine(cfg, HostSource().read())
    try:
        with tempfile.TemporaryDirectory() as tmp:
            service = appliance.open_summaries(cfg, backend, plan, engine, Path(tmp) / "jobs.sqlite3")
            try:
                job = _follow_job(service, service.create(path.name, data, kind))
            except extract.ExtractError as e:
                print(f"edge-llm summarize: {e}", file=sys.stderr)
                return 1
            finally:
                service.stop()
    finally:
        engine.stop()
    if job.status != "done":
        print(f"edge-llm summarize: the job failed: {job.error}", file=sys.stderr)
        return 1
    print(job.result)
    return 0


def _follow_job(service, job, poll_s: float = 0.5):
    """Show the job's progress line until it ends (done or error); returns it as it ended. A
    job whose thread ended without either (run() returns when stopped), or whose runner died
    before running it, ends here as an error instead of being waited for for ever."""
    import dataclasses
    import time

    from edge_llm.client import Progress

    bar, runner, thread = Progress(), service.runner, None
    while True:
        current = service.store.get(job.id)
        if current is None:
            print(file=sys.stderr)
            return dataclasses.replace(job, status="error", error="the job was deleted while it ran")
        job = current
        bar.show(job.chunks_done, job.chunks_total, job.level)
        if job.status in ("done", "error"):
            print(file=sys.stderr)
            return job
        thread = thread or runner._jobs.get(job.id)  # the runner rebuilds _jobs: keep the thread seen
        if (thread is not None and not thread.is_alive()) or (thread is None and not runner._thread.is_alive()):
            job = service.store.get(job.id) or job  # it may have ended between the two reads
            if job.status in ("done", "error"):
                print(file=sys.stderr)
                return job
            print(file=sys.stderr)
            why = "its thread ended" if thread is not None else "the summary runner stopped"
            return dataclasses.replace(job, status="error", error=f"{why} before the job was done or failed")
        time.sleep(poll_s)


def cmd_bench(args) -> int:
    """Prefill/decode rates and tokens per joule here, per nvpmodel mode on a Jetson (issue 24)."""
    from edge_llm import bench

    if args.energy_s:
        from edge_llm import bench_energy

        return bench_energy.run(_load(args), args.batch, args.energy_s, args.decode_tokens, args.json)
    return bench.run(
        _load(args),
        args.batch,
        args.prompt_tokens,
        args.decode_tokens,
        args.power_modes,
        args.nvpmodel_conf,
        args.settle_s,
        args.json,
    )


def _bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="prefill and decode rates and tokens per joule on this device")
    _config_args(p)
    p.add_argument("--batch", type=int, default=4, help="sequences at once (at most the plan's batch)")
    p.add_argument("--prompt-tokens", type=int, default=512, help="prompt length of the prefill phase")
    p.add_argument("--decode-tokens", type=int, default=128, help="tokens generated per sequence")
    p.add_argument("--power-modes", default="", help="Jetson: 'all' or ids like 0,2 from nvpmodel.conf")
    p.add_argument("--nvpmodel-conf", default="/etc/nvpmodel.conf")
    p.add_argument("--settle-s", type=float, default=5.0, help="wait after each power mode change")
    p.add_argument("--json", default="", metavar="FILE", help="write the results here")
    p.add_argument(
        "--energy-s",
        type=float,
        default=0.0,
        metavar="S",
        help="instead: keep --batch streams busy for S seconds and compare the per-request joules "
        "with NVML's energy counter (issue 24's check on an NVIDIA GPU)",
    )
    p.set_defaults(fn=cmd_bench)


def cmd_doctor(args) -> int:
    from edge_llm.doctor import report

    print(report(args.json))
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edge-llm")
    except PackageNotFoundError:
        return "dev"


def _parser(name: str, sub, help: str, description: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        description=f"{help[0].upper()}{help[1:]}. {description}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _chat_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the daemon (default: %(default)s)")
    p.add_argument("--api-key", default="", help="Bearer key, for a daemon on another host (server.api_key)")
    p.add_argument("--model-id", default="", help="the model name to send (default: the one the daemon serves)")
    p.add_argument("--system", default="", help="a system prompt")
    p.add_argument(
        "--temperature",
        type=float,
        help="0 (always the likeliest token) to 2; default: the model's (GET /api/sampling shows it)",
    )
    p.add_argument("--top-p", type=float, help="sample from the likeliest tokens covering this much probability")
    p.add_argument("--max-tokens", type=int, help="longest answer in tokens (default: the plan's max_output_len)")
    p.add_argument("--seed", type=int, help="repeatable sampling")


def main(argv: list[str] | None = None) -> int:
    from edge_llm.profiles import DEVICES, MODELS

    ap = argparse.ArgumentParser(
        prog="edge-llm",
        description="An LLM appliance for Jetson and any Linux box: "
        "an OpenAI-compatible API, a kiosk chat page, document summaries.",
    )
    ap.add_argument("--version", action="version", version=f"edge-llm {_version()}")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    p = _parser(
        "serve",
        sub,
        "run the daemon (HTTP API, chat page)",
        "Listens on server.host:server.port (127.0.0.1:8000), answers 503 while the model loads, "
        "then serves /v1, the pages (/, /summarize, /dashboard) and /api. SIGTERM drains, SIGHUP reloads.",
    )
    _config_args(p)
    p.set_defaults(fn=cmd_serve)
    p = _parser(
        "plan",
        sub,
        "what batch and lengths fit in memory, here or on a named device",
        "Without --device it loads this machine's model and reads its memory; the reasons say "
        "which limit binds and why.",
    )
    _config_args(p)
    p.add_argument("--device", action="append", choices=sorted(DEVICES), help="a device profile (repeatable)")
    p.add_argument("--model-profile", action="append", choices=sorted(MODELS), help="a model profile (repeatable)")
    p.add_argument("--all", action="store_true", help="every device profile with every model profile")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_plan)
    p = _parser(
        "chat",
        sub,
        "chat in the terminal with a running daemon",
        "Each line you type is a question; the answer streams back. An empty line or Ctrl-D ends, "
        "Ctrl-C stops an answer (the stopped exchange is not sent again). Sampling options left out "
        "take the model's defaults.",
    )
    _chat_args(p)
    p.set_defaults(fn=cmd_chat)
    p = _parser(
        "summarize",
        sub,
        "summarize a document (.txt, .md, .html, .pdf)",
        "Sends the document to the daemon (or loads the model here with --in-process) and shows "
        "progress with the time elapsed and an estimate of the time left; the summary goes to stdout. "
        "The job survives a restart of the daemon, and this command waits for it to come back.",
    )
    _config_args(p)
    p.add_argument("file", help="the document")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="a running daemon (default: %(default)s)")
    p.add_argument("--api-key", default="", help="Bearer key, for a daemon on another host")
    p.add_argument(
        "--wait",
        type=float,
        default=300.0,
        help="seconds to wait for a daemon that stopped answering (default: %(default)s)",
    )
    p.add_argument("--in-process", action="store_true", help="load the model here instead of using a daemon")
    p.set_defaults(fn=cmd_summarize)
    _bench_parser(sub)
    p = _parser(
        "doctor",
        sub,
        "what this device has, and what each backend would need",
        "For each missing prerequisite it prints the command that fixes it.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_doctor)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except config_mod.ConfigError as e:
        print(f"edge-llm: configuration error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
