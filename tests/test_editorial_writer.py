"""Issue 13: drafts read like writing, and other stories never bleed in.

On the six demo drafts (the sample feeds through fetch, classify and draft)
and on small hand-built packs: background about another company is never
written as story fact, background about the story's own actors only appears
framed ("Earlier, …") in its own cited paragraph, no paragraph or insight opens
on a reference the reader has not seen, a figure is stated in one sentence
only, quotations stay whole and attributed, and the headline is the draft's
own. The counts come from bench/draft_metrics.py, which the editorial bench uses.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import select

from agents.writer import extractive_draft, render_writer_prompt
from pipeline.core import schema
from pipeline.core.config import load_config
from pipeline.cli.demo import prepare_workspace
from pipeline.text.entities import (
    dangles, first_reference, first_title, lean_reasons, person_names, person_titles, titled_people, is_framed, key_figures, organisation_names, quotes_balanced, second_reference,
    unattributed_quote,
)
from pipeline.core.models import Article, DraftState, Insight, ResearchPack, SourceDoc, Story
from pipeline.text.factrules import SourceIndex, verify_offline
from pipeline.flow.runner import Run
from pipeline.text.templates import load_templates, validate_article

ROOT = Path(__file__).resolve().parent.parent


def _load_metrics():
    # bench/ is not a package (and bench/pipeline.py would shadow ours on sys.path): load the file itself.
    spec = importlib.util.spec_from_file_location("draft_metrics", ROOT / "bench" / "draft_metrics.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["draft_metrics"] = module
    spec.loader.exec_module(module)
    return module


dm = _load_metrics()
TEMPLATES = load_templates(ROOT / "templates")
T = datetime(2026, 11, 16, 9, 0, tzinfo=timezone.utc)


# --- the demo's six drafts --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workspace = prepare_workspace(tmp_path_factory.mktemp("editorial") / "ws")
    config = load_config(workspace / "config.toml")
    run = Run(config, command="test")
    run.run_stages(["fetch", "classify", "draft"])
    run.finish()
    assert all(r.ok for r in run.reports), [r.errors for r in run.reports]
    inspect = Run(config, command="inspect")
    with inspect.ledger.engine.connect() as connection:
        rows = connection.execute(select(schema.drafts)).all()
    inspect.finish()
    return [(row, Article.model_validate(row.article), ResearchPack.model_validate(row.research)) for row in rows]


def test_the_six_demo_drafts_have_no_editorial_defects(demo):
    assert len(demo) == 6
    for row, article, pack in demo:
        assert row.state == "drafted", row.violations
        assert validate_article(article, TEMPLATES[row.template], pack.sources) == []
        metrics = dm.draft_metrics(article, pack)
        assert metrics == {
            "repeated_facts": 0, "dangling_openings": 0, "quote_splits": 0, "headline_copied": False,
            "off_story_sentences": 0, "unframed_background": 0, "full_name_repeated": 0,
            "short_name_first": 0,
        }, (article.headline, dm.explain(article, pack))


def test_demo_background_is_about_the_story_or_left_out(demo):
    """The sample's background candidates all cover other events (Arcspan for Korvex, Korvex for Tidepool,
    weekend altcoins for the ETF story): none reaches a pack, so none can be written as story fact."""
    for _, article, pack in demo:
        assert all(s.role == "story" for s in pack.sources), [(s.title, s.role) for s in pack.sources]
        text = " ".join([article.lead, *(p.text for p in article.body), *(i.text for i in article.insights)])
        assert "Arcspan" not in text and "bounty" not in text and "Weekend" not in text


def test_demo_figures_quotes_and_headlines(demo):
    for row, article, pack in demo:
        assert_each_figure_once(article)
        assert_quotes_whole(article)
        assert_own_headline(article, pack, TEMPLATES[row.template].headline.max_chars)
    tidepool = next(a for _, a, p in demo if any("Tidepool" in s.title for s in p.sources))
    text = " ".join(p.text for p in tidepool.body)
    assert "Korvex" not in text + " ".join(i.text for i in tidepool.insights)


# --- checks shared by the demo and the hand-built packs -------------------------------------------


def sentences_of(article: Article) -> list[str]:
    parts = [article.lead, *(p.text for p in article.body), *(i.text for i in article.insights)]
    return [s for part in parts for s in dm.quote_sentences(part)]


def assert_each_figure_once(article: Article) -> None:
    counts = Counter(f for s in sentences_of(article) for f in key_figures(s))
    repeated = {f: n for f, n in counts.items() if n > 1}
    assert not repeated, (repeated, sentences_of(article))


def assert_quotes_whole(article: Article) -> None:
    for part in [article.headline, article.lead, *(p.text for p in article.body), *(i.text for i in article.insights)]:
        assert quotes_balanced(part), part
        assert not unattributed_quote(dm.quote_sentences(part)[0]) if part else True, part


def assert_own_headline(article: Article, pack: ResearchPack, limit: int) -> None:
    assert 0 < len(article.headline) <= limit
    assert not dm.headline_copied(article, pack), (article.headline, [s.title for s in pack.sources])
    for source in pack.sources:
        assert article.headline.lower() != source.title.lower()


def assert_openings_stand(article: Article) -> None:
    """No paragraph or insight opens on a pronoun, connective or reference the lead has not introduced."""
    before = article.lead
    for part in [*(p.text for p in article.body), *(i.text for i in article.insights)]:
        opening = dm.quote_sentences(part)[0]
        assert not dangles(opening, before), opening
        before += " " + part


# --- hand-built packs ------------------------------------------------------------------------------

LEDGER_DAILY = """Brantwood, a Toronto-based crypto exchange with about 800,000 users, said hackers stole $27.4 million from its hot wallets on Monday, in the second-largest exchange theft this year. The exchange said it detected the transfers at 02:10 UTC. It halted withdrawals at 02:31 UTC.

