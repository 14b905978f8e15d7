"""SQLAlchemy 2 models of the preference log (DESIGN.md "The log").

Times are stored as naive UTC (`UTCDateTime`) so that SQLite and PostgreSQL compare them the same way.
Votes are append-only: a row is never deleted and its choice never changes; an undo sets `retracted`
(and `retracted_at`) on the row, which every reader and every count honours.
"""
from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# queued: submitted (`dreamdpo submit`), waiting for a worker to claim it (db/run_queue.py)
RUN_STATUSES = ("queued", "pending", "running", "paused", "cancelled", "finished", "failed")
CRITERION_CHOICES = ("a", "b", "tie")
PAIR_STATUSES = ("pending", "decided", "expired", "cancelled", "indistinct")
PAIR_KINDS = ("live", "audit", "gold", "duplicate", "arena")
CHOICES = ("a", "b", "tie", "both_bad", "skip")
WINNERS = ("a", "b", "tie")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def int_or_none(v) -> int | None:
    """A column value as a plain int (numpy and torch integers included); None stays None."""
    return None if v is None else int(v)


def float_or_none(v) -> float | None:
    """A column value as a plain float; None stays None."""
    return None if v is None else float(v)


class UTCDateTime(sa.types.TypeDecorator):
    """Aware datetimes in Python, naive UTC in the database (same on SQLite and PostgreSQL)."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    pass


class Annotator(Base):
    __tablename__ = "annotators"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    role: Mapped[str] = mapped_column(sa.String(20), default="annotator")
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    active: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    __table_args__ = (sa.CheckConstraint("role IN ('annotator', 'admin')", name="ck_annotators_role"),)


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str | None] = mapped_column(sa.String(200))
    prompt: Mapped[str] = mapped_column(sa.Text)
    question: Mapped[str | None] = mapped_column(sa.Text)
    config: Mapped[dict | None] = mapped_column(sa.JSON)
    backbone: Mapped[str] = mapped_column(sa.String(200), default="")
    judge_policy: Mapped[dict | None] = mapped_column(sa.JSON)
    status: Mapped[str] = mapped_column(sa.String(20), default="pending")
    step: Mapped[int] = mapped_column(sa.Integer, default=0)
    metrics: Mapped[dict | None] = mapped_column(sa.JSON)
    # what --resume checks: sha256 of (prompt, config without run-local keys, out dir)
    fingerprint: Mapped[str | None] = mapped_column(sa.String(64))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the optimizer's last sign of life
    # the queue (issue "Beyond one machine"): higher priority is claimed first; `worker` names the worker
    # process holding the run (None while queued); `attempts` counts claims (a dead worker's run is
    # claimed again); `storage` is the fsspec URL of the run's folder (checkpoints and outputs)
    priority: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    worker: Mapped[str | None] = mapped_column(sa.String(200))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    storage: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    __table_args__ = (sa.CheckConstraint(f"status IN ({', '.join(repr(s) for s in RUN_STATUSES)})",
                                         name="ck_runs_status"),
                      sa.Index("ix_runs_status_priority", "status", "priority", "id"))


class Worker(Base):
    """A `dreamdpo worker` process (one per GPU): its heartbeat says it is alive; a run it holds whose
    worker has not beaten for the dead-after interval goes back to the queue."""

    __tablename__ = "workers"
    name: Mapped[str] = mapped_column(sa.String(200), primary_key=True)  # host:pid:device, unique
    host: Mapped[str] = mapped_column(sa.String(200), default="")
    device: Mapped[str] = mapped_column(sa.String(40), default="cpu")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    run_id: Mapped[int | None] = mapped_column(sa.ForeignKey("runs.id"))  # the run it holds now


class Image(Base):
    __tablename__ = "images"
    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)  # sha256 hex of the PNG bytes
    png: Mapped[bytes] = mapped_column(sa.LargeBinary)
    width: Mapped[int] = mapped_column(sa.Integer)
    height: Mapped[int] = mapped_column(sa.Integer)


class Pair(Base):
    __tablename__ = "pairs"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("runs.id"), index=True)
    # an arena pair compares two finished runs: image_a is run_id's, image_b is run_b_id's
    run_b_id: Mapped[int | None] = mapped_column(sa.ForeignKey("runs.id"))
    step: Mapped[int] = mapped_column(sa.Integer)
    view: Mapped[int] = mapped_column(sa.Integer, default=-1)
    t: Mapped[int | None] = mapped_column(sa.Integer)
    t_b: Mapped[int | None] = mapped_column(sa.Integer)
    seed_a: Mapped[int | None] = mapped_column(sa.BigInteger)
    seed_b: Mapped[int | None] = mapped_column(sa.BigInteger)
    camera: Mapped[list | None] = mapped_column(sa.JSON)
    image_a: Mapped[str] = mapped_column(sa.ForeignKey("images.id"))
    image_b: Mapped[str] = mapped_column(sa.ForeignKey("images.id"))
    render_image: Mapped[str | None] = mapped_column(sa.ForeignKey("images.id"))
    question: Mapped[str | None] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.String(20), default="pending")
    votes_needed: Mapped[int] = mapped_column(sa.Integer, default=1)
    kind: Mapped[str] = mapped_column(sa.String(20), default="live")
    gold_answer: Mapped[str | None] = mapped_column(sa.String(20))
    duplicate_of: Mapped[int | None] = mapped_column(sa.ForeignKey("pairs.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deadline: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # mean absolute pixel difference of the two candidates' PNGs in [0, 1]; status 'indistinct' when a
    # person could not tell them apart (never shown, never a vote, never exported as a labelled row)
    distance: Mapped[float | None] = mapped_column(sa.Float)
    __table_args__ = (
        sa.CheckConstraint(f"status IN ({', '.join(repr(s) for s in PAIR_STATUSES)})", name="ck_pairs_status"),
        sa.CheckConstraint(f"kind IN ({', '.join(repr(s) for s in PAIR_KINDS)})", name="ck_pairs_kind"),
        sa.CheckConstraint("votes_needed >= 1", name="ck_pairs_votes_needed"),
        sa.Index("ix_pairs_status_id", "status", "id"),
    )


class Vote(Base):
    __tablename__ = "votes"
    id: Mapped[int] = mapped_column(primary_key=True)
    pair_id: Mapped[int] = mapped_column(sa.ForeignKey("pairs.id"), index=True)
    annotator_id: Mapped[int | None] = mapped_column(sa.ForeignKey("annotators.id"))
    judge_name: Mapped[str | None] = mapped_column(sa.String(200))
    choice: Mapped[str] = mapped_column(sa.String(20))
    score_a: Mapped[float | None] = mapped_column(sa.Float)
    score_b: Mapped[float | None] = mapped_column(sa.Float)
    shown_left: Mapped[str | None] = mapped_column(sa.String(1))
    latency_ms: Mapped[int | None] = mapped_column(sa.Integer)
    # a model judge's raw answer; a person's skip: their optional reason (db.votes.skip_reason)
    raw: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    retracted: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    retracted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    __table_args__ = (
        sa.CheckConstraint(f"choice IN ({', '.join(repr(s) for s in CHOICES)})", name="ck_votes_choice"),
        sa.CheckConstraint("shown_left IS NULL OR shown_left IN ('a', 'b')", name="ck_votes_shown_left"),
        sa.CheckConstraint("(annotator_id IS NULL) <> (judge_name IS NULL)", name="ck_votes_one_voter"),
        # one standing (not retracted) vote per person and pair: what makes vote() idempotent under races
        sa.Index("ux_votes_standing", "pair_id", "annotator_id", unique=True,
                 sqlite_where=sa.text("annotator_id IS NOT NULL AND NOT retracted"),
                 postgresql_where=sa.text("annotator_id IS NOT NULL AND NOT retracted")),
        sa.Index("ix_votes_annotator", "annotator_id", "pair_id"),
    )


class VoteCriterion(Base):
    """An optional per-criterion verdict given with a vote (an arena vote's GPTEval3D-like criteria:
    db/criteria.py). In the pair's a/b terms, like the vote itself."""

    __tablename__ = "vote_criteria"
    vote_id: Mapped[int] = mapped_column(sa.ForeignKey("votes.id"), primary_key=True)
    criterion: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    choice: Mapped[str] = mapped_column(sa.String(10))
    __table_args__ = (sa.CheckConstraint(f"choice IN ({', '.join(repr(c) for c in CRITERION_CHOICES)})",
                                         name="ck_vote_criteria_choice"),)


