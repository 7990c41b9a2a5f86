"""How much background work rides along while a visitor's stream decodes, by measurement.

On a small device one step costs roughly the sum of its sequences' work: on 2 CPU cores a
visitor's token took 10 ms alone and 42 ms beside seven summary parts decoding over 3,000-token
contexts (the stream fell to 0.25x its idle rate). Background steps are therefore shared out
in time: a step that decodes the visitor carries background work only while the visitor's
steps have, on average, cost no more than `slowdown` times the visitor's step alone. That
step alone is measured (steps without background, and a probe now and then when background
always rides along), so the rule is the same on a Jetson, a GPU or 2 CPU cores: where
background work is cheap beside a decode (a GPU), it rides along in nearly every step."""

from __future__ import annotations

import time
from collections import deque
from statistics import median

from edge_llm.calibration import SHARE_SLOWDOWN


class BackgroundShare:
    ALPHA = 0.2  # weight of the newest step in the moving average of a background prompt token's cost
    SOLO_WINDOW = 16  # a visitor-alone step is the mean of the last this many alone steps, ...
    SOLO_CLIP = 4.0  # ... each counted at most this many times their median (one preempted step is not it)
    SOLO_FIRST = 3  # alone steps measured before background rides beside a visitor (a median of 3 holds one off)
    PROBE_EVERY = 32  # at most this many steps with background before one without (to measure)
    # A visitor's steps alone right after a step of another shape (background beside it, or alone)
    # are not its steps alone: on an H100 the first two after a shared step took 3.5 and 3.2 ms
    # against 1.9 (the device's graphs made anew). They are charged as any step, but not measured
    # as the visitor alone: counted so, they raised that measure ~15% and with it what shared steps
    # may cost (the stream ran at 0.47-0.59 of idle at 1.5, session 22). One no slower than the
    # measure is counted still: a measure too high lets background ride in nearly every step, and
    # would then hardly ever see three steps alone in a row to come down. A probe is that much longer.
    AFTER_OTHER = 2
    CREDIT_STEPS = 8.0  # unspent allowance kept, in visitor-alone steps: the longest a shared step may be
    MIN_PREFILL = 16  # background prefill rides in chunks of at least this many tokens (a first one measures)
    # ... or of fewer, down to this many, where MIN_PREFILL tokens cost more than the credit kept
    FLOOR_PREFILL = 4
    # At slowdown 1.0 background work waits while visitors decode, but not for ever: once it has
    # had work beside decoding visitors for MAX_HOLD_S with no FREE_S between (API clients streaming
    # one after another; a kiosk visitor reads each answer, and the job has the cores meanwhile),
    # it rides along at WAITED_SLOWDOWN until such a pause comes: a summary would otherwise stall
    # for as long as the chat load lasts
    MAX_HOLD_S = 10.0
    FREE_S = 1.0
    WAITED_SLOWDOWN = SHARE_SLOWDOWN  # as where the plan lets background ride along

    def __init__(self, slowdown: float):
        if not slowdown >= 1.0:  # NaN too; 1.0 itself: background never rides beside a visitor
            raise ValueError(f"slowdown must be at least 1.0, not {slowdown}")
        self.slowdown = slowdown
        self.solo_s: dict[int, float] = {}  # seconds of a step decoding n interactive sequences alone
        self._solo_seen: dict[int, deque[float]] = {}  # the last such steps, whose clipped mean solo_s is
        self.credit_s = 0.0  # time the visitor's steps may still lose to background work
        self.num_shared = 0  # steps that carried background work beside a visitor's decode
        self.num_held = 0  # steps that held background work back for a visitor
        self.prefill_token_s: float | None = None  # what a background prompt token adds to a shared step
        self._since_probe = 0
        self._alone_run = self.AFTER_OTHER  # the visitors' steps alone since a step of another shape (none yet)
        self._beside_since = float("inf")  # background has had work beside visitors since (monotonic) ...
        self._last_beside = float("-inf")  # ... and last so, no FREE_S between
        self.clock = time.monotonic  # a test steps its own

    def allows_background(self, num_decoding: int, wants_prefill: bool = False) -> bool:
        """May this step, decoding num_decoding interactive sequences, carry background work?
        With background prompts to prefill, credit is saved up for a chunk worth its step (else
        background decodes would spend each bit of credit as it came, and prompts would starve)."""
        if num_decoding == 0:
            return True
        slowdown = self.slowdown_now()
        if slowdown == float("inf"):
            return True
        if slowdown == 1.0:  # waits: a visitor's step a hair faster than its average is no credit
            return False
        if len(self._solo_seen.get(num_decoding, ())) < self.SOLO_FIRST or self._since_probe >= self.PROBE_EVERY:
            return False  # measure the visitor's step alone first
        if wants_prefill and self.prefill_token_s is not None:
            return self.credit_s >= self._chunk_credit(num_decoding)
        return self.credit_s > 0

    def beside(self) -> None:
        """This step decodes or prefills visitors, and background work is running or waiting (it
        is held back or rides along): the scheduler's call, before allows_background."""
        now = self.clock()
        if now - self._last_beside >= self.FREE_S:  # a pause: background had the cores, or no work
            self._beside_since = now
        self._last_beside = now

    def slowdown_now(self) -> float:
        """slowdown, or WAITED_SLOWDOWN where background has waited MAX_HOLD_S at 1.0 (see there)."""
        now = self.clock()
        waited = now - self._beside_since >= self.MAX_HOLD_S and now - self._last_beside < self.FREE_S
        return self.WAITED_SLOWDOWN if self.slowdown == 1.0 and waited else self.slowdown

    def _chunk_credit(self, num_decoding: int) -> float:
        """Credit saved before a chunk rides: its cost, or nearly all the credit that can be kept
        when one chunk costs more, so prompts still move at the visitor's pace rather than never."""
        return min(self._min_chunk(num_decoding) * self.prefill_token_s, self._most_credit(num_decoding))

    def _most_credit(self, num_decoding: int) -> float:
        """Nearly all the credit that may be kept: what one chunk may cost at most."""
        return 0.9 * self.CREDIT_STEPS * self.solo_s[num_decoding]

    def _min_chunk(self, num_decoding: int) -> int:
        """The smallest chunk that rides: MIN_PREFILL tokens, or what nearly all the credit kept pays
        for, when that is fewer (not under FLOOR_PREFILL). On 2 CPU cores a prompt token at a
        2,000-token context cost ~9 ms against an 8.5 ms visitor step, so 16 of them stalled the
        visitor 143 ms where the credit kept was 68 ms: the debt made the chat lumpy (0.47 of its
        idle rate in its slowest chat) and held the background back for dozens of steps after."""
        paid = int(self._most_credit(num_decoding) / self.prefill_token_s)
        return max(self.FLOOR_PREFILL, min(self.MIN_PREFILL, paid))

    def prefill_tokens(self, num_decoding: int) -> int:
        """Background prompt tokens this step may carry: what the credit pays for at the measured
        cost per token, so one shared step never stalls a visitor for a whole prefill chunk."""
        if num_decoding == 0 or self.slowdown == float("inf"):
            return 1 << 30
        if self.prefill_token_s is None:
            return self.MIN_PREFILL
        if self.credit_s <= 0:
            return 0
        least = self._min_chunk(num_decoding) if num_decoding in self.solo_s else self.MIN_PREFILL
        return max(least, int(self.credit_s / self.prefill_token_s))  # the debt is paid back after

    def observe(self, num_decoding: int, had_background: bool, seconds: float, prefill_tokens: int = 0) -> None:
        """A step that decoded num_decoding interactive sequences (and no interactive prefill) ran,
        with prefill_tokens of background prompt in it; num_decoding 0: a step of another kind
        (background alone, a visitor's prompt), which only marks a change of shape."""
        if num_decoding == 0 or had_background:
            self._alone_run = 0
        else:
            self._alone_run += 1
        if num_decoding == 0:
            return
        # what the step's prompt tokens were expected to cost, at the pace known before it
        expected = prefill_tokens * (self.prefill_token_s or 0.0) if had_background else 0.0
        if had_background:
            self._since_probe += 1
            self.num_shared += 1
            self._observe_prefill(num_decoding, seconds, prefill_tokens)
        else:
            # a clipped mean, not a moving average: on a loaded machine one alone step preempted
            # for a second raised the average ~10x, every shared step was then let cost 1.5x that
            # and spent it (its chunk sized to the credit), and only the probes (one in 32 steps)
            # brought it down: five chats in a row streamed at 2-5 tokens/s against 75
            # (kiosk-clear-213, session 17). The mean, so a machine evenly busier counts in full.
            seen = self._solo_seen.setdefault(num_decoding, deque(maxlen=self.SOLO_WINDOW))
            solo = self.solo_s.get(num_decoding)
            clean = self._alone_run > self.AFTER_OTHER
            if clean or (solo is not None and seconds <= solo):
                seen.append(seconds)
                most = self.SOLO_CLIP * median(seen)
                self.solo_s[num_decoding] = sum(min(s, most) for s in seen) / len(seen)
            if clean:  # a probe ends with a step measured clean, not with one let in as no slower
                self._since_probe = 0
        solo = self.solo_s.get(num_decoding)
        if solo is not None:
            cap = self.CREDIT_STEPS * solo
            # the debt one step may leave: the credit that may be kept, or what its prompt tokens
            # were expected to cost where that is more (a 4-token chunk late in a long prompt,
            # paid back in full). The rest of a step preempted by other work on the machine is not
            # the background's to pay back over hundreds of steps, nor is a run of such steps (one
            # alone step in 12 preempted for 0.3 s took it to -3.9 s, ~770 held steps: a review)
            most_debt = max(cap, expected)
            charge = min(seconds - self.slowdown_now() * solo, most_debt)
            self.credit_s = max(min(self.credit_s - charge, cap), min(self.credit_s, -most_debt))

    def _observe_prefill(self, num_decoding: int, seconds: float, tokens: int) -> None:
        solo = self.solo_s.get(num_decoding)
        if solo is None or tokens < self.FLOOR_PREFILL:
            return
        # background decodes in the step counted too: errs short; never 0 (a GPU's shared step can
        # be faster than the visitor's average alone, and the credit is divided by it)
        per_token = max(seconds - solo, 1e-6) / tokens
        old = self.prefill_token_s if self.prefill_token_s is not None else per_token
        self.prefill_token_s = old + self.ALPHA * (per_token - old)

    def held(self) -> None:
        self.num_held += 1

    def to_dict(self) -> dict:
        return {
            "chat_slowdown": self.slowdown if self.slowdown != float("inf") else None,
            "chat_slowdown_now": self.slowdown_now() if self.slowdown != float("inf") else None,
            "visitor_step_ms": {n: round(s * 1000, 2) for n, s in sorted(self.solo_s.items())},
            "background_shared_steps": self.num_shared,
            "background_held_steps": self.num_held,
        }
