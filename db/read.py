"""Frames for analysts: one row per vote, one row per pair (the columns db/stats.py reads)."""
from __future__ import annotations

import pandas as pd
import sqlalchemy as sa

from db.models import Annotator, Decision, Pair, Run, Vote
from db.timefilter import parse_time

VOTE_COLUMNS = ["vote_id", "pair_id", "run_id", "step", "kind", "annotator", "judge", "choice", "score_a", "score_b",
                "shown_left", "latency_ms", "created_at", "gold_answer", "duplicate_of", "retracted", "skip_reason"]
# a person's reason for a skip (db.votes.skip_reason); None for every other vote, a judge's raw answer included
_SKIP_REASON = sa.case((sa.and_(Vote.choice == "skip", Vote.annotator_id.is_not(None)), Vote.raw), else_=None)


def _frame(engine, stmt, columns) -> pd.DataFrame:
    with engine.connect().execution_options(readonly=True) as conn:
        rows = [tuple(r) for r in conn.execute(stmt)]  # plain tuples: pandas builds from them ~2× faster
    frame = pd.DataFrame(rows, columns=columns)
    if "created_at" in frame:
        frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    return frame


def votes_frame(engine, run_id: int | None = None, since=None) -> pd.DataFrame:
    """Every vote (people and model judges, skips and retracted ones included), oldest first; a
    person's skip carries its reason in `skip_reason`."""
    stmt = (sa.select(Vote.id, Vote.pair_id, Pair.run_id, Pair.step, Pair.kind, Annotator.name, Vote.judge_name,
                      Vote.choice, Vote.score_a, Vote.score_b, Vote.shown_left, Vote.latency_ms, Vote.created_at,
                      Pair.gold_answer, Pair.duplicate_of, Vote.retracted, _SKIP_REASON)
            .join(Pair, Pair.id == Vote.pair_id).outerjoin(Annotator, Annotator.id == Vote.annotator_id)
            .order_by(Vote.id))
    if run_id is not None:
        stmt = stmt.where(Pair.run_id == run_id)
    if (when := parse_time(since)) is not None:
        stmt = stmt.where(Vote.created_at >= when)
    frame = _frame(engine, stmt, VOTE_COLUMNS)
    frame["retracted"] = frame["retracted"].astype(bool)
    frame["duplicate_of"] = frame["duplicate_of"].astype("Int64")
    frame["latency_ms"] = frame["latency_ms"].astype("Int64")
    return frame


PAIR_COLUMNS = ["pair_id", "run_id", "step", "view", "t", "t_b", "seed_a", "seed_b", "kind", "status", "votes_needed",
                "question", "prompt", "gold_answer", "duplicate_of", "image_a", "image_b", "created_at", "deadline",
                "winner", "gap", "rule", "n_a", "n_b", "n_tie", "n_both_bad", "decided_at"]


def pairs_frame(engine, run_id: int | None = None, since=None, kind: str | None = None,
                status: str | None = None) -> pd.DataFrame:
    """Every pair with its decision (NaN/None where undecided), oldest first. image_a/b are sha256 ids."""
    stmt = (sa.select(Pair.id, Pair.run_id, Pair.step, Pair.view, Pair.t, Pair.t_b, Pair.seed_a, Pair.seed_b,
                      Pair.kind, Pair.status, Pair.votes_needed, sa.func.coalesce(Pair.question, Run.question),
                      Run.prompt, Pair.gold_answer, Pair.duplicate_of, Pair.image_a, Pair.image_b, Pair.created_at,
                      Pair.deadline, Decision.winner, Decision.gap, Decision.rule, Decision.n_a, Decision.n_b,
                      Decision.n_tie, Decision.n_both_bad, Decision.decided_at)
            .join(Run, Run.id == Pair.run_id).outerjoin(Decision, Decision.pair_id == Pair.id).order_by(Pair.id))
    if run_id is not None:
        stmt = stmt.where(Pair.run_id == run_id)
    if kind is not None:
        stmt = stmt.where(Pair.kind == kind)
    if status is not None:
        stmt = stmt.where(Pair.status == status)
    if (when := parse_time(since)) is not None:
        stmt = stmt.where(Pair.created_at >= when)
    frame = _frame(engine, stmt, PAIR_COLUMNS)
    for col in ("deadline", "decided_at"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    frame["duplicate_of"] = frame["duplicate_of"].astype("Int64")
    return frame
