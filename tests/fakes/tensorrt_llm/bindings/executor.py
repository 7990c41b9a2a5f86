"""FAKE tensorrt_llm.bindings.executor (see tests/fakes/README.md): the v0.12.0-jetson Executor
API with the checks, types and failures of the real pybind module. Each rule names where it
comes from; JETSON.md (shared) holds the facts as read in the branch's sources:
  cpp/tensorrt_llm/pybind/executor/bindings.cpp   (types: pybind raises TypeError on a wrong one;
      keyword names and positional order as in the 0.11/0.12-era file read for this, the one
      with logits_post_processor_name and encoder_input_token_ids in Request: the branch's own
      copy was not available to read)
  cpp/include/tensorrt_llm/executor/executor.h    (Request, Response, Result, KvCacheConfig)
  cpp/tensorrt_llm/batch_manager/kvCacheManager.cpp (the KV size: min of max_tokens and fraction)
  cpp/tensorrt_llm/kernels/samplingTopKKernels.cu (EOS is not written to the output tokens)
Its "model" emits token ids 100, 101, 102, ... and, when told to, ends a request with EOS."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass

UINT64_MAX = 2**64 - 1
SIZE_TYPE_MAX = 2**31 - 1  # SizeType32


def _typed(name: str, value, kind, optional: bool = True, lo=None, hi=None):
    """pybind11's argument conversion: a wrong type is a TypeError, never a silent cast."""
    if value is None and optional:
        return value
    ok = isinstance(value, kind) and not isinstance(value, bool) if kind in (int, float) else isinstance(value, kind)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)  # pybind accepts an int for a float
    if not ok or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise TypeError(
            f"__init__(): incompatible function arguments: {name}={value!r} "
            f"({type(value).__name__}) does not convert to {kind.__name__}"
            + (f" in [{lo}, {hi}]" if lo is not None else "")
        )
    return value


class SamplingConfig:
    """executor.h SamplingConfig; random_seed is std::optional<uint64_t> (RandomSeedType)."""

    def __init__(
        self,
        beam_width: int = 1,
        top_k=None,
        top_p=None,
        top_p_min=None,
        top_p_reset_ids=None,
        top_p_decay=None,
        random_seed=None,
        temperature=None,
        min_length=None,
        beam_search_diversity_rate=None,
        repetition_penalty=None,
        presence_penalty=None,
        frequency_penalty=None,
        length_penalty=None,
        early_stopping=None,
        no_repeat_ngram_size=None,
    ):
        self.beam_width = _typed("beam_width", beam_width, int, optional=False, lo=1, hi=SIZE_TYPE_MAX)
        self.top_k = _typed("top_k", top_k, int, lo=0, hi=SIZE_TYPE_MAX)
        self.top_p = _typed("top_p", top_p, float)
        self.random_seed = _typed("random_seed", random_seed, int, lo=0, hi=UINT64_MAX)
        self.temperature = _typed("temperature", temperature, float)
        self.min_length = _typed("min_length", min_length, int, lo=0, hi=SIZE_TYPE_MAX)
        self.presence_penalty = _typed("presence_penalty", presence_penalty, float)
        self.frequency_penalty = _typed("frequency_penalty", frequency_penalty, float)
        self.repetition_penalty = _typed("repetition_penalty", repetition_penalty, float)
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:  # executor.h checkTopP
            raise RuntimeError(f"[TensorRT-LLM][ERROR] Assertion failed: topP ({self.top_p}) must be in (0, 1]")
        if self.temperature is not None and self.temperature <= 0.0:  # checkTemperature
            raise RuntimeError(f"[TensorRT-LLM][ERROR] Assertion failed: temperature ({self.temperature}) must be > 0")


class OutputConfig:
    def __init__(
        self,
        return_log_probs: bool = False,
        return_context_logits: bool = False,
        return_generation_logits: bool = False,
        exclude_input_from_output: bool = False,
    ):
        self.return_log_probs = return_log_probs
        self.exclude_input_from_output = exclude_input_from_output


def _words(name: str, value):
    """std::optional<std::list<VecTokens>>: None or a list of lists of int."""
    if value is not None and not (
        isinstance(value, list)
        and all(
            isinstance(w, list) and w and all(isinstance(t, int) and not isinstance(t, bool) for t in w) for w in value
        )
    ):
        raise TypeError(f"__init__(): incompatible function arguments: {name} must be List[List[int]]")
    return value


