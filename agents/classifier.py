"""Classifier agent: each item is classified once, at ingest, in batches, and never paid for twice.

Order of the cheap-to-expensive checks for every new item:
1. an identical text (content hash) already classified: reuse that result;
2. the embedding prefilter: clearly off-beat items are marked irrelevant with no model call;
3. the model, in batches of `classify.batch_size`, each item cut to `classify.item_tokens`.
With no model configured, the embedding and keyword signals decide, and the
result says so (`method = "offline"`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
from pydantic import BaseModel, Field
from sqlalchemy import select, update

from pipeline import schema
from pipeline.config import Config
from pipeline.ledger import Ledger, utcnow
from pipeline.models import Classification, Item, ItemState, StageReport
from pipeline.prompts import PromptLibrary
from pipeline.text import split_sentences
from pipeline.tokens import truncate_to_tokens

log = logging.getLogger("newsdesk.classifier")

_NAME = re.compile(r"\b(?:[A-Z][\w&.\-]*[A-Za-z0-9](?:\s+(?:of\s+|de\s+)?[A-Z][\w&.\-]*[A-Za-z0-9])*|[A-Z]{2,}\d*)\b")
_SENTENCE_START_WORDS = {"The", "A", "An", "In", "On", "At", "It", "This", "That", "But", "And", "He", "She", "They", "We", "I", "Its", "His", "Her"}


class ItemResult(BaseModel):
    id: str
    relevant: bool
    topics: list[str]
    newsworthiness: float = Field(ge=0, le=1)
    summary: str
    entities: list[str]
    reason: str


class BatchResult(BaseModel):
    results: list[ItemResult]


@dataclass
class Signals:
    """The cheap evidence for one item: similarity to each topic and keyword hits."""

    similarity: dict[str, float]
    keywords: dict[str, list[str]]

    @property
    def best(self) -> float:
        return max(self.similarity.values(), default=0.0)


def matching_text(item: Item) -> str:
    return f"{item.title}\n{item.summary}\n{item.text[:1500]}"


def topic_signals(items: list[Item], config: Config, embed) -> list[Signals]:
    topics = config.topics
    if not topics:
        return [Signals({}, {}) for _ in items]
    vectors = np.asarray(embed([f"{t.name}: {t.description}" for t in topics] + [matching_text(i) for i in items]))
    topic_vectors, item_vectors = vectors[: len(topics)], vectors[len(topics) :]
    similarity = item_vectors @ topic_vectors.T
    signals = []
    for row, item in zip(similarity, items):
        text = f" {item.title} {item.text[:4000]} ".lower()
        hits = {t.name: [k for k in t.keywords if re.search(rf"\b{re.escape(k.lower())}\b", text)] for t in topics}
        signals.append(Signals({t.name: float(s) for t, s in zip(topics, row)}, {k: v for k, v in hits.items() if v}))
    return signals


def named_entities(text: str, limit: int = 10) -> list[str]:
    counts: dict[str, int] = {}
    for match in _NAME.findall(text):
        if match in _SENTENCE_START_WORDS or len(match) < 2:
            continue
        counts[match] = counts.get(match, 0) + 1
    return [name for name, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]


def first_sentence(text: str, words: int = 30) -> str:
    sentences = split_sentences(text)
    sentence = sentences[0].text if sentences else text
    return " ".join(sentence.split()[:words])


def offline_classification(item: Item, signals: Signals, config: Config, method: str = "offline") -> Classification:
    threshold = config.classify.offline_threshold
    topics = sorted(
        {name for name, score in signals.similarity.items() if score >= threshold}
        | {name for name, hits in signals.keywords.items() if len(hits) >= 2 or (hits and signals.similarity.get(name, 0) >= threshold * 0.75)}
    )
    relevant = bool(topics)
    keyword_count = sum(len(v) for v in signals.keywords.values())
    newsworthiness = 0.0
    if relevant:
        # Closeness to the beat and keyword density stand in for a model's judgement.
        newsworthiness = min(1.0, 0.25 + 0.5 * max(0.0, signals.best) + 0.05 * min(keyword_count, 5))
    shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(signals.similarity.items(), key=lambda kv: -kv[1])[:3])
    keywords = "; ".join(f"{k}: {', '.join(v)}" for k, v in signals.keywords.items())
    return Classification(
        relevant=relevant,
        topics=topics,
        newsworthiness=round(newsworthiness, 3),
        summary=first_sentence(item.summary or item.text or item.title),
        entities=named_entities(f"{item.title}. {item.text[:3000]}"),
        reason=f"{method}: topic similarity {shown}" + (f"; keywords {keywords}" if keywords else "; no topic keywords"),
        method=method,
    )


def clearly_off_beat(signals: Signals, config: Config) -> bool:
    return signals.best < config.classify.prefilter_threshold and not signals.keywords


def batch_validator(expected_ids: list[str], topic_names: list[str]):
    allowed = set(topic_names)

    def validate(result: BatchResult) -> list[str]:
        problems = []
        for r in result.results:
            unknown = [t for t in r.topics if t not in allowed]
            if unknown:
                problems.append(f"item {r.id}: unknown topic(s) {unknown}; use only: {', '.join(topic_names)}")
        extra = [r.id for r in result.results if r.id not in expected_ids]
        if extra:
            problems.append(f"results for ids that were not asked for: {extra}; the ids are: {', '.join(expected_ids)}")
        return problems

    return validate


async def classify_with_model(items: list[Item], config: Config, gateway, prompts: PromptLibrary) -> dict[str, Classification]:
    """One call per batch; items the model skipped or mangled are retried alone, never dropped."""
    topics = [SimpleNamespace(name=t.name, description=t.description, keywords=t.keywords) for t in config.topics]
    model = gateway.model_for("classifier")

    async def run_batch(batch: list[Item]) -> dict[str, Classification]:
        views = [
            SimpleNamespace(id=i.id, title=i.title, source=i.source, published=i.published,
                            text=truncate_to_tokens(i.text or i.summary, config.classify.item_tokens, model))
            for i in batch
        ]
        prompt = prompts.render("classifier", newsroom=config.newsroom.name, topics=topics, items=views)
        ids = [i.id for i in batch]
        result = await gateway.call("classifier", prompt, BatchResult, validators=[batch_validator(ids, config.topic_names)], stage="classify")
        out = {}
        for r in result.results:
            if r.id in ids and r.id not in out:
                out[r.id] = Classification(
                    relevant=r.relevant and bool(r.topics), topics=r.topics if r.relevant else [],
                    newsworthiness=r.newsworthiness, summary=r.summary, entities=r.entities[:10], reason=r.reason, method="llm",
                )
        return out

    size = config.classify.batch_size
    batches = [items[i : i + size] for i in range(0, len(items), size)]

    results: dict[str, Classification] = {}
    for outcome in await asyncio.gather(*(run_batch(b) for b in batches), return_exceptions=True):
        if isinstance(outcome, BaseException):
            log.warning("classifier batch failed: %s", outcome)
            continue
        results.update(outcome)
    already_alone = {b[0].id for b in batches if len(b) == 1}
    missing = [i for i in items if i.id not in results and i.id not in already_alone]
    for outcome in await asyncio.gather(*(run_batch([i]) for i in missing), return_exceptions=True):
        if isinstance(outcome, BaseException):
            log.warning("classifier retry failed: %s", outcome)
            continue
        results.update(outcome)
    return results


def pending_items(ledger: Ledger) -> list[Item]:
    from pipeline.stages import row_to_item

    with ledger.engine.connect() as connection:
        rows = connection.execute(
            select(schema.items)
            .where(schema.items.c.state == ItemState.fetched.value, schema.items.c.chunk_count.is_not(None))
            .order_by(schema.items.c.published)
        ).all()
    return [row_to_item(r) for r in rows]


def known_classifications(ledger: Ledger, hashes: list[str]) -> dict[str, Classification]:
    """Classifications already paid for, by content hash (the same text syndicated under another URL)."""
    if not hashes:
        return {}
    with ledger.engine.connect() as connection:
        rows = connection.execute(
            select(schema.items.c.content_hash, schema.items.c.classification)
            .where(schema.items.c.content_hash.in_(hashes), schema.items.c.classification.is_not(None))
        ).all()
    return {h: Classification.model_validate(c) for h, c in rows}


def save(ledger: Ledger, store, item: Item, classification: Classification) -> None:
    state = ItemState.classified if classification.relevant else ItemState.irrelevant
    # Chroma first: if it fails the item stays `fetched` and is classified again (from the cache) next run.
    store.set_classification(item.id, classification)
    with ledger.begin() as connection:
        connection.execute(
            update(schema.items)
            .where(schema.items.c.id == item.id)
            .values(classification=classification.model_dump(mode="json"), state=state.value, updated=utcnow())
        )


def classify_pending(run) -> StageReport:
    config, ledger, store = run.config, run.ledger, run.store
    report = StageReport(stage="classify")
    items = pending_items(ledger)
    report.items_in = len(items)
    if not items:
        return report
    reused = known_classifications(ledger, [i.content_hash for i in items])
    signals = dict(zip((i.id for i in items), topic_signals(items, config, store.embed)))
    decided: dict[str, Classification] = {}
    to_model: list[Item] = []
    for item in items:
        if item.content_hash in reused:
            decided[item.id] = reused[item.content_hash]
        elif clearly_off_beat(signals[item.id], config):
            decided[item.id] = offline_classification(item, signals[item.id], config, method="prefilter")
        elif not run.gateway.available:
            decided[item.id] = offline_classification(item, signals[item.id], config)
        else:
            to_model.append(item)
    if to_model:
        prompts = PromptLibrary(config.prompts_dir)
        decided.update(run.run_async(classify_with_model(to_model, config, run.gateway, prompts)))
        for item in to_model:
            if item.id not in decided:
                report.errors.append(f"item {item.id} ({item.title[:60]}): not classified; it stays for the next run")
    for item in items:
        classification = decided.get(item.id)
        if classification is None:
            continue
        try:
            save(ledger, store, item, classification)
        except Exception as exc:
            report.errors.append(f"item {item.id}: could not store its classification: {type(exc).__name__}: {exc}")
            continue
        report.items_out += 1
    methods = [c.method for c in decided.values()]
    report.notes.update(
        relevant=sum(1 for c in decided.values() if c.relevant),
        irrelevant=sum(1 for c in decided.values() if not c.relevant),
        prefiltered=methods.count("prefilter"),
        reused=sum(1 for i in items if i.content_hash in reused),
        by_model=methods.count("llm"),
        offline=methods.count("offline"),
        batches=math.ceil(len(to_model) / config.classify.batch_size) if to_model else 0,
    )
    return report
