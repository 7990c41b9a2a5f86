"""Split text into chunks of at most max_tokens tokens, at paragraph, then sentence, then
word boundaries. Pure: the token counter is passed in. Joining the chunks with "\\n\\n"
(between paragraphs) or " " gives back every word, in order."""

from __future__ import annotations

import re
from collections.abc import Callable

_SENTENCE = re.compile(r"(?<=[.!?])\s+")
MAX_TOKEN_CHARS = 64  # no token spells more characters: a cut "word" is searched within this bound


def split(text: str, max_tokens: int, count: Callable[[str], int]) -> list[str]:
    """Linear in the text: every sentence (or word of an over-long one) is counted once, and a
    chunk is packed by the sum of its pieces' counts (BPE tokenizers start a token at a
    space, so the sum is the joined count or close to it). Each chunk is then counted once
    for real; one that does not fit after all is cut in two."""
    if max_tokens < 8:
        raise ValueError("max_tokens must be at least 8")
    return split_pieces(_pieces(text, max_tokens, count), max_tokens, count)


def _fit(group: list[str], max_tokens: int, count) -> list[str]:
    chunk = " ".join(group)
    if len(group) == 1 or count(chunk) <= max_tokens:
        return [chunk]
    half = len(group) // 2
    return _fit(group[:half], max_tokens, count) + _fit(group[half:], max_tokens, count)


def _pieces(text: str, max_tokens: int, count) -> list[tuple[str, int]]:
    """Sentences (and, for a sentence too long alone, runs of words) that each fit, with
    their token counts."""
    out = []
    for para in (p.strip() for p in text.split("\n\n")):
        if not para:
            continue
        for sentence in _SENTENCE.split(para):
            n = count(sentence)
            if n <= max_tokens:
                out.append((sentence, n))
            else:
                out.extend(_words(sentence, max_tokens, count))
    return out


def _words(sentence: str, max_tokens: int, count) -> list[tuple[str, int]]:
    pieces = []
    for word in sentence.split():
        n = count(word)
        if n > max_tokens:  # one "word" longer than a chunk: cut it by characters
            pieces.extend((part, count(part)) for part in _chars(word, max_tokens, count))
        else:
            pieces.append((word, n))
    return [(chunk, count(chunk)) for chunk in split_pieces(pieces, max_tokens, count)]


def split_pieces(pieces: list[tuple[str, int]], max_tokens: int, count) -> list[str]:
    """Join counted pieces greedily into runs that fit (the same rule as split)."""
    groups, current, used = [], [], 0
    for piece, n in pieces:
        if current and used + n > max_tokens:
            groups.append(current)
            current, used = [], 0
        current.append(piece)
        used += n
    if current:
        groups.append(current)
    return [chunk for group in groups for chunk in _fit(group, max_tokens, count)]


def _chars(word: str, max_tokens: int, count) -> list[str]:
    out, start = [], 0
    while start < len(word):
        # the longest prefix that fits, searched among prefixes that can fit (a 1 MB "word"
        # was counted whole at every step of every cut)
        lo, hi = start + 1, min(len(word), start + max_tokens * MAX_TOKEN_CHARS)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count(word[start:mid]) <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        out.append(word[start:lo])
        start = lo
    return out
