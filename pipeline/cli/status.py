"""`run.py status`: what the pipeline did, what is waiting, and what it cost, read from the ledger."""

from __future__ import annotations

from datetime import datetime, timedelta

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import Integer, cast, func, select

from pipeline.core import schema
from pipeline.core.config import Config
from pipeline.core.corrections import recent_corrections
from pipeline.core.ledger import Ledger, as_utc, utcnow
from pipeline.cli.console import make_console, say
from pipeline.services.llm import resolve_endpoint
from pipeline.finetune.workflow import active_writer_model


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
                f"[green]{escape(row.name)}[/]" if healthy else f"[red]{escape(row.name)}[/]",
                _when(row.last_success),
                _when(row.last_error_at),
                escape((row.last_error or "")[:120]) if not healthy else "",
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
            f"{escape(s['stage'])} {s['items_in']}→{s['items_out']}" + (f" [red]{len(s['errors'])} err[/]" if s["errors"] else "")
            for s in row.stages
        )
        duration = f"{(as_utc(row.ended) - as_utc(row.started)).total_seconds():.1f}s" if row.ended else "-"
        colour = {"ok": "green", "failed": "red", "running": "yellow"}.get(row.status, "white")
        table.add_row(as_utc(row.started).strftime("%Y-%m-%d %H:%M:%S"), escape(row.command), f"[{colour}]{escape(row.status)}[/]", stages or "-", duration)
    return table


def classification_table(ledger: Ledger) -> Table:
    table = Table(title="Classification", title_justify="left")
    for column in ("classified", "relevant", "irrelevant", "by model", "offline", "fell back offline", "prefiltered", "LLM calls", "cost $"):
        table.add_column(column, justify="right")
    with ledger.engine.connect() as connection:
        rows = connection.execute(select(schema.items.c.classification).where(schema.items.c.classification.is_not(None))).scalars().all()
        calls, cost = connection.execute(
            select(func.count(), func.coalesce(func.sum(schema.llm_calls.c.cost_usd), 0.0)).where(schema.llm_calls.c.role == "classifier")
        ).one()
    methods = [r.get("method") for r in rows]
    relevant = sum(1 for r in rows if r.get("relevant"))
    table.add_row(
        str(len(rows)), str(relevant), str(len(rows) - relevant), str(methods.count("llm")),
        str(methods.count("offline")), str(methods.count("offline-fallback")), str(methods.count("prefilter")), str(calls), f"{cost:.4f}",
    )
    return table


def stories_table(ledger: Ledger, limit: int = 10) -> Table:
    table = Table(title="Stories waiting to be drafted", title_justify="left")
    for column in ("key", "score", "sources", "topics", "title"):
        table.add_column(column, overflow="fold")
    with ledger.engine.connect() as connection:
        rows = connection.execute(
            select(schema.stories).where(schema.stories.c.state == "new").order_by(schema.stories.c.score.desc()).limit(limit)
        ).all()
    for row in rows:
        table.add_row(row.key, f"{row.score:.2f}", str(len(row.sources)), escape(", ".join(row.topics)), escape(row.title[:80]))
    return table


def late_sources_table(ledger: Ledger, limit: int = 10) -> Table:
    """Drafted stories that new sources joined afterwards: the editor decides whether to update the draft."""
    table = Table(title="New sources since the draft", title_justify="left")
    for column in ("story", "title", "new sources"):
        table.add_column(column, overflow="fold")
    with ledger.engine.connect() as connection:
        rows = connection.execute(
            select(schema.stories.c.key, schema.stories.c.title, schema.stories.c.late_item_ids)
            .where(schema.stories.c.state != "new")
            .order_by(schema.stories.c.updated.desc())
        ).all()
        late = [(key, title, ids) for key, title, ids in rows if ids][:limit]
        titles = dict(
            connection.execute(
                select(schema.items.c.id, schema.items.c.source).where(schema.items.c.id.in_([i for _, _, ids in late for i in ids]))
            ).all()
        ) if late else {}
    for key, title, ids in late:
        table.add_row(key, escape(title[:70]), escape(", ".join(titles.get(i, i) for i in ids)))
    return table


def publications_table(ledger: Ledger, limit: int = 10) -> Table:
    table = Table(title="Published drafts", title_justify="left")
    for column in ("when", "state", "headline", "link"):
        table.add_column(column, overflow="fold")
    with ledger.engine.connect() as connection:
        rows = connection.execute(
            select(schema.publications, schema.drafts.c.article, schema.drafts.c.state.label("draft_state"))
            .join(schema.drafts, schema.drafts.c.id == schema.publications.c.draft_id)
            .order_by(schema.publications.c.updated.desc())
            .limit(limit)
        ).all()
    for row in rows:
        table.add_row(_when(row.updated), row.draft_state, escape((row.article or {}).get("headline", "")[:70]), escape(row.url or row.doc_id or "-"))
    return table


def corrections_table(ledger: Ledger, limit: int = 10) -> Table:
    """What editors last wrote in published documents (replies to fact-check comments and their own comments)."""
    table = Table(title="Editors' corrections", title_justify="left")
    for column in ("when", "draft", "by", "on", "correction"):
        table.add_column(column, overflow="fold")
    for row in recent_corrections(ledger, limit):
        on = f"“{row.quote[:60]}”" if row.quote else "-"
        kind = "reply" if row.kind == "reply" else "comment"
        table.add_row(_when(row.created), row.draft_id[:8], escape(row.author[:40]), escape(on),
                      escape(f"{row.text[:160]} ({kind}{', resolved' if row.resolved else ''})"))
    return table


