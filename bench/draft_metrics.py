"""Editorial defects in one draft, counted: pure functions over an article (or its Markdown) and its research pack.

Issue 13 asks drafts to read like writing, not like stitched source sentences.
These counts say where they do not; each is 0 (or False) for a clean draft.

- `repeated_facts`: sentences that restate a fact an earlier sentence of the
  lead, body or insights already gave: they share a key figure and a name (or
  two figures), or most of their content words.
- `dangling_openings`: the lead, body paragraphs and insights whose first
  sentence leans on a sentence the reader never saw: a pronoun or definite
  reference ("It", "The penalty …"), a connective ("However"), "the judge
  wrote" before any judge, a bare quotation, or a person's surname before
  their full name (`pipeline.text.entities.dangles` plus the surname check). A
  definite description the draft introduced before ("The penalty" after a lead
  about the penalty) is resolved.
- `quote_splits`: a lead, paragraph, insight or headline whose quotation marks
  do not balance, plus every bare quotation (no speaker) that does not follow
  its speaker's attributed quote in the same paragraph.
- `headline_copied`: the headline equals or nearly equals a source's title.
- `full_name_repeated`: a person (one the sources call by surname alone, or
  name with a title or role), given their full name again after the lead or body already did ("U.S. District
  Judge Harriet Coleman ruled …" and, a paragraph later, "U.S. District Judge
  Harriet Coleman said …"): a second reference is the surname.
- `short_name_first`: an organisation called by its short name ("Halvane
  said …") before the draft has given its full name ("Halvane Security").
- `off_story_sentences`: sentences citing only background sources that neither
  mention the story's entities nor are framed as context ("Earlier, …",
  "Separately, …", "Previously, …"); `unframed_background_sentences` counts every
  background-only sentence that is not framed, entities or not.

All functions take an `Article`, a `Draft`, a dict in the `Article` shape, or
the outbox Markdown; the pack is a `ResearchPack` or a list of `SourceDoc`.

    python bench/draft_metrics.py WORKSPACE      # every draft in a workspace's ledger

The last line is the headline: total defects over the drafts measured.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.text.entities import (  # noqa: E402
    FRAMING,
    bare_surnames,
    is_framed,
    dangles,
    key_figures,
    organisation_names,
    person_names,
    quotes_balanced,
    salient_names,
    story_profile,
    titled_people,
    unattributed_quote,
)
from pipeline.text.sentences import split_sentences  # noqa: E402

_MARKER = re.compile(r"\s*\[(\d+(?:\s*,\s*\d+)*)\]")
_STOP = frozenset(
    "a an the and or but if of to in on at by for with from as is are was were be been being it its this that these those "
    "he she they we you i his her their our your has have had do does did not no so than then there here which who whom "
    "what when where why how will would can could should may might must also into over after before about more most said "
    "says say told added its per".split()
)
_TITLE_SEPARATORS = (" | ", " - ", " – ", " — ", " :: ")


@dataclass(frozen=True)
class Part:
    section: str                 # "lead" | "body" | "insight"
    index: int
    text: str                    # citation markers removed
    citations: tuple[int, ...]   # the part's own list plus its inline markers


@dataclass(frozen=True)
class DraftView:
    headline: str
    parts: tuple[Part, ...]


@dataclass(frozen=True)
class Sentence:
    part: Part
    text: str
    citations: tuple[int, ...]   # inline markers in the sentence, else the part's citations
    first: bool                  # opens its part


# --- reading a draft ------------------------------------------------------------------------


def _strip_markers(text: str) -> tuple[str, tuple[int, ...]]:
    found = tuple(int(n) for m in _MARKER.finditer(text) for n in m.group(1).split(","))
    return " ".join(_MARKER.sub("", text).split()), found


def view(draft: Any) -> DraftView:
    """A draft in any of the accepted shapes, as headline plus ordered parts."""
    if isinstance(draft, DraftView):
        return draft
    if isinstance(draft, str):
        return _from_markdown(draft)
    article = getattr(draft, "article", draft)
    if isinstance(article, dict):
        from pipeline.core.models import Article

        article = Article.model_validate(article)
    parts: list[Part] = []
    lead, lead_refs = _strip_markers(article.lead)
    parts.append(Part("lead", 0, lead, lead_refs))
    for i, p in enumerate(article.body):
        text, refs = _strip_markers(p.text)
        parts.append(Part("body", i, text, tuple(dict.fromkeys([*p.citations, *refs]))))
    for i, ins in enumerate(article.insights):
        text, refs = _strip_markers(ins.text)
        parts.append(Part("insight", i, text, tuple(dict.fromkeys([*ins.citations, *refs]))))
    return DraftView(article.headline.strip(), tuple(parts))


def _unescape(text: str) -> str:
    """Markdown text as written: the outbox's highlight marks and backslash escapes removed."""
    text = re.sub(r"(?<!\\)</?mark\b[^>]*(?<!\\)>", "", text)
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", text)


