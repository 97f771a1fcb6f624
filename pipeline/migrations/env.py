"""Alembic environment: runs migrations on the connection the ledger hands it."""

from alembic import context

from pipeline.core.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("newsdesk migrations run through pipeline.core.ledger.migrate(), which passes a connection")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
