"""slots: a counting semaphore in the ledger, so llm.concurrency holds across all workers together

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 08:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('slots',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('slot', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('owner', sa.String(length=200), nullable=True),
    sa.Column('leased_until', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('name', 'slot')
    )


def downgrade() -> None:
    op.drop_table('slots')