class Claim(Base):
    """A lease: annotator may vote on pair until expires_at. Kept after the vote (undo needs it)."""

    __tablename__ = "claims"
    pair_id: Mapped[int] = mapped_column(sa.ForeignKey("pairs.id"), primary_key=True)
    annotator_id: Mapped[int] = mapped_column(sa.ForeignKey("annotators.id"), primary_key=True)
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (sa.Index("ix_claims_annotator", "annotator_id", "expires_at"),)


class Decision(Base):
    __tablename__ = "decisions"
    pair_id: Mapped[int] = mapped_column(sa.ForeignKey("pairs.id"), primary_key=True)  # written once
    winner: Mapped[str] = mapped_column(sa.String(10))
    gap: Mapped[float] = mapped_column(sa.Float)
    rule: Mapped[str] = mapped_column(sa.String(200))
    n_a: Mapped[int] = mapped_column(sa.Integer, default=0)
    n_b: Mapped[int] = mapped_column(sa.Integer, default=0)
    n_tie: Mapped[int] = mapped_column(sa.Integer, default=0)
    n_both_bad: Mapped[int] = mapped_column(sa.Integer, default=0)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    __table_args__ = (sa.CheckConstraint("winner IN ('a', 'b', 'tie')", name="ck_decisions_winner"),)
