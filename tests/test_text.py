"""Sentence splitting, match normalisation and windows (pipeline/text/sentences.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.text.sentences import normalize_for_match, split_sentences, windows


def texts(text: str) -> list[str]:
    return [s.text for s in split_sentences(text)]


def test_offsets_slice_the_original_text():
    text = "  First one.  Second one!\n\nThird?   "
    sents = split_sentences(text)
    assert [s.text for s in sents] == ["First one.", "Second one!", "Third?"]
    for s in sents:
        assert text[s.start:s.end] == s.text


@given(st.text(alphabet="ab .!?\n\"“”'’U.S0123456789$", max_size=200))
@settings(max_examples=200, deadline=None)
def test_offsets_hold_for_any_text(text):
    prev_end = 0
    for s in split_sentences(text):
        assert text[s.start:s.end] == s.text
        assert s.text == s.text.strip() and s.text
        assert s.start >= prev_end
        prev_end = s.end


def test_abbreviations_titles_and_initials_do_not_split():
    assert texts("Mr. Smith met Dr. Jones and Geoffrey B. Berman on Oct. 9 in Washington.") == [
        "Mr. Smith met Dr. Jones and Geoffrey B. Berman on Oct. 9 in Washington."
    ]


def test_us_and_inc_split_only_before_a_sentence_opener():
    assert texts("The U.S. economy grew. Apple Inc. CEO Tim Cook spoke.") == [
        "The U.S. economy grew.", "Apple Inc. CEO Tim Cook spoke."
    ]
    assert texts("Troops stay in the U.S. The base remains.") == ["Troops stay in the U.S.", "The base remains."]
    assert texts("It sold many, e.g. phones and laptops.") == ["It sold many, e.g. phones and laptops."]


def test_decimals_and_currency_amounts():
    assert texts("Revenue rose 1.5% to $2.3 billion. Costs fell.") == [
        "Revenue rose 1.5% to $2.3 billion.", "Costs fell."
    ]


def test_quotes_close_after_the_full_stop():
    assert texts('He said: "We will win." Then he left.') == ['He said: "We will win."', "Then he left."]
    assert texts("“Is it over?” she asked. Nobody knew.") == ["“Is it over?” she asked.", "Nobody knew."]


def test_newlines_and_paragraphs():
    text = "A headline without a stop\nThe body starts here. It goes on.\n\nNew paragraph"
    assert texts(text) == ["A headline without a stop", "The body starts here.", "It goes on.", "New paragraph"]
    # A hard-wrapped line continues the sentence.
    assert texts("The committee met on\nMonday to vote.") == ["The committee met on\nMonday to vote."]


def test_split_rejects_non_text():
    with pytest.raises(TypeError, match="expects str"):
        split_sentences(None)  # type: ignore[arg-type]


def test_normalize_for_match_unifies_quotes_dashes_space_and_controls():
    assert normalize_for_match("“Hello”\u00a0 — it’s\x00\u200b ﬁne\n\tnow ") == '"Hello" - it\'s fine now'
    assert normalize_for_match("‘a’ – b") == normalize_for_match("'a' - b")


def test_windows_overlap_and_cover_every_sentence():
    text = "One. Two. Three. Four. Five."
    sents = split_sentences(text)
    wins = windows(sents, size=3, stride=2, text=text)
    assert [w.text for w in wins] == ["One. Two. Three.", "Three. Four. Five."]
    assert all(text[w.start:w.end] == w.text for w in wins)
    # The tail is never dropped: a stride that overshoots still ends on the last sentence.
    wins = windows(sents, size=3, stride=3, text=text)
    assert wins[-1].last == len(sents) - 1


def test_windows_short_input_and_bad_arguments():
    sents = split_sentences("Only one.")
    assert [w.text for w in windows(sents, size=4)] == ["Only one."]
    assert windows([], size=3) == []
    with pytest.raises(ValueError, match="size >= 1"):
        windows(sents, size=0)
