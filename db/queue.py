"""The queue API: runs, pairs, leases, votes, decisions. Every write is one short transaction
(`with Session(engine) as s, s.begin():`).

Concurrency: a pair's row is locked (`FOR UPDATE`; PostgreSQL claims use `SKIP LOCKED`) before its
leases, votes or decision change, and counts are re-read after the lock, so every rule holds under
any interleaving. On SQLite the same statements run inside `BEGIN IMMEDIATE` (db.engine), which
serializes writers; FOR UPDATE is not emitted there.

Rules worth knowing:
- A lease (claims row) is kept after the vote, so that undo can check it. The annotators who
  "hold or voted" a pair are those with an unexpired lease plus those with a standing
  (not retracted) non-skip vote; at most `votes_needed` of them per pair.
- A skip (`release`, or `vote(..., "skip")`) is a vote row with choice 'skip': it frees the slot,
  never counts towards a decision, and keeps the pair from being offered to that person again.
- Undo sets `retracted` on the vote row (rows are never deleted). It is allowed while the pair is
  undecided and the lease valid; with votes_needed=1 a vote decides at once, so undo is only
  possible while other votes are still outstanding.
- Decision rule (human votes, skips and retracted rows excluded): the outcome with the most votes
  among a, b, tie, both_bad wins; all votes the same → rule 'unanimous', else 'majority'; a draw
  between the top outcomes → winner 'tie', rule 'split'; both_bad on top → winner 'tie',
  rule 'both_bad' (the optimizer learns nothing from it). gap = |n_a − n_b| / n_votes.
"""
from __future__ import annotations

