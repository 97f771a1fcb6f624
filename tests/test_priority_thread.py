"""The check stage's preparer thread: a draft that is ready is prepared before warm-ups queued earlier."""

from __future__ import annotations

import threading

import pytest

from pipeline.core.priority_thread import PriorityThread


def test_lower_priority_numbers_run_first_and_equal_ones_in_order():
    worker = PriorityThread("test-priority")
    gate, ran = threading.Event(), []
    try:
        first = worker.submit(0, gate.wait)  # holds the thread while the rest queue up
        later = [worker.submit(1, ran.append, f"warm-{i}") for i in range(3)]
        urgent = [worker.submit(0, ran.append, f"draft-{i}") for i in range(2)]
        gate.set()
        for future in [first, *later, *urgent]:
            future.result(timeout=5)
    finally:
        worker.shutdown()
    assert ran == ["draft-0", "draft-1", "warm-0", "warm-1", "warm-2"]


def test_a_failure_reaches_the_caller_and_the_thread_goes_on():
    worker = PriorityThread("test-priority")
    try:
        failed = worker.submit(0, int, "not a number")
        with pytest.raises(ValueError):
            failed.result(timeout=5)
        assert worker.submit(0, len, "abc").result(timeout=5) == 3
    finally:
        worker.shutdown()


def test_shutdown_finishes_what_is_queued_and_refuses_more():
    worker = PriorityThread("test-priority")
    gate, ran = threading.Event(), []
    worker.submit(0, gate.wait)
    queued = worker.submit(5, ran.append, "queued")
    gate.set()
    worker.shutdown()
    assert queued.done() and ran == ["queued"]
    with pytest.raises(RuntimeError):
        worker.submit(0, ran.append, "late")
