"""Votes and decisions: a person's vote and its undo, a model judge's vote, a model-judged step recorded
whole, the decision of a pair, and the optimizer's wait for it. Every write is one short transaction
that locks the pair's row first (db/pairs.py: `lock_pair`, and the note on concurrency there).

Rules worth knowing:
- A skip (`db.queue.release`, or `vote(..., "skip")`) is a vote row with choice 'skip': it frees the
  slot, never counts towards a decision, and keeps the pair from being offered to that person again.
  Its optional reason (why the person could not judge the pair) is kept in the row's `raw` column as
  plain text: one line, at most SKIP_REASON_MAX characters (`skip_reason`).
- Undo sets `retracted` on the vote row (rows are never deleted). It is allowed while the pair is
  undecided and the lease valid; with votes_needed=1 a vote decides at once, so undo is only
  possible while other votes are still outstanding.
- Decision rule (human votes, skips and retracted rows excluded; db/consensus.py): the outcome with the
  most votes among a, b, tie, both_bad wins; all votes the same → rule 'unanimous', else 'majority'; a
  draw between the top outcomes → winner 'tie', rule 'split'; both_bad on top → winner 'tie',
  rule 'both_bad' (the optimizer learns nothing from it). gap = |n_a − n_b| / n_votes.
"""
from __future__ import annotations

import math
import time
import unicodedata
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from db import liveness
from db.accounts import active_annotator, check_active
from db.consensus import outcome
from db.engine import read_only
from db.errors import LogError
from db.leases import valid_claim
from db.models import CHOICES, Annotator, Claim, Decision, Pair, Run, Vote, float_or_none, int_or_none, utcnow
from db.pairs import insert_pair, lock_pair
from db.runs import beat

# standing human votes on a pair by choice (skips and retracted rows left out)
STANDING_COUNTS = (sa.select(Vote.choice, sa.func.count())
                   .where(Vote.pair_id == sa.bindparam("pid", type_=sa.Integer()), Vote.annotator_id.is_not(None),
                          Vote.retracted.is_(False), Vote.choice != "skip").group_by(Vote.choice))


SKIP_REASON_MAX = 200  # characters of a skip's reason kept in the log


def skip_reason(text: object) -> str | None:
    """A person's reason for a skip as the log keeps it: plain text on one line (control and format
    characters dropped, runs of whitespace made one space), at most SKIP_REASON_MAX characters; None
    when nothing is left. Markup is kept as typed: every reader shows it as text."""
    if text is None:
        return None
    kept = "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in str(text)
                   if unicodedata.category(c) != "Cf")
    line = " ".join(kept.split())[:SKIP_REASON_MAX].strip()
    return line or None


def standing_vote(s: Session, pair_id: int, annotator_id: int) -> Vote | None:
    """The person's vote on the pair that was not retracted (a skip included), or None."""
    return s.scalars(sa.select(Vote).where(Vote.pair_id == pair_id, Vote.annotator_id == annotator_id,
                                           Vote.retracted.is_(False))).first()


# The hot path (a person's vote, and db.queue's claims) is SQLAlchemy Core on one connection: a few
# short statements built once, no ORM unit of work, so that SQLite's write lock is held briefly.
_P, _V, _C, _D, _R, _A = (cast(sa.Table, m.__table__) for m in (Pair, Vote, Claim, Decision, Run, Annotator))
_PID = sa.bindparam("pid", type_=sa.Integer())
_ME = sa.bindparam("me", type_=sa.Integer())
_MINE = _V.alias("mine")


def _standing(choice: str) -> sa.ScalarSelect[int]:
    return (sa.select(sa.func.count()).select_from(_V)
            .where(_V.c.pair_id == _P.c.id, _V.c.annotator_id.is_not(None), _V.c.retracted.is_(False),
                   _V.c.choice == choice).scalar_subquery())


