"""What the CMS needs besides the article: slug, meta description, tags and a suggested image.

Made from the draft itself, never by a model: the slug from the headline, the
description from the lead (cut at a sentence, else a word, boundary), the tags
from the story's topics and the names its own sources share, and the image from
a story source page's og:image, with the outlet as credit. The image is only
suggested (its URL is written as text at the top of the document, never
inserted or hot-linked). Each template's `[metadata]` table sets the limits,
and `validate_meta` checks a draft's (or an editor's edited) metadata against
them, one plain sentence per problem, like `validate_article`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from urllib.parse import urljoin, urlsplit

from pipeline.core.models import Article, Draft, DraftState, ImageSuggestion, PublishMeta, SourceDoc
from pipeline.text.sentences import DANGLING_WORDS, split_sentences
from pipeline.text.language import is_target
from pipeline.text.entities import capitalised_mid_sentence, story_profile

SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_MARKERS = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_TERMINAL_CHARS = ".!?\"'”’)"
_NEEDS_NEXT = DANGLING_WORDS | {"while", "after", "before", "than", "into", "over"}
# og keys that name a page's share image, best first.
IMAGE_KEYS = ("og:image", "og:image:secure_url", "og:image:url", "twitter:image")
MAX_TAG_CHARS = 40

# The header lines, as the document and the outbox files show them; read back on sync.
LABELS = {"slug": "Slug", "description": "Meta description", "tags": "Tags", "image": "Suggested image"}
_LINE = re.compile(r"^(Slug|Meta description|Tags|Suggested image):\s*(.*)$")
_CREDIT = re.compile(r"^(?P<url>\S+)(?:\s+[—-]\s+credit:\s*(?P<credit>.*))?$")


def slugify(text: str, limit: int) -> str:
    """ASCII, lower case, hyphens: 'Korvex loses $48.2 million' -> 'korvex-loses-48-2-million', cut at a hyphen."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    if len(slug) > limit:
        cut = slug[: limit + 1]
        slug = cut.rsplit("-", 1)[0] if "-" in cut else cut[:limit]
    return slug.strip("-")


def describe(lead: str, limit: int) -> str:
    """The lead as a meta description of at most `limit` characters: whole sentences if they fit, else cut at a word."""
    text = " ".join(_MARKERS.sub("", lead).split())
    if len(text) <= limit:
        return text
    # The project's splitter, not a full stop before a space: "U.S. District Judge" or "Inc." ends no sentence.
    ends = [s.end for s in split_sentences(text) if s.end <= limit and text[s.end - 1] in _TERMINAL_CHARS]
    if ends and ends[-1] >= limit // 2:
        return text[: ends[-1]]
    words = text[: limit - 1].rsplit(" ", 1)[0].split(" ")
    # "…ruled…", not "…ruled on…": a description never ends on a word that needs the next one.
    while len(words) > 1 and words[-1].lower().rstrip(",;:") in _NEEDS_NEXT:
        words.pop()
    return " ".join(words).rstrip(",;:—–- ") + "…"


_CALENDAR = frozenset(
    "jan feb mar apr may jun jul aug sep sept oct nov dec january february march april june july august september "
    "october november december monday tuesday wednesday thursday friday saturday sunday utc gmt".split()
)


def _surface(name: str, texts: Sequence[str]) -> str:
    """A lower-cased name as the sources write it, as a whole word ('' when they never do)."""
    pattern = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])", re.IGNORECASE)
    for text in texts:
        m = pattern.search(text)
        if m:
            return m.group(0)
    return ""


def _reads_as_name(tag: str, common: set[str], mid_capitals: set[str]) -> bool:
    """Every word capitalised ('Lisbon-based', 'every USDV' are not names), no calendar word, and a single word
    only if the sources never write it in lower case and capitalise it where no sentence starts ('Regulator'
    opening a headline, 'Someone' opening a quotation are not names)."""
    words = tag.split()
    if not all(w[0].isupper() or w[0].isdigit() for w in words) or any(p[:1].islower() for w in words for p in w.split("-")[1:]):
        return False
    if any(w.lower() in _CALENDAR for w in words):
        return False
    return len(words) > 1 or (tag.lower() not in common and tag.lower() in mid_capitals)


