"""Logging: one line per stage event, optionally as JSON, with secrets redacted everywhere.

Redaction works on the final text of every record, so a secret that reaches a
log through an exception message or a library's debug line is still masked.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("newsdesk")

# Shapes of credentials that must never be printed, whatever carries them.
SECRET_PATTERNS = [
    re.compile(r"sk-[A-Za-z0-9_\-]{16,}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-~+/]{12,}=*"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
    re.compile(r"ya29\.[A-Za-z0-9._\-]{10,}"),
    re.compile(r'(?i)("?(?:api[_-]?key|access_token|refresh_token|client_secret|password)"?\s*[:=]\s*"?)[^\s",}]{6,}'),
]
_known_secrets: set[str] = set()
MASK = "***"


def register_secret(value: str | None) -> None:
    """Mask this exact value wherever it appears from now on (keys read from env or files)."""
    if value and len(value) >= 6:
        _known_secrets.add(value)


def register_env_secrets(names: list[str]) -> None:
    for name in names:
        register_secret(os.environ.get(name))


# Fields of Google service-account keys, OAuth client files and authorized-user
# tokens (and similar JSON credentials) whose values are secret.
CREDENTIAL_FIELDS = ("private_key", "private_key_id", "client_secret", "refresh_token", "access_token", "token", "api_key", "password")


def register_credentials_file(path: str | os.PathLike | None) -> None:
    """Mask the secret values of a JSON credentials file (Google keys, OAuth clients, tokens).

    A private key is also masked line by line, so a fragment or a JSON-escaped
    copy (newlines as \\n) never shows. A missing or unreadable file is no
    error here: the code that uses it reports that.
    """
    if not path:
        return
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    for value in _credential_values(data):
        register_secret(value)
        for line in value.splitlines():
            if "PRIVATE KEY" not in line and len(line.strip()) >= 16:
                register_secret(line.strip())


def _credential_values(data) -> list[str]:
    if isinstance(data, dict):
        found = [v for k, v in data.items() if k in CREDENTIAL_FIELDS and isinstance(v, str)]
        for value in data.values():
            found.extend(_credential_values(value))  # OAuth client files nest under "installed" or "web"
        return found
    if isinstance(data, list):
        return [v for item in data for v in _credential_values(item)]
    return []


def redact(text: str) -> str:
    for secret in sorted(_known_secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    for pattern in SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() and m.group(1) else "") + MASK, text)
    return text


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("run_id", "stage", "event", "source", "count", "duration_s", "error"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the moment, so a rich progress bar that redirects
    stderr prints log lines above the bar instead of through it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def log_failure(logger: logging.Logger, what: str):
    """A done-callback for a future whose work is only a head start (a warm-up, an embedding done ahead): its failure
    is logged as a warning with `what` failed, never raised; whoever needs the work does it again."""

    def done(future) -> None:
        if not future.cancelled() and future.exception() is not None:
            logger.warning("%s failed: %s", what, future.exception())

    return done


def setup_logging(level: str = "INFO", json_lines: bool = False, stream=None) -> None:
    handler = logging.StreamHandler(stream) if stream is not None else StderrHandler()
    handler.setFormatter(JsonFormatter() if json_lines else RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # Client libraries log request details at INFO; keep them quiet unless debugging.
    for noisy in ("httpx", "httpcore", "openai", "chromadb", "googleapiclient", "apscheduler", "alembic", "trafilatura"):
        logging.getLogger(noisy).setLevel(logging.WARNING if level != "DEBUG" else logging.DEBUG)
