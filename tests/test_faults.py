"""Faults (issue 9): the model provider, Google, Chroma, a busy or full ledger, clocks and changed entries.

Each test breaks one dependency the way it breaks in production and checks
what an operator would see: the stage finishes where it can, the error names
the cause, unfinished work waits in its state for the next run, nothing is
paid or written twice.

Cases covered elsewhere (not repeated here):
  * a 500 storm that opens the breaker mid-classify, then a clean re-run:
    test_classifier.py::test_a_500_storm_keeps_what_was_classified_and_leaves_the_rest_for_the_next_run
  * gateway retries on 429/5xx/timeouts, repair of invalid JSON, truncation typed: test_llm.py
  * Google 429 and 5xx retried, Google down then up, unreachable, missing or malformed credentials:
    test_publisher.py::test_rate_limits_and_server_errors_are_retried,
    test_google_down_leaves_drafts_ready_and_a_later_run_publishes_them,
    test_unreachable_google_is_reported_and_nothing_changes, test_credentials_google_rejects_are_reported_and_drafts_stay_ready,
    test_crash_between_create_and_ledger_is_recovered_without_orphan
  * the Chroma server unreachable or gone mid-run raises StoreError: test_store.py
  * a full disk at fsync while writing the outbox: test_outbox.py::test_a_full_disk_leaves_the_previous_files_whole_and_the_draft_ready
  * a failed ledger write leaves nothing of that feed: test_fetcher.py::test_a_failed_ledger_write_leaves_nothing_of_that_feed
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, insert, select
from tenacity import wait_none

from agents import fetcher as fetcher_module
from agents.fetcher import run_fetch
from agents.publisher import publish_ready
from pipeline.core import schema
from pipeline.core.config import PACKAGE_ROOT, parse_config
from pipeline.core.ledger import Ledger
from pipeline.services.llm import Gateway
from pipeline.core.models import ItemState
from pipeline.flow.runner import Run
from tests.fakes.openai_server import Fault, FakeOpenAIServer, Reply

FEEDS = Path(__file__).parent / "fixtures" / "feeds"
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def count(ledger: Ledger, table) -> int:
    with ledger.engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(table)).scalar_one()


def rss(entries: list[dict]) -> str:
    items = "".join(
        f"<item><title>{e['title']}</title><link>{e['link']}</link><pubDate>{e.get('date', 'Fri, 20 Nov 2026 09:00:00 GMT')}</pubDate>"
        f"<description>{e['text']}</description></item>"
        for e in entries
    )
    return (f'<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>w</title><link>https://wire.example/</link>'
            f"<description>d</description>{items}</channel></rss>")


class StubStore:
    """Just enough of pipeline.services.store.Store for the classify stage: deterministic vectors, no Chroma."""

    def __init__(self) -> None:
        self.classified: dict[str, object] = {}
        self.indexed: list[str] = []

    def embed(self, texts):
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
            vector = np.random.default_rng(seed).normal(size=16)
            rows.append(vector / np.linalg.norm(vector))
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), 16)

    def item_embeddings(self, ids):
        return {}

    def set_classifications(self, results) -> None:
        self.classified.update(results)

    def index_items(self, items) -> int:
        items = list(items)
        self.indexed += [i.id for i in items]
        return len(items)


# =====================================================================================
# The model provider: 429s, 500 bursts, a timeout, invalid and truncated JSON
# =====================================================================================

ITEM_BLOCK = re.compile(r'<item id="([^"]+)">\n(.*?)\n</item>', re.S)
USAGE = {"prompt_tokens": 1000, "completion_tokens": 100}   # what the fake bills per answered request
PRICE = (1000 * 0.15 + 100 * 0.60) / 1_000_000               # gpt-4o-mini at the config's default prices


def answer(body: dict) -> dict:
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    return {"results": [
        {"id": item_id, "relevant": True, "topics": ["markets"], "newsworthiness": 0.5,
         "summary": "A plain summary.", "entities": [], "reason": "on the beat"}
        for item_id, _ in ITEM_BLOCK.findall(user)
    ]}


class FlakyProvider:
    """Answers like a provider having a bad day, by request number and by content.

    Transient (retried by the gateway and then fine): a 429 on every fifth request, a burst of
    three 500s, one answer slower than llm.timeout. Permanent for two items, whatever the
    batch: invalid JSON for POISON-JSON (repair cannot help), a reply cut off at max_tokens
    for POISON-CUT. It counts the replies it delivered and billed.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.billed = 0

    def __call__(self, body: dict):
        with self.lock:
            self.requests += 1
            n = self.requests
            user = "\n".join(m["content"] for m in body["messages"] if m["role"] == "user")
            if n % 5 == 2:
                return Fault(429, "rate limit reached", retry_after="0")
            if n in (8, 9, 10):
                return Fault(500, "upstream overloaded")
            if n == 13:
                return Reply(content=answer(body), delay=5.0, **USAGE)   # the client gives up first: not billed to us
            self.billed += 1
            if "POISON-JSON" in user:
                return Reply(content='{"results": [{"id": "i1", "relevant": tru', **USAGE)
            if "POISON-CUT" in user:
                return Reply(content='{"results": [{"id": "i1"', finish_reason="length", **USAGE)
            return Reply(content=answer(body), **USAGE)


