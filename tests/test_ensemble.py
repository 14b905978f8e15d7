"""Judge ensembles (majority of members' verdicts, every member's vote logged on the same pair),
the cost guard, the agreement/disagreement statistics, and a 20-step toy run with an ensemble."""
from pathlib import Path

import pandas as pd
import pytest
import torch

from db import stats
from dreamdpo import judges, losses
from dreamdpo.judges.base import Judge, Judgement
from dreamdpo.judges.ensemble import BudgetJudge, combine, estimate, member_votes
from dreamdpo.judges.lmm import JudgeUnavailable
from fake_openai import serve_as_endpoint

KEY = "sk-ensemble-test-4be1d0-secret"


def verdict(winner, judge="j", skip=False):
    return Judgement(winner=winner, gap=0.3, judge=judge, skip=skip)


@pytest.mark.parametrize("winners, winner, gap", [
    (["a", "a", "b"], "a", 1 / 3),
    (["b", "b"], "b", 1.0),
    (["a", "b"], "tie", 0.0),
    (["a", "tie", "b"], "tie", 0.0),
    (["a", "tie"], "tie", 0.0),  # a member's tie is a vote for tie: a draw, as with people's votes
    (["a", "tie", "tie"], "tie", 0.0),  # most members tie
    (["a", "a", "tie"], "a", 2 / 3),
    (["b", "skip", "skip"], "b", 1.0),  # a skipping member abstains
])
def test_majority_rule(winners, winner, gap):
    votes = [verdict("tie" if w == "skip" else w, f"j{i}", skip=w == "skip") for i, w in enumerate(winners)]
    v = combine(votes, "ens")
    assert (v.winner, v.gap, v.skip) == (winner, pytest.approx(gap), False)
    n = len([w for w in winners if w != "skip"])
    assert v.extra["votes"] == votes
    assert v.scores_a[0] - v.scores_b[0] == pytest.approx((winners.count("a") - winners.count("b")) / n)
    if winner == "tie":  # no loser: the step pulls only, whatever τ
        assert losses.push_fraction(v.winner, v.gap, v.skip, losses.DPOConfig(tau=0.0)) == 0.0


def test_the_ensemble_counts_ties_like_the_logs_consensus_rule():
    """The same winner as db.consensus gives people's votes on a pair (tie votes count, draws tie)."""
    from itertools import product

    from db.consensus import outcome

    for winners in product(["a", "b", "tie"], repeat=3):
        v = combine([verdict(w, f"j{i}") for i, w in enumerate(winners)], "ens")
        counts = {k: winners.count(k) for k in ("a", "b", "tie")} | {"both_bad": 0}
        assert v.winner == outcome(counts)[0], winners
        assert v.gap == (0.0 if v.winner == "tie" else outcome(counts)[2])


def test_all_members_skipping_skips_the_step():
    assert combine([verdict("tie", skip=True)] * 2, "ens").skip


def test_candidate_order_does_not_matter():
    """Swapping the candidates swaps the verdict (the reference code's OR of two verdicts favoured candidate 1)."""
    v1 = combine([verdict("a"), verdict("b")], "e")
    v2 = combine([verdict("b"), verdict("a")], "e")
    assert v1.winner == v2.winner == "tie"


def frames(size=64):
    red, blue = torch.zeros(1, 3, size, size), torch.zeros(1, 3, size, size)
    red[:, 0], blue[:, 2] = 0.9, 0.9
    red[:, 1:], blue[:, :2] = 0.1, 0.1
    return red, blue


def test_toy_reward_pair_is_unanimous_and_keeps_each_vote():
    judge = judges.load("toy-reward+toy-reward", "cpu")
    red, blue = frames()
    v = judge.compare(red, blue, "a red cube")
    single = judges.load("toy-reward", "cpu").compare(red, blue, "a red cube")
    assert v.winner == single.winner and v.gap == 1.0
    assert [m.judge for m in member_votes(v)] == ["toy-reward", "toy-reward#2"]
    assert [m.winner for m in member_votes(v)] == [single.winner] * 2