def _from_markdown(text: str) -> DraftView:
    """The outbox Markdown: '# headline', '**lead**', paragraphs ending in [n], '## Insights' bullets."""
    headline, parts, section = "", [], "body"
    body_i = insight_i = 0
    for block in re.split(r"\n\s*\n", text):
        block = block.strip()
        if not block or block.startswith("<!--") or block.startswith("######"):
            continue
        if block.startswith("# "):
            headline = _unescape(block[2:].strip())
            continue
        if block.startswith("## "):
            title = block[3:].strip().lower()
            section = "insight" if title.startswith("insight") else ("stop" if title else section)
            continue
        if section == "stop":
            continue
        if block.startswith("**") and block.endswith("**") and not parts:
            lead, refs = _strip_markers(_unescape(block[2:-2]))
            parts.append(Part("lead", 0, lead, refs))
            continue
        if section == "insight":
            for line in block.splitlines():
                if line.startswith("- "):
                    body, refs = _strip_markers(_unescape(line[2:]))
                    parts.append(Part("insight", insight_i, body, refs))
                    insight_i += 1
            continue
        body, refs = _strip_markers(_unescape(" ".join(block.split())))
        parts.append(Part("body", body_i, body, refs))
        body_i += 1
    return DraftView(headline, tuple(parts))


def quote_sentences(text: str) -> list[str]:
    """Sentences, with a quotation that runs over several sentences kept as one."""
    out: list[str] = []
    for s in split_sentences(text):
        piece = " ".join(s.text.split())
        if out and not quotes_balanced(out[-1]):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return out


def sentences(draft: Any) -> list[Sentence]:
    out: list[Sentence] = []
    for part in view(draft).parts:
        for i, piece in enumerate(quote_sentences(part.text)):
            refs = tuple(int(n) for m in _MARKER.finditer(piece) for n in m.group(1).split(","))
            out.append(Sentence(part, piece, refs or part.citations, i == 0))
    return out


def _sources(pack: Any) -> list:
    if pack is None:
        return []
    return list(getattr(pack, "sources", pack))


def _terms(text: str) -> set[str]:
    out = set()
    for word in re.findall(r"[a-z0-9$%][a-z0-9$%.,'\-]*", text.lower()):
        word = word.strip(".,'-")
        if len(word) > 2 and word not in _STOP:
            out.add(word[:-1] if word.endswith("s") and len(word) > 4 else word)
    return out


def _common_words(draft_text: str, pack: Any) -> set[str]:
    texts = [draft_text, *(s.text for s in _sources(pack)), *(s.title for s in _sources(pack))]
    return {m.group(0) for t in texts for m in re.finditer(r"(?<![A-Za-z0-9\-])[a-z][a-z0-9\-]*", t)}


# --- the metrics ----------------------------------------------------------------------------


def repeated_fact_pairs(draft: Any, pack: Any = None) -> list[tuple[str, str]]:
    """(earlier, later) sentence pairs where the later one restates the earlier one's fact."""
    said = [s for s in sentences(draft)]
    common = _common_words(" ".join(s.text for s in said), pack)
    facts = [(key_figures(s.text), salient_names(_unframed(s.text), common), _terms(_unframed(s.text))) for s in said]
    pairs = []
    for j in range(len(said)):
        for i in range(j):
            if _same_fact(facts[i], facts[j]):
                pairs.append((said[i].text, said[j].text))
                break
    return pairs


