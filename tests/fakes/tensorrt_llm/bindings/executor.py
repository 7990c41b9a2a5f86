"""FAKE tensorrt_llm.bindings.executor: a toy in-flight batcher with the Executor API."""

import itertools
import threading
import time
from dataclasses import dataclass, field


@dataclass
class SamplingConfig:
    beam_width: int = 1
    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    random_seed: int | None = None


@dataclass
class Request:
    input_token_ids: list
    max_new_tokens: int
    streaming: bool = False
    sampling_config: SamplingConfig = field(default_factory=SamplingConfig)
    end_id: int | None = None
    pad_id: int | None = None


@dataclass
class Result:
    output_token_ids: list  # per beam; streaming: only the new tokens
    is_final: bool


@dataclass
class Response:
    request_id: int
    result: Result | None = None
    error_msg: str = ""

    def has_error(self) -> bool:
        return bool(self.error_msg)


class Executor:
    def __init__(self, max_batch_size: int):
        self.max_batch_size = max_batch_size
        self._ids = itertools.count(1)
        self._active: dict[int, tuple[Request, int]] = {}  # id -> (request, tokens emitted)
        self.cancelled: list[int] = []
        self.enqueued: list[Request] = []
        self.max_active = 0
        self._lock = threading.Lock()

    def enqueue_request(self, request: Request) -> int:
        with self._lock:
            rid = next(self._ids)
            self._active[rid] = (request, 0)
            self.enqueued.append(request)
            return rid

    def cancel_request(self, rid: int) -> None:
        with self._lock:
            self.cancelled.append(rid)
            self._active.pop(rid, None)

    def await_responses(self, timeout=None):
        """One iteration: every active request (up to the batch) gets one new token."""
        time.sleep(0.001)
        out = []
        with self._lock:
            batch = list(self._active.items())[: self.max_batch_size]
            self.max_active = max(self.max_active, len(batch))
            for rid, (req, n) in batch:
                token = 100 + n
                final = n + 1 >= req.max_new_tokens
                out.append(Response(rid, Result([[token]], final)))
                if final:
                    del self._active[rid]
                else:
                    self._active[rid] = (req, n + 1)
        return out

    def shutdown(self) -> None:
        self._active.clear()