class Counting(Judge):
    """A judge with an LMM-like call counter: 2 model calls per comparison; optionally down."""

    def __init__(self, name="counting", down=False):
        self.name, self.calls, self.down = name, 0, down

    def calls_per_compare(self, prompt, n_views):
        return 2

    def compare(self, a, b, prompt, context=None):
        if self.down:
            raise JudgeUnavailable("endpoint down")
        self.calls += 2
        return Judgement(winner="a", gap=0.5, judge=self.name)


def test_budget_hands_over_to_the_fallback():
    inner, backup = Counting(), Counting("backup")
    guard = BudgetJudge(inner, max_calls=5, fallback=backup)
    red, blue = frames(8)
    with pytest.warns(UserWarning, match="reached judge_max_calls=5"):
        sources = [guard.compare(red, blue, "x").extra.get("source", "main") for _ in range(4)]
    assert sources == ["main", "main", "fallback:backup", "fallback:backup"]
    assert inner.calls == 4 and guard.used == 4  # never past the budget


def test_budget_without_fallback_is_pull_only():
    guard = BudgetJudge(Counting(), max_calls=2, fallback=None)
    red, blue = frames(8)
    guard.compare(red, blue, "x")
    with pytest.warns(UserWarning):
        v = guard.compare(red, blue, "x")
    assert (v.winner, v.gap, v.judge) == ("tie", 0.0, "fallback:pull")


def test_unavailable_judge_hands_the_step_to_the_fallback():
    guard = BudgetJudge(Counting(down=True), fallback=Counting("backup"))
    red, blue = frames(8)
    with pytest.warns(UserWarning, match="endpoint down"):
        assert guard.compare(red, blue, "x").extra["source"] == "fallback:backup"
    with pytest.raises(JudgeUnavailable):
        BudgetJudge(Counting(down=True), max_calls=10).compare(red, blue, "x")


def test_estimate_line():
    line = estimate(judges.load("toy-reward+toy-reward", "cpu"), "a red cube", 300, 1, 64, max_calls=100)
    assert "300 comparisons, about 600 model calls" in line and "hands over after about 50 comparisons" in line


# ---------------------------------------------------------------- statistics


def votes(rows):
    cols = ["vote_id", "pair_id", "run_id", "step", "kind", "annotator", "judge", "choice", "score_a", "score_b",
            "shown_left", "latency_ms", "created_at", "gold_answer", "duplicate_of", "retracted"]
    out = pd.DataFrame([{c: None for c in cols} | r | {"vote_id": i, "retracted": False} for i, r in enumerate(rows)],
                       columns=cols)
    out["duplicate_of"] = out["duplicate_of"].astype("Int64")
    return out


def test_order_disagreement_and_first_shown_preference():
    rows = []
    for pair, (ab, ba) in enumerate([("a", "a"), ("a", "b"), ("b", "b"), ("a", "b")]):
        rows += [{"pair_id": pair, "judge": "lmm[ab]", "choice": ab},
                 {"pair_id": pair, "judge": "lmm[ba]", "choice": ba},
                 {"pair_id": pair, "judge": "lmm", "choice": ab if ab == ba else "tie"}]
    out = stats.order_disagreement(votes(rows))
    assert out.loc["lmm", "n_pairs"] == 4 and out.loc["lmm", "disagreement_rate"] == 0.5
    # first shown chosen: [ab] a,a,b,a → 3 of 4; [ba] a,b,b,b → b first, chosen 3 of 4
    assert out.loc["lmm", "p_first"] == pytest.approx(6 / 8)
    left = stats.position_bias(votes(rows), "judge")
    assert left.loc["lmm[ba]", "p_left"] == 0.75  # '[ba]' votes saw b on the left
    assert stats.order_disagreement(votes([{"pair_id": 0, "judge": "hpsv2", "choice": "a"}])).empty