async def no_wait(_seconds: float) -> None:
    return None


def classify_desk(tmp_path: Path, base_url: str, texts: list[str], ledger: Ledger | None = None, timeout: float = 0.5) -> Run:
    config = parse_config({
        "topics": [{"name": "markets", "description": "Crypto prices and exchanges", "keywords": ["bitcoin"]},
                   {"name": "security", "description": "Hacks and exploits", "keywords": ["hack"]}],
        "ledger": {"url": "sqlite:///ledger.sqlite"},
        "llm": {"offline": False, "base_url": base_url, "max_retries": 3, "breaker_failures": 50, "timeout": timeout,
                "concurrency": 1, "repair_rounds": 1},
        "classify": {"batch_size": 4, "prefilter_threshold": -1.0},
    }, root=tmp_path)
    run = Run(config, command="test", ledger=ledger)
    run.__dict__["store"] = StubStore()
    run.__dict__["gateway"] = Gateway(config, run.ledger, run_id=run.id, sleep=no_wait)
    if ledger is None:
        with run.ledger.begin() as connection:
            connection.execute(insert(schema.items), [
                {"id": f"item{n:02d}", "source": "wire", "url": f"https://wire.example/{n}", "canonical_url": f"https://wire.example/{n}",
                 "title": f"Bitcoin market note {n}", "summary": "", "text": text, "published": T0 + timedelta(minutes=n),
                 "fetched": T0, "content_hash": f"h{n}", "og": {}, "text_origin": "feed", "state": "fetched",
                 "chunk_count": 1, "updated": T0}
                for n, text in enumerate(texts)
            ])
    return run


def item_states(ledger: Ledger) -> dict[str, tuple[str, bool]]:
    with ledger.engine.connect() as connection:
        rows = connection.execute(select(schema.items.c.id, schema.items.c.state, schema.items.c.classification)).all()
    return {r.id: (r.state, r.classification is not None) for r in rows}


def billed_rows(ledger: Ledger) -> list:
    with ledger.engine.connect() as connection:
        return connection.execute(select(schema.llm_calls)).all()


