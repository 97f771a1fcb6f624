"""Fact-checker agent: claims, evidence, the batched judge, rules that override it, the revise loop, the stage."""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import select

from agents.fact_checker import (
    EvidenceIndex,
    JudgeFinding,
    check_article,
    check_claims_with_model,
    check_draft,
    check_drafts,
    measure_revision,
    render_draft,
    settle,
    sources_from_pack,
)
from pipeline import schema
from pipeline.config import Config, parse_config
from pipeline.drafting import save_draft
from pipeline.ledger import Ledger
from pipeline.llm import Gateway
from pipeline.models import Article, Draft, DraftState, FactCheckReport, Insight, Paragraph, ResearchPack, SourceDoc
from pipeline.templates import source_refs, validate_article
from pipeline.testing import TestModel

T = datetime(2025, 3, 14, 9, 30, tzinfo=timezone.utc)

COINWIRE = (
    "Hackers drained $48 million from Lumen Exchange on Thursday, the company said. "
    "The exchange halted all withdrawals while it investigates the breach. "
    "Chief executive Mara Ivanova said every customer would be made whole."
)
LEDGERLINE = (
    "Security firm Hexagate traced roughly 11,400 ETH to wallets controlled by the attacker. "
    "Tether said it had frozen about $9 million of the stolen USDT. "
    "Lumen's native token, LUM, fell 23% after the announcement."
)

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
max_paragraphs = 5
min_words = 5
max_words = 120
[insights]
min_count = 0
max_count = 4
max_words = 40
[selection]
default = true
"""


def sources() -> list[SourceDoc]:
    return [
        SourceDoc(n=1, item_id="i1", title="Lumen Exchange drained of $48 million", outlet="CoinWire", published=T,
                  url="https://coinwire.example/news/lumen-hack", text=COINWIRE),
        SourceDoc(n=2, item_id="i2", title="Hexagate traces Lumen funds", outlet="LedgerLine", published=T,
                  url="https://ledgerline.example/lumen-exploit", text=LEDGERLINE),
    ]


def pack() -> ResearchPack:
    return ResearchPack(story_key="story-lumen", sources=sources(), budget_tokens=4000, used_tokens=500)


def article(lead_amount: str = "$48 million", extra_body: str = "") -> Article:
    art = Article(
        headline="Lumen Exchange drained of $48 million",
        lead=f"Hackers drained {lead_amount} from Lumen Exchange on Thursday, the company said [1].",
        body=[
            Paragraph(text="The exchange halted all withdrawals while it investigates the breach. "
                           "Chief executive Mara Ivanova said every customer would be made whole." + extra_body, citations=[1]),
            Paragraph(text="Security firm Hexagate traced roughly 11,400 ETH to wallets controlled by the attacker. "
                           "Tether said it had frozen about $9 million of the stolen USDT.", citations=[2]),
        ],
        insights=[Insight(text="Lumen's native token, LUM, fell 23% after the announcement.", citations=[2])],
        sources=[],
    )
    return art.model_copy(update={"sources": source_refs(art, sources())})


def make_draft(art: Article, draft_id: str = "d-1", story_key: str = "story-lumen", state=DraftState.drafted) -> Draft:
    return Draft(id=draft_id, story_key=story_key, template="brief", writer_model="test", method="llm", article=art, state=state)


@pytest.fixture
def templates_dir(tmp_path) -> Path:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "brief.toml").write_text(BRIEF_TEMPLATE, encoding="utf-8")
    return folder


def make_config(tmp_path: Path, templates_dir: Path, **factcheck) -> Config:
    return parse_config({"newsroom": {"templates_dir": str(templates_dir)}, "factcheck": factcheck}, root=tmp_path)


@pytest.fixture
def ledger(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    yield ledger
    ledger.close()


@pytest.fixture
def spec(templates_dir):
    from pipeline.templates import load_templates

    return load_templates(templates_dir)["brief"]


# --- a scripted model: claims echo the sentences, the judge reads the evidence it was sent ------------------

CLAIM_RE = re.compile(r'<claim id="([^"]+)">\n(.*?)\n</claim>', re.S)
EVIDENCE_RE = re.compile(r'<evidence claim="([^"]+)" source="(\d+)"[^>]*>\n(.*?)\n</evidence>', re.S)
SENTENCE_RE = re.compile(r'<sentence id="([^"]+)" section="[^"]+">(.*?)</sentence>', re.S)


def user_text(request) -> str:
    return next(m["content"] for m in request.messages if m["role"] == "user")


def judge_claims_in(request) -> list[tuple[str, str]]:
    return CLAIM_RE.findall(user_text(request))


def evidence_in(request) -> dict[str, list[tuple[int, str]]]:
    out: dict[str, list[tuple[int, str]]] = {}
    for claim_id, n, text in EVIDENCE_RE.findall(user_text(request)):
        out.setdefault(claim_id, []).append((int(n), text))
    return out


def honest_verdict(claim_id: str, text: str, evidence: dict) -> dict:
    """Supported, quoting the claim itself, when a candidate passage holds it word for word."""
    quote = text.rstrip(".")
    for n, passage in evidence.get(claim_id, []):
        if quote in passage:
            return {"claim_id": claim_id, "verdict": "supported", "source_n": n, "quote": quote}
    return {"claim_id": claim_id, "verdict": "unverifiable", "source_n": None, "quote": ""}


def echo_claims(request) -> dict:
    return {"claims": [{"sentence_id": sid, "text": text} for sid, text in SENTENCE_RE.findall(user_text(request))]}


def scripted_model(judge=None, revised: Article | None = None) -> TestModel:
    """`judge(claims, evidence) -> list of findings`; the default judge is honest. `revised`: the reviser's answer."""

    def respond(request):
        if request.role == "reviser" and revised is not None:
            return revised.model_dump(mode="json")
        if request.role == "claims":
            return echo_claims(request)
        if request.role == "judge":
            claims, evidence = judge_claims_in(request), evidence_in(request)
            if judge is not None:
                return {"verdicts": judge(claims, evidence)}
            return {"verdicts": [honest_verdict(cid, text, evidence) for cid, text in claims]}
        return None

    return TestModel(function=respond)