# the pair's row locked (PostgreSQL; SQLite's BEGIN IMMEDIATE already serializes writers). A separate
# statement: one that waited for the lock still reads other tables as they were when it started
_LOCK_ROW = sa.select(_P.c.id).where(_P.c.id == _PID).with_for_update()
# then, read after the lock (no vote can slip in): everything a vote decides on, its run's status, this
# person's lease and standing vote, whether it is decided, the standing votes by choice
_FOR_VOTE = (
    sa.select(_P.c.run_id, _P.c.status, _P.c.deadline, _P.c.votes_needed, _R.c.status.label("run_status"),
              _C.c.expires_at, _MINE.c.id.label("mine_id"), _MINE.c.choice.label("mine_choice"),
              _D.c.pair_id.label("decided"), *(_standing(c).label(f"n_{c}") for c in ("a", "b", "tie", "both_bad")),
              sa.select(_A.c.active).where(_A.c.id == _ME).scalar_subquery().label("active"))
    .select_from(_P.join(_R, _R.c.id == _P.c.run_id)
                 .outerjoin(_C, sa.and_(_C.c.pair_id == _P.c.id, _C.c.annotator_id == _ME))
                 .outerjoin(_MINE, sa.and_(_MINE.c.pair_id == _P.c.id, _MINE.c.annotator_id == _ME,
                                           _MINE.c.retracted.is_(False)))
                 .outerjoin(_D, _D.c.pair_id == _P.c.id))
    .where(_P.c.id == _PID))
_INSERT_VOTE = sa.insert(_V).returning(_V.c.id)
_DROP_LEASE = sa.delete(_C).where(_C.c.pair_id == _PID, _C.c.annotator_id == _ME)
_EXPIRE = sa.update(_P).where(_P.c.id == _PID).values(status="expired")
_DECIDED = sa.update(_P).where(_P.c.id == _PID).values(status="decided")
_DECISION = sa.select(_D).where(_D.c.pair_id == _PID)


def refusal(kind: str, pair_id: int, detail: object = None) -> str:
    """Why a person's vote on a pair was refused, as the one-line error says it. One wording for the Core path
    (cast_vote) and PostgreSQL's server-side call (db/vote_function.py), which returns `kind` and `detail`."""
    if kind == "no_pair":
        return f"pair {pair_id} does not exist"
    if kind == "voted":  # detail: the standing vote's choice
        return f"you already voted {detail!r} on pair {pair_id}; undo it first to change your vote"
    if kind == "cancelled":  # detail: the run
        return f"run {detail} was cancelled; its pairs take no more votes"
    if kind == "closed":  # detail: the pair's status
        return f"pair {pair_id} is {detail}; it takes no more votes, claim the next one"
    if kind == "no_lease":
        return f"no valid lease on pair {pair_id} (it expired or was never claimed); claim the next pair"
    if kind == "account":  # the account was deactivated and active again while the vote ran
        return f"your account changed while voting on pair {pair_id}; vote again"
    raise ValueError(f"unknown refusal {kind!r}")


def _check_vote(choice: str, shown_left: str | None, reason: str | None) -> str | None:
    """The vote's arguments checked (one-line errors); returns the skip's reason as kept."""
    if choice not in CHOICES:
        raise LogError(f"choice {choice!r} is not one of {', '.join(CHOICES)}")
    reason = skip_reason(reason)
    if reason is not None and choice != "skip":
        raise LogError("only a skip carries a reason")
    if shown_left not in (None, "a", "b"):
        raise LogError(f"shown_left must be a or b, not {shown_left!r}")
    return reason


def _locked(conn: sa.Connection, pair_id: int, annotator_id: int | None) -> sa.Row | None:
    """The pair locked for the rest of the transaction, and what a vote on it decides on (None: no such pair)."""
    if conn.dialect.name == "postgresql":
        conn.execute(_LOCK_ROW, {"pid": pair_id})
    return conn.execute(_FOR_VOTE, {"pid": pair_id, "me": annotator_id}).first()


