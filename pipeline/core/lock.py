"""A single-instance lock in the ledger, so two daemons (or a daemon and a manual run) never run stages at once.

The lock row names its holder (pid, host, command). A lock whose holder is a
dead process on this host, or whose heartbeat is older than `stale_after`,
is taken over; the takeover is a conditional update, so two contenders
cannot both win it. While held, a background thread refreshes the
heartbeat, so a long run on another host is never mistaken for a stale one.

Ownership is per lock object, not per process: a second PipelineLock in the
same process (another scheduler job on another thread) is refused like any
other contender.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from pipeline.core import schema
from pipeline.core.ledger import Ledger, as_utc, utcnow


class LockHeld(Exception):
    """Another live process holds the lock; the message says who."""


# (ledger url, lock name) -> the object in this process that holds it. A row
# with this process's pid that no object here claims was left by a release
# that failed; it is taken over like a dead process's row.
_held_in_process: dict[tuple[str, str], "PipelineLock"] = {}
_registry_lock = threading.Lock()

# SQLite answers "database is locked" when two writers meet; a few short
# retries turn that into a clear win or LockHeld.
_CONTENTION_RETRIES = 20


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PipelineLock:
    def __init__(
        self,
        ledger: Ledger,
        name: str = "pipeline",
        holder: str = "",
        stale_after: timedelta = timedelta(hours=2),
    ) -> None:
        self.ledger, self.name, self.stale_after = ledger, name, stale_after
        self.pid, self.host = os.getpid(), socket.gethostname()
        self.holder = holder or "newsdesk"
        self._key = (ledger.url, name)
        self._beating: threading.Event | None = None

    @property
    def is_held(self) -> bool:
        return _held_in_process.get(self._key) is self

    def _is_stale(self, row) -> bool:
        if row.host == self.host and row.pid == self.pid:
            return _held_in_process.get(self._key) is None
        if row.host == self.host and not _alive(row.pid):
            return True
        return utcnow() - as_utc(row.heartbeat) > self.stale_after

    def acquire(self) -> None:
        """Take the lock or raise LockHeld naming the holder; taking it again while held is a no-op."""
        with _registry_lock:
            if self.is_held:
                return
            # Each try already waits up to the busy timeout: retry within that budget, not 20 times over it.
            give_up_at = time.monotonic() + getattr(self.ledger, "busy_timeout_s", 10.0)
            for attempt in range(_CONTENTION_RETRIES):
                try:
                    if self._try_acquire():
                        break
                except OperationalError as exc:
                    last = attempt == _CONTENTION_RETRIES - 1 or time.monotonic() >= give_up_at
                    if "locked" not in str(exc).lower() or last:
                        raise
                time.sleep(0.02 * (attempt + 1))
            else:
                raise LockHeld(f"the lock '{self.name}' kept changing hands; try again")
            _held_in_process[self._key] = self
        self._start_heartbeat()

    def _try_acquire(self) -> bool:
        """True when this object now holds the lock, False when another contender moved first (try again)."""
        now = utcnow()
        values = dict(holder=self.holder, pid=self.pid, host=self.host, acquired=now, heartbeat=now)
        try:
            with self.ledger.begin() as connection:
                row = connection.execute(select(schema.locks).where(schema.locks.c.name == self.name)).first()
                if row is None:
                    connection.execute(insert(schema.locks).values(name=self.name, **values))
                    return True
                if not self._is_stale(row):
                    same = ", this same process" if (row.pid, row.host) == (self.pid, self.host) else ""
                    raise LockHeld(
                        f"another Newsdesk run holds the lock: '{row.holder}' (pid {row.pid} on {row.host}{same}, "
                        f"since {as_utc(row.acquired):%Y-%m-%d %H:%M:%S} UTC); try again when it ends"
                    )
                # A conditional takeover: only one contender can replace this exact row.
                return bool(
                    connection.execute(
                        update(schema.locks)
                        .where(
                            schema.locks.c.name == self.name,
                            schema.locks.c.pid == row.pid,
                            schema.locks.c.host == row.host,
                        )
                        .values(**values)
                    ).rowcount
                )
        except IntegrityError:
            return False  # another contender inserted the row first; look again

    def heartbeat(self) -> None:
        with self.ledger.begin() as connection:
            connection.execute(
                update(schema.locks)
                .where(schema.locks.c.name == self.name, schema.locks.c.pid == self.pid, schema.locks.c.host == self.host)
                .values(heartbeat=utcnow())
            )

    def _start_heartbeat(self) -> None:
        stop = threading.Event()
        self._beating = stop
        interval = max(self.stale_after.total_seconds() / 6, 1.0)

        def beat() -> None:
            while not stop.wait(interval):
                try:
                    self.heartbeat()
                except Exception:  # a busy database now and then is fine; stale_after allows several misses
                    pass

        threading.Thread(target=beat, name=f"newsdesk-lock-{self.name}", daemon=True).start()

    def release(self) -> None:
        if self._beating is not None:
            self._beating.set()
            self._beating = None
        with _registry_lock:
            if not self.is_held:
                return
            try:
                with self.ledger.begin() as connection:
                    connection.execute(
                        delete(schema.locks).where(
                            schema.locks.c.name == self.name, schema.locks.c.pid == self.pid, schema.locks.c.host == self.host
                        )
                    )
            finally:
                # Even if the delete failed, this object no longer runs anything; the row is then taken over.
                del _held_in_process[self._key]

    @contextmanager
    def held(self) -> Iterator[PipelineLock]:
        self.acquire()
        try:
            yield self
        finally:
            self.release()