"We will repay every customer in full," chief executive Nadia Ferreira said in a statement. "Our insurance fund holds $60 million." She added that cold storage, which holds 91% of customer assets, was untouched.

However, the company did not say how the attackers got in. Security firm Quarry Labs, which Brantwood hired to investigate, said the thieves used a compromised signer of a 3-of-5 multisignature wallet. Ferreira said withdrawals should resume within 48 hours."""

COIN_POST = """Hackers took $27.4 million from Toronto exchange Brantwood on Monday, the company said. Brantwood paused withdrawals at 02:31 UTC after spotting the transfers at 02:10 UTC.

Quarry Labs analyst Ravi Menon said the attacker controlled one signer of a 3-of-5 multisignature wallet. "The signer was compromised. Nothing in our client's code failed," Menon said. He said the stolen coins had been split across nine addresses.

Brantwood chief executive Nadia Ferreira said the exchange would repay customers from its $60 million insurance fund. The exchange expects to restore withdrawals within 48 hours. Regulators in Ontario said they were monitoring the situation and would review the exchange's custody practices."""

OTHER_COMPANY = """The attacker replayed 140 signed withdrawals on a second chain before the Pellucid bridge was paused. Pellucid said it would compensate users from its $12 million treasury and had hired Quarry Labs to review its contracts.

It has offered the attacker a 10% bounty in exchange for returning the funds. The team said the bridge would reopen after a new audit."""

SAME_COMPANY = """Brantwood said it would publish monthly proof-of-reserves reports, prepared by an outside auditor, starting in October. Brantwood set up its insurance fund in 2023 to cover customer losses from hacks and outages.

It holds the fund in a segregated account at a Canadian bank."""


def source(n: int, title: str, text: str, role: str = "story", when: datetime = T, outlet: str = "ledger-daily") -> SourceDoc:
    return SourceDoc(n=n, item_id=f"i{n}", title=title, outlet=outlet, published=when, url=f"https://news.example/{n}", text=text, role=role)


def story_sources() -> list[SourceDoc]:
    return [
        source(1, "Brantwood exchange loses $27.4 million in hot-wallet hack", LEDGER_DAILY),
        source(2, "Hackers take $27.4 million from Brantwood; withdrawals paused", COIN_POST, outlet="coin-post"),
    ]


