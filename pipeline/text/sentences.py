"""Plain-text utilities shared by the pipeline: sentence splitting with exact
character offsets, normalisation for matching, and overlapping sentence windows.

No model and no third-party NLP: the rules here must run anywhere, fast, and
give the same answer every time. Offsets always point into the caller's
original string, so a span found here can be quoted back verbatim.
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple, Sequence


class Sentence(NamedTuple):
    start: int
    end: int
    text: str


class Window(NamedTuple):
    """A run of consecutive sentences: `text` is the verbatim slice start..end."""

    start: int
    end: int
    text: str
    first: int  # index of the first sentence in the window
    last: int   # index of the last sentence (inclusive)


# Abbreviations whose period never ends a sentence (a name or number follows).
_TITLES = {
    "mr", "mrs", "ms", "dr", "prof", "sen", "rep", "gov", "gen", "col", "lt", "sgt",
    "capt", "cmdr", "adm", "rev", "hon", "rt", "st", "mt", "ft", "fr", "pres",
    "no", "nos", "vol", "fig", "art", "sec", "ch", "pp", "p", "vs", "v", "cf",
    "approx", "est", "dept", "univ", "ave", "blvd", "rd",
    "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
}
# Abbreviations that can end a sentence: split after them only when the next
# word is a typical sentence opener ("... in the U.S. The plan ...").
_ENDABLE = {"inc", "ltd", "co", "corp", "jr", "sr", "plc", "llc", "bros", "etc", "al", "u.s", "u.k", "u.n", "e.u", "d.c"}
_MULTI_DOT = {"e.g", "i.e", "a.m", "p.m", "u.s", "u.k", "u.n", "e.u", "d.c", "n.y", "l.a", "s.a", "n.v", "a.g"}
_SENTENCE_OPENERS = {
    "the", "a", "an", "he", "she", "it", "they", "we", "i", "you", "this", "that", "these",
    "those", "there", "his", "her", "its", "their", "our", "in", "on", "at", "but", "and",
    "as", "for", "if", "when", "while", "after", "before", "since", "however", "meanwhile",
    "still", "yet", "so", "also", "some", "many", "most", "all", "no", "not", "what", "who",
    "how", "why", "where", "one", "two", "three", "last", "earlier", "later", "according",
}

# A line ending in one of these words is wrapped mid-sentence, not a headline.
DANGLING_WORDS = frozenset({
    "a", "an", "the", "of", "on", "in", "at", "to", "for", "with", "by", "from", "and", "or",
    "but", "that", "as", "is", "was", "are", "were", "his", "her", "their", "its", "our",
})

_CLOSERS = "\"'”’»)]}"
_OPENERS = "\"'“‘«([{"
_TERMINAL = re.compile(r"[.!?…]+")


def _word_before(text: str, dot: int) -> str:
    """The token (letters and inner dots) that ends just before position `dot`."""
    i = dot
    while i > 0 and (text[i - 1].isalnum() or text[i - 1] == "."):
        i -= 1
    return text[i:dot]


def _next_word(text: str, pos: int) -> str:
    m = re.match(r"\s*[" + re.escape(_OPENERS) + r"]*([\w'’.-]*)", text[pos:])
    return m.group(1) if m else ""


def _is_break(text: str, term_start: int, term_end: int) -> bool:
    """Decide whether the terminator run text[term_start:term_end] ends a sentence."""
    run = text[term_start:term_end]
    after = term_end
    while after < len(text) and text[after] in _CLOSERS:
        after += 1
    if after < len(text) and not text[after].isspace():
        return False  # "1.5", "U.S.-led", "example.com"
    nxt = _next_word(text, after)
    if after >= len(text) or not nxt:
        return True
    first = nxt[0]
    if first.islower():
        return False  # '"Is it?" he asked.' / "e.g. the"
    if run != ".":
        return True  # "!", "?", "..." followed by a capital or digit
    word = _word_before(text, term_start)
    low = word.lower()
    if not word:
        return True
    if low in _TITLES:
        return False
    if len(word) == 1 and word.isupper():
        return False  # an initial: "Geoffrey B. Berman"
    if low in _MULTI_DOT or low in _ENDABLE or ("." in word and len(word) <= 5):
        return nxt.lower().strip(".") in _SENTENCE_OPENERS
    return True


def split_sentences(text: str) -> list[Sentence]:
    """Split text into sentences whose offsets slice the original string exactly.

    Paragraph breaks (a blank line) always end a sentence. A single newline ends
    one unless the line looks hard-wrapped (it ends mid-sentence and the next line
    starts in lower case). Abbreviations, initials, decimals and quotes that close
    after the full stop are handled by `_is_break`.
    """
    if not isinstance(text, str):
        raise TypeError(f"split_sentences expects str, got {type(text).__name__}")
    cuts: list[int] = []
    for m in re.finditer(r"\n[ \t\r\f\v]*\n|\n", text):
        if m.group(0) != "\n":
            cuts.append(m.start())
            continue
        prev = text[: m.start()].rstrip()
        following = text[m.end():].lstrip(" \t")
        last_word = re.findall(r"[\w,]+$", prev)
        hard_wrapped = bool(prev) and prev[-1] not in ".!?:;\"”’)" and (
            following[:1].islower()
            or prev.endswith(",")
            or (bool(last_word) and last_word[0].lower() in DANGLING_WORDS)
        )
        if not hard_wrapped:
            cuts.append(m.start())
    for m in _TERMINAL.finditer(text):
        if _is_break(text, m.start(), m.end()):
            end = m.end()
            while end < len(text) and text[end] in _CLOSERS:
                end += 1
            cuts.append(end)
    cuts = sorted(set(cuts))

    sentences: list[Sentence] = []
    start = 0
    for cut in cuts + [len(text)]:
        if cut <= start:
            continue
        s, e = start, cut
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s:
            sentences.append(Sentence(s, e, text[s:e]))
        start = cut
    return sentences


_QUOTE_MAP = {
    **{c: "'" for c in "‘’‚‛′`´"},
    **{c: '"' for c in "“”„‟″«»"},
    **{c: "-" for c in "‐‑‒–—―−"},
}
_QUOTE_TABLE = str.maketrans(_QUOTE_MAP)


def normalize_for_match(s: str) -> str:
    """NFKC, one kind of quote and dash, no control characters, single spaces.

    Case is kept: callers that want case-insensitive matching fold it themselves.
    """
    s = unicodedata.normalize("NFKC", s).translate(_QUOTE_TABLE)
    s = "".join(
        " " if (unicodedata.category(c) in ("Cc", "Zl", "Zp") or c.isspace())
        else "" if unicodedata.category(c) == "Cf"
        else c
        for c in s
    )
    return re.sub(r" {2,}", " ", s).strip()


def windows(
    sentences: Sequence[Sentence],
    size: int = 3,
    stride: int = 1,
    text: str | None = None,
) -> list[Window]:
    """Overlapping windows of `size` consecutive sentences, every `stride` sentences.

    With the original `text`, a window's text is the verbatim slice (so it can be
    quoted as evidence); without it, the sentences are joined with a space. The
    last window is aligned to the end so no trailing sentence is left out.
    """
    if size < 1 or stride < 1:
        raise ValueError(f"windows needs size >= 1 and stride >= 1, got size={size} stride={stride}")
    n = len(sentences)
    if n == 0:
        return []
    starts = list(range(0, max(n - size, 0) + 1, stride))
    if starts[-1] + size < n:
        starts.append(n - size)
    out: list[Window] = []
    for i in starts:
        j = min(i + size, n) - 1
        a, b = sentences[i].start, sentences[j].end
        body = text[a:b] if text is not None else " ".join(s.text for s in sentences[i : j + 1])
        out.append(Window(a, b, body, i, j))
    return out


def first_sentence(text: str, words: int = 30) -> str:
    """The opening sentence, at most `words` words."""
    sentences = split_sentences(text)
    sentence = sentences[0].text if sentences else text
    return " ".join(sentence.split()[:words])


def own_summary(item) -> str:
    """An item's one line in its own words: the feed's summary, else the page's, else the headline, cut to its
    opening sentence. The offline classifier's summary, and what clustering embeds whichever model classified."""
    return first_sentence(item.summary or item.text or item.title)