import hashlib
import math
import struct
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from db import liveness
from db.consensus import outcome
from db.errors import AccountInactive, LogError, RunCancelled
from db.models import (
    CHOICES,
    PAIR_KINDS,
    RUN_STATUSES,
    Annotator,
    Claim,
    Decision,
    Image,
    Pair,
    Run,
    UTCDateTime,
    Vote,
    utcnow,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLAIM_BATCH = 4


# ----------------------------------------------------------------------------- images
def put_image(session: Session, png: bytes) -> str:
    """Store PNG bytes once (insert-if-absent); returns the sha256 hex that keys them."""
    if not isinstance(png, (bytes, bytearray, memoryview)) or bytes(png[:8]) != PNG_MAGIC:
        raise LogError("an image given to the log is not PNG bytes; encode it with dreamdpo.images.png_bytes")
    png = bytes(png)
    digest = hashlib.sha256(png).hexdigest()
    width, height = struct.unpack(">II", png[16:24]) if len(png) >= 24 else (0, 0)
    insert: postgresql.Insert | sqlite.Insert = (
        postgresql.insert(Image) if session.get_bind().dialect.name == "postgresql" else sqlite.insert(Image))
    session.execute(insert.values(id=digest, png=png, width=width, height=height)
                    .on_conflict_do_nothing(index_elements=["id"]))
    return digest


def save_image(engine, png: bytes) -> str:
    """Store one PNG (previews, turntables) in its own transaction; returns its id."""
    with Session(engine) as s, s.begin():
        return put_image(s, png)


def get_image(engine, image_id: str) -> bytes | None:
    with _read(engine) as conn:
        return conn.execute(sa.select(Image.png).where(Image.id == image_id)).scalar()


# ----------------------------------------------------------------------------- runs
def _row(obj) -> dict:
    return {c.key: getattr(obj, c.key) for c in sa.inspect(obj).mapper.column_attrs}


def _read(engine):
    """A read-only connection (plain BEGIN on SQLite: readers never wait for writers)."""
    return engine.connect().execution_options(readonly=True)


def create_run(engine, prompt: str, question: str | None = None, config: dict | None = None, backbone: str = "",
               judge_policy: dict | None = None, name: str | None = None, status: str = "pending",
               fingerprint: str | None = None) -> int:
    if not isinstance(prompt, str) or not prompt.strip():
        raise LogError("a run needs a non-empty prompt")
    _check_status(status)
    with Session(engine) as s, s.begin():
        run = Run(prompt=prompt, question=question, config=config, backbone=backbone or "",
                  judge_policy=judge_policy, name=name, status=status, step=0, fingerprint=fingerprint)
        s.add(run)
        s.flush()
        return run.id


def get_run(engine, run_id: int, now: datetime | None = None, stalled_after_s: float | None = None) -> dict | None:
    """The run's row (a read: never waits for the write lock). A 'running' run that has shown no
    sign of life for stalled_after_s reads as status 'stalled' (db/liveness.py; stored status in
    'stored_status', which is never rewritten)."""
    with _read(engine) as conn:
        row = conn.execute(sa.select(Run.__table__).where(Run.id == run_id)).mappings().first()
    return None if row is None else liveness.shown(dict(row), now or utcnow(), stalled_after_s)


def list_runs(engine, status: str | None = None, now: datetime | None = None,
              stalled_after_s: float | None = None) -> list[dict]:
    """Every run, oldest first, read as get_run reads one. `status` filters on the status as read:
    'stalled' gives the stalled runs, 'running' the running ones that are not stalled."""
    now = now or utcnow()
    stmt = sa.select(Run.__table__).order_by(Run.id)
    if status == liveness.STALLED:
        stmt = stmt.where(liveness.stalled_clause(now, stalled_after_s))
    elif status is not None:
        stmt = stmt.where(Run.status == status)
        if status == "running":
            stmt = stmt.where(~liveness.stalled_clause(now, stalled_after_s))
    with _read(engine) as conn:
        return [liveness.shown(dict(r), now, stalled_after_s) for r in conn.execute(stmt).mappings()]


def set_run_config(engine, run_id: int, key: str, value) -> None:
    """Set one key of the run's config (None removes it), in one transaction."""
    with Session(engine) as s, s.begin():
        run = s.get(Run, run_id, with_for_update=True)
        if run is None:
            raise LogError(f"run {run_id} does not exist; list runs with `dreamdpo stats`")
        config = dict(run.config or {})
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
        run.config = config


def _check_status(status: str) -> None:
    if status not in RUN_STATUSES:
        raise LogError(f"run status {status!r} is not one of {', '.join(RUN_STATUSES)}")


def set_run_status(engine, run_id: int, status: str | None, step: int | None = None,
                   metrics: dict | None = None, heartbeat: bool = False) -> None:
    """Change status (None keeps it), step and metrics of a run. A cancelled run stays cancelled.
    heartbeat=True (the optimizer itself, never the app) also records a sign of life in the same
    UPDATE (runs.heartbeat_at; db/liveness.py)."""
    if status is not None:
        _check_status(status)
    with Session(engine) as s, s.begin():
        run = s.get(Run, run_id, with_for_update=True)
        if run is None:
            raise LogError(f"run {run_id} does not exist; list runs with `dreamdpo stats`")
        if status is not None and not (run.status == "cancelled" and status in ("running", "paused", "pending")):
            run.status = status
        if step is not None:
            run.step = int(step)
        if metrics is not None:
            run.metrics = metrics
        run.updated_at = utcnow()
        if heartbeat:
            run.heartbeat_at = run.updated_at
        if status == "cancelled":
            _cancel_pending(s, run_id)


def beat(engine, run_id: int | None = None, pair_id: int | None = None) -> None:
    """A sign of life of the run (or of the run a pair belongs to) without a step: one UPDATE of
    runs.heartbeat_at (db/liveness.py). Only the optimizer's process calls it."""
    target = Run.id == run_id if pair_id is None else Run.id == sa.select(Pair.run_id).where(
        Pair.id == pair_id).scalar_subquery()
    with Session(engine) as s, s.begin():
        s.execute(sa.update(Run).where(target).values(heartbeat_at=utcnow()))


def _rows_changed(s: Session, stmt: sa.Update) -> int:
    """Run an UPDATE; returns how many rows it changed (an UPDATE's result is a CursorResult)."""
    return int(cast("CursorResult[Any]", s.execute(stmt)).rowcount or 0)


def _cancel_pending(s: Session, run_id: int) -> None:
    s.execute(sa.update(Pair).where(Pair.run_id == run_id, Pair.status == "pending").values(status="cancelled"))


def expire_waiting(engine, run_id: int) -> int:
    """The run's pairs still waiting for people become expired (the run ended or stopped waiting:
    nobody should vote on them for nothing); returns how many."""
    with Session(engine) as s, s.begin():
        return _rows_changed(s, sa.update(Pair).where(Pair.run_id == run_id, Pair.status == "pending",
                                                      Pair.kind == "live").values(status="expired"))


def expire_pair(engine, pair_id: int) -> bool:
    """A skipped live pair nobody else can take: expired at once, so the waiting run falls back now."""
    with Session(engine) as s, s.begin():
        return bool(_rows_changed(s, sa.update(Pair).where(Pair.id == pair_id, Pair.status == "pending",
                                                           Pair.kind == "live").values(status="expired",
                                                                                       deadline=utcnow())))


def cancel_run(engine, run_id: int) -> None:
    """Status cancelled; its pending pairs are cancelled and votes on them refused from now on."""
    set_run_status(engine, run_id, "cancelled")


# ----------------------------------------------------------------------------- pairs
def post_pair(engine, run_id: int, step: int, image_a: bytes, image_b: bytes, *, render_image: bytes | None = None,
              view: int = -1, t: int | None = None, t_b: int | None = None, seed_a: int | None = None,
              seed_b: int | None = None, cameras: list | None = None, votes_needed: int = 1,
              deadline: datetime | None = None, kind: str = "live", gold_answer: str | None = None,
              duplicate_of: int | None = None, question: str | None = None, status: str = "pending",
              distance: float | None = None) -> int:
    """Post a pair for people (or, with status 'decided', a record; 'indistinct', a pair whose candidates
    nobody could tell apart, kept only as a record of the step). Images are PNG bytes."""
    with Session(engine) as s, s.begin():
        return _insert_pair(s, run_id, step, image_a, image_b, render_image=render_image, view=view, t=t, t_b=t_b,
                            seed_a=seed_a, seed_b=seed_b, cameras=cameras, votes_needed=votes_needed,
                            deadline=deadline, kind=kind, gold_answer=gold_answer, duplicate_of=duplicate_of,
                            question=question, status=status, distance=distance)


def _insert_pair(s: Session, run_id, step, image_a, image_b, *, render_image=None, view=-1, t=None, t_b=None,
                 seed_a=None, seed_b=None, cameras=None, votes_needed=1, deadline=None, kind="live",
                 gold_answer=None, duplicate_of=None, question=None, status="pending", distance=None) -> int:
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
    pair = Pair(run_id=run_id, step=int(step), view=int(view), t=_int(t), t_b=_int(t_b), seed_a=_int(seed_a),
                seed_b=_int(seed_b), camera=cameras, image_a=put_image(s, image_a), image_b=put_image(s, image_b),
                render_image=None if render_image is None else put_image(s, render_image), question=question,
                status=status, votes_needed=votes_needed, kind=kind, gold_answer=gold_answer,
                duplicate_of=duplicate_of, deadline=deadline, distance=_float(distance))
    s.add(pair)
    s.flush()
    return pair.id


def _int(v):
    return None if v is None else int(v)


# ----------------------------------------------------------------------------- leases
def _holders(pair_id, now):
    """Number of annotators who hold an unexpired lease or a standing non-skip vote on the pair
    (a scalar subquery; `pair_id` may be Pair.id to correlate with an outer query)."""
    valid = sa.and_(Claim.pair_id == pair_id, Claim.expires_at > now)
    leased = sa.select(sa.func.count()).select_from(Claim).where(valid).scalar_subquery()
    voted_unleased = (
        sa.select(sa.func.count()).select_from(Vote)
        .where(Vote.pair_id == pair_id, Vote.annotator_id.is_not(None), Vote.retracted.is_(False),
               Vote.choice != "skip",
               ~sa.exists().where(Claim.pair_id == Vote.pair_id, Claim.annotator_id == Vote.annotator_id,
                                  Claim.expires_at > now))
        .scalar_subquery())
    return leased + voted_unleased


def _annotator(s: Session, annotator_id: int) -> Annotator:
    who = s.get(Annotator, annotator_id)
    if who is None:
        raise LogError(f"annotator {annotator_id} does not exist; an admin adds people with `dreamdpo annotators add`")
    if not who.active:
        raise AccountInactive(f"annotator {who.name} is deactivated; ask an admin")
    return who


# standing human votes on a pair by choice (skips and retracted rows left out)
_COUNTS = (sa.select(Vote.choice, sa.func.count())
           .where(Vote.pair_id == sa.bindparam("pid", type_=sa.Integer()), Vote.annotator_id.is_not(None),
                  Vote.retracted.is_(False), Vote.choice != "skip").group_by(Vote.choice))
_PNGS = sa.select(Image.id, Image.png).where(Image.id.in_(sa.bindparam("ids", expanding=True)))


def _claim_dict(s: Session, pair: Pair, claim: Claim) -> dict:
    run = s.get_one(Run, pair.run_id)
    ids = [pair.image_a, pair.image_b] + ([pair.render_image] if pair.render_image else [])
    pngs = dict(s.execute(_PNGS, {"ids": ids}).all())
    votes_in = sum(n for _c, n in s.execute(_COUNTS, {"pid": pair.id}))
    return dict(pair_id=pair.id, run_id=pair.run_id, step=pair.step, prompt=run.prompt,
                question=pair.question if pair.question is not None else run.question, kind=pair.kind,
                view=pair.view, image_a=pngs[pair.image_a], image_b=pngs[pair.image_b],
                render_image=pngs.get(pair.render_image) if pair.render_image else None,
                expires_at=claim.expires_at, votes_needed=pair.votes_needed, votes_in=int(votes_in),
                deadline=pair.deadline, cameras=pair.camera)


def claim_next(engine, annotator_id: int, lease_seconds: float = 120) -> dict | None:
    """Lease the next pair for this person, or give back the one they already hold.

    Order: live pairs of running runs (oldest first), then audit/gold/duplicate/arena pairs; live pairs
    of runs that are not running wait until their run runs again. Never a pair they voted on (skips
    included); at most votes_needed people hold or voted a pair."""
    now = utcnow()
    with Session(engine) as s, s.begin():
        _annotator(s, annotator_id)
        params = {"me": annotator_id, "now": now}
        held = s.execute(_HELD, params).first()
        if held is not None:
            return _claim_dict(s, held[0], held[1])
        for candidates in _CANDIDATES:  # one indexed scan per tier (status, id), stopping at the first free pair
            claimed = _claim_first(s, s.scalars(candidates, params).all(), annotator_id, now, lease_seconds)
            if claimed is not None:
                return claimed
        return None


def claim_pair(engine, pair_id: int, annotator_id: int, lease_seconds: float = 120) -> dict | None:
    """Lease one given pair (a direct link, a script replaying votes) under the same rules as
    claim_next; returns None when it is not open to this person."""
    now = utcnow()
    with Session(engine) as s, s.begin():
        _annotator(s, annotator_id)
        pair = _lock_pair(s, pair_id)
        run = s.get_one(Run, pair.run_id)
        expired = pair.deadline is not None and pair.deadline <= now
        if pair.status != "pending" or run.status == "cancelled" or expired:
            return None
        held = _valid_claim(s, pair_id, annotator_id, now)
        if held is not None:
            return None if _standing_vote(s, pair_id, annotator_id) is not None else _claim_dict(s, pair, held)
        if s.scalar(sa.select(Vote.id).where(Vote.pair_id == pair_id, Vote.annotator_id == annotator_id)) is not None:
            return None
        return _claim_first(s, [pair_id], annotator_id, now, lease_seconds)


# The queue's policies, in order (like Label Studio's next-task policies). A live pair of a run that is
# not running is never offered: nobody would use the vote until the run comes back.
LIVE_FIRST = sa.and_(Pair.kind == "live", Run.status == "running")
THEN_AUDIT_AND_QC = sa.and_(Pair.kind != "live", Run.status != "cancelled")
_TIERS = (LIVE_FIRST, THEN_AUDIT_AND_QC)


# Built once: composing these expressions costs more CPU than running them.
_NOW = sa.bindparam("now", type_=UTCDateTime())
_ME = sa.bindparam("me", type_=sa.Integer())
_OPEN = sa.or_(Pair.deadline.is_(None), Pair.deadline > _NOW)
_HELD = (sa.select(Pair, Claim).join(Claim, Claim.pair_id == Pair.id)
         .where(Claim.annotator_id == _ME, Claim.expires_at > _NOW, Pair.status == "pending", _OPEN,
                ~sa.exists().where(Vote.pair_id == Pair.id, Vote.annotator_id == _ME, Vote.retracted.is_(False)))
         .order_by(Claim.claimed_at).limit(1))
_CANDIDATES = [
    sa.select(Pair.id).join(Run, Run.id == Pair.run_id)
    .where(Pair.status == "pending", tier, _OPEN, ~sa.exists().where(Vote.pair_id == Pair.id, Vote.annotator_id == _ME),
           _holders(Pair.id, _NOW) < Pair.votes_needed)
    .order_by(Pair.id).limit(CLAIM_BATCH).with_for_update(skip_locked=True, of=Pair)
    for tier in _TIERS]
_RECOUNT = sa.select(_holders(sa.bindparam("pid", type_=sa.Integer()), _NOW))


def _claim_first(s: Session, pair_ids: Sequence[int], annotator_id: int, now: datetime,
                 lease_seconds: float) -> dict | None:
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
        return _claim_dict(s, pair, claim)
    return None


def _lock_pair(s: Session, pair_id: int) -> Pair:
    pair = s.get(Pair, pair_id, with_for_update=True, populate_existing=True)
    if pair is None:
        raise LogError(f"pair {pair_id} does not exist")
    return pair


def _standing_vote(s: Session, pair_id: int, annotator_id: int) -> Vote | None:
    return s.scalars(sa.select(Vote).where(Vote.pair_id == pair_id, Vote.annotator_id == annotator_id,
                                           Vote.retracted.is_(False))).first()


def _valid_claim(s: Session, pair_id: int, annotator_id: int, now: datetime) -> Claim | None:
    claim = s.get(Claim, (pair_id, annotator_id), populate_existing=True)
    return claim if claim is not None and claim.expires_at > now else None


def _expire_if_late(s: Session, pair: Pair, now: datetime) -> None:
    if pair.status == "pending" and pair.deadline is not None and pair.deadline <= now:
        pair.status = "expired"


def release(engine, pair_id: int, annotator_id: int) -> None:
    """Skip without voting: the lease is dropped and a 'skip' vote keeps the pair from coming back."""
    now = utcnow()
    with Session(engine) as s, s.begin():
        _annotator(s, annotator_id)  # a deactivated account changes nothing
        pair = _lock_pair(s, pair_id)
        claim = _valid_claim(s, pair_id, annotator_id, now)
        if claim is not None and pair.status == "pending" and _standing_vote(s, pair_id, annotator_id) is None:
            s.add(Vote(pair_id=pair_id, annotator_id=annotator_id, choice="skip", created_at=now))
        s.execute(sa.delete(Claim).where(Claim.pair_id == pair_id, Claim.annotator_id == annotator_id))


# ----------------------------------------------------------------------------- votes
def vote(engine, pair_id: int, annotator_id: int, choice: str, shown_left: str | None = None,
         latency_ms: int | None = None) -> dict:
    """Store a person's vote (idempotent per pair and person) and decide the pair if enough are in."""
    if choice not in CHOICES:
        raise LogError(f"choice {choice!r} is not one of {', '.join(CHOICES)}")
    if shown_left not in (None, "a", "b"):
        raise LogError(f"shown_left must be a or b, not {shown_left!r}")
    now = utcnow()
    refused = None
    with Session(engine) as s, s.begin():
        _annotator(s, annotator_id)
        pair = _lock_pair(s, pair_id)
        existing = _standing_vote(s, pair_id, annotator_id)
        if existing is not None:
            if existing.choice != choice:
                raise LogError(f"you already voted {existing.choice!r} on pair {pair_id}; "
                               "undo it first to change your vote")
            decided = s.get(Decision, pair_id)
            return dict(vote_id=existing.id, decided=decided is not None,
                        decision=None if decided is None else _decision_dict(decided))
        run = s.get_one(Run, pair.run_id)
        if run.status == "cancelled" or pair.status == "cancelled":
            raise LogError(f"run {pair.run_id} was cancelled; its pairs take no more votes")
        _expire_if_late(s, pair, now)
        if pair.status != "pending":  # leave the block normally so that an expiry is committed
            refused = f"pair {pair_id} is {pair.status}; it takes no more votes, claim the next one"
        elif _valid_claim(s, pair_id, annotator_id, now) is None:
            raise LogError(f"no valid lease on pair {pair_id} (it expired or was never claimed); claim the next pair")
        else:
            v = Vote(pair_id=pair_id, annotator_id=annotator_id, choice=choice, shown_left=shown_left,
                     latency_ms=_int(latency_ms), created_at=now)
            s.add(v)
            s.flush()
            if choice == "skip":
                s.execute(sa.delete(Claim).where(Claim.pair_id == pair_id, Claim.annotator_id == annotator_id))
            decision = _decide(s, pair, now)
            return dict(vote_id=v.id, decided=decision is not None, decision=decision)
    raise LogError(refused)


def undo_vote(engine, pair_id: int, annotator_id: int) -> bool:
    """Retract the person's vote while the pair is undecided and their lease valid; they keep the lease."""
    now = utcnow()
    with Session(engine) as s, s.begin():
        _annotator(s, annotator_id)  # a deactivated account cannot retract its votes
        pair = _lock_pair(s, pair_id)
        existing = _standing_vote(s, pair_id, annotator_id)
        if existing is None or pair.status != "pending" or _valid_claim(s, pair_id, annotator_id, now) is None:
            return False
        existing.retracted, existing.retracted_at = True, now
        return True


def log_judge(engine, pair_id: int, judge_name: str, choice: str, score_a: float | None, score_b: float | None,
              raw: str | None = None, latency_ms: int | None = None) -> int:
    """A model judge's comparison, in the same votes table (annotator_id NULL)."""
    if choice not in CHOICES:
        raise LogError(f"choice {choice!r} is not one of {', '.join(CHOICES)}")
    if not judge_name:
        raise LogError("a judge vote needs the judge's name")
    with Session(engine) as s, s.begin():
        if s.get(Pair, pair_id) is None:
            raise LogError(f"pair {pair_id} does not exist")
        v = Vote(pair_id=pair_id, judge_name=judge_name, choice=choice, score_a=_float(score_a),
                 score_b=_float(score_b), raw=raw, latency_ms=_int(latency_ms), created_at=utcnow())
        s.add(v)
        s.flush()
        return v.id


def _float(v):
    return None if v is None else float(v)


def record_model_comparison(engine, run_id: int, step: int, image_a: bytes, image_b: bytes, judge_name: str,
                            choice: str, score_a: float | None, score_b: float | None, raw: str | None = None,
                            **pair_kwargs) -> int:
    """A model-judged step in one transaction: the pair (decided), the judge's vote and the decision."""
    if choice not in CHOICES:
        raise LogError(f"choice {choice!r} is not one of {', '.join(CHOICES)}")
    latency_ms = pair_kwargs.pop("latency_ms", None)
    now = utcnow()
    with Session(engine) as s, s.begin():
        pair_id = _insert_pair(s, run_id, step, image_a, image_b, status="decided", **pair_kwargs)
        s.add(Vote(pair_id=pair_id, judge_name=judge_name, choice=choice, score_a=_float(score_a),
                   score_b=_float(score_b), raw=raw, latency_ms=_int(latency_ms), created_at=now))
        gap = abs(score_a - score_b) if score_a is not None and score_b is not None else 0.0
        s.add(Decision(pair_id=pair_id, winner=choice if choice in ("a", "b", "tie") else "tie", gap=float(gap),
                       rule=f"judge:{judge_name}", n_a=int(choice == "a"), n_b=int(choice == "b"),
                       n_tie=int(choice == "tie"), n_both_bad=int(choice == "both_bad"), decided_at=now))
        return pair_id


# ----------------------------------------------------------------------------- decisions



def _decide(s: Session, pair: Pair, now: datetime) -> dict | None:
    if pair.status != "pending" or s.get(Decision, pair.id) is not None:
        return None
    rows = s.execute(_COUNTS, {"pid": pair.id}).all()
    counts = {"a": 0, "b": 0, "tie": 0, "both_bad": 0} | {c: int(n) for c, n in rows}
    if sum(counts.values()) < pair.votes_needed:
        return None
    winner, rule, gap = outcome(counts)
    d = Decision(pair_id=pair.id, winner=winner, gap=gap, rule=rule, n_a=counts["a"], n_b=counts["b"],
                 n_tie=counts["tie"], n_both_bad=counts["both_bad"], decided_at=now)
    s.add(d)
    pair.status = "decided"
    s.flush()
    return _decision_dict(d)


def decide(engine, pair_id: int) -> dict | None:
    """Write the decision if enough votes are in and none exists yet; returns the (new or existing) decision."""
    with Session(engine) as s, s.begin():
        pair = _lock_pair(s, pair_id)
        existing = s.get(Decision, pair_id)
        if existing is not None:
            return _decision_dict(existing)
        return _decide(s, pair, utcnow())


def _decision_dict(d: Decision) -> dict:
    return dict(pair_id=d.pair_id, winner=d.winner, gap=d.gap, rule=d.rule, decided_at=d.decided_at, n_a=d.n_a,
                n_b=d.n_b, n_tie=d.n_tie, n_both_bad=d.n_both_bad)


def get_decision(engine, pair_id: int) -> dict | None:
    with _read(engine) as conn:
        row = conn.execute(sa.select(Decision.__table__).where(Decision.pair_id == pair_id)).mappings().first()
    if row is None:
        return None
    return dict(row)


def wait_for_decision(engine, pair_id: int, timeout: float, poll: float = 0.05,
                      cancelled=None, check_every: float = 0.5,
                      beat_every: float | None = liveness.BEAT_EVERY_S) -> dict | None:
    """Poll for the decision (short read transactions). On timeout the pair is marked expired so
    that late votes are refused, and None is returned (unless the decision landed meanwhile).
    `cancelled()`, asked every `check_every` seconds, ends the wait early with None (pair left as is).
    Every `beat_every` seconds of waiting (None: never) the pair's run beats (`beat`), so that a run
    waiting for people is not read as stalled (db/liveness.py).
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
        pair = _lock_pair(s, pair_id)
        existing = s.get(Decision, pair_id)
        if existing is not None:
            return _decision_dict(existing)
        if pair.status == "pending":
            pair.status = "expired"
    return None


def expire_stale(engine, now: datetime | None = None) -> int:
    """Pending pairs past their deadline become expired; returns how many."""
    now = now or utcnow()
    with Session(engine) as s, s.begin():
        return _rows_changed(s, sa.update(Pair).where(Pair.status == "pending", Pair.deadline.is_not(None),
                                                      Pair.deadline <= now).values(status="expired"))


def queue_stats(engine, annotator_id: int | None = None) -> dict:
    """Counts for the annotation page and admins."""
    now = utcnow()
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    fresh = sa.or_(Pair.deadline.is_(None), Pair.deadline > now)
    with _read(engine) as conn:
        pending = conn.execute(sa.select(sa.func.count()).select_from(Pair).where(
            Pair.status == "pending", fresh)).scalar()
        live_runs = conn.execute(sa.select(sa.func.count(sa.distinct(Pair.run_id))).join(Run, Run.id == Pair.run_id)
                                 .where(Pair.status == "pending", Pair.kind == "live", Run.status == "running",
                                        fresh)).scalar()
        stale = conn.execute(sa.select(sa.func.count()).select_from(Pair).where(
            Pair.status == "pending", Pair.deadline.is_not(None), Pair.deadline <= now)).scalar()
        expired_leases = conn.execute(
            sa.select(sa.func.count()).select_from(Claim).join(Pair, Pair.id == Claim.pair_id)
            .where(Claim.expires_at <= now, Pair.status == "pending",
                   ~sa.exists().where(Vote.pair_id == Claim.pair_id, Vote.annotator_id == Claim.annotator_id,
                                      Vote.retracted.is_(False)))).scalar()
        done_today = None
        if annotator_id is not None:
            done_today = conn.execute(sa.select(sa.func.count()).select_from(Vote).where(
                Vote.annotator_id == annotator_id, Vote.retracted.is_(False), Vote.choice != "skip",
                Vote.created_at >= day)).scalar()
    return dict(pending=int(pending), live_runs_waiting=int(live_runs), done_today=done_today,
                expired_leases=int(expired_leases), stale_pairs=int(stale))