def judge_requests(model: TestModel) -> list:
    return [r for r in model.requests if r.role == "judge"]


def run(coro):
    return asyncio.run(coro)


# --- the draft as sentences -------------------------------------------------------------------------------------


def test_rendered_sentences_point_into_the_text_and_carry_their_citations():
    rendered = render_draft(article())
    lead = next(s for s in rendered.sentences if s.section == "lead")
    assert rendered.text[lead.start:lead.end].endswith("said [1].")
    assert lead.text == "Hackers drained $48 million from Lumen Exchange on Thursday, the company said."
    assert lead.citations == (1,)
    assert [s.section for s in rendered.sentences] == ["headline", "lead", "body", "body", "body", "body", "insights"]
    for s in rendered.sentences:
        assert s.text.replace(" ", "") in rendered.text[s.start:s.end].replace(" ", "").replace("[1]", "")


# --- verbatim evidence ----------------------------------------------------------------------------------------


def test_a_judge_quote_that_is_not_in_the_source_makes_the_claim_unverifiable(ledger, tmp_path, templates_dir):
    def inventive(claims, evidence):
        return [{"claim_id": cid, "verdict": "supported", "source_n": 1,
                 "quote": "Lumen confirmed that regulators approved a full refund"} for cid, _ in claims]

    config = make_config(tmp_path, templates_dir)
    gateway = Gateway(config, ledger, backend=scripted_model(inventive))
    evidence = EvidenceIndex(sources_from_pack(sources()), config.factcheck.window_sentences)
    report = run(check_article(article(), evidence, settings=config.factcheck, gateway=gateway))
    assert report.method == "llm"
    assert {v.verdict for v in report.verdicts} == {"unverifiable"}
    assert all("refund" not in v.evidence for v in report.verdicts)


def test_a_verbatim_quote_counts_despite_curly_quotes_and_spacing():
    srcs = {s.n: s for s in sources_from_pack(sources())}
    finding = JudgeFinding(claim_id="c1", verdict="supported", source_n=2, quote="Lumen’s  native token, LUM, fell 23%")
    assert settle([finding], srcs).verdict == "supported"
    moved = finding.model_copy(update={"source_n": 1})  # the right words, the wrong source
    assert settle([moved], srcs).verdict == "unverifiable"


def test_supported_by_any_window_beats_a_contradiction_but_not_an_invalid_quote():
    srcs = {s.n: s for s in sources_from_pack(sources())}
    contra = JudgeFinding(claim_id="c1", verdict="contradicted", source_n=1, quote="Hackers drained $48 million")
    support = JudgeFinding(claim_id="c1", verdict="supported", source_n=2, quote="fell 23% after the announcement")
    fake = support.model_copy(update={"quote": "fell 32% after the announcement"})
    assert settle([contra, support], srcs).verdict == "supported"
    judged = settle([contra, fake], srcs)
    assert (judged.verdict, judged.source_n, judged.rejected_quotes) == ("contradicted", 1, 1)


