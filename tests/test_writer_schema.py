"""Issue 14, the writer: the draft stage against a server that fills the request's JSON schema literally.

`tests/fakes/naive_server.py` stands for a small local model behind a grammar-constrained
decoder: every reply is valid against the request's strict schema and otherwise random. The
real openai SDK talks to it through `llm.base_url`, on the sample feeds of a fresh demo
workspace, with the editorial clock fixed to the sample's date. Whatever the writer's schema
can say (citations only of the pack's sources, paragraph and insight counts, the sources
list) the naive decoder then gets right; what it cannot say (words per paragraph) is checked
after the reply, repaired at most `llm.repair_rounds` times, and a draft still wrong is saved
`needs_attention` with the validator's exact words, in the ledger and in the stage report.

Before this (issue 14): all 6 drafts failed validation twice on citations up to 100, ended
needs_attention with an empty state_reason, and the draft stage reported ok.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict

import pytest
from sqlalchemy import func, select

from pipeline.core import schema
from pipeline.core.clock import fixed_clock
from pipeline.core.config import load_config
from pipeline.cli.demo import prepare_workspace
from pipeline.core.models import Article, ResearchPack
from pipeline.flow.runner import Run
from pipeline.text.templates import load_templates
from pipeline.services.testing import allow_model_requests
from tests.conftest import SAMPLE_AS_OF
from tests.fakes.naive_server import NaiveServer

CALLS_PER_ARTICLE = 3  # the targets: model calls per article on average, repairs per call
REPAIRS_PER_CALL = 1
WORD_COUNT = re.compile(r"^(?:body paragraph|insight) \d+ has \d+ words?; (?:it must have \d+(?:–\d+)?|the limit is \d+)$|"
                        r"^lead has \d+ (?:words?|sentences?); ")


def naive_desk(root, base_url: str):
    """The demo workspace against the naive server, drafting every story in one run."""
    workspace = prepare_workspace(root / "desk")
    config_file = workspace / "config.toml"
    text = config_file.read_text()
    assert "\noffline = true\n" in text and "\nmax_per_run = 6\n" in text
    text = text.replace("\noffline = true\n", f'\noffline = false\nbase_url = "{base_url}"\n')
    config_file.write_text(text.replace("\nmax_per_run = 6\n", "\nmax_per_run = 50\n"))
    return load_config(config_file)


def writer_requests(requests):
    return [r for r in requests if (r.schema_name or "").endswith("Article")]


@pytest.fixture(scope="module", params=[7, 2026])
def drafted(request, tmp_path_factory):
    """Fetch, classify and draft the sample feeds against one naive server, then run the same stages again."""
    with allow_model_requests(), NaiveServer(seed=request.param) as server:
        config = naive_desk(tmp_path_factory.mktemp(f"writer-naive-{request.param}"), server.base_url)
        first = Run(config, command="test", clock=fixed_clock(SAMPLE_AS_OF))
        first.run_stages(["fetch", "classify"])
        before = len(server.chat_requests)
        report = first.run_stage("draft")
        first.finish()
        sent = server.chat_requests[before:]
        second = Run(config, command="test", clock=fixed_clock(SAMPLE_AS_OF))
        again = {r.stage: r for r in second.run_stages(["fetch", "classify", "draft"])}
        second.finish()
        resent = server.chat_requests[before + len(sent):]
    with first.ledger.engine.connect() as connection:
        drafts = connection.execute(select(schema.drafts)).all()
        waiting = connection.execute(
            select(func.count()).select_from(schema.stories).where(schema.stories.c.state == "new")
        ).scalar_one()
    yield config, report, sent, drafts, waiting, again, resent
    first.ledger.close()


def test_the_draft_stage_finishes_and_every_draft_is_written_or_says_why(drafted):
    config, report, _, drafts, waiting, _, _ = drafted
    assert report.items_in > 0 and report.items_out == report.items_in == len(drafts) and waiting == 0
    attention = [d for d in drafts if d.state == "needs_attention"]
    for draft in drafts:
        assert draft.method == "llm" and draft.state in ("drafted", "needs_attention")
        if draft.state == "needs_attention":
            assert draft.violations and draft.state_reason == "; ".join(draft.violations)
        else:
            assert draft.violations == [] and draft.state_reason is None
    # The stage does not report ok over drafts nobody can check: one error line per such draft, naming its story.
    assert len(report.errors) == len(attention)
    for draft in attention:
        line = next(e for e in report.errors if f"story {draft.story_key} " in e)
        assert f"draft {draft.id} needs attention: {draft.state_reason}" in line
    assert report.notes.get("drafts_needs_attention", 0) == len(attention)


def test_only_what_the_schema_cannot_say_is_left_wrong(drafted):
    """Citations, counts and the sources list come right from the schema; what is left is words per paragraph."""
    config, _, _, drafts, _, _, _ = drafted
    templates = load_templates(config.templates_dir, config.topic_names)
    for draft in drafts:
        article, pack = Article.model_validate(draft.article), ResearchPack.model_validate(draft.research)
        spec = templates[draft.template]
        given = {s.n for s in pack.sources}
        assert spec.body.min_paragraphs <= len(article.body) <= spec.body.max_paragraphs
        assert spec.insights.min_count <= len(article.insights) <= spec.insights.max_count
        assert all(set(part.citations) <= given and part.citations for part in [*article.body, *article.insights])
        assert [ref.n for ref in article.sources] == sorted({n for p in [*article.body, *article.insights] for n in p.citations})
        assert [v for v in draft.violations if not WORD_COUNT.match(v)] == [], draft.violations


def test_each_writer_request_carries_its_packs_source_numbers_and_the_template_counts(drafted):
    config, _, sent, drafts, _, _, _ = drafted
    templates = load_templates(config.templates_dir, config.topic_names)
    requests = writer_requests(sent)
    assert requests and len(requests) == len(sent), "the draft stage asks only the writer"
    packs = sorted(tuple(sorted(s.n for s in ResearchPack.model_validate(d.research).sources)) for d in drafts)
    asked = set()
    for request in requests:
        response_format = request.body["response_format"]
        assert response_format["type"] == "json_schema" and response_format["json_schema"]["strict"] is True
        strict = request.schema
        user = next(m["content"] for m in request.messages if m["role"] == "user")
        numbers = [int(n) for n in re.search(r"Valid source numbers: ([\d, ]+)\.", user).group(1).split(", ")]
        for name, sub in strict["$defs"].items():
            if "citations" in sub.get("properties", {}):
                assert sub["properties"]["citations"]["items"]["enum"] == numbers, name
        listed = [e["properties"]["n"]["enum"][0] for e in strict["properties"]["sources"]["items"]["anyOf"]]
        assert listed == numbers
        spec = next(s for s in templates.values() if request.schema_name == f"{s.name.capitalize()}Article")
        body = strict["properties"]["body"]
        assert (body["minItems"], body["maxItems"]) == (spec.body.min_paragraphs, spec.body.max_paragraphs)
        asked.add(tuple(numbers))
    assert asked == set(packs)


def test_calls_per_draft_stay_within_one_plus_the_repair_rounds(drafted):
    config, report, sent, drafts, _, _, _ = drafted
    by_draft = defaultdict(list)
    for request in writer_requests(sent):
        by_draft[json.dumps(request.messages[:2])].append(request)  # the same prompt: one draft's call and its repairs
    assert len(by_draft) == len(drafts)
    rounds = config.llm.repair_rounds
    for requests in by_draft.values():
        assert len(requests) <= 1 + rounds
        assert max(sum(m["role"] == "assistant" for m in r.messages) for r in requests) <= REPAIRS_PER_CALL
    calls = len(by_draft)
    repairs = sum(r.is_repair for r in sent)
    print(f"\nnaive server, writer: {len(drafts)} drafts, {len(sent)} requests = {calls} calls + {repairs} repairs "
          f"({len(sent) / len(drafts):.2f} per draft, {repairs / calls:.2f} repairs per call); "
          f"{sum(d.state == 'needs_attention' for d in drafts)} needs_attention")
    assert len(sent) / len(drafts) <= CALLS_PER_ARTICLE and repairs / calls <= REPAIRS_PER_CALL
    assert report.llm_calls == len(sent)


def test_a_rerun_makes_no_writer_call(drafted):
    _, _, _, drafts, _, again, resent = drafted
    assert writer_requests(resent) == [] and resent == []
    assert again["draft"].items_in == 0 and again["draft"].llm_calls == 0 and again["draft"].ok
