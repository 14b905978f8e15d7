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

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.accounts import active_annotator, check_active
from db.engine import read_only
from db.errors import LogError
from db.leases import holders, valid_claim
from db.models import Claim, Image, Pair, Run, UTCDateTime, Vote, int_or_none, utcnow
from db.pairs import lock_pair
from db.votes import _check_vote, cast_vote, refusal, skip_reason, standing_vote

CLAIM_BATCH = 4  # candidates a tier locks at a time

# Built once: composing these expressions costs more CPU than running them. The claim is SQLAlchemy Core on
# one connection (no ORM unit of work), so that it can run inside a vote's transaction (vote_and_claim_next).
_P, _V, _C, _R, _I = (cast(sa.Table, m.__table__) for m in (Pair, Vote, Claim, Run, Image))
_NOW = sa.bindparam("now", type_=UTCDateTime())
_ME = sa.bindparam("me", type_=sa.Integer())
_PID = sa.bindparam("pid", type_=sa.Integer())
_OPEN = sa.or_(Pair.deadline.is_(None), Pair.deadline > _NOW)
_HELD = (sa.select(Pair.id, Claim.expires_at).join(Claim, Claim.pair_id == Pair.id)
         .where(Claim.annotator_id == _ME, Claim.expires_at > _NOW, Pair.status == "pending", _OPEN,
                ~sa.exists().where(Vote.pair_id == Pair.id, Vote.annotator_id == _ME, Vote.retracted.is_(False)))
         .order_by(Claim.claimed_at).limit(1))
_IA, _IB, _IR = _I.alias("ia"), _I.alias("ib"), _I.alias("ir")
_VOTES_IN = (sa.select(sa.func.count()).select_from(_V)
             .where(_V.c.pair_id == _P.c.id, _V.c.annotator_id.is_not(None), _V.c.retracted.is_(False),
                    _V.c.choice != "skip").scalar_subquery())


def claimed_pair(pair_id: sa.ColumnElement[int]) -> sa.Select:
    """Everything the page shows of a claimed pair, in one statement (`pair_id`: a bind parameter, or a column
    of an outer query: PostgreSQL's server-side call joins it to the pair it claimed, db/vote_function.py)."""
    return (sa.select(_P.c.id.label("pair_id"), _P.c.run_id, _P.c.step, _R.c.prompt,
                      sa.func.coalesce(_P.c.question, _R.c.question).label("question"), _P.c.kind, _P.c.view,
                      _IA.c.png.label("image_a"), _IB.c.png.label("image_b"), _IR.c.png.label("render_image"),
                      _P.c.votes_needed, _VOTES_IN.label("votes_in"), _P.c.deadline, _P.c.camera.label("cameras"))
            .select_from(_P.join(_R, _R.c.id == _P.c.run_id).join(_IA, _IA.c.id == _P.c.image_a)
                         .join(_IB, _IB.c.id == _P.c.image_b).outerjoin(_IR, _IR.c.id == _P.c.render_image))
            .where(_P.c.id == pair_id))


_CLAIMED = claimed_pair(_PID)


CLAIMED_KEYS: tuple[str, ...] = tuple(str(c.key) for c in _CLAIMED.selected_columns)


def claim_from(read: Mapping, expires_at: datetime, tier: str) -> dict:
    """A claim as the page gets it: the claimed pair's read (claimed_pair), the lease's end, the tier."""
    return dict(read, votes_in=int(read["votes_in"]), expires_at=expires_at, tier=tier)


def _claim_dict(conn: sa.Connection, pair_id: int, expires_at: datetime, tier: str) -> dict:
    return claim_from(conn.execute(_CLAIMED, {"pid": pair_id}).mappings().one(), expires_at, tier)


def _candidates(tier: sa.ColumnElement[bool]) -> sa.Select[int]:
    """The first few open pairs of a tier this person may take, oldest first, locked (SKIP LOCKED)."""
    return (sa.select(Pair.id).join(Run, Run.id == Pair.run_id)
            .where(Pair.status == "pending", tier, _OPEN,
                   ~sa.exists().where(Vote.pair_id == Pair.id, Vote.annotator_id == _ME),
                   holders(Pair.id, _NOW) < Pair.votes_needed)
            .order_by(Pair.id).limit(CLAIM_BATCH).with_for_update(skip_locked=True, of=Pair))


_LIVE = _candidates(sa.and_(Pair.kind == "live", Run.status == "running"))
_AUDIT_AND_QC = _candidates(sa.and_(Pair.kind != "live", Run.status != "cancelled"))
# a locked candidate re-read: a fresh statement sees the commits made before the lock
_RECOUNT = sa.select(_P.c.status, _P.c.votes_needed, holders(_PID, _NOW).label("holders")).where(_P.c.id == _PID)



def _lease(dialect: str) -> sa.Insert:
    """The lease written: a new claims row, or their own expired lease taken again (one upsert)."""
    insert = postgresql.insert(_C) if dialect == "postgresql" else sqlite.insert(_C)
    return insert.on_conflict_do_update(index_elements=[_C.c.pair_id, _C.c.annotator_id],
                                        set_=dict(claimed_at=insert.excluded.claimed_at,
                                                  expires_at=insert.excluded.expires_at))


