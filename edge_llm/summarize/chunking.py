"""Split text into chunks of at most max_tokens tokens, at paragraph, then sentence, then
word boundaries. Pure: the token counter is passed in. Joining the chunks with "\\n\\n"
(between paragraphs) or " " gives back every word, in order."""

from __future__ import annotations

import re
from collections.abc import Callable

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def split(text: str, max_tokens: int, count: Callable[[str], int]) -> list[str]:
    if max_tokens < 8:
        raise ValueError("max_tokens must be at least 8")
    chunks: list[str] = []
    current: list[str] = []

    def flush():
        if current:
            chunks.append(" ".join(current) if len(current) > 1 else current[0])
            current.clear()

    for piece in _pieces(text, max_tokens, count):
        candidate = (" ".join(current) + " " + piece) if current else piece
        if current and count(candidate) > max_tokens:
            flush()
        current.append(piece)
    flush()
    return chunks


def _pieces(text: str, max_tokens: int, count) -> list[str]:
    """Sentences (and, for a sentence too long alone, runs of words) that each fit."""
    out = []
    for para in (p.strip() for p in text.split("\n\n")):
        if not para:
            continue
        for sentence in _SENTENCE.split(para):
            if count(sentence) <= max_tokens:
                out.append(sentence)
            else:
                out.extend(_words(sentence, max_tokens, count))
    return out


def _words(sentence: str, max_tokens: int, count) -> list[str]:
    out, current = [], []
    for word in sentence.split():
        if current and count(" ".join(current + [word])) > max_tokens:
            out.append(" ".join(current))
            current = []
        if count(word) > max_tokens:  # one "word" longer than a chunk: cut it by characters
            out.extend(_chars(word, max_tokens, count))
            continue
        current.append(word)
    if current:
        out.append(" ".join(current))
    return out


def _chars(word: str, max_tokens: int, count) -> list[str]:
    out, start = [], 0
    while start < len(word):
        lo, hi = start + 1, len(word)
        while lo < hi:  # the longest prefix that fits
            mid = (lo + hi + 1) // 2
            if count(word[start:mid]) <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        out.append(word[start:lo])
        start = lo
    return out
