"""The ledger works on PostgreSQL too: a real server, started by the test from the machine's binaries."""

import os
import shutil
import socket
import tempfile
import subprocess
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from pipeline.core.config import parse_config
from pipeline.core.ledger import Ledger
from pipeline.core.lock import LockHeld, PipelineLock
from pipeline.flow.runner import Run
from pipeline.core.schema import metadata

FIXTURES = Path(__file__).parent / "fixtures" / "feeds"


def _binaries() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "postgres").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    pytest.importorskip("psycopg")
    binaries = _binaries()
    if binaries is None:
        pytest.skip("no PostgreSQL server binaries on this machine")
    # PostgreSQL refuses to run as root; use the postgres system user when we are root.
    as_user = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
    if as_user and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser")
    # Directly under /tmp: pytest's own temp folders are private to root, and postgres must reach its data.
    base = Path(tempfile.mkdtemp(prefix="newsdesk-pg-"))
    data, sockets = base / "data", base / "sock"
    sockets.mkdir()
    if as_user:
        shutil.chown(base, "postgres")
        shutil.chown(sockets, "postgres")
        base.chmod(0o755)
    init = subprocess.run([*as_user, str(binaries / "initdb"), "-D", str(data), "-U", "newsdesk", "--auth=trust", "-E", "UTF8"],
                          capture_output=True, text=True)
    if init.returncode != 0:
        pytest.skip(f"initdb failed: {init.stderr[-300:]}")
    port = _free_port()
    server = subprocess.Popen(
        [*as_user, str(binaries / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets), "-h", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"postgresql+psycopg://newsdesk@127.0.0.1:{port}/postgres"
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(f"host=127.0.0.1 port={port} user=newsdesk dbname=postgres", connect_timeout=2).close()
            break
        except psycopg.OperationalError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.skip("PostgreSQL did not start")
            time.sleep(0.2)
    yield url
    server.terminate()
    server.wait(timeout=30)
    shutil.rmtree(base, ignore_errors=True)


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
