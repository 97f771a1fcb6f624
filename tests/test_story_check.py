"""The checker checks the story, not just the sentence (issue 13 part 4): off_story and unresolved_reference.

Drafts are built from the sample feeds in examples/ (the Korvex hack, with the Arcspan bridge exploit as the
background coverage research adds; the Lattice ruling), so the sentences are the ones the demo's writer copies.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import feedparser
import pytest

from agents.writer import revise_draft
from agents.fact_checker import EvidenceIndex, JudgeReply, check_article, check_draft, sources_from_pack
from agents.fetcher import plain_text
from pipeline.core.config import parse_config
from pipeline.text.factrules import framed_as_background, opening_reference
from pipeline.services.gdocs import layout_draft, metadata_line
from pipeline.services.llm import Gateway, plain_json_schema
from pipeline.core.models import Article, ClaimVerdict, Draft, FactCheckReport, Insight, Paragraph, ResearchPack, SourceDoc
from pipeline.services.outbox import render_html, render_markdown
from pipeline.text.templates import source_refs
from pipeline.services.testing import TestModel

FEEDS = Path(__file__).resolve().parent.parent / "examples" / "feeds"
T = datetime(2026, 11, 22, 21, tzinfo=timezone.utc)

KORVEX = [
    "https://chainledger.example/news/2026/11/18/korvex-hot-wallet-breach",
    "https://satoshiwire.example/news/2026/11/18/korvex-attacker-stolen-key",
    "https://blockstreet.example/2026/11/18/korvex-halts-withdrawals",
]
ARCSPAN = "https://defidispatch.example/posts/arcspan-bridge-signature-replay"
LATTICE = [
    "https://chainledger.example/news/2026/11/20/judge-rules-latt-resales-not-securities",
    "https://blockstreet.example/2026/11/20/lattice-partial-victory-fdmc",
    "https://satoshiwire.example/news/2026/11/20/coleman-ruling-lattice-penalty",
]

BOUNTY = "It has offered the attacker a 10% bounty in exchange for returning the rest of the funds."
COMPENSATE = "Arcspan said it would compensate affected users from its treasury, which holds about $19 million."

KORVEX_LEAD = ("Korvex, a Lisbon-based cryptocurrency exchange with about 1.3 million registered users, said attackers drained "
               "$48.2 million from its hot wallets early on Wednesday, November 18, in the largest exchange breach of the year so far.")
KORVEX_BODY = [
    ("The exchange said its monitoring systems flagged unusual outflows at 03:42 UTC. By 04:05 UTC it had paused all "
     "withdrawals across the platform.", [1]),
    ("It expects to reopen withdrawals within 72 hours once its wallets have been rebuilt with new keys. Chief executive "
     "Marta Lindqvist said Korvex would cover the full loss from its $210 million Secure Asset Reserve.", [1, 2]),
    ("Korvex's hot wallets were protected by a 2-of-3 multisignature scheme, in which any two of three keys must approve "
     "a transfer. Halvane said the attacker had one of those keys and was able to trick the exchange's automated "
     "withdrawal system into supplying a second approval.", [2]),
    ("The breach is the largest at a centralized exchange this year. Korvex said it had reported the theft to Portuguese "
     "police.", [3]),
]
KORVEX_INSIGHTS = [
    ("Korvex keeps roughly 94% of customer assets in offline cold storage, which the company said was untouched.", [3]),
    ("Lindqvist said she expected withdrawals to restart within 72 hours.", [3]),
]


@lru_cache(maxsize=1)
def feed_items() -> dict[str, tuple[str, str]]:
    """(title, text) of every sample feed entry, by link."""
    out = {}
    for path in sorted(FEEDS.glob("*.xml")):
        for entry in feedparser.parse(str(path)).entries:
            out[entry.link] = (entry.title, plain_text(entry.content[0].value))
    return out


def source(n: int, url: str, role: str = "story") -> SourceDoc:
    title, text = feed_items()[url]
    return SourceDoc(n=n, item_id=f"item-{n}", title=title, outlet=url.split("/")[2], published=T, url=url, text=text, role=role)


def korvex_pack(with_arcspan: bool = True) -> ResearchPack:
    sources = [source(n, url) for n, url in enumerate(KORVEX, 1)]
    if with_arcspan:
        sources.append(source(4, ARCSPAN, "background"))
    return ResearchPack(story_key="korvex", sources=sources, budget_tokens=8000, used_tokens=0)


def make_article(lead: str, body, insights, headline: str) -> Article:
    return Article(headline=headline, lead=lead, body=[Paragraph(text=t, citations=c) for t, c in body],
                   insights=[Insight(text=t, citations=c) for t, c in insights], sources=[])


def korvex_article(body=KORVEX_BODY, insights=KORVEX_INSIGHTS) -> Article:
    return make_article(KORVEX_LEAD, body, insights, "Korvex exchange drained of $48.2 million in hot-wallet breach")


def check(article: Article, pack: ResearchPack) -> FactCheckReport:
    evidence = EvidenceIndex(sources_from_pack(pack.sources), 4)
    return asyncio.run(check_article(article, evidence))


def verdict_of(report: FactCheckReport, text: str) -> ClaimVerdict:
    (found,) = [v for v in report.verdicts if v.claim.text == text]
    return found


def story_labels(report: FactCheckReport) -> list[tuple[str, str]]:
    return [(v.verdict, v.claim.text) for v in report.verdicts if v.verdict in ("off_story", "unresolved_reference")]


# --- off_story -----------------------------------------------------------------------------------------------


def test_the_arcspan_bounty_in_the_korvex_draft_is_off_story_and_shows_the_arcspan_source():
    """The demo writer's mistake: the bounty sentence is copied verbatim from the Arcspan item, so it is supported;
    but it is about another event."""
    body = [*KORVEX_BODY[:3], (KORVEX_BODY[3][0] + " " + BOUNTY, [3, 4])]
    report = check(korvex_article(body=body), korvex_pack())

    bounty = verdict_of(report, BOUNTY)
    assert bounty.verdict == "off_story" and bounty.method == "rules"
    assert bounty.source_n == 4 and bounty.source_url == ARCSPAN
    assert "10% bounty" in bounty.evidence
    (story,) = [f for f in bounty.failures if f.type == "story"]
    assert "background source [4]" in story.detail and "Arcspan bridge loses $3.7 million" in story.detail
    assert "Korvex" in story.detail  # the story's own actor, for the editor
    assert story_labels(report) == [("off_story", BOUNTY)]
    assert report.totals["off_story"] == 1 and report.totals["supported"] == report.totals["claims"] - 1
    assert bounty in report.flagged()


def test_an_unframed_sentence_naming_another_company_is_off_story_and_framed_it_is_not():
    for text, expected in [
        (COMPENSATE, "off_story"),
        ("Separately, " + COMPENSATE, "supported"),
        ("Earlier, " + COMPENSATE, "supported"),
        ("In a separate incident, " + COMPENSATE, "supported"),
    ]:
        report = check(korvex_article(body=[*KORVEX_BODY, (text, [4])]), korvex_pack())
        assert verdict_of(report, text).verdict == expected, text
        assert [label for label, _ in story_labels(report)] == (["off_story"] if expected == "off_story" else [])


def test_a_cue_that_frames_nothing_does_not_excuse_a_sentence():
    assert framed_as_background("Arcspan, drained earlier this month, said it would pay users back.", True)
    assert framed_as_background("Arcspan said separately that it would pay users back.", True)
    assert not framed_as_background("Ortiz said another increase was likely as new orders placed earlier in the year arrive.", True)
    assert not framed_as_background("Implied volatility rose to 54% for one-month contracts from 47% a week earlier.", True)
    assert not framed_as_background("The attacker said it earlier.", False)  # names no subject of its own


def test_background_about_the_storys_own_subject_is_not_off_story():
    earlier = SourceDoc(n=4, item_id="old", title="Korvex opens a Madrid office", outlet="chainledger.example", published=T,
                        url="https://chainledger.example/news/2026/03/02/korvex-madrid",
                        text="Korvex opened an office in Madrid in March, its first outside Portugal.", role="background")
    pack = korvex_pack(with_arcspan=False)
    pack = pack.model_copy(update={"sources": [*pack.sources, earlier]})
    text = "Korvex opened an office in Madrid in March, its first outside Portugal."
    report = check(korvex_article(body=[*KORVEX_BODY, (text, [4])]), pack)
    assert verdict_of(report, text).verdict == "supported"
    assert story_labels(report) == []


def test_a_story_sources_aside_about_another_event_does_not_make_a_sentence_on_story():
    """A story item mentions another event in passing; copying that aside without its framing is off_story."""
    pack = korvex_pack(with_arcspan=False)
    first = pack.sources[0]
    aside = first.model_copy(update={"text": first.text + "\n\nSeparately, Arcspan offered the attacker of its bridge a 10% bounty."})
    pack = pack.model_copy(update={"sources": [aside, *pack.sources[1:]]})
    text = "Arcspan offered the attacker of its bridge a 10% bounty."
    report = check(korvex_article(body=[*KORVEX_BODY, (text, [1])]), pack)
    found = verdict_of(report, text)
    assert found.verdict == "off_story" and found.source_n == 1
    assert "aside of story source [1]" in next(f.detail for f in found.failures if f.type == "story")
    framed = "Separately, " + text
    assert verdict_of(check(korvex_article(body=[*KORVEX_BODY, (framed, [1])]), pack), framed).verdict == "supported"


# --- unresolved_reference ----------------------------------------------------------------------------------------


def test_it_opening_a_paragraph_after_another_company_is_an_unresolved_reference():
    """ "It expects to reopen withdrawals" is Korvex's, and supported; after a paragraph about Arcspan it reads as
    Arcspan's."""
    reopen = "It expects to reopen withdrawals within 72 hours once its wallets have been rebuilt with new keys."
    body = [KORVEX_BODY[0], ("Separately, " + COMPENSATE, [4]), (reopen, [1])]
    report = check(korvex_article(body=body), korvex_pack())
    found = verdict_of(report, reopen)
    assert found.verdict == "unresolved_reference"
    (reference,) = [f for f in found.failures if f.type == "reference"]
    assert reference.value == "It" and "Arcspan" in reference.detail
    assert story_labels(report) == [("unresolved_reference", reopen)]

    # Right after the Korvex paragraph the same sentence is resolved.
    report = check(korvex_article(body=[KORVEX_BODY[0], (reopen, [1]), ("Separately, " + COMPENSATE, [4])]), korvex_pack())
    assert verdict_of(report, reopen).verdict == "supported" and story_labels(report) == []