def other_company(n: int = 3) -> SourceDoc:
    return source(n, "Pellucid bridge loses $5.1 million to replay attack", OTHER_COMPANY, "background",
                  datetime(2026, 11, 19, tzinfo=timezone.utc), "defi-daily")


def same_company(n: int = 4) -> SourceDoc:
    return source(n, "Brantwood to publish monthly proof-of-reserves reports", SAME_COMPANY, "background",
                  datetime(2026, 9, 20, tzinfo=timezone.utc), "ledger-daily")


def story_for(sources: list[SourceDoc]) -> Story:
    own = [s for s in sources if s.role == "story"]
    return Story(key="story-brantwood", title=own[0].title, item_ids=[s.item_id for s in own], sources=sorted({s.outlet for s in own}),
                 topics=["security"], score=0.9, first_published=T, last_published=T)


def draft_of(sources: list[SourceDoc], template: str = "news"):
    pack = ResearchPack(story_key="story-brantwood", sources=sources, budget_tokens=6000, used_tokens=1500)
    return extractive_draft(story_for(sources), pack, TEMPLATES[template]), pack


def every_part(article: Article) -> list[tuple[str, list[int]]]:
    return [(p.text, p.citations) for p in article.body] + [(i.text, i.citations) for i in article.insights]


def test_background_about_another_company_never_appears_as_story_fact():
    sources = [*story_sources(), other_company()]
    draft, pack = draft_of(sources)
    assert draft.state == DraftState.drafted, draft.violations
    article = draft.article
    for text, citations in every_part(article):
        assert 3 not in citations, text
    written = " ".join([article.headline, article.lead, *(t for t, _ in every_part(article))])
    assert "Pellucid" not in written and "bounty" not in written and "140" not in written
    assert dm.off_story_sentences(article, pack) == 0 and dm.unframed_background_sentences(article, pack) == 0
    # The model is told the same: the source is labelled as another event, not to be used.
    prompt = render_writer_prompt(story_for(sources), pack, TEMPLATES["news"]).user
    block = re.search(r'<source n="3" role="background">\n(.*?)</source>', prompt, re.S).group(1)
    assert block.startswith("About: Pellucid") and "different event" in block and "not this story's" in block


def test_background_about_the_story_is_framed_in_its_own_cited_paragraph():
    sources = [*story_sources(), same_company(3)]
    draft, pack = draft_of(sources)
    article = draft.article
    background = [(text, citations) for text, citations in every_part(article) if 3 in citations]
    assert background, [t for t, _ in every_part(article)]
    for text, citations in background:
        assert citations == [3], "background is cited on its own, never fused with the story's sources"
        assert text.startswith("Earlier, Brantwood"), text  # published before the story: "Earlier"
        for sentence in dm.quote_sentences(text):
            assert is_framed(sentence) or "Brantwood" in sentence, sentence
            assert not re.match(r"(It|They|The company|The exchange)\b", sentence), sentence
    assert "segregated account" not in " ".join(t for t, _ in every_part(article))  # "It holds the fund …" leans on the story's subject
    assert dm.off_story_sentences(article, pack) == 0 and dm.unframed_background_sentences(article, pack) == 0
    prompt = render_writer_prompt(story_for(sources), pack, TEMPLATES["news"]).user
    block = re.search(r'<source n="3" role="background">\n(.*?)</source>', prompt, re.S).group(1)
    assert block.startswith("About: Brantwood") and "not this story's event" in block and "Earlier" in block


def test_a_pronoun_or_connective_never_opens_a_paragraph_or_insight():
    draft, pack = draft_of(story_sources())
    assert draft.state == DraftState.drafted, draft.violations
    article = draft.article
    assert_openings_stand(article)
    for text, _ in every_part(article):
        assert not re.match(r"[\"“]?(It|He|She|They|However|This)\b", text), text
    assert dm.dangling_openings(article, pack) == 0
    # "It halted withdrawals at 02:31 UTC." only ever follows the sentence that names the exchange.
    for text, _ in every_part(article):
        if "It halted" in text:
            assert "The exchange said it detected the transfers at 02:10 UTC. It halted" in text