def story_tags(topics: Sequence[str], sources: Sequence[SourceDoc], limit: int, language: str = "en") -> list[str]:
    """The story's topics, then its actors: the names its headlines share first, then names most of its own
    sources share, each as the sources write it. Only sources in the newsroom's language are read for names
    (another language's capitalised nouns are no names: "Millionen Dollar")."""
    own = [s for s in sources if s.role == "story"] or list(sources)
    own = [s for s in own if is_target(s.language, language)] or own
    core, names, common = story_profile([s.title for s in own], [s.text for s in own])
    texts = [s.title for s in own] + [s.text for s in own]

    def position(name: str) -> int:
        return min((t.lower().find(name) for t in texts if name in t.lower()), default=10**6)

    # The longest form of a name ("Marta Lindqvist" rather than "Lindqvist"), the story's subject first.
    maximal = {n for n in names if not any(n != m and f" {n} " in f" {m} " for m in names)}
    ranked = sorted(maximal, key=lambda n: (not (n in core or set(n.split()) & core), position(n)))
    tags: list[str] = []
    mid_capitals = capitalised_mid_sentence(texts)
    found = [s for s in (_surface(n, texts) for n in ranked) if s and _reads_as_name(s, common, mid_capitals)]
    for tag in [*topics, *found]:
        tag = " ".join(tag.replace(",", " ").split())
        low = tag.lower()
        if not tag or len(tag) > MAX_TAG_CHARS or any(low == t.lower() for t in tags):
            continue
        tags.append(tag)
        if len(tags) == limit:
            break
    return tags


def source_images(sources: Iterable[SourceDoc]) -> list[ImageSuggestion]:
    """Every http(s) share image the story's own source pages declare, resolved against the page's URL."""
    out: list[ImageSuggestion] = []
    for s in sources:
        if s.role != "story":
            continue
        for key in IMAGE_KEYS:
            raw = (s.og or {}).get(key, "").strip()
            if not raw:
                continue
            url = urljoin(s.url, raw)
            if urlsplit(url).scheme in ("http", "https") and urlsplit(url).hostname and not any(i.url == url for i in out):
                out.append(ImageSuggestion(url=url, credit=(s.og or {}).get("og:site_name") or s.outlet, source_n=s.n))
            break
    return out


def build_meta(article: Article, topics: Sequence[str], sources: Sequence[SourceDoc], rules, language: str = "en") -> PublishMeta:
    """A draft's metadata under the template's `[metadata]` rules (pipeline.text.templates.MetadataRules)."""
    images = source_images(sources) if rules.image else []
    cited = {n for p in article.body for n in p.citations} | {n for i in article.insights for n in i.citations}
    # An image from a source the draft cites, the first such source first.
    image = next((i for i in images if i.source_n in cited), images[0] if images else None)
    return PublishMeta(
        slug=slugify(article.headline, rules.slug_max_chars),
        description=describe(article.lead, rules.description_max_chars),
        tags=story_tags(topics, sources, rules.max_tags, language),
        image=image,
    )


def refreshed_meta(meta: PublishMeta, article: Article, rules) -> PublishMeta:
    """The metadata after a revision: slug and description follow the revised headline and lead; tags and image stay."""
    return meta.model_copy(update={"slug": slugify(article.headline, rules.slug_max_chars),
                                   "description": describe(article.lead, rules.description_max_chars)})


def with_meta(draft: Draft, topics: Sequence[str], sources: Sequence[SourceDoc], rules, language: str = "en") -> Draft:
    """The draft with its metadata; a metadata problem is a violation like any other (needs_attention).

    A draft with nothing written (no headline) gets none: there is nothing to describe."""
    if not draft.article.headline.strip():
        return draft
    meta = build_meta(draft.article, topics, sources, rules, language)
    problems = [f"metadata: {p}" for p in validate_meta(meta, rules, sources)]
    update: dict = {"meta": meta}
    if problems:
        update.update(violations=[*draft.violations, *problems], state=DraftState.needs_attention)
    return draft.model_copy(update=update)