def _unframed(text: str) -> str:
    return FRAMING.sub("", text, count=1).strip()


def _same_fact(a, b) -> bool:
    figures_a, names_a, terms_a = a
    figures_b, names_b, terms_b = b
    shared = figures_a & figures_b
    if shared and (names_a & names_b or len(shared) >= 2):
        return True
    if min(len(terms_a), len(terms_b)) >= 4:
        overlap = len(terms_a & terms_b)
        if overlap / min(len(terms_a), len(terms_b)) >= 0.6 or overlap / len(terms_a | terms_b) >= 0.5:
            return True
    return False


def repeated_facts(draft: Any, pack: Any = None) -> int:
    return len(repeated_fact_pairs(draft, pack))


def dangling_opening_texts(draft: Any, pack: Any = None) -> list[str]:
    """First sentences of the lead, body paragraphs and insights that lean on something the reader never saw."""
    people = person_names([s.text for s in _sources(pack)]) if pack is not None else {}
    return [s.text for s, introduced in _in_reading_order(draft) if s.first
            and (dangles(_unframed(s.text), introduced) or bare_surnames(_unframed(s.text), people, introduced))]


def _in_reading_order(draft: Any) -> Iterable[tuple[Sentence, str]]:
    """Each sentence with everything the reader has seen before it."""
    introduced = ""
    for s in sentences(draft):
        yield s, introduced
        introduced += " " + s.text


def dangling_openings(draft: Any, pack: Any = None) -> int:
    return len(dangling_opening_texts(draft, pack))


def full_name_repeated_texts(draft: Any, pack: Any = None) -> list[str]:
    """Sentences naming in full again a person the draft has already named in full (see `full_name_repeated`)."""
    texts = [s.text for s in _sources(pack)]
    people = {**titled_people(texts), **person_names(texts)} if pack is not None else {}
    return [s.text for s, introduced in _in_reading_order(draft)
            if any(name in introduced and name in s.text for name in people.values())]


def full_name_repeated(draft: Any, pack: Any = None) -> int:
    return len(full_name_repeated_texts(draft, pack))


def short_name_first_texts(draft: Any, pack: Any = None) -> list[str]:
    """Sentences calling an organisation by its short name before the draft named it in full (`short_name_first`)."""
    organisations = organisation_names([s.text for s in _sources(pack)]) if pack is not None else {}

    def short_first(text: str, introduced: str) -> bool:
        for short, full in organisations.items():
            bare = re.search(rf"(?<![\w-]){re.escape(short)}(?![\w-])(?!\s+{re.escape(full.split()[-1])})", text)
            if bare and full not in introduced and full not in text[: bare.start()]:
                return True
        return False

    return [s.text for s, introduced in _in_reading_order(draft) if short_first(s.text, introduced)]


def short_name_first(draft: Any, pack: Any = None) -> int:
    return len(short_name_first_texts(draft, pack))


def quote_split_texts(draft: Any) -> list[str]:
    d = view(draft)
    out = [d.headline] if not quotes_balanced(d.headline) else []
    for part in d.parts:
        if not quotes_balanced(part.text):
            out.append(part.text)
            continue
        pieces = quote_sentences(part.text)
        for k, piece in enumerate(pieces):
            if unattributed_quote(piece):
                before = pieces[k - 1] if k else ""
                if not ('"' in before or "“" in before) or unattributed_quote(before) or not before:
                    out.append(piece)
    return out


def quote_splits(draft: Any) -> int:
    return len(quote_split_texts(draft))


def _bare_title(title: str) -> str:
    title = " ".join(title.split())
    for separator in _TITLE_SEPARATORS:
        head, _, tail = title.rpartition(separator)
        if head and len(tail.split()) <= 3:
            return head
    return title


def _title_tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9$%.]+", text.lower().replace("’", "'"))


def headline_copied(draft: Any, pack: Any) -> bool:
    """The headline is a source title, or nearly (token sequences 80% alike)."""
    headline = _title_tokens(view(draft).headline)
    if not headline:
        return False
    for source in _sources(pack):
        for title in {source.title, _bare_title(source.title)}:
            tokens = _title_tokens(title)
            if tokens and (tokens == headline or SequenceMatcher(None, headline, tokens, autojunk=False).ratio() >= 0.8):
                return True
    return False