_LEASE = {name: _lease(name) for name in ("postgresql", "sqlite")}


def _claim_first(conn: sa.Connection, pair_ids: Sequence[int], annotator_id: int, now: datetime,
                 lease_seconds: float, tier: str) -> dict | None:
    dialect = conn.dialect.name
    for pair_id in pair_ids:
        # on PostgreSQL the candidates were read before their rows were locked: count again. On SQLite
        # the scan ran under the write lock (BEGIN IMMEDIATE), so what it read still holds
        if dialect != "sqlite" or tier == "direct":
            row = conn.execute(_RECOUNT, {"pid": pair_id, "now": now}).one()
            if row.status != "pending" or row.holders >= row.votes_needed:
                continue
        expires = now + timedelta(seconds=lease_seconds)
        conn.execute(_LEASE[dialect], dict(pair_id=pair_id, annotator_id=annotator_id, claimed_at=now,
                                           expires_at=expires))
        return _claim_dict(conn, pair_id, expires, tier)
    return None


# ----------------------------------------------------------------------------- next-task policies
# Each takes (connection, annotator id, now, lease seconds) inside claim_next's transaction and returns
# the claim it served, or None to let the next tier try.
NextTaskPolicy = Callable[[sa.Connection, int, datetime, float], dict | None]


def held_lease(conn: sa.Connection, annotator_id: int, now: datetime, lease_seconds: float) -> dict | None:
    """The pair this person already holds (an unexpired lease, no standing vote yet): given back as is."""
    held = conn.execute(_HELD, {"me": annotator_id, "now": now}).first()
    return None if held is None else _claim_dict(conn, held.id, held.expires_at, "held_lease")


def live_pairs(conn: sa.Connection, annotator_id: int, now: datetime, lease_seconds: float) -> dict | None:
    """Live pairs of running runs, oldest first: the run is waiting for the vote."""
    candidates = conn.scalars(_LIVE, {"me": annotator_id, "now": now}).all()
    return _claim_first(conn, candidates, annotator_id, now, lease_seconds, "live_pairs")


def audit_and_qc_pairs(conn: sa.Connection, annotator_id: int, now: datetime, lease_seconds: float) -> dict | None:
    """Audit, gold, duplicate and arena pairs of runs that are not cancelled, oldest first."""
    candidates = conn.scalars(_AUDIT_AND_QC, {"me": annotator_id, "now": now}).all()
    return _claim_first(conn, candidates, annotator_id, now, lease_seconds, "audit_and_qc_pairs")


NEXT_TASK_POLICIES: tuple[NextTaskPolicy, ...] = (held_lease, live_pairs, audit_and_qc_pairs)


def _next(conn: sa.Connection, annotator_id: int, now: datetime, lease_seconds: float) -> dict | None:
    for policy in NEXT_TASK_POLICIES:
        claimed = policy(conn, annotator_id, now, lease_seconds)
        if claimed is not None:
            return claimed
    return None


def claim_next(engine: sa.Engine, annotator_id: int, lease_seconds: float = 120) -> dict | None:
    """Lease the next pair for this person, or give back the one they already hold: the first of
    NEXT_TASK_POLICIES that serves a claim (its name in the claim's `tier`), or None."""
    with engine.begin() as conn:
        check_active(conn, annotator_id)
        return _next(conn, annotator_id, utcnow(), lease_seconds)


def vote_and_claim_next(engine: sa.Engine, pair_id: int, annotator_id: int, choice: str,
                        shown_left: str | None = None, latency_ms: int | None = None,
                        lease_seconds: float = 120) -> dict:
    """A person's vote (db.votes.vote, same rules) and the claim of their next pair (claim_next), in one
    transaction: what the Annotate page does after each vote, with the write lock taken once.
    Returns {"vote": vote()'s result, "next": claim_next()'s claim or None}. A refused vote raises
    LogError and claims nothing."""
    reason = _check_vote(choice, shown_left, None)
    now = utcnow()
    from db import vote_function  # it compiles this module's statements

    function = vote_function.ready(engine)
    if function is not None:  # PostgreSQL: the same rules in one round trip
        result, claimed, why = vote_function.vote_and_claim_next(engine, function, pair_id, annotator_id, choice,
                                                                 shown_left, latency_ms, lease_seconds, now)
        if why is not None:
            raise LogError(refusal(why[0], pair_id, why[1]))
        return {"vote": result, "next": claimed}
    with engine.begin() as conn:
        result, refused = cast_vote(conn, pair_id, annotator_id, choice, shown_left, latency_ms, reason, now)
        claimed = None if refused is not None else _next(conn, annotator_id, now, lease_seconds)
    if refused is not None:  # raised after the commit, so that an expiry is kept
        raise LogError(refused)
    return {"vote": result, "next": claimed}


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
            if standing_vote(s, pair_id, annotator_id) is not None:
                return None
            return _claim_dict(s.connection(), pair_id, held.expires_at, "direct")
        if s.scalar(sa.select(Vote.id).where(Vote.pair_id == pair_id, Vote.annotator_id == annotator_id)) is not None:
            return None
        return _claim_first(s.connection(), [pair_id], annotator_id, now, lease_seconds, "direct")


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