def validate_meta(meta: PublishMeta | None, rules, sources: Sequence[SourceDoc]) -> list[str]:
    """Every way `meta` breaks the template's metadata rules, one plain sentence each. Empty means valid."""
    if meta is None:
        return ["the draft has no publishing metadata (slug, meta description, tags)"]
    problems = []
    if not meta.slug:
        problems.append("slug is empty")
    elif not SLUG.match(meta.slug):
        problems.append(f"slug {meta.slug!r} must be lower-case letters and digits joined by single hyphens")
    if len(meta.slug) > rules.slug_max_chars:
        problems.append(f"slug is {len(meta.slug)} characters; the limit is {rules.slug_max_chars}")
    description = meta.description
    if not description.strip():
        problems.append("meta description is empty")
    if len(description) > rules.description_max_chars:
        problems.append(f"meta description is {len(description)} characters; the limit is {rules.description_max_chars}")
    if "\n" in description or _MARKERS.search(description) or _URL.search(description):
        problems.append("meta description must be one line of plain text (no [n] markers, no URLs)")
    if not rules.min_tags <= len(meta.tags) <= rules.max_tags:
        problems.append(f"tags has {len(meta.tags)}; it must have {rules.min_tags}–{rules.max_tags}")
    seen: set[str] = set()
    for tag in meta.tags:
        if not tag.strip() or len(tag) > MAX_TAG_CHARS or "," in tag:
            problems.append(f"tag {tag!r} must be 1–{MAX_TAG_CHARS} characters without commas")
        if tag.lower() in seen:
            problems.append(f"tag {tag!r} is listed twice")
        seen.add(tag.lower())
    if meta.image is not None:
        if not rules.image:
            problems.append("this template suggests no image, but one is set")
        allowed = {i.url for i in source_images(sources)}
        if meta.image.url not in allowed:
            problems.append(f"suggested image {meta.image.url!r} is not the share image (og:image) of a story source page")
    return problems


# --- the document header ------------------------------------------------------------------------


def header_lines(meta: PublishMeta | None) -> list[str]:
    """The metadata as the lines at the top of the document: 'Slug: …', 'Meta description: …', 'Tags: …', 'Suggested image: …'."""
    if meta is None:
        return []
    lines = [f"{LABELS['slug']}: {meta.slug}", f"{LABELS['description']}: {meta.description}", f"{LABELS['tags']}: {', '.join(meta.tags)}"]
    if meta.image is not None:
        lines.append(f"{LABELS['image']}: {meta.image.url} — credit: {meta.image.credit}")
    return lines


def is_header_line(text: str) -> bool:
    return bool(_LINE.match(text.strip()))


def meta_from_lines(lines: Iterable[str], draft_meta: PublishMeta | None) -> PublishMeta | None:
    """The metadata as an editor left it in the document's header lines; fields not found keep the draft's.

    A removed 'Suggested image' line means no image; None when the draft had no metadata and the document none."""
    found: dict[str, str] = {}
    for line in lines:
        m = _LINE.match(" ".join(line.split()))
        if m and m.group(1) not in found:
            found[m.group(1)] = m.group(2).strip()
    if not found:
        return draft_meta
    base = draft_meta or PublishMeta(slug="", description="", tags=[])
    image = base.image
    if LABELS["image"] in found:
        m = _CREDIT.match(found[LABELS["image"]])
        if m is None:
            image = None
        else:
            same = base.image is not None and base.image.url == m.group("url")
            image = ImageSuggestion(url=m.group("url"), credit=(m.group("credit") or "").strip() or (base.image.credit if same else ""),
                                    source_n=base.image.source_n if same else None)
    elif draft_meta is not None and draft_meta.image is not None:
        image = None   # the editor deleted the line
    tags = found.get(LABELS["tags"])
    return PublishMeta(
        slug=found.get(LABELS["slug"], base.slug),
        description=found.get(LABELS["description"], base.description),
        tags=[t.strip() for t in tags.split(",") if t.strip()] if tags is not None else list(base.tags),
        image=image,
    )
