"""Article templates: the house rules for each content type, kept in `templates/*.toml`.

A template says how long a headline may be, how many sentences and words the
lead has, how many body paragraphs of what length, how many insights, the tone,
and which stories it is for. The same rules drive three things, so they can
never drift apart: the writer's prompt, the structured-output schema
(`article_model`), and `validate_article`, which lists every violation in
words an editor understands.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from pipeline.core.models import Article, Insight, Paragraph, SourceDoc, SourceRef, Story, Translation
from pipeline.text.sentences import split_sentences
from pipeline.text.language import is_target
from pipeline.text.factrules import quote_appears_verbatim


class TemplateError(Exception):
    """A template file that cannot be used, or no template fits a story. The message names the file and key."""


class _Rules(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class HeadlineRules(_Rules):
    max_chars: int = Field(ge=10, le=300)


class LeadRules(_Rules):
    min_sentences: int = Field(default=1, ge=1, le=10)
    max_sentences: int = Field(ge=1, le=10)
    max_words: int = Field(ge=5, le=400)

    @model_validator(mode="after")
    def _ordered(self) -> LeadRules:
        if self.min_sentences > self.max_sentences:
            raise ValueError(f"min_sentences ({self.min_sentences}) is above max_sentences ({self.max_sentences})")
        return self


class BodyRules(_Rules):
    min_paragraphs: int = Field(ge=1, le=50)
    max_paragraphs: int = Field(ge=1, le=50)
    min_words: int = Field(ge=1, le=1000, description="per paragraph")
    max_words: int = Field(ge=5, le=1000, description="per paragraph")
    min_citations: int = Field(default=1, ge=1, le=10, description="sources [n] each paragraph must cite")

    @model_validator(mode="after")
    def _ordered(self) -> BodyRules:
        if self.min_paragraphs > self.max_paragraphs:
            raise ValueError(f"min_paragraphs ({self.min_paragraphs}) is above max_paragraphs ({self.max_paragraphs})")
        if self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) is above max_words ({self.max_words})")
        return self


class InsightRules(_Rules):
    min_count: int = Field(ge=0, le=20)
    max_count: int = Field(ge=0, le=20)
    max_words: int = Field(ge=3, le=200)
    require_citation: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> InsightRules:
        if self.min_count > self.max_count:
            raise ValueError(f"min_count ({self.min_count}) is above max_count ({self.max_count})")
        return self


class SelectionRules(_Rules):
    """Which stories the template is for. Story size = number of independent outlets."""

    topics: list[str] = Field(default=[], description="any of these topics; empty means any topic")
    min_sources: int = Field(default=1, ge=1)
    max_sources: int | None = Field(default=None, ge=1)
    priority: int = Field(default=0, description="the highest-priority matching template wins")
    default: bool = Field(default=False, description="used when no template matches")

    @model_validator(mode="after")
    def _ordered(self) -> SelectionRules:
        if self.max_sources is not None and self.min_sources > self.max_sources:
            raise ValueError(f"min_sources ({self.min_sources}) is above max_sources ({self.max_sources})")
        return self


class MetadataRules(_Rules):
    """What the CMS gets with each draft (pipeline/metadata.py); every key has a default."""

    slug_max_chars: int = Field(default=60, ge=10, le=200)
    description_max_chars: int = Field(default=155, ge=50, le=155, description="search engines show about 155")
    min_tags: int = Field(default=1, ge=1, le=20)
    max_tags: int = Field(default=6, ge=1, le=20)
    image: bool = Field(default=True, description="suggest a source page's share image (og:image)")

    @model_validator(mode="after")
    def _ordered(self) -> MetadataRules:
        if self.min_tags > self.max_tags:
            raise ValueError(f"min_tags ({self.min_tags}) is above max_tags ({self.max_tags})")
        return self


class TemplateSpec(_Rules):
    name: str = Field(pattern=r"^[a-z0-9_\-]+$")
    description: str = ""
    tone: str = Field(default="", description="free text passed to the writer prompt")
    headline: HeadlineRules
    lead: LeadRules
    body: BodyRules
    insights: InsightRules
    selection: SelectionRules = SelectionRules()
    metadata: MetadataRules = MetadataRules()

    def matches(self, story: Story) -> bool:
        size = story_size(story)
        rules = self.selection
        if size < rules.min_sources or (rules.max_sources is not None and size > rules.max_sources):
            return False
        return not rules.topics or bool(set(rules.topics) & set(story.topics))


# --- loading ---------------------------------------------------------------


def load_template(path: str | Path, known_topics: Iterable[str] | None = None) -> TemplateSpec:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TemplateError(f"template file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TemplateError(f"{path}: not valid TOML: {exc}") from None
    stem = path.stem
    if "name" in raw and raw["name"] != stem:
        raise TemplateError(f"{path}: 'name' = {raw['name']!r} must match the file name ({stem!r}), or be left out")
    try:
        spec = TemplateSpec.model_validate({**raw, "name": stem})
    except ValidationError as exc:
        problems = [_describe(error) for error in exc.errors()]
        raise TemplateError("\n".join([f"{path}: {len(problems)} problem(s) in the template:", *(f"  - {p}" for p in problems)])) from None
    if known_topics is not None:
        known = set(known_topics)
        unknown = [t for t in spec.selection.topics if t not in known]
        if unknown:
            raise TemplateError(f"{path}: 'selection.topics' names unknown topic(s) {unknown}; config topics: {sorted(known) or 'none'}")
    return spec


def load_templates(directory: str | Path, known_topics: Iterable[str] | None = None) -> dict[str, TemplateSpec]:
    """Every `*.toml` in `directory`, keyed by name (the file stem)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TemplateError(f"templates folder not found: {directory}")
    topics = list(known_topics) if known_topics is not None else None
    specs = {p.stem: load_template(p, topics) for p in sorted(directory.glob("*.toml"))}
    if not specs:
        raise TemplateError(f"no templates (*.toml) in {directory}")
    defaults = [name for name, spec in specs.items() if spec.selection.default]
    if len(defaults) > 1:
        raise TemplateError(f"{directory}: only one template may set 'selection.default = true'; found {defaults}")
    return specs


