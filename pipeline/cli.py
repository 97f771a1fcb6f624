"""The `run.py` commands. Each is small: parse arguments, load config, call the pipeline, print a summary."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rich.console import Console

from pipeline.config import DEFAULT_CONFIG, ConfigError, load_config
from pipeline.ledger import LedgerError
from pipeline.logs import register_secret, setup_logging

console = Console()
log = logging.getLogger("newsdesk.cli")


def _config(args):
    config = load_config(args.config)
    register_secret(_api_key(config))
    return config


def _api_key(config):
    from pipeline.config import read_secret

    key_file = config.path(config.llm.api_key_file) if config.llm.api_key_file else None
    return read_secret(config.llm.api_key_env, key_file)


def print_reports(reports, title: str = "Run summary") -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("stage", "in", "out", "errors", "LLM calls", "tokens", "cost $", "time s"):
        table.add_column(column, justify="right" if column != "stage" else "left")
    for r in reports:
        table.add_row(r.stage, str(r.items_in), str(r.items_out), str(len(r.errors)), str(r.llm_calls), str(r.tokens), f"{r.cost_usd:.4f}", f"{r.duration_s:.2f}")
    console.print(table)
    for r in reports:
        for error in r.errors[:20]:
            console.print(f"[red]{r.stage}:[/] {error}", markup=True, highlight=False, soft_wrap=True)
        if len(r.errors) > 20:
            console.print(f"[red]{r.stage}:[/] … and {len(r.errors) - 20} more")


def cmd_stage(args) -> int:
    from pipeline.runner import Run

    run = Run(_config(args), command=args.command)
    reports = run.run_stages([args.command])
    status = run.finish()
    print_reports(reports)
    return 0 if status == "ok" else 1


def cmd_status(args) -> int:
    from pipeline.status import show_status

    show_status(_config(args), console, runs=args.runs)
    return 0


def cmd_demo(args) -> int:
    from pipeline.demo import run_demo

    return run_demo(Path(args.workspace), console)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py",
        description="Newsdesk: fetch, classify, research, draft, fact-check and publish news.",
    )
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--log-json", action="store_true", help="write structured JSON log lines to stderr")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, handler):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--config", default=DEFAULT_CONFIG, help="config file (default: ./config.toml)")
        sub.set_defaults(handler=handler)
        return sub

    command("fetch", "fetch feeds and pages, store new items, index them in Chroma", cmd_stage)
    status = command("status", "show sources, items, drafts and recent runs", cmd_status)
    status.add_argument("--runs", type=int, default=10, help="how many recent runs to list")
    demo = command("demo", "run the whole pipeline offline on the bundled sample feeds", cmd_demo)
    demo.add_argument("--workspace", default="demo-workspace", help="fresh folder to run in (recreated)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, json_lines=args.log_json)
    try:
        return args.handler(args)
    except ConfigError as exc:
        console.print(f"[red]config error[/] {exc}", highlight=False)
        return 2
    except LedgerError as exc:
        console.print(f"[red]ledger error[/] {exc}", highlight=False)
        return 3
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
