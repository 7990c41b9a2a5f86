"""Fit batch size and sequence lengths to the device's memory. Pure: plan() only computes.

Order (as vLLM sizes memory): measure what is available, take off the reserve, the weights
and the compute workspace, size the KV cache from the rest, shrink lengths to fit, and say
for every limit why it binds. On unified memory (Jetson) every GPU allocation is RAM and
swap cannot hold KV or engine memory: swap may only shrink the reserve, never grow the KV.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from edge_llm.calibration import SHARE_SLOWDOWN, SpeedChoices
from edge_llm.profile import ModelProfile
from edge_llm.telemetry.snapshot import Snapshot

MiB = 1 << 20
GiB = 1 << 30
MIN_USEFUL_SEQ = 256  # memory bounds the batch by sequences this short: admission reserves the rest
# While a visitor is expected back (engine/scheduler.py: within VISITOR_NEAR_THINKS times the
# visitors' usual pause, at most VISITOR_NEAR_S seconds), a stoppable step of background prefill
# alone holds at most VISITOR_CHUNK_FACTOR times the prefill chunk (Plan.background_visitor_chunk),
# except a step that, by the recent steps' pace, ends within VISITOR_CLEAR_THINKS of the usual pause
# after the last visitor's end: no visitor is likely back yet, and the bigger step is the cheaper.
VISITOR_NEAR_S = 30.0
VISITOR_NEAR_THINKS = 2.0
VISITOR_CLEAR_THINKS = 0.5
VISITOR_CHUNK_FACTOR = 2
VISITOR_WHY = (
    "a visitor's arrival stops the step and loses its work so far, and a kiosk visitor asks again within "
    "seconds (on 2 CPU cores, 128 prompt tokens at 2,048 of context took 0.66 s against 1.28 s for 256, "
    "and four 3,000-token prompts 5.5% longer in 128-token steps; through a kiosk summary job the work "
    "stops lost fell from 7.1-13.8 s to 1.9-4.9 s: docs/measurements/cpu-2core-amd-2026-12-05-session16)"
)
LIMITS = ("max_batch_size", "max_seq_len", "max_input_len", "max_output_len", "kv_cache_tokens", "prefill_chunk_tokens")


class PlanError(ValueError):
    """The model cannot run in this memory at all; the message gives the numbers."""


@dataclass(frozen=True)
class Policy:
    reserve_bytes: int = GiB  # for the OS, the kiosk browser and other processes
    default_max_batch_size: int = 8
    default_max_seq_len: int = 4096
    default_max_output_len: int = 1024
    default_prefill_chunk_tokens: int = 256
    prefix_cache_slots: int = 4
    gpu_offload: bool = False  # every layer and the KV cache live on the GPU
    gpu_reserve_bytes: int = GiB  # left free on a discrete GPU
    # each sequence slot has a KV stream of its own (llama.cpp); None = when memory holds every
    # slot at max_seq_len (no concurrency lost), else one unified pool
    per_sequence_kv: bool | None = False
    caps: dict[str, int] = field(default_factory=dict)  # user caps by limit name; 0/absent = none
    speed: SpeedChoices | None = None  # chunk, batch and layout measured on this device (calibration)
    calibration: dict | None = None  # the figures behind speed, reported with the plan
    lanes: bool = True  # may spread sequences over contexts (speed.lane_size); False: one context
    chat_slowdown: float = -1.0  # limits.chat_slowdown: negative = the calibration's choice (speed)

    def cap(self, name: str) -> int:
        return self.caps.get(name) or 0


@dataclass(frozen=True)
class Plan:
    max_batch_size: int  # sequences decoded together
    max_input_len: int  # prompt tokens
    max_output_len: int  # generated tokens per request
    max_seq_len: int  # prompt + output tokens per sequence
    kv_cache_tokens: int  # KV cells shared by all sequences
    prefill_chunk_tokens: int  # prompt tokens per engine step
    num_seqs: int  # sequence slots: running + prefix cache
    memory: str  # which memory binds: "unified RAM" | "RAM" | "GPU <name>"
    kv_layout: str  # "unified": one pool for all sequences | "per_slot": a stream of max_seq_len per slot
    available_bytes: int  # free memory the plan started from
    reserve_bytes: int  # left for everything else (after the swap credit)
    weights_bytes: int
    workspace_bytes: int  # compute buffers, logits, runtime overhead (estimate)
    kv_bytes_per_token: int
    kv_budget_bytes: int  # what was left for the KV cache
    recommended_swap_bytes: int
    reasons: dict[str, str]  # limit name -> why it has this value
    calibration: dict | None = None  # measured step costs the speed choices came from (None: defaults)
    background_chunk_tokens: int = 0  # prompt tokens in a stoppable step of background prefill alone; 0 = the chunk
    lanes: int = 1  # llama.cpp contexts the sequence slots are spread over, their steps run at once (GPU)
    lane_size: int = 0  # slots in each lane's block (engine/kv_cache.py Lanes); 0 = one context
    # how far background work may slow a visitor's stream (engine/share.py): 0 = not at all bounded
    # (background always rides along), 1.0 = it waits while a visitor decodes
    chat_slowdown: float = SHARE_SLOWDOWN

    @property
    def background_chunk(self) -> int:
        return max(self.background_chunk_tokens, self.prefill_chunk_tokens)

    @property
    def background_visitor_chunk(self) -> int:
        """The same while a visitor is expected back (engine/scheduler.py NEAR_S): at most VISITOR_CHUNK_FACTOR
        times the prefill chunk, since a visitor's arrival stops the step and its work is lost."""
        return min(self.background_chunk, VISITOR_CHUNK_FACTOR * self.prefill_chunk_tokens)

    @property
    def kv_cache_bytes(self) -> int:
        return self.kv_cache_tokens * self.kv_bytes_per_token

    @property
    def max_batch_tokens(self) -> int:
        return self.background_chunk + self.max_batch_size

    @property
    def predicted_resident_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.workspace_bytes

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(
            kv_cache_bytes=self.kv_cache_bytes,
            max_batch_tokens=self.max_batch_tokens,
            background_visitor_chunk_tokens=self.background_visitor_chunk,
            predicted_resident_bytes=self.predicted_resident_bytes,
        )
        return d


