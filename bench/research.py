"""Research latency: retrieve background from Chroma and pack a writer context, per story, with 10,000 chunks stored.

The store holds the real articles of the extraction set, chunked and embedded
with the default MiniLM model, plus enough further chunks to reach --chunks.
Embedding 10,000 distinct chunks on a 2-core machine takes minutes, so the
further chunks reuse the real chunks' texts with their vectors perturbed by
small Gaussian noise (and spread over 60 days and random topics): the index
then has the size and a realistic clustered shape, which is what query time
depends on.

    python bench/research.py --data ../shared/data/article-extraction [--chunks 10000] [--stories 50]

The last line is the headline: p50 seconds per story (goal <= 0.2 s).
"""

from __future__ import annotations

import argparse
import gzip  # noqa: F401  (the data folder's pages are not needed; ground truth holds the texts)
import json
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert  # noqa: E402

from agents.researcher import context_budget, research  # noqa: E402
from pipeline.core import schema  # noqa: E402
from pipeline.core.config import parse_config  # noqa: E402
from pipeline.core.ledger import Ledger, utcnow  # noqa: E402
from pipeline.core.models import Classification, Item, Story  # noqa: E402
from pipeline.services.store import Store, chunk_id, classification_metadata  # noqa: E402
from pipeline.core.tokens import count_tokens  # noqa: E402

TOPICS = ["markets", "regulation", "security", "defi", "infrastructure"]


def articles(data: Path) -> list[tuple[str, str, str]]:
    truth = json.loads((data / "ground-truth.json").read_text())
    out = []
    for key, value in sorted(truth.items()):
        text = value["articleBody"].strip()
        if len(text.split()) >= 80:
            out.append((key, value.get("url") or f"https://news.example/{key}", text))
    return out


def build(config, ledger: Ledger, store: Store, docs, total_chunks: int, rng: random.Random) -> list[Item]:
    now = utcnow()
    items = []
    for n, (key, url, text) in enumerate(docs):
        published = now - timedelta(hours=rng.uniform(0, 24 * 30))
        items.append(
            Item(id=key[:32], source=f"outlet{n % 7}", url=url, canonical_url=url, title=text.split(".")[0][:120],
                 text=text, published=published, content_hash=key, state="clustered")
        )
    with ledger.begin() as connection:
        for item in items:
            connection.execute(insert(schema.items).values(**item.model_dump(mode="python"), updated=now))
    store.index_items(items)
    for item in items:
        topics = rng.sample(TOPICS, 2)
        store.set_classification(item.id, Classification(relevant=True, topics=topics, newsworthiness=0.5, summary="", entities=[], reason="bench"))
    real = store.collection.get(include=["documents", "metadatas", "embeddings"])
    have = len(real["ids"])
    extra = max(0, total_chunks - have)
    batch_ids, batch_docs, batch_meta, batch_vecs = [], [], [], []
    for i in range(extra):
        j = i % have
        vector = np.asarray(real["embeddings"][j], dtype=np.float32) + np.random.default_rng(i).normal(0, 0.03, 384).astype(np.float32)
        vector /= np.linalg.norm(vector)
        fake_item = f"synthetic{i // 5:05d}"
        published = now - timedelta(hours=rng.uniform(0, 24 * 60))
        meta = {**real["metadatas"][j], "item_id": fake_item, "published": int(published.timestamp()), "chunk": i % 5}
        meta.update(classification_metadata(Classification(relevant=True, topics=rng.sample(TOPICS, 2), newsworthiness=0.5, summary="", entities=[], reason="bench")))
        batch_ids.append(chunk_id(fake_item, i % 5))
        batch_docs.append(real["documents"][j])
        batch_meta.append(meta)
        batch_vecs.append(vector)
        if len(batch_ids) == 1000 or i == extra - 1:
            store.collection.upsert(ids=batch_ids, documents=batch_docs, metadatas=batch_meta, embeddings=np.vstack(batch_vecs))
            batch_ids, batch_docs, batch_meta, batch_vecs = [], [], [], []
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--stories", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    docs = articles(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config({"research": {"background_k": 8}}, root=Path(tmp))
        ledger = Ledger.from_config(config)
        store = Store.from_config(config)
        started = time.perf_counter()
        items = build(config, ledger, store, docs, args.chunks, rng)
        print(f"store: {store.count()} chunks ({len(items)} real articles) built in {time.perf_counter() - started:.1f}s")
        model = config.llm.models["writer"]
        budget = context_budget(config, model, 1200)
        timings, sources = [], []
        for n in range(args.stories):
            own = rng.sample(items, rng.randint(1, 3))
            story = Story(key=f"bench{n}", title=own[0].title, item_ids=[i.id for i in own], sources=sorted({i.source for i in own}),
                          topics=rng.sample(TOPICS, 1), score=0.5, first_published=own[0].published, last_published=own[0].published)
            t = time.perf_counter()
            pack = research(story, ledger, store, config, budget, lambda text: count_tokens(text, model))
            timings.append(time.perf_counter() - t)
            sources.append(len(pack.sources))
            assert pack.used_tokens <= budget
        timings.sort()
        p50, p95 = statistics.median(timings), timings[int(0.95 * (len(timings) - 1))]
        print(f"stories: {len(timings)}; sources per pack: mean {statistics.mean(sources):.1f}; budget {budget} tokens")
        print(f"retrieve+pack: p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, max {timings[-1] * 1000:.1f} ms")
        print(f"research p50 {p50:.3f} s")


if __name__ == "__main__":
    main()
