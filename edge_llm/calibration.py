"""The plan's speed choices, measured on the device they run on.

A memory plan says what fits; which KV layout, prefill chunk and batch are fastest depends on
the device (2 CPU cores, an Orin's GPU in one power mode, an H200). At first start the backend
times a few real steps (seconds), the figures are cached per model, build, device and power
mode, and the pure choose() turns them into choices with reasons. A cache whose key differs
(another model file, llama.cpp build, GPU, CPU or nvpmodel mode) is measured again.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CHUNKS = (64, 128, 256, 512, 1024, 2048)  # prefill chunk candidates, tokens
BATCHES = (1, 2, 4, 8, 16, 32, 64)  # decode batch candidates, sequences
LAYOUT_CTX = (64, 2048)  # tokens each held sequence has when the layouts are compared: as long as ...
LAYOUT_FILL_S = 6.0  # ... both layouts' fills (a sequence each, copied) take at the measured prefill rate
LAYOUT_CHUNK = 128  # prompt tokens of the prefill step timed beside the held sequences
EFFICIENT = 1.10  # a chunk within 10% of the best cost per token is efficient enough
NEAR_BEST = 0.90  # a batch this close to the best decode throughput is large enough
LANE_SIZES = (4, 8, 16)  # sequences per lane (a context of its own) tried on a GPU
LANES_BETTER = 0.90  # lanes are used when a step of them takes at most this share of one context's
VERSION = 5  # bump when what is measured changes
SERIES_BUDGET_S = 4.0  # a series of candidates stops once it has taken this long


@dataclass(frozen=True)
class Calibration:
    key: dict  # what the figures are valid for: model, build, device, power mode
    prefill_s: dict[int, float]  # chunk tokens -> seconds for one prefill step
    decode_s: dict[int, float]  # batch -> seconds per decode step (short contexts)
    layout_s: dict[str, float]  # "unified" | "per_slot" -> seconds per decode step at layout_batch x layout_ctx
    layout_batch: int  # sequences in the layout comparison
    layout_ctx: int  # tokens each of them holds
    can_abort: bool  # a running step can be stopped (ggml's CPU backend); on a GPU the chunk bounds a stall
    measured_s: float  # how long measuring took
    # GPU only: batch -> {lane size -> seconds per decode step of the batch spread over contexts of that
    # many}; size == batch is one context with a stream per slot, timed the same way (the baseline)
    lanes_s: dict[int, dict[int, float]] = field(default_factory=dict)
    measured_at: float = field(default_factory=time.time)  # Unix time
    contended: bool = False  # other work held the CPUs while measuring: used once, measured again next start
    cpu_share: float = 0.0  # CPU time the measuring process got / (wall time x its threads)
    # "unified" | "per_slot" -> seconds for a prefill step of layout_chunk tokens of one more sequence
    # beside the layout_batch held ones (what a summary part's prompt meets beside the other parts)
    layout_prefill_s: dict[str, float] = field(default_factory=dict)
    layout_chunk: int = 0

    def to_json(self) -> dict:
        d = asdict(self)
        d["version"] = VERSION
        return d

    @classmethod
    def from_json(cls, d: dict) -> Calibration:
        if d.get("version") != VERSION:
            raise ValueError(f"calibration version {d.get('version')} is not {VERSION}")
        return cls(
            key=d["key"],
            prefill_s={int(k): v for k, v in d["prefill_s"].items()},
            decode_s={int(k): v for k, v in d["decode_s"].items()},
            layout_s=dict(d["layout_s"]),
            layout_batch=int(d["layout_batch"]),
            layout_ctx=int(d["layout_ctx"]),
            can_abort=bool(d["can_abort"]),
            measured_s=float(d["measured_s"]),
            lanes_s={int(b): {int(g): float(t) for g, t in by.items()} for b, by in d.get("lanes_s", {}).items()},
            measured_at=float(d["measured_at"]),
            contended=bool(d.get("contended", False)),
            cpu_share=float(d.get("cpu_share", 0.0)),
            layout_prefill_s={k: float(v) for k, v in d.get("layout_prefill_s", {}).items()},
            layout_chunk=int(d.get("layout_chunk", 0)),
        )


@dataclass(frozen=True)
class SpeedChoices:
    prefill_chunk_tokens: int
    max_batch_size: int
    per_slot: bool  # a KV stream per slot is at least as fast as one pool (memory permitting)
    reasons: dict[str, str]  # limit name -> why, with the figures
    background_chunk_tokens: int = 0  # prompt tokens in a step of background prefill alone; 0 = the chunk
    lane_size: int = 0  # sequences per lane (a context of its own, steps run at once); 0 = one context
    one_context_batch: int = 0  # the batch chosen from one context's costs alone (0: max_batch_size)
    chat_slowdown: float = 0.0  # limits.chat_slowdown where it is left to the plan (choose_chat_slowdown)


# -- choosing (pure) ------------------------------------------------------------------------------
def choose_chunk(prefill_s: dict[int, float], max_step_s: float, can_abort: bool) -> tuple[int, str]:
    """Among chunks within EFFICIENT of the best cost per token: where a running step can be
    stopped (ggml's CPU backend), the smallest (a step there takes hundreds of ms; larger ones
    make it longer for nothing); where it cannot (a GPU), the largest whose step takes no longer
    than max_step_s (a visitor waits for it at most that long), since each step there costs
    about as much again outside the timed prefill (scheduling, sampling, a llama_decode per KV
    stream): on an H200, four 3,000-token prompts took 0.68-0.82x llama-server's time with 2048-
    token chunks and 1.04-1.15x with 1024, whose measured cost per token was within 3%."""
    per_token = {c: t / c for c, t in prefill_s.items()}
    best = min(per_token.values())
    efficient = [c for c, v in per_token.items() if v <= best * EFFICIENT]
    figures = ", ".join(f"{c}: {1000 * t:.0f} ms" for c, t in sorted(prefill_s.items()))
    if can_abort:
        return min(efficient), (
            f"calibrated: smallest chunk within {EFFICIENT - 1:.0%} of the best prefill cost per token ({figures})"
        )
    fitting = (
        [c for c in efficient if prefill_s[c] <= max_step_s]
        or [c for c, t in prefill_s.items() if t <= max_step_s]
        or [min(prefill_s)]
    )
    return max(fitting), (
        f"calibrated: steps cannot be stopped here, so the largest chunk within "
        f"{EFFICIENT - 1:.0%} of the best prefill cost per token whose step takes <= "
        f"{1000 * max_step_s:.0f} ms ({figures})"
    )


def decode_costs(cal: Calibration) -> dict[int, float]:
    """Seconds per decode step by batch: one context's, or lanes' where they measured faster."""
    return {b: min([t, *cal.lanes_s.get(b, {}).values()]) for b, t in cal.decode_s.items()}


def choose_batch(decode_s: dict[int, float], max_step_s: float) -> tuple[int, str]:
    """The smallest batch within NEAR_BEST of the best decode throughput measured among those whose
    step takes no longer than max_step_s (every stream gets a token at least that often). The best,
    not the first plateau: a GPU's throughput can pause at one size and climb again."""
    fitting = {b: b / t for b, t in decode_s.items() if t <= max_step_s} or {min(decode_s): 0.0}
    best = max(fitting.values())
    batch = min(b for b, rate in fitting.items() if rate >= best * NEAR_BEST)
    figures = ", ".join(f"{b}: {b / t:.0f} tok/s" for b, t in sorted(decode_s.items()))
    return batch, (
        f"calibrated: the smallest batch within {1 - NEAR_BEST:.0%} of the best decode throughput, "
        f"steps <= {1000 * max_step_s:.0f} ms ({figures})"
    )


