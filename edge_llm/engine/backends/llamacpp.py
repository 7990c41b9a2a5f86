"""GGUF models through llama-cpp-python's low-level API: the weights are memory-mapped, the KV
cache is one pool for every sequence or a stream per slot (the plan's kv_layout), and each
step's llama_batch carries the decode tokens of running sequences and prefill chunks. A step of
background prefill alone can be stopped mid-graph by an arriving interactive request."""

from __future__ import annotations

import ctypes
import logging
import os
import re
import time
from pathlib import Path

import llama_cpp as L
import numpy as np  # after llama_cpp: the other order segfaults in some CUDA images

from edge_llm.engine.backends.base import BackendError, ContextShape
from edge_llm.engine.batch import SampledToken, SchedulerOutput, TokenLogprob
from edge_llm.engine.chat_template import ChatTemplate
from edge_llm.engine.request import SamplingParams
from edge_llm.profile import ModelProfile

log = logging.getLogger(__name__)


GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR = 3, 4  # ggml.h enum ggml_log_level
DECODE_ABORTED = 2  # llama_decode's return when the abort callback stopped it (llama.h)
# what llama.cpp logs, as warnings, for a step that we stopped on purpose (status 1 is
# GGML_STATUS_ABORTED): expected, so logged at debug level
_ABORT_LOG = re.compile(r"failed with error 1$|compute status: 1$|removing memory module entries|ret = 2$")


def _forward_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    if level in (GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR):
        line = text.decode("utf-8", "replace").rstrip()
        log.log(logging.DEBUG if _ABORT_LOG.search(line) else logging.WARNING, "llama.cpp: %s", line)


_LOG_CALLBACK = L.llama_log_callback(_forward_log)  # must outlive every llama.cpp call

# The abort check, without Python. ggml's first compute thread calls the ggml_abort_callback,
# bool (*)(void * data), after every graph node (ggml-cpu.c, ggml_graph_compute_thread); a
# Python callback takes the GIL each time, which cost a 256-token step 35% (2.6 -> 3.5 s)
# while another thread ran Python (a PDF being read), and nothing on an idle process. libc's
# strlen over a two-byte buffer [flag, 0] is 0 or 1 and reads the flag each call; the C ABIs
# of both targets return it where a bool is returned (x86-64 SysV: al; AArch64: w0).
_STRLEN = ctypes.cast(ctypes.CDLL(None).strlen, ctypes.c_void_p).value
_ABORT_IF_FLAG = L.ggml_abort_callback(_STRLEN)
_NO_ABORT = L.ggml_abort_callback(0)


def default_threads() -> int:
    return len(os.sched_getaffinity(0))


def _log_softmax(row: np.ndarray) -> np.ndarray:
    x = row.astype(np.float64)
    x -= x.max()
    return x - np.log(np.exp(x).sum())


