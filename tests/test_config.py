"""A wrong config key, type or value stops the run with one message naming the key and what is allowed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent

GOOD = """
[newsroom]
name = "Test desk"

[[topics]]
name = "markets"
description = "Crypto prices and trading"
keywords = ["bitcoin"]

[[feeds]]
name = "local"
url = "feeds/local.xml"
topics = ["markets"]

[ledger]
url = "sqlite:///data/ledger.sqlite"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_good_config_resolves_relative_paths_against_its_folder(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.feed_location(config.feeds[0]) == str(tmp_path / "feeds" / "local.xml")
    assert config.ledger_url == f"sqlite:///{tmp_path / 'data' / 'ledger.sqlite'}"
    assert config.path(config.store.path) == tmp_path / "data" / "chroma"


@pytest.mark.parametrize(
    "snippet, expected",
    [
        ("[llm]\nmodle = 'x'", ["'llm.modle' is not a known key", "Did you mean 'models'?", "Allowed here:"]),
        ("[limits]\nfetch_timeout_s = 'soon'", ["'limits.fetch_timeout_s' = 'soon'", "valid number"]),
        ("[publishing]\ntarget = 'wordpress'", ["'publishing.target' = 'wordpress'", "'local' or 'google'"]),
        ("[schedule.jobs.nightly]\ncron = '0 3 *'\nstages = ['fetch']", ["'schedule.jobs.nightly.cron'", "5 fields"]),
        ("[schedule.jobs.nightly]\ncron = '0 3 * * *'\nstages = ['bake']", ["'schedule.jobs.nightly.stages[0]' = 'bake'", "'fetch'"]),
        ("[store]\nport = 70000", ["'store.port' = 70000", "less than or equal to 65535"]),
        ("[[feeds]]\nname = 'ftp'\nurl = 'ftp://example.com/rss'", ["'feeds[1].url'", "only http(s) URLs"]),
        ("[[feeds]]\nname = 'x'\nurl = 'x.xml'\ntopics = ['sport']", ["'feeds[1].topics'", "unknown topic(s) ['sport']", "markets"]),
        ("[[feeds]]\nname = 'local'\nurl = 'again.xml'", ["feed names must be unique", "local"]),
        ("[embeding]\nprovider = 'local'", ["'embeding' is not a known key", "Did you mean 'embedding'?"]),
        ("[llm]\nbase_url = 'http://127.0.0.1:188212/v1'", ["'llm.base_url' = 'http://127.0.0.1:188212/v1'", "port must be a number from 1 to 65535, got 188212"]),
        ("[llm]\nbase_url = 'localhost:11434/v1'", ["'llm.base_url'", "must be an http:// or https:// URL"]),
        ("[llm]\nbase_url = 'http:///v1'", ["'llm.base_url'", "no host name"]),
        ("[publishing.google]\napi_endpoint = 'ftp://docs.example/'", ["'publishing.google.api_endpoint'", "http:// or https://"]),
        ("[publishing.google]\ndrive_endpoint = 'https://drive.example:0'", ["'publishing.google.drive_endpoint'", "got 0"]),
        ("[[feeds]]\nname = 'far'\nurl = 'https://far.example:99999/rss'", ["'feeds[1].url'", "got 99999"]),
        ("[store]\nhost = 'http://chroma:8000'", ["'store.host'", "only the Chroma server's host name"]),
    ],
)
def test_mistakes_are_named_with_what_is_allowed(tmp_path, snippet, expected):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, GOOD + "\n" + snippet + "\n"))
    message = str(caught.value)
    assert "nothing was run" in message
    for fragment in expected:
        assert fragment in message


def test_a_port_out_of_range_stops_the_cli_with_one_line_naming_the_key(tmp_path):
    path = write(tmp_path, GOOD + "\n[llm]\nbase_url = 'http://127.0.0.1:188212/v1'\n")
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "check", "--config", str(path)],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "40"})
    assert result.returncode == 2
    assert ("  - 'llm.base_url' = 'http://127.0.0.1:188212/v1': the port must be a number from 1 to 65535, got 188212"
            in result.stdout.splitlines())
    assert not (tmp_path / "data").exists()

    with pytest.raises(ConfigError) as caught:
        parse_config({"ledger": {"url": "postgresql+psycopg://desk:s3cret@db:188212/newsdesk"}}, root=tmp_path)
    assert "'ledger.url' = 'postgresql+psycopg://desk:***@db:188212/newsdesk'" in str(caught.value)
    assert "got 188212" in str(caught.value) and "s3cret" not in str(caught.value)


def test_valid_urls_are_kept(tmp_path):
    config = parse_config({"llm": {"base_url": "http://[::1]:11434/v1"}, "store": {"host": "chroma.internal", "port": 8000},
                           "publishing": {"google": {"api_endpoint": "https://docs.googleapis.com/",
                                                     "drive_endpoint": "https://www.googleapis.com"}},
                           "ledger": {"url": "postgresql+psycopg://desk@db:5432/newsdesk"}}, root=tmp_path)
    assert config.llm.base_url == "http://[::1]:11434/v1" and config.ledger.url.endswith(":5432/newsdesk")


def test_not_toml_and_missing_file_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[llm\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_naming_only_the_writer_model_keeps_the_other_roles(tmp_path):
    config = parse_config({"llm": {"models": {"writer": "ft:gpt-4o-mini:house"}}}, root=tmp_path)
    assert config.llm.models["writer"] == "ft:gpt-4o-mini:house"
    assert config.llm.models["judge"] == "gpt-4o-mini"


def test_secrets_are_not_config_values(tmp_path):
    with pytest.raises(ConfigError, match="'llm.api_key' is not a known key"):
        parse_config({"llm": {"api_key": "sk-live-123"}}, root=tmp_path)


def test_open_credentials_file_warns(tmp_path):
    key = tmp_path / "openai.key"
    key.write_text("sk-test")
    key.chmod(0o644)
    with pytest.warns(UserWarning, match="readable by other users"):
        parse_config({"llm": {"api_key_file": str(key)}}, root=tmp_path)
    key.chmod(0o600)
    parse_config({"llm": {"api_key_file": str(key)}}, root=tmp_path)


def test_cli_stops_before_doing_anything_on_a_bad_key(tmp_path):
    path = write(tmp_path, GOOD + "\n[limits]\nfetch_timout_s = 3\n")
    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "fetch", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "'limits.fetch_timout_s' is not a known key" in result.stdout
    assert not (tmp_path / "data").exists(), "nothing may be created when the config is wrong"


def test_shipped_configs_are_valid():
    for path in (ROOT / "config.toml", ROOT / "examples" / "config.toml"):
        if path.exists():
            load_config(path)