def estimate_workspace(profile: ModelProfile, batch_tokens: int, num_seqs: int) -> int:
    """Compute buffers grow with the tokens in a step; logits with the rows kept (one per
    sequence). A fixed build-time workspace (TensorRT-LLM) replaces the estimate."""
    if profile.activation_bytes:
        return profile.activation_bytes
    per_token = profile.n_embd * 4 * 24  # hidden states, norms, attention and MLP scratch
    return 48 * MiB + batch_tokens * per_token + num_seqs * profile.n_vocab * 4


def _pick(name: str, policy: Policy, default: int, why_default: str) -> tuple[int, str]:
    cap = policy.cap(name)
    return (cap, f"user cap {cap}") if cap else (default, why_default)


def plan(profile: ModelProfile, snapshot: Snapshot, policy: Policy) -> Plan:
    """Every limit for this model in this memory, and why it binds; PlanError if it cannot run."""
    reasons: dict[str, str] = {}
    memory, available, reserve = _memory(snapshot, policy)
    chunk, batch_cap, why_batch = _speed_limits(policy, reasons)
    background = _background_chunk(policy, chunk, reasons)  # >= chunk
    slots = policy.prefix_cache_slots
    workspace = estimate_workspace(profile, background + batch_cap, batch_cap + slots)
    kv = _KvBudget(
        memory,
        _kv_budget_bytes(profile, available, reserve, workspace),
        profile.kv_bytes_per_token,
        policy.cap("kv_cache_tokens"),
    )
    seq = _max_seq_len(profile, policy, kv, reasons)
    streams = batch_cap + slots
    per_slot, reasons["kv_layout"] = _layout(policy, kv.limit >= streams * seq, streams, seq, memory)
    if per_slot:
        batch, seq, kv_tokens = _per_sequence(batch_cap, why_batch, seq, kv.limit, slots, memory, reasons)
    else:
        batch, kv_tokens = _unified(batch_cap, why_batch, seq, kv, reasons)
    inp, out = _io_lens(policy, seq, reasons)
    lanes, lane_size = _lanes(policy, batch, per_slot, reasons)
    kv_budget = kv.budget_bytes
    if lanes > 1:  # each lane's context has compute buffers of its own: only if the KV still fits
        extra = (lanes - 1) * estimate_workspace(profile, background + batch_cap, 0)
        if kv_tokens * kv.bytes_per_token + extra > kv.budget_bytes:
            reasons["lanes"] = f"one context: {memory} has no room for {lanes - 1} more contexts' buffers"
            lanes, lane_size = 1, 0
        else:
            workspace, kv_budget = workspace + extra, kv_budget - extra
    result = Plan(
        max_batch_size=batch,
        max_input_len=inp,
        max_output_len=out,
        max_seq_len=seq,
        kv_cache_tokens=kv_tokens,
        prefill_chunk_tokens=min(chunk, inp),
        num_seqs=batch + slots,
        memory=memory,
        kv_layout="per_slot" if per_slot else "unified",
        available_bytes=available,
        reserve_bytes=reserve,
        weights_bytes=profile.weights_bytes,
        workspace_bytes=workspace,
        kv_bytes_per_token=kv.bytes_per_token,
        kv_budget_bytes=kv_budget,
        recommended_swap_bytes=recommend_swap(snapshot),
        reasons=reasons,
        calibration=policy.calibration,
        background_chunk_tokens=min(background, inp),
        lanes=lanes,
        lane_size=lane_size,
        chat_slowdown=_chat_slowdown(policy, reasons),
    )
    _visitor_chunk_reason(result)
    return result


