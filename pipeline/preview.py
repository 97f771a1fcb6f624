"""`run.py preview STORY_KEY`: exactly what the writer would be sent, with token counts, and no model call."""

from __future__ import annotations

from rich.console import Console
from rich.rule import Rule
from rich.table import Table

from pipeline.drafting import PreviewError, preview
from pipeline.tokens import count_messages, count_tokens


def show_preview(run, key: str, console: Console) -> int:
    try:
        prepared = preview(run.config, run.ledger, run.store, run.gateway, key, now=run.now())
    except PreviewError as exc:
        console.print(f"[red]preview:[/] {exc}", highlight=False)
        return 2
    model = prepared.model
    for message in prepared.prompt.messages:
        console.print(Rule(f"{message['role']} prompt ({prepared.prompt.name} v{prepared.prompt.version})"))
        console.print(message["content"], markup=False, highlight=False)
    console.print(Rule("budget"))
    parts = Table(title_justify="left", title=f"Token counts for {model} (template {prepared.spec.name})")
    parts.add_column("part")
    parts.add_column("tokens", justify="right")
    for message in prepared.prompt.messages:
        parts.add_row(f"{message['role']} prompt", str(count_tokens(message["content"], model)))
    for source in prepared.pack.sources:
        parts.add_row(f"  source [{source.n}] {source.role}", str(count_tokens(source.text, model)))
    total = count_messages(prepared.prompt.messages, model)
    reserve = run.config.research.output_reserve_tokens
    parts.add_row("whole prompt", str(total))
    parts.add_row("output reserve", str(reserve))
    parts.add_row("context window", str(prepared.window))
    parts.add_row("source budget (used)", f"{prepared.pack.budget_tokens} ({prepared.pack.used_tokens})")
    console.print(parts)
    sources = Table(title="Numbered sources", title_justify="left")
    for column in ("n", "title", "outlet", "date", "url"):
        sources.add_column(column, overflow="fold")
    for s in prepared.pack.sources:
        sources.add_row(str(s.n), s.title, s.outlet, f"{s.published:%Y-%m-%d}", s.url)
    console.print(sources)
    if prepared.pack.dropped:
        console.print(f"dropped to fit the budget: {', '.join(prepared.pack.dropped)}")
    return 0 if total + reserve <= prepared.window else 1