@pytest.mark.parametrize("text, leans", [
    ("Several have also sold part of their monthly output to cover costs.", True),   # several what?
    ("Many of them have left the market since.", True),
    ("Solvers then compete to fill the order.", True),                              # after which step?
    ("Critics argue that it moves activity to a few professional firms.", True),     # what is "it"?
    ("Critics say that makes the funds less useful in lending protocols.", True),
    ("Since then, prices have fallen by half.", True),
    ("Some users objected in the governance forum.", False),
    ("Korvex said it had notified the police in Portugal.", False),                 # a named subject is "it"
    ("Critics say that the rule is too strict.", False),
    ("Volume rose 22% compared with the same period in October.", False),           # the period is said
    ("Volume rose 22% over the same period.", True),
])
def test_openings_that_point_back(text, leans):
    assert bool(lean_reasons(text)) is leans


def test_a_surname_doing_what_people_do_in_news_copy_is_a_persons():
    texts = ['"One click is enough," said Elif Kaya, threat lead at Quartzline.', "Kaya advised users to revoke approvals."]
    assert person_names(texts) == {"Kaya": "Elif Kaya"}  # so "Kaya advised …" never opens a paragraph before her name


def test_a_sentence_that_leans_on_the_one_before_stays_with_it():
    """"Public miners have responded … Several have also sold …": the pair is one body paragraph, never the first
    taken as an insight and the second left to open a paragraph on "Several"."""
    text = (
        "Bitcoin's mining difficulty rose 3.2% at Tuesday's adjustment to a record, as more efficient machines "
        "joined the network.\n\n"
        "The adjustment, which happens every 2,016 blocks, keeps blocks arriving about every ten minutes. A higher "
        "difficulty means miners must do more work to earn the same reward.\n\n"
        '"Difficulty keeps rising while the price goes sideways," said Lena Brooks, an analyst at Minehaus. '
        '"That squeezes anyone running older machines."\n\n'
        "Public miners have responded by moving to cheaper power and by retiring machines older than three years. "
        "Several have also sold part of their monthly output to cover costs, according to company reports.\n\n"
        "The next adjustment is expected in mid-December. Brooks said another rise was likely as new orders arrive."
    )
    draft, _ = draft_of([source(1, "Mining difficulty at record", text)])
    parts = [t for t, _ in every_part(draft.article)]
    assert not any(t.startswith("Several") for t in parts), parts
    together = [t for t in parts if "Several have also sold" in t]
    assert not together or together[0].startswith("Public miners have responded"), parts


def test_the_same_figure_never_appears_in_two_sentences():
    for sources in ([*story_sources(), other_company(), same_company()], story_sources(), story_sources()[::-1]):
        draft, pack = draft_of(sources)
        assert draft.state == DraftState.drafted, draft.violations
        assert_each_figure_once(draft.article)
        assert dm.repeated_facts(draft.article, pack) == 0, dm.repeated_fact_pairs(draft.article, pack)


def test_the_headline_is_the_drafts_own():
    draft, pack = draft_of(story_sources())
    assert_own_headline(draft.article, pack, TEMPLATES["news"].headline.max_chars)
    assert draft.article.headline == "Brantwood says hackers stole $27.4 million from its hot wallets"  # subject, verb, key number
    # Even when one outlet's title is the lead's own words, the draft does not reuse it.
    copied = [source(1, "Brantwood says hackers stole $27.4 million from its hot wallets", LEDGER_DAILY), story_sources()[1]]
    draft, pack = draft_of(copied)
    assert_own_headline(draft.article, pack, TEMPLATES["news"].headline.max_chars)


def test_quotes_stay_whole_and_attributed():
    draft, pack = draft_of(story_sources())
    article = draft.article
    assert_quotes_whole(article)
    assert dm.quote_splits(article) == 0
    written = " ".join(t for t, _ in every_part(article))
    if "Nothing in our client's code failed" in written:  # a quotation over two sentences travels whole with its speaker
        assert re.search(r'"The signer was compromised\. Nothing in our client\'s code failed," (Ravi )?Menon said\.', written)
    if "Our insurance fund holds" in written:  # the speaker's second quoted sentence follows the first
        assert 'Nadia Ferreira said in a statement. "Our insurance fund holds $60 million."' in written


