"""A counting semaphore held in the ledger: a cap that holds across every worker process on every machine.

`SharedSlots(ledger, "llm", size)` has `size` rows in `slots`. Taking a slot
is a conditional update of a free row (or one whose lease ran out: its
worker died mid-call), found with `FOR UPDATE SKIP LOCKED` on PostgreSQL.
Held slots are renewed in the background, so a long model call keeps its
slot and a dead worker's slots come free one lease later. The gateway takes
one for every provider request when `cluster.enabled` (llm.concurrency is
then the cap for all workers together, not per process).

Waiting is polling (`poll_s`, with jitter), one poller per process at a
time: a ledger has no cross-machine wake-up that SQLite and PostgreSQL share.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from datetime import datetime, timedelta
from typing import Callable

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from pipeline.core import schema
from pipeline.core.claims import worker_name
from pipeline.core.ledger import Ledger, utcnow

log = logging.getLogger("newsdesk.slots")


class SharedSlots:
    def __init__(self, ledger: Ledger, name: str, size: int, *, owner: str | None = None,
                 lease: timedelta = timedelta(seconds=60), clock: Callable[[], datetime] = utcnow, poll_s: float = 0.05) -> None:
        self.ledger, self.name, self.size = ledger, name, size
        self.owner = owner or worker_name()
        self.lease, self.clock, self.poll_s = lease, clock, poll_s
        self.held: set[int] = set()
        self._held_lock = threading.Lock()
        self._waiting: asyncio.Lock | None = None
        self._waiting_loop: asyncio.AbstractEventLoop | None = None
        self._beating: threading.Event | None = None
        self._ensure_rows()

    def _ensure_rows(self) -> None:
        c = schema.slots.c
        with self.ledger.engine.connect() as connection:
            present = set(connection.execute(select(c.slot).where(c.name == self.name)).scalars())
        for slot in range(self.size):
            if slot in present:
                continue
            try:
                with self.ledger.begin() as connection:
                    connection.execute(insert(schema.slots).values(name=self.name, slot=slot))
            except (IntegrityError, OperationalError):
                pass  # another worker made it at the same moment

    def try_acquire(self) -> int | None:
        """A slot number now held by this owner, or None when all `size` are taken."""
        c = schema.slots.c
        now = self.clock()
        free = and_(c.name == self.name, c.slot < self.size, or_(c.owner.is_(None), c.leased_until < now))
        try:
            with self.ledger.begin() as connection:
                slot = connection.execute(
                    select(c.slot).where(free).order_by(c.slot).limit(1).with_for_update(skip_locked=True)
                ).scalar()
                if slot is None:
                    return None
                won = connection.execute(
                    update(schema.slots).where(free, c.slot == slot).values(owner=self.owner, leased_until=now + self.lease)
                ).rowcount
        except OperationalError as exc:
            if "locked" in str(exc).lower():  # SQLite: another writer; count it as "none free yet"
                return None
            raise
        if not won:
            return None
        with self._held_lock:
            self.held.add(slot)
        self._start_beating()
        return slot

    def release(self, slot: int) -> None:
        c = schema.slots.c
        with self._held_lock:
            self.held.discard(slot)
        for attempt in range(20):
            try:
                with self.ledger.begin() as connection:
                    connection.execute(update(schema.slots).where(c.name == self.name, c.slot == slot, c.owner == self.owner)
                                       .values(owner=None, leased_until=None))
                return
            except OperationalError as exc:
                if "locked" not in str(exc).lower() or attempt == 19:
                    log.warning("slot %s/%d not released (%s); it comes free when its lease runs out", self.name, slot, exc)
                    return
                time.sleep(0.01 * (attempt + 1))

    def renew(self) -> None:
        c = schema.slots.c
        with self._held_lock:
            held = sorted(self.held)
        if held:
            with self.ledger.begin() as connection:
                connection.execute(update(schema.slots).where(c.name == self.name, c.slot.in_(held), c.owner == self.owner)
                                   .values(leased_until=self.clock() + self.lease))

    def _start_beating(self) -> None:
        if self._beating is not None:
            return
        self._beating = stop = threading.Event()
        interval = max(self.lease.total_seconds() / 3, 0.05)

        def beat() -> None:
            while not stop.wait(interval):
                try:
                    self.renew()
                except Exception as exc:  # a busy ledger now and then: the lease allows missed beats
                    log.debug("slot renewal failed: %s", exc)

        threading.Thread(target=beat, name=f"newsdesk-slots-{self.name}", daemon=True).start()

    def close(self) -> None:
        if self._beating is not None:
            self._beating.set()
            self._beating = None
        for slot in sorted(self.held):
            self.release(slot)

    async def acquire(self) -> int:
        """Wait for a slot: one task of this process polls the ledger at a time, the others queue behind it."""
        loop = asyncio.get_running_loop()
        if self._waiting is None or self._waiting_loop is not loop:
            self._waiting, self._waiting_loop = asyncio.Lock(), loop
        async with self._waiting:
            while True:
                slot = await loop.run_in_executor(None, self.try_acquire)
                if slot is not None:
                    return slot
                await asyncio.sleep(self.poll_s * (0.5 + random.random()))

    def hold(self) -> "_Held":
        return _Held(self)


class _Held:
    """`async with slots.hold():` one slot for the block."""

    def __init__(self, slots: SharedSlots) -> None:
        self.slots, self.slot = slots, None

    async def __aenter__(self) -> int:
        self.slot = await self.slots.acquire()
        return self.slot

    async def __aexit__(self, *exc) -> None:
        if self.slot is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.slots.release, self.slot)