def test_the_bounty_opening_a_paragraph_after_arcspan_is_off_story_and_its_reference_is_reported_too():
    body = [*KORVEX_BODY, (COMPENSATE, [4]), (BOUNTY, [4])]
    report = check(korvex_article(body=body), korvex_pack())
    bounty = verdict_of(report, BOUNTY)
    assert bounty.verdict == "off_story"  # the worse of the two
    assert {f.type for f in bounty.failures} >= {"story", "reference"}
    assert verdict_of(report, COMPENSATE).verdict == "off_story"


def test_a_definite_reference_before_what_it_refers_to_is_unresolved():
    pack = ResearchPack(story_key="lattice", sources=[source(n, url) for n, url in enumerate(LATTICE, 1)],
                        budget_tokens=8000, used_tokens=0)
    lead = ("A federal judge on Friday, November 20, ruled that sales of Lattice Protocol's LATT token on crypto exchanges "
            "were not securities transactions, handing the company a partial win in its fight with the Federal Digital "
            "Markets Commission.")
    penalty = ("The penalty is a fraction of what the commission had sought, and Lattice said it could pay it from existing "
               "reserves without selling tokens.")
    ordered = ("The judge ordered Lattice to pay a civil penalty of $12.5 million, far below the amount the regulator had "
               "sought when it filed the case in March 2025.")
    headline = "Judge rules Lattice token resales were not securities offerings"

    early = check(make_article(lead, [(penalty, [3]), (ordered, [1])], [], headline), pack)
    found = verdict_of(early, penalty)
    assert found.verdict == "unresolved_reference"
    assert "The penalty" in found.failures[-1].detail and "penalty" in found.failures[-1].detail
    assert verdict_of(early, ordered).verdict == "supported"

    late = check(make_article(lead, [(ordered, [1]), (penalty, [3])], [], headline), pack)
    assert story_labels(late) == []


