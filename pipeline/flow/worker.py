"""Queued runs and `run.py worker`: many processes, on many machines, work one run through a shared ledger.

With `cluster.enabled`, a run is queued (`enqueue_run`: the scheduler, `run.py
enqueue`, or `run.py once`) instead of being run under the global lock. Its
stages become phases, worked one after another; a phase's units of work are
claims (pipeline/core/claims.py):

    fetch     one unit per enabled feed (its items are indexed in Chroma by the same unit)
    classify  one unit per batch of `classify.batch_size` pending items (copies of one text in one batch)
    select    one unit: cluster the new items into stories (it must see all of them)
    draft     one unit per story chosen (the top `stories.max_per_run`, ranked once the select unit is done)
    check     one unit per drafted draft
    publish   one unit: publish every checked draft (documents are made one at a time, in order)
    sync      one unit: read approvals back

A worker loops: move queued runs on (`advance`), claim a unit, work it under a
renewed lease, mark it done with its report. A story's check is queued as
soon as its draft is written (`check_early`), so the draft and check phases
overlap; every other phase waits for the one before it. The next phase's units are
enqueued by whichever worker sees the phase finished, in one transaction
with a conditional update of the run's phase, so exactly one does. Only the
oldest unfinished queued run advances, so queued runs never overlap, as runs
under the lock never did. When the last phase is done, the unit reports are
summed into the run's stage reports in `runs`, so `status` reads a queued
run like any other.

Exactly once: a unit is claimed by one worker at a time; a dead worker's
unit is redone after its lease by another, and the stages' own saves are
conditional on the input state (a story drafted once, a draft checked once,
an item classified once), while model answers already paid for are found in
the ledger's request cache. SIGTERM finishes the unit in hand (Run.stop_requested).
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Callable

from sqlalchemy import insert, select, update

from pipeline.core import schema
from pipeline.core.claims import FAILED, Claims
from pipeline.core.clock import fixed_clock
from pipeline.core.config import Config
from pipeline.core.ledger import Ledger, as_utc, utcnow
from pipeline.core.models import DraftState, StageReport
from pipeline.flow.runner import STAGE_ORDER, STAGES, STOP, Run, stage_function
from agents.editor import select_top, waiting_stories
from agents.classifier import pending_items
from pipeline.flow.stages import select_stories

log = logging.getLogger("newsdesk.worker")

QUEUED, RUNNING, FINISHED = "queued", "running", "done"
MAX_PAUSE_S = 60.0  # the longest a failing worker waits before it tries the ledger again


def phases_for(stages: list[str]) -> list[str]:
    """A run's phases in pipeline order; drafting is two, since clustering must see every item first."""
    phases: list[str] = []
    for stage in STAGE_ORDER:
        if stage in stages:
            phases.extend(["select", "draft"] if stage == "draft" else [stage])
    return phases


def stage_of(phase: str) -> str:
    return "draft" if phase == "select" else phase


def unit_function(phase: str) -> Callable[[Run], StageReport]:
    if phase == "select":
        return select_stories
    return stage_function(phase)


# --- queueing a run -----------------------------------------------------------------------


