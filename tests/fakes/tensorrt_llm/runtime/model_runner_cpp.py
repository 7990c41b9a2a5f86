"""FAKE tensorrt_llm/runtime/model_runner_cpp.py of v0.12.0-jetson: from_dir with the branch's
signature and its checks (JETSON.md, "Checks in from_dir"; the checks as in the 0.11/0.12-era
model_runner_cpp.py read for this), building the Executor the way it does:
KvCacheConfig(free_gpu_memory_fraction, max_attention_window, sink_token_length, max_tokens,
enable_block_reuse), ExecutorConfig(max_beam_width=, kv_cache_config=, decoding_config=) by
keyword and without a batch size, then `enable_chunked_context` set on it."""

from __future__ import annotations

import json
from pathlib import Path

from tensorrt_llm.bindings import executor as trtllm

CALLS = []  # every from_dir call: (engine_dir, kwargs)
# What cudaMemGetInfo reports as free once the engine is loaded. On a Jetson it is MemFree,
# which leaves out reclaimable page cache (JETSON.md). Tests set it.
FREE_GPU_MEMORY_BYTES = 40 << 30


class ModelRunnerCpp:
    def __init__(self, session, max_input_len, max_seq_len, max_batch_size):
        self.session = session  # the Executor; `.executor` only exists in later releases
        self.max_input_len, self.max_seq_len, self.max_batch_size = max_input_len, max_seq_len, max_batch_size

    @classmethod
    def from_dir(
        cls,
        engine_dir,
        *,
        lora_dir=None,
        rank=0,
        max_batch_size=None,
        max_input_len=None,
        max_output_len=None,
        max_beam_width=None,
        max_attention_window_size=None,
        sink_token_length=None,
        kv_cache_free_gpu_memory_fraction=None,
        medusa_choices=None,
        debug_mode=False,
        lora_ckpt_source="hf",
        gpu_weights_percent=1,
        max_tokens_in_paged_kv_cache=None,
        kv_cache_enable_block_reuse=False,
        enable_chunked_context=False,
        is_enc_dec=False,
        multi_block_mode=None,
        enable_context_fmha_fp32_acc=None,
        use_mmap=False,
    ):
        kwargs = {k: v for k, v in locals().items() if k not in ("cls", "engine_dir")}
        CALLS.append((engine_dir, kwargs))
        cfg = json.loads((Path(engine_dir) / "config.json").read_text())
        build, pre = cfg["build_config"], cfg["pretrained_config"]
        engine_batch, engine_seq = build["max_batch_size"], build["max_seq_len"]
        # the engine's own limits where nothing is given; each given one is asserted against it
        if max_batch_size is None:
            max_batch_size = engine_batch
        else:
            assert max_batch_size <= engine_batch
        if max_input_len is None:
            max_input_len = build["max_input_len"]  # not asserted: "not the upper bound of input length"
        if max_output_len is None:
            max_seq_len = engine_seq
        else:  # only when max_output_len is given
            max_seq_len = max_input_len + max_output_len
            assert max_seq_len <= engine_seq
        if max_beam_width is None:
            max_beam_width = build.get("max_beam_width", 1)
        else:
            assert max_beam_width <= build.get("max_beam_width", 1)
        kv = trtllm.KvCacheConfig(
            free_gpu_memory_fraction=kv_cache_free_gpu_memory_fraction,
            max_attention_window=max_attention_window_size,
            sink_token_length=sink_token_length,
            max_tokens=max_tokens_in_paged_kv_cache,
            enable_block_reuse=kv_cache_enable_block_reuse,
        )
        config = trtllm.ExecutorConfig(max_beam_width=max_beam_width, kv_cache_config=kv, decoding_config=None)
        config.enable_chunked_context = enable_chunked_context
        heads = pre["num_attention_heads"]
        bytes_per_token = (
            2
            * pre["num_hidden_layers"]
            * pre.get("num_key_value_heads", heads)
            * (pre.get("head_size") or pre["hidden_size"] // heads)
            * 2
        )
        pool = config.kv_cache_config.pool_tokens(FREE_GPU_MEMORY_BYTES, bytes_per_token)
        fmha = build.get("plugin_config", {}).get("use_paged_context_fmha", False)
        executor = trtllm.Executor(engine_batch, engine_seq, pool, config, paged_context_fmha=fmha)
        return cls(executor, max_input_len, max_seq_len, max_batch_size)
