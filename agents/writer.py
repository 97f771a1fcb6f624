"""Writer agent: a story's research pack in, a template-valid draft out.

With a model, the gateway writes the article under the template's schema and
`validate_article` checks it; the gateway feeds violations back for bounded
repair. Without one, an extractive writer assembles the article from the
sources' own sentences. Either way the same template validation decides the
draft's state: a draft that breaks the rules is saved as `needs_attention`
with the exact violations, never passed off as valid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.models import Article, ClaimVerdict, Draft, DraftState, Insight, Paragraph, ResearchPack, SourceDoc, Story
from pipeline.prompts import Prompt, PromptLibrary, library
from pipeline.templates import (
    TemplateSpec,
    article_model,
    as_article,
    count_sentences,
    count_words,
    find_urls,
    source_refs,
    validate_article,
)
from pipeline.text import normalize_for_match, split_sentences

log = logging.getLogger("newsdesk.writer")

Embed = Callable[[Sequence[str]], np.ndarray]
EXTRACTIVE = "extractive"


def draft_id(story_key: str) -> str:
    """Stable across runs: one story, one draft id."""
    return "d-" + hashlib.sha256(f"draft:{story_key}".encode()).hexdigest()[:20]


# --- prompts ---------------------------------------------------------------


def prompt_library(gateway=None) -> PromptLibrary:
    """The prompts folder the config names (newsroom.prompts_dir), else the bundled one."""
    config = getattr(gateway, "config", None)
    return library(str(config.prompts_dir)) if config is not None else library()


def render_writer_prompt(story: Story, pack: ResearchPack, spec: TemplateSpec, *, prompts: PromptLibrary | None = None) -> Prompt:
    """Exactly what the writer model is sent for this story (also shown by `run.py preview`)."""
    return (prompts or library()).render("writer", spec=spec, story=story, sources=sorted(pack.sources, key=lambda s: s.n))


def _flag_view(verdict: ClaimVerdict) -> dict:
    problems = [f"{f.type}: {f.detail}" + (f" ({f.value})" if f.value else "") for f in verdict.failures]
    return {
        "id": verdict.claim.id,
        "section": verdict.claim.section,
        "text": verdict.claim.text,
        "verdict": verdict.verdict,
        "source_n": verdict.source_n,
        "evidence": verdict.evidence,
        "problems": problems,
    }


def render_reviser_prompt(
    article: Article, flagged: list[ClaimVerdict], pack: ResearchPack, spec: TemplateSpec, *, prompts: PromptLibrary | None = None
) -> Prompt:
    return (prompts or library()).render(
        "reviser",
        spec=spec,
        article_json=json.dumps(as_article(article).model_dump(mode="json", exclude={"sources": {"__all__": {"published"}}}), ensure_ascii=False, indent=2),
        flags=[_flag_view(v) for v in flagged],
        sources=sorted(pack.sources, key=lambda s: s.n),
    )


def _max_tokens(gateway, spec: TemplateSpec, n_sources: int) -> int:
    """The output reserve research kept free in the window; without a config, a generous estimate from the template."""
    config = getattr(gateway, "config", None)
    if config is not None:
        return config.research.output_reserve_tokens
    words = spec.lead.max_words + spec.body.max_paragraphs * spec.body.max_words + spec.insights.max_count * spec.insights.max_words
    structure = 40 * (spec.body.max_paragraphs + spec.insights.max_count) + 80 * n_sources + 100
    return max(1000, int((words * 1.5 + structure) * 1.3) + spec.headline.max_chars)


# --- LLM path --------------------------------------------------------------


def _with_pack_sources(article: Article, sources: list[SourceDoc]) -> Article:
    """The article with its sources list rebuilt from what it cites, titles and URLs exactly as provided,
    and any credential the model wrote (an echoing endpoint, a leaked prompt) masked before it is stored."""
    plain = _masked(as_article(article))
    return plain.model_copy(update={"sources": source_refs(plain, sources)})


def _masked(article: Article) -> Article:
    from pipeline.logs import redact

    return article.model_copy(update={
        "headline": redact(article.headline),
        "lead": redact(article.lead),
        "body": [p.model_copy(update={"text": redact(p.text)}) for p in article.body],
        "insights": [i.model_copy(update={"text": redact(i.text)}) for i in article.insights],
    })


def article_validator(spec: TemplateSpec, sources: list[SourceDoc]) -> Callable[[Article], list[str]]:
    """The gateway validator: template rules on the article as it will be stored (sources list from its citations)."""
    return lambda article: validate_article(_with_pack_sources(article, sources), spec, sources)


async def _write_with_model(story: Story, pack: ResearchPack, spec: TemplateSpec, gateway) -> Draft:
    from pipeline.llm import InvalidOutput, OutputTruncated, Refused

    prompt = render_writer_prompt(story, pack, spec, prompts=prompt_library(gateway))
    model = gateway.model_for("writer")
    base = dict(
        id=draft_id(story.key), story_key=story.key, template=spec.name, writer_model=model,
        method="llm", prompt_versions={"writer": prompt.version},
    )
    try:
        result = await gateway.call(
            "writer", prompt, article_model(spec),
            validators=(article_validator(spec, pack.sources),),
            stage="draft", max_tokens=_max_tokens(gateway, spec, len(pack.sources)),
        )
    except (InvalidOutput, OutputTruncated, Refused) as exc:
        # The model answered, but not with a usable article; asking again next run would not change that.
        last = _last_article(exc)
        if last is None:
            article = Article(headline=_headline(story.title, "", spec.headline.max_chars), lead="", body=[], insights=[], sources=[])
            violations = [f"the writer model returned no usable article: {e}" for e in _errors(exc)]
        else:
            article = _with_pack_sources(last, pack.sources)
            violations = validate_article(article, spec, pack.sources) or _errors(exc)
        log.warning("draft for story %s still invalid after repair: %s", story.key, "; ".join(violations))
        return Draft(**base, article=article, violations=violations, state=DraftState.needs_attention)
    article = _with_pack_sources(result, pack.sources)
    violations = validate_article(article, spec, pack.sources)
    state = DraftState.needs_attention if violations else DraftState.drafted
    return Draft(**base, article=article, violations=violations, state=state)


def _last_article(exc: Exception) -> Article | None:
    """The model's last article: the gateway's last schema-valid object, else its raw reply read leniently.

    A reply that only broke the template's item counts fails the derived schema
    but is still a readable article an editor can fix, so it is kept.
    """
    output = getattr(exc, "output", None)
    if isinstance(output, Article):
        return output
    raw = getattr(exc, "raw", None)
    if isinstance(raw, str) and raw.strip():
        text = re.sub(r"^```(?:json)?\s*|\s*```$", "", raw.strip())
        try:
            return Article.model_validate_json(text)
        except ValueError:
            return None
    return None


def _errors(exc: Exception) -> list[str]:
    errors = getattr(exc, "errors", None)
    return [str(e) for e in errors] if isinstance(errors, list) and errors else [str(exc)]


# --- entry points -------------------------------------------------------------


async def write_draft(story: Story, pack: ResearchPack, spec: TemplateSpec, gateway, *, embed: Embed | None = None) -> Draft:
    """Write a draft: with the model when the gateway is available, else extractively.

    Gateway errors other than invalid output (budget, outage) propagate: the
    draft stage reports them and the story waits for the next run.
    """
    if gateway is not None and getattr(gateway, "available", False):
        return await _write_with_model(story, pack, spec, gateway)
    return extractive_draft(story, pack, spec, embed=embed)


async def revise_draft(draft: Draft, flagged: list[ClaimVerdict], pack: ResearchPack, spec: TemplateSpec, gateway) -> Article:
    """The article with only the flagged statements corrected (role "reviser").

    Offline, or when the model cannot produce a valid revision, the article
    comes back unchanged: nothing is removed and the fact-checker keeps its flags.
    """
    if not flagged or gateway is None or not getattr(gateway, "available", False):
        return draft.article
    from pipeline.llm import LLMError

    prompt = render_reviser_prompt(draft.article, flagged, pack, spec, prompts=prompt_library(gateway))
    template_rules = article_validator(spec, pack.sources)
    scope_rules = revision_scope_validator(draft.article, flagged)
    try:
        result = await gateway.call(
            "reviser", prompt, article_model(spec),
            validators=(template_rules, scope_rules),
            stage="check", max_tokens=_max_tokens(gateway, spec, len(pack.sources)),
        )
    except LLMError as exc:
        log.warning("revision of draft %s failed, keeping it unchanged: %s", draft.id, exc)
        return draft.article
    return _with_pack_sources(result, pack.sources)


# --- revision scope ----------------------------------------------------------

_WORD = re.compile(r"[A-Za-z0-9$%][A-Za-z0-9$%.,'’\-]*")
_STOP = frozenset(
    "a an the and or but if of to in on at by for with from as is are was were be been being it its this that these those "
    "he she they we you i his her their our your has have had do does did not no so than then there here which who whom "
    "what when where why how will would can could should may might must also into over after before about more most said says".split()
)


def _terms(text: str) -> list[str]:
    out = []
    for raw in _WORD.findall(normalize_for_match(text).lower()):
        word = raw.strip(".,'’-")
        if len(word) > 1 and word not in _STOP:
            out.append(word)
    return out


def _same(a: str, b: str) -> bool:
    return normalize_for_match(a) == normalize_for_match(b)


def _touched(texts: list[str], claims: list[str]) -> set[int]:
    """Indexes of the texts that hold a flagged claim: the best term overlap, and any close to it."""
    touched: set[int] = set()
    for claim in claims:
        terms = set(_terms(claim))
        if not terms:
            continue
        overlaps = [len(terms & set(_terms(t))) / len(terms) for t in texts]
        best = max(overlaps, default=0.0)
        if best > 0:
            touched |= {i for i, o in enumerate(overlaps) if o >= best * 0.6}
    return touched


def revision_scope_validator(original: Article, flagged: list[ClaimVerdict]) -> Callable[[Article], list[str]]:
    """Parts of the article without a flagged claim must come back unchanged."""
    sections: dict[str, list[str]] = {}
    for verdict in flagged:
        sections.setdefault(verdict.claim.section, []).append(verdict.claim.text)
    fixed_body = set(range(len(original.body))) - _touched([p.text for p in original.body], sections.get("body", []))
    fixed_insights = set(range(len(original.insights))) - _touched([i.text for i in original.insights], sections.get("insights", []))

    def check(revised: Article) -> list[str]:
        problems = []
        if "headline" not in sections and not _same(revised.headline, original.headline):
            problems.append(f"the headline holds no flagged statement and must stay exactly: {original.headline!r}")
        if "lead" not in sections and not _same(revised.lead, original.lead):
            problems.append(f"the lead holds no flagged statement and must stay exactly: {original.lead!r}")
        kept = [p.text for p in revised.body]
        for i in sorted(fixed_body):
            if not any(_same(original.body[i].text, t) for t in kept):
                problems.append(f"body paragraph {i + 1} holds no flagged statement and must stay exactly: {original.body[i].text!r}")
        kept = [x.text for x in revised.insights]
        for i in sorted(fixed_insights):
            if not any(_same(original.insights[i].text, t) for t in kept):
                problems.append(f"insight {i + 1} holds no flagged statement and must stay exactly: {original.insights[i].text!r}")
        return problems

    return check


# --- extractive writer -------------------------------------------------------

# Lines that are page furniture rather than reporting.
_BOILERPLATE = re.compile(
    r"\b(?:subscribe|sign up|newsletter|click here|read more|follow us|cookies?|all rights reserved|disclaimer|"
    r"not investment advice|sponsored (?:content|post|article)|advertisement|share this|terms of service|privacy policy|"
    r"this article (?:was|is) (?:written|produced|updated)|contact the author)\b|^(?:image|photo|source|credit):",
    re.IGNORECASE,
)
_ENDS_SENTENCE = re.compile(r"[.!?][\"'”’)]*$")
_FIGURE = re.compile(
    r"[$€£¥]\s?\d[\d,.]*"
    r"|\b\d[\d,.]*\s?(?:%|(?:percent|per cent|million|billion|trillion|bn)\b)"
    r"|\b\d[\d,.]*\s?(?:BTC|ETH|SOL|XRP|USDT|USDC|tokens?|coins?|bitcoins?|ether)\b"
    r"|\b\d{1,3}(?:,\d{3})+\b",
    re.IGNORECASE,
)
_ENTITY = re.compile(r"\b(?:[A-Z][A-Za-z0-9&.\-]*[A-Za-z0-9]|[A-Z]{2,})(?:\s+(?:[A-Z][A-Za-z0-9&.\-]*[A-Za-z0-9]|[A-Z]{2,}))*")
_ENTITY_STOP = frozenset("The A An In On At But And As For If When While After Before This That It He She They We I Its Their".split())
# Openers that refer back to the previous sentence: such a sentence cannot start a paragraph or stand alone.
_DEPENDENT = re.compile(
    r"^[\"“'‘]?(he|she|it|they|this|that|these|those|its|his|her|their|there|but|however|also|meanwhile|still|yet|"
    r"instead|then|such|both|neither|the (firm|company|exchange|regulator|project|platform|agency|move|deal|report|"
    r"statement|bill|fund|token|network|protocol|attacker|bank|group))\b",
    re.IGNORECASE,
)
# "..., she said, ...": whoever "she" is was named in an earlier sentence.
_ANAPHORIC_ATTRIBUTION = re.compile(r"\b(?:he|she|they)\s+(?:said|says|added|adds|noted|wrote|told|warned|argued|expects|expected)\b", re.IGNORECASE)
_TITLE_SEPARATORS = (" | ", " - ", " – ", " — ", " :: ")


@dataclass(frozen=True)
class _Sentence:
    source: SourceDoc
    index: int          # position among the source's sentences
    text: str
    words: int
    usable: bool        # reads as a complete sentence of reporting
    dependent: bool     # leans on the sentence before it ("She said...", "However, ...")

    @property
    def key(self) -> tuple[int, int]:
        return (self.source.n, self.index)


def _reads_as_reporting(text: str, words: int) -> bool:
    opens_well = text[0].isupper() or text[0].isdigit() or text[0] in "\"“'‘$€£"
    return (
        words >= 6
        and opens_well
        and bool(_ENDS_SENTENCE.search(text))
        and not find_urls(text)
        and not _BOILERPLATE.search(text)
        and not text.isupper()
    )


def _sentences(source: SourceDoc) -> list[_Sentence]:
    out = []
    for index, s in enumerate(split_sentences(source.text)):
        text = " ".join(s.text.split())
        words = count_words(text)
        dependent = bool(_DEPENDENT.match(text) or _ANAPHORIC_ATTRIBUTION.search(text))
        out.append(_Sentence(source, index, text, words, _reads_as_reporting(text, words), dependent))
    return out


class _Similarity:
    """Cosine similarity between sentences: the injected embedding when given, else TF-IDF.

    The two scales differ: two wordings of one fact score about 0.65-0.85 as
    MiniLM embeddings but only 0.3-0.5 as TF-IDF vectors, so each kind carries
    its own thresholds for "the same sentence" and "the same fact".
    """

    def __init__(self, texts: list[str], embed: Embed | None) -> None:
        vectors = self._embedded(texts, embed) if embed is not None else None
        self.kind = "embedding" if vectors is not None else "lexical"
        self.vectors = vectors if vectors is not None else _tfidf(texts)
        self.duplicate = 0.8 if self.kind == "embedding" else 0.45   # drop: it repeats what is already there
        self.redundant = 0.7 if self.kind == "embedding" else 0.3    # an insight saying the same as another

    @staticmethod
    def _embedded(texts: list[str], embed: Embed) -> np.ndarray | None:
        try:
            vectors = np.asarray(embed(texts), dtype=np.float32)
        except Exception as exc:  # an embedding outage degrades to lexical similarity, not to no draft
            log.warning("embedding failed, using lexical similarity: %s", exc)
            return None
        if vectors.ndim != 2 or len(vectors) != len(texts):
            log.warning("embedding returned shape %s for %d texts, using lexical similarity", vectors.shape, len(texts))
            return None
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms == 0, 1, norms)

    def matrix(self) -> np.ndarray:
        return self.vectors @ self.vectors.T


def _tfidf(texts: list[str]) -> np.ndarray:
    docs = [Counter(_terms(t)) for t in texts]
    vocabulary = {term: i for i, term in enumerate(sorted({t for d in docs for t in d}))}
    df = Counter(t for d in docs for t in d)
    vectors = np.zeros((len(texts), max(1, len(vocabulary))), dtype=np.float32)
    for row, doc in enumerate(docs):
        for term, tf in doc.items():
            vectors[row, vocabulary[term]] = (1 + math.log(tf)) * (math.log((len(texts) + 1) / (df[term] + 1)) + 1)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


def _headline(title: str, outlet: str, limit: int) -> str:
    """The main source's title without its outlet suffix, shortened at a clause or word boundary if too long."""
    title = " ".join(title.split())
    for separator in _TITLE_SEPARATORS:
        head, _, tail = title.rpartition(separator)
        if head and (tail.strip().lower() == outlet.strip().lower() or (len(tail.split()) <= 3 and len(head) >= 20)):
            title = head.strip()
            break
    if len(title) <= limit:
        return title
    for separator in (": ", " — ", " – ", "; ", ", "):
        head = title.split(separator)[0].strip()
        if 20 <= len(head) <= limit:
            return head
    words = title[: limit + 1].rsplit(" ", 1)[0].split()
    # A cut headline must not end on a dangling "of", "the", "and" or punctuation.
    while words and (words[-1].lower() in _STOP or not words[-1][-1].isalnum()):
        words.pop()
    return " ".join(words) or title[:limit]


