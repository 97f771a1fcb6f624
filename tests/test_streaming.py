"""Drafting and checking stream in one run: a draft's check starts the moment the draft is saved.

The model here is the newsroom fake behind the real openai SDK, with one twist: every writer request after
the first is held until a judge request has arrived. Run one stage after the other, the held writers would
wait for a check that only starts once they are done (the test's ceiling ends that as a failed run); streamed,
the first draft's check goes out while the other stories are still being written, and every story is drafted,
checked and reported under its own stage.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from sqlalchemy import select

from pipeline.cli.demo import prepare_workspace
from pipeline.core import schema
from pipeline.core.clock import fixed_clock
from pipeline.core.config import load_config
from pipeline.flow import runner
from pipeline.flow.runner import Run
from pipeline.services.testing import allow_model_requests
from tests.conftest import SAMPLE_AS_OF
from tests.fakes.newsroom_model import NewsroomModel, role_of
from tests.fakes.openai_server import FakeOpenAIServer, Fault

KEY_ENV = "NEWSDESK_STREAMING_TEST_KEY"
CEILING_S = 60  # only for a run that would hang; nothing here depends on how fast anything is


class WritersWaitForAJudge:
    """The newsroom fake; writer requests after the first wait (up to the ceiling) for a judge request."""

    def __init__(self) -> None:
        self.ceiling = CEILING_S
        self.model = NewsroomModel(beat=("security",))
        self.judged = threading.Event()
        self.roles: list[str] = []
        self.writers_answered_after_a_judge = 0
        self._lock = threading.Lock()

    def __call__(self, body: dict):
        role = role_of(body)
        with self._lock:
            self.roles.append(role)
            first_writer = role == "writer" and self.roles.count("writer") == 1
        if role == "judge":
            self.judged.set()
        if role == "writer" and not first_writer:
            if not self.judged.wait(self.ceiling):
                return Fault(503, "no judge request came while this writer was held")
            with self._lock:
                self.writers_answered_after_a_judge += 1
        return self.model(body)


@pytest.fixture
def online_workspace(tmp_path, monkeypatch):
    workspace = prepare_workspace(tmp_path / "ws")
    model = WritersWaitForAJudge()
    with FakeOpenAIServer(reply=model) as server:
        config = (workspace / "config.toml").read_text().replace(
            "offline = true", f'offline = false\nbase_url = "{server.base_url}"\napi_key_env = "{KEY_ENV}"\nmax_retries = 0')
        (workspace / "config.toml").write_text(config)
        monkeypatch.setenv(KEY_ENV, "sk-streaming-test")
        with allow_model_requests():
            yield workspace, model


def run_all(workspace) -> Run:
    run = Run(load_config(workspace / "config.toml"), command="test", clock=fixed_clock(SAMPLE_AS_OF))
    try:
        run.run_stages(["fetch", "classify", "draft", "check"])
    finally:
        run.close()
    return run


def test_a_draft_is_checked_while_the_other_stories_are_still_being_written(online_workspace, monkeypatch):
    import agents.fact_checker as fact_checker

    workspace, model = online_workspace
    warmed = []
    warm = fact_checker.warm_evidence
    monkeypatch.setattr(fact_checker, "warm_evidence",
                        lambda pack, *args: (warmed.append((pack.story_key, args[-1])), warm(pack, *args)))
    run = run_all(workspace)

    reports = {r.stage: r for r in run.reports}
    assert [r.stage for r in run.reports] == ["fetch", "classify", "draft", "check"]
    assert not reports["draft"].errors, reports["draft"].errors
    assert reports["draft"].items_out >= 3, "the desk's sample stories were drafted"
    assert model.writers_answered_after_a_judge == reports["draft"].items_out - 1
    with run.ledger.engine.connect() as connection:
        states = Counter(connection.execute(select(schema.drafts.c.state)).scalars())
    assert states.get("drafted", 0) == 0, f"every draft was checked in the same run: {dict(states)}"
    assert reports["check"].items_out == reports["draft"].items_out
    # One source at a time, each once.
    assert len(warmed) == len(set(warmed)) and len({story for story, _ in warmed}) >= reports["draft"].items_out, \
        "each story's sources went ahead of its draft"

    # Each stage reports its own model spend, though their calls were in flight together.
    roles = Counter(model.roles)
    assert reports["draft"].llm_calls == roles["writer"]
    assert reports["check"].llm_calls == roles["judge"] + roles["reviser"]
    assert reports["check"].duration_s >= reports["draft"].duration_s


def test_without_the_stream_the_held_writers_wait_for_a_check_that_never_starts(online_workspace, monkeypatch):
    """The test's own control: it tells streaming from running the stages one after the other."""
    workspace, model = online_workspace
    monkeypatch.setattr(runner, "STREAMED", {})
    model.ceiling = 3  # no judge can come while the draft stage runs alone, however long the writers wait
    run = run_all(workspace)
    reports = {r.stage: r for r in run.reports}
    assert model.writers_answered_after_a_judge == 0
    assert any("writing failed" in error for error in reports["draft"].errors)


