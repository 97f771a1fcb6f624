"""What an operator sees on screen or in a pipe (issue 12): nothing wrapped or cut, commands that work as printed.

The demo runs once, through a pipe, in a temp folder whose name has a space; the other
tests read its workspace the way a user would, with COLUMNS=40 to provoke any wrapping.
"""

from __future__ import annotations

import io
import os
import pty
import re
import select as selectors
import shlex
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from rich.table import Table
from sqlalchemy import create_engine, func, select

from pipeline.core import schema
from pipeline.cli.console import make_console, say

ROOT = Path(__file__).resolve().parent.parent
RUN_PY = ROOT / "run.py"
SAMPLE_AS_OF = "2026-11-22T21:00:00Z"   # the sample feeds' last item is 2026-11-22 20:00 UTC
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def piped(*args: str, cwd: Path, columns: int = 40) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns)}
    env.pop("FORCE_COLOR", None)
    env.pop("TTY_COMPATIBLE", None)
    return subprocess.run([sys.executable, str(RUN_PY), *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`run.py demo` run from a folder of the user's, its output piped; returns (folder, completed process)."""
    home = tmp_path_factory.mktemp("console") / "news desk"
    home.mkdir()
    result = piped("demo", cwd=home)
    assert result.returncode == 0, result.stdout + result.stderr
    return home, result


def ledger_rows(workspace: Path, query):
    engine = create_engine(f"sqlite:///{workspace / 'data' / 'ledger.sqlite'}")
    try:
        with engine.connect() as connection:
            return connection.execute(query).all()
    finally:
        engine.dispose()


# --- the console itself ---------------------------------------------------------------------------


def test_a_console_writing_to_a_pipe_never_wraps_or_cuts_whatever_columns_says(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    out = io.StringIO()
    console = make_console(out)
    url = "https://docs.google.com/document/d/" + "x" * 120 + "/edit"
    table = Table(title="Published drafts")
    for header in ("classified", "relevant", "irrelevant", "prefiltered", "link"):
        table.add_column(header)
    table.add_row("40", "36", "4", "0", url)
    console.print(table)
    say(console, f"could not reach {url} [parameters: (1, 2)]", label="error", style="red")
    text = out.getvalue()
    assert "…" not in text and "\x1b[" not in text
    assert any(url in line for line in text.splitlines()), "the URL is whole on one line"
    assert re.search(r"classified\s*┃\s*relevant\s*┃\s*irrelevant\s*┃\s*prefiltered", text)
    assert f"error could not reach {url} [parameters: (1, 2)]" in text.splitlines(), "messages are never read as markup"


def run_in_terminal(args: list[str], cwd: Path, columns: int = 40) -> str:
    """Run the CLI on a pseudo-terminal `columns` wide; what the terminal received, colour codes removed."""
    import fcntl
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR")}
    process = subprocess.Popen([sys.executable, str(RUN_PY), *args], stdin=follower, stdout=follower, stderr=follower,
                               cwd=cwd, env={**env, "TERM": "xterm"}, close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = selectors.select([leader], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(leader, 4096)
        except OSError:   # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=60)
    os.close(leader)
    return ANSI.sub("", b"".join(chunks).decode("utf-8", "replace")).replace("\r\n", "\n")


def test_on_a_narrow_terminal_an_error_keeps_its_path_whole(tmp_path):
    deep = tmp_path / "a-rather-long-folder-name-for-the-newsroom" / "and-another-level"
    deep.mkdir(parents=True)
    screen = run_in_terminal(["status", "--config", str(deep / "config.toml")], cwd=tmp_path)
    assert f"config file not found: {deep / 'config.toml'}" in screen.splitlines()[0], screen


# --- the demo -------------------------------------------------------------------------------------------


def test_the_demo_works_in_the_current_folder_and_its_next_command_works_from_anywhere(demo, tmp_path):
    home, result = demo
    workspace = home / "demo-workspace"
    assert (workspace / "config.toml").is_file(), "demo-workspace/ is made in the folder the user ran the demo from"
    [hint] = [line for line in result.stdout.splitlines() if line.startswith("next: ")]
    command = hint.removeprefix("next: ")
    assert shlex.split(command) == [sys.executable, str(RUN_PY), "status", "--config", str(workspace / "config.toml")]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    status = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=120, cwd=elsewhere,
                            env={**os.environ, "COLUMNS": "40"})
    assert status.returncode == 0, status.stdout + status.stderr
    assert "Drafts by state" in status.stdout
    assert list(elsewhere.iterdir()) == [], "status created nothing where it was run"


def test_status_after_the_offline_demo_names_the_writer_that_ran_not_the_configured_model(demo):
    home, _ = demo
    workspace = home / "demo-workspace"
    drafts = ledger_rows(workspace, select(schema.drafts.c.writer_model, schema.drafts.c.method))
    assert drafts and set(drafts) == {("extractive", "extractive")}
    status = piped("status", "--config", str(workspace / "config.toml"), cwd=home)
    assert status.returncode == 0, status.stdout + status.stderr
    lines = status.stdout.splitlines()
    assert f"writer: extractive (offline) for {len(drafts)} drafts" in lines
    [configured] = [line for line in lines if "gpt-4o-mini" in line]
    assert configured.startswith("configured writer model: gpt-4o-mini") and "not used while llm.offline = true" in configured
    assert not any(line.startswith("writer model: ") for line in lines)


def test_piped_status_keeps_headers_and_document_links_whole_at_40_columns(demo):
    home, _ = demo
    workspace = home / "demo-workspace"
    links = [url for (url,) in ledger_rows(workspace, select(schema.publications.c.url))]
    assert links and all(len(url) > 80 for url in links)
    status = piped("status", "--config", str(workspace / "config.toml"), cwd=home, columns=40)
    assert status.returncode == 0, status.stderr
    out = status.stdout
    assert "…" not in out and "\x1b[" not in out
    lines = out.splitlines()
    for url in links:
        assert any(url in line for line in lines), f"{url} is not whole on one line"
    header = next(line for line in lines if "classified" in line and "prefiltered" in line)
    for name in ("classified", "relevant", "irrelevant", "by model", "offline", "prefiltered", "LLM calls", "cost $"):
        assert name in header
    assert any("Editor edit rate (share of draft words changed)" in line for line in lines)


def test_piped_preview_prints_the_prompt_and_source_urls_unbroken_and_records_nothing(demo):
    home, _ = demo
    workspace = home / "demo-workspace"
    story = ledger_rows(workspace, select(schema.stories.c.key, schema.stories.c.item_ids).where(schema.stories.c.state == "new")
                        .order_by(schema.stories.c.score.desc()).limit(1))[0]
    runs_before = ledger_rows(workspace, select(func.count()).select_from(schema.runs))[0][0]

    result = piped("preview", story.key[:10], "--as-of", SAMPLE_AS_OF, "--config", str(workspace / "config.toml"), cwd=home)

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    urls = [u for (u,) in ledger_rows(workspace, select(schema.items.c.url).where(schema.items.c.id.in_(story.item_ids)))]
    for url in urls:
        assert f"    {url}" in lines, f"{url} is not whole on its own line"
    assert max(len(line) for line in lines) > 40, "prompt lines are printed as sent, not wrapped at COLUMNS"
    assert "──── system prompt" in result.stdout and "──── Numbered sources ────" in lines
    assert ledger_rows(workspace, select(func.count()).select_from(schema.runs))[0][0] == runs_before, "preview records no run"