def _describe(error: dict[str, Any]) -> str:
    location = ".".join(str(p) for p in error["loc"]) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"'{location}' is not a known key"
    if error["type"] == "missing":
        return f"'{location}' is required"
    given = error.get("input")
    shown = "a table" if isinstance(given, dict) else repr(given)
    return f"'{location}' = {shown}: {message}"


# --- selection -------------------------------------------------------------


def story_size(story: Story) -> int:
    """Independent sources: distinct outlets, case-insensitively."""
    return len({s.strip().lower() for s in story.sources if s.strip()}) or 1


def choose_template(story: Story, templates: Mapping[str, TemplateSpec] | Iterable[TemplateSpec]) -> TemplateSpec:
    """The highest-priority template whose topics and size range fit; else the default one."""
    specs = list(templates.values()) if isinstance(templates, Mapping) else list(templates)
    if not specs:
        raise TemplateError("no templates loaded")
    fitting = [s for s in specs if s.matches(story)]
    if fitting:
        return sorted(fitting, key=lambda s: (-s.selection.priority, s.name))[0]
    fallback = [s for s in specs if s.selection.default]
    if fallback:
        return fallback[0]
    raise TemplateError(
        f"no template fits story {story.key!r} (topics {story.topics}, {story_size(story)} source(s)) "
        f"and none sets 'selection.default = true'; templates: {sorted(s.name for s in specs)}"
    )


# --- text measures ---------------------------------------------------------

_MARKER = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"'\]\)]+", re.IGNORECASE)


def strip_markers(text: str) -> str:
    """Text without inline citation markers like [2] or [1, 3]."""
    return re.sub(r"\s{2,}", " ", _MARKER.sub("", text)).strip()


def inline_citations(text: str) -> list[int]:
    return [int(n) for m in _MARKER.finditer(text) for n in m.group(1).split(",")]


def count_words(text: str) -> int:
    return len(strip_markers(text).split())


def count_sentences(text: str) -> int:
    return len(split_sentences(strip_markers(text)))


def find_urls(text: str) -> list[str]:
    return [m.group(0).rstrip(".,;:!?") for m in _URL.finditer(text)]


def normalize_url(url: str) -> str:
    url = url.strip().rstrip(".,;:!?").split("#", 1)[0]
    url = re.sub(r"^https?://", "", url, flags=re.IGNORECASE)
    url = re.sub(r"^www\.", "", url, flags=re.IGNORECASE)
    host, _, rest = url.partition("/")
    return (host.lower() + ("/" + rest if rest else "")).rstrip("/")


# --- validation ------------------------------------------------------------


def _span(low: int, high: int) -> str:
    return f"exactly {low}" if low == high else f"{low}–{high}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _numbers(values: Iterable[int]) -> str:
    return ", ".join(str(v) for v in sorted(values)) or "none"


