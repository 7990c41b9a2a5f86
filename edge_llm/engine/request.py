"""A request's state as it moves through the engine: waiting -> running -> finished."""

from __future__ import annotations

import codecs
import enum
import itertools
import queue
import time
from dataclasses import dataclass, field


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2  # waiting again, its work so far kept (resumed by recompute from the prefix cache)
    # everything above PREEMPTED is finished
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_CANCELLED = 5
    FINISHED_ERROR = 6

    @property
    def is_finished(self) -> bool:
        return self > RequestStatus.PREEMPTED


class Priority(enum.IntEnum):
    """Lower runs first. External API: the request field "priority" takes these names."""

    INTERACTIVE = 0  # the chat API and the kiosk page
    BACKGROUND = 1  # summary chunks, or an API caller that asks for it


# External API: these strings appear in OpenAI responses as finish_reason.
FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_CANCELLED: "cancelled",
    RequestStatus.FINISHED_ERROR: "error",
}


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256  # generated tokens, already capped to the plan
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None  # None = fresh randomness per request
    stop: tuple[str, ...] = ()
    min_p: float = 0.0  # 0 = off
    presence_penalty: float = 0.0  # OpenAI's, -2..2
    frequency_penalty: float = 0.0  # OpenAI's, -2..2
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    grammar: str | None = None  # GBNF the output must match (response_format)
    logprobs: int | None = None  # None = off; else return the chosen token's logprob and this many top ones

    @property
    def is_greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def is_plain_greedy(self) -> bool:
        """Greedy with nothing that reshapes the logits: one argmax decides."""
        return self.is_greedy and not (
            self.presence_penalty or self.frequency_penalty or self.logit_bias or self.grammar
        )


@dataclass
class RequestOutput:
    """One message from the engine thread to the HTTP thread that owns the request."""

    text: str  # new text since the last output
    num_prompt_tokens: int
    num_output_tokens: int
    finish_reason: str | None = None  # set on the last output only
    error: str | None = None
    logprobs: list | None = None  # TokenLogprobs of the tokens new since the last output


_ids = itertools.count()


@dataclass(eq=False)
class Request:
    prompt_tokens: list[int]
    params: SamplingParams
    request_id: str = field(default_factory=lambda: f"req-{next(_ids)}")
    status: RequestStatus = RequestStatus.WAITING
    output_tokens: list[int] = field(default_factory=list)
    priority: Priority = Priority.INTERACTIVE
    seq_id: int = -1  # KV sequence slot while running
    num_computed: int = 0  # tokens whose KV is in the cache
    num_reused: int = 0  # tokens taken from the prefix cache at the last admission
    prefill_len: int = 0  # tokens to have in the KV cache before decoding (set at admission)
    reserved_tokens: int = 0  # KV cells reserved (grows with the output)
    num_preemptions: int = 0
    arrival_time: float = field(default_factory=time.monotonic)
    admitted_time: float | None = None  # first admission (queue time = admitted - arrival)
    first_token_time: float | None = None
    finish_time: float | None = None
    outputs: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    logprobs: list = field(default_factory=list)  # TokenLogprob per output token, when asked for
    _num_logprobs_sent: int = 0
    _text: str = ""  # decoded output (stop strings removed once matched)
    _num_sent: int = 0  # characters of _text already sent
    _published_at: float | None = None  # when text last went to the reader (None: none yet)
    # False: only the end goes to the reader, with all the text (a summary part, a request that
    # does not stream): its thread wakes once rather than with every step's token, and takes no
    # turn at the GIL beside the engine thread meanwhile
    stream: bool = True
    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_tokens)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_tokens) + len(self.output_tokens)

    @property
    def all_tokens(self) -> list[int]:
        return self.prompt_tokens + self.output_tokens

    @property
    def is_prefilling(self) -> bool:
        return self.num_computed < self.prefill_len

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    @property
    def finish_reason(self) -> str | None:
        return FINISH_REASONS.get(self.status)

    @property
    def text(self) -> str:
        return self._text

    def append_token(self, token: int, piece: bytes, logprob=None) -> None:
        """Record a sampled token and its bytes; finishes the request on a stop string."""
        if self.first_token_time is None:
            self.first_token_time = time.monotonic()
        self.output_tokens.append(token)
        if logprob is not None:
            self.logprobs.append(logprob)
        before = len(self._text)
        self._text += self._decoder.decode(piece)
        # only a match ending in the new text is new; the earliest match wins, whichever stop it is
        tail = max(0, before - max((len(s) for s in self.params.stop), default=0))
        hits = [at for at in (self._text.find(stop, tail) for stop in self.params.stop) if at != -1]
        if hits:
            self._text = self._text[: min(hits)]
            self._decoder.reset()  # bytes after the stop string are not ours to print
            self.finish(RequestStatus.FINISHED_STOPPED)

    def finish(self, status: RequestStatus) -> None:
        if not self.is_finished:
            self.status = status
            self.finish_time = time.monotonic()
            if status in (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH):
                self._text += self._decoder.decode(b"", final=True)

    def take_delta(self) -> str:
        """Text not yet sent, holding back a tail that could still grow into a stop string."""
        end = len(self._text)
        if not self.is_finished and self.params.stop:
            end -= _held_back(self._text, self.params.stop)
        end = max(end, self._num_sent)
        delta = self._text[self._num_sent : end]
        self._num_sent = end
        return delta

    def publish(self, error: str | None = None, interval: float = 0.0, now: float = 0.0) -> bool:
        """Send new text (and the end, if finished) to the waiting HTTP thread; with an interval,
        text that follows other text within it waits for a later call (the first text and the end
        go at once), so a reader wakes and writes an event that much less often. True: held back.
        A request that does not stream publishes its end only (and an error)."""
        if not self.stream and not self.is_finished and error is None:
            return False
        if interval and not self.is_finished and error is None and self._published_at is not None:
            if now - self._published_at < interval:
                return True
        delta = self.take_delta()
        if delta or self.is_finished:
            if interval:
                self._published_at = now
            logprobs = None
            if self.params.logprobs is not None:
                logprobs = self.logprobs[self._num_logprobs_sent :]
                self._num_logprobs_sent = len(self.logprobs)
            self.outputs.put(
                RequestOutput(
                    delta,
                    self.num_prompt_tokens,
                    len(self.output_tokens),
                    self.finish_reason if self.is_finished else None,
                    error,
                    logprobs,
                )
            )
        return False


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of text that is a proper prefix of some stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best
