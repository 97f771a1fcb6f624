"""`run.py finetune build | start | status | cancel | eval | use`.

Wired into `pipeline/cli/main.py` with the same command factory as the other commands:

    from pipeline.cli.finetune import add_finetune_commands
    add_finetune_commands(command)
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any, Callable

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.core.config import Config, load_config, read_secret
from pipeline.cli.console import make_console, say
from pipeline.finetune.workflow import (
    activate_writer_model,
    active_writer_model,
    build_dataset,
    dataset_dir,
    min_examples_problem,
    read_cases,
    read_manifest,
    save_report,
)
from pipeline.finetune.dataset import DatasetError
from pipeline.finetune.eval import EvalReport, ModelScore
from pipeline.finetune.jobs import (
    DEFAULT_POLL_S,
    EventView,
    JobError,
    JobView,
    cancel_job,
    describe_row,
    follow_job,
    latest_job_id,
    record_eval,
    recorded_jobs,
    start_job,
)
from pipeline.core.ledger import Ledger
from pipeline.services.llm import LLMError, NoModelConfigured
from pipeline.core.logs import register_secret
from pipeline.core.prompts import PromptError
from pipeline.text.templates import TemplateError
from pipeline.services.llm import make_client

console = make_console()  # the CLI's console: plain full-width text when stdout is not a terminal


def _ledger(config: Config) -> Ledger:
    return Ledger.from_config(config)


def make_provider_client(config: Config):
    """The SDK client for the fine-tuning API (tests replace this to inject an httpx client for respx)."""

    if config.llm.offline:
        raise NoModelConfigured("llm.offline = true in config: fine-tuning needs the provider's API")
    return make_client(config)


async def _with_client(config: Config, work: Callable[[Any], Any]):
    client = make_provider_client(config)
    try:
        return await work(client)
    finally:
        await client.close()


# --- build ------------------------------------------------------------------------------


def cmd_build(args, config: Config) -> int:
    from pathlib import Path

    ledger = None if args.no_approved else _ledger(config)
    articles = Path(args.articles).resolve() if args.articles else None
    result = build_dataset(config, ledger, articles_dir=articles, skip_title_only=args.skip_title_only, write=not args.dry_run)
    for problem in result.problems:
        say(console, problem.origin, label="rejected", style="red")
        for error in problem.errors:
            say(console, f"    - {error}")
    for duplicate in result.duplicates:
        say(console, f"{duplicate} (dropped)", label="duplicate", style="yellow")
    m = result.manifest
    counts, sources, tokens, cost = m["counts"], m["sources"], m["tokens"], m["estimate"]
    table = Table(title=f"Dataset {result.dataset_id}", title_justify="left", show_header=False)
    table.add_row("examples", f"{counts['examples']} ({counts['train']} train, {counts['valid']} validation)")
    table.add_row("from", f"{sources['articles']} past article(s), {sources['approved_drafts']} approved draft(s)")
    table.add_row("rejected / duplicates", f"{counts['rejected']} / {counts['duplicates']}")
    if sources["title_only_examples"]:
        table.add_row("title-only sources", f"{sources['title_only_examples']} example(s) give some sources by title only")
    if counts["skipped_title_only"]:
        table.add_row("skipped", f"{counts['skipped_title_only']} example(s) with title-only sources (--skip-title-only)")
    table.add_row("tokens", f"{tokens['train']} train, {tokens['valid']} validation, largest example {tokens['max_example']} (limit {tokens['limit']})")
    price = "no training price in llm.prices" if cost["price_per_1m"] is None else f"${cost['price_per_1m']}/1M"
    dollars = "unknown" if cost["cost_usd"] is None else f"${cost['cost_usd']:.4f}"
    table.add_row("estimated cost", f"{dollars} = {cost['epochs']} epochs × {cost['training_tokens']} training tokens × {price}")
    table.add_row("prompt version", f"writer {m['prompt_versions']['writer']}")
    console.print(table)
    problem = min_examples_problem(config, result)
    if problem:
        say(console, problem, label="not written:", style="red")
        return 1
    if result.directory is None:
        console.print("dry run: nothing written")
    else:
        say(console, f"written to {result.directory}")
    return 0


# --- start / status / cancel ---------------------------------------------------------------------


def cmd_start(args, config: Config) -> int:
    directory = dataset_dir(config, args.dataset_id)
    manifest = read_manifest(directory)
    ledger = _ledger(config)
    view = asyncio.run(_with_client(config, lambda client: start_job(config, ledger, client, directory, again=args.again)))
    say(
        console,
        f"started job {view.id} ({view.status}) on dataset {manifest['dataset_id']}: {config.finetune.base_model}, "
        f"suffix {config.finetune.suffix!r}, {config.finetune.epochs} epochs; follow it with: run.py finetune status {view.id}",
    )
    return 0


class JobDisplay:
    """A live spinner/progress bar on a terminal, plain lines otherwise (cron, logs, pipes)."""

    def __init__(self, out: Console) -> None:
        self.console = out
        self.progress = None
        self.task = None
        self.last_status: str | None = None

    def __enter__(self) -> JobDisplay:
        if self.console.is_terminal:
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[steps]}"),
                                     TimeElapsedColumn(), console=self.console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("waiting for the provider", total=None, steps="")
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, job: JobView, events: list[EventView]) -> None:
        for event in events:
            level = "" if event.level == "info" else f"[{event.level}] "
            self.console.print(f"{event.created:%H:%M:%S} {level}{event.message}", highlight=False, markup=False, soft_wrap=True)
        step = next((e.step for e in reversed(events) if e.step), None)
        if self.progress is not None:
            fields: dict[str, Any] = {"description": f"{job.id}: {job.status}"}
            if step:
                fields.update(completed=step[0], total=step[1], steps=f"step {step[0]}/{step[1]}")
            self.progress.update(self.task, **fields)
        elif job.status != self.last_status:
            self.console.print(f"job {job.id}: {job.status}", highlight=False)
        self.last_status = job.status


def _final_words(job: JobView, out: Console) -> int:
    if job.status == "succeeded":
        out.print(f"[green]succeeded:[/] fine-tuned model {job.fine_tuned_model}"
                  + (f" ({job.trained_tokens} trained tokens)" if job.trained_tokens else "")
                  + f"; compare it with: run.py finetune eval {job.fine_tuned_model}", highlight=False)
        return 0
    if job.status == "failed":
        say(out, job.error or "the provider gave no reason", label="failed:", style="red")
        return 1
    if job.status == "cancelled":
        if job.error:
            say(out, job.error, label="cancelled:", style="yellow")
        else:
            out.print("[yellow]cancelled[/]")
        return 1
    finish = f", estimated finish {job.estimated_finish:%Y-%m-%d %H:%M UTC}" if job.estimated_finish else ""
    out.print(f"job {job.id} is {job.status}{finish}", highlight=False)
    return 0


def writer_status(config: Config, ledger: Ledger) -> str:
    evaluation = ledger.get_setting("writer_model_eval")
    model = active_writer_model(config, ledger)
    origin = "active in the ledger" if ledger.get_setting("writer_model") else "from config"
    return f"writer model: {model} ({origin})" + (f"; eval: {evaluation}" if evaluation else "")


def cmd_status(args, config: Config) -> int:
    ledger = _ledger(config)
    say(console, writer_status(config, ledger))
    job_id = args.job_id or latest_job_id(ledger)
    if job_id is None:
        console.print("no fine-tuning job recorded yet; start one with: run.py finetune start")
        return 0
    rows = recorded_jobs(ledger, 10)
    if rows and not args.job_id:
        for row in rows:
            say(console, f"  {describe_row(row)}")
    with JobDisplay(console) as display:
        job = asyncio.run(_with_client(config, lambda client: follow_job(
            ledger, client, job_id, display.update, interval=args.interval, once=args.once)))
    return _final_words(job, console)


def cmd_cancel(args, config: Config) -> int:
    ledger = _ledger(config)
    job = asyncio.run(_with_client(config, lambda client: cancel_job(ledger, client, args.job_id)))
    console.print(f"job {job.id}: {job.status}", highlight=False)
    return 0


# --- eval / use -------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def eval_table(report: EvalReport) -> Table:
    c, b = report.scores["candidate"], report.scores["baseline"]
    table = Table(title=f"Eval on {report.stories} validation stories of dataset {report.dataset_id}", title_justify="left")
    table.add_column("measure")
    table.add_column(c.model, justify="right")
    table.add_column(b.model, justify="right")
    rows: list[tuple[str, Callable[[ModelScore], str]]] = [
        ("template compliant, first try", lambda s: f"{s.first_try_compliant}/{s.stories} ({_pct(s.first_try_rate)})"),
        ("compliant after repair", lambda s: f"{s.compliant}/{s.stories} ({_pct(s.compliant_rate)})"),
        ("repair rounds (mean)", lambda s: f"{s.mean_repair_rounds:.2f}"),
        ("fact-check pass rate", lambda s: f"{_pct(s.factcheck_pass_rate)} ({s.supported}/{s.claims} claims)"),
        ("edit rate to approved (lower is closer)", lambda s: "n/a" if s.mean_edit_rate is None else f"{s.mean_edit_rate:.1%}"),
        ("failed drafts", lambda s: str(s.errors)),
        ("tokens (in / out)", lambda s: f"{s.prompt_tokens} / {s.completion_tokens}"),
        ("cost", lambda s: f"${s.cost_usd:.4f}"),
    ]
    for label, show in rows:
        table.add_row(label, show(c), show(b))
    return table


def cmd_eval(args, config: Config) -> int:
    from pipeline.finetune.eval import evaluate

    ledger = _ledger(config)
    directory = dataset_dir(config, args.dataset)
    dataset_id = read_manifest(directory)["dataset_id"]
    cases = read_cases(directory, "valid")
    if args.limit:
        cases = cases[: args.limit]
    against = args.against or active_writer_model(config, ledger)
    if against == args.model:
        console.print(f"[red]nothing to compare:[/] {args.model} is also the model to compare against; pass --against MODEL")
        return 2
    report = asyncio.run(evaluate(config, ledger, cases, dataset_id, args.model, against))
    console.print(eval_table(report))
    for result in report.cases:
        if result.error:
            say(console, f"{result.origin}: {result.error}", label=result.model, style="red")
    path = save_report(config, report)
    record_eval(ledger, args.model, {"file": str(path), "summary": report.summary(), "at_least_as_good": report.verdict.at_least_as_good})
    verdict = "at least as good as" if report.verdict.at_least_as_good else "worse than"
    say(console, f"{args.model} is {verdict} {against}: {'; '.join(report.verdict.reasons)}")
    say(console, f"saved {path}")
    return 0


def cmd_use(args, config: Config) -> int:
    outcome = activate_writer_model(config, _ledger(config), args.model, force=args.force)
    colour = "green" if outcome.activated else "yellow"
    console.print(f"[{colour}]{escape(outcome.message)}[/]", highlight=False, soft_wrap=True)
    if outcome.activated or outcome.model == outcome.previous:
        return 0
    return 1


# --- wiring ---------------------------------------------------------------------------------------------

Handler = Callable[[argparse.Namespace, Config], int]


def run_finetune(args: argparse.Namespace) -> int:
    """The `finetune` command's handler: load config, run the action, turn known errors into one line."""
    config = load_config(args.config)
    key_file = config.path(config.llm.api_key_file) if config.llm.api_key_file else None
    register_secret(read_secret(config.llm.api_key_env, key_file))  # masked in any log line, as for other commands
    try:
        return args.finetune_handler(args, config)
    except (DatasetError, JobError, TemplateError, PromptError) as exc:
        say(console, exc, label=f"finetune {args.finetune_action}:", style="red")
        return 1
    except LLMError as exc:
        say(console, exc, label=f"finetune {args.finetune_action}:", style="red")
        return 2


