"""A single-instance lock in the ledger, so two daemons (or a daemon and a manual run) never run stages at once.

The lock row names its holder (pid, host, command). A lock whose holder is a
dead process on this host, or whose heartbeat is older than `stale_after`,
is taken over; the takeover is a conditional update, so two contenders
cannot both win it.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from pipeline import schema
from pipeline.ledger import Ledger, as_utc, utcnow


class LockHeld(Exception):
    """Another live process holds the lock; the message says who."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PipelineLock:
    def __init__(self, ledger: Ledger, name: str = "pipeline", holder: str = "", stale_after: timedelta = timedelta(hours=2)) -> None:
        self.ledger, self.name, self.stale_after = ledger, name, stale_after
        self.pid, self.host = os.getpid(), socket.gethostname()
        self.holder = holder or "newsdesk"

    def _is_stale(self, row) -> bool:
        if row.host == self.host and not _alive(row.pid):
            return True
        return utcnow() - as_utc(row.heartbeat) > self.stale_after

    def acquire(self) -> None:
        now = utcnow()
        values = dict(holder=self.holder, pid=self.pid, host=self.host, acquired=now, heartbeat=now)
        with self.ledger.begin() as connection:
            row = connection.execute(select(schema.locks).where(schema.locks.c.name == self.name)).first()
            if row is None:
                try:
                    connection.execute(insert(schema.locks).values(name=self.name, **values))
                    return
                except IntegrityError:
                    row = connection.execute(select(schema.locks).where(schema.locks.c.name == self.name)).first()
            if row.pid == self.pid and row.host == self.host:
                return
            if not self._is_stale(row):
                raise LockHeld(
                    f"another Newsdesk run holds the lock: '{row.holder}' (pid {row.pid} on {row.host}, "
                    f"since {as_utc(row.acquired):%Y-%m-%d %H:%M:%S} UTC); try again when it ends"
                )
            taken = connection.execute(
                update(schema.locks)
                .where(schema.locks.c.name == self.name, schema.locks.c.pid == row.pid, schema.locks.c.host == row.host)
                .values(**values)
            ).rowcount
            if not taken:
                raise LockHeld(f"another Newsdesk run took over the stale lock '{self.name}' first")

    def heartbeat(self) -> None:
        with self.ledger.begin() as connection:
            connection.execute(
                update(schema.locks)
                .where(schema.locks.c.name == self.name, schema.locks.c.pid == self.pid, schema.locks.c.host == self.host)
                .values(heartbeat=utcnow())
            )

    def release(self) -> None:
        with self.ledger.begin() as connection:
            connection.execute(
                delete(schema.locks).where(
                    schema.locks.c.name == self.name, schema.locks.c.pid == self.pid, schema.locks.c.host == self.host
                )
            )

    @contextmanager
    def held(self) -> Iterator[PipelineLock]:
        self.acquire()
        try:
            yield self
        finally:
            self.release()
