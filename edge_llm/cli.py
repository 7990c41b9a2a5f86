"""edge-llm serve | plan | chat | summarize | bench | doctor"""

from __future__ import annotations

import argparse
import errno
import math
import os
import sys
from pathlib import Path

from edge_llm import config as config_mod

SEED_RANGE = (-(2**63), 2**64 - 1)  # what the daemon takes (int64 or uint64)


def _number(kind, lo: float, hi: float = math.inf, lo_open: bool = False, what: str = ""):
    """An argparse type: kind (int or float) in [lo, hi], or (lo, hi] with lo_open; what says the range."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {_KINDS[kind]}, got {text!r}") from None
        if not ((lo < value if lo_open else lo <= value) and value <= hi):  # NaN is in no range
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    return parse


_KINDS = {int: "an integer", float: "a number"}


def _text(text: str) -> str:
    from edge_llm.client import as_text

    return as_text(text)


def _url(text: str) -> str:
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(text)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError as e:  # a port out of range, or not a number
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
    if not valid:
        raise argparse.ArgumentTypeError(f"expected http://HOST[:PORT], got {text!r}")
    return text


def _api_key(text: str) -> str:
    if not (text.isascii() and text.isprintable()):
        raise argparse.ArgumentTypeError("a Bearer key is printable ASCII")
    return text


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
    from edge_llm import plan_report

    return plan_report.report(args, _load(args))


def cmd_chat(args) -> int:
    from edge_llm import client

    return client.chat(args)


def cmd_summarize(args) -> int:
    from edge_llm.summarize import extract

    path = Path(args.file)
    try:
        data = path.read_bytes()
        kind = extract.media_type(path.name, None, data)
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

    try:
        bench.check_output(args.json)  # before the run, not after minutes of it
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
    except bench.BenchError as e:
        print(f"edge-llm bench: {e}", file=sys.stderr)
        return 2


def _bench_parser(sub) -> None:
    p = _parser(
        "bench",
        sub,
        "prefill and decode rates and tokens per joule on this device",
        "Loads the model in this process (the daemon's engine, not the daemon: stop it first for clean "
        "numbers), prefills --batch prompts of --prompt-tokens, then generates --decode-tokens for each, "
        "and prints tokens/s, the joules each phase took where energy can be read (NVML, RAPL, jtop) and "
        "whether the per-request joules add up to the counter's. On a Jetson, --power-modes measures in "
        "each nvpmodel mode and sets the mode in effect before back at the end.",
    )
    _config_args(p)
    positive, at_least_0 = _number(int, 1, what="1 or more"), _number(float, 0, what="0 or more")
    p.add_argument("--batch", type=positive, default=4, help="sequences at once (at most the plan's batch)")
    p.add_argument("--prompt-tokens", type=positive, default=512, help="prompt length of the prefill phase")
    p.add_argument("--decode-tokens", type=positive, default=128, help="tokens generated per sequence")
    p.add_argument("--power-modes", default="", help="Jetson: 'all' or ids like 0,2 from nvpmodel.conf")
    p.add_argument("--nvpmodel-conf", default="/etc/nvpmodel.conf")
    p.add_argument("--settle-s", type=at_least_0, default=5.0, help="wait after each power mode change")
    p.add_argument("--json", default="", metavar="FILE", help="write the results here")
    p.add_argument(
        "--energy-s",
        type=at_least_0,
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
    p = sub.add_parser(
        name,
        help=help,
        description=f"{help[0].upper()}{help[1:]}. {description}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(command_parser=p)
    return p


def _chat_args(p: argparse.ArgumentParser) -> None:
    _daemon_args(p, "the daemon")
    p.add_argument(
        "--model-id", default="", type=_text, help="the model name to send (default: the one the daemon serves)"
    )
    p.add_argument("--system", default="", type=_text, help="a system prompt")
    p.add_argument(
        "--temperature",
        type=_number(float, 0, 2, what="from 0 to 2"),
        help="0 (always the likeliest token) to 2; default: the model's (GET /api/sampling shows it)",
    )
    p.add_argument(
        "--top-p",
        type=_number(float, 0, 1, lo_open=True, what="above 0 and at most 1"),
        help="sample from the likeliest tokens covering this much probability (above 0, at most 1)",
    )
    p.add_argument(
        "--max-tokens",
        type=_number(int, 1, what="1 or more"),
        help="longest answer in tokens (default: the plan's max_output_len)",
    )
    p.add_argument("--seed", type=_number(int, *SEED_RANGE, what="a 64-bit integer"), help="repeatable sampling")
    p.add_argument(
        "--wait",
        type=_number(float, 0, what="0 or more"),
        default=0.0,
        help="seconds to wait for a daemon that is starting or loading its model (default: %(default)s, say so)",
    )


def _daemon_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8000", type=_url, help=f"{what} (default: %(default)s)")
    p.add_argument(
        "--api-key", default="", type=_api_key, help="Bearer key, for a daemon on another host (server.api_key)"
    )


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
    _daemon_args(p, "a running daemon")
    p.add_argument(
        "--wait",
        type=_number(float, 0, what="0 or more"),
        default=300.0,
        help="seconds to wait for a daemon that is loading its model or stopped answering (default: %(default)s)",
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
    args, unknown = ap.parse_known_args(argv)
    if unknown:  # said by the command's parser: its usage, not the top level's
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    from edge_llm.engine.backends.base import BackendError
    from edge_llm.planner import PlanError

    try:
        return args.fn(args)
    except config_mod.ConfigError as e:
        print(f"edge-llm: configuration error: {e}", file=sys.stderr)
        return 2
    except (BackendError, PlanError) as e:  # a model that does not load or fit: the message says which
        print(f"edge-llm {args.cmd}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # `edge-llm plan --json | head`: the reader has gone, and so does the rest
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's docs: no error at exit
        return 141  # as a shell reports SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