def _background_only(s: Sentence, pack: Any) -> bool:
    roles = {src.n: src.role for src in _sources(pack)}
    cited = [n for n in s.citations if n in roles]
    return bool(cited) and all(roles[n] == "background" for n in cited)


def off_story_sentence_texts(draft: Any, pack: Any) -> list[str]:
    story = [s for s in _sources(pack) if s.role == "story"]
    _, own, common = story_profile([s.title for s in story], [s.text for s in story])
    out = []
    for s in sentences(draft):
        if s.part.section == "lead" or not _background_only(s, pack) or is_framed(s.text):
            continue
        if not (salient_names(s.text, common) & own):
            out.append(s.text)
    return out


def off_story_sentences(draft: Any, pack: Any) -> int:
    return len(off_story_sentence_texts(draft, pack))


def unframed_background_sentences(draft: Any, pack: Any) -> int:
    return sum(1 for s in sentences(draft) if s.part.section != "lead" and _background_only(s, pack) and not is_framed(s.text))


DRAFT_KEYS = ("repeated_facts", "dangling_openings", "quote_splits", "headline_copied", "off_story_sentences",
              "unframed_background", "full_name_repeated", "short_name_first")


def draft_metrics(draft: Any, pack: Any) -> dict[str, int | bool]:
    return {
        "repeated_facts": repeated_facts(draft, pack),
        "dangling_openings": dangling_openings(draft, pack),
        "quote_splits": quote_splits(draft),
        "headline_copied": headline_copied(draft, pack),
        "off_story_sentences": off_story_sentences(draft, pack),
        "unframed_background": unframed_background_sentences(draft, pack),
        "full_name_repeated": full_name_repeated(draft, pack),
        "short_name_first": short_name_first(draft, pack),
    }


def explain(draft: Any, pack: Any) -> dict[str, list]:
    """The offending texts behind each count, for reading rather than counting."""
    return {
        "repeated_facts": repeated_fact_pairs(draft, pack),
        "dangling_openings": dangling_opening_texts(draft, pack),
        "quote_splits": quote_split_texts(draft),
        "headline_copied": [view(draft).headline] if headline_copied(draft, pack) else [],
        "off_story_sentences": off_story_sentence_texts(draft, pack),
        "full_name_repeated": full_name_repeated_texts(draft, pack),
        "short_name_first": short_name_first_texts(draft, pack),
    }


# --- command line ---------------------------------------------------------------------------


def _workspace_drafts(workspace: Path) -> Iterable[tuple[str, Any, Any]]:
    from sqlalchemy import select

    from pipeline.core import schema
    from pipeline.core.config import load_config
    from pipeline.core.ledger import Ledger
    from pipeline.core.models import Article, ResearchPack

    config = load_config(workspace / "config.toml" if workspace.is_dir() else workspace)
    ledger = Ledger(config.ledger_url)
    with ledger.engine.connect() as connection:
        rows = connection.execute(select(schema.drafts).order_by(schema.drafts.c.story_key)).all()
    for row in rows:
        yield row.story_key, Article.model_validate(row.article), ResearchPack.model_validate(row.research)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workspace", type=Path, help="a workspace folder (with config.toml) or a config file")
    parser.add_argument("--verbose", action="store_true", help="print the offending sentences")
    args = parser.parse_args(argv)
    totals: dict[str, int] = {}
    keys = list(DRAFT_KEYS)
    print("story         " + " ".join(f"{k[:12]:>12}" for k in keys) + "  headline")
    for key, article, pack in _workspace_drafts(args.workspace):
        m = draft_metrics(article, pack)
        for k in keys:
            totals[k] = totals.get(k, 0) + int(m[k])
        print(f"{key[:12]:<13} " + " ".join(f"{int(m[k]):>12}" for k in keys) + f"  {article.headline}")
        if args.verbose:
            for k, texts in explain(article, pack).items():
                for t in texts:
                    print(f"    {k}: {t}")
    print("total         " + " ".join(f"{totals.get(k, 0):>12}" for k in keys))
    print(f"editorial defects: {sum(totals.values())} ({', '.join(f'{k} {v}' for k, v in totals.items())})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
