"""Numeric bounds (minimum, maximum, exclusiveMinimum, exclusiveMaximum) as GBNF: llama-cpp-python's
SchemaConverter ignores them, so an integer or number schema with bounds is written here. A grammar
cannot compare, so each range of whole numbers is spelt digit by digit ("1" [2-5] [0-9]), and a
decimal is allowed only strictly between two whole numbers within the bounds."""

from __future__ import annotations

import math

from edge_llm.engine.grammar_error import GrammarError

MAX_DIGITS = 16  # of a whole number's part, as the converter's own integral-part rule
FRACTION = '"." [0-9]{0,14} [1-9]'  # never .0, .50: a decimal lies strictly between two whole numbers


def lower_bound(node: dict) -> tuple[float, bool, str] | None:
    """The tighter lower bound: (value, exclusive, keyword), or None."""
    bounds = [(node[k], k == "exclusiveMinimum", k) for k in ("minimum", "exclusiveMinimum") if k in node]
    return max(bounds, default=None)


def upper_bound(node: dict) -> tuple[float, bool, str] | None:
    bounds = [(node[k], k == "exclusiveMaximum", k) for k in ("maximum", "exclusiveMaximum") if k in node]
    return min(bounds, key=lambda b: (b[0], not b[1]), default=None)


def number_gbnf(node: dict) -> str:
    """GBNF for the numbers of an integer or number schema within its bounds, as JSON writes them:
    whole numbers, and (type number) decimals between whole numbers within the bounds."""
    low, high = lower_bound(node), upper_bound(node)
    lo = None if low is None else (math.floor(low[0]) + 1 if low[1] else math.ceil(low[0]))
    hi = None if high is None else (math.ceil(high[0]) - 1 if high[1] else math.floor(high[0]))
    alternatives = integers_gbnf(lo, hi)
    if node["type"] == "number":
        alternatives += decimals_gbnf(None if low is None else low[0], None if high is None else high[0])
    if not alternatives:
        what = "whole number" if node["type"] == "integer" else "number with whole-number bounds"
        raise GrammarError(f"no {what} lies within the bounds")
    return "(" + " | ".join(alternatives) + ")"


def integers_gbnf(lo: int | None, hi: int | None) -> list[str]:
    """GBNF alternatives for the integers lo..hi (None: unbounded)."""
    negative = []
    if lo is None or lo < 0:  # "-" and the magnitudes
        top = 1 if hi is None or hi >= 0 else -hi
        negative = ['"-" ' + a for a in naturals_gbnf(top, None if lo is None else -lo)]
    positive = [] if hi is not None and hi < 0 else naturals_gbnf(0 if lo is None else max(lo, 0), hi)
    return negative + positive


def decimals_gbnf(low: float | None, high: float | None) -> list[str]:
    """Decimals k.f (0 < f < 1) with k and k+1 within [low, high] (-k and -k-1 for -k.f): they
    never land on a bound, exclusive or not."""
    lowest = None if low is None else math.ceil(low)  # the whole numbers within the bounds
    highest = None if high is None else math.floor(high)
    positive = naturals_gbnf(max(lowest or 0, 0), None if highest is None else highest - 1)
    negative = naturals_gbnf(max(-(highest or 0), 0), None if lowest is None else -lowest - 1)
    return [f"{a} {FRACTION}" for a in positive] + [f'"-" {a} {FRACTION}' for a in negative]


def naturals_gbnf(lo: int, hi: int | None) -> list[str]:
    """GBNF alternatives for the whole numbers lo..hi (hi None: up to MAX_DIGITS digits), without
    leading zeros; each a fixed prefix, one digit range and free digits ("1" [2-5] [0-9])."""
    if hi is None:
        digits = len(str(lo))
        longer = [f"[1-9] [0-9]{{{digits},{MAX_DIGITS - 1}}}"] if digits < MAX_DIGITS else []
        return naturals_gbnf(lo, 10**digits - 1) + longer
    out = []
    while lo <= hi:
        end = _piece_end(lo, hi)
        out.append(" ".join(f'"{a}"' if a == b else f"[{a}-{b}]" for a, b in zip(str(lo), str(end), strict=True)))
        lo = end + 1
    return out


def _piece_end(lo: int, hi: int) -> int:
    """The largest end <= hi with lo..end one piece: lo's last `free` digits 0, end's 9."""
    for free in range(len(str(lo)) - 1, 0, -1):
        unit = 10**free
        base = lo - lo % (10 * unit)
        top = min(9, (hi - base + 1) // unit - 1)  # the largest digit d with base + (d + 1) * unit - 1 <= hi
        if lo % unit == 0 and top >= lo // unit % 10:
            return base + (top + 1) * unit - 1
    return min(hi, lo - lo % 10 + 9)
