"""Issue 14 (check): the judge and the reviser against a server that fills the request's JSON schema literally.

`tests/fakes/naive_server.py` stands for a small local model behind a grammar-constrained decoder:
every reply is valid against the request's strict schema and otherwise random. Before the call cap,
the check stage made 14-48 judge requests per draft against such a server (128 for the 5 offline
drafts of the sample feeds, seed 7); the README promises one check call per draft.

Here the sample feeds of a fresh demo workspace are fetched, classified and drafted offline (the
writer against the naive server fails its template and marks every draft needs_attention, so no draft
would reach the check), one draft is given a wrong figure so the reviser is asked too, then the check
stage runs against the naive server through the real openai SDK. Whatever the server answers, a
draft's judge and reviser requests (repair rounds included) stay within
`factcheck.max_calls_per_draft`, the rules decide the rest, every draft's stored report names the
method that decided it (and why the rules did), and a rerun of the check makes no request.
A last run sends every role (classifier, writer, judge, reviser) to the naive server: it finishes
within the issue's targets.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest
from sqlalchemy import select

from agents.writer import revise_draft
from agents.fact_checker import (
    EvidenceIndex,
    JudgeItem,
    JudgeReply,
    check_article,
    check_draft,
    check_validator,
    method_label,
    reply_schema,
    sources_from_pack,
    statements_of,
    render_draft,
)
from pipeline.core import schema
from pipeline.core.clock import fixed_clock
from pipeline.core.config import load_config, parse_config
from pipeline.cli.demo import prepare_workspace
from pipeline.services.llm import Gateway, strict_json_schema
from pipeline.core.models import Article, Draft, DraftState, FactCheckReport
from pipeline.flow.runner import Run
from pipeline.services.testing import TestModel, allow_model_requests
from tests.conftest import SAMPLE_AS_OF
from tests.fakes.naive_server import NaiveServer, fill

CALLS_PER_ARTICLE = 3  # the issue's targets: model calls per article on average, repairs per call
REPAIRS_PER_CALL = 1
CHECK_ROLES = ("judge", "reviser")


# --- the naive decoder in-process: whatever the request's strict schema allows -------------------------------------


def naive_model(seed: int = 0) -> TestModel:
    """A TestModel answering every request like tests/fakes/naive_server.py: a random fill of its strict schema."""

    def respond(request):
        body = json.dumps([seed, request.messages], sort_keys=True)
        return fill(request.json_schema, random.Random(body))

    return TestModel(function=respond)


def lumen_sources():
    from tests.test_fact_checker import sources

    return sources()


def lumen_article(amount: str = "$48 million") -> Article:
    from tests.test_fact_checker import article

    return article(amount)


def lumen_pack():
    from tests.test_fact_checker import pack

    return pack()


def brief_spec(tmp_path):
    from pipeline.text.templates import load_templates
    from tests.test_fact_checker import BRIEF_TEMPLATE

    folder = tmp_path / "templates"
    folder.mkdir(exist_ok=True)
    (folder / "brief.toml").write_text(BRIEF_TEMPLATE, encoding="utf-8")
    return folder, load_templates(folder)["brief"]


# --- the judge's schema, per request ----------------------------------------------------------------------------------


def test_the_judge_schema_is_built_per_request_from_what_it_holds():
    evidence = EvidenceIndex(sources_from_pack(lumen_sources()), 4)
    items = statements_of(render_draft(lumen_article()), evidence)
    strict = strict_json_schema(reply_schema(items))
    finding = strict["$defs"]["JudgeFinding"]["properties"]
    assert finding["claim_id"]["enum"] == [it.id for it in items]
    shown = sorted({p.source_n for it in items for p in it.passages})
    assert finding["source_n"] == {"anyOf": [{"type": "integer", "enum": shown}, {"type": "null"}]}
    assert finding["verdict"]["enum"] == ["supported", "contradicted", "unverifiable"]
    verdicts = strict["properties"]["verdicts"]
    assert verdicts["minItems"] == sum(it.required for it in items) and verdicts["maxItems"] == 6 * len(items)
    assert reply_schema(items).__name__ == "JudgeReply"  # what fakes and logs know the judge's replies by

    # A statement shown with no passage at all can only be unverifiable, citing nothing.
    lonely = strict_json_schema(reply_schema([JudgeItem("s1", "Nothing to see.", [], {})]))
    assert lonely["$defs"]["JudgeFinding"]["properties"]["verdict"]["enum"] == ["unverifiable"]
    assert lonely["$defs"]["JudgeFinding"]["properties"]["source_n"] == {"type": "null"}


def test_a_naive_decoder_cannot_leave_the_schema_and_the_validator_catches_the_rest():
    evidence = EvidenceIndex(sources_from_pack(lumen_sources()), 4)
    items = statements_of(render_draft(lumen_article()), evidence)
    model = reply_schema(items)
    strict = strict_json_schema(model)
    ids, shown = {it.id for it in items}, {p.source_n for it in items for p in it.passages}
    problems = Counter()
    for seed in range(100):
        reply = model.model_validate(fill(strict, random.Random(seed)))  # always parses
        assert sum(it.required for it in items) <= len(reply.verdicts) <= 6 * len(items)
        assert {f.claim_id for f in reply.verdicts} <= ids
        assert {f.source_n for f in reply.verdicts} <= shown | {None}
        for problem in check_validator(items)(reply):
            problems[re.sub(r"^verdicts\[\d+\] \(claim_id s\d+\) ", "", problem).split(" ")[0]] += 1
    # What no schema can say: the claim's words, its quote, every statement answered.
    assert problems["claim"] > 0 and problems["quote"] > 0 and problems["no"] > 0


def test_a_reply_from_a_server_that_ignores_the_schema_still_parses_and_keeps_its_good_findings(ledger, tmp_path):
    """Unknown ids and source numbers are in the schema only: the reply parses, those findings are dropped."""
    evidence = EvidenceIndex(sources_from_pack(lumen_sources()), 4)
    items = statements_of(render_draft(lumen_article()), evidence)
    reply = reply_schema(items).model_validate({"verdicts": [
        {"claim_id": "x9", "claim": "", "verdict": "supported", "source_n": 7, "quote": "anything"},
    ]})
    assert isinstance(reply, JudgeReply)
    problems = check_validator(items)(reply)
    assert len(problems) == 1 and problems[0].startswith("no entry for statement(s) s1, s2")


# --- the cap: judge + reviser requests per draft, whatever the server answers ----------------------------------------


@pytest.mark.parametrize("cap,repair_rounds", [(1, 0), (1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 2), (12, 1)])
def test_a_drafts_requests_never_exceed_its_cap(ledger, tmp_path, cap, repair_rounds):
    """A wrong figure in the lead, so a revision is wanted; the model answers at random within each schema."""
    folder, spec = brief_spec(tmp_path)
    config = parse_config({"newsroom": {"templates_dir": str(folder)}, "llm": {"repair_rounds": repair_rounds},
                           "factcheck": {"max_calls_per_draft": cap}}, root=tmp_path)
    model = naive_model(cap)
    draft = Draft(id="d-1", story_key="lumen", template="brief", writer_model="m", method="llm",
                  article=lumen_article("$52 million"))
    outcome = asyncio_run(check_draft(draft, lumen_pack(), spec, config=config, gateway=Gateway(config, ledger, backend=model),
                                      reviser=revise_draft))

    roles = Counter(r.role for r in model.requests)
    assert sum(roles[r] for r in CHECK_ROLES) <= cap and set(roles) <= set(CHECK_ROLES)
    assert outcome.stats.requests == len(model.requests)  # what the draft booked is what the server got
    report = outcome.report
    assert report.method == "rules" and report.fallback  # the judge's random claims never decided anything
    assert {v.method for v in report.verdicts} == {"rules"}
    assert method_label(report) == f"rules (fallback: {report.fallback})"
    assert report.totals["contradicted"] == 1  # the rules still catch the wrong figure
    if cap < 1 + repair_rounds:  # not even one call fits: nothing is asked, and the report says why
        assert not model.requests and "call cap reached" in report.fallback
    if cap >= 2 * (1 + repair_rounds):  # one check call and one revision fit
        assert roles["judge"] >= 1 and roles["reviser"] >= 1


def test_with_room_left_out_statements_are_asked_again_and_the_cap_still_holds(ledger, tmp_path):
    """A judge that never answers: the draft's call and its repair, then each required statement alone while the
    cap leaves room (each alone call reserves its repair too), the rest to the rules, and the report says both."""
    config = parse_config({"factcheck": {"max_calls_per_draft": 9}}, root=tmp_path)
    model = TestModel(function=lambda request: {"verdicts": []})
    evidence = EvidenceIndex(sources_from_pack(lumen_sources()), 4)
    report = asyncio_run(check_article(lumen_article(), evidence, settings=config.factcheck,
                                       gateway=Gateway(config, ledger, backend=model)))
    opened = [r.messages[-1]["content"].count("<claim id=") for r in model.requests if len(r.messages) == 2]
    assert opened == [7, 1, 1, 1] and len(model.requests) == 8  # each with its repair round; 9 - 8 < 2
    assert report.method == "rules"
    assert "the judge left the statement out for 3 of 7 statement(s)" in report.fallback
    assert "call cap reached (9 model requests per draft, factcheck.max_calls_per_draft) for 3 of 7" in report.fallback


def test_an_honest_judge_decides_and_the_report_says_llm(ledger, tmp_path):
    from tests.test_fact_checker import scripted_model

    config = parse_config({}, root=tmp_path)
    model = scripted_model()
    evidence = EvidenceIndex(sources_from_pack(lumen_sources()), 4)
    report = asyncio_run(check_article(lumen_article(), evidence, settings=config.factcheck,
                                       gateway=Gateway(config, ledger, backend=model)))
    assert len(model.requests) == 1
    assert (report.method, report.fallback, method_label(report)) == ("llm", None, "llm")


def test_an_outage_is_a_fallback_with_its_cause(ledger, tmp_path):
    from pipeline.services.llm import RequestRejected

    config = parse_config({}, root=tmp_path)
    model = TestModel(function=lambda request: RequestRejected("HTTP 400: model not found"))
    evidence = EvidenceIndex(sources_from_pack(lumen_sources()), 4)
    report = asyncio_run(check_article(lumen_article(), evidence, settings=config.factcheck,
                                       gateway=Gateway(config, ledger, backend=model)))
    assert report.method == "rules"
    assert report.fallback.startswith("the judge was unavailable (RequestRejected: HTTP 400: model not found)")
    assert report.fallback.endswith("for 7 of 7 statement(s)")


def test_offline_the_report_says_rules_and_no_fallback():
    evidence = EvidenceIndex(sources_from_pack(lumen_sources()), 4)
    report = asyncio_run(check_article(lumen_article(), evidence))
    assert (report.method, report.fallback, method_label(report)) == ("rules", None, "rules")


def asyncio_run(coro):
    import asyncio

    return asyncio.run(coro)


# --- the check stage against the naive server, over HTTP, on the sample feeds -----------------------------------------


def desk(root):
    workspace = prepare_workspace(root / "desk")
    config_file = workspace / "config.toml"
    assert "\noffline = true\n" in config_file.read_text()
    return config_file


def point_at(config_file, base_url: str):
    text = config_file.read_text()
    config_file.write_text(text.replace("\noffline = true\n", f'\noffline = false\nbase_url = "{base_url}"\n'))
    return load_config(config_file)


def misstate_a_figure(run: Run) -> str:
    """One drafted draft's lead gets a dollar amount no source has, so the rules flag it and the reviser is asked."""
    with run.ledger.engine.connect() as connection:
        rows = connection.execute(
            select(schema.drafts.c.id, schema.drafts.c.article)
            .where(schema.drafts.c.state == DraftState.drafted.value).order_by(schema.drafts.c.id)
        ).all()
    for row in rows:
        lead = row.article["lead"]
        match = re.search(r"\$(\d+(?:\.\d+)?) million", lead)
        if match:
            wrong = f"${float(match.group(1)) + 7:g} million"
            article = {**row.article, "lead": lead[:match.start()] + wrong + lead[match.end():]}
            with run.ledger.begin() as connection:
                connection.execute(schema.drafts.update().where(schema.drafts.c.id == row.id).values(article=article))
            return row.id
    raise AssertionError("no drafted lead with a dollar amount to misstate")


