"""What the Audit page, `dreamdpo stats` and the notebook show, computed without Streamlit: one read of
the votes, then the pure statistics of db/stats.py."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from db import stats
from db.timefilter import parse_time


@dataclass(frozen=True)
class AuditFilters:
    run_id: int | None = None
    judge: str | None = None
    annotator: str | None = None
    since: str | None = None
    until: str | None = None
    target_agreement: float = 0.9
    n_boot: int = 200


@dataclass
class AuditData:
    votes: pd.DataFrame
    summary: stats.AuditSummary
    ranking: pd.DataFrame          # Bradley–Terry over candidates (run/seed), human consensus


def load_votes(engine, filters: AuditFilters, everything: pd.DataFrame | None = None) -> pd.DataFrame:
    """The filtered votes; `everything` (the whole votes frame, if already read) saves a second read."""
    from db.read import votes_frame

    # parsed before the read: a date that is not one fails at once, with the export's one-line error
    since, until = parse_time(filters.since, "--since"), parse_time(filters.until, "--until")
    frame = votes_frame(engine, run_id=filters.run_id) if everything is None else everything
    return stats.filter_votes(frame, run_id=filters.run_id, judge=filters.judge, annotator=filters.annotator,
                              since=since, until=until)


def candidate_comparisons(engine, frame: pd.DataFrame) -> pd.DataFrame:
    """Human-consensus comparisons between candidates, named run<id>/seed<seed>, for Bradley–Terry."""
    from db.read import pairs_frame

    labels = stats.majority_vote(frame)
    if labels.empty:
        return pd.DataFrame(columns=["item_a", "item_b", "winner"])
    pairs = pairs_frame(engine)
    pairs = pairs.set_index("pair_id" if "pair_id" in pairs else "id")
    if not {"seed_a", "seed_b"} <= set(pairs.columns):
        return pd.DataFrame(columns=["item_a", "item_b", "winner"])
    p = pairs.reindex(labels.index)
    ok = p["seed_a"].notna() & p["seed_b"].notna() & labels.isin(["a", "b", "tie"]).to_numpy()
    p, labels = p[ok], labels[ok.to_numpy()]
    name = lambda run, seed: f"run{int(run)}/seed{int(seed)}"  # noqa: E731
    return pd.DataFrame({"item_a": [name(r, s) for r, s in zip(p["run_id"], p["seed_a"])],
                         "item_b": [name(r, s) for r, s in zip(p["run_id"], p["seed_b"])],
                         "winner": labels.to_numpy()})


def audit_data(engine, filters: AuditFilters = AuditFilters(), everything: pd.DataFrame | None = None) -> AuditData:
    """Everything the Audit page shows: one read of the votes, then pure statistics."""
    frame = load_votes(engine, filters, everything)
    summary = stats.audit_summary(frame, filters.target_agreement, n_boot=filters.n_boot)
    comps = candidate_comparisons(engine, frame)
    ranking = stats.bradley_terry_ci(comps, n_boot=min(filters.n_boot, 100)) if len(comps) else pd.DataFrame()
    return AuditData(frame, summary, ranking)
