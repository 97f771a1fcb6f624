"""Progress for long stages: a rich progress bar on a terminal, plain log lines otherwise.

    with progress(run, "fetch: indexing", total=len(items)) as advance:
        for item in items:
            ...
            advance()        # or advance(n) after a batch of n

On a terminal (stderr is a TTY and logs are not JSON) the operator sees a bar
with a count and the elapsed time. Under cron, systemd or `--log-json`, the
same calls write an INFO line every `every` items (default: about every 10%)
and one at the end, so a log shows progress without a line per item.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO
from pipeline.core.logs import JsonFormatter

log = logging.getLogger("newsdesk.progress")

Advance = Callable[..., None]


def _json_logging() -> bool:
    return any(isinstance(handler.formatter, JsonFormatter) for handler in logging.getLogger().handlers)


def use_bar(stream: TextIO) -> bool:
    """A bar only where a person watches: a terminal, and logs meant for people."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not _json_logging()


@contextmanager
def progress(
    run,
    label: str,
    total: int | None,
    *,
    every: int | None = None,
    stream: TextIO | None = None,
) -> Iterator[Advance]:
    """Yield `advance(n=1)`; `total` may be None when the amount of work is not known up front."""
    stream = stream or sys.stderr
    run_id = getattr(run, "id", None)
    if use_bar(stream):
        with _bar(label, total, stream) as advance:
            yield advance
        return
    with _lines(label, total, every, run_id) as advance:
        yield advance


@contextmanager
def _bar(label: str, total: int | None, stream: TextIO) -> Iterator[Advance]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(file=stream)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    ) as bar:
        task = bar.add_task(label, total=total)

        def advance(n: int = 1) -> None:
            bar.advance(task, n)

        yield advance


@contextmanager
def _lines(label: str, total: int | None, every: int | None, run_id: str | None) -> Iterator[Advance]:
    step = every or (max(1, -(-total // 10)) if total else 100)
    state = {"done": 0, "next": step}
    guard = threading.Lock()
    started = time.perf_counter()
    of_total = f"/{total}" if total is not None else ""

    def advance(n: int = 1) -> None:
        with guard:
            state["done"] += n
            done = state["done"]
            if done < state["next"] or (total is not None and done >= total):
                return  # the last line is written once, at the end
            while state["next"] <= done:
                state["next"] += step
        log.info("%s: %d%s", label, done, of_total, extra={"run_id": run_id, "event": "progress", "count": done})

    yield advance
    done = state["done"]
    if done or total:
        elapsed = time.perf_counter() - started
        log.info(
            "%s: %d%s done in %.1fs", label, done, of_total, elapsed,
            extra={"run_id": run_id, "event": "progress_done", "count": done, "duration_s": round(elapsed, 3)},
        )