def spend_table(ledger: Ledger, config: Config) -> Table:
    table = Table(title="LLM spend", title_justify="left")
    for column in ("period", "calls", "cache hits", "tokens", "cost $"):
        table.add_column(column, justify="right" if column != "period" else "left")
    now = utcnow()
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    c = schema.llm_calls.c
    with ledger.engine.connect() as connection:
        for label, since in (("today", day), ("this month", month)):
            calls, hits, tokens, cost = connection.execute(
                select(
                    func.count(), func.coalesce(func.sum(cast(c.cache_hit, Integer)), 0),
                    func.coalesce(func.sum(c.prompt_tokens + c.completion_tokens), 0), func.coalesce(func.sum(c.cost_usd), 0.0),
                ).where(c.created >= since)
            ).one()
            table.add_row(label, str(calls), str(hits), str(tokens), f"{cost:.4f}")
    table.caption = f"per-run budget: ${config.llm.run_budget_usd:.2f}"
    return table


def edit_rate_table(ledger: Ledger) -> Table:
    table = Table(title="Editor edit rate (share of draft words changed)", title_justify="left")
    for column in ("week", "writer model", "approved", "mean edit rate"):
        table.add_column(column, justify="right" if column in ("approved", "mean edit rate") else "left")
    with ledger.engine.connect() as connection:
        rows = connection.execute(select(schema.approvals.c.approved_at, schema.approvals.c.writer_model, schema.approvals.c.edit_rate)).all()
    groups: dict[tuple[str, str], list[float]] = {}
    for approved_at, model, rate in rows:
        week = as_utc(approved_at).strftime("%G-W%V")
        groups.setdefault((week, model), []).append(rate)
    for (week, model), rates in sorted(groups.items(), reverse=True)[:12]:
        table.add_row(week, escape(model), str(len(rates)), f"{sum(rates) / len(rates):.1%}")
    return table


def schedule_table(config: Config) -> Table:
    from pipeline.flow.scheduler import next_run_times

    table = Table(title=f"Schedule ({config.schedule.timezone})", title_justify="left")
    for column in ("job", "cron", "stages", "next run"):
        table.add_column(column)
    for name, when in next_run_times(config).items():
        job = config.schedule.jobs[name]
        table.add_row(name, job.cron, ", ".join(job.stages), when.strftime("%Y-%m-%d %H:%M %Z") if when else "-")
    return table


def writer_lines(ledger: Ledger, config: Config) -> list[str]:
    """What actually wrote the drafts (from the drafts and llm_calls recorded), then what config would use next."""

    d, c = schema.drafts.c, schema.llm_calls.c
    with ledger.engine.connect() as connection:
        drafted = connection.execute(
            select(d.writer_model, d.method, func.count()).group_by(d.writer_model, d.method).order_by(func.count().desc(), d.writer_model)
        ).all()
        calls = connection.execute(
            select(c.model, func.count(), func.coalesce(func.sum(cast(c.outcome == "ok", Integer)), 0))
            .where(c.role == "writer").group_by(c.model).order_by(c.model)
        ).all()
    lines = []
    if drafted:
        kinds = {"extractive": "offline", "llm": "model"}
        lines.append("writer: " + "; ".join(
            f"{model} ({kinds.get(method, method)}) for {n} draft{'s' if n != 1 else ''}" for model, method, n in drafted
        ))
    else:
        lines.append("writer: no drafts yet")
    if calls:
        lines.append("writer model calls: " + "; ".join(
            f"{model}: {n}, {answered} answered" for model, n, answered in calls
        ))
    active = ledger.get_setting("writer_model")
    model = active_writer_model(config, ledger)
    origin = "fine-tuned, active in the ledger" if active else "llm.models.writer"
    if config.llm.offline:
        use = "; not used while llm.offline = true (drafts are extractive)"
    elif not resolve_endpoint(config).configured:
        use = "; not used: no API key or llm.base_url, so drafts are extractive"
    else:
        use = ""
    evaluation = ledger.get_setting("writer_model_eval")
    lines.append(f"configured writer model: {model} ({origin}){use}" + (f"; eval: {evaluation}" if evaluation and active else ""))
    return lines


def show_status(config: Config, console: Console | None = None, runs: int = 10, ledger: Ledger | None = None) -> None:
    """Print the status tables. The CLI passes a ledger it opened without creating anything (see cli.open_ledger_read_only)."""

    console = console or make_console()
    ledger = ledger or Ledger.from_config(config)
    console.print(source_table(ledger))
    console.print(state_table(ledger, "Items by state", schema.items))
    console.print(classification_table(ledger))
    console.print(stories_table(ledger))
    console.print(state_table(ledger, "Drafts by state", schema.drafts))
    console.print(late_sources_table(ledger))
    console.print(publications_table(ledger))
    console.print(edit_rate_table(ledger))
    console.print(corrections_table(ledger))
    console.print(spend_table(ledger, config))
    console.print(schedule_table(config))
    for line in writer_lines(ledger, config):
        say(console, line)
    console.print(runs_table(ledger, runs))
