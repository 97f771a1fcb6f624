"""The vector store: article chunks in one Chroma collection (cosine space).

Chroma runs embedded (`PersistentClient` at `store.path`) or as a server
(`HttpClient` when `store.host` is set). Chunk ids are `{item_id}:{index}`, so
re-indexing an item overwrites its chunks in place, and chunks past its new
length are deleted. Classification lives in chunk metadata, so later stages can
filter by topic, relevance and publication time inside the vector query.

Every Chroma failure surfaces as StoreError naming the store's location.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator, Mapping, Sequence

import chromadb
import httpx
import numpy as np
from chromadb.config import Settings
from chromadb.errors import ChromaError

from pipeline.text.chunking import chunk_text
from pipeline.core.config import Config
from pipeline.services.embeddings import EmbeddingError, embedding_function_from_config, normalize_rows
from pipeline.core.models import Classification, Item

# Chroma rejects bigger writes; it reports its own limit, this is our ceiling.
MAX_WRITE_BATCH = 1000
# How many items to chunk, embed and write per round: bounds memory on big backfills.
ITEMS_PER_ROUND = 64
CLASSIFICATION_KEYS = ("topics", "topics_joined", "relevant", "newsworthiness", "classified")


class StoreError(Exception):
    """The vector store cannot be used; the message names where and why."""


@dataclass(frozen=True, slots=True)
class ChunkHit:
    """One chunk from a query or lookup. `distance` is cosine distance (0 = same direction)."""

    id: str
    item_id: str
    text: str
    metadata: dict[str, Any]
    distance: float
    embedding: np.ndarray | None = None

    @property
    def similarity(self) -> float:
        return 1.0 - self.distance

    @property
    def index(self) -> int:
        return int(self.metadata.get("chunk", 0))

    @property
    def published(self) -> datetime | None:
        value = self.metadata.get("published")
        return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc)

    @property
    def topics(self) -> list[str]:
        return list(self.metadata.get("topics") or [])


# --- where-filter helpers ------------------------------------------------------


def where_topic(topic: str) -> dict[str, Any]:
    """Chunks of items classified under `topic` (array-metadata containment)."""
    return {"topics": {"$contains": topic}}


def where_published(since: datetime | None = None, until: datetime | None = None) -> dict[str, Any] | None:
    """Chunks of items published in [since, until]; naive datetimes are read as UTC."""
    clauses = []
    if since is not None:
        clauses.append({"published": {"$gte": _timestamp(since)}})
    if until is not None:
        clauses.append({"published": {"$lte": _timestamp(until)}})
    return where_all(*clauses)


def where_all(*clauses: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Combine filters with $and, dropping empty ones."""
    present = [dict(c) for c in clauses if c]
    if not present:
        return None
    return present[0] if len(present) == 1 else {"$and": present}


