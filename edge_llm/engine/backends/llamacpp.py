"""GGUF models through llama-cpp-python's low-level API: the weights are memory-mapped, the KV
cache is one pool for every sequence or a stream per slot (the plan's kv_layout), and each
step's llama_batch carries the decode tokens of running sequences and prefill chunks. A step of
background prefill alone can be stopped mid-graph by an arriving interactive request."""

from __future__ import annotations

import ctypes
import logging
import os
import re
from pathlib import Path

import llama_cpp as L
import numpy as np  # after llama_cpp: the other order segfaults in some CUDA images

from edge_llm.engine.backends.base import BackendError, ContextShape
from edge_llm.engine.backends.llamacpp_context import Context as _Context
from edge_llm.engine.backends.llamacpp_context import StepTiming
from edge_llm.engine.batch import Lanes, SampledToken, ScheduledChunk, SchedulerOutput, TokenLogprob
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


def _device_greedy(chunk) -> bool:
    """May the device pick this chunk's next token: plain greedy, no logprobs, no drafts to verify."""
    params = chunk.request.params
    return params.is_plain_greedy and params.logprobs is None and not chunk.num_draft and not chunk.num_pad


def _log_softmax(row: np.ndarray) -> np.ndarray:
    x = row.astype(np.float64)
    x -= x.max()
    return x - np.log(np.exp(x).sum())