def _fit_lead(sentences: list[_Sentence], spec: TemplateSpec, search: int = 6) -> list[_Sentence] | None:
    """The earliest run of consecutive usable sentences that meets the lead's sentence and word rules."""
    rules = spec.lead
    usable = [s for s in sentences if s.usable]
    for start in range(min(search, len(usable))):
        run: list[_Sentence] = []
        for s in usable[start:]:
            if run and s.index != run[-1].index + 1:
                break
            text = " ".join(x.text for x in [*run, s])
            if count_words(text) > rules.max_words or count_sentences(text) > rules.max_sentences:
                break
            run.append(s)
        if run and count_sentences(" ".join(x.text for x in run)) >= rules.min_sentences:
            return run
    return None


def _mmr(relevance: np.ndarray, similarity: np.ndarray, candidates: list[int], lam: float = 0.7) -> list[int]:
    """Candidates in maximal-marginal-relevance order: relevant first, each next one unlike those before it."""
    order: list[int] = []
    remaining = list(candidates)
    redundancy = np.zeros(len(relevance), dtype=np.float32)
    while remaining:
        best = max(remaining, key=lambda i: lam * relevance[i] - (1 - lam) * redundancy[i])
        order.append(best)
        remaining.remove(best)
        redundancy = np.maximum(redundancy, similarity[best])
    return order


