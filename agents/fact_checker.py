"""Fact-checker agent: every claim of a draft checked against the sources it was written from.

The draft's sections (headline, lead, body paragraphs, insights) are rendered
into one canonical text, joined with a blank line, and split into sentences
that keep their offsets into it. Then:

1. Claims. With a model (role "claims", several sentences per call) each
   sentence becomes atomic, self-contained claims pointing back to its span;
   without one, each sentence is one claim.
2. Evidence. The story's sources (title + packed text) are indexed as
   overlapping windows of `factcheck.window_sentences` sentences. A claim's
   candidate windows are ranked by BM25, exact matches on its figures, dates
   and names, and (when an embedding function is given) cosine similarity.
3. Judge. With a model (role "judge", `factcheck.claims_per_call` claims per
   call), each claim gets supported / contradicted / unverifiable, a source
   number and a quoted span. A quote that is not verbatim in the cited source
   does not count. A claim is supported if any finding supports it, and
   contradicted only if one contradicts it and none supports it. Claims the
   judge left out are asked again one by one, then fall back to the rules.
4. Rules always run (pipeline.factrules: number, date, quote, entity,
   negation) plus citation checks on the sentence (an [n] that is no source, a
   URL that is no source's, "officially confirmed" with no source saying so).
   A rule failure can only make a verdict worse, never better.
5. Revise. With a model, flagged claims go to the writer's reviser, which
   changes only the flagged spans; the draft is checked again, at most
   `factcheck.revise_rounds` times. A revision that breaks the template is not
   kept. What still fails stays in the draft, flagged. Each round records how
   much text changed.

Offline, steps 1, 3 and 5 fall away: every sentence is checked by the rules
with embedding retrieval, and the report says `method = "rules"`.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Literal, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select, update

from pipeline import schema
from pipeline.config import Config, FactCheck
from pipeline.factrules import (
    OfflineVerdict,
    SourceIndex,
    content_terms,
    extract_dates,
    extract_entities,
    extract_numbers,
    extract_quotes,
    numbers_match,
    quote_appears_verbatim,
    tokenize,
    verify_offline,
)
from pipeline.ledger import Ledger, as_utc, utcnow
from pipeline.models import (
    Article,
    Claim,
    ClaimVerdict,
    Draft,
    DraftState,
    FactCheckReport,
    ResearchPack,
    Revision,
    RuleFailure,
    SourceDoc,
    StageReport,
    Verdict,
)
from pipeline.prompts import PromptLibrary
from pipeline.templates import TemplateSpec, as_article, find_urls, load_templates, normalize_url, validate_article
from pipeline.text import split_sentences

log = logging.getLogger("newsdesk.fact_checker")

Section = Literal["headline", "lead", "body", "insights"]
Embed = Callable[[Sequence[str]], np.ndarray]
Reviser = Callable[[Draft, list[ClaimVerdict], ResearchPack, TemplateSpec, Any], Awaitable[Article]]

SECTION_GAP = "\n\n"
# Candidate windows shown to the judge per claim; the rules look at their own best five.
EVIDENCE_WINDOWS = 3
# Same weights as pipeline.factrules ranks with, so judge and rules see similar windows.
EXACT_WEIGHT = 0.3
SEMANTIC_WEIGHT = 0.5
# A judge quote shorter than this many tokens ("the", "Lumen") decides nothing.
MIN_QUOTE_TOKENS = 2

_MARKER = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
_MARKER_WITH_SPACE = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")
_SEVERITY: dict[str, int] = {"supported": 0, "unverifiable": 1, "contradicted": 2}


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
        EvidenceSource(n=s.n, id=str(s.n), outlet=s.outlet, url=s.url, text=f"{s.title.strip()}{SECTION_GAP}{s.text}" if s.title.strip() else s.text)
        for s in sorted(sources, key=lambda s: s.n)
    ]


class EvidenceIndex:
    """The story's sources as windows, ranked per claim: lexical + exact figures/dates/names + optional embeddings."""

    def __init__(self, sources: Sequence[EvidenceSource], window_sentences: int = 4, embed: Embed | None = None) -> None:
        self.sources = list(sources)
        self.by_n = {s.n: s for s in self.sources}
        self.index = SourceIndex.build([(str(s.n), s.text) for s in self.sources], window_size=window_sentences)
        self._embed = embed
        self._window_vectors: np.ndarray | None = None
        self._text_vectors: dict[str, np.ndarray] = {}
        self._window_facts = [self._facts(w) for w in self.index.windows]

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
        """For pipeline.factrules.verify_offline, which asks for scores of all windows in index order."""
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
        scorer = self.semantic_scorer if self.semantic else None
        return verify_offline(text, self.index, semantic_scorer=scorer)

    def url_for(self, n: int | None) -> str | None:
        src = self.by_n.get(n) if n is not None else None
        return src.url if src else None


