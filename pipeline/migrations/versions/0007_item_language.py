"""items carry the language detected at ingest (drafts are written in newsroom.language)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 08:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows stored before detection existed are "und" (unknown): their sentences are still checked one by one.
    with op.batch_alter_table('items', schema=None) as batch_op:
        batch_op.add_column(sa.Column('language', sa.String(length=35), server_default='und', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('items', schema=None) as batch_op:
        batch_op.drop_column('language')
