"""Caps shared by every worker (issue 18): the ledger-held semaphore (pipeline/core/slots.py) and the per-run budget,
on a SQLite file and on a real PostgreSQL server. Lease expiry is driven by injected clocks."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import BaseModel

from pipeline.core import schema
from pipeline.core.config import parse_config
from pipeline.core.ledger import Ledger
from pipeline.services.llm import BudgetExceeded, Gateway, ModelReply
from pipeline.core.prompts import Prompt
from pipeline.core.slots import SharedSlots
from tests.servers import running_postgres

T0 = datetime(2026, 12, 5, 8, 0, tzinfo=timezone.utc)
LEASE = timedelta(seconds=30)


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def postgres_url():
    with running_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def shared_ledger(request, tmp_path):
    if request.param == "sqlite":
        ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    else:
        ledger = Ledger(request.getfixturevalue("postgres_url"))
        with ledger.begin() as connection:  # one server for the module: each test starts from empty tables
            for table in (schema.slots, schema.llm_calls, schema.llm_cache, schema.runs):
                connection.execute(table.delete())
    yield ledger
    ledger.close()


def test_slots_are_a_counting_semaphore_across_owners(shared_ledger):
    clock = FakeClock()
    a = SharedSlots(shared_ledger, "llm", 2, owner="a", lease=LEASE, clock=clock)
    b = SharedSlots(shared_ledger, "llm", 2, owner="b", lease=LEASE, clock=clock)
    first, second = a.try_acquire(), b.try_acquire()
    assert {first, second} == {0, 1}
    assert a.try_acquire() is None and b.try_acquire() is None, "both slots are held"
    b.release(second)
    assert a.try_acquire() == second
    a.close()
    b.close()


def test_a_dead_owners_slot_comes_free_after_its_lease(shared_ledger):
    clock_dead, clock_live = FakeClock(), FakeClock()
    dead = SharedSlots(shared_ledger, "llm", 1, owner="dead", lease=LEASE, clock=clock_dead)
    live = SharedSlots(shared_ledger, "llm", 1, owner="live", lease=LEASE, clock=clock_live)
    assert dead.try_acquire() == 0
    dead._beating.set()  # the process "dies": no more renewals
    clock_live.now = T0 + LEASE - timedelta(seconds=1)
    assert live.try_acquire() is None
    clock_live.now = T0 + LEASE + timedelta(seconds=1)
    assert live.try_acquire() == 0
    live.close()


def test_tasks_of_two_owners_never_hold_more_than_the_cap(shared_ledger):
    """Two 'processes' (owners), 12 tasks each, cap 3: never more than 3 inside at once, all 24 get in."""
    inside, peak, entered = [0], [0], [0]
    guard = threading.Lock()

    async def owner(name: str) -> None:
        slots = SharedSlots(shared_ledger, "llm", 3, owner=name, lease=LEASE, poll_s=0.01)

        async def task() -> None:
            async with slots.hold():
                with guard:
                    inside[0] += 1
                    entered[0] += 1
                    peak[0] = max(peak[0], inside[0])
                await asyncio.sleep(0.02)
                with guard:
                    inside[0] -= 1

        await asyncio.gather(*(task() for _ in range(12)))
        slots.close()

    threads = [threading.Thread(target=lambda n=n: asyncio.run(owner(n))) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert entered[0] == 24 and peak[0] <= 3
    assert peak[0] >= 2, "the slots were actually shared out, not taken one at a time"


class Answer(BaseModel):
    text: str


class PricedBackend:
    """Every reply costs the same: 1000 prompt + 1000 completion tokens of gpt-4o-mini ($0.00075)."""

    def __init__(self) -> None:
        self.requests = 0

    async def complete(self, request) -> ModelReply:
        self.requests += 1
        return ModelReply(content='{"text": "ok"}', prompt_tokens=1000, completion_tokens=1000)


def test_the_run_budget_holds_for_all_workers_of_a_run_together(shared_ledger, tmp_path):
    """Two gateways (two workers) on one queued run: the second sees what the first spent."""
    config = parse_config({"llm": {"run_budget_usd": 0.003, "api_key_env": "NOPE"}, "cluster": {"enabled": True}}, root=tmp_path)
    backend_a, backend_b = PricedBackend(), PricedBackend()
    a = Gateway(config, shared_ledger, run_id="run1", backend=backend_a)
    b = Gateway(config, shared_ledger, run_id="run1", backend=backend_b)  # made before a spends anything

    def ask(gateway, n: int) -> None:
        gateway.call_sync("writer", Prompt(name="t", version="1", messages=[{"role": "user", "content": f"q{n}"}]), Answer)

    for n in range(3):
        ask(a, n)  # $0.00225 of $0.003
    ask(b, 10)  # $0.0030: the budget is now spent, by the two together
    with pytest.raises(BudgetExceeded):
        ask(b, 11)
    with pytest.raises(BudgetExceeded):
        ask(a, 12)
    assert backend_a.requests + backend_b.requests == 4
    other_run = Gateway(config, shared_ledger, run_id="run2", backend=PricedBackend())
    ask(other_run, 13)  # the budget is per run
    for gateway in (a, b, other_run):
        gateway.close()