# --- batched judging ------------------------------------------------------------------------------------------------


def test_claims_are_judged_in_batches_of_claims_per_call(ledger, tmp_path, templates_dir):
    config = make_config(tmp_path, templates_dir, claims_per_call=3)
    model = scripted_model()
    gateway = Gateway(config, ledger, backend=model)
    evidence = EvidenceIndex(sources_from_pack(sources()), config.factcheck.window_sentences)
    report = run(check_article(article(), evidence, settings=config.factcheck, gateway=gateway))
    n = len(report.verdicts)
    assert n == 7
    assert len(judge_requests(model)) == math.ceil(n / 3)
    assert all(len(judge_claims_in(r)) <= 3 for r in judge_requests(model))
    assert [v.verdict for v in report.verdicts] == ["supported"] * n
    assert all(v.method == "llm" and v.source_url for v in report.verdicts)
    assert report.totals == {"supported": 7, "contradicted": 0, "unverifiable": 0, "claims": 7}


def test_claims_the_judge_answers_under_the_wrong_id_are_retried_alone_and_never_dropped(ledger, tmp_path, templates_dir):
    """Batches answer the last claim under a made-up id; alone, every claim but one is answered."""
    never_answered = "Security firm Hexagate traced roughly 11,400 ETH to wallets controlled by the attacker."

    def sloppy(claims, evidence):
        out = []
        for i, (cid, text) in enumerate(claims):
            verdict = honest_verdict(cid, text, evidence)
            if text == never_answered or (len(claims) > 1 and i == len(claims) - 1):
                verdict["claim_id"] = f"x-{cid}"
            out.append(verdict)
        return out

    config = make_config(tmp_path, templates_dir, claims_per_call=3)
    model = scripted_model(sloppy)
    gateway = Gateway(config, ledger, backend=model)
    evidence = EvidenceIndex(sources_from_pack(sources()), config.factcheck.window_sentences)
    report = run(check_article(article(), evidence, settings=config.factcheck, gateway=gateway))

    batches = math.ceil(7 / 3)
    alone = [r for r in judge_requests(model) if len(judge_claims_in(r)) == 1]
    retried = {judge_claims_in(r)[0][1] for r in alone}
    # Batches c1-c3, c4-c6, c7: c3 and c6 (last of a full batch) and c5 (never answered) are retried alone;
    # the single-claim batch is not retried: it already was alone.
    assert len(judge_requests(model)) == batches + 3
    assert never_answered in retried
    assert len(report.verdicts) == 7
    by_text = {v.claim.text: v for v in report.verdicts}
    assert by_text[never_answered].method == "rules"       # fell back, marked
    assert by_text[never_answered].verdict == "supported"  # the rules find it verbatim in source 2
    by_id = {v.claim.id: v.claim.text for v in report.verdicts}
    assert by_id["c5"] == never_answered
    assert retried == {by_id["c3"], by_id["c5"], by_id["c6"], by_id["c7"]}  # c7: the one-claim third batch
    assert sum(v.method == "llm" for v in report.verdicts) == 6


def test_an_unusable_claims_reply_falls_back_to_whole_sentences(ledger, tmp_path, templates_dir):
    def respond(request):
        if request.role == "claims":
            return {"claims": [{"sentence_id": "s999", "text": "invented"}]}
        if request.role == "judge":
            evidence = evidence_in(request)
            return {"verdicts": [honest_verdict(cid, text, evidence) for cid, text in judge_claims_in(request)]}
        return None

    config = make_config(tmp_path, templates_dir)
    gateway = Gateway(config, ledger, backend=TestModel(function=respond))
    evidence = EvidenceIndex(sources_from_pack(sources()), config.factcheck.window_sentences)
    report = run(check_article(article(), evidence, settings=config.factcheck, gateway=gateway))
    assert [v.claim.text for v in report.verdicts] == [s.text for s in render_draft(article()).sentences]
    assert report.totals["supported"] == 7


# --- rules override the judge ------------------------------------------------------------------------------------