def test_a_flaky_provider_costs_each_answer_once_and_leaves_only_the_failed_items_for_the_next_run(tmp_path, allow_model_requests):
    texts = [f"Bitcoin traded at {60_000 + n} dollars on exchange {n} on Friday." for n in range(24)]
    texts[5] += " POISON-JSON"
    texts[14] += " POISON-CUT"
    provider = FlakyProvider()
    with FakeOpenAIServer(reply=provider) as server:
        run = classify_desk(tmp_path, server.base_url, texts)
        started = time.monotonic()
        report = run.run_stage("classify")
        elapsed = time.monotonic() - started
        requests = len(server.chat_requests)

    states = item_states(run.ledger)
    waiting = sorted(i for i, (state, _) in states.items() if state == ItemState.fetched)
    assert waiting == ["item05", "item14"], "only the items the provider can never answer wait"
    assert all(not has for i, (_, has) in states.items() if i in waiting)
    assert all(state == ItemState.classified and has for i, (state, has) in states.items() if i not in waiting)
    assert report.items_out == 22 and len(report.errors) == 2
    assert all("1 item(s) not classified, left for the next run" in e for e in report.errors)
    assert any("still invalid after 1 repair round" in e for e in report.errors)
    assert any("cut off" in e for e in report.errors)
    assert elapsed < 30, "the timeout and the retries are bounded"

    # Every answer the provider delivered is in the ledger once, with its tokens and cost; faults cost nothing.
    rows = billed_rows(run.ledger)
    paid = [r for r in rows if r.prompt_tokens]
    assert requests == provider.requests and len(paid) == provider.billed
    assert requests - provider.billed >= 4 + 3 + 1, "429s, the 500 burst and the timeout all happened, unbilled"
    assert sum(r.prompt_tokens for r in paid) == 1000 * provider.billed
    assert sum(r.completion_tokens for r in paid) == 100 * provider.billed
    assert sum(r.cost_usd for r in rows) == pytest.approx(PRICE * provider.billed)
    assert all(r.cost_usd == 0 and r.prompt_tokens == 0 for r in rows if r.outcome == "error")
    assert report.cost_usd == pytest.approx(PRICE * provider.billed, abs=1e-6)
    assert report.tokens == 1100 * provider.billed
    first_run_cost = sum(r.cost_usd for r in rows)

    # The next run, provider healthy: only the two waiting items are asked for, and paid for.
    with FakeOpenAIServer(reply=lambda body: Reply(content=answer(body), **USAGE)) as server:
        rerun = classify_desk(tmp_path, server.base_url, texts, ledger=run.ledger)
        again = rerun.run_stage("classify")
        asked = [block for r in server.chat_requests for _, block in ITEM_BLOCK.findall(r.messages[-1]["content"])]
    assert again.ok and again.items_in == 2 and len(asked) == 2
    assert all(state == ItemState.classified for state, _ in item_states(run.ledger).values())
    rows = billed_rows(run.ledger)
    assert sum(r.cost_usd for r in rows) == pytest.approx(first_run_cost + PRICE * len(server.chat_requests))


def closed_port() -> int:
    """A local port nothing listens on: bound, then closed."""
    return free_port()


@pytest.mark.parametrize("where", ["llm.base_url", "OPENAI_BASE_URL"])
def test_an_unreachable_model_server_is_one_line_naming_the_endpoint(tmp_path, allow_model_requests, monkeypatch, where):
    # A closed port from config; from the environment (not checked by config) even a port out of range, which the
    # HTTP stack reports as an ExceptionGroup from its task group rather than a connection error.
    endpoint = f"http://127.0.0.1:{closed_port()}/v1" if where == "llm.base_url" else "http://127.0.0.1:188212/v1"
    if where == "OPENAI_BASE_URL":
        monkeypatch.setenv("OPENAI_BASE_URL", endpoint)
    # A refused connection fails at once; the timeout is long so that a loaded machine cannot turn it into a timeout.
    run = classify_desk(tmp_path, endpoint if where == "llm.base_url" else None, [f"Bitcoin note {n}." for n in range(6)],
                        timeout=10.0)
    started = time.monotonic()
    report = run.run_stage("classify")
    assert time.monotonic() - started < 30

    assert report.items_out == 0 and report.errors
    for error in report.errors:
        assert f"cannot reach the model server at {endpoint}" in error, report.errors
        assert "\n" not in error and "ExceptionGroup" not in error and "TaskGroup" not in error
    assert all(state == ItemState.fetched for state, _ in item_states(run.ledger).values()), "every item waits for the next run"
    rows = billed_rows(run.ledger)
    assert rows and all(endpoint in r.error and "ExceptionGroup" not in r.error for r in rows), "the ledger says the same"
    run.finish()


def test_a_stage_that_raises_an_exception_group_is_reported_by_its_cause(tmp_path, monkeypatch):
    import pipeline.flow.runner as runner

    def broken(run):
        raise ExceptionGroup("unhandled errors in a TaskGroup", [ConnectionRefusedError("connect to 127.0.0.1:9 refused")])

    monkeypatch.setattr(runner, "stage_function", lambda name: broken)
    run = Run(parse_config({"ledger": {"url": "sqlite:///ledger.sqlite"}}, root=tmp_path), command="test")
    report = run.run_stage("check")
    run.finish()
    assert report.errors == ["ConnectionRefusedError: connect to 127.0.0.1:9 refused"]


