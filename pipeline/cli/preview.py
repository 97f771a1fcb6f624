"""`run.py preview STORY_KEY`: exactly what the writer would be sent, with token counts, and no model call.

Preview only reads: it records no run, makes no model call and creates no ledger or store
(pipeline/cli/main.py opens the ledger with open_ledger_read_only). The prompts are printed
line for line as they would be sent; nothing is wrapped or cut at any terminal width.
"""

from __future__ import annotations

from functools import cached_property

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.core.clock import Clock, system_clock
from pipeline.cli.console import heading, say
from pipeline.flow.drafting import PreviewError, preview
from pipeline.core.tokens import count_messages, count_tokens
from pipeline.services.llm import Gateway


class PreviewContext:
    """What preview needs of a run (config, ledger, store, gateway, the editorial clock), without recording a run."""

    def __init__(self, config, ledger, clock: Clock = system_clock) -> None:
        self.config, self.ledger, self.clock = config, ledger, clock

    def now(self):
        return self.clock()

    @cached_property
    def store(self):
        from pipeline.services.store import Store, StoreError

        settings = self.config.store
        if not settings.host:
            path = self.config.path(settings.path)
            if not path.is_dir():
                raise PreviewError(f"no Chroma store at {path} (store.path); preview reads it and creates nothing")
        try:
            return Store.from_config(self.config)
        except StoreError as exc:
            raise PreviewError(str(exc)) from None

    @cached_property
    def gateway(self):
        return Gateway(self.config, self.ledger)

    def close(self) -> None:
        if "gateway" in self.__dict__:
            self.gateway.close()
        self.ledger.close()


def show_preview(run, key: str, console: Console) -> int:
    try:
        prepared = preview(run.config, run.ledger, run.store, run.gateway, key, now=run.now())
    except PreviewError as exc:
        say(console, exc, label="preview:", style="red")
        return 2
    model = prepared.model
    for message in prepared.prompt.messages:
        heading(console, f"{message['role']} prompt ({prepared.prompt.name} v{prepared.prompt.version})")
        console.print(message["content"], markup=False, highlight=False, emoji=False, soft_wrap=True)
    heading(console, "budget")
    parts = Table(title_justify="left", title=escape(f"Token counts for {model} (template {prepared.spec.name})"))
    parts.add_column("part")
    parts.add_column("tokens", justify="right")
    for message in prepared.prompt.messages:
        parts.add_row(f"{message['role']} prompt", str(count_tokens(message["content"], model)))
    for source in prepared.pack.sources:
        parts.add_row(f"  source \\[{source.n}] {source.role}", str(count_tokens(source.text, model)))
    total = count_messages(prepared.prompt.messages, model)
    reserve = run.config.research.output_reserve_tokens
    parts.add_row("whole prompt", str(total))
    parts.add_row("output reserve", str(reserve))
    parts.add_row("context window", str(prepared.window))
    parts.add_row("source budget (used)", f"{prepared.pack.budget_tokens} ({prepared.pack.used_tokens})")
    console.print(parts)
    # One line per source: a URL is never folded or cut, even on a narrow terminal.
    heading(console, "Numbered sources")
    for s in prepared.pack.sources:
        say(console, f"[{s.n}] {s.outlet}, {s.published:%Y-%m-%d}: {s.title}")
        say(console, f"    {s.url}")
    if prepared.pack.dropped:
        say(console, f"dropped to fit the budget: {', '.join(prepared.pack.dropped)}")
    return 0 if total + reserve <= prepared.window else 1