def _sections(article: Article) -> list[tuple[str, str, list[int]]]:
    """(label, text, declared citations) for every text-bearing part of the article."""
    parts = [("headline", article.headline, []), ("lead", article.lead, [])]
    parts += [(f"body paragraph {i}", p.text, p.citations) for i, p in enumerate(article.body, 1)]
    parts += [(f"insight {i}", ins.text, ins.citations) for i, ins in enumerate(article.insights, 1)]
    return parts


def cited_numbers(article: Article) -> set[int]:
    """Every source number the article cites, in citation lists or inline markers."""
    return {n for _, text, declared in _sections(article) for n in [*declared, *inline_citations(text)]}


# "(translated)" or "(translated from German)" right after a closing quotation mark: how a translated quotation is marked.
TRANSLATED_MARK = re.compile(r"[”\"’']\s*\(translated(?: from [^)]{1,40})?\)")


def validate_translations(article: Article, sources: list[SourceDoc], language: str | None) -> list[str]:
    """Each translated quotation is marked where it stands, and its original is verbatim in a source in another
    language; each mark has its translation listed."""
    problems: list[str] = []
    provided = {s.n: s for s in sources}
    texts = [text for _, text, _ in _sections(article)]
    marks = sum(len(TRANSLATED_MARK.findall(text)) for text in texts)
    for i, t in enumerate(article.translations, 1):
        source = provided.get(t.source_n)
        if source is None:
            problems.append(f"translation {i} names source [{t.source_n}], which is not provided")
            continue
        if language is not None and source.language != "und" and is_target(source.language, language):
            problems.append(f"translation {i} is from source [{t.source_n}], which is already in the article's language ({language})")
        if not quote_appears_verbatim(t.original, source.text):
            problems.append(f"translation {i}: its original \"{t.original[:80]}\" is not word for word in source [{t.source_n}]")
        marked = any(re.search(re.escape(t.text.strip()) + r"[,.!?]?" + TRANSLATED_MARK.pattern, text) for text in texts)
        if not marked:
            problems.append(f"translation {i} (\"{t.text[:60]}\") must stand in the article in quotation marks followed by \"(translated)\"")
    if marks > len(article.translations):
        problems.append(f"the article marks {marks} quotation(s) as translated but lists {len(article.translations)} in translations")
    return problems


