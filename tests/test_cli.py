"""`run.py once` exit codes and summary, and `run.py status` numbers, as an operator or cron sees them."""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from rich.console import Console
from sqlalchemy import func, insert, select

from pipeline.cli import main as cli
from pipeline.core import schema
from pipeline.core.config import load_config
from pipeline.core.ledger import Ledger
from pipeline.flow.scheduler import next_run_times

ROOT = Path(__file__).resolve().parent.parent
FEEDS = Path(__file__).parent / "fixtures" / "feeds"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        capture_output=True, text=True, timeout=180, env={**os.environ, "COLUMNS": "200"},
    )


def feeds_config(folder: Path, broken_enabled: bool = True) -> Path:
    (folder / "feeds").mkdir(exist_ok=True)
    shutil.copy(FEEDS / "rss_basic.xml", folder / "feeds" / "wire.xml")
    shutil.copy(FEEDS / "malformed.xml", folder / "feeds" / "broken.xml")
    path = folder / "config.toml"
    path.write_text(f"""
[[feeds]]
name = "wire"
url = "feeds/wire.xml"
full_text = "feed"

[[feeds]]
name = "flaky-outlet"
url = "feeds/broken.xml"
full_text = "feed"
enabled = {str(broken_enabled).lower()}

[llm]
offline = true
""", encoding="utf-8")
    return path


def table_rows(output: str, first_cell: str) -> list[list[str]]:
    """The cells of rich table rows whose first cell is `first_cell`."""
    rows = []
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if cells and cells[0] == first_cell:
            rows.append(cells)
    return rows


def test_once_exits_1_when_one_feed_is_broken_and_names_it_then_0_when_it_is_gone(tmp_path):
    config = feeds_config(tmp_path)
    failed = run_cli("once", "--config", str(config), "--stages", "fetch")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "(failed)" in failed.stdout
    [fetch_row] = table_rows(failed.stdout, "fetch")
    assert fetch_row[1:4] == ["2", "2", "1"], "in, out, errors: the good feed's items were still stored"
    assert "fetch: source 'flaky-outlet': not a valid RSS/Atom feed" in failed.stdout

    feeds_config(tmp_path, broken_enabled=False)
    clean = run_cli("once", "--config", str(config), "--stages", "fetch")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "(ok)" in clean.stdout
    [fetch_row] = table_rows(clean.stdout, "fetch")
    assert fetch_row[3] == "0"
    ledger = Ledger.from_config(load_config(config))
    with ledger.engine.connect() as connection:
        statuses = connection.execute(select(schema.runs.c.status).order_by(schema.runs.c.started)).scalars().all()
        items = connection.execute(select(func.count()).select_from(schema.items)).scalar_one()
    assert statuses == ["failed", "ok"]
    assert items == 2, "the second run stored no duplicates"


