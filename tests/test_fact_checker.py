"""Fact-checker agent: one check call per draft (claims and verdicts), evidence, rules that override it, the revise
loop re-checked by the rules, the concurrent stage."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select

from agents.writer import revise_draft
from agents.fact_checker import (
    EvidenceIndex,
    JudgeFinding,
    JudgeStats,
    check_article,
    check_claims_with_model,
    check_draft,
    check_drafts,
    measure_revision,
    render_draft,
    settle,
    sources_from_pack,
)
from pipeline.core import schema
from pipeline.core.config import Config, parse_config
from pipeline.flow.drafting import save_draft
from pipeline.core.ledger import Ledger
from pipeline.services.llm import Gateway
from pipeline.core.models import Article, Draft, DraftState, FactCheckReport, Insight, Paragraph, ResearchPack, SourceDoc
from pipeline.text.templates import source_refs, validate_article
from pipeline.services.testing import TestModel

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
def spec(templates_dir):
    from pipeline.text.templates import load_templates

    return load_templates(templates_dir)["brief"]


# --- a scripted model: the check call answers each statement as one claim, from the evidence it was sent ---------

CLAIM_RE = re.compile(r'<claim id="([^"]+)">\n(.*?)\n</claim>', re.S)
EVIDENCE_RE = re.compile(r'<evidence claim="([^"]+)" source="(\d+)"[^>]*>\n(.*?)\n</evidence>', re.S)


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


def scripted_model(judge=None, revised: Article | None = None, corrections=None) -> TestModel:
    """`judge(statements, evidence) -> list of findings`, statements as (id, text); the default judge is honest and
    answers each statement as one claim (no "claim" field). `revised`: the reviser's answer. `corrections(statements)
    -> list of {"claim_id", "text"}`: the judge's corrected statements (none by default)."""

    def respond(request):
        if request.role == "reviser" and revised is not None:
            return revised.model_dump(mode="json")
        if request.role == "judge":
            claims, evidence = judge_claims_in(request), evidence_in(request)
            fixes = corrections(claims) if corrections is not None else []
            if judge is not None:
                return {"verdicts": judge(claims, evidence), "corrections": fixes}
            return {"verdicts": [honest_verdict(cid, text, evidence) for cid, text in claims], "corrections": fixes}
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


# --- one check call per draft ------------------------------------------------------------------------------------


def requests_statements(model: TestModel) -> list[list[str]]:
    """The statement ids of each judge request that opened a conversation (repair rounds excluded)."""
    return [[cid for cid, _ in judge_claims_in(r)] for r in judge_requests(model) if len(r.messages) == 2]


def test_a_draft_that_fits_is_checked_in_one_call_with_its_headline_as_context(ledger, tmp_path, templates_dir):
    config = make_config(tmp_path, templates_dir)
    model = scripted_model()
    gateway = Gateway(config, ledger, backend=model)
    evidence = EvidenceIndex(sources_from_pack(sources()), config.factcheck.window_sentences)
    report = run(check_article(article(), evidence, settings=config.factcheck, gateway=gateway))

    (request,) = model.requests  # no separate claims call, no batches of a fixed size
    assert request.role == "judge"
    assert [cid for cid, _ in judge_claims_in(request)] == ["s1", "s2", "s3", "s4", "s5", "s6", "s7"]
    assert "<context>Lumen Exchange drained of $48 million</context>" in user_text(request)
    assert [v.verdict for v in report.verdicts] == ["supported"] * 7
    assert all(v.method == "llm" and v.source_url for v in report.verdicts)
    assert report.totals == {"supported": 7, "contradicted": 0, "unverifiable": 0, "off_story": 0, "unresolved_reference": 0, "wrong_language": 0, "claims": 7}


def test_a_draft_too_large_for_the_window_is_split_by_tokens(ledger, tmp_path, templates_dir):
    """A window one token short of the whole draft: two calls, every sentence in exactly one, each call within the window."""
    from agents.fact_checker import call_budget
    from pipeline.core.tokens import count_messages

    config = make_config(tmp_path, templates_dir)
    whole = scripted_model()
    gateway = Gateway(config, ledger, backend=whole)
    evidence = EvidenceIndex(sources_from_pack(sources()), config.factcheck.window_sentences)
    one_call = run(check_article(article(), evidence, settings=config.factcheck, gateway=gateway))
    (request,) = whole.requests
    budget = call_budget(gateway, config.factcheck)
    schema_tokens = config.llm.context_window("gpt-4o-mini") - budget.limit
    needed = count_messages(request.messages, "gpt-4o-mini") + budget.reply_tokens(7) + schema_tokens

    small = make_config(tmp_path, templates_dir, max_context_tokens=needed - 1)
    split = scripted_model()
    gateway = Gateway(small, ledger, backend=split)
    report = run(check_article(article(), evidence, settings=small.factcheck, gateway=gateway))

    batches = requests_statements(split)
    assert len(split.requests) == 2 and len(batches) == 2
    assert [cid for batch in batches for cid in batch] == ["s1", "s2", "s3", "s4", "s5", "s6", "s7"]  # in order, none twice
    small_budget = call_budget(gateway, small.factcheck)
    for r, batch in zip(split.requests, batches):
        assert small_budget.fits(count_messages(r.messages, "gpt-4o-mini"), len(batch))
        assert r.max_tokens == small_budget.reply_tokens(len(batch))
    assert report.verdicts == one_call.verdicts


def test_a_sentence_becomes_atomic_claims_that_point_back_to_it_and_keep_its_figures(ledger, tmp_path, templates_dir):
    """The first reply invents a figure in a claim; the gateway's repair round gets it right."""
    lead = "Hackers drained $48 million from Lumen Exchange on Thursday, the company said."

    def respond(request):
        if request.role != "judge":
            return None
        evidence = evidence_in(request)
        verdicts = [honest_verdict(cid, text, evidence) for cid, text in judge_claims_in(request) if cid != "s2"]
        repaired = len(request.messages) > 2
        verdicts[1:1] = [
            {"claim_id": "s2", "claim": "Hackers drained $48 million from Lumen Exchange" if repaired else
             "Hackers drained $58 million from Lumen Exchange", "verdict": "supported", "source_n": 1,
             "quote": "Hackers drained $48 million from Lumen Exchange"},
            {"claim_id": "s2", "claim": "Lumen Exchange was drained on Thursday", "verdict": "supported", "source_n": 1,
             "quote": "Hackers drained $48 million from Lumen Exchange on Thursday"},
        ]
        return {"verdicts": verdicts}

    config = make_config(tmp_path, templates_dir)
    model = TestModel(function=respond)
    gateway = Gateway(config, ledger, backend=model)
    evidence = EvidenceIndex(sources_from_pack(sources()), config.factcheck.window_sentences)
    report = run(check_article(article(), evidence, settings=config.factcheck, gateway=gateway))

    _first, repair = judge_requests(model)
    assert "'$58 million', which its statement does not contain" in repair.messages[-1]["content"]
    rendered = render_draft(article())
    s2 = next(s for s in rendered.sentences if s.text == lead)
    from_lead = [v for v in report.verdicts if v.claim.start == s2.start]
    assert [v.claim.text for v in from_lead] == ["Hackers drained $48 million from Lumen Exchange", "Lumen Exchange was drained on Thursday"]
    assert all(v.claim.end == s2.end and v.claim.section == "lead" and v.verdict == "supported" for v in from_lead)
    assert report.totals == {"supported": 8, "contradicted": 0, "unverifiable": 0, "off_story": 0, "unresolved_reference": 0, "wrong_language": 0, "claims": 8}
    assert [v.claim.id for v in report.verdicts] == [f"c{i}" for i in range(1, 9)]


def test_statements_answered_under_the_wrong_id_are_retried_alone_and_never_dropped(ledger, tmp_path, templates_dir):
    """The whole-draft reply puts two sentences under made-up ids (and repeats it when asked to repair);
    alone, one of them is answered and the other never is, so the rules check it."""
    never_answered = "Security firm Hexagate traced roughly 11,400 ETH to wallets controlled by the attacker."
    lost_in_the_crowd = "Lumen's native token, LUM, fell 23% after the announcement."

    def sloppy(claims, evidence):
        out = []
        for cid, text in claims:
            verdict = honest_verdict(cid, text, evidence)
            if text == never_answered or (len(claims) > 1 and text == lost_in_the_crowd):
                verdict["claim_id"] = f"x-{cid}"
            out.append(verdict)
        return out

    config = make_config(tmp_path, templates_dir, max_calls_per_draft=10)  # room to ask again (the default cap has none)
    model = scripted_model(sloppy)
    gateway = Gateway(config, ledger, backend=model)
    evidence = EvidenceIndex(sources_from_pack(sources()), config.factcheck.window_sentences)
    stats = JudgeStats()
    report = run(check_article(article(), evidence, settings=config.factcheck, gateway=gateway, stats=stats))

    # The draft (and its repair round), then each left-out sentence alone (the still-wrong one repaired once more).
    assert [len(judge_claims_in(r)) for r in judge_requests(model)] == [7, 7, 1, 1, 1]
    assert sorted(batch[0] for batch in requests_statements(model)[1:]) == ["s5", "s7"]
    assert (stats.calls, stats.retried_alone, stats.unanswered) == (3, 2, 1)
    assert len(report.verdicts) == 7
    by_text = {v.claim.text: v for v in report.verdicts}
    assert by_text[never_answered].method == "rules"       # fell back, marked
    assert by_text[never_answered].verdict == "supported"  # the rules find it verbatim in source 2
    assert by_text[lost_in_the_crowd].method == "llm"
    assert sum(v.method == "llm" for v in report.verdicts) == 6


def test_a_left_out_sentence_is_asked_again_only_when_it_holds_something_checkable(ledger, tmp_path, templates_dir):
    """s3 ("The exchange halted all withdrawals ...") has no figure, date, quotation or name; s5 has figures."""

    def skipping(claims, evidence):
        return [honest_verdict(cid, text, evidence) for cid, text in claims if len(claims) == 1 or cid not in ("s3", "s5")]

    config = make_config(tmp_path, templates_dir)
    model = scripted_model(skipping)
    gateway = Gateway(config, ledger, backend=model)
    evidence = EvidenceIndex(sources_from_pack(sources()), config.factcheck.window_sentences)
    report = run(check_article(article(), evidence, settings=config.factcheck, gateway=gateway))

    assert requests_statements(model) == [["s1", "s2", "s3", "s4", "s5", "s6", "s7"], ["s5"]]
    texts = [v.claim.text for v in report.verdicts]
    assert "The exchange halted all withdrawals while it investigates the breach." not in texts  # nothing the model could check
    assert len(texts) == 6 and all(v.method == "llm" and v.verdict == "supported" for v in report.verdicts)


def test_an_unusable_reply_is_asked_again_in_halves(ledger, tmp_path, templates_dir):
    """A reply cut off at the token limit: the draft is asked again in two halves, the halves answer."""
    from pipeline.services.llm import ModelReply

    def respond(request):
        if request.role != "judge":
            return None
        claims, evidence = judge_claims_in(request), evidence_in(request)
        if len(claims) == 7:
            return ModelReply(content='{"verdicts": [', finish_reason="length")
        return {"verdicts": [honest_verdict(cid, text, evidence) for cid, text in claims]}

    config = make_config(tmp_path, templates_dir, max_calls_per_draft=10)  # room to ask again (the default cap has none)
    model = TestModel(function=respond)
    gateway = Gateway(config, ledger, backend=model)
    evidence = EvidenceIndex(sources_from_pack(sources()), config.factcheck.window_sentences)
    stats = JudgeStats()
    report = run(check_article(article(), evidence, settings=config.factcheck, gateway=gateway, stats=stats))
    assert requests_statements(model) == [["s1", "s2", "s3", "s4", "s5", "s6", "s7"], ["s1", "s2", "s3"], ["s4", "s5", "s6", "s7"]]
    assert stats.split == 1 and report.totals["supported"] == 7 and {v.method for v in report.verdicts} == {"llm"}


def test_a_provider_outage_leaves_every_sentence_to_the_rules(ledger, tmp_path, templates_dir):
    from pipeline.services.llm import RequestRejected

    config = make_config(tmp_path, templates_dir)
    model = TestModel(function=lambda request: RequestRejected("400 bad request") if request.role == "judge" else None)
    gateway = Gateway(config, ledger, backend=model)
    evidence = EvidenceIndex(sources_from_pack(sources()), config.factcheck.window_sentences)
    report = run(check_article(article("$52 million"), evidence, settings=config.factcheck, gateway=gateway))
    assert len(model.requests) == 1  # no retries of a call the provider refused
    assert len(report.verdicts) == 7 and {v.method for v in report.verdicts} == {"rules"}
    assert report.totals["contradicted"] == 1 and report.totals["supported"] == 6


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
    model = scripted_model()
    gateway = Gateway(config, ledger, backend=model)
    reviser = ScriptedReviser(reword_only)
    outcome = run(check_draft(make_draft(article("$52 million")), pack(), spec, config=config, gateway=gateway, reviser=reviser))

    assert len(reviser.calls) == 2
    assert all(any("$52 million" in text for text in flagged) for flagged in reviser.calls)
    assert len(judge_requests(model)) == 1  # revised sentences are checked again by the rules, not by another call
    assert [r.round for r in outcome.report.revisions] == [1, 2]
    assert all(r.spans_revised == 1 and r.chars_changed > 0 for r in outcome.report.revisions)
    assert "$52 million" in outcome.article.lead  # nothing deleted
    lead = next(v for v in outcome.report.verdicts if v.claim.section == "lead")
    assert lead.verdict == "contradicted" and [f.type for f in lead.failures] == ["number"]
    assert lead.claim.text.startswith("Hackers drained $52 million")


def test_by_default_a_draft_gets_one_revision_at_most(ledger, tmp_path, templates_dir, spec):
    def reword_only(art: Article, round_number: int) -> Article:
        return art.model_copy(update={"lead": art.lead.replace("Hackers", "Attackers")})

    config = make_config(tmp_path, templates_dir)
    model = scripted_model()
    reviser = ScriptedReviser(reword_only)
    outcome = run(check_draft(make_draft(article("$52 million")), pack(), spec, config=config,
                              gateway=Gateway(config, ledger, backend=model), reviser=reviser))
    assert len(reviser.calls) == 1 and len(model.requests) == 1
    assert outcome.revised and outcome.article.lead.startswith("Attackers drained $52 million")
    assert outcome.report.totals["contradicted"] == 1  # still wrong, still flagged


def test_a_revision_that_fixes_the_number_is_rechecked_by_the_rules_and_becomes_supported(ledger, tmp_path, templates_dir, spec):
    def fix(art: Article, round_number: int) -> Article:
        return art.model_copy(update={"lead": art.lead.replace("$52 million", "$48 million")})

    config = make_config(tmp_path, templates_dir, revise_rounds=2)
    model = scripted_model()
    gateway = Gateway(config, ledger, backend=model)
    reviser = ScriptedReviser(fix)
    outcome = run(check_draft(make_draft(article("$52 million")), pack(), spec, config=config, gateway=gateway, reviser=reviser))

    assert len(reviser.calls) == 1  # nothing left to revise after round 1
    assert len(judge_requests(model)) == 1
    assert outcome.revised and outcome.article.lead == article().lead
    assert outcome.report.totals == {"supported": 7, "contradicted": 0, "unverifiable": 0, "off_story": 0, "unresolved_reference": 0, "wrong_language": 0, "claims": 7}
    lead = next(v for v in outcome.report.verdicts if v.claim.section == "lead")
    assert lead.method == "rules" and lead.source_n == 1 and "$48 million" in lead.evidence
    lead_span = next(s for s in render_draft(article()).sentences if s.section == "lead")
    assert (lead.claim.start, lead.claim.end) == (lead_span.start, lead_span.end)
    # The sentences the revision left alone keep the model's verdicts.
    assert sum(v.method == "llm" for v in outcome.report.verdicts) == 6
    (revision,) = outcome.report.revisions
    assert revision.spans_revised == 1
    assert revision.chars_changed == 2  # "52" -> "48"
    assert revision.change_ratio == round(2 / len(render_draft(article("$52 million")).text), 4)


def test_a_revised_sentence_the_rules_cannot_find_in_a_source_stays_flagged(ledger, tmp_path, templates_dir, spec):
    """New wording has no model verdict: it is accepted only when the rules find it supported."""
    def vague(art: Article, round_number: int) -> Article:
        return art.model_copy(update={"lead": "Hackers stole a fortune from the exchange, insiders whispered [1]."})

    config = make_config(tmp_path, templates_dir)
    model = scripted_model()
    outcome = run(check_draft(make_draft(article("$52 million")), pack(), spec, config=config,
                              gateway=Gateway(config, ledger, backend=model), reviser=ScriptedReviser(vague)))
    assert outcome.revised and len(model.requests) == 1
    lead = next(v for v in outcome.report.verdicts if v.claim.section == "lead")
    assert lead.claim.text == "Hackers stole a fortune from the exchange, insiders whispered."
    assert lead.verdict != "supported" and lead.method == "rules"
    assert outcome.report.flagged() == [lead]


def test_the_writers_reviser_is_asked_through_the_gateway_with_the_flags(ledger, tmp_path, templates_dir, spec):
    config = make_config(tmp_path, templates_dir)
    model = scripted_model(revised=article())
    gateway = Gateway(config, ledger, backend=model)
    outcome = run(check_draft(make_draft(article("$52 million")), pack(), spec, config=config, gateway=gateway,
                              reviser=revise_draft))
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


# --- the judge's own corrections --------------------------------------------------------------------------------------


def correcting(old: str, new: str):
    """The judge's corrections: every statement holding `old`, with `old` replaced by `new`."""
    return lambda claims: [{"claim_id": cid, "text": text.replace(old, new)} for cid, text in claims if old in text]


def test_a_judge_correction_the_rules_verify_fixes_the_draft_without_a_reviser_call(ledger, tmp_path, templates_dir, spec):
    config = make_config(tmp_path, templates_dir)
    model = scripted_model(corrections=correcting("$52 million", "$48 million"))
    reviser = ScriptedReviser(lambda art, _round: art)
    outcome = run(check_draft(make_draft(article("$52 million")), pack(), spec, config=config,
                              gateway=Gateway(config, ledger, backend=model), reviser=reviser))

    assert reviser.calls == [] and [r.role for r in model.requests] == ["judge"]
    assert outcome.revised and outcome.article.lead == article().lead  # the marker [1] stays at the sentence's end
    assert outcome.report.totals["supported"] == 7 and outcome.report.flagged() == []
    lead = next(v for v in outcome.report.verdicts if v.claim.section == "lead")
    assert lead.method == "rules" and "$48 million" in lead.evidence   # the new wording is the rules' to accept
    (revision,) = outcome.report.revisions
    assert (revision.by, revision.round, revision.spans_revised, revision.chars_changed) == ("judge", 0, 1, 2)
    assert outcome.stats.corrected == 1 and outcome.stats.requests == 1


def test_with_revision_off_the_judges_correction_is_not_applied_either(ledger, tmp_path, templates_dir, spec):
    """factcheck.revise_rounds = 0: the check reports, it never changes the draft."""
    config = make_config(tmp_path, templates_dir, revise_rounds=0)
    model = scripted_model(corrections=correcting("$52 million", "$48 million"))
    outcome = run(check_draft(make_draft(article("$52 million")), pack(), spec, config=config,
                              gateway=Gateway(config, ledger, backend=model), reviser=ScriptedReviser(lambda art, _r: art)))
    assert not outcome.revised and "$52 million" in outcome.article.lead and outcome.report.revisions == []
    assert outcome.report.totals["contradicted"] == 1


@pytest.mark.parametrize("bad, why", [
    ("Hackers drained $58 million from Lumen Exchange on Thursday, the company said.", "no source has the figure"),
    ("Lumen's native token, LUM, fell 23% after the announcement.", "another statement, not a correction"),
    ("Hackers drained $48 million [2] from Lumen Exchange on Thursday, the company said.", "its own citation marker"),
    ("Hackers drained $48 million. Lumen Exchange said so on Thursday.", "two sentences"),
])
def test_a_judge_correction_the_rules_cannot_take_leaves_the_fix_to_the_reviser(
        ledger, tmp_path, templates_dir, spec, bad, why):
    config = make_config(tmp_path, templates_dir)
    model = scripted_model(corrections=lambda claims: [{"claim_id": cid, "text": bad} for cid, text in claims
                                                       if "$52 million" in text])
    reviser = ScriptedReviser(lambda art, _round: art.model_copy(update={"lead": article().lead}))
    outcome = run(check_draft(make_draft(article("$52 million")), pack(), spec, config=config,
                              gateway=Gateway(config, ledger, backend=model), reviser=reviser))
    assert len(reviser.calls) == 1, why
    assert outcome.article.lead == article().lead and outcome.stats.corrected == 0
    assert [r.by for r in outcome.report.revisions] == ["reviser"]


def test_a_judge_correction_that_would_break_the_template_is_not_used(ledger, tmp_path, templates_dir, spec):
    """The lead may hold 80 words: a correction past that goes to the reviser instead."""
    config = make_config(tmp_path, templates_dir)
    long_lead = "Hackers drained $48 million from Lumen Exchange on Thursday, the company said" + ", the company said" * 25 + "."
    model = scripted_model(corrections=lambda claims: [{"claim_id": cid, "text": long_lead} for cid, text in claims
                                                       if "$52 million" in text])
    reviser = ScriptedReviser(lambda art, _round: art)
    outcome = run(check_draft(make_draft(article("$52 million")), pack(), spec, config=config,
                              gateway=Gateway(config, ledger, backend=model), reviser=reviser))
    assert len(reviser.calls) == 1 and "$52 million" in outcome.article.lead
    assert outcome.report.totals["contradicted"] == 1


# --- rule flags the judge cannot change are revised beside the check call --------------------------------------------

WRONG_CITE = "Lumen's native token, LUM, fell 23% after the announcement [7]."


def with_wrong_citation() -> Article:
    return article().model_copy(update={"insights": [Insight(text=WRONG_CITE, citations=[2])]})


def test_a_citation_no_source_has_is_revised_while_the_judge_checks_the_facts(ledger, tmp_path, templates_dir, spec):
    config = make_config(tmp_path, templates_dir)
    answered = []
    model = scripted_model()
    respond = model.function

    def recording(request):
        reply = respond(request)
        answered.append(request.role)
        return reply

    model.function = recording
    seen_when_asked = []

    def fix(art: Article, _round: int) -> Article:
        seen_when_asked.append(list(answered))
        return art.model_copy(update={"insights": [Insight(text=WRONG_CITE.replace("[7]", "[2]"), citations=[2])]})

    reviser = ScriptedReviser(fix)
    outcome = run(check_draft(make_draft(with_wrong_citation()), pack(), spec, config=config,
                              gateway=Gateway(config, ledger, backend=model), reviser=reviser))

    assert reviser.calls == [[WRONG_CITE.replace(" [7]", "")]]
    assert seen_when_asked == [[]]   # asked before the judge had answered: no second round of waiting
    assert outcome.article.insights[0].text.endswith("[2].") and outcome.report.flagged() == []
    assert [(r.round, r.by, r.spans_revised) for r in outcome.report.revisions] == [(1, "reviser", 1)]
    assert [r.role for r in model.requests] == ["judge"]


def splitting_judge(claims, evidence):
    """Honest, but the insight comes back as two atomic claims in words of their own."""
    findings = []
    for cid, text in claims:
        if text.startswith("Lumen's native token"):
            findings += [{"claim_id": cid, "claim": claim, "verdict": "supported", "source_n": 2, "quote": quote}
                         for claim, quote in [("LUM is Lumen's native token.", "Lumen's native token, LUM"),
                                              ("LUM fell 23% after the announcement.", "fell 23% after the announcement")]]
        else:
            findings.append(honest_verdict(cid, text, evidence))
    return findings


@pytest.mark.parametrize("judge", [None, splitting_judge], ids=["one claim per sentence", "atomic claims"])
def test_a_rule_flag_the_early_revision_left_as_it_was_is_not_asked_again(ledger, tmp_path, templates_dir, spec, judge):
    config = make_config(tmp_path, templates_dir, revise_rounds=2)
    reviser = ScriptedReviser(lambda art, _round: art)
    outcome = run(check_draft(make_draft(with_wrong_citation()), pack(), spec, config=config,
                              gateway=Gateway(config, ledger, backend=scripted_model(judge)), reviser=reviser))
    assert len(reviser.calls) == 1
    flags = outcome.report.flagged()
    assert flags and {v.claim.section for v in flags} == {"insights"}
    assert [f.type for f in flags[0].failures] == ["citation"]


def test_the_reply_schema_bounds_the_corrections_to_one_per_statement_of_the_request():
    from agents.fact_checker import JudgeItem, reply_schema
    from pipeline.services.llm import strict_json_schema

    schema_ = strict_json_schema(reply_schema([JudgeItem("s1", "a", [], {}), JudgeItem("s2", "b", [], {})]))
    corrections = schema_["properties"]["corrections"]
    assert corrections["maxItems"] == 2 and "corrections" in schema_["required"]
    item = schema_["$defs"]["JudgeCorrection"]
    assert item["properties"]["claim_id"]["enum"] == ["s1", "s2"]


def test_measure_revision_counts_changed_sentences_and_characters():
    before, after = article("$52 million"), article()
    assert measure_revision(before, before, 1).chars_changed == 0
    revision = measure_revision(before, after.model_copy(update={"insights": []}), 1)
    assert revision.spans_revised == 2
    assert revision.chars_changed == 2 + len("Lumen's native token, LUM, fell 23% after the announcement.")


# --- the stage ---------------------------------------------------------------------------------------------------------


class FakeRun:
    """What check_drafts uses of pipeline.flow.runner.Run, over a real SQLite ledger.

    `stop_after`: a stop is requested once that many drafts are checked (as SIGTERM would, mid-stage).
    """

    def __init__(self, config, ledger, gateway=None, stop_after: int | None = None):
        self.config, self.ledger, self.store, self.gateway = config, ledger, None, gateway
        self.loop = asyncio.new_event_loop()
        self.stop_after = stop_after

    @property
    def stop_requested(self) -> bool:
        if self.stop_after is None:
            return False
        with self.ledger.engine.connect() as connection:
            checked = connection.execute(
                select(func.count()).select_from(schema.drafts).where(schema.drafts.c.state == DraftState.checked.value)
            ).scalar()
        return checked >= self.stop_after

    def run_async(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def in_scope(self, stage: str, key: str) -> bool:
        return True  # not a worker's unit: the stage takes every draft

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
        report = check_drafts(fake, reviser=revise_draft)
    finally:
        fake.close()

    row = draft_row(ledger, "d-ok")
    assert row.state == DraftState.checked.value
    stored = FactCheckReport.model_validate(row.factcheck)
    assert stored.draft_id == "d-ok" and stored.method == "rules"
    assert stored.totals == {"supported": 6, "contradicted": 1, "unverifiable": 0, "off_story": 0, "unresolved_reference": 0, "wrong_language": 0, "claims": 7}
    flagged = stored.flagged()[0]
    assert flagged.source_n == 1 and flagged.source_url == "https://coinwire.example/news/lumen-hack"
    assert "$48 million" in flagged.evidence
    untouched = draft_row(ledger, "d-bad")
    assert untouched.state == DraftState.needs_attention.value and untouched.factcheck is None
    assert draft_row(ledger, "d-nosources").state == DraftState.drafted.value
    assert report.items_in == 2 and report.items_out == 1
    assert len(report.errors) == 1 and "d-nosources" in report.errors[0] and "research pack" in report.errors[0]
    assert report.notes["claims"] == 7 and report.notes["contradicted"] == 1 and report.notes["revised_rounds"] == 0


def test_the_stage_stores_a_revised_article_with_its_report_and_stops_starting_drafts_on_request(
    ledger, tmp_path, templates_dir
):
    async def fixing_reviser(draft, flagged, pack, spec, gateway):
        return draft.article.model_copy(update={"lead": draft.article.lead.replace("$52 million", "$48 million")})

    # One draft at a time, so the stop request lands between two drafts.
    config = make_config(tmp_path, templates_dir).model_copy(update={"llm": parse_config({"llm": {"concurrency": 1}}, root=tmp_path).llm})
    save_draft(ledger, make_draft(article("$52 million"), "d-fix", "story-a"), pack())
    save_draft(ledger, make_draft(article(), "d-later", "story-b"), pack())
    fake = FakeRun(config, ledger, gateway=Gateway(config, ledger, backend=scripted_model()), stop_after=1)
    try:
        report = check_drafts(fake, reviser=fixing_reviser)
    finally:
        fake.close()

    row = draft_row(ledger, "d-fix")
    assert row.state == DraftState.checked.value
    assert Article.model_validate(row.article).lead == article().lead
    stored = FactCheckReport.model_validate(row.factcheck)
    assert stored.method == "llm" and stored.totals["supported"] == 7 and len(stored.revisions) == 1
    assert validate_article(Article.model_validate(row.article), load_brief(templates_dir), sources()) == []
    assert report.notes["revised_rounds"] == 1
    # The stop request is honoured: the next draft is not started.
    assert draft_row(ledger, "d-later").state == DraftState.drafted.value and report.items_out == 1


class CountingBackend:
    """A TestModel that lets other tasks run while a call is in flight, and counts the calls in flight at once."""

    def __init__(self, inner: TestModel):
        self.inner = inner
        self.in_flight = 0
        self.most_in_flight = 0

    async def complete(self, request):
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            for _ in range(20):  # a real provider takes a while; every other ready task gets to run meanwhile
                await asyncio.sleep(0)
            return await self.inner.complete(request)
        finally:
            self.in_flight -= 1


def test_the_stage_checks_drafts_concurrently_with_one_check_call_each(ledger, tmp_path, templates_dir):
    revisions = []

    async def fixing_reviser(draft, flagged, pack, spec, gateway):
        revisions.append(draft.id)
        return draft.article.model_copy(update={"lead": draft.article.lead.replace("$52 million", "$48 million")})

    config = make_config(tmp_path, templates_dir)  # llm.concurrency 4 by default or more
    drafts = [make_draft(article("$52 million" if i % 2 else "$48 million"), f"d-{i}", f"story-{i}") for i in range(4)]
    for d in drafts:
        save_draft(ledger, d, pack())
    backend = CountingBackend(scripted_model())
    fake = FakeRun(config, ledger, gateway=Gateway(config, ledger, backend=backend))
    try:
        report = check_drafts(fake, reviser=fixing_reviser)
    finally:
        fake.close()

    assert report.items_out == 4 and not report.errors
    assert all(draft_row(ledger, d.id).state == DraftState.checked.value for d in drafts)
    assert backend.most_in_flight == 4  # not one draft after another
    # One check call per draft (each whole draft in its request), a revision only where a claim failed.
    assert [len(judge_claims_in(r)) for r in backend.inner.requests] == [7, 7, 7, 7]
    assert sorted(revisions) == ["d-1", "d-3"]
    assert report.notes["claims"] == 28 and report.notes["supported"] == 28 and report.notes["revised_rounds"] == 2


def test_drafts_likely_to_need_a_revision_go_to_the_model_first(ledger, tmp_path, templates_dir):
    """A figure no source has means a revision after the check: that draft's calls start first."""
    async def fixing_reviser(draft, flagged, pack, spec, gateway):
        return draft.article.model_copy(update={"lead": draft.article.lead.replace("$52 million", "$48 million")})

    config = make_config(tmp_path, templates_dir).model_copy(update={"llm": parse_config({"llm": {"concurrency": 1}}, root=tmp_path).llm})
    for i, amount in enumerate(["$48 million", "$48 million", "$52 million"]):
        save_draft(ledger, make_draft(article(amount), f"d-{i}", f"story-{i}"), pack())
    model = scripted_model()
    fake = FakeRun(config, ledger, gateway=Gateway(config, ledger, backend=model))
    try:
        report = check_drafts(fake, reviser=fixing_reviser)
    finally:
        fake.close()
    assert report.items_out == 3
    first = judge_requests(model)[0]
    assert "$52 million" in user_text(first)
    assert all("$52 million" not in user_text(r) for r in judge_requests(model)[1:])


def load_brief(templates_dir):
    from pipeline.text.templates import load_templates

    return load_templates(templates_dir)["brief"]


# --- the benchmark entry point -------------------------------------------------------------------------------------------


def test_benchmark_cases_are_checked_in_one_call_with_rules_on_top(ledger, tmp_path, templates_dir):
    config = make_config(tmp_path, templates_dir)
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
    (request,) = judge_requests(model)
    assert [text for _, text in judge_claims_in(request)] == [cases[0]["claim"], cases[1]["claim"]]


def test_a_benchmark_claim_split_into_atomic_claims_gets_the_worst_of_their_verdicts(ledger, tmp_path, templates_dir):
    """An injected addition: the first half is in the source, the added half is not."""
    claim = "The exchange halted all withdrawals while it investigates the breach and hired Mandiant to help."

    def splitting(request):
        if request.role != "judge":
            return None
        return {"verdicts": [
            {"claim_id": "c1", "claim": "The exchange halted all withdrawals while it investigates the breach.",
             "verdict": "supported", "source_n": 1, "quote": "The exchange halted all withdrawals while it investigates the breach."},
            {"claim_id": "c1", "claim": "The exchange hired Mandiant to help.", "verdict": "unverifiable", "source_n": None, "quote": ""},
        ]}

    config = make_config(tmp_path, templates_dir)
    gateway = Gateway(config, ledger, backend=TestModel(function=splitting))
    src = [{"id": "a1", "title": "t", "url": "https://x.example/a", "text": COINWIRE}]
    (row,) = run(check_claims_with_model([{"id": "added", "claim": claim, "sources": src}], gateway))
    assert row["verdict"] == "unverifiable"


# --- the rules veto a judge that misses a reversal (issue 15) ----------------------------------------------------


def test_the_judge_is_asked_to_compare_direction_magnitude_roles_and_order(ledger, tmp_path, templates_dir):
    config = make_config(tmp_path, templates_dir)
    model = scripted_model()
    run(check_article(article(), EvidenceIndex(sources_from_pack(sources()), config.factcheck.window_sentences),
                      settings=config.factcheck, gateway=Gateway(config, ledger, backend=model)))
    (request,) = judge_requests(model)
    system = next(m["content"] for m in request.messages if m["role"] == "system")
    for check in ("direction:", "magnitude:", "roles:", "order and time:"):
        assert check in system


@pytest.mark.parametrize("reversal, word", [
    ("Lumen's native token, LUM, rose 23% after the announcement.", "rose"),
    ("Lumen's native token, LUM, fell 23% before the announcement.", "before"),
    ("Lumen's native token, LUM, fell 23 percentage points after the announcement.", "percentage points"),
])
def test_a_judge_that_calls_a_reversed_paraphrase_supported_is_overruled_by_the_rules(
        ledger, tmp_path, templates_dir, reversal, word):
    """A gullible judge quotes the right passage and says supported; the draft says the opposite of it."""
    passage = "Lumen's native token, LUM, fell 23% after the announcement"

    def gullible(claims, evidence):
        return [{"claim_id": cid, "verdict": "supported", "source_n": 2, "quote": passage} for cid, _ in claims]

    config = make_config(tmp_path, templates_dir)
    gateway = Gateway(config, ledger, backend=scripted_model(gullible))
    draft = article()
    draft = draft.model_copy(update={"insights": [Insight(text=reversal, citations=[2])]})
    report = run(check_article(draft, EvidenceIndex(sources_from_pack(sources()), config.factcheck.window_sentences),
                               settings=config.factcheck, gateway=gateway))
    insight = next(v for v in report.verdicts if v.claim.section == "insights")
    assert insight.verdict == "contradicted" and insight.method == "rules"
    assert any(word in f.detail for f in insight.failures), [f.detail for f in insight.failures]
    assert insight in report.flagged()
