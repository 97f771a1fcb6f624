"""Issue 14: the classifier against a server that follows the request's JSON schema literally.

`tests/fakes/naive_server.py` stands for a small local model behind a grammar-constrained
decoder: every reply is schema-valid and otherwise random. The real openai SDK talks to it
through `llm.base_url`, on the sample feeds of a fresh demo workspace. Whatever the project
needs must be in the schema itself, or be checked and bounded after the reply: the run
completes, every item is classified (by the model, or offline once its attempts ran out),
calls and repairs stay within the issue's targets, and a rerun on unchanged feeds costs nothing.
Only fetch and classify run here: the writer and judge roles belong to other stages.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Literal

import pytest
from pydantic import BaseModel, Field
from sqlalchemy import select

from agents.classifier import batch_schema
from pipeline.core import schema
from pipeline.core.config import load_config
from pipeline.cli.demo import prepare_workspace
from pipeline.services.llm import strict_json_schema
from pipeline.core.models import Classification, ItemState
from pipeline.flow.runner import Run
from pipeline.services.testing import allow_model_requests
from tests.fakes.naive_server import NaiveServer, fill

TOPICS = ["markets", "regulation", "security", "defi", "infrastructure"]
CALLS_PER_ITEM = 3  # the targets: model calls per item on average, repairs per call
REPAIRS_PER_CALL = 1


# --- the server itself ----------------------------------------------------------------------------


class Note(BaseModel):
    kind: Literal["news", "analysis"]
    score: float = Field(ge=0, le=1)
    count: int = Field(ge=2, le=4)
    tags: list[str] = Field(min_length=1, max_length=2)
    editor: str | None
    title: str = Field(min_length=30)  # strict mode cannot carry minLength: only a description hint


def test_the_naive_server_fills_a_schema_literally_and_nothing_more():
    strict = strict_json_schema(Note)
    values = [fill(strict, random.Random(seed)) for seed in range(200)]
    for value in values:
        assert value["kind"] in ("news", "analysis") and 0 <= value["score"] <= 1 and 2 <= value["count"] <= 4
        assert 1 <= len(value["tags"]) <= 2 and (value["editor"] is None or isinstance(value["editor"], str))
    assert {v["editor"] is None for v in values} == {True, False}  # nullable: both
    assert {v["kind"] for v in values} == {"news", "analysis"}
    # A hint in a description is not a constraint: the naive decoder ignores it.
    assert any(len(v["title"]) < 30 for v in values)
    assert fill(strict, random.Random(5)) == fill(strict, random.Random(5))


def test_the_classifier_schema_leaves_a_naive_decoder_only_duplicate_ids_to_get_wrong():
    ids = [f"i{n}" for n in range(1, 13)]
    model = batch_schema(ids, TOPICS)
    strict = strict_json_schema(model)
    duplicates = 0
    for seed in range(200):
        value = fill(strict, random.Random(seed))
        batch = model.model_validate(value)  # schema-valid, always: ids, topics, counts, relevant-with-a-topic
        assert len(batch.results) == 12
        assert all(set(r.topics) <= set(TOPICS) and (r.topics or not r.relevant) for r in batch.results)
        duplicates += any(n > 1 for n in Counter(r.id for r in batch.results).values())
    assert duplicates > 150  # what no JSON schema can say is left to the validator
    alone = batch_schema(["i1"], TOPICS)
    for seed in range(50):  # asked alone, even the naive decoder cannot be wrong
        assert alone.model_validate(fill(strict_json_schema(alone), random.Random(seed))).results[0].id == "i1"


# --- fetch + classify on the sample feeds ---------------------------------------------------------


def naive_desk(root, base_url: str):
    workspace = prepare_workspace(root / "desk")
    config_file = workspace / "config.toml"
    text = config_file.read_text()
    assert "\noffline = true\n" in text
    config_file.write_text(text.replace("\noffline = true\n", f'\noffline = false\nbase_url = "{base_url}"\n'))
    return load_config(config_file)


def classifications(run: Run) -> dict[str, tuple[str, Classification | None, int]]:
    with run.ledger.engine.connect() as connection:
        rows = connection.execute(
            select(schema.items.c.id, schema.items.c.state, schema.items.c.classification, schema.items.c.classify_attempts)
        ).all()
    return {r.id: (r.state, Classification.model_validate(r.classification) if r.classification else None,
                   r.classify_attempts) for r in rows}


@pytest.fixture(scope="module", params=[7, 2026])
def naive_runs(request, tmp_path_factory):
    """Two runs over the same workspace against one naive server: the first fetches and classifies
    the sample feeds, the second finds the feeds unchanged."""
    with allow_model_requests(), NaiveServer(seed=request.param) as server:
        config = naive_desk(tmp_path_factory.mktemp(f"naive-{request.param}"), server.base_url)
        first = Run(config, command="test")
        reports = {r.stage: r for r in first.run_stages(["fetch", "classify"])}
        first.finish()
        sent = list(server.chat_requests)
        second = Run(config, command="test")
        again = {r.stage: r for r in second.run_stages(["fetch", "classify"])}
        second.finish()
        resent = server.chat_requests[len(sent):]
    yield first, reports, sent, again, resent
    first.ledger.close()


def test_fetch_and_classify_complete_and_every_item_is_classified(naive_runs):
    run, reports, sent, _, _ = naive_runs
    fetch, classify = reports["fetch"], reports["classify"]
    assert fetch.ok and fetch.items_out == 40
    assert classify.ok, classify.errors
    assert classify.items_in == 40 and classify.items_out == 40 and classify.notes["left_for_next_run"] == 0
    stored = classifications(run)
    assert all(state in (ItemState.classified, ItemState.irrelevant) for state, _, _ in stored.values())
    methods = Counter(c.method for _, c, _ in stored.values())
    assert set(methods) <= {"llm", "prefilter", "offline-fallback"} and methods["llm"] > 0
    assert methods["offline-fallback"] == classify.notes["fell_back_offline"]
    for _, classification, attempts in stored.values():
        assert set(classification.topics) <= set(TOPICS)
        assert classification.relevant == bool(classification.topics)
        if classification.method == "offline-fallback":
            assert attempts >= run.config.llm.max_classify_attempts
    # Through the real SDK, in strict json_schema mode, with the batch's own schema.
    for request in sent:
        response_format = request.body["response_format"]
        assert response_format["type"] == "json_schema" and response_format["json_schema"]["strict"] is True
        assert request.schema_name == "BatchResult"
    assert classify.llm_calls == len(sent)


def test_calls_per_item_and_repairs_per_call_are_within_the_target(naive_runs):
    run, reports, sent, _, _ = naive_runs
    classify = reports["classify"]
    to_model = classify.items_in - classify.notes["prefiltered"] - classify.notes["reused"]
    repairs = sum(r.is_repair for r in sent)
    calls = len(sent) - repairs  # gateway calls: a first request each, then its repair rounds
    rounds = [sum(m["role"] == "assistant" for m in r.messages) for r in sent]
    print(f"\nnaive server: {classify.items_in} new items, {to_model} to the model; {len(sent)} requests = "
          f"{calls} calls + {repairs} repairs -> {len(sent) / to_model:.2f} requests per modelled item, "
          f"{len(sent) / classify.items_in:.2f} per new item, {repairs / calls:.2f} repairs per call; "
          f"{classify.notes['batches']} batches, {classify.notes['retried_alone']} asked alone, "
          f"{classify.notes['failed_attempts']} failed attempts, {classify.notes['fell_back_offline']} fell back offline")
    assert to_model > 0
    assert len(sent) / to_model <= CALLS_PER_ITEM
    assert max(rounds) <= REPAIRS_PER_CALL and repairs / calls <= REPAIRS_PER_CALL
    # What the naive decoder can still get wrong (an id twice) is repaired once at most, then asked alone.
    assert all(len(json.loads(r.messages[-2]["content"])["results"]) > 1 for r in sent if r.is_repair)


def test_a_rerun_on_unchanged_feeds_makes_no_model_call(naive_runs):
    run, _, _, again, resent = naive_runs
    assert resent == []
    assert again["fetch"].ok and again["classify"].items_in == 0 and again["classify"].llm_calls == 0