# --- a story's sources are prepared for its check while the story is being written ------------------------------


def _drafted(tmp_path):
    """The offline demo desk, fetched, classified and drafted (not checked): its drafts and their research packs."""
    from agents.fact_checker import draft_from_row

    workspace = prepare_workspace(tmp_path / "ws")
    run = Run(load_config(workspace / "config.toml"), command="test", clock=fixed_clock(SAMPLE_AS_OF))
    run.run_stages(["fetch", "classify", "draft"])
    with run.ledger.engine.connect() as connection:
        rows = connection.execute(select(schema.drafts).where(schema.drafts.c.state == "drafted")).all()
    assert rows, "the demo desk drafts its sample stories"
    return run, [draft_from_row(row) for row in rows]


class RecordingEmbed:
    """The store's embedding function, noting every text it is asked for and when (before or after a mark)."""

    def __init__(self, embed) -> None:
        self.embed = embed
        self.before: list[str] = []
        self.after: list[str] = []
        self.marked = False
        self.calls_before = 0

    def __call__(self, texts):
        (self.after if self.marked else self.before).extend(texts)
        self.calls_before += not self.marked
        return self.embed(texts)


def _set_state(run, drafts, state: str) -> None:
    from sqlalchemy import update

    with run.ledger.begin() as connection:
        connection.execute(update(schema.drafts).where(schema.drafts.c.id.in_([d.id for d, _ in drafts])).values(state=state))


def _check_streamed(run, drafts, *, ahead: bool) -> RecordingEmbed:
    """check_stream fed as the draft stage feeds it: each story's research pack as it goes to the writer (if
    `ahead`), then, once the check has had the time the writer's calls take, the saved drafts' ids."""
    import asyncio

    from agents.fact_checker import check_stream
    from agents.writer import revise_draft
    from pipeline.core.models import StageReport

    recorder = RecordingEmbed(run.store.embed)
    run.store.embed = recorder
    run.__dict__.pop("embed_memo", None)  # remembered over the old function by the draft stage's clustering

    async def feed() -> StageReport:
        report = StageReport(stage="check")
        incoming: asyncio.Queue = asyncio.Queue()
        _set_state(run, drafts, "failed")  # not yet written: the stage finds no draft waiting when it starts
        checking = asyncio.ensure_future(check_stream(run, report, revise_draft, incoming))
        if ahead:
            for _, pack in drafts:
                incoming.put_nowait(pack)
        # The writer's calls are in flight: the check may use the time (one embedding call per source ahead;
        # the ceiling, 10 s, only ends a run that would hang).
        await asyncio.sleep(0.05)  # the stage starts, with no draft waiting
        warm_ups = sum(len(pack.sources) for _, pack in drafts) if ahead else 0
        for _ in range(1000):
            if recorder.calls_before >= warm_ups:
                break
            await asyncio.sleep(0.01)
        recorder.marked = True  # the writer's answers arrive, and each draft is saved
        _set_state(run, drafts, "drafted")
        for draft, _ in drafts:
            incoming.put_nowait(draft.id)
        incoming.put_nowait(None)
        await checking
        return report

    report = run.run_async(feed())
    assert report.items_out == len(drafts), report.errors
    return recorder