# =====================================================================================
# Google: authentication failures, then recovery without duplicates
# =====================================================================================


@pytest.fixture
def fake_google(monkeypatch):
    from google.auth.credentials import CredentialsWithRegionalAccessBoundary

    from tests.fakes.google_server import FakeGoogle

    monkeypatch.setattr(CredentialsWithRegionalAccessBoundary, "_is_regional_access_boundary_lookup_required",
                        lambda self: False)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    server = FakeGoogle().serve()
    server.add_folder("folder-drafts")
    yield server
    server.stop()


def google_desk(tmp_path: Path, fake, *, trusted: bool):
    from tests.fakes.google_server import write_service_account
    from tests.test_publisher import insert_draft, make_draft

    key = write_service_account(fake, tmp_path / "sa.json", email="desk@test.iam.gserviceaccount.com", trusted=trusted)
    config = parse_config({"publishing": {"target": "google", "google": {
        "folder_id": "folder-drafts", "editors": ["ana@newsroom.example"], "api_endpoint": fake.url + "/",
        "drive_endpoint": fake.url, "credentials_file": str(key)}}, "ledger": {"url": "sqlite:///ledger.sqlite"}}, root=tmp_path)
    ledger = Ledger(config.ledger_url)
    for n in (1, 2, 3):
        insert_draft(ledger, *make_draft(draft_id=f"draft-000{n}", headline=f"Story number {n} for the desk"))
    return config, ledger, key


def drafts_by_state(ledger: Ledger) -> dict[str, tuple[str, str | None]]:
    with ledger.engine.connect() as connection:
        return {r.id: (r.state, r.state_reason) for r in connection.execute(select(schema.drafts))}


def test_rejected_google_credentials_lose_nothing_and_the_drafts_publish_once_fixed(tmp_path, fake_google):
    from tests.fakes.google_server import DOC_MIME, _private_key

    config, ledger, _ = google_desk(tmp_path, fake_google, trusted=False)

    first = publish_ready(config, ledger, retry_wait=wait_none())

    assert first.items_out == 0 and "rejected the credentials" in first.errors[0]
    states = drafts_by_state(ledger)
    assert {s for s, _ in states.values()} == {"checked"}
    assert all("rejected the credentials" in reason for _, reason in states.values())
    assert fake_google.docs_of_mime(DOC_MIME) == []

    fake_google.trust_service_account("desk@test.iam.gserviceaccount.com", _private_key().public_key())   # the admin fixes it
    second = publish_ready(config, ledger, retry_wait=wait_none())

    assert second.errors == [] and second.items_out == 3
    assert {s for s, _ in drafts_by_state(ledger).values()} == {"published"}
    assert all(reason is None for _, reason in drafts_by_state(ledger).values())
    assert len(fake_google.docs_of_mime(DOC_MIME)) == 3


def test_a_token_revoked_mid_run_leaves_a_half_made_document_the_next_run_adopts(tmp_path, fake_google):
    from tests.fakes.google_server import DOC_MIME

    config, ledger, _ = google_desk(tmp_path, fake_google, trusted=True)
    # The file is made, then writing its text is refused, and so is every refresh of the token
    # (google-auth refreshes and retries a 401 by itself, twice).
    fake_google.fail("docs.documents.batchUpdate", 401, times=3)

    first = publish_ready(config, ledger, retry_wait=wait_none())

    assert first.items_out == 0 and "rejected the credentials" in first.errors[0] and "3 draft(s) stay ready" in first.errors[0]
    assert {s for s, _ in drafts_by_state(ledger).values()} == {"checked"}
    assert len(fake_google.docs_of_mime(DOC_MIME)) == 1
    with ledger.engine.connect() as connection:
        half = connection.execute(select(schema.publications)).one()
    assert half.state == "creating" and half.doc_id

    second = publish_ready(config, ledger, retry_wait=wait_none())

    assert second.errors == [] and second.items_out == 3
    docs = fake_google.docs_of_mime(DOC_MIME)
    assert len(docs) == 3, "the half-made document was finished, not made twice"
    assert half.doc_id in {d["id"] for d in docs}
    assert "Story number 1 for the desk" in fake_google.documents[half.doc_id].text()


# =====================================================================================
# Chroma unreachable in server mode
# =====================================================================================