def test_agreement_between_judges():
    rows = []
    for pair, (x, y) in enumerate([("a", "a"), ("b", "b"), ("a", "b"), ("b", "b")]):
        rows += [{"pair_id": pair, "judge": "hpsv2", "choice": x},
                 {"pair_id": pair, "judge": "imagereward", "choice": y},
                 {"pair_id": pair, "judge": "lmm[ab]", "choice": "a"}]
    out = stats.judge_judge_agreement(votes(rows))
    assert out[["judge_1", "judge_2", "n"]].values.tolist() == [["hpsv2", "imagereward", 4]]
    assert out["agreement"].iloc[0] == 0.75 and -1 <= out["kappa"].iloc[0] <= 1
    summary = stats.audit_summary(votes(rows), n_boot=10)
    assert len(summary.judge_judge_agreement) == 1


# ---------------------------------------------------------------- a 20-step toy run with an ensemble


@pytest.fixture
def endpoint(monkeypatch):
    yield from serve_as_endpoint(monkeypatch, KEY)


@pytest.mark.parametrize("per_view", [False, True])
def test_an_lmm_whose_orders_disagree_ties_alone_and_in_an_ensemble_and_pulls_only(endpoint, per_view):
    """A position-biased LMM (always the first image shown) ties with gap 0; its two orders' votes are
    kept. Two such members tie; beside a reward judge that prefers a, its tie makes a draw: tie, gap 0."""
    from dreamdpo.judges.lmm import LMMConfig

    endpoint.mode = "always-A"
    cfg = LMMConfig(template=False, per_view=per_view, backoff_s=0.01, timeout_s=5.0)
    red, blue = (torch.cat([x, x]) for x in frames(32))  # two views each
    pull_only = losses.DPOConfig(tau=0.0)
    alone = judges.load("lmm-api", "cpu", lmm=cfg).compare(red, blue, "a red cube")
    assert (alone.winner, alone.gap) == ("tie", 0.0)
    assert [(o.judge, o.winner) for o in member_votes(alone)] == [("lmm-api:fake-vl[ab]", "a"),
                                                                  ("lmm-api:fake-vl[ba]", "b")]
    both = judges.load("lmm-api+lmm-api", "cpu", lmm=cfg).compare(red, blue, "a red cube")
    assert (both.winner, both.gap, both.skip) == ("tie", 0.0, False)
    assert [(m.judge, m.winner) for m in both.extra["votes"]] == [("lmm-api:fake-vl", "tie"),
                                                                 ("lmm-api:fake-vl#2", "tie")]
    mixed = judges.load("toy-reward+lmm-api", "cpu", lmm=cfg).compare(red, blue, "a red cube")
    assert [m.winner for m in mixed.extra["votes"]] == ["a", "tie"]
    assert (mixed.winner, mixed.gap) == ("tie", 0.0)
    for v in (alone, both, mixed):
        assert losses.push_fraction(v.winner, v.gap, v.skip, pull_only) == 0.0


