"""Leases: a person's hold on a pair (a claims row, until expires_at), and who holds or voted a pair.

A lease is kept after the vote, so that undo can check it. The annotators who "hold or voted" a pair
are those with an unexpired lease plus those with a standing (not retracted) non-skip vote; at most
`votes_needed` of them per pair (db/queue.py hands out leases under that rule).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from db.models import Claim, Vote


def holders(pair_id: Any, now: Any) -> sa.ColumnElement[int]:
    """Number of annotators who hold an unexpired lease or a standing non-skip vote on the pair
    (a scalar subquery; `pair_id` may be Pair.id to correlate with an outer query, and either argument a
    bind parameter)."""
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


def valid_claim(s: Session, pair_id: int, annotator_id: int, now: datetime) -> Claim | None:
    """The person's lease on the pair if it has not expired (read afresh), else None."""
    claim = s.get(Claim, (pair_id, annotator_id), populate_existing=True)
    return claim if claim is not None and claim.expires_at > now else None
