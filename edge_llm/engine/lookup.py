"""Prompt lookup decoding: a greedy sequence that repeats itself (a summary quoting its document,
a story in a loop, code echoing its prompt) drafts its next tokens from its own earlier text,
and one step verifies them: the step decodes the last token and the drafts, the argmax after
each is the token greedy decoding would have produced there, and drafts are kept up to the
first that differs. Nothing changes in what greedy decoding outputs; a step yields 1 + the
accepted drafts.

A draft costs a position in the step. Whether it pays depends on the device: on a GPU a step of
80 tokens costs little more than one of 16 (launches and weights dominate), on 2 CPU cores
every token costs ~4 ms. So the drafts of a step are chosen to maximise tokens per second by
the step costs calibration measured on this device (StepCosts) and the acceptance seen so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NGRAM_ORDERS = (3, 2, 1)  # suffix lengths looked up, longest first
# the acceptance of a draft token before any was verified, by the order of its match (a 3-gram
# that occurred before continues as it did more often than a single token does); then measured
PRIOR_ACCEPT = {3: 0.7, 2: 0.5, 1: 0.3}
PRIOR_WEIGHT = 4.0  # verifications a request's own record needs to outweigh the device-wide rate
MAX_ACCEPT = 0.95  # no estimate is certain
OVERHEAD_EMA = 0.1  # weight of the newest step in the overhead estimate


class NgramIndex:
    """Where each n-gram of a token list last occurred (the position after it), built as the
    list grows; the suffix now is looked up among earlier occurrences only."""

    def __init__(self, orders: tuple[int, ...] = NGRAM_ORDERS):
        self.orders = orders
        self._last: dict[tuple[int, ...], int] = {}
        self._indexed = 0  # positions p < this have had the n-grams ending before them indexed

    def propose(self, tokens: list[int], max_len: int) -> tuple[list[int], int]:
        """Up to max_len tokens that followed the longest earlier occurrence of the list's suffix,
        and that suffix's length (0: no match)."""
        self._extend(tokens)
        for n in self.orders:
            if len(tokens) > n:
                at = self._last.get(tuple(tokens[-n:]))
                if at is not None:
                    return tokens[at : at + max_len], n
        return [], 0

    def _extend(self, tokens: list[int]) -> None:
        """Index the n-grams whose continuation is known: those ending before the last token."""
        for p in range(max(self._indexed, 1), len(tokens)):
            for n in self.orders:
                if p >= n:
                    self._last[tuple(tokens[p - n : p])] = p
        self._indexed = max(self._indexed, len(tokens))


class StepCosts:
    """Seconds for an engine step of n tokens, from calibration's figures (decode batches and
    prefill chunks are both steps of n tokens), piecewise linear between them, extended past
    the largest at its cost per token."""

    def __init__(self, points: dict[int, float]):
        if len(points) < 2:
            raise ValueError("step costs need two measured sizes at least")
        self.points = sorted(points.items())

    @classmethod
    def from_calibration(cls, cal: dict | None) -> StepCosts | None:
        """None when there is nothing trustworthy to go by (no calibration, or busy CPUs)."""
        if not cal or cal.get("contended"):
            return None
        points = {int(k): float(v) for k, v in cal.get("prefill_s", {}).items()}
        points.update({int(k): float(v) for k, v in cal.get("decode_s", {}).items()})
        return cls(points) if len(points) >= 2 else None

    def seconds(self, n: int) -> float:
        pts = self.points
        if n <= pts[0][0]:
            return pts[0][1]
        for (n0, t0), (n1, t1) in zip(pts, pts[1:], strict=False):
            if n <= n1:
                return t0 + (t1 - t0) * (n - n0) / (n1 - n0)
        n_last, t_last = pts[-1]
        return t_last * n / n_last


@dataclass
class _Record:
    index: NgramIndex = field(default_factory=NgramIndex)
    accepted: float = 0.0  # draft tokens kept
    rejected: float = 0.0  # verifications that ended on a rejected draft


@dataclass
class Draft:
    tokens: list[int]
    order: int  # length of the matched suffix
    accept: float  # estimated chance that each draft token is kept, given the ones before it


