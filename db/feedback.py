"""What a running optimizer reads back from people: their decisions on its pairs, who is online,
how many of its pairs wait, and the pair it already posted for a step (so a resumed run never
posts a step twice). Reads only, each one short statement.
"""
from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta

import sqlalchemy as sa

from db.engine import read_only
from db.models import Claim, Decision, Image, Pair, Vote, utcnow

# people's decisions that say which candidate is better (a both-bad decision does not)
LEARNABLE_RULES = ("unanimous", "majority", "split")


def find_pair(engine, run_id: int, step: int, seed_a: int | None, seed_b: int | None,
              kind: str = "live") -> dict | None:
    """The pair this run already posted for (step, member seeds, kind), with its decision if any."""
    q = (sa.select(Pair.id.label("pair_id"), Pair.status, Pair.deadline, Decision.winner, Decision.gap,
                   Decision.rule, Decision.n_a, Decision.n_b,
                   Decision.n_tie, Decision.n_both_bad)
         .outerjoin(Decision, Decision.pair_id == Pair.id)
         .where(Pair.run_id == run_id, Pair.step == step, Pair.kind == kind,
                Pair.seed_a == seed_a, Pair.seed_b == seed_b).order_by(Pair.id).limit(1))
    with read_only(engine) as conn:
        row = conn.execute(q).mappings().first()
    return dict(row) if row is not None else None


def pair_status(engine, pair_id: int) -> str | None:
    """pending | decided | expired | cancelled | indistinct (None: no such pair)."""
    with read_only(engine) as conn:
        return conn.execute(sa.select(Pair.status).where(Pair.id == pair_id)).scalar()


def people_decisions(engine, run_id: int, exclude: Collection[int] = frozenset()) -> list[dict]:
    """Every pair of the run that people decided (not a model's record, not both-bad), oldest first,
    with both candidates' PNG bytes and what regenerates them (t, seeds, cameras); pairs in `exclude`
    (already learned from) are left out."""
    a, b = sa.orm.aliased(Image), sa.orm.aliased(Image)
    q = (sa.select(Pair.id.label("pair_id"), Pair.step, Decision.winner, Decision.rule, Decision.gap,
                   Pair.t, Pair.t_b, Pair.seed_a, Pair.seed_b, Pair.camera.label("cameras"),
                   a.png.label("png_a"), b.png.label("png_b"))
         .join(Decision, Decision.pair_id == Pair.id)
         .join(a, a.id == Pair.image_a).join(b, b.id == Pair.image_b)
         .where(Pair.run_id == run_id, Pair.kind.in_(("live", "audit")),
                Decision.rule.in_(LEARNABLE_RULES))
         .order_by(Pair.id))
    if exclude:
        q = q.where(Pair.id.not_in(sorted(exclude)))
    with read_only(engine) as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def posted_pairs(engine, run_id: int) -> int:
    """The run's live pairs ever posted for people, whatever became of them (a model's record of a
    step has no deadline; a pair for people always has one)."""
    q = sa.select(sa.func.count()).select_from(Pair).where(
        Pair.run_id == run_id, Pair.kind == "live", Pair.deadline.is_not(None))
    with read_only(engine) as conn:
        return int(conn.execute(q).scalar() or 0)


def _waiting():
    """Live pairs still waiting for people: pending, not past their deadline."""
    return sa.and_(Pair.kind == "live", Pair.status == "pending",
                   sa.or_(Pair.deadline.is_(None), Pair.deadline > utcnow()))


def waiting_pairs(engine, run_id: int) -> int:
    """The run's live pairs still waiting for people (pending, not past their deadline)."""
    q = sa.select(sa.func.count()).select_from(Pair).where(Pair.run_id == run_id, _waiting())
    with read_only(engine) as conn:
        return int(conn.execute(q).scalar() or 0)


def waiting_pairs_by_run(engine) -> dict[int, int]:
    """Run id → its live pairs still waiting for people; runs with none are left out."""
    q = sa.select(Pair.run_id, sa.func.count()).where(_waiting()).group_by(Pair.run_id)
    with read_only(engine) as conn:
        return {int(r): int(n) for r, n in conn.execute(q).all()}


def annotators_online(engine, within_s: float = 60.0, excluding: int | None = None) -> int:
    """People (other than `excluding`) who claimed or voted in the last `within_s` seconds."""
    since = utcnow() - timedelta(seconds=within_s)
    claims = sa.select(Claim.annotator_id).where(Claim.claimed_at >= since)
    votes = sa.select(Vote.annotator_id).where(Vote.annotator_id.is_not(None), Vote.created_at >= since)
    if excluding is not None:
        claims, votes = claims.where(Claim.annotator_id != excluding), votes.where(Vote.annotator_id != excluding)
    q = sa.select(sa.func.count(sa.distinct(sa.union(claims, votes).subquery().c.annotator_id)))
    with read_only(engine) as conn:
        return int(conn.execute(q).scalar() or 0)
