"""A JSON-schema `pattern` as GBNF, translated here rather than by llama-cpp-python's
SchemaConverter._visit_pattern: that one copies a regex escape such as `\\d` or `\\.` into a GBNF
literal, which llama.cpp's grammar parser refuses. Python's own regex parser reads the pattern;
each character class becomes code-point ranges (ECMAScript's `\\d \\w \\s`, JSON Schema's
dialect), written as a JSON string holds them (quote, backslash and control characters escaped).
Regex syntax a grammar cannot hold (lookaround, backreferences, `\\b`) is a GrammarError."""

from __future__ import annotations

import json
import re

from edge_llm.engine.grammar_error import GrammarError

try:
    from re import _parser as regex_parser  # novermin: Python 3.11+
except ImportError:  # Python 3.10 (JetPack 6.1): the same parser under its old name
    import sre_parse as regex_parser

UNICODE = [(0, 0x10FFFF)]
ASCII = [(0, 0x7F)]
# \d \w \s as ECMAScript (JSON Schema's regex dialect) reads them; Python's take more of Unicode
CATEGORIES = {
    "CATEGORY_DIGIT": [(0x30, 0x39)],
    "CATEGORY_WORD": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    "CATEGORY_SPACE": [(0x09, 0x0D), (0x20, 0x20)],
}
NOT_DOT = [(0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)]  # "." matches none of these in ECMAScript
NOT_RAW = [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C)]  # a JSON string holds these only escaped
JSON_ESCAPES = {0x22: '\\"', 0x5C: "\\\\", 0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
UNSUPPORTED = {
    "AT": "^ and $ are supported at the start and end only; \\b, \\B, \\A and \\Z are not supported",
    "GROUPREF": "backreferences are not supported",
    "GROUPREF_EXISTS": "conditional groups are not supported",
    "ASSERT": "lookahead and lookbehind are not supported",
    "ASSERT_NOT": "lookahead and lookbehind are not supported",
    "ATOMIC_GROUP": "atomic groups are not supported",
    "POSSESSIVE_REPEAT": "possessive quantifiers are not supported",
}


def pattern_gbnf(pattern: str) -> str:
    """GBNF for the text between a JSON string's quotes of a string that matches pattern (^...$):
    its characters, JSON-escaped where JSON needs it. Regex syntax beyond that is a GrammarError
    naming the pattern."""
    try:
        parsed = regex_parser.parse(pattern)
        items = list(parsed)
        if parsed.state.flags & ~regex_parser.SRE_FLAG_UNICODE:
            raise GrammarError("inline flags such as (?i) are not supported")
        if len(items) < 2 or not _is_at(items[0], "AT_BEGINNING") or not _is_at(items[-1], "AT_END"):
            raise GrammarError("it must start with ^ and end with $ (use ^(a|b)$ for alternatives)")
        return _sequence(items[1:-1])
    except (re.error, ValueError, OverflowError, RecursionError) as e:  # ValueError: GrammarError among them
        raise GrammarError(f"pattern '{pattern}': {e}") from None


def _is_at(item: tuple, where: str) -> bool:
    op, av = item
    return op.name == "AT" and av.name == where


def _sequence(items) -> str:
    """A regex sequence as GBNF, its literal characters in one quoted string."""
    parts, text = [], ""
    for op, av in items:
        if op.name == "LITERAL":
            text += json.dumps(chr(av), ensure_ascii=False)[1:-1]
            continue
        if text:
            parts.append(_quote(text))
            text = ""
        parts.append(_element(op.name, av))
    return " ".join(parts + ([_quote(text)] if text else [])) or '""'


def _element(name: str, av) -> str:
    if name in ("IN", "NOT_LITERAL", "ANY"):
        return _charset(_ranges(name, av))
    if name in ("MAX_REPEAT", "MIN_REPEAT"):  # lazy or greedy: the same strings
        return _repeat(*av)
    if name == "SUBPATTERN":
        _, add_flags, del_flags, sub = av
        if add_flags or del_flags:
            raise GrammarError("inline flags such as (?i:...) are not supported")
        return f"({_sequence(sub)})"
    if name == "BRANCH":
        return "(" + " | ".join(_sequence(alternative) for alternative in av[1]) + ")"
    raise GrammarError(UNSUPPORTED.get(name, f"{name} is not supported"))


def _repeat(lo: int, hi: int, sub) -> str:
    unbounded = hi == regex_parser.MAXREPEAT
    if unbounded and sub.getwidth()[0] == 0:  # llama.cpp would expand it forever
        raise GrammarError("an unbounded repeat of what may be empty, like (a*)*, is not supported")
    if unbounded:
        suffix = {0: "*", 1: "+"}.get(lo, f"{{{lo},}}")
    else:
        suffix = "?" if (lo, hi) == (0, 1) else f"{{{lo}}}" if lo == hi else f"{{{lo},{hi}}}"
    return f"({_sequence(sub)}){suffix}"


def _ranges(name: str, av) -> list[tuple[int, int]]:
    """The code points one regex character matches, as sorted (first, last) ranges."""
    if name == "NOT_LITERAL":
        return _subtract(UNICODE, [(av, av)])
    if name == "ANY":
        return _subtract(UNICODE, NOT_DOT)
    ranges, negate, has_category = [], False, False
    for op, arg in av:
        if op.name == "NEGATE":
            negate = True
        elif op.name in ("LITERAL", "RANGE"):
            ranges.append((arg, arg) if op.name == "LITERAL" else arg)
        elif op.name == "CATEGORY" and arg.name.replace("_NOT", "") in CATEGORIES:
            positive = CATEGORIES[arg.name.replace("_NOT", "")]
            ranges += _subtract(ASCII, positive) if "_NOT_" in arg.name else positive
            has_category = True
        else:
            raise GrammarError(f"{arg} in a character set is not supported")
    # a negated set with \d in it: ASCII only, what Python's and ECMAScript's \d both leave out
    return _subtract(ASCII if has_category else UNICODE, ranges) if negate else _merge(ranges)


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _subtract(ranges: list[tuple[int, int]], cut: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for lo, hi in _merge(ranges):
        for cut_lo, cut_hi in _merge(cut):
            if cut_lo <= hi and cut_hi >= lo:
                if cut_lo > lo:
                    out.append((lo, cut_lo - 1))
                lo = max(lo, cut_hi + 1)
        if lo <= hi:
            out.append((lo, hi))
    return out


def _charset(ranges: list[tuple[int, int]]) -> str:
    """One character of the set as a JSON string holds it: raw where JSON allows, else its escape;
    control characters without a short escape are left out (the output still matches)."""
    raw = _subtract(ranges, NOT_RAW)
    alternatives = [_char_class(raw)] if raw else []
    alternatives += [_quote(esc) for code, esc in JSON_ESCAPES.items() if any(lo <= code <= hi for lo, hi in ranges)]
    if not alternatives:
        raise GrammarError("a character set of control characters only")
    return alternatives[0] if len(alternatives) == 1 else "(" + " | ".join(alternatives) + ")"


def _char_class(ranges: list[tuple[int, int]]) -> str:
    return "[" + "".join(_char(lo) if lo == hi else f"{_char(lo)}-{_char(hi)}" for lo, hi in ranges) + "]"


def _quote(text: str) -> str:
    return '"' + "".join(_char(ord(c)) for c in text) + '"'


def _char(code: int) -> str:
    """A code point in a GBNF literal or class: ASCII letters and digits as they are, else escaped."""
    if chr(code).isascii() and chr(code).isalnum():
        return chr(code)
    return f"\\x{code:02X}" if code < 0x100 else f"\\u{code:04X}" if code < 0x10000 else f"\\U{code:08X}"
