"""llama.cpp contexts over a loaded model (a backend's serving lanes, or short-lived ones), and
the step timings calibration takes in contexts of their own (edge_llm/calibration.py)."""

from __future__ import annotations

import ctypes
import logging
import time

import llama_cpp as L

from edge_llm.engine.backends.base import BackendError

log = logging.getLogger(__name__)


class Context:
    """A llama.cpp context over the backend's model with its KV memory and llama_batch: a serving
    lane, or a short-lived one for timing steps (calibration: a `with` block frees it)."""

    def __init__(self, backend, n_ctx: int, n_seq: int, n_batch: int, unified: bool, device_greedy: bool = False):
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_seq_max, cp.kv_unified, cp.no_perf = n_ctx, n_seq, unified, True
        cp.n_batch = cp.n_ubatch = max(n_batch, n_seq)
        cp.n_threads = cp.n_threads_batch = backend.n_threads
        self.ctx = L.llama_init_from_model(backend.model, cp)
        if not self.ctx:
            raise BackendError(f"llama.cpp could not create a context of {n_ctx} tokens for {n_seq} sequences")
        self.memory = L.llama_get_memory(self.ctx)
        self.n_batch = cp.n_batch
        self.batch = L.llama_batch_init(self.n_batch, 0, 1)
        # device greedy (llama.cpp's backend sampling, llama.h "[EXPERIMENTAL]"): a sequence with a
        # greedy chain attached gets its token picked by an argmax in the step's own graph, and no
        # row of logits comes back to the host for it. A sequence whose request samples otherwise
        # (or wants logprobs) is detached while it does: llama.cpp then copies its logits as before.
        # Attaching or detaching makes the next llama_decode reserve its graphs again
        # (llama_context::set_sampler -> sched_need_reserve), so a slot keeps its state until a
        # request of the other kind uses it; all start attached (summaries are greedy). Off by
        # default (config.py model.gpu_greedy: measured no faster on an H200). A chain is
        # initialized for a context once only (llama-sampler.cpp asserts it), so a slot attached
        # again gets a new one; a detached one is freed after the next step (graphs reserved anew).
        self.device = device_greedy
        self.chains: list = [None] * n_seq  # the chain attached to each sequence (None: detached)
        self._retired: list = []
        self.num_switches = 0
        for seq in range(n_seq if device_greedy else 0):
            self.device_greedy(seq, True)
        self.num_switches = 0
        if self.device and not self._device_picks():
            log.warning("llama.cpp cannot pick greedy tokens on this device; every row's logits go to the host")
            self.stop_device_greedy()

    def _device_picks(self) -> bool:
        """One token decoded in sequence 0: did the device pick one? llama_set_sampler says true
        even where the chain's backend_init failed (llama_context::set_sampler ignores it), and
        then no token and no logits come back."""
        self.launch([(0, 0, 0)])
        token = L.llama_get_sampled_token_ith(self.ctx, 0)
        L.llama_memory_seq_rm(self.memory, 0, 0, -1)
        return token >= 0

    def stop_device_greedy(self) -> None:
        """Detach every chain: logits to the host for every row from the next step on."""
        for seq, chain in enumerate(self.chains):
            if chain is not None:
                self.device_greedy(seq, False)
        self.device = False

    @property
    def attached(self) -> list[bool]:
        return [c is not None for c in self.chains]

    def device_greedy(self, seq: int, on: bool) -> bool:
        """Attach (or detach) seq's greedy chain; True when seq's token is then picked on the device."""
        if not self.device or (self.chains[seq] is not None) == on:
            return self.chains[seq] is not None
        if on:
            chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
            if not L.llama_set_sampler(self.ctx, seq, chain):
                L.llama_sampler_free(chain)
                raise BackendError("llama.cpp could not attach a greedy sampler")
            self.chains[seq] = chain
        else:
            if not L.llama_set_sampler(self.ctx, seq, None):
                raise BackendError("llama.cpp could not detach a greedy sampler")
            self._retired.append(self.chains[seq])
            self.chains[seq] = None
        self.num_switches += 1
        return on

    def free_retired(self) -> None:
        """After a step: the chains detached before it are no longer in any graph."""
        for chain in self._retired:
            L.llama_sampler_free(chain)
        self._retired = []

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.ctx:
            L.llama_batch_free(self.batch)
            L.llama_free(self.ctx)
            self.ctx = None
            for chain in [c for c in self.chains if c is not None] + self._retired:
                L.llama_sampler_free(chain)
            self.chains, self._retired = [None] * len(self.chains), []

    def prefill(self, items: list[tuple[int, int, int]]) -> None:
        for i in range(0, len(items), self.n_batch):
            self.decode(items[i : i + self.n_batch], last_only=True)

    def launch(self, items: list[tuple[int, int, int]], last_only: bool = False) -> None:
        """Queue a step of (token, pos, seq) items; on a GPU it returns before the step ends."""
        b = self.batch
        b.n_tokens = len(items)
        for i, (tok, pos, seq) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos, 1
            b.seq_id[i][0] = seq
            b.logits[i] = (i == len(items) - 1) if last_only else 1
        rc = L.llama_decode(self.ctx, b)
        if rc != 0:
            raise BackendError(f"llama_decode failed with {rc} on a step of {len(items)} tokens outside serving")

    def decode(self, items: list[tuple[int, int, int]], last_only: bool = False) -> None:
        self.launch(items, last_only)
        L.llama_synchronize(self.ctx)


