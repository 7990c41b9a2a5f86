"""Build an INT4 TensorRT-LLM engine (v0.12.0-jetson) sized by `edge-llm plan` for a device.

    python tools/build_engine.py --model HF_DIR --output ENGINE_DIR --device agx-orin-64gb \\
        [--quant int4_awq|int4|int4_gptq] [--gptq-ckpt FILE] [--trtllm-src DIR] [--dry-run]

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
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_llm import planner, profiles  # noqa: E402
from edge_llm.engine.backends.base import ModelProfile  # noqa: E402
from edge_llm.engine.backends.trtllm import MANIFEST  # noqa: E402

GPU_ARCH = "sm_87"  # Jetson Orin
INT4_SHARE = 0.3  # INT4 engine bytes per fp16 checkpoint byte (INT4 linears, fp16 embeddings)


def hf_profile(model_dir: Path) -> ModelProfile:
    cfg = json.loads((model_dir / "config.json").read_text())
    heads = cfg["num_attention_heads"]
    fp16_bytes = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) or \
        2 * 12 * cfg["num_hidden_layers"] * cfg["hidden_size"] ** 2
    return ModelProfile(
        name=model_dir.name, n_layers=cfg["num_hidden_layers"], n_kv_heads=cfg.get("num_key_value_heads", heads),
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        n_ctx_train=cfg.get("max_position_embeddings", 4096), weights_bytes=int(fp16_bytes * INT4_SHARE),
        n_embd=cfg["hidden_size"], n_vocab=cfg["vocab_size"])


def commands(args, plan: planner.Plan, ckpt: Path, partial: Path) -> list[list[str]]:
    src, model = Path(args.trtllm_src), Path(args.model)
    if args.quant == "int4_awq":
        quantize = [sys.executable, str(src / "examples/quantization/quantize.py"), "--model_dir", str(model),
                    "--output_dir", str(ckpt), "--dtype", "float16", "--qformat", "int4_awq",
                    "--awq_block_size", "128", "--calib_size", "32"]
    else:
        quantize = [sys.executable, str(src / "examples/llama/convert_checkpoint.py"), "--model_dir", str(model),
                    "--output_dir", str(ckpt), "--dtype", "float16", "--use_weight_only",
                    "--weight_only_precision", args.quant]
        if args.quant == "int4_gptq":
            quantize += ["--per_group", "--quant_ckpt_path", args.gptq_ckpt]
    build = ["trtllm-build", "--checkpoint_dir", str(ckpt), "--output_dir", str(partial),
             "--gemm_plugin", "float16", "--use_paged_context_fmha", "enable",
             "--max_batch_size", str(plan.max_batch_size), "--max_input_len", str(plan.max_input_len),
             "--max_seq_len", str(plan.max_seq_len), "--max_num_tokens", str(plan.max_batch_tokens)]
    return [quantize, build]


def manifest(args, plan: planner.Plan, version: str) -> dict:
    return {"complete": True, "source_model": str(Path(args.model).resolve()), "quantization": args.quant,
            "device": args.device, "gpu_arch": GPU_ARCH, "tensorrt_llm_version": version,
            "limits": {"max_batch_size": plan.max_batch_size, "max_input_len": plan.max_input_len,
                       "max_seq_len": plan.max_seq_len, "max_num_tokens": plan.max_batch_tokens},
            "plan_reasons": plan.reasons,
            "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def run(cmds: list[list[str]]) -> None:
    for i, cmd in enumerate(cmds, 1):
        t0 = time.monotonic()
        print(f"[{i}/{len(cmds)}] {shlex.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)  # its own progress goes to the terminal
        print(f"[{i}/{len(cmds)}] done in {time.monotonic() - t0:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="Hugging Face checkpoint folder")
    ap.add_argument("--output", required=True, help="engine folder to create")
    ap.add_argument("--device", default="agx-orin-64gb", choices=sorted(profiles.DEVICES))
    ap.add_argument("--quant", default="int4_awq", choices=["int4_awq", "int4", "int4_gptq"])
    ap.add_argument("--gptq-ckpt", help="GPTQ safetensors, for --quant int4_gptq")
    ap.add_argument("--trtllm-src", default="/opt/TensorRT-LLM", help="TensorRT-LLM v0.12.0-jetson checkout")
    ap.add_argument("--max-seq-len", type=int, default=0, help="cap the plan's max_seq_len")
    ap.add_argument("--max-batch-size", type=int, default=0, help="cap the plan's max_batch_size")
    ap.add_argument("--dry-run", action="store_true", help="print every command, run nothing")
    args = ap.parse_args(argv)
    if args.quant == "int4_gptq" and not args.gptq_ckpt:
        ap.error("--quant int4_gptq needs --gptq-ckpt")
    model, out = Path(args.model), Path(args.output)
    if not (model / "config.json").is_file():
        ap.error(f"{model} has no config.json: not a Hugging Face checkpoint folder")
    caps = {k: v for k, v in (("max_seq_len", args.max_seq_len), ("max_batch_size", args.max_batch_size)) if v}
    plan = planner.plan(hf_profile(model), profiles.DEVICES[args.device], planner.Policy(caps=caps))
    print(f"plan for {args.device}: batch {plan.max_batch_size}, input {plan.max_input_len}, seq {plan.max_seq_len},"
          f" tokens/step {plan.max_batch_tokens}, KV {plan.kv_cache_tokens} tokens")
    partial, ckpt = out.with_name(out.name + ".partial"), out.with_name(out.name + ".ckpt")
    cmds = commands(args, plan, ckpt, partial)
    if args.dry_run:
        for cmd in cmds:
            print("+", shlex.join(cmd))
        print(f"+ copy the tokenizer files to {partial}/tokenizer, write {partial}/{MANIFEST}, rename to {out}")
        return 0
    import tensorrt_llm  # only for its version, on the device
    shutil.rmtree(partial, ignore_errors=True)
    run(cmds)
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