def choose_lanes(cal: Calibration, batch: int) -> tuple[int, str]:
    """Lanes of the size whose step was fastest at the largest measured batch up to `batch`, if it
    took at most LANES_BETTER of one context's step there. A GPU runs each lane's step on its own
    CUDA stream at once with the others; a small model's step is too short to fill an H200 (16
    sequences as one context 3.8 ms, as two lanes of 8 2.1 ms); on a CPU steps share the cores."""
    if not cal.lanes_s:
        why = "a step of one context at a time (the CPU's cores run one)" if cal.can_abort else "none measured"
        return 0, f"one context: {why}"
    at = max((b for b in cal.lanes_s if b <= batch), default=min(cal.lanes_s))
    # against one context with a stream per slot (lanes have one), timed alike: lanes_s[b][b]
    one = cal.lanes_s[at].get(at, cal.decode_s[at])
    split = {g: t for g, t in cal.lanes_s[at].items() if g < at}
    size, t = min(split.items(), key=lambda kv: kv[1])
    figures = ", ".join(f"{g}: {1000 * x:.2f} ms" for g, x in sorted(split.items()))
    if t > one * LANES_BETTER:
        return 0, f"calibrated: one context; {at} sequences took {1000 * one:.2f} ms a step, in lanes of {figures}"
    return size, (
        f"calibrated: {at} sequences took {1000 * one:.2f} ms a step as one context, {1000 * t:.2f} ms "
        f"in contexts of {size} whose steps run at once (lanes of {figures})"
    )


