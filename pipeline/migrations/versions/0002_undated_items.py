"""items and stories say whether they carry a real publication date

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 18:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('items', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dated', sa.Boolean(), server_default=sa.true(), nullable=False))
    with op.batch_alter_table('stories', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dated', sa.Boolean(), server_default=sa.true(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('stories', schema=None) as batch_op:
        batch_op.drop_column('dated')
    with op.batch_alter_table('items', schema=None) as batch_op:
        batch_op.drop_column('dated')