# --- the metrics themselves --------------------------------------------------------------------------


def test_metrics_count_the_defects_issue_13_describes():
    """A stitched draft with the issue's defects, counted one by one."""
    sources = [*story_sources(), other_company()]
    pack = ResearchPack(story_key="s", sources=sources, budget_tokens=1, used_tokens=1)
    from pipeline.core.models import Insight, Paragraph

    stitched = Article(
        headline="Brantwood exchange loses $27.4 million in hot-wallet hack",
        lead="Brantwood said hackers stole $27.4 million from its hot wallets on Monday.",
        body=[
            Paragraph(text="However, the company did not say how the attackers got in.", citations=[1]),
            Paragraph(text="Hackers took $27.4 million from Toronto exchange Brantwood on Monday, the company said.", citations=[2]),
            Paragraph(text='"Nothing in our client\'s code failed." Menon said the coins were split.', citations=[2]),
            Paragraph(text="It has offered the attacker a 10% bounty in exchange for returning the funds.", citations=[3]),
        ],
        insights=[Insight(text="Pellucid said it would compensate users from its $12 million treasury.", citations=[3])],
        sources=[],
    )
    metrics = dm.draft_metrics(stitched, pack)
    assert metrics["headline_copied"] is True
    assert metrics["repeated_facts"] == 1          # $27.4 million twice
    assert metrics["dangling_openings"] >= 3       # "However", "It has offered", a bare quote (and Menon before his name)
    assert metrics["quote_splits"] == 1            # the bare quotation with no speaker
    assert metrics["off_story_sentences"] == 2     # both Pellucid sentences, unframed
    framed = stitched.model_copy(update={"insights": [Insight(text="Separately, Pellucid said it would compensate users.", citations=[3])]})
    assert dm.off_story_sentences(framed, pack) == 1  # the framed one no longer counts


def test_a_person_named_in_full_is_called_by_surname_after_that():
    """Second reference, as an editor writes it: the surname, without the title that came with the full name."""
    people = {"Coleman": "Harriet Coleman", "Raman": "Priya Raman", "Okafor": "Dev Okafor"}
    named = "U.S. District Judge Harriet Coleman ruled on Friday. Vantor chief executive Priya Raman and Dev Okafor spoke."
    cases = {
        "In a 64-page opinion, U.S. District Judge Harriet Coleman said the buyers had no claim.":
            "In a 64-page opinion, Coleman said the buyers had no claim.",
        "Vantor Labs chief executive Priya Raman promised a full audit.": "Raman promised a full audit.",
        "Lattice's chief executive Priya Raman said so on Friday Priya Raman.": "Raman said so on Friday Raman.",
        "Halvane analyst Dev Okafor told Satoshi Wire.": "Okafor told Satoshi Wire.",
        "The FDMC is reviewing the decision, Okafor said.": "The FDMC is reviewing the decision, Okafor said.",
    }
    for text, expected in cases.items():
        assert second_reference(text, people, named) == expected
    # Not named yet, or not someone the sources call by surname: left as written.
    first = "U.S. District Judge Harriet Coleman ruled on Friday."
    assert second_reference(first, people, "") == first
    assert second_reference("Commissioner Robert Aldine dissented.", people, "Robert Aldine") == "Commissioner Robert Aldine dissented."
    article = Article(headline="Judge rules", lead=first, body=[], sources=[],
                      insights=[Insight(text="U.S. District Judge Harriet Coleman also declined a ban.", citations=[1])])
    pack = [source(1, "Ruling", f"{first} Coleman said the buyers had no claim. Coleman declined a ban.")]
    assert dm.full_name_repeated(article, pack) == 1


