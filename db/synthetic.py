"""Generate a preference log with a planted truth, for tests, the audit notebook and the bench.

Planted facts (what the audit must find):
- judge "toy-judge" agrees with the truth on ~80% of decisive pairs; its chance of being right rises
  with its score gap g ~ U(0, 1) as 0.6 + 0.4 g, so agreement on pairs with gap ≥ τ is
  0.8 + 0.2 τ: the calibrated τ for a 0.9 target is 0.5;
- judge "first-judge" picks the image shown first 90% of the time: P(left) ≈ 0.9 and it flips
  on swapped duplicates;
- annotators alice, bob, carol, dave are right 95% of the time; "lefty" always picks the left image;
  "spammer" clicks a or b at random;
- candidates (seeds 0..5) have Bradley–Terry strengths 0, 0.4, ..., 2.0 that decide the truth;
- gold pairs (known answer), swapped duplicates, true ties, both-bad pairs, skips.

`synthetic_log(...)` is pure (returns frames); `write_log(engine, ...)` posts the same log through
the log's write API (db.runs, db.pairs, db.queue, db.votes) so the real database holds it.
Usage: python -m db.synthetic --db sqlite:///log.db
"""
from __future__ import annotations

import argparse
import io
from dataclasses import dataclass

import numpy as np
import pandas as pd

from db.read import VOTE_COLUMNS

GOOD = ("alice", "bob", "carol", "dave")
ANNOTATORS = GOOD + ("lefty", "spammer")
JUDGES = ("toy-judge", "first-judge")
STRENGTHS = np.arange(6) * 0.4


@dataclass(frozen=True)
class SyntheticSpec:
    n_live: int = 400          # live pairs (across runs)
    n_runs: int = 2
    n_gold: int = 40
    duplicate_rate: float = 0.15
    tie_rate: float = 0.06
    both_bad_rate: float = 0.04
    good_accuracy: float = 0.95
    skip_rate: float = 0.03
    seed: int = 0


def _human_choice(rng, who: str, truth: str, shown_left: str, accuracy: float) -> str:
    if who == "lefty":
        return shown_left
    if who == "spammer":
        return str(rng.choice(["a", "b"]))
    if truth == "tie":
        return "tie" if rng.random() < 0.7 else str(rng.choice(["a", "b"]))
    if truth == "both_bad":
        return "both_bad" if rng.random() < 0.8 else str(rng.choice(["a", "b"]))
    return truth if rng.random() < accuracy else {"a": "b", "b": "a"}[truth]