@pytest.mark.slow
def test_twenty_step_toy_run_logs_every_members_vote(tmp_path, endpoint, capsys, toy_prior):
    # toy_prior: the session's toy bank, rendered once into the session's data home, which the CLI reads
    """`dreamdpo run` with toy-reward + an LMM behind a fake endpoint: every member's vote (and each LMM
    order's) on each of the 20 pairs, agreement reportable, the key nowhere on disk or screen."""
    from db.engine import connect
    from db.read import votes_frame
    from dreamdpo.cli import main

    spec = "toy-reward+lmm-api"
    members = ["toy-reward", "lmm-api:fake-vl", "lmm-api:fake-vl[ab]", "lmm-api:fake-vl[ba]"]
    db, out = tmp_path / "log.sqlite", tmp_path / "run"
    code = main(["run", "--prompt", "a red cube", "--judge", spec, "--steps", "20", "--device", "cpu", "--out",
                 str(out), "--db", str(db), "--quiet", "test_views=2", "test_resolution=32", "checkpoint_every=20",
                 "lmm.template=false", "lmm.backoff_s=0.01"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"judge {spec}: 20 comparisons" in printed  # the cost estimate, before the run
    frame = votes_frame(connect(str(db)))
    # every step is in the log; the steps whose candidates looked the same were never judged (indistinct)
    with connect(str(db)).connect() as conn:
        statuses = [r[0] for r in conn.exec_driver_sql("SELECT status FROM pairs ORDER BY step")]
    judged = sum(st != "indistinct" for st in statuses)
    assert len(statuses) == 20 and judged >= 10
    assert frame["pair_id"].nunique() == judged
    per_pair = frame.groupby("pair_id")["judge"].apply(sorted)
    assert all(names == sorted([spec] + members) for names in per_pair), per_pair.iloc[0]
    agreement = stats.judge_judge_agreement(frame)
    assert {(r.judge_1, r.judge_2) for r in agreement.itertuples()} >= {tuple(sorted(members[:2]))}
    assert (agreement["n"] == judged).all()
    assert stats.order_disagreement(frame).loc["lmm-api:fake-vl", "n_pairs"] == judged
    assert len(endpoint.requests) == 1 + judged * 2 and all(r["auth"] == f"Bearer {KEY}" for r in endpoint.requests)
    # the key is never written: not in the log file (nor its WAL), not in any output, not on screen
    for path in [*tmp_path.glob("log.sqlite*"), *Path(out).rglob("*")]:
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in printed


def test_the_budget_and_the_hand_over_are_in_the_judge_state():
    inner, backup = Counting(), Counting("backup")
    guard = BudgetJudge(inner, max_calls=5, fallback=backup)
    red, blue = frames(8)
    guard.compare(red, blue, "x")
    state = guard.state_dict()
    assert state["used"] == 2 and not state["handed_over"]
    again = BudgetJudge(Counting(), max_calls=5, fallback=Counting("backup"))  # a new process, --resume
    again.load_state_dict(state)
    again.compare(red, blue, "x")
    with pytest.warns(UserWarning, match="reached judge_max_calls=5"):
        assert again.compare(red, blue, "x").extra["source"] == "fallback:backup"
    assert again.used == 4 and again.judge.calls == 2
    BudgetJudge(Counting(), max_calls=5).load_state_dict({})  # a checkpoint from before the guard kept its count


@pytest.mark.slow
def test_a_resumed_run_spends_no_more_than_judge_max_calls_in_total(tmp_path, endpoint, monkeypatch, toy_prior):
    """`dreamdpo run --judge lmm-api judge_max_calls=10` interrupted after 4 model calls, then --resume:
    the calls spent before the interruption count (BudgetJudge.state_dict is in the checkpoint), so
    the run spends 10 in all and the assist judge decides the rest."""
    import dreamdpo.optimize as optimize
    from dreamdpo.cli import main

    def judged():  # the pairwise requests (the probe at each start is a yes/no question)
        return sum("A or B" in " ".join(p.get("text", "") for p in r["body"]["messages"][0]["content"])
                   for r in endpoint.requests)

    real_step, stop = optimize.train_step, [True]

    def interrupted(cfg, sc, step, run_id):
        if stop[0] and judged() >= 4:  # a Ctrl-C between two steps, after the last checkpoint
            stop[0] = False
            raise KeyboardInterrupt
        return real_step(cfg, sc, step, run_id)

    monkeypatch.setattr(optimize, "train_step", interrupted)
    out = tmp_path / "run"
    argv = ["run", "--prompt", "a red cube", "--judge", "lmm-api", "--steps", "24", "--device", "cpu", "--out",
            str(out), "--db", str(tmp_path / "log.sqlite"), "--quiet", "test_views=2", "test_resolution=32",
            "checkpoint_every=1", "judge_max_calls=10", "lmm.template=false", "lmm.backoff_s=0.01"]
    assert main(argv) == 130 and judged() == 4
    assert main([*argv, "--resume"]) == 0
    assert judged() == 10  # without the count in the checkpoint: 4 + 10
    sources = pd.read_csv(out / "metrics.csv")["source"].astype(str)
    assert (sources == "fallback:toy-reward").any() and (sources == "lmm-api:fake-vl").sum() == 5