def test_a_person_named_with_a_role_is_a_person_even_if_never_called_by_surname():
    texts = ['"Pegs need buyers," said Dario Vence, Calloway\'s founder.', "Calloway founder Dario Vence said so again.",
             "Its issuer, Norrland Digital, said its banking partner froze an account.",
             "Orrin Capital partner Wen Li said payments matter.", "Trading starts on Atlas Exchange on Monday."]
    assert titled_people(texts) == {"Vence": "Dario Vence", "Li": "Wen Li"}
    # In a draft: the second time, the surname.
    first = '"Pegs need buyers," said Dario Vence, Calloway\'s founder.'
    draft, _ = draft_of([source(1, "Calloway", "\n\n".join([
        "Calloway Finance's DLRX stablecoin fell to $0.87 on Thursday after sellers overwhelmed its largest pool.",
        first, "Liquidity pools that pair DLRX with other coins grew lopsided as traders sold.",
        "One lending protocol paused new DLRX deposits while the coin traded below its peg.",
        '"The mechanism is working as designed," Calloway founder Dario Vence said, adding that arbitrage would help.',
        "Data from the exchange showed the DLRX pool had swung to 91% DLRX by the afternoon.",
    ]))])
    text = " ".join([draft.article.lead, *(p.text for p in draft.article.body), *(i.text for i in draft.article.insights)])
    assert text.count("Dario Vence") == 1 and "Vence said" in text, text


def test_a_persons_first_mention_carries_the_title_the_source_gives_nearby():
    texts = ["Commissioner Robert Aldine voted against the fund.", "Chief executive Ravi Tandon said balances were safe."]
    titles = person_titles(texts, {"Aldine": "Robert Aldine", "Tandon": "Ravi Tandon"})
    assert titles == {"Robert Aldine": "Commissioner", "Ravi Tandon": "chief executive"}
    quote = '"Slashing is a risk," Robert Aldine wrote in his dissent.'
    assert first_title(quote, titles, "", texts[0]) == '"Slashing is a risk," Commissioner Robert Aldine wrote in his dissent.'
    assert first_title("Ravi Tandon said so.", titles, "", texts[1]) == "Chief executive Ravi Tandon said so."
    # Not where the checker's evidence is, already named, or given a role right there: as written.
    assert first_title(quote, titles, "", "The fund lists on Monday.") == quote
    assert first_title(quote, titles, "Robert Aldine dissented.", texts[0]) == quote
    appositive = "The exchange's chief executive, Ravi Tandon, said so."
    assert first_title(appositive, titles, "", texts[1]) == appositive


def test_every_reference_the_writer_edits_is_still_supported_by_its_source():
    text = "\n\n".join([
        "The Federal Digital Markets Commission approved a spot fund holding the Corvid token on Wednesday in a 4-1 vote.",
        "Commissioner Robert Aldine voted against. In a written dissent he said trading was concentrated on a few venues.",
        '"Concentration is a risk most retail buyers will never see," Robert Aldine wrote in his dissent.',
        "The fund will charge an annual fee of 0.30% and list on Atlas Exchange on December 1, its sponsor said.",
        "Analysts expect steady inflows from advisers who cannot hold tokens directly.",
        "The Corvid token rose 6% after the decision, while trading volume doubled from the day before.",
    ])
    draft, pack = draft_of([source(1, "FDMC approves Corvid fund", text)])
    index = SourceIndex.build([("1", text)], window_size=4)
    for part in [draft.article.lead, *(p.text for p in draft.article.body), *(i.text for i in draft.article.insights)]:
        for sentence in dm.quote_sentences(re.sub(r"\s*\[\d+\]", "", part)):
            assert verify_offline(sentence, index).verdict == "supported", sentence


def test_an_organisation_first_called_by_its_short_name_gets_its_full_name():
    texts = ["Korvex hired Halvane Security, the firm investigating the breach, on Wednesday.",
             "Halvane said the attacker had a stolen key. Dev Okafor, a security analyst, agreed."]
    organisations = organisation_names(texts)
    assert organisations == {"Halvane": "Halvane Security"}  # "Dev Okafor" is a person: "okafor" is never lower case
    assert first_reference("Halvane said the attacker had a key.", organisations, "Korvex lost $48.2 million.") \
        == "Halvane Security said the attacker had a key."
    # Named in full already (or in the same text): the short name stays.
    assert first_reference("Halvane said so.", organisations, "Halvane Security investigated.") == "Halvane said so."
    assert first_reference("Halvane Security said Halvane would report.", organisations, "") \
        == "Halvane Security said Halvane would report."
    article = Article(headline="Korvex hack", lead="Halvane said the attacker had a stolen key.", body=[], insights=[],
                      sources=[])
    assert dm.short_name_first(article, [source(1, "Hack", " ".join(texts))]) == 1