def headline_of(draft_row) -> str:
    return draft_row.article["headline"]


def requests_by_draft(requests, drafts) -> dict[str, list]:
    """Each judge/reviser request to the draft it was about: the judge gets the headline as context, the reviser the
    article as JSON."""
    out: dict[str, list] = {row.id: [] for row in drafts}
    for request in requests:
        text = "\n".join(str(m.get("content", "")) for m in request.messages)
        owners = [
            row.id for row in drafts
            if "<context>" + headline_of(row).replace("</", "<\\/") + "</context>" in text
            or '"headline": ' + json.dumps(headline_of(row), ensure_ascii=False) in text
        ]
        assert len(owners) == 1, f"request not attributable to one draft: {owners}"
        out[owners[0]].append(request)
    return out


@pytest.fixture(scope="module", params=[(7, 0), (2026, 3)], ids=["seed7", "seed2026-429-every-3rd"])
def naive_check(request, tmp_path_factory):
    """Offline drafts of the sample feeds (one with a wrong figure), then the check stage against the naive server
    (the second time with a 429 on every third request), then the check stage again."""
    seed, fail_every = request.param
    config_file = desk(tmp_path_factory.mktemp(f"check-{seed}"))
    clock = fixed_clock(SAMPLE_AS_OF)
    drafting = Run(load_config(config_file), command="test", clock=clock)
    drafted = {r.stage: r for r in drafting.run_stages(["fetch", "classify", "draft"])}
    misstated = misstate_a_figure(drafting)
    drafting.finish()
    drafting.ledger.close()
    with allow_model_requests(), NaiveServer(seed=seed, fail_every=fail_every) as server:
        config = point_at(config_file, server.base_url)
        first = Run(config, command="test", clock=clock)
        (check,) = first.run_stages(["check"])
        first.finish()
        every = list(server.chat_requests)
        sent = list(server.answered)
        second = Run(config, command="test", clock=clock)
        (again,) = second.run_stages(["check"])
        second.finish()
        resent = server.chat_requests[len(every):]
        second.ledger.close()
    with first.ledger.engine.connect() as connection:
        drafts = connection.execute(select(schema.drafts).order_by(schema.drafts.c.id)).all()
        booked = connection.execute(
            select(schema.llm_calls.c.role, schema.llm_calls.c.outcome, schema.llm_calls.c.cost_usd)
            .where(schema.llm_calls.c.run_id == first.id, schema.llm_calls.c.cache_hit.is_(False))
        ).all()
    yield {"config": config, "drafted": drafted, "check": check, "sent": sent, "rate_limited": len(every) - len(sent),
           "fail_every": fail_every, "booked": booked, "again": again, "resent": resent, "drafts": drafts,
           "misstated": misstated}
    first.ledger.close()