def choose_layout(
    layout_s: dict[str, float], batch: int, ctx: int, prefill_s: dict[str, float] | None = None, chunk: int = 0
) -> tuple[bool, str]:
    """A stream per slot unless one pool is measurably (5%) faster at both a decode step of the
    held sequences and a prefill step beside them: per slot, each sequence attends over its own
    cells only, in one pool over every sequence's (masked). A decode step at 4 x 128 tokens chose
    one pool on this 2-core CPU by noise (19.5 against 22.8 ms; 23.0 against 21.8 and 25.3 against
    19.0 in two later tries), and with it a 4-part kiosk summary job took 110-130 s alone against
    84 in session 18, and 1.8-2.0x that beside a visitor (kiosk-501, session 19)."""
    if not layout_s:  # not timed (time_layouts could not make its contexts)
        return True, "a stream per slot, llama.cpp's server's layout: the layouts could not be timed here"
    per_slot, unified = layout_s["per_slot"], layout_s["unified"]
    use = per_slot <= unified * 1.05
    why = (
        f"calibrated: a decode step of {batch} sequences x {ctx} tokens took "
        f"{1000 * per_slot:.1f} ms with a stream per slot, {1000 * unified:.1f} ms in one pool"
    )
    if prefill_s:
        use = use or prefill_s["per_slot"] <= prefill_s["unified"] * 1.05
        why += (
            f"; a {chunk}-token prefill step beside them {1000 * prefill_s['per_slot']:.0f} ms against "
            f"{1000 * prefill_s['unified']:.0f} ms (one pool only where it is faster at both)"
        )
    return use, why


BACKGROUND_CHUNK_MAX = 512  # tokens: the most a stopped background step throws away is ~3 s on 2 CPU cores


def choose_background_chunk(chunk: int, can_abort: bool) -> tuple[int, str]:
    """Prompt tokens in a step of background prefill alone. Where a visitor's arrival stops such a
    step (can_abort), it is not bound by the stall a chunk causes: 4x the chunk, up to 512, since
    late in a long prompt small chunks cost more a token than first-start calibration (at an empty
    context) shows: at 2,048 tokens of context on 2 CPU cores, 12.4 / 7.2 / 6.2 / 5.75 ms a token in
    32 / 64 / 256 / 512-token chunks, against 3.9-4.1 for all at an empty one (tools/, session 8);
    a stopped step's work is lost, so not more. Elsewhere the chunk (it bounds the stall)."""
    if not can_abort:
        return chunk, "steps cannot be stopped here: the prefill chunk, which bounds a visitor's wait"
    big = max(chunk, min(4 * chunk, BACKGROUND_CHUNK_MAX))
    return big, (
        f"a visitor's arrival stops a background step here: 4x the chunk up to {BACKGROUND_CHUNK_MAX}, "
        "since late in a long prompt a small chunk costs more a token (at 2,048 tokens of context on "
        "2 CPU cores: 7.2 ms a token in 64-token chunks, 6.2 in 256, 5.75 in 512)"
    )


# a visitor's stream keeps 1/this of its pace beside background work, where that pays. 1.5, not
# 1.8: on 2 cores a prompt token beside a visitor cost 12.8 ms (16-token chunks late in a long
# prompt), twice what it costs in a step of its own, so holding more back cost the job little
# (kiosk_bench, 4 parts: slowest chat 0.50-0.58x idle over 3 rounds; one round at 1.8: 0.43x)
SHARE_SLOWDOWN = 1.5