HEADLINE_CASES = {
    # The lead's own sentence makes the headline, without the date that made it too long; never the explainer that
    # follows it in the source.
    "opening past its date": (
        "Tollgate, a payments network built on Ethereum, said on Monday that five independent companies will begin "
        "taking turns settling its payments from March, ending its reliance on one settlement operator.\n\n"
        "A settlement operator decides when payments on the network become final. Most networks still run one.\n\n"
        "Each of the five companies will settle payments for a rotating slot of eight hours, Tollgate said.",
        "Tollgate says five independent companies will begin taking turns settling its payments"),
    # "The X of the Y" defines itself: a source's opening that starts so is still its lead.
    "definite opening with its own complement": (
        "The public capacity of the Sparkline Network, a system for small payments, rose above 4,100 BTC for the "
        "first time this week after node operator Fernway opened 700 BTC of new channels.\n\n"
        "Sparkline lets users move bitcoin through channels that settle on the main chain only when they close.\n\n"
        "Fernway said the new channels connect it to the largest exchanges' nodes.",
        "Public capacity of the Sparkline Network rose above 4,100 BTC"),
    # Reported speech is back in the present: "said it would begin" -> "will begin".
    "reported future": (
        "Hollins Trust, a custody bank with about $1.9 trillion of assets, said on Tuesday it would begin holding "
        "ether for insurance clients from February.\n\nTwo insurers have signed up, the bank said.",
        "Hollins Trust will begin holding ether for insurance clients from February"),
    # A long trailing relative clause goes; the main clause stays whole instead of being cut mid-phrase.
    "relative clause": (
        "The Marrow Bay Monetary Authority has opened a regulatory sandbox that will let four commercial banks issue "
        "customer deposits as tokens on a shared, permissioned ledger for nine months.\n\n"
        "The authority said the trial would test settlement between banks outside business hours.",
        "Marrow Bay Monetary Authority has opened a regulatory sandbox"),
}


@pytest.mark.parametrize("case", sorted(HEADLINE_CASES))
def test_the_headline_is_the_leads_main_clause_whole(case):
    text, expected = HEADLINE_CASES[case]
    draft, _ = draft_of([source(1, "Wire copy", text)])
    assert draft.article.headline == expected


def test_a_participle_clause_in_the_headline_keeps_its_comma():
    """The lead sentence as a headline (the near-miss set's Pyra story): present tense, the clause with the vote kept
    after its comma rather than glued on ("…token turning down …")."""
    from agents.writer import _compress

    lead = ("The Federal Digital Markets Commission on Wednesday rejected a spot exchange-traded fund holding the Zello "
            "token, turning down an application from Marsh Funds in a 3-2 vote.")
    headline = _compress(lead, {"FDMC"}, {"ratio:3-2"}, {"ETF"})
    assert headline == "FDMC rejects a spot ETF holding the Zello token, turning down an application from Marsh Funds in 3-2 vote"


def test_metrics_read_the_outbox_markdown():
    markdown = """<!-- newsdesk-draft: d-1 -->

# Brantwood repays customers after \\$27.4 million theft

###### Story s · Template news

**Brantwood said hackers stole \\$27.4 million from its hot wallets on Monday.**

It halted withdrawals at 02:31 UTC. [1]

Ravi Menon said the attacker controlled one signer. [2]

## Insights

- The exchange expects to restore withdrawals within 48 hours. [2]

## Sources

1. [x](https://news.example/1) — ledger-daily
"""
    view = dm.view(markdown)
    assert view.headline == "Brantwood repays customers after $27.4 million theft"
    assert [p.section for p in view.parts] == ["lead", "body", "body", "insight"]
    assert view.parts[1].citations == (1,)
    assert dm.dangling_opening_texts(markdown) == [  # no exchange has been mentioned before either
        "It halted withdrawals at 02:31 UTC.", "The exchange expects to restore withdrawals within 48 hours."]