@pytest.mark.parametrize("text, reference", [
    ("It has offered the attacker a 10% bounty.", "It"),
    ("However, they said the fix was live.", "they"),
    ("The penalty is small.", "The penalty"),
    ("The Lisbon-based exchange said it was safe.", "The Lisbon-based exchange"),
    ("Pools like this are designed to hold equal amounts.", "Pools like this"),
    ("Prices fell, she said.", "she said"),
])
def test_opening_references_are_read_with_their_phrase(text, reference):
    assert opening_reference(text).phrase == reference


@pytest.mark.parametrize("text", [
    "Korvex said it was safe.", "There were no injuries.", "This week, Korvex reopened withdrawals.",
    "It is unclear whether the funds can be traced.", "Separately, Arcspan said it would pay.", "Okafor said he expected more.",
])
def test_sentences_that_name_their_subject_or_refer_to_nothing_have_no_opening_reference(text):
    ref = opening_reference(text)
    assert ref is None or ref.kind == "attribution"  # "Okafor said he ...": the sentence itself names him


# --- faithful drafts ---------------------------------------------------------------------------------------------


def test_a_faithful_draft_with_resolved_openers_and_framed_background_is_not_flagged():
    body = [*KORVEX_BODY, ("Separately, " + COMPENSATE, [4])]
    report = check(korvex_article(body=body), korvex_pack())
    assert story_labels(report) == []
    assert report.totals["supported"] == report.totals["claims"]


