"""TensorRT-LLM 0.12.0-jetson: a memory-mapped INT4 engine served by TensorRT-LLM's own
in-flight batching (its Executor schedules; engine/trt_engine.py only feeds it and streams back).

Written from the v0.12.0-jetson sources as summarized in JETSON.md (ModelRunnerCpp.from_dir
and the Executor it wraps). NOT RUN on a Jetson by its authors: the tests drive it with a
fake tensorrt_llm (tests/fakes) that carries the branch's checks. What the branch implies:
- from_dir asserts max_input_len + max_output_len <= the engine's max_seq_len: we pass a
  pair that sums to the plan's max_seq_len; the per-request output cap stays our own.
- the Executor is built without a batch size and schedules up to the engine's build-time
  batch: a smaller planned batch is enforced by our admission (trt_engine.TrtLlmEngine).
- the paged KV pool is min(max_tokens, fraction x free memory), fraction 0.9 by default:
  we pass both, the fraction computed from the plan, so the pool is what the plan says.
- EOS is not in output_token_ids and Result has no finish reason: "stop" vs "length" is
  decided from the count against max_new_tokens.
- Request takes one end_id: a model with several end tokens (Llama-3-Instruct's
  generation_config.json lists 128001 and 128009) gets the others as stop_words, which the
  executor returns as output tokens: they end the request and are never text.
- chunked context needs an engine built with paged context FMHA (a TLLM_CHECK in the batch
  manager): it is asked for only when the engine's plugin_config says so.
- text is decoded incrementally (engine/detokenizer.py), never one token at a time.
- random_seed is uint64; Response.error_msg and .result raise on the wrong kind of response.
Imported only when model.backend = "trtllm".
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from edge_llm.engine.backends.base import BackendError
from edge_llm.engine.chat_template import ChatTemplate
from edge_llm.engine.detokenizer import IncrementalDetokenizer
from edge_llm.profile import ModelProfile

log = logging.getLogger(__name__)
MANIFEST = "edge-llm-manifest.json"
MAX_KV_FRACTION = 0.95  # never ask the executor for all of the free memory


def free_device_memory() -> int:
    """What cudaMemGetInfo reports as free on a Jetson: MemFree, without the reclaimable page
    cache (JETSON.md). Read before the engine loads."""
    import psutil

    return psutil.virtual_memory().free


def kv_cache_fraction(kv_bytes: int, free_before_load: int, engine_bytes: int) -> float:
    """free_gpu_memory_fraction that makes the executor's KV pool kv_bytes: the executor takes
    its fraction of what is free once the engine and its activations are in memory."""
    free_after = free_before_load - engine_bytes
    if free_after <= 0:
        raise BackendError(
            f"no memory left for the KV cache: {free_before_load >> 20} MiB free before loading, "
            f"the engine needs {engine_bytes >> 20} MiB"
        )
    return min(MAX_KV_FRACTION, kv_bytes / free_after)


class ManifestError(BackendError):
    """The engine was built for another TensorRT-LLM or device; the message says how to rebuild."""


def read_manifest(engine_dir: Path) -> dict:
    path = engine_dir / MANIFEST
    rebuild = (
        f"rebuild it on this device: tools/build_engine.py --model <hf-dir> --output {engine_dir} --device <profile>"
    )
    if not path.is_file():
        raise ManifestError(
            f"{engine_dir} has no {MANIFEST}: it was not built by tools/build_engine.py "
            f"or its build did not finish; {rebuild}"
        )
    manifest = json.loads(path.read_text())
    if not manifest.get("complete"):
        raise ManifestError(f"the build of {engine_dir} did not finish; {rebuild}")
    return manifest


def check_manifest(manifest: dict, trtllm_version: str, gpu_arch: str, engine_dir: Path) -> None:
    rebuild = f"rebuild: tools/build_engine.py --model {manifest.get('source_model', '<hf-dir>')} --output {engine_dir}"
    if manifest.get("tensorrt_llm_version") != trtllm_version:
        raise ManifestError(
            f"{engine_dir} was built with TensorRT-LLM {manifest.get('tensorrt_llm_version')}, "
            f"this device has {trtllm_version}; engines only load in the version that built "
            f"them; {rebuild}"
        )
    if manifest.get("gpu_arch") != gpu_arch:
        raise ManifestError(f"{engine_dir} was built for {manifest.get('gpu_arch')}, this GPU is {gpu_arch}; {rebuild}")


def device_gpu_arch() -> str:
    """sm_87 on a Jetson Orin (tegra234), from the device tree; else from CUDA via torch."""
    try:
        if b"tegra234" in Path("/proc/device-tree/compatible").read_bytes():
            return "sm_87"
    except OSError:
        pass
    import torch  # comes with TensorRT-LLM

    major, minor = torch.cuda.get_device_capability()
    return f"sm_{major}{minor}"


def profile_from_config(engine_dir: Path, name: str) -> tuple[ModelProfile, dict]:
    """ModelProfile and build limits from the engine's config.json. Activation memory was
    fixed at build time by the max shapes: estimated from max_num_tokens x hidden size."""
    cfg = json.loads((engine_dir / "config.json").read_text())
    pre, build = cfg["pretrained_config"], cfg["build_config"]
    heads = pre["num_attention_heads"]
    engine_bytes = sum(p.stat().st_size for p in engine_dir.glob("rank*.engine"))
    kv_dtype = 1 if pre.get("quantization", {}).get("kv_cache_quant_algo") in ("INT8", "FP8") else 2
    profile = ModelProfile(
        name=name,
        n_layers=pre["num_hidden_layers"],
        n_kv_heads=pre.get("num_key_value_heads", heads),
        head_dim=pre.get("head_size") or pre["hidden_size"] // heads,
        n_ctx_train=pre.get("max_position_embeddings", build["max_seq_len"]),
        weights_bytes=engine_bytes,
        n_embd=pre["hidden_size"],
        n_vocab=pre["vocab_size"],
        kv_bytes_per_elem=kv_dtype,
        activation_bytes=build["max_num_tokens"] * pre["hidden_size"] * 2 * 16,
    )
    limits = {k: build[k] for k in ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens")}
    return profile, limits


def end_ids(tokenizer_dir: Path, tokenizer) -> list[int]:
    """Every token that ends a generation: generation_config.json's eos_token_id (an int or a
    list; build_engine.py copies the file beside the tokenizer), then the tokenizer's EOS."""
    ids: list[int] = []
    path = tokenizer_dir / "generation_config.json"
    if path.is_file():
        eos = json.loads(path.read_text()).get("eos_token_id")
        ids += eos if isinstance(eos, list) else [eos] if eos is not None else []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    ids = list(dict.fromkeys(int(i) for i in ids))
    if not ids:
        raise BackendError(
            f"{tokenizer_dir} names no end token (no eos_token_id in generation_config.json "
            "or the tokenizer): a generation could only end at max_tokens"
        )
    return ids


