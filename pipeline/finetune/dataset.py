"""The style fine-tuning dataset: approved articles turned into the writer's own conversations.

Every example is exactly what the writer sends at inference time, paired with
the answer we wish it had given:

* system + user: `agents.writer.render_writer_prompt(story, pack, spec)`,
  rendered from the prompts folder the config names;
* assistant: the approved article in the writer's structured JSON form
  (citations in the arrays, not as [n] markers; sources as {n, title, outlet, url}).

Examples come from two places:

(a) past published articles in `finetune.articles_dir` (Markdown with YAML
    front matter, HTML, or JSON). The sources they cite become the numbered
    sources. Their texts come from an optional `<name>.sources.json` beside
    the article. Without one, a source is given by its title only
    (`TITLE_ONLY_TEXT` stands in for the text): the article's own sentences are
    never used as source text, that would hand the model the answer. Such
    examples teach structure and voice, not grounding; they are counted in
    the manifest and `--skip-title-only` leaves them out.
(b) approved drafts in the ledger: the research pack stored with the draft
    holds the exact numbered sources, the story row the story block, and the
    approval the editor's version.

Stored under `data/finetune/<dataset id>/`: `train.jsonl` and `valid.jsonl`
(what is uploaded), `manifest.json` (counts, sources, prompt versions, token
and cost estimate, file hashes, every example's origin and split) and
`cases.jsonl` (the story, sources and approved article behind each example,
for `finetune eval`; never uploaded). The dataset id is the start of the
sha256 of the two JSONL files, so the same examples always get the same id.

Examples are validated one by one (roles and order, no empty message, the
token limit, the Article schema and the template's rules); a broken example
is reported and left out, never sent for training. Duplicates (same messages)
are dropped. The train/validation split is deterministic: examples are ranked
by a hash of their messages and the lowest `valid_fraction` go to validation.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import select

from pipeline.core import schema
from pipeline.core.config import Config
from pipeline.core.ledger import Ledger, stable_hash, utcnow
from pipeline.core.models import Article, Insight, Paragraph, ResearchPack, SourceDoc, Story
from pipeline.core.prompts import library
from pipeline.text.templates import (
    TemplateError,
    TemplateSpec,
    article_model,
    as_article,
    choose_template,
    load_templates,
    normalize_url,
    source_refs,
    validate_article,
)
from pipeline.core.tokens import count_messages
from agents.writer import render_writer_prompt
from agents.editor import load_story

ROLES = ("system", "user", "assistant")
ARTICLE_SUFFIXES = (".md", ".markdown", ".html", ".htm", ".json")
SOURCES_SUFFIX = ".sources.json"
# Stands in for a source's text when only its title was archived. Said plainly, so the model
# sees that the source gave nothing more, rather than an empty block.
TITLE_ONLY_TEXT = "(Only this source's headline was archived; its full text is not available.)"


class DatasetError(Exception):
    """A dataset that cannot be built or read. The message is meant for the operator."""


# --- what one example carries ------------------------------------------------------------


class Case(BaseModel):
    """Everything needed to re-draft an example's story: `finetune eval` reads these back."""

    model_config = ConfigDict(extra="forbid")

    id: str
    origin: str                 # "article:<file name>" or "approval:<draft id>"
    template: str
    story: Story
    pack: ResearchPack
    article: Article            # the approved version, in the writer's form
    title_only_sources: int = 0
    split: str = "train"


@dataclass
class Example:
    case: Case
    messages: list[dict[str, str]]
    tokens: int = 0

    @property
    def hash(self) -> str:
        return stable_hash(self.messages)


@dataclass
class Problem:
    origin: str
    errors: list[str]


@dataclass
class BuildResult:
    dataset_id: str
    directory: Path | None
    train: list[Example]
    valid: list[Example]
    problems: list[Problem]
    duplicates: list[str]
    manifest: dict[str, Any]
    skipped_title_only: int = 0

    @property
    def written(self) -> bool:
        return self.directory is not None


# --- the writer's form of an article ---------------------------------------------------------

_MARKERS = re.compile(r"\s*\[(\d+(?:\s*,\s*\d+)*)\]")