def add_finetune_commands(command: Callable[..., argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register `finetune` and its actions with cli.py's `command(name, help, handler)` factory."""
    parser = command("finetune", "style fine-tuning: build a dataset, train, follow, evaluate and switch the writer model", run_finetune)
    actions = parser.add_subparsers(dest="finetune_action", metavar="ACTION", required=True)

    def action(name: str, help_text: str, handler: Handler) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help_text, description=help_text)
        # Also accepted after the action; SUPPRESS keeps a value given before it.
        sub.add_argument("--config", default=argparse.SUPPRESS, help="config file (default: ./config.toml)")
        sub.add_argument("--log-level", default=argparse.SUPPRESS, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
        sub.add_argument("--log-json", action="store_true", default=argparse.SUPPRESS, help="structured JSON log lines on stderr")
        sub.set_defaults(finetune_handler=handler)
        return sub

    build = action("build", "build the dataset from past articles and approved drafts; print problems and the cost estimate", cmd_build)
    build.add_argument("--articles", help="folder of past articles (default: finetune.articles_dir)")
    build.add_argument("--skip-title-only", action="store_true", help="leave out articles whose sources have no archived text")
    build.add_argument("--no-approved", action="store_true", help="do not take approved drafts from the ledger")
    build.add_argument("--dry-run", action="store_true", help="validate and estimate only; write nothing")

    start = action("start", "upload a built dataset and start a supervised fine-tuning job", cmd_start)
    start.add_argument("dataset_id", nargs="?", help="dataset id or prefix (default: the latest built)")
    start.add_argument("--again", action="store_true", help="train a dataset that already has a job")

    status = action("status", "follow a job (default: the latest) and its events until it ends; show the active writer model", cmd_status)
    status.add_argument("job_id", nargs="?", help="provider job id (default: the latest recorded)")
    status.add_argument("--once", action="store_true", help="poll once instead of following")
    status.add_argument("--interval", type=float, default=DEFAULT_POLL_S, help=f"seconds between polls (default {DEFAULT_POLL_S:g})")

    cancel = action("cancel", "cancel a running job", cmd_cancel)
    cancel.add_argument("job_id")

    evaluate = action("eval", "draft the validation stories with MODEL and another model and compare them", cmd_eval)
    evaluate.add_argument("model")
    evaluate.add_argument("--against", help="model to compare with (default: the active writer model)")
    evaluate.add_argument("--dataset", help="dataset id or prefix (default: the latest built)")
    evaluate.add_argument("--limit", type=int, help="evaluate on at most this many stories")

    use = action("use", "make MODEL the active writer model, if an eval showed it at least as good", cmd_use)
    use.add_argument("model")
    use.add_argument("--force", action="store_true", help="switch even without a good eval")
    return parser
