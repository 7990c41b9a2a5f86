"""FAKE tensorrt_llm.runtime: ModelRunnerCpp.from_dir with the v0.12.0-jetson signature."""

from tensorrt_llm.bindings import executor as trtllm

CALLS = []  # every from_dir call: (engine_dir, kwargs)


class ModelRunnerCpp:
    def __init__(self, session):
        self.session = session

    @classmethod
    def from_dir(cls, engine_dir, *, lora_dir=None, rank=0, max_batch_size=None, max_input_len=None,
                 max_output_len=None, max_beam_width=None, max_attention_window_size=None, sink_token_length=None,
                 kv_cache_free_gpu_memory_fraction=None, medusa_choices=None, debug_mode=False,
                 lora_ckpt_source="hf", gpu_weights_percent=1, max_tokens_in_paged_kv_cache=None,
                 kv_cache_enable_block_reuse=False, enable_chunked_context=False, is_enc_dec=False,
                 multi_block_mode=None, enable_context_fmha_fp32_acc=None, use_mmap=False):
        kwargs = {k: v for k, v in locals().items() if k not in ("cls", "engine_dir")}
        CALLS.append((engine_dir, kwargs))
        return cls(trtllm.Executor(max_batch_size or 8))
