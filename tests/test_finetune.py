"""Style fine-tuning: the dataset (built from the sample articles and approved drafts, every validation
rule), the job API through the real openai SDK under respx, the eval with TestModel, and `use`."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
import respx
from rich.console import Console
from sqlalchemy import insert, select

from agents.writer import render_writer_prompt, write_draft
from pipeline.cli import main as cli
from pipeline.cli import finetune as cli_finetune
from pipeline.core import schema
from pipeline.core.config import parse_config
from pipeline.finetune.workflow import activate_writer_model, active_writer_model
from pipeline.finetune.dataset import (
    TITLE_ONLY_TEXT,
    DatasetError,
    Case,
    build_dataset,
    dataset_dir,
    min_examples_problem,
    read_cases,
    read_manifest,
    split_markers,
    validate_messages,
)
from pipeline.finetune.eval import evaluate, latest_report, save_report
from pipeline.finetune.jobs import JobError, cancel_job, follow_job, start_job
from pipeline.core.ledger import Ledger
from pipeline.services.llm import Gateway, make_client
from pipeline.core.models import Article, Insight, Paragraph, ResearchPack, SourceDoc, Story
from pipeline.text.templates import load_templates
from pipeline.services.testing import TestModel
from pipeline.core.tokens import count_messages

ROOT = Path(__file__).resolve().parent.parent
ARTICLES = ROOT / "examples" / "articles"
TEMPLATES = load_templates(ROOT / "templates")
API = "https://api.openai.com/v1"
CANDIDATE = "ft:gpt-4o-mini-2024-07-18:newsdesk:house-style:abc123"
BASE = "gpt-4o-mini"


def make_config(tmp_path: Path, **finetune):
    settings = {"articles_dir": str(ARTICLES), **finetune}
    return parse_config(
        {
            "newsroom": {"data_dir": "data"},
            "ledger": {"url": "sqlite:///ledger.sqlite"},
            "finetune": settings,
        },
        root=tmp_path,
    )


@pytest.fixture
def config(tmp_path):
    return make_config(tmp_path)


@pytest.fixture
def ledger(config):
    ledger = Ledger.from_config(config)
    yield ledger
    ledger.close()


def run(coroutine):
    return asyncio.run(coroutine)


# --- a story with real source texts, and the editor's approved article --------------------------

T = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
SOURCE_1 = (
    "Harbor Exchange said on Thursday it would list tokenised treasury bills for its customers in Europe. "
    "The exchange expects trading to start on December 2 with a minimum order of 100 euros. "
    "Chief executive Lina Ortiz said the product had been approved by the Kestrel Islands regulator. "
    "Harbor holds about 1.4 billion euros of customer assets, according to its latest report."
)
SOURCE_2 = (
    "Harbor Exchange will charge a fee of 0.15% on each tokenised bill trade, the company said in a filing. "
    "Analysts at Quarry Research said the fee undercuts two rival platforms. "
    "The bills will be issued by Meridian Bank and held by an independent custodian."
)


def harbor_sources() -> list[SourceDoc]:
    return [
        SourceDoc(n=1, item_id="i-harbor-1", title="Harbor Exchange to list tokenised treasury bills", outlet="Satoshi Wire",
                  published=T, url="https://satoshiwire.example/news/harbor-tbills", text=SOURCE_1),
        SourceDoc(n=2, item_id="i-harbor-2", title="Harbor sets 0.15% fee for tokenised bills", outlet="Block Street Journal",
                  published=T, url="https://blockstreet.example/2026/11/20/harbor-fee", text=SOURCE_2),
    ]


def harbor_story(key: str = "story-harbor") -> Story:
    return Story(key=key, title="Harbor Exchange to list tokenised treasury bills", item_ids=["i-harbor-1", "i-harbor-2"],
                 sources=["Satoshi Wire", "Block Street Journal"], topics=["markets"], score=0.8,
                 first_published=T, last_published=T)


def harbor_approved(markers: bool = False) -> Article:
    """The editor's version; with `markers`, citations sit in the text as an editor types them in a doc."""

    def part(text: str, cites: list[int]):
        return (f"{text} {''.join(f'[{n}]' for n in cites)}", []) if markers else (text, cites)

    body = [
        part("The exchange expects trading to start on December 2 with a minimum order of 100 euros.", [1]),
        part("Chief executive Lina Ortiz said the product had been approved by the Kestrel Islands regulator.", [1]),
        part("Harbor Exchange will charge a fee of 0.15% on each tokenised bill trade, the company said in a filing.", [2]),
    ]
    insights = [
        part("Analysts at Quarry Research said the fee undercuts two rival platforms.", [2]),
        part("The bills will be issued by Meridian Bank and held by an independent custodian.", [2]),
    ]
    return Article(
        headline="Harbor Exchange to list tokenised treasury bills in Europe",
        lead="Harbor Exchange said on Thursday it would list tokenised treasury bills for its customers in Europe.",
        body=[Paragraph(text=t, citations=c) for t, c in body],
        insights=[Insight(text=t, citations=c) for t, c in insights],
        sources=[],
    )


