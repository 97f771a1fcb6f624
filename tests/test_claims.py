"""Claims on units of work (pipeline/core/claims.py), on a SQLite file and on a real PostgreSQL server.

Lease expiry is tested with injected clocks, never by sleeping past a lease.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from pipeline.core import schema
from pipeline.core.claims import CLAIMED, DONE, FAILED, PENDING, Claims
from pipeline.core.ledger import Ledger
from tests.servers import running_postgres

T0 = datetime(2026, 12, 5, 8, 0, tzinfo=timezone.utc)
LEASE = timedelta(seconds=30)


class FakeClock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

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
        with ledger.begin() as connection:  # one server for the module: start each test from empty tables
            connection.execute(schema.claims.delete())
    yield ledger
    ledger.close()


def worker(ledger, name: str, clock=None, **kwargs) -> Claims:
    return Claims(ledger, owner=name, lease=LEASE, clock=clock or FakeClock(), **kwargs)


def states(ledger) -> dict[str, str]:
    with ledger.engine.connect() as connection:
        return dict(connection.execute(select(schema.claims.c.unit, schema.claims.c.state)).all())


def test_units_are_claimed_oldest_first_once_each(shared_ledger):
    a, b = worker(shared_ledger, "a"), worker(shared_ledger, "b")
    assert a.enqueue("run1", "draft", ["s1", ("s2", {"title": "two"}), "s3"]) == 3
    assert a.enqueue("run1", "draft", ["s1", "s4"]) == 1, "a unit already enqueued is left as it is"
    first, second = a.claim(), b.claim()
    assert (first.unit, second.unit) == ("s1", "s2")
    assert second.payload == {"title": "two"} and second.attempts == 1 and second.owner == "b"
    assert a.claim(stages=["check"]) is None, "no unit of that stage"
    assert a.claim(run_id="other") is None
    third, fourth = a.claim(), b.claim()
    assert {third.unit, fourth.unit} == {"s3", "s4"}
    assert a.claim() is None and b.claim() is None
    assert a.open_units("run1", "draft") == 4
    assert a.complete(first, report={"items_out": 1})
    assert not b.complete(first), "only the owner completes a claim"
    assert a.open_units("run1", "draft") == 3
    assert states(shared_ledger)["s1"] == DONE


def test_a_dead_workers_claim_is_taken_over_after_its_lease(shared_ledger):
    clock_a, clock_b = FakeClock(), FakeClock()
    a, b = worker(shared_ledger, "a", clock_a), worker(shared_ledger, "b", clock_b)
    a.enqueue("run1", "check", ["d1"])
    held = a.claim()
    assert b.claim() is None, "a live lease is not claimable"
    clock_b.now = T0 + LEASE - timedelta(seconds=1)
    assert b.claim() is None, "not before the lease runs out"
    clock_b.now = T0 + LEASE + timedelta(seconds=1)
    taken = b.claim()
    assert taken is not None and taken.unit == "d1" and taken.attempts == 2 and taken.owner == "b"
    # The first worker was only stalled, not dead: it can neither renew nor complete what is now b's.
    assert not a.renew(held)
    assert not a.complete(held)
    assert b.complete(taken)
    assert states(shared_ledger) == {"d1": DONE}


def test_a_renewed_lease_is_not_taken_over(shared_ledger):
    clock_a, clock_b = FakeClock(), FakeClock()
    a, b = worker(shared_ledger, "a", clock_a), worker(shared_ledger, "b", clock_b)
    a.enqueue("run1", "fetch", ["feed"])
    held = a.claim()
    clock_a.now = T0 + timedelta(seconds=20)
    assert a.renew(held)
    clock_b.now = T0 + LEASE + timedelta(seconds=1)  # past the first lease, within the renewed one
    assert b.claim() is None


def test_kept_renews_in_the_background_and_reports_a_lost_claim(shared_ledger):
    clock_a, clock_b = FakeClock(), FakeClock()
    a, b = worker(shared_ledger, "a", clock_a), worker(shared_ledger, "b", clock_b)
    a.enqueue("run1", "draft", ["s1"])
    held = a.claim()
    with a.kept(held, interval=0.01) as lost:
        clock_a.now = T0 + timedelta(seconds=25)
        deadline = threading.Event()
        for _ in range(3000):  # the beat renews to 25 s + lease; wait for it, polled, never a guess
            with shared_ledger.engine.connect() as connection:
                until = connection.execute(select(schema.claims.c.leased_until)).scalar_one()
            if until.replace(tzinfo=timezone.utc) >= T0 + timedelta(seconds=25) + LEASE:
                break
            deadline.wait(0.01)
        else:
            pytest.fail("the lease was never renewed")
        clock_b.now = T0 + LEASE + timedelta(seconds=1)
        assert b.claim() is None, "renewed in the background"
        clock_b.now = T0 + timedelta(seconds=25) + LEASE + timedelta(seconds=1)
        clock_a.now = T0  # a's beats now stop extending: b takes over and a learns it lost the claim
        # On PostgreSQL a claim skips a row locked at that instant (SKIP LOCKED), and a's beat locks it every
        # 10 ms: b claims on its next poll, as a worker would.
        taken = None
        for _ in range(500):
            taken = b.claim()
            if taken is not None:
                break
            deadline.wait(0.01)
        assert taken is not None
        assert lost.wait(10)


def test_released_units_go_back_without_counting_an_attempt(shared_ledger):
    a, b = worker(shared_ledger, "a"), worker(shared_ledger, "b")
    a.enqueue("run1", "draft", ["s1"])
    held = a.claim()
    assert a.release(held)
    again = b.claim()
    assert again.unit == "s1" and again.attempts == 1
    assert states(shared_ledger) == {"s1": CLAIMED}


def test_a_unit_whose_workers_keep_dying_is_failed_not_retried_forever(shared_ledger):
    clock = FakeClock()
    a = worker(shared_ledger, "a", clock, max_attempts=2)
    a.enqueue("run1", "draft", ["poison", "fine"])
    assert a.claim().unit == "poison"
    clock.now += LEASE * 2
    assert a.claim().unit == "poison"  # attempt 2
    clock.now += LEASE * 2
    assert a.claim().unit == "fine", "the poison unit is failed, the next unit is handed out"
    with shared_ledger.engine.connect() as connection:
        row = connection.execute(select(schema.claims).where(schema.claims.c.unit == "poison")).one()
    assert row.state == FAILED and "2 worker(s) stopped" in row.error
    assert a.open_units("run1", "draft") == 1


def test_contending_workers_never_get_the_same_unit(shared_ledger):
    """Eight workers on their own connections claim 120 units at once: each unit exactly once, none left."""
    setup = worker(shared_ledger, "setup")
    setup.enqueue("run1", "classify", [f"batch-{n:03d}" for n in range(120)])
    got: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        claims = Claims(shared_ledger, owner=name, lease=LEASE)
        mine = got.setdefault(name, [])
        try:
            while (claim := claims.claim()) is not None:
                mine.append(claim.unit)
                assert claims.complete(claim)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    units = [unit for mine in got.values() for unit in mine]
    assert sorted(units) == [f"batch-{n:03d}" for n in range(120)]
    assert set(states(shared_ledger).values()) == {DONE}
    assert PENDING not in states(shared_ledger).values()


def test_two_workers_enqueueing_the_same_unit_at_once_add_it_once_and_neither_fails(shared_ledger):
    """The draft phase's last worker queues a draft's check (check_early) while another, seeing the phase done,
    queues every drafted draft's check: both insert the same unit. The second must find it there, not crash
    (a worker process died of the unique violation, and its share of the run waited for the others)."""
    a, b = worker(shared_ledger, "a"), worker(shared_ledger, "b")
    inserted = threading.Event()
    release = threading.Event()
    results: dict[str, object] = {}

    def first() -> None:  # queues d1 and holds its transaction open until told to commit
        with shared_ledger.begin() as connection:
            results["a"] = a.enqueue("run1", "check", ["d1"], connection=connection)
            inserted.set()
            release.wait(30)

    def second() -> None:
        inserted.wait(30)
        try:
            results["b"] = b.enqueue("run1", "check", ["d0", "d1", "d2"])
        except BaseException as exc:  # noqa: BLE001 - the assertion below names it
            results["b"] = exc

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    threading.Timer(0.5, release.set).start()  # the other insert is under way (or waiting for the lock) by then
    for thread in threads:
        thread.join(60)
    assert results["a"] == 1
    assert results["b"] == 2, f"the second enqueue added d0 and d2 and left d1 alone: {results['b']!r}"
    assert sorted(states(shared_ledger)) == ["d0", "d1", "d2"]
