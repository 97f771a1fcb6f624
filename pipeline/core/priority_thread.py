"""One worker thread that takes urgent work before work that only gets ahead.

The check stage prepares drafts (embeddings, rules) on one thread, and also warms
up each story's evidence while its writer call is in flight. A thread pool runs
them first come, first served, so a draft that has just arrived waited behind
warm-ups queued earlier, and its judge call went out late. Here the lowest
priority number runs first; equal priorities keep their order.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable


class PriorityThread:
    def __init__(self, name: str) -> None:
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, priority: float, function: Callable[..., Any], *args: Any) -> Future:
        """Run `function(*args)` on the thread after everything of a lower priority number already queued."""
        if self._closed:
            raise RuntimeError("PriorityThread is shut down")
        future: Future = Future()
        self._queue.put((priority, next(self._order), future, function, args))
        return future

    def shutdown(self) -> None:
        """Finish everything queued, then end the thread."""
        if not self._closed:
            self._closed = True
            self._queue.put((math.inf, next(self._order), None, None, ()))
        self._thread.join()

    def _serve(self) -> None:
        while True:
            _priority, _order, future, function, args = self._queue.get()
            if future is None:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(exc)