def cast_vote(conn: sa.Connection, pair_id: int, annotator_id: int, choice: str, shown_left: str | None,
              latency_ms: int | None, reason: str | None, now: datetime) -> tuple[dict | None, str | None]:
    """vote() inside the caller's write transaction: (the result, None), or (None, why it was refused)
    when the pair takes no more votes (an expiry written here is to be committed before raising that)."""
    row = _locked(conn, pair_id, annotator_id)
    if row is None or not row.active:  # the account's one-line error first (it raises), else the pair's
        check_active(conn, annotator_id)
    if row is None:
        raise LogError(refusal("no_pair", pair_id))
    if row.mine_id is not None:
        if row.mine_choice != choice:
            raise LogError(refusal("voted", pair_id, row.mine_choice))
        existing = conn.execute(_DECISION, {"pid": pair_id}).mappings().first()
        return dict(vote_id=row.mine_id, decided=existing is not None,
                    decision=None if existing is None else dict(existing)), None
    if row.run_status == "cancelled" or row.status == "cancelled":
        raise LogError(refusal("cancelled", pair_id, row.run_id))
    status = row.status
    if status == "pending" and row.deadline is not None and row.deadline <= now:
        conn.execute(_EXPIRE, {"pid": pair_id})
        status = "expired"
    if status != "pending":
        return None, refusal("closed", pair_id, status)
    if row.expires_at is None or row.expires_at <= now:
        raise LogError(refusal("no_lease", pair_id))
    vote_id = conn.execute(_INSERT_VOTE, dict(pair_id=pair_id, annotator_id=annotator_id, choice=choice,
                                              shown_left=shown_left, latency_ms=int_or_none(latency_ms), raw=reason,
                                              created_at=now, retracted=False)).scalar_one()
    decision = None
    if choice == "skip":
        conn.execute(_DROP_LEASE, {"pid": pair_id, "me": annotator_id})
    elif row.decided is None:
        counts = {"a": row.n_a, "b": row.n_b, "tie": row.n_tie, "both_bad": row.n_both_bad}
        counts[choice] += 1
        decision = _write_decision(conn, pair_id, counts, row.votes_needed, now)
    return dict(vote_id=vote_id, decided=decision is not None, decision=decision), None


def vote(engine: sa.Engine, pair_id: int, annotator_id: int, choice: str, shown_left: str | None = None,
         latency_ms: int | None = None, reason: str | None = None) -> dict:
    """Store a person's vote (idempotent per pair and person) and decide the pair if enough are in.
    A skip may carry a reason (`skip_reason`); any other choice may not."""
    reason = _check_vote(choice, shown_left, reason)
    with engine.begin() as conn:
        result, refused = cast_vote(conn, pair_id, annotator_id, choice, shown_left, latency_ms, reason, utcnow())
    if refused is not None:  # raised after the commit, so that an expiry is kept
        raise LogError(refused)
    assert result is not None
    return result


def undo_vote(engine: sa.Engine, pair_id: int, annotator_id: int) -> bool:
    """Retract the person's vote while the pair is undecided and their lease valid; they keep the lease."""
    now = utcnow()
    with Session(engine) as s, s.begin():
        active_annotator(s, annotator_id)  # a deactivated account cannot retract its votes
        pair = lock_pair(s, pair_id)
        existing = standing_vote(s, pair_id, annotator_id)
        if existing is None or pair.status != "pending" or valid_claim(s, pair_id, annotator_id, now) is None:
            return False
        existing.retracted, existing.retracted_at = True, now
        return True


def log_judge(engine: sa.Engine, pair_id: int, judge_name: str, choice: str, score_a: float | None,
              score_b: float | None, raw: str | None = None, latency_ms: int | None = None) -> int:
    """A model judge's comparison, in the same votes table (annotator_id NULL)."""
    if choice not in CHOICES:
        raise LogError(f"choice {choice!r} is not one of {', '.join(CHOICES)}")
    if not judge_name:
        raise LogError("a judge vote needs the judge's name")
    with Session(engine) as s, s.begin():
        if s.get(Pair, pair_id) is None:
            raise LogError(refusal("no_pair", pair_id))
        v = Vote(pair_id=pair_id, judge_name=judge_name, choice=choice, score_a=float_or_none(score_a),
                 score_b=float_or_none(score_b), raw=raw, latency_ms=int_or_none(latency_ms), created_at=utcnow())
        s.add(v)
        s.flush()
        return v.id


def record_model_comparison(engine: sa.Engine, run_id: int, step: int, image_a: bytes, image_b: bytes,
                            judge_name: str, choice: str, score_a: float | None, score_b: float | None,
                            raw: str | None = None, **pair_kwargs: Any) -> int:
    """A model-judged step in one transaction: the pair (decided), the judge's vote and the decision.
    pair_kwargs: post_pair's keywords, and latency_ms (the judge's)."""
    if choice not in CHOICES:
        raise LogError(f"choice {choice!r} is not one of {', '.join(CHOICES)}")
    latency_ms = pair_kwargs.pop("latency_ms", None)
    now = utcnow()
    with Session(engine) as s, s.begin():
        pair_id = insert_pair(s, run_id, step, image_a, image_b, status="decided", **pair_kwargs)
        s.add(Vote(pair_id=pair_id, judge_name=judge_name, choice=choice, score_a=float_or_none(score_a),
                   score_b=float_or_none(score_b), raw=raw, latency_ms=int_or_none(latency_ms), created_at=now))
        gap = abs(score_a - score_b) if score_a is not None and score_b is not None else 0.0
        s.add(Decision(pair_id=pair_id, winner=choice if choice in ("a", "b", "tie") else "tie", gap=float(gap),
                       rule=f"judge:{judge_name}", n_a=int(choice == "a"), n_b=int(choice == "b"),
                       n_tie=int(choice == "tie"), n_both_bad=int(choice == "both_bad"), decided_at=now))
        return pair_id