def paged_context_fmha(engine_dir: Path) -> bool:
    """Whether the engine was built with --use_paged_context_fmha enable (config.json)."""
    cfg = json.loads((engine_dir / "config.json").read_text())
    return bool(cfg["build_config"].get("plugin_config", {}).get("use_paged_context_fmha", False))


class TrtLlmBackend:
    """Tokenizer, chat template and profile of an engine directory (thread-safe reads)."""

    # the optional request features its SamplingConfig has on v0.12 (no min_p, no grammar)
    supports = frozenset({"presence_penalty", "frequency_penalty"})

    def __init__(self, engine_dir: str | Path):
        import tensorrt_llm  # Jetson only
        from transformers import AutoTokenizer

        self.engine_dir = Path(engine_dir)
        self.manifest = read_manifest(self.engine_dir)
        check_manifest(self.manifest, tensorrt_llm.__version__, device_gpu_arch(), self.engine_dir)
        self.profile, self.build_limits = profile_from_config(self.engine_dir, self.engine_dir.name)
        tokenizer = self.tokenizer = AutoTokenizer.from_pretrained(self.engine_dir / "tokenizer")
        self.end_ids = end_ids(self.engine_dir / "tokenizer", tokenizer)
        self.template = ChatTemplate(
            getattr(tokenizer, "chat_template", None), tokenizer.bos_token or "", tokenizer.eos_token or ""
        )
        self.file_bytes = self.profile.weights_bytes
        self.runner = None

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special))

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return self.template.render(messages)

    def chat_add_special(self, prompt: str) -> bool:
        return False  # the template writes BOS itself where the model wants one

    def runner_kwargs(self, plan, free_before_load: int) -> dict:
        """The plan, as ModelRunnerCpp.from_dir keyword arguments (v0.12.0-jetson). The plan's
        lengths are already capped by the engine's (appliance.policy_from_config)."""
        fraction = kv_cache_fraction(plan.kv_cache_bytes, free_before_load, plan.weights_bytes + plan.workspace_bytes)
        return dict(
            max_batch_size=plan.max_batch_size,
            max_input_len=plan.max_input_len,
            max_output_len=plan.max_seq_len - plan.max_input_len,
            max_beam_width=1,
            max_tokens_in_paged_kv_cache=plan.kv_cache_tokens,
            kv_cache_free_gpu_memory_fraction=fraction,
            kv_cache_enable_block_reuse=True,
            enable_chunked_context=paged_context_fmha(self.engine_dir),
            use_mmap=True,
        )

    def load(self, plan) -> None:
        from tensorrt_llm.runtime import ModelRunnerCpp

        kwargs = self.runner_kwargs(plan, free_device_memory())
        log.info(
            "TensorRT-LLM: %d KV tokens (fraction %.3f of free memory), runtime input %d + output %d",
            plan.kv_cache_tokens,
            kwargs["kv_cache_free_gpu_memory_fraction"],
            kwargs["max_input_len"],
            kwargs["max_output_len"],
        )
        self.runner = ModelRunnerCpp.from_dir(str(self.engine_dir), **kwargs)

    @property
    def executor(self):
        return getattr(self.runner, "session", None) or self.runner.executor

    def detokenizer(self, prompt_ids: list[int]) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self.tokenizer, prompt_ids)

    def request_kwargs(self) -> dict:
        """End and pad ids of every Request: the first end id, the rest as stop words."""
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return dict(
            end_id=self.end_ids[0],
            pad_id=self.end_ids[0] if pad is None else pad,
            stop_words=[[i] for i in self.end_ids[1:]] or None,
        )

    def release(self, request_id: str) -> None:
        pass  # per-request state (sampling, KV blocks) lives in the executor

    def interrupt(self, requested: bool) -> None:
        pass  # the executor runs its own iterations: there is no step of ours to stop

    def close(self) -> None:
        if self.runner is not None:
            self.executor.shutdown()
            self.runner = None
