"""The research pack never exceeds its budget, keeps the story's sources first and drops the lowest-ranked first."""

from datetime import datetime, timezone

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.researcher import Material, cut_to_tokens, mmr, pack_sources, source_header
from pipeline.core.tokens import count_tokens

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


# --- background must be about the story (issue 13) -----------------------------------------------

from agents.researcher import StoryProfile, about_story, background_materials  # noqa: E402
from pipeline.core.config import Config  # noqa: E402
from pipeline.core.models import Story  # noqa: E402
from pipeline.services.store import ChunkHit  # noqa: E402

KORVEX_TITLES = [
    "Korvex exchange drained of $48.2 million in hot-wallet breach",
    "Halvane: Korvex attacker used stolen multisig key to take $48.2 million",
    "Korvex halts withdrawals after attackers siphon $48.2 million",
]
KORVEX_TEXTS = [
    "Korvex, a Lisbon-based exchange, said attackers drained $48.2 million from its hot wallets. Blockchain security firm "
    "Halvane Security said the attacker had a signing key. Korvex is working with issuers to freeze USDC.",
    "The hacker who took $48.2 million from crypto exchange Korvex used a stolen key, according to Halvane Security. "
    "Okafor said some USDC had been frozen.",
    "Crypto exchange Korvex suspended withdrawals after hackers stole $48.2 million. Halvane Security said a private key was stolen.",
]
ARCSPAN = ("Arcspan bridge loses $3.7 million to signature replay attack",
           "The attacker repeated 212 withdrawals on the second network. Arcspan said it would compensate users in USDC. "
           "Security researchers said replay attacks of this kind were well known.")
KORVEX_EARLIER = ("Korvex adds proof-of-reserves audits",
                  "Korvex said it would publish monthly proof-of-reserves audits. The exchange set up its reserve fund in 2024.")
EXPLAINER = ("What is a hot wallet?",
             "Hot wallets are exchange wallets connected to the internet so that withdrawals can be processed quickly. "
             "Because their keys sit on networked servers, they are the most common target in a breach.")


def test_background_is_kept_only_when_it_concerns_the_story():
    profile = StoryProfile.of(KORVEX_TITLES, KORVEX_TEXTS)
    assert profile.core == {"korvex"}, "the subject is who a majority of the headlines name"
    assert not about_story(*ARCSPAN, profile), "another company's hack that shares a coin and a word is another event"
    assert about_story(*KORVEX_EARLIER, profile)
    assert about_story(*EXPLAINER, profile), "an explainer of the story's own terms that names no other actor"


def test_a_party_to_the_story_is_not_its_subject():
    lattice = StoryProfile.of(
        ["Judge rules Lattice token resales were not securities offerings", "Lattice Protocol wins partial victory against FDMC",
         "Coleman ruling: $12.5 million penalty for Lattice's institutional sales"],
        ["A federal judge ruled that sales of Lattice Protocol's LATT token were not securities, a partial win against the FDMC."] * 3,
    )
    assert "lattice" in lattice.core and "fdmc" not in lattice.core
    assert not about_story("FDMC approves first spot ether ETFs that can stake, in 3-2 vote",
                           "The FDMC approved three funds from Granite Peak, Halberd Funds and Lumen Street Investments.", lattice)


class Hits:
    """A store stand-in: `query` returns the given chunks in order, each with its own unit vector."""

    def __init__(self, chunks):
        self.chunks = chunks

    def embed(self, texts):
        return np.ones((len(texts), 3)) / np.sqrt(3)

    def query(self, embedding, k, where, exclude_item_ids, include_embeddings):
        return self.chunks[:k]

    def item_embeddings(self, item_ids):
        return {}


def test_background_materials_drop_other_events(monkeypatch):
    chunks = []
    for i, (title, text) in enumerate([ARCSPAN, KORVEX_EARLIER, EXPLAINER]):
        vector = np.zeros(3)
        vector[i] = 1.0
        chunks.append(ChunkHit(id=f"c{i}", item_id=f"bg{i}", text=text, distance=0.3, embedding=(vector + 1) / np.linalg.norm(vector + 1),
                               metadata={"title": title, "source": "outlet", "published": int(WHEN.timestamp()), "url": f"https://x.example/{i}"}))
    own = [material(i, text, "story") for i, text in enumerate(KORVEX_TEXTS)]
    for m, title in zip(own, KORVEX_TITLES):
        m.title = title
    story = Story(key="k", title=KORVEX_TITLES[0], item_ids=[m.item_id for m in own], sources=["a", "b", "c"], topics=[],
                  score=1.0, first_published=WHEN, last_published=WHEN)
    config = Config()
    config.research.min_similarity = 0.0
    kept = background_materials(Hits(chunks), config, story, own, now=WHEN)
    assert sorted(m.title for m in kept) == sorted([KORVEX_EARLIER[0], EXPLAINER[0]])
    assert all(m.role == "background" for m in kept)
