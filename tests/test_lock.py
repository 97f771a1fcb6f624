"""The single-instance lock: one holder at a time, a clear message naming it, stale locks taken over safely."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from pipeline.core import schema
from pipeline.core.ledger import Ledger, as_utc, utcnow
from pipeline.core.lock import LockHeld, PipelineLock

ROOT = Path(__file__).resolve().parent.parent

# Takes the lock, says so, then holds it until a line arrives on stdin (or the test kills it).
HOLDER = """
import sys
from pipeline.core.ledger import Ledger
from pipeline.core.lock import LockHeld, PipelineLock
lock = PipelineLock(Ledger(sys.argv[1]), holder=sys.argv[2])
sys.stdin.readline() if sys.argv[3] == "wait-for-go" else None
try:
    lock.acquire()
except LockHeld as exc:
    print("held:", exc, flush=True)
    sys.exit(0)
print("won", flush=True)
sys.stdin.readline()
lock.release()
"""


def ledger_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.sqlite'}"


def start_holder(url: str, holder: str, wait_for_go: bool = False) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, holder, "wait-for-go" if wait_for_go else "now"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture
def holder_process(tmp_path):
    """A live process on this host holding the lock as 'schedule job ingest'."""
    url = ledger_url(tmp_path)
    Ledger(url)  # migrated once, before any contender opens it
    proc = start_holder(url, "schedule job ingest")
    assert proc.stdout.readline().strip() == "won"
    yield url, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def lock_row(ledger: Ledger):
    with ledger.engine.connect() as connection:
        return connection.execute(select(schema.locks)).first()


def test_a_second_holder_is_refused_with_the_holders_pid_and_host(holder_process):
    url, proc = holder_process
    lock = PipelineLock(Ledger(url), holder="run.py once")
    with pytest.raises(LockHeld) as refused:
        lock.acquire()
    message = str(refused.value)
    assert f"pid {proc.pid} on {socket.gethostname()}" in message
    assert "'schedule job ingest'" in message

    proc.stdin.write("\n")  # the holder finishes and releases
    proc.stdin.flush()
    assert proc.wait(timeout=10) == 0
    with lock.held():
        assert lock_row(lock.ledger).holder == "run.py once"
    assert lock_row(lock.ledger) is None, "release leaves no lock behind"


def test_a_lock_left_by_a_killed_process_is_taken_over(holder_process):
    url, proc = holder_process
    proc.kill()  # SIGKILL: no chance to release
    proc.wait(timeout=10)
    ledger = Ledger(url)
    assert lock_row(ledger).pid == proc.pid, "the dead holder's row is still there"

    lock = PipelineLock(ledger, holder="run.py once")
    lock.acquire()
    try:
        row = lock_row(ledger)
        assert (row.pid, row.host, row.holder) == (os.getpid(), socket.gethostname(), "run.py once")
    finally:
        lock.release()


def test_a_lock_on_another_host_is_stale_only_once_its_heartbeat_is_old(tmp_path):
    ledger = Ledger(ledger_url(tmp_path))
    fresh = utcnow()
    with ledger.begin() as connection:
        connection.execute(
            insert(schema.locks).values(name="pipeline", holder="run.py schedule", pid=4242, host="news-2", acquired=fresh, heartbeat=fresh)
        )
    lock = PipelineLock(ledger, holder="run.py once", stale_after=timedelta(minutes=30))
    with pytest.raises(LockHeld, match="pid 4242 on news-2"):
        lock.acquire()

    old = utcnow() - timedelta(hours=1)
    with ledger.begin() as connection:
        connection.execute(schema.locks.update().values(heartbeat=old))
    with lock.held():
        assert lock_row(ledger).host == socket.gethostname()


def test_a_held_lock_keeps_its_heartbeat_fresh(tmp_path):
    ledger = Ledger(ledger_url(tmp_path))
    lock = PipelineLock(ledger, stale_after=timedelta(seconds=6))  # beats every second
    with lock.held():
        acquired = as_utc(lock_row(ledger).heartbeat)
        deadline = time.monotonic() + 20
        while as_utc(lock_row(ledger).heartbeat) == acquired:
            assert time.monotonic() < deadline, "the heartbeat never moved"
            time.sleep(0.2)


def test_concurrent_processes_exactly_one_wins(tmp_path):
    url = ledger_url(tmp_path)
    Ledger(url)
    contenders = [start_holder(url, f"contender {n}", wait_for_go=True) for n in range(4)]
    try:
        for proc in contenders:  # release them together
            proc.stdin.write("go\n")
            proc.stdin.flush()
        answers = [proc.stdout.readline().strip() for proc in contenders]
        winners = [proc for proc, answer in zip(contenders, answers) if answer == "won"]
        assert len(winners) == 1, answers
        losers = [answer for answer in answers if answer != "won"]
        assert all(answer.startswith("held:") and f"pid {winners[0].pid} " in answer for answer in losers), answers
        assert lock_row(Ledger(url)).pid == winners[0].pid
    finally:
        for proc in contenders:
            if proc.poll() is None:
                proc.stdin.write("\n")
                proc.stdin.flush()
            proc.wait(timeout=10)
    assert lock_row(Ledger(url)) is None


def test_concurrent_threads_of_one_process_exactly_one_wins(tmp_path):
    """Two scheduler jobs in one daemon are two holders, even though they share a pid."""
    ledger = Ledger(ledger_url(tmp_path))
    locks = [PipelineLock(ledger, holder=f"job {n}") for n in range(6)]
    start = threading.Barrier(len(locks))
    outcomes: dict[int, str] = {}

    def contend(n: int) -> None:
        start.wait()
        try:
            locks[n].acquire()
            outcomes[n] = "won"
        except LockHeld as exc:
            outcomes[n] = str(exc)

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(len(locks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    winners = [n for n, outcome in outcomes.items() if outcome == "won"]
    assert len(outcomes) == len(locks) and len(winners) == 1, outcomes
    assert all("this same process" in outcome for n, outcome in outcomes.items() if n not in winners)
    locks[winners[0]].release()
    assert lock_row(ledger) is None


def test_run_once_while_the_lock_is_held_exits_75_naming_the_holder(holder_process, tmp_path):
    url, proc = holder_process
    config = tmp_path / "config.toml"
    config.write_text(f'[ledger]\nurl = "{url}"\n[llm]\noffline = true\n')
    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "once", "--config", str(config), "--stages", "sync"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 75, result.stdout + result.stderr
    assert "not started" in result.stdout
    assert f"pid {proc.pid} on {socket.gethostname()}" in result.stdout
    assert "'schedule job ingest'" in result.stdout
    with Ledger(url).engine.connect() as connection:
        assert connection.execute(select(schema.runs)).first() is None, "nothing ran"
