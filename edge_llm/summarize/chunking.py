"""Split text into chunks of at most max_tokens tokens, at paragraph, then sentence, then
word boundaries. Pure: the token counter is passed in. Joining the chunks with "\\n\\n"
(between paragraphs) or " " gives back every word, in order. Lazy inside: a caller's check
sees each chunk as it is made, so a deleted job or a document over its part limit stops at
once, not after the whole split."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

_SENTENCE = re.compile(r"(?<=[.!?])\s+")
MAX_TOKEN_CHARS = 64  # no token spells more characters: a cut "word" is searched within this bound
RUN_SHARE = 8  # a long sentence's words are counted in runs of max_tokens // RUN_SHARE words

# text and its token count. A run of words is counted as it reads in its chunk: after a space
# unless it starts the chunk (BPE tokenizers start a token at a space, so the sum is exact)
Piece = tuple[str, int]


def split(
    text: str, max_tokens: int, count: Callable[[str], int], check: Callable[[list[str]], None] | None = None
) -> list[str]:
    """Linear in the text: every sentence (or run of words of an over-long one) is counted
    once, and a chunk is packed by the sum of its pieces' counts (BPE tokenizers start a
    token at a space, so the sum is the joined count or close to it). Each chunk is then
    counted once for real; one that does not fit after all is cut in two. check(chunks), if
    given, is called with the chunks so far after each one; it raises to stop."""
    if max_tokens < 8:
        raise ValueError("max_tokens must be at least 8")
    chunks: list[str] = []
    for chunk, _ in _pack(_pieces(text, max_tokens, count), max_tokens, count):
        chunks.append(chunk)
        if check is not None:
            check(chunks)
    return chunks


def _pieces(text: str, max_tokens: int, count) -> Iterator[Piece]:
    """Sentences (and, for a sentence too long alone, chunks of its words) that each fit, with
    their token counts."""
    for para in (p.strip() for p in text.split("\n\n")):
        if not para:
            continue
        for sentence in _SENTENCE.split(para):
            n = _count_upto(sentence, max_tokens, count)
            if n <= max_tokens:
                yield sentence, n
            else:
                yield from _pack(_runs(sentence.split(), max_tokens, count), max_tokens, count, cut=_cut)


def _count_upto(text: str, max_tokens: int, count) -> int:
    """The count, or max_tokens + 1 for a text too long to fit, not counted (a 5.7 MB
    sentence took 2 s to count whole)."""
    return count(text) if len(text) <= max_tokens * MAX_TOKEN_CHARS else max_tokens + 1


def _runs(words: list[str], max_tokens: int, count, size: int = 0) -> Iterator[Piece]:
    """The words in runs of `size` words that each fit, counted a run at a time (a call per word
    took 28 s for a 5.7 MB sentence). A run over max_tokens comes word by word; a word over it
    is cut by characters."""
    size = size or max(1, max_tokens // RUN_SHARE)
    for start in range(0, len(words), size):
        run = " ".join(words[start : start + size])
        n = _count_upto(" " + run if start else run, max_tokens, count)
        if n <= max_tokens:
            yield run, n
        elif size > 1:
            yield from _runs(words[start : start + size], max_tokens, count, 1)
        else:
            yield from ((part, count(part)) for part in _chars(run, max_tokens, count))


def _pack(pieces: Iterable[Piece], max_tokens: int, count, cut=None) -> Iterator[Piece]:
    """Join counted pieces greedily into chunks whose counts' sum fits. With cut, the piece that
    does not fit gives the chunk the head of its words that does (runs of words are long)."""
    group: list[Piece] = []
    used = 0
    for piece in pieces:
        if group and used + piece[1] > max_tokens:
            if cut is not None:
                head, piece = cut(piece, max_tokens - used, count)
                group += head
            yield from _fit(group, max_tokens, count)
            group, used = [], 0
        group.append(piece)
        used += piece[1]
    if group:
        yield from _fit(group, max_tokens, count)


def _fit(group: list[Piece], max_tokens: int, count) -> list[Piece]:
    """The group as one chunk, counted for real, or cut in two if it does not fit after all."""
    if len(group) == 1:
        return group
    chunk = " ".join(text for text, _ in group)
    n = count(chunk)
    if n <= max_tokens:
        return [(chunk, n)]
    half = len(group) // 2
    return _fit(group[:half], max_tokens, count) + _fit(group[half:], max_tokens, count)


def _cut(piece: Piece, room: int, count) -> tuple[list[Piece], Piece]:
    """The longest head of the piece's words that counts at most room tokens (as a list of 0
    or 1 piece), and the rest; the whole piece does not fit. Searched by halves of what is
    left, each counted once and summed, so a cut costs about one count of the piece."""
    words = piece[0].split()
    lo, hi, n_head = 0, len(words) - 1, 0  # the head is words[:lo], of n_head tokens, and ends by hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        n = count(" " + " ".join(words[lo:mid]))
        if n_head + n <= room:
            lo, n_head = mid, n_head + n
        else:
            hi = mid - 1
    rest = " ".join(words[lo:])  # it starts the next chunk: counted without the space
    return ([(" ".join(words[:lo]), n_head)] if lo else []), (rest, count(rest))


def _chars(word: str, max_tokens: int, count) -> Iterator[str]:
    start, guess = 0, max_tokens  # characters in a cut: the last cut's, at least one per token
    while start < len(word):
        # the longest prefix that fits, searched up to twice the last cut's length (every cut
        # searched among all prefixes that could fit took 18 s per MB of base64)
        limit = min(len(word), start + max_tokens * MAX_TOKEN_CHARS)
        lo, hi = start + 1, min(limit, start + 2 * guess)
        while hi < limit and count(word[start:hi]) <= max_tokens:
            lo, hi = hi, min(limit, start + 2 * (hi - start))
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count(word[start:mid]) <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        yield word[start:lo]
        start, guess = lo, lo - start