class Drafter:
    """Chooses each step's draft tokens and learns how often they are kept."""

    def __init__(self, costs: StepCosts, max_draft: int, uniform: bool, hold_steps: int = 1):
        self.costs = costs
        self.max_draft = max_draft
        # every decode drafts the same number: with a KV stream per slot llama.cpp runs a decode
        # batch as one pass only when every sequence brings as many tokens (split_equal), and on a
        # GPU an even shape is one that can be held (below)
        self.uniform = uniform
        # on a GPU a step's shape is kept for hold_steps steps: ggml's CUDA backend replays a
        # captured CUDA graph only while consecutive steps have the same shape (ggml-cuda.cu,
        # ggml_backend_cuda_graph_compute: a change resets its warm-up), and without one every
        # kernel is launched anew: drafted steps whose size changed every step took 18-38 ms on
        # an H200 where calibration, repeating each shape, measured 4-9 ms
        self.hold_steps = hold_steps
        self._held: tuple[int, int] = (0, 0)  # (decodes, draft tokens each) of the held shape
        self._hold_left = 0
        self.by_order = {n: [PRIOR_ACCEPT[n] * PRIOR_WEIGHT, PRIOR_WEIGHT] for n in PRIOR_ACCEPT}  # kept, tried
        self._records: dict[str, _Record] = {}
        # what a step costs beyond calibration's figure (scheduling, sampling, publishing, a longer
        # context), measured on decode steps without drafts; and what drafted steps of each size
        # took, which replaces the estimate for that size (a step of several tokens per sequence
        # can cost more than calibration's one-token decodes of as many sequences: 4 x 9 on 2 cores)
        self.overhead_s = 0.0
        self.measured: dict[int, float] = {}  # tokens in a drafted step -> seconds (moving average)
        self.num_drafted = 0
        self.num_accepted = 0

    def propose(self, req, room: int) -> Draft:
        """A draft for a decoding request: at most `room` tokens (its reservation and max_tokens)."""
        rec = self._records.setdefault(req.request_id, _Record())
        tokens, order = rec.index.propose(req.all_tokens, min(room, self.max_draft))
        if not tokens:
            return Draft([], 0, 0.0)
        kept, tried = self.by_order[order]
        prior = kept / tried
        trials = rec.accepted + rec.rejected
        accept = (rec.accepted + PRIOR_WEIGHT * prior) / (trials + PRIOR_WEIGHT)
        return Draft(tokens, order, min(accept, MAX_ACCEPT))

    def choose(self, drafts: list[Draft], num_other_tokens: int, room: int) -> list[int]:
        """How many of each draft's tokens to verify this step, at most room in all: the most
        expected tokens per second of step, a step of len(drafts) decodes plus num_other_tokens
        (prefill) costing StepCosts; other tokens count as work done, one each."""
        base = len(drafts) + num_other_tokens
        if self.uniform:
            return self._choose_uniform(drafts, base, room)
        gains = sorted(
            ((d.accept ** (j + 1), i) for i, d in enumerate(drafts) for j in range(len(d.tokens))), reverse=True
        )[: max(room, 0)]
        best_m, best_rate, value = 0, base / self._cost(base), float(base)
        for m, (gain, _) in enumerate(gains, start=1):
            value += gain
            rate = value / self._cost(base + m)
            if rate > best_rate:
                best_m, best_rate = m, rate
        counts = [0] * len(drafts)
        for _, i in gains[:best_m]:  # a draft's gains fall with depth: its first ones come first
            counts[i] += 1
        return counts

    def _choose_uniform(self, drafts: list[Draft], base: int, room: int) -> list[int]:
        cap = room // max(len(drafts), 1)
        if self._hold_left > 0 and self._held[0] == len(drafts) and self._held[1] <= cap:
            self._hold_left -= 1
            return [self._held[1]] * len(drafts)
        best_k, best_rate = 0, base / self._cost(base)
        longest = max((len(d.tokens) for d in drafts), default=0)
        for k in range(1, min(longest if self.hold_steps == 1 else self.max_draft, cap) + 1):
            value = base + sum(sum(d.accept ** (j + 1) for j in range(min(k, len(d.tokens)))) for d in drafts)
            rate = value / self._cost(base + k * len(drafts))
            if rate > best_rate:
                best_k, best_rate = k, rate
        self._held, self._hold_left = (len(drafts), best_k), self.hold_steps - 1
        return [best_k] * len(drafts)

    def _cost(self, num_tokens: int) -> float:
        seen = self.measured.get(num_tokens)
        return seen if seen is not None else self.costs.seconds(num_tokens) + self.overhead_s

    def observe_step(self, num_tokens: int, num_drafted: int, seconds: float) -> None:
        """A decode step (no prefill) of num_tokens, num_drafted of them drafts and pads, took
        seconds, end to end."""
        if num_drafted:
            seen = self.measured.setdefault(num_tokens, seconds)
            self.measured[num_tokens] = seen + OVERHEAD_EMA * (seconds - seen)
        else:
            extra = max(0.0, seconds - self.costs.seconds(num_tokens))
            self.overhead_s += OVERHEAD_EMA * (extra - self.overhead_s)

    def observe(self, req, order: int, num_drafted: int, num_accepted: int) -> None:
        """A verification: num_accepted of num_drafted draft tokens kept (a rejection ends it)."""
        rec = self._records.get(req.request_id)
        rejected = 1.0 if num_accepted < num_drafted else 0.0
        if rec is not None:
            rec.accepted += num_accepted
            rec.rejected += rejected
        if order in self.by_order:
            stats = self.by_order[order]
            stats[0] += num_accepted
            stats[1] += num_accepted + rejected
        self.num_drafted += num_drafted
        self.num_accepted += num_accepted

    def forget(self, req) -> None:
        self._records.pop(req.request_id, None)

    def stats(self) -> dict:
        return {
            "draft_tokens": self.num_drafted,
            "draft_tokens_accepted": self.num_accepted,
            "draft_accept_by_order": {n: round(k / t, 3) for n, (k, t) in self.by_order.items()},
            "draft_step_overhead_ms": round(1000 * self.overhead_s, 2),
        }