def test_faithful_sentences_of_a_one_item_story_naming_its_people_are_not_flagged():
    """A one-item story has no names shared by several items: the names its item opens with, and the people it
    quotes, are still the story's."""
    items = feed_items()
    url = next(u for u in items if "phishing" in u)
    pack = ResearchPack(story_key="phishing", sources=[source(1, url)], budget_tokens=8000, used_tokens=0)
    text = items[url][1]
    sentences = [s for s in text.replace("\n\n", " ").split(". ") if "Kaya" in s or "Quartzline" in s]
    body = [(s.rstrip(".") + ".", [1]) for s in sentences[:4]]
    lead = next(s for s in text.split("\n\n"))
    report = check(make_article(lead, body, [], items[url][0]), pack)
    assert story_labels(report) == []


# --- the judge, the report, the document, the revise loop ----------------------------------------------------------


def test_the_judge_schema_offers_only_support_labels():
    schema = json.dumps(plain_json_schema(JudgeReply))
    assert '"supported"' in schema and '"off_story"' not in schema and '"unresolved_reference"' not in schema


def test_a_judge_that_resolves_it_to_the_story_does_not_hide_an_off_story_claim(ledger, tmp_path):
    """The judge makes claims self-contained and may write "Korvex" for the draft's "It"; the subject is still
    read from what the draft wrote, and the support still comes from the Arcspan item."""
    body = [*KORVEX_BODY[:3], (KORVEX_BODY[3][0] + " " + BOUNTY, [3, 4])]
    article = korvex_article(body=body)

    def respond(request):
        if request.role != "judge":
            return None
        import re

        claims = re.findall(r'<claim id="([^"]+)">\n(.*?)\n</claim>', request.messages[-1]["content"], re.S)
        out = []
        for cid, text in claims:
            if text == BOUNTY:
                out.append({"claim_id": cid, "claim": "Korvex has offered the attacker a 10% bounty.", "verdict": "supported",
                            "source_n": 4, "quote": "It has offered the attacker a 10% bounty"})
            else:
                out.append({"claim_id": cid, "verdict": "unverifiable", "source_n": None, "quote": ""})
        return {"verdicts": out}

    config = parse_config({}, root=tmp_path)
    gateway = Gateway(config, ledger, backend=TestModel(function=respond))
    evidence = EvidenceIndex(sources_from_pack(korvex_pack().sources), 4)
    report = asyncio.run(check_article(article, evidence, settings=config.factcheck, gateway=gateway))
    bounty = next(v for v in report.verdicts if v.claim.text.startswith("Korvex has offered"))
    assert bounty.verdict == "off_story" and bounty.source_n == 4


