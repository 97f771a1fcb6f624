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
import dataclasses
from dataclasses import dataclass

import numpy as np

from pipeline.text.entities import (
    StoryProfile,
    about_story,
    bare_surnames,
    first_reference,
    first_title,
    person_titles,
    organisation_names,
    second_reference,
    titled_people,
    dangles,
    names,
    key_figures,
    leans_back,
    person_names,
    quotation_words,
    quotes_balanced,
    salient_names,
    unattributed_quote,
)
from pipeline.core.config import FactCheck
from pipeline.core.models import Article, ClaimVerdict, Draft, DraftState, Insight, Paragraph, ResearchPack, SourceDoc, Story
from pipeline.core.prompts import Prompt, PromptLibrary, library
from pipeline.text.language import foreign_language, is_target, language_name
from pipeline.text.templates import (
    TemplateSpec,
    article_model,
    as_article,
    count_sentences,
    count_words,
    find_urls,
    source_refs,
    validate_article,
)
from pipeline.text.factrules import SourceIndex, verify_offline
from pipeline.text.sentences import normalize_for_match, split_sentences
from pipeline.services.llm import LLMError
from pipeline.services.llm import InvalidOutput, OutputTruncated, Refused
from pipeline.core.logs import redact

log = logging.getLogger("newsdesk.writer")

Embed = Callable[[Sequence[str]], np.ndarray]
EXTRACTIVE = "extractive"


def draft_id(story_key: str) -> str:
    """Stable across runs: one story, one draft id."""
    return "d-" + hashlib.sha256(f"draft:{story_key}".encode()).hexdigest()[:20]


# --- prompts ---------------------------------------------------------------


def prompt_library(gateway=None) -> PromptLibrary:
    """The prompts folder the config names (newsroom.prompts_dir), else the bundled one, with the house rules file."""
    config = getattr(gateway, "config", None)
    return library(str(config.prompts_dir), str(config.house_rules_path)) if config is not None else library()


def render_writer_prompt(story: Story, pack: ResearchPack, spec: TemplateSpec, *, prompts: PromptLibrary | None = None) -> Prompt:
    """Exactly what the writer model is sent for this story (also shown by `run.py preview`)."""
    sources = sorted(pack.sources, key=lambda s: s.n)
    return (prompts or library()).render("writer", spec=spec, story=story, sources=sources,
                                         about=source_labels(story, sources, pack.language),
                                         language=pack.language, language_name=language_name(pack.language))


def source_labels(story: Story, sources: Sequence[SourceDoc], language: str | None = None) -> dict[int, str]:
    """What each source is about, as the writer prompt states it: the names it is about, and for background,
    that it is other coverage and not this story's event (and whether it concerns this story's actors at all)."""
    story_sources = [s for s in sources if s.role == "story"] or list(sources)
    profile = StoryProfile.of([s.title for s in story_sources], [s.text for s in story_sources])
    labels = {}
    for s in sources:
        who = ", ".join(_leading_names(f"{s.title}. {s.text}", profile.common)) or "no named actor"
        if s.role == "story" or s in story_sources:
            labels[s.n] = f"{who}. This story's event."
            continue
        when = "earlier coverage" if s.published < story.first_published else "other coverage"
        if about_story(s.title, s.text, profile):
            labels[s.n] = (
                f"{who}. Background: {when}, not this story's event. Use only as context, framed as such "
                "(\"Earlier, …\", \"Separately, …\"), in its own sentences with its own citation."
            )
        else:
            labels[s.n] = f"{who}. Background about a different event, not this story's actors: do not use it."
    if language is not None:
        # A source in another language is used all the same, translated (see prompts/writer.system.j2).
        for s in sources:
            if not is_target(s.language, language) and s.n in labels:
                labels[s.n] += f" Written in {language_name(s.language)} ({s.language}): translate what you use."
    return labels


_ROLE_WORDS = frozenset(
    "the a an on in for at by of chair ceo cfo cto commissioner judge district u.s. analyst chief executive president "
    "director spokesperson spokesman spokeswoman researcher founder chairman chairwoman governor senator minister".split()
)


def _leading_names(text: str, common: set[str], limit: int = 4) -> list[str]:
    """The names a text is most about, as it writes them: most mentioned first, multi-word names whole,
    without titles ("FDMC Chair Elena Vasquez-Hart" -> "Elena Vasquez-Hart") or capitalised sentence openers."""
    common = common | set(re.findall(r"(?<![A-Za-z0-9\-])[a-z][a-z0-9\-]*", text))
    counts: Counter[str] = Counter()
    shown: dict[str, str] = {}
    inside: set[str] = set()
    for m in re.finditer(r"\b[A-Z][\w&\-]*[\w](?:\s+(?:of\s+)?[A-Z][\w&\-]*[\w])*", text):
        words = re.sub(r"['’]s$", "", m.group(0)).split()
        while words and (words[0].lower() in _ROLE_WORDS or words[0].endswith("-based")):
            words.pop(0)
        for i, word in enumerate(words):  # "FDMC Chair Elena Vasquez-Hart": the person after the title
            if word.lower() in _ROLE_WORDS and i + 1 < len(words):
                words = words[i + 1:]
                break
        if not words:
            continue
        span = " ".join(words)
        key = span.lower()
        opener = m.start() == 0 or text[: m.start()].rstrip()[-1:] in ".!?\"“:"
        if not names(span) or (len(words) == 1 and (key in common or len(key) < 3)):
            continue
        counts[key] += 1
        shown.setdefault(key, span)
        if not opener or not re.search(r"(?:ing|ed|ly|s)$", key):
            inside.add(key)
    # "Buying now, …", "Moves like this …": a capitalised opener that names no one.
    counts = Counter({k: c for k, c in counts.items() if " " in k or k in inside})
    ranked = sorted(counts, key=lambda k: (-counts[k], -len(k.split()), k))
    out: list[str] = []
    for key in ranked:
        if any(key in other or other in key for other in (o.lower() for o in out)):
            continue
        out.append(shown[key])
        if len(out) == limit:
            break
    return out


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
    return article.model_copy(update={
        "headline": redact(article.headline),
        "lead": redact(article.lead),
        "body": [p.model_copy(update={"text": redact(p.text)}) for p in article.body],
        "insights": [i.model_copy(update={"text": redact(i.text)}) for i in article.insights],
    })


def article_validator(spec: TemplateSpec, sources: list[SourceDoc], language: str | None = None) -> Callable[[Article], list[str]]:
    """The gateway validator: template rules on the article as it will be stored (sources list from its citations),
    translated quotations included when the newsroom's `language` is given."""
    return lambda article: validate_article(_with_pack_sources(article, sources), spec, sources, language)


NO_SOURCES = "the research pack has no sources; there is nothing to write from"


