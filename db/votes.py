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
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from db import liveness
from db.accounts import active_annotator
from db.consensus import outcome
from db.engine import read_only
from db.errors import LogError
from db.leases import valid_claim
from db.models import CHOICES, Claim, Decision, Pair, Run, Vote, float_or_none, int_or_none, utcnow
from db.pairs import expire_if_late, insert_pair, lock_pair
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


def vote(engine: sa.Engine, pair_id: int, annotator_id: int, choice: str, shown_left: str | None = None,
         latency_ms: int | None = None, reason: str | None = None) -> dict:
    """Store a person's vote (idempotent per pair and person) and decide the pair if enough are in.
    A skip may carry a reason (`skip_reason`); any other choice may not."""
    if choice not in CHOICES:
        raise LogError(f"choice {choice!r} is not one of {', '.join(CHOICES)}")
    reason = skip_reason(reason)
    if reason is not None and choice != "skip":
        raise LogError("only a skip carries a reason")
    if shown_left not in (None, "a", "b"):
        raise LogError(f"shown_left must be a or b, not {shown_left!r}")
    now = utcnow()
    refused = None
    with Session(engine) as s, s.begin():
        active_annotator(s, annotator_id)
        pair = lock_pair(s, pair_id)
        existing = standing_vote(s, pair_id, annotator_id)
        if existing is not None:
            if existing.choice != choice:
                raise LogError(f"you already voted {existing.choice!r} on pair {pair_id}; "
                               "undo it first to change your vote")
            decided = s.get(Decision, pair_id)
            return dict(vote_id=existing.id, decided=decided is not None,
                        decision=None if decided is None else decision_dict(decided))
        run = s.get_one(Run, pair.run_id)
        if run.status == "cancelled" or pair.status == "cancelled":
            raise LogError(f"run {pair.run_id} was cancelled; its pairs take no more votes")
        expire_if_late(pair, now)
        if pair.status != "pending":  # leave the block normally so that an expiry is committed
            refused = f"pair {pair_id} is {pair.status}; it takes no more votes, claim the next one"
        elif valid_claim(s, pair_id, annotator_id, now) is None:
            raise LogError(f"no valid lease on pair {pair_id} (it expired or was never claimed); claim the next pair")
        else:
            v = Vote(pair_id=pair_id, annotator_id=annotator_id, choice=choice, shown_left=shown_left,
                     latency_ms=int_or_none(latency_ms), raw=reason, created_at=now)
            s.add(v)
            s.flush()
            if choice == "skip":
                s.execute(sa.delete(Claim).where(Claim.pair_id == pair_id, Claim.annotator_id == annotator_id))
            decision = _decide(s, pair, now)
            return dict(vote_id=v.id, decided=decision is not None, decision=decision)
    raise LogError(refused)


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
            raise LogError(f"pair {pair_id} does not exist")
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
def _decide(s: Session, pair: Pair, now: datetime) -> dict | None:
    if pair.status != "pending" or s.get(Decision, pair.id) is not None:
        return None
    rows = s.execute(STANDING_COUNTS, {"pid": pair.id}).all()
    counts = {"a": 0, "b": 0, "tie": 0, "both_bad": 0} | {c: int(n) for c, n in rows}
    if sum(counts.values()) < pair.votes_needed:
        return None
    winner, rule, gap = outcome(counts)
    d = Decision(pair_id=pair.id, winner=winner, gap=gap, rule=rule, n_a=counts["a"], n_b=counts["b"],
                 n_tie=counts["tie"], n_both_bad=counts["both_bad"], decided_at=now)
    s.add(d)
    pair.status = "decided"
    s.flush()
    return decision_dict(d)


def decide(engine: sa.Engine, pair_id: int) -> dict | None:
    """Write the decision if enough votes are in and none exists yet; returns the (new or existing) decision."""
    with Session(engine) as s, s.begin():
        pair = lock_pair(s, pair_id)
        existing = s.get(Decision, pair_id)
        if existing is not None:
            return decision_dict(existing)
        return _decide(s, pair, utcnow())


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
