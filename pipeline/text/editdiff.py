"""How much editors changed a draft: a word-level edit rate.

The formula, exactly:

    a = before_text.split()   (words of the draft, split on any whitespace)
    b = after_text.split()    (words of the approved version)
    opcodes = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    changed = sum(max(i2 - i1, j2 - j1) for every opcode that is not 'equal')
    edit_rate = min(1.0, changed / len(a))

A replaced word counts once, a deleted or inserted word counts once, so the
rate is the share of the draft's words that did not survive unchanged, capped
at 1.0 when editors added more than the draft held. An empty draft scores 0.0
against an empty result and 1.0 against anything else. Words compare exactly
(case and punctuation matter: "rose" -> "rose," is an edit).

autojunk is off because the heuristic would treat frequent words ("the") as
junk in long articles and inflate the rate.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.core.models import Article


def edit_rate(before_text: str, after_text: str) -> float:
    """Share of the draft's words changed by the edit (0.0 untouched, 1.0 rewritten)."""
    before = before_text.split()
    after = after_text.split()
    if not before:
        return 0.0 if not after else 1.0
    matcher = difflib.SequenceMatcher(None, before, after, autojunk=False)
    changed = sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal")
    return min(1.0, changed / len(before))


def cite(text: str, citations: list[int]) -> str:
    """A paragraph as editors see it: its text, then any [n] markers it does not already carry."""
    text = text.strip()
    missing = [n for n in dict.fromkeys(citations) if f"[{n}]" not in text]
    if not missing:
        return text
    return f"{text} {''.join(f'[{n}]' for n in missing)}".strip()


def article_text(article: Article) -> str:
    """The words editors can change: headline, lead, body and insights, one per line.

    Sources are left out: they are carried from the draft, not edited in the document.
    """
    lines = [article.headline, article.lead]
    lines += [cite(p.text, p.citations) for p in article.body]
    lines += [cite(i.text, i.citations) for i in article.insights]
    return "\n".join(line.strip() for line in lines if line.strip())
