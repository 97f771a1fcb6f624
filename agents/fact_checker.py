"""Fact-checker agent: every claim of a draft checked against the sources it was written from.

The draft's sections (headline, lead, body paragraphs, insights) are rendered
into one canonical text, joined with a blank line, and split into sentences
that keep their offsets into it. Then:

1. Evidence. The story's sources (title + packed text) are indexed as
   overlapping windows of `factcheck.window_sentences` sentences. A
   sentence's candidate windows are ranked by BM25, exact matches on its
   figures, dates and names, and (when an embedding function is given) cosine
   similarity.
2. One check call per draft (role "judge"). The model gets the numbered
   sentences, each with its candidate windows, and returns per sentence its
   atomic, self-contained claims, each with supported / contradicted /
   unverifiable, a source number and a verbatim quote. The whole draft goes
   in one call when prompt plus reply fit the judge model's window; only a
   draft that does not fit is split, by tokens. Each request carries its own
   strict schema (`reply_schema`): claim ids, source numbers (only those of the
   passages shown) and labels as enums, the number of findings bounded, so even
   a decoder that fills the schema at random cannot leave it. What no schema
   can say gets one repair round (`check_validator`): a statement with a
   figure, date, quotation or name left without a claim, a claim that changes
   its statement's figures or quotations or shares no word with it, a quote
   that is not verbatim in the cited source. A quote that is not verbatim does
   not count. A claim is supported if any finding supports it, and
   contradicted only if one contradicts it and none supports it. Within the
   draft's call cap, a sentence the reply still left out is asked again alone;
   a sentence still without an answer is checked whole by the rules, never
   dropped.
3. Rules always run on every claim (pipeline.text.factrules: number, date, quote,
   entity, negation) plus checks on the sentence (an [n] that is no source, a
   URL that is no source's, "officially confirmed" with no source saying so).
   A rule failure can only make a verdict worse, never better.
4. The story check (`StoryCheck`, rules only): supported by a source is not the
   same as true of this story. A supported claim whose support holds only in
   background sources (earlier coverage research added) or in a story item's
   aside about another event, that names none of the story's actors and is not
   framed as background ("Separately, Arcspan said ..."), becomes `off_story`,
   citing the source it came from. A sentence that opens the lead, a paragraph
   or an insight with a reference no earlier sentence resolves ("It has offered
   ..." after a paragraph about another company, "The penalty ..." before any
   penalty) becomes `unresolved_reference`. Neither label ever makes a verdict
   better; on a worse verdict the reason is listed with its failures.
5. Revise. With a model, flagged claims go to the writer's reviser (at most
   `factcheck.revise_rounds` calls), which changes only the flagged spans.
   Sentences it left alone keep their verdicts; changed sentences are checked
   again by the rules only, so they count as supported only when the rules
   find them in a source. A revision that breaks the template is not kept.
   What still fails stays in the draft, flagged. Each round records how much
   text changed.

So a draft costs one check call plus at most `revise_rounds` reviser calls
when the model answers well; the extra calls above happen only on failures,
and never beyond the draft's cap: `factcheck.max_calls_per_draft` judge and
reviser requests, repair rounds included (default 4: one check call, its
repair, one revision and its repair), whatever the server answers. A call that
does not fit in what is left is not made (`DraftCalls`, `BoundedGateway`);
judge calls after the first leave room for one revision. The report's `method`
is "llm" only when the judge decided every statement it was to decide; when
the rules decided some in its place (cap reached, replies unusable or not the
statement's, model unavailable) it is "rules" and `fallback` says why and for
how many statements. Offline, steps 2 and 5 fall away: every sentence is one
claim checked by the rules with embedding retrieval, and the report says
`method = "rules"`.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Awaitable, Callable, Iterable, Literal, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, create_model
from sqlalchemy import func, select, update

from pipeline.core import schema
from pipeline.core.config import Config, FactCheck
from pipeline.text.entities import capitalised_mid_sentence, distinct_names, lowercase_words, names, standalone_names, story_entities
from pipeline.text.factrules import (
    OfflineVerdict,
    SourceIndex,
    content_terms,
    extract_dates,
    extract_entities,
    extract_numbers,
    extract_quotes,
    framed_as_background,
    numbers_match,
    opening_reference,
    quote_appears_verbatim,
    resolve_reference,
    tokenize,
    verify_offline,
)
from pipeline.core.ledger import Ledger, as_utc, stable_hash, utcnow
from pipeline.core.logs import log_failure
from pipeline.services.llm import InvalidOutput, LLMError, OutputTruncated, Refused, plain_json_schema
from pipeline.text.language import foreign_language
from pipeline.text.safety import instructs_a_model
from pipeline.core.models import (
    Article,
    Claim,
    ClaimVerdict,
    Draft,
    DraftState,
    FactCheckReport,
    PublishMeta,
    ResearchPack,
    Revision,
    RuleFailure,
    SourceDoc,
    Translation,
    StageReport,
    SupportVerdict,
    VERDICTS,
    Verdict,
)
from pipeline.core.priority_thread import PriorityThread
from pipeline.core.prompts import PromptLibrary
from pipeline.text.templates import TemplateSpec, as_article, find_urls, load_templates, normalize_url, validate_article
from pipeline.text.sentences import split_sentences
from pipeline.core.tokens import count_messages, count_tokens
from pipeline.text.metadata import refreshed_meta

log = logging.getLogger("newsdesk.fact_checker")

Section = Literal["headline", "lead", "body", "insights"]
Embed = Callable[[Sequence[str]], np.ndarray]
Reviser = Callable[[Draft, list[ClaimVerdict], ResearchPack, TemplateSpec, Any], Awaitable[Article]]

SECTION_GAP = "\n\n"
# Candidate windows shown to the judge per sentence; the rules look at their own best five.
EVIDENCE_WINDOWS = 3
# Same weights as pipeline.text.factrules ranks with, so judge and rules see similar windows.
EXACT_WEIGHT = 0.3
SEMANTIC_WEIGHT = 0.5
# A judge quote shorter than this many tokens ("the", "Lumen") decides nothing.
MIN_QUOTE_TOKENS = 2

_MARKER = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
_MARKER_WITH_SPACE = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")
# Worst last. A story problem is a supported claim in the wrong place: flagged, but less wrong than a claim no
# source supports.
_SEVERITY: dict[str, float] = {"supported": 0, "unresolved_reference": 1, "wrong_language": 1.5, "off_story": 2, "unverifiable": 3,
                             "contradicted": 4}


class FactCheckError(Exception):
    """A draft that cannot be checked (no sources stored, unreadable row); the message says why."""


# --- the draft as checkable text --------------------------------------------------------------


@dataclass(frozen=True)
class DraftSentence:
    id: str                      # "s1", "s2", ... in reading order
    section: Section
    part: int                    # index of the paragraph / insight within its section (0 for headline, lead)
    start: int                   # span in RenderedDraft.text (citation markers included)
    end: int
    text: str                    # the span without [n] markers, whitespace collapsed: what gets checked
    citations: tuple[int, ...]   # [n] markers in the sentence or right after it


@dataclass(frozen=True)
class RenderedDraft:
    text: str
    sentences: list[DraftSentence]
    declared: dict[tuple[str, int], list[int]]  # (section, part) -> the paragraph's / insight's citations list


def _parts(article: Article) -> list[tuple[Section, int, str, list[int]]]:
    parts: list[tuple[Section, int, str, list[int]]] = [("headline", 0, article.headline, []), ("lead", 0, article.lead, [])]
    parts += [("body", i, p.text, list(p.citations)) for i, p in enumerate(article.body)]
    parts += [("insights", i, x.text, list(x.citations)) for i, x in enumerate(article.insights)]
    return parts


def strip_citation_markers(text: str) -> str:
    """'rose 5% [2].' -> 'rose 5%.': markers go with the space before them, whitespace is collapsed."""
    return " ".join(_MARKER_WITH_SPACE.sub("", text).split())


def render_draft(article: Article) -> RenderedDraft:
    """The article as one text (sections joined by a blank line) and its sentences with offsets into it.

    Markers are blanked (same length) before splitting, so "said [2]. Next"
    splits like "said. Next" and offsets still point into the real text. A
    marker between two sentences belongs to the one before it.
    """
    text = ""
    sentences: list[DraftSentence] = []
    declared: dict[tuple[str, int], list[int]] = {}
    for section, part, raw, cites in _parts(article):
        declared[(section, part)] = cites
        raw = raw.strip()
        if not raw:
            continue
        if text:
            text += SECTION_GAP
        offset = len(text)
        text += raw
        blanked = _MARKER.sub(lambda m: " " * len(m.group(0)), raw)
        spans = split_sentences(blanked)
        for k, s in enumerate(spans):
            region_start = 0 if k == 0 else s.start
            region_end = spans[k + 1].start if k + 1 < len(spans) else len(raw)
            markers = [int(n) for m in _MARKER.finditer(raw, region_start, region_end) for n in m.group(1).split(",")]
            clean = strip_citation_markers(raw[s.start:s.end])
            if not clean:
                continue
            sentences.append(DraftSentence(
                id=f"s{len(sentences) + 1}", section=section, part=part,
                start=offset + s.start, end=offset + s.end, text=clean, citations=tuple(dict.fromkeys(markers)),
            ))
    return RenderedDraft(text=text, sentences=sentences, declared=declared)


# --- evidence ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvidenceSource:
    n: int          # the number the judge and the report cite
    id: str         # the caller's id (str(n) for a draft's sources, the case's id in the benchmark)
    outlet: str
    url: str
    text: str       # what is indexed and what quotes must appear in verbatim
    title: str = ""
    role: Literal["story", "background"] = "story"   # the story's own item, or earlier coverage research added
    language: str = "und"                            # detected at ingest


@dataclass(frozen=True)
class Passage:
    source_n: int
    outlet: str
    start: int
    end: int
    text: str       # verbatim slice of the source
    score: float


def sources_from_pack(sources: Iterable[SourceDoc]) -> list[EvidenceSource]:
    """A draft's numbered sources; the title is part of what the outlet published, so it is evidence too."""
    return [
        EvidenceSource(n=s.n, id=str(s.n), outlet=s.outlet, url=s.url,
                       text=f"{s.title.strip()}{SECTION_GAP}{s.text}" if s.title.strip() else s.text,
                       title=s.title.strip(), role=s.role, language=s.language)
        for s in sorted(sources, key=lambda s: s.n)
    ]


