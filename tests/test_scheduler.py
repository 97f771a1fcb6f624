"""The `schedule` daemon: jobs from config in the ledger's job store, restarts that follow config, a clean stop."""

from __future__ import annotations

import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from apscheduler.events import EVENT_SCHEDULER_STARTED
from apscheduler.triggers.cron import CronTrigger
from apscheduler.util import obj_to_ref, ref_to_obj
from sqlalchemy import create_engine, inspect, select, text

from pipeline.flow import runner
from pipeline.core import schema
from pipeline.core.config import load_config
from pipeline.core.ledger import Ledger
from pipeline.core.lock import PipelineLock
from pipeline.core.models import StageReport
from pipeline.flow.scheduler import JOB_TABLE, build_scheduler, next_run_times, run_job

ROOT = Path(__file__).resolve().parent.parent

INGEST_AND_WRITE = """
[schedule.jobs.ingest]
cron = "*/15 * * * *"
stages = ["fetch", "classify"]

[schedule.jobs.write]
cron = "0 7,12,17 * * *"
stages = ["draft", "check", "publish"]
"""


def write_config(folder: Path, jobs: str, timezone_name: str = "Europe/Berlin", grace: int = 120) -> Path:
    path = folder / "config.toml"
    path.write_text(
        f'[llm]\noffline = true\n\n[schedule]\ntimezone = "{timezone_name}"\nmisfire_grace_time = {grace}\n{jobs}',
        encoding="utf-8",
    )
    return path


def start_and_stop(config_path: Path) -> None:
    """What a daemon start does to the job store, without waiting for any job to fire."""
    config = load_config(config_path)
    Ledger.from_config(config)
    scheduler = build_scheduler(config, str(config_path))
    started = threading.Event()
    scheduler.add_listener(lambda _event: started.set(), EVENT_SCHEDULER_STARTED)
    thread = threading.Thread(target=scheduler.start, daemon=True)
    thread.start()
    assert started.wait(30), "the scheduler did not start"
    scheduler.shutdown(wait=True)
    thread.join(30)
    assert not thread.is_alive()


def stored_jobs(config_path: Path) -> dict[str, dict]:
    """The job store's rows as APScheduler persisted them, read straight from the ledger database."""
    engine = create_engine(load_config(config_path).ledger_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text(f"SELECT id, job_state FROM {JOB_TABLE}")).all()
    finally:
        engine.dispose()
    return {job_id: pickle.loads(state) for job_id, state in rows}


def cron_field(trigger: CronTrigger, name: str) -> str:
    return str(next(f for f in trigger.fields if f.name == name))


@pytest.fixture(autouse=True)
def clear_stop():
    runner.STOP.clear()
    yield
    runner.STOP.clear()


def test_configured_jobs_land_in_the_ledger_job_store(tmp_path):
    config_path = write_config(tmp_path, INGEST_AND_WRITE)
    start_and_stop(config_path)

    config = load_config(config_path)
    engine = create_engine(config.ledger_url)
    assert {JOB_TABLE, "runs", "locks"} <= set(inspect(engine).get_table_names()), "jobs live in the ledger database"
    engine.dispose()

    jobs = stored_jobs(config_path)
    assert set(jobs) == {"ingest", "write"}
    for name, job in jobs.items():
        assert job["func"] == "pipeline.flow.scheduler:run_job"
        assert job["args"] == (str(config_path.resolve()), name)
        assert job["coalesce"] is True
        assert job["max_instances"] == 1
        assert job["misfire_grace_time"] == 120
        assert isinstance(job["trigger"], CronTrigger)
        assert job["trigger"].timezone == ZoneInfo("Europe/Berlin")
        assert job["next_run_time"].tzinfo == ZoneInfo("Europe/Berlin")
    assert cron_field(jobs["ingest"]["trigger"], "minute") == "*/15"
    assert cron_field(jobs["write"]["trigger"], "hour") == "7,12,17"
    assert cron_field(jobs["write"]["trigger"], "minute") == "0"


