"""Research agent: the sources a story's draft is written from, packed to fit the writer's budget.

The story's own items come first, then background retrieved from Chroma
(time window and topic filters, the story's own items excluded), diversified
with MMR and stripped of near-duplicates. Background is kept only when it is
about the story's own actors (`pipeline.text.entities.concerns_story`): coverage of
another event that merely shares a beat, a coin or a word with the story is
left out, so it can never be written up as this story's fact. Packing never
exceeds the budget: lowest-ranked material is dropped first and a source that
only partly fits is cut at a sentence boundary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Sequence

import numpy as np
from sqlalchemy import select

from pipeline.core import schema
from pipeline.core.config import Config
from pipeline.text.entities import StoryProfile, about_story
from pipeline.text.language import UNDETERMINED
from pipeline.core.ledger import Ledger, as_utc, utcnow
from pipeline.core.models import ResearchPack, SourceDoc, Story
from pipeline.services.store import where_all, where_published, where_topic
from pipeline.text.sentences import split_sentences

log = logging.getLogger("newsdesk.researcher")

Count = Callable[[str], int]
# Story sources smaller than this are not worth keeping as a stub: drop instead.
MIN_SOURCE_TOKENS = 40


@dataclass
class Material:
    """A candidate source before packing, in rank order."""

    item_id: str
    title: str
    outlet: str
    published: datetime
    url: str
    text: str
    role: str = "story"


# The writer prompt's "About:" line (agents.writer.source_labels), at its longest, for the packing estimate.
_ABOUT = ("About: {names}. Background: earlier coverage, not this story's event. Use only as context, framed as such "
          "(\"Earlier, …\", \"Separately, …\"), in its own sentences with its own citation.")


def source_header(n: int, material: Material) -> str:
    """How a source is framed in the writer prompt, its "About:" line included; counted as part of the source's cost."""
    return (
        f'<source n="{n}" title="{material.title}" outlet="{material.outlet}" '
        f'date="{material.published:%Y-%m-%d}" url="{material.url}">\n{_ABOUT.format(names=material.title)}\n\n</source>\n'
    )


def cut_to_tokens(text: str, limit: int, count: Count) -> str:
    """The longest prefix of whole sentences that fits in `limit` tokens ('' if none does)."""
    if count(text) <= limit:
        return text
    sentences = split_sentences(text)
    low, high = 0, len(sentences)
    while low < high:  # binary search on the number of sentences kept
        middle = (low + high + 1) // 2
        if count(text[: sentences[middle - 1].end]) <= limit:
            low = middle
        else:
            high = middle - 1
    return text[: sentences[low - 1].end].strip() if low else ""


def pack_sources(materials: Sequence[Material], budget: int, count: Count) -> tuple[list[SourceDoc], int, list[str]]:
    """Fit ranked materials into `budget` tokens, headers included.

    Story sources share the budget fairly (each first gets an equal share, and
    what one does not need goes to the others); background fills what is
    left, in rank order. Returns the numbered sources, tokens used and the ids
    of what was dropped.
    """
    story = [m for m in materials if m.role == "story"]
    background = [m for m in materials if m.role != "story"]
    costs = {id(m): count(source_header(len(materials), m)) for m in materials}
    full = {id(m): count(m.text) for m in materials}

    allowance: dict[int, int] = {}
    remaining = budget
    pending = list(story)
    while pending and remaining > 0:  # water-filling: equal shares, re-split what the small ones leave
        share = remaining // len(pending)
        settled = [m for m in pending if costs[id(m)] + full[id(m)] <= share]
        if not settled:
            for m in pending:
                allowance[id(m)] = share
            remaining -= share * len(pending)
            pending = []
            break
        for m in settled:
            allowance[id(m)] = costs[id(m)] + full[id(m)]
            remaining -= allowance[id(m)]
            pending.remove(m)

    packed: list[tuple[Material, str]] = []
    dropped: list[str] = []
    used = 0
    for m in story:
        text_budget = allowance.get(id(m), 0) - costs[id(m)]
        text = m.text if full[id(m)] <= text_budget else cut_to_tokens(m.text, text_budget, count)
        if not text or (text is not m.text and count(text) < MIN_SOURCE_TOKENS and packed):
            dropped.append(m.item_id)
            continue
        packed.append((m, text))
        used += costs[id(m)] + count(text)
    for m in background:
        room = budget - used - costs[id(m)]
        if room < MIN_SOURCE_TOKENS:
            dropped.append(m.item_id)
            continue
        text = m.text if full[id(m)] <= room else cut_to_tokens(m.text, room, count)
        if not text:
            dropped.append(m.item_id)
            continue
        packed.append((m, text))
        used += costs[id(m)] + count(text)
    sources = [
        SourceDoc(n=n, item_id=m.item_id, title=m.title, outlet=m.outlet, published=m.published, url=m.url, text=text, role=m.role)
        for n, (m, text) in enumerate(packed, start=1)
    ]
    return sources, used, dropped