def store_approved_draft(ledger: Ledger, draft_id: str = "d-harbor", story: Story | None = None, article: Article | None = None) -> None:
    story = story or harbor_story()
    pack = ResearchPack(story_key=story.key, sources=harbor_sources(), budget_tokens=3000, used_tokens=400)
    approved = article or harbor_approved(markers=True)
    with ledger.begin() as connection:
        connection.execute(insert(schema.stories).values(
            **story.model_dump(mode="python"), late_item_ids=[], created=T, updated=T))
        connection.execute(insert(schema.drafts).values(
            id=draft_id, story_key=story.key, template="news", writer_model=BASE, method="llm",
            prompt_versions={"writer": "old-version"}, research=pack.model_dump(mode="json"),
            article=approved.model_dump(mode="json"), violations=[], state="approved", created=T, updated=T))
        connection.execute(insert(schema.approvals).values(
            draft_id=draft_id, doc_id="doc-1", article=approved.model_dump(mode="json"), edit_rate=0.1,
            writer_model=BASE, approved_at=T))


def harbor_case(case_id: str = "c1") -> Case:
    story = harbor_story(f"story-{case_id}")
    return Case(id=case_id, origin=f"test:{case_id}", template="news", story=story,
                pack=ResearchPack(story_key=story.key, sources=harbor_sources(), budget_tokens=0, used_tokens=0),
                article=harbor_approved(), split="valid")


# --- the dataset: sample articles round trip ------------------------------------------------------


def test_sample_articles_round_trip_into_writer_conversations(config, tmp_path):
    result = build_dataset(config, None)
    assert result.problems == [] and result.duplicates == []
    assert (len(result.train), len(result.valid)) == (11, 1)
    directory = result.directory
    assert directory == tmp_path / "data" / "finetune" / result.dataset_id

    lines = [json.loads(line) for name in ("train", "valid") for line in (directory / f"{name}.jsonl").read_text().splitlines()]
    assert len(lines) == 12
    for line in lines:
        assert list(line) == ["messages"]
        assert [m["role"] for m in line["messages"]] == ["system", "user", "assistant"]
    cases = {c.id: c for c in read_cases(directory, "all")}
    for example in [*result.train, *result.valid]:
        case = cases[example.case.id]
        spec = TEMPLATES[case.template]
        # The assistant reply is the approved article in the writer's form and passes the template.
        article = Article.model_validate_json(example.messages[2]["content"])
        assert all("[" not in p.text for p in article.body) and all(p.citations for p in article.body)
        assert validate_messages(example.messages, spec, case.pack.sources, max_tokens=16000, model=BASE) == []
        # The answer never leaks into the prompt: no body paragraph of the article appears in it.
        assert not any(p.text in example.messages[1]["content"] for p in article.body)
        assert TITLE_ONLY_TEXT in example.messages[1]["content"]

    manifest = read_manifest(directory)
    assert manifest["counts"] == {"examples": 12, "train": 11, "valid": 1, "rejected": 0, "duplicates": 0, "skipped_title_only": 0}
    assert manifest["sources"]["articles"] == 12 and manifest["sources"]["title_only_examples"] == 12
    tokens = sum(count_messages(e.messages, config.finetune.base_model) for e in result.train)
    assert manifest["tokens"]["train"] == tokens
    assert manifest["estimate"]["cost_usd"] == round(3 * tokens * 3.0 / 1_000_000, 4)  # epochs x tokens x price
    assert manifest["hash"].startswith(result.dataset_id)
    assert manifest["prompt_versions"]["writer"]

    again = build_dataset(config, None, write=False)
    assert again.dataset_id == result.dataset_id
    assert [e.case.id for e in again.valid] == [e.case.id for e in result.valid]


