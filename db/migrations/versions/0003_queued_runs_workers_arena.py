"""queued runs and workers; arena pairs across two runs; per-criterion verdicts of a vote

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

OLD_RUN_STATUSES = "status IN ('pending', 'running', 'paused', 'cancelled', 'finished', 'failed')"
NEW_RUN_STATUSES = "status IN ('queued', 'pending', 'running', 'paused', 'cancelled', 'finished', 'failed')"


def upgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('priority', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('worker', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('claimed_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('storage', sa.Text(), nullable=True))
        batch_op.drop_constraint('ck_runs_status', type_='check')
        batch_op.create_check_constraint('ck_runs_status', NEW_RUN_STATUSES)
        batch_op.create_index('ix_runs_status_priority', ['status', 'priority', 'id'], unique=False)
    op.create_table('workers',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('host', sa.String(length=200), nullable=False),
    sa.Column('device', sa.String(length=40), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(), nullable=False),
    sa.Column('stopped_at', sa.DateTime(), nullable=True),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ),
    sa.PrimaryKeyConstraint('name')
    )
    with op.batch_alter_table('pairs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('run_b_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key('fk_pairs_run_b_id_runs', 'runs', ['run_b_id'], ['id'])
    op.create_table('vote_criteria',
    sa.Column('vote_id', sa.Integer(), nullable=False),
    sa.Column('criterion', sa.String(length=40), nullable=False),
    sa.Column('choice', sa.String(length=10), nullable=False),
    sa.CheckConstraint("choice IN ('a', 'b', 'tie')", name='ck_vote_criteria_choice'),
    sa.ForeignKeyConstraint(['vote_id'], ['votes.id'], ),
    sa.PrimaryKeyConstraint('vote_id', 'criterion')
    )


def downgrade() -> None:
    op.drop_table('vote_criteria')
    with op.batch_alter_table('pairs', schema=None) as batch_op:
        batch_op.drop_constraint('fk_pairs_run_b_id_runs', type_='foreignkey')
        batch_op.drop_column('run_b_id')
    op.drop_table('workers')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index('ix_runs_status_priority')
        batch_op.drop_constraint('ck_runs_status', type_='check')
        batch_op.create_check_constraint('ck_runs_status', OLD_RUN_STATUSES)
        batch_op.drop_column('storage')
        batch_op.drop_column('attempts')
        batch_op.drop_column('claimed_at')
        batch_op.drop_column('worker')
        batch_op.drop_column('priority')
