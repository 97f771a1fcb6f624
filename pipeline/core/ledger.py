"""The ledger: all pipeline state in SQL (SQLite by default, Postgres by URL).

Stages read the rows in their input state and move them on, so a run that was
stopped anywhere resumes where it left off. Schema changes reach the database
only through the Alembic migrations next to this module.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, Engine, create_engine, event, insert, select, update
from sqlalchemy.exc import OperationalError

from pipeline.core import schema
from pipeline.core.models import Item
from pipeline.core.schema import metadata

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"


class LedgerError(Exception):
    """The ledger database cannot be used; the message says why."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; everything in the ledger is UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def stable_hash(*parts: Any) -> str:
    payload = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def alembic_config(connection: Connection) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


class Ledger:
    def __init__(self, url: str, busy_timeout_s: float = 10.0, migrate: bool = True) -> None:
        self.url = url
        self.busy_timeout_s = busy_timeout_s
        self.engine = make_engine(url, busy_timeout_s)
        if migrate:
            self.migrate()

    @classmethod
    def from_config(cls, config) -> Ledger:
        return cls(config.ledger_url, config.ledger.busy_timeout_s)

    def migrate(self) -> None:
        try:
            with self.engine.begin() as connection:
                command.upgrade(alembic_config(connection), "head")
        except OperationalError as exc:
            raise LedgerError(f"cannot open the ledger at {redact_url(self.url)}: {exc.orig}") from None

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """One transaction: everything in it lands together or not at all."""
        with self.engine.begin() as connection:
            yield connection

    def close(self) -> None:
        self.engine.dispose()

    # --- small shared helpers -------------------------------------------------

    def get_setting(self, key: str, default: Any = None) -> Any:
        with self.engine.connect() as connection:
            row = connection.execute(select(schema.settings.c.value).where(schema.settings.c.key == key)).first()
        return default if row is None else row[0]

    def set_setting(self, key: str, value: Any) -> None:
        with self.begin() as connection:
            changed = connection.execute(
                update(schema.settings).where(schema.settings.c.key == key).values(value=value, updated=utcnow())
            ).rowcount
            if not changed:
                connection.execute(insert(schema.settings).values(key=key, value=value, updated=utcnow()))


def conflict_insert(connection: Connection, table):
    """An INSERT into `table` that takes ON CONFLICT clauses (PostgreSQL, SQLite); None on another database,
    whose callers fall back to statements that every database has."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:
        return None
    return dialect_insert(table)


def make_engine(url: str, busy_timeout_s: float = 10.0) -> Engine:
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": busy_timeout_s})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:
            # WAL lets readers (status) run beside a writer; busy_timeout bounds lock waits.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def describe_operational_error(exc: OperationalError, url: str, busy_timeout_s: float | None = None) -> str:
    """A ledger failure in the words an operator acts on: busy (another process writes), full disk, or as is."""
    reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    where = redact_url(url)
    if "locked" in reason.lower() or "busy" in reason.lower():
        waited = f"waited ledger.busy_timeout_s = {busy_timeout_s:g}s; " if busy_timeout_s is not None else ""
        return f"the ledger at {where} is busy: another process holds its write lock ({waited}try again when it is done)"
    if "full" in reason.lower():
        return f"cannot write the ledger at {where}: the disk is full ({reason}); nothing was half-written, free space and run again"
    return f"the ledger at {where} failed: {reason}"


def redact_url(url: str) -> str:
    """A database URL without its password, fit for messages and logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


__all__ = ["Ledger", "LedgerError", "metadata", "schema", "as_utc", "stable_hash", "utcnow", "redact_url"]


def row_to_item(row) -> Item:
    """An `items` row as the typed record the stages pass on."""
    data = dict(row._mapping)
    for key in ("published", "fetched"):
        data[key] = as_utc(data[key])
    fields = Item.model_fields
    return Item.model_validate({k: v for k, v in data.items() if k in fields and v is not None})
