"""drafts and approvals carry publishing metadata: slug, meta description, tags, suggested image

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 08:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: drafts written before this get their metadata when they are published.
    with op.batch_alter_table('drafts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('meta', sa.JSON(), nullable=True))
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.add_column(sa.Column('meta', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.drop_column('meta')
    with op.batch_alter_table('drafts', schema=None) as batch_op:
        batch_op.drop_column('meta')