def validate_article(article: Article, spec: TemplateSpec, sources: list[SourceDoc], language: str | None = None) -> list[str]:
    """Every way `article` breaks `spec` or cites outside `sources`, one plain sentence each. Empty means valid.

    `language`: the newsroom's, for the translated quotations (see `validate_translations`)."""
    problems: list[str] = []
    provided = {s.n: s for s in sources}

    headline = article.headline.strip()
    if not headline:
        problems.append("headline is empty")
    elif len(headline) > spec.headline.max_chars:
        problems.append(f"headline is {len(headline)} characters; the limit is {spec.headline.max_chars}")
    if "\n" in headline:
        problems.append("headline must be one line")

    lead_rules = spec.lead
    lead_sentences = count_sentences(article.lead)
    if not (lead_rules.min_sentences <= lead_sentences <= lead_rules.max_sentences):
        problems.append(
            f"lead has {_plural(lead_sentences, 'sentence')}; it must have {_span(lead_rules.min_sentences, lead_rules.max_sentences)}"
        )
    lead_words = count_words(article.lead)
    if lead_words > lead_rules.max_words:
        problems.append(f"lead has {lead_words} words; the limit is {lead_rules.max_words}")

    body = spec.body
    if not (body.min_paragraphs <= len(article.body) <= body.max_paragraphs):
        problems.append(
            f"body has {_plural(len(article.body), 'paragraph')}; it must have {_span(body.min_paragraphs, body.max_paragraphs)}"
        )
    for i, paragraph in enumerate(article.body, 1):
        words = count_words(paragraph.text)
        if not (body.min_words <= words <= body.max_words):
            problems.append(f"body paragraph {i} has {_plural(words, 'word')}; it must have {_span(body.min_words, body.max_words)}")
        cited = set(paragraph.citations) | set(inline_citations(paragraph.text))
        if len(cited) < body.min_citations:
            need = _plural(body.min_citations, "source")
            if cited:
                problems.append(f"body paragraph {i} cites {_plural(len(cited), 'source')}; every body paragraph must cite at least {need} [n]")
            else:
                problems.append(f"body paragraph {i} cites no source; every body paragraph must cite at least {need} [n]")

    rules = spec.insights
    if not (rules.min_count <= len(article.insights) <= rules.max_count):
        problems.append(f"insights has {_plural(len(article.insights), 'item')}; it must have {_span(rules.min_count, rules.max_count)}")
    for i, insight in enumerate(article.insights, 1):
        words = count_words(insight.text)
        if words > rules.max_words:
            problems.append(f"insight {i} has {words} words; the limit is {rules.max_words}")
        if rules.require_citation and not (insight.citations or inline_citations(insight.text)):
            problems.append(f"insight {i} cites no source; every insight must cite at least one source [n]")

    for label, text, declared in _sections(article):
        for n in dict.fromkeys([*declared, *inline_citations(text)]):
            if n not in provided:
                problems.append(f"{label} cites [{n}], but there is no source {n} (provided sources: {_numbers(provided)})")

    allowed_urls = {normalize_url(s.url) for s in sources}
    for label, text, _ in _sections(article):
        for url in find_urls(text):
            if normalize_url(url) not in allowed_urls:
                problems.append(f"{label} contains URL {url!r}, which is not a source URL; only the sources' own URLs may appear")

    cited = cited_numbers(article)
    listed: set[int] = set()
    for ref in article.sources:
        if ref.n in listed:
            problems.append(f"sources list has source [{ref.n}] more than once")
            continue
        listed.add(ref.n)
        doc = provided.get(ref.n)
        if doc is None:
            problems.append(f"sources list entry [{ref.n}] is not a provided source (provided sources: {_numbers(provided)})")
        elif normalize_url(ref.url) != normalize_url(doc.url):
            problems.append(f"sources list entry [{ref.n}] has URL {ref.url!r}, but source {ref.n} is {doc.url!r}")
        if ref.n not in cited:
            problems.append(f"source [{ref.n}] is listed but never cited; cite it or drop it from the sources list")
    for n in sorted(cited & set(provided) - listed):
        problems.append(f"source [{n}] is cited but missing from the sources list")
    if article.translations or any(TRANSLATED_MARK.search(text) for _, text, _ in _sections(article)):
        problems += validate_translations(article, sources, language)
    return problems


def prune_uncited_sources(article: Article) -> Article:
    """The article with sources-list entries that nothing cites removed."""
    cited = cited_numbers(article)
    return article.model_copy(update={"sources": [ref for ref in article.sources if ref.n in cited]})


def source_refs(article: Article, sources: list[SourceDoc]) -> list[SourceRef]:
    """The sources list an article should carry: every cited provided source, in number order, as provided."""
    cited = cited_numbers(article)
    return [
        SourceRef(n=s.n, title=s.title, outlet=s.outlet, url=s.url, published=s.published)
        for s in sorted(sources, key=lambda s: s.n)
        if s.n in cited
    ]


# --- structured-output schema ----------------------------------------------


_MODELS: dict[tuple, type[Article]] = {}
_MODELS_KEPT = 256  # per-pack classes: a long-running scheduler keeps only the recent ones


def article_model(spec: TemplateSpec, sources: Sequence[SourceDoc] | None = None, language: str | None = None) -> type[Article]:
    """An `Article` subclass whose JSON schema carries the template's rules where JSON schema can say them.

    Item counts become minItems/maxItems (paragraphs, insights, citations per
    paragraph and insight); word and sentence limits, which strict structured
    output cannot express, go into field descriptions and are enforced by
    `validate_article`. Given the research pack's `sources`, the schema is the
    request's own: every citation is an enum of the source numbers actually
    provided, no more citations than sources, and each sources-list entry is
    one of the provided sources with its n, title, outlet and url as consts, so
    a grammar-constrained decoder cannot cite or list a source that is not there.

    Those per-request constraints live in the JSON schema only: a reply from a
    server that does not enforce the schema still parses, and `validate_article`
    names each stray citation in an editor's words ("body paragraph 1 cites [7],
    but there is no source 7"). The sources list the model writes is rebuilt
    from its citations anyway (agents/writer.py). The same rules and sources give
    the same class, so callers can key on it.

    Given the newsroom's `language` too, a translation may only name a source in another language (an enum of
    them; none at all when every source is in the newsroom's language, or when no language is given).
    """
    listed = tuple((s.n, s.title, s.outlet, s.url) for s in sorted(sources, key=lambda s: s.n)) if sources is not None else None
    # Without the newsroom's language no source counts as another language's: no translation is allowed.
    foreign = (tuple(s.n for s in sorted(sources, key=lambda s: s.n) if language is not None and not is_target(s.language, language))
               if sources is not None else None)
    key = (spec.model_dump_json(), listed, foreign)
    if key not in _MODELS:
        while len(_MODELS) >= _MODELS_KEPT:
            del _MODELS[next(iter(_MODELS))]
        _MODELS[key] = _build_article_model(spec, listed, foreign)
    return _MODELS[key]


