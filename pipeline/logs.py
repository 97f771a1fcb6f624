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


def setup_logging(level: str = "INFO", json_lines: bool = False, stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # Client libraries log request details at INFO; keep them quiet unless debugging.
    for noisy in ("httpx", "httpcore", "openai", "chromadb", "googleapiclient", "apscheduler", "alembic", "trafilatura"):
        logging.getLogger(noisy).setLevel(logging.WARNING if level != "DEBUG" else logging.DEBUG)