def test_examples_are_exactly_what_the_writer_sends(config, ledger):
    store_approved_draft(ledger)
    result = build_dataset(config, ledger, articles_dir=None, write=False)
    approved = next(e for e in [*result.train, *result.valid] if e.case.origin == "approval:d-harbor")
    seen = []

    def capture(request):
        seen.append(request.messages)
        return approved.messages[2]["content"]

    gateway = Gateway(config, ledger, backend=TestModel(function=capture))
    draft = run(write_draft(approved.case.story, approved.case.pack, TEMPLATES["news"], gateway))
    assert seen == [approved.messages[:2]]
    assert draft.violations == []
    # The editor's [n] markers moved into the citation arrays, as the writer is told to write them.
    reply = Article.model_validate_json(approved.messages[2]["content"])
    assert reply.body[2].text.endswith("in a filing.") and reply.body[2].citations == [2]
    assert [s.n for s in reply.sources] == [1, 2]
    assert SOURCE_2.split(". ")[1] in approved.messages[1]["content"]


def test_approved_drafts_join_the_past_articles(config, ledger):
    store_approved_draft(ledger)
    result = build_dataset(config, ledger)
    origins = [e.case.origin for e in [*result.train, *result.valid]]
    assert "approval:d-harbor" in origins and len(origins) == 13
    assert result.manifest["sources"]["approved_drafts"] == 1
    assert result.manifest["approved_drafts_written_with"] == {"old-version": 1}


def test_source_texts_come_from_a_sources_file_beside_the_article(tmp_path):
    folder = tmp_path / "articles"
    folder.mkdir()
    for path in sorted(ARTICLES.glob("*.md"))[:3]:
        shutil.copy(path, folder / path.name)
    first = sorted(folder.glob("*.md"))[0]
    front = first.read_text()
    url = front.split("url: ", 1)[1].split("\n", 1)[0].strip()
    (folder / f"{first.stem}.sources.json").write_text(json.dumps([{"url": url, "text": "Archived source text, word for word."}]))
    config = make_config(tmp_path, articles_dir=str(folder), min_examples=1)
    result = build_dataset(config, None, write=False)
    example = next(e for e in [*result.train, *result.valid] if e.case.origin == f"article:{first.name}")
    assert "Archived source text, word for word." in example.messages[1]["content"]
    assert example.case.title_only_sources == 1  # the article's second source still has no text

    (folder / f"{first.stem}.sources.json").write_text(json.dumps([{"url": "https://elsewhere.example/x", "text": "t"}]))
    broken = build_dataset(config, None, write=False)
    assert [p.origin for p in broken.problems] == [f"article:{first.name}"]
    assert "the article does not: https://elsewhere.example/x" in broken.problems[0].errors[0]

    urls = [line.split("url: ", 1)[1].strip() for line in front.splitlines() if "url: " in line]
    (folder / f"{first.stem}.sources.json").write_text(json.dumps([{"url": u, "text": f"Text of {u}."} for u in urls]))
    skipped = build_dataset(config, None, write=False, skip_title_only=True)
    assert skipped.skipped_title_only == 2
    assert [e.case.origin for e in skipped.train] == [f"article:{first.name}"]


def test_problems_are_reported_per_example_and_duplicates_dropped(tmp_path):
    folder = tmp_path / "articles"
    shutil.copytree(ARTICLES, folder)
    shutil.copy(folder / "2026-10-22-restaked-ether-collateral.md", folder / "copy-of-restaked.md")
    (folder / "no-sources.md").write_text("---\nheadline: A\ndate: 2026-11-01\n---\nLead.\n")
    long_headline = (folder / "2026-11-10-palisade-slashing-date.md").read_text().replace(
        "headline: Palisade will", "headline: " + "Very " * 30 + "long Palisade will")
    (folder / "2026-11-10-palisade-slashing-date.md").write_text(long_headline)
    (folder / "broken.json").write_text("{not json")
    config = make_config(tmp_path, articles_dir=str(folder))
    result = build_dataset(config, None)

    problems = {p.origin: p.errors for p in result.problems}
    assert "no sources" in problems["article:no-sources.md"][0]
    assert "not valid JSON" in problems["article:broken.json"][0]
    assert any("headline is" in e and "the limit is 90" in e for e in problems["article:2026-11-10-palisade-slashing-date.md"])
    assert result.duplicates == ["article:copy-of-restaked.md repeats article:2026-10-22-restaked-ether-collateral.md"]
    assert len(result.train) + len(result.valid) == 11