def choose_chat_slowdown(decode_s: dict[int, float]) -> tuple[float, str]:
    """limits.chat_slowdown where the user leaves it to the plan. A background sequence decoded in a
    visitor's step costs the visitor r - 1 of its step alone and saves the job 2 - r of one (its
    step apart), where r is a step of 2 sequences over a step of 1: beside a visitor's decode,
    background work rides along (SHARE_SLOWDOWN) only where it saves the job more than it costs the
    visitor, r < 1.5; elsewhere it waits while a visitor decodes (1.0). On 2 CPU cores r was 1.78:
    there background work beside a visitor cost about what it costs apart (16-token prompt chunks
    in the steps it shared), and through a kiosk summary job (4 rounds each) 1.0 kept the chat at
    0.72-0.89 of its idle pace against 0.46-0.50 at 1.5, the job 0.99-1.17x its time alone against
    1.27-1.32x (docs/measurements/cpu-2core-amd-2026-12-06-session21). On an H100 r was 1.29-1.30,
    and 1.5 kept the job shorter than 1.0 did (h100-2026-12-06-session21)."""
    one, two = decode_s.get(1), decode_s.get(2)
    if not one or not two:
        return SHARE_SLOWDOWN, "no decode steps of 1 and 2 sequences measured: background rides beside a visitor"
    r = two / one
    figures = f"a decode step of 2 sequences took {r:.2f}x one ({1000 * two:.1f} ms against {1000 * one:.1f})"
    if r < SHARE_SLOWDOWN:
        return SHARE_SLOWDOWN, (
            f"calibrated: {figures}: a background sequence beside a visitor's decode saves the job more of a "
            f"step ({2 - r:.2f}) than it costs the visitor ({r - 1:.2f}), so background work rides along while "
            f"the visitor keeps 1/{SHARE_SLOWDOWN:g} of its pace"
        )
    return 1.0, (
        f"calibrated: {figures}: a background sequence beside a visitor's decode would cost the visitor more "
        f"of a step ({r - 1:.2f}) than it saves the job ({2 - r:.2f}), so background work waits while a "
        f"visitor decodes (the visitor at its full pace; after 10 s beside visitors with no 1 s pause it rides "
        f"along at {SHARE_SLOWDOWN:g}: engine/share.py MAX_HOLD_S)"
    )


def choose(cal: Calibration, max_step_s: float) -> SpeedChoices:
    chunk, why_chunk = choose_chunk(cal.prefill_s, max_step_s, cal.can_abort)
    batch, why_batch = choose_batch(decode_costs(cal), max_step_s)
    lane_size, why_lanes = choose_lanes(cal, batch)
    # where the plan cannot have lanes after all (turned off, one KV pool): one context's best
    one_batch, why_one = choose_batch(cal.decode_s, max_step_s) if lane_size else (batch, why_batch)
    per_slot, why_layout = choose_layout(
        cal.layout_s, cal.layout_batch, cal.layout_ctx, cal.layout_prefill_s, cal.layout_chunk
    )
    background, why_background = choose_background_chunk(chunk, cal.can_abort)
    slowdown, why_slowdown = choose_chat_slowdown(decode_costs(cal))
    return SpeedChoices(
        chunk,
        batch,
        per_slot,
        {
            "prefill_chunk_tokens": why_chunk,
            "max_batch_size": why_batch,
            "kv_layout": why_layout,
            "background_chunk_tokens": why_background,
            "lanes": why_lanes,
            "max_batch_size_one_context": why_one,
            "chat_slowdown": why_slowdown,
        },
        background,
        lane_size,
        one_batch,
        slowdown,
    )


# -- measuring (the backend does the device work) ----------------------------------------------------
MIN_CPU_SHARE = 0.5  # below this share of its threads' CPU time, a CPU calibration was crowded out