def test_the_check_finishes_on_every_draft_the_offline_writer_wrote(naive_check):
    drafted, check, drafts = naive_check["drafted"], naive_check["check"], naive_check["drafts"]
    assert drafted["draft"].items_out and check.ok, check.errors
    written = [row for row in drafts if row.state != DraftState.needs_attention.value]
    assert written and check.items_in == len(written) and check.items_out == len(written)
    assert all(row.state == DraftState.checked.value and row.factcheck for row in written)
    # The decoder fills "corrections" with random strings: the rules take none of them into an article.
    assert check.notes["judge_corrections"] == 0
    for row in drafts:  # what the offline writer could not fit to its template waits for an editor, with the reason
        if row.state == DraftState.needs_attention.value:
            assert row.violations and row.factcheck is None


def test_judge_and_reviser_requests_per_draft_stay_within_the_cap(naive_check):
    config, sent, drafts = naive_check["config"], naive_check["sent"], naive_check["drafts"]
    cap = config.factcheck.max_calls_per_draft
    checked = [row for row in drafts if row.factcheck]
    by_draft = requests_by_draft(sent, checked)
    per_draft = {d: len(rs) for d, rs in by_draft.items()}
    roles = Counter(r.schema_name for r in sent)
    repairs = sum(r.is_repair for r in sent)
    print(f"\nnaive check: {len(checked)} drafts, {len(sent)} answered requests ({dict(roles)}), {repairs} repairs, "
          f"{naive_check['rate_limited']} answered 429; "
          f"per draft {sorted(per_draft.values())} (cap {cap}); notes {naive_check['check'].notes}")
    assert sent and max(per_draft.values()) <= cap
    # Through the real SDK, strict json_schema, each request with its own schema.
    for r in sent:
        assert r.body["response_format"]["type"] == "json_schema" and r.body["response_format"]["json_schema"]["strict"]
    judge = [r for r in sent if r.schema_name == "JudgeReply"]
    assert judge and all(r.schema["properties"]["verdicts"]["minItems"] >= 1 for r in judge)
    # The draft with a wrong figure was revised (asked, at least) within its cap.
    assert any(r.schema_name != "JudgeReply" for r in by_draft[naive_check["misstated"]])
    # At most one repair per call; the stage books what the server got.
    assert max(sum(m["role"] == "assistant" for m in r.messages) for r in sent) <= REPAIRS_PER_CALL
    notes = naive_check["check"].notes
    assert notes["model_requests"] == len(sent) and notes["max_requests_per_draft"] == max(per_draft.values())
    assert naive_check["check"].llm_calls == len(sent)


