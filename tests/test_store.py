"""Chunking and the Chroma vector store, against real Chroma (embedded and `chroma run`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.text.chunking import chunk_text, estimate_tokens
from pipeline.core.config import parse_config
from pipeline.services.embeddings import LocalEmbeddingFunction
from pipeline.core.models import Classification, Item
from pipeline.services.store import Store, StoreError, where_all, where_published, where_topic
from tests.servers import free_port, running_chroma, stop

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)


# --- chunking --------------------------------------------------------------------------------


def paragraph(topic: str, sentences: int) -> str:
    return " ".join(f"Sentence {i} says something specific about {topic} and its market impact." for i in range(sentences))


def test_short_paragraphs_merge_and_chunks_end_on_paragraph_boundaries():
    paragraphs = [paragraph(f"topic {n}", 3) for n in range(12)]  # ~45 estimated tokens each
    text = "\n\n".join(paragraphs)
    chunks = chunk_text(text, max_tokens=250)
    assert 2 <= len(chunks) < len(paragraphs)  # merged, not one chunk per paragraph
    for chunk in chunks:
        assert chunk.tokens <= 250
        assert text[chunk.start:chunk.end] == chunk.text
        # Every chunk starts and ends on whole paragraphs.
        assert chunk.text.startswith("Sentence 0") and chunk.text.endswith("impact.")
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_an_overlong_paragraph_is_split_at_sentence_ends():
    text = paragraph("bitcoin", 40)  # one paragraph, ~600 estimated tokens
    chunks = chunk_text(text, max_tokens=250)
    assert len(chunks) >= 3
    for chunk in chunks:
        assert chunk.tokens <= 250
        assert chunk.text.startswith("Sentence ") and chunk.text.endswith("impact.")


def test_a_sentence_longer_than_the_budget_is_cut_between_words_and_a_giant_word_by_characters():
    words = " ".join(f"word{i}" for i in range(400))  # no sentence end at all
    blob = "A" * 5000  # a base64 blob or URL without spaces
    for text in (words, blob):
        chunks = chunk_text(text, max_tokens=100)
        assert len(chunks) > 1
        assert all(c.tokens <= 100 for c in chunks)
        assert "".join(c.text for c in chunks).replace(" ", "") == text.replace(" ", "")


def test_a_small_tail_is_rebalanced_with_the_previous_chunk():
    text = "\n".join(paragraph(f"p{n}", 1) for n in range(17))  # 17 paragraphs of ~15 tokens
    sizes = [c.tokens for c in chunk_text(text, max_tokens=100)]
    assert max(sizes) <= 100
    assert min(sizes) >= 0.5 * max(sizes), sizes


def test_empty_and_whitespace_text_give_no_chunks():
    assert chunk_text("") == []
    assert chunk_text(" \n\n \t ") == []


def test_token_estimate_errs_high_for_english_wordpiece():
    from tokenizers import Tokenizer

    from pipeline.services.embeddings import TOKENIZER_PATH

    tokenizer = Tokenizer.from_file(str(TOKENIZER_PATH))
    tokenizer.no_padding()  # the file pads to 128
    text = ("The Securities and Exchange Commission approved spot bitcoin exchange-traded funds "
            "on Wednesday, ending a decade-long fight; issuers cut fees to 0.25% to win inflows.")
    assert estimate_tokens(text) >= len(tokenizer.encode(text, add_special_tokens=False).ids)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["ab", "c", "d.", " ", "\n", "\n\n", "É", ",", "!", "xyzzy", "Mr.", "x" * 40, "한국어"]),
                max_size=200).map("".join),
       st.integers(min_value=5, max_value=60))
def test_chunks_are_ordered_verbatim_slices_covering_all_the_text(text, max_tokens):
    chunks = chunk_text(text, max_tokens=max_tokens)
    position = 0
    for chunk in chunks:
        assert chunk.start >= position and text[chunk.start:chunk.end] == chunk.text
        assert text[position:chunk.start].strip() == ""  # nothing but whitespace is skipped
        assert chunk.tokens == estimate_tokens(chunk.text) <= max_tokens
        position = chunk.end
    assert text[position:].strip() == ""


# --- the store -----------------------------------------------------------------------------


def make_item(item_id: str, text: str, *, days: float = 0, source: str = "desk", title: str | None = None) -> Item:
    return Item(
        id=item_id, source=source, url=f"https://news.example/{item_id}",
        canonical_url=f"https://news.example/{item_id}", title=title or f"Title of {item_id}",
        text=text, published=T0 + timedelta(days=days), content_hash=item_id,
    )


def classified(topics: list[str], relevant: bool = True, newsworthiness: float = 0.5) -> Classification:
    return Classification(relevant=relevant, topics=topics, newsworthiness=newsworthiness,
                          summary="s", entities=[], reason="r")


def long_text(topic: str, paragraphs: int) -> str:
    return "\n\n".join(paragraph(f"{topic} part {n}", 10) for n in range(paragraphs))  # ~150 tokens each


def store_config(root: Path, **store):
    return parse_config({"store": {"path": "chroma", "chunk_tokens": 200, **store}}, root=root)


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.from_config(store_config(tmp_path))


def test_index_writes_deterministic_chunk_ids_with_searchable_metadata(store):
    item = make_item("btc1", long_text("bitcoin", 4), source="coindesk", title="Bitcoin ETF flows")
    written = store.index_items([item])
    assert written == store.count() >= 3
    chunks = store.chunks("btc1")
    assert [c.id for c in chunks] == [f"btc1:{i}" for i in range(written)]
    meta = chunks[0].metadata
    assert meta["item_id"] == "btc1" and meta["source"] == "coindesk" and meta["title"] == "Bitcoin ETF flows"
    assert meta["url"] == "https://news.example/btc1" and meta["published"] == int(T0.timestamp())
    assert meta["chunk"] == 0 and meta["chunks"] == written and meta["classified"] is False
    assert "\n\n".join(c.text for c in chunks) == item.text


def test_reindexing_does_not_duplicate_chunks(store):
    items = [make_item("a", long_text("ether", 3)), make_item("b", long_text("solana", 2))]
    first = store.index_items(items)
    again = store.index_items(items + [items[0]])  # the same item twice in one call, too
    assert first == again == store.count()


def test_shrunk_item_loses_its_stale_chunks_and_grown_item_gains_new_ones(store):
    store.index_items([make_item("a", long_text("ether", 5))])
    before = store.count()
    store.index_items([make_item("a", long_text("ether", 1))])
    assert store.count() == 1 < before
    assert [c.id for c in store.chunks("a")] == ["a:0"]
    assert store.query("ether part 4", k=10) and all(h.id == "a:0" for h in store.query("ether part 4", k=10))
    store.index_items([make_item("a", long_text("ether", 3))])
    assert [c.id for c in store.chunks("a")] == [f"a:{i}" for i in range(store.count())]


def test_reindexing_unchanged_text_reuses_vectors_without_embedding_again(tmp_path):
    class CountingEmbedding(LocalEmbeddingFunction):
        texts = 0

        def embed(self, texts):
            CountingEmbedding.texts += len(texts)
            return super().embed(texts)

    store = Store.from_config(store_config(tmp_path), embedding_function=CountingEmbedding())
    item = make_item("a", long_text("ether", 3))
    store.index_items([item])
    first = CountingEmbedding.texts
    store.index_items([item])
    assert CountingEmbedding.texts == first  # nothing re-embedded
    changed = item.model_copy(update={"text": item.text + " One more closing sentence."})
    store.index_items([changed])
    assert CountingEmbedding.texts == first + 1  # only the changed last chunk


def test_classification_updates_all_chunks_and_drives_filters(store):
    store.index_items([
        make_item("m1", long_text("markets", 2), days=0),
        make_item("r1", long_text("regulation", 2), days=5),
        make_item("x1", long_text("sports", 1), days=10),
    ])
    assert store.set_classification("m1", classified(["markets"], newsworthiness=0.9)) == len(store.chunks("m1"))
    store.set_classification("r1", classified(["regulation", "markets"]))
    store.set_classification("x1", classified([], relevant=False, newsworthiness=0.1))
    assert store.set_classification("never-indexed", classified(["markets"])) == 0

    def items_of(hits):
        return {h.item_id for h in hits}

    assert items_of(store.query("news", k=50, where=where_topic("markets"))) == {"m1", "r1"}
    assert items_of(store.query("news", k=50, where=where_topic("regulation"))) == {"r1"}
    assert items_of(store.query("news", k=50, where={"relevant": True})) == {"m1", "r1"}
    assert items_of(store.query("news", k=50, where={"newsworthiness": {"$gte": 0.8}})) == {"m1"}
    window = where_published(T0 + timedelta(days=1), T0 + timedelta(days=6))
    assert items_of(store.query("news", k=50, where=window)) == {"r1"}
    assert items_of(store.query("news", k=50, where=where_all(window, where_topic("markets")))) == {"r1"}
    hit = store.query("news", k=1, where=where_topic("regulation"))[0]
    assert hit.topics == ["markets", "regulation"] and hit.metadata["topics_joined"] == "|markets|regulation|"

    # Losing a topic on reclassification removes it from topic filters.
    store.set_classification("r1", classified(["regulation"]))
    assert items_of(store.query("news", k=50, where=where_topic("markets"))) == {"m1"}
    store.set_classification("m1", classified([]))
    assert items_of(store.query("news", k=50, where=where_topic("markets"))) == set()


def test_a_classifier_batch_is_written_onto_every_chunk_of_each_of_its_items_at_once(store):
    store.index_items([make_item("m1", long_text("markets", 2)), make_item("r1", long_text("regulation", 2)),
                       make_item("x1", long_text("sports", 1))])
    chunks = len(store.chunks("m1")) + len(store.chunks("r1")) + len(store.chunks("x1"))
    updated = store.set_classifications([
        ("m1", classified(["markets"], newsworthiness=0.9)), ("r1", classified(["regulation"])),
        ("x1", classified([], relevant=False, newsworthiness=0.1)), ("never-indexed", classified(["markets"])),
    ])
    assert updated == chunks
    assert {h.item_id for h in store.query("news", k=50, where=where_topic("markets"))} == {"m1"}
    assert {h.item_id for h in store.query("news", k=50, where={"relevant": True})} == {"m1", "r1"}
    assert all(c.metadata["topics_joined"] == "|regulation|" for c in store.chunks("r1"))
    assert store.set_classifications([]) == 0


def test_reindexing_keeps_a_known_classification(store):
    store.index_items([make_item("m1", long_text("markets", 2))], classifications={"m1": classified(["markets"])})
    assert {h.item_id for h in store.query("x", k=10, where=where_topic("markets"))} == {"m1"}
    store.index_items([make_item("m1", long_text("markets", 3))])  # new text, no classification given
    chunks = store.chunks("m1")
    assert len(chunks) == 3 and all(c.topics == ["markets"] and c.metadata["relevant"] is True for c in chunks)
    store.index_items([make_item("m1", long_text("markets", 3))], classifications={"m1": classified([], relevant=False)})
    assert all("topics" not in c.metadata and c.metadata["relevant"] is False for c in store.chunks("m1"))


def test_query_ranks_the_matching_article_first_and_can_exclude_items(store):
    store.index_items([
        make_item("etf", "Spot bitcoin ETFs drew record inflows as institutions bought BTC."),
        make_item("sec", "The SEC sued a crypto exchange for trading unregistered securities."),
        make_item("food", "Roast the asparagus and serve it with soft-boiled eggs."),
    ])
    hits = store.query("bitcoin exchange-traded fund inflows", k=3)
    assert [h.item_id for h in hits][0] == "etf"
    assert hits[0].similarity > hits[-1].similarity and hits[-1].item_id == "food"
    assert [h.item_id for h in store.query("bitcoin exchange-traded fund inflows", k=3, exclude_item_ids=["etf"])][0] == "sec"
    by_vector = store.query(embedding=store.embed(["lawsuit against a crypto exchange"])[0], k=1, include_embeddings=True)
    assert by_vector[0].item_id == "sec" and by_vector[0].embedding.shape == (384,)
    assert store.query("anything", k=0) == []
    with pytest.raises(ValueError, match="exactly one"):
        store.query()


def test_item_embedding_is_the_normalised_mean_of_its_chunks(store):
    store.index_items([make_item("a", long_text("ether", 3)), make_item("b", "Short note on solana.")])
    vectors = np.array([c.embedding for c in store.chunks("a", include_embeddings=True)])
    expected = vectors.mean(axis=0)
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(store.item_embedding("a"), expected, atol=1e-5)
    assert store.item_embedding("missing") is None
    assert set(store.item_embeddings(["a", "b", "missing"])) == {"a", "b"}


def test_delete_item_removes_only_its_chunks(store):
    store.index_items([make_item("a", long_text("ether", 2)), make_item("b", "Short note on solana.")])
    removed = store.delete_item("a")
    assert removed >= 2 and store.count() == 1 and store.chunks("a") == []
    assert store.delete_item("a") == 0


def test_an_item_without_text_is_indexed_by_summary_or_title(store):
    item = make_item("t", "", title="Coinbase lists a new token")
    assert store.index_items([item]) == 1
    assert store.chunks("t")[0].text == "Coinbase lists a new token"


def test_switching_the_embedding_model_on_an_existing_collection_is_refused(tmp_path, monkeypatch):
    Store.from_config(store_config(tmp_path)).index_items([make_item("a", "text")])
    openai = parse_config({"store": {"path": "chroma"},
                           "embedding": {"provider": "openai", "model": "text-embedding-3-small"}}, root=tmp_path)
    with pytest.raises(StoreError, match="another embedding"):
        Store.from_config(openai)
    other_collection = parse_config({"store": {"path": "chroma", "collection": "openai_chunks"},
                                     "embedding": {"provider": "openai", "model": "text-embedding-3-small"}},
                                    root=tmp_path)
    Store.from_config(other_collection)  # a new collection is fine
    large = parse_config({"store": {"path": "chroma", "collection": "openai_chunks"},
                          "embedding": {"provider": "openai", "model": "text-embedding-3-large"}}, root=tmp_path)
    with pytest.raises(StoreError, match="text-embedding-3-small"):
        Store.from_config(large)


def test_an_embedding_failure_is_a_store_error_and_writes_nothing(tmp_path, allow_model_requests):
    config = parse_config({"store": {"path": "chroma"}, "llm": {"api_key_env": "NEWSDESK_NO_SUCH_KEY"},
                           "embedding": {"provider": "openai", "model": "text-embedding-3-small"}}, root=tmp_path)
    store = Store.from_config(config)
    with pytest.raises(StoreError, match=r"could not embed 1 text.*NEWSDESK_NO_SUCH_KEY"):
        store.index_items([make_item("a", "Some text.")])
    assert store.count() == 0


def test_a_store_path_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "chroma").write_text("not a directory")
    with pytest.raises(StoreError, match=r"cannot open the Chroma store at .*chroma"):
        Store.from_config(store_config(tmp_path))


REOPEN_SCRIPT = """
import json, sys
from pathlib import Path
import chromadb
from chromadb.config import Settings
from pipeline.core.config import parse_config
from pipeline.services.store import Store