def _citations(low: int, numbers: list[int] | None, description: str) -> Any:
    """A citations field: at least `low` numbers; with the provided `numbers`, an enum of them, at most one each."""
    if numbers is None:
        return (list[int], Field(min_length=low, description=description))
    extra = {"items": {"type": "integer", "enum": numbers}, "maxItems": max(len(numbers), low)}
    return (list[int], Field(min_length=low, description=description, json_schema_extra=extra))


# Translated quotations per source in another language, at most (a schema bound, not a style rule).
MAX_TRANSLATIONS_PER_SOURCE = 4


def _build_article_model(spec: TemplateSpec, listed: tuple[tuple[int, str, str, str], ...] | None,
                         foreign: tuple[int, ...] | None = None) -> type[Article]:
    title = "".join(part.capitalize() for part in re.split(r"[_\-]", spec.name))
    body, ins = spec.body, spec.insights
    numbers = sorted({n for n, *_ in listed}) if listed is not None else None
    # A pack with fewer sources than the template wants cited per paragraph: ask for what exists (the
    # validator still names the shortfall) rather than send a schema no reply can meet.
    cap = (lambda low: min(low, len(numbers))) if numbers is not None else (lambda low: low)
    paragraph = create_model(
        f"{title}Paragraph",
        __base__=Paragraph,
        text=(str, Field(description=f"{_span(body.min_words, body.max_words)} words, written from the cited sources only")),
        citations=_citations(cap(body.min_citations), numbers, "numbers n of the sources this paragraph relies on"),
    )
    insight = create_model(
        f"{title}Insight",
        __base__=Insight,
        text=(str, Field(description=f"one key fact, at most {ins.max_words} words")),
        citations=_citations(cap(1 if ins.require_citation else 0), numbers, "numbers n of the supporting sources"),
    )
    sources_field: dict[str, Any] = {"description": "every cited source, with n, title, outlet and url exactly as provided"}
    if listed is not None:
        entries = [
            {
                "type": "object",
                "properties": {
                    "n": {"type": "integer", "const": n},
                    "title": {"type": "string", "const": t},
                    "outlet": {"type": "string", "const": o},
                    "url": {"type": "string", "const": u},
                },
                "required": ["n", "title", "outlet", "url"],
                "additionalProperties": False,
            }
            for n, t, o, u in listed
        ]
        sources_field["json_schema_extra"] = {"items": {"anyOf": entries}, "maxItems": len(entries)}
    translation: Any = Translation
    translations_field: dict[str, Any] = {"description": "every quotation translated from a source in another language; [] when none"}
    if foreign is not None:
        if foreign:
            translation = create_model(
                f"{title}Translation", __base__=Translation,
                source_n=(int, Field(description="the number n of the source it comes from",
                                     json_schema_extra={"enum": list(foreign)})),
            )
        translations_field["json_schema_extra"] = {"maxItems": MAX_TRANSLATIONS_PER_SOURCE * len(foreign)}
    return create_model(
        f"{title}Article",
        __base__=Article,
        headline=(str, Field(description=f"at most {spec.headline.max_chars} characters, one line")),
        lead=(str, Field(description=f"{_span(spec.lead.min_sentences, spec.lead.max_sentences)} sentences, at most {spec.lead.max_words} words")),
        body=(list[paragraph], Field(min_length=body.min_paragraphs, max_length=body.max_paragraphs)),
        insights=(list[insight], Field(min_length=ins.min_count, max_length=ins.max_count)),
        sources=(list[SourceRef], Field(**sources_field)),
        translations=(list[translation], Field(default=[], **translations_field)),
    )


def article_json_schema(spec: TemplateSpec, sources: Sequence[SourceDoc] | None = None) -> dict[str, Any]:
    return article_model(spec, sources).model_json_schema()


def as_article(obj: Article) -> Article:
    """A plain `Article` from an instance of a template-derived subclass (for storage and comparison)."""
    return obj if type(obj) is Article else Article.model_validate(obj.model_dump())