class LlamaCppBackend(StepTiming):
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
        self.contexts: list[_Context] = []
        self.lanes = Lanes()
        self._abort = ctypes.create_string_buffer(2)  # [flag, 0]: the abort callback's data
        self._abort_data = ctypes.cast(self._abort, ctypes.c_void_p)
        self._samplers: dict[str, ctypes.c_void_p] = {}
        self._pieces: dict[int, bytes] = {}
        # decodes whose slots leave gaps get filler rows in the gaps (_fillers): on a GPU a pass
        # over the weights costs far more than rows in it. Not for a recurrent or hybrid model,
        # whose state a filler would advance for good (its seq_rm cannot take a step back)
        self.fill_gaps = self.gpu_offload and not (
            L.llama_model_is_recurrent(self.model) or L.llama_model_is_hybrid(self.model)
        )
        self.num_filled_steps = 0  # decode batches that ran with filler rows

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
        """The serving contexts: one, or a context per lane (shape.lanes), each with the KV of its
        slots: a stream per slot (unified False) or one pool of cells for all (one lane only). One
        pool shares a copied prefix instead of duplicating it, but every sequence's attention runs
        over all cells in use; a stream per slot attends over its own."""
        lanes = shape.lanes
        if lanes.count > 1 and shape.kv_unified:
            raise BackendError("lanes need a KV stream per slot (kv_unified False)")
        per_slot = shape.kv_cache_tokens // shape.num_seqs
        self.contexts = []
        try:
            for lane in range(lanes.count):
                n_seq = len(lanes.slots(lane, shape.num_seqs))
                n_ctx = shape.kv_cache_tokens if lanes.count == 1 else per_slot * n_seq
                self.contexts.append(
                    _Context(self, n_ctx, n_seq, shape.max_batch_tokens, shape.kv_unified, shape.device_greedy)
                )
        except BackendError:
            self._free_contexts()
            raise
        self.shape, self.lanes = shape, lanes
        self.ctx = self.contexts[0].ctx  # lane 0: what single-context callers (tools) use

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
        lanes = self.lanes
        for op in out.memory_ops:
            memory, seq = self.contexts[lanes.lane(op.seq_id)].memory, lanes.local(op.seq_id)
            if op.kind == "rm":
                L.llama_memory_seq_rm(memory, seq, op.pos, -1)
                continue
            src = lanes.local(op.src_seq_id)  # the same lane: the KV manager copies within one only
            if self.shape.kv_unified:
                L.llama_memory_seq_cp(memory, src, seq, 0, op.pos)
            else:  # between streams llama.cpp copies whole buffers only: copy, then trim the tail
                L.llama_memory_seq_cp(memory, src, seq, -1, -1)
                L.llama_memory_seq_rm(memory, seq, op.pos, -1)
        groups = [self._groups(chunks) for chunks in self._by_lane(out.chunks)]
        sampled: dict[int, SampledToken] = {}
        for r in range(max(map(len, groups))):
            # every lane's r-th batch is queued before any is waited for: on a GPU each context has
            # a CUDA stream of its own and llama_decode returns once the work is queued there
            launched = [(lane, self._launch(lane, g[r], out.abortable)) for lane, g in enumerate(groups) if r < len(g)]
            for lane, (outputs, rc, armed) in launched:
                if rc == DECODE_ABORTED and armed:
                    # llama.cpp removed the failed ubatch's cells; remove all of this call's, in case
                    # it ran as several ubatches. This lane's chunks from here on run again.
                    for chunk in (c for g in groups[lane][r:] for c in g):
                        L.llama_memory_seq_rm(
                            self.contexts[lane].memory, lanes.local(chunk.seq_id), chunk.start_pos, -1
                        )
                        chunk.done = False
                    groups[lane] = []  # this lane runs no more of this step
                    continue
                if rc != 0:
                    n = self.contexts[lane].batch.n_tokens
                    raise BackendError(f"llama_decode failed with {rc} on a batch of {n} tokens")
                sampled.update(self._sample(self.contexts[lane], outputs))  # before the next decode overwrites them
        return sampled

    # -- a step of decodes launched ahead (StepEngine.overlap) --------------------------------------
    @property
    def overlaps(self) -> bool:
        """llama_decode returns once the step is queued (a GPU build offloading every layer), so
        host work done before its results are read runs while the step computes. On the CPU the
        step is computed inside llama_decode: nothing to overlap."""
        return self.gpu_offload

    def launch_decodes(self, out: SchedulerOutput) -> list:
        """Queue a step of decodes only (one llama_batch a lane, none stoppable) and return without
        waiting for it; collect() waits and samples. Between the two, the engine thread applies the
        step before (its postprocess, publishing, metrics) while the device computes this one."""
        if any(not c.decode or c.num_draft or c.num_pad for c in out.chunks):
            raise BackendError("a step launched ahead holds decodes only, without drafts")
        # one llama_decode a lane: a second would overwrite the first one's logits before collect()
        groups = [(lane, g[0]) for lane, c in enumerate(self._by_lane(out.chunks)) if (g := self._groups(c))]
        launched = []
        try:
            for lane, group in groups:
                outputs, rc, _ = self._launch(lane, group, False)
                launched.append((lane, outputs))
                if rc != 0:
                    raise BackendError(f"llama_decode failed with {rc} on a batch of {len(group)} tokens")
        except Exception:  # nothing of this step stays: the lanes queued are waited for, every cell removed
            for lane, _ in launched:
                L.llama_synchronize(self.contexts[lane].ctx)
            for chunk in out.chunks:
                self.trim(chunk.seq_id, chunk.start_pos)
            raise
        return launched

    def collect(self, launched: list) -> dict[int, SampledToken]:
        """Wait for a step launch_decodes() queued and sample its rows (not the dropped ones)."""
        sampled: dict[int, SampledToken] = {}
        for lane, outputs in launched:
            sampled.update(self._sample(self.contexts[lane], outputs))
        return sampled

    def trim(self, seq_id: int, pos: int) -> None:
        """Remove a slot's cells from pos on (a dropped row's, after its step was collected)."""
        L.llama_memory_seq_rm(self.contexts[self.lanes.lane(seq_id)].memory, self.lanes.local(seq_id), pos, -1)

    def _by_lane(self, chunks: list) -> list[list]:
        """The chunks of each lane's context, in step order."""
        by_lane: list[list] = [[] for _ in self.contexts]
        for chunk in chunks:
            by_lane[self.lanes.lane(chunk.seq_id)].append(chunk)
        return by_lane

    def _launch(self, lane: int, chunks: list, abortable: bool):
        """Queue one llama_decode of chunks on a lane's context: (outputs, rc, armed)."""
        context = self.contexts[lane]
        fillers = self._fillers(lane, chunks) if self.fill_gaps and not context.device else []
        if fillers:
            chunks = sorted(chunks + fillers, key=lambda c: c.seq_id)
            self.num_filled_steps += 1
        outputs = self._fill_batch(context.batch, chunks)
        if context.device:  # each sampling sequence's token picked on the device, or its logits copied
            for chunk in chunks:
                if chunk.decode or chunk.sample:
                    context.device_greedy(self.lanes.local(chunk.seq_id), _device_greedy(chunk))
        armed = abortable and any(not c.decode for c in chunks)  # prefill, not a decode group
        if armed:
            L.llama_set_abort_callback(context.ctx, _ABORT_IF_FLAG, self._abort_data)
        try:
            rc = L.llama_decode(context.ctx, context.batch)
        finally:
            if armed:
                L.llama_set_abort_callback(context.ctx, _NO_ABORT, None)
        for filler in fillers:  # nothing of them stays (the cells' bookkeeping: the step runs on)
            L.llama_memory_seq_rm(context.memory, self.lanes.local(filler.seq_id), filler.start_pos, -1)
        if context.device:
            context.free_retired()
        return outputs, rc, armed

    def _fillers(self, lane: int, chunks: list) -> list[ScheduledChunk]:
        """Rows for the slots missing between a decode group's (with a stream per slot): llama.cpp
        puts only consecutive sequence ids in one ubatch (split_equal, "accept only increasing
        sequence ids"), each ubatch a pass over the weights, so the decodes of slots 0, 2, 4 and 6
        ran as four. On an H100 four such decodes took 9.5 ms against 1.55 ms in slots 0-3, and all
        eight slots 1.8 ms; 32 decodes in every other slot of 64, 75 ms against 4.5 ms
        (docs/measurements/h100-2026-12-06-session22). A summary job's parts end in any order and
        leave such gaps. A filler repeats the first decode's token in a free or idle slot, after
        the cells it holds, asks for no logits, and its cell is removed once the step is queued.
        None where a group has no gaps, where the fillers would outnumber the decodes (the rows
        then cost more than the passes they save), where a slot has no room, or for prefill; nor
        for decodes of several tokens (drafts, off by default), which no GPU run has checked yet
        (an H100 kept fewer drafts with fillers in the one-token steps between, 3-8 against 12-17:
        a near-tie at the 16th token went the other way in a batch of another shape, every token
        still the greedy one: session 22). A filler in a slot holding a longer context than the
        decodes' makes the step attend over as many cells (llama.cpp's n_kv is the longest stream's
        in the ubatch); with max_seq_len 4,096 that is bounded, and the kiosk's cached parts are as
        long as the running ones: not weighed."""
        if len(chunks) < 2 or self.shape.kv_unified or not all(c.decode and len(c.tokens) == 1 for c in chunks):
            return []
        held = {self.lanes.local(c.seq_id) for c in chunks}
        missing = sorted(set(range(min(held), max(held) + 1)) - held)
        if not missing or len(missing) > len(chunks):
            return []
        context, slots = self.contexts[lane], self.lanes.slots(lane, self.shape.num_seqs)
        room = L.llama_n_ctx_seq(context.ctx)
        fillers = []
        for local in missing:
            pos = L.llama_memory_seq_pos_max(context.memory, local) + 1  # -1 + 1 where it holds none
            if pos >= room or len(fillers) + 1 + len(chunks) > self.shape.max_batch_tokens:
                return []
            fillers.append(ScheduledChunk(chunks[0].request, list(chunks[0].tokens), pos, False, seq_id=slots[local]))
        return fillers

    def warm_lanes(self, tokens: list[int], steps: int = 4) -> None:
        """Engine thread, before serving: a few one-sequence steps in each lane other than lane 0
        (first use: buffers paged in, a GPU's graphs captured), their KV removed again."""
        for context in self.contexts[1:]:
            context.prefill([(t, p, 0) for p, t in enumerate(tokens)])
            for k in range(steps):
                context.decode([(tokens[-1], len(tokens) + k, 0)])
            L.llama_memory_seq_rm(context.memory, 0, 0, -1)

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
        decodes = sorted((c for c in chunks if c.decode), key=lambda c: c.seq_id)  # (local ids follow)
        by_length: dict[int, list] = {}
        for c in sorted((c for c in chunks if not c.decode), key=lambda c: c.seq_id):
            by_length.setdefault(len(c.tokens), []).append(c)
        return ([decodes] if decodes else []) + list(by_length.values())

    def _sample(self, context: _Context, outputs: list) -> dict[int, SampledToken]:
        """Rows whose token the device picked (device greedy). Plain greedy rows, and the rows that
        verify drafts (greedy too): one argmax over a zero-copy view of every such row (the C
        sampler would build a candidate array of the whole vocabulary per row). Other rows: the
        request's own C sampler chain (bias, penalties, grammar, filters, seeded). A row whose own
        sampler fails marks its chunk's error; the other rows' tokens stand. A drafted chunk gets
        every row's token (chunk.verified)."""
        result = {}
        taken = self._device_tokens(context, outputs, result) if context.device else set()
        if outputs and all(row in taken or c.dropped for row, (_, c, _) in enumerate(outputs)):
            if not taken:  # every row dropped (a step launched ahead): still wait for the step's end
                L.llama_synchronize(context.ctx)
            return result  # (else llama_get_sampled_token_ith synchronized)
        # (the wait for the step: llama_get_logits synchronizes the context, also for a step
        # without outputs, a prompt chunk mid-prompt: on a GPU its work is otherwise still queued)
        logits = np.ctypeslib.as_array(L.llama_get_logits(context.ctx), shape=(len(outputs), self.profile.n_vocab))
        rows = [
            row
            for row, (_, c, j) in enumerate(outputs)
            if row not in taken and not c.dropped and (j > 0 or (j == 0 and c.request.params.is_plain_greedy))
        ]
        picked = logits if len(rows) == len(outputs) else logits[rows]  # (a copy only when rows differ)
        best = dict(zip(rows, picked.argmax(axis=1).tolist(), strict=True)) if rows else {}
        for row, (index, chunk, j) in enumerate(outputs):
            if row in taken or chunk.dropped:
                continue
            if row in best:
                token = self.sampled(best[row])
                if chunk.num_draft:
                    chunk.verified = [*(chunk.verified or []), token]
                if not j:
                    result[chunk.seq_id] = token
            if j != 0:
                continue
            try:
                self._sample_row(context, result, logits[row], index, chunk)
            except BackendError as e:
                chunk.error = str(e)
        return result

    def _device_tokens(self, context: _Context, outputs: list, result: dict) -> set[int]:
        """The tokens of the rows whose sequence has its greedy chain attached (llama_get_sampled_
        token_ith waits for the step); returns those rows."""
        taken = set()
        for row, (index, chunk, j) in enumerate(outputs):
            if j == 0 and not chunk.dropped and context.chains[self.lanes.local(chunk.seq_id)] is not None:
                token = L.llama_get_sampled_token_ith(context.ctx, index)
                if token < 0:  # LLAMA_TOKEN_NULL: no token was sampled for this row
                    raise BackendError(f"llama.cpp picked no token for batch row {index}")
                result[chunk.seq_id] = self.sampled(token)
                taken.add(row)
        return taken

    def _sample_row(self, context: _Context, result: dict, row_logits: np.ndarray, index: int, chunk) -> None:
        req, seq = chunk.request, chunk.seq_id
        if req.params.logprobs is not None:  # from the raw logits, before the sampler reads them
            logprobs = _log_softmax(row_logits)
        if not req.params.is_plain_greedy:
            token = L.llama_sampler_sample(self._sampler(req.request_id, req.params), context.ctx, index)
            result[seq] = self.sampled(token)
        if req.params.logprobs is not None:
            s = result[seq]
            result[seq] = SampledToken(
                s.token, s.piece, s.is_eog, self._token_logprob(logprobs, s.token, req.params.logprobs)
            )

    def _token_logprob(self, logprobs: np.ndarray, token: int, top_n: int) -> TokenLogprob:
        top = ()
        if top_n > 0:
            ids = np.argpartition(-logprobs, top_n)[:top_n]
            ids = ids[np.argsort(-logprobs[ids], kind="stable")]
            top = tuple((int(t), self.sampled(int(t)).piece, float(logprobs[t])) for t in ids)
        return TokenLogprob(token, self.sampled(token).piece, float(logprobs[token]), top)

    def _fill_batch(self, b, chunks: list) -> list:
        n = sum(len(c.tokens) for c in chunks)
        if n > self.shape.max_batch_tokens:  # past llama_batch_init's arrays: refuse, never write
            raise BackendError(f"a step of {n} tokens exceeds the batch of {self.shape.max_batch_tokens}")
        token, pos, n_seq_id, seq_id, logits = b.token, b.pos, b.n_seq_id, b.seq_id, b.logits
        i, outputs = 0, []  # (batch index, chunk, j): j = 0 samples the next token, j > 0 verifies draft j
        for chunk in chunks:
            sid = self.lanes.local(chunk.seq_id)
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
        for slot in range(self.shape.num_seqs):
            memory = self.contexts[self.lanes.lane(slot)].memory
            end = L.llama_memory_seq_pos_max(memory, self.lanes.local(slot))
            if end >= 0:
                lengths[slot] = end + 1
        return lengths

    def _free_contexts(self) -> None:
        for context in self.contexts:
            context.close()
        self.contexts, self.ctx = [], None

    def build_id(self) -> str:
        """llama.cpp's version and what it was built with (backends, instruction sets)."""
        info = L.llama_print_system_info().decode("utf-8", "replace")
        return f"llama-cpp-python {L.__version__}; {info.strip()}; offload {self.gpu_offload}"

    def close(self) -> None:
        for rid in list(self._samplers):
            self.release(rid)
        self._free_contexts()
        if self.model:
            L.llama_model_free(self.model)
            self.model = None