def _embedded(tmp_path, *, ahead: bool) -> tuple[RecordingEmbed, set[str]]:
    """What the check embedded before and after the drafts arrived, and the drafts' own sentences."""
    from agents.fact_checker import render_draft
    from pipeline.text.templates import as_article

    run, drafts = _drafted(tmp_path)
    try:
        recorder = _check_streamed(run, drafts, ahead=ahead)
    finally:
        run.close()
    return recorder, {s.text for draft, _ in drafts for s in render_draft(as_article(draft.article)).sentences}


def test_a_storys_sources_are_embedded_for_its_check_while_the_story_is_being_written(tmp_path):
    recorder, sentences = _embedded(tmp_path, ahead=True)
    assert recorder.before, "the sources were embedded before any draft arrived"
    assert not set(recorder.before) & set(recorder.after), "nothing embedded ahead was embedded again"
    assert set(recorder.after) <= sentences, "once a draft arrives, only its own sentences are left to embed"


def test_without_the_packs_ahead_the_sources_wait_for_their_drafts(tmp_path):
    """The control: the same feed without the packs embeds the sources only after the drafts arrive."""
    recorder, sentences = _embedded(tmp_path, ahead=False)
    assert not recorder.before
    assert set(recorder.after) - sentences, "the sources' windows were embedded after the drafts arrived"


# --- clustering's vectors are embedded while the classifier waits on the model ---------------------------------------


@pytest.fixture
def model_workspace(tmp_path, monkeypatch):
    workspace = prepare_workspace(tmp_path / "ws")
    with FakeOpenAIServer(reply=NewsroomModel()) as server:
        config = (workspace / "config.toml").read_text().replace(
            "offline = true", f'offline = false\nbase_url = "{server.base_url}"\napi_key_env = "{KEY_ENV}"\nmax_retries = 0')
        (workspace / "config.toml").write_text(config)
        monkeypatch.setenv(KEY_ENV, "sk-streaming-test")
        with allow_model_requests():
            yield workspace, server


class ClassifierTakesItsTime:
    """The newsroom fake, whose classifier answers only once the run's work ahead is done: the fake answers at
    once, where a real model takes seconds, and the head start would otherwise race it."""

    def __init__(self, run) -> None:
        self.run = run
        self.model = NewsroomModel()

    def __call__(self, body: dict):
        if role_of(body) == "classifier":
            self.run.ahead.submit(lambda: None).result()
        return self.model(body)


def test_clustering_finds_its_vectors_embedded_while_the_classifier_waited(model_workspace):
    from agents.editor import item_text_for_matching
    from pipeline.core.ledger import row_to_item
    from pipeline.core.models import StageReport
    from pipeline.flow.drafting import assign

    workspace, server = model_workspace
    run = Run(load_config(workspace / "config.toml"), command="test", clock=fixed_clock(SAMPLE_AS_OF))
    server.reply = ClassifierTakesItsTime(run)
    try:
        run.run_stages(["fetch"])
        recorder = RecordingEmbed(run.store.embed)
        run.store.embed = recorder
        run.run_stages(["classify"])
        run.caught_up()
        recorder.marked = True   # classification is done: what clustering embeds from here was not done ahead
        with run.ledger.engine.connect() as connection:
            rows = connection.execute(select(schema.items).where(schema.items.c.state == "classified")).all()
        texts = {item_text_for_matching(row_to_item(r)) for r in rows if r.classification["relevant"]}
        report = StageReport(stage="draft")
        assign(run, report)
    finally:
        run.close()
    assert texts and texts <= set(recorder.before), "each relevant item's clustering text was embedded while the model worked"
    assert not texts & set(recorder.after), "clustering embedded none of them again"
    assert report.notes["stories_updated"] > 0


def test_work_ahead_not_begun_is_dropped_once_the_run_has_caught_up(tmp_path):
    """A head start must not hold the stage that needs it: when the classifier is done early, the pieces still
    queued are dropped (clustering embeds what it needs itself); the piece running is waited for."""
    workspace = prepare_workspace(tmp_path / "ws")
    run = Run(load_config(workspace / "config.toml"), command="test", clock=fixed_clock(SAMPLE_AS_OF))
    started, release = threading.Event(), threading.Event()
    done: list[str] = []

    def piece(name: str) -> None:
        started.set()
        release.wait(CEILING_S)
        done.append(name)

    try:
        run.start_ahead(piece, "running")
        started.wait(CEILING_S)
        queued = run.start_ahead(piece, "queued")

        def release_once_dropped() -> None:
            for _ in range(CEILING_S * 1000):
                if queued.cancelled():
                    break
                time.sleep(0.001)
            release.set()

        threading.Thread(target=release_once_dropped, daemon=True).start()
        run.caught_up()
        assert done == ["running"], "caught_up waited for the running piece and dropped the queued one"
        run.ahead.submit(lambda: None).result()
        assert done == ["running"]
    finally:
        run.close()


