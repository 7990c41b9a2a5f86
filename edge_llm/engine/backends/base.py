"""What every engine backend provides. Only the engine thread calls a backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from edge_llm.engine.batch import Lanes, SampledToken, SchedulerOutput
from edge_llm.profile import ModelProfile


class BackendError(RuntimeError):
    """The backend failed to run a batch (the requests in it end with an error), or, caught
    within the backend, one sequence's own work (its chunk's error: that request alone ends)."""


@dataclass(frozen=True)
class ContextShape:
    """How big a context to create, from the plan."""

    kv_cache_tokens: int  # KV cells shared by all sequences
    num_seqs: int  # sequence slots (running + prefix cache)
    max_batch_tokens: int  # most tokens in one step (prefill chunk + one per running sequence)
    kv_unified: bool = True  # one pool of cells for all sequences; False = a stream of its own per slot
    lanes: Lanes = Lanes()  # contexts over the one model the slots are spread over (a stream per slot)
    device_greedy: bool = False  # greedy tokens picked where the model runs (llama.cpp backend sampling)


class Backend(Protocol):
    profile: ModelProfile

    def tokenize(self, text: str, add_special: bool = True) -> list[int]: ...

    def render_chat(self, messages: list[dict[str, str]]) -> str: ...

    def execute(self, out: SchedulerOutput) -> dict[int, SampledToken]:
        """Apply out.memory_ops, run the batch, and sample a token for each chunk that
        asks for one; results are keyed by seq_id. A failure of one sequence's own (its
        sampler) sets that chunk's error and the rest stand; raise only when the batch failed."""
        ...

    def interrupt(self, requested: bool) -> None:
        """Any thread: ask the abortable step running now (SchedulerOutput.abortable) to stop at
        its next checkpoint (True), or withdraw the request (False, the engine loop before it
        schedules). execute() then keeps no KV of the chunks it did not finish and marks them
        not done. A runtime that cannot stop a step ignores it."""
        ...

    def release(self, request_id: str) -> None:
        """Forget per-request state (samplers) of a finished request."""
        ...

    def seq_lengths(self) -> dict[int, int]:
        """Tokens held in the KV cache for each sequence slot that holds any."""
        ...

    def close(self) -> None: ...