def test_a_rate_limited_server_is_retried_and_each_answer_booked_once(naive_check):
    """429s are retried by the gateway and cost nothing; every answer is one paid row, whatever was retried."""
    sent, booked = naive_check["sent"], naive_check["booked"]
    if naive_check["fail_every"]:
        assert naive_check["rate_limited"] >= len(sent) // naive_check["fail_every"] - 1 > 0
    assert naive_check["check"].ok
    assert len(booked) == len(sent) and all(r.outcome in ("ok", "invalid") for r in booked)
    assert all(r.cost_usd > 0 for r in booked)


def test_every_drafts_report_names_the_method_that_decided_it(naive_check):
    check, drafts = naive_check["check"], naive_check["drafts"]
    reports = [FactCheckReport.model_validate(row.factcheck) for row in drafts if row.factcheck]
    for report in reports:
        # The naive judge's claims are random strings: never the statement's facts, so the rules decided.
        assert report.method == "rules" and report.fallback
        assert re.search(r"for \d+ of \d+ statement\(s\)", report.fallback)
        assert {v.method for v in report.verdicts} == {"rules"}
    labels = Counter("rules (fallback)" if r.fallback else r.method for r in reports)
    assert check.notes["method"] == ", ".join(f"{m} {n}" for m, n in labels.items())
    assert check.notes["drafts_fallback"] == len(reports) and check.notes["drafts_llm"] == 0
    misstated = next(r for r in reports if r.draft_id == naive_check["misstated"])
    assert misstated.totals["contradicted"] >= 1  # the rules caught the wrong figure


