"""The arena of finished runs: pairs that show two finished runs of the same prompt to people, the
per-criterion verdicts a person may give beside such a vote, and the votes read back as
comparisons between configs, judges or seeds (db/leaderboard.py ranks them).

An arena pair (kind 'arena') holds image_a = its run_id's turntable views and image_b = its
run_b_id's: the strip of square views a finished run stores (runs.metrics['turntable_views'],
dreamdpo.export.turntable_views), the log's candidate layout, so the Annotate page shows both the
same way (one grid each, zoomed view by view) and shuffles left and right per vote (shown_left).
Only runs whose strips have the same size are paired. Which runs are paired is chosen by a policy
of db/leaderboard.py (default: the pair of configs whose next vote most shrinks the CIs); a pair of
runs already waiting for votes is not posted again.

What an item is, for each "by":
- config: the run's config keys whose values differ between the arena's runs (every finished run
  with turntable views, all prompts), as "key=value, ..." sorted by key; the seed, the prompt and
  keys that only say where or how a run was carried out (out, device, ...: db/audit.py's NOT_NAMING)
  never count; "default" when nothing differs. Stable as long as no run with a new differing key
  finishes (a new key renames every config: it is a new dimension of the comparison);
- judge: the judge that steered the run (config 'judge');
- seed: "seed N" (config 'seed').
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session

from db import leaderboard as lb
from db.audit import NOT_NAMING, flat_config, value_text
from db.criteria import CRITERION_NAMES
from db.engine import read_only
from db.errors import LogError
from db.models import CRITERION_CHOICES, Image, Pair, Run, Vote, VoteCriterion
from db.votes import STANDING_COUNTS

VIEWS_KEY = "turntable_views"  # runs.metrics key of the run's turntable views (an image id)
QUESTION = "Which 3D object is better for the prompt? Each one is shown turning, view by view."
BY = ("config", "judge", "seed")
VOTES_NEEDED = 3  # people per arena pair, unless asked otherwise


def arena_runs(engine: sa.Engine) -> list[dict]:
    """Every finished run with turntable views: id, prompt, config, step, views (image id), width, height."""
    with read_only(engine) as conn:
        rows = [dict(r) for r in conn.execute(
            sa.select(Run.id, Run.prompt, Run.config, Run.step, Run.metrics)
            .where(Run.status == "finished").order_by(Run.id)).mappings()]
        runs = [dict(r, views=(r.pop("metrics") or {}).get(VIEWS_KEY)) for r in rows]
        runs = [r for r in runs if isinstance(r["views"], str)]
        sizes = {i: (w, h) for i, w, h in conn.execute(
            sa.select(Image.id, Image.width, Image.height).where(Image.id.in_({r["views"] for r in runs})))}
    return [dict(r, width=sizes[r["views"]][0], height=sizes[r["views"]][1]) for r in runs if r["views"] in sizes]


def item_labels(runs: Sequence[dict], by: str = "config") -> dict[int, str]:
    """Each run's item for the leaderboard (module docstring: config, judge or seed)."""
    if by not in BY:
        raise LogError(f"group by {by!r} is not one of {', '.join(BY)}")
    flat = {int(r["id"]): flat_config(r.get("config")) for r in runs}
    if by == "judge":
        return {i: str(c.get("judge", "unknown judge")) for i, c in flat.items()}
    if by == "seed":
        return {i: f"seed {value_text(c['seed'])}" if "seed" in c else "no seed" for i, c in flat.items()}
    keys = sorted({k for c in flat.values() for k in c})
    differ = [k for k in keys if k != "seed" and k.split(".")[0] not in NOT_NAMING
              and len({repr(c.get(k)) for c in flat.values()}) > 1]
    return {i: ", ".join(f"{k}={value_text(c.get(k))}" for k in differ) or "default" for i, c in flat.items()}