class Request:
    """executor.h Request: input_token_ids is VecTokens (list of int), max_new_tokens SizeType32.
    The binding's keywords and nothing else: an unknown keyword is pybind's TypeError."""

    def __init__(
        self,
        input_token_ids,
        max_new_tokens,
        streaming=False,
        sampling_config=None,
        output_config=None,
        end_id=None,
        pad_id=None,
        bad_words=None,
        stop_words=None,
        embedding_bias=None,
        external_draft_tokens_config=None,
        prompt_tuning_config=None,
        lora_config=None,
        logits_post_processor_name=None,
        encoder_input_token_ids=None,
    ):
        if not isinstance(input_token_ids, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in input_token_ids
        ):
            raise TypeError("__init__(): incompatible function arguments: input_token_ids must be List[int]")
        if not input_token_ids:  # Request::validate in executor.cpp
            raise RuntimeError("[TensorRT-LLM][ERROR] Assertion failed: input_token_ids must not be empty")
        self.input_token_ids = input_token_ids
        self.max_new_tokens = _typed("max_new_tokens", max_new_tokens, int, optional=False, lo=1, hi=SIZE_TYPE_MAX)
        self.streaming = _typed("streaming", streaming, bool, optional=False)
        self.sampling_config = sampling_config or SamplingConfig()
        if not isinstance(self.sampling_config, SamplingConfig):
            raise TypeError("__init__(): incompatible function arguments: sampling_config")
        self.output_config = output_config or OutputConfig()
        self.end_id = _typed("end_id", end_id, int)
        self.pad_id = _typed("pad_id", pad_id, int)
        self.bad_words = _words("bad_words", bad_words)
        self.stop_words = _words("stop_words", stop_words)


@dataclass
class Result:
    """executor.h Result. No finish reason: the caller counts tokens (EOS is not in them)."""

    is_final: bool
    output_token_ids: list  # per beam; streaming: only the tokens new since the last response
    cum_log_probs: list | None = None
    log_probs: list | None = None


class Response:
    """executor.h Response: getResult() and getErrorMsg() throw on the wrong kind of response
    (TLLM_CHECK_WITH_INFO in executor/response.cpp); pybind turns that into RuntimeError."""

    def __init__(self, request_id: int, result: Result | None = None, error_msg: str | None = None):
        self.request_id = request_id
        self._result, self._error = result, error_msg

    def has_error(self) -> bool:
        return self._error is not None

    @property
    def error_msg(self) -> str:
        if self._error is None:
            raise RuntimeError(
                "[TensorRT-LLM][ERROR] Assertion failed: Cannot get the error message for a response without error"
            )
        return self._error

    @property
    def result(self) -> Result:
        if self._error is not None:
            raise RuntimeError(
                "[TensorRT-LLM][ERROR] Assertion failed: Cannot get the result for a response with an error"
            )
        return self._result


class KvCacheConfig:
    """executor.h KvCacheConfig; the manager sizes the pool as the smaller of max_tokens and
    free_gpu_memory_fraction (default 0.9) of the free memory (kvCacheManager.cpp)."""

    DEFAULT_FRACTION = 0.9

    def __init__(
        self,
        enable_block_reuse=False,
        max_tokens=None,
        max_attention_window=None,
        sink_token_length=None,
        free_gpu_memory_fraction=None,
        host_cache_size=None,
        onboard_blocks=True,
    ):
        self.enable_block_reuse = enable_block_reuse
        self.max_tokens = _typed("max_tokens", max_tokens, int, lo=1, hi=SIZE_TYPE_MAX)
        self.free_gpu_memory_fraction = _typed("free_gpu_memory_fraction", free_gpu_memory_fraction, float)
        if self.free_gpu_memory_fraction is not None and not 0.0 < self.free_gpu_memory_fraction < 1.0:
            raise RuntimeError("[TensorRT-LLM][ERROR] Assertion failed: free_gpu_memory_fraction must be in (0, 1)")

    def pool_tokens(self, free_bytes: int, bytes_per_token: int) -> int:
        fraction = self.free_gpu_memory_fraction or self.DEFAULT_FRACTION
        by_memory = int(free_bytes * fraction) // bytes_per_token
        return min(by_memory, self.max_tokens) if self.max_tokens else by_memory


class ExecutorConfig:
    """bindings.cpp ExecutorConfig, in its positional order. ModelRunnerCpp.from_dir passes no
    max_batch_size (JETSON.md) and sets enable_chunked_context as an attribute afterwards."""

    def __init__(
        self,
        max_beam_width=1,
        scheduler_config=None,
        kv_cache_config=None,
        enable_chunked_context=False,
        normalize_log_probs=True,
        iter_stats_max_iterations=1000,
        request_stats_max_iterations=0,
        batching_type=None,
        max_batch_size=None,
        max_num_tokens=None,
        parallel_config=None,
        peft_cache_config=None,
        logits_post_processor_map=None,
        logits_post_processor_batched=None,
        decoding_config=None,
        gpu_weights_percent=1.0,
    ):
        self.max_beam_width = _typed("max_beam_width", max_beam_width, int, optional=False, lo=1)
        if kv_cache_config is not None and not isinstance(kv_cache_config, KvCacheConfig):
            raise TypeError("__init__(): incompatible function arguments: kv_cache_config must be KvCacheConfig")
        self.kv_cache_config = kv_cache_config or KvCacheConfig()
        self.enable_chunked_context = _typed("enable_chunked_context", enable_chunked_context, bool, optional=False)
        self.max_batch_size = _typed("max_batch_size", max_batch_size, int, lo=1)
        self.gpu_weights_percent = _typed("gpu_weights_percent", gpu_weights_percent, float, optional=False)