def test_a_rerun_of_the_check_makes_no_request(naive_check):
    again = naive_check["again"]
    assert naive_check["resent"] == []
    assert again.ok and again.items_in == 0 and again.llm_calls == 0


# --- every role against the naive server --------------------------------------------------------------------------------


def test_every_role_against_the_naive_server_finishes_within_the_targets(tmp_path):
    """Classifier, writer, judge and reviser all get random schema-valid replies: the run finishes, items are
    classified (or fell back offline), drafts are written or wait for an editor with their violations, and the
    model calls stay within the issue's targets."""
    with allow_model_requests(), NaiveServer(seed=11) as server:
        config = point_at(desk(tmp_path), server.base_url)
        run = Run(config, command="test", clock=fixed_clock(SAMPLE_AS_OF))
        reports = {r.stage: r for r in run.run_stages(["fetch", "classify", "draft", "check"])}
        run.finish()
        sent = list(server.chat_requests)
    assert all(reports[s].ok for s in ("fetch", "classify", "check")), {s: r.errors for s, r in reports.items()}
    with run.ledger.engine.connect() as connection:
        items = connection.execute(select(schema.items.c.state)).scalars().all()
        drafts = connection.execute(select(schema.drafts)).all()
    run.ledger.close()
    assert items and set(items) <= {"classified", "irrelevant", "clustered"}
    assert drafts
    attention = [row for row in drafts if row.state == DraftState.needs_attention.value]
    assert len(reports["draft"].errors) <= len(attention)  # the stage may report each draft that waits, nothing else
    for row in drafts:
        assert row.state in (DraftState.checked.value, DraftState.needs_attention.value)
        if row.state == DraftState.needs_attention.value:
            assert row.violations  # the exact template rules the reply broke
        else:
            assert FactCheckReport.model_validate(row.factcheck).method in ("llm", "rules")
    articles = [r for r in sent if r.schema_name != "BatchResult"]
    calls = [r for r in articles if not r.is_repair]
    print(f"\nnaive server, every role: {len(sent)} requests ({dict(Counter(r.schema_name for r in sent))}), "
          f"{len(drafts)} drafts, {len(calls)} article calls + {len(articles) - len(calls)} repairs")
    assert len(calls) / len(drafts) <= CALLS_PER_ARTICLE
    assert max(sum(m["role"] == "assistant" for m in r.messages) for r in sent) <= REPAIRS_PER_CALL