def test_rules_override_a_supported_verdict_on_a_changed_number(ledger, tmp_path, templates_dir):
    def lenient(claims, evidence):
        out = []
        for cid, _ in claims:
            n, passage = evidence[cid][0]
            out.append({"claim_id": cid, "verdict": "supported", "source_n": n, "quote": passage.split(". ")[0]})
        return out

    config = make_config(tmp_path, templates_dir)
    gateway = Gateway(config, ledger, backend=scripted_model(lenient))
    evidence = EvidenceIndex(sources_from_pack(sources()), config.factcheck.window_sentences)
    report = run(check_article(article("$52 million"), evidence, settings=config.factcheck, gateway=gateway))
    lead = next(v for v in report.verdicts if v.claim.section == "lead")
    assert lead.verdict == "contradicted"
    assert lead.method == "rules"
    assert [f.type for f in lead.failures] == ["number"]
    assert "$52 million" in lead.failures[0].detail and "$48 million" in lead.evidence
    assert lead.source_n == 1 and lead.source_url == "https://coinwire.example/news/lumen-hack"
    others = [v for v in report.verdicts if v is not lead]
    assert {v.verdict for v in others} == {"supported"}


def test_citation_url_and_confirmation_problems_are_rule_failures():
    art = article(extra_body=" Regulators have officially confirmed the breach, see https://rumours.example/lumen.")
    art = art.model_copy(update={"insights": [Insight(text="Lumen's native token, LUM, fell 23% after the announcement [7].", citations=[2])]})
    evidence = EvidenceIndex(sources_from_pack(sources()), 4)
    report = run(check_article(art, evidence))
    failures = {f.type: f for v in report.verdicts for f in v.failures}
    assert {"citation", "url", "confirmation"} <= set(failures)
    assert "[7]" in failures["citation"].detail and failures["url"].value == "https://rumours.example/lumen"
    insight = next(v for v in report.verdicts if v.claim.section == "insights")
    assert insight.verdict == "unverifiable"  # the words are in source 2, but it cites a source that does not exist


# --- the offline path ------------------------------------------------------------------------------------------------


def test_offline_every_sentence_is_a_claim_checked_by_rules_without_revision(tmp_path, templates_dir, spec):
    config = make_config(tmp_path, templates_dir)
    calls = []

    async def reviser(*args):
        calls.append(args)
        return article()

    outcome = run(check_draft(make_draft(article("$52 million")), pack(), spec, config=config, gateway=None, reviser=reviser))
    report = outcome.report
    assert report.method == "rules" and {v.method for v in report.verdicts} == {"rules"}
    assert len(report.verdicts) == len(render_draft(article()).sentences)
    assert report.totals["contradicted"] == 1 and report.totals["supported"] == 6
    assert not calls and report.revisions == [] and not outcome.revised


def test_embedding_retrieval_is_used_offline_when_given():
    seen = []

    def embed(texts):
        import numpy as np

        seen.append(len(texts))
        return np.ones((len(texts), 8), dtype=np.float32)

    evidence = EvidenceIndex(sources_from_pack(sources()), 4, embed=embed)
    report = run(check_article(article(), evidence))
    assert report.method == "rules" and report.totals["supported"] == 7
    assert seen and sum(seen) >= len(evidence.index.windows)  # windows and claims were embedded in batches
    assert len(seen) <= 3


# --- the revise loop ----------------------------------------------------------------------------------------------------


@dataclass
class ScriptedReviser:
    """Stands in for agents.writer.revise_draft: `edit(article, round) -> article`."""

    edit: object
    calls: list = field(default_factory=list)

    async def __call__(self, draft, flagged, pack, spec, gateway):
        self.calls.append([v.claim.text for v in flagged])
        return self.edit(draft.article, len(self.calls))


def test_the_revise_loop_stops_at_the_limit_and_keeps_the_flags(ledger, tmp_path, templates_dir, spec):
    def reword_only(art: Article, round_number: int) -> Article:
        old, new = ("Hackers", "Attackers") if round_number % 2 else ("Attackers", "Hackers")
        return art.model_copy(update={"lead": art.lead.replace(old, new)})

    config = make_config(tmp_path, templates_dir, revise_rounds=2)
    gateway = Gateway(config, ledger, backend=scripted_model())
    reviser = ScriptedReviser(reword_only)
    outcome = run(check_draft(make_draft(article("$52 million")), pack(), spec, config=config, gateway=gateway, reviser=reviser))

    assert len(reviser.calls) == 2
    assert all(any("$52 million" in text for text in flagged) for flagged in reviser.calls)
    assert [r.round for r in outcome.report.revisions] == [1, 2]
    assert all(r.spans_revised == 1 and r.chars_changed > 0 for r in outcome.report.revisions)
    assert "$52 million" in outcome.article.lead  # nothing deleted
    lead = next(v for v in outcome.report.verdicts if v.claim.section == "lead")
    assert lead.verdict == "contradicted" and [f.type for f in lead.failures] == ["number"]