def _chat_slowdown(policy: Policy, reasons: dict[str, str]) -> float:
    """The user's limits.chat_slowdown, else the calibration's choice, else SHARE_SLOWDOWN."""
    if policy.chat_slowdown >= 0:
        reasons["chat_slowdown"] = "user setting limits.chat_slowdown" + (
            " (0: background always rides along)" if policy.chat_slowdown == 0 else ""
        )
        return policy.chat_slowdown
    if policy.speed and policy.speed.chat_slowdown:
        reasons["chat_slowdown"] = policy.speed.reasons["chat_slowdown"]
        return policy.speed.chat_slowdown
    reasons["chat_slowdown"] = f"policy default: background rides beside a visitor at 1/{SHARE_SLOWDOWN:g} of its pace"
    return SHARE_SLOWDOWN


def _lanes_possible(policy: Policy) -> bool:
    """Before memory is planned: lanes are not turned off and the KV layout may be a stream per slot."""
    return policy.lanes and policy.per_sequence_kv is not False and not (policy.speed and not policy.speed.per_slot)


def _lanes(policy: Policy, batch: int, per_slot: bool, reasons: dict[str, str]) -> tuple[int, int]:
    """How many contexts (lanes) of how many slots each: calibration's lane size where it measured
    lanes faster, as many lanes as the batch fills; one context otherwise."""
    size = policy.speed.lane_size if policy.speed else 0
    if not policy.lanes:
        reasons["lanes"] = "one context: user setting planner.lanes = false"
    elif not size:
        why = policy.speed.reasons.get("lanes") if policy.speed else None
        reasons["lanes"] = why or "one context: no lanes measured faster (calibration)"
    elif not per_slot:
        reasons["lanes"] = "one context: lanes need a KV stream per slot (kv_layout per_slot)"
    elif batch <= size:
        reasons["lanes"] = f"one context: a batch of {batch} fills one lane of {size}"
    else:
        count = -(-batch // size)
        reasons["lanes"] = f"{count} lanes of {size} slots: " + policy.speed.reasons["lanes"]
        return count, size
    return 1, 0


def _background_chunk(policy: Policy, chunk: int, reasons: dict[str, str]) -> int:
    """Prompt tokens in a stoppable step of background prefill alone: calibration's choice, unless
    the user capped the prefill chunk (then that size for every step)."""
    speed = policy.speed
    if speed is None or policy.cap("prefill_chunk_tokens") or speed.background_chunk_tokens <= chunk:
        reasons["background_chunk_tokens"] = "the prefill chunk"
        return chunk
    reasons["background_chunk_tokens"] = speed.reasons["background_chunk_tokens"]
    return speed.background_chunk_tokens


def _visitor_chunk_reason(plan: Plan) -> None:
    """Say, with the background chunk's reason, what a step holds while a visitor is expected back
    (from the plan's own figures, after max_input_len bounded them)."""
    near = plan.background_visitor_chunk
    if near < plan.background_chunk:
        plan.reasons["background_chunk_tokens"] += (
            f"; {near} while a visitor is expected back (within {VISITOR_NEAR_THINKS:g}x the visitors' usual "
            f"pause, {VISITOR_NEAR_S:g} s at most; the full step still where it ends within "
            f"{VISITOR_CLEAR_THINKS:g}x that pause after the last visitor's end): {VISITOR_WHY}"
        )


@dataclass(frozen=True)
class _KvBudget:
    memory: str  # which memory binds (Plan.memory)
    budget_bytes: int  # left for the KV cache
    bytes_per_token: int
    cap: int  # user cap kv_cache_tokens; 0 = none

    @property
    def fit(self) -> int:  # tokens the budget holds
        return self.budget_bytes // self.bytes_per_token

    @property
    def limit(self) -> int:  # tokens the KV cache may have: the fit, or the user cap below it
        return min(self.fit, self.cap) if self.cap else self.fit


def _memory(snapshot: Snapshot, policy: Policy) -> tuple[str, int, int]:
    """Which memory binds, the bytes free in it, and the reserve left for everything else."""
    if policy.gpu_offload and snapshot.gpu_mem_total_bytes > 0 and not snapshot.unified_memory:
        # weights and KV in the discrete GPU's memory; swap cannot help there
        return f"GPU {snapshot.gpu_name}".strip(), snapshot.gpu_mem_free_bytes, policy.gpu_reserve_bytes
    # RAM; on unified memory (Jetson) every GPU allocation is RAM too
    reserve = policy.reserve_bytes - min(snapshot.swap_free_bytes, policy.reserve_bytes // 2)
    return "unified RAM" if snapshot.unified_memory else "RAM", snapshot.ram_available_bytes, reserve


def _speed_limits(policy: Policy, reasons: dict[str, str]) -> tuple[int, int, str]:
    """The prefill chunk (its reason recorded), the batch ceiling and why: measured on this device
    (calibration) or the policy's defaults, a user cap winning over either."""
    speed = policy.speed
    if speed:
        chunk, reasons["prefill_chunk_tokens"] = _pick(
            "prefill_chunk_tokens", policy, speed.prefill_chunk_tokens, speed.reasons["prefill_chunk_tokens"]
        )
        batch, why = speed.max_batch_size, speed.reasons["max_batch_size"]
        if speed.lane_size and speed.one_context_batch and not _lanes_possible(policy):
            batch = speed.one_context_batch  # the batch for one context: lanes cannot be had here
            why = speed.reasons.get("max_batch_size_one_context", why) + " (one context: no lanes)"
        return chunk, *_pick("max_batch_size", policy, batch, why)
    chunk, reasons["prefill_chunk_tokens"] = _pick(
        "prefill_chunk_tokens",
        policy,
        policy.default_prefill_chunk_tokens,
        "policy default: bounds how long one step stalls running streams",
    )
    return chunk, *_pick(
        "max_batch_size", policy, policy.default_max_batch_size, "policy default (compute, not memory, binds first)"
    )


def _kv_budget_bytes(profile: ModelProfile, available: int, reserve: int, workspace: int) -> int:
    """What is left for the KV cache; PlanError when that is not even 64 tokens."""
    budget = available - reserve - profile.weights_bytes - workspace
    kvpt = profile.kv_bytes_per_token
    if budget < 64 * kvpt:
        raise PlanError(
            f"{profile.name} does not fit: {available / GiB:.2f} GiB available - {reserve / GiB:.2f} reserve"
            f" - {profile.weights_bytes / GiB:.2f} weights - {workspace / GiB:.2f} workspace leaves"
            f" {budget / MiB:.0f} MiB, less than 64 tokens of KV at {kvpt} B/token"
        )
    return budget


def _max_seq_len(profile: ModelProfile, policy: Policy, kv: _KvBudget, reasons: dict[str, str]) -> int:
    """The user cap or policy default, shortened to the trained context and to what the KV holds."""
    seq, reasons["max_seq_len"] = _pick("max_seq_len", policy, policy.default_max_seq_len, "policy default")
    if profile.n_ctx_train and seq > profile.n_ctx_train:
        seq, reasons["max_seq_len"] = profile.n_ctx_train, f"the model's trained context ({profile.n_ctx_train})"
    if seq > kv.limit:
        seq = kv.limit
        reasons["max_seq_len"] = (
            f"user cap kv_cache_tokens={kv.cap}"
            if kv.cap and kv.cap < kv.fit
            else f"{kv.memory}: the KV budget holds only {kv.fit} tokens"
        )
    return seq


def _layout(policy: Policy, fits: bool, slots: int, seq: int, memory: str) -> tuple[bool, str]:
    """A stream per slot when the user says so; in auto, when it is measured no slower (or, without a
    calibration, always) and memory holds every slot at max_seq_len (no concurrency lost)."""
    if policy.per_sequence_kv is not None:
        return policy.per_sequence_kv, "user setting model.kv_layout"
    if not fits:
        return False, f"{memory} cannot hold {slots} streams of {seq} tokens: one pool shared by all"
    if policy.speed and not policy.speed.per_slot:
        return False, policy.speed.reasons["kv_layout"]
    return True, (
        policy.speed.reasons["kv_layout"]
        if policy.speed
        else "no calibration: a stream per slot, since memory holds every slot"
    ) + f"; {slots} streams fit"


def _per_sequence(
    batch_cap: int, why_batch: str, seq: int, kv_limit: int, slots: int, memory: str, reasons: dict[str, str]
) -> tuple[int, int, int]:
    """A KV stream of max_seq_len for every slot (running + prefix cache). The length is kept
    (shortened only if even one running slot would not fit) and the batch is what is left."""
    if kv_limit // (1 + slots) < seq:
        seq = max(1, kv_limit // (1 + slots))
        reasons["max_seq_len"] = f"{memory}: {kv_limit} KV tokens hold {1 + slots} streams of {seq} (one per slot)"
    batch = min(batch_cap, kv_limit // seq - slots)
    reasons["max_batch_size"] = (
        why_batch
        if batch == batch_cap
        else (f"{memory}: {kv_limit} KV tokens hold {batch + slots} streams of {seq} ({slots} for the prefix cache)")
    )
    reasons["kv_cache_tokens"] = f"one stream of max_seq_len per slot: ({batch} + {slots}) x {seq}"
    return batch, seq, (batch + slots) * seq


def _unified(batch_cap: int, why_batch: str, seq: int, kv: _KvBudget, reasons: dict[str, str]) -> tuple[int, int]:
    """One KV pool for all sequences. Admission reserves as requests grow, so short requests can
    share KV that one long one would fill; memory bounds the batch by short sequences only."""
    batch = min(batch_cap, max(1, kv.limit // MIN_USEFUL_SEQ))
    reasons["max_batch_size"] = (
        why_batch
        if batch == batch_cap
        else (f"{kv.memory}: {kv.limit} KV tokens hold {batch} sequences of {MIN_USEFUL_SEQ}")
    )
    kv_tokens = min(kv.limit, batch * seq)
    reasons["kv_cache_tokens"] = (
        f"max_batch_size x max_seq_len = {batch} x {seq}"
        if kv_tokens == batch * seq
        else f"user cap {kv.cap}"
        if kv_tokens == kv.cap
        else f"{kv.memory}: budget {kv.budget_bytes // MiB} MiB / {kv.bytes_per_token} B per token"
    )
    return batch, kv_tokens


def _io_lens(policy: Policy, seq: int, reasons: dict[str, str]) -> tuple[int, int]:
    """Prompt and output lengths: user caps or defaults, each at most max_seq_len - 1."""
    inp, reasons["max_input_len"] = _pick("max_input_len", policy, seq - 1, "max_seq_len - 1")
    if inp > seq - 1:
        inp, reasons["max_input_len"] = seq - 1, "max_seq_len - 1"
    out, reasons["max_output_len"] = _pick("max_output_len", policy, policy.default_max_output_len, "policy default")
    if out > seq - 1:
        out, reasons["max_output_len"] = seq - 1, "max_seq_len - 1"
    return inp, out


def recommend_swap(snapshot: Snapshot) -> int:
    """Swap cannot hold KV or weights on unified memory; it gives other processes somewhere to
    go (and engine builds headroom). Half of RAM, between 4 and 16 GiB, as NVIDIA advises
    an NVMe swap file for LLM work on Jetson."""
    return int(min(16 * GiB, max(4 * GiB, snapshot.ram_total_bytes // 2)))


SWAP_REASON = (
    "swap cannot hold the KV cache or the engine (unified memory is pinned RAM); it lets other "
    "processes page out so the reserve can shrink by up to half, and gives engine builds headroom"
)
