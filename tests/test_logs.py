"""Logs: one line per stage event, JSON on request, progress that suits the output, and secrets masked everywhere."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import JSON, String, Text, insert, inspect, select

from pipeline.cli import main as cli
from pipeline.flow import runner
from pipeline.core import schema
from pipeline.core.config import load_config
from pipeline.core.ledger import Ledger
from pipeline.core.logs import redact, register_credentials_file, register_secret, setup_logging
from pipeline.core.models import StageReport
from pipeline.core.progress import progress
from pipeline.flow.runner import Run
from pipeline.flow.stages import index_pending
from tests.fakes.openai_server import Fault, FakeOpenAIServer

ROOT = Path(__file__).resolve().parent.parent
FEEDS = Path(__file__).parent / "fixtures" / "feeds"


@pytest.fixture
def log_stream():
    """Route the app's logging into a buffer for one test, then put pytest's handlers back."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buffer = io.StringIO()

    def configure(level: str = "INFO", json_lines: bool = False) -> io.StringIO:
        setup_logging(level, json_lines=json_lines, stream=buffer)
        return buffer

    yield configure
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def fake_private_key() -> str:
    body = base64.b64encode(secrets.token_bytes(600)).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END PRIVATE KEY-----\n"


def write_private(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    path.chmod(0o600)
    return path


def service_account(key: str) -> dict:
    return {
        "type": "service_account", "project_id": "newsdesk-test", "private_key_id": secrets.token_hex(20),
        "private_key": key, "client_email": "bot@newsdesk-test.iam.gserviceaccount.com", "client_id": "1234567890",
        "token_uri": "http://127.0.0.1:9/token",
    }


# --- redaction, in process ------------------------------------------------------------


def test_credential_shapes_are_masked_without_registration():
    token = secrets.token_urlsafe(24)
    text = (
        f"key sk-proj-{secrets.token_hex(16)} header 'Authorization: Bearer {token}' "
        f"oauth ya29.{secrets.token_urlsafe(20)} body client_secret={token} {fake_private_key()}"
    )
    masked = redact(text)
    assert token not in masked and "sk-proj-" not in masked and "ya29." not in masked
    assert "PRIVATE KEY" not in masked
    assert "Authorization: Bearer ***" in masked


def test_values_from_credentials_files_are_masked_whole_in_pieces_and_json_escaped(tmp_path):
    key = fake_private_key()
    client_secret = f"GOCSPX-{secrets.token_urlsafe(20)}"
    refresh = f"1//{secrets.token_urlsafe(40)}"
    register_credentials_file(write_private(tmp_path / "sa.json", service_account(key)))
    register_credentials_file(
        write_private(tmp_path / "client.json", {"installed": {"client_id": "x.apps", "client_secret": client_secret}})
    )
    register_credentials_file(write_private(tmp_path / "token.json", {"refresh_token": refresh, "client_id": "x"}))
    register_credentials_file(tmp_path / "missing.json")  # no error: the publisher reports a missing file

    body_line = key.splitlines()[3]
    for leaked in (body_line, json.dumps({"k": key}), f"secret was {client_secret}.", f"refresh {refresh}"):
        masked = redact(leaked)
        for secret in (body_line, client_secret, refresh):
            assert secret not in masked


def test_the_cli_registers_every_credential_it_can_read(tmp_path, monkeypatch):
    openai_key = f"nd-{secrets.token_hex(20)}"
    config_key, env_key = fake_private_key(), fake_private_key()
    token = secrets.token_urlsafe(30)
    write_private(tmp_path / "sa.json", service_account(config_key))
    write_private(tmp_path / "token.json", {"token": token, "refresh_token": secrets.token_urlsafe(30), "client_secret": "x" * 24})
    env_file = write_private(tmp_path / "env-sa.json", service_account(env_key))
    (tmp_path / "config.toml").write_text(
        '[publishing.google]\ncredentials_file = "sa.json"\ntoken_file = "token.json"\n', encoding="utf-8"
    )
    monkeypatch.setenv("OPENAI_API_KEY", openai_key)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(env_file))

    cli._config(SimpleNamespace(config=str(tmp_path / "config.toml")))

    for secret in (openai_key, token, config_key.splitlines()[2], env_key.splitlines()[5]):
        assert secret not in redact(f"error: {secret} rejected"), secret


