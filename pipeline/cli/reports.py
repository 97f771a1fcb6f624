"""The run summary every command that runs stages prints (`once`, `demo`)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from pipeline.cli.console import say


def print_reports(console: Console, reports, title: str = "Run summary", links: bool = True) -> None:
    """A table of the stages (in, out, errors, calls, tokens, cost, time), each stage's notes, its links and errors."""
    table = Table(title=title, title_justify="left")
    for column in ("stage", "in", "out", "errors", "LLM calls", "tokens", "cost $", "time s"):
        table.add_column(column, justify="right" if column != "stage" else "left")
    for r in reports:
        table.add_row(r.stage, str(r.items_in), str(r.items_out), str(len(r.errors)), str(r.llm_calls), str(r.tokens), f"{r.cost_usd:.4f}", f"{r.duration_s:.2f}")
    console.print(table)
    for r in reports:
        details = {k: v for k, v in r.notes.items() if not str(k).startswith(("link ", "calls ", "edit_rate "))}
        if details:
            say(console, f"{r.stage}: " + ", ".join(f"{k} {v}" for k, v in details.items()))
        for key, value in r.notes.items() if links else ():
            if str(key).startswith("link "):  # published documents: where editors find them
                say(console, f"  {value}")
    for r in reports:
        for error in r.errors[:20]:
            say(console, error, label=f"{r.stage}:", style="red")
        if len(r.errors) > 20:
            say(console, f"… and {len(r.errors) - 20} more", label=f"{r.stage}:", style="red")