def test_once_refuses_unknown_stages_and_bad_configs_with_exit_2(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[llm]\noffline = true\n", encoding="utf-8")
    unknown = run_cli("once", "--config", str(config), "--stages", "fetch,publsh")
    assert unknown.returncode == 2
    assert "unknown stage(s) publsh" in unknown.stdout

    config.write_text("[llm]\nofline = true\n", encoding="utf-8")
    bad = run_cli("once", "--config", str(config), "--stages", "sync")
    assert bad.returncode == 2
    assert "'llm.ofline' is not a known key" in bad.stdout and "Did you mean 'offline'?" in bad.stdout
    assert not (tmp_path / "data").exists(), "nothing ran"


def test_once_help_documents_the_exit_codes():
    result = run_cli("once", "--help")
    text = " ".join(result.stdout.split())
    assert "0 every stage ran without errors" in text
    assert "one unreachable or broken feed counts" in text
    assert "75 another run holds the lock" in text


def status_output(config_path: Path) -> str:
    buffer = io.StringIO()
    original = cli.console
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level  # main() sets up logging; later tests keep pytest's
    cli.console = Console(file=buffer, width=220, color_system=None)
    try:
        assert cli.main(["status", "--config", str(config_path)]) == 0
    finally:
        cli.console = original
        root.handlers[:] = handlers
        root.setLevel(level)
    return buffer.getvalue()


def test_status_shows_runs_drafts_spend_links_and_next_runs(tmp_path):
    config_path = tmp_path / "config.toml"
    config_path.write_text(
        '[llm]\noffline = true\nrun_budget_usd = 2.5\n\n[schedule]\ntimezone = "UTC"\n'
        '[schedule.jobs.newyear]\ncron = "0 3 1 1 *"\nstages = ["draft"]\n',
        encoding="utf-8",
    )
    config = load_config(config_path)
    ledger = Ledger.from_config(config)
    now = datetime.now(timezone.utc)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    earlier_this_month = day - timedelta(seconds=1) if day.day > 1 else None

    def call(created, prompt_tokens, completion_tokens, cost, hit=False, role="writer"):
        return dict(run_id="r1", stage="draft", role=role, model="gpt-4o-mini", prompt_hash="p", request_hash=f"h{created}{cost}",
                    prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost_usd=cost, latency_ms=10.0,
                    outcome="ok", cache_hit=hit, created=created)

    def draft(n, state):
        return dict(id=f"d{n}", story_key=f"s{n}", template="news", writer_model="gpt-4o-mini", method="llm", prompt_versions={},
                    article={"headline": f"Headline number {n}"}, violations=[], state=state, created=now, updated=now)

    stages_ok = [{"stage": "fetch", "items_in": 3, "items_out": 2, "errors": []}]
    stages_failed = [{"stage": "draft", "items_in": 4, "items_out": 1, "errors": ["story s9: writer refused"]}]
    with ledger.begin() as connection:
        connection.execute(insert(schema.runs), [
            dict(id="r1", command="once", started=now - timedelta(minutes=30), ended=now - timedelta(minutes=29), status="ok", stages=stages_ok),
            dict(id="r2", command="schedule:write", started=now - timedelta(minutes=5), ended=now - timedelta(minutes=4), status="failed", stages=stages_failed),
        ])
        rows = [call(now, 1000, 200, 0.0123), call(now, 500, 100, 0.0, hit=True), call(now - timedelta(days=400), 9000, 900, 1.5)]
        if earlier_this_month:
            rows.append(call(earlier_this_month, 300, 50, 0.002))
        connection.execute(insert(schema.llm_calls), rows)
        connection.execute(insert(schema.drafts), [draft(1, "checked"), draft(2, "checked"), draft(3, "published")])
        connection.execute(insert(schema.publications).values(
            draft_id="d3", target="google", doc_id="doc-3", url="https://docs.google.com/document/d/doc-3/edit",
            state="written", created=now, updated=now,
        ))

    output = status_output(config_path)

    assert table_rows(output, "today")[0][1:] == ["2", "1", "1800", "0.0123"]
    month = ["3", "1", "2150", "0.0143"] if earlier_this_month else ["2", "1", "1800", "0.0123"]
    assert table_rows(output, "this month")[0][1:] == month
    assert "per-run budget: $2.50" in output
    assert table_rows(output, "checked")[0][1] == "2" and table_rows(output, "published")[0][1] == "1"
    assert "https://docs.google.com/document/d/doc-3/edit" in output and "Headline number 3" in output
    runs = [line for line in output.splitlines() if "schedule:write" in line or "│ once" in line]
    assert len(runs) == 2
    assert "draft 4→1 1 err" in output and "fetch 3→2" in output
    next_newyear = next_run_times(config)["newyear"]
    assert table_rows(output, "newyear")[0][1:] == ["0 3 1 1 *", "draft", next_newyear.strftime("%Y-%m-%d %H:%M %Z")]


def test_once_help_lists_the_valid_stage_names_and_exit_code_3():
    text = " ".join(run_cli("once", "--help").stdout.split())
    assert "one or more of: fetch, classify, draft, check, publish, sync" in text
    assert "3 the ledger cannot be opened, or stayed busy" in text


def run_in(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True, timeout=120,
                          cwd=folder, env={**os.environ, "COLUMNS": "40"})


def test_read_only_commands_never_create_a_ledger_and_say_which_paths_they_looked_for(tmp_path):
    # No config.toml where the user stands: status names the file it looked for, creates nothing.
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (["status"], ["preview", "abc123"]):
        result = run_in(empty, *args)
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"config error config file not found: {empty / 'config.toml'}" in result.stdout
    assert list(empty.iterdir()) == []

    # A config but no ledger yet (say, the repository's own config.toml): exit 3, both paths named, still nothing made.
    desk = tmp_path / "desk"
    desk.mkdir()
    (desk / "config.toml").write_text('[ledger]\nurl = "sqlite:///data/ledger.sqlite"\n[llm]\noffline = true\n', encoding="utf-8")
    for args in (["status"], ["preview", "abc123"]):
        result = run_in(desk, *args)
        output = result.stdout + result.stderr
        assert result.returncode == 3, output
        assert f"no ledger at {desk / 'data' / 'ledger.sqlite'} (ledger.url in {desk / 'config.toml'})" in result.stdout
        assert f"`run.py {args[0]}` only reads the ledger and creates nothing" in result.stdout
        assert "Traceback" not in output
    assert [p.name for p in desk.iterdir()] == ["config.toml"], "no data/ folder, no ledger file"

    # Once the pipeline has run, status reads the same ledger.
    assert run_in(desk, "once", "--stages", "fetch").returncode == 0
    assert run_in(desk, "status").returncode == 0


def test_status_on_a_database_without_newsdesk_tables_adds_none(tmp_path):
    other = tmp_path / "other.sqlite"
    import sqlite3

    sqlite3.connect(other).execute("CREATE TABLE unrelated (x)").connection.close()
    (tmp_path / "config.toml").write_text(f'[ledger]\nurl = "sqlite:///{other}"\n', encoding="utf-8")
    result = run_in(tmp_path, "status")
    assert result.returncode == 3 and "holds no Newsdesk ledger yet" in result.stdout, result.stdout + result.stderr
    tables = sqlite3.connect(other).execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    assert tables == [("unrelated",)]
