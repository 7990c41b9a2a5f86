"""edge-llm serve | plan | chat | doctor"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

from edge_llm import config as config_mod

MiB = 1 << 20
GiB = 1 << 30


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file (default: $EDGE_LLM_CONFIG)")
    p.add_argument("--host", help="bind address (server.host)")
    p.add_argument("--port", help="port, 0 = any free (server.port)")
    p.add_argument("--model", help="GGUF file or TensorRT-LLM engine dir (model.path)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="any config key, e.g. --set limits.max_batch_size=4")


def _load(args) -> config_mod.Config:
    overrides = [(k, getattr(args, a)) for a, k in (("host", "server.host"), ("port", "server.port"),
                                                  ("model", "model.path")) if getattr(args, a) is not None]
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise config_mod.ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        overrides.append((key, value))
    return config_mod.load(args.config, overrides=overrides)


def cmd_serve(args) -> int:
    from edge_llm.daemon import serve
    cfg = _load(args)
    return serve(cfg, reload_config=lambda: _load(args))


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
        here = policy_from_config(cfg, gpu_offload=backend.gpu_offload, total_bytes=snap.ram_total_bytes,
                                  cal=calibrate(cfg, backend, snap))
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
        json.dump([{"device": w, "model": p.name, "plan": pl.to_dict() if pl else None, "error": err,
                    "swap_reason": planner.SWAP_REASON} for w, p, pl, err in results], sys.stdout, indent=2)
        print()
        return 0
    for where, prof, pl, err in results:
        print(f"== {prof.name} on {where}")
        print(f"   does not fit: {err}" if err else _describe(pl))
    return 0


def _describe(pl) -> str:
    from edge_llm.planner import SWAP_REASON
    lines = [f"   {name:<22} {getattr(pl, name):>8}   {pl.reasons[name]}" for name in pl.reasons]
    lines.append(f"   memory: {pl.available_bytes / GiB:.1f} GiB available ({pl.memory}) - {pl.reserve_bytes / GiB:.1f}"
                 f" reserve - {pl.weights_bytes / GiB:.2f} weights - {pl.workspace_bytes / MiB:.0f} MiB workspace;"
                 f" KV {pl.kv_cache_bytes / MiB:.0f} MiB at {pl.kv_bytes_per_token} B/token")
    lines.append(f"   predicted resident: {pl.predicted_resident_bytes / MiB:.0f} MiB")
    lines.append(f"   swap: recommend {pl.recommended_swap_bytes / GiB:.0f} GiB: {SWAP_REASON}")
    if pl.calibration:
        key = pl.calibration["key"]
        lines.append(f"   calibration: measured in {pl.calibration['measured_s']:.1f} s on {key['gpu'] or key['cpu']}"
                     f" ({key['threads']} threads, power mode {key['power_mode'] or 'n/a'}), cached until the model,"
                     " build, device or power mode changes")
    else:
        lines.append("   calibration: none (speed choices are defaults)")
    return "\n".join(lines)


def cmd_chat(args) -> int:
    from openai import OpenAI
    client = OpenAI(base_url=args.url.rstrip("/") + "/v1", api_key=args.api_key or "none")
    messages = [{"role": "system", "content": args.system}] if args.system else []
    print("edge-llm chat: an empty line or Ctrl-D ends", file=sys.stderr)
    for line in sys.stdin:
        if not line.strip():
            break
        messages.append({"role": "user", "content": line.strip()})
        reply = ""
        for chunk in client.chat.completions.create(model=args.model_id or client.models.list().data[0].id,
                                                    messages=messages, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                reply += chunk.choices[0].delta.content
                print(chunk.choices[0].delta.content, end="", flush=True)
        print()
        messages.append({"role": "assistant", "content": reply})
    return 0


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


def _progress(done: int, total: int, level: int) -> None:
    width = 30
    filled = width * done // max(1, total)
    stage = "map" if level == 0 else f"reduce {level}"
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {stage}   ", end="", file=sys.stderr, flush=True)


def _summarize_remote(args, path, data: bytes, kind: str) -> int:
    import http.client
    import urllib.parse
    url = urllib.parse.urlsplit(args.url)
    conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=3600)
    headers = {"Content-Type": kind}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    conn.request("POST", f"/api/summaries?filename={urllib.parse.quote(path.name)}", data, headers)
    resp = conn.getresponse()
    body = json.loads(resp.read() or b"{}")
    if resp.status != 202:
        print(f"edge-llm summarize: {resp.status}: {body.get('error', {}).get('message', body)}", file=sys.stderr)
        return 1
    conn.request("GET", f"/api/summaries/{body['id']}/events", headers=headers)
    job = body
    for line in conn.getresponse():
        if line.startswith(b"data: "):
            job = json.loads(line[6:])
            p = job["progress"]
            _progress(p["chunks_done"], p["chunks_total"], job["level"])
    print(file=sys.stderr)
    if job.get("status") != "done":
        print(f"edge-llm summarize: the job ended {job.get('status')}: {job.get('error')}", file=sys.stderr)
        return 1
    print(job["result"])
    return 0


def _summarize_in_process(args, path, data: bytes, kind: str) -> int:
    import tempfile

    from edge_llm import appliance
    from edge_llm.summarize import extract
    from edge_llm.summarize.jobs import JobStore
    from edge_llm.summarize.pipeline import SummaryService, run_job
    from edge_llm.telemetry.host import HostSource
    cfg = _load(args)
    backend, plan, engine = appliance.build_engine(cfg, HostSource().read())
    try:
        with tempfile.TemporaryDirectory() as tmp:
            store = JobStore(Path(tmp) / "jobs.sqlite3")
            service = SummaryService(engine, backend, store, plan, cfg.summarize)
            try:
                job = service.create(path.name, data, kind)
            except extract.ExtractError as e:
                print(f"edge-llm summarize: {e}", file=sys.stderr)
                return 1
            done = threading.Event()

            def work():  # a failing job ends as the job's error: done is always set
                try:
                    run_job(service.summarizer, job.id)
                finally:
                    done.set()

            threading.Thread(target=work, name="summarize", daemon=True).start()
            while not done.wait(0.5):
                j = store.get(job.id)
                _progress(j.chunks_done, j.chunks_total, j.level)
            j = store.get(job.id)
            store.close()
        print(file=sys.stderr)
        if j.status != "done":
            print(f"edge-llm summarize: the job failed: {j.error}", file=sys.stderr)
            return 1
        print(j.result)
        return 0
    finally:
        engine.stop()


def cmd_doctor(args) -> int:
    from edge_llm.doctor import report
    print(report(args.json))
    return 0


def main(argv: list[str] | None = None) -> int:
    from edge_llm.profiles import DEVICES, MODELS
    ap = argparse.ArgumentParser(prog="edge-llm", description="An LLM appliance for Jetson and any Linux box.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve", help="run the daemon (HTTP API, chat page)")
    _config_args(p)
    p.set_defaults(fn=cmd_serve)
    p = sub.add_parser("plan", help="what batch and lengths fit in memory, here or on a named device")
    _config_args(p)
    p.add_argument("--device", action="append", choices=sorted(DEVICES), help="a device profile (repeatable)")
    p.add_argument("--model-profile", action="append", choices=sorted(MODELS), help="a model profile (repeatable)")
    p.add_argument("--all", action="store_true", help="every device profile with every model profile")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_plan)
    p = sub.add_parser("chat", help="chat in the terminal with a running daemon")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--api-key", default="")
    p.add_argument("--model-id", default="")
    p.add_argument("--system", default="")
    p.set_defaults(fn=cmd_chat)
    p = sub.add_parser("summarize", help="summarize a document (.txt, .md, .html, .pdf)")
    _config_args(p)
    p.add_argument("file")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="a running daemon")
    p.add_argument("--api-key", default="")
    p.add_argument("--in-process", action="store_true", help="load the model here instead of using a daemon")
    p.set_defaults(fn=cmd_summarize)
    p = sub.add_parser("doctor", help="what this device has, and what each backend would need")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_doctor)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except config_mod.ConfigError as e:
        print(f"edge-llm: configuration error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