def mmr(query: np.ndarray, candidates: np.ndarray, k: int, lambda_: float, near_duplicate: float, avoid: np.ndarray | None = None) -> list[int]:
    """Maximal marginal relevance over unit vectors; near-duplicates of chosen or avoided vectors are skipped."""
    if len(candidates) == 0 or k <= 0:
        return []
    relevance = candidates @ query
    chosen: list[int] = []
    blocked = np.zeros(len(candidates), dtype=bool)
    if avoid is not None and len(avoid):
        blocked |= (candidates @ avoid.T).max(axis=1) >= near_duplicate
    redundancy = np.zeros(len(candidates))
    while len(chosen) < k:
        scores = lambda_ * relevance - (1 - lambda_) * redundancy
        scores[blocked] = -np.inf
        best = int(np.argmax(scores))
        if not np.isfinite(scores[best]):
            break
        chosen.append(best)
        similarity = candidates @ candidates[best]
        blocked |= similarity >= near_duplicate
        blocked[best] = True
        redundancy = np.maximum(redundancy, similarity)
    return chosen


def story_materials(ledger: Ledger, story: Story) -> list[Material]:
    """The story's own items, most informative first (longest text from the earliest outlet breaks ties)."""
    with ledger.engine.connect() as connection:
        rows = connection.execute(select(schema.items).where(schema.items.c.id.in_(story.item_ids))).all()
    by_id = {r.id: r for r in rows}
    ordered = [by_id[i] for i in story.item_ids if i in by_id]
    ordered.sort(key=lambda r: (-min(len(r.text), 4000), as_utc(r.published)))
    return [
        Material(item_id=r.id, title=r.title, outlet=r.source, published=as_utc(r.published), url=r.canonical_url, text=r.text)
        for r in ordered
    ]


def background_materials(store, config: Config, story: Story, own: list[Material], now: datetime | None = None) -> list[Material]:
    """Related earlier coverage from Chroma: filtered, diversified, de-duplicated, one chunk per item at most.

    A hit is kept only when its title and text concern the story's own entities
    (names in the story's headlines, or several names its items share and few others).
    """
    k = config.research.background_k
    if k == 0:
        return []
    now = now or utcnow()
    topics = [where_topic(t) for t in story.topics]
    where = where_all(
        where_published(since=now - timedelta(days=config.research.background_days)),
        {"relevant": True},
        (topics[0] if len(topics) == 1 else {"$or": topics}) if topics else None,
    )
    query_text = story.title + ". " + " ".join(m.text[:300] for m in own[:2])
    query = store.embed([query_text])[0]
    hits = store.query(embedding=query, k=k * 4, where=where, exclude_item_ids=story.item_ids, include_embeddings=True)
    hits = [h for h in hits if h.similarity >= config.research.min_similarity]
    if not hits:
        return []
    candidates = np.stack([h.embedding for h in hits])
    own_vectors = list(store.item_embeddings(story.item_ids).values())
    avoid = np.stack(own_vectors) if own_vectors else None
    chosen = mmr(query, candidates, k * 2, config.research.mmr_lambda, config.research.near_duplicate, avoid)
    profile = StoryProfile.of([m.title for m in own], [m.text for m in own])
    materials, seen_items = [], set()
    for index in chosen:
        hit = hits[index]
        if hit.item_id in seen_items:
            continue
        seen_items.add(hit.item_id)
        meta = hit.metadata
        if not about_story(str(meta.get("title", "")), hit.text, profile):
            log.debug("background %s left out: not about the story's entities (%s)", hit.item_id, meta.get("title", ""))
            continue
        materials.append(
            Material(
                item_id=hit.item_id,
                title=str(meta.get("title", "")),
                outlet=str(meta.get("source", "")),
                published=datetime.fromtimestamp(int(meta.get("published", 0)), tz=now.tzinfo),
                url=str(meta.get("url", "")),
                text=hit.text,
                role="background",
            )
        )
        if len(materials) == k:
            break
    return materials


def context_window(config: Config, model: str) -> int:
    """The writer's window, or the configured cap when that is smaller."""
    window = config.llm.context_window(model)
    return min(window, config.research.max_context_tokens) if config.research.max_context_tokens else window


def context_budget(config: Config, model: str, prompt_overhead_tokens: int) -> int:
    """Tokens left for sources: the window minus the prompt and the output reserve."""
    return max(0, context_window(config, model) - config.research.output_reserve_tokens - prompt_overhead_tokens)


def research(
    story: Story,
    ledger: Ledger,
    store,
    config: Config,
    budget: int,
    count: Count,
    now: datetime | None = None,
) -> ResearchPack:
    own = story_materials(ledger, story)
    background = background_materials(store, config, story, own, now) if store is not None else []
    sources, used, dropped = pack_sources([*own, *background], budget, count)
    facts = item_facts(ledger, [s.item_id for s in sources])
    sources = [s.model_copy(update=facts.get(s.item_id, {"language": UNDETERMINED})) for s in sources]
    return ResearchPack(story_key=story.key, sources=sources, budget_tokens=budget, used_tokens=used, dropped=dropped,
                        language=config.newsroom.language)


# Page metadata a draft needs from its sources: the share image and who to credit for it (pipeline/metadata.py).
PACKED_OG = ("og:image", "og:image:secure_url", "og:image:url", "twitter:image", "og:site_name")


def item_facts(ledger: Ledger, item_ids: Sequence[str]) -> dict[str, dict]:
    """Per item, what the ingest stored besides its text: the detected language and the page's share image
    (background hits come from the store, which keeps neither)."""
    if not item_ids:
        return {}
    items = schema.items
    with ledger.engine.connect() as connection:
        rows = connection.execute(select(items.c.id, items.c.language, items.c.og).where(items.c.id.in_(list(item_ids)))).all()
    return {
        row.id: {"language": row.language, "og": {k: v for k, v in (row.og or {}).items() if k in PACKED_OG and isinstance(v, str)}}
        for row in rows
    }
