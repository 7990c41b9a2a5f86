"""Build an INT4 TensorRT-LLM engine (v0.12.0-jetson) sized by `edge-llm plan` for a device.

    python tools/build_engine.py --model HF_DIR --output ENGINE_DIR --trtllm-src TRTLLM_CHECKOUT \\
        --device agx-orin-64gb [--quant int4|int4_gptq|int4_awq] [--calib-dataset DIR] [--dry-run]

--trtllm-src is a checkout of TensorRT-LLM's v0.12.0-jetson branch: convert_checkpoint.py and
quantize.py live in its examples/, which the wheel does not install
(git clone --branch v0.12.0-jetson --depth 1 https://github.com/NVIDIA/TensorRT-LLM.git).

--quant int4 (the default) is README4Jetson's documented path: convert_checkpoint.py with
INT4 weight-only quantization, no calibration. int4_gptq is its other documented path: --model
is then a GPTQ checkpoint itself (--per_group; no --quant_ckpt_path). int4_awq goes through
NVIDIA ModelOpt's quantize.py, which README4Jetson does not document and which downloads a
calibration set by default: it is opt-in and needs a local one (--calib-dataset DIR).

Steps: quantize/convert the checkpoint, trtllm-build with the plan's shape limits (paged
context FMHA on, for chunked context and KV reuse; gemm plugin float16), copy the tokenizer,
write a manifest. The engine is built into ENGINE_DIR.partial and renamed only when complete,
so an interrupted build never leaves a folder that looks like an engine. Written from the
documented README4Jetson steps; not run here (no Jetson, no TensorRT-LLM).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_llm import planner, profiles  # noqa: E402
from edge_llm.engine.backends.trtllm import MANIFEST  # noqa: E402
from edge_llm.profile import ModelProfile  # noqa: E402

GPU_ARCH = "sm_87"  # Jetson Orin
INT4_SHARE = 0.3  # INT4 engine bytes per fp16 checkpoint byte (INT4 linears, fp16 embeddings)
# Disk a build takes beside the checkpoint: ~27 GB for an 8B model (16 GB fp16), as issue 20
# puts it (converted checkpoint, engine, temporaries); scaled by the checkpoint's size. Not
# measured here: no Jetson.
DISK_PER_CHECKPOINT_BYTE = 1.7
# RAM + swap a conversion holds: the fp16 weights and their quantized copy (an estimate; JETSON.md:
# a 7-8B build can run out of memory on a 32 GB Orin)
MEMORY_PER_CHECKPOINT_BYTE = 2.0
CLONE = "git clone --branch v0.12.0-jetson --depth 1 https://github.com/NVIDIA/TensorRT-LLM.git"
GiB = 1 << 30


def checkpoint_bytes(model_dir: Path) -> int:
    """The fp16 checkpoint's size: its safetensors, else 12 x layers x hidden^2 parameters."""
    cfg = json.loads((model_dir / "config.json").read_text())
    return (
        sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
        or 2 * 12 * cfg["num_hidden_layers"] * cfg["hidden_size"] ** 2
    )


def meminfo_bytes(path: str = "/proc/meminfo") -> dict[str, int]:
    fields = (line.split() for line in Path(path).read_text().splitlines())
    return {f[0].rstrip(":"): int(f[1]) * 1024 for f in fields if len(f) >= 2 and f[1].isdigit()}


def check_resources(model_dir: Path, out: Path, meminfo: dict[str, int] | None = None) -> list[str]:
    """What stops a build before it starts: disk where the engine goes, RAM + swap for the
    conversion. Returns the problems, each with its numbers."""
    ckpt = checkpoint_bytes(model_dir)
    problems = []
    free = shutil.disk_usage(out.parent if out.parent.exists() else Path.cwd()).free
    if free < ckpt * DISK_PER_CHECKPOINT_BYTE:
        problems.append(
            f"{free / GiB:.1f} GiB free under {out.parent}, the build needs about "
            f"{ckpt * DISK_PER_CHECKPOINT_BYTE / GiB:.1f} GiB (converted checkpoint and engine; "
            f"the swap file's space is not free space)"
        )
    mem = meminfo or meminfo_bytes()
    have = mem.get("MemAvailable", 0) + mem.get("SwapFree", 0)
    if have < ckpt * MEMORY_PER_CHECKPOINT_BYTE:
        problems.append(
            f"{mem.get('MemAvailable', 0) / GiB:.1f} GiB RAM available + {mem.get('SwapFree', 0) / GiB:.1f}"
            f" GiB swap free, a conversion of this {ckpt / GiB:.1f} GiB checkpoint holds about "
            f"{ckpt * MEMORY_PER_CHECKPOINT_BYTE / GiB:.1f} GiB: stop the daemon and the kiosk "
            "(systemctl stop edge-llm edge-llm-kiosk) or add swap"
        )
    return problems