def _good_messages():
    case = harbor_case()
    spec = TEMPLATES["news"]
    prompt = render_writer_prompt(case.story, case.pack, spec)
    reply = case.article.model_copy(update={"sources": []})
    from pipeline.finetune.dataset import assistant_json, writer_form

    return [*prompt.messages, {"role": "assistant", "content": assistant_json(writer_form(reply, case.pack.sources))}], spec, case.pack.sources


def test_each_validation_rule_rejects_its_case():
    messages, spec, sources = _good_messages()

    def check(msgs, max_tokens=16000):
        return validate_messages(msgs, spec, sources, max_tokens=max_tokens, model=BASE)

    assert check(messages) == []
    assert "exactly system, user, assistant" in check([messages[1], messages[0], messages[2]])[0]
    assert "exactly system, user, assistant" in check(messages[:2])[0]
    assert check([messages[0], {"role": "user", "content": "  "}, messages[2]]) == ["message 2 (user) is empty"]
    assert check(messages, max_tokens=200)[0].endswith("the limit per example is 200 (finetune.max_example_tokens)")

    no_lead = json.loads(messages[2]["content"])
    del no_lead["lead"]
    problem = check([*messages[:2], {"role": "assistant", "content": json.dumps(no_lead)}])
    assert problem == ["the assistant reply is not a valid news Article: lead: Field required"]

    too_many = json.loads(messages[2]["content"])
    too_many["lead"] = "One. Two sentences. Three sentences now."
    too_many["sources"] = too_many["sources"][:1]
    problems = check([*messages[:2], {"role": "assistant", "content": json.dumps(too_many)}])
    assert "template news: lead has 3 sentences; it must have 1–2" in problems
    assert "template news: source [2] is cited but missing from the sources list" in problems


def test_too_few_examples_writes_nothing_and_says_why(tmp_path):
    config = make_config(tmp_path, min_examples=50)
    result = build_dataset(config, None)
    assert result.directory is None and not (tmp_path / "data" / "finetune").exists()
    assert min_examples_problem(config, result).startswith("only 11 training example(s) after validation; finetune.min_examples is 50")


def test_html_and_json_articles_give_the_same_example_as_markdown(tmp_path):
    source = ARTICLES / "2026-10-22-restaked-ether-collateral.md"
    from pipeline.finetune.dataset import read_past_article

    past = read_past_article(source)
    links = "".join(f'<li><a href="{s["url"]}">{s["title"]}</a> — {s["outlet"]}</li>' for s in past.sources)
    html = (
        f'<html><head><meta name="date" content="{past.published}"><meta name="template" content="{past.template}"></head>'
        f"<body><nav><a href='/'>Home</a></nav><article><h1>{past.headline}</h1><p>{past.lead}</p>"
        + "".join(f"<p>{p}</p>" for p in past.body)
        + "<h2>Insights</h2><ul>" + "".join(f"<li>{i}</li>" for i in past.insights) + "</ul>"
        + f"<h2>Sources</h2><ol>{links}</ol></article></body></html>"
    )
    as_json = {"headline": past.headline, "date": str(past.published), "template": past.template, "lead": past.lead,
               "body": past.body, "insights": [{"text": split_markers(i)[0], "citations": split_markers(i)[1]} for i in past.insights],
               "sources": past.sources}
    outputs = {}
    for name, text in (("md", source.read_text()), ("html", html), ("json", json.dumps(as_json))):
        folder = tmp_path / name
        folder.mkdir()
        (folder / f"{source.stem}.{name}").write_text(text)
        result = build_dataset(make_config(tmp_path, articles_dir=str(folder), min_examples=1), None, write=False)
        assert result.problems == [], (name, result.problems)
        outputs[name] = result.train[0].messages
    assert outputs["html"] == outputs["md"] and outputs["json"] == outputs["md"]


def test_markers_leave_the_text():
    assert split_markers("rose 5% [2][3]. Then [1, 4] fell.") == ("rose 5%. Then fell.", [2, 3, 1, 4])


# --- jobs through the real SDK under respx ------------------------------------------------------------