def test_restarting_with_an_edited_config_replaces_and_removes_jobs(tmp_path):
    config_path = write_config(tmp_path, INGEST_AND_WRITE)
    start_and_stop(config_path)
    assert set(stored_jobs(config_path)) == {"ingest", "write"}

    write_config(
        tmp_path,
        '[schedule.jobs.ingest]\ncron = "*/5 * * * *"\nstages = ["fetch"]\n\n'
        '[schedule.jobs.sync]\ncron = "*/30 * * * *"\nstages = ["sync"]\n',
        timezone_name="America/New_York",
        grace=600,
    )
    start_and_stop(config_path)
    jobs = stored_jobs(config_path)
    assert set(jobs) == {"ingest", "sync"}, "the dropped 'write' job must not keep firing from the store"
    assert cron_field(jobs["ingest"]["trigger"], "minute") == "*/5"
    assert jobs["ingest"]["trigger"].timezone == ZoneInfo("America/New_York")
    assert jobs["ingest"]["misfire_grace_time"] == 600


def test_the_job_callable_is_importable_by_reference():
    assert obj_to_ref(run_job) == "pipeline.flow.scheduler:run_job"
    assert ref_to_obj("pipeline.flow.scheduler:run_job") is run_job


def test_next_run_times_follow_the_configured_timezone_across_a_dst_change(tmp_path):
    config = load_config(
        write_config(
            tmp_path,
            '[schedule.jobs.morning]\ncron = "30 7 * * *"\nstages = ["draft"]\n\n'
            '[schedule.jobs.ingest]\ncron = "*/15 * * * *"\nstages = ["fetch"]\n',
        )
    )
    # 08:00 in Berlin on the Saturday before clocks go forward: today's 07:30 has passed.
    now = datetime(2026, 3, 28, 7, 0, tzinfo=timezone.utc)
    times = next_run_times(config, now)
    assert times["morning"] == datetime(2026, 3, 29, 5, 30, tzinfo=timezone.utc)  # 07:30 CEST
    assert times["ingest"] == datetime(2026, 3, 28, 7, 0, tzinfo=timezone.utc)
    later = next_run_times(config, datetime(2026, 3, 28, 7, 0, 1, tzinfo=timezone.utc))
    assert later["ingest"] == datetime(2026, 3, 28, 7, 15, tzinfo=timezone.utc)


def test_a_job_runs_its_stages_under_the_lock_and_skips_when_the_lock_is_held(tmp_path):
    config_path = write_config(tmp_path, '[schedule.jobs.tidy]\ncron = "0 * * * *"\nstages = ["sync"]\n')
    assert run_job(str(config_path), "tidy") == "ok"
    ledger = Ledger.from_config(load_config(config_path))
    with ledger.engine.connect() as connection:
        runs = connection.execute(select(schema.runs)).all()
        assert connection.execute(select(schema.locks)).first() is None, "the job released the lock"
    assert [(r.command, r.status, [s["stage"] for s in r.stages]) for r in runs] == [("schedule:tidy", "ok", ["sync"])]

    with PipelineLock(ledger, holder="run.py once").held():
        assert run_job(str(config_path), "tidy") == "skipped"
    with ledger.engine.connect() as connection:
        assert len(connection.execute(select(schema.runs)).all()) == 1, "a skipped job starts no run"


entered_slow_stage = threading.Event()
later_stage_ran = threading.Event()


def stage_until_stopped(run) -> StageReport:
    """A long stage: works until a stop is requested, then finishes its item and returns."""
    entered_slow_stage.set()
    assert runner.STOP.wait(30)
    return StageReport(stage="check", items_in=1, items_out=1)


def later_stage(run) -> StageReport:
    later_stage_ran.set()
    return StageReport(stage="publish")


def test_a_stop_request_lets_the_running_job_finish_its_item_then_releases_the_lock(tmp_path, monkeypatch):
    monkeypatch.setitem(runner.STAGES, "check", f"{__name__}:stage_until_stopped")
    monkeypatch.setitem(runner.STAGES, "publish", f"{__name__}:later_stage")
    entered_slow_stage.clear()
    later_stage_ran.clear()
    config_path = write_config(tmp_path, '[schedule.jobs.write]\ncron = "0 7 * * *"\nstages = ["check", "publish"]\n')
    outcome: list[str] = []
    job = threading.Thread(target=lambda: outcome.append(run_job(str(config_path), "write")))
    job.start()
    assert entered_slow_stage.wait(30)
    runner.STOP.set()  # what SIGTERM does
    job.join(30)
    assert outcome == ["interrupted"]
    assert not later_stage_ran.is_set(), "no new stage starts after a stop request"
    with Ledger.from_config(load_config(config_path)).engine.connect() as connection:
        run = connection.execute(select(schema.runs)).one()
        assert connection.execute(select(schema.locks)).first() is None
    assert run.status == "interrupted"
    assert [(s["stage"], s["items_out"]) for s in run.stages] == [("check", 1)]