def split_markers(text: str) -> tuple[str, list[int]]:
    """'rose 5% [2][3].' -> ('rose 5%.', [2, 3]): markers leave the text and become citations."""
    numbers = [int(n) for m in _MARKERS.finditer(text) for n in m.group(1).split(",")]
    return " ".join(_MARKERS.sub("", text).split()), list(dict.fromkeys(numbers))


def writer_form(article: Article, sources: list[SourceDoc]) -> Article:
    """The article as the writer is asked to produce it: numbers in the citation arrays, none in the text,
    and a sources list of exactly the cited provided sources."""

    def move(items, model):
        out = []
        for item in items:
            text, inline = split_markers(item.text)
            out.append(model(text=text, citations=list(dict.fromkeys([*item.citations, *inline]))))
        return out

    plain = Article(
        headline=split_markers(article.headline)[0],
        lead=split_markers(article.lead)[0],
        body=move(article.body, Paragraph),
        insights=move(article.insights, Insight),
        sources=[],
    )
    return plain.model_copy(update={"sources": source_refs(plain, sources)})


def assistant_json(article: Article) -> str:
    """The reply the writer gives: compact JSON, sources as {n, title, outlet, url} (what the prompt asks for)."""
    data = as_article(article).model_dump(mode="json", exclude={"sources": {"__all__": {"published"}}})
    return json.dumps(data, ensure_ascii=False)


# --- past articles: reading the folder ---------------------------------------------------------


@dataclass
class PastArticle:
    path: Path
    headline: str
    published: date | None
    template: str | None
    topics: list[str]
    lead: str
    body: list[str]
    insights: list[str]
    sources: list[dict[str, Any]] = field(default_factory=list)  # {title, url, outlet, published?, text?}


def article_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in ARTICLE_SUFFIXES and not p.name.endswith(SOURCES_SUFFIX)
    )


