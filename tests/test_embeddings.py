"""The offline default embedding (MiniLM int8 ONNX + vendored tokenizer) and the openai provider."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest
import respx
from chromadb.utils.embedding_functions import config_to_embedding_function, known_embedding_functions

import pipeline.services.embeddings as embeddings
from pipeline.core.config import parse_config
from pipeline.services.embeddings import (
    DIMENSION,
    MODEL_SHA256,
    TOKENIZER_PATH,
    TOKENIZER_SHA256,
    EmbeddingError,
    EmbeddingMemo,
    LocalEmbeddingFunction,
    MiniLMEncoder,
    OpenAIEmbeddingFunction,
    default_model_path,
    embedding_function_from_config,
)


@pytest.fixture(scope="module")
def local() -> LocalEmbeddingFunction:
    return LocalEmbeddingFunction()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_shipped_files_match_their_pinned_checksums():
    assert hashlib.sha256(default_model_path().read_bytes()).hexdigest() == MODEL_SHA256
    assert hashlib.sha256(TOKENIZER_PATH.read_bytes()).hexdigest() == TOKENIZER_SHA256
    licence = TOKENIZER_PATH.parent / "LICENSE-APACHE-2.0.txt"
    assert "Apache License" in licence.read_text() and "Version 2.0" in licence.read_text()


def test_vectors_are_384_wide_float32_and_unit_length(local):
    vectors = local.embed(["Bitcoin rallies after the ETF approval.", "", "x" * 5])
    assert vectors.shape == (3, DIMENSION)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_similar_sentences_score_clearly_higher_than_unrelated_ones(local):
    a, b, c, d, e = local.embed([
        "Bitcoin price surges past $100,000 as ETF inflows accelerate",
        "BTC hits a record above 100k on strong exchange-traded fund demand",
        "The SEC sues a crypto exchange over unregistered securities",
        "Regulators take legal action against a cryptocurrency trading platform",
        "A recipe for roasted asparagus with soft-boiled eggs",
    ])
    assert cosine(a, b) > 0.45 and cosine(c, d) > 0.45
    assert cosine(a, e) < 0.15 and cosine(c, e) < 0.15
    assert cosine(a, b) > cosine(a, c) + 0.2  # same story beats same beat, different story


def test_padding_in_a_batch_does_not_change_a_vector(local):
    # Mean pooling must ignore [PAD] positions: a short text padded next to a
    # long one gets the same vector as when embedded alone.
    short = "Ether fees fall to a two-year low."
    long = " ".join(["The network upgrade cut the cost of rollup data by an order of magnitude."] * 12)
    alone = local.embed([short])[0]
    batched = local.embed([long, short])[1]
    assert cosine(alone, batched) > 0.9999


def test_text_beyond_the_model_window_is_truncated_not_an_error(local):
    head = "Solana validators voted to change the fee market. " * 30  # well past 256 tokens
    tail = "An entirely unrelated recipe for bread with rye flour and caraway. " * 30
    vectors = local.embed([head, head + tail])
    assert cosine(vectors[0], vectors[1]) > 0.999  # the tail never reached the model


def test_non_text_input_is_named_in_the_error(local):
    with pytest.raises(EmbeddingError, match=r"text #1 .* is int"):
        local.embed(["fine", 7])


def test_loading_and_embedding_need_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the local embedding tried to open a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    encoder = MiniLMEncoder(default_model_path(), TOKENIZER_PATH, threads=1)  # a fresh load, not the cache
    assert encoder.encode(["offline works"], batch_size=4).shape == (1, DIMENSION)


def test_a_tampered_model_copy_is_refused_with_its_path_and_checksum(tmp_path):
    copy = tmp_path / "model.onnx"
    shutil.copyfile(default_model_path(), copy)
    with copy.open("r+b") as handle:  # same size, one byte changed
        handle.seek(1_000_000)
        byte = handle.read(1)
        handle.seek(1_000_000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(EmbeddingError) as caught:
        LocalEmbeddingFunction(model_path=copy)
    message = str(caught.value)
    assert str(copy) in message and MODEL_SHA256 in message and "refusing" in message


def test_a_truncated_model_file_is_refused_by_size(tmp_path):
    copy = tmp_path / "model.onnx"
    copy.write_bytes(default_model_path().read_bytes()[:1000])
    with pytest.raises(EmbeddingError, match=r"1,000 bytes, expected 22,928,619"):
        LocalEmbeddingFunction(model_path=copy)


def test_a_tampered_tokenizer_is_refused(tmp_path):
    copy = tmp_path / "tokenizer.json"
    copy.write_text(TOKENIZER_PATH.read_text().replace('"[UNK]"', '"[UNKNOWN]"', 1))
    with pytest.raises(EmbeddingError, match="embedding tokenizer"):
        LocalEmbeddingFunction(tokenizer_path=copy)


def test_a_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(EmbeddingError, match="embedding model not found"):
        LocalEmbeddingFunction(model_path=tmp_path / "absent.onnx")


def test_chromadb_knows_both_functions_by_name_and_rebuilds_them_from_config(local):
    assert known_embedding_functions["newsdesk_minilm_int8"] is LocalEmbeddingFunction
    assert known_embedding_functions["newsdesk_openai"] is OpenAIEmbeddingFunction
    rebuilt = config_to_embedding_function({"name": local.name(), "config": local.get_config()})
    assert isinstance(rebuilt, LocalEmbeddingFunction)
    np.testing.assert_allclose(rebuilt.embed(["same text"]), local.embed(["same text"]), atol=1e-6)
    assert local.default_space() == "cosine"


def test_a_collection_built_with_another_model_is_not_silently_reused():
    with pytest.raises(ValueError, match="different model|re-index"):
        LocalEmbeddingFunction.build_from_config({"model_sha256": "0" * 64})


def test_config_picks_the_local_model_by_default_and_rejects_other_local_names(tmp_path):
    ef = embedding_function_from_config(parse_config({"embedding": {"batch_size": 8}}, root=tmp_path))
    assert isinstance(ef, LocalEmbeddingFunction) and ef.batch_size == 8
    with pytest.raises(EmbeddingError, match="only all-MiniLM-L6-v2"):
        embedding_function_from_config(parse_config({"embedding": {"model": "bge-small"}}, root=tmp_path))
    with pytest.raises(EmbeddingError, match="text-embedding-3-small"):
        embedding_function_from_config(parse_config({"embedding": {"provider": "openai"}}, root=tmp_path))


# --- openai provider, through the real SDK against respx ---------------------------------

BASE = "https://embeddings.test/v1"


def openai_config(tmp_path: Path, **embedding):
    return parse_config(
        {
            "llm": {"base_url": BASE, "api_key_env": "NEWSDESK_TEST_KEY", "max_retries": 0},
            "embedding": {"provider": "openai", "model": "text-embedding-3-small", **embedding},
        },
        root=tmp_path,
    )


def fake_embeddings(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    # Deliberately unnormalised and returned in reverse order: the client must sort and normalise.
    data = [
        {"object": "embedding", "index": i, "embedding": [float(len(text)), 1.0, 0.0]}
        for i, text in enumerate(body["input"])
    ][::-1]
    return httpx.Response(200, json={"object": "list", "data": data, "model": body["model"],
                                     "usage": {"prompt_tokens": 1, "total_tokens": 1}})


def test_openai_embeddings_batch_sort_and_normalise(tmp_path, monkeypatch, allow_model_requests):
    monkeypatch.setenv("NEWSDESK_TEST_KEY", "sk-test-123")
    ef = embedding_function_from_config(openai_config(tmp_path, batch_size=2), http_client=httpx.Client())
    assert isinstance(ef, OpenAIEmbeddingFunction)
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post(f"{BASE}/embeddings").mock(side_effect=fake_embeddings)
        vectors = ef.embed(["a", "bbb", ""])
    assert route.call_count == 2  # batch_size 2: three texts, two requests
    first = route.calls[0].request
    assert first.headers["authorization"] == "Bearer sk-test-123"
    assert json.loads(first.content) == {"model": "text-embedding-3-small", "input": ["a", "bbb"],
                                         "encoding_format": "float"}
    assert json.loads(route.calls[1].request.content)["input"] == [" "]  # the API rejects ""
    expected = np.array([[1, 1, 0], [3, 1, 0], [1, 1, 0]], dtype=np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    assert ef.dimension == 3
    assert "sk-test-123" not in repr(ef.get_config())


def test_openai_failure_names_the_endpoint_and_model(tmp_path, monkeypatch, allow_model_requests):
    monkeypatch.setenv("NEWSDESK_TEST_KEY", "sk-test-123")
    ef = embedding_function_from_config(openai_config(tmp_path), http_client=httpx.Client())
    with respx.mock() as mock:
        mock.post(f"{BASE}/embeddings").mock(return_value=httpx.Response(500, json={"error": {"message": "boom"}}))
        with pytest.raises(EmbeddingError, match=r"embeddings\.test.*text-embedding-3-small"):
            ef.embed(["a"])


def test_openai_without_key_or_endpoint_says_which_variable_to_set(tmp_path, allow_model_requests):
    config = parse_config({"llm": {"api_key_env": "NEWSDESK_TEST_KEY"},
                           "embedding": {"provider": "openai", "model": "text-embedding-3-small"}}, root=tmp_path)
    ef = embedding_function_from_config(config)
    with pytest.raises(EmbeddingError, match=r"\$NEWSDESK_TEST_KEY"):
        ef.embed(["a"])


def test_openai_embeddings_obey_the_test_switch_for_real_requests(tmp_path, monkeypatch):
    from pipeline.services.llm import ModelRequestsBlocked

    monkeypatch.setenv("NEWSDESK_TEST_KEY", "sk-test-123")
    ef = embedding_function_from_config(openai_config(tmp_path), http_client=httpx.Client())
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(f"{BASE}/embeddings").mock(side_effect=fake_embeddings)
        with pytest.raises(ModelRequestsBlocked):
            ef.embed(["a"])
    assert not route.called


def test_openai_config_round_trips_without_the_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("NEWSDESK_TEST_KEY", "sk-test-123")
    ef = embedding_function_from_config(openai_config(tmp_path))
    rebuilt = config_to_embedding_function({"name": ef.name(), "config": ef.get_config()})
    assert isinstance(rebuilt, OpenAIEmbeddingFunction)
    assert (rebuilt.model, rebuilt.base_url, rebuilt.api_key_env) == ("text-embedding-3-small", BASE, "NEWSDESK_TEST_KEY")
    assert "sk-test" not in repr(ef.get_config())
    assert embeddings.OpenAIEmbeddingFunction.name() != LocalEmbeddingFunction.name()


def test_the_memo_embeds_each_text_once_and_returns_the_models_vectors(local):
    asked: list[list[str]] = []

    def model(texts):
        asked.append(list(texts))
        return local.embed(texts)

    memo = EmbeddingMemo(model, limit=3)
    first = memo(["a hot wallet was drained", "the exchange halted withdrawals"])
    again = memo(["the exchange halted withdrawals", "regulators opened an inquiry", "a hot wallet was drained"])
    assert asked == [["a hot wallet was drained", "the exchange halted withdrawals"], ["regulators opened an inquiry"]]
    np.testing.assert_allclose(again[[2, 0]], first, atol=1e-6)
    np.testing.assert_allclose(again, local.embed(
        ["the exchange halted withdrawals", "regulators opened an inquiry", "a hot wallet was drained"]), atol=1e-5)
    memo(["a fourth text pushes out the oldest"])
    memo(["a hot wallet was drained"])
    assert asked[-1] == ["a hot wallet was drained"], "only the last `limit` texts are kept"
    assert memo([]).shape == (0, 384)


def test_the_memo_names_a_model_that_returns_the_wrong_number_of_vectors():
    memo = EmbeddingMemo(lambda texts: np.zeros((1, 384), dtype=np.float32))
    with pytest.raises(EmbeddingError, match="shape \\(1, 384\\) for 2 texts"):
        memo(["one", "two"])
