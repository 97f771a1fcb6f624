"""Who a sentence is about: named entities by surface form, and the story's own entities.

Shared by the writer (keep background that concerns the story, frame it) and the
checker (flag a claim whose subject belongs to another event). Capitalised
spans are a plain, fast signal that works offline on any English text; words
that are capitalised for other reasons (sentence openers, weekdays, months,
job titles) are not names.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

_SPAN = re.compile(r"\b(?:[A-Z][A-Za-z0-9&\-]*[A-Za-z0-9]|[A-Z]{2,}[0-9]*)(?:['’]s)?(?:\s+(?:of\s+)?(?:[A-Z][A-Za-z0-9&\-]*[A-Za-z0-9]|[A-Z]{2,}[0-9]*)(?:['’]s)?)*")
_NOT_NAMES = frozenset(
    """
    the a an in on at but and as for if when while after before this that these those it its he she they we i you
    his her their our there then also however meanwhile still yet so some many most all no not what who how why where
    according earlier later separately since by from with under over into about during last next one two three
    monday tuesday wednesday thursday friday saturday sunday today yesterday
    january february march april may june july august september october november december
    utc gmt et pt ceo cfo cto coo chief executive officer chair chairman president analyst analysts director head
    mr mrs ms dr prof inc ltd co corp llc plc
    """.split()
)
# Openers that point back to something named earlier: a sentence that starts this way
# cannot open a paragraph, and cannot stand for a story whose subject it never names.
UNRESOLVED_OPENING = re.compile(
    r"^[\"“'‘]?(he|she|it|they|this|that|these|those|its|his|her|their|there|but|however|also|meanwhile|still|yet|"
    r"instead|then|such|both|neither|the same|the (?:firm|company|exchange|regulator|project|platform|agency|move|deal|"
    r"report|statement|bill|fund|token|network|protocol|attacker|bank|group|penalty|judge|court|team|issuer|coin|"
    r"ruling|decision|vote|bridge|pool|lender|startup|miner|hack|breach|attack|sale|sales|fine|plan|proposal|order))\b",
    re.IGNORECASE,
)
_ANAPHORIC_ATTRIBUTION = re.compile(
    r"\b(?:he|she|they)\s+(?:said|says|added|adds|noted|wrote|told|warned|argued|expects|expected)\b|"
    r"\b(?:said|says|added|wrote|told)\s+(?:he|she|they)\b",
    re.IGNORECASE,
)


def _norm(word: str) -> str:
    word = word.strip().lower()
    for suffix in ("'s", "’s"):
        if word.endswith(suffix):
            word = word[: -len(suffix)]
    return word


def names(text: str) -> set[str]:
    """Lower-cased names in `text`, each multi-word name also by its distinctive words."""
    out: set[str] = set()
    for match in _SPAN.finditer(text):
        words = [_norm(w) for w in match.group(0).split() if w.lower() != "of"]
        words = [w for w in words if w and w not in _NOT_NAMES]
        if not words:
            continue
        if len(words) > 1:
            out.add(" ".join(words))
        out.update(w for w in words if len(w) > 2 and not w.isdigit())
    return out


def story_entities(titles: Iterable[str], texts: Iterable[str]) -> set[str]:
    """The story's own actors: names in its items' headlines, plus names most of its items share."""
    titles, texts = list(titles), list(texts)
    own = set().union(*(names(t) for t in titles)) if titles else set()
    counts = Counter(n for text in texts for n in names(text[:3000]))
    needed = max(2, (len(texts) + 1) // 2)
    own |= {n for n, c in counts.items() if c >= needed}
    return own


def mentions_any(text: str, entities: set[str]) -> bool:
    return bool(names(text) & entities)


def foreign_names(text: str, entities: set[str]) -> set[str]:
    """Names in `text` that are not the story's."""
    return names(text) - entities


def opens_unresolved(text: str) -> bool:
    """The sentence leans on one before it: a pronoun or definite reference opens it, or it is attributed to "she"."""
    text = text.strip()
    return bool(UNRESOLVED_OPENING.match(text) or _ANAPHORIC_ATTRIBUTION.search(text))