def job_json(status: str, **fields):
    return {
        "id": "ftjob-1", "object": "fine_tuning.job", "created_at": 1_763_600_000, "model": "gpt-4o-mini-2024-07-18",
        "status": status, "fine_tuned_model": None, "error": None, "finished_at": None, "organization_id": "org-1",
        "result_files": [], "seed": 7, "trained_tokens": None, "training_file": "file-train", "validation_file": "file-valid",
        "hyperparameters": {"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": "auto"}, **fields,
    }


def event(n: int, message: str, **data):
    return {"id": f"ftevent-{n}", "object": "fine_tuning.job.event", "created_at": 1_763_600_000 + n, "level": "info",
            "message": message, "type": "metrics" if data else "message", "data": data}


def events_page(*events):
    return {"object": "list", "data": list(reversed(events)), "has_more": False}  # newest first, like the API


@pytest.fixture
def client(config, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-finetune-000000")
    return lambda: make_client(config, http_client=httpx.AsyncClient())


@pytest.fixture
def built(config):
    return build_dataset(config, None).directory


def test_start_uploads_both_files_and_creates_the_exact_job(config, ledger, client, built):
    files = iter(["file-train", "file-valid"])
    with respx.mock(base_url=API, assert_all_called=True) as mock:
        upload = mock.post("/files").mock(side_effect=lambda request: httpx.Response(200, json={
            "id": next(files), "object": "file", "bytes": 10, "created_at": 1, "filename": "x.jsonl", "purpose": "fine-tune", "status": "processed"}))
        create = mock.post("/fine_tuning/jobs").respond(200, json=job_json("validating_files"))
        view = run(start_job(config, ledger, client(), built))

    assert view.status == "validating_files"
    first, second = (call.request.content for call in upload.calls)
    assert b'name="purpose"\r\n\r\nfine-tune' in first
    assert b'filename="train.jsonl"' in first and (built / "train.jsonl").read_bytes() in first
    assert b'filename="valid.jsonl"' in second and (built / "valid.jsonl").read_bytes() in second
    assert json.loads(create.calls[0].request.content) == {
        "model": "gpt-4o-mini-2024-07-18",
        "training_file": "file-train",
        "validation_file": "file-valid",
        "suffix": "house-style",
        "method": {"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": "auto"}}},
        "metadata": {"newsdesk_dataset": read_manifest(built)["dataset_id"]},
    }
    with ledger.engine.connect() as connection:
        row = connection.execute(select(schema.finetune_jobs)).one()
    assert (row.id, row.status, row.training_file, row.validation_file) == ("ftjob-1", "validating_files", "file-train", "file-valid")
    assert row.dataset_id == read_manifest(built)["dataset_id"]

    with pytest.raises(JobError, match="already has job ftjob-1 .validating_files.; .* --again"):
        run(start_job(config, ledger, client(), built))


def test_start_refuses_a_dataset_edited_after_the_build(config, ledger, client, built):
    with open(built / "train.jsonl", "a") as handle:
        handle.write('{"messages": [{"role": "user", "content": "unchecked"}]}\n')
    with respx.mock(base_url=API, assert_all_called=False) as mock:
        upload = mock.post("/files")
        with pytest.raises(DatasetError, match="differs from what `finetune build` validated"):
            run(start_job(config, ledger, client(), built))
    assert not upload.called


def test_hyperparameters_come_from_config(tmp_path, ledger, client):
    config = make_config(tmp_path, epochs=2, batch_size=4, learning_rate_multiplier=0.5, suffix="desk", valid_fraction=0)
    directory = build_dataset(config, None).directory
    with respx.mock(base_url=API) as mock:
        mock.post("/files").respond(200, json={"id": "file-train", "object": "file", "bytes": 1, "created_at": 1,
                                               "filename": "train.jsonl", "purpose": "fine-tune"})
        create = mock.post("/fine_tuning/jobs").respond(200, json=job_json("validating_files", validation_file=None))
        run(start_job(config, ledger, client(), directory))
    body = json.loads(create.calls[0].request.content)
    assert "validation_file" not in body and body["suffix"] == "desk"
    assert body["method"]["supervised"]["hyperparameters"] == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}


def test_a_rejected_job_shows_the_providers_message(config, ledger, client, built):
    with respx.mock(base_url=API) as mock:
        mock.post("/files").respond(200, json={"id": "file-x", "object": "file", "bytes": 1, "created_at": 1, "filename": "t", "purpose": "fine-tune"})
        mock.post("/fine_tuning/jobs").respond(400, json={"error": {"message": "Model gpt-4o-mini-2024-07-18 is not available for fine-tuning", "type": "invalid_request_error"}})
        with pytest.raises(JobError, match="HTTP 400: Model gpt-4o-mini-2024-07-18 is not available for fine-tuning"):
            run(start_job(config, ledger, client(), built))
    with ledger.engine.connect() as connection:
        assert connection.execute(select(schema.finetune_jobs)).all() == []


