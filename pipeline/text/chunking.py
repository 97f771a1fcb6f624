"""Split an article into chunks for the vector store.

Chunks follow paragraph boundaries: short paragraphs are merged up to the
token budget, an over-long paragraph is cut at sentence boundaries, and only a
sentence longer than the whole budget is cut between words. Each chunk is a
verbatim slice of the input (`text[start:end]`), so anything quoted from a
chunk can be found again in the article.

Token counts are a cheap estimate that errs high for English under both
WordPiece (the local embedding model) and the BPE tokenizers of LLMs, so a
chunk of the default 250 estimated tokens fits MiniLM's 256-token window.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from pipeline.text.sentences import split_sentences

# Runs of ASCII letters/digits, or any other single non-space character.
_PIECES = re.compile(r"[A-Za-z0-9_]+|[^\sA-Za-z0-9_]")
_LINES = re.compile(r"[^\n]+")
_WORDS = re.compile(r"\S+")


def estimate_tokens(text: str) -> int:
    """A conservative token count: a run of ASCII letters and digits is one token
    per started 6 characters; every other character (punctuation, accented or
    non-Latin letters, which WordPiece and BPE break into small pieces) is one.

    The count never shrinks when text grows and never grows when two pieces are
    joined, which the splitting below relies on."""
    return sum(1 + (len(p) - 1) // 6 for p in _PIECES.findall(text))


class Chunk(NamedTuple):
    index: int
    text: str        # == source[start:end]
    start: int
    end: int
    tokens: int      # estimate_tokens(text)


class _Span(NamedTuple):
    start: int
    end: int
    tokens: int


def chunk_text(text: str, max_tokens: int = 250) -> list[Chunk]:
    """Chunks of at most `max_tokens` estimated tokens (a single word longer than
    that is cut by characters), in reading order, indexed from 0."""
    if not isinstance(text, str):
        raise TypeError(f"chunk_text expects str, got {type(text).__name__}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    groups = _rebalance_tail(_pack(list(_units(text, max_tokens)), max_tokens), max_tokens)
    chunks = []
    for index, group in enumerate(groups):
        start, end = group[0].start, group[-1].end
        body = text[start:end]
        chunks.append(Chunk(index, body, start, end, estimate_tokens(body)))
    return chunks


def _units(text: str, max_tokens: int):
    """Paragraphs, or the sentences (or word runs) of a paragraph over budget."""
    for line in _LINES.finditer(text):
        span = _trimmed(text, line.start(), line.end())
        if span is None:
            continue
        if span.tokens <= max_tokens:
            yield span
            continue
        paragraph = text[span.start:span.end]
        for sentence in split_sentences(paragraph):
            start, end = span.start + sentence.start, span.start + sentence.end
            tokens = estimate_tokens(sentence.text)
            if tokens <= max_tokens:
                yield _Span(start, end, tokens)
            else:
                yield from _word_runs(text, start, end, max_tokens)


def _trimmed(text: str, start: int, end: int) -> _Span | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start == end:
        return None
    return _Span(start, end, estimate_tokens(text[start:end]))


def _word_runs(text: str, start: int, end: int, max_tokens: int):
    # Token estimates add up across whitespace, so a run's count is the sum of its words'.
    run: list[_Span] = []
    run_tokens = 0
    for match in _WORDS.finditer(text, start, end):
        for word in _cut_word(text, match.start(), match.end(), max_tokens):
            if run and run_tokens + word.tokens > max_tokens:
                yield _Span(run[0].start, run[-1].end, run_tokens)
                run, run_tokens = [], 0
            run.append(word)
            run_tokens += word.tokens
    if run:
        yield _Span(run[0].start, run[-1].end, run_tokens)


def _cut_word(text: str, start: int, end: int, max_tokens: int):
    tokens = estimate_tokens(text[start:end])
    if tokens <= max_tokens:
        yield _Span(start, end, tokens)
        return
    # A URL, hash or run of script without spaces: cut by characters.
    # The estimate never falls as a piece grows, so binary-search the longest
    # piece that fits; one character is at most one token, so max_tokens always fit.
    piece_start = start
    while piece_start < end:
        low, high = min(end, piece_start + max_tokens), end
        while low < high:
            middle = (low + high + 1) // 2
            if estimate_tokens(text[piece_start:middle]) <= max_tokens:
                low = middle
            else:
                high = middle - 1
        yield _Span(piece_start, low, estimate_tokens(text[piece_start:low]))
        piece_start = low


def _pack(units: list[_Span], max_tokens: int) -> list[list[_Span]]:
    groups: list[list[_Span]] = []
    current: list[_Span] = []
    current_tokens = 0
    for unit in units:
        if current and current_tokens + unit.tokens > max_tokens:
            groups.append(current)
            current, current_tokens = [], 0
        current.append(unit)
        current_tokens += unit.tokens
    if current:
        groups.append(current)
    return groups


def _rebalance_tail(groups: list[list[_Span]], max_tokens: int) -> list[list[_Span]]:
    """Greedy packing can leave a scrap at the end; move units back from the
    previous chunk while that makes the two closer in size."""
    if len(groups) < 2:
        return groups
    previous, last = groups[-2], groups[-1]
    size = lambda group: sum(u.tokens for u in group)  # noqa: E731
    while len(previous) > 1:
        moving = previous[-1]
        new_last = size(last) + moving.tokens
        new_previous = size(previous) - moving.tokens
        if new_last > max_tokens or abs(new_previous - new_last) >= abs(size(previous) - size(last)):
            break
        previous = previous[:-1]
        last = [moving, *last]
    return [*groups[:-2], previous, last]
