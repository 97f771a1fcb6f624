"""`run.py status`: what the pipeline did, what is waiting, and what it cost, read from the ledger."""

from __future__ import annotations

from datetime import datetime, timedelta

from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from pipeline import schema
from pipeline.config import Config
from pipeline.ledger import Ledger, as_utc, utcnow


def _when(value: datetime | None) -> str:
    value = as_utc(value)
    if value is None:
        return "-"
    age = utcnow() - value
    if age < timedelta(minutes=1):
        return "just now"
    if age < timedelta(hours=1):
        return f"{int(age.total_seconds() // 60)} min ago"
    if age < timedelta(days=2):
        return f"{age.total_seconds() / 3600:.1f} h ago"
    return value.strftime("%Y-%m-%d %H:%M")


def source_table(ledger: Ledger) -> Table:
    table = Table(title="Sources", title_justify="left")
    for column in ("source", "last success", "last error", "error", "items"):
        table.add_column(column, overflow="fold")
    with ledger.engine.connect() as connection:
        counts = dict(connection.execute(select(schema.items.c.source, func.count()).group_by(schema.items.c.source)).all())
        for row in connection.execute(select(schema.sources).order_by(schema.sources.c.name)):
            healthy = row.last_error_at is None or (row.last_success and as_utc(row.last_success) >= as_utc(row.last_error_at))
            table.add_row(
                f"[green]{row.name}[/]" if healthy else f"[red]{row.name}[/]",
                _when(row.last_success),
                _when(row.last_error_at),
                (row.last_error or "")[:120] if not healthy else "",
                str(counts.get(row.name, 0)),
            )
    return table


def state_table(ledger: Ledger, title: str, table_obj) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("state")
    table.add_column("count", justify="right")
    with ledger.engine.connect() as connection:
        for state, count in connection.execute(select(table_obj.c.state, func.count()).group_by(table_obj.c.state).order_by(table_obj.c.state)):
            table.add_row(state, str(count))
    return table


def runs_table(ledger: Ledger, limit: int = 10) -> Table:
    table = Table(title=f"Last {limit} runs", title_justify="left")
    for column in ("started", "command", "status", "stages", "duration"):
        table.add_column(column, overflow="fold")
    with ledger.engine.connect() as connection:
        rows = connection.execute(select(schema.runs).order_by(schema.runs.c.started.desc()).limit(limit)).all()
    for row in rows:
        stages = ", ".join(
            f"{s['stage']} {s['items_in']}→{s['items_out']}" + (f" [red]{len(s['errors'])} err[/]" if s["errors"] else "")
            for s in row.stages
        )
        duration = f"{(as_utc(row.ended) - as_utc(row.started)).total_seconds():.1f}s" if row.ended else "-"
        colour = {"ok": "green", "failed": "red", "running": "yellow"}.get(row.status, "white")
        table.add_row(as_utc(row.started).strftime("%Y-%m-%d %H:%M:%S"), row.command, f"[{colour}]{row.status}[/]", stages or "-", duration)
    return table


def show_status(config: Config, console: Console | None = None, runs: int = 10) -> None:
    console = console or Console()
    ledger = Ledger.from_config(config)
    console.print(source_table(ledger))
    console.print(state_table(ledger, "Items by state", schema.items))
    console.print(state_table(ledger, "Drafts by state", schema.drafts))
    console.print(runs_table(ledger, runs))
