"""Several workers on one ledger (issue 18): queued runs, `run.py worker` processes, claims taken over after a lease.

The multi-process tests use real servers started here: PostgreSQL (the ledger), `chroma run` (the store),
the loopback news site of bench/pipeline.py and the fake OpenAI-compatible server answering as
tests/fakes/newsroom_model.py with a delay, so every unit spends time in flight. Leases are short (config),
every wait is a poll against a generous deadline, and nothing asserts how fast anything was.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from pipeline.core import schema
from pipeline.core.clock import fixed_clock
from pipeline.core.config import Cluster, load_config
from pipeline.cli.demo import prepare_workspace
from pipeline.core.ledger import Ledger
from pipeline.flow.runner import STAGE_ORDER, Run
from pipeline.flow.worker import FINISHED, enqueue_run, phases_for, queued_run_state, work_run
from tests.conftest import SAMPLE_AS_OF
from tests.servers import running_chroma, running_postgres, toml_dumps

ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 240  # a ceiling for a stuck cluster, never a measure of speed
STAGES = ["fetch", "classify", "draft", "check", "publish"]


def drafts_of(ledger) -> dict[str, tuple[str, str]]:
    with ledger.engine.connect() as connection:
        return {r.story_key: (r.state, json.dumps(r.article, sort_keys=True)) for r in connection.execute(select(schema.drafts))}


def test_phases_put_clustering_before_the_draft_units():
    assert phases_for(list(STAGE_ORDER)) == ["fetch", "classify", "select", "draft", "check", "publish", "sync"]
    assert phases_for(["publish", "fetch"]) == ["fetch", "publish"]


def test_a_queued_run_drafts_exactly_what_one_process_drafts(tmp_path):
    """SQLite, one process: the queued path (units, claims, phases) against the locked path, same sample feeds."""
    stages = [s for s in STAGE_ORDER if s != "sync"]
    single = load_config(prepare_workspace(tmp_path / "single") / "config.toml")
    run = Run(single, command="test", clock=fixed_clock(SAMPLE_AS_OF))
    run.run_stages(stages)
    run.finish()
    expected = drafts_of(run.ledger)

    queued = load_config(prepare_workspace(tmp_path / "queued") / "config.toml")
    queued = queued.model_copy(update={"cluster": Cluster(enabled=True, poll_s=0.05)})
    ledger = Ledger.from_config(queued)
    run_id = enqueue_run(ledger, "test", stages, as_of=SAMPLE_AS_OF)
    assert work_run(queued, ledger, run_id) == FINISHED
    assert drafts_of(ledger) == expected and len(expected) >= 5
    with ledger.engine.connect() as connection:
        row = connection.execute(select(schema.runs).where(schema.runs.c.id == run_id)).one()
        claims = connection.execute(select(schema.claims.c.stage, schema.claims.c.state)).all()
    assert [r["stage"] for r in row.stages] == stages and row.ended is not None
    assert {state for _, state in claims} == {"done"}
    units = Counter(stage for stage, _ in claims)
    assert units["fetch"] == len(queued.feeds) and units["select"] == 1 and units["draft"] == len(expected)
    with ledger.engine.connect() as connection:
        units = connection.execute(select(schema.claims).where(schema.claims.c.run_id == run_id)).all()
    last_draft = max(c.updated for c in units if c.stage == "draft")
    first_check = min(c.created for c in units if c.stage == "check")
    assert first_check < last_draft, "a story's check is queued as soon as its draft is written"
    by_stage = {r["stage"]: r for r in row.stages}
    assert by_stage["draft"]["items_out"] == len(expected) and by_stage["publish"]["notes"]["published"] >= 1
    # A second queued run drafts the stories left waiting (stories.max_per_run) and leaves the first drafts alone.
    again = enqueue_run(ledger, "test", stages, as_of=SAMPLE_AS_OF)
    assert work_run(queued, ledger, again) == FINISHED
    after = drafts_of(ledger)
    assert {key: after[key][1] for key in expected} == {key: article for key, (_, article) in expected.items()}


def test_a_worker_that_loses_the_ledger_for_a_moment_says_so_and_carries_on(tmp_path, monkeypatch, caplog):
    """A failure outside a stage (the ledger gone for a moment, a claim that cannot be written) used to end the
    worker process, and its share of the run waited for the others. It is logged with its cause, and the worker
    goes on once the ledger answers again."""
    import logging

    from sqlalchemy.exc import OperationalError

    import pipeline.flow.worker as worker_module

    config = load_config(prepare_workspace(tmp_path / "ws") / "config.toml")
    config = config.model_copy(update={"cluster": Cluster(enabled=True, poll_s=0.01)})
    ledger = Ledger.from_config(config)
    run_id = enqueue_run(ledger, "test", ["fetch", "classify"], as_of=SAMPLE_AS_OF)
    failures = [OperationalError("UPDATE run_queue", {}, Exception("server closed the connection unexpectedly"))] * 2
    advance = worker_module.advance

    def flaky_advance(*args, **kwargs):
        if failures:
            raise failures.pop()
        return advance(*args, **kwargs)

    monkeypatch.setattr(worker_module, "advance", flaky_advance)
    with caplog.at_level(logging.ERROR, logger="newsdesk.worker"):
        assert work_run(config, ledger, run_id) == FINISHED
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and "server closed the connection unexpectedly" in errors[0], errors
    assert "trying again in 0.01s" in errors[0] and "trying again in 0.02s" in errors[1], "it waits longer while it fails"
    with ledger.engine.connect() as connection:
        assert set(connection.execute(select(schema.claims.c.state)).scalars()) == {"done"}


# --- a cluster of worker processes ----------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres_server():
    with running_postgres() as url:
        yield url


@pytest.fixture(scope="module")
def chroma_port(tmp_path_factory):
    with running_chroma(tmp_path_factory.mktemp("chroma-workers")) as (_, port):
        yield port


@pytest.fixture(scope="module")
def news():
    from bench.pipeline import NewsSite

    site = NewsSite()
    site.publish(4, 2, datetime.now(timezone.utc))  # 4 events, each reported by 2 outlets
    yield site
    site.close()


@pytest.fixture(scope="module")
def model():
    from tests.fakes.newsroom_model import NewsroomModel
    from tests.fakes.openai_server import FakeOpenAIServer

    with FakeOpenAIServer(reply=NewsroomModel(mistake_every=2), delay=0.3) as server:
        yield server


class Cluster_:
    """One fresh database and Chroma collection, a config file, and worker processes started from it."""

    def __init__(self, workspace: Path, postgres_url: str, chroma_port: int, news, model) -> None:
        name = f"t{uuid.uuid4().hex[:10]}"
        admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {name}"))
        admin.dispose()
        self.url = postgres_url.rsplit("/", 1)[0] + f"/{name}"
        self.workspace = workspace
        beat = [t.model_dump(mode="json") for t in load_config(ROOT / "config.toml").topics]
        config = {
            "newsroom": {"name": "Cluster Desk"},
            "feeds": [{"name": f"outlet-{o}", "url": f"{news.base}/o{o}/feed.xml", "full_text": "auto"} for o in range(2)],
            "topics": beat,
            # llm.concurrency is the cap for all workers together (pipeline/core/slots.py): 2 calls in flight, however many workers.
            "llm": {"base_url": model.base_url, "api_key_env": "NEWSDESK_WORKERS_TEST_KEY", "concurrency": 2,
                    "max_retries": 0, "timeout": 30.0},
            "stories": {"max_per_run": 10, "window_hours": 48},
            "limits": {"allow_private_hosts": True, "min_full_text_chars": 800},
            "publishing": {"target": "local", "outbox": "outbox"},
            "store": {"host": "127.0.0.1", "port": chroma_port, "collection": name},
            "ledger": {"url": self.url},
            "cluster": {"enabled": True, "lease_s": 3.0, "poll_s": 0.2},
        }
        self.config_path = workspace / "config.toml"
        self.config_path.write_text(toml_dumps(config))
        self.config = load_config(self.config_path)
        self.ledger = Ledger.from_config(self.config)
        self.processes: list[subprocess.Popen] = []
        self.model = model
        model.max_in_flight = 0

    def start(self, n: int, env: dict | None = None) -> list[subprocess.Popen]:
        started = []
        for _ in range(n):
            log = (self.workspace / f"worker-{len(self.processes)}.log").open("w")
            process = subprocess.Popen(
                [sys.executable, str(ROOT / "run.py"), "worker", "--config", str(self.config_path), "--log-level", "INFO"],
                cwd=self.workspace, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: teardown also ends a killed worker's extraction pool
                env={**os.environ, "NEWSDESK_WORKERS_TEST_KEY": "sk-test", **(env or {})},
            )
            self.processes.append(process)
            started.append(process)
        return started

    def wait_for(self, condition, what: str) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not condition():
            if time.monotonic() > deadline:
                logs = "\n".join(p.read_text()[-1500:] for p in sorted(self.workspace.glob("worker-*.log")))
                pytest.fail(f"{what}: not within {DEADLINE_S}s\n{logs}")
            time.sleep(0.1)

    def rows(self, query):
        with self.ledger.engine.connect() as connection:
            return connection.execute(query).all()

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for process in self.processes:  # a SIGKILLed worker leaves its forkserver and pool processes behind
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.ledger.close()


@pytest.fixture
def cluster(tmp_path, postgres_server, chroma_port, news, model, allow_model_requests):
    made = Cluster_(tmp_path, postgres_server, chroma_port, news, model)
    yield made
    made.stop()


def assert_every_unit_done_once(cluster: Cluster_, run_id: str) -> dict:
    """The exactly-once record of a finished run; returns counts for further checks."""
    claims = cluster.rows(select(schema.claims).where(schema.claims.c.run_id == run_id))
    assert {c.state for c in claims} == {"done"}, [(c.stage, c.unit, c.state, c.error) for c in claims if c.state != "done"]
    drafts = cluster.rows(select(schema.drafts))
    draft_units = [c for c in claims if c.stage == "draft"]
    assert len(drafts) == len(draft_units) >= 3, "one draft per story unit"
    assert len({d.story_key for d in drafts}) == len(drafts)
    # No model answer was paid twice: each request the provider answered is in the ledger once.
    paid = Counter(r.request_hash for r in cluster.rows(
        select(schema.llm_calls).where(schema.llm_calls.c.cache_hit.is_(False), schema.llm_calls.c.outcome == "ok")))
    assert paid and max(paid.values()) == 1, [h for h, n in paid.items() if n > 1]
    # No duplicate documents: one publication per checked draft, one outbox document each; the store holds each chunk once.
    publications = cluster.rows(select(schema.publications))
    assert len(publications) == sum(1 for d in drafts if d.state == "published") >= 1
    documents = [p.stem for p in (cluster.workspace / "outbox").glob("*.html")]
    assert sorted(documents) == sorted(p.doc_id for p in publications), "one document (.md + .html) per publication"
    chunks = cluster.rows(select(func.sum(schema.items.c.chunk_count)))[0][0]
    from pipeline.services.store import Store

    assert Store.from_config(cluster.config).count() == chunks > 0
    assert not cluster.rows(select(schema.items).where(schema.items.c.state == "fetched")), "every item classified"
    run = cluster.rows(select(schema.runs).where(schema.runs.c.id == run_id))[0]
    assert run.ended is not None and [s["stage"] for s in run.stages] == STAGES
    assert 1 <= cluster.model.max_in_flight <= cluster.config.llm.concurrency, "the cap held across all workers"
    return {"claims": claims, "drafts": drafts, "owners": Counter(c.owner for c in claims)}


def test_two_workers_share_a_run_and_sigterm_finishes_the_unit_in_hand(cluster):
    first, second = cluster.start(2)
    run_id = enqueue_run(cluster.ledger, "test", STAGES)
    mine = f":{first.pid}:"
    # Wait until the first worker holds a draft or check unit (each waits on the model), then SIGTERM it.
    held = []

    def first_holds_a_slow_unit() -> bool:
        held[:] = cluster.rows(select(schema.claims).where(
            schema.claims.c.state == "claimed", schema.claims.c.owner.contains(mine),
            schema.claims.c.stage.in_(["draft", "check"])))
        return bool(held)

    cluster.wait_for(first_holds_a_slow_unit, "the first worker claiming a draft or check unit")
    first.send_signal(signal.SIGTERM)
    assert first.wait(DEADLINE_S) == 0, "SIGTERM is a clean stop"
    unit = cluster.rows(select(schema.claims).where(schema.claims.c.id == held[0].id))[0]
    assert unit.state == "done" and mine in unit.owner and unit.attempts == 1, "the unit in hand was finished, not handed on"
    assert not cluster.rows(select(schema.claims).where(schema.claims.c.state == "claimed", schema.claims.c.owner.contains(mine)))
    cluster.wait_for(lambda: queued_run_state(cluster.ledger, run_id) == FINISHED, "the second worker finishing the run")
    record = assert_every_unit_done_once(cluster, run_id)
    assert len(record["owners"]) == 2, "both workers did units"
    assert all(c.attempts == 1 for c in record["claims"])


def test_four_workers_and_one_killed_mid_unit_lose_nothing_and_duplicate_nothing(cluster, tmp_path):
    marker = tmp_path / "killed.pid"
    # Every worker carries the hook; the first to reach it is SIGKILLed just before its draft unit's second commit:
    # after the writer's answer was paid for and recorded, before the draft was saved.
    workers = cluster.start(4, env={"NEWSDESK_TEST_KILL_AT": "draft:commit:2", "NEWSDESK_TEST_KILL_ONCE": str(marker)})
    run_id = enqueue_run(cluster.ledger, "test", STAGES)
    cluster.wait_for(lambda: queued_run_state(cluster.ledger, run_id) == FINISHED, "the run finishing without the killed worker")
    killed_pid = int(marker.read_text())
    killed = next(p for p in workers if p.pid == killed_pid)
    assert killed.wait(10) == -signal.SIGKILL
    record = assert_every_unit_done_once(cluster, run_id)
    retried = [c for c in record["claims"] if c.attempts > 1]
    assert len(retried) == 1 and retried[0].stage == "draft", [(c.stage, c.unit, c.attempts) for c in retried]
    assert f":{killed_pid}:" not in retried[0].owner, "taken over by a live worker after the lease"
    # The answer the killed worker paid for was reused from the ledger's cache by the worker that took over.
    hits = cluster.rows(select(schema.llm_calls).where(schema.llm_calls.c.cache_hit.is_(True), schema.llm_calls.c.role == "writer"))
    assert len(hits) >= 1
    assert len(record["owners"]) >= 2, record["owners"]
    assert all(p.poll() is None for p in workers if p is not killed), "the others keep serving"
