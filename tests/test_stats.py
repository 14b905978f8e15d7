"""db/stats.py: each statistic on a hand-computed example, against the library it wraps, and on a
synthetic log whose planted facts the reports must find."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.metrics import cohen_kappa_score

from db import stats


def votes(rows):
    """A votes frame from (pair_id, annotator, judge, choice, shown_left[, score_a, score_b, dup_of, gold])."""
    out = []
    for i, r in enumerate(rows):
        r = tuple(r) + (None,) * (9 - len(r))
        pair, who, judge, choice, shown, sa, sb, dup, gold = r
        out.append(dict(vote_id=i + 1, pair_id=pair, run_id=1, step=0, kind="duplicate" if dup else "live",
                        annotator=who, judge=judge, choice=choice, score_a=np.nan if sa is None else sa,
                        score_b=np.nan if sb is None else sb, shown_left=shown, latency_ms=100.0,
                        created_at=pd.Timestamp("2026-01-01"), gold_answer=gold, duplicate_of=dup, retracted=False))
    return pd.DataFrame(out)


@pytest.fixture(scope="module")
def synthetic():
    from db import synthetic as mod
    pairs, frame = mod.synthetic_log(mod.SyntheticSpec(seed=1))
    return pairs, frame


# ----------------------------------------------------------------------------- hand-computed examples
def test_picked_left_from_choice_and_shown_side():
    f = votes([(1, "x", None, "a", "a"), (1, "y", None, "a", "b"), (1, "z", None, "b", "b"),
               (1, "w", None, "tie", "a"), (1, None, "j", "a", None), (1, None, "j", "b", None)])
    got = stats.picked_left(f).tolist()
    assert got[:3] == [1.0, 0.0, 1.0] and np.isnan(got[3]) and got[4:] == [1.0, 0.0]


def test_position_bias_binomial_test_by_hand():
    # 8 of 10 left: two-sided p = 2 * (C(10,8)+C(10,9)+C(10,10)) / 2^10 = 112/1024
    rows = [(i, "p", None, "a", "a") for i in range(8)] + [(10 + i, "p", None, "a", "b") for i in range(2)]
    out = stats.position_bias(votes(rows), "annotator")
    assert out.loc["p", "n"] == 10 and out.loc["p", "p_left"] == pytest.approx(0.8)
    assert out.loc["p", "p_value"] == pytest.approx(112 / 1024)


def test_cohen_kappa_by_hand_and_sklearn():
    x = ["a", "a", "b", "b", "tie", "a"]
    y = ["a", "b", "b", "b", "a", "a"]
    # p_o = 4/6; p_e = P(a)P(a) + P(b)P(b) + P(tie)P(tie) = (3/6)(3/6) + (2/6)(3/6) + (1/6)(0) = 15/36
    hand = (4 / 6 - 15 / 36) / (1 - 15 / 36)
    assert stats.cohen_kappa(x, y) == pytest.approx(hand)
    rng = np.random.default_rng(0)
    x, y = rng.choice(list("abct"), 200), rng.choice(list("abct"), 200)
    assert stats.cohen_kappa(x, y) == pytest.approx(cohen_kappa_score(x, y))


def test_fleiss_kappa_textbook_example():
    # Fleiss (1971) worked example as given on Wikipedia "Fleiss' kappa": 10 subjects, 14 raters, κ = 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert stats.fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-4)


def test_fleiss_kappa_two_raters_is_scotts_pi():
    # With 2 raters per item Fleiss' κ is Scott's π: (p_o - p_e) / (1 - p_e) with pooled marginals.
    f = votes([(1, "r1", None, "a", "a"), (1, "r2", None, "a", "a"), (2, "r1", None, "a", "a"),
               (2, "r2", None, "b", "a"), (3, "r1", None, "b", "a"), (3, "r2", None, "b", "a"),
               (4, "r1", None, "b", "a"), (4, "r2", None, "b", "a")])
    p_o, p_a = 3 / 4, 3 / 8
    p_e = p_a ** 2 + (1 - p_a) ** 2
    assert stats.fleiss_kappa(stats.rating_counts(f)) == pytest.approx((p_o - p_e) / (1 - p_e))


def test_krippendorff_alpha_by_hand_with_a_missing_rating():
    # Units 1-4; r1: a a b b; r2: a b b b; r3 rates unit 1 only (a). Coincidences: o_aa = 3 (unit 1,
    # 3 raters: 6 ordered pairs / 2), o_ab = o_ba = 1, o_bb = 4; n_a = 4, n_b = 5, n = 9.
    # D_o = 2/9, D_e = 2*4*5/(9*8); α = 1 - D_o/D_e = 0.6.
    f = votes([(1, "r1", None, "a", "a"), (2, "r1", None, "a", "a"), (3, "r1", None, "b", "a"),
               (4, "r1", None, "b", "a"), (1, "r2", None, "a", "a"), (2, "r2", None, "b", "a"),
               (3, "r2", None, "b", "a"), (4, "r2", None, "b", "a"), (1, "r3", None, "a", "a")])
    assert stats.krippendorff_alpha(f) == pytest.approx(0.6)


def test_judge_agreement_by_hand():
    # Humans (majority of two or one): p1 a, p2 b, p3 tie (1 a vs 1 b), p4 both_bad; judge: a, a, b, a.
    f = votes([(1, "h1", None, "a", "a"), (1, "h2", None, "a", "b"), (2, "h1", None, "b", "a"),
               (3, "h1", None, "a", "a"), (3, "h2", None, "b", "a"), (4, "h1", None, "both_bad", "a"),
               (1, None, "J", "a", None, 2.0, 1.0), (2, None, "J", "a", None, 2.0, 1.0),
               (3, None, "J", "b", None, 1.0, 2.0), (4, None, "J", "a", None, 2.0, 1.0),
               (2, "h2", None, "skip", "a")])
    row = stats.judge_agreement(f, n_boot=50).set_index("judge").loc["J"]
    assert row["n_pairs"] == 4 and row["n_decisive"] == 2
    assert row["agree_no_ties"] == pytest.approx(0.5)        # p1 agree, p2 not
    assert row["agree_all"] == pytest.approx(0.25)           # only p1
    judge, human = ["a", "a", "b", "a"], ["a", "b", "tie", "both_bad"]
    assert row["kappa"] == pytest.approx(cohen_kappa_score(judge, human))
    assert row["agree_all_low"] <= row["agree_all"] <= row["agree_all_high"]


def test_swapped_duplicates_fold_back_and_count_flips():
    # Pair 2 is pair 1 with sides swapped. h1 says a then b (consistent); J says a then a (a flip).
    f = votes([(1, "h1", None, "a", "a"), (2, "h1", None, "b", "a", None, None, 1),
               (1, None, "J", "a", None, 1.0, 0.0), (2, None, "J", "a", None, 1.0, 0.0, 1)])
    canon = stats.canonical_votes(f)
    assert canon["item"].tolist() == [1, 1, 1, 1] and canon["label"].tolist() == ["a", "a", "a", "b"]
    people, judges = stats.duplicate_consistency(f, "annotator"), stats.duplicate_consistency(f, "judge")
    assert people.loc["h1", "dup_consistency"] == 1.0 and judges.loc["J", "flip_rate"] == 1.0


def test_calibrate_tau_by_hand():
    # gaps 0.1..0.5 with agreement 0,1,0,1,1: τ=0.1 → 3/5, τ=0.2 → 3/4 ≥ 0.75 → τ = 0.2
    rows = []
    for i, (gap, agree) in enumerate(zip([0.1, 0.2, 0.3, 0.4, 0.5], [0, 1, 0, 1, 1])):
        rows += [(i, "h", None, "a", "a"), (i, None, "J", "a" if agree else "b", None,
                                              gap if agree else 0.0, 0.0 if agree else gap)]
    cal = stats.calibrate_tau(votes(rows), "J", 0.75, min_pairs=1)
    assert cal.tau == pytest.approx(0.2) and cal.agreement == pytest.approx(0.75) and cal.n_pairs == 4
    assert np.isnan(stats.calibrate_tau(votes(rows), "J", 0.75, min_pairs=5).tau)
    bins = stats.agreement_by_gap(votes(rows), "J", bins=[0.0, 0.25, 0.5])
    assert bins["n"].tolist() == [2, 3] and bins["agreement"].tolist() == pytest.approx([0.5, 2 / 3])


def test_gold_accuracy_by_hand():
    f = votes([(1, "h", None, "a", "a", None, None, None, "a"), (2, "h", None, "a", "a", None, None, None, "b"),
               (3, "h", None, "b", "a", None, None, None, "b"), (4, "h", None, "skip", "a", None, None, None, "b")])
    g = stats.gold_accuracy(f)
    assert g.loc["h", "gold_n"] == 3 and g.loc["h", "gold_accuracy"] == pytest.approx(2 / 3)


def test_retracted_votes_do_not_count():
    f = votes([(1, "h", None, "a", "a"), (1, "h2", None, "b", "a")])
    f.loc[1, "retracted"] = True
    assert stats.majority_vote(f).to_dict() == {1: "a"}


def test_bradley_terry_by_hand_and_against_logistic_regression():
    # Two items, A beats B 3 times of 4: MLE P(A>B) = 3/4, s_A - s_B = log 3.
    comp = pd.DataFrame({"item_a": ["A"] * 4, "item_b": ["B"] * 4, "winner": ["a", "a", "a", "b"]})
    s = stats.bradley_terry(comp, prior=0.0)
    assert s["A"] - s["B"] == pytest.approx(np.log(3), abs=1e-6)
    # Against an unpenalised logistic regression on ±1 item indicators (FastChat's way).
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    true = np.array([0.0, 0.5, 1.0, 2.0])
    a, b = rng.integers(0, 4, 600), rng.integers(0, 4, 600)
    a, b = a[a != b], b[a != b]
    win = rng.random(len(a)) < 1 / (1 + np.exp(true[b] - true[a]))
    comp = pd.DataFrame({"item_a": a, "item_b": b, "winner": np.where(win, "a", "b")})
    X = np.zeros((len(a), 4))
    X[np.arange(len(a)), a], X[np.arange(len(a)), b] = 1.0, -1.0
    coef = LogisticRegression(C=np.inf, fit_intercept=False, tol=1e-10, max_iter=10000).fit(X, win).coef_[0]
    ours = stats.bradley_terry(comp, prior=0.0).reindex(range(4)).to_numpy()
    np.testing.assert_allclose(ours, coef - coef.mean(), atol=1e-4)
    ci = stats.bradley_terry_ci(comp, n_boot=30)
    assert ci.index[0] == 3 and (ci["low"] <= ci["strength"]).all() and (ci["strength"] <= ci["high"]).all()


def test_rounded_tables_have_no_negative_zero():
    frame = pd.DataFrame({"strength": [-1e-16, 0.12345, -0.0004, 2.0], "n": [1, 2, 3, 4], "who": list("abcd")})
    out = stats.rounded(frame)
    assert out["strength"].tolist() == [0.0, 0.123, 0.0, 2.0]
    assert not np.signbit(out["strength"]).any()  # -1e-16 and -0.0004 are 0.0, not -0.0
    assert out["n"].tolist() == [1, 2, 3, 4] and out["who"].tolist() == list("abcd")
    assert frame["strength"].iloc[0] == -1e-16  # the input is left as it was
    # symmetric wins give strengths that are zero up to rounding noise: the table shows 0.0
    comp = pd.DataFrame({"item_a": ["A", "B", "C"], "item_b": ["B", "C", "A"], "winner": ["a", "a", "a"]})
    assert not np.signbit(stats.rounded(stats.bradley_terry_ci(comp, n_boot=5))["strength"]).any()
    from dreamdpo.commands.audit import number

    assert [number(x) for x in (-1e-16, -0.0004, -0.0006, 0.0, 1.23456)] == ["0.000", "0.000", "-0.001", "0.000",
                                                                             "1.235"]


def test_skips_are_counted_by_reason():
    f = votes([(1, "x", None, "skip", "a"), (2, "x", None, "skip", "a"), (3, "y", None, "skip", "b"),
               (4, "y", None, "skip", None), (5, None, "j", "skip", None), (6, "z", None, "a", "a"),
               (7, "z", None, "skip", "a")])
    f["skip_reason"] = ["images broken", "can't tell", "images broken", None, "judge raw", None, "<b>x</b>"]
    f.loc[6, "retracted"] = True  # an undone skip does not count
    got = stats.skip_reasons(f)
    assert list(got.columns) == ["reason", "skips"]
    assert got.to_dict("records") == [{"reason": "images broken", "skips": 2}, {"reason": "(no reason given)", "skips": 1},
                                      {"reason": "can't tell", "skips": 1}]
    assert stats.skip_reasons(f[f["choice"] != "skip"]).empty
    assert stats.skip_reasons(f.drop(columns="skip_reason"))["reason"].tolist() == ["(no reason given)"]


@pytest.mark.filterwarnings("ignore")  # crowd-kit's own pandas deprecation warnings
def test_majority_and_dawid_skene_match_crowdkit(synthetic):
    from crowdkit.aggregation import DawidSkene, MajorityVote

    _, frame = synthetic
    canon = stats.canonical_votes(stats.human_votes(frame)).drop_duplicates(["item", "annotator"], keep="last")
    data = canon.rename(columns={"item": "task", "annotator": "worker"})[["task", "worker", "label"]]
    counts = stats.rating_counts(frame)
    clear = counts.index[(counts.eq(counts.max(axis=1), axis=0).sum(axis=1) == 1)]
    ours = stats.majority_vote(frame).loc[clear]
    theirs = MajorityVote().fit_predict(data).loc[clear]
    assert (ours == theirs).all()
    labels, acc = stats.dawid_skene(frame)
    assert (labels == DawidSkene(n_iter=100).fit_predict(data).loc[labels.index]).all()
    assert set(acc.index) == set(canon["annotator"])


# ----------------------------------------------------------------------------- planted truth
def test_reports_find_the_planted_judge_and_position_bias(synthetic):
    _, frame = synthetic
    agree = stats.judge_agreement(frame, n_boot=100).set_index("judge")
    toy = agree.loc["toy-judge"]
    assert abs(toy["agree_no_ties"] - 0.8) < 0.05 and toy["agree_no_ties_low"] < 0.8 + 0.03
    assert agree.loc["first-judge", "agree_no_ties"] < 0.65
    judges = stats.position_bias(frame, "judge")
    assert judges.loc["first-judge", "p_left"] > 0.8 and judges.loc["first-judge", "p_value"] < 1e-6
    assert judges.loc["toy-judge", "p_value"] > 1e-3
    flips = stats.duplicate_consistency(frame, "judge")
    assert flips.loc["toy-judge", "flip_rate"] == 0.0 and flips.loc["first-judge", "flip_rate"] > 0.5


def test_tau_calibration_finds_the_planted_tau(synthetic):
    # Planted: P(judge right | gap ≥ τ) = 0.8 + 0.2 τ against the truth → τ = 0.5 for a 0.9 target;
    # humans are not the truth, so allow a margin.
    _, frame = synthetic
    cal = stats.calibrate_tau(frame, "toy-judge", 0.9)
    assert 0.3 <= cal.tau <= 0.8 and cal.agreement >= 0.9
    bins = stats.agreement_by_gap(frame, "toy-judge", bins=4)
    assert bins["agreement"].iloc[-1] > bins["agreement"].iloc[0] + 0.15


def test_annotator_report_flags_the_side_clicker_and_the_spammer(synthetic):
    _, frame = synthetic
    report = stats.annotator_report(frame)
    assert set(report.index[report["flagged"]]) == {"lefty", "spammer"}
    assert "left" in report.loc["lefty", "flag_reasons"]
    assert report.loc["spammer", "ds_accuracy"] < 0.7 and report.loc["alice", "ds_accuracy"] > 0.85
    assert report.loc["spammer", "gold_accuracy"] < 0.7 and report.loc["bob", "gold_accuracy"] > 0.85


def test_bradley_terry_recovers_the_planted_candidate_order(synthetic):
    pairs, frame = synthetic
    labels = stats.majority_vote(frame)
    items = pairs.set_index("pair_id").loc[labels.index]
    comp = pd.DataFrame({"item_a": items["seed_a"].to_numpy(), "item_b": items["seed_b"].to_numpy(),
                         "winner": labels.to_numpy()})
    ranking = stats.bradley_terry_ci(comp, n_boot=30)
    assert sps.spearmanr(ranking.index.to_numpy(), ranking["strength"].to_numpy()).statistic > 0.9
