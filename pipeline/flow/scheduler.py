"""`run.py schedule`: the daemon. APScheduler 3.x runs the `[schedule]` jobs from config.toml.

Jobs live in a SQLAlchemy job store on the ledger database and are replaced
from config at every start, so editing config.toml and restarting takes
effect. The job callable is the module-level `run_job`, importable by
reference as a persistent job store requires. Every job runs under the
pipeline lock, so a daemon and a manual `run.py once` never overlap. With
`cluster.enabled` a job only queues its run for the `run.py worker`
processes (pipeline/flow/worker.py); the daemon stays a single instance either way.

Jobs run one at a time (a single worker thread): jobs that fire together,
say ingest and sync at :30, queue instead of the later one being skipped by
the lock. The daemon itself holds a separate `scheduler` lock for its whole
life, so a second daemon on the same ledger refuses to start.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import MetaData, Table, create_engine, delete, inspect

from pipeline.core.config import Config, load_config
from pipeline.core.ledger import Ledger
from pipeline.core.lock import LockHeld, PipelineLock
from pipeline.flow.runner import STOP, install_stop_handlers, run_locked
from pipeline.flow.worker import enqueue_run

log = logging.getLogger("newsdesk.scheduler")

JOB_TABLE = "apscheduler_jobs"
DAEMON_LOCK = "scheduler"
EX_TEMPFAIL = 75


def run_job(config_path: str, job_name: str) -> str:
    """One scheduled job: load the config afresh, run its stages under the lock, return the run status."""

    config = load_config(config_path)
    job = config.schedule.jobs[job_name]
    if config.cluster.enabled:  # the workers run it; this single scheduler only queues
        ledger = Ledger.from_config(config)
        try:
            run_id = enqueue_run(ledger, f"schedule:{job_name}", list(job.stages))
        finally:
            ledger.close()
        log.info("job %s queued as run %s", job_name, run_id, extra={"run_id": run_id, "event": "job_queued"})
        return "queued"
    try:
        run = run_locked(config, f"schedule:{job_name}", list(job.stages))
    except LockHeld as exc:
        log.warning("job %s skipped: %s", job_name, exc)
        return "skipped"
    log.info("job %s finished: %s", job_name, run.status, extra={"run_id": run.id, "event": "job_done"})
    return run.status


def trigger(cron: str, timezone: str) -> CronTrigger:
    return CronTrigger.from_crontab(cron, timezone=timezone)


def build_scheduler(config: Config, config_path: str) -> BlockingScheduler:
    """A scheduler whose job store holds exactly the jobs in config once it starts."""
    scheduler = BlockingScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=config.ledger_url, tablename=JOB_TABLE)},
        executors={"default": ThreadPoolExecutor(max_workers=1)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": config.schedule.misfire_grace_time},
        timezone=config.schedule.timezone,
    )
    remove_unconfigured_jobs(config)
    for name, job in config.schedule.jobs.items():
        # Added before start, these replace the stored jobs of the same id when the scheduler starts.
        scheduler.add_job(
            run_job,
            trigger=trigger(job.cron, config.schedule.timezone),
            args=[str(Path(config_path).resolve()), name],
            id=name,
            name=f"{name}: {', '.join(job.stages)}",
            replace_existing=True,
        )
    return scheduler


def remove_unconfigured_jobs(config: Config) -> None:
    """Jobs dropped from config.toml must not keep firing from the persistent store."""
    engine = create_engine(config.ledger_url)
    try:
        if not inspect(engine).has_table(JOB_TABLE):
            return
        table = Table(JOB_TABLE, MetaData(), autoload_with=engine)
        with engine.begin() as connection:
            connection.execute(delete(table).where(table.c.id.not_in(list(config.schedule.jobs))))
    finally:
        engine.dispose()


def next_run_times(config: Config, now: datetime | None = None) -> dict[str, datetime | None]:
    """When each configured job fires next; computed from config, so `status` works without a daemon."""
    now = now or datetime.now(timezone.utc)
    return {name: trigger(job.cron, config.schedule.timezone).get_next_fire_time(None, now) for name, job in config.schedule.jobs.items()}


def serve(config_path: str) -> int:
    """Run the daemon until SIGTERM/SIGINT; the job in progress finishes its current item first.

    Returns 0 after a clean stop, 75 (EX_TEMPFAIL) when another daemon already runs on this ledger.
    """

    config = load_config(config_path)
    daemon_lock = PipelineLock(Ledger.from_config(config), name=DAEMON_LOCK, holder="run.py schedule")
    try:
        daemon_lock.acquire()
    except LockHeld as exc:
        log.error("scheduler not started: %s", exc)
        return EX_TEMPFAIL
    try:
        scheduler = build_scheduler(config, config_path)
        install_stop_handlers()

        def stop_on_signal() -> None:
            STOP.wait()
            log.warning("stopping: the running job finishes its current item first")
            while not scheduler.running:  # a signal during start-up: wait until there is something to shut down
                time.sleep(0.05)
            scheduler.shutdown(wait=True)

        threading.Thread(target=stop_on_signal, name="newsdesk-stop", daemon=True).start()
        for name, when in next_run_times(config).items():
            log.warning("job %s: next run %s", name, when)
        if STOP.is_set():
            return 0
        scheduler.start()  # blocks until shutdown
        log.warning("scheduler stopped")
        return 0
    finally:
        daemon_lock.release()