def check_trtllm_src(src: Path, quant: str) -> None:
    script = src / "examples" / ("quantization/quantize.py" if quant == "int4_awq" else "llama/convert_checkpoint.py")
    if not script.is_file():
        raise SystemExit(
            f"build_engine: {script} not found: --trtllm-src must be a TensorRT-LLM v0.12.0-jetson "
            f"checkout (the wheel does not install examples/): {CLONE}"
        )


def hf_profile(model_dir: Path) -> ModelProfile:
    cfg = json.loads((model_dir / "config.json").read_text())
    heads = cfg["num_attention_heads"]
    fp16_bytes = checkpoint_bytes(model_dir)
    return ModelProfile(
        name=model_dir.name,
        n_layers=cfg["num_hidden_layers"],
        n_kv_heads=cfg.get("num_key_value_heads", heads),
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        n_ctx_train=cfg.get("max_position_embeddings", 4096),
        weights_bytes=int(fp16_bytes * INT4_SHARE),
        n_embd=cfg["hidden_size"],
        n_vocab=cfg["vocab_size"],
    )


def trtllm_build() -> str:
    """trtllm-build as installed next to this Python (the venv's bin/), else on PATH; the
    wheel puts it in the venv or ~/.local/bin, which is often not on root's PATH."""
    beside = Path(sys.executable).parent / "trtllm-build"
    found = str(beside) if beside.is_file() else shutil.which("trtllm-build")
    if not found:
        raise SystemExit(
            f"build_engine: trtllm-build not found beside {sys.executable} nor on PATH: install the "
            "TensorRT-LLM 0.12.0-jetson wheel into this venv (jetpack/install.sh --trtllm-wheel)"
        )
    return found


def commands(args, plan: planner.Plan, ckpt: Path, partial: Path, builder: str = "trtllm-build") -> list[list[str]]:
    src, model = Path(args.trtllm_src), Path(args.model)
    if args.quant == "int4_awq":
        quantize = [
            sys.executable,
            str(src / "examples/quantization/quantize.py"),
            "--model_dir",
            str(model),
            "--output_dir",
            str(ckpt),
            "--dtype",
            "float16",
            "--qformat",
            "int4_awq",
            "--awq_block_size",
            "128",
            "--calib_size",
            "32",
            "--calib_dataset",
            str(args.calib_dataset),
        ]
    else:
        quantize = [
            sys.executable,
            str(src / "examples/llama/convert_checkpoint.py"),
            "--model_dir",
            str(model),
            "--output_dir",
            str(ckpt),
            "--dtype",
            "float16",
            "--use_weight_only",
            "--weight_only_precision",
            args.quant,
        ]
        if args.quant == "int4_gptq":
            quantize += ["--per_group"]  # README4Jetson: --model_dir is the GPTQ checkpoint itself
    build = [
        builder,
        "--checkpoint_dir",
        str(ckpt),
        "--output_dir",
        str(partial),
        "--gemm_plugin",
        "float16",
        "--use_paged_context_fmha",
        "enable",
        "--max_batch_size",
        str(plan.max_batch_size),
        "--max_input_len",
        str(plan.max_input_len),
        "--max_seq_len",
        str(plan.max_seq_len),
        "--max_num_tokens",
        str(plan.max_batch_tokens),
    ]
    return [quantize, build]