def test_status_follows_the_job_to_success_and_records_the_model(config, ledger, client):
    updates, sleeps = [], []
    statuses = [job_json("validating_files"), job_json("running"),
                job_json("succeeded", fine_tuned_model=CANDIDATE, trained_tokens=51621)]
    pages = [events_page(event(1, "Validating training file")),
             events_page(event(1, "Validating training file"), event(2, "Fine-tuning job started"), event(3, "Step 10/33", step=10, total_steps=33)),
             events_page(event(1, "Validating training file"), event(2, "Fine-tuning job started"), event(3, "Step 10/33", step=10, total_steps=33),
                         event(4, "The job has successfully completed"))]

    async def no_wait(seconds):
        sleeps.append(seconds)

    with respx.mock(base_url=API, assert_all_called=True) as mock:
        mock.get("/fine_tuning/jobs/ftjob-1").mock(side_effect=[httpx.Response(200, json=j) for j in statuses])
        mock.get("/fine_tuning/jobs/ftjob-1/events").mock(side_effect=[httpx.Response(200, json=p) for p in pages])
        final = run(follow_job(ledger, client(), "ftjob-1", lambda job, events: updates.append((job.status, [e.message for e in events])),
                               interval=5, sleep=no_wait))

    assert updates == [
        ("validating_files", ["Validating training file"]),
        ("running", ["Fine-tuning job started", "Step 10/33"]),
        ("succeeded", ["The job has successfully completed"]),
    ]
    assert sleeps == [5, 5]
    assert final.fine_tuned_model == CANDIDATE and final.trained_tokens == 51621
    with ledger.engine.connect() as connection:
        row = connection.execute(select(schema.finetune_jobs)).one()
    assert (row.status, row.fine_tuned_model) == ("succeeded", CANDIDATE)


def test_a_failed_job_shows_the_providers_error(config, ledger, client, tmp_path, monkeypatch):
    failed = job_json("failed", error={"code": "invalid_training_file", "param": "training_file",
                                       "message": "Example 3 has an assistant message with no content."})
    (tmp_path / "config.toml").write_text('[ledger]\nurl = "sqlite:///ledger.sqlite"\n[newsroom]\ndata_dir = "data"\n')
    out = io.StringIO()
    monkeypatch.setattr(cli_finetune, "console", Console(file=out, width=200))  # not a terminal: plain lines
    monkeypatch.setattr(cli_finetune, "make_provider_client", lambda config: client())
    with respx.mock(base_url=API) as mock:
        mock.get("/fine_tuning/jobs/ftjob-1").respond(200, json=failed)
        mock.get("/fine_tuning/jobs/ftjob-1/events").respond(200, json=events_page(
            event(1, "Validating training file"), event(2, "Training file has 1 invalid example")))
        code = cli.main(["finetune", "status", "ftjob-1", "--config", str(tmp_path / "config.toml")])

    text = out.getvalue()
    assert code == 1
    assert "Training file has 1 invalid example" in text and "job ftjob-1: failed" in text
    assert "failed: invalid_training_file Example 3 has an assistant message with no content." in text
    assert "writer model: gpt-4o-mini (from config)" in text
    with ledger.engine.connect() as connection:
        row = connection.execute(select(schema.finetune_jobs)).one()
    assert row.status == "failed" and "no content" in row.error


def test_cancel_records_the_cancellation(config, ledger, client):
    with respx.mock(base_url=API, assert_all_called=True) as mock:
        route = mock.post("/fine_tuning/jobs/ftjob-1/cancel").respond(200, json=job_json("cancelled"))
        view = run(cancel_job(ledger, client(), "ftjob-1"))
    assert route.called and view.status == "cancelled" and view.done
    with ledger.engine.connect() as connection:
        assert connection.execute(select(schema.finetune_jobs.c.status)).scalar_one() == "cancelled"

    with respx.mock(base_url=API) as mock:
        mock.post("/fine_tuning/jobs/ftjob-2/cancel").respond(404, json={"error": {"message": "No such fine-tuning job: ftjob-2"}})
        with pytest.raises(JobError, match="cancelling job ftjob-2: provider answered HTTP 404: No such fine-tuning job"):
            run(cancel_job(ledger, client(), "ftjob-2"))