class LlamaCppBackend:
    # optional request features this backend implements (the API refuses the others)
    supports = frozenset(
        {"min_p", "presence_penalty", "frequency_penalty", "logit_bias", "response_format", "logprobs"}
    )

    def __init__(self, path: Path, n_threads: int = 0, n_gpu_layers: int = 0, name: str = ""):
        L.llama_log_set(_LOG_CALLBACK, None)
        L.llama_backend_init()
        params = L.llama_model_default_params()
        params.load_mode = L.LLAMA_LOAD_MODE_MMAP
        params.n_gpu_layers = n_gpu_layers if n_gpu_layers >= 0 else 1_000_000
        self.path = Path(path)
        self.file_bytes = self.path.stat().st_size
        self.model = L.llama_model_load_from_file(str(self.path).encode(), params)
        if not self.model:
            raise BackendError(f"llama.cpp could not load {self.path} (not a GGUF model?)")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_threads = n_threads or default_threads()
        self.profile = self._read_profile(name or self.path.stem)
        # weights and KV on the GPU: a GPU build offloading every layer
        self.gpu_offload = bool(L.llama_supports_gpu_offload()) and (
            n_gpu_layers < 0 or n_gpu_layers >= self.profile.n_layers
        )
        self.template = ChatTemplate(
            self._chat_template(),
            self._piece(L.llama_vocab_bos(self.vocab), True),
            self._piece(L.llama_vocab_eos(self.vocab), True),
        )
        self.ctx = None
        self._abort = ctypes.create_string_buffer(2)  # [flag, 0]: the abort callback's data
        self._abort_data = ctypes.cast(self._abort, ctypes.c_void_p)
        self._samplers: dict[str, ctypes.c_void_p] = {}
        self._pieces: dict[int, bytes] = {}

    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = L.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def _read_profile(self, name: str) -> ModelProfile:
        m = self.model
        n_head = L.llama_model_n_head(m)
        arch = self._meta("general.architecture") or "llama"
        head_dim = int(self._meta(f"{arch}.attention.key_length") or L.llama_model_n_embd(m) // n_head)
        return ModelProfile(
            name=name,
            n_layers=L.llama_model_n_layer(m),
            n_kv_heads=L.llama_model_n_head_kv(m),
            head_dim=head_dim,
            n_ctx_train=L.llama_model_n_ctx_train(m),
            weights_bytes=L.llama_model_size(m),
            n_embd=L.llama_model_n_embd(m),
            n_vocab=L.llama_vocab_n_tokens(self.vocab),
            kv_bytes_per_elem=2,
        )

    def _chat_template(self) -> str | None:
        raw = L.llama_model_chat_template(self.model, None)
        return raw.decode("utf-8") if raw else None

    def create_context(self, shape: ContextShape) -> None:
        cp = L.llama_context_default_params()
        cp.n_ctx = shape.kv_cache_tokens
        cp.n_batch = cp.n_ubatch = shape.max_batch_tokens
        cp.n_seq_max = shape.num_seqs
        # unified: one pool of cells, a copied prefix shared, not duplicated, but every sequence's
        # attention runs over all cells in use; split: a stream per slot, attention over its own
        cp.kv_unified = shape.kv_unified
        cp.n_threads = cp.n_threads_batch = self.n_threads
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise BackendError(f"llama.cpp could not create a context of {shape.kv_cache_tokens} tokens")
        self.shape = shape
        self.memory = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(shape.max_batch_tokens, 0, 1)

    # -- text ------------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (L.llama_token * cap)()
        n = L.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, True)
        if n < 0:
            raise BackendError(f"tokenizer failed ({n})")
        return list(buf[:n])

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return self.template.render(messages)

    def chat_add_special(self, prompt: str) -> bool:
        """Add BOS to a rendered chat prompt only when the model wants one and the template did not."""
        return bool(L.llama_vocab_get_add_bos(self.vocab)) and not prompt.startswith(self.template.bos_token)

    def _piece(self, token: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def sampled(self, token: int) -> SampledToken:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._piece(token)
        return SampledToken(token, piece, bool(L.llama_vocab_is_eog(self.vocab, token)))

    # -- one engine step -----------------------------------------------------------------
    def execute(self, out: SchedulerOutput) -> dict[int, SampledToken]:
        for op in out.memory_ops:
            if op.kind == "rm":
                L.llama_memory_seq_rm(self.memory, op.seq_id, op.pos, -1)
            elif self.shape.kv_unified:
                L.llama_memory_seq_cp(self.memory, op.src_seq_id, op.seq_id, 0, op.pos)
            else:  # between streams llama.cpp copies whole buffers only: copy, then trim the tail
                L.llama_memory_seq_cp(self.memory, op.src_seq_id, op.seq_id, -1, -1)
                L.llama_memory_seq_rm(self.memory, op.seq_id, op.pos, -1)
        sampled: dict[int, SampledToken] = {}
        groups = self._groups(out.chunks)
        for k, group in enumerate(groups):
            outputs = self._fill_batch(group)
            armed = out.abortable and any(not c.decode for c in group)  # prefill, not a decode group
            if armed:
                L.llama_set_abort_callback(self.ctx, _ABORT_IF_FLAG, self._abort_data)
            try:
                rc = L.llama_decode(self.ctx, self.batch)
            finally:
                if armed:
                    L.llama_set_abort_callback(self.ctx, _NO_ABORT, None)
            if rc == DECODE_ABORTED and armed:
                # llama.cpp removed the failed ubatch's cells; remove all of this call's, in case
                # it ran as several ubatches. The chunks of this call and the next ones run again.
                for chunk in (c for g in groups[k:] for c in g):
                    L.llama_memory_seq_rm(self.memory, chunk.request.seq_id, chunk.start_pos, -1)
                    chunk.done = False
                break
            if rc != 0:
                raise BackendError(f"llama_decode failed with {rc} on a batch of {self.batch.n_tokens} tokens")
            sampled.update(self._sample(outputs))  # before the next decode overwrites the logits
        return sampled

    def interrupt(self, requested: bool) -> None:
        self._abort[0] = b"\x01" if requested else b"\x00"  # one byte, read by the compute thread's strlen

    def _groups(self, chunks: list) -> list[list]:
        """One llama_batch per step with a unified KV cache. With a stream per slot llama.cpp
        splits a batch into ubatches of equal tokens per sequence, and a ubatch holds only
        sequences whose ids follow each other in batch order (split_equal, "accept only
        increasing sequence ids"): one decode token beside a 64-token prefill chunk ran the chunk
        token by token (640 ms instead of 240 measured), and decodes listed out of id order ran
        as several ubatches, each a pass over the weights. So there, the decodes (each as long:
        the scheduler evens out their drafts) go together in slot order, and prefill chunks of one
        length together in slot order (16 prompts arriving at once were 16 passes: 101 ms to the
        first token at 16 streams on an H200, against 30 ms for llama-server, which batches them)."""
        if self.shape.kv_unified or len(chunks) < 2:
            return [chunks] if chunks else []
        decodes = sorted((c for c in chunks if c.decode), key=lambda c: c.request.seq_id)
        by_length: dict[int, list] = {}
        for c in sorted((c for c in chunks if not c.decode), key=lambda c: c.request.seq_id):
            by_length.setdefault(len(c.tokens), []).append(c)
        return ([decodes] if decodes else []) + list(by_length.values())

    def _sample(self, outputs: list) -> dict[int, SampledToken]:
        """Plain greedy rows, and the rows that verify drafts (greedy too): one argmax over a
        zero-copy view of every such row (the C sampler would build a candidate array of the whole
        vocabulary per row). Other rows: the request's own C sampler chain (bias, penalties,
        grammar, filters, seeded). A row whose own sampler fails marks its chunk's error; the
        other rows' tokens stand. A drafted chunk gets every row's token (chunk.verified)."""
        result = {}
        logits = np.ctypeslib.as_array(L.llama_get_logits(self.ctx), shape=(len(outputs), self.profile.n_vocab))
        rows = [row for row, (_, c, j) in enumerate(outputs) if j > 0 or (j == 0 and c.request.params.is_plain_greedy)]
        picked = logits if len(rows) == len(outputs) else logits[rows]  # (a copy only when rows differ)
        best = dict(zip(rows, picked.argmax(axis=1).tolist(), strict=True)) if rows else {}
        for row, (index, chunk, j) in enumerate(outputs):
            if row in best:
                token = self.sampled(best[row])
                if chunk.num_draft:
                    chunk.verified = [*(chunk.verified or []), token]
                if not j:
                    result[chunk.request.seq_id] = token
            if j != 0:
                continue
            try:
                self._sample_row(result, logits[row], index, chunk.request)
            except BackendError as e:
                chunk.error = str(e)
        return result

    def _sample_row(self, result: dict, row_logits: np.ndarray, index: int, req) -> None:
        if req.params.logprobs is not None:  # from the raw logits, before the sampler reads them
            logprobs = _log_softmax(row_logits)
        if not req.params.is_plain_greedy:
            token = L.llama_sampler_sample(self._sampler(req.request_id, req.params), self.ctx, index)
            result[req.seq_id] = self.sampled(token)
        if req.params.logprobs is not None:
            s = result[req.seq_id]
            result[req.seq_id] = SampledToken(
                s.token, s.piece, s.is_eog, self._token_logprob(logprobs, s.token, req.params.logprobs)
            )

    def _token_logprob(self, logprobs: np.ndarray, token: int, top_n: int) -> TokenLogprob:
        top = ()
        if top_n > 0:
            ids = np.argpartition(-logprobs, top_n)[:top_n]
            ids = ids[np.argsort(-logprobs[ids], kind="stable")]
            top = tuple((int(t), self.sampled(int(t)).piece, float(logprobs[t])) for t in ids)
        return TokenLogprob(token, self.sampled(token).piece, float(logprobs[token]), top)

    def _fill_batch(self, chunks: list) -> list:
        n = sum(len(c.tokens) for c in chunks)
        if n > self.shape.max_batch_tokens:  # past llama_batch_init's arrays: refuse, never write
            raise BackendError(f"a step of {n} tokens exceeds the batch of {self.shape.max_batch_tokens}")
        b = self.batch
        token, pos, n_seq_id, seq_id, logits = b.token, b.pos, b.n_seq_id, b.seq_id, b.logits
        i, outputs = 0, []  # (batch index, chunk, j): j = 0 samples the next token, j > 0 verifies draft j
        for chunk in chunks:
            sid = chunk.request.seq_id
            p = chunk.start_pos
            first = i
            for t in chunk.tokens:
                token[i], pos[i], n_seq_id[i], logits[i] = t, p, 1, 0
                seq_id[i][0] = sid
                i += 1
                p += 1
            if chunk.decode:  # the decode token and each draft; pads on a GPU too (j = -1: unread),
                # so that the step's shape (its outputs) does not change with the drafts found
                for j in range(1 + chunk.num_draft + (chunk.num_pad if self.gpu_offload else 0)):
                    logits[first + j] = 1
                    outputs.append((first + j, chunk, j if j <= chunk.num_draft else -1))
            elif chunk.sample:
                logits[i - 1] = 1
                outputs.append((i - 1, chunk, 0))
        b.n_tokens = i
        return outputs

    def _sampler(self, request_id: str, params: SamplingParams):
        chain = self._samplers.get(request_id)
        if chain is None:
            chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
            self._samplers[request_id] = chain  # freed by release(), even if building it fails below
            for sampler in self._chain(params):  # each in the chain as soon as made: none leaks on a failure
                L.llama_sampler_chain_add(chain, sampler)
        return chain

    def _chain(self, params: SamplingParams):
        """The samplers, in llama.cpp's usual order, one at a time: logits are reshaped (bias,
        penalties, grammar), then greedy picks or the filters narrow and a seeded draw picks."""
        if params.logit_bias:
            biases = (L.llama_logit_bias * len(params.logit_bias))(*params.logit_bias)
            yield L.llama_sampler_init_logit_bias(self.profile.n_vocab, len(params.logit_bias), biases)
        if params.presence_penalty or params.frequency_penalty:
            # over every token generated so far (OpenAI's definition); 1.0 = no repeat penalty
            yield L.llama_sampler_init_penalties(
                self.profile.n_vocab, self.shape.kv_cache_tokens, 1.0, params.frequency_penalty, params.presence_penalty
            )
        if params.grammar:
            grammar = L.llama_sampler_init_grammar(self.vocab, params.grammar.encode(), b"root")
            if not grammar:
                raise BackendError("llama.cpp could not parse the grammar")
            yield grammar
        if params.is_greedy:
            yield L.llama_sampler_init_greedy()
            return
        if params.top_k > 0:
            yield L.llama_sampler_init_top_k(params.top_k)
        if params.top_p < 1.0:
            yield L.llama_sampler_init_top_p(params.top_p, 1)
        if params.min_p > 0.0:
            yield L.llama_sampler_init_min_p(params.min_p, 1)
        yield L.llama_sampler_init_temp(params.temperature)
        seed = params.seed if params.seed is not None else L.LLAMA_DEFAULT_SEED
        yield L.llama_sampler_init_dist(seed & 0xFFFFFFFF)

    def check_grammar(self, grammar: str) -> None:
        """Engine thread: raise ValueError if llama.cpp cannot parse the grammar."""
        sampler = L.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        if not sampler:
            raise ValueError("llama.cpp could not parse the grammar made from this schema")
        L.llama_sampler_free(sampler)

    def release(self, request_id: str) -> None:
        chain = self._samplers.pop(request_id, None)
        if chain is not None:
            L.llama_sampler_free(chain)

    def seq_lengths(self) -> dict[int, int]:
        lengths = {}
        for sid in range(self.shape.num_seqs):
            end = L.llama_memory_seq_pos_max(self.memory, sid)
            if end >= 0:
                lengths[sid] = end + 1
        return lengths

    # -- calibration: step costs on this device, in contexts of their own ------------------------
    def time_decode(self, batch: int, ctx_len: int, unified: bool, steps: int = 8) -> float:
        """Seconds for a decode step (the fastest of `steps`) of `batch` sequences holding ctx_len
        tokens each, in a KV cache of one pool (unified) or a stream per sequence."""
        # only the cells the steps need (64 short sequences: 65 MB of KV here, not 424): one pool's
        # size is rounded to 256, a stream per sequence gets 256 cells more than it holds
        cells = -(-batch * (ctx_len + steps + 2) // 256) * 256 if unified else batch * (ctx_len + 256)
        with _ScratchContext(self, cells, batch, min(batch * ctx_len, 2048), unified) as sc:
            tokens = [self._filler(ctx_len) for _ in range(batch)]
            sc.prefill([(t, p, s) for s in range(batch) for p, t in enumerate(tokens[s])])
            sc.decode([(tokens[s][-1], ctx_len, s) for s in range(batch)])  # first use: page-in, graph
            best = float("inf")  # the fastest step: robust to another process taking the CPU for a while
            for k in range(steps):
                t0 = time.perf_counter()
                sc.decode([(tokens[s][k % ctx_len], ctx_len + 1 + k, s) for s in range(batch)])
                best = min(best, time.perf_counter() - t0)
            return best

    def time_prefill(self, chunk: int, reps: int = 2) -> float:
        """Seconds for one prefill step of `chunk` prompt tokens (the best of reps)."""
        with _ScratchContext(self, chunk + 256, 1, chunk, True) as sc:
            tokens = self._filler(chunk)
            sc.prefill([(t, p, 0) for p, t in enumerate(tokens[:16])])  # first use: page-in, buffers
            best = float("inf")
            for _ in range(reps):
                L.llama_memory_seq_rm(sc.memory, 0, 0, -1)
                t0 = time.perf_counter()
                sc.prefill([(t, p, 0) for p, t in enumerate(tokens)])
                best = min(best, time.perf_counter() - t0)
            return best

    def _filler(self, n: int) -> list[int]:
        text = "The quick brown fox jumps over the lazy dog while the river runs to the sea. "
        tokens = self.tokenize(text * (1 + n // 8), False)
        return tokens[:n]

    def build_id(self) -> str:
        """llama.cpp's version and what it was built with (backends, instruction sets)."""
        info = L.llama_print_system_info().decode("utf-8", "replace")
        return f"llama-cpp-python {L.__version__}; {info.strip()}; offload {self.gpu_offload}"

    def close(self) -> None:
        for rid in list(self._samplers):
            self.release(rid)
        if self.ctx:
            L.llama_batch_free(self.batch)
            L.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            L.llama_model_free(self.model)
            self.model = None


class _ScratchContext:
    """A short-lived llama.cpp context for timing steps (calibration), freed on exit."""

    def __init__(self, backend: LlamaCppBackend, n_ctx: int, n_seq: int, n_batch: int, unified: bool):
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_seq_max, cp.kv_unified, cp.no_perf = n_ctx, n_seq, unified, True
        cp.n_batch = cp.n_ubatch = max(n_batch, n_seq)
        cp.n_threads = cp.n_threads_batch = backend.n_threads
        self.ctx = L.llama_init_from_model(backend.model, cp)
        if not self.ctx:
            raise BackendError(f"llama.cpp could not create a calibration context of {n_ctx} tokens")
        self.memory = L.llama_get_memory(self.ctx)
        self.n_batch = cp.n_batch
        self.batch = L.llama_batch_init(self.n_batch, 0, 1)

    def __enter__(self) -> _ScratchContext:
        return self

    def __exit__(self, *exc) -> None:
        L.llama_batch_free(self.batch)
        L.llama_free(self.ctx)

    def prefill(self, items: list[tuple[int, int, int]]) -> None:
        for i in range(0, len(items), self.n_batch):
            self.decode(items[i : i + self.n_batch], last_only=True)

    def decode(self, items: list[tuple[int, int, int]], last_only: bool = False) -> None:
        b = self.batch
        b.n_tokens = len(items)
        for i, (tok, pos, seq) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos, 1
            b.seq_id[i][0] = seq
            b.logits[i] = (i == len(items) - 1) if last_only else 1
        rc = L.llama_decode(self.ctx, b)
        if rc != 0:
            raise BackendError(f"llama_decode failed with {rc} while calibrating")
        L.llama_synchronize(self.ctx)
