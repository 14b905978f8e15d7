"""The arena's CI width against the number of votes (issue 15, item 2): planted Bradley–Terry strengths
of K configs, votes drawn from them, pairs chosen by each policy of db/leaderboard.py side by side in
one run (the same planted strengths and seeds for each), as `dreamdpo arena post` chooses them: a
batch of pairs per round, each pair voted by `--votes` people, the fit refreshed between rounds.

Reported at each checkpoint, averaged over `--reps` repetitions: the mean 95% CI width of the anchored
ratings (rating points, the baseline excluded: its CI is [1000, 1000]), the share of items whose CI
covers the planted rating, and the share of repetitions whose order is exactly right. Also the time
of one leaderboard (200 bootstrap rounds) and of one choice of a batch.

    python bench/bench_arena.py [--configs 6] [--reps 20] [--checkpoints 60,120,240,480,960]
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import pandas as pd

from db import leaderboard as lb


def planted(k: int) -> dict[str, float]:
    """K configs 1.6 BT units apart end to end (about 280 rating points), baseline c0 in the middle."""
    strengths = np.linspace(-0.8, 0.8, k)
    order = np.r_[k // 2, [i for i in range(k) if i != k // 2]]  # c0 is a middle one
    return {f"c{n}": float(strengths[i]) for n, i in enumerate(order)}


def simulate(policy: str, true: dict[str, float], checkpoints: list[int], batch: int, votes: int, seed: int,
             n_boot: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    names = list(true)
    candidates = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    rows: list[tuple[str, str, str]] = []
    out = []
    truth = {k: lb.ANCHOR + lb.ELO_SCALE * (v - true["c0"]) for k, v in true.items()}
    right_order = sorted(truth, key=truth.get, reverse=True)
    for target in checkpoints:
        while len(rows) < target:
            state = lb.choice_state(pd.DataFrame(rows, columns=["item_a", "item_b", "winner"]), names, "c0")
            left = list(candidates)
            for _ in range(batch):
                a, b = left.pop(lb.POLICIES[policy](left, state, rng))
                lb.add_expected(state, a, b, votes)
                p = 1.0 / (1.0 + math.exp(true[b] - true[a]))
                rows += [(a, b, "a" if rng.random() < p else "b") for _ in range(votes)]
                if not left:
                    left = list(candidates)
        board = lb.leaderboard(pd.DataFrame(rows[:target], columns=["item_a", "item_b", "winner"]), "c0",
                               n_boot=n_boot, seed=seed)
        t = board.table.drop(index="c0")
        out.append(dict(policy=policy, votes=target, width=float((t["high"] - t["low"]).mean()),
                        max_width=float((t["high"] - t["low"]).max()),
                        cover=float(np.mean([r.low <= truth[i] <= r.high for i, r in t.iterrows()])),
                        order=float(list(board.table.index) == right_order)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=int, default=6)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--checkpoints", default="60,120,240,480,960")
    ap.add_argument("--batch", type=int, default=5, help="pairs posted per round")
    ap.add_argument("--votes", type=int, default=3, help="people per pair")
    ap.add_argument("--rounds", type=int, default=200, help="bootstrap rounds")
    args = ap.parse_args()
    checkpoints = [int(x) for x in args.checkpoints.split(",")]
    true = planted(args.configs)
    rows = []
    start = time.perf_counter()
    for rep in range(args.reps):
        for policy in lb.POLICIES:
            rows += simulate(policy, true, checkpoints, args.batch, args.votes, 1000 + rep, args.rounds)
    frame = pd.DataFrame(rows)
    summary = frame.groupby(["votes", "policy"])[["width", "max_width", "cover", "order"]].mean().unstack("policy")
    print(f"{args.configs} configs, planted {', '.join(f'{k}={v:+.2f}' for k, v in true.items())}; baseline c0; "
          f"{args.reps} reps; batches of {args.batch} pairs × {args.votes} votes; {args.rounds} bootstrap rounds; "
          f"{time.perf_counter() - start:.0f} s")
    with pd.option_context("display.width", 200, "display.float_format", "{:.3g}".format):
        for col in ("width", "max_width", "cover", "order"):
            print(f"\n== {col}")
            print(summary[col].to_string())
    # timing: one leaderboard and one choice of a batch
    rng = np.random.default_rng(0)
    names = list(true)
    for n in (1000, 10000):
        comps = pd.DataFrame([(a, b, "a" if rng.random() < 0.5 else "b")
                              for a, b in (rng.choice(names, 2, replace=False) for _ in range(n))],
                             columns=["item_a", "item_b", "winner"])
        t0 = time.perf_counter()
        lb.leaderboard(comps, "c0", n_boot=args.rounds)
        t1 = time.perf_counter()
        state = lb.choice_state(comps, names, "c0")
        cands = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
        for _ in range(args.batch):
            a, b = cands.pop(lb.most_informative(cands, state, rng))
            lb.add_expected(state, a, b, args.votes)
        t2 = time.perf_counter()
        print(f"\n{n} votes: leaderboard ({args.rounds} rounds) {1000 * (t1 - t0):.0f} ms; "
              f"active choice of {args.batch} pairs {1000 * (t2 - t1):.1f} ms")


if __name__ == "__main__":
    main()