def cpus_contended(cpu_share: float) -> bool:
    """The measuring threads got too little of the CPUs (another build, a test run beside it):
    step times measured so say more about the neighbours than about the device."""
    return cpu_share < MIN_CPU_SHARE


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def measure(
    backend, key: dict, max_batch: int, max_step_s: float, contended: Callable[[float], bool] = cpus_contended
) -> Calibration:
    """Time prefill chunks and decode batches (a series stops once a step takes 4x max_step_s,
    or, for chunks, once the cost per token stops falling: larger ones would not be chosen), on a
    GPU the batches spread over lanes, then the two KV layouts at a middling batch of held
    sequences: a decode step of them and a prefill step beside them."""
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    prefill, last = {}, None
    for c in CHUNKS:
        prefill[c] = backend.time_prefill(c)
        flat = last is not None and (prefill[last] / last) / (prefill[c] / c) < 1.05  # past the knee
        if prefill[c] > 4 * max_step_s or flat or time.perf_counter() - t0 > SERIES_BUDGET_S:
            break
        last = c
    decode, t1 = {}, time.perf_counter()
    for b in (b for b in BATCHES if b <= max_batch):
        decode[b] = backend.time_decode(b, 32, unified=True)
        if decode[b] > 4 * max_step_s or time.perf_counter() - t1 > SERIES_BUDGET_S:
            break
    lanes: dict[int, dict[int, float]] = {}
    if backend.gpu_offload:  # on a CPU the cores run one step at a time
        t2 = time.perf_counter()
        for b, g in ((b, g) for b in sorted(decode) for g in LANE_SIZES if 2 * g <= b):
            if time.perf_counter() - t2 > SERIES_BUDGET_S:
                break
            if b not in lanes:  # the baseline: one context, a stream per slot (as lanes have), timed alike
                lanes[b] = {b: backend.time_lanes(b, b)}
            lanes[b][g] = backend.time_lanes(b, g)
    layout_batch = min(4, max_batch)
    rate = max(c / t for c, t in prefill.items())  # prompt tokens per second
    ctx = LAYOUT_CTX[0]
    while ctx * 2 <= LAYOUT_CTX[1] and 2 * ctx * 2 <= rate * LAYOUT_FILL_S:  # a fill per layout
        ctx *= 2
    timed = backend.time_layouts(layout_batch, ctx, LAYOUT_CHUNK)
    wall = time.perf_counter() - t0
    # on the CPU, ggml's threads run (or spin) for the whole of every step: less CPU time than
    # wall x threads means others had the cores; a GPU build's threads mostly wait, so no test there
    share = (_cpu_seconds() - cpu0) / (wall * backend.n_threads)
    return Calibration(
        key,
        prefill,
        decode,
        {name: t[0] for name, t in timed.items()},  # {} where they could not be timed
        layout_batch,
        ctx,
        can_abort=not backend.gpu_offload,
        measured_s=wall,
        lanes_s=lanes,
        contended=not backend.gpu_offload and contended(share),
        cpu_share=round(share, 3),
        layout_prefill_s={name: t[1] for name, t in timed.items()},
        layout_chunk=LAYOUT_CHUNK,
    )


def device_key(backend, model_path: Path, gpu_name: str, power_mode: str | None) -> dict:
    """What the figures depend on. The model by path, size and modification time (hashing a
    multi-GB file at every start would cost more than measuring)."""
    st = model_path.stat()
    return {
        "model": str(model_path),
        "model_bytes": st.st_size,
        "model_mtime_ns": st.st_mtime_ns,
        "build": backend.build_id(),
        "threads": backend.n_threads,
        "cpu": _cpu_name(),
        "cpus": len(os.sched_getaffinity(0)),
        "gpu": gpu_name or None,
        "power_mode": power_mode,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Hardware", "CPU part")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def load_or_measure(
    path: Path,
    backend,
    key: dict,
    max_batch: int,
    max_step_s: float,
    contended: Callable[[float], bool] = cpus_contended,
) -> Calibration:
    """The cached calibration when its key matches (and it was not measured on busy CPUs),
    else a new measurement (saved)."""
    try:
        cached = Calibration.from_json(json.loads(path.read_text()))
        if cached.key == key and not cached.contended:
            return cached
        changed = sorted(k for k in key.keys() | cached.key.keys() if key.get(k) != cached.key.get(k))
        log.info(
            "calibration in %s %s: measuring again",
            path,
            f"is for another {', '.join(changed)}" if changed else "was measured on busy CPUs",
        )
    except FileNotFoundError:
        log.info("no calibration yet in %s: measuring this device's step costs", path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("calibration in %s unreadable (%s): measuring again", path, e)
    cal = measure(backend, key, max_batch, max_step_s, contended)
    log.info(
        "calibrated in %.1f s: prefill %s, decode %s, lanes %s, layouts: decode %s, prefill beside %s%s",
        cal.measured_s,
        _ms(cal.prefill_s),
        _ms(cal.decode_s),
        {b: _ms(by) for b, by in cal.lanes_s.items()},
        _ms(cal.layout_s),
        _ms(cal.layout_prefill_s),
        " (CPUs busy: measured again at the next start)" if cal.contended else "",
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cal.to_json(), indent=1))
        os.replace(tmp, path)
    except OSError as e:  # a full or read-only state directory: the figures still serve this start
        log.warning("calibration not saved to %s (%s): measured again at the next start", path, e)
    return cal


def _ms(d: dict) -> str:
    return "{" + ", ".join(f"{k}: {1000 * v:.1f} ms" for k, v in d.items()) + "}"
