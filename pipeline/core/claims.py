"""Row-level claims on units of work, so several workers on several machines share one ledger.

A unit (a feed to fetch, a batch to classify, a story to draft, a draft to
check) is a row in `claims`, enqueued `pending` for one run. A worker claims
the oldest claimable row for a lease: on PostgreSQL with
`SELECT … FOR UPDATE SKIP LOCKED`, so contenders never wait on each other
and never get the same row; on SQLite the database's single writer does the
same job. The claim is then a conditional update (only a row still
claimable changes hands), so even two processes that read the same row
cannot both win it.

A live worker renews its lease (`Claims.kept`); a worker that dies stops
renewing, and once the lease has run out the unit is claimable again. Only
the owner can complete or release a claim: a worker that lost its lease
(stalled past it while another took over) finds out when it tries, and its
result is not recorded twice. A unit whose workers died `max_attempts`
times is marked failed instead of killing a fourth.

Times are the claiming worker's clock, injected (`clock`) so tests can move
it; across machines, leases assume clocks agree to well within a lease.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable

from sqlalchemy import Connection, and_, func, insert, or_, select, update
from sqlalchemy.exc import OperationalError

from pipeline.core import schema
from pipeline.core.ledger import Ledger, as_utc, conflict_insert, utcnow

log = logging.getLogger("newsdesk.claims")

PENDING, CLAIMED, DONE, FAILED = "pending", "claimed", "done", "failed"

# SQLite answers "database is locked" when two writers meet (WAL snapshots do not wait); a few short retries.
_CONTENTION_RETRIES = 50


def worker_name() -> str:
    """host:pid:random, unique per process and readable in `status` and the claims table."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class Claim:
    id: int
    run_id: str
    stage: str
    unit: str
    payload: dict[str, Any]
    attempts: int
    owner: str
    leased_until: datetime