def synthetic_log(spec: SyntheticSpec = SyntheticSpec()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pairs, votes): pairs has pair_id, run_id, step, kind, seed_a, seed_b, truth, gold_answer,
    duplicate_of, judge scores; votes has the columns of db.read.votes_frame."""
    rng = np.random.default_rng(spec.seed)
    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    pairs: list[dict] = []
    votes: list[dict] = []

    def add_vote(pair, **kw):
        votes.append(dict(vote_id=len(votes) + 1, pair_id=pair["pair_id"], run_id=pair["run_id"], step=pair["step"],
                          kind=pair["kind"], annotator=None, judge=None, score_a=np.nan, score_b=np.nan,
                          shown_left=None, latency_ms=np.nan,
                          created_at=t0 + pd.Timedelta(minutes=len(votes)), gold_answer=pair["gold_answer"],
                          duplicate_of=pair["duplicate_of"], retracted=False) | kw)

    def make_pair(kind, run_id, step, seed_a, seed_b, truth, gold=None, dup_of=None):
        pair = dict(pair_id=len(pairs) + 1, run_id=run_id, step=step, kind=kind, seed_a=seed_a, seed_b=seed_b,
                    truth=truth, gold_answer=gold, duplicate_of=dup_of)
        pairs.append(pair)
        return pair

    def true_label(seed_a, seed_b):
        u = rng.random()
        if u < spec.tie_rate:
            return "tie"
        if u < spec.tie_rate + spec.both_bad_rate:
            return "both_bad"
        p_a = 1.0 / (1.0 + np.exp(STRENGTHS[seed_b] - STRENGTHS[seed_a]))
        return "a" if rng.random() < p_a else "b"

    def judge_votes(pair, judge_state):
        for judge in JUDGES:
            if judge == "toy-judge":
                if pair["duplicate_of"] is not None:   # same scores, swapped: a score-based judge is consistent
                    sa, sb = judge_state[("toy", pair["duplicate_of"])][::-1]
                else:
                    gap = rng.random()
                    right = rng.random() < 0.6 + 0.4 * gap
                    truth = pair["truth"] if pair["truth"] in ("a", "b") else str(rng.choice(["a", "b"]))
                    pick = truth if right else {"a": "b", "b": "a"}[truth]
                    base = rng.normal()
                    sa, sb = (base + gap, base) if pick == "a" else (base, base + gap)
                    judge_state[("toy", pair["pair_id"])] = (sa, sb)
                add_vote(pair, judge=judge, choice="a" if sa > sb else "b", score_a=sa, score_b=sb)
            else:
                pick = "a" if rng.random() < 0.9 else "b"
                add_vote(pair, judge=judge, choice=pick, score_a=float(pick == "a"), score_b=float(pick == "b"))

    def human_votes(pair, who_list):
        truth = pair["gold_answer"] or pair["truth"]
        for who in who_list:
            if who in GOOD and rng.random() < spec.skip_rate:
                add_vote(pair, annotator=who, choice="skip", shown_left=str(rng.choice(["a", "b"])))
                continue
            shown = str(rng.choice(["a", "b"]))
            add_vote(pair, annotator=who, choice=_human_choice(rng, who, truth, shown, spec.good_accuracy),
                     shown_left=shown, latency_ms=float(rng.gamma(4.0, 500.0)))

    judge_state: dict = {}
    live = []
    for i in range(spec.n_live):
        seed_a, seed_b = rng.choice(len(STRENGTHS), 2, replace=False)
        pair = make_pair("live", 1 + i % spec.n_runs, i // spec.n_runs, int(seed_a), int(seed_b),
                         true_label(seed_a, seed_b))
        raters = list(rng.choice(GOOD, 3, replace=False)) + [w for w in ("lefty", "spammer") if rng.random() < 0.35]
        human_votes(pair, raters)
        judge_votes(pair, judge_state)
        live.append((pair, raters))
        if rng.random() < spec.duplicate_rate:
            dup = make_pair("duplicate", pair["run_id"], pair["step"], pair["seed_b"], pair["seed_a"],
                            {"a": "b", "b": "a"}.get(pair["truth"], pair["truth"]), dup_of=pair["pair_id"])
            human_votes(dup, raters)
            judge_votes(dup, judge_state)
    for _ in range(spec.n_gold):
        gold = str(rng.choice(["a", "b"]))
        pair = make_pair("gold", 1, -1, 0 if gold == "b" else 5, 5 if gold == "b" else 0, gold, gold=gold)
        human_votes(pair, list(ANNOTATORS))
    return pd.DataFrame(pairs), pd.DataFrame(votes, columns=VOTE_COLUMNS)


def png_bytes(pair_id: int, side: str, size: int = 16) -> bytes:
    """A small, distinct PNG for one side of one pair (colour from the id, so every image differs)."""
    from PIL import Image

    rng = np.random.default_rng(pair_id * 2 + (side == "b"))
    arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_log(engine, spec: SyntheticSpec = SyntheticSpec(), image_size: int = 16,
              retract_every: int = 40) -> dict[int, int]:
    """Post the synthetic log through db.accounts, db.runs, db.pairs, db.queue and db.votes as the app
    would: each person claims the pair (a lease) and votes; every `retract_every`-th opinion is first
    answered the other way and undone (a retracted vote). Returns {synthetic pair id: database pair id}.

    Pairs are posted one at a time and voted on before the next, so `claim_next` hands out exactly
    that pair; skips come first because a skip does not count towards votes_needed.
    """
    from db import accounts, pairs, queue, runs, votes

    pair_rows, vote_rows = synthetic_log(spec)
    run_ids = {r: runs.create_run(engine, prompt=f"synthetic prompt {r}", backbone="synthetic",
                                   name=f"synthetic-{r}") for r in sorted(pair_rows["run_id"].unique())}
    for run_id in run_ids.values():  # people are only offered live pairs of running runs
        runs.set_run_status(engine, run_id, "running")
    for who in ANNOTATORS:
        accounts.add_annotator(engine, who)
    people = {who: accounts.get_annotator(engine, who)["id"] for who in ANNOTATORS}
    ids: dict[int, int] = {}
    by_pair = {pid: grp for pid, grp in vote_rows.groupby("pair_id", sort=False)}
    n_opinions = 0
    for p in pair_rows.to_dict("records"):  # rows as dicts (columns → plain Python values)
        grp = by_pair.get(p["pair_id"], vote_rows.iloc[:0])
        humans = grp[grp["annotator"].notna()]
        humans = pd.concat([humans[humans["choice"] == "skip"], humans[humans["choice"] != "skip"]])
        needed = int((humans["choice"] != "skip").sum())
        if needed == 0:
            humans = humans.iloc[:0]  # nobody would decide it: record the pair without human votes
        ids[p["pair_id"]] = pairs.post_pair(
            engine, run_ids[p["run_id"]], int(p["step"]), png_bytes(p["pair_id"], "a", image_size),
            png_bytes(p["pair_id"], "b", image_size), seed_a=int(p["seed_a"]), seed_b=int(p["seed_b"]), kind=p["kind"],
            gold_answer=p["gold_answer"] if isinstance(p["gold_answer"], str) else None,
            duplicate_of=ids[int(p["duplicate_of"])] if pd.notna(p["duplicate_of"]) else None,
            votes_needed=max(needed, 1), status="pending" if needed else "decided")
        pid = ids[p["pair_id"]]
        for v in grp[grp["judge"].notna()].to_dict("records"):
            votes.log_judge(engine, pid, v["judge"], v["choice"], float(v["score_a"]), float(v["score_b"]))
        for k, v in enumerate(humans.to_dict("records")):
            who = people[v["annotator"]]
            claim = queue.claim_next(engine, who)
            if claim is None or claim["pair_id"] != pid:
                raise RuntimeError(f"claim_next gave {claim and claim['pair_id']} instead of pair {pid}")
            latency = None if pd.isna(v["latency_ms"]) else int(v["latency_ms"])
            if v["choice"] != "skip":
                n_opinions += 1
                last = k == len(humans) - 1
                if retract_every and n_opinions % retract_every == 0 and not last:
                    other = {"a": "b", "b": "a"}.get(v["choice"], "a")
                    votes.vote(engine, pid, who, other, shown_left=v["shown_left"], latency_ms=latency)
                    assert votes.undo_vote(engine, pid, who)
            votes.vote(engine, pid, who, v["choice"], shown_left=v["shown_left"], latency_ms=latency)
    for run_id in run_ids.values():
        runs.set_run_status(engine, run_id, "finished")
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=None, help="database URL (default: the project's SQLite log)")
    parser.add_argument("--pairs", type=int, default=SyntheticSpec.n_live)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from db.engine import connect

    ids = write_log(connect(args.db), SyntheticSpec(n_live=args.pairs, seed=args.seed))
    print(f"wrote {len(ids)} pairs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
