"""What passes between a scheduler and a backend: the chunks of one step, the memory operations
before it, and the sampled tokens after it. Backends import only this (and request data), never
the scheduler that fills it."""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_llm.engine.kv_cache import Lanes, MemoryOp

__all__ = ["Lanes", "MemoryOp", "ScheduledChunk", "SchedulerOutput", "SampledToken", "TokenLogprob"]
from edge_llm.engine.request import Request


@dataclass
class ScheduledChunk:
    request: Request
    tokens: list[int]
    start_pos: int  # position of tokens[0] in the sequence
    sample: bool  # sample a token from the logits of the last token
    done: bool = True  # False: the backend stopped the step before this chunk (nothing of it kept)
    error: str | None = None  # the backend failed this sequence alone (e.g. its sampler); others stand
    decode: bool = False  # a running sequence's next token (tokens[0]), not a prompt chunk
    # prompt lookup (engine/lookup.py): tokens[1 : 1 + num_draft] are drafts to verify, then num_pad
    # positions that only even out a batch (never kept); draft_order is the matched suffix's length
    num_draft: int = 0
    num_pad: int = 0
    draft_order: int = 0
    verified: list[SampledToken] | None = None  # the backend's argmax after tokens[0..num_draft]
    seq_id: int = -1  # the KV slot it runs in (its request's when scheduled; -1: take the request's)
    # a step launched ahead (StepEngine): the request ended or was preempted while it ran, so its
    # row is not sampled and its one KV cell is removed again
    dropped: bool = False

    def __post_init__(self):
        if self.seq_id < 0:
            self.seq_id = self.request.seq_id


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    memory_ops: list[MemoryOp] = field(default_factory=list)  # run in order, before the batch
    # background prefill only: the backend may stop the step when an interactive request
    # arrives (Backend.interrupt); the chunks it did not finish are marked not done
    abortable: bool = False

    @property
    def num_tokens(self) -> int:
        return sum(len(c.tokens) for c in self.chunks)

    @property
    def is_empty(self) -> bool:
        return not self.chunks and not self.memory_ops


@dataclass(frozen=True)
class TokenLogprob:
    """The model's log-probability of a sampled token, before any sampling filter."""

    token: int
    piece: bytes
    logprob: float
    top: tuple[tuple[int, bytes, float], ...] = ()  # the most likely tokens: (id, piece, logprob)


@dataclass(frozen=True)
class SampledToken:
    token: int
    piece: bytes  # the token's text bytes (empty for control tokens)
    is_eog: bool  # end of generation (EOS, EOT)
    logprob: TokenLogprob | None = None  # when the request asked for logprobs