root = Path(sys.argv[1])
store = Store.from_config(parse_config({"store": {"path": "chroma", "chunk_tokens": 200}}, root=root))
hits = store.query("bitcoin exchange-traded fund inflows", k=2)
# Plain chromadb, with no embedding function passed: the registered one is rebuilt from the collection.
client = chromadb.PersistentClient(path=str(root / "chroma"), settings=Settings(anonymized_telemetry=False))
collection = client.get_collection("newsdesk_chunks")
raw = collection.query(query_texts=["lawsuit against a crypto exchange"], n_results=1)
print(json.dumps({"count": store.count(), "hits": [h.item_id for h in hits],
                  "raw": raw["metadatas"][0][0]["item_id"],
                  "function": type(collection._embedding_function).__name__,
                  "configured": type(collection.configuration["embedding_function"]).__name__}))
"""


def test_a_new_process_reopens_the_store_and_queries_with_the_registered_function(tmp_path):
    store = Store.from_config(store_config(tmp_path))
    store.index_items([
        make_item("etf", "Spot bitcoin ETFs drew record inflows as institutions bought BTC."),
        make_item("sec", "The SEC sued a crypto exchange for trading unregistered securities."),
    ])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", REOPEN_SCRIPT, str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["count"] == 2 and result["hits"][0] == "etf" and result["raw"] == "sec"
    assert result["configured"] == "LocalEmbeddingFunction"


# --- server mode: a real `chroma run` ----------------------------------------------------------


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory):
    with running_chroma(tmp_path_factory.mktemp("chroma-server")) as (_, port):
        yield port


def test_server_mode_indexes_filters_and_cleans_up_like_the_embedded_store(chroma_server, tmp_path):
    config = parse_config({"store": {"host": "127.0.0.1", "port": chroma_server, "chunk_tokens": 200,
                                     "collection": "server_chunks"}}, root=tmp_path)
    store = Store.from_config(config)
    assert store.location == f"Chroma server http://127.0.0.1:{chroma_server}"
    store.index_items([make_item("a", long_text("ether", 4)), make_item("b", "The SEC sued a crypto exchange.")])
    total = store.count()
    store.index_items([make_item("a", long_text("ether", 1)), make_item("b", "The SEC sued a crypto exchange.")])
    assert store.count() == 2 < total
    store.set_classification("b", classified(["regulation"]))
    assert [h.item_id for h in store.query("lawsuit", k=5, where=where_topic("regulation"))] == ["b"]
    store.set_classification("b", classified([]))
    assert store.query("lawsuit", k=5, where=where_topic("regulation")) == []
    assert store.query("crypto lawsuit", k=1)[0].item_id == "b"
    # A second client (as another process would) finds the same collection and function.
    reopened = Store.from_config(config)
    assert reopened.count() == 2 and reopened.item_embedding("a").shape == (384,)


def test_an_unreachable_server_is_a_store_error_naming_it(tmp_path):
    port = free_port()  # nothing listens there
    config = parse_config({"store": {"host": "127.0.0.1", "port": port}}, root=tmp_path)
    with pytest.raises(StoreError, match=rf"cannot reach the Chroma server http://127\.0\.0\.1:{port}"):
        Store.from_config(config)


def test_a_server_that_goes_away_mid_run_is_a_store_error(tmp_path):
    with running_chroma(tmp_path) as (process, port):
        config = parse_config({"store": {"host": "127.0.0.1", "port": port}}, root=tmp_path)
        store = Store.from_config(config)
        assert store.count() == 0
        stop(process)
        with pytest.raises(StoreError, match=rf"Chroma server http://127\.0\.0\.1:{port}: could not count chunks"):
            store.count()