def test_an_unreachable_chroma_server_fails_its_stages_clearly_and_the_ledger_waits(tmp_path):
    port = free_port()   # nothing listens here
    config = parse_config({
        "feeds": [{"name": "wire", "url": str(FEEDS / "rss_basic.xml"), "full_text": "feed"}],
        "topics": [{"name": "markets", "description": "Crypto prices and exchanges"}],
        "store": {"host": "127.0.0.1", "port": port},
        "ledger": {"url": "sqlite:///ledger.sqlite"},
        "llm": {"offline": True},
    }, root=tmp_path)
    run = Run(config, command="test")

    reports = {r.stage: r for r in run.run_stages(["fetch", "classify", "draft"])}
    status = run.finish()

    unreachable = f"cannot reach the Chroma server http://127.0.0.1:{port} (store.host/store.port)"
    assert reports["fetch"].items_out == 2, "the feed itself was fetched and stored"
    # Classify follows in the same run, so it indexes (while its model would work): it is the one to fail.
    assert reports["fetch"].notes["indexing"] == "during classify" and not reports["fetch"].errors
    for stage in ("classify", "draft"):
        assert any(unreachable in e for e in reports[stage].errors), reports[stage].errors
    assert status == "failed"
    with run.ledger.engine.connect() as connection:
        items = connection.execute(select(schema.items.c.state, schema.items.c.chunk_count, schema.items.c.classification)).all()
    assert [(i.state, i.chunk_count, i.classification) for i in items] == [("fetched", None, None)] * 2, \
        "nothing marked indexed or classified that was not"
    assert count(run.ledger, schema.stories) == 0 and count(run.ledger, schema.drafts) == 0

    # The store is back: the next run indexes exactly what was left.
    later = Run(config, command="test", ledger=run.ledger)
    later.__dict__["store"] = store = StubStore()
    assert later.run_stage("fetch").errors == []
    assert len(store.indexed) == 2
    with run.ledger.engine.connect() as connection:
        assert connection.execute(select(schema.items.c.chunk_count)).scalars().all() == [1, 1]


# =====================================================================================
# The ledger busy (locked by another process) or on a full disk
# =====================================================================================

HOLD = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(60)
"""


class LockHolder:
    """Another process holding the SQLite write lock on the ledger until stopped."""

    def __init__(self, path: Path) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "locked"

    def release(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


def busy_desk(tmp_path: Path) -> tuple[Path, object, Ledger]:
    feeds = tmp_path / "feeds"
    feeds.mkdir()
    for name in ("rss_basic.xml", "atom_basic.xml"):
        (feeds / name).write_bytes((FEEDS / name).read_bytes())
    path = tmp_path / "config.toml"
    path.write_text(
        '[[feeds]]\nname = "rss"\nurl = "feeds/rss_basic.xml"\nfull_text = "feed"\n\n'
        '[[feeds]]\nname = "atom"\nurl = "feeds/atom_basic.xml"\nfull_text = "feed"\n\n'
        '[ledger]\nurl = "sqlite:///ledger.sqlite"\nbusy_timeout_s = 0.5\n\n[llm]\noffline = true\n'
        '[store]\npath = "chroma"\n'
    )
    from pipeline.core.config import load_config

    config = load_config(path)
    return path, config, Ledger.from_config(config)


def test_a_ledger_locked_by_another_process_gives_bounded_waits_and_clear_errors(tmp_path):
    config_path, config, ledger = busy_desk(tmp_path)
    holder = LockHolder(tmp_path / "ledger.sqlite")
    try:
        started = time.monotonic()
        report = run_fetch(config, ledger)
        fetch_seconds = time.monotonic() - started

        started = time.monotonic()
        cli = subprocess.run([sys.executable, str(PACKAGE_ROOT / "run.py"), "fetch", "--config", str(config_path)],
                             capture_output=True, text=True, timeout=120)
        cli_seconds = time.monotonic() - started
    finally:
        holder.release()

    assert report.notes["feeds_failed"] == 2 and report.items_out == 0
    assert all("could not write to the ledger" in e and "database is locked" in e for e in report.errors), report.errors
    assert fetch_seconds < 10, "each write waits ledger.busy_timeout_s, not forever"
    assert count(ledger, schema.items) == 0, "nothing half-written"

    output = cli.stdout + cli.stderr
    assert cli.returncode == 3, output
    assert "is busy: another process holds its write lock" in output and "ledger.busy_timeout_s = 0.5s" in output
    assert "Traceback" not in output
    assert cli_seconds < 30

    assert run_fetch(config, ledger).items_out == 4, "once the lock is gone the same run stores everything"
    ledger.close()


DISK_FULL = r"""
import json, os, resource, signal, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from sqlalchemy import update
from agents.fetcher import run_fetch
from agents.publisher import publish_ready
from pipeline.core import schema
from pipeline.core.config import parse_config
from pipeline.core.ledger import Ledger
from tests.test_publisher import insert_draft, make_draft