def _same_date(a, b) -> bool:
    pairs = [(a.year, b.year), (a.month, b.month), (a.day, b.day), (a.weekday, b.weekday)]
    return any(x is not None and y is not None for x, y in pairs) and all(x is None or y is None or x == y for x, y in pairs)


# --- claims ---------------------------------------------------------------------------------------


class ExtractedClaim(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sentence_id: str
    text: str


class ClaimExtraction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    claims: list[ExtractedClaim]


@dataclass(frozen=True)
class CheckItem:
    claim: Claim
    sentence: DraftSentence


def _claim(idx: int, text: str, sentence: DraftSentence) -> Claim:
    return Claim(id=f"c{idx}", text=text, start=sentence.start, end=sentence.end, section=sentence.section)


def sentence_claims(sentences: Sequence[DraftSentence]) -> list[CheckItem]:
    """The offline decomposition: each sentence is one claim."""
    return [CheckItem(_claim(i, s.text, s), s) for i, s in enumerate(sentences, 1)]


def _has_checkable_content(text: str) -> bool:
    return bool(extract_numbers(text) or extract_dates(text) or extract_quotes(text) or extract_entities(text))


def claims_validator(batch: Sequence[DraftSentence]) -> Callable[[ClaimExtraction], list[str]]:
    """Claims must point at a given sentence and keep its figures and quotations exactly."""
    by_id = {s.id: s for s in batch}

    def check(out: ClaimExtraction) -> list[str]:
        problems: list[str] = []
        for i, c in enumerate(out.claims):
            sentence = by_id.get(c.sentence_id)
            if sentence is None:
                problems.append(f"claims[{i}].sentence_id {c.sentence_id!r} is not one of the given sentence ids ({', '.join(by_id)})")
                continue
            if not c.text.strip():
                problems.append(f"claims[{i}].text is empty")
                continue
            figures = extract_numbers(sentence.text)
            for q in extract_numbers(c.text):
                if not any(numbers_match(q, s) for s in figures):
                    problems.append(f"claims[{i}] has the figure {q.raw!r}, which sentence {sentence.id} does not contain; keep figures exactly as written")
            for quote in extract_quotes(c.text):
                if not quote_appears_verbatim(quote, sentence.text):
                    problems.append(f"claims[{i}] quotes {quote!r}, which is not word for word in sentence {sentence.id}")
        return problems

    return check


async def extract_claims(
    sentences: Sequence[DraftSentence], gateway, prompts: PromptLibrary, per_call: int, headline: str = ""
) -> list[CheckItem]:
    """Atomic claims from the model, batched; a failed batch falls back to one claim per sentence.

    A sentence the model returned no claim for is still checked whole when it
    holds a figure, date, quotation or name: skipping it would leave a fact unchecked.
    """
    from pipeline.llm import LLMError

    batches = [list(sentences[i:i + per_call]) for i in range(0, len(sentences), per_call)]

    async def one(batch: list[DraftSentence]) -> list[tuple[DraftSentence, str]]:
        prompt = prompts.render("claims", sentences=[{"id": s.id, "section": s.section, "text": s.text} for s in batch], headline=headline)
        try:
            out = await gateway.call("claims", prompt, ClaimExtraction, validators=(claims_validator(batch),), stage="check")
        except LLMError as exc:
            log.warning("claim extraction failed for %d sentence(s), checking them whole: %s", len(batch), exc)
            return [(s, s.text) for s in batch]
        by_id = {s.id: s for s in batch}
        found: dict[str, list[str]] = {}
        for c in out.claims:
            text = " ".join(c.text.split())
            if text and text not in found.setdefault(c.sentence_id, []):
                found[c.sentence_id].append(text)
        pairs: list[tuple[DraftSentence, str]] = []
        for s in batch:
            texts = found.get(s.id) or ([s.text] if _has_checkable_content(s.text) else [])
            pairs += [(by_id[s.id], t) for t in texts]
        return pairs

    results = await asyncio.gather(*(one(b) for b in batches))
    pairs = [p for r in results for p in r]
    return [CheckItem(_claim(i, text, s), s) for i, (s, text) in enumerate(pairs, 1)]


# --- judge ------------------------------------------------------------------------------------------


class JudgeFinding(BaseModel):
    model_config = ConfigDict(extra="forbid")

    claim_id: str
    verdict: Verdict
    source_n: int | None
    quote: str


class JudgeReply(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verdicts: list[JudgeFinding]


@dataclass(frozen=True)
class JudgeItem:
    id: str
    text: str
    passages: list[Passage]
    sources: Mapping[int, EvidenceSource]   # where the cited quote must appear verbatim


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    source_n: int | None = None
    quote: str = ""
    rejected_quotes: int = 0   # findings dropped because their quote is not in the cited source


@dataclass
class JudgeStats:
    calls: int = 0
    retried_alone: int = 0
    unanswered: int = 0
    rejected_quotes: int = 0


def settle(findings: Sequence[JudgeFinding], sources: Mapping[int, EvidenceSource]) -> Judgement:
    """One verdict from the judge's findings for a claim.

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


def render_judge_prompt(items: Sequence[JudgeItem], prompts: PromptLibrary):
    claims = [
        {"id": it.id, "text": it.text,
         "evidence": [{"source_n": p.source_n, "outlet": p.outlet, "text": p.text} for p in it.passages]}
        for it in items
    ]
    return prompts.render("judge", claims=claims)


async def judge_claims(
    items: Sequence[JudgeItem], gateway, prompts: PromptLibrary, per_call: int, stats: JudgeStats | None = None
) -> dict[str, Judgement]:
    """Judgements by claim id, `per_call` claims per call, batches in parallel (the gateway caps concurrency).

    A claim the reply does not answer (missing or mismatched id), or a batch
    whose reply is unusable, is asked again alone. A claim still unanswered is
    absent from the result: the caller falls back to the rules, never drops it.
    A provider outage, spent budget or open circuit is not retried here.
    """
    from pipeline.llm import InvalidOutput, LLMError, OutputTruncated, Refused

    stats = stats if stats is not None else JudgeStats()
    results: dict[str, Judgement] = {}

    async def ask(batch: Sequence[JudgeItem]) -> dict[str, list[JudgeFinding]] | None:
        stats.calls += 1
        try:
            reply = await gateway.call("judge", render_judge_prompt(batch, prompts), JudgeReply, stage="check")
        except (InvalidOutput, OutputTruncated, Refused) as exc:
            log.warning("judge reply unusable for %d claim(s): %s", len(batch), exc)
            return {}
        except LLMError as exc:
            log.warning("judge unavailable for %d claim(s), the rules decide: %s", len(batch), exc)
            return None
        wanted = {it.id for it in batch}
        found: dict[str, list[JudgeFinding]] = {}
        for f in reply.verdicts:
            if f.claim_id in wanted:
                found.setdefault(f.claim_id, []).append(f)
        return found

    async def run_batch(batch: list[JudgeItem]) -> None:
        found = await ask(batch)
        if found is None:
            stats.unanswered += len(batch)
            return
        missing = [it for it in batch if it.id not in found]
        if len(batch) > 1 and missing:
            stats.retried_alone += len(missing)
            retries = await asyncio.gather(*(ask([it]) for it in missing))
            for it, again in zip(missing, retries):
                if again and it.id in again:
                    found[it.id] = again[it.id]
        for it in batch:
            if it.id in found:
                judgement = settle(found[it.id], it.sources)
                stats.rejected_quotes += judgement.rejected_quotes
                results[it.id] = judgement
            else:
                stats.unanswered += 1

    batches = [list(items[i:i + per_call]) for i in range(0, len(items), per_call)]
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
    from agents.classifier import instructs_a_model

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
    rules_verdict: Verdict = rules.verdict
    if extra and rules_verdict == "supported":
        rules_verdict = "unverifiable"

    def by_rules(verdict: Verdict) -> ClaimVerdict:
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
    out = {"supported": 0, "contradicted": 0, "unverifiable": 0}
    for v in verdicts:
        out[v.verdict] += 1
    out["claims"] = len(verdicts)
    return out


def model_available(gateway, config: Config | None = None) -> bool:
    if gateway is None or not getattr(gateway, "available", False):
        return False
    return not (config is not None and config.llm.offline)


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
    """Claims, evidence, judge (when `gateway` is given and available) and rules for one article."""
    settings = settings or FactCheck()
    rendered = render_draft(article)
    use_model = gateway is not None and getattr(gateway, "available", False)
    if use_model:
        prompts = prompts or PromptLibrary(gateway.config.prompts_dir)
        items = await extract_claims(rendered.sentences, gateway, prompts, settings.claims_per_call, headline=article.headline)
    else:
        items = sentence_claims(rendered.sentences)
    evidence.prepare([it.claim.text for it in items] + [s.text for s in rendered.sentences])

    rules = {it.claim.id: evidence.verify(it.claim.text) for it in items}
    judged: dict[str, Judgement] = {}
    if use_model and items:
        judge_items = [
            JudgeItem(it.claim.id, it.claim.text, evidence.candidates(it.claim.text, anchor=rules[it.claim.id]), evidence.by_n)
            for it in items
        ]
        judged = await judge_claims(judge_items, gateway, prompts, settings.claims_per_call, stats)

    # Sentence-level problems go with the sentence's first claim, so they are counted once.
    first_claim: dict[str, str] = {}
    for it in items:
        first_claim.setdefault(it.sentence.id, it.claim.id)
    first_sentence_of_part: dict[tuple[str, int], str] = {}
    for s in rendered.sentences:
        if s.id in first_claim:  # a paragraph's citations list is checked once, with its first checked sentence
            first_sentence_of_part.setdefault((s.section, s.part), s.id)
    extras: dict[str, list[RuleFailure]] = {}
    for s in rendered.sentences:
        if s.id not in first_claim:
            continue
        failures = sentence_failures(
            s, rendered.text[s.start:s.end], rendered.declared.get((s.section, s.part), []),
            first_sentence_of_part[(s.section, s.part)] == s.id, evidence,
        )
        extras[first_claim[s.id]] = failures

    verdicts = [
        decide(it.claim, judged.get(it.claim.id), rules[it.claim.id], extras.get(it.claim.id, []), evidence)
        for it in items
    ]
    return FactCheckReport(
        draft_id=draft_id, verdicts=verdicts, method="llm" if use_model else "rules", totals=totals(verdicts)
    )


# --- revision -----------------------------------------------------------------------------------------


def measure_revision(before: Article, after: Article, round_number: int) -> Revision:
    """How much a revision changed: sentences that differ, characters changed within them, share of the text.

    Sentences are aligned first (difflib on the sentence lists), then only the
    changed runs are compared character by character, so a one-word fix in a
    long article costs little to measure. change_ratio = chars_changed / len(before text), at most 1.
    """
    old, new = render_draft(before), render_draft(after)
    a = [old.text[s.start:s.end] for s in old.sentences]
    b = [new.text[s.start:s.end] for s in new.sentences]
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
    return Revision(round=round_number, spans_revised=spans, chars_changed=chars, change_ratio=round(ratio, 4))


@dataclass
class CheckOutcome:
    article: Article            # the article as it should be stored (revised or as drafted)
    report: FactCheckReport
    revised: bool = False       # the stored article must be replaced
    stats: JudgeStats = field(default_factory=JudgeStats)


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
    """Check a draft and, with a model, revise its flagged claims at most `factcheck.revise_rounds` times.

    A revision that breaks the template (or changes nothing) ends the loop and
    the last good version is kept. Claims that still fail stay in the article,
    flagged in the report.
    """
    settings = config.factcheck
    use_model = model_available(gateway, config)
    model = gateway if use_model else None
    prompts = PromptLibrary(config.prompts_dir)
    evidence = EvidenceIndex(sources_from_pack(pack.sources), settings.window_sentences, embed)
    stats = JudgeStats()
    current = as_article(draft.article)
    report = await check_article(current, evidence, settings=settings, gateway=model, prompts=prompts, draft_id=draft.id, stats=stats)
    revisions: list[Revision] = []
    if use_model and spec is not None:
        if reviser is None:
            from agents.writer import revise_draft as reviser  # type: ignore[no-redef]
        for round_number in range(1, settings.revise_rounds + 1):
            flagged = report.flagged()
            if not flagged:
                break
            candidate = as_article(await reviser(draft.model_copy(update={"article": current}), flagged, pack, spec, gateway))
            if candidate == current:
                revisions.append(Revision(round=round_number, spans_revised=0, chars_changed=0, change_ratio=0.0))
                break
            violations = validate_article(candidate, spec, pack.sources)
            if violations:
                log.warning("revision %d of draft %s breaks the template, keeping the previous version: %s",
                            round_number, draft.id, "; ".join(violations))
                revisions.append(Revision(round=round_number, spans_revised=0, chars_changed=0, change_ratio=0.0))
                break
            revisions.append(measure_revision(current, candidate, round_number))
            current = candidate
            report = await check_article(current, evidence, settings=settings, gateway=model, prompts=prompts, draft_id=draft.id, stats=stats)
    report = report.model_copy(update={"revisions": revisions})
    return CheckOutcome(article=current, report=report, revised=current != as_article(draft.article), stats=stats)


# --- the stage ---------------------------------------------------------------------------------------------


def draft_from_row(row) -> tuple[Draft, ResearchPack]:
    if row.research is None:
        raise FactCheckError("no research pack is stored with the draft, so there are no sources to check it against")
    draft = Draft(
        id=row.id, story_key=row.story_key, template=row.template, writer_model=row.writer_model, method=row.method,
        prompt_versions=row.prompt_versions or {}, article=Article.model_validate(row.article),
        violations=row.violations or [], state=DraftState(row.state), created=as_utc(row.created),
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
    with ledger.begin() as connection:
        changed = connection.execute(
            update(schema.drafts)
            .where(schema.drafts.c.id == draft.id, schema.drafts.c.state == DraftState.drafted.value)
            .values(**values)
        ).rowcount
    return bool(changed)


def check_drafts(run) -> StageReport:
    """Fact-check every `drafted` draft; `needs_attention` drafts are left for editors to fix first.

    One draft's failure is an error line in the report; the others still run.
    The run can stop between drafts.
    """
    config, ledger = run.config, run.ledger
    report = StageReport(stage="check")
    counts = {"drafts_checked": 0, "claims": 0, "supported": 0, "contradicted": 0, "unverifiable": 0, "revised_rounds": 0}
    report.notes.update(counts)
    with ledger.engine.connect() as connection:
        rows = connection.execute(
            select(schema.drafts).where(schema.drafts.c.state == DraftState.drafted.value).order_by(schema.drafts.c.created)
        ).all()
    report.items_in = len(rows)
    if not rows:
        return report

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

    method = set()
    for row in rows:
        if run.stop_requested:
            log.warning("stop requested; %d draft(s) left unchecked", report.items_in - report.items_out)
            break
        try:
            draft, pack = draft_from_row(row)
            spec = templates.get(draft.template)
            outcome = run.run_async(check_draft(draft, pack, spec, config=config, gateway=gateway, embed=embed))
            if not save_check(ledger, draft, outcome):
                log.info("draft %s changed state while it was checked; left as it is", draft.id)
                continue
        except Exception as exc:
            report.errors.append(f"draft {row.id}: fact-check failed: {type(exc).__name__}: {exc}")
            continue
        report.items_out += 1
        method.add(outcome.report.method)
        counts["drafts_checked"] += 1
        counts["revised_rounds"] += sum(1 for r in outcome.report.revisions if r.spans_revised)
        for key in ("claims", "supported", "contradicted", "unverifiable"):
            counts[key] += outcome.report.totals.get(key, 0)
    report.notes.update(counts)
    if method:
        report.notes["method"] = "+".join(sorted(method))
    return report


def _store_embed(run) -> Embed | None:
    """The store's embedding function, if the store can be opened; retrieval is lexical without it."""
    try:
        store = run.store
    except Exception as exc:
        log.warning("store unavailable, fact-check retrieval is lexical only: %s", exc)
        return None
    return getattr(store, "embed", None)


# --- benchmark entry point ------------------------------------------------------------------------------


async def check_claims_with_model(cases: Sequence[dict], gateway, *, embed: Embed | None = None) -> list[dict]:
    """Verdict rows for bench/factcheck.py: judge (batched across cases) plus rules, as in a draft check.

    Each case is {"id", "claim", "sources": [{"id", "text", "title"?, "url"?}]}; a
    row is {"id", "verdict", "source_id", "evidence"}. Claims are judged as
    given (no decomposition). A case whose sources are malformed is unverifiable.
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
    rules: dict[str, OfflineVerdict] = {}
    for i, (case, evidence) in enumerate(prepared):
        if evidence is not None:
            claim_id = f"c{i + 1}"
            evidence.prepare([case["claim"]])
            rules[claim_id] = evidence.verify(case["claim"])
            items.append(JudgeItem(claim_id, case["claim"], evidence.candidates(case["claim"], anchor=rules[claim_id]), evidence.by_n))
    judged = await judge_claims(items, gateway, prompts, settings.claims_per_call)

    rows = []
    for i, (case, evidence) in enumerate(prepared):
        if evidence is None:
            rows.append({"id": case.get("id"), "verdict": "unverifiable", "source_id": None, "evidence": ""})
            continue
        claim = Claim(id=f"c{i + 1}", text=case["claim"], start=0, end=len(case["claim"]))
        verdict = decide(claim, judged.get(claim.id), rules[claim.id], [], evidence)
        source = evidence.by_n.get(verdict.source_n) if verdict.source_n is not None else None
        rows.append({"id": case["id"], "verdict": verdict.verdict, "source_id": source.id if source else None, "evidence": verdict.evidence})
    return rows


__all__ = [
    "CheckItem",
    "CheckOutcome",
    "ClaimExtraction",
    "DraftSentence",
    "EvidenceIndex",
    "EvidenceSource",
    "FactCheckError",
    "JudgeFinding",
    "JudgeItem",
    "JudgeReply",
    "JudgeStats",
    "Judgement",
    "Passage",
    "RenderedDraft",
    "check_article",
    "check_claims_with_model",
    "check_draft",
    "check_drafts",
    "claims_validator",
    "decide",
    "draft_from_row",
    "extract_claims",
    "judge_claims",
    "measure_revision",
    "render_draft",
    "save_check",
    "sentence_claims",
    "sentence_failures",
    "settle",
    "sources_from_pack",
    "strip_citation_markers",
    "totals",
]