def _copy_state(c: Context, src: int, dst) -> None:
    size = L.llama_state_seq_get_size(c.ctx, src)
    state = (ctypes.c_uint8 * size)()
    if L.llama_state_seq_get_data(c.ctx, state, size, src) != size:
        raise BackendError("llama.cpp could not read a sequence's state for the layout timing")
    for s in dst:
        if L.llama_state_seq_set_data(c.ctx, state, size, s) != size:
            raise BackendError("llama.cpp could not copy a sequence's state for the layout timing")


class StepTiming:
    """Step costs on this device, each in contexts of its own (freed after). For a backend with
    `model`, `n_threads` and `tokenize`."""

    def time_decode(self, batch: int, ctx_len: int, unified: bool, steps: int = 8) -> float:
        """Seconds for a decode step (the fastest of `steps`) of `batch` sequences holding ctx_len
        tokens each, in a KV cache of one pool (unified) or a stream per sequence."""
        # only the cells the steps need (64 short sequences: 65 MB of KV here, not 424): one pool's
        # size is rounded to 256, a stream per sequence gets 256 cells more than it holds
        cells = -(-batch * (ctx_len + steps + 2) // 256) * 256 if unified else batch * (ctx_len + 256)
        with Context(self, cells, batch, min(batch * ctx_len, 2048), unified) as sc:
            tokens = [self._filler(ctx_len) for _ in range(batch)]
            sc.prefill([(t, p, s) for s in range(batch) for p, t in enumerate(tokens[s])])
            sc.decode([(tokens[s][-1], ctx_len, s) for s in range(batch)])  # first use: page-in, graph
            best = float("inf")  # the fastest step: robust to another process taking the CPU for a while
            for k in range(steps):
                t0 = time.perf_counter()
                sc.decode([(tokens[s][k % ctx_len], ctx_len + 1 + k, s) for s in range(batch)])
                best = min(best, time.perf_counter() - t0)
            return best

    def time_layouts(self, batch: int, ctx_len: int, chunk: int, steps: int = 8, chunks: int = 2) -> dict:
        """The two KV layouts where a summary job runs: `batch` sequences holding ctx_len tokens
        each, in one pool and with a stream per sequence. Per layout, seconds for a decode step of
        the batch and for a prefill step of `chunk` tokens of one more sequence (the fastest of
        `steps` and `chunks`), timed in turns so that a busy spell hits both. In one pool each
        token attends over every sequence's cells, masked: on 2 CPU cores a 128-token chunk beside
        4 x 2,048 held tokens took 437-618 ms there against 374-426 with a stream per sequence,
        where a decode step at 4 x 128 favoured neither. The held tokens are prefilled once and
        copied (cells of their own in either layout). {} where llama.cpp could not make or fill
        the two contexts."""
        tokens = self._filler(ctx_len)
        held, fill = ctx_len + steps + 2, chunk * chunks  # cells a held sequence and the prefilled one use
        per_stream = -(-max(held, fill) // 256) * 256  # llama.cpp rounds a stream's cells to 256
        pools = {}
        try:
            for name, unified in (("unified", True), ("per_slot", False)):
                cells = -(-(batch * held + fill + 256) // 256) * 256 if unified else (batch + 1) * per_stream
                pools[name] = c = Context(self, cells, batch + 1, max(chunk, batch, min(ctx_len, 2048)), unified)
                c.prefill([(t, p, 0) for p, t in enumerate(tokens)])
                if unified:  # a copy in one pool would share the cells: the state is written into new ones
                    _copy_state(c, 0, range(1, batch))
                else:  # a stream's whole buffer, copied at the next step (seq_cp between streams)
                    for s in range(1, batch):
                        L.llama_memory_seq_cp(c.memory, 0, s, -1, -1)
                c.decode([(tokens[-1], ctx_len, s) for s in range(batch)])  # first use: page-in, graphs
            best = {name: [float("inf"), float("inf")] for name in pools}
            turns = [list(pools.items()), list(pools.items())[::-1]]  # each layout first in every other turn
            for k in range(steps):
                for name, c in turns[k % 2]:
                    t0 = time.perf_counter()
                    c.decode([(tokens[k % ctx_len], ctx_len + 1 + k, s) for s in range(batch)])
                    best[name][0] = min(best[name][0], time.perf_counter() - t0)
            prompt = self._filler(fill)
            for k in range(chunks):
                items = [(t, chunk * k + p, batch) for p, t in enumerate(prompt[chunk * k : chunk * (k + 1)])]
                for name, c in turns[k % 2]:
                    t0 = time.perf_counter()
                    c.prefill(items)
                    best[name][1] = min(best[name][1], time.perf_counter() - t0)
            return {name: tuple(t) for name, t in best.items()}
        except BackendError as e:  # no room for two timing contexts (a small device): the other figures stand
            log.warning("the KV layouts could not be timed (%s): the plan takes a stream per slot", e)
            return {}
        finally:
            for c in pools.values():
                c.close()

    def time_lanes(self, batch: int, size: int, ctx_len: int = 32, steps: int = 8) -> float:
        """Seconds for a decode step (the fastest of `steps`) of `batch` sequences spread over
        lanes of `size` (contexts of their own), every lane's step queued before any is waited for."""
        count = -(-batch // size)
        contexts: list[Context] = []
        try:
            for _ in range(count):
                contexts.append(Context(self, size * (ctx_len + 256), size, max(size, 64), False))
            tokens = self._filler(ctx_len)
            for c in contexts:
                for s in range(size):
                    c.prefill([(t, p, s) for p, t in enumerate(tokens)])
            best = float("inf")
            for k in range(steps + 1):  # the first: page-in, graphs
                t0 = time.perf_counter()
                for c in contexts:
                    c.launch([(tokens[k % ctx_len], ctx_len + k, s) for s in range(size)])
                for c in contexts:
                    L.llama_synchronize(c.ctx)
                if k:
                    best = min(best, time.perf_counter() - t0)
            return best
        finally:
            for c in contexts:
                c.close()

    def time_prefill(self, chunk: int, reps: int = 2) -> float:
        """Seconds for one prefill step of `chunk` prompt tokens (the best of reps)."""
        with Context(self, chunk + 256, 1, chunk, True) as sc:
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
