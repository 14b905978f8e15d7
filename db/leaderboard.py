"""The arena's leaderboard and which pair to ask next: pure functions over comparisons
(item_a, item_b, winner in a|b|tie), no database (db/arena.py reads the votes).

Leaderboard: Bradley–Terry log-strengths (db/stats.py's fit, ties half a win each way) with
percentile bootstrap CIs over votes resampled with replacement (FastChat's arena, ≥ 100 rounds),
**anchored** to a baseline item: its rating is fixed at ANCHOR and every other rating is
ANCHOR + ELO_SCALE · (s_i − s_baseline), so ratings read like Elo (400 points: 10:1 odds) and the
CIs are of the difference to the baseline (GPTEval3D anchors its Elo the same way). Beside it: the
win-rate matrix (row beats column, ties half) and the vote count of every cell.

Active choice (`most_informative`): on the current fit, one more vote between i and j adds
w·d·dᵀ to the Fisher information of the anchored strengths (d = e_i − e_j, w = p(1 − p),
p = P(i beats j)); by Sherman–Morrison the sum of the anchored variances drops by
w·‖Σd‖² / (1 + w·dᵀΣd), Σ the current covariance (the inverse information). The policy asks the
pair with the largest drop: an A-optimal design step, greedy over a batch (each pair posted counts
as its expected votes before the next is chosen). It prefers pairs whose CIs are wide, rarely
compared, and close to a coin flip. `random_pair` and `least_compared` are the plain baselines
(bench/bench_arena.py puts them side by side).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from db import stats
from db.errors import LogError

ELO_SCALE = 400.0 / math.log(10.0)  # rating points per Bradley–Terry unit (natural log-odds)
ANCHOR = 1000.0                     # the baseline's rating
PRIOR = 0.5                         # virtual wins and losses per item (db/stats.py): keeps unbeaten items finite


@dataclass(frozen=True)
class Leaderboard:
    table: pd.DataFrame     # index item: rating, low, high, rank, votes, win_rate; best first
    win_rate: pd.DataFrame  # row beats column (ties half), NaN where never compared; table's order
    counts: pd.DataFrame    # votes between row and column
    baseline: str
    n_votes: int
    level: float


def _matrices(comparisons: pd.DataFrame, items: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(wins, games): wins[i, j] of i over j (ties half), games[i, j] = votes between i and j."""
    index = pd.Index(items)
    ia, ib = index.get_indexer(comparisons["item_a"]), index.get_indexer(comparisons["item_b"])
    win_a = comparisons["winner"].map({"a": 1.0, "b": 0.0, "tie": 0.5}).to_numpy(dtype=float)
    wins = np.zeros((len(index), len(index)))
    np.add.at(wins, (ia, ib), win_a)
    np.add.at(wins, (ib, ia), 1.0 - win_a)
    return wins, wins + wins.T


def leaderboard(comparisons: pd.DataFrame, baseline: str | None = None, n_boot: int = 200, seed: int = 0,
                level: float = 0.95, prior: float = PRIOR) -> Leaderboard:
    """The anchored Bradley–Terry leaderboard of the items compared. `baseline` None: the item with
    the most votes. LogError (one line) for no votes or a baseline without votes."""
    comparisons = comparisons[comparisons["item_a"] != comparisons["item_b"]]
    comparisons = comparisons[comparisons["winner"].isin(["a", "b", "tie"])]
    if comparisons.empty:
        raise LogError("no arena votes between different items yet; post pairs (`dreamdpo arena post`) "
                       "and let people vote on them")
    if n_boot < 0:
        raise LogError(f"the number of bootstrap rounds must be ≥ 0, not {n_boot}")
    items, point, boots = stats.bt_bootstrap(comparisons, n_boot=n_boot, seed=seed, prior=prior)
    labels = [str(i) for i in items]
    wins, games = _matrices(comparisons, labels)
    votes = games.sum(axis=1)
    if baseline is None:
        baseline = labels[int(np.argmax(votes))]
    if baseline not in labels:
        raise LogError(f"baseline {baseline!r} has no arena votes; choose one of: {', '.join(sorted(labels))}")
    b = labels.index(baseline)
    rating = ANCHOR + ELO_SCALE * (point - point[b])
    anchored = ANCHOR + ELO_SCALE * (boots - boots[:, [b]]) if len(boots) else np.full((0, len(labels)), np.nan)
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    table = pd.DataFrame({
        "rating": rating,
        "low": np.quantile(anchored, lo, axis=0) if len(anchored) else np.nan,
        "high": np.quantile(anchored, hi, axis=0) if len(anchored) else np.nan,
        "votes": votes.round().astype(int) if np.allclose(votes, votes.round()) else votes,
        "win_rate": wins.sum(axis=1) / np.where(votes > 0, votes, np.nan),
    }, index=pd.Index(labels, name="item"))
    table["rank"] = table["rating"].rank(ascending=False, method="min").astype(int)
    table = table.sort_values("rating", ascending=False)[["rank", "rating", "low", "high", "votes", "win_rate"]]
    order = [labels.index(i) for i in table.index]
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(games > 0, wins / games, np.nan)[np.ix_(order, order)]
    counts = games[np.ix_(order, order)]
    names = list(table.index)
    return Leaderboard(table=table, win_rate=pd.DataFrame(rate, index=names, columns=names),
                       counts=pd.DataFrame(counts.round().astype(int), index=names, columns=names),
                       baseline=baseline, n_votes=int(len(comparisons)), level=level)