def test_the_document_and_the_outbox_show_story_labels_with_counts_and_highlights():
    reopen = "It expects to reopen withdrawals within 72 hours once its wallets have been rebuilt with new keys."
    body = [KORVEX_BODY[0], (COMPENSATE, [4]), (reopen, [1])]
    article = korvex_article(body=body)
    article = article.model_copy(update={"sources": source_refs(article, korvex_pack().sources)})
    report = check(article, korvex_pack())
    assert report.totals["off_story"] == 1 and report.totals["unresolved_reference"] == 1
    draft = Draft(id="d-story", story_key="korvex", template="news", writer_model="extractive", method="extractive", article=article)

    meta = metadata_line(draft, report)
    assert "0 contradicted, 0 unverifiable, 1 off-story, 1 unresolved reference" in meta
    blocks = layout_draft(draft, report)
    checks = [b.text for b in blocks if b.role == "check"]
    assert checks[0].endswith("1 off-story, 1 unresolved reference.")
    assert any(t.startswith("Off-story: “Arcspan said it would compensate") for t in checks)
    assert any(t.startswith("Unresolved reference: “It expects") for t in checks)
    assert any(t.startswith("Why: supported only by background source [4]") for t in checks)
    assert any(t == f"Source: {ARCSPAN}" for t in checks)
    markdown = render_markdown(blocks, draft.id)
    assert f'<mark class="off_story">{COMPENSATE}</mark>' in markdown.replace("\\", "")
    assert '<mark class="unresolved_reference">It expects' in markdown
    page = render_html(blocks)
    assert "mark.off_story{" in page and '<mark class="unresolved_reference">' in page


def test_a_report_without_story_labels_reads_as_before():
    report = check(korvex_article(), korvex_pack(with_arcspan=False))
    draft = Draft(id="d", story_key="korvex", template="news", writer_model="x", method="extractive", article=korvex_article())
    assert metadata_line(draft, report).endswith(f"Fact-check: {report.totals['supported']} supported, 0 contradicted, 0 unverifiable")


BRIEF_TEMPLATE = """
description = "A short test brief."
[headline]
max_chars = 120
[lead]
min_sentences = 1
max_sentences = 3
max_words = 80
[body]
min_paragraphs = 1
max_paragraphs = 8
min_words = 5
max_words = 120
[insights]
min_count = 0
max_count = 4
max_words = 40
[selection]
default = true
"""


def test_the_reviser_gets_story_flags_with_instructions_and_a_reframed_sentence_passes(ledger, tmp_path):
    from pipeline.text.templates import load_templates

    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "brief.toml").write_text(BRIEF_TEMPLATE, encoding="utf-8")
    config = parse_config({"newsroom": {"templates_dir": str(folder)}}, root=tmp_path)
    spec = load_templates(folder)["brief"]
    pack = korvex_pack()
    body = [*KORVEX_BODY, (COMPENSATE, [4])]
    article = korvex_article(body=body)
    article = article.model_copy(update={"sources": source_refs(article, pack.sources)})
    fixed_body = [*KORVEX_BODY, ("Separately, " + COMPENSATE, [4])]
    fixed = korvex_article(body=fixed_body)
    fixed = fixed.model_copy(update={"sources": source_refs(fixed, pack.sources)})

    def respond(request):
        if request.role == "reviser":
            return fixed.model_dump(mode="json")
        if request.role == "judge":
            return {"verdicts": []}  # nothing from the judge: the rules decide every sentence
        return None

    model = TestModel(function=respond)
    gateway = Gateway(config, ledger, backend=model)
    draft = Draft(id="d-r", story_key="korvex", template="brief", writer_model="m", method="llm", article=article)
    outcome = asyncio.run(check_draft(draft, pack, spec, config=config, gateway=gateway, reviser=revise_draft))

    (request,) = [r for r in model.requests if r.role == "reviser"]
    system = next(m["content"] for m in request.messages if m["role"] == "system")
    user = next(m["content"] for m in request.messages if m["role"] == "user")
    assert '"off_story"' in system and '"unresolved_reference"' in system and "Separately," in system
    assert 'verdict="off_story" source="4"' in user and "story: supported only by background source [4]" in user
    assert outcome.revised and outcome.report.totals["off_story"] == 0
    assert story_labels(outcome.report) == []