def _distinct(count: int, within: np.ndarray, lead_overlap: np.ndarray, limit: float) -> list[int]:
    """Indexes of pool sentences that repeat neither the lead nor an earlier kept sentence (syndicated copy)."""
    kept: list[int] = []
    for i in range(count):
        if lead_overlap[i] >= limit or any(within[i, j] >= limit for j in kept):
            continue
        kept.append(i)
    return kept


def extractive_draft(story: Story, pack: ResearchPack, spec: TemplateSpec, *, embed: Embed | None = None) -> Draft:
    """An article built only from the sources' own sentences, every paragraph and insight cited.

    Lead: the main story source's opening sentences that fit the lead rules.
    Body: the lead's continuation in the main source first, then MMR-ranked
    sentences across sources, each seeding a paragraph that grows with its
    neighbours in the same source. Insights: short sentences with key figures,
    then ones naming the entities most sources mention. Too little material
    yields `needs_attention` with the violations, never padding.
    """
    sources = sorted(pack.sources, key=lambda s: s.n)
    base = dict(id=draft_id(story.key), story_key=story.key, template=spec.name, writer_model=EXTRACTIVE, method=EXTRACTIVE)
    if not sources:
        article = Article(headline=_headline(story.title, "", spec.headline.max_chars), lead="", body=[], insights=[], sources=[])
        violations = ["the research pack has no sources; there is nothing to write from", *validate_article(article, spec, sources)]
        return Draft(**base, article=article, violations=violations, state=DraftState.needs_attention)

    per_source = {s.n: _sentences(s) for s in sources}
    story_sources = [s for s in sources if s.role == "story"] or sources
    main, lead_run = story_sources[0], None
    for candidate in story_sources:
        lead_run = _fit_lead(per_source[candidate.n], spec)
        if lead_run:
            main = candidate
            break
    if lead_run:
        lead_text = " ".join(s.text for s in lead_run)
    else:  # nothing fits: show the best attempt and let validation say why
        lead_text = next((s.text for s in per_source[main.n] if s.usable), "")
    lead_keys = {s.key for s in lead_run or []}

    pool = [s for n in per_source for s in per_source[n] if s.usable and s.key not in lead_keys]
    lead_sentences = lead_run or []
    texts = [f"{story.title}. {lead_text}", lead_text or story.title, *(s.text for s in pool), *(s.text for s in lead_sentences)]
    measure = _Similarity(texts, embed)
    similarity = measure.matrix()
    end = 2 + len(pool)
    query, within = similarity[0, 2:end], similarity[2:end, 2:end]
    # A sentence repeats the lead when it matches one of the lead's sentences, not the lead as a whole.
    lead_overlap = similarity[end:, 2:end].max(axis=0) if lead_sentences else np.zeros(len(pool), dtype=np.float32)
    row = {s.key: 2 + i for i, s in enumerate([*pool, *lead_sentences])}

    def same_fact(a: _Sentence, b: _Sentence) -> bool:
        # Shared figures ("4.2%", "$3,390") mark the same fact in other words even when the wording differs.
        shared = {f.lower() for f in _FIGURE.findall(a.text)} & {f.lower() for f in _FIGURE.findall(b.text)}
        score = float(similarity[row[a.key], row[b.key]])
        return len(shared) >= 2 or score >= measure.redundant or (len(shared) == 1 and score >= measure.redundant * 0.6)

    # Background informs; it is not the news: rank it below the story's own sources.
    weight = np.array([1.0 if s.source.role == "story" else 0.8 for s in pool], dtype=np.float32)
    ranked = _mmr(query * weight, within, _distinct(len(pool), within, lead_overlap, measure.duplicate))
    # News structure: the paragraph after the lead continues the main source's account.
    last_lead = max((s.index for s in lead_run or []), default=-1)
    follow_up = next((i for i, s in enumerate(pool) if s.source.n == main.n and s.index > last_lead and i in ranked), None)
    if follow_up is not None:
        ranked = [follow_up, *(i for i in ranked if i != follow_up)]

    ranked_sentences = [pool[i] for i in ranked]
    # Insights claim their short, figure-rich sentences first, and the body leaves out what they and the lead
    # already say; when the material is too thin for that, the body's minimum comes first.
    reserved = _insights(ranked_sentences, lead_sentences, lead_keys, spec, same_fact)
    said, reserved_keys = [*reserved, *lead_sentences], {s.key for s in reserved}
    choices = [
        [i for i in ranked if pool[i].key not in reserved_keys and not any(same_fact(pool[i], s) for s in said)],
        [i for i in ranked if pool[i].key not in reserved_keys],
        ranked,
    ]
    for candidates in choices:
        body, used = _paragraphs(pool, candidates, per_source, spec)
        if len(body) >= spec.body.min_paragraphs:
            break
    insights = [
        Insight(text=s.text, citations=[s.source.n])
        for s in _insights(ranked_sentences, lead_sentences, used | lead_keys, spec, same_fact)
    ]
    headline = _headline(main.title or story.title, main.outlet, spec.headline.max_chars)
    article = Article(headline=headline, lead=lead_text, body=body, insights=insights, sources=[])
    article = article.model_copy(update={"sources": source_refs(article, sources)})
    violations = validate_article(article, spec, sources)
    if violations:
        log.warning("extractive draft for story %s breaks the template: %s", story.key, "; ".join(violations))
    state = DraftState.needs_attention if violations else DraftState.drafted
    return Draft(**base, article=article, violations=violations, state=state)


