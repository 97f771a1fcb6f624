"""Stage adapters: each takes a Run, does one stage's work through its agent, returns a StageReport.

The agents hold the logic; these functions only connect them to the run's
config, ledger, store and gateway, so the runner and the scheduler can call
every stage the same way.
"""

from __future__ import annotations

import logging

from sqlalchemy import func, select, update

from agents.classifier import classify_pending
from agents.fact_checker import check_drafts, check_stream
from agents.fetcher import run_fetch
from agents.publisher import publish_ready, sync_approvals
from agents.writer import revise_draft
from pipeline.core import schema
from pipeline.core.progress import progress
from pipeline.flow.runner import kill_points_for_tests
from pipeline.flow.drafting import assign, draft_stories, embed_ahead_for_clustering, write_stories
from pipeline.text.chunking import chunk_text
from pipeline.services.store import item_body
from pipeline.core.ledger import row_to_item
from pipeline.core.models import Item, ItemState, StageReport

log = logging.getLogger("newsdesk.stages")


def fetch(run) -> StageReport:
    config = run.config
    if run.unit is not None:  # a worker's unit: one feed, and only its items are indexed
        config = config.model_copy(update={"feeds": [f for f in config.feeds if run.in_scope("fetch", f.name)]})
    report = run_fetch(config, run.ledger)
    if run.unit is None and "classify" in run.planned:
        # Classify indexes these items itself, while its model works (classify_pending): the first items go to
        # the model without waiting for all of them to be embedded.
        report.notes["indexing"] = "during classify"
        return report
    indexed, index_errors = index_pending(run, sources=[f.name for f in config.feeds] if run.unit is not None else None)
    report.notes["chunks_indexed"] = indexed
    report.errors.extend(index_errors)
    return report


def index_pending(run, batch: int = 64, sources: list[str] | None = None,
                  item_ids: list[str] | None = None, stage: str = "fetch") -> tuple[int, list[str]]:
    """Chunk and embed every stored item that is not in Chroma yet (of these `sources`, or these `item_ids`).

    `chunk_count` is set in the same step as the upsert, so an item killed
    mid-way is simply indexed again (upserts by deterministic chunk ids never
    duplicate).
    """
    unindexed = (schema.items.c.chunk_count.is_(None), schema.items.c.state != ItemState.failed.value)
    if sources is not None:
        unindexed = (*unindexed, schema.items.c.source.in_(sources))
    if item_ids is not None:
        unindexed = (*unindexed, schema.items.c.id.in_(item_ids))
    with run.ledger.engine.connect() as connection:
        waiting = connection.execute(select(func.count()).select_from(schema.items).where(*unindexed)).scalar_one()
    total, errors = 0, []
    with progress(run, f"{stage}: indexing items", total=waiting) as advance, kill_points_for_tests(run, "index"):
        while not run.stop_requested:
            with run.ledger.engine.connect() as connection:
                rows = connection.execute(
                    select(schema.items).where(*unindexed).order_by(schema.items.c.published).limit(batch)
                ).all()
            if not rows:
                break
            items = [row_to_item(row) for row in rows]
            try:
                written = run.store.index_items(items)
            except Exception as exc:  # the store is down: leave the items unindexed for the next run
                errors.append(f"index: {type(exc).__name__}: {exc}")
                break
            with run.ledger.begin() as connection:
                for item in items:
                    chunks = len(chunk_text(item_body(item), run.config.store.chunk_tokens))
                    connection.execute(update(schema.items).where(schema.items.c.id == item.id).values(chunk_count=chunks))
            total += written
            advance(len(items))
            if len(rows) < batch:
                break
    return total, errors


def classify(run) -> StageReport:
    def index(item_ids: list[str] | None) -> tuple[int, list[str]]:
        return index_pending(run, item_ids=item_ids, stage="classify")

    # A worker's classify unit takes indexed items only: its fetch units indexed them, and other workers classify.
    return classify_pending(run, while_waiting=lambda items: embed_ahead_for_clustering(run, items),
                            index=index if run.unit is None else None)


def select_stories(run) -> StageReport:
    """Group new items into stories (a worker's unit before the draft units: clustering sees every item of the run)."""
    report = StageReport(stage="select")
    assign(run, report)
    return report


def draft(run) -> StageReport:
    return draft_stories(run)


def check(run) -> StageReport:
    return check_drafts(run, reviser=revise_draft)


def publish(run) -> StageReport:
    return publish_ready(run.config, run.ledger)


def sync(run) -> StageReport:
    return sync_approvals(run.config, run.ledger)


# The draft -> check stream (Run.run_streamed): the two stages run at once, each draft checked as soon as it is saved.


async def draft_streaming(run, report: StageReport, handoff) -> None:
    await write_stories(run, report, handoff)


async def check_streaming(run, report: StageReport, incoming) -> None:
    await check_stream(run, report, reviser=revise_draft, incoming=incoming)
