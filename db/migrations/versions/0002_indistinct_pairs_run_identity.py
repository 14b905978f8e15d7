"""indistinct pairs (status + pixel distance) and run identity (fingerprint, heartbeat)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

OLD_PAIR_STATUSES = "status IN ('pending', 'decided', 'expired', 'cancelled')"
NEW_PAIR_STATUSES = "status IN ('pending', 'decided', 'expired', 'cancelled', 'indistinct')"


def upgrade() -> None:
    with op.batch_alter_table('pairs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('distance', sa.Float(), nullable=True))
        batch_op.drop_constraint('ck_pairs_status', type_='check')
        batch_op.create_check_constraint('ck_pairs_status', NEW_PAIR_STATUSES)
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fingerprint', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('heartbeat_at')
        batch_op.drop_column('fingerprint')
    with op.batch_alter_table('pairs', schema=None) as batch_op:
        batch_op.drop_constraint('ck_pairs_status', type_='check')
        batch_op.create_check_constraint('ck_pairs_status', OLD_PAIR_STATUSES)
        batch_op.drop_column('distance')