def _paragraphs(
    pool: list[_Sentence], ranked: list[int], per_source: dict[int, list[_Sentence]], spec: TemplateSpec
) -> tuple[list[Paragraph], set[tuple[int, int]]]:
    """Paragraphs seeded in rank order, each a contiguous run of one source's sentences around its seed.

    Sentences from different places are never spliced together: a "she said"
    next to a new neighbour would name the wrong person.
    """
    rules = spec.body
    # Medium paragraphs read best; thin material gets shorter ones so the template's minimum count can still be met.
    default = rules.min_words + (rules.max_words - rules.min_words) // 3
    best: tuple[list[Paragraph], set[tuple[int, int]]] = ([], set())
    for target_words in sorted({default, (default + rules.min_words) // 2, rules.min_words}, reverse=True):
        paragraphs, used = _paragraphs_of(pool, ranked, per_source, spec, target_words)
        if len(paragraphs) > len(best[0]):
            best = (paragraphs, used)
        if len(paragraphs) >= rules.min_paragraphs:
            break
    return best


def _paragraphs_of(
    pool: list[_Sentence], ranked: list[int], per_source: dict[int, list[_Sentence]], spec: TemplateSpec, target_words: int
) -> tuple[list[Paragraph], set[tuple[int, int]]]:
    rules = spec.body
    target_count = math.ceil((rules.min_paragraphs + rules.max_paragraphs) / 2)
    allowed = {pool[i].key for i in ranked}
    used: set[tuple[int, int]] = set()
    built: list[list[_Sentence]] = []

    def fits(s: _Sentence, taken: list[_Sentence], words: int) -> bool:
        return s.key in allowed and s.key not in used and s not in taken and words + s.words <= rules.max_words

    for i in ranked:
        if len(built) >= target_count:
            break
        seed = pool[i]
        if seed.dependent or not fits(seed, [], 0):
            continue
        chosen, words = [seed], seed.words
        siblings = per_source[seed.source.n]
        # Neighbours share the seed's context: the sentences after it, then the one before it, while contiguous.
        # A sentence added in front becomes the paragraph's opener, so it must not lean on an earlier one.
        for step in (1, -1):
            k = seed.index + step
            while 0 <= k < len(siblings) and words < target_words and fits(siblings[k], chosen, words):
                if step < 0 and siblings[k].dependent:
                    break
                chosen.append(siblings[k])
                words += siblings[k].words
                k += step
        if words < rules.min_words:
            continue
        used |= {s.key for s in chosen}
        built.append(chosen)

    # Read source by source (in the order sources first earned a paragraph), each in its own order.
    first_seen: dict[int, int] = {}
    for chosen in built:
        first_seen.setdefault(chosen[0].source.n, len(first_seen))
    built.sort(key=lambda chosen: (first_seen[chosen[0].source.n], chosen[0].index))
    paragraphs = []
    for chosen in built:
        seed = chosen[0]
        ordered = sorted(chosen, key=lambda s: (s.source.n != seed.source.n, s.source.n, s.index))
        paragraphs.append(Paragraph(text=" ".join(s.text for s in ordered), citations=sorted({s.source.n for s in ordered})))
    return paragraphs, used


def _insights(
    ranked: list[_Sentence], lead: list[_Sentence], used: set[tuple[int, int]], spec: TemplateSpec,
    same_fact: Callable[[_Sentence, _Sentence], bool],
) -> list[_Sentence]:
    """Key figures first, then the names most sources mention: short source sentences not used elsewhere,
    each stating something the lead and the other insights do not.

    Only to reach the template's minimum may an insight repeat a sentence of the lead or body.
    """
    rules = spec.insights
    target = math.ceil((rules.min_count + rules.max_count) / 2)
    short = [s for s in [*ranked, *lead] if s.words <= rules.max_words and not s.dependent]
    fresh = [s for s in short if s.key not in used]
    repeated = [s for s in short if s.key in used]
    coverage = _entity_coverage(ranked + lead)
    picked: list[_Sentence] = []

    def figures(candidates: list[_Sentence]) -> list[_Sentence]:
        # Sentences richest in amounts, percentages and counts; rank order breaks ties (sorted is stable).
        return sorted((s for s in candidates if _FIGURE.search(s.text)), key=lambda s: -len(_FIGURE.findall(s.text)))

    def names(candidates: list[_Sentence]) -> list[_Sentence]:
        out = []
        for name, _ in coverage.most_common():
            mention = next((s for s in candidates if name in s.text and s not in out), None)
            if mention is not None:
                out.append(mention)
        return out

    def take(candidates: list[_Sentence], limit: int, novel: bool = False) -> None:
        for s in candidates:
            if len(picked) >= limit:
                return
            if s in picked or (novel and any(same_fact(s, other) for other in [*picked, *lead])):
                continue
            picked.append(s)

    take(figures(fresh), target, novel=True)
    take(names(fresh), target, novel=True)
    take(figures(repeated), rules.min_count)
    take(names(repeated), rules.min_count)
    return picked


def _entity_coverage(sentences: list[_Sentence]) -> Counter[str]:
    """How many sources name each capitalised name (the sentence's first word is skipped: it is capitalised anyway)."""
    seen: dict[str, set[int]] = {}
    for s in sentences:
        first, _, rest = s.text.partition(" ")
        for match in _ENTITY.finditer(rest):
            words = match.group(0).split()
            while words and words[0] in _ENTITY_STOP:
                words.pop(0)
            name = " ".join(words)
            if len(name) > 2:
                seen.setdefault(name, set()).add(s.source.n)
    return Counter({name: len(docs) for name, docs in seen.items()})