class EvidenceIndex:
    """The story's sources as windows, ranked per claim: lexical + exact figures/dates/names + optional embeddings."""

    def __init__(self, sources: Sequence[EvidenceSource], window_sentences: int = 4, embed: Embed | None = None,
                 language: str = "en") -> None:
        self.sources = list(sources)
        self.language = language   # the newsroom's: every draft sentence must be in it
        # The draft's translated quotations (Article.translations): checked against their originals, not verbatim.
        self.translations: list[Translation] = []
        self._window_sentences = window_sentences
        self.by_n = {s.n: s for s in self.sources}
        self.index = SourceIndex.build([(str(s.n), s.text) for s in self.sources], window_size=window_sentences)
        self._embed = embed
        self._window_vectors: np.ndarray | None = None
        self._text_vectors: dict[str, np.ndarray] = {}
        self._window_facts = [self._facts(w) for w in self.index.windows]
        self._verdicts: dict[tuple[str, bool], OfflineVerdict] = {}
        self._languages: dict[str, str | None] = {}
        self._story_index: SourceIndex | None = None
        self._story_mask: list[bool] = []
        self._story_verdicts: dict[tuple[str, bool], OfflineVerdict] = {}
        self._story_check: StoryCheck | None = None

    def _facts(self, w) -> tuple[list, list, str]:
        doc = self.index.docs[w.source]
        quantities = [q for q in doc.quantities if w.start <= q.start < w.end]
        dates = [d for d in doc.dates if w.start <= d.start < w.end]
        return quantities, dates, doc.text[w.start:w.end]

    # semantic part -------------------------------------------------------------------

    @property
    def semantic(self) -> bool:
        return self._embed is not None

    def _disable_semantic(self, exc: BaseException) -> None:
        log.warning("embedding failed, fact-check retrieval continues without it: %s", exc)
        self._embed = None

    def _vectors(self, texts: list[str]) -> np.ndarray | None:
        try:
            vectors = np.asarray(self._embed(texts), dtype=np.float32)  # type: ignore[misc]
        except Exception as exc:  # an embedding outage degrades retrieval, it does not stop the check
            self._disable_semantic(exc)
            return None
        if vectors.ndim != 2 or len(vectors) != len(texts):
            self._disable_semantic(ValueError(f"got shape {vectors.shape} for {len(texts)} texts"))
            return None
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms == 0, 1, norms)

    def prepare(self, texts: Iterable[str]) -> None:
        """Embed the windows and these claim texts in as few batches as possible."""
        if not self.semantic or not self.index.windows:
            return
        if self._window_vectors is None:
            self._window_vectors = self._vectors([f[2] for f in self._window_facts])
            if self._window_vectors is None:
                return
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_vectors]
        if missing:
            vectors = self._vectors(missing)
            if vectors is not None:
                self._text_vectors.update(zip(missing, vectors))

    def _similarities(self, text: str) -> np.ndarray | None:
        self.prepare([text])
        if not self.semantic or self._window_vectors is None or text not in self._text_vectors:
            return None
        return self._window_vectors @ self._text_vectors[text]

    def semantic_scorer(self, claim: str, texts: list[str]) -> list[float]:
        """For pipeline.text.factrules.verify_offline, which asks for scores of all windows in index order."""
        sims = self._similarities(claim)
        if sims is None or len(sims) != len(texts):
            return [0.0] * len(texts)
        return [float(x) for x in sims]

    # ranking ---------------------------------------------------------------------------

    def rank(self, text: str) -> list[tuple[float, int]]:
        windows = self.index.windows
        if not windows:
            return []
        bm = self.index.bm25(content_terms(tokenize(text)))
        top = max(bm) or 1.0
        scores = [s / top for s in bm]
        dates = extract_dates(text)
        quantities = extract_numbers(text, [(d.start, d.end) for d in dates])
        names = [e.raw for e in extract_entities(text, self.index.is_name)]
        wanted = len(dates) + len(quantities) + len(names)
        if wanted:
            for i, (w_qty, w_dates, w_text) in enumerate(self._window_facts):
                hits = sum(1 for q in quantities if any(numbers_match(q, s) for s in w_qty))
                hits += sum(1 for d in dates if any(_same_date(d, s) for s in w_dates))
                hits += sum(1 for name in names if name in w_text or name.split()[-1] in w_text)
                scores[i] += EXACT_WEIGHT * hits / wanted
        sims = self._similarities(text)
        if sims is not None and len(sims) == len(scores):
            scores = [s + SEMANTIC_WEIGHT * float(x) for s, x in zip(scores, sims)]
        return sorted(((s, i) for i, s in enumerate(scores)), key=lambda p: (-p[0], p[1]))

    def candidates(self, text: str, k: int = EVIDENCE_WINDOWS, anchor: OfflineVerdict | None = None) -> list[Passage]:
        """The k best windows, no two overlapping in the same source (neighbouring windows repeat each other).

        `anchor`, the rules' verdict for the claim, puts the best window holding the
        rules' evidence first: the judge then always sees the passage the rules compared against.
        """
        ranked = self.rank(text)
        n = _source_number(anchor.source_id) if anchor is not None else None
        if n in self.by_n and anchor.evidence_start is not None and anchor.evidence_end is not None:
            src_index = self.sources.index(self.by_n[n])
            holding = next((p for p in ranked if self._holds(p[1], src_index, anchor.evidence_start, anchor.evidence_end)), None)
            if holding is not None:
                ranked = [holding] + [p for p in ranked if p is not holding]
        picked: list[Passage] = []
        for score, i in ranked:
            if len(picked) >= k:
                break
            w = self.index.windows[i]
            src = self.sources[w.source]
            if any(p.source_n == src.n and p.start < w.end and w.start < p.end for p in picked):
                continue
            picked.append(Passage(src.n, src.outlet, w.start, w.end, src.text[w.start:w.end], round(score, 4)))
        return picked

    def _holds(self, window_index: int, source_index: int, start: int, end: int) -> bool:
        w = self.index.windows[window_index]
        return w.source == source_index and w.start <= start and end <= w.end

    def verify(self, text: str) -> OfflineVerdict:
        """The rules' verdict; remembered, since a sentence is verified for its evidence and again as a claim."""
        key = (text, self.semantic)
        if key not in self._verdicts:
            scorer = self.semantic_scorer if self.semantic else None
            self._verdicts[key] = verify_offline(text, self.index, semantic_scorer=scorer)
        return self._verdicts[key]

    def foreign(self, text: str) -> str | None:
        """The language `text` is clearly written in when it is not the newsroom's (pipeline.text.language), else
        None; remembered, since every check of a draft (before the judge, after it, after each revision) asks."""
        if text not in self._languages:
            others = sorted({s.language for s in self.sources})
            self._languages[text] = foreign_language(_MARKER_WITH_SPACE.sub("", text), self.language, others)
        return self._languages[text]

    def url_for(self, n: int | None) -> str | None:
        src = self.by_n.get(n) if n is not None else None
        return src.url if src else None

    # the story's own sources ------------------------------------------------------------

    def verify_in_story(self, text: str) -> OfflineVerdict:
        """The rules' verdict against the story's own sources only: does the claim hold without the background?

        Same windows as the full index (built the same way from a subset of the sources), so the embedding
        similarities already computed for the full index are reused, masked to the story's windows."""
        if self._story_index is None:
            own = [(str(s.n), s.text) for s in self.sources if s.role == "story"]
            self._story_index = SourceIndex.build(own, window_size=self._window_sentences)
            self._story_mask = [self.sources[w.source].role == "story" for w in self.index.windows]
        key = (text, self.semantic)
        if key not in self._story_verdicts:
            scorer = None
            if self.semantic and sum(self._story_mask) == len(self._story_index.windows):
                def scorer(claim: str, texts: list[str]) -> list[float]:
                    sims = self.semantic_scorer(claim, [""] * len(self._story_mask))
                    return [x for x, keep in zip(sims, self._story_mask) if keep]
            self._story_verdicts[key] = verify_offline(text, self._story_index, semantic_scorer=scorer)
        return self._story_verdicts[key]

    @property
    def story(self) -> "StoryCheck":
        if self._story_check is None:
            self._story_check = StoryCheck(self)
        return self._story_check


# --- the story check: is a supported claim about this story? ------------------------------------------


# Sections where a sentence can open a paragraph: the lead, each body paragraph, each insight.
OPENING_SECTIONS = ("lead", "body", "insights")


class StoryCheck:
    """Who the story is about, from its own sources, and the two story rules (see pipeline.core.models.StoryVerdict).

    - The story's actors: pipeline.text.entities.story_entities over its own sources (role "story"), plus the names
      each of them opens with (a one-item story has no names "shared by most items"); a single word only when
      the sources use it as a name on its own ("Korvex", not the "Labs" of "Vantor Labs"). A capital that only
      opens a sentence ("Security researchers said", "Implied volatility rose") is no name: single words the
      sources also use in lower case, or never capitalise mid-sentence, are dropped.
    - off_story: a supported claim whose support holds only in background sources (the rules find it in no
      story source), or only in a story source's aside about another event ("Separately, Arcspan ..."), that
      names none of the story's actors and is not framed as background.
    - unresolved_reference: a sentence opening the lead, a paragraph or an insight with a reference
      (pipeline.text.factrules.opening_reference) that no earlier sentence resolves; a pronoun or an organisation
      noun resolves to the last actor named before it, which must be one the story's sources name.
    """

    def __init__(self, evidence: EvidenceIndex) -> None:
        self.evidence = evidence
        own = [s for s in evidence.sources if s.role == "story"]
        self.common = lowercase_words(s.text for s in evidence.sources)
        self.mid_capitals = capitalised_mid_sentence(s.text for s in evidence.sources)
        self._names: dict[str, set[str]] = {}
        self._titles = [s.title for s in own]
        bodies = [_body_of(s) for s in own]
        found = story_entities(self._titles, bodies)
        for body in bodies:
            first = split_sentences(body)[:1]
            if first:
                found |= names(first[0].text)
        # A single word counts when the story's sources use it as a name on its own: "Korvex", "Okafor", not the
        # "Labs" of "Vantor Labs" (which would make "Ardent Labs said ..." read as this story's).
        alone = standalone_names([*self._titles, *bodies])
        self.entities = {n for n in found if " " in n or (n not in self.common and n in alone)}
        # Every name the story's own sources use: what a pronoun may point back to.
        self.linked = set(self.entities).union(*(self.names(s.text) for s in own))

    def names(self, text: str) -> set[str]:
        if text not in self._names:
            self._names[text] = distinct_names(text, self.common, self.mid_capitals)
        return self._names[text]

    def _story_names_shown(self) -> str:
        """The story's main actors as its headlines write them ("Korvex"; "Tidepool, USDV")."""
        title = next((t for t in self._titles if self.names(t) & self.entities), "")
        return _shown_names(self.names(title) & self.entities, [title, *self._titles]) or "none found"

    # off_story ---------------------------------------------------------------------------------------

    def subject_names(self, claim_text: str, sentence_text: str) -> set[str]:
        """Names the claim is about, as the draft wrote them: a judge's atomic claim may have put a name in place
        of the draft's "It", and that name is the judge's guess, not the draft's."""
        named = self.names(sentence_text)
        return named if claim_text == sentence_text else self.names(claim_text) & named

    def off_story(self, verdict: ClaimVerdict, claim_text: str, sentence_text: str) -> RuleFailure | None:
        if verdict.verdict != "supported" or verdict.source_n not in self.evidence.by_n:
            return None
        named = self.subject_names(claim_text, sentence_text)
        if named & self.entities or framed_as_background(sentence_text, names_own_subject=bool(named)):
            return None
        source = self.evidence.by_n[verdict.source_n]
        about = f"; it is about {_shown_names(named, [sentence_text, claim_text])}" if named else ""
        unframed = (f"names none of this story's actors ({self._story_names_shown()}){about}, and is not framed as "
                    "background (\"Earlier, ...\", \"Separately, <who> ...\")")
        if source.role == "story":
            aside = self.aside(verdict.evidence)
            if aside is None:
                return None
            detail = (f"supported only by an aside of story source [{source.n}] about another event "
                      f"(\"{_clip(aside)}\"); the sentence {unframed}")
        else:
            texts = [claim_text] if claim_text == sentence_text else [claim_text, sentence_text]
            if any(self.evidence.verify_in_story(t).verdict == "supported" for t in texts):
                return None
            detail = (f"supported only by background source [{source.n}] \"{_clip(source.title or source.url)}\" "
                      f"({source.outlet}), earlier coverage of another event, not by the story's own sources; "
                      f"the sentence {unframed}")
        return RuleFailure(type="story", detail=detail, value=f"[{source.n}]")

    def aside(self, evidence_text: str) -> str | None:
        """A sentence of a story source's passage that is about another event: it is framed as one and names
        only actors other than the story's."""
        for sentence in split_sentences(evidence_text):
            named = self.names(sentence.text)
            if named and not named & self.entities and framed_as_background(sentence.text, names_own_subject=True):
                return sentence.text
        return None

    # unresolved_reference -----------------------------------------------------------------------------

    def references(self, rendered: RenderedDraft) -> dict[str, RuleFailure]:
        """By sentence id: the opening sentences whose reference no earlier sentence resolves."""
        out: dict[str, RuleFailure] = {}
        seen: set[tuple[str, int]] = set()
        earlier: list[str] = []
        for s in rendered.sentences:
            opens = (s.section, s.part) not in seen
            seen.add((s.section, s.part))
            if opens and s.section in OPENING_SECTIONS:
                ref = opening_reference(s.text)
                if ref is not None:
                    why = resolve_reference(ref, s.text, earlier, self.names, self.linked.__contains__)
                    if why is not None:
                        where = {"lead": "the lead", "body": "its paragraph", "insights": "its insight"}[s.section]
                        out[s.id] = RuleFailure(type="reference", detail=f"{where} {why}; name the subject", value=ref.phrase)
            earlier.append(s.text)
        return out

    def apply(self, verdict: ClaimVerdict, claim_text: str, sentence_text: str, reference: RuleFailure | None) -> ClaimVerdict:
        """The verdict after the story rules: a story problem never makes a verdict better, and only turns a
        `supported` one into off_story / unresolved_reference; on a worse verdict it is listed among the failures."""
        label: Verdict = verdict.verdict
        added: list[RuleFailure] = []
        off = self.off_story(verdict, claim_text, sentence_text)
        if off is not None:
            added.append(off)
            label = "off_story"
        if reference is not None:
            added.append(reference)
            if label == "supported":
                label = "unresolved_reference"
        if not added:
            return verdict
        update: dict[str, Any] = {"failures": [*verdict.failures, *added]}
        if label != verdict.verdict:
            update.update(verdict=label, method="rules")
        return verdict.model_copy(update=update)


