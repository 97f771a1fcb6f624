"""Token counting: exact offline when a vocabulary is on disk, and a bound that never under-counts.

The reference is real tiktoken with OpenAI's own cl100k_base / o200k_base files
(shipped in the bpe-openai wheel; tiktoken checks their sha256).
"""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core import tokens

REFERENCE = {name: tokens.load_encoding(name) for name in tokens.KNOWN_ENCODINGS}


def exact(text: str) -> int:
    return max(len(encoding.encode(text, disallowed_special=())) for encoding in REFERENCE.values())


def test_reference_vocabularies_load_offline(network_guard):
    assert all(REFERENCE.values()), "cl100k_base/o200k_base must load offline (is bpe-openai installed?)"
    assert tokens.is_exact("gpt-4o-mini")
    assert network_guard.attempts == []


def test_a_missing_vocabulary_is_detected_without_network(monkeypatch, tmp_path, network_guard):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache
    monkeypatch.setattr(tokens, "_shipped_vocabulary", lambda filename: None)
    monkeypatch.setattr(tokens, "_encodings", {})
    assert tokens.load_encoding("cl100k_base") is None
    assert not tokens.is_exact("gpt-4")
    text = "Bitcoin rallied 5% to $97,000 on Tuesday."
    assert tokens.count_tokens(text, "gpt-4") == tokens.estimate_tokens(text)
    assert network_guard.attempts == []


def test_counts_are_exact_per_model():
    text = "Ether's price fell 3.2% after the SEC's statement — traders 'weren't surprised'."
    o200k = len(REFERENCE["o200k_base"].encode(text))
    cl100k = len(REFERENCE["cl100k_base"].encode(text))
    assert tokens.count_tokens(text, "gpt-4o-mini") == o200k
    assert tokens.count_tokens(text, "ft:gpt-4o-mini-2024-07-18:newsroom::abc") == o200k
    assert tokens.count_tokens(text, "gpt-4") == cl100k
    assert tokens.count_tokens(text, "llama3.1:8b") == max(o200k, cl100k)  # unknown: the larger
    assert tokens.count_tokens("<|endoftext|>", "gpt-4o") > 1  # special tokens counted as text, no error


def test_chat_overhead():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello", "name": "ed"}]
    content = sum(tokens.count_tokens(v, "gpt-4o") for m in messages for v in m.values())
    assert tokens.count_messages(messages, "gpt-4o") == 3 + 3 * 2 + content + 1


# --- the bound ---------------------------------------------------------------------------------------


def test_unmerged_pairs_table_matches_both_vocabularies():
    letters = string.ascii_lowercase
    unmerged = {
        a + b
        for encoding in REFERENCE.values()
        for a in letters
        for b in letters
        if (a + b).encode() not in encoding._mergeable_ranks
    }
    assert unmerged == set(tokens._UNMERGED_PAIRS)


def test_every_short_number_is_one_token():
    for encoding in REFERENCE.values():
        for width in (1, 2, 3):
            for value in range(10**width):
                assert len(encoding.encode(f"{value:0{width}d}")) == 1


TRICKY = "abcqzjxvs'ltm A1²٣é日本🙂.,-\n\t\"$%'"


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), st.text(alphabet=TRICKY), st.text(alphabet=string.printable)))
def test_estimate_never_undercounts(text):
    assert tokens.estimate_tokens(text) >= exact(text)


words = st.lists(st.from_regex(r"[a-z]{1,14}", fullmatch=True), min_size=1, max_size=60)


@settings(max_examples=500, deadline=None)
@given(words, st.sampled_from([" ", "  ", "'", "' ", ", ", "\n", "-"]))
def test_estimate_never_undercounts_word_like_text(parts, separator):
    text = separator.join(parts)
    assert tokens.estimate_tokens(text) >= exact(text)


def test_estimate_is_tighter_than_bytes_on_prose():
    prose = (
        "The central bank held rates steady on Wednesday, but three of its nine members voted for a cut, "
        "the first split since 2019. Markets priced a 62% chance of a move in March. "
    ) * 20
    estimate, real, size = tokens.estimate_tokens(prose), exact(prose), len(prose.encode())
    assert real <= estimate < size
    assert estimate < 0.85 * size  # 0.81 on this text; English averages ~0.23 real tokens per byte


def test_forcing_the_estimate(monkeypatch):
    monkeypatch.setattr(tokens, "_exact_enabled", False)
    text = "Solana's validators upgraded overnight."
    assert tokens.count_tokens(text, "gpt-4o") == tokens.estimate_tokens(text) >= exact(text)


# --- truncation ------------------------------------------------------------------------------------------


ARTICLE = (
    "Bitcoin rose 5% on Tuesday. Analysts pointed to ETF inflows! Volumes were thin, however. "
    "Regulators in Brussels said they would publish guidance next month."
)


def test_truncation_prefers_a_sentence_end():
    cut = tokens.truncate_to_tokens(ARTICLE, 22, "gpt-4o")
    assert cut == "Bitcoin rose 5% on Tuesday. Analysts pointed to ETF inflows! Volumes were thin, however."
    assert tokens.count_tokens(cut, "gpt-4o") <= 22


def test_truncation_falls_back_to_a_word_boundary():
    text = "one two three four five six seven eight nine ten eleven twelve"
    cut = tokens.truncate_to_tokens(text, 5, "gpt-4o")
    assert cut == "one two three four five"


def test_truncation_edges():
    assert tokens.truncate_to_tokens(ARTICLE, 10_000) == ARTICLE
    assert tokens.truncate_to_tokens(ARTICLE, 0) == ""
    assert tokens.truncate_to_tokens("", 5) == ""
    unbroken = "x" * 500
    assert tokens.count_tokens(tokens.truncate_to_tokens(unbroken, 7, "gpt-4o"), "gpt-4o") <= 7


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=400), st.integers(min_value=1, max_value=60), st.booleans())
def test_truncation_never_exceeds_the_limit_and_keeps_a_prefix(text, limit, exact_counts):
    tokens.set_exact(exact_counts)
    try:
        cut = tokens.truncate_to_tokens(text, limit, "gpt-4o")
        assert tokens.count_tokens(cut, "gpt-4o") <= limit
        assert text.startswith(cut)
    finally:
        tokens.set_exact(True)


@pytest.mark.parametrize("limit", [50, 200])
def test_truncation_keeps_most_of_the_budget(limit):
    text = ARTICLE * 20
    cut = tokens.truncate_to_tokens(text, limit, "gpt-4o")
    assert limit * 0.6 <= tokens.count_tokens(cut, "gpt-4o") <= limit
