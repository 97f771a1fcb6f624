"""The `run.py` commands. Each is small: parse arguments, load config, call the pipeline, print a summary.

A command whose module pulls in chromadb or apscheduler (the worker, preview, status, demo, schedule, finetune)
imports it inside the command: `run.py --help` starts in 0.5 s instead of 1.1 s."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from pipeline.core.config import DEFAULT_CONFIG, ConfigError, load_config
from pipeline.cli.console import make_console, say
from pipeline.cli.reports import print_reports
from pipeline.core import schema
from pipeline.core.ledger import LedgerError
from pipeline.core.models import StageReport
from pipeline.core.logs import register_credentials_file, register_env_secrets, register_secret, setup_logging
from pipeline.core.ledger import describe_operational_error
from pipeline.flow.runner import STAGE_ORDER
from pipeline.core.ledger import Ledger, redact_url
from pipeline.flow.runner import install_stop_handlers, run_locked as locked
from pipeline.core.lock import LockHeld
from pipeline.core.clock import parse_as_of
from pipeline.core.clock import fixed_clock, system_clock
from pipeline.services.llm import resolve_endpoint

console = make_console()  # plain full-width text when stdout is not a terminal (pipeline/cli/console.py)
log = logging.getLogger("newsdesk.cli")


def _config(args):
    config = load_config(args.config)
    args._loaded_config = config   # for the error messages in main()
    _register_secrets(config)
    return config


def _register_secrets(config) -> None:
    """Every credential this run can read is masked in logs, messages and the ledger from here on."""

    register_env_secrets([config.llm.api_key_env, "OPENAI_API_KEY"])  # the gateway falls back to the SDK's variable
    register_secret(resolve_endpoint(config).api_key)  # covers llm.api_key_file too
    google = config.publishing.google
    for path in (google.credentials_file, google.token_file):
        if path is not None:
            register_credentials_file(config.path(path))
    register_credentials_file(os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"))


def _clock(args):
    as_of = getattr(args, "as_of", None)
    return fixed_clock(as_of) if as_of else system_clock


def _as_of_argument(text: str):
    try:
        return parse_as_of(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_locked(config, command: str, stages: list[str], clock=None) -> int:
    """Run stages under the single-instance lock; 0 when every stage succeeded, 1 otherwise.

    With cluster.enabled the run is queued instead and this process works it beside the other workers."""
    if config.cluster.enabled:
        return run_queued(config, command, stages, clock)
    install_stop_handlers()  # SIGTERM from cron or systemd: finish the item in hand, release the lock
    try:
        run = locked(config, f"run.py {command}", stages, clock=clock) if clock else locked(config, f"run.py {command}", stages)
    except LockHeld as exc:
        say(console, exc, label="not started:", style="yellow")
        return 75  # EX_TEMPFAIL: cron may simply try again next time
    print_reports(console, run.reports, title=f"Run {run.id} ({run.status})")
    return 0 if run.status == "ok" else 1


def run_queued(config, command: str, stages: list[str], clock=None) -> int:
    """Queue a run for the workers and work it here too, until it is finished; 0 when every stage was error-free."""
    from pipeline.flow.worker import FINISHED, enqueue_run, work_run

    install_stop_handlers()  # SIGTERM: finish the unit in hand; the queued run goes on in the other workers
    ledger = Ledger.from_config(config)
    run_id = enqueue_run(ledger, f"run.py {command}", stages, as_of=clock() if clock else None)
    state = work_run(config, ledger, run_id)
    with ledger.engine.connect() as connection:
        row = connection.execute(select(schema.runs).where(schema.runs.c.id == run_id)).one()
    if state != FINISHED:
        say(console, f"stopped; run {run_id} stays queued and the other workers finish it", label="queued:", style="yellow")
        return 1
    print_reports(console, [StageReport.model_validate(r) for r in row.stages], title=f"Run {run_id} ({row.status}, queued)")
    return 0 if row.status == "ok" else 1


def cmd_enqueue(args) -> int:
    from pipeline.flow.worker import enqueue_run

    config = _config(args)
    stages = _stages(args)
    if stages is None:
        return 2
    as_of = getattr(args, "as_of", None)
    run_id = enqueue_run(Ledger.from_config(config), "run.py enqueue", stages, as_of=as_of)
    console.print(f"queued run {run_id}: {', '.join(stages)}")
    return 0


def cmd_worker(args) -> int:
    from pipeline.flow.worker import Worker

    config = _config(args)
    stages = _stages(args) if args.stages else list(config.cluster.stages)
    if stages is None:
        return 2
    install_stop_handlers()  # SIGTERM: finish the unit in hand, then exit 0
    worker = Worker(config, stages=stages)
    try:
        worker.warm_up()
    except Exception as exc:  # the store is down: units that need it report it, the worker still serves the others
        log.warning("worker %s: the store could not be opened yet: %s", worker.owner, exc)
    log.warning("worker %s: stages %s, lease %gs", worker.owner, ",".join(stages), config.cluster.lease_s)
    done = worker.serve()
    log.warning("worker %s stopped after %d unit(s)", worker.owner, done)
    return 0


def _stages(args) -> list[str] | None:
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGE_ORDER]
    if unknown:
        say(console, f"{', '.join(unknown)}; stages: {','.join(STAGE_ORDER)}", label="unknown stage(s)", style="red")
        return None
    return stages


def cmd_stage(args) -> int:
    return run_locked(_config(args), args.command, [args.command], clock=_clock(args))


def cmd_once(args) -> int:
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGE_ORDER]
    if unknown:
        say(console, f"{', '.join(unknown)}; stages: {','.join(STAGE_ORDER)}", label="unknown stage(s)", style="red")
        return 2
    return run_locked(_config(args), "once", stages, clock=_clock(args))


def open_ledger_read_only(config, config_path: str, command: str):
    """The configured ledger for a command that only reads it (status, preview): never created here.

    A missing SQLite file, or a database without Newsdesk's tables, is a LedgerError (exit 3)
    naming the ledger and the config it came from; nothing is created, not even a folder.
    An existing ledger is brought up to this version's schema, as every command does.
    """
    from sqlalchemy import inspect


    url = config.ledger_url
    origin = f"ledger.url in {Path(config_path).resolve()}"
    hint = (
        f"`run.py {command}` only reads the ledger and creates nothing. Pass --config with your newsroom's config.toml, "
        f"or run the pipeline with this config first (run.py once --config {config_path})"
    )
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            raise LedgerError(f"no ledger at {path} ({origin}). {hint}")
    ledger = Ledger(url, config.ledger.busy_timeout_s, migrate=False)
    try:
        made = inspect(ledger.engine).has_table("alembic_version")
    except OperationalError as exc:
        ledger.close()
        raise LedgerError(f"cannot open the ledger at {redact_url(url)} ({origin}): {exc.orig}") from None
    if not made:
        ledger.close()
        raise LedgerError(f"the database at {redact_url(url)} ({origin}) holds no Newsdesk ledger yet. {hint}")
    ledger.migrate()
    return ledger


def cmd_preview(args) -> int:
    from pipeline.cli.preview import PreviewContext, show_preview

    config = _config(args)
    context = PreviewContext(config, open_ledger_read_only(config, args.config, "preview"), clock=_clock(args))
    try:
        return show_preview(context, args.story_key, console)
    finally:
        context.close()


def cmd_schedule(args) -> int:
    from pipeline.flow.scheduler import serve

    _config(args)  # a bad config stops here, before the daemon starts
    return serve(args.config)


def cmd_status(args) -> int:
    from pipeline.cli.status import show_status

    config = _config(args)
    show_status(config, console, runs=args.runs, ledger=open_ledger_read_only(config, args.config, "status"))
    return 0


def cmd_demo(args) -> int:
    from pipeline.cli.demo import run_demo

    return run_demo(Path(args.workspace), console)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py",
        description="Newsdesk: fetch, classify, research, draft, fact-check and publish news.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, handler):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--config", default=DEFAULT_CONFIG, help="config file (default: ./config.toml)")
        sub.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
        sub.add_argument("--log-json", action="store_true", help="write structured JSON log lines to stderr")
        sub.set_defaults(handler=handler)
        return sub

    def as_of(sub) -> None:
        sub.add_argument(
            "--as-of", metavar="WHEN", type=_as_of_argument,
            help="treat this ISO 8601 time as now for story windows, ranking and research (replaying dated news); default: the clock",
        )

    command("fetch", "fetch feeds and pages, store new items, index them in Chroma", cmd_stage)
    command("classify", "classify new items once, in batches (embedding prefilter, then the model)", cmd_stage)
    as_of(command("draft", "group items into stories, research and draft the top stories", cmd_stage))
    preview = command("preview", "print exactly what the writer would be sent for a story, without calling a model", cmd_preview)
    as_of(preview)
    preview.add_argument("story_key", help="a story key (or a unique prefix); `status` lists waiting stories")
    command("check", "fact-check drafts claim by claim, revise flagged spans, store the report", cmd_stage)
    command("publish", "publish checked drafts to Google Docs or the local outbox", cmd_stage)
    command("sync", "read editor-approved documents back and record the edit rate", cmd_stage)
    once = command(
        "once",
        "run the pipeline once and exit, for system cron. Exit codes: 0 every stage ran without errors; "
        "1 a stage failed or reported errors (one unreachable or broken feed counts: its error is in the "
        "summary); 2 bad config or arguments; 3 the ledger cannot be opened, or stayed busy (locked by another process) "
        "longer than ledger.busy_timeout_s; 75 another run holds the lock "
        "(try again later)",
        cmd_once,
    )
    as_of(once)
    once.add_argument(
        "--stages", default=",".join(STAGE_ORDER), metavar="LIST",
        help=f"comma-separated stages, run in pipeline order whatever the order given; one or more of: {', '.join(STAGE_ORDER)} "
        "(default: all)",
    )
    command("schedule", "run the scheduler daemon: the [schedule] jobs from config, until SIGTERM", cmd_schedule)
    worker = command(
        "worker",
        "work queued runs (cluster.enabled): claim units of work from the shared ledger until SIGTERM, which finishes "
        "the unit in hand; start as many as you like on as many machines",
        cmd_worker,
    )
    worker.add_argument("--stages", default="", metavar="LIST",
                        help="comma-separated stages this worker takes (default: cluster.stages from config, all stages)")
    enqueue = command("enqueue", "queue a run for the workers (cluster.enabled) and exit", cmd_enqueue)
    as_of(enqueue)
    enqueue.add_argument("--stages", default=",".join(STAGE_ORDER), metavar="LIST",
                         help="comma-separated stages (default: all)")
    status = command("status", "show sources, items, drafts and recent runs", cmd_status)
    status.add_argument("--runs", type=int, default=10, help="how many recent runs to list")
    demo = command("demo", "run the whole pipeline offline on the bundled sample feeds", cmd_demo)
    demo.add_argument("--workspace", default="demo-workspace", help="fresh folder to run in (recreated)")
    from pipeline.cli.finetune import add_finetune_commands

    add_finetune_commands(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, json_lines=args.log_json)
    try:
        return args.handler(args)
    except ConfigError as exc:
        say(console, exc, label="config error", style="red")
        return 2
    except LedgerError as exc:
        say(console, exc, label="ledger error", style="red")
        return 3
    except OperationalError as exc:   # the ledger was busy or the disk full outside any stage

        config = getattr(args, "_loaded_config", None)
        url = config.ledger_url if config is not None else "the configured ledger"
        busy = config.ledger.busy_timeout_s if config is not None else None
        say(console, describe_operational_error(exc, url, busy), label="ledger error", style="red")
        return 3
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
