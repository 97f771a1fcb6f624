"""Stage adapters: each takes a Run, does one stage's work through its agent, returns a StageReport.

The agents hold the logic; these functions only connect them to the run's
config, ledger, store and gateway, so the runner and the scheduler can call
every stage the same way.
"""

from __future__ import annotations

import logging

from sqlalchemy import select, update

from pipeline import schema
from pipeline.ledger import as_utc
from pipeline.models import Item, ItemState, StageReport

log = logging.getLogger("newsdesk.stages")


def row_to_item(row) -> Item:
    data = dict(row._mapping)
    for key in ("published", "fetched"):
        data[key] = as_utc(data[key])
    fields = Item.model_fields
    return Item.model_validate({k: v for k, v in data.items() if k in fields and v is not None})


def fetch(run) -> StageReport:
    from agents.fetcher import run_fetch

    report = run_fetch(run.config, run.ledger)
    indexed, index_errors = index_pending(run)
    report.notes["chunks_indexed"] = indexed
    report.errors.extend(index_errors)
    return report


def index_pending(run, batch: int = 64) -> tuple[int, list[str]]:
    """Chunk and embed every stored item that is not in Chroma yet.

    `chunk_count` is set in the same step as the upsert, so an item killed
    mid-way is simply indexed again (upserts by deterministic chunk ids never
    duplicate).
    """
    total, errors = 0, []
    while not run.stop_requested:
        with run.ledger.engine.connect() as connection:
            rows = connection.execute(
                select(schema.items)
                .where(schema.items.c.chunk_count.is_(None), schema.items.c.state != ItemState.failed.value)
                .order_by(schema.items.c.published)
                .limit(batch)
            ).all()
        if not rows:
            break
        items = [row_to_item(row) for row in rows]
        try:
            counts = run.store.index_items(items)
        except Exception as exc:  # the store is down: leave the items unindexed for the next run
            errors.append(f"index: {type(exc).__name__}: {exc}")
            break
        per_item = counts if isinstance(counts, dict) else None
        with run.ledger.begin() as connection:
            for item in items:
                connection.execute(
                    update(schema.items)
                    .where(schema.items.c.id == item.id)
                    .values(chunk_count=(per_item or {}).get(item.id, -1) if per_item is not None else -1)
                )
        total += sum(per_item.values()) if per_item else int(counts)
        if len(rows) < batch:
            break
    return total, errors