def test_stage_errors_are_masked_in_the_ledger_and_the_log(tmp_path, monkeypatch, log_stream):
    registered = f"nd-{secrets.token_hex(16)}"
    bearer = secrets.token_urlsafe(24)
    register_secret(registered)

    def crashing(run):
        raise RuntimeError(f"upstream 401: Authorization: Bearer {bearer} (key {registered})")

    def reporting(run):
        return StageReport(stage="publish", errors=[f"draft d1: Docs said invalid credentials {registered}"])

    monkeypatch.setattr(sys.modules[__name__], "crashing", crashing, raising=False)
    monkeypatch.setattr(sys.modules[__name__], "reporting", reporting, raising=False)
    monkeypatch.setitem(runner.STAGES, "check", f"{__name__}:crashing")
    monkeypatch.setitem(runner.STAGES, "publish", f"{__name__}:reporting")
    buffer = log_stream("INFO")
    (tmp_path / "config.toml").write_text("[llm]\noffline = true\n", encoding="utf-8")
    config = load_config(tmp_path / "config.toml")
    run = Run(config, command="once")
    run.run_stages(["check", "publish"])
    run.finish(error=f"SystemExit after Bearer {bearer}")

    with run.ledger.engine.connect() as connection:
        row = connection.execute(select(schema.runs)).one()
    stored = json.dumps(row.stages) + (row.error or "")
    logged = buffer.getvalue()
    for place, content in (("runs", stored), ("log", logged)):
        assert bearer not in content and registered not in content, place
    assert "RuntimeError: upstream 401" in stored and "invalid credentials ***" in stored
    assert "Traceback" in logged and "Bearer ***" in logged


# --- log lines: one per stage event, JSON on request -----------------------------------