def _timestamp(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return int(value.timestamp())


def chunk_id(item_id: str, index: int) -> str:
    return f"{item_id}:{index}"


def classification_metadata(classification: Classification) -> dict[str, Any]:
    # Chroma rejects empty arrays, and a None in an update removes the key,
    # so an item that lost all its topics stops matching topic filters.
    topics = sorted(dict.fromkeys(classification.topics))
    return {
        "topics": topics or None,
        "topics_joined": "|" + "|".join(topics) + "|" if topics else "",
        "relevant": classification.relevant,
        "newsworthiness": float(classification.newsworthiness),
        "classified": True,
    }


def item_metadata(item: Item, index: int, total: int) -> dict[str, Any]:
    return {
        "item_id": item.id,
        "source": item.source,
        "url": item.url,
        "title": item.title,
        "published": _timestamp(item.published),
        "chunk": index,
        "chunks": total,
    }


def item_body(item: Item) -> str:
    # An item without extracted text is still findable by its summary or title.
    return item.text.strip() or item.summary.strip() or item.title.strip()


class Store:
    def __init__(self, client: Any, collection_name: str, embedding_function: Any,
                 location: str, chunk_tokens: int = 250) -> None:
        """Prefer `Store.from_config`. `embedding_function` batches by its own
        batch_size (embedding.batch_size in config)."""
        self.client = client
        self.location = location
        self.embedding_function = embedding_function
        self.chunk_tokens = chunk_tokens
        try:
            with self._guard(f"open collection {collection_name!r}"):
                self.collection = client.get_or_create_collection(
                    collection_name,
                    configuration={"hnsw": {"space": "cosine"}},
                    embedding_function=embedding_function,
                )
        except StoreError as exc:
            if "conflict" not in str(exc):
                raise
            raise StoreError(
                f"{exc}. The collection was built with another embedding; vectors from "
                "different models cannot be mixed: set embedding.* back, or use a new store.collection "
                "and re-index"
            ) from None
        with self._guard(f"read the configuration of collection {collection_name!r}"):
            configuration = self.collection.configuration
        self._check_same_embedding(collection_name, configuration.get("embedding_function"))
        space = (configuration.get("hnsw") or {}).get("space")
        if space not in (None, "cosine"):
            raise StoreError(
                f"collection {collection_name!r} at {location} uses {space} distance, not cosine; "
                "use a new store.collection name"
            )
        try:
            max_batch = int(client.get_max_batch_size())
        except Exception:  # older servers do not report it
            max_batch = MAX_WRITE_BATCH
        self.write_batch = max(1, min(MAX_WRITE_BATCH, max_batch))

    def _check_same_embedding(self, collection_name: str, persisted: Any) -> None:
        """Chroma only compares function names; the same provider with another model
        would write vectors of another size or meaning into the collection."""
        ours = self.embedding_function
        if persisted is None or not hasattr(persisted, "get_config") or not hasattr(ours, "get_config"):
            return
        if persisted.name() != ours.name():
            return
        stored, wanted = persisted.get_config() or {}, ours.get_config() or {}
        for key in ("model", "model_sha256"):
            if key in stored and key in wanted and stored[key] != wanted[key]:
                raise StoreError(
                    f"{self.location}: collection {collection_name!r} was built with {key} {stored[key]!r}, "
                    f"but the config asks for {wanted[key]!r}; vectors from different models cannot be mixed: "
                    "set embedding.model back, or use a new store.collection and re-index"
                )

    @classmethod
    def from_config(cls, config: Config, embedding_function: Any = None) -> Store:
        settings = config.store
        try:
            embedding_function = embedding_function or embedding_function_from_config(config)
        except EmbeddingError as exc:
            raise StoreError(f"cannot set up embeddings for the store: {exc}") from None
        chroma_settings = Settings(anonymized_telemetry=False)
        if settings.host:
            scheme = "https" if settings.ssl else "http"
            location = f"Chroma server {scheme}://{settings.host}:{settings.port}"
            try:
                client = chromadb.HttpClient(
                    host=settings.host, port=settings.port, ssl=settings.ssl, settings=chroma_settings
                )
                client.heartbeat()
            except Exception as exc:  # noqa: BLE001 - any failure here means "cannot reach it"
                raise StoreError(
                    f"cannot reach the {location} (store.host/store.port): {_reason(exc)}; "
                    "is `chroma run` up, or unset store.host to use the embedded store?"
                ) from None
        else:
            path = config.path(settings.path)
            location = f"Chroma store at {path}"
            try:
                path.mkdir(parents=True, exist_ok=True)
                client = chromadb.PersistentClient(path=str(path), settings=chroma_settings)
            except Exception as exc:  # noqa: BLE001
                raise StoreError(f"cannot open the {location} (store.path): {_reason(exc)}") from None
        return cls(client, settings.collection, embedding_function, location, chunk_tokens=settings.chunk_tokens)

    # --- writing ---------------------------------------------------------------

    def index_items(self, items: Iterable[Item],
                    classifications: Mapping[str, Classification] | None = None) -> int:
        """Chunk, embed and upsert items; returns the number of chunks written.

        Re-indexing replaces an item's chunks in place and deletes the ones past
        its new length. Unchanged chunk texts reuse their stored vectors. Known
        classifications (given here, or already on the stored chunks) are kept.
        """
        latest = {item.id: item for item in items}  # one item twice: the last copy wins
        written = 0
        batch = list(latest.values())
        for start in range(0, len(batch), ITEMS_PER_ROUND):
            written += self._index_round(batch[start:start + ITEMS_PER_ROUND], classifications or {})
        return written

    def _index_round(self, items: list[Item], classifications: Mapping[str, Classification]) -> int:
        ids = [item.id for item in items]
        with self._guard("read existing chunks"):
            existing = self.collection.get(
                where={"item_id": {"$in": ids}}, include=["documents", "metadatas", "embeddings"]
            )
        old_by_item: dict[str, dict[str, tuple[str, dict, Any]]] = defaultdict(dict)
        for cid, doc, meta, vector in zip(existing["ids"], existing["documents"],
                                          existing["metadatas"], _rows(existing.get("embeddings"))):
            old_by_item[meta["item_id"]][cid] = (doc, meta, vector)

        new_ids: list[str] = []
        texts: list[str] = []
        metadatas: list[dict[str, Any]] = []
        vectors: list[np.ndarray | None] = []
        stale: list[str] = []
        for item in items:
            chunks = chunk_text(item_body(item), self.chunk_tokens)
            old = old_by_item.get(item.id, {})
            kept = self._classification_for(item.id, classifications, old)
            for chunk in chunks:
                cid = chunk_id(item.id, chunk.index)
                previous = old.get(cid)
                new_ids.append(cid)
                texts.append(chunk.text)
                metadatas.append({**item_metadata(item, chunk.index, len(chunks)), **kept})
                unchanged = previous is not None and previous[0] == chunk.text and previous[2] is not None
                vectors.append(previous[2] if unchanged else None)
            fresh = {chunk_id(item.id, c.index) for c in chunks}
            stale.extend(cid for cid in old if cid not in fresh)

        missing = [i for i, v in enumerate(vectors) if v is None]
        if missing:
            embedded = self.embed([texts[i] for i in missing])
            for row, i in enumerate(missing):
                vectors[i] = embedded[row]
        for start in range(0, len(new_ids), self.write_batch):
            end = start + self.write_batch
            with self._guard("write chunks"):
                self.collection.upsert(
                    ids=new_ids[start:end],
                    documents=texts[start:end],
                    metadatas=metadatas[start:end],
                    embeddings=np.vstack(vectors[start:end]),
                )
        if stale:
            with self._guard("delete stale chunks"):
                self.collection.delete(ids=stale)
        return len(new_ids)

    @staticmethod
    def _classification_for(item_id: str, given: Mapping[str, Classification],
                            old: Mapping[str, tuple[str, dict, Any]]) -> dict[str, Any]:
        # Upsert merges metadata into an existing chunk, so every classification
        # key is set explicitly: None removes what no longer applies.
        cleared: dict[str, Any] = {key: None for key in CLASSIFICATION_KEYS}
        cleared["classified"] = False
        if item_id in given:
            return {**cleared, **classification_metadata(given[item_id])}
        for _, meta, _ in old.values():
            if meta.get("classified"):
                return {**cleared, **{k: meta[k] for k in CLASSIFICATION_KEYS if k in meta}}
        return cleared

    def set_classification(self, item_id: str, classification: Classification) -> int:
        """Write topics, relevance and newsworthiness onto every chunk of the item.
        Returns the number of chunks updated (0 if the item is not indexed yet)."""
        return self.set_classifications([(item_id, classification)])

    def set_classifications(self, results: Iterable[tuple[str, Classification]]) -> int:
        """`set_classification` for many items in one read and one write: a classifier batch costs two store
        round trips, not two per item (measured: ~10 ms per item on the event loop, 0.12 s per batch of 12).
        Returns the number of chunks updated; an item not indexed yet has none."""
        metadata = {item_id: classification_metadata(c) for item_id, c in results}  # one item twice: the last wins
        if not metadata:
            return 0
        with self._guard("find chunks"):
            found = self.collection.get(where={"item_id": {"$in": list(metadata)}}, include=["metadatas"])
        ids = list(found["ids"])
        if ids:
            with self._guard("update chunk metadata"):
                self.collection.update(ids=ids, metadatas=[dict(metadata[m["item_id"]]) for m in found["metadatas"]])
        return len(ids)

    def delete_item(self, item_id: str) -> int:
        ids = self._chunk_ids(item_id)
        if ids:
            with self._guard("delete chunks"):
                self.collection.delete(ids=ids)
        return len(ids)

    # --- reading ---------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised vectors, one row per text, from the store's embedding function."""
        texts = list(texts)
        try:
            if hasattr(self.embedding_function, "embed"):
                vectors = self.embedding_function.embed(texts)
            else:  # any chromadb embedding function
                vectors = np.asarray(self.embedding_function(texts), dtype=np.float32) if texts else np.zeros((0, 0))
        except EmbeddingError as exc:
            # One error type for callers of the store; the cause stays attached.
            raise StoreError(f"{self.location}: could not embed {len(texts)} text(s): {exc}") from exc
        if len(vectors) == 0:
            return np.zeros((0, vectors.shape[1] if vectors.ndim == 2 else 0), dtype=np.float32)
        return normalize_rows(vectors)

    def query(self, text: str | None = None, embedding: Sequence[float] | np.ndarray | None = None,
              k: int = 10, where: Mapping[str, Any] | None = None,
              exclude_item_ids: Iterable[str] = (), include_embeddings: bool = False) -> list[ChunkHit]:
        """The k chunks nearest to `text` or to `embedding` (exactly one of them),
        best first, optionally filtered by metadata and without some items' chunks."""
        if (text is None) == (embedding is None):
            raise ValueError("Store.query needs exactly one of text= or embedding=")
        if k <= 0:
            return []
        vector = self.embed([text])[0] if text is not None else self._query_vector(embedding)
        excluded = sorted(set(exclude_item_ids))
        combined = where_all(where, {"item_id": {"$nin": excluded}} if excluded else None)
        include = ["documents", "metadatas", "distances"] + (["embeddings"] if include_embeddings else [])
        with self._guard("query"):
            result = self.collection.query(query_embeddings=[vector], n_results=k, where=combined, include=include)
        vectors = _rows(result.get("embeddings")[0]) if include_embeddings else None
        hits = []
        for position, cid in enumerate(result["ids"][0]):
            meta = dict(result["metadatas"][0][position] or {})
            hits.append(ChunkHit(
                id=cid,
                item_id=str(meta.get("item_id", cid.rsplit(":", 1)[0])),
                text=result["documents"][0][position] or "",
                metadata=meta,
                distance=float(result["distances"][0][position]),
                embedding=None if vectors is None else np.asarray(vectors[position], dtype=np.float32),
            ))
        return hits

    def chunks(self, item_id: str, include_embeddings: bool = False) -> list[ChunkHit]:
        """An item's chunks in reading order (distance 0: no query involved)."""
        include = ["documents", "metadatas"] + (["embeddings"] if include_embeddings else [])
        with self._guard("read chunks"):
            result = self.collection.get(where={"item_id": item_id}, include=include)
        vectors = _rows(result.get("embeddings")) if include_embeddings else None
        hits = [
            ChunkHit(
                id=cid, item_id=item_id, text=result["documents"][i] or "",
                metadata=dict(result["metadatas"][i] or {}), distance=0.0,
                embedding=None if vectors is None else np.asarray(vectors[i], dtype=np.float32),
            )
            for i, cid in enumerate(result["ids"])
        ]
        return sorted(hits, key=lambda hit: hit.index)

    def item_embedding(self, item_id: str) -> np.ndarray | None:
        """The normalised mean of the item's chunk vectors, or None if it is not indexed."""
        return self.item_embeddings([item_id]).get(item_id)

    def item_embeddings(self, item_ids: Iterable[str]) -> dict[str, np.ndarray]:
        """item_embedding for many items in one read; items not indexed are absent."""
        ids = sorted(set(item_ids))
        if not ids:
            return {}
        with self._guard("read chunk vectors"):
            result = self.collection.get(where={"item_id": {"$in": ids}}, include=["metadatas", "embeddings"])
        grouped: dict[str, list[np.ndarray]] = defaultdict(list)
        for meta, vector in zip(result["metadatas"], _rows(result.get("embeddings"))):
            grouped[meta["item_id"]].append(np.asarray(vector, dtype=np.float32))
        return {item_id: normalize_rows(np.mean(vs, axis=0, keepdims=True))[0] for item_id, vs in grouped.items()}

    def count(self) -> int:
        with self._guard("count chunks"):
            return int(self.collection.count())

    # --- internals ---------------------------------------------------------------

    def _chunk_ids(self, item_id: str) -> list[str]:
        with self._guard("find chunks"):
            return list(self.collection.get(where={"item_id": item_id}, include=[])["ids"])

    def _query_vector(self, embedding: Sequence[float] | np.ndarray) -> np.ndarray:
        vector = np.asarray(embedding, dtype=np.float32)
        if vector.ndim != 1:
            raise ValueError(f"Store.query embedding must be one vector, got shape {vector.shape}")
        return normalize_rows(vector[None, :])[0]

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        try:
            yield
        except (httpx.HTTPError, OSError, ChromaError, ValueError) as exc:
            raise StoreError(f"{self.location}: could not {action}: {_reason(exc)}") from None


def _rows(vectors: Any) -> list[Any]:
    # Chroma returns None, a list, or a 2-d array depending on version and transport.
    if vectors is None:
        return []
    return list(vectors)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