# --- eval and use ---------------------------------------------------------------------------------


def scripted_writer(candidate_replies):
    """The candidate answers from `candidate_replies(case_story_title, attempt)`; every other model gets
    TestModel's schema-driven sample, which fits the schema but not the template's word counts."""
    attempts: dict[tuple[str, str], int] = {}

    def answer(request):
        if request.model != CANDIDATE:
            return None
        user = request.messages[1]["content"]
        key = (request.model, user)
        attempts[key] = attempts.get(key, 0) + 1
        return candidate_replies(attempts[key])

    return TestModel(function=answer)


def good_reply(attempt):
    """The approved article, as the writer would return it."""
    reply = harbor_approved().model_dump(mode="json")
    reply["sources"] = [{"n": s.n, "title": s.title, "outlet": s.outlet, "url": s.url} for s in harbor_sources()]
    return reply


def test_eval_compares_the_models_on_the_same_stories(config, ledger):
    cases = [harbor_case("c1"), harbor_case("c2")]
    backend = scripted_writer(good_reply)
    report = run(evaluate(config, ledger, cases, "ds1", CANDIDATE, BASE, backend=backend))
    ours, theirs = report.scores["candidate"], report.scores["baseline"]

    assert (ours.first_try_compliant, ours.compliant, ours.repair_rounds, ours.errors) == (2, 2, 0, 0)
    assert ours.mean_edit_rate == 0.0
    assert ours.claims > 0 and ours.factcheck_pass_rate == 1.0
    assert (theirs.first_try_compliant, theirs.compliant, theirs.repair_rounds) == (0, 0, 2)  # one repair round each, still invalid
    assert theirs.mean_edit_rate > 0.5
    assert ours.prompt_tokens > 0 and ours.cost_usd > 0 and theirs.cost_usd > 0
    assert report.verdict.at_least_as_good
    # Both models saw the same prompts.
    prompts = {}
    for request in backend.requests:
        prompts.setdefault(request.model, []).append(request.messages[1]["content"])
    assert set(prompts[CANDIDATE]) == set(prompts[BASE]) and len(set(prompts[BASE])) == 1

    path = save_report(config, report)
    assert path.parent == config.data_dir / "finetune" / "evals"
    assert latest_report(config, CANDIDATE).scores["candidate"].first_try_compliant == 2


def test_eval_counts_repair_rounds_and_ignores_the_cache(config, ledger):
    replies = lambda attempt: {"headline": "x"} if attempt == 1 else good_reply(attempt)  # noqa: E731
    for _ in range(2):  # the second eval must not be served the first one's cached answer
        report = run(evaluate(config, ledger, [harbor_case("c1")], "ds1", CANDIDATE, BASE, backend=scripted_writer(replies)))
        ours = report.scores["candidate"]
        assert (ours.first_try_compliant, ours.compliant, ours.repair_rounds) == (0, 1, 1)


def test_use_needs_an_eval_at_least_as_good(config, ledger):
    refused = activate_writer_model(config, ledger, CANDIDATE)
    assert not refused.activated and f"no eval of {CANDIDATE} yet" in refused.message
    assert active_writer_model(config, ledger) == BASE

    # An eval where the candidate is the worse model.
    worse = run(evaluate(config, ledger, [harbor_case()], "ds1", CANDIDATE, BASE,
                         backend=TestModel(function=lambda r: good_reply(1) if r.model == BASE else None)))
    save_report(config, worse)
    refused = activate_writer_model(config, ledger, CANDIDATE)
    assert not refused.activated and "lower first-try compliance (0% vs 100%)" in refused.message

    forced = activate_writer_model(config, ledger, CANDIDATE, force=True)
    assert forced.activated and ledger.get_setting("writer_model") == CANDIDATE
    assert ledger.get_setting("writer_model_eval").startswith("forced: ")
    assert Gateway(config, ledger, backend=TestModel()).model_for("writer") == CANDIDATE