def read_past_article(path: Path) -> PastArticle:
    """One past article from Markdown (YAML front matter), HTML or JSON; DatasetError names what is wrong."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read: {exc}") from None
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _from_json(path, raw)
    if suffix in (".html", ".htm"):
        return _from_html(path, raw)
    return _from_markdown(path, raw)


def _from_markdown(path: Path, raw: str) -> PastArticle:
    import yaml

    meta: dict[str, Any] = {}
    text = raw.lstrip("\ufeff")
    if text.startswith("---"):
        parts = re.split(r"^---\s*$", text, maxsplit=2, flags=re.MULTILINE)
        if len(parts) < 3:
            raise DatasetError("front matter opened with '---' is never closed")
        try:
            meta = yaml.safe_load(parts[1]) or {}
        except yaml.YAMLError as exc:
            raise DatasetError(f"front matter is not valid YAML: {exc}") from None
        if not isinstance(meta, dict):
            raise DatasetError("front matter must be a mapping of keys to values")
        text = parts[2]
    headline = str(meta.get("headline") or "").strip()
    blocks = [b.strip() for b in re.split(r"\n\s*\n", text) if b.strip()]
    section, lead, body, insights = "article", "", [], []
    for block in blocks:
        heading = re.match(r"^(#{1,6})\s+(.*)$", block)
        if heading and "\n" not in block:
            level, title = len(heading.group(1)), heading.group(2).strip()
            if level == 1 and not headline:
                headline = title
                continue
            section = "insights" if title.lower().rstrip(":") in ("insights", "key insights", "takeaways") else "other"
            continue
        if section == "insights":
            insights += [re.sub(r"^\s*[-*+]\s+", "", line).strip() for line in block.splitlines() if line.strip()]
        elif section == "article":
            paragraph = " ".join(line.strip() for line in block.splitlines())
            if not lead:
                lead = paragraph
            else:
                body.append(paragraph)
    return _past(path, meta, headline, lead, body, insights)


def _from_html(path: Path, raw: str) -> PastArticle:
    """<meta name="date|template|topics|headline">, <h1> headline, then in <article> (else <body>): the first
    <p> is the lead, later <p>s the body; <li>s under an "Insights" heading are insights, and <li><a href>title</a>
    outlet</li> under a "Sources" heading the numbered sources (outlet from data-outlet, the text after the
    link, else the link's host)."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(raw, "lxml")
    meta = {m.get("name", "").lower(): m.get("content", "") for m in soup.find_all("meta") if m.get("name")}
    root = soup.find("article") or soup.body or soup
    h1 = root.find("h1") or soup.find("h1")
    headline = meta.get("headline") or (h1.get_text(" ", strip=True) if h1 else "") or (soup.title.get_text(strip=True) if soup.title else "")
    section, lead, body, insights, sources = "article", "", [], [], []
    for node in root.find_all(["h2", "h3", "p", "li"]):
        text = " ".join(node.get_text(" ", strip=True).split())
        if node.name in ("h2", "h3"):
            key = text.lower().rstrip(":")
            section = "insights" if key in ("insights", "key insights", "takeaways") else "sources" if key == "sources" else "other"
            continue
        if not text:
            continue
        if section == "article" and node.name == "p":
            if not lead:
                lead = text
            else:
                body.append(text)
        elif section == "insights" and node.name == "li":
            insights.append(text)
        elif section == "sources" and node.name == "li":
            link = node.find("a", href=True)
            if link is not None:
                rest = text.replace(link.get_text(" ", strip=True), "", 1).strip(" -–—,()|")
                sources.append({"title": link.get_text(" ", strip=True), "url": link["href"],
                                "outlet": node.get("data-outlet") or rest or urlsplit(link["href"]).hostname or ""})
    meta_keys = {"date": meta.get("date"), "template": meta.get("template"), "sources": sources,
                 "topics": [t.strip() for t in meta.get("topics", "").split(",") if t.strip()]}
    return _past(path, meta_keys, headline, lead, body, insights)


def _from_json(path: Path, raw: str) -> PastArticle:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(data, dict):
        raise DatasetError("a JSON article must be an object with headline, lead, body, insights and sources")

    def texts(key: str) -> list[str]:
        items = data.get(key) or []
        if not isinstance(items, list):
            raise DatasetError(f"'{key}' must be a list")
        out = []
        for item in items:
            if isinstance(item, dict):
                marks = "".join(f"[{n}]" for n in item.get("citations", []))
                out.append(f"{item.get('text', '')} {marks}".strip())
            else:
                out.append(str(item))
        return out

    return _past(path, data, str(data.get("headline") or ""), str(data.get("lead") or ""), texts("body"), texts("insights"))


def _past(path: Path, meta: dict[str, Any], headline: str, lead: str, body: list[str], insights: list[str]) -> PastArticle:
    published = _as_date(meta.get("date"))
    sources = meta.get("sources") or []
    if not isinstance(sources, list) or not all(isinstance(s, dict) for s in sources):
        raise DatasetError("'sources' must be a list of {title, url, outlet}")
    topics = meta.get("topics") or []
    if isinstance(topics, str):
        topics = [t.strip() for t in topics.split(",") if t.strip()]
    return PastArticle(path=path, headline=headline.strip(), published=published, template=(str(meta["template"]) if meta.get("template") else None),
                       topics=[str(t) for t in topics], lead=lead, body=body, insights=insights, sources=[dict(s) for s in sources])


def _as_date(value: Any) -> date | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        raise DatasetError(f"'date' = {value!r} is not a date (YYYY-MM-DD)") from None


def _as_datetime(value: Any, fallback: datetime) -> datetime:
    if value in (None, ""):
        return fallback
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, date):
        return datetime.combine(value, time(0, 0), tzinfo=timezone.utc)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise DatasetError(f"source 'published' = {value!r} is not an ISO date or date-time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _sidecar_sources(path: Path) -> list[dict[str, Any]] | None:
    sidecar = path.with_name(path.stem + SOURCES_SUFFIX)
    if not sidecar.exists():
        return None
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{sidecar.name}: cannot read the source list: {exc}") from None
    if isinstance(data, dict):
        data = data.get("sources")
    if not isinstance(data, list) or not all(isinstance(s, dict) for s in data):
        raise DatasetError(f"{sidecar.name}: must be a list of {{title, url, outlet, text}} (or {{\"sources\": [...]}})")
    return data


def _key(url: str) -> str:
    return normalize_url(str(url))


def past_case(past: PastArticle, templates: dict[str, TemplateSpec]) -> Case:
    """The story, numbered sources, template and writer-form article of one past article."""
    sidecar = _sidecar_sources(past.path)
    listed = past.sources
    if sidecar is not None:
        by_url = {_key(s.get("url", "")): s for s in sidecar}
        unknown = [s.get("url") for s in sidecar if listed and _key(s.get("url", "")) not in {_key(x.get("url", "")) for x in listed}]
        if unknown:
            raise DatasetError(f"{past.path.stem}{SOURCES_SUFFIX} lists source(s) the article does not: {', '.join(map(str, unknown))}")
        listed = [{**s, **by_url.get(_key(s.get("url", "")), {})} for s in listed] if listed else sidecar
    if not listed:
        raise DatasetError("no sources: the writer always works from numbered sources, so there is no prompt to pair this article with")
    if past.published is None:
        raise DatasetError("no 'date': the story block of the prompt needs one")
    day = datetime.combine(past.published, time(0, 0), tzinfo=timezone.utc)
    docs: list[SourceDoc] = []
    title_only = 0
    for position, source in enumerate(listed, 1):
        missing = [k for k in ("title", "url", "outlet") if not str(source.get(k) or "").strip()]
        if missing:
            raise DatasetError(f"source {position} has no {', '.join(missing)}")
        text = str(source.get("text") or "").strip()
        if not text:
            title_only += 1
        n = int(source.get("n") or position)
        docs.append(SourceDoc(
            n=n, item_id="past-" + hashlib.sha256(_key(source["url"]).encode()).hexdigest()[:16],
            title=str(source["title"]).strip(), outlet=str(source["outlet"]).strip(),
            published=_as_datetime(source.get("published"), day), url=str(source["url"]).strip(),
            text=text or TITLE_ONLY_TEXT, role=source.get("role") if source.get("role") in ("story", "background") else "story",
        ))
    if len({d.n for d in docs}) != len(docs):
        raise DatasetError("two sources share a number n")
    docs.sort(key=lambda d: d.n)
    story_docs = [d for d in docs if d.role == "story"] or docs
    outlets = list(dict.fromkeys(d.outlet for d in story_docs))
    story = Story(
        # The founding item's title, as at inference: the headline is part of the answer and must not leak.
        key="past-" + hashlib.sha256(past.path.name.encode()).hexdigest()[:20],
        title=story_docs[0].title, item_ids=[d.item_id for d in story_docs], sources=outlets, topics=past.topics,
        score=0.0, first_published=min(d.published for d in story_docs), last_published=max(d.published for d in story_docs),
    )
    spec = _spec(past.template, story, templates)
    pack = ResearchPack(story_key=story.key, sources=docs, budget_tokens=0, used_tokens=0)
    article = Article(
        headline=past.headline, lead=past.lead,
        body=[Paragraph(text=t, citations=[]) for t in past.body],
        insights=[Insight(text=t, citations=[]) for t in past.insights], sources=[],
    )
    return Case(id="", origin=f"article:{past.path.name}", template=spec.name, story=story, pack=pack,
                article=writer_form(article, docs), title_only_sources=title_only)


def _spec(name: str | None, story: Story, templates: dict[str, TemplateSpec]) -> TemplateSpec:
    if name is None:
        return choose_template(story, templates)  # the same rule the draft stage uses
    if name not in templates:
        raise DatasetError(f"template {name!r} is not in the templates folder (templates: {', '.join(sorted(templates))})")
    return templates[name]


# --- approved drafts ------------------------------------------------------------------------------


def approved_cases(ledger: Ledger, templates: dict[str, TemplateSpec]) -> tuple[list[Case], list[Problem], dict[str, int]]:
    """Cases from approvals joined with their drafts; the prompt versions the drafts were written with are counted."""

    a, d = schema.approvals, schema.drafts
    with ledger.engine.connect() as connection:
        rows = connection.execute(
            select(a.c.draft_id, a.c.article, d.c.story_key, d.c.template, d.c.research, d.c.prompt_versions)
            .select_from(a.join(d, a.c.draft_id == d.c.id))
            .order_by(a.c.approved_at, a.c.draft_id)
        ).all()
    cases, problems, versions = [], [], {}
    for row in rows:
        origin = f"approval:{row.draft_id}"
        try:
            if row.research is None:
                raise DatasetError("the draft has no stored research pack, so the exact sources are unknown")
            pack = ResearchPack.model_validate(row.research)
            story = load_story(ledger, row.story_key)
            if story is None:
                raise DatasetError(f"story {row.story_key} is not in the ledger, so the story block cannot be re-rendered")
            if row.template not in templates:
                raise DatasetError(f"template {row.template!r} is no longer in the templates folder")
            approved = Article.model_validate(row.article)
        except (DatasetError, ValidationError) as exc:
            problems.append(Problem(origin, [_first_line(exc)]))
            continue
        version = (row.prompt_versions or {}).get("writer", "unknown")
        versions[version] = versions.get(version, 0) + 1
        cases.append(Case(id="", origin=origin, template=row.template, story=story, pack=pack,
                          article=writer_form(approved, pack.sources)))
    return cases, problems, versions


def _first_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors(include_url=False)[0]
        return f"stored data does not fit its model: {'.'.join(map(str, err['loc']))}: {err['msg']}"
    return str(exc).splitlines()[0]


# --- examples and their validation --------------------------------------------------------------------


def render_example(case: Case, spec: TemplateSpec, config: Config) -> list[dict[str, str]]:
    # The prompt the writer is really sent, house rules included (agents.writer.prompt_library).
    prompt = render_writer_prompt(case.story, case.pack, spec,
                                  prompts=library(str(config.prompts_dir), str(config.house_rules_path)))
    return [*prompt.messages, {"role": "assistant", "content": assistant_json(case.article)}]


def validate_messages(
    messages: Any, spec: TemplateSpec | None, sources: list[SourceDoc], *, max_tokens: int, model: str
) -> list[str]:
    """Every reason this conversation must not be trained on, one plain sentence each. Empty means fine."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return ["'messages' must be a list of {role, content} objects"]
    problems = []
    roles = [m.get("role") for m in messages]
    if tuple(roles) != ROLES:
        problems.append(f"roles are {roles}; an example must be exactly system, user, assistant in that order")
    for i, message in enumerate(messages, 1):
        content = message.get("content")
        if not isinstance(content, str):
            problems.append(f"message {i} ({message.get('role')}) has no text content")
        elif not content.strip():
            problems.append(f"message {i} ({message.get('role')}) is empty")
    if problems:
        return problems
    tokens = count_messages(messages, model)
    if tokens > max_tokens:
        problems.append(f"{tokens} tokens; the limit per example is {max_tokens} (finetune.max_example_tokens)")
    if spec is None:
        return problems + ["no template to check the assistant reply against"]
    try:
        article = article_model(spec).model_validate_json(messages[-1]["content"])
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(reply)'}: {e['msg']}" for e in exc.errors(include_url=False)[:5])
        return problems + [f"the assistant reply is not a valid {spec.name} Article: {details}"]
    problems += [f"template {spec.name}: {v}" for v in validate_article(as_article(article), spec, sources)]
    return problems


def split_examples(examples: list[Example], valid_fraction: float) -> tuple[list[Example], list[Example]]:
    """Deterministic: rank by a salted hash of the messages, the lowest ranks are validation.

    At least one validation example whenever the fraction is above zero and there are two or more.
    """
    if valid_fraction <= 0 or len(examples) < 2:
        return list(examples), []
    count = max(1, round(len(examples) * valid_fraction))
    ranked = sorted(examples, key=lambda e: hashlib.sha256(("split:" + e.hash).encode()).hexdigest())
    valid_ids = {id(e) for e in ranked[:count]}
    return [e for e in examples if id(e) not in valid_ids], [e for e in examples if id(e) in valid_ids]


def training_price(config: Config, model: str) -> float | None:
    """US$ per 1M training tokens: exact name, the base of an ft: name, or the longest dated-snapshot prefix."""
    prices = config.llm.prices
    if model in prices:
        return prices[model].training or None
    base = model.split(":")[1] if model.startswith("ft:") and ":" in model[3:] else model
    names = [name for name in prices if base == name or base.startswith(name + "-")]
    if not names:
        return None
    return prices[max(names, key=len)].training or None


def estimate(config: Config, train: list[Example]) -> dict[str, Any]:
    tokens = sum(e.tokens for e in train)
    epochs = config.finetune.epochs
    price = training_price(config, config.finetune.base_model)
    return {
        "epochs": epochs,
        "training_tokens": tokens,
        "billed_tokens": tokens * epochs,
        "price_per_1m": price,
        "cost_usd": None if price is None else round(tokens * epochs * price / 1_000_000, 4),
    }


# --- building ---------------------------------------------------------------------------------------


def build_dataset(
    config: Config,
    ledger: Ledger | None,
    *,
    articles_dir: Path | None = None,
    skip_title_only: bool = False,
    write: bool = True,
) -> BuildResult:
    """Collect, validate, dedupe, split and (with `write`) store the dataset. Never raises for one bad example."""
    settings = config.finetune
    templates = load_templates(config.templates_dir, config.topic_names or None)
    cases: list[Case] = []
    problems: list[Problem] = []
    folder = articles_dir or (config.path(settings.articles_dir) if settings.articles_dir else None)
    article_count = 0
    if folder is not None:
        if not folder.is_dir():
            raise DatasetError(f"articles folder not found: {folder} (finetune.articles_dir)")
        for path in article_files(folder):
            try:
                cases.append(past_case(read_past_article(path), templates))
                article_count += 1
            except (DatasetError, TemplateError, ValidationError) as exc:
                problems.append(Problem(f"article:{path.name}", [_first_line(exc)]))
    approval_versions: dict[str, int] = {}
    approval_count = 0
    if ledger is not None:
        found, trouble, approval_versions = approved_cases(ledger, templates)
        cases += found
        problems += trouble
        approval_count = len(found)

    skipped = 0
    if skip_title_only:
        skipped = sum(1 for c in cases if c.title_only_sources)
        cases = [c for c in cases if not c.title_only_sources]

    examples: list[Example] = []
    seen: dict[str, str] = {}
    duplicates: list[str] = []
    for case in cases:
        spec = templates[case.template]
        try:
            messages = render_example(case, spec, config)
        except Exception as exc:  # a prompt that cannot render names its file; one example, not the build
            problems.append(Problem(case.origin, [f"cannot render the writer prompt: {exc}"]))
            continue
        errors = validate_messages(messages, spec, case.pack.sources, max_tokens=settings.max_example_tokens, model=settings.base_model)
        if errors:
            problems.append(Problem(case.origin, errors))
            continue
        example = Example(case=case, messages=messages, tokens=count_messages(messages, settings.base_model))
        if example.hash in seen:
            duplicates.append(f"{case.origin} repeats {seen[example.hash]}")
            continue
        seen[example.hash] = case.origin
        example.case = case.model_copy(update={"id": example.hash[:12]})
        examples.append(example)

    train, valid = split_examples(examples, settings.valid_fraction)
    for e in valid:
        e.case = e.case.model_copy(update={"split": "valid"})
    train_text, valid_text = _jsonl(train), _jsonl(valid)
    digest = hashlib.sha256((train_text + "\x00" + valid_text).encode()).hexdigest()
    dataset_id = digest[:12]
    writer_version = library(str(config.prompts_dir), str(config.house_rules_path)).version("writer")
    manifest = {
        "dataset_id": dataset_id,
        "hash": digest,
        "created": utcnow().isoformat(timespec="seconds"),
        "base_model": settings.base_model,
        "counts": {
            "examples": len(examples), "train": len(train), "valid": len(valid),
            "rejected": len(problems), "duplicates": len(duplicates), "skipped_title_only": skipped,
        },
        "sources": {
            "articles_dir": str(folder) if folder else None,
            "articles": article_count,
            "approved_drafts": approval_count,
            "title_only_examples": sum(1 for e in examples if e.case.title_only_sources),
            "title_only_note": f"sources without archived text are given by title, with the text {TITLE_ONLY_TEXT!r}",
        },
        "prompt_versions": {"writer": writer_version},
        "approved_drafts_written_with": approval_versions,
        "templates": sorted({e.case.template for e in examples}),
        "tokens": {
            "train": sum(e.tokens for e in train),
            "valid": sum(e.tokens for e in valid),
            "max_example": max((e.tokens for e in examples), default=0),
            "limit": settings.max_example_tokens,
        },
        "estimate": estimate(config, train),
        "files": {
            "train.jsonl": hashlib.sha256(train_text.encode()).hexdigest(),
            "valid.jsonl": hashlib.sha256(valid_text.encode()).hexdigest(),
        },
        "examples": [
            {"id": e.case.id, "origin": e.case.origin, "split": e.case.split, "template": e.case.template, "tokens": e.tokens}
            for e in [*train, *valid]
        ],
        "problems": [{"origin": p.origin, "errors": p.errors} for p in problems],
    }
    result = BuildResult(dataset_id, None, train, valid, problems, duplicates, manifest, skipped)
    if write and len(train) >= settings.min_examples:
        result.directory = write_dataset(config, result, train_text, valid_text)
    return result


def _jsonl(examples: Iterable[Example]) -> str:
    return "".join(json.dumps({"messages": e.messages}, ensure_ascii=False) + "\n" for e in examples)


def datasets_root(config: Config) -> Path:
    return config.data_dir / "finetune"


def write_dataset(config: Config, result: BuildResult, train_text: str, valid_text: str) -> Path:
    directory = datasets_root(config) / result.dataset_id
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.jsonl").write_text(train_text, encoding="utf-8")
    (directory / "valid.jsonl").write_text(valid_text, encoding="utf-8")
    cases = "".join(e.case.model_dump_json() + "\n" for e in [*result.train, *result.valid])
    (directory / "cases.jsonl").write_text(cases, encoding="utf-8")
    (directory / "manifest.json").write_text(json.dumps(result.manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return directory


# --- reading a stored dataset back --------------------------------------------------------------------


def dataset_dir(config: Config, dataset_id: str | None = None) -> Path:
    """A built dataset's folder: the one named, else the most recently built."""
    root = datasets_root(config)
    if dataset_id:
        matches = [p for p in root.glob(f"{dataset_id}*") if (p / "manifest.json").exists()] if root.is_dir() else []
        if len(matches) != 1:
            known = ", ".join(sorted(p.name for p in root.iterdir() if (p / "manifest.json").exists())) if root.is_dir() else ""
            raise DatasetError(f"no single dataset matches {dataset_id!r} under {root}; built datasets: {known or 'none'}")
        return matches[0]
    built = sorted(
        (p for p in root.iterdir() if (p / "manifest.json").exists()) if root.is_dir() else [],
        key=lambda p: (read_manifest(p).get("created", ""), p.name),
    )
    if not built:
        raise DatasetError(f"no dataset built yet under {root}; run: run.py finetune build")
    return built[-1]


def read_manifest(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{directory / 'manifest.json'}: cannot read: {exc}") from None


def read_cases(directory: Path, split: str = "valid") -> list[Case]:
    path = directory / "cases.jsonl"
    if not path.exists():
        raise DatasetError(f"{path} is missing; rebuild the dataset with run.py finetune build")
    cases = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            case = Case.model_validate_json(line)
        except ValidationError as exc:
            raise DatasetError(f"{path}:{number}: {_first_line(exc)}") from None
        if split == "all" or case.split == split:
            cases.append(case)
    return cases


def min_examples_problem(config: Config, result: BuildResult) -> str | None:
    need = config.finetune.min_examples
    if len(result.train) >= need:
        return None
    return (
        f"only {len(result.train)} training example(s) after validation; finetune.min_examples is {need}. "
        "Add past articles or approve more drafts, then build again."
    )


__all__ = [
    "BuildResult", "Case", "DatasetError", "Example", "PastArticle", "Problem", "TITLE_ONLY_TEXT",
    "assistant_json", "build_dataset", "dataset_dir", "estimate", "min_examples_problem", "past_case",
    "read_cases", "read_manifest", "read_past_article", "render_example", "split_examples", "split_markers",
    "training_price", "validate_messages", "writer_form",
]
