"""The research pack never exceeds its budget, keeps the story's sources first and drops the lowest-ranked first."""

from datetime import datetime, timezone

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.researcher import Material, cut_to_tokens, mmr, pack_sources, source_header
from pipeline.tokens import count_tokens

WHEN = datetime(2026, 11, 20, 12, tzinfo=timezone.utc)
WORDS = ["bitcoin", "exchange", "regulator", "approved", "$48.2", "million", "ETF", "on", "Tuesday", "said", "Ünïcode", "🚀", "the", "court"]


def sentence(draw_words: list[str]) -> str:
    return " ".join(draw_words).capitalize() + "."


texts = st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=40).map(sentence), min_size=0, max_size=30).map(" ".join)


def material(i: int, text: str, role: str) -> Material:
    return Material(item_id=f"{role}-{i}", title=f"Title {i} 🚀", outlet=f"outlet{i}", published=WHEN, url=f"https://news.example/{i}", text=text, role=role)


def packed_cost(sources) -> int:
    return sum(count_tokens(source_header(len(sources), s)) + count_tokens(s.text) for s in sources)


@settings(max_examples=150, deadline=None)
@given(story=st.lists(texts, min_size=1, max_size=4), background=st.lists(texts, max_size=6), budget=st.integers(0, 3000))
def test_pack_never_exceeds_budget(story, background, budget):
    materials = [material(i, t, "story") for i, t in enumerate(story)] + [material(i, t, "background") for i, t in enumerate(background)]
    sources, used, dropped = pack_sources(materials, budget, count_tokens)
    assert used <= budget
    assert packed_cost(sources) <= budget
    assert [s.n for s in sources] == list(range(1, len(sources) + 1))
    roles = [s.role for s in sources]
    assert roles == sorted(roles, key=lambda r: r != "story"), "story sources come before background"
    assert len(sources) + len(dropped) == len(materials)
    for s in sources:  # cuts happen at sentence boundaries: every kept text is a prefix of whole sentences
        original = next(m.text for m in materials if m.item_id == s.item_id)
        assert original.startswith(s.text)
        assert s.text == original or s.text.endswith(".")


def test_background_is_dropped_before_story_sources_are_cut():
    story = [material(0, "Exchange hacked for $48.2 million. " * 40, "story")]
    background = [material(i, "Earlier coverage of the exchange. " * 40, "background") for i in range(3)]
    full_story = count_tokens(source_header(4, story[0])) + count_tokens(story[0].text)
    sources, used, dropped = pack_sources(story + background, full_story + 50, count_tokens)
    assert [s.item_id for s in sources] == ["story-0"]
    assert sources[0].text == story[0].text
    assert dropped == ["background-0", "background-1", "background-2"]


def test_story_sources_share_a_tight_budget_fairly():
    long = material(0, "A long report sentence about the hack. " * 200, "story")
    short = material(1, "A short second report confirms the $48.2 million figure.", "story")
    sources, used, _ = pack_sources([long, short], 600, count_tokens)
    kept = {s.item_id: s.text for s in sources}
    assert kept["story-1"] == short.text, "the short source fits whole"
    assert 0 < len(kept["story-0"]) < len(long.text), "the long one is cut, not dropped"


def test_cut_to_tokens_keeps_whole_sentences():
    text = "First sentence here. Second one follows. Third is last."
    assert cut_to_tokens(text, count_tokens("First sentence here. Second one"), count_tokens) == "First sentence here."
    assert cut_to_tokens(text, 1, count_tokens) == ""


def test_mmr_prefers_diverse_results_and_skips_near_duplicates():
    query = np.array([1.0, 0.0, 0.0])
    a = np.array([0.9, 0.43589, 0.0])
    duplicate_of_a = a.copy()
    b = np.array([0.8, 0.0, 0.6])
    candidates = np.stack([a, duplicate_of_a, b])
    chosen = mmr(query, candidates, k=3, lambda_=0.5, near_duplicate=0.98)
    assert chosen == [0, 2], "the duplicate of the first pick is never chosen"
    assert mmr(query, candidates, k=3, lambda_=0.5, near_duplicate=0.98, avoid=np.stack([a])) == [2]