def _body_of(source: EvidenceSource) -> str:
    if source.title and source.text.startswith(source.title):
        return source.text[len(source.title):].lstrip()
    return source.text


def _clip(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _shown_names(found: set[str], texts: Sequence[str], limit: int = 3) -> str:
    """Names as the texts write them, single names first, in the order they appear; a multi-word name whose
    words are all shown already is left out ("Tidepool, USDV", not "Tidepool's USDV" as a third)."""
    def position(name: str) -> int:
        return min((t.lower().find(name) for t in texts if name in t.lower()), default=10**6)

    kept: list[str] = []
    for name in sorted(found, key=lambda n: (len(n.split()), position(n), n)):
        words = set(name.split())
        if words <= {w for k in kept for w in k.split()}:
            continue
        kept.append(name)
    kept.sort(key=position)
    return ", ".join(_surface(name, texts) for name in kept[:limit])


def _surface(name: str, texts: Sequence[str]) -> str:
    for text in texts:
        i = text.lower().find(name)
        if i >= 0:
            return text[i:i + len(name)]
    return name.title()


def _same_date(a, b) -> bool:
    pairs = [(a.year, b.year), (a.month, b.month), (a.day, b.day), (a.weekday, b.weekday)]
    return any(x is not None and y is not None for x, y in pairs) and all(x is None or y is None or x == y for x, y in pairs)


# --- the check call: claims and verdicts in one reply ----------------------------------------------


class JudgeFinding(BaseModel):
    """One atomic claim of a checked statement, with its verdict. Several findings may share a claim (several windows)."""

    model_config = ConfigDict(extra="forbid")

    claim_id: str          # the id of the statement (draft sentence or standalone claim) the claim comes from
    claim: str = ""        # the atomic, self-contained claim; "" means the statement as a whole
    # Support only: the story labels (off_story, unresolved_reference) are the rules' (pipeline.core.models.StoryVerdict),
    # so the judge's schema enumerates exactly supported / contradicted / unverifiable.
    verdict: SupportVerdict
    source_n: int | None
    quote: str


class JudgeCorrection(BaseModel):
    """A contradicted statement as the judge would correct it. The rules verify it before it replaces the statement
    (`verified_correction`); one they cannot verify is dropped, and the reviser is asked instead."""

    model_config = ConfigDict(extra="forbid")

    claim_id: str   # the statement corrected
    text: str       # the whole statement, changed only where a source contradicts it


class JudgeReply(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verdicts: list[JudgeFinding]
    # Default empty: a reply from a server that ignores the schema and leaves corrections out still parses.
    corrections: list[JudgeCorrection] = Field(default_factory=list)


# Atomic claims one statement may yield, as the reply schema's bound (maxItems, with the statements' count): a
# decoder that fills arrays at random stays within it, a real model never needs more (a sentence holds few facts).
MAX_CLAIMS_PER_STATEMENT = 6


def reply_schema(batch: Sequence["JudgeItem"]) -> type[JudgeReply]:
    """The reply schema for one request, built from what the request holds, so a constrained decoder cannot leave it:
    claim ids as an enum of the statements sent, source numbers as an enum of the sources whose passages were shown
    (null besides, for unverifiable), the verdict labels (only "unverifiable" when no passage was shown at all), and
    between (statements that must be answered) and MAX_CLAIMS_PER_STATEMENT x statements findings; at most one
    correction per statement, under the same id enum.

    The constraints are in the JSON schema only (what the provider's decoder enforces); the parsed reply is
    validated by the JudgeReply types, and `check_validator` checks only what a schema cannot say. So a reply from
    a server that ignores the schema still parses, and its usable findings are kept.
    """
    ids = [it.id for it in batch]
    numbers = sorted({p.source_n for it in batch for p in it.passages})
    required = sum(1 for it in batch if it.required)

    def replaced(schema_for: dict[str, Any]):
        def apply(node: dict[str, Any]) -> None:
            node.clear()
            node.update(schema_for)
        return apply

    labels = ["supported", "contradicted", "unverifiable"] if numbers else ["unverifiable"]
    source_n = {"anyOf": [{"type": "integer", "enum": numbers}, {"type": "null"}]} if numbers else {"type": "null"}
    finding = create_model(
        "JudgeFinding",
        __base__=JudgeFinding,
        claim_id=(str, Field(json_schema_extra=replaced({"type": "string", "enum": ids}))),
        verdict=(SupportVerdict, Field(json_schema_extra=replaced({"type": "string", "enum": labels}))),
        source_n=(int | None, Field(json_schema_extra=replaced(source_n))),
    )
    counts = {"minItems": required, "maxItems": max(1, MAX_CLAIMS_PER_STATEMENT * len(ids))}
    correction = create_model(
        "JudgeCorrection",
        __base__=JudgeCorrection,
        claim_id=(str, Field(json_schema_extra=replaced({"type": "string", "enum": ids}))),
    )
    return create_model(
        "JudgeReply",
        __base__=JudgeReply,
        verdicts=(list[finding], Field(json_schema_extra=lambda node: node.update(counts))),
        corrections=(list[correction], Field(default_factory=list,
                                             json_schema_extra=lambda node: node.update({"maxItems": len(ids)}))),
    )


@dataclass(frozen=True)
class JudgeItem:
    """A statement to check: a draft sentence (id "s1", ...) or a standalone claim, with its candidate windows."""

    id: str
    text: str
    passages: list[Passage]
    sources: Mapping[int, EvidenceSource]   # where the cited quote must appear verbatim
    # The model must return a claim for it: it holds a figure, date, quotation or name. A statement
    # without any may be left out by the model (opinion, a transition) and then has no claim.
    required: bool = True


@dataclass(frozen=True)
class Judgement:
    verdict: SupportVerdict
    source_n: int | None = None
    quote: str = ""
    rejected_quotes: int = 0   # findings dropped because their quote is not in the cited source


@dataclass(frozen=True)
class JudgedClaim:
    text: str                        # the atomic claim as the rules check it
    judgement: Judgement | None      # None: no usable model verdict, the rules decide


# Why the rules decided a statement in the judge's place (JudgeStats.fell_back), as the report says it.
FALLBACK_REASONS = {
    "cap": "call cap reached ({cap} model requests per draft, factcheck.max_calls_per_draft{kept})",
    "flawed": "the judge's claims did not fit their statement",
    "missing": "the judge left the statement out",
    "unusable": "the judge's reply was unusable",
    "outage": "the judge was unavailable",
}


@dataclass
class JudgeStats:
    calls: int = 0            # check requests sent (repair rounds inside the gateway not counted)
    split: int = 0            # unusable replies asked again in two halves
    retried_alone: int = 0    # statements the reply left out, asked again on their own
    unanswered: int = 0       # statements the rules checked whole because the model gave no usable answer
    rejected_quotes: int = 0
    dropped_claims: int = 0   # findings under an unknown id or with figures/quotations their statement lacks
    # Statement id -> why the rules decided it (a key of FALLBACK_REASONS), and the first detail seen per reason.
    fell_back: dict[str, str] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)
    requests: int = 0             # judge + reviser requests the draft made (repair rounds included)
    cap: int | None = None        # the draft's cap on them, when one applied
    kept: int = 0                 # requests of the cap that judge calls after the first left for the reviser
    revisions_capped: int = 0     # revisions not asked for because the cap left no room
    corrected: int = 0            # sentences the judge's own corrections fixed (no reviser call)

    def fall_back(self, ids: Iterable[str], reason: str, detail: str = "") -> None:
        for i in ids:
            self.fell_back.setdefault(i, reason)
        if detail:
            self.details.setdefault(reason, detail)

    def fallback(self, statements: int) -> str | None:
        """Why the rules decided in the judge's place, per reason with how many statements; None when they never had to."""
        if not self.fell_back:
            return None
        counts: dict[str, int] = {}
        for reason in self.fell_back.values():
            counts[reason] = counts.get(reason, 0) + 1
        parts = []
        for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            kept = f"; {self.kept} kept for a revision" if self.kept else ""
            text = FALLBACK_REASONS.get(reason, reason).format(cap=self.cap, kept=kept)
            detail = self.details.get(reason)
            parts.append(f"{text}{f' ({detail})' if detail else ''} for {n} of {statements} statement(s)")
        return "; ".join(parts)


def _has_checkable_content(text: str) -> bool:
    return bool(extract_numbers(text) or extract_dates(text) or extract_quotes(text) or extract_entities(text))


def claim_problems(claim: str, statement: str) -> list[str]:
    """A claim must keep its statement's figures and quotations exactly: the rules check the claim, not the statement."""
    problems = []
    figures = extract_numbers(statement)
    for q in extract_numbers(claim):
        if not any(numbers_match(q, s) for s in figures):
            problems.append(f"has the figure {q.raw!r}, which its statement does not contain; keep figures exactly as written")
    for quote in extract_quotes(claim):
        if not quote_appears_verbatim(quote, statement):
            problems.append(f"quotes {quote!r}, which is not word for word in its statement")
    return problems


def unrelated_claim(claim: str, statement: str) -> bool:
    """A claim that shares no content word with its statement is not one of its facts (a decoder's random string)."""
    if claim == statement:
        return False
    words = set(content_terms(tokenize(claim)))
    return not words or not words & set(content_terms(tokenize(statement)))


def finding_problems(finding: JudgeFinding, item: JudgeItem) -> list[str]:
    """What a finding gets wrong that no JSON schema can say: a claim that is not its statement's (changed figures or
    quotations, no word of it), and a quote that is not word for word in the source it cites."""
    claim = " ".join(finding.claim.split()) or item.text
    problems = claim_problems(claim, item.text)
    if unrelated_claim(claim, item.text):
        problems.append(f"claim {_clip(claim, 60)!r} shares no word with its statement; write a fact the statement states")
    if finding.verdict != "unverifiable":
        quote = finding.quote.replace("<\\/", "</").strip()
        source = item.sources.get(finding.source_n) if finding.source_n is not None else None
        if source is None or len(tokenize(quote)) < MIN_QUOTE_TOKENS or not quote_appears_verbatim(quote, source.text):
            problems.append(f"quote {_clip(quote, 60)!r} is not word for word in source {finding.source_n}'s evidence; "
                            "copy the deciding passage exactly, or answer unverifiable")
    return problems


def check_validator(batch: Sequence[JudgeItem]) -> Callable[[JudgeReply], list[str]]:
    """What the reply schema cannot say (one repair round): every statement that must be answered has a finding, a
    claim keeps its statement's figures and quotations and shares its words, a quote is verbatim in its source.

    Ids and source numbers are enums of the request's schema: a finding under an unknown id is dropped, not sent
    back (its statement is then missing, which is)."""
    by_id = {it.id: it for it in batch}

    def check(out: JudgeReply) -> list[str]:
        problems: list[str] = []
        answered: set[str] = set()
        for i, f in enumerate(out.verdicts):
            item = by_id.get(f.claim_id)
            if item is None:
                continue
            answered.add(item.id)
            problems += [f"verdicts[{i}] (claim_id {f.claim_id}) {p}" for p in finding_problems(f, item)]
        missing = [it.id for it in batch if it.required and it.id not in answered]
        if missing:
            shown = ", ".join(missing[:40]) + (", ..." if len(missing) > 40 else "")
            problems.append(f"no entry for statement(s) {shown}: each holds a number, date, quotation or name, so each "
                            "needs at least one claim")
        return problems

    return check


def settle(findings: Sequence[JudgeFinding], sources: Mapping[int, EvidenceSource]) -> Judgement:
    """One verdict from the findings for a claim.

    Only a finding whose quote appears verbatim in the cited source counts; then
    supported if any finding supports, contradicted if one contradicts and none
    supports, else unverifiable.
    """
    support: JudgeFinding | None = None
    contra: JudgeFinding | None = None
    rejected = 0
    for f in findings:
        if f.verdict == "unverifiable":
            continue
        quote = f.quote.replace("<\\/", "</").strip()
        source = sources.get(f.source_n) if f.source_n is not None else None
        if source is None or len(tokenize(quote)) < MIN_QUOTE_TOKENS or not quote_appears_verbatim(quote, source.text):
            rejected += 1
            continue
        f = f.model_copy(update={"quote": quote})
        if f.verdict == "supported" and support is None:
            support = f
        elif f.verdict == "contradicted" and contra is None:
            contra = f
    best = support or contra
    if best is None:
        return Judgement("unverifiable", rejected_quotes=rejected)
    return Judgement(best.verdict, best.source_n, best.quote, rejected)


def render_check_prompt(items: Sequence[JudgeItem], prompts: PromptLibrary, context: str = ""):
    claims = [
        {"id": it.id, "text": it.text,
         "evidence": [{"source_n": p.source_n, "outlet": p.outlet, "text": p.text} for p in it.passages]}
        for it in items
    ]
    return prompts.render("judge", claims=claims, context=context)


# --- token budget: the whole draft in one call when it fits ------------------------------------------

# The reply's JSON frame ({"verdicts": [...]}) before any claim.
REPLY_BASE_TOKENS = 20
# json_object mode appends the schema to the system prompt with a sentence around it; json_schema
# mode sends it as response_format, which the provider counts as input too.
SCHEMA_WRAPPER_TOKENS = 40
# What each statement adds to the request's own schema (its id in the two claim_id enums; see reply_schema).
SCHEMA_TOKENS_PER_ITEM = 8


@dataclass(frozen=True)
class CallBudget:
    model: str
    limit: int          # prompt + reply tokens one call may use: the window minus the schema
    per_item: int       # reply tokens kept free per statement
    max_output: int     # the model's reply limit

    def reply_tokens(self, n: int) -> int:
        return REPLY_BASE_TOKENS + n * self.per_item

    def fits(self, prompt_tokens: int, n: int) -> bool:
        reply = self.reply_tokens(n)
        return reply <= self.max_output and prompt_tokens + n * SCHEMA_TOKENS_PER_ITEM + reply <= self.limit


def call_budget(gateway, settings: FactCheck) -> CallBudget:
    """The judge model's window (capped by factcheck.max_context_tokens) minus the reply schema."""
    model = gateway.model_for("judge")
    window = gateway.config.llm.context_window(model)
    if settings.max_context_tokens:
        window = min(window, settings.max_context_tokens)
    schema_tokens = count_tokens(json.dumps(plain_json_schema(JudgeReply), ensure_ascii=False), model) + SCHEMA_WRAPPER_TOKENS
    return CallBudget(model, window - schema_tokens, settings.output_tokens_per_sentence, settings.max_output_tokens)


def plan_batches(
    items: Sequence[JudgeItem], render: Callable[[Sequence[JudgeItem]], Any], budget: CallBudget
) -> list[list[JudgeItem]]:
    """All items in one call when the prompt plus the reply fits the window; else consecutive runs that each fit.

    Runs are packed greedily from per-item token counts, then any run whose whole
    prompt still does not fit (token counts of parts do not add up exactly) is
    halved. An item too large on its own is sent with fewer candidate windows.
    """
    def tokens(batch: Sequence[JudgeItem]) -> int:
        return count_messages(render(batch).messages, budget.model)

    items = list(items)
    if not items or budget.fits(tokens(items), len(items)):
        return [items] if items else []
    base = tokens([])
    batches: list[list[JudgeItem]] = []
    current: list[JudgeItem] = []
    used = base
    for it in items:
        size = tokens([it]) - base
        if current and not budget.fits(used + size, len(current) + 1):
            batches.append(current)
            current, used = [], base
        current.append(it)
        used += size
    batches.append(current)

    def fitted(batch: list[JudgeItem]) -> list[list[JudgeItem]]:
        if budget.fits(tokens(batch), len(batch)):
            return [batch]
        if len(batch) > 1:
            middle = len(batch) // 2
            return fitted(batch[:middle]) + fitted(batch[middle:])
        return [[_shrunk(batch[0], tokens, budget)]]

    return [b for batch in batches for b in fitted(batch)]


def _shrunk(item: JudgeItem, tokens: Callable[[Sequence[JudgeItem]], int], budget: CallBudget) -> JudgeItem:
    passages = list(item.passages)
    while passages and not budget.fits(tokens([replace(item, passages=passages)]), 1):
        passages.pop()
    if len(passages) < len(item.passages):
        log.warning("statement %s does not fit the judge's window with all its evidence; sent with %d of %d windows",
                    item.id, len(passages), len(item.passages))
    return replace(item, passages=passages)


# --- the call cap: judge and reviser requests per draft, repair rounds included --------------------------------


class CallCapReached(LLMError):
    """The draft's judge and reviser requests (factcheck.max_calls_per_draft) would be exceeded; no request was made."""


@dataclass
class DraftCalls:
    """One draft's model requests (judge and reviser, repair rounds included) against its cap.

    A call reserves `per_call` requests, the most one gateway call can be answered (its first request and each
    repair round), before it starts; when it ends, what it actually got is booked (see BoundedGateway). A call that
    does not fit in what is left is not made, so the cap holds whatever the server answers.
    """

    cap: int
    per_call: int           # 1 + llm.repair_rounds
    used: int = 0           # answered requests booked
    reserved: int = 0       # held by calls in flight
    calls: int = 0          # gateway calls made
    refused: int = 0        # calls not made because they did not fit

    def allows(self, keep: int = 0) -> bool:
        """A call fits, leaving `keep` requests for later calls (the reviser's)."""
        return self.cap - self.used - self.reserved >= self.per_call + keep

    @property
    def reached(self) -> bool:
        return self.refused > 0


def draft_calls(settings: FactCheck, gateway) -> DraftCalls:
    config = getattr(gateway, "config", None)
    repair_rounds = config.llm.repair_rounds if isinstance(config, Config) else 1
    return DraftCalls(cap=settings.max_calls_per_draft, per_call=1 + repair_rounds)


# Outcomes of a gateway row that is an answer from the model (an error or a refused start is none).
_ANSWERED = ("ok", "invalid", "truncated", "refused")


class BoundedGateway:
    """The gateway as one draft's check uses it: `call` only within the draft's DraftCalls, everything else as is.

    What a call actually got is read back from the gateway's own ledger rows (one per answer and repair round,
    none for a cache hit), found by the prompt's hash among the rows written since the call started; when they
    cannot be read, the whole reservation is booked.
    """

    def __init__(self, gateway, calls: DraftCalls) -> None:
        self._gateway = gateway
        self.draft_calls = calls

    def __getattr__(self, name: str):
        return getattr(self._gateway, name)

    async def call(self, role: str, prompt, schema_model, validators=(), stage: str | None = None, max_tokens: int | None = None):
        account = self.draft_calls
        if not account.allows():
            account.refused += 1
            raise CallCapReached(
                f"{role} call not made: {account.used} of the draft's {account.cap} model requests used "
                f"(factcheck.max_calls_per_draft), a call may take {account.per_call} with its repair rounds"
            )
        account.reserved += account.per_call
        mark = self._mark()
        try:
            return await self._gateway.call(role, prompt, schema_model, validators=validators, stage=stage, max_tokens=max_tokens)
        finally:
            account.reserved -= account.per_call
            account.calls += 1
            account.used += self._answered_since(mark, prompt, account.per_call)

    def _mark(self) -> int | None:
        ledger = getattr(self._gateway, "ledger", None)
        if not isinstance(ledger, Ledger):
            return None
        try:
            with ledger.engine.connect() as connection:
                return connection.execute(select(func.coalesce(func.max(schema.llm_calls.c.id), 0))).scalar_one()
        except Exception:  # the cap still holds: the whole reservation is booked
            return None

    def _answered_since(self, mark: int | None, prompt, reserved: int) -> int:
        if mark is None:
            return reserved
        table = schema.llm_calls
        try:
            with self._gateway.ledger.engine.connect() as connection:
                rows = connection.execute(
                    select(table.c.outcome, table.c.cache_hit).where(
                        table.c.id > mark, table.c.prompt_hash == stable_hash(prompt.messages)
                    )
                ).all()
        except Exception:
            return reserved
        if not rows:
            return reserved  # no row to read what it got from: assume the most
        return sum(1 for r in rows if not r.cache_hit and r.outcome in _ANSWERED)


async def judge_items(
    items: Sequence[JudgeItem],
    gateway,
    prompts: PromptLibrary,
    settings: FactCheck,
    *,
    context: str = "",
    stats: JudgeStats | None = None,
    calls: DraftCalls | None = None,
    keep: int = 0,
    corrections: dict[str, str] | None = None,
) -> dict[str, list[JudgedClaim]]:
    """Atomic claims with verdicts by statement id: one call when everything fits, batches in parallel otherwise.
    `corrections`, when given, receives the judge's corrected statements by id (unverified: see verified_correction).

    An entry is the statement's claims ([] when the model found nothing to check
    in a statement that is not `required`). Each request has its own schema
    (`reply_schema`); what no schema can say is sent back once (`check_validator`),
    and of a reply still flawed after that repair round the valid findings are
    kept. With `calls` (the draft's cap), every call after the first must leave
    `keep` requests free (for the reviser); a call that does not fit is not made.
    Within the cap, a required statement the reply left out is asked again alone,
    and a reply that is cut off, refused or no JSON of the schema at all is asked
    again in two halves. A statement still without an answer is absent: the caller
    checks it whole with the rules, never drops it, and `stats.fell_back` says
    why. A provider outage, spent budget or open circuit is not retried here.
    """
    stats = stats if stats is not None else JudgeStats()
    budget = call_budget(gateway, settings)
    if calls is not None:
        stats.cap, stats.kept = calls.cap, keep

    def render(batch: Sequence[JudgeItem]):
        return render_check_prompt(batch, prompts, context)

    results: dict[str, list[JudgedClaim]] = {}
    first = [True]

    def room(extra: bool) -> bool:
        """Whether a call may be made now; a call beyond the draft's first keeps `keep` requests free."""
        return calls is None or calls.allows(keep if extra else 0)

    async def ask(batch: Sequence[JudgeItem]) -> tuple[str, JudgeReply | None, str]:
        extra, first[0] = not first[0], False
        if not room(extra):
            if calls is not None:
                calls.refused += 1
            return "cap", None, ""
        stats.calls += 1
        try:
            reply = await gateway.call(
                "judge", render(batch), reply_schema(batch), validators=(check_validator(batch),), stage="check",
                max_tokens=min(budget.max_output, budget.reply_tokens(len(batch))),
            )
        except InvalidOutput as exc:
            if isinstance(exc.output, JudgeReply):
                return "ok", exc.output, ""  # still flawed after repair: the valid findings are kept below
            log.warning("check reply unusable for %d statement(s): %s", len(batch), exc)
            return "unusable", None, "no reply of the schema"
        except (OutputTruncated, Refused) as exc:
            log.warning("check reply unusable for %d statement(s): %s", len(batch), exc)
            return "unusable", None, "cut off" if isinstance(exc, OutputTruncated) else "refused"
        except CallCapReached:
            return "cap", None, ""
        except LLMError as exc:
            log.warning("judge unavailable for %d statement(s), the rules decide: %s", len(batch), exc)
            return "outage", None, _clip(f"{type(exc).__name__}: {exc}", 100)
        return "ok", reply, ""

    def collect(batch: Sequence[JudgeItem], reply: JudgeReply) -> dict[str, list[JudgedClaim]]:
        by_id = {it.id: it for it in batch}
        if corrections is not None:
            for c in reply.corrections:
                if c.claim_id in by_id and c.text.strip():
                    corrections.setdefault(c.claim_id, c.text)
        findings = reply.verdicts
        grouped: dict[str, dict[str, list[JudgeFinding]]] = {}
        flawed: set[str] = set()
        for f in findings:
            item = by_id.get(f.claim_id)
            if item is None:
                stats.dropped_claims += 1
                continue
            text = " ".join(f.claim.split()) or item.text
            if claim_problems(text, item.text) or unrelated_claim(text, item.text):
                stats.dropped_claims += 1
                flawed.add(item.id)
                continue
            grouped.setdefault(item.id, {}).setdefault(text, []).append(f)
        found: dict[str, list[JudgedClaim]] = {}
        for item in batch:
            claims = []
            for text, group in grouped.get(item.id, {}).items():
                judgement = settle(group, item.sources)
                stats.rejected_quotes += judgement.rejected_quotes
                claims.append(JudgedClaim(text, judgement))
            # A claim that misquoted its statement is not checked in its place: the rules check the statement.
            if item.id in flawed and all(c.text != item.text for c in claims):
                claims.append(JudgedClaim(item.text, None))
                stats.fall_back([item.id], "flawed")
            if claims:
                found[item.id] = claims
        return found

    async def run_batch(batch: list[JudgeItem]) -> None:
        status, reply, detail = await ask(batch)
        if status in ("outage", "cap"):
            stats.unanswered += len(batch)
            stats.fall_back([it.id for it in batch], status, detail)
            return
        if status == "unusable":
            if len(batch) > 1 and room(True):
                stats.split += 1
                middle = len(batch) // 2
                await asyncio.gather(run_batch(batch[:middle]), run_batch(batch[middle:]))
            else:
                stats.unanswered += len(batch)
                stats.fall_back([it.id for it in batch], "unusable", detail)
            return
        found = collect(batch, reply)
        missing = [it for it in batch if it.id not in found and it.required]
        why: dict[str, tuple[str, str]] = {}
        if len(batch) > 1 and missing:
            retries = await asyncio.gather(*(ask([it]) for it in missing))
            for it, (again, again_reply, again_detail) in zip(missing, retries):
                if again != "cap":
                    stats.retried_alone += 1
                if again == "ok":
                    found.update(collect([it], again_reply))
                why[it.id] = (again if again != "ok" else "missing", again_detail)
        for it in batch:
            if it.id in found:
                results[it.id] = found[it.id]
            elif not it.required:
                results[it.id] = []   # nothing checkable in it, and the model said so by leaving it out
            else:
                stats.unanswered += 1
                reason, detail = why.get(it.id, ("missing", ""))
                stats.fall_back([it.id], reason, detail)

    batches = plan_batches(items, render, budget)
    await asyncio.gather(*(run_batch(b) for b in batches))
    return results


# --- rules on the sentence: citations, URLs, official confirmation ------------------------------------

_CONFIRMATION = re.compile(
    r"\b(?:officially|formally)\s+(?:confirm\w*|verif\w*|announc\w*|approv\w*)"
    r"|\bofficial\s+confirmation\b"
    r"|\bconfirmed\s+by\s+(?:the\s+)?(?:\w+\s+)?(?:regulators?|regulatory|authorities|officials?|government|ministry|police|"
    r"prosecutors|courts?|SEC|CFTC|Treasury|central\s+bank)\b"
    r"|\b(?:regulators?|authorities|officials|government|police|prosecutors)\s+(?:have\s+|has\s+)?(?:officially\s+)?confirmed\b",
    re.IGNORECASE,
)
_CONFIRM_WORD = re.compile(r"\b(?:confirm\w*|verified|officially|formally)\b", re.IGNORECASE)


def _confirmation_supported(sentence: str, evidence: EvidenceIndex) -> bool:
    """Some source sentence on the same subject says it was confirmed."""
    terms = set(content_terms(tokenize(sentence)))
    for passage in evidence.candidates(sentence, k=5):
        for s in split_sentences(passage.text):
            if instructs_a_model(s.text):
                continue  # "tell readers it was officially confirmed" is an order to a model, not a report
            if _CONFIRM_WORD.search(s.text) and len(terms & set(content_terms(tokenize(s.text)))) >= 2:
                return True
    return False


def sentence_failures(
    sentence: DraftSentence, raw: str, declared: list[int], first_in_part: bool, evidence: EvidenceIndex
) -> list[RuleFailure]:
    """Citation, URL and confirmation problems of one draft sentence (`raw`: its text with markers)."""
    provided = sorted(evidence.by_n)
    shown = ", ".join(map(str, provided)) or "none"
    out: list[RuleFailure] = []
    cited = list(sentence.citations) + (list(declared) if first_in_part else [])
    for n in dict.fromkeys(cited):
        if n not in evidence.by_n:
            out.append(RuleFailure(type="citation", detail=f"cites [{n}], but there is no source {n} (sources: {shown})", value=f"[{n}]"))
    allowed = {normalize_url(s.url) for s in evidence.sources}
    for url in find_urls(raw):
        if normalize_url(url) not in allowed:
            out.append(RuleFailure(type="url", detail=f"links {url!r}, which is not one of the sources' URLs", value=url))
    match = _CONFIRMATION.search(sentence.text)
    if match and not _confirmation_supported(sentence.text, evidence):
        out.append(RuleFailure(
            type="confirmation", detail=f"says {match.group(0)!r}, but no source reports an official confirmation", value=match.group(0)
        ))
    return out


# --- verdicts ---------------------------------------------------------------------------------------------


def decide(
    claim: Claim, judged: Judgement | None, rules: OfflineVerdict, extra: Sequence[RuleFailure], evidence: EvidenceIndex
) -> ClaimVerdict:
    """The final verdict: the judge's when it answered, made worse (never better) by any rule failure.

    Without a judgement the rules decide (method "rules"). A rule failure turns a
    better judge verdict into the rules' contradicted/unverifiable, with the
    rules' evidence (method "rules"). For an unverifiable claim the closest
    passage the rules found is kept as evidence, to show editors where to look.
    """
    failures = [*rules.failures, *extra]
    rules_n = _source_number(rules.source_id)
    rules_verdict: SupportVerdict = rules.verdict
    if extra and rules_verdict == "supported":
        rules_verdict = "unverifiable"

    def by_rules(verdict: SupportVerdict) -> ClaimVerdict:
        return ClaimVerdict(claim=claim, verdict=verdict, source_n=rules_n, source_url=evidence.url_for(rules_n),
                            evidence=rules.evidence, failures=failures, method="rules")

    if judged is None:
        return by_rules(rules_verdict)
    if failures and _SEVERITY[rules_verdict] > _SEVERITY[judged.verdict]:
        return by_rules(rules_verdict)
    if judged.verdict == "unverifiable":
        n, quote = rules_n, rules.evidence
    else:
        n, quote = judged.source_n, judged.quote
    return ClaimVerdict(claim=claim, verdict=judged.verdict, source_n=n, source_url=evidence.url_for(n),
                        evidence=quote, failures=failures, method="llm")


def _source_number(source_id: str | None) -> int | None:
    try:
        return int(source_id) if source_id is not None else None
    except ValueError:
        return None


def totals(verdicts: Sequence[ClaimVerdict]) -> dict[str, int]:
    """A count per label (every label of pipeline.core.models.VERDICTS, zeros included) and "claims"."""
    out = dict.fromkeys(VERDICTS, 0)
    for v in verdicts:
        out[v.verdict] += 1
    out["claims"] = len(verdicts)
    return out


def model_available(gateway, config: Config | None = None) -> bool:
    if gateway is None or not getattr(gateway, "available", False):
        return False
    return not (config is not None and config.llm.offline)


# --- a draft's claims --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SentenceClaims:
    sentence: DraftSentence
    claims: tuple[JudgedClaim, ...]   # () when the model found nothing to check in it
    correction: str = ""              # the judge's corrected sentence, not verified yet ("" when it gave none)


def _claim(idx: int, text: str, sentence: DraftSentence) -> Claim:
    return Claim(id=f"c{idx}", text=text, start=sentence.start, end=sentence.end, section=sentence.section)


def _whole(sentence: DraftSentence) -> SentenceClaims:
    return SentenceClaims(sentence, (JudgedClaim(sentence.text, None),))


def statements_of(rendered: RenderedDraft, evidence: EvidenceIndex) -> list[JudgeItem]:
    """The draft's sentences as statements for the check call, each with its candidate windows (no model call)."""
    evidence.prepare([s.text for s in rendered.sentences])
    return [
        JudgeItem(s.id, s.text, evidence.candidates(s.text, anchor=evidence.verify(s.text)), evidence.by_n,
                  required=_has_checkable_content(s.text))
        for s in rendered.sentences
    ]


async def claims_of(
    rendered: RenderedDraft,
    evidence: EvidenceIndex,
    *,
    settings: FactCheck,
    gateway=None,
    prompts: PromptLibrary | None = None,
    context: str = "",
    stats: JudgeStats | None = None,
    statements: list[JudgeItem] | None = None,
    calls: DraftCalls | None = None,
    keep: int = 0,
) -> list[SentenceClaims]:
    """Every sentence's claims: with a model, one check call for the draft (split only by tokens); offline, each
    sentence is one claim for the rules. `statements`: from `statements_of`, when already built. `calls`, `keep`:
    the draft's call cap and what to leave of it for the reviser (see judge_items)."""
    sentences = rendered.sentences
    if gateway is None or not sentences:
        evidence.prepare([s.text for s in sentences])
        return [_whole(s) for s in sentences]
    prompts = prompts or PromptLibrary(gateway.config.prompts_dir)
    statements = statements if statements is not None else statements_of(rendered, evidence)
    corrections: dict[str, str] = {}
    judged = await judge_items(statements, gateway, prompts, settings, context=context, stats=stats, calls=calls, keep=keep,
                               corrections=corrections)
    # A sentence the model gave no usable answer for is checked whole by the rules.
    return [SentenceClaims(s, tuple(judged[s.id]), corrections.get(s.id, "")) if s.id in judged else _whole(s)
            for s in sentences]


def verdicts_for(rendered: RenderedDraft, checked: Sequence[SentenceClaims], evidence: EvidenceIndex) -> list[ClaimVerdict]:
    """Rules on every claim, the sentence's own rule failures with its first claim, then `decide`, then the
    story rules (`StoryCheck`): off_story per claim, an unresolved opening reference with the sentence's first claim.

    A sentence the model found nothing to check in still becomes a claim when it
    has a citation, URL, confirmation or reference problem: those are never dropped.
    """
    evidence.prepare([c.text for sc in checked for c in sc.claims])
    story = evidence.story
    openings = story.references(rendered)
    foreign = language_failures(rendered, evidence)
    first_of_part: dict[tuple[str, int], str] = {}
    for s in rendered.sentences:
        first_of_part.setdefault((s.section, s.part), s.id)
    verdicts: list[ClaimVerdict] = []
    for sc in checked:
        s = sc.sentence
        extras = sentence_failures(
            s, rendered.text[s.start:s.end], rendered.declared.get((s.section, s.part), []),
            first_of_part[(s.section, s.part)] == s.id, evidence,
        )
        reference = openings.get(s.id)
        wrong = foreign.get(s.id)
        claims = list(sc.claims) or ([JudgedClaim(s.text, None)] if extras or reference or wrong else [])
        for k, c in enumerate(claims):
            claim = _claim(len(verdicts) + 1, c.text, s)
            rules, originals = translated_quotes(evidence.verify(c.text), c.text, evidence)
            verdict = decide(claim, c.judgement, rules, extras if k == 0 else [], evidence)
            verdict = story.apply(verdict, c.text, s.text, reference if k == 0 else None)
            if originals:
                # The original words stay with the verdict: what the translation can be checked against.
                kept = "; ".join(f"original ({t.language}) [{t.source_n}]: “{t.original}”" for t in originals)
                verdict = verdict.model_copy(update={"evidence": f"{verdict.evidence} | {kept}" if verdict.evidence else kept})
            verdicts.append(with_language(verdict, wrong) if k == 0 else verdict)
    return verdicts


def translated_quotes(rules: OfflineVerdict, claim_text: str, evidence: EvidenceIndex) -> tuple[OfflineVerdict, list[Translation]]:
    """The rules' verdict with translated quotations judged by their originals.

    A quotation the draft lists as translated cannot be verbatim in its source (it is in another language): its
    "not verbatim" failure is replaced by the check that its original is word for word in the source it names.
    Returns the verdict and the translations whose originals were found (their words go into the evidence)."""
    mine = [t for t in evidence.translations if _quote_key_text(t.text) in _quote_key_text(claim_text)]
    if not mine:
        return rules, []
    found, failures = [], []
    for t in mine:
        source = evidence.by_n.get(t.source_n)
        if source is not None and quote_appears_verbatim(t.original, source.text):
            found.append(t)
        else:
            failures.append(RuleFailure(type="quote", value=t.text,
                                        detail=f"translated quotation: its original “{_clip(t.original)}” is not word for word in "
                                               f"source [{t.source_n}]"))
    translated = [_quote_key_text(t.text) for t in mine]
    kept = [f for f in rules.failures
            if not (f.type == "quote" and any(_quote_key_text(f.value) in key or key in _quote_key_text(f.value) for key in translated))]
    if found and not kept and not failures:
        # Nothing else is wrong and the quotation's own words are in its source: that source supports it. (The
        # translation's wording is the writer model's; with a judge, the judge reads the original beside it.)
        first = found[0]
        return rules.model_copy(update={"verdict": "supported", "source_id": str(first.source_n), "evidence": first.original,
                                        "evidence_start": None, "evidence_end": None, "failures": []}), found
    return rules.model_copy(update={"failures": [*kept, *failures]}), found


def _quote_key_text(text: str) -> str:
    return " ".join(re.sub(r"[“”\"'‘’]", "", text).casefold().split())


def language_failures(rendered: RenderedDraft, evidence: EvidenceIndex) -> dict[str, RuleFailure]:
    """By sentence id: the draft's sentences clearly written in another language than the newsroom's.

    Only the target, the sources' languages and a few common ones are weighed (pipeline.text.language), and
    fragments too short to tell ("Kowalski said.") are never flagged."""
    out: dict[str, RuleFailure] = {}
    for s in rendered.sentences:
        found = evidence.foreign(s.text)
        if found is not None:
            out[s.id] = RuleFailure(type="language", value=found,
                                    detail=f"written in {found}, not in the newsroom's language ({evidence.language}); "
                                           "translate it (a quotation is marked as translated)")
    return out


def with_language(verdict: ClaimVerdict, failure: RuleFailure | None) -> ClaimVerdict:
    """A sentence in another language is flagged wrong_language whatever supports it; a worse verdict stays, with the
    failure listed."""
    if failure is None:
        return verdict
    update: dict[str, Any] = {"failures": [*verdict.failures, failure]}
    if _SEVERITY[verdict.verdict] < _SEVERITY["wrong_language"]:
        update.update(verdict="wrong_language", method="rules")
    return verdict.model_copy(update=update)


async def check_article(
    article: Article,
    evidence: EvidenceIndex,
    *,
    settings: FactCheck | None = None,
    gateway=None,
    prompts: PromptLibrary | None = None,
    draft_id: str = "",
    stats: JudgeStats | None = None,
) -> FactCheckReport:
    """Claims, evidence, judge (when `gateway` is given and available) and rules for one article, without revision;
    the judge's requests are capped at `settings.max_calls_per_draft`."""
    settings = settings or FactCheck()
    use_model = gateway is not None and getattr(gateway, "available", False)
    stats = stats if stats is not None else JudgeStats()
    rendered = render_draft(article)
    evidence.translations = list(article.translations)
    calls = draft_calls(settings, gateway) if use_model else None
    checked = await claims_of(rendered, evidence, settings=settings,
                              gateway=BoundedGateway(gateway, calls) if use_model else None,
                              prompts=prompts, context=article.headline, stats=stats, calls=calls)
    verdicts = verdicts_for(rendered, checked, evidence)
    if calls is not None:
        stats.requests = calls.used
    method, fallback = decided_by(use_model, stats, len(rendered.sentences))
    return FactCheckReport(draft_id=draft_id, verdicts=verdicts, method=method, fallback=fallback, totals=totals(verdicts))


def decided_by(use_model: bool, stats: JudgeStats, statements: int) -> tuple[Literal["llm", "rules"], str | None]:
    """The report's method: "llm" only when the judge decided every statement it was to decide; "rules" with the
    fallback's reason when the rules decided some in its place (cap, unusable replies, outage); "rules" offline."""
    if not use_model:
        return "rules", None
    fallback = stats.fallback(statements)
    if fallback is None and stats.calls == 0:
        return "rules", None   # nothing went to the model (an empty draft)
    return ("llm" if fallback is None else "rules"), fallback


def method_label(report: FactCheckReport) -> str:
    """How a report was decided, as the stage notes and logs say it: llm, rules, or rules (fallback: why)."""
    return report.method if report.fallback is None else f"{report.method} (fallback: {report.fallback})"


# --- revision -----------------------------------------------------------------------------------------


def _raw_sentences(rendered: RenderedDraft) -> list[str]:
    return [rendered.text[s.start:s.end] for s in rendered.sentences]


def measure_revision(before: Article, after: Article, round_number: int,
                     by: Literal["judge", "reviser"] = "reviser") -> Revision:
    """How much a revision changed: sentences that differ, characters changed within them, share of the text.

    Sentences are aligned first (difflib on the sentence lists), then only the
    changed runs are compared character by character, so a one-word fix in a
    long article costs little to measure. change_ratio = chars_changed / len(before text), at most 1.
    """
    old, new = render_draft(before), render_draft(after)
    a, b = _raw_sentences(old), _raw_sentences(new)
    spans = chars = 0
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        spans += max(i2 - i1, j2 - j1)
        x, y = " ".join(a[i1:i2]), " ".join(b[j1:j2])
        if not x or not y:
            chars += len(x) + len(y)
            continue
        chars += sum(
            max(q2 - q1, r2 - r1)
            for t, q1, q2, r1, r2 in difflib.SequenceMatcher(None, x, y, autojunk=False).get_opcodes()
            if t != "equal"
        )
    ratio = min(1.0, chars / max(1, len(old.text)))
    return Revision(round=round_number, spans_revised=spans, chars_changed=chars, change_ratio=round(ratio, 4), by=by)


def carry_over(old: RenderedDraft, checked: Sequence[SentenceClaims], new: RenderedDraft) -> list[SentenceClaims]:
    """The revised draft's claims without a model call.

    A sentence the revision left as it was (same text, citation markers
    included) keeps its claims and the model's verdicts. A changed or new
    sentence is one claim with no model verdict: the rules decide, so it counts
    as supported only when they find it in a source; otherwise it stays flagged.
    """
    by_id = {sc.sentence.id: sc for sc in checked}
    kept: dict[int, SentenceClaims] = {}
    matcher = difflib.SequenceMatcher(None, _raw_sentences(old), _raw_sentences(new), autojunk=False)
    for tag, i1, i2, j1, _j2 in matcher.get_opcodes():
        if tag == "equal":
            for k in range(i2 - i1):
                before = by_id.get(old.sentences[i1 + k].id)
                if before is not None:
                    kept[j1 + k] = before
    return [
        SentenceClaims(s, kept[j].claims, kept[j].correction) if j in kept else _whole(s)
        for j, s in enumerate(new.sentences)
    ]


# --- the judge's corrections: a contradicted sentence fixed in the check call, without a reviser call ---------

# Share of a sentence's content words its correction must keep: a correction changes the wrong detail, it is not
# another statement (which a decoder filling the schema at random, or a judge rewriting freely, would give).
CORRECTION_KEPT_TERMS = 0.5


def verified_correction(sentence: DraftSentence, correction: str, evidence: EvidenceIndex) -> str | None:
    """The judge's correction of a flagged sentence, if the rules take it in the sentence's place: one sentence of the
    lead, body or insights, without citation markers or links of its own, keeping most of the sentence's words, that
    a source supports by the rules with no rule failure. None otherwise (then the reviser is asked, as before)."""
    text = " ".join(correction.replace("<\\/", "</").split())
    if sentence.section == "headline" or not text or text == sentence.text:
        return None
    if _MARKER.search(text) or find_urls(text) or len(split_sentences(text)) != 1:
        return None
    before = set(content_terms(tokenize(sentence.text)))
    if len(before & set(content_terms(tokenize(text)))) < CORRECTION_KEPT_TERMS * len(before):
        return None
    evidence.prepare([text])
    rules = evidence.verify(text)
    return text if rules.verdict == "supported" and not rules.failures else None


def with_corrections(article: Article, rendered: RenderedDraft, fixes: Mapping[str, str]) -> Article:
    """The article with each sentence of `fixes` (by sentence id) replaced; a citation marker inside the old sentence
    goes to the end of the new one. A sentence whose text is not found exactly once in its part is left as it was."""
    parts: dict[tuple[str, int], str] = {("lead", 0): article.lead}
    parts.update({("body", i): p.text for i, p in enumerate(article.body)})
    parts.update({("insights", i): x.text for i, x in enumerate(article.insights)})
    for s in rendered.sentences:
        key = (s.section, s.part)
        if s.id not in fixes or key not in parts:
            continue
        raw, new = rendered.text[s.start:s.end], fixes[s.id]
        markers = " ".join(m.group(0) for m in _MARKER.finditer(raw))
        if markers:
            new = re.sub(r"([.!?…]*)$", lambda m: f" {markers}{m.group(1)}", new, count=1)
        if parts[key].count(raw) == 1:
            parts[key] = parts[key].replace(raw, new)
    return article.model_copy(update={
        "lead": parts[("lead", 0)],
        "body": [p.model_copy(update={"text": parts[("body", i)]}) for i, p in enumerate(article.body)],
        "insights": [x.model_copy(update={"text": parts[("insights", i)]}) for i, x in enumerate(article.insights)],
    })


def judge_corrected(article: Article, rendered: RenderedDraft, checked: Sequence[SentenceClaims],
                    verdicts: Sequence[ClaimVerdict], evidence: EvidenceIndex, spec: TemplateSpec,
                    pack: ResearchPack) -> tuple[Article, int] | None:
    """The article with the judge's verified corrections of its flagged sentences, and how many there were; None when
    there is none, or when they would break the template."""
    flagged = {v.claim.start for v in verdicts if v.verdict != "supported"}
    fixes = {}
    for sc in checked:
        if sc.correction and sc.sentence.start in flagged:
            text = verified_correction(sc.sentence, sc.correction, evidence)
            if text is not None:
                fixes[sc.sentence.id] = text
    if not fixes:
        return None
    candidate = with_corrections(article, rendered, fixes)
    if candidate == article or validate_article(candidate, spec, pack.sources, pack.language):
        return None
    return candidate, len(fixes)


@dataclass
class CheckOutcome:
    article: Article            # the article as it should be stored (revised or as drafted)
    report: FactCheckReport
    revised: bool = False       # the stored article must be replaced
    stats: JudgeStats = field(default_factory=JudgeStats)
    meta: PublishMeta | None = None   # the draft's metadata remade from the revised article (slug, description)


@dataclass
class PreparedCheck:
    """What a check needs before its first model call; building it costs CPU (embeddings, rules), no money."""

    draft: Draft
    pack: ResearchPack
    article: Article
    rendered: RenderedDraft
    evidence: EvidenceIndex
    statements: list[JudgeItem] | None   # None on the offline path
    rule_flags: list[ClaimVerdict] = field(default_factory=list)   # see judge_independent_flags


# Rule failures no verdict of the judge can change or clear: an opening reference nothing resolves, a sentence in
# another language, a citation or link that is not a source's. The reviser can fix them beside the check call.
JUDGE_INDEPENDENT_FAILURES = frozenset({"reference", "language", "citation", "url"})


def judge_independent_flags(rendered: RenderedDraft, evidence: EvidenceIndex) -> list[ClaimVerdict]:
    """The draft's sentences the rules flag for a JUDGE_INDEPENDENT_FAILURES problem, as the reviser takes them."""
    verdicts = verdicts_for(rendered, [_whole(s) for s in rendered.sentences], evidence)
    return [v for v in verdicts if any(f.type in JUDGE_INDEPENDENT_FAILURES for f in v.failures)]


def prepare_check(draft: Draft, pack: ResearchPack, config: Config, *, embed: Embed | None = None,
                  with_model: bool = True) -> PreparedCheck:
    """The evidence windows (embedded), the rendered draft and, for the model path, its statements with their windows."""
    evidence = EvidenceIndex(sources_from_pack(pack.sources), config.factcheck.window_sentences, embed, language=pack.language)
    article = as_article(draft.article)
    evidence.translations = list(article.translations)
    rendered = render_draft(article)
    statements = statements_of(rendered, evidence) if with_model else None
    flags = judge_independent_flags(rendered, evidence) if with_model and config.factcheck.revise_rounds > 0 else []
    return PreparedCheck(draft, pack, article, rendered, evidence, statements, flags)


def warm_evidence(pack: ResearchPack, config: Config, embed: Embed | None, source_n: int | None = None) -> None:
    """Embed a story's source windows before its draft exists (through `embed`, an EmbeddingMemo), so that
    `prepare_check` finds them done when the draft arrives: the story's check starts sooner.

    `source_n`: only that source's windows. The check stage warms a story up one source at a time, so a draft
    that arrives waits for one source's windows at most (measured: 0.07 s), never for a whole story's (0.2 s,
    the first draft's usual wait in a 10-story run). An EvidenceIndex cuts its windows from each source alone,
    so one source's are the same texts as in the whole story's index."""
    sources = [s for s in pack.sources if source_n is None or s.n == source_n]
    if embed is not None and sources:
        EvidenceIndex(sources_from_pack(sources), config.factcheck.window_sentences, embed,
                      language=pack.language).prepare([])


async def check_draft(
    draft: Draft,
    pack: ResearchPack,
    spec: TemplateSpec | None,
    *,
    config: Config,
    gateway=None,
    embed: Embed | None = None,
    reviser: Reviser | None = None,
) -> CheckOutcome:
    """Check a draft with one check call and, with a model and a `reviser` (the writer's, which the
    check stage passes in: agents never import each other), revise its flagged claims at most
    `factcheck.revise_rounds` times.

    The check call also returns the judge's correction of each contradicted sentence; those the
    rules verify replace their sentences at once (`judge_corrected`), so the reviser is asked only
    for what is still flagged. After any revision only the changed sentences are checked again, by
    the rules (see `carry_over`): no second check call. A revision that breaks the template
    (or changes nothing) ends the loop and the last good version is kept. Claims
    that still fail stay in the article, flagged in the report.
    """
    prepared = prepare_check(draft, pack, config, embed=embed, with_model=model_available(gateway, config))
    return await check_prepared(prepared, spec, config=config, gateway=gateway, reviser=reviser)


async def check_prepared(
    prepared: PreparedCheck, spec: TemplateSpec | None, *, config: Config, gateway=None, reviser: Reviser | None = None
) -> CheckOutcome:
    """`check_draft` from its prepared part on: the check call, the rules, the revise loop."""
    settings = config.factcheck
    draft, pack, evidence = prepared.draft, prepared.pack, prepared.evidence
    use_model = model_available(gateway, config)
    stats = JudgeStats()
    current, rendered = prepared.article, prepared.rendered
    # Judge and reviser share the draft's cap; judge calls after the first leave room for one revision.
    calls = draft_calls(settings, gateway) if use_model else None
    bounded = BoundedGateway(gateway, calls) if calls is not None else None
    correcting = use_model and spec is not None and settings.revise_rounds > 0   # 0: the check only reports
    revising = correcting and reviser is not None
    # What the rules flag whatever the judge says goes to the reviser now, beside the check call, not after it: a
    # draft with a dangling reference then takes one round of calls, not two.
    early = prepared.rule_flags if revising and calls.allows() else []
    early_revision = asyncio.ensure_future(
        reviser(draft.model_copy(update={"article": current}), early, pack, spec, bounded)) if early else None
    try:
        checked = await claims_of(rendered, evidence, settings=settings, gateway=bounded,
                                  prompts=PromptLibrary(config.prompts_dir), context=current.headline, stats=stats,
                                  statements=prepared.statements, calls=calls,
                                  keep=calls.per_call if calls is not None and revising else 0)
    except BaseException:
        if early_revision is not None:
            early_revision.cancel()
        raise
    verdicts = verdicts_for(rendered, checked, evidence)
    revisions: list[Revision] = []

    def adopt(candidate: Article, revision: Revision) -> None:
        """The revised article from now on: unchanged sentences keep their verdicts, changed ones go to the rules."""
        nonlocal current, rendered, checked, verdicts
        revisions.append(revision)
        revised = render_draft(candidate)
        checked = carry_over(rendered, checked, revised)
        current, rendered = candidate, revised
        verdicts = verdicts_for(rendered, checked, evidence)

    def take(candidate: Article, round_number: int) -> bool:
        """Adopt a reviser's article unless it changes nothing or breaks the template (then the last good one stays)."""
        if candidate != current:
            violations = validate_article(candidate, spec, pack.sources, pack.language)
            if not violations:
                adopt(candidate, measure_revision(current, candidate, round_number))
                return True
            log.warning("revision %d of draft %s breaks the template, keeping the previous version: %s",
                        round_number, draft.id, "; ".join(violations))
        revisions.append(Revision(round=round_number, spans_revised=0, chars_changed=0, change_ratio=0.0))
        return False

    rounds = range(1, settings.revise_rounds + 1)
    tried: set[tuple[str, str]] = set()
    if early_revision is not None:
        take(as_article(await early_revision), 1)
        rounds = range(2, settings.revise_rounds + 2)
        # A flagged sentence it left as it was is not asked about again for the same verdict (by the sentence's
        # text: the judge may have split it into claims of other words since).
        tried = {(prepared.rendered.text[v.claim.start:v.claim.end], v.verdict) for v in early}
    if correcting:
        # The judge's own corrections: no call, so a draft with a misstated figure is done in one round.
        corrected = judge_corrected(current, rendered, checked, verdicts, evidence, spec, pack)
        if corrected is not None:
            stats.corrected = corrected[1]
            adopt(corrected[0], measure_revision(current, corrected[0], 0, by="judge"))
    if revising:
        for round_number in rounds:
            flagged = [v for v in verdicts
                       if v.verdict != "supported" and (rendered.text[v.claim.start:v.claim.end], v.verdict) not in tried]
            if not flagged:
                break
            if not calls.allows():
                calls.refused += 1
                stats.revisions_capped += 1
                log.warning("draft %s: no revision %d, the draft's %d model requests are used (factcheck.max_calls_per_draft)",
                            draft.id, round_number, calls.cap)
                break
            if not take(as_article(await reviser(draft.model_copy(update={"article": current}), flagged, pack, spec, bounded)),
                        round_number):
                break
    if calls is not None:
        stats.requests = calls.used
    method, fallback = decided_by(use_model, stats, len(prepared.rendered.sentences))
    report = FactCheckReport(draft_id=draft.id, verdicts=verdicts, revisions=revisions, method=method, fallback=fallback,
                             totals=totals(verdicts))
    if use_model:
        log.info("draft %s: %d sentence(s) checked in %d call(s) (%d split, %d retried alone, %d left to the rules), "
                 "%d corrected by the judge, %d revision(s), %d of %d model request(s); method %s",
                 draft.id, len(rendered.sentences), stats.calls, stats.split, stats.retried_alone, stats.unanswered,
                 stats.corrected, sum(1 for r in revisions if r.spans_revised and r.by == "reviser"), stats.requests,
                 stats.cap, method_label(report))
    revised = current != prepared.article
    meta = None
    if revised and draft.meta is not None and spec is not None:
        meta = refreshed_meta(draft.meta, current, spec.metadata)
    return CheckOutcome(article=current, report=report, revised=revised, stats=stats, meta=meta)


# --- the stage ---------------------------------------------------------------------------------------------


def draft_from_row(row) -> tuple[Draft, ResearchPack]:
    if row.research is None:
        raise FactCheckError("no research pack is stored with the draft, so there are no sources to check it against")
    draft = Draft(
        id=row.id, story_key=row.story_key, template=row.template, writer_model=row.writer_model, method=row.method,
        prompt_versions=row.prompt_versions or {}, article=Article.model_validate(row.article),
        violations=row.violations or [], state=DraftState(row.state), created=as_utc(row.created),
        meta=PublishMeta.model_validate(row.meta) if row.meta else None,
    )
    return draft, ResearchPack.model_validate(row.research)


def save_check(ledger: Ledger, draft: Draft, outcome: CheckOutcome) -> bool:
    """Report, state `checked` and any revised article in one transaction; False if the draft moved on meanwhile."""
    values: dict[str, Any] = {
        "factcheck": outcome.report.model_dump(mode="json"),
        "state": DraftState.checked.value,
        "state_reason": None,
        "updated": utcnow(),
    }
    if outcome.revised:
        values["article"] = outcome.article.model_dump(mode="json")
        values["violations"] = []
    if outcome.meta is not None:
        values["meta"] = outcome.meta.model_dump(mode="json")
    with ledger.begin() as connection:
        changed = connection.execute(
            update(schema.drafts)
            .where(schema.drafts.c.id == draft.id, schema.drafts.c.state == DraftState.drafted.value)
            .values(**values)
        ).rowcount
    return bool(changed)


def check_drafts(run, reviser: Reviser | None = None) -> StageReport:
    """The check stage on its own (drafts already written): `check_stream` with nothing streaming in."""
    report = StageReport(stage="check")
    run.run_async(check_stream(run, report, reviser))
    return report


async def check_stream(run, report: StageReport, reviser: Reviser | None = None, incoming: asyncio.Queue | None = None) -> None:
    """Fact-check every `drafted` draft; `needs_attention` drafts are left for editors to fix first.

    Drafts are checked concurrently: each is prepared (evidence, embeddings,
    rules; no model call), then up to `llm.concurrency` drafts at a time go to
    the model, and each is saved in its own transaction as soon as its check is
    done, so a killed run keeps every draft it finished. After a stop request no
    further draft goes to the model; those in hand are finished. One draft's
    failure is an error line in the report; the others still run. `reviser`
    (the writer's `revise_draft`, given by the check stage) rewrites flagged claims.

    `incoming` streams the ids of drafts written while this stage runs (the runner's draft -> check handoff,
    ended by None): each is checked as it arrives, beside the drafts that were waiting when the stage began.
    It also carries the ResearchPack of each story as it goes to the writer: its source windows are embedded
    while the writer's call is in flight, so the draft's own preparation is only its sentences.
    """
    config, ledger = run.config, run.ledger
    counts = {"drafts_checked": 0, "claims": 0, **dict.fromkeys(VERDICTS, 0), "revised_rounds": 0, "judge_corrections": 0,
              "revisions_capped": 0}
    report.notes.update(counts)
    with ledger.engine.connect() as connection:
        rows = connection.execute(
            select(schema.drafts).where(schema.drafts.c.state == DraftState.drafted.value).order_by(schema.drafts.c.created)
        ).all()
    rows = [row for row in rows if run.in_scope("check", row.id)]
    report.items_in = len(rows)
    if not rows and incoming is None:
        return

    try:
        templates = load_templates(config.templates_dir, config.topic_names)
    except Exception as exc:  # checking still works; only revision needs the template
        templates = {}
        report.errors.append(f"templates could not be loaded, drafts are checked without revision: {exc}")
    gateway = None
    if not config.llm.offline:
        try:
            gateway = run.gateway
        except Exception as exc:
            report.errors.append(f"the LLM gateway could not be set up, checking with rules only: {type(exc).__name__}: {exc}")
    embed = _store_embed(run)

    # Drafts per method that decided them: llm, rules (offline), rules (fallback: ...) by the fallback's first reason.
    methods: dict[str, int] = {}
    requests: list[int] = []
    with_model = model_available(gateway, config)
    left = [0]

    # Preparing is CPU work (embeddings, rules). Done in a worker thread, it does not hold up the event loop, which
    # keeps sending the prepared drafts' calls; one worker, since the embedding model already uses every core and
    # drafts prepared one after another reach the model soonest. A draft is prepared before it waits for a slot,
    # and before any warm-up still queued (PREPARE before WARM_UP): a warm-up only gets ahead, a draft is ready now.
    preparer = PriorityThread("factcheck-prepare")

    async def check_one(row, gate: asyncio.Semaphore) -> None:
        try:
            draft, pack = draft_from_row(row)
            prepared = None if run.stop_requested else await asyncio.wrap_future(preparer.submit(
                PREPARE, partial(prepare_check, draft, pack, config, embed=embed, with_model=with_model)
            ))
        except Exception as exc:
            report.errors.append(f"draft {row.id}: fact-check failed: {type(exc).__name__}: {exc}")
            return
        async with gate:
            if prepared is None or run.stop_requested:
                left[0] += 1
                return
            try:
                outcome = await check_prepared(prepared, templates.get(draft.template), config=config, gateway=gateway,
                                                reviser=reviser)
                if not save_check(ledger, draft, outcome):
                    log.info("draft %s changed state while it was checked; left as it is", draft.id)
                    return
            except Exception as exc:
                report.errors.append(f"draft {row.id}: fact-check failed: {type(exc).__name__}: {exc}")
                return
        report.items_out += 1
        label = "rules (fallback)" if outcome.report.fallback else outcome.report.method
        methods[label] = methods.get(label, 0) + 1
        if with_model:
            requests.append(outcome.stats.requests)
            counts["revisions_capped"] += outcome.stats.revisions_capped
        counts["drafts_checked"] += 1
        counts["revised_rounds"] += sum(1 for r in outcome.report.revisions if r.spans_revised and r.by == "reviser")
        counts["judge_corrections"] += outcome.stats.corrected
        for key in ("claims", *VERDICTS):
            counts[key] += outcome.report.totals.get(key, 0)

    async def check_all() -> None:
        gate = asyncio.Semaphore(config.llm.concurrency)
        # Drafts likely to need a revision go first: theirs is the longest chain of calls (check, then revise),
        # so when there are more drafts than slots, the revisions overlap the other drafts' checks.
        ordered = sorted(rows, key=lambda row: not revision_likely(row)) if with_model else rows
        seen = {row.id for row in rows}
        checking = [asyncio.ensure_future(check_one(row, gate)) for row in ordered]
        while incoming is not None and (message := await incoming.get()) is not None:
            if isinstance(message, ResearchPack):  # a story going to the writer: its windows, ahead of its draft
                if not run.stop_requested:
                    for source in message.sources:
                        warming = asyncio.wrap_future(preparer.submit(WARM_UP, warm_evidence, message, config, embed, source.n))
                        # Only a head start: the draft's own preparation embeds what it did not, and reports its failures.
                        warming.add_done_callback(log_failure(log, "fact-check warm-up"))
                continue
            draft_id = message
            if draft_id in seen:
                continue
            seen.add(draft_id)
            with ledger.engine.connect() as connection:
                row = connection.execute(select(schema.drafts).where(
                    schema.drafts.c.id == draft_id, schema.drafts.c.state == DraftState.drafted.value)).first()
            if row is not None:
                report.items_in += 1
                checking.append(asyncio.ensure_future(check_one(row, gate)))
        await asyncio.gather(*checking)

    try:
        await check_all()
    finally:
        preparer.shutdown()
    if left[0]:
        log.warning("stop requested; %d draft(s) left unchecked", left[0])
    report.notes.update(counts)
    if methods:
        # "llm 4, rules (fallback) 2": how many drafts each method decided, never one label for the stage.
        order = ["llm", "rules", "rules (fallback)"]
        report.notes["method"] = ", ".join(f"{m} {methods[m]}" for m in order if m in methods)
        report.notes["drafts_llm"] = methods.get("llm", 0)
        report.notes["drafts_rules"] = methods.get("rules", 0)
        report.notes["drafts_fallback"] = methods.get("rules (fallback)", 0)
    if requests:
        report.notes["model_requests"] = sum(requests)
        report.notes["max_requests_per_draft"] = max(requests)
        report.notes["request_cap_per_draft"] = config.factcheck.max_calls_per_draft


# The preparer thread's priorities: a draft's own preparation before a story's warm-up.
PREPARE, WARM_UP = 0, 1


def revision_likely(row) -> bool:
    """A figure or quotation in the draft that no source has: the rules will flag it, so the draft will most likely
    need a revision after its check. Only a scheduling hint, from regular expressions; False when the row is unreadable."""
    try:
        draft, pack = draft_from_row(row)
        sentences = [s.text for s in render_draft(as_article(draft.article)).sentences]
    except Exception:  # the draft's own check reports what is wrong with it
        return False
    sources = [f"{s.title}\n{s.text}" for s in pack.sources]
    figures = [q for text in sources for q in extract_numbers(text)]
    for sentence in sentences:
        if any(not any(numbers_match(q, f) for f in figures) for q in extract_numbers(sentence)):
            return True
        if any(not any(quote_appears_verbatim(quote, text) for text in sources) for quote in extract_quotes(sentence)):
            return True
    return False


def _store_embed(run) -> Embed | None:
    """The store's embedding function as the run remembers it (Run.embed_memo: a story's windows embedded in its
    warm-up are not embedded again for its draft), if the store can be opened; retrieval is lexical without it."""
    try:
        store = run.store
    except Exception as exc:
        log.warning("store unavailable, fact-check retrieval is lexical only: %s", exc)
        return None
    return run.embed_memo if getattr(store, "embed", None) is not None else None


# --- benchmark entry point ------------------------------------------------------------------------------


async def check_claims_with_model(cases: Sequence[dict], gateway, *, embed: Embed | None = None) -> list[dict]:
    """Verdict rows for bench/factcheck.py: the draft check call (each case's claim one statement, batched across
    cases by tokens) plus the rules.

    Each case is {"id", "claim", "sources": [{"id", "text", "title"?, "url"?}]}; a
    row is {"id", "verdict", "source_id", "evidence"}. When the model splits a
    claim into atomic claims, the case gets the worst of their verdicts (one
    unsupported part makes the claim unsupported). A case whose sources are
    malformed is unverifiable.
    """
    if not model_available(gateway):
        raise FactCheckError("check_claims_with_model needs an available model; the gateway has none configured")
    config: Config = gateway.config
    settings = config.factcheck
    prompts = PromptLibrary(config.prompts_dir)
    indexes: dict[str, EvidenceIndex] = {}
    prepared: list[tuple[dict, EvidenceIndex | None]] = []
    for case in cases:
        try:
            sources = [
                EvidenceSource(n=i, id=str(s.get("id", i)), outlet=str(s.get("title") or s.get("id") or f"source {i}"),
                               url=str(s.get("url") or ""), text=s["text"])
                for i, s in enumerate(case["sources"], 1)
            ]
            if not str(case["claim"]).strip() or any(not isinstance(s.text, str) for s in sources):
                raise ValueError("empty claim or a source text that is not a string")
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            log.warning("case %s: %s; marked unverifiable", case.get("id"), exc)
            prepared.append((case, None))
            continue
        key = hashlib.sha256(json.dumps([(s.id, s.text) for s in sources], ensure_ascii=False).encode()).hexdigest()
        if key not in indexes:
            indexes[key] = EvidenceIndex(sources, settings.window_sentences, embed)
        prepared.append((case, indexes[key]))

    items: list[JudgeItem] = []
    for i, (case, evidence) in enumerate(prepared):
        if evidence is not None:
            evidence.prepare([case["claim"]])
            anchor = evidence.verify(case["claim"])
            items.append(JudgeItem(f"c{i + 1}", case["claim"], evidence.candidates(case["claim"], anchor=anchor), evidence.by_n))
    judged = await judge_items(items, gateway, prompts, settings)

    rows = []
    for i, (case, evidence) in enumerate(prepared):
        if evidence is None:
            rows.append({"id": case.get("id"), "verdict": "unverifiable", "source_id": None, "evidence": ""})
            continue
        claims = judged.get(f"c{i + 1}") or [JudgedClaim(case["claim"], None)]
        evidence.prepare([c.text for c in claims])
        verdicts = [
            decide(Claim(id=f"c{i + 1}.{k}", text=c.text, start=0, end=len(case["claim"])), c.judgement,
                   evidence.verify(c.text), [], evidence)
            for k, c in enumerate(claims, 1)
        ]
        worst = max(verdicts, key=lambda v: _SEVERITY[v.verdict])  # the first of the worst
        source = evidence.by_n.get(worst.source_n) if worst.source_n is not None else None
        rows.append({"id": case["id"], "verdict": worst.verdict, "source_id": source.id if source else None, "evidence": worst.evidence})
    return rows


__all__ = [
    "BoundedGateway",
    "CallBudget",
    "CallCapReached",
    "CheckOutcome",
    "DraftCalls",
    "DraftSentence",
    "EvidenceIndex",
    "EvidenceSource",
    "FactCheckError",
    "JudgeFinding",
    "JudgeItem",
    "JudgeReply",
    "JudgeStats",
    "JudgedClaim",
    "Judgement",
    "Passage",
    "PreparedCheck",
    "RenderedDraft",
    "SentenceClaims",
    "call_budget",
    "carry_over",
    "check_article",
    "check_claims_with_model",
    "check_draft",
    "check_drafts",
    "check_stream",
    "check_prepared",
    "check_validator",
    "claim_problems",
    "claims_of",
    "decided_by",
    "decide",
    "draft_calls",
    "draft_from_row",
    "finding_problems",
    "judge_items",
    "measure_revision",
    "method_label",
    "plan_batches",
    "prepare_check",
    "render_check_prompt",
    "render_draft",
    "reply_schema",
    "revision_likely",
    "save_check",
    "sentence_failures",
    "settle",
    "sources_from_pack",
    "statements_of",
    "strip_citation_markers",
    "totals",
    "unrelated_claim",
    "verdicts_for",
]
