"""Editors' corrections, and the house rules learned from the ones that recur.

`sync` reads what editors wrote in a published document (a reply to a
fact-check comment such as "wrong, the figure is $1.2 billion", or a comment of
their own) and records each post once in the `corrections` table, for that
draft; `status` lists them.

A correction that editors make on `newsroom.house_rule_after` different drafts
or more (the same words, ignoring case, spacing and final punctuation) becomes
a house rule: it is appended to the house rules file (`newsroom.house_rules`,
Markdown, one "- " line per rule), which content leads edit like any prompt.
The writer and reviser prompts are given every rule in that file
(pipeline/core/prompts.py). A rule is proposed once: one a content lead
deleted from the file is not added back (the ledger remembers what was
proposed, in `settings`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Protocol

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from pipeline.core import schema
from pipeline.core.ledger import Ledger, utcnow

PROPOSED_KEY = "house_rules.proposed"
LEARNED_HEADING = "## Learned from editors' corrections"
RULE_LINE = re.compile(r"^\s*[-*]\s+(.+?)\s*$")
HEADER = """# House rules

Rules every draft follows, from this newsroom's editors. The writer and the
reviser are given each "- " line of this file, as written. Edit freely: reword,
delete, or add your own lines. Newsdesk appends a rule below when editors made
the same correction on several drafts; it never adds back one you deleted.
"""


class Note(Protocol):
    comment_id: str
    post_id: str
    kind: str
    author: str
    text: str
    quote: str
    claim_key: str
    resolved: bool


def normalized(text: str) -> str:
    """What counts as 'the same correction': case, spacing and closing punctuation aside."""
    return re.sub(r"\s+", " ", text).strip().lower().rstrip(".!;: ")


def record_corrections(ledger: Ledger, draft_id: str, doc_id: str, notes: Iterable[Note]) -> int:
    """Store each post not stored yet; a thread resolved since keeps its row, marked resolved. Returns how many were new."""
    added = 0
    now = utcnow()
    table = schema.corrections
    for note in notes:
        key = (table.c.doc_id == doc_id, table.c.comment_id == note.comment_id, table.c.post_id == note.post_id)
        try:
            with ledger.begin() as connection:
                if connection.execute(select(table.c.id).where(*key)).first() is not None:
                    connection.execute(update(table).where(*key).values(resolved=note.resolved))
                    continue
                connection.execute(insert(table).values(
                    draft_id=draft_id, doc_id=doc_id, comment_id=note.comment_id, post_id=note.post_id, kind=note.kind,
                    author=note.author[:300], text=note.text[:4000], quote=note.quote[:2000],
                    claim_key=note.claim_key or None, resolved=note.resolved, created=now,
                ))
                added += 1
        except IntegrityError:   # another worker stored the same post a moment ago
            continue
    return added


def recent_corrections(ledger: Ledger, limit: int = 10) -> list[Any]:
    with ledger.engine.connect() as connection:
        return connection.execute(
            select(schema.corrections).order_by(schema.corrections.c.created.desc(), schema.corrections.c.id.desc()).limit(limit)
        ).all()


def read_house_rules(path: Path | None) -> list[str]:
    """Every "- " line of the file, in order; none when there is no file."""
    if path is None or not path.is_file():
        return []
    return [m.group(1) for line in path.read_text(encoding="utf-8").splitlines() if (m := RULE_LINE.match(line))]


def recurring(ledger: Ledger, min_drafts: int) -> list[tuple[str, int, datetime]]:
    """(correction as first written, drafts it was made on, last time) for those made on min_drafts drafts or more."""
    drafts: dict[str, set[str]] = defaultdict(set)
    first: dict[str, str] = {}
    last: dict[str, datetime] = {}
    with ledger.engine.connect() as connection:
        rows = connection.execute(
            select(schema.corrections.c.text, schema.corrections.c.draft_id, schema.corrections.c.created)
            .order_by(schema.corrections.c.created, schema.corrections.c.id)
        ).all()
    for text, draft_id, created in rows:
        key = normalized(text)
        if not key:
            continue
        drafts[key].add(draft_id)
        first.setdefault(key, " ".join(text.split()))
        last[key] = created
    return [(first[k], len(d), last[k]) for k, d in drafts.items() if len(d) >= min_drafts]


def learn_house_rules(ledger: Ledger, path: Path, min_drafts: int) -> list[str]:
    """Append recurring corrections not proposed before to the house rules file; returns the rules added."""
    with ledger.engine.connect() as connection:
        stored = connection.execute(select(schema.settings.c.value).where(schema.settings.c.key == PROPOSED_KEY)).scalar()
    proposed = set(stored or [])
    present = {normalized(rule) for rule in read_house_rules(path)}
    new = [text for text, _count, _last in recurring(ledger, min_drafts)
           if normalized(text) not in proposed and normalized(text) not in present]
    if not new:
        return []
    text = path.read_text(encoding="utf-8") if path.is_file() else HEADER
    if LEARNED_HEADING not in text:
        text = text.rstrip("\n") + f"\n\n{LEARNED_HEADING}\n\n"
    text = text.rstrip("\n") + "\n" + "".join(f"- {rule}\n" for rule in new)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)   # content leads may have the file open: never leave it half written
    proposed |= {normalized(rule) for rule in new}
    with ledger.begin() as connection:
        values = dict(value=sorted(proposed), updated=utcnow())
        if not connection.execute(update(schema.settings).where(schema.settings.c.key == PROPOSED_KEY).values(**values)).rowcount:
            connection.execute(insert(schema.settings).values(key=PROPOSED_KEY, **values))
    return new


__all__ = ["learn_house_rules", "normalized", "read_house_rules", "record_corrections", "recent_corrections", "recurring"]
