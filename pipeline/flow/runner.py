"""The runner: chains the stages and records each stage's outcome in the ledger.

Stages are module-level functions `stage(run) -> StageReport`. Each reads the
work in its input state from the ledger and moves it on, so a run that was
stopped anywhere resumes where it left off. One stage failing is recorded and
reported; the stages after it still run on whatever work is ready for them.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import logging
import os
import time
import signal
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import cached_property
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator

from sqlalchemy import insert, update

from pipeline.core import schema
from pipeline.core.clock import Clock, system_clock
from pipeline.core.config import Config
from pipeline.core.ledger import Ledger, utcnow
from pipeline.core.logs import log_failure, redact
from pipeline.core.models import StageReport
from pipeline.core.lock import PipelineLock
from pipeline.services.embeddings import EmbeddingMemo
from pipeline.services.llm import Gateway

if TYPE_CHECKING:
    from pipeline.core.claims import Claim

log = logging.getLogger("newsdesk.runner")

STAGE_ORDER = ("fetch", "classify", "draft", "check", "publish", "sync")

# name -> "module:function"; imported on use so one stage's import cost or
# breakage never touches the others.
STAGES: dict[str, str] = {name: f"pipeline.flow.stages:{name}" for name in STAGE_ORDER}

# Stages that run at once when a run has both (and is not a worker's unit, see pipeline/flow/worker.py's
# check_early): producer -> consumer, "module:function" async (run, report, queue) each. A story's check needs
# nothing but its own draft, so it starts the moment the draft is saved, while the other stories are written.
STREAMED: dict[str, tuple[str, str, str]] = {
    "draft": ("check", "pipeline.flow.stages:draft_streaming", "pipeline.flow.stages:check_streaming"),
}

# The stage whose work is running in this thread or task (a streamed pair runs two on one thread).
_current_stage: contextvars.ContextVar[str | None] = contextvars.ContextVar("newsdesk_stage", default=None)


STOP = threading.Event()


def close_abandoned_runs(ledger: Ledger) -> int:
    """Mark runs still 'running' as interrupted: their processes were killed or crashed.

    Call only while holding the pipeline lock, when no other run of this ledger can be alive.
    Queued runs (pipeline/flow/worker.py) are left alone: their workers are other processes, and a
    dead worker's units are taken over by the others, not given up.
    """
    from sqlalchemy import select

    with ledger.begin() as connection:
        return connection.execute(
            update(schema.runs)
            .where(schema.runs.c.status == "running", schema.runs.c.id.not_in(select(schema.run_queue.c.run_id)))
            .values(status="interrupted", ended=utcnow(), error="the process ended without finishing this run (killed or crashed)")
        ).rowcount


def install_stop_handlers() -> None:
    """SIGTERM and SIGINT ask the run to stop at the next item boundary; a second signal exits at once."""

    def handle(signum, _frame):
        if STOP.is_set():
            raise SystemExit(128 + signum)
        log.warning("signal %s: finishing the current item, then stopping", signal.Signals(signum).name)
        STOP.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


# Test hook, for tests/test_resume.py only: "<stage>:after" SIGKILLs the process right after
# <stage> is recorded; "<stage>:commit:<n>" SIGKILLs it just before the n-th ledger commit
# <stage> makes from the runner's thread (n-1 transactions landed, the n-th is lost).
# Unset, it costs one environment lookup per stage.
KILL_AT_ENV = "NEWSDESK_TEST_KILL_AT"
# With several worker processes: a file path; only the process that creates it is killed (once in all).
KILL_ONCE_ENV = "NEWSDESK_TEST_KILL_ONCE"


def _kill_self() -> None:
    marker = os.environ.get(KILL_ONCE_ENV)
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # another worker was the one
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def _test_kill_hook(run: "Run", stage: str, moment: str) -> None:
    stage_at, _, point = os.environ.get(KILL_AT_ENV, "").partition(":")
    if stage_at != stage:
        return
    if moment == "after" and point == "after":
        _kill_self()
    elif moment == "start" and point.startswith("commit:"):
        from sqlalchemy import event

        target, thread, commits = int(point.removeprefix("commit:")), threading.get_ident(), [0]

        def kill_before_commit(_connection) -> None:
            # Only this stage's own commits count: not the lock's heartbeat thread, not the stage streamed beside
            # it, not later stages.
            if threading.get_ident() == thread and _current_stage.get() == stage:
                commits[0] += 1
                if commits[0] == target:
                    _kill_self()

        event.listen(run.ledger.engine, "commit", kill_before_commit)


@contextmanager
def kill_points_for_tests(run: "Run", step: str) -> Iterator[None]:
    """For the resume tests: a step a stage may hand to a thread of its own (indexing, which classify does while
    its model works) has kill points of its own, `step:commit:N`, counted on the thread that runs it."""
    token = _current_stage.set(step)
    try:
        _test_kill_hook(run, step, "start")
        yield
    finally:
        _current_stage.reset(token)


class StageUnavailable(Exception):
    pass


def stage_function(name: str) -> Callable[["Run"], StageReport]:
    target = STAGES.get(name)
    if target is None:
        raise StageUnavailable(f"unknown stage '{name}'; stages: {', '.join(STAGE_ORDER)}")
    return _load(target)


def _load(target: str):
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def _failure(name: str, exc: BaseException, run_id: str) -> str:
    """A stage's failure as its report's error line: the cause, not "unhandled errors in a TaskGroup"."""
    log.exception("stage %s failed", name, extra={"run_id": run_id, "stage": name, "event": "failed"})
    while isinstance(exc, ExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


@dataclass
class Run:
    """One pipeline run: the config, the ledger, lazily built services and the stage reports."""

    config: Config
    command: str
    ledger: Ledger | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    reports: list[StageReport] = field(default_factory=list)
    status: str = "running"
    progress: Callable[[str], None] | None = None
    # The editorial "now" (story windows, ranking, research recency); see pipeline/core/clock.py.
    clock: Clock = system_clock
    # A queued run (pipeline/flow/worker.py) worked one claimed unit at a time: its runs row exists already and
    # the stages only take the unit in hand (see in_scope).
    queued: bool = False
    unit: "Claim | None" = None
    # The stages run_stages was asked for: a stage may leave work to a later one of the same run (fetch leaves
    # indexing to classify, which does it while its model works).
    planned: list[str] = field(default_factory=list)
    _ahead_work: list[Future] = field(default_factory=list, repr=False)

    def now(self):
        return self.clock()

    def __post_init__(self) -> None:
        if self.ledger is None:
            self.ledger = Ledger.from_config(self.config)
        self.started = utcnow()
        if self.queued:
            return
        with self.ledger.begin() as connection:
            connection.execute(
                insert(schema.runs).values(id=self.id, command=self.command, started=self.started, status="running", stages=[])
            )

    @property
    def stop_requested(self) -> bool:
        """Set by SIGTERM/SIGINT: stages finish the item in hand, then return.

        A worker's item in hand is its whole claimed unit (one feed, batch, story or draft): it is finished,
        since a unit marked done must be done, and one handed back would be redone from the start."""
        return STOP.is_set() and self.unit is None

    def in_scope(self, stage: str, key: str) -> bool:
        """Whether a stage takes this unit of work (feed name, item id, story key, draft id) in this run:
        everything, except in a worker, where only the claimed unit's keys."""
        if self.unit is None:
            return True
        keys = self.unit.payload.get("keys")
        return key in keys if keys is not None else key == self.unit.unit

    @cached_property
    def store(self):
        from pipeline.services.store import Store

        return Store.from_config(self.config)

    @cached_property
    def embed_memo(self) -> EmbeddingMemo:
        """The store's embedding function, remembering the run's latest vectors: what was embedded ahead (see
        `ahead`) is not embedded again."""
        return EmbeddingMemo(self.store.embed)

    @cached_property
    def ahead(self) -> ThreadPoolExecutor:
        """One thread for CPU work started early, while the run waits on the model (see `start_ahead`)."""
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="ahead")

    def start_ahead(self, work, *args) -> Future:
        """Start `work(*args)` on the `ahead` thread. It is only a head start: its failure is logged, and what
        `caught_up` finds not yet begun is dropped, so whoever needs the result does that part itself."""
        future = self.ahead.submit(work, *args)
        future.add_done_callback(log_failure(log, f"{getattr(work, '__name__', 'work')} done ahead"))
        self._ahead_work.append(future)
        return future

    def caught_up(self) -> None:
        """Drop the head-start work not begun, and wait for the piece running: the stage that needs the results now
        would otherwise wait for work it may not need (items the classifier found off-beat)."""
        work, self._ahead_work = self._ahead_work, []
        for future in work:
            future.cancel()
        wait(work)

    @cached_property
    def gateway(self):
        return Gateway(self.config, self.ledger, run_id=self.id)

    @cached_property
    def loop(self) -> asyncio.AbstractEventLoop:
        # One loop for the whole run: the gateway's async HTTP client must not outlive its loop.
        return asyncio.new_event_loop()

    def run_async(self, coroutine):
        """Run a stage's coroutine; stages are called synchronously by the CLI and the scheduler."""
        return self.loop.run_until_complete(coroutine)

    def run_stage(self, name: str) -> StageReport:
        report = self.execute_stage(name)
        self._record(report)
        return report

    def execute_stage(self, name: str, function: Callable[["Run"], StageReport] | None = None) -> StageReport:
        """Run one stage (or a worker's unit of it) and return its report, recording nothing in `runs`."""
        started = time.perf_counter()
        spend_before = self._llm_totals()
        token = _current_stage.set(name)
        try:
            _test_kill_hook(self, name, "start")
            try:
                report = (function or stage_function(name))(self)
            except Exception as exc:  # a stage's failure is reported, never a crash of the run
                report = StageReport(stage=name, errors=[_failure(name, exc, self.id)])
        finally:
            _current_stage.reset(token)
        return self._finished(name, report, started, spend_before)

    def run_streamed(self, producer: str) -> None:
        """Run `producer` and its STREAMED consumer at once on the run's loop, each unit the producer saves handed
        to the consumer through a queue; each stage is recorded when it ends (the producer first)."""
        consumer, produce_target, consume_target = STREAMED[producer]
        started = time.perf_counter()
        reports = {name: StageReport(stage=name) for name in (producer, consumer)}
        spend_before = {name: self._llm_totals(name) for name in reports}

        async def part(name: str, target: str, handoff: asyncio.Queue) -> None:
            _current_stage.set(name)  # this task's context, and the tasks it starts
            _test_kill_hook(self, name, "start")
            try:
                await _load(target)(self, reports[name], handoff)
            except Exception as exc:  # one stage's failure is its report's error; the other stage goes on
                reports[name].errors.append(_failure(name, exc, self.id))

        async def both() -> None:
            handoff: asyncio.Queue = asyncio.Queue()
            consuming = asyncio.ensure_future(part(consumer, consume_target, handoff))
            try:
                await asyncio.ensure_future(part(producer, produce_target, handoff))
            finally:
                handoff.put_nowait(None)  # the consumer finishes what it was handed, then ends
            self._record(self._finished(producer, reports[producer], started, spend_before[producer], stage_spend=True))
            await consuming

        self.run_async(both())
        self._record(self._finished(consumer, reports[consumer], started, spend_before[consumer], stage_spend=True))

    def _finished(self, name: str, report: StageReport, started: float, spend_before: tuple[int, int, float],
                  stage_spend: bool = False) -> StageReport:
        report.stage = name
        # Stage errors quote exceptions and provider answers; they reach the ledger, the summary and `status`.
        report.errors = [redact(error) for error in report.errors]
        report.duration_s = round(time.perf_counter() - started, 3)
        spend_after = self._llm_totals(name if stage_spend else None)
        calls, tokens, cost = (after - before for after, before in zip(spend_after, spend_before))
        report.llm_calls, report.tokens, report.cost_usd = calls, tokens, round(cost, 6)
        log.info(
            "stage %s: %d in, %d out, %d error(s), %.2fs",
            name, report.items_in, report.items_out, len(report.errors), report.duration_s,
            extra={"run_id": self.id, "stage": name, "event": "done", "count": report.items_out, "duration_s": report.duration_s},
        )
        return report

    def _record(self, report: StageReport) -> None:
        self.reports.append(report)
        self._save(status="running")
        _test_kill_hook(self, report.stage, "after")

    def run_stages(self, names: list[str]) -> list[StageReport]:
        self.planned = list(names)
        streamed: set[str] = set()
        for name in sorted(names, key=STAGE_ORDER.index):
            if self.stop_requested:
                log.warning("stop requested; skipping stage %s", name)
                break
            if name in streamed:
                continue
            if name in STREAMED and STREAMED[name][0] in names and self.unit is None:
                self.run_streamed(name)
                streamed.add(STREAMED[name][0])
                continue
            self.run_stage(name)
        return self.reports

    def finish(self, error: str | None = None) -> str:
        if error is not None:
            status = "failed"
        elif self.stop_requested:
            status = "interrupted"
        else:
            status = "ok" if all(r.ok for r in self.reports) else "failed"
        self._save(status=status, ended=utcnow(), error=redact(error) if error else None)
        self.close()
        return status

    def close(self) -> None:
        """Close the run's model client and loop (a worker's run, done with, records nothing here)."""
        if "ahead" in self.__dict__:
            self.ahead.shutdown(wait=True, cancel_futures=True)
        if "gateway" in self.__dict__:
            if "loop" in self.__dict__:
                # The provider client was made on the run's loop; close it there, or its
                # connections are collected later on another loop ("Event loop is closed").
                self.loop.run_until_complete(self.gateway.aclose())
            self.gateway.close()
        if "loop" in self.__dict__:
            self.loop.close()

    def _save(self, **values) -> None:
        stages = [r.model_dump(mode="json") for r in self.reports]
        with self.ledger.begin() as connection:
            connection.execute(update(schema.runs).where(schema.runs.c.id == self.id).values(stages=stages, **values))

    def _llm_totals(self, stage: str | None = None) -> tuple[int, int, float]:
        """The run's model spend so far: all of it, or the calls made for one stage (stages streamed together)."""
        if "gateway" not in self.__dict__:
            return 0, 0, 0.0
        totals = self.gateway.totals if stage is None else self.gateway.totals_by_stage.get(stage)
        if totals is None:
            return 0, 0, 0.0
        return totals.calls, totals.tokens, totals.cost_usd


def run_locked(config: Config, command: str, stages: list[str], ledger: Ledger | None = None, clock: Clock = system_clock) -> Run:
    """Run stages under the pipeline lock (raises LockHeld when another run holds it).

    Taking the lock proves no other run of this ledger is alive, so runs left
    'running' by killed processes are closed as interrupted first.
    """

    ledger = ledger or Ledger.from_config(config)
    lock = PipelineLock(ledger, holder=command)
    lock.acquire()
    try:
        close_abandoned_runs(ledger)
        run = Run(config, command=command, ledger=ledger, clock=clock)
        try:
            run.run_stages(stages)
        except BaseException as exc:
            run.status = run.finish(error=f"{type(exc).__name__}: {exc}")
            raise
        run.status = run.finish()
        return run
    finally:
        lock.release()