# --- classify indexes the fetched items while its model works -------------------------------------------------------


class ClassifierRequestsArrive:
    """The newsroom fake, noting when the first classifier request has arrived."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.model = NewsroomModel()

    def __call__(self, body: dict):
        if role_of(body) == "classifier":
            self.arrived.set()
        return self.model(body)


def _classified_chunks(run: Run) -> dict[str, tuple[dict, list[dict]]]:
    """Each classified item's classification and its chunks' metadata, as the ledger and the store hold them."""
    with run.ledger.engine.connect() as connection:
        rows = connection.execute(select(schema.items.c.id, schema.items.c.classification)
                                  .where(schema.items.c.state.in_(["classified", "irrelevant"]))).all()
    return {r.id: (r.classification, [c.metadata for c in run.store.chunks(r.id)]) for r in rows}


def _fetch_and_classify(run: Run, index_items):
    """fetch then classify in one run, the store indexing through `index_items`; the two stage reports and
    what was classified (see _classified_chunks)."""
    run.store.index_items = index_items
    try:
        fetch, classify = run.run_stages(["fetch", "classify"])
        return fetch, classify, _classified_chunks(run)
    finally:
        run.close()


def test_items_the_keywords_tie_to_a_beat_go_to_the_classifier_before_the_fetched_items_are_indexed(model_workspace):
    """fetch then classify in one run: fetch leaves the indexing to classify, which does it while its model works.
    Each indexing pass here waits (up to the ceiling) for a classifier request: indexed first, as before, no request
    could have come, and the first pass would have hit the ceiling."""
    workspace, server = model_workspace
    server.reply = requests = ClassifierRequestsArrive()
    run = Run(load_config(workspace / "config.toml"), command="test", clock=fixed_clock(SAMPLE_AS_OF))
    index_items, passes = run.store.index_items, []

    def held(items, *args, **kwargs):
        passes.append(requests.arrived.wait(CEILING_S))
        return index_items(items, *args, **kwargs)

    fetch, classify, classified = _fetch_and_classify(run, held)
    assert passes and all(passes), "a classifier request was out before the first item was embedded"
    assert fetch.notes["indexing"] == "during classify" and classify.notes["chunks_indexed"] > 0
    assert not classify.errors and classify.items_out == classify.items_in == len(classified) > 0
    for item_id, (classification, chunks) in classified.items():
        # Saved only once the index was done: every classification is on its item's chunks.
        assert chunks, f"{item_id} is classified but has no chunks"
        assert all(c["classified"] and c["relevant"] == classification["relevant"] for c in chunks), item_id


def test_items_the_store_could_not_index_are_left_for_the_next_run(model_workspace):
    """The store is down while classify indexes: no classification is saved without its chunks, the items wait,
    and the next run (store back) indexes and classifies every one of them."""
    from pipeline.services.store import StoreError

    workspace, server = model_workspace
    config = load_config(workspace / "config.toml")
    run = Run(config, command="test", clock=fixed_clock(SAMPLE_AS_OF))

    def down(items, *args, **kwargs):
        raise StoreError("chroma at test: could not write chunks: connection refused")

    _, classify, classified = _fetch_and_classify(run, down)
    assert any("connection refused" in e for e in classify.errors), classify.errors
    assert classify.items_out == 0 and not classified
    assert classify.notes["left_for_next_run"] == classify.items_in > 0

    again = Run(config, command="test", clock=fixed_clock(SAMPLE_AS_OF))
    try:
        (report,) = again.run_stages(["classify"])
        classified = _classified_chunks(again)
    finally:
        again.close()
    assert report.items_in == classify.items_in and report.items_out == report.items_in
    assert all(chunks for _, chunks in classified.values())