def test_use_switches_after_a_good_eval(config, ledger):
    report = run(evaluate(config, ledger, [harbor_case()], "ds1", CANDIDATE, BASE, backend=scripted_writer(good_reply)))
    save_report(config, report)
    switched = activate_writer_model(config, ledger, CANDIDATE)
    assert switched.activated, switched.message
    assert ledger.get_setting("writer_model") == CANDIDATE
    summary = ledger.get_setting("writer_model_eval")
    assert "first-try compliant 1/1 vs 0/1" in summary and f"vs {BASE}" in summary
    # A newer model must be evaluated against the model now active, not the old baseline.
    newer = CANDIDATE + "-v2"
    assert "no eval of" in activate_writer_model(config, ledger, newer).message


def test_cli_build_and_use(tmp_path, monkeypatch):
    (tmp_path / "config.toml").write_text(
        f'[newsroom]\ndata_dir = "data"\n[ledger]\nurl = "sqlite:///ledger.sqlite"\n[finetune]\narticles_dir = "{ARTICLES}"\n'
    )
    out = io.StringIO()
    monkeypatch.setattr(cli_finetune, "console", Console(file=out, width=200))
    cfg = str(tmp_path / "config.toml")
    assert cli.main(["finetune", "build", "--config", cfg]) == 0
    dataset = dataset_dir(make_config(tmp_path))
    assert f"written to {dataset}" in out.getvalue()
    assert "estimated cost" in out.getvalue() and "3 epochs" in out.getvalue()
    assert cli.main(["finetune", "use", CANDIDATE, "--config", cfg]) == 1
    assert "not switched: no eval" in out.getvalue()
    assert cli.main(["finetune", "use", CANDIDATE, "--force", "--config", cfg]) == 0
    assert cli.main(["finetune", "status", "--config", cfg]) == 0
    assert f"writer model: {CANDIDATE} (active in the ledger); eval: forced" in out.getvalue()


def test_cli_eval_through_the_sdk_then_use(tmp_path, monkeypatch, allow_model_requests):
    """End to end over HTTP: the candidate answers every validation prompt with its approved article,
    the base model with schema-valid text that breaks the template."""
    from tests.fakes.openai_server import FakeOpenAIServer

    (tmp_path / "config.toml").write_text(
        f'[newsroom]\ndata_dir = "data"\n[ledger]\nurl = "sqlite:///ledger.sqlite"\n'
        f'[finetune]\narticles_dir = "{ARTICLES}"\nvalid_fraction = 0.25\nmin_examples = 5\n'
    )
    cfg = str(tmp_path / "config.toml")
    out = io.StringIO()
    monkeypatch.setattr(cli_finetune, "console", Console(file=out, width=220))
    assert cli.main(["finetune", "build", "--config", cfg]) == 0
    directory = dataset_dir(make_config(tmp_path))
    answers = {}
    for line in (directory / "valid.jsonl").read_text().splitlines():
        messages = json.loads(line)["messages"]
        answers[messages[1]["content"]] = messages[2]["content"]
    assert len(answers) == 3

    def reply(body):
        return answers[body["messages"][1]["content"]] if body["model"] == CANDIDATE else None

    from pipeline.finetune.jobs import JobView, record_job

    ledger = Ledger.from_config(make_config(tmp_path))
    record_job(ledger, JobView(id="ftjob-1", status="succeeded", model="gpt-4o-mini-2024-07-18", fine_tuned_model=CANDIDATE))
    with FakeOpenAIServer(reply=reply) as server:
        with open(cfg, "a") as handle:
            handle.write(f'[llm]\nbase_url = "{server.base_url}"\n')
        assert cli.main(["finetune", "eval", CANDIDATE, "--config", cfg]) == 0
        models = [r.body["model"] for r in server.chat_requests]
    assert models.count(CANDIDATE) == 3 and models.count(BASE) == 6  # one repair round for each base draft

    text = out.getvalue()
    assert "template compliant, first try" in text and "3/3 (100%)" in text and "0/3 (0%)" in text
    assert f"{CANDIDATE} is at least as good as {BASE}" in text
    saved = list((tmp_path / "data" / "finetune" / "evals").glob("*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["scores"]["candidate"]["mean_edit_rate"] == 0.0

    with ledger.engine.connect() as connection:
        job_eval = connection.execute(select(schema.finetune_jobs.c.eval)).scalar_one()
    assert job_eval["at_least_as_good"] is True and job_eval["file"] == str(saved[0])

    assert cli.main(["finetune", "use", CANDIDATE, "--config", cfg]) == 0
    assert f"writer model is now {CANDIDATE} (was {BASE})" in out.getvalue()
    ledger.close()
