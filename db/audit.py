"""What the Audit page, `dreamdpo stats` and the notebook show, computed without Streamlit: one read of
the votes, then the pure statistics of db/stats.py."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from db import stats
from db.timefilter import parse_time

RANKING_DIGITS = 3  # decimals of the Bradley–Terry table


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
    ranking: pd.DataFrame          # Bradley–Terry over candidates (run, noise seed), human consensus; rounded


def load_votes(engine, filters: AuditFilters, everything: pd.DataFrame | None = None) -> pd.DataFrame:
    """The filtered votes; `everything` (the whole votes frame, if already read) saves a second read."""
    from db.read import votes_frame

    # parsed before the read: a date that is not one fails at once, with the export's one-line error
    since, until = parse_time(filters.since, "--since"), parse_time(filters.until, "--until")
    frame = votes_frame(engine, run_id=filters.run_id) if everything is None else everything
    return stats.filter_votes(frame, run_id=filters.run_id, judge=filters.judge, annotator=filters.annotator,
                              since=since, until=until)


# config keys that say where or how a run was carried out, not what it optimizes: never part of a name
# (an admin's instructions for people and questions for the LMM judge are edited while the run goes)
NOT_NAMING = ("out", "device", "instructions", "judge_questions", "checkpoint_every", "log_outage_s", "preview_every",
               "test_views", "test_resolution", "export_mesh", "mesh_resolution", "export", "judge_weights",
               "judge_max_calls", "prompt", "negative_prompt")
_ALWAYS = (("dpo.tau", "τ"), ("seed", "seed"))  # (config key, as named) shown for every run that sets it
MAX_KEYS = 3        # other config keys (those whose values differ between the runs shown) in a name
PROMPT_CHARS = 40   # a prompt is cut to this many characters in a name


def flat_config(config, prefix: str = "") -> dict:
    """{"dpo": {"tau": 0.05}} → {"dpo.tau": 0.05}."""
    if not isinstance(config, dict):
        return {}
    out: dict = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_config(value, f"{name}."))
        else:
            out[name] = value
    return out


def value_text(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value_text(x) for x in v) + "]"
    return str(v)


def _cut(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def run_names(runs: list[dict]) -> dict[int, str]:
    """Each run (dicts with id, prompt, config) named for a table, e.g. 'run 3 (τ=0.05, seed 0)': its id;
    its prompt when the runs named differ in prompt; τ and seed where the config sets them; and up to
    MAX_KEYS more config keys whose values differ between the runs that have a config, as key=value
    (keys that only say where or how a run was carried out, such as out or device, never)."""
    flat = {int(r["id"]): flat_config(r.get("config")) for r in runs}
    always = {key for key, _ in _ALWAYS}
    keys = sorted({k for c in flat.values() for k in c})
    configs = [c for c in flat.values() if c]  # a run logged without a config names no keys
    differ = [k for k in keys if k not in always and k.split(".")[0] not in NOT_NAMING
              and len({repr(c.get(k)) for c in configs}) > 1]
    prompts = len({r.get("prompt") for r in runs}) > 1
    names = {}
    for r in runs:
        config = flat[int(r["id"])]
        parts = [f'"{_cut(r.get("prompt") or "", PROMPT_CHARS)}"'] if prompts else []
        parts += [f"{label}={value_text(config[key])}" if label == "τ" else f"{label} {value_text(config[key])}"
                  for key, label in _ALWAYS if key in config]
        parts += [f"{k}={value_text(config.get(k))}" for k in differ[:MAX_KEYS] if config]
        names[int(r["id"])] = f"run {int(r['id'])}" + (f" ({', '.join(parts)})" if parts else "")
    return names


def _runs(engine, run_ids) -> list[dict]:
    import sqlalchemy as sa

    from db.engine import read_only
    from db.models import Run

    ids = sorted({int(i) for i in run_ids})
    with read_only(engine) as conn:
        rows = conn.execute(sa.select(Run.id, Run.prompt, Run.config).where(Run.id.in_(ids)).order_by(Run.id))
        return [dict(r) for r in rows.mappings()]


def candidate_name(run_name: str, step, seed) -> str:
    """A candidate in the Bradley–Terry table: its run's name, the step it was drawn at and its noise seed."""
    return f"{run_name} · step {int(step)} · noise {int(seed)}"


def candidate_comparisons(engine, frame: pd.DataFrame) -> pd.DataFrame:
    """Human-consensus comparisons between candidates, for Bradley–Terry. A candidate is one noise draw
    of a run, named by candidate_name (its run by run_names: id, τ, seed and the config that differs)."""
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
    if p.empty:
        return pd.DataFrame(columns=["item_a", "item_b", "winner"])
    runs = run_names(_runs(engine, p["run_id"].unique()))
    # one name per candidate (run, seed), even if it was shown at several steps: the first step
    drawn = pd.concat([p[["run_id", "step", "seed_a"]].set_axis(["run_id", "step", "seed"], axis=1),
                       p[["run_id", "step", "seed_b"]].set_axis(["run_id", "step", "seed"], axis=1)])
    first = drawn.astype("int64").groupby(["run_id", "seed"])["step"].min().to_dict()
    name = lambda run, seed: candidate_name(runs[int(run)], first[int(run), int(seed)], seed)  # noqa: E731
    return pd.DataFrame({"item_a": [name(r, s) for r, s in zip(p["run_id"], p["seed_a"])],
                         "item_b": [name(r, s) for r, s in zip(p["run_id"], p["seed_b"])],
                         "winner": labels.to_numpy()})


def audit_data(engine, filters: AuditFilters = AuditFilters(), everything: pd.DataFrame | None = None) -> AuditData:
    """Everything the Audit page shows: one read of the votes, then pure statistics."""
    frame = load_votes(engine, filters, everything)
    summary = stats.audit_summary(frame, filters.target_agreement, n_boot=filters.n_boot)
    comps = candidate_comparisons(engine, frame)
    ranking = stats.bradley_terry_ci(comps, n_boot=min(filters.n_boot, 100)) if len(comps) else pd.DataFrame()
    ranking = stats.rounded(ranking, RANKING_DIGITS)
    return AuditData(frame, summary, ranking)