# ----------------------------------------------------------------------------- which pair to ask next
@dataclass
class ChoiceState:
    """What a policy sees: the items, their current log-strengths, the votes between them so far
    (games[i, j], pending pairs counted as their expected votes) and the baseline's index."""

    items: list[str]
    strengths: np.ndarray
    games: np.ndarray
    baseline: int
    prior: float = PRIOR

    def index(self, item: str) -> int:
        return self.items.index(item)


def choice_state(comparisons: pd.DataFrame, items: Sequence[str], baseline: str | None = None,
                 prior: float = PRIOR) -> ChoiceState:
    """The current fit over `items` (those without votes start at the prior); the baseline defaults
    to the item with the most votes, as in `leaderboard`."""
    items = list(dict.fromkeys([*items, *comparisons["item_a"], *comparisons["item_b"]]))
    comparisons = comparisons[(comparisons["item_a"] != comparisons["item_b"])
                              & comparisons["winner"].isin(["a", "b", "tie"])]
    wins, games = _matrices(comparisons, items)
    strengths = stats.bt_fit(wins, prior) if len(comparisons) else np.zeros(len(items))
    b = items.index(baseline) if baseline in items else int(np.argmax(games.sum(axis=1)))
    return ChoiceState(items, strengths, games, b, prior)


def anchored_covariance(state: ChoiceState) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the items other than the baseline, covariance of their strengths with the
    baseline's fixed): the inverse of the Fisher information with the baseline's row and column out."""
    info = stats.bt_information(state.strengths, state.games, state.prior)
    keep = np.array([k for k in range(len(state.items)) if k != state.baseline], dtype=int)
    return keep, np.linalg.pinv(info[np.ix_(keep, keep)])


def variance_drops(state: ChoiceState, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """For each (item, item) pair: how much one more vote on it shrinks the sum of the anchored
    variances (module docstring); 0 for an item against itself."""
    keep, cov = anchored_covariance(state)
    where = {int(k): n for n, k in enumerate(keep)}
    drops = np.zeros(len(pairs))
    for n, (a, b) in enumerate(pairs):
        i, j = state.index(a), state.index(b)
        if i == j:
            continue
        d = np.zeros(len(keep))
        if i in where:
            d[where[i]] += 1.0
        if j in where:
            d[where[j]] -= 1.0
        p = 1.0 / (1.0 + math.exp(state.strengths[j] - state.strengths[i]))
        w = p * (1.0 - p)
        sd = cov @ d
        drops[n] = w * float(sd @ sd) / (1.0 + w * float(d @ sd))
    return drops


# A policy picks one of the candidate (item, item) pairs: its index.
PairPolicy = Callable[[Sequence[tuple[str, str]], ChoiceState, np.random.Generator], int]


def most_informative(pairs: Sequence[tuple[str, str]], state: ChoiceState, rng: np.random.Generator) -> int:
    """The pair whose next vote most shrinks the anchored CIs (A-optimal; module docstring); among
    equal ones, the least compared, then a random one."""
    drops = variance_drops(state, pairs)
    games = np.array([state.games[state.index(a), state.index(b)] for a, b in pairs])
    best = np.flatnonzero(np.isclose(drops, drops.max(), rtol=1e-9, atol=1e-12))
    best = best[games[best] == games[best].min()]
    return int(rng.choice(best))


def random_pair(pairs: Sequence[tuple[str, str]], state: ChoiceState, rng: np.random.Generator) -> int:
    """Any pair, uniformly (what an arena without a choice does)."""
    return int(rng.integers(len(pairs)))


def least_compared(pairs: Sequence[tuple[str, str]], state: ChoiceState, rng: np.random.Generator) -> int:
    """The pair of different items with the fewest votes so far (round robin), ties at random."""
    games = np.array([state.games[state.index(a), state.index(b)] if a != b else np.inf for a, b in pairs])
    return int(rng.choice(np.flatnonzero(games == games.min())))


POLICIES: dict[str, PairPolicy] = {"active": most_informative, "random": random_pair, "round_robin": least_compared}


def add_expected(state: ChoiceState, a: str, b: str, votes: float) -> None:
    """Count `votes` votes between a and b as if they were in (a pair just posted), so the next
    choice of a batch looks elsewhere."""
    i, j = state.index(a), state.index(b)
    if i != j:
        state.games[i, j] += votes
        state.games[j, i] += votes
