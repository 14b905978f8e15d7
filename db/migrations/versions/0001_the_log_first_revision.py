"""the log: first revision

Revision ID: 0001
Revises: 
Create Date: 2026-11-24
"""
import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    
    op.create_table('annotators',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('role', sa.String(length=20), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.CheckConstraint("role IN ('annotator', 'admin')", name='ck_annotators_role'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name'),
    sa.UniqueConstraint('token_hash')
    )
    op.create_table('images',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('png', sa.LargeBinary(), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('prompt', sa.Text(), nullable=False),
    sa.Column('question', sa.Text(), nullable=True),
    sa.Column('config', sa.JSON(), nullable=True),
    sa.Column('backbone', sa.String(length=200), nullable=False),
    sa.Column('judge_policy', sa.JSON(), nullable=True),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.CheckConstraint("status IN ('pending', 'running', 'paused', 'cancelled', 'finished', 'failed')", name='ck_runs_status'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('pairs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('view', sa.Integer(), nullable=False),
    sa.Column('t', sa.Integer(), nullable=True),
    sa.Column('t_b', sa.Integer(), nullable=True),
    sa.Column('seed_a', sa.BigInteger(), nullable=True),
    sa.Column('seed_b', sa.BigInteger(), nullable=True),
    sa.Column('camera', sa.JSON(), nullable=True),
    sa.Column('image_a', sa.String(length=64), nullable=False),
    sa.Column('image_b', sa.String(length=64), nullable=False),
    sa.Column('render_image', sa.String(length=64), nullable=True),
    sa.Column('question', sa.Text(), nullable=True),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('votes_needed', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('gold_answer', sa.String(length=20), nullable=True),
    sa.Column('duplicate_of', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('deadline', sa.DateTime(), nullable=True),
    sa.CheckConstraint("kind IN ('live', 'audit', 'gold', 'duplicate', 'arena')", name='ck_pairs_kind'),
    sa.CheckConstraint("status IN ('pending', 'decided', 'expired', 'cancelled')", name='ck_pairs_status'),
    sa.CheckConstraint('votes_needed >= 1', name='ck_pairs_votes_needed'),
    sa.ForeignKeyConstraint(['duplicate_of'], ['pairs.id'], ),
    sa.ForeignKeyConstraint(['image_a'], ['images.id'], ),
    sa.ForeignKeyConstraint(['image_b'], ['images.id'], ),
    sa.ForeignKeyConstraint(['render_image'], ['images.id'], ),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('pairs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pairs_run_id'), ['run_id'], unique=False)
        batch_op.create_index('ix_pairs_status_id', ['status', 'id'], unique=False)

    op.create_table('claims',
    sa.Column('pair_id', sa.Integer(), nullable=False),
    sa.Column('annotator_id', sa.Integer(), nullable=False),
    sa.Column('claimed_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['annotator_id'], ['annotators.id'], ),
    sa.ForeignKeyConstraint(['pair_id'], ['pairs.id'], ),
    sa.PrimaryKeyConstraint('pair_id', 'annotator_id')
    )
    with op.batch_alter_table('claims', schema=None) as batch_op:
        batch_op.create_index('ix_claims_annotator', ['annotator_id', 'expires_at'], unique=False)

    op.create_table('decisions',
    sa.Column('pair_id', sa.Integer(), nullable=False),
    sa.Column('winner', sa.String(length=10), nullable=False),
    sa.Column('gap', sa.Float(), nullable=False),
    sa.Column('rule', sa.String(length=200), nullable=False),
    sa.Column('n_a', sa.Integer(), nullable=False),
    sa.Column('n_b', sa.Integer(), nullable=False),
    sa.Column('n_tie', sa.Integer(), nullable=False),
    sa.Column('n_both_bad', sa.Integer(), nullable=False),
    sa.Column('decided_at', sa.DateTime(), nullable=False),
    sa.CheckConstraint("winner IN ('a', 'b', 'tie')", name='ck_decisions_winner'),
    sa.ForeignKeyConstraint(['pair_id'], ['pairs.id'], ),
    sa.PrimaryKeyConstraint('pair_id')
    )
    op.create_table('votes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('pair_id', sa.Integer(), nullable=False),
    sa.Column('annotator_id', sa.Integer(), nullable=True),
    sa.Column('judge_name', sa.String(length=200), nullable=True),
    sa.Column('choice', sa.String(length=20), nullable=False),
    sa.Column('score_a', sa.Float(), nullable=True),
    sa.Column('score_b', sa.Float(), nullable=True),
    sa.Column('shown_left', sa.String(length=1), nullable=True),
    sa.Column('latency_ms', sa.Integer(), nullable=True),
    sa.Column('raw', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('retracted', sa.Boolean(), nullable=False),
    sa.Column('retracted_at', sa.DateTime(), nullable=True),
    sa.CheckConstraint("choice IN ('a', 'b', 'tie', 'both_bad', 'skip')", name='ck_votes_choice'),
    sa.CheckConstraint("shown_left IS NULL OR shown_left IN ('a', 'b')", name='ck_votes_shown_left'),
    sa.CheckConstraint('(annotator_id IS NULL) <> (judge_name IS NULL)', name='ck_votes_one_voter'),
    sa.ForeignKeyConstraint(['annotator_id'], ['annotators.id'], ),
    sa.ForeignKeyConstraint(['pair_id'], ['pairs.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('votes', schema=None) as batch_op:
        batch_op.create_index('ix_votes_annotator', ['annotator_id', 'pair_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_votes_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_votes_pair_id'), ['pair_id'], unique=False)
        batch_op.create_index('ux_votes_standing', ['pair_id', 'annotator_id'], unique=True, sqlite_where=sa.text('annotator_id IS NOT NULL AND NOT retracted'), postgresql_where=sa.text('annotator_id IS NOT NULL AND NOT retracted'))

    


def downgrade() -> None:
    
    with op.batch_alter_table('votes', schema=None) as batch_op:
        batch_op.drop_index('ux_votes_standing', sqlite_where=sa.text('annotator_id IS NOT NULL AND NOT retracted'), postgresql_where=sa.text('annotator_id IS NOT NULL AND NOT retracted'))
        batch_op.drop_index(batch_op.f('ix_votes_pair_id'))
        batch_op.drop_index(batch_op.f('ix_votes_created_at'))
        batch_op.drop_index('ix_votes_annotator')

    op.drop_table('votes')
    op.drop_table('decisions')
    with op.batch_alter_table('claims', schema=None) as batch_op:
        batch_op.drop_index('ix_claims_annotator')

    op.drop_table('claims')
    with op.batch_alter_table('pairs', schema=None) as batch_op:
        batch_op.drop_index('ix_pairs_status_id')
        batch_op.drop_index(batch_op.f('ix_pairs_run_id'))

    op.drop_table('pairs')
    op.drop_table('runs')
    op.drop_table('images')
    op.drop_table('annotators')
    