root = Path(sys.argv[1])
config = parse_config({{"feeds": [{{"name": "big", "url": str(root / "big.xml"), "full_text": "feed"}}],
                        "ledger": {{"url": "sqlite:///ledger.sqlite"}}, "publishing": {{"outbox": "outbox"}}}}, root=root)
ledger = Ledger(config.ledger_url)
draft, report = make_draft()
insert_draft(ledger, draft, report)
assert publish_ready(config, ledger).errors == []
with ledger.begin() as connection:   # a revised draft, ready again, whose page will not fit
    lead = "A much longer lead. " * 5000
    connection.execute(update(schema.drafts).values(state="checked",
        article=draft.article.model_copy(update={{"lead": lead}}).model_dump(mode="json")))
with ledger.engine.connect() as connection:
    connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
# From here no file may grow past 64 KiB: a full disk for anything bigger. SIGXFSZ would kill us instead of failing the write.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
fetch = run_fetch(config, ledger)
publish = publish_ready(config, ledger)
print(json.dumps({{"fetch": fetch.errors, "publish": publish.errors, "stored": fetch.items_out}}))
"""


def test_a_full_disk_fails_the_ledger_and_outbox_writes_cleanly_and_a_later_run_finishes(tmp_path):
    entries = [{"title": f"Bitcoin note {n}", "link": f"https://wire.example/{n}", "text": f"Note {n}: " + "bitcoin " * 150}
               for n in range(100)]   # limits.max_items_per_feed; ~130 KB in one transaction
    (tmp_path / "big.xml").write_text(rss(entries))
    child = subprocess.run([sys.executable, "-c", DISK_FULL.format(root=str(PACKAGE_ROOT)), str(tmp_path)],
                           capture_output=True, text=True, timeout=120, cwd=PACKAGE_ROOT)
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])

    assert result["stored"] == 0 and len(result["fetch"]) == 1
    assert "could not write to the ledger" in result["fetch"][0] and re.search(r"disk I/O error|disk is full", result["fetch"][0])
    assert len(result["publish"]) == 1 and "File too large" in result["publish"][0]

    database = sqlite3.connect(tmp_path / "ledger.sqlite")
    assert database.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert database.execute("SELECT count(*) FROM items").fetchone() == (0,), "the feed's transaction left nothing behind"
    assert database.execute("SELECT state FROM drafts").fetchall() == [("checked",)], "the draft waits to be published"
    database.close()
    outbox = tmp_path / "outbox"
    assert not [p for p in outbox.iterdir() if p.name.startswith(".")], "no temp file left behind"
    html = next(outbox.glob("*.html")).read_text(encoding="utf-8")
    assert "A much longer lead" not in html and "Prices rose 12 percent" in html, "the previous version is whole"

    # Space again: the same work completes.
    config = parse_config({"feeds": [{"name": "big", "url": str(tmp_path / "big.xml"), "full_text": "feed"}],
                           "ledger": {"url": "sqlite:///ledger.sqlite"}, "publishing": {"outbox": "outbox"}}, root=tmp_path)
    ledger = Ledger(config.ledger_url)
    assert run_fetch(config, ledger).items_out == 100
    assert publish_ready(config, ledger).errors == []
    assert "A much longer lead" in next(outbox.glob("*.html")).read_text(encoding="utf-8")
    ledger.close()


# =====================================================================================
# Clock jumps and entries that change after their story was drafted
# =====================================================================================


def test_an_entry_changed_after_its_story_was_drafted_is_recorded_once_whatever_the_clock(tmp_path, monkeypatch):
    feed = tmp_path / "wire.xml"
    link = "https://wire.example/news/korvex-hack"
    other = {"title": "Ether options volume doubles", "link": "https://wire.example/news/ether-options",
             "text": "Ether options volume doubled in November, the venue said."}
    feed.write_text(rss([{"title": "Korvex drained of $48 million", "link": link,
                          "text": "Attackers drained $48 million from the Korvex hot wallet."}, other]))
    config = parse_config({"feeds": [{"name": "wire", "url": str(feed), "full_text": "feed"}],
                           "ledger": {"url": "sqlite:///ledger.sqlite"}}, root=tmp_path)
    ledger = Ledger(config.ledger_url)
    assert run_fetch(config, ledger).items_out == 2

    # The story is drafted (as the draft stage leaves it).
    with ledger.engine.connect() as connection:
        item_id = connection.execute(select(schema.items.c.id).where(schema.items.c.url == link)).scalar_one()
    with ledger.begin() as connection:
        connection.execute(schema.items.update().where(schema.items.c.id == item_id).values(state="clustered", story_key="story-korvex", chunk_count=1))
        connection.execute(insert(schema.stories).values(
            key="story-korvex", title="Korvex drained", item_ids=[item_id], sources=["wire"], topics=["security"], score=0.9,
            first_published=T0, last_published=T0, state="drafted", late_item_ids=[], created=T0, updated=T0))
        connection.execute(insert(schema.drafts).values(
            id="d-korvex", story_key="story-korvex", template="news", writer_model="extractive", method="extractive",
            prompt_versions={}, article={"headline": "h", "lead": "l", "body": [], "insights": [], "sources": []},
            violations=[], state="checked", created=T0, updated=T0))

    # The clock jumps back three days; the source revised the story, moved its date, and lists it twice.
    real_now = fetcher_module.utcnow()
    monkeypatch.setattr(fetcher_module, "utcnow", lambda: real_now - timedelta(days=3))
    revised = {"title": "Korvex drained of $52 million, up from $48 million", "link": link, "date": "Sat, 21 Nov 2026 18:00:00 GMT",
               "text": "Attackers drained $52 million from the Korvex hot wallet, the exchange said in an update."}
    stale_copy = {**revised, "title": "Korvex drained (old copy)", "text": "An older copy of the same entry."}
    feed.write_text(rss([revised, stale_copy, other]))

    report = run_fetch(config, ledger)

    assert report.items_out == 0 and report.notes["updated_at_source"] == 1
    with ledger.engine.connect() as connection:
        rows = connection.execute(select(schema.items).where(schema.items.c.url == link)).all()
        story = connection.execute(select(schema.stories)).one()
        untouched = connection.execute(select(schema.items).where(schema.items.c.url == other["link"])).one()
    assert len(rows) == 1, "an update, not a second item"
    row = rows[0]
    assert row.title == revised["title"] and "$52 million" in row.text and "older copy" not in row.text
    assert row.state == "clustered" and row.story_key == "story-korvex" and row.chunk_count is None, "re-indexed, same story"
    assert "updated by wire" in row.state_reason and "already drafted" in row.state_reason
    assert story.late_item_ids == [item_id], "the drafted story records that its source changed"
    assert untouched.state_reason is None and untouched.updated == untouched.fetched, "an unchanged entry is left alone"
    assert count(ledger, schema.items) == 2 and count(ledger, schema.stories) == 1 and count(ledger, schema.drafts) == 1

    # Forward jump of a year, nothing changed at the source: nothing recorded. Changed again: recorded once more, still one item.
    monkeypatch.setattr(fetcher_module, "utcnow", lambda: real_now + timedelta(days=365))
    assert run_fetch(config, ledger).notes["updated_at_source"] == 0
    feed.write_text(rss([{**revised, "text": "Attackers drained $52.5 million from the Korvex hot wallet, final figures show."}, other]))
    assert run_fetch(config, ledger).notes["updated_at_source"] == 1
    with ledger.engine.connect() as connection:
        rows = connection.execute(select(schema.items.c.text).where(schema.items.c.url == link)).all()
        story = connection.execute(select(schema.stories)).one()
    assert [r.text for r in rows] == ["Attackers drained $52.5 million from the Korvex hot wallet, final figures show."]
    assert story.late_item_ids == [item_id]
    ledger.close()