def run_cli(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def offline_config(folder: Path, extra: str = "") -> Path:
    path = folder / "config.toml"
    path.write_text(f"[llm]\noffline = true\n{extra}", encoding="utf-8")
    return path


def test_one_log_line_per_stage_event(tmp_path):
    result = run_cli("once", "--config", str(offline_config(tmp_path)), "--stages", "publish,sync", "--log-level", "INFO")
    assert result.returncode == 0, result.stderr
    stage_lines = [line for line in result.stderr.splitlines() if "newsdesk.runner: stage " in line]
    assert len(stage_lines) == 2, result.stderr
    assert "stage publish: 0 in, 0 out, 0 error(s)" in stage_lines[0]
    assert "stage sync: 0 in, 0 out, 0 error(s)" in stage_lines[1]


def test_log_json_writes_one_json_object_per_line(tmp_path):
    result = run_cli("once", "--config", str(offline_config(tmp_path)), "--stages", "publish,sync", "--log-level", "INFO", "--log-json")
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    done = [e for e in entries if e.get("event") == "done"]
    assert [e["stage"] for e in done] == ["publish", "sync"]
    with Ledger(f"sqlite:///{tmp_path / 'data' / 'ledger.sqlite'}").engine.connect() as connection:
        run_id = connection.execute(select(schema.runs.c.id)).scalar_one()
    assert all(e["run_id"] == run_id and e["level"] == "info" and e["ts"] and e["duration_s"] >= 0 for e in done)


# --- progress ---------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_a_bar(log_stream):
    buffer = log_stream("INFO")
    terminal = Terminal()
    with progress(SimpleNamespace(id="r1"), "indexing", total=3, stream=terminal) as advance:
        for _ in range(3):
            advance()
    assert "indexing" in terminal.getvalue() and "3/3" in terminal.getvalue()
    assert buffer.getvalue() == "", "no log lines while a bar shows progress"


def test_progress_off_a_terminal_is_a_line_every_n_items_and_one_at_the_end(log_stream):
    buffer = log_stream("INFO")
    with progress(SimpleNamespace(id="r1"), "indexing", total=25, every=10, stream=io.StringIO()) as advance:
        for _ in range(25):
            advance()
    lines = [line.split("newsdesk.progress: ")[1] for line in buffer.getvalue().splitlines()]
    assert lines[:2] == ["indexing: 10/25", "indexing: 20/25"]
    assert len(lines) == 3 and lines[2].startswith("indexing: 25/25 done in ")


def test_progress_with_json_logs_stays_json_even_on_a_terminal(log_stream):
    buffer = log_stream("INFO", json_lines=True)
    terminal = Terminal()
    with progress(SimpleNamespace(id="r9"), "indexing", total=4, every=2, stream=terminal) as advance:
        advance(2)
        advance(2)
    assert terminal.getvalue() == ""
    entries = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert [(e["event"], e["count"], e["run_id"]) for e in entries] == [("progress", 2, "r9"), ("progress_done", 4, "r9")]


def test_indexing_reports_progress_by_items(tmp_path, log_stream):
    buffer = log_stream("INFO")
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    now = datetime.now(timezone.utc)
    with ledger.begin() as connection:
        for n in range(130):
            connection.execute(insert(schema.items).values(
                id=f"item{n:03d}", source="wire", url=f"https://news.example/{n}", canonical_url=f"https://news.example/{n}",
                title=f"Story {n}", summary="", text=f"Body of story {n}.", published=now - timedelta(minutes=n), fetched=now,
                content_hash=f"{n:064d}", og={}, text_origin="feed", state="fetched", updated=now,
            ))

    class Store:
        indexed: list[str] = []

        def index_items(self, items):
            self.indexed.extend(item.id for item in items)
            return len(items)

    store = Store()
    run = SimpleNamespace(id="r1", ledger=ledger, store=store, stop_requested=False,
                          config=load_config(offline_config(tmp_path)))
    assert index_pending(run) == (130, [])
    assert len(store.indexed) == 130
    lines = [line.split("newsdesk.progress: ")[1] for line in buffer.getvalue().splitlines() if "newsdesk.progress" in line]
    assert lines[:2] == ["fetch: indexing items: 64/130", "fetch: indexing items: 128/130"]
    assert len(lines) == 3 and lines[2].startswith("fetch: indexing items: 130/130 done in ")


# --- a planted secret, end to end ---------------------------------------------------------


def ledger_text(url: str) -> str:
    """Every text and JSON value of every table in the ledger, as one string."""
    ledger = Ledger(url, migrate=False)
    parts: list[str] = []
    with ledger.engine.connect() as connection:
        for table in schema.metadata.sorted_tables:
            columns = [c for c in table.columns if isinstance(c.type, (String, Text, JSON))]
            for row in connection.execute(select(*columns)):
                parts.extend(json.dumps(v) if not isinstance(v, str) else v for v in row if v is not None)
        for name in inspect(ledger.engine).get_table_names():
            if name not in schema.metadata.tables:  # the scheduler's job store, alembic's version table
                parts.extend(str(r) for r in connection.exec_driver_sql(f"SELECT * FROM {name}"))
    ledger.close()
    return "\n".join(parts)


def test_planted_secrets_never_reach_output_logs_ledger_or_status(tmp_path):
    openai_key = f"nd-{secrets.token_hex(24)}"  # not sk- shaped: only registration can mask it
    config_key, env_key = fake_private_key(), fake_private_key()
    token_secret, refresh = f"GOCSPX-{secrets.token_urlsafe(20)}", secrets.token_urlsafe(40)
    write_private(tmp_path / "sa.json", service_account(config_key))
    write_private(tmp_path / "token.json", {"refresh_token": refresh, "client_secret": token_secret, "client_id": "x"})
    env_file = write_private(tmp_path / "env-sa.json", service_account(env_key))
    (tmp_path / "feeds").mkdir()
    shutil.copy(FEEDS / "rss_basic.xml", tmp_path / "feeds" / "wire.xml")

    # The provider echoes what it was sent, as some proxies do: the key, and the bearer header.
    rejection = Fault(401, message=f"Incorrect API key provided: {openai_key}. Header was 'Authorization: Bearer {openai_key}'")
    with FakeOpenAIServer(reply=lambda body: rejection) as server:
        config = tmp_path / "config.toml"
        config.write_text(f"""
[[topics]]
name = "markets"
description = "Crypto asset prices, bitcoin and ether trading, exchanges, hacks of exchanges"
keywords = ["bitcoin", "ether", "exchange", "hack"]

[[feeds]]
name = "wire"
url = "feeds/wire.xml"
topics = ["markets"]
full_text = "feed"

[llm]
base_url = "{server.base_url}"
max_retries = 0

[classify]
prefilter_threshold = -1.0

[publishing.google]
credentials_file = "sa.json"
token_file = "token.json"
""", encoding="utf-8")
        env = {"OPENAI_API_KEY": openai_key, "GOOGLE_APPLICATION_CREDENTIALS": str(env_file)}
        once = run_cli("once", "--config", str(config), "--stages", "fetch,classify", "--log-level", "DEBUG", env=env)
        once_json = run_cli("once", "--config", str(config), "--stages", "classify", "--log-level", "DEBUG", "--log-json", env=env)
        status = run_cli("status", "--config", str(config), env=env)

    assert server.chat_requests, "the model was asked, so the key was in play"
    assert server.chat_requests[0].headers["authorization"] == f"Bearer {openai_key}"
    assert once.returncode == 1, once.stdout + once.stderr  # classify could not classify: a failed stage
    assert status.returncode == 0, status.stderr
    ledger = ledger_text(load_config(config).ledger_url)
    assert "Incorrect API key provided: ***" in ledger, "the provider's answer is stored, masked"
    assert "Incorrect API key provided: ***" in once.stderr

    planted = {
        "OPENAI_API_KEY": openai_key,
        "config private key": config_key.splitlines()[4],
        "env private key": env_key.splitlines()[7],
        "client_secret": token_secret,
        "refresh_token": refresh,
    }
    outputs = {
        "once stdout": once.stdout, "once stderr": once.stderr,
        "json stdout": once_json.stdout, "json stderr": once_json.stderr,
        "status": status.stdout + status.stderr, "ledger": ledger,
    }
    leaks = [(what, where) for what, secret in planted.items() for where, text in outputs.items() if secret in text]
    assert leaks == []