# ----------------------------------------------------------------------------- votes read back
def arena_comparisons(engine: sa.Engine, by: str = "config", criterion: str | None = None) -> pd.DataFrame:
    """People's standing votes on arena pairs as comparisons (pair_id, run_a, run_b, item_a, item_b,
    winner a|b|tie): a both-bad vote is a tie; skips and retracted votes are left out. With a
    criterion, its verdicts given beside those votes instead of the votes themselves."""
    if criterion is not None and criterion not in CRITERION_NAMES:
        raise LogError(f"criterion {criterion!r} is not one of {', '.join(CRITERION_NAMES)}")
    labels = item_labels(arena_runs(engine), by)
    people = (Pair.kind == "arena", Vote.annotator_id.is_not(None), Vote.retracted.is_(False))
    if criterion is None:
        stmt = (sa.select(Pair.id, Pair.run_id, Pair.run_b_id, Vote.choice).join(Vote, Vote.pair_id == Pair.id)
                .where(*people, Vote.choice.in_(("a", "b", "tie", "both_bad"))))
    else:
        stmt = (sa.select(Pair.id, Pair.run_id, Pair.run_b_id, VoteCriterion.choice)
                .join(Vote, Vote.pair_id == Pair.id).join(VoteCriterion, VoteCriterion.vote_id == Vote.id)
                .where(*people, Vote.choice != "skip", VoteCriterion.criterion == criterion))
    with read_only(engine) as conn:
        rows = [tuple(r) for r in conn.execute(stmt.order_by(Vote.id))]
    frame = pd.DataFrame(rows, columns=["pair_id", "run_a", "run_b", "winner"])
    frame["winner"] = frame["winner"].replace({"both_bad": "tie"})
    known = frame["run_a"].isin(list(labels)) & frame["run_b"].isin(list(labels))
    frame = frame[known].reset_index(drop=True)
    frame["item_a"] = [labels[int(r)] for r in frame["run_a"]]
    frame["item_b"] = [labels[int(r)] for r in frame["run_b"]]
    return frame[["pair_id", "run_a", "run_b", "item_a", "item_b", "winner"]]


def arena_leaderboard(engine: sa.Engine, by: str = "config", baseline: str | None = None,
                      criterion: str | None = None, n_boot: int = 200, seed: int = 0) -> lb.Leaderboard:
    """The anchored Bradley–Terry leaderboard of configs (or judges, or seeds) from people's arena votes."""
    return lb.leaderboard(arena_comparisons(engine, by, criterion), baseline=baseline, n_boot=n_boot, seed=seed)


# ----------------------------------------------------------------------------- posting pairs
def arena_prompts(engine: sa.Engine) -> dict[str, int]:
    """Prompts with at least two finished runs with turntable views, and how many each has."""
    counts: dict[str, int] = {}
    for r in arena_runs(engine):
        counts[r["prompt"]] = counts.get(r["prompt"], 0) + 1
    return {p: n for p, n in counts.items() if n >= 2}


def _eligible(runs: list[dict], prompt: str, run_ids: Sequence[int] | None) -> list[dict]:
    if run_ids is None:
        chosen = [r for r in runs if r["prompt"] == prompt]
    else:
        by_id = {r["id"]: r for r in runs}
        missing = [i for i in run_ids if int(i) not in by_id]
        if missing:
            raise LogError(f"run {missing[0]} is not a finished run with a turntable; only those enter the arena")
        chosen = [by_id[int(i)] for i in dict.fromkeys(run_ids)]
        other = [r["id"] for r in chosen if r["prompt"] != prompt]
        if other:
            raise LogError(f"run {other[0]} has another prompt; arena pairs compare runs of the same prompt")
    if len(chosen) < 2:
        raise LogError(f"the prompt {prompt!r} has {len(chosen)} finished run(s) with a turntable; an arena "
                       "pair needs two (finish more runs of it, or pick another prompt)")
    return chosen


def _waiting(engine: sa.Engine) -> tuple[set[frozenset[int]], list[tuple[int, int, int]]]:
    """Run pairs with an arena pair still waiting for votes, and (run, run_b, votes still expected) of each."""
    with read_only(engine) as conn:
        rows = conn.execute(sa.select(Pair.id, Pair.run_id, Pair.run_b_id, Pair.votes_needed)
                            .where(Pair.kind == "arena", Pair.status == "pending")).all()
        expected = []
        for pair_id, a, b, need in rows:
            votes_in = sum(n for _c, n in conn.execute(STANDING_COUNTS, {"pid": pair_id}))
            expected.append((int(a), int(b or a), max(0, int(need) - int(votes_in))))
    return {frozenset((a, b)) for a, b, _ in expected}, expected