in_stage = threading.Semaphore(0)
overlapped = threading.Event()
active_jobs = {"count": 0}
active_lock = threading.Lock()


def stage_that_waits_for_company(run) -> StageReport:
    """Stays until a second job joins it (or 1.5 s pass), so jobs that may run together surely do."""
    with active_lock:
        active_jobs["count"] += 1
        if active_jobs["count"] > 1:
            overlapped.set()
    in_stage.release()
    overlapped.wait(1.5)
    with active_lock:
        active_jobs["count"] -= 1
    return StageReport(stage="check", items_in=1, items_out=1)


def test_jobs_that_fire_together_run_one_after_the_other_instead_of_being_skipped(tmp_path, monkeypatch):
    monkeypatch.setitem(runner.STAGES, "check", f"{__name__}:stage_that_waits_for_company")
    overlapped.clear()
    config_path = write_config(
        tmp_path,
        '[schedule.jobs.first]\ncron = "0 3 1 1 *"\nstages = ["check"]\n\n'
        '[schedule.jobs.second]\ncron = "0 3 1 1 *"\nstages = ["check"]\n',
    )
    config = load_config(config_path)
    ledger = Ledger.from_config(config)
    scheduler = build_scheduler(config, str(config_path))
    started = threading.Event()
    scheduler.add_listener(lambda _event: started.set(), EVENT_SCHEDULER_STARTED)
    thread = threading.Thread(target=scheduler.start, daemon=True)
    thread.start()
    try:
        assert started.wait(30)
        now = datetime.now(timezone.utc)
        for name in ("first", "second"):  # both fire now, as ingest and sync do at :30
            scheduler.modify_job(name, next_run_time=now)
        assert in_stage.acquire(timeout=30) and in_stage.acquire(timeout=30), "both jobs ran"
    finally:
        scheduler.shutdown(wait=True)
        thread.join(30)
    assert not overlapped.is_set(), "two jobs ran stages at the same time"
    with ledger.engine.connect() as connection:
        runs = connection.execute(select(schema.runs)).all()
        assert connection.execute(select(schema.locks)).first() is None
    assert sorted((r.command, r.status) for r in runs) == [("schedule:first", "ok"), ("schedule:second", "ok")]


class Daemon:
    """`run.py schedule` as a real process, with its log lines read as they come."""

    def __init__(self, config_path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), "schedule", "--config", str(config_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, fragment: str, timeout: float = 60) -> None:
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"daemon exited before logging {fragment!r}: {''.join(self.seen)}")
            self.seen.append(line)
            if fragment in line:
                return

    def rest(self) -> str:
        while (line := self.lines.get(timeout=30)) is not None:
            self.seen.append(line)
        return "".join(self.seen)


def test_sigterm_stops_the_daemon_cleanly_and_leaves_no_lock(tmp_path):
    config_path = write_config(tmp_path, '[schedule.jobs.yearly]\ncron = "0 3 1 1 *"\nstages = ["sync"]\n')
    ledger = Ledger.from_config(load_config(config_path))
    daemon = Daemon(config_path)
    try:
        daemon.wait_for("job yearly: next run")
        with ledger.engine.connect() as connection:
            held = connection.execute(select(schema.locks)).all()
        assert [(row.name, row.pid) for row in held] == [("scheduler", daemon.proc.pid)]

        second = subprocess.run(
            [sys.executable, str(ROOT / "run.py"), "schedule", "--config", str(config_path)],
            capture_output=True, text=True, timeout=120,
        )
        assert second.returncode == 75, second.stderr
        assert f"pid {daemon.proc.pid}" in second.stderr and "scheduler not started" in second.stderr

        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=60) == 0
        log = daemon.rest()
        assert "SIGTERM" in log and "scheduler stopped" in log
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
    with ledger.engine.connect() as connection:
        assert connection.execute(select(schema.locks)).first() is None, "no stale lock after a clean stop"
    assert set(stored_jobs(config_path)) == {"yearly"}
