"""`run.py demo`: the whole pipeline, offline, on the bundled sample feeds in a fresh workspace."""

from __future__ import annotations

import shlex
import shutil
import sys
import time
from pathlib import Path

from rich.console import Console
from sqlalchemy import func, select

from pipeline.core import schema
from pipeline.core.config import load_config
from pipeline.services.gdocs import counts_text
from pipeline.cli.console import say
from pipeline.core.clock import system_clock
from pipeline.cli.reports import print_reports
from pipeline.core.ledger import as_utc
from pipeline.flow.runner import STAGE_ORDER, Run

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MARKER = ".newsdesk-demo"


class WorkspaceError(Exception):
    pass


def prepare_workspace(workspace: Path) -> Path:
    """Copy examples/ into a fresh folder; only a folder the demo made itself is ever wiped."""
    workspace = workspace.resolve()
    if workspace.exists():
        if not (workspace / MARKER).exists() and any(workspace.iterdir()):
            raise WorkspaceError(f"{workspace} exists and was not made by the demo; choose another --workspace")
        shutil.rmtree(workspace)
    shutil.copytree(EXAMPLES, workspace)
    (workspace / MARKER).write_text("made by `run.py demo`; safe to delete\n")
    return workspace


def run_demo(workspace: Path, console: Console) -> int:
    started = time.perf_counter()
    try:
        workspace = prepare_workspace(workspace)
    except WorkspaceError as exc:
        say(console, exc, label="demo:", style="red")
        return 2
    config = load_config(workspace / "config.toml")
    say(console, f"in {workspace} (sample data, no network, no model)", label="Newsdesk demo", style="bold")
    run = Run(config, command="demo")
    run.clock = newest_item_clock(run.ledger)  # the sample news is dated: replay it as of its newest item
    stages = [s for s in STAGE_ORDER if s != "sync"]  # nothing to sync: no editor has approved anything yet
    reports = run.run_stages(stages)
    status = run.finish()

    print_reports(console, reports, title="Demo stages", links=False)  # the summary lists the drafts
    say(console, demo_summary(run, {r.stage: r for r in reports}, config))
    say(console, f"time taken: {time.perf_counter() - started:.1f}s")
    say(console, f"next: {next_command(workspace)}")
    return 0 if status == "ok" else 1


def next_command(workspace: Path) -> str:
    """`status` for the demo's workspace, runnable from any folder: this Python, run.py's absolute path, shell-quoted."""
    run_py = Path(__file__).resolve().parents[2] / "run.py"
    return shlex.join([sys.executable, str(run_py), "status", "--config", str(workspace / "config.toml")])


def newest_item_clock(ledger):
    """A clock reading the publication time of the newest stored item (the wall clock while there is none)."""
    def now():
        with ledger.engine.connect() as connection:
            newest = connection.execute(select(func.max(schema.items.c.published))).scalar_one_or_none()
        return as_utc(newest) if newest is not None else system_clock()

    return now


def demo_summary(run, by_stage: dict, config) -> str:
    with run.ledger.engine.connect() as connection:
        sources = connection.execute(select(func.count()).select_from(schema.sources)).scalar_one()
        items = connection.execute(select(func.count()).select_from(schema.items)).scalar_one()
        stories = connection.execute(select(schema.stories.c.item_ids)).scalars().all()
        published = connection.execute(
            select(schema.drafts.c.state, schema.drafts.c.factcheck, schema.publications.c.doc_id)
            .join(schema.publications, schema.publications.c.draft_id == schema.drafts.c.id, isouter=True)
        ).all()
    fetch, classify = by_stage.get("fetch"), by_stage.get("classify")
    # Fetch indexes what it stored, unless classify follows in the same run and does it while its model works.
    indexed = sum(report.notes.get("chunks_indexed", 0) for report in (fetch, classify) if report)
    lines = [
        f"sources: {sources}; items: {items}; duplicates dropped: {fetch.notes.get('duplicates_dropped', 0) if fetch else 0}; "
        f"chunks indexed: {indexed}",
    ]
    if classify:
        lines.append(f"classified: {classify.notes.get('relevant', 0)} relevant, {classify.notes.get('irrelevant', 0)} irrelevant (no model: embedding + keyword signals)")
    lines.append(f"stories: {len(stories)} ({sum(1 for s in stories if len(s) > 1)} reported by several outlets); drafts: {len(published)}")
    totals: dict[str, int] = {}
    for _, report, _ in published:
        for key, value in ((report or {}).get("totals") or {}).items():
            totals[key] = totals.get(key, 0) + value
    if totals:
        lines.append(f"fact-check: {totals.get('claims', 0)} claims: {counts_text(totals)}")
    outbox = config.path(config.publishing.outbox)
    files = sorted(outbox / f"{doc}.md" for _, _, doc in published if doc)
    if files:
        lines.append("drafts on disk (Markdown; HTML beside each):")
        lines.extend(f"  {path}" for path in files)
    return "\n".join(lines)