@dataclass
class Claims:
    """The claim API of one worker (owner) on one ledger."""

    ledger: Ledger
    owner: str = field(default_factory=worker_name)
    lease: timedelta = timedelta(seconds=60)
    clock: Callable[[], datetime] = utcnow
    max_attempts: int = 3

    # --- enqueue ---------------------------------------------------------------------

    def enqueue(self, run_id: str, stage: str, units: Iterable[str | tuple[str, dict]], connection: Connection | None = None) -> int:
        """Add pending units to a run's stage; a unit already there is left as it is. Returns how many were added."""
        rows = []
        now = self.clock()
        for unit in units:
            key, payload = (unit, {}) if isinstance(unit, str) else unit
            rows.append(dict(run_id=run_id, stage=stage, unit=key, payload=payload, state=PENDING, attempts=0,
                             created=now, updated=now))
        if not rows:
            return 0
        if connection is None:
            with self.ledger.begin() as own:
                return self._insert_new(own, run_id, stage, rows)
        return self._insert_new(connection, run_id, stage, rows)

    @staticmethod
    def _insert_new(connection: Connection, run_id: str, stage: str, rows: list[dict]) -> int:
        # Another worker may queue the same unit at the same moment (check_early beside the check phase's start):
        # the database skips it, where a read-then-insert raced into a unique violation that ended a worker.
        insert_new = conflict_insert(connection, schema.claims)
        if insert_new is None:
            c = schema.claims.c
            present = set(connection.execute(select(c.unit).where(c.run_id == run_id, c.stage == stage)).scalars())
            new = [row for row in rows if row["unit"] not in present]
            if new:
                connection.execute(insert(schema.claims), new)
            return len(new)
        added = 0
        for start in range(0, len(rows), 500):
            statement = insert_new.values(rows[start:start + 500])
            statement = statement.on_conflict_do_nothing(index_elements=["run_id", "stage", "unit"])
            added += len(connection.execute(statement.returning(schema.claims.c.id)).all())
        return added

    # --- claim, renew, complete ----------------------------------------------------------

    def _claimable(self, now: datetime):
        c = schema.claims.c
        return or_(c.state == PENDING, and_(c.state == CLAIMED, c.leased_until < now))

    def claim(self, stages: Iterable[str] | None = None, run_id: str | None = None) -> Claim | None:
        """The oldest claimable unit (of these stages / this run), now leased to this worker; None when there is none."""
        for attempt in range(_CONTENTION_RETRIES):
            try:
                return self._try_claim(list(stages) if stages is not None else None, run_id)
            except OperationalError as exc:
                if "locked" not in str(exc).lower() or attempt == _CONTENTION_RETRIES - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
        return None

    def _try_claim(self, stages: list[str] | None, run_id: str | None) -> Claim | None:
        c = schema.claims.c
        while True:
            now = self.clock()
            claimable = self._claimable(now)
            query = select(schema.claims).where(claimable)
            if stages is not None:
                query = query.where(c.stage.in_(stages))
            if run_id is not None:
                query = query.where(c.run_id == run_id)
            # SKIP LOCKED: rows another worker is claiming right now are passed over, not waited for.
            # (SQLite renders no FOR UPDATE; its one writer at a time serialises the claims.)
            query = query.order_by(c.id).limit(1).with_for_update(skip_locked=True)
            with self.ledger.begin() as connection:
                row = connection.execute(query).first()
                if row is None:
                    return None
                if row.state == CLAIMED and row.attempts >= self.max_attempts:
                    # Its workers died this many times on it: a poison unit. Record it, never hand it out again.
                    connection.execute(
                        update(schema.claims).where(c.id == row.id, claimable).values(
                            state=FAILED, owner=None, leased_until=None, updated=now,
                            error=f"{row.attempts} worker(s) stopped without finishing this unit (last: {row.owner}); "
                                  f"not retried (claims.max_attempts = {self.max_attempts})"))
                    log.error("unit %s/%s of run %s failed: its workers died %d times", row.stage, row.unit, row.run_id, row.attempts)
                    continue
                leased_until = now + self.lease
                won = connection.execute(
                    update(schema.claims).where(c.id == row.id, claimable).values(
                        state=CLAIMED, owner=self.owner, leased_until=leased_until, attempts=c.attempts + 1, updated=now)
                ).rowcount
                if not won:
                    continue  # another worker got it between our read and our update: look again
                if row.state == CLAIMED:
                    log.warning("took over unit %s/%s of run %s from %s (lease ran out at %s)", row.stage, row.unit,
                                row.run_id, row.owner, as_utc(row.leased_until).isoformat())
                return Claim(row.id, row.run_id, row.stage, row.unit, dict(row.payload or {}), row.attempts + 1,
                             self.owner, leased_until)

    def _owned(self, claim: Claim):
        c = schema.claims.c
        return and_(c.id == claim.id, c.owner == self.owner, c.state == CLAIMED)

    def _write(self, claim: Claim, values: dict, connection: Connection | None) -> bool:
        statement = update(schema.claims).where(self._owned(claim)).values(updated=self.clock(), **values)
        if connection is not None:
            return bool(connection.execute(statement).rowcount)
        with self.ledger.begin() as own:
            return bool(own.execute(statement).rowcount)

    def renew(self, claim: Claim) -> bool:
        """Extend the lease; False when this worker no longer owns the claim (it was taken over)."""
        return self._write(claim, dict(leased_until=self.clock() + self.lease), None)

    def complete(self, claim: Claim, report: dict | None = None, connection: Connection | None = None) -> bool:
        """Mark the unit done (in `connection`'s transaction if given); False when the claim is no longer ours."""
        return self._write(claim, dict(state=DONE, leased_until=None, report=report), connection)

    def release(self, claim: Claim) -> bool:
        """Hand the unit back untouched (the worker stops before starting it); it does not count as an attempt."""
        return self._write(claim, dict(state=PENDING, owner=None, leased_until=None, attempts=schema.claims.c.attempts - 1), None)

    # --- keeping a lease while working ------------------------------------------------------

    @contextmanager
    def kept(self, claim: Claim, interval: float | None = None) -> Iterator[threading.Event]:
        """Renew the claim's lease in the background while the block runs; the event is set if the claim was lost."""
        lost, stop = threading.Event(), threading.Event()
        every = interval if interval is not None else max(self.lease.total_seconds() / 3, 0.05)

        def beat() -> None:
            while not stop.wait(every):
                try:
                    if not self.renew(claim):
                        log.warning("lost the claim on %s/%s of run %s (another worker took it over)", claim.stage,
                                    claim.unit, claim.run_id)
                        lost.set()
                        return
                except Exception as exc:  # a busy ledger now and then: the lease allows a few missed beats
                    log.debug("lease renewal failed: %s", exc)

        thread = threading.Thread(target=beat, name=f"newsdesk-lease-{claim.id}", daemon=True)
        thread.start()
        try:
            yield lost
        finally:
            stop.set()
            thread.join()

    # --- reading -------------------------------------------------------------------------

    def open_units(self, run_id: str, stage: str, connection: Connection | None = None) -> int:
        """Units of a run's stage not done or failed yet (pending or claimed)."""
        c = schema.claims.c
        query = select(func.count()).select_from(schema.claims).where(
            c.run_id == run_id, c.stage == stage, c.state.in_([PENDING, CLAIMED]))
        if connection is not None:
            return connection.execute(query).scalar_one()
        with self.ledger.engine.connect() as own:
            return own.execute(query).scalar_one()


__all__ = ["Claim", "Claims", "PENDING", "CLAIMED", "DONE", "FAILED", "worker_name"]
