"""Numeric bounds (minimum, maximum, exclusiveMinimum, exclusiveMaximum) as GBNF: llama-cpp-python's
SchemaConverter ignores them, so an integer or number schema with bounds is written here. A grammar
cannot compare, so each range of whole numbers is spelt digit by digit ("1" [2-5] [0-9]), and so is
a fraction at a bound that is not whole (minimum 0.1: "0." then [2-9] and free digits, or "1" and
more digits). Bounds are compared as Python floats (json.loads): an exclusive bound becomes the
next float inward, and a decimal is written only with at most MAX_FRACTION fraction digits, as the
number the bound's repr spells; rounding is monotonic, so float(answer) is within the bounds."""

from __future__ import annotations

import math
from decimal import Decimal

from edge_llm.engine.grammar_error import GrammarError

MAX_DIGITS = 16  # of a whole number's part, as the converter's own integral-part rule
MAX_FRACTION = 15  # digits after the point
FRACTION = f'"." [0-9]{{0,{MAX_FRACTION - 1}}} [1-9]'  # never .0, .50: no trailing zeros


def lower_bound(node: dict) -> tuple[float, bool, str] | None:
    """The tighter lower bound: (value, exclusive, keyword), or None."""
    bounds = [(node[k], k == "exclusiveMinimum", k) for k in ("minimum", "exclusiveMinimum") if k in node]
    return max(bounds, default=None)


def upper_bound(node: dict) -> tuple[float, bool, str] | None:
    bounds = [(node[k], k == "exclusiveMaximum", k) for k in ("maximum", "exclusiveMaximum") if k in node]
    return min(bounds, key=lambda b: (b[0], not b[1]), default=None)


def inclusive_bounds(node: dict) -> tuple[float | None, float | None]:
    """(low, high) as inclusive float bounds: an exclusive bound moves to the next float inward."""
    low, high = lower_bound(node), upper_bound(node)
    lo = None if low is None else (math.nextafter(low[0], math.inf) if low[1] else float(low[0]))
    hi = None if high is None else (math.nextafter(high[0], -math.inf) if high[1] else float(high[0]))
    return lo, hi


def number_gbnf(node: dict) -> str:
    """GBNF for the numbers of an integer or number schema within its bounds, as JSON writes them:
    whole numbers, and (type number) decimals."""
    low, high = inclusive_bounds(node)
    alternatives = integers_gbnf(None if low is None else math.ceil(low), None if high is None else math.floor(high))
    if node["type"] == "number":
        alternatives += decimals_gbnf(low, high)
    if not alternatives:
        what = "whole number" if node["type"] == "integer" else "number"
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
    """Numbers with a fraction within the inclusive bounds [low, high] (None: unbounded): positive
    ones by their magnitude, negative ones as "-" and the magnitude."""
    lo, hi = (None if b is None else Decimal(repr(b)) for b in (low, high))
    positive = [] if hi is not None and hi <= 0 else _fractional_gbnf(max(lo, 0) if lo is not None else Decimal(0), hi)
    if lo is not None and lo >= 0:
        return positive
    negative = _fractional_gbnf(max(-hi, 0) if hi is not None else Decimal(0), None if lo is None else -lo)
    return positive + ['"-" ' + a for a in negative]


def _fractional_gbnf(lo: Decimal, hi: Decimal | None) -> list[str]:
    """Magnitudes k.f (f > 0) within [lo, hi], lo >= 0: whole unit intervals inside the bounds
    with free fractions, the intervals at a bound that is not whole with its digits."""
    if hi is not None and hi < lo:
        return []
    k_lo, k_hi = math.floor(lo), None if hi is None else math.floor(hi)
    lo_digits, hi_digits = _fraction_digits(lo), None if hi is None else _fraction_digits(hi)
    if k_lo == k_hi:  # both bounds in one unit interval
        return _with_whole(k_lo, fraction_gbnf(lo_digits, hi_digits))
    out = _with_whole(k_lo, fraction_gbnf(lo_digits, None))
    middle = naturals_gbnf(k_lo + 1, None if k_hi is None else k_hi - 1) if k_hi is None or k_hi > k_lo + 1 else []
    out += [f"{a} {FRACTION}" for a in middle]
    if k_hi is not None and hi_digits:
        out += _with_whole(k_hi, fraction_gbnf("", hi_digits))
    return out


def _fraction_digits(x: Decimal) -> str:
    """The digits after the point, without trailing zeros: 2.50 -> "5", 3 -> ""."""
    return format(x - math.floor(x), "f").partition(".")[2].rstrip("0")


def _with_whole(k: int, fractions: list[str]) -> list[str]:
    return [f'"{k}" "." {f}' for f in fractions]


def fraction_gbnf(lo: str, hi: str | None) -> list[str]:
    """GBNF alternatives for the digits f after a point (1..MAX_FRACTION, the last not 0) with
    0.lo <= 0.f <= 0.hi (hi None: no upper bound), written digit by digit as the bounds' digits are
    followed, then left (a digit strictly between them, and free digits after it)."""
    out: list[str] = []
    _walk(lo, hi, [], 0, True, hi is not None, out)
    return out


def _walk(lo: str, hi: str | None, prefix: list[str], i: int, tight_lo: bool, tight_hi: bool, out: list[str]) -> None:
    """Alternatives whose first i digits are prefix (equal to lo's while tight_lo, hi's while tight_hi)."""
    tight_lo = tight_lo and i < len(lo)  # past lo's digits: anything more is above lo
    if i == MAX_FRACTION or (tight_hi and i >= len(hi)):  # past hi's digits: any more digit is above it
        return
    a = int(lo[i]) if tight_lo else 0
    b = int(hi[i]) if tight_hi else 9
    free_lo, free_hi = a + tight_lo, b - tight_hi  # digits that leave both bounds behind
    if free_lo <= free_hi:
        _free(prefix, free_lo, free_hi, MAX_FRACTION - i - 1, out)
    for d, next_lo, next_hi in _tight_digits(a, b, tight_lo, tight_hi):
        ends_above_lo = not next_lo or i == len(lo) - 1
        if d != 0 and ends_above_lo:  # f may end here: at or above lo, a prefix of hi or under it
            out.append(" ".join([*prefix, f'"{d}"']))
        _walk(lo, hi, [*prefix, f'"{d}"'], i + 1, next_lo, next_hi, out)


def _tight_digits(a: int, b: int, tight_lo: bool, tight_hi: bool) -> list[tuple[int, bool, bool]]:
    """(digit, still tight to lo, still tight to hi) for the digits on a bound."""
    if tight_lo and tight_hi and a == b:
        return [(a, True, True)]
    return ([(a, True, False)] if tight_lo else []) + ([(b, False, True)] if tight_hi else [])


def _free(prefix: list[str], d1: int, d2: int, rest: int, out: list[str]) -> None:
    """prefix, a digit d1..d2, then up to `rest` free digits ending in 1-9."""
    tail = f"[0-9]{{0,{rest - 1}}} [1-9]" if rest > 1 else "[1-9]" if rest else ""
    if d1 == 0 and tail:  # a 0 cannot end the fraction
        out.append(" ".join([*prefix, '"0"', tail]))
    d1 = max(d1, 1)
    if d1 <= d2:
        digit = f'"{d1}"' if d1 == d2 else f"[{d1}-{d2}]"
        out.append(" ".join([*prefix, digit] + ([f"( {tail} )?"] if tail else [])))


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
