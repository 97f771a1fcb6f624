"""`run.py demo`: the whole pipeline, offline, on the bundled sample feeds in a fresh workspace."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rich.console import Console
from sqlalchemy import func, select

from pipeline import schema
from pipeline.config import load_config
from pipeline.runner import STAGE_ORDER, STAGES, Run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
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
        console.print(f"[red]demo:[/] {exc}")
        return 2
    config = load_config(workspace / "config.toml")
    console.print(f"[bold]Newsdesk demo[/] in {workspace} (sample data, no network, no model)")
    run = Run(config, command="demo")
    stages = [s for s in STAGE_ORDER if s in STAGES and s != "sync"]
    reports = run.run_stages(stages)
    status = run.finish()

    from pipeline.cli import print_reports

    print_reports(reports, title="Demo stages")
    by_stage = {r.stage: r for r in reports}
    with run.ledger.engine.connect() as connection:
        sources = connection.execute(select(func.count()).select_from(schema.sources)).scalar_one()
        items = connection.execute(select(func.count()).select_from(schema.items)).scalar_one()
    fetch = by_stage.get("fetch")
    summary = [
        f"sources: {sources}",
        f"items: {items}",
        f"duplicates dropped: {fetch.notes.get('duplicates_dropped', 0) if fetch else 0}",
        f"chunks indexed: {fetch.notes.get('chunks_indexed', 0) if fetch else 0}",
    ]
    for stage in ("classify", "draft", "check", "publish"):
        report = by_stage.get(stage)
        if report is not None:
            summary.extend(f"{stage} {key}: {value}" for key, value in report.notes.items() if not str(key).startswith("_"))
    summary.append(f"time taken: {time.perf_counter() - started:.1f}s")
    console.print("\n".join(summary), highlight=False)
    return 0 if status == "ok" else 1