def test_a_revision_that_fixes_the_number_makes_the_claim_supported(ledger, tmp_path, templates_dir, spec):
    def fix(art: Article, round_number: int) -> Article:
        return art.model_copy(update={"lead": art.lead.replace("$52 million", "$48 million")})

    config = make_config(tmp_path, templates_dir, revise_rounds=2)
    gateway = Gateway(config, ledger, backend=scripted_model())
    reviser = ScriptedReviser(fix)
    outcome = run(check_draft(make_draft(article("$52 million")), pack(), spec, config=config, gateway=gateway, reviser=reviser))

    assert len(reviser.calls) == 1  # nothing left to revise after round 1
    assert outcome.revised and outcome.article.lead == article().lead
    assert outcome.report.totals == {"supported": 7, "contradicted": 0, "unverifiable": 0, "claims": 7}
    (revision,) = outcome.report.revisions
    assert revision.spans_revised == 1
    assert revision.chars_changed == 2  # "52" -> "48"
    assert revision.change_ratio == round(2 / len(render_draft(article("$52 million")).text), 4)


def test_the_writers_reviser_is_asked_through_the_gateway_with_the_flags(ledger, tmp_path, templates_dir, spec):
    config = make_config(tmp_path, templates_dir)
    model = scripted_model(revised=article())
    gateway = Gateway(config, ledger, backend=model)
    outcome = run(check_draft(make_draft(article("$52 million")), pack(), spec, config=config, gateway=gateway))
    (request,) = [r for r in model.requests if r.role == "reviser"]
    assert "$52 million" in user_text(request) and 'verdict="contradicted"' in user_text(request)
    assert outcome.revised and outcome.article.lead == article().lead
    assert outcome.report.totals["supported"] == 7 and outcome.report.revisions[0].chars_changed == 2


def test_a_revision_that_breaks_the_template_is_not_kept(ledger, tmp_path, templates_dir, spec):
    def break_it(art: Article, round_number: int) -> Article:
        return art.model_copy(update={"lead": art.lead.replace("$52 million", "$48 million"), "body": []})

    config = make_config(tmp_path, templates_dir)
    gateway = Gateway(config, ledger, backend=scripted_model())
    outcome = run(check_draft(make_draft(article("$52 million")), pack(), spec, config=config, gateway=gateway,
                              reviser=ScriptedReviser(break_it)))
    assert not outcome.revised and "$52 million" in outcome.article.lead
    assert outcome.report.totals["contradicted"] == 1
    assert [(r.spans_revised, r.chars_changed) for r in outcome.report.revisions] == [(0, 0)]


def test_measure_revision_counts_changed_sentences_and_characters():
    before, after = article("$52 million"), article()
    assert measure_revision(before, before, 1).chars_changed == 0
    revision = measure_revision(before, after.model_copy(update={"insights": []}), 1)
    assert revision.spans_revised == 2
    assert revision.chars_changed == 2 + len("Lumen's native token, LUM, fell 23% after the announcement.")


# --- the stage ---------------------------------------------------------------------------------------------------------


class FakeRun:
    """What check_drafts uses of pipeline.runner.Run, over a real SQLite ledger."""

    def __init__(self, config, ledger, gateway=None, stop_after: int | None = None):
        self.config, self.ledger, self.store, self.gateway = config, ledger, None, gateway
        self.loop = asyncio.new_event_loop()
        self.coroutines = 0
        self.stop_after = stop_after

    @property
    def stop_requested(self) -> bool:
        return self.stop_after is not None and self.coroutines >= self.stop_after

    def run_async(self, coroutine):
        self.coroutines += 1
        return self.loop.run_until_complete(coroutine)

    def close(self):
        self.loop.close()


def draft_row(ledger: Ledger, draft_id: str):
    with ledger.engine.connect() as connection:
        return connection.execute(select(schema.drafts).where(schema.drafts.c.id == draft_id)).one()