def manifest(args, plan: planner.Plan, version: str) -> dict:
    return {
        "complete": True,
        "source_model": str(Path(args.model).resolve()),
        "quantization": args.quant,
        "device": args.device,
        "gpu_arch": GPU_ARCH,
        "tensorrt_llm_version": version,
        "limits": {
            "max_batch_size": plan.max_batch_size,
            "max_input_len": plan.max_input_len,
            "max_seq_len": plan.max_seq_len,
            "max_num_tokens": plan.max_batch_tokens,
        },
        "plan_reasons": plan.reasons,
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def run(cmds: list[list[str]], offline: bool = False) -> None:
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1") if offline else None
    for i, cmd in enumerate(cmds, 1):
        t0 = time.monotonic()
        print(f"[{i}/{len(cmds)}] {shlex.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True, env=env)  # its own progress goes to the terminal
        print(f"[{i}/{len(cmds)}] done in {time.monotonic() - t0:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="Hugging Face checkpoint folder")
    ap.add_argument("--output", required=True, help="engine folder to create")
    ap.add_argument("--device", default="agx-orin-64gb", choices=sorted(profiles.DEVICES))
    ap.add_argument(
        "--quant",
        default="int4",
        choices=["int4", "int4_gptq", "int4_awq"],
        help="int4: weight-only (documented on Jetson, default); int4_gptq: --model is a GPTQ "
        "checkpoint; int4_awq: ModelOpt, opt-in, needs --calib-dataset",
    )
    ap.add_argument("--calib-dataset", help="a local calibration dataset folder, for --quant int4_awq")
    ap.add_argument(
        "--trtllm-src",
        required=True,
        help=f"a TensorRT-LLM v0.12.0-jetson checkout (its examples/ are not in the wheel): {CLONE}",
    )
    ap.add_argument("--max-seq-len", type=int, default=0, help="cap the plan's max_seq_len")
    ap.add_argument("--max-batch-size", type=int, default=0, help="cap the plan's max_batch_size")
    ap.add_argument("--dry-run", action="store_true", help="print every command, run nothing")
    ap.add_argument("--force", action="store_true", help="build even when disk or memory looks short")
    args = ap.parse_args(argv)
    model, out = Path(args.model), Path(args.output)
    if args.quant == "int4_awq":
        if not args.calib_dataset:
            ap.error(
                "--quant int4_awq needs --calib-dataset DIR (a local calibration set: quantize.py would "
                "otherwise download one); the documented Jetson path is --quant int4"
            )
        if not Path(args.calib_dataset).is_dir():
            ap.error(f"--calib-dataset {args.calib_dataset} is not a folder")
    if not (model / "config.json").is_file():
        ap.error(f"{model} has no config.json: not a Hugging Face checkpoint folder")
    check_trtllm_src(Path(args.trtllm_src), args.quant)
    problems = check_resources(model, out)
    for problem in problems:
        print(f"build_engine: {problem}", file=sys.stderr)
    if problems and not args.force and not args.dry_run:
        raise SystemExit("build_engine: not starting a build that would fail partway; --force to try anyway")
    caps = {k: v for k, v in (("max_seq_len", args.max_seq_len), ("max_batch_size", args.max_batch_size)) if v}
    plan = planner.plan(hf_profile(model), profiles.DEVICES[args.device], planner.Policy(caps=caps))
    print(
        f"plan for {args.device}: batch {plan.max_batch_size}, input {plan.max_input_len}, seq {plan.max_seq_len},"
        f" tokens/step {plan.max_batch_tokens}, KV {plan.kv_cache_tokens} tokens"
    )
    partial, ckpt = out.with_name(out.name + ".partial"), out.with_name(out.name + ".ckpt")
    cmds = commands(args, plan, ckpt, partial, "trtllm-build" if args.dry_run else trtllm_build())
    if args.dry_run:
        for cmd in cmds:
            print("+", shlex.join(cmd))
        print(f"+ copy the tokenizer files to {partial}/tokenizer, write {partial}/{MANIFEST}, rename to {out}")
        return 0
    import tensorrt_llm  # only for its version, on the device

    shutil.rmtree(partial, ignore_errors=True)
    run(cmds, offline=args.quant == "int4_awq")
    tok = partial / "tokenizer"
    tok.mkdir()
    for f in model.glob("tokenizer*"):
        shutil.copy2(f, tok)
    for f in ("special_tokens_map.json", "generation_config.json"):
        if (model / f).exists():
            shutil.copy2(model / f, tok)
    (partial / MANIFEST).write_text(json.dumps(manifest(args, plan, tensorrt_llm.__version__), indent=2))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)  # only now does it look like an engine
    shutil.rmtree(ckpt, ignore_errors=True)
    print(f"engine ready: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