class Executor:
    """A toy in-flight batcher. It schedules up to the ENGINE's build-time max_batch_size (the
    runtime one is not passed to it) and only as many sequences as its KV pool holds."""

    def __init__(
        self,
        engine_max_batch_size: int,
        max_seq_len: int,
        kv_pool_tokens: int,
        config=None,
        paged_context_fmha: bool = True,
    ):
        # trtGptModelInflightBatching: chunked context only over paged context FMHA (TLLM_CHECK;
        # JETSON.md, second audit: the check itself was not read here)
        if config is not None and config.enable_chunked_context and not paged_context_fmha:
            raise RuntimeError(
                "[TensorRT-LLM][ERROR] Assertion failed: Chunked context requires an engine "
                "built with paged context FMHA (--use_paged_context_fmha enable)"
            )
        self.max_batch_size = engine_max_batch_size
        self.max_seq_len = max_seq_len
        self.kv_pool_tokens = kv_pool_tokens
        self.eos_after: int | None = None  # test switch: the model samples end_id as its Nth token
        self.script: list[int] | None = None  # test switch: the tokens the model samples, in order
        self._ids = itertools.count(1)
        self._queued: list[int] = []
        self._active: dict[int, tuple[Request, int]] = {}  # id -> (request, tokens emitted)
        self._errors: list[Response] = []
        self.cancelled: list[int] = []
        self.enqueued: list[Request] = []
        self.max_active = 0
        self.is_shutdown = False
        self._lock = threading.Lock()

    def enqueue_request(self, request: Request) -> int:
        if not isinstance(request, Request):
            raise TypeError("enqueue_request(): incompatible function arguments")
        if self.is_shutdown:
            raise RuntimeError("[TensorRT-LLM][ERROR] Executor is shut down")
        with self._lock:
            rid = next(self._ids)
            self.enqueued.append(request)
            n = len(request.input_token_ids)
            if n + request.max_new_tokens > self.max_seq_len:  # GenericLlmRequest::validate
                self._errors.append(
                    Response(
                        rid,
                        error_msg=(
                            f"Prompt length ({n}) + max_new_tokens ({request.max_new_tokens}) exceeds max_seq_len "
                            f"({self.max_seq_len})"
                        ),
                    )
                )
            else:
                self._queued.append(rid)
                self._active[rid] = (request, 0)
            return rid

    def cancel_request(self, rid: int) -> None:
        with self._lock:
            self.cancelled.append(rid)
            if rid in self._queued:
                self._queued.remove(rid)
            self._active.pop(rid, None)

    def _schedulable(self) -> list[int]:
        batch, used = [], 0
        for rid in self._queued:
            req, n = self._active[rid]
            need = len(req.input_token_ids) + req.max_new_tokens
            if len(batch) < self.max_batch_size and used + need <= self.kv_pool_tokens:
                batch.append(rid)
                used += need
        return batch

    def await_responses(self, timeout=None) -> list[Response]:
        """One iteration: each scheduled request gets one new token (streaming: the new one only)."""
        time.sleep(0.001)
        with self._lock:
            out, self._errors = self._errors, []
            batch = self._schedulable()
            self.max_active = max(self.max_active, len(batch))
            for rid in batch:
                req, n = self._active[rid]
                token = self.script[n] if self.script and n < len(self.script) else 100 + n
                eos = token == req.end_id or (self.eos_after is not None and n + 1 == self.eos_after)
                # sampling kernels stop at end_id without writing it to the output (JETSON.md); a
                # stop word is written, then the request ends
                stop = any(w == [token] for w in req.stop_words or [])
                tokens = [] if eos else [token]
                final = eos or stop or n + 1 >= req.max_new_tokens
                out.append(Response(rid, Result(final, [tokens])))
                if final:
                    del self._active[rid]
                    self._queued.remove(rid)
                else:
                    self._active[rid] = (req, n + 1)
        return out

    def shutdown(self) -> None:
        self.is_shutdown = True
        self._active.clear()
        self._queued.clear()