def post_arena_pairs(engine: sa.Engine, prompt: str, run_ids: Sequence[int] | None = None, n_pairs: int = 1,
                     votes_needed: int = VOTES_NEEDED, policy: str = "active", baseline: str | None = None,
                     seed: int | None = None) -> list[int]:
    """Post up to n_pairs arena pairs between finished runs of `prompt` (all of them, or `run_ids`),
    chosen one after another by `policy` (db/leaderboard.py POLICIES) on the config leaderboard's
    current fit; returns the new pairs' ids (fewer when every pair of runs already waits for votes).
    LogError (one line, nothing posted) for fewer than two such runs or a bad argument."""
    if policy not in lb.POLICIES:
        raise LogError(f"pair policy {policy!r} is not one of {', '.join(lb.POLICIES)}")
    if not isinstance(n_pairs, int) or n_pairs < 1:
        raise LogError(f"the number of pairs must be a whole number ≥ 1, not {n_pairs!r}")
    if not isinstance(votes_needed, int) or votes_needed < 1:
        raise LogError(f"votes_needed must be a whole number ≥ 1, not {votes_needed!r}")
    runs = arena_runs(engine)
    chosen = _eligible(runs, prompt, run_ids)
    labels = item_labels(runs, "config")
    waiting, expected = _waiting(engine)
    candidates = [(a, b) for n, a in enumerate(chosen) for b in chosen[n + 1:]
                  if (a["width"], a["height"]) == (b["width"], b["height"])
                  and frozenset((a["id"], b["id"])) not in waiting]
    state = lb.choice_state(arena_comparisons(engine, "config"), [labels[r["id"]] for r in chosen], baseline)
    for run_a, run_b, votes in expected:
        if run_a in labels and run_b in labels and {labels[run_a], labels[run_b]} <= set(state.items):
            lb.add_expected(state, labels[run_a], labels[run_b], votes)
    rng = np.random.default_rng(seed)
    picked: list[tuple[dict, dict]] = []
    while candidates and len(picked) < n_pairs:
        k = lb.POLICIES[policy]([(labels[a["id"]], labels[b["id"]]) for a, b in candidates], state, rng)
        a, b = candidates.pop(k)
        lb.add_expected(state, labels[a["id"]], labels[b["id"]], votes_needed)
        picked.append((a, b) if rng.random() < 0.5 else (b, a))  # which run is 'a': at random too
    with Session(engine) as s, s.begin():
        pairs = [Pair(run_id=a["id"], run_b_id=b["id"], step=int(a["step"] or 0), image_a=a["views"],
                      image_b=b["views"], question=QUESTION, status="pending", votes_needed=votes_needed,
                      kind="arena") for a, b in picked]
        s.add_all(pairs)
        s.flush()
        return [p.id for p in pairs]


# ----------------------------------------------------------------------------- per-criterion verdicts
def record_criteria(engine: sa.Engine, vote_id: int, annotator_id: int, verdicts: dict[str, str]) -> int:
    """A person's optional per-criterion verdicts (criterion → a|b|tie, in the pair's a/b terms) given
    beside their vote on an arena pair; returns how many were stored. Idempotent: the same verdict
    again stores nothing; a different one for a criterion already answered is refused."""
    verdicts = {str(k): str(v) for k, v in verdicts.items() if v is not None}
    for criterion, choice in verdicts.items():
        if criterion not in CRITERION_NAMES:
            raise LogError(f"criterion {criterion!r} is not one of {', '.join(CRITERION_NAMES)}")
        if choice not in CRITERION_CHOICES:
            raise LogError(f"a verdict on {criterion} is one of {', '.join(CRITERION_CHOICES)}, not {choice!r}")
    if not verdicts:
        return 0
    with Session(engine) as s, s.begin():
        vote = s.get(Vote, vote_id)
        if vote is None or vote.annotator_id != annotator_id or vote.retracted or vote.choice == "skip":
            raise LogError(f"vote {vote_id} is not a standing vote of yours; vote on the pair first")
        if s.get_one(Pair, vote.pair_id).kind != "arena":
            raise LogError(f"vote {vote_id} is not on an arena pair; criteria are asked beside arena votes")
        given = dict(s.execute(sa.select(VoteCriterion.criterion, VoteCriterion.choice)
                               .where(VoteCriterion.vote_id == vote_id)).all())
        clash = [c for c, v in verdicts.items() if c in given and given[c] != v]
        if clash:
            raise LogError(f"you already answered {clash[0]} ({given[clash[0]]}) on this vote; "
                           "undo the vote to change it")
        new = [VoteCriterion(vote_id=vote_id, criterion=c, choice=v) for c, v in verdicts.items() if c not in given]
        s.add_all(new)
        return len(new)


def criteria_of(engine: sa.Engine, vote_id: int) -> dict[str, str]:
    """The per-criterion verdicts stored with a vote (criterion → a|b|tie)."""
    with read_only(engine) as conn:
        return dict(conn.execute(sa.select(VoteCriterion.criterion, VoteCriterion.choice)
                                 .where(VoteCriterion.vote_id == vote_id)).all())


def pair_runs(engine: sa.Engine, pair_id: int) -> tuple[int, int | None]:
    """(run_id, run_b_id) of a pair: an arena pair's two runs."""
    with read_only(engine) as conn:
        row = conn.execute(sa.select(Pair.run_id, Pair.run_b_id).where(Pair.id == pair_id)).first()
    if row is None:
        raise LogError(f"pair {pair_id} does not exist")
    return int(row[0]), None if row[1] is None else int(row[1])