# ----------------------------------------------------------------------------- decisions
def _write_decision(conn: sa.Connection, pair_id: int, counts: dict[str, int], votes_needed: int,
                    now: datetime) -> dict | None:
    """The decision of a locked, pending, undecided pair once `counts` (its standing votes) reach votes_needed."""
    if sum(counts.values()) < votes_needed:
        return None
    winner, rule, gap = outcome(counts)
    d = dict(pair_id=pair_id, winner=winner, gap=gap, rule=rule, decided_at=now, n_a=counts["a"], n_b=counts["b"],
             n_tie=counts["tie"], n_both_bad=counts["both_bad"])
    conn.execute(sa.insert(_D), d)
    conn.execute(_DECIDED, {"pid": pair_id})
    return d


def decide(engine: sa.Engine, pair_id: int) -> dict | None:
    """Write the decision if enough votes are in and none exists yet; returns the (new or existing) decision."""
    with engine.begin() as conn:
        row = _locked(conn, pair_id, None)
        if row is None:
            raise LogError(refusal("no_pair", pair_id))
        if row.decided is not None:
            return dict(conn.execute(_DECISION, {"pid": pair_id}).mappings().one())
        if row.status != "pending":
            return None
        counts = {"a": row.n_a, "b": row.n_b, "tie": row.n_tie, "both_bad": row.n_both_bad}
        return _write_decision(conn, pair_id, counts, row.votes_needed, utcnow())


def decision_dict(d: Decision) -> dict:
    return dict(pair_id=d.pair_id, winner=d.winner, gap=d.gap, rule=d.rule, decided_at=d.decided_at, n_a=d.n_a,
                n_b=d.n_b, n_tie=d.n_tie, n_both_bad=d.n_both_bad)


def get_decision(engine: sa.Engine, pair_id: int) -> dict | None:
    with read_only(engine) as conn:
        row = conn.execute(sa.select(Decision.__table__).where(Decision.pair_id == pair_id)).mappings().first()
    if row is None:
        return None
    return dict(row)


def wait_for_decision(engine: sa.Engine, pair_id: int, timeout: float, poll: float = 0.05,
                      cancelled: Callable[[], bool] | None = None, check_every: float = 0.5,
                      beat_every: float | None = liveness.BEAT_EVERY_S) -> dict | None:
    """Poll for the decision (short read transactions). On timeout the pair is marked expired so
    that late votes are refused, and None is returned (unless the decision landed meanwhile).
    `cancelled()`, asked every `check_every` seconds, ends the wait early with None (pair left as is).
    Every `beat_every` seconds of waiting (None: never) the pair's run beats (db.runs.beat), so that a
    run waiting for people is not read as stalled (db/liveness.py).
    An interrupt (Ctrl-C) expires the pair before it propagates: nobody votes on it for nothing."""
    end = time.monotonic() + timeout
    next_check = time.monotonic() + check_every
    next_beat = math.inf if beat_every is None else time.monotonic() + beat_every
    try:
        while True:
            d = get_decision(engine, pair_id)
            if d is not None:
                return d
            if time.monotonic() >= end:
                break
            if beat_every is not None and time.monotonic() >= next_beat:
                next_beat = time.monotonic() + beat_every
                beat(engine, pair_id=pair_id)
            if cancelled is not None and time.monotonic() >= next_check:
                next_check = time.monotonic() + check_every
                if cancelled():
                    return None
            time.sleep(min(poll, max(0.0, end - time.monotonic())))
    except KeyboardInterrupt:
        wait_for_decision(engine, pair_id, 0.0)
        raise
    with Session(engine) as s, s.begin():
        pair = lock_pair(s, pair_id)
        existing = s.get(Decision, pair_id)
        if existing is not None:
            return decision_dict(existing)
        if pair.status == "pending":
            pair.status = "expired"
    return None
