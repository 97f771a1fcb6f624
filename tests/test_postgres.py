"""The ledger works on PostgreSQL too: a real server, started by the test from the machine's binaries."""

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from pipeline.core.config import parse_config
from pipeline.core.ledger import Ledger
from pipeline.core.lock import LockHeld, PipelineLock
from pipeline.flow.runner import Run
from pipeline.core.schema import metadata
from tests.servers import running_postgres

FIXTURES = Path(__file__).parent / "fixtures" / "feeds"


@pytest.fixture(scope="module")
def postgres_url():
    with running_postgres() as url:
        yield url


def test_migrations_on_postgres_match_the_schema(postgres_url):
    ledger = Ledger(postgres_url)
    with ledger.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), metadata)
    assert diff == []
    Ledger(postgres_url)  # idempotent
    ledger.set_setting("writer_model", {"name": "ft:house"})
    assert ledger.get_setting("writer_model") == {"name": "ft:house"}


def test_fetch_and_lock_work_on_postgres(postgres_url, tmp_path):
    config = parse_config(
        {
            "feeds": [{"name": "rss", "url": str(FIXTURES / "rss_basic.xml"), "full_text": "feed"}],
            "ledger": {"url": postgres_url},
            "llm": {"offline": True},
        },
        root=tmp_path,
    )
    run = Run(config, command="pg-test")
    report = run.run_stage("fetch")
    assert report.ok and report.items_out > 0
    again = run.run_stage("fetch")
    assert again.items_out == 0, "a second fetch adds nothing"
    assert run.finish() == "ok"
    first = PipelineLock(run.ledger, holder="first")
    first.acquire()
    try:
        with pytest.raises(LockHeld, match="first"):
            PipelineLock(run.ledger, holder="second").acquire()
    finally:
        first.release()
