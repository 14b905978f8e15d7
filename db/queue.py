"""The annotation queue: which pair a person is given next, their lease on it, and a skip.

`claim_next` asks the next-task policies in `NEXT_TASK_POLICIES` in order (like Label Studio's
next-task policies), one small function per tier; the first that leases a pair serves the claim, and
the claim says which in its `tier` field (the policy's name):
1. `held_lease`: the pair this person already holds and has not voted on (a page reload burns nothing);
2. `live_pairs`: live pairs of running runs, oldest first (a run is waiting for these votes);
3. `audit_and_qc_pairs`: audit, gold, duplicate and arena pairs of runs that are not cancelled, oldest first.
A live pair of a run that is not running is never offered: nobody would use the vote until the run comes
back. `claim_pair` leases one given pair under the same rules (tier 'direct'). Never a pair the person
voted on (skips included); at most votes_needed people hold or voted a pair (db/leases.py).

Concurrency: a tier scans its candidates with `FOR UPDATE SKIP LOCKED` on PostgreSQL (one indexed scan on
(status, id), a few rows at a time) and re-counts each locked pair before writing the lease; on SQLite the
claim runs inside `BEGIN IMMEDIATE` (db.engine). The note on locking is in db/pairs.py.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from db.accounts import active_annotator
from db.engine import read_only
from db.errors import LogError
from db.leases import holders, valid_claim
from db.models import Claim, Image, Pair, Run, UTCDateTime, Vote, int_or_none, utcnow
from db.pairs import lock_pair
from db.votes import STANDING_COUNTS, skip_reason, standing_vote

CLAIM_BATCH = 4  # candidates a tier locks at a time

_PNGS = sa.select(Image.id, Image.png).where(Image.id.in_(sa.bindparam("ids", expanding=True)))


def _claim_dict(s: Session, pair: Pair, claim: Claim, tier: str) -> dict:
    run = s.get_one(Run, pair.run_id)
    ids = [pair.image_a, pair.image_b] + ([pair.render_image] if pair.render_image else [])
    pngs = dict(s.execute(_PNGS, {"ids": ids}).all())
    votes_in = sum(n for _c, n in s.execute(STANDING_COUNTS, {"pid": pair.id}))
    return dict(pair_id=pair.id, run_id=pair.run_id, step=pair.step, prompt=run.prompt,
                question=pair.question if pair.question is not None else run.question, kind=pair.kind,
                view=pair.view, image_a=pngs[pair.image_a], image_b=pngs[pair.image_b],
                render_image=pngs.get(pair.render_image) if pair.render_image else None,
                expires_at=claim.expires_at, votes_needed=pair.votes_needed, votes_in=int(votes_in),
                deadline=pair.deadline, cameras=pair.camera, tier=tier)


# Built once: composing these expressions costs more CPU than running them.
_NOW = sa.bindparam("now", type_=UTCDateTime())
_ME = sa.bindparam("me", type_=sa.Integer())
_OPEN = sa.or_(Pair.deadline.is_(None), Pair.deadline > _NOW)
_HELD = (sa.select(Pair, Claim).join(Claim, Claim.pair_id == Pair.id)
         .where(Claim.annotator_id == _ME, Claim.expires_at > _NOW, Pair.status == "pending", _OPEN,
                ~sa.exists().where(Vote.pair_id == Pair.id, Vote.annotator_id == _ME, Vote.retracted.is_(False)))
         .order_by(Claim.claimed_at).limit(1))


def _candidates(tier: sa.ColumnElement[bool]) -> sa.Select[int]:
    """The first few open pairs of a tier this person may take, oldest first, locked (SKIP LOCKED)."""
    return (sa.select(Pair.id).join(Run, Run.id == Pair.run_id)
            .where(Pair.status == "pending", tier, _OPEN,
                   ~sa.exists().where(Vote.pair_id == Pair.id, Vote.annotator_id == _ME),
                   holders(Pair.id, _NOW) < Pair.votes_needed)
            .order_by(Pair.id).limit(CLAIM_BATCH).with_for_update(skip_locked=True, of=Pair))


_LIVE = _candidates(sa.and_(Pair.kind == "live", Run.status == "running"))
_AUDIT_AND_QC = _candidates(sa.and_(Pair.kind != "live", Run.status != "cancelled"))
_RECOUNT = sa.select(holders(sa.bindparam("pid", type_=sa.Integer()), _NOW))


def _claim_first(s: Session, pair_ids: Sequence[int], annotator_id: int, now: datetime, lease_seconds: float,
                 tier: str) -> dict | None:
    for pair_id in pair_ids:
        # the row is locked now: re-count with a fresh statement (sees commits made before the lock)
        pair = s.get_one(Pair, pair_id, populate_existing=True)
        if pair.status != "pending":
            continue
        if s.execute(_RECOUNT, {"pid": pair_id, "now": now}).scalar_one() >= pair.votes_needed:
            continue
        claim = s.get(Claim, (pair_id, annotator_id))
        expires = now + timedelta(seconds=lease_seconds)
        if claim is None:
            claim = Claim(pair_id=pair_id, annotator_id=annotator_id, claimed_at=now, expires_at=expires)
            s.add(claim)
        else:  # their own expired lease, taken again
            claim.claimed_at, claim.expires_at = now, expires
        s.flush()
        return _claim_dict(s, pair, claim, tier)
    return None


# ----------------------------------------------------------------------------- next-task policies
# Each takes (session, annotator id, now, lease seconds) inside claim_next's transaction and returns
# the claim it served, or None to let the next tier try.
NextTaskPolicy = Callable[[Session, int, datetime, float], dict | None]


def held_lease(s: Session, annotator_id: int, now: datetime, lease_seconds: float) -> dict | None:
    """The pair this person already holds (an unexpired lease, no standing vote yet): given back as is."""
    held = s.execute(_HELD, {"me": annotator_id, "now": now}).first()
    return None if held is None else _claim_dict(s, held[0], held[1], "held_lease")


def live_pairs(s: Session, annotator_id: int, now: datetime, lease_seconds: float) -> dict | None:
    """Live pairs of running runs, oldest first: the run is waiting for the vote."""
    candidates = s.scalars(_LIVE, {"me": annotator_id, "now": now}).all()
    return _claim_first(s, candidates, annotator_id, now, lease_seconds, "live_pairs")


def audit_and_qc_pairs(s: Session, annotator_id: int, now: datetime, lease_seconds: float) -> dict | None:
    """Audit, gold, duplicate and arena pairs of runs that are not cancelled, oldest first."""
    candidates = s.scalars(_AUDIT_AND_QC, {"me": annotator_id, "now": now}).all()
    return _claim_first(s, candidates, annotator_id, now, lease_seconds, "audit_and_qc_pairs")


NEXT_TASK_POLICIES: tuple[NextTaskPolicy, ...] = (held_lease, live_pairs, audit_and_qc_pairs)


def claim_next(engine: sa.Engine, annotator_id: int, lease_seconds: float = 120) -> dict | None:
    """Lease the next pair for this person, or give back the one they already hold: the first of
    NEXT_TASK_POLICIES that serves a claim (its name in the claim's `tier`), or None."""
    now = utcnow()
    with Session(engine) as s, s.begin():
        active_annotator(s, annotator_id)
        for policy in NEXT_TASK_POLICIES:
            claimed = policy(s, annotator_id, now, lease_seconds)
            if claimed is not None:
                return claimed
        return None


def claim_pair(engine: sa.Engine, pair_id: int, annotator_id: int, lease_seconds: float = 120) -> dict | None:
    """Lease one given pair (a direct link, a script replaying votes) under the same rules as
    claim_next (tier 'direct'); returns None when it is not open to this person."""
    now = utcnow()
    with Session(engine) as s, s.begin():
        active_annotator(s, annotator_id)
        pair = lock_pair(s, pair_id)
        run = s.get_one(Run, pair.run_id)
        expired = pair.deadline is not None and pair.deadline <= now
        if pair.status != "pending" or run.status == "cancelled" or expired:
            return None
        held = valid_claim(s, pair_id, annotator_id, now)
        if held is not None:
            return None if standing_vote(s, pair_id, annotator_id) is not None else _claim_dict(s, pair, held, "direct")
        if s.scalar(sa.select(Vote.id).where(Vote.pair_id == pair_id, Vote.annotator_id == annotator_id)) is not None:
            return None
        return _claim_first(s, [pair_id], annotator_id, now, lease_seconds, "direct")


def release(engine: sa.Engine, pair_id: int, annotator_id: int, reason: str | None = None,
            shown_left: str | None = None, latency_ms: int | None = None) -> None:
    """Skip without voting: the lease is dropped and a 'skip' vote keeps the pair from coming back.
    `reason` (optional, why the person could not judge) is stored with the skip as plain text
    (db.votes.skip_reason), with the order the pair was shown in and the time to the skip."""
    if shown_left not in (None, "a", "b"):
        raise LogError(f"shown_left must be a or b, not {shown_left!r}")
    reason = skip_reason(reason)
    now = utcnow()
    with Session(engine) as s, s.begin():
        active_annotator(s, annotator_id)  # a deactivated account changes nothing
        pair = lock_pair(s, pair_id)
        claim = valid_claim(s, pair_id, annotator_id, now)
        if claim is not None and pair.status == "pending" and standing_vote(s, pair_id, annotator_id) is None:
            s.add(Vote(pair_id=pair_id, annotator_id=annotator_id, choice="skip", shown_left=shown_left,
                       latency_ms=int_or_none(latency_ms), raw=reason, created_at=now))
        s.execute(sa.delete(Claim).where(Claim.pair_id == pair_id, Claim.annotator_id == annotator_id))


def queue_stats(engine: sa.Engine, annotator_id: int | None = None) -> dict:
    """Counts for the annotation page and admins."""
    now = utcnow()
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    fresh = sa.or_(Pair.deadline.is_(None), Pair.deadline > now)
    with read_only(engine) as conn:
        pending = conn.execute(sa.select(sa.func.count()).select_from(Pair).where(
            Pair.status == "pending", fresh)).scalar_one()
        live_runs = conn.execute(sa.select(sa.func.count(sa.distinct(Pair.run_id))).join(Run, Run.id == Pair.run_id)
                                 .where(Pair.status == "pending", Pair.kind == "live", Run.status == "running",
                                        fresh)).scalar_one()
        stale = conn.execute(sa.select(sa.func.count()).select_from(Pair).where(
            Pair.status == "pending", Pair.deadline.is_not(None), Pair.deadline <= now)).scalar_one()
        expired_leases = conn.execute(
            sa.select(sa.func.count()).select_from(Claim).join(Pair, Pair.id == Claim.pair_id)
            .where(Claim.expires_at <= now, Pair.status == "pending",
                   ~sa.exists().where(Vote.pair_id == Claim.pair_id, Vote.annotator_id == Claim.annotator_id,
                                      Vote.retracted.is_(False)))).scalar_one()
        done_today = None
        if annotator_id is not None:
            done_today = conn.execute(sa.select(sa.func.count()).select_from(Vote).where(
                Vote.annotator_id == annotator_id, Vote.retracted.is_(False), Vote.choice != "skip",
                Vote.created_at >= day)).scalar_one()
    return dict(pending=int(pending), live_runs_waiting=int(live_runs), done_today=done_today,
                expired_leases=int(expired_leases), stale_pairs=int(stale))
