"""The ledger is migrated by Alembic and matches the schema the code queries."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from pipeline.core.ledger import Ledger, redact_url
from pipeline.core.schema import metadata


def test_migrations_build_exactly_the_schema_the_code_uses(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    with ledger.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), metadata)
    assert diff == [], f"schema.py and the migrations disagree; add a migration: {diff}"


def test_reopening_is_idempotent_and_keeps_data(tmp_path):
    url = f"sqlite:///{tmp_path / 'sub' / 'ledger.sqlite'}"
    Ledger(url).set_setting("writer_model", "ft:house")
    again = Ledger(url)
    assert again.get_setting("writer_model") == "ft:house"
    assert "items" in inspect(again.engine).get_table_names()


def test_database_passwords_never_reach_messages():
    assert redact_url("postgresql://news:s3cret@db:5432/newsdesk") == "postgresql://news:***@db:5432/newsdesk"
