"""The editorial clock: what "now" means for story windows, ranking and research recency.

Bookkeeping timestamps (when a row was written, when a run started) are wall
time. The editorial "now" is a value a run carries, so a replay of dated data
(the demo's sample feeds, a test, an operator re-running yesterday's news with
`--as-of`) means the same thing on any day.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(timezone.utc)


def fixed_clock(moment: datetime) -> Clock:
    """A clock that always reads `moment` (naive times are taken as UTC)."""
    moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return lambda: moment


def parse_as_of(text: str) -> datetime:
    """An ISO 8601 date or time, as given to `--as-of`; naive values are UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--as-of {text!r} is not an ISO 8601 date or time (for example 2026-11-22 or 2026-11-22T18:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
