"""The latest rows the annotate page shows beside the pair: a person's own recent votes, and a run's
latest render (the context of a pair that carries none). Reads only, each one short statement."""
from __future__ import annotations

import sqlalchemy as sa

from db.engine import read_only
from db.models import Decision, Image, Pair, Vote


def recent_votes(engine, annotator_id: int, n: int = 10) -> list[dict]:
    """This person's own latest votes (newest first), with what became of each pair (`winner`, None
    while undecided): pair_id, choice, shown_left, created_at, retracted, winner, reason (a skip's, else None)."""
    reason = sa.case((Vote.choice == "skip", Vote.raw), else_=None).label("reason")
    q = (sa.select(Vote.pair_id, Vote.choice, Vote.shown_left, Vote.created_at, Vote.retracted, Decision.winner,
                   reason)
         .outerjoin(Decision, Decision.pair_id == Vote.pair_id)
         .where(Vote.annotator_id == annotator_id).order_by(Vote.id.desc()).limit(n))
    with read_only(engine) as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def latest_render(engine, run_id: int) -> bytes | None:
    """The PNG of the run's newest pair that carries a render, or None."""
    q = (sa.select(Image.png).join(Pair, Pair.render_image == Image.id)
         .where(Pair.run_id == run_id).order_by(Pair.id.desc()).limit(1))
    with read_only(engine) as conn:
        return conn.execute(q).scalar()