async def _write_with_model(story: Story, pack: ResearchPack, spec: TemplateSpec, gateway) -> Draft:
    """One gateway call under the request's own schema (citations an enum of the pack's source numbers,
    counts as minItems/maxItems), at most `llm.repair_rounds` repairs of what the schema cannot say (word
    and sentence counts, URLs, inline [n] markers). A draft still invalid after them is kept as the model
    wrote it, `needs_attention` with the exact violations: asking again next run would not change it."""

    prompt = render_writer_prompt(story, pack, spec, prompts=prompt_library(gateway))
    model = gateway.model_for("writer")
    base = dict(
        id=draft_id(story.key), story_key=story.key, template=spec.name, writer_model=model,
        method="llm", prompt_versions={"writer": prompt.version},
    )
    if not pack.sources:  # nothing to cite: no schema a reply could meet, and nothing worth paying for
        article = Article(headline=_headline(story.title, "", spec.headline.max_chars), lead="", body=[], insights=[], sources=[])
        return Draft(**base, article=article, violations=[NO_SOURCES], state=DraftState.needs_attention)
    try:
        result = await gateway.call(
            "writer", prompt, article_model(spec, pack.sources, pack.language),
            validators=(article_validator(spec, pack.sources, pack.language),),
            stage="draft", max_tokens=_max_tokens(gateway, spec, len(pack.sources)),
        )
    except (InvalidOutput, OutputTruncated, Refused) as exc:
        last = _last_article(exc)
        if last is None:
            article = Article(headline=_headline(story.title, "", spec.headline.max_chars), lead="", body=[], insights=[], sources=[])
            violations = [f"the writer model returned no usable article: {e}" for e in _errors(exc)]
        else:
            article = _with_pack_sources(last, pack.sources)
            violations = validate_article(article, spec, pack.sources, pack.language) or _errors(exc)
        log.warning("draft for story %s still invalid after repair: %s", story.key, "; ".join(violations))
        return Draft(**base, article=article, violations=violations, state=DraftState.needs_attention)
    article = _with_pack_sources(result, pack.sources)
    violations = validate_article(article, spec, pack.sources, pack.language)
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

    prompt = render_reviser_prompt(draft.article, flagged, pack, spec, prompts=prompt_library(gateway))
    template_rules = article_validator(spec, pack.sources, pack.language)
    scope_rules = revision_scope_validator(draft.article, flagged)
    try:
        result = await gateway.call(
            "reviser", prompt, article_model(spec, pack.sources),
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
#
# The offline default: an article assembled from the sources' own sentences that
# still reads like writing. Sentences are grouped into units (a quotation that runs
# over several sentences, with its speaker, is one unit); a unit that leans on the
# one before it ("It", "The penalty …", "However, …", a bare quote) only ever
# follows that sentence, never opens a paragraph. Every fact is stated once: a
# figure appears in one sentence only, and near-duplicates in other words are
# left out. Background appears only when it names the story's own actors, framed
# ("Earlier, …", "Separately, …") in its own cited paragraph.

# Lines that are page furniture rather than reporting.
_BOILERPLATE = re.compile(
    r"\b(?:subscribe|sign up|newsletter|click here|read more|follow us|cookies?|all rights reserved|disclaimer|"
    r"not investment advice|sponsored (?:content|post|article)|advertisement|share this|terms of service|privacy policy|"
    r"this article (?:was|is) (?:written|produced|updated)|contact the author)\b|^(?:image|photo|source|credit):",
    re.IGNORECASE,
)
_ENDS_SENTENCE = re.compile(r"[.!?][\"'”’)]*$")
_TITLE_SEPARATORS = (" | ", " - ", " – ", " — ", " :: ")

# What makes an insight: what happens next, how it compares, what it means.
_FORWARD = re.compile(
    r"\b(?:(?:will|would|could|may|might|should)(?!\s+have\b)|expects?|expected to|plans?|planned|intends?|aims?|within \d+|"
    r"by the end of|next|upcoming|scheduled|set to|pending|appeal|soon|later this|deadline|promised|to reopen|to restart|"
    r"not yet|working (?:with|to)|still)\b",
    re.IGNORECASE,
)
_COMPARE = re.compile(
    r"\b(?:largest|biggest|highest|lowest|smallest|weakest|strongest|record|the first|most|least|since|compared (?:with|to)|"
    r"than|below|above|a fraction|double|half|one of the (?:largest|biggest|few|most|first|fastest)|only|rare|"
    r"far (?:below|above|more|less))\b",
    re.IGNORECASE,
)
_MEANING = re.compile(
    r"\b(?:means?|meaning|matters?|signals?|suggests?|shows?|showing|so that|because|binding|cited by|implications?|"
    r"risks?|protects?|calmed|absorbs?)\b",
    re.IGNORECASE,
)
_MARKET_MOVE = re.compile(
    r"\b(?:rose|fell|jumped|gained|climbed|slipped|dropped|rallied|sank|tumbled|surged|recovered|little changed)\b[^.]*?\d%"
    r"|\b(?:shares|stock)\b[^.]*\b(?:rose|fell|jumped|gained|climbed|dropped)\b",
    re.IGNORECASE,
)
_REACTION = re.compile(
    r"\b(?:analysts?|experts?|lawyers?|traders?|investors?|researchers?|critics?|economists?)\b[^.]{0,40}?"
    r"\b(?:said|say|cautioned|warned|cheered|expect|expects|noted)\b",
    re.IGNORECASE,
)
_CONTEXT = re.compile(
    r"\b(?:since|is a|are a|is one of|are the main|is the main|known as|designed to|lets|typically|usually|have faced|"
    r"has faced|one of the few|in (?:19|20)\d\d|last year|earlier this year|historically)\b",
    re.IGNORECASE,
)
# A lead that frames rather than reports ("is being read as", "Here is what changes", a question).
_FRAMING_LEAD = re.compile(r"\b(?:is being read|the question is|here is|here's|what it means|explained|we look at)\b|\?", re.IGNORECASE)

DETAIL, REACTION, CONTEXT, BACKGROUND = range(4)


@dataclass(eq=False)
class _Unit:
    source: SourceDoc
    index: int                  # position among the source's units
    sentences: tuple[str, ...]  # one sentence, or a quotation running over several with its speaker
    text: str
    words: int
    usable: bool                # reads as complete reporting, quotes whole and attributed
    short: bool                 # under six words: only ever follows the sentence before it
    leans: bool                 # points back to the unit before it: opens no paragraph (see `_stands`)
    opening: str                # the sentence a paragraph opened by this unit would open with
    figures: frozenset[str]
    para: int                   # the source's own paragraph it sits in
    kind: int                   # DETAIL, REACTION, CONTEXT or BACKGROUND: the order the body tells them in
    cue: float                  # how much it says what it means, what comes next or how it compares
    rows: tuple[int, ...] = ()  # its sentences' rows in the similarity matrix

    @property
    def key(self) -> tuple[int, int]:
        return (self.source.n, self.index)


def _reads_as_reporting(text: str, words: int) -> bool:
    opens_well = text[0].isupper() or text[0].isdigit() or text[0] in "\"“'‘$€£"
    return (
        words >= 3
        and opens_well
        and bool(_ENDS_SENTENCE.search(text))
        and not find_urls(text)
        and not _BOILERPLATE.search(text)
        and not text.isupper()
    )


def _units(source: SourceDoc, language: str = "en", others: Sequence[str] = ()) -> list[_Unit]:
    """The source's sentences as units: a quotation split over sentences, or continued by its speaker
    in a bare quoted sentence, stays one unit with its attribution.

    A unit not in `language` (the newsroom's) is never usable: every sentence of a source whose detected
    language is another, and any sentence of another source that is clearly in another of the languages in
    play (`others`, the sources'), such as an untranslated quotation. Copying across languages would need a
    translation, which only the model path makes (and marks)."""
    foreign_source = not is_target(source.language, language)
    groups: list[list[str]] = []
    paras: list[int] = []
    breaks = [m.start() for m in re.finditer(r"\n\s*\n", source.text)]
    for sentence in split_sentences(source.text):
        piece = " ".join(sentence.text.split())
        if groups:
            so_far = " ".join(groups[-1])
            continues = not quotes_balanced(so_far) or (unattributed_quote(piece) and quotation_words(so_far) > 0)
            if continues and len(groups[-1]) < 4:
                groups[-1].append(piece)
                continue
        groups.append([piece])
        paras.append(sum(b < sentence.start for b in breaks))
    units = []
    for index, (group, para) in enumerate(zip(groups, paras)):
        text = " ".join(group)
        words = count_words(text)
        opening = group[0] if quotes_balanced(group[0]) else text
        usable = _reads_as_reporting(text, words) and quotes_balanced(text) and not unattributed_quote(text)
        usable = usable and not foreign_source and foreign_language(text, language, others) is None
        units.append(_Unit(
            source=source, index=index, sentences=tuple(group), text=text, words=words, usable=usable, short=words < 6,
            leans=leans_back(opening), opening=opening, figures=frozenset(key_figures(text)), para=para, kind=_kind(text, source), cue=_cue(text),
        ))
    return units


def _kind(text: str, source: SourceDoc) -> int:
    if source.role != "story":
        return BACKGROUND
    if quotation_words(text) >= 3 or _MARKET_MOVE.search(text) or _REACTION.search(text):
        return REACTION
    if _CONTEXT.search(text):
        return CONTEXT
    return DETAIL


def _stands(unit: _Unit, before: str, people: dict[str, str] | None = None, nearby: str = "") -> bool:
    """Whether the unit can open a paragraph after `before`: a full sentence that leans on nothing the
    reader has not seen (a definite description the lead introduced is fine: "The penalty …"), and names
    no one by surname alone unless their full name can be given from beside it in the source."""
    if not unit.usable or unit.short or (unit.leans and dangles(unit.opening, before)):
        return False
    return all(people[last] in nearby for last in bare_surnames(unit.opening, people or {}, before))


def _cue(text: str) -> float:
    score = 2.0 * bool(_FORWARD.search(text)) + 1.5 * bool(_COMPARE.search(text)) + 1.0 * bool(_MEANING.search(text))
    return score - (1.0 if quotation_words(text) >= 3 else 0.0)


class _Similarity:
    """Cosine similarity between sentences: the injected embedding when given, else TF-IDF.

    The two scales differ: two wordings of one fact score about 0.65-0.85 as
    MiniLM embeddings but only 0.3-0.5 as TF-IDF vectors, so each kind carries
    its own threshold for "the same fact".
    """

    def __init__(self, texts: list[str], embed: Embed | None) -> None:
        vectors = self._embedded(texts, embed) if embed is not None else None
        self.kind = "embedding" if vectors is not None else "lexical"
        self.vectors = vectors if vectors is not None else _tfidf(texts)
        # Two sentences state one fact when they are this alike, or a little less alike and share most words.
        self.same, self.soft = (0.68, 0.55) if self.kind == "embedding" else (0.35, 0.22)

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
    """A title without its outlet suffix, shortened at a clause or word boundary if too long
    (the placeholder headline of a draft the model could not write)."""
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
    return _cut_words(title, limit)


def _cut_words(text: str, limit: int) -> str:
    words = text[: limit + 1].rsplit(" ", 1)[0].split() if len(text) > limit else text.split()
    # A cut headline must not end on a dangling "of", "the", "and" or punctuation.
    while words and (words[-1].lower() in _STOP or not words[-1][-1].isalnum()):
        words.pop()
    return " ".join(words) or text[:limit]


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


class _Ledger:
    """What the article has said so far: its sentences' rows, figures and words. A unit is novel when it
    shares no figure with them, is not a near-duplicate by similarity, and does not repeat most of one's words."""

    def __init__(
        self, similarity: np.ndarray, same: float, soft: float, names: set[str] = frozenset(), people: dict[str, str] | None = None
    ) -> None:
        self.similarity, self.same, self.soft = similarity, same, soft
        self.names = names                            # the story's own names: every sentence has them
        self.people = people or {}                    # surname -> full name
        self.speakers: dict[int, set[str]] = {}       # row -> surnames of the people it names
        self.lead_rows: set[int] = set()
        self.said: list[tuple[int, set[str]]] = []   # (row, content words) of every sentence written
        self.figures: set[str] = set()

    def _terms(self, text: str) -> set[str]:
        return _fact_terms(text) - self.names

    def novel(self, unit: _Unit, also: Sequence[_Unit] = ()) -> bool:
        if unit.figures & self.figures.union(*(u.figures for u in also)):
            return False
        said = [*self.said, *((r, self._terms(t)) for u in also for r, t in zip(u.rows, u.sentences))]
        for row, sentence in zip(unit.rows, unit.sentences):
            mine = self._terms(sentence)
            speakers = self._speakers(sentence)
            for other_row, other in said:
                score = float(self.similarity[row, other_row])
                small = min(len(mine), len(other))
                overlap = len(mine & other) / small if small >= 4 else 0.0
                if overlap >= 0.6 or score >= self.same + 0.12 or (score >= self.same and overlap >= 0.34) or (
                    score >= self.soft and overlap >= 0.45
                ):
                    return False
                # One person making one point twice (a quote and its paraphrase), or another outlet's lead
                # restating ours, in other words.
                if score >= self.soft and overlap >= 0.25 and (speakers & self.speakers.get(other_row, set())):
                    return False
                if unit.index == 0 and other_row in self.lead_rows and (
                    (score >= self.same and overlap >= 0.2) or (score >= self.soft and overlap >= 0.3)
                ):
                    return False
        return True

    def _speakers(self, text: str) -> set[str]:
        return {last for last in self.people if re.search(rf"\b{re.escape(last)}\b", text)}

    def add(self, unit: _Unit, lead: bool = False) -> None:
        self.said.extend((r, self._terms(t)) for r, t in zip(unit.rows, unit.sentences))
        self.figures |= unit.figures
        for r, t in zip(unit.rows, unit.sentences):
            self.speakers[r] = self._speakers(t)
            if lead:
                self.lead_rows.add(r)


def _fact_terms(text: str) -> set[str]:
    """Content words, singular: what two wordings of one fact share."""
    return {t[:-1] if t.endswith("s") and len(t) > 4 else t for t in _terms(text)}


@dataclass
class _Material:
    """Everything the extractive writer knows about a pack."""

    story_sources: list[SourceDoc]
    units: dict[int, list[_Unit]]
    people: dict[str, str]
    entities: set[str]
    common: set[str]
    background_ok: set[int]          # background sources that concern the story
    centrality: dict[int, float]     # id(unit) -> how many other story sources share its figures and names
    similarity: np.ndarray
    same: float
    soft: float
    lead_text: str = ""              # what every body paragraph and insight can lean on

    core: set[str] = dataclasses.field(default_factory=set)   # the story's subject (see StoryProfile)
    organisations: dict[str, str] = dataclasses.field(default_factory=dict)  # short name -> full name
    known: dict[str, str] = dataclasses.field(default_factory=dict)  # surname -> full name: `people` and those named with a role
    titles: dict[str, str] = dataclasses.field(default_factory=dict)  # full name -> title the sources give
    indexes: dict[int, SourceIndex] = dataclasses.field(default_factory=dict)  # source n -> its rules index

    @property
    def name_words(self) -> set[str]:
        """The subject's names: every sentence of the story has them, so they say nothing about sameness."""
        return {w for name in self.core for w in name.split()}


def _material(story: Story, pack_sources: list[SourceDoc], embed: Embed | None, language: str = "en") -> _Material:
    story_sources = [s for s in pack_sources if s.role == "story"] or pack_sources
    story_ns = {s.n for s in story_sources}
    profile = StoryProfile.of([s.title for s in story_sources], [s.text for s in story_sources])
    others = sorted({s.language for s in pack_sources})
    units = {s.n: _units(s, language, others) for s in pack_sources}
    background_ok = {s.n for s in pack_sources if s.n not in story_ns and about_story(s.title, s.text, profile)}
    figures = {s.n: set().union(*(u.figures for u in units[s.n])) if units[s.n] else set() for s in story_sources}
    mentioned = {s.n: salient_names(s.text, profile.common) for s in story_sources}
    centrality: dict[int, float] = {}
    rows: list[str] = []
    for n, source_units in units.items():
        for u in source_units:
            others = [m for m in figures if m != n]
            names = salient_names(u.text, profile.common)
            centrality[id(u)] = sum(f in figures[m] for f in u.figures for m in others) + 0.5 * sum(
                name in mentioned[m] for name in names for m in others)
            u.rows = tuple(range(len(rows) + 1, len(rows) + 1 + len(u.sentences)))
            rows.extend(u.sentences)
    measure = _Similarity([story.title, *rows], embed)
    people = person_names(s.text for s in pack_sources)
    known = {**titled_people(s.text for s in pack_sources), **people}
    return _Material(
        story_sources=story_sources, units=units, people=people,
        entities=profile.entities, common=profile.common, background_ok=background_ok, centrality=centrality, core=profile.core,
        similarity=measure.matrix(), same=measure.same, soft=measure.soft,
        organisations=organisation_names(s.text for s in story_sources),
        known=known, titles=person_titles([s.text for s in story_sources], known),
    )


def _lead(material: _Material, spec: TemplateSpec) -> list[_Unit]:
    """The news in brief: the opening of a story source that states the facts most sources share.

    Candidates are each story source's first two units that stand alone and fit
    the lead rules; a framing opener ("is being read as", a question) or a
    quotation loses to a plain report. A short first sentence takes the next one along.
    """
    rules = spec.lead
    candidates = []
    for source in material.story_sources:
        for rank, u in enumerate([u for u in material.units[source.n] if u.usable][:2]):
            if u.leans or u.short or u.words > rules.max_words or count_sentences(u.text) > rules.max_sentences:
                continue
            framing = bool(_FRAMING_LEAD.search(u.text)) or quotation_words(u.text) >= 3
            # A source's own opening is its lead; its second sentence only stands in for an opening that frames.
            score = material.centrality[id(u)] - (3.0 if framing else 0.0) - (3.0 if rank else 0.0)
            candidates.append((score, source.published, source.n, u))
            if not framing:
                break
    if not candidates:
        first = next((u for s in material.story_sources for u in material.units[s.n] if u.usable), None)
        return [first] if first else []
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    lead = [candidates[0][3]]
    siblings = material.units[lead[0].source.n]
    after = siblings[lead[0].index + 1] if lead[0].index + 1 < len(siblings) else None
    if after is not None and after.usable and lead[0].words < 25 and quotation_words(after.text) == 0:
        text = f"{lead[0].text} {after.text}"
        if count_words(text) <= rules.max_words * 0.8 and count_sentences(text) <= rules.max_sentences and not (after.figures & lead[0].figures):
            lead.append(after)
    return lead


def _insight_candidates(material: _Material, spec: TemplateSpec, taken: set[tuple[int, int]]) -> list[_Unit]:
    """Standalone story units short enough for an insight, the ones that say what it means, what comes
    next or how it compares first, the story's most shared facts last."""
    out = [
        u for s in material.story_sources for u in material.units[s.n]
        if u.key not in taken and len(u.sentences) == 1 and u.words <= spec.insights.max_words
        and _stands(u, material.lead_text, material.people, _nearby(material, u))
    ]
    # The facts every source leads with belong in the body; an insight adds to them. A sentence the next one leans
    # on comes last: taken as an insight, it would leave that one to open a body paragraph on "Several have …".
    return sorted(out, key=lambda u: (_leaned_on(material, u), -(u.cue - 0.15 * material.centrality[id(u)]), u.source.n, u.index))


def _leaned_on(material: _Material, unit: _Unit) -> bool:
    """The next sentence of the unit's source paragraph leans on it ("Public miners have responded by … Several have
    also sold …"): the two belong together in the body, not one as an insight and the other an orphan."""
    siblings = material.units[unit.source.n]
    nxt = siblings[unit.index + 1] if unit.index + 1 < len(siblings) else None
    return nxt is not None and nxt.para == unit.para and nxt.usable and nxt.leans


def _pick_insights(
    material: _Material, spec: TemplateSpec, said: _Ledger, taken: set[tuple[int, int]], count: int, minimum: int = 0
) -> list[_Unit]:
    """Up to `count` insights that say what it means, what comes next or how it compares; plain facts
    only to reach `minimum`. Each is new to the article and to the others (and is added to `said`)."""
    picked: list[_Unit] = []
    candidates = _insight_candidates(material, spec, taken)
    for strong in (True, False):
        for u in candidates:
            if len(picked) >= (count if strong else min(count, minimum)):
                break
            if (u.cue > 0) != strong or u in picked or not said.novel(u):
                continue
            picked.append(u)
            said.add(u)
    return picked


def _body(
    material: _Material, spec: TemplateSpec, lead: list[_Unit], said: _Ledger, taken: set[tuple[int, int]], target_words: int
) -> list[list[_Unit]]:
    """Paragraphs: each opens on a unit that stands alone and continues with the units after it in the
    same source while they add something new, then all are told in order: facts, reactions, context, background."""
    rules = spec.body
    target_count = math.ceil((rules.min_paragraphs + rules.max_paragraphs) / 2)
    background_left = 1 if rules.max_paragraphs < 6 else 2
    sim = material.similarity
    pool = [
        u for n, units in material.units.items() for u in units
        if u.usable and u.key not in taken and (u.kind != BACKGROUND or n in material.background_ok)
    ]
    if not pool:
        return []
    query_rows = [0, *(r for u in lead for r in u.rows)]
    relevance = np.array([float(sim[np.ix_(list(u.rows), query_rows)].max()) for u in pool], dtype=np.float32)
    relevance *= np.array([0.8 if u.kind == BACKGROUND else 1.0 for u in pool], dtype=np.float32)
    within = np.array([[float(sim[np.ix_(list(a.rows), list(b.rows))].max()) for b in pool] for a in pool], dtype=np.float32)
    order = _mmr(relevance, within, list(range(len(pool))))
    ranked = [pool[i] for i in order]
    # News structure: the paragraph after the lead continues the lead source's own account.
    if lead:
        follow = next((u for u in ranked if u.source.n == lead[-1].source.n and u.index > lead[-1].index
                       and _stands(u, material.lead_text, material.people, _nearby(material, u))), None)
        if follow is not None:
            ranked = [follow, *(u for u in ranked if u is not follow)]
    rank = {id(u): i for i, u in enumerate(ranked)}
    used = set(taken)
    paragraphs: list[list[_Unit]] = []
    orphans: list[list[_Unit]] = []
    for seed in ranked:
        if len(paragraphs) >= target_count:
            break
        if seed.key in used or not _stands(seed, material.lead_text, material.people, _nearby(material, seed)) or not said.novel(seed):
            continue
        if seed.kind == BACKGROUND:
            # Context from other coverage: one framed sentence about the story's own actors, cited on its own.
            if not background_left or not (salient_names(seed.text, material.common) & material.entities):
                continue
            if seed.words < rules.min_words or seed.words > rules.max_words:
                continue
            background_left -= 1
            paragraphs.append([seed])
            used.add(seed.key)
            said.add(seed)
            continue
        siblings = material.units[seed.source.n]
        # A seed in the middle of its source paragraph starts from the earliest sentence before it that
        # stands alone, so one source paragraph is never told as two, back to front.
        start = seed
        k = seed.index - 1
        while k >= 0:
            prev = siblings[k]
            if prev.para != seed.para or not prev.usable or prev.key in used or not said.novel(prev):
                break
            if _stands(prev, material.lead_text, material.people, _nearby(material, prev)):
                start = prev
            k -= 1
        run = [u for u in siblings[start.index: seed.index + 1]]
        if start is not seed and all(said.novel(u, run[:i]) for i, u in enumerate(run)) and sum(u.words for u in run) <= rules.max_words:
            seed = start
        chosen, words = [seed], seed.words
        k, skipped = seed.index + 1, False
        # The seed's own source paragraph comes along (it was written to follow it) up to the target length,
        # past it only for a sentence that leans on the one before; the next source paragraph only while the
        # paragraph is too short to stand.
        while k < len(siblings):
            nxt = siblings[k]
            k += 1
            if nxt.para != chosen[-1].para and words >= rules.min_words:
                break
            if words >= target_words and not nxt.leans:
                break
            if not nxt.usable or nxt.key in used or words + nxt.words > rules.max_words:
                break
            if not said.novel(nxt, chosen):
                if nxt.leans:
                    break
                skipped = True  # a repeated fact is left out; what leans on it cannot follow
                continue
            if nxt.leans and skipped:
                break
            context = " ".join([material.lead_text, *(u.text for u in chosen)])
            if any(material.people[last] not in _nearby(material, nxt) for last in bare_surnames(nxt.text, material.people, context)):
                break  # "Watanabe said …" with no Kenji Watanabe anywhere before it
            chosen.append(nxt)
            words += nxt.words
        if words < rules.min_words:
            orphans.append(chosen)
            continue
        for u in chosen:
            used.add(u.key)
            said.add(u)
        paragraphs.append(chosen)
    # Short standalone facts that make no paragraph alone are told together, each sentence whole and cited.
    pending: list[_Unit] = []
    for chunk in orphans:
        if len(paragraphs) >= target_count:
            break
        if any(u.key in used for u in chunk) or not all(said.novel(u, [*pending, *chunk[:i]]) for i, u in enumerate(chunk)):
            continue
        if sum(u.words for u in [*pending, *chunk]) > rules.max_words:
            continue
        if pending and max(float(sim[np.ix_(list(a.rows), list(b.rows))].max()) for a in pending for b in chunk) < material.soft:
            continue  # unrelated facts side by side read as a non sequitur
        pending += chunk
        if sum(u.words for u in pending) >= rules.min_words:
            for u in pending:
                used.add(u.key)
                said.add(u)
            paragraphs.append(sorted(pending, key=lambda u: (u.kind, rank[id(u)] if id(u) in rank else 0)))
            pending = []
    # Facts, then reactions, then context and background; within each, in the order the sources tell them
    # (a source puts its most important and earliest facts first).
    position = {id(u): u.index / max(1, len(material.units[u.source.n])) for p in paragraphs for u in p}
    paragraphs.sort(key=lambda p: (min(u.kind for u in p), round(position[id(p[0])], 1), rank.get(id(p[0]), 0)))
    return paragraphs


_WEEKDAY = re.compile(
    r"\s*\b(?:(?:early|late) )?(?:on|this|last) (?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)\b"
    r"(?!,? (?:January|February|March|April|May|June|July|August|September|October|November|December))"
)


def _nearby(material: _Material, unit: _Unit) -> str:
    """The unit with its neighbours in its source: what a reader of the source had around it."""
    siblings = material.units[unit.source.n]
    return " ".join(u.text for u in siblings[max(0, unit.index - 1): unit.index + 2])


def _frame(unit: _Unit, story: Story, common: set[str]) -> str:
    """A background unit as context: "Earlier, …" when it predates the story, else "Separately, …"."""
    word = "Earlier" if unit.source.published < story.first_published else "Separately"
    # "on Tuesday" was the source's Tuesday, not the reader's: a weekday goes, an explicit date stays.
    text = _WEEKDAY.sub("", unit.text)
    text = re.sub(r"\s+([,.])", r"\1", " ".join(text.split()))
    first = re.match(r"[A-Za-z]+", text)
    if first and first.group(0).lower() in common and not first.group(0).isupper():
        text = text[0].lower() + text[1:]
    return f"{word}, {text}"


def _introduce(text: str, people: dict[str, str], introduced: str, nearby: str = "") -> str:
    """A person first named by surname alone gets their full name ("Okafor said" -> "Dev Okafor said") when the
    source gives it within a sentence or two, where the fact-checker's evidence window will find it too."""
    for last in bare_surnames(text, people, introduced):
        if people[last] in nearby:
            text = re.sub(rf"\b{re.escape(last)}\b", people[last], text, count=1)
    return text


CHECK_WINDOW = FactCheck.model_fields["window_sentences"].default  # the checker's evidence window, in sentences


def _kept_if_supported(material: _Material, unit: _Unit, text: str, edited: str) -> str:
    """An edit to a copied sentence (a name given in full, a title added, a surname for a second reference) stands
    only if the unit's own source still supports the edited text by the fact-checker's rules; else the text stays."""
    if edited == text:
        return text
    index = material.indexes.get(unit.source.n)
    if index is None:
        index = material.indexes[unit.source.n] = SourceIndex.build([(str(unit.source.n), unit.source.text)],
                                                                    window_size=CHECK_WINDOW)
    for sentence in split_sentences(edited):
        if verify_offline(sentence.text, index).verdict != "supported":
            return text
    return edited


def _compose(
    story: Story, material: _Material, spec: TemplateSpec, lead: list[_Unit], body: list[list[_Unit]], insights: list[_Unit]
) -> Article:
    introduced = ""

    def written(units: list[_Unit], text: str | None = None) -> str:
        nonlocal introduced
        pieces = []
        for u in units:
            before, nearby = introduced + " " + " ".join(pieces), _nearby(material, u)
            edits = (
                lambda t: _introduce(t, material.people, before, nearby),
                lambda t: first_reference(t, material.organisations, before),
                lambda t: first_title(t, material.titles, before, nearby),
                lambda t: second_reference(t, material.known, before),
            )
            named = u.text
            for edit in edits:
                named = _kept_if_supported(material, u, named, edit(named))
            pieces.append(named)
        out = " ".join(pieces) if text is None else text
        introduced += " " + out
        return out

    lead_text = written(lead)
    paragraphs = []
    for units in body:
        text = _frame(units[0], story, material.common) if units[0].kind == BACKGROUND else None
        paragraphs.append(Paragraph(text=written(units, text), citations=sorted({u.source.n for u in units})))
    notes = [Insight(text=written([u]), citations=[u.source.n]) for u in insights]
    headline = _own_headline(material, lead, spec.headline.max_chars)
    return Article(headline=headline, lead=lead_text, body=paragraphs, insights=notes, sources=[])


def extractive_draft(story: Story, pack: ResearchPack, spec: TemplateSpec, *, embed: Embed | None = None) -> Draft:
    """An article built only from the sources' own sentences, every paragraph and insight cited.

    Lead: the opening of the story source that states the facts most sources
    share. Insights: standalone sentences that say what comes next, how it
    compares or what it means. Body: paragraphs that open on a sentence that
    stands alone, in the order facts, reactions, context, framed background.
    Nothing is said twice. Too little material yields `needs_attention` with
    the violations, never padding or repetition.
    """
    sources = sorted(pack.sources, key=lambda s: s.n)
    base = dict(id=draft_id(story.key), story_key=story.key, template=spec.name, writer_model=EXTRACTIVE, method=EXTRACTIVE)
    if not sources:
        article = Article(headline=_headline(story.title, "", spec.headline.max_chars), lead="", body=[], insights=[], sources=[])
        violations = ["the research pack has no sources; there is nothing to write from", *validate_article(article, spec, sources)]
        return Draft(**base, article=article, violations=violations, state=DraftState.needs_attention)

    foreign = sorted({s.language for s in sources if s.role == "story" and not is_target(s.language, pack.language)})
    if foreign and all(not is_target(s.language, pack.language) for s in sources if s.role == "story"):
        # Nothing of the story itself may be copied: without a model to translate, there is no draft to write.
        article = Article(headline="", lead="", body=[], insights=[], sources=[])
        violations = [f"every source of the story is in another language ({', '.join(foreign)}) than the newsroom's "
                      f"({pack.language}); the offline writer copies no sentence across languages, a model can translate"]
        log.warning("extractive draft for story %s: %s", story.key, violations[0])
        return Draft(**base, article=article, violations=violations, state=DraftState.needs_attention)
    material = _material(story, sources, embed, pack.language)
    lead = _lead(material, spec)
    lead_keys = {u.key for u in lead}
    material.lead_text = " ".join(u.text for u in lead)
    rules = spec.body
    default = rules.min_words + (rules.max_words - rules.min_words) // 3
    best: tuple[Article, list[str], tuple] | None = None
    body_target = math.ceil((rules.min_paragraphs + rules.max_paragraphs) / 2)
    # Insights first, so the body does not spend what says what it means; then only the template's minimum
    # of them first; then the body first. Shorter paragraphs before giving up on the paragraph count.
    insight_rules = spec.insights
    target = max(insight_rules.min_count, min(insight_rules.max_count, math.ceil((insight_rules.min_count + insight_rules.max_count) / 2)))
    for reserve in dict.fromkeys([target, insight_rules.min_count, 0]):
        for target_words in sorted({default, (default + rules.min_words) // 2, rules.min_words}, reverse=True):
            said = _Ledger(material.similarity, material.same, material.soft, material.name_words, material.people)
            for u in lead:
                said.add(u, lead=True)
            insights = _pick_insights(material, spec, said, lead_keys, reserve)
            body = _body(material, spec, lead, said, lead_keys | {u.key for u in insights}, target_words)
            if len(insights) < target:
                taken = lead_keys | {u.key for p in body for u in p} | {u.key for u in insights}
                insights += _pick_insights(material, spec, said, taken, target - len(insights), minimum=insight_rules.min_count - len(insights))
            article = _compose(story, material, spec, lead, body, insights)
            article = article.model_copy(update={"sources": source_refs(article, sources)})
            violations = validate_article(article, spec, sources)
            log.debug("extractive draft %s: %d insights reserved, paragraphs of ~%d words: %s", story.key, reserve, target_words, violations or "valid")
            # Valid first; then body paragraphs (up to the target) and insights that say something (a cue)
            # together; then the more such insights.
            strong = sum(u.cue > 0 for u in insights)
            score = (len(violations), -(min(len(body), body_target) + strong), -strong)
            if best is None or score < best[2]:
                best = (article, violations, score)
            if not violations and len(body) >= body_target and strong == len(insights):
                break
        if not best[1] and len(best[0].body) >= body_target and -best[2][2] == len(best[0].insights):
            break
    article, violations, _ = best
    if violations:
        log.warning("extractive draft for story %s breaks the template: %s", story.key, "; ".join(violations))
    state = DraftState.needs_attention if violations else DraftState.drafted
    return Draft(**base, article=article, violations=violations, state=state)


# --- headline ------------------------------------------------------------------------------------

_DAYS = "Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday"
_MONTH_NAMES = "January|February|March|April|May|June|July|August|September|October|November|December|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec"
_HL_DATE = re.compile(
    rf"\s*\b(?:(?:early|late) )?(?:on|this|last) (?:{_DAYS})(?:,? (?:{_MONTH_NAMES})\.? \d{{1,2}}(?:, \d{{4}})?)?"
    rf"|\s*\bon (?:{_MONTH_NAMES})\.? \d{{1,2}}(?:, \d{{4}})?"
)
_HL_APPOSITIVE = re.compile(r"^((?:[A-Z][\w'’.&\-]*\s?){1,5}),\s+(?:a|an|the)\s(?:[^,]|,(?=\d)){3,140}?,\s+")
# An aside between the subject and its verb: "The public capacity of the Lightning Network, bitcoin's system for fast,
# low-cost payments, rose above …" (the comma after "Network" is not where the main clause ends).
_HL_SUBJECT_ASIDE = re.compile(
    r"^([^,]{3,80}?),\s+[^,]{3,80}(?:,\s+[^,]{1,40})?,\s+(?=(?:[a-z]+ed|rose|fell|said|says|won|set|sold|made|took|paid|cut|"
    r"lost|began|held|found|drew|has|have|is|was|will|plans|expects|agreed)\b)"
)
_HL_ATTRIBUTION_TAIL = re.compile(
    r",\s+(?:(?:the|a|an)\s+[\w\s\-]{1,40}?|[A-Z][\w.\s\-]{1,60}?)\s(?:said|says|reported|announced|ruled|wrote|found)\b.*$"
)
_HL_DESCRIPTOR = re.compile(
    r"^(?:[A-Za-z][\w\-]*\s+){0,2}?(?:miner|exchange|firm|company|lender|startup|issuer|platform|developer|regulator|"
    r"chipmaker|bank|analyst|investor|manager)\s+(?=[A-Z])"
)
_HL_SAID_IT = re.compile(r"^(?P<subject>[A-Z][\w'’.&\-]*(?:\s+[A-Z][\w'’.&\-]*)*) said(?: that)? (?:it|they) (?:had |has |have )?(?P<rest>[a-z].*)$")
_HL_SAID = re.compile(r"^(?P<subject>[A-Z][\w'’.&\-]*(?:\s+[A-Z][\w'’.&\-]*)*) said(?: that)? ")
_HL_PREPOSITIONS = frozenset(
    "in on at from of for with across over by after as within into through amid while when because following once".split()
)
_HL_RELATIVE = frozenset("that which who whose where".split())
_HL_INNER = frozenset("from with across over through into amid at on within by".split())  # phrases that can go from the middle
_PRESENT = {
    "said": "says", "approved": "approves", "ruled": "rules", "agreed": "agrees", "won": "wins", "fell": "falls",
    "rose": "rises", "drained": "drains", "ordered": "orders", "suspended": "suspends", "halted": "halts",
    "paused": "pauses", "launched": "launches", "lost": "loses", "cut": "cuts", "set": "sets", "filed": "files",
    "sued": "sues", "raised": "raises", "slipped": "slips", "dropped": "drops", "climbed": "climbs", "jumped": "jumps",
    "gained": "gains", "announced": "announces", "reported": "reports", "promised": "promises", "imposed": "imposes",
    "cleared": "clears", "bought": "buys", "sold": "sells", "hired": "hires", "froze": "freezes", "opened": "opens",
    "closed": "closes", "delayed": "delays", "recovered": "recovers", "doubled": "doubles", "posted": "posts",
    "rejected": "rejects", "passed": "passes", "voted": "votes", "fined": "fines", "charged": "charges",
    "banned": "bans", "blocked": "blocks", "acquired": "acquires", "signed": "signs", "named": "names",
    "unveiled": "unveils", "released": "releases", "completed": "completes", "reached": "reaches", "warned": "warns",
    "expanded": "expands", "listed": "lists", "settled": "settles", "appointed": "appoints", "began": "begins",
}
# Long forms a headline shortens when the sources use the short one.
_SHORT_FORMS = (
    (r"\bexchange-traded funds\b", "ETFs"), (r"\bexchange-traded fund\b", "ETF"),
    (r"\bdecentralized finance\b", "DeFi"), (r"\bnon-fungible tokens\b", "NFTs"),
)
_FIGURE_PHRASE = re.compile(r"\b(?:in|for|of|by|with|worth)\s+(?:a\s+|an\s+|about\s+)?([$€£]?\d[\d,.\-]*(?:of-\d+)?(?:\s?(?:%|million|billion))?)(\s+[a-z]+)?")


def _own_headline(material: _Material, lead: list[_Unit], limit: int) -> str:
    """A headline of the draft's own: the lead's subject, verb and key number, never a source's title.

    The lead's first sentence is cut to its main clause (no appositive, date,
    trailing attribution or trailing clause), names with a known acronym are
    abbreviated, and trailing phrases that do not hold the key number are
    dropped until it fits. Other sources' openings are tried when the lead's
    does not make a headline that fits and differs from every source title.
    """
    titles = [s.title for units in material.units.values() for s in [units[0].source] if units]
    titles += [_headline(t, "", 300) for t in titles]
    corpus = " ".join(s.text for s in material.story_sources)
    acronyms = set(re.findall(r"\b[A-Z]{2,6}\b", corpus))
    forms = {short for _, short in _SHORT_FORMS if re.search(rf"\b{short}\b", corpus)}
    candidates = list(lead[:1])
    for source in material.story_sources:
        candidates += [
            u for u in material.units[source.n][:2]
            if u.usable and not u.leans and u not in candidates and not _FRAMING_LEAD.search(u.text)
        ]
    # Openings before second sentences, then the facts most sources share.
    candidates[1:] = sorted(candidates[1:], key=lambda u: (u.index > 0, -material.centrality[id(u)]))
    phrase = _figure_phrase(material)
    fallback = ""
    for unit in candidates:
        first = unit.sentences[0]
        if not quotes_balanced(first) or quotation_words(first):
            continue
        central = {f for f in unit.figures if _figure_weight(material, f) >= 2}
        key = _first_figure(first, central) or _first_figure(first, set(unit.figures))
        headline = _compress(first, acronyms, central, forms, material.common)
        if not key_figures(headline) and phrase and len(headline) + len(phrase) + 1 <= min(limit, 85):
            headline = f"{headline} {phrase}"
        fitted = _fit(headline, central | ({key} if key else set()), limit, keep=material.core)
        if len(fitted) > 85:  # other figures can go before the headline runs long
            fitted = _fit(headline, {key} if key else set(), limit, keep=material.core)
        if len(fitted) > limit:  # and the subject named a second time before it breaks the limit
            fitted = _fit(headline, {key} if key else set(), limit, target=limit)
        if len(fitted) > limit and key and key.startswith(_WHEN_FIGURES):
            # A date or time is the last thing a headline needs: "… ordering its transactions" without
            # "from January" beats falling back to another sentence of the source.
            fitted = _fit(headline, set(), limit, target=limit, keep=material.core)
        fallback = fallback or fitted
        if len(fitted) <= limit and len(fitted.split()) >= 4 and not _copied(fitted, titles):
            return fitted
    if not fallback:
        # A source whose sentences may be used (not one in another language) lends its title.
        usable = [s for s in material.story_sources if any(u.usable for u in material.units[s.n])] or material.story_sources
        return _headline(usable[0].title, "", limit)
    cut = _cut_words(fallback, limit).split()
    while cut and not key_figures(" ".join(cut)) <= key_figures(fallback):  # never "$312" out of "$312 million"
        cut.pop()
    return _cut_words(" ".join(cut), limit)


_WHEN_FIGURES = ("month:", "date:", "time:")


def _first_figure(sentence: str, among: set[str]) -> str | None:
    """The first of `among` the sentence states: the number right after the verb is the headline's."""
    words = sentence.split()
    for i in range(1, len(words) + 1):
        found = key_figures(" ".join(words[:i])) & among
        if found:
            return sorted(found)[0]
    return None


def _figure_weight(material: _Material, figure: str) -> int:
    return sum(figure in u.figures for s in material.story_sources for u in material.units[s.n][:3])


def _figure_phrase(material: _Material) -> str:
    """A short phrase around the figure the story sources' openings share most ("in a 3-2 vote")."""
    best, weight = "", 0
    for source in material.story_sources:
        for u in material.units[source.n][:2]:
            for m in _FIGURE_PHRASE.finditer(u.text):
                figures = key_figures(m.group(0))
                w = max((_figure_weight(material, f) for f in figures), default=0)
                if w > weight:
                    best, weight = re.sub(r"\s(?:a|an)\s(?=[$€£\d])", " ", m.group(0)), w
    return best


def _compress(
    sentence: str, acronyms: set[str], central: set[str] = frozenset(), corpus_forms: set[str] = frozenset(), common: set[str] = frozenset()
) -> str:
    text = sentence.strip().rstrip(".!").strip()
    text = _HL_APPOSITIVE.sub(r"\1 ", text)
    text = _HL_SUBJECT_ASIDE.sub(r"\1 ", text)

    text = _drop_dates(text)
    tail = _HL_ATTRIBUTION_TAIL.search(text)
    if tail and len(text[: tail.start()].split()) >= 6:
        text = text[: tail.start()]
    words = text.split()
    for i, word in enumerate(words):  # a trailing clause after the main one, unless it holds a key figure
        if i >= 5 and word.endswith(","):
            clause = " ".join(words[i + 1:]).split(",")[0]
            # "…$0.913, after holders rushed to redeem $640 million": a cause with a key figure stays;
            # "…, which it expects …", "…, in the largest breach of the year": asides go.
            keep = key_figures(clause) & central and not re.match(r"(?:which|who|whose|where|while|a|an|the)\b", clause)
            # A participle clause keeps its comma: "…the Pyra token, turning down …", never "…token turning down …".
            joint = ", " if re.match(r"[a-z]+ing\b", clause) else " "
            text = " ".join(words[: i + 1]).rstrip(",") + (joint + clause if keep else "")
            break
    text = re.sub(r"^(?:The|A|An)\s+", "", text)
    text = re.sub(r"\b(?:has|have) been\s+(?=[a-z])", "", text)  # "Phishing kit used to build …", headline style
    text = _HL_DESCRIPTOR.sub("", text)
    m = _HL_SAID_IT.match(text)
    if m:  # reported speech back in the headline's present: "said it would begin" -> "will begin"
        rest = re.sub(r"^would\b", "will", re.sub(r"^was\b", "is", m.group("rest")))
        text = f"{m.group('subject')} {rest}"
    else:
        text = _HL_SAID.sub(lambda m: f"{m.group('subject')} says ", text)
    # Headlines speak in the present: "Korvex says", "FDMC approves" (a named subject is singular;
    # "Hackers drained" keeps its tense).
    m = re.match(r"^((?:[A-Z][\w'’.&\-]*\s+){0,4}?[A-Z][\w'’.&\-]*)\s+([a-z]+)\b", text)
    last = m.group(1).split()[-1] if m else ""
    plural = last.endswith("s") and not last.endswith("ss") and not last.isupper()
    if m and m.group(2) in _PRESENT and not plural and m.group(1).lower() not in common:
        rest = re.sub(r"^\s+the\s+(?=[a-z])", " ", text[m.end():])  # "FDMC approves first …"
        text = f"{m.group(1)} {_PRESENT[m.group(2)]}{rest}"
    for long, short in _SHORT_FORMS:
        if short in corpus_forms:
            text = re.sub(long, short, text)
    for m in reversed(list(re.finditer(r"(?:\bthe\s+)?\b((?:[A-Z][a-z]+\s+){1,5}[A-Z][a-z]+)\b", text))):
        initials = "".join(w[0] for w in m.group(1).split() if w.lower() not in {"of", "and", "for", "the"})
        if len(initials) >= 2 and initials in acronyms:
            text = text[: m.start()] + initials + text[m.end():]
    text = re.sub(r"(?<!&)\s+(?:Inc|Ltd|Corp)\.?(?=\s|$|')", "", text)
    text = re.sub(r"\b(?:a|an)\s+(?=[$€£\d])", "", text)
    text = " ".join(text.split()).strip(" ,;:")
    return text[:1].upper() + text[1:]


_VERB_AFTER_DATE = re.compile(r",\s+([a-z]+)")
_IRREGULAR_PAST = frozenset("said says won set sold made took paid cut lost rose fell began held found drew".split())


def _drop_dates(text: str) -> str:
    """Without "on Friday", "early on Wednesday, November 18": a headline is about now.
    A date between subject and verb takes its commas with it ("The FDMC on Thursday, November 19, approved")."""
    out, last = [], 0
    for m in _HL_DATE.finditer(text):
        out.append(text[last:m.start()])
        last = m.end()
        verb = _VERB_AFTER_DATE.match(text, last)
        if verb and (verb.group(1).endswith("ed") or verb.group(1) in _IRREGULAR_PAST):
            last = verb.start(1) - 1
    out.append(text[last:])
    return " ".join("".join(out).split())


def _fit(headline: str, keys: set[str], limit: int, target: int = 85, keep: set[str] = frozenset()) -> str:
    """Drop phrases that hold neither one of the `keys` figures nor a name in `keep` while the headline is over
    `target`: a trailing phrase or clause first, then a prepositional phrase inside ("from Arkon Semiconductor")."""
    words = headline.split()

    def holds_key(part: list[str]) -> bool:  # a key figure, or the story's subject ("from Lumen Exchange's …")
        text = " ".join(part)
        return bool(keys & key_figures(text)) or bool(names(text) & keep)

    while len(" ".join(words)) > min(limit, target):
        starts = [i for i in range(4, len(words)) if words[i].lower() in _HL_PREPOSITIONS]
        # A relative clause goes from the end only when what is left still says something (8 words or more):
        # "… opened a regulatory sandbox [that will let five banks …]", but not "… passed a law [that bans …]".
        trailing = [i for i in range(4, len(words)) if words[i].lower() in _HL_PREPOSITIONS
                    or (words[i].lower() in _HL_RELATIVE and i >= 8 and words[i - 1].lower() not in _HL_PREPOSITIONS)]
        if trailing and not holds_key(words[trailing[-1]:]):
            words = words[: trailing[-1]]
            continue
        inner = [i for i in starts if words[i].lower() in _HL_INNER]
        segments = [(i, next((j for j in starts if j > i), len(words))) for i in inner]
        segments = [(i, j) for i, j in segments if j < len(words) and not holds_key(words[i:j])]
        if not segments:
            break
        i, j = segments[-1]
        words = words[:i] + words[j:]
    return " ".join(words).rstrip(",;:")


def _copied(headline: str, titles: Sequence[str]) -> bool:
    """The headline is a source's title, or nearly (token sequences 80% alike)."""
    from difflib import SequenceMatcher

    mine = re.findall(r"[a-z0-9$%.]+", headline.lower().replace("’", "'"))
    for title in titles:
        theirs = re.findall(r"[a-z0-9$%.]+", title.lower().replace("’", "'"))
        if theirs and (mine == theirs or SequenceMatcher(None, mine, theirs, autojunk=False).ratio() >= 0.8):
            return True
    return False
