"""editors' replies and comments read back from documents (corrections); what approved each draft (approved_by)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 08:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.add_column(sa.Column('approved_by', sa.String(length=32), nullable=True))
    op.create_table(
        'corrections',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('draft_id', sa.String(length=64), nullable=False),
        sa.Column('doc_id', sa.Text(), nullable=False),
        sa.Column('comment_id', sa.String(length=200), nullable=False),
        sa.Column('post_id', sa.String(length=200), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('author', sa.Text(), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('quote', sa.Text(), nullable=False),
        sa.Column('claim_key', sa.String(length=16), nullable=True),
        sa.Column('resolved', sa.Boolean(), nullable=False),
        sa.Column('created', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_corrections_draft_id', 'corrections', ['draft_id'], unique=False)
    op.create_index('ix_corrections_created', 'corrections', ['created'], unique=False)
    op.create_index('ux_corrections_post', 'corrections', ['doc_id', 'comment_id', 'post_id'], unique=True)


def downgrade() -> None:
    op.drop_index('ux_corrections_post', table_name='corrections')
    op.drop_index('ix_corrections_created', table_name='corrections')
    op.drop_index('ix_corrections_draft_id', table_name='corrections')
    op.drop_table('corrections')
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.drop_column('approved_by')
