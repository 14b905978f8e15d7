"""Pairs of the log: posting one (for people, or as a record of a step), locking one before its leases,
votes or decision change, and expiry (a deadline passed, a run that stopped waiting, a skipped live
pair nobody else can take). Every write is one short transaction (`with Session(engine) as s, s.begin():`).

Concurrency: a pair's row is locked (`FOR UPDATE`, `lock_pair`) before its leases, votes or decision
change, and counts are re-read after the lock, so every rule of db/queue.py and db/votes.py holds under
any interleaving. On SQLite the same statements run inside `BEGIN IMMEDIATE` (db.engine), which
serializes writers; FOR UPDATE is not emitted there.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from db.errors import LogError, RunCancelled
from db.images import put_image
from db.models import PAIR_KINDS, Pair, Run, float_or_none, int_or_none, utcnow


def post_pair(engine: sa.Engine, run_id: int, step: int, image_a: bytes, image_b: bytes, *,
              render_image: bytes | None = None, view: int = -1, t: int | None = None, t_b: int | None = None,
              seed_a: int | None = None, seed_b: int | None = None, cameras: list | None = None,
              votes_needed: int = 1, deadline: datetime | None = None, kind: str = "live",
              gold_answer: str | None = None, duplicate_of: int | None = None, question: str | None = None,
              status: str = "pending", distance: float | None = None) -> int:
    """Post a pair for people (or, with status 'decided', a record; 'indistinct', a pair whose candidates
    nobody could tell apart, kept only as a record of the step). Images are PNG bytes."""
    with Session(engine) as s, s.begin():
        return insert_pair(s, run_id, step, image_a, image_b, render_image=render_image, view=view, t=t, t_b=t_b,
                           seed_a=seed_a, seed_b=seed_b, cameras=cameras, votes_needed=votes_needed,
                           deadline=deadline, kind=kind, gold_answer=gold_answer, duplicate_of=duplicate_of,
                           question=question, status=status, distance=distance)


def insert_pair(s: Session, run_id: int, step: int, image_a: bytes, image_b: bytes, *,
                render_image: bytes | None = None, view: int = -1, t: int | None = None, t_b: int | None = None,
                seed_a: int | None = None, seed_b: int | None = None, cameras: list | None = None,
                votes_needed: int = 1, deadline: datetime | None = None, kind: str = "live",
                gold_answer: str | None = None, duplicate_of: int | None = None, question: str | None = None,
                status: str = "pending", distance: float | None = None) -> int:
    """post_pair inside the caller's transaction; returns the new pair's id."""
    if kind not in PAIR_KINDS:
        raise LogError(f"pair kind {kind!r} is not one of {', '.join(PAIR_KINDS)}")
    if not isinstance(votes_needed, int) or votes_needed < 1:
        raise LogError(f"votes_needed must be a whole number ≥ 1, not {votes_needed!r}")
    if status not in ("pending", "decided", "indistinct"):
        raise LogError(f"a pair is posted as pending, decided or indistinct, not {status!r}")
    if gold_answer is not None and gold_answer not in ("a", "b", "tie", "both_bad"):
        raise LogError(f"gold answer {gold_answer!r} is not one of a, b, tie, both_bad")
    run = s.get(Run, run_id)
    if run is None:
        raise LogError(f"run {run_id} does not exist; create it first")
    if run.status == "cancelled" and status == "pending":
        raise RunCancelled(f"run {run_id} was cancelled; it takes no new pairs")
    if deadline is not None and deadline.tzinfo is None:
        deadline = deadline.replace(tzinfo=timezone.utc)
    pair = Pair(run_id=run_id, step=int(step), view=int(view), t=int_or_none(t), t_b=int_or_none(t_b),
                seed_a=int_or_none(seed_a), seed_b=int_or_none(seed_b), camera=cameras,
                image_a=put_image(s, image_a), image_b=put_image(s, image_b),
                render_image=None if render_image is None else put_image(s, render_image), question=question,
                status=status, votes_needed=votes_needed, kind=kind, gold_answer=gold_answer,
                duplicate_of=duplicate_of, deadline=deadline, distance=float_or_none(distance))
    s.add(pair)
    s.flush()
    return pair.id


def lock_pair(s: Session, pair_id: int) -> Pair:
    """The pair's row, locked for the rest of the transaction and read afresh."""
    pair = s.get(Pair, pair_id, with_for_update=True, populate_existing=True)
    if pair is None:
        raise LogError(f"pair {pair_id} does not exist")
    return pair


def _rows_changed(s: Session, stmt: sa.Update) -> int:
    """Run an UPDATE; returns how many rows it changed (an UPDATE's result is a CursorResult)."""
    return int(cast("CursorResult[Any]", s.execute(stmt)).rowcount or 0)


def expire_waiting(engine: sa.Engine, run_id: int) -> int:
    """The run's pairs still waiting for people become expired (the run ended or stopped waiting:
    nobody should vote on them for nothing); returns how many."""
    with Session(engine) as s, s.begin():
        return _rows_changed(s, sa.update(Pair).where(Pair.run_id == run_id, Pair.status == "pending",
                                                      Pair.kind == "live").values(status="expired"))


def expire_pair(engine: sa.Engine, pair_id: int) -> bool:
    """A skipped live pair nobody else can take: expired at once, so the waiting run falls back now."""
    with Session(engine) as s, s.begin():
        return bool(_rows_changed(s, sa.update(Pair).where(Pair.id == pair_id, Pair.status == "pending",
                                                           Pair.kind == "live").values(status="expired",
                                                                                       deadline=utcnow())))


def expire_stale(engine: sa.Engine, now: datetime | None = None) -> int:
    """Pending pairs past their deadline become expired; returns how many."""
    now = now or utcnow()
    with Session(engine) as s, s.begin():
        return _rows_changed(s, sa.update(Pair).where(Pair.status == "pending", Pair.deadline.is_not(None),
                                                      Pair.deadline <= now).values(status="expired"))