def test_the_stage_checks_drafted_drafts_and_leaves_needs_attention_alone(ledger, tmp_path, templates_dir):
    config = make_config(tmp_path, templates_dir)
    save_draft(ledger, make_draft(article("$52 million"), "d-ok", "story-a"), pack())
    save_draft(ledger, make_draft(article(), "d-bad", "story-b", state=DraftState.needs_attention), pack())
    broken = make_draft(article(), "d-nosources", "story-c")
    save_draft(ledger, broken, pack())
    with ledger.begin() as connection:
        connection.execute(schema.drafts.update().where(schema.drafts.c.id == "d-nosources").values(research=None))

    fake = FakeRun(config, ledger, gateway=Gateway(config, ledger))  # no model configured: rules only
    try:
        report = check_drafts(fake)
    finally:
        fake.close()

    row = draft_row(ledger, "d-ok")
    assert row.state == DraftState.checked.value
    stored = FactCheckReport.model_validate(row.factcheck)
    assert stored.draft_id == "d-ok" and stored.method == "rules"
    assert stored.totals == {"supported": 6, "contradicted": 1, "unverifiable": 0, "claims": 7}
    flagged = stored.flagged()[0]
    assert flagged.source_n == 1 and flagged.source_url == "https://coinwire.example/news/lumen-hack"
    assert "$48 million" in flagged.evidence
    untouched = draft_row(ledger, "d-bad")
    assert untouched.state == DraftState.needs_attention.value and untouched.factcheck is None
    assert draft_row(ledger, "d-nosources").state == DraftState.drafted.value
    assert report.items_in == 2 and report.items_out == 1
    assert len(report.errors) == 1 and "d-nosources" in report.errors[0] and "research pack" in report.errors[0]
    assert report.notes["claims"] == 7 and report.notes["contradicted"] == 1 and report.notes["revised_rounds"] == 0


def test_the_stage_stores_a_revised_article_with_its_report(ledger, tmp_path, templates_dir, monkeypatch):
    async def fixing_reviser(draft, flagged, pack, spec, gateway):
        return draft.article.model_copy(update={"lead": draft.article.lead.replace("$52 million", "$48 million")})

    monkeypatch.setattr("agents.writer.revise_draft", fixing_reviser)
    config = make_config(tmp_path, templates_dir)
    save_draft(ledger, make_draft(article("$52 million"), "d-fix", "story-a"), pack())
    save_draft(ledger, make_draft(article(), "d-later", "story-b"), pack())
    fake = FakeRun(config, ledger, gateway=Gateway(config, ledger, backend=scripted_model()), stop_after=1)
    try:
        report = check_drafts(fake)
    finally:
        fake.close()

    row = draft_row(ledger, "d-fix")
    assert row.state == DraftState.checked.value
    assert Article.model_validate(row.article).lead == article().lead
    stored = FactCheckReport.model_validate(row.factcheck)
    assert stored.method == "llm" and stored.totals["supported"] == 7 and len(stored.revisions) == 1
    assert validate_article(Article.model_validate(row.article), load_brief(templates_dir), sources()) == []
    assert report.notes["revised_rounds"] == 1
    # The stop request is honoured between drafts.
    assert draft_row(ledger, "d-later").state == DraftState.drafted.value and report.items_out == 1


def load_brief(templates_dir):
    from pipeline.templates import load_templates

    return load_templates(templates_dir)["brief"]


# --- the benchmark entry point -------------------------------------------------------------------------------------------


def test_benchmark_cases_are_judged_in_batches_with_rules_on_top(ledger, tmp_path, templates_dir):
    config = make_config(tmp_path, templates_dir, claims_per_call=2)
    model = scripted_model()
    gateway = Gateway(config, ledger, backend=model)
    src = [{"id": "a1", "title": "t", "url": "https://x.example/a", "text": COINWIRE}]
    cases = [
        {"id": "faithful", "claim": "The exchange halted all withdrawals while it investigates the breach.", "sources": src},
        {"id": "number", "claim": "Hackers drained $52 million from Lumen Exchange on Thursday, the company said.", "sources": src},
        {"id": "broken", "claim": "Anything.", "sources": [{"id": "z"}]},
    ]
    rows = run(check_claims_with_model(cases, gateway))
    by_id = {r["id"]: r for r in rows}
    assert by_id["faithful"]["verdict"] == "supported" and by_id["faithful"]["source_id"] == "a1"
    assert by_id["number"]["verdict"] == "contradicted" and "$48 million" in by_id["number"]["evidence"]
    assert by_id["broken"] == {"id": "broken", "verdict": "unverifiable", "source_id": None, "evidence": ""}
    assert len(judge_requests(model)) == 1