def enqueue_run(ledger: Ledger, command: str, stages: list[str], as_of: datetime | None = None) -> str:
    """Queue a run of these stages for the workers; returns its run id.

    The editorial "now" is fixed at `as_of` (default: now) for every worker and every retry, so the
    prompts a unit sends are the same whoever redoes it (and an answer already paid for is a cache hit)."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGE_ORDER)}")
    run_id, now = uuid.uuid4().hex[:12], utcnow()
    with ledger.begin() as connection:
        connection.execute(insert(schema.runs).values(id=run_id, command=command, started=now, status="queued", stages=[]))
        connection.execute(insert(schema.run_queue).values(
            run_id=run_id, phases=phases_for(stages), phase=-1, state=QUEUED, as_of=as_of or now, created=now, updated=now))
    return run_id


def units_for(phase: str, config: Config, ledger: Ledger) -> list[str | tuple[str, dict]]:
    """The units of a phase, read from the ledger once the phase before it is done."""
    if phase == "fetch":
        return [feed.name for feed in config.feeds if feed.enabled]
    if phase == "classify":
        # Copies of one text go in one batch: the batch decides them once (the classifier's twin rule).
        by_hash: dict[str, list[str]] = {}
        for item in pending_items(ledger):
            by_hash.setdefault(item.content_hash, []).append(item.id)
        units, batch = [], []
        for ids in by_hash.values():
            batch.extend(ids)
            if len(batch) >= config.classify.batch_size:
                units.append((f"batch-{batch[0]}", {"keys": batch}))
                batch = []
        if batch:
            units.append((f"batch-{batch[0]}", {"keys": batch}))
        return units
    if phase == "draft":
        chosen = select_top(waiting_stories(ledger), config.stories.max_per_run, config.stories.min_newsworthiness)
        return [story.key for story in chosen]
    if phase == "check":
        with ledger.engine.connect() as connection:
            return list(connection.execute(
                select(schema.drafts.c.id).where(schema.drafts.c.state == DraftState.drafted.value).order_by(schema.drafts.c.created)
            ).scalars())
    return [{"select": "stories", "publish": "drafts", "sync": "approvals"}[phase]]


def advance(config: Config, ledger: Ledger, claims: Claims) -> bool:
    """Move the oldest unfinished queued run on while its current phase is done; True if anything moved."""
    moved = False
    while True:
        with ledger.engine.connect() as connection:
            row = connection.execute(
                select(schema.run_queue).where(schema.run_queue.c.state != FINISHED)
                .order_by(schema.run_queue.c.created, schema.run_queue.c.run_id).limit(1)
            ).first()
        if row is None:
            return moved
        phases = list(row.phases)
        if row.phase >= 0 and claims.open_units(row.run_id, phases[row.phase]):
            return moved
        following = row.phase + 1
        units = units_for(phases[following], config, ledger) if following < len(phases) else None
        with ledger.begin() as connection:
            won = connection.execute(
                update(schema.run_queue)
                .where(schema.run_queue.c.run_id == row.run_id, schema.run_queue.c.phase == row.phase)
                .values(phase=following, state=RUNNING if units is not None else FINISHED, updated=utcnow())
            ).rowcount
            if not won:
                continue  # another worker moved it first; look again
            if units is not None:
                claims.enqueue(row.run_id, phases[following], units, connection=connection)
                if row.phase < 0:
                    connection.execute(update(schema.runs).where(schema.runs.c.id == row.run_id).values(status="running"))
                log.info("run %s: phase %s, %d unit(s)", row.run_id, phases[following], len(units))
            else:
                status = finish_queued_run(connection, row.run_id, phases)
                log.info("run %s finished: %s", row.run_id, status, extra={"run_id": row.run_id, "event": "run_done"})
        moved = True


def check_early(ledger: Ledger, claims: Claims, run_id: str, story_key: str) -> bool:
    """Queue the check of a story's draft the moment it is written, not after every draft of the run: a draft's
    check depends on nothing but its own draft, so drafting and checking overlap across workers. The check
    phase, when it starts, finds this unit already queued (units are unique per run) and waits for it too.
    True when a check unit was queued."""
    with ledger.engine.connect() as connection:
        phases = connection.execute(select(schema.run_queue.c.phases).where(schema.run_queue.c.run_id == run_id)).scalar()
        draft_id = connection.execute(select(schema.drafts.c.id).where(
            schema.drafts.c.story_key == story_key, schema.drafts.c.state == DraftState.drafted.value)).scalar()
    if draft_id is None or "check" not in (phases or []):
        return False  # no draft to check (needs_attention, or already checked), or the run does not check
    return claims.enqueue(run_id, "check", [draft_id]) > 0


def finish_queued_run(connection, run_id: str, phases: list[str]) -> str:
    """Sum the run's unit reports into one report per stage and close its `runs` row; returns the status."""
    rows = connection.execute(
        select(schema.claims).where(schema.claims.c.run_id == run_id).order_by(schema.claims.c.id)
    ).all()
    reports: dict[str, StageReport] = {}
    spans: dict[str, list[datetime]] = {}
    for phase in phases:
        reports.setdefault(stage_of(phase), StageReport(stage=stage_of(phase)))
    for row in rows:
        stage = stage_of(row.stage)
        total = reports[stage]
        spans.setdefault(stage, []).extend(as_utc(t) for t in (row.created, row.updated))
        if row.state == FAILED:
            total.errors.append(f"{row.stage} unit {row.unit}: {row.error}")
            continue
        unit = StageReport.model_validate(row.report or {"stage": stage})
        total.items_in += unit.items_in
        total.items_out += unit.items_out
        total.errors.extend(unit.errors)
        total.llm_calls += unit.llm_calls
        total.tokens += unit.tokens
        total.cost_usd = round(total.cost_usd + unit.cost_usd, 6)
        for key, value in unit.notes.items():
            if isinstance(value, (int, float)) and isinstance(total.notes.get(key, 0), (int, float)):
                total.notes[key] = total.notes.get(key, 0) + value
            elif key not in total.notes:
                total.notes[key] = value
        total.notes["units"] = int(total.notes.get("units", 0)) + 1
    for stage, times in spans.items():  # the stage's wall time: from its units' enqueueing to the last one done
        reports[stage].duration_s = round((max(times) - min(times)).total_seconds(), 3)
    status = "ok" if all(r.ok for r in reports.values()) else "failed"
    connection.execute(update(schema.runs).where(schema.runs.c.id == run_id).values(
        stages=[r.model_dump(mode="json") for r in reports.values()], status=status, ended=utcnow()))
    return status


def queued_run_state(ledger: Ledger, run_id: str) -> str | None:
    with ledger.engine.connect() as connection:
        return connection.execute(select(schema.run_queue.c.state).where(schema.run_queue.c.run_id == run_id)).scalar()


# --- the worker ----------------------------------------------------------------------------------


class Worker:
    """Claims units of the given stages (default: config.cluster.stages) and works them, one at a time."""

    def __init__(self, config: Config, ledger: Ledger | None = None, *, stages: list[str] | None = None,
                 owner: str | None = None, clock: Callable[[], datetime] = utcnow, run_id: str | None = None) -> None:
        self.config = config
        self.ledger = ledger or Ledger.from_config(config)
        cluster = config.cluster
        kwargs = {"owner": owner} if owner else {}
        self.claims = Claims(self.ledger, lease=timedelta(seconds=cluster.lease_s), clock=clock,
                             max_attempts=cluster.max_attempts, **kwargs)
        wanted = set(stages if stages is not None else cluster.stages)
        self.phases = [p for p in phases_for(list(STAGE_ORDER)) if stage_of(p) in wanted]
        self.only_run = run_id
        self.units_done = 0
        self._run: Run | None = None
        self._store = None

    @property
    def owner(self) -> str:
        return self.claims.owner

    def warm_up(self) -> None:
        """Open the store and load the embedding model now, so the first unit does not pay for it (a long-running
        worker pays once, at start). Skipped for stages that never embed (publish, sync)."""
        if not {"fetch", "classify", "select", "draft", "check"} & set(self.phases):
            return
        from pipeline.services.store import Store

        self._store = Store.from_config(self.config)
        self._store.embed(["warm-up"])

    def _run_for(self, run_id: str) -> Run:
        if self._run is not None and self._run.id == run_id:
            return self._run
        self._close_run()
        with self.ledger.engine.connect() as connection:
            as_of = connection.execute(select(schema.run_queue.c.as_of).where(schema.run_queue.c.run_id == run_id)).scalar()
        run = Run(self.config, command=f"worker {self.owner}", ledger=self.ledger, id=run_id, queued=True,
                  clock=fixed_clock(as_utc(as_of) or utcnow()))
        if self._store is not None:  # the embedding model and Chroma client are loaded once per worker
            run.__dict__["store"] = self._store
        self._run = run
        return run

    def _close_run(self) -> None:
        if self._run is not None:
            self._store = self._run.__dict__.get("store", self._store)
            self._run.close()
            self._run = None

    def work_one(self) -> bool:
        """Move queued runs on, then claim and work one unit; False when there was nothing to claim."""
        advance(self.config, self.ledger, self.claims)
        claim = self.claims.claim(self.phases, run_id=self.only_run)
        if claim is None:
            return False
        run = self._run_for(claim.run_id)
        run.unit = claim
        try:
            with self.claims.kept(claim) as lost:
                report = run.execute_stage(claim.stage, unit_function(claim.stage))
        finally:
            run.unit = None
            self._store = run.__dict__.get("store", self._store)
        if not self.claims.complete(claim, report=report.model_dump(mode="json")):
            # Stalled past the lease and taken over: the stages' saves are conditional, so nothing was saved
            # twice; the unit's report is the other worker's.
            log.warning("unit %s/%s of run %s was taken over while this worker had it (lost: %s)",
                        claim.stage, claim.unit, claim.run_id, lost.is_set())
        elif claim.stage == "draft":
            check_early(self.ledger, self.claims, claim.run_id, claim.unit)
        self.units_done += 1
        advance(self.config, self.ledger, self.claims)
        return True

    def serve(self, until: Callable[[], bool] | None = None) -> int:
        """Work until SIGTERM/SIGINT (the unit in hand is finished first) or until `until()`; returns units done."""
        pause = self.config.cluster.poll_s
        try:
            while not STOP.is_set():
                if until is not None and until():
                    break
                try:
                    worked = self.work_one()
                except Exception as exc:
                    # The ledger or a claim failed outside a stage (a stage's own failure is its report): a
                    # long-running worker says so and tries again, pausing longer while it keeps failing.
                    # A unit it held is taken over after its lease, as if the worker had died.
                    log.error("worker %s: %s: %s; trying again in %gs", self.owner, type(exc).__name__, exc, pause,
                              exc_info=log.isEnabledFor(logging.DEBUG))
                    STOP.wait(pause)
                    pause = min(pause * 2, MAX_PAUSE_S)
                    continue
                pause = self.config.cluster.poll_s
                if not worked:
                    STOP.wait(self.config.cluster.poll_s)
        finally:
            self._close_run()
        return self.units_done


def work_run(config: Config, ledger: Ledger, run_id: str, stages: list[str] | None = None) -> str | None:
    """Work one queued run in this process (beside any other workers) until it is finished; its final state."""
    worker = Worker(config, ledger, stages=stages or list(STAGE_ORDER), run_id=run_id)
    worker.serve(until=lambda: queued_run_state(ledger, run_id) == FINISHED)
    return queued_run_state(ledger, run_id)
