"""Audit statistics over the preference log, as pure functions of pandas frames.

Input is the frame of `db.read.votes_frame` (one row per vote; columns vote_id, pair_id, run_id,
step, kind, annotator, judge, choice, score_a, score_b, shown_left, latency_ms, created_at,
gold_answer, duplicate_of, retracted, skip_reason). Nothing here touches the database or torch, so the app
page, the CLI and the notebook compute the same numbers from the same frame.

Conventions:
- a human vote has `annotator` set, a model vote has `judge` set;
- choices are about candidates: a | b | tie | both_bad | skip; `skip` is never an opinion;
- a swapped duplicate shows the images of `duplicate_of` in the other order, so its a/b choices
  are mapped back (a<->b) onto the original pair: "canonical" votes are about the original;
- "picked left" is derived from (choice, shown_left); a model judge with no shown_left saw a first,
  except a judge's second-order vote '<judge>[ba]' (judges asked in both orders), which saw b first.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from db import consensus
from db.timefilter import parse_time

OPINIONS = ("a", "b", "tie", "both_bad")
DECISIVE = ("a", "b")
SWAP = {"a": "b", "b": "a", "tie": "tie", "both_bad": "both_bad"}


# ----------------------------------------------------------------------------- frame helpers
def active_votes(frame: pd.DataFrame) -> pd.DataFrame:
    """Votes that count: not retracted, not skipped."""
    keep = frame["choice"].isin(OPINIONS)
    if "retracted" in frame:
        keep &= ~frame["retracted"].fillna(False).astype(bool)
    return frame[keep]


def canonical_votes(frame: pd.DataFrame) -> pd.DataFrame:
    """Active votes with swapped duplicates folded onto their original pair (choices a<->b mapped back).

    Adds `item` (the canonical pair id) and `label` (the choice about the canonical pair's a/b),
    and `is_duplicate`.
    """
    votes = active_votes(frame).copy()
    dup = votes["duplicate_of"].notna() if "duplicate_of" in votes else pd.Series(False, index=votes.index)
    votes["is_duplicate"] = dup.to_numpy()
    votes["item"] = np.where(dup, votes.get("duplicate_of"), votes["pair_id"])
    votes["item"] = votes["item"].astype("int64")
    votes["label"] = np.where(dup, votes["choice"].map(SWAP), votes["choice"])
    return votes


def picked_left(frame: pd.DataFrame) -> pd.Series:
    """1.0 where the left image was chosen, 0.0 the right, NaN for tie/both_bad/skip or unknown side.

    A model judge (judge set, shown_left missing) is taken to have seen `a` first.
    """
    shown = frame["shown_left"].copy()
    judge_default = frame["judge"].notna() & shown.isna()
    shown = shown.where(~judge_default, "a")
    second_order = judge_default & frame["judge"].astype("string").str.endswith("[ba]").fillna(False).astype(bool)
    shown = shown.where(~second_order, "b")  # '<judge>[ba]': the judge saw b first
    decisive = frame["choice"].isin(DECISIVE) & shown.isin(DECISIVE)
    out = pd.Series(np.nan, index=frame.index)
    out[decisive] = (frame.loc[decisive, "choice"] == shown[decisive]).astype(float)
    return out


def filter_votes(frame: pd.DataFrame, run_id: int | None = None, judge: str | None = None,
                 annotator: str | None = None, since=None, until=None) -> pd.DataFrame:
    """The Audit page's and `dreamdpo stats`' filters. A judge filter keeps every human vote (the
    reference the judge is audited against); an annotator filter keeps every judge vote."""
    keep = pd.Series(True, index=frame.index)
    if run_id is not None:
        keep &= frame["run_id"] == run_id
    if judge is not None:
        keep &= frame["annotator"].notna() | (frame["judge"] == judge)
    if annotator is not None:
        keep &= frame["judge"].notna() | (frame["annotator"] == annotator)
    if since is not None or until is not None:
        created = pd.to_datetime(frame["created_at"], utc=True)
        if since is not None:
            keep &= created >= parse_time(since, "--since")
        if until is not None:
            keep &= created < parse_time(until, "--until")
    return frame[keep]




def human_votes(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["annotator"].notna()]


def judge_votes(frame: pd.DataFrame, judge: str | None = None) -> pd.DataFrame:
    votes = frame[frame["judge"].notna()]
    return votes if judge is None else votes[votes["judge"] == judge]


NO_REASON = "(no reason given)"


def skip_reasons(frame: pd.DataFrame) -> pd.DataFrame:
    """People's skips (not retracted) counted by the reason they gave, most frequent first; skips
    without a reason count under NO_REASON. Columns: reason, skips."""
    skips = human_votes(frame)
    skips = skips[skips["choice"] == "skip"]
    if "retracted" in skips:
        skips = skips[~skips["retracted"].fillna(False).astype(bool)]
    if skips.empty:
        return pd.DataFrame({"reason": pd.Series(dtype=object), "skips": pd.Series(dtype="int64")})
    reasons = skips["skip_reason"] if "skip_reason" in skips else pd.Series(None, index=skips.index, dtype=object)
    counts = reasons.fillna(NO_REASON).value_counts()
    out = pd.DataFrame({"reason": counts.index.astype(str), "skips": counts.to_numpy().astype("int64")})
    return out.sort_values(["skips", "reason"], ascending=[False, True], kind="stable").reset_index(drop=True)


def rounded(frame: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """The frame with every float column rounded to `digits` decimals and no negative zero (a value
    such as -1e-16 shows as 0.0, never -0.0 or -0.0000000000000001); other columns as they are."""
    out = frame.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            out[col] = out[col].round(digits) + 0.0  # -0.0 + 0.0 is 0.0
    return out


# ----------------------------------------------------------------------------- crowd aggregation
def majority_vote(frame: pd.DataFrame) -> pd.Series:
    """Human consensus per canonical pair, by the log's one rule (db/consensus.py): the most frequent
    label; a count tie between labels → "tie".

    Index: item (canonical pair id); values in a|b|tie|both_bad.
    """
    votes = canonical_votes(human_votes(frame))
    if votes.empty:
        return pd.Series(dtype=object, name="label")
    counts = votes.groupby(["item", "label"]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=["a", "b", "tie", "both_bad"], fill_value=0)
    winner = pd.Series([consensus.label(row) for row in counts.to_dict("records")], index=counts.index, name="label")
    return winner


def dawid_skene(frame: pd.DataFrame, n_iter: int = 100) -> tuple[pd.Series, pd.DataFrame]:
    """Dawid–Skene labels per canonical pair and each annotator's estimated accuracy (crowd-kit).

    Accuracy = sum over true labels of prior(true) * P(annotator says true | true), from the fitted
    error matrices: a spammer or a side-clicker scores near chance.
    """
    from crowdkit.aggregation import DawidSkene

    votes = canonical_votes(human_votes(frame))
    data = votes.rename(columns={"item": "task", "annotator": "worker"})[["task", "worker", "label"]]
    data = data.drop_duplicates(["task", "worker"], keep="last")
    with warnings.catch_warnings():  # crowd-kit uses pandas keywords that pandas 3 deprecates
        warnings.simplefilter("ignore")
        model = DawidSkene(n_iter=n_iter).fit(data)
    if model.labels_ is None or model.errors_ is None or model.priors_ is None:
        raise RuntimeError("crowd-kit's DawidSkene.fit left no labels, error matrices or priors")
    labels = model.labels_.rename("label")
    errors = model.errors_  # index (worker, observed), columns true label
    priors = model.priors_
    acc = {}
    for worker, mat in errors.groupby(level=0):
        mat = mat.droplevel(0)
        acc[worker] = float(sum(priors.get(t, 0.0) * mat.at[t, t] for t in mat.columns if t in mat.index))
    return labels, pd.DataFrame({"ds_accuracy": pd.Series(acc)})


def gold_accuracy(frame: pd.DataFrame) -> pd.DataFrame:
    """Per annotator: number of gold votes and the share that matches gold_answer."""
    votes = human_votes(active_votes(frame))
    votes = votes[votes["gold_answer"].notna()]
    correct = (votes["choice"] == votes["gold_answer"]).astype(float)
    out = correct.groupby(votes["annotator"]).agg(["size", "mean"])
    return out.rename(columns={"size": "gold_n", "mean": "gold_accuracy"})


def duplicate_consistency(frame: pd.DataFrame, by: str = "annotator") -> pd.DataFrame:
    """Per rater (`annotator` or `judge`): pairs seen in both orders and the share answered the same.

    Same answer = the duplicate's choice mapped back (a<->b) equals the original's choice.
    `flip_rate` = 1 - consistency.
    """
    votes = canonical_votes(frame[frame[by].notna()])
    orig = votes[~votes["is_duplicate"]].drop_duplicates(["item", by], keep="last")
    dup = votes[votes["is_duplicate"]].drop_duplicates(["item", by], keep="last")
    both = orig.merge(dup, on=["item", by], suffixes=("_orig", "_dup"))
    same = (both["label_orig"] == both["label_dup"]).astype(float)
    out = same.groupby(both[by]).agg(["size", "mean"]).rename(columns={"size": "dup_n", "mean": "dup_consistency"})
    out["flip_rate"] = 1.0 - out["dup_consistency"]
    return out


# ----------------------------------------------------------------------------- position bias
def position_bias(frame: pd.DataFrame, by: str = "annotator") -> pd.DataFrame:
    """P(left chosen) per annotator (by="annotator") or per judge (by="judge"), with a binomial test ≠ 0.5."""
    retracted = frame.get("retracted", pd.Series(False, index=frame.index)).fillna(False).astype(bool)
    rows = frame[frame[by].notna() & ~retracted]
    left = picked_left(rows)
    rows = rows.assign(left=left).dropna(subset=["left"])
    out = []
    for name, grp in rows.groupby(by):
        n, k = len(grp), int(grp["left"].sum())
        test = sps.binomtest(k, n, 0.5)
        ci = test.proportion_ci(0.95)
        out.append({by: name, "n": n, "n_left": k, "p_left": k / n, "ci_low": ci.low, "ci_high": ci.high,
                    "p_value": test.pvalue})
    return pd.DataFrame(out, columns=[by, "n", "n_left", "p_left", "ci_low", "ci_high", "p_value"]).set_index(by)


ORDER_VOTE = r"^(?P<judge>.+)\[(?P<order>ab|ba)\]$"  # a judge's vote in one presentation order (judges/lmm.py)


def order_disagreement(frame: pd.DataFrame) -> pd.DataFrame:
    """Judges asked in both orders (votes named '<judge>[ab]' and '<judge>[ba]' on one pair): per judge,
    the share of pairs where the two orders disagree (the judge then logged a tie) and P(first shown
    chosen) over the decisive order votes. Index judge; columns n_pairs, disagreement_rate, p_first."""
    cols = ["n_pairs", "disagreement_rate", "p_first"]
    votes = active_votes(frame[frame["judge"].notna()])
    parts = votes["judge"].str.extract(ORDER_VOTE)
    votes = votes.assign(base=parts["judge"], order=parts["order"]).dropna(subset=["base"])
    if votes.empty:
        return pd.DataFrame(columns=cols).rename_axis("judge")
    wide = votes.drop_duplicates(["pair_id", "base", "order"], keep="last").pivot(
        index=["base", "pair_id"], columns="order", values="choice").reindex(columns=["ab", "ba"]).dropna()
    decisive = votes[votes["choice"].isin(DECISIVE)]
    first = np.where(decisive["order"] == "ab", decisive["choice"] == "a", decisive["choice"] == "b")
    p_first = pd.Series(first, index=decisive.index).groupby(decisive["base"]).mean()
    out = pd.DataFrame({"n_pairs": wide.groupby(level="base").size(),
                        "disagreement_rate": (wide["ab"] != wide["ba"]).groupby(level="base").mean()})
    out["p_first"] = p_first.reindex(out.index)
    return out[cols].rename_axis("judge")


def judge_judge_agreement(frame: pd.DataFrame) -> pd.DataFrame:
    """Agreement between model judges voting on the same pairs (ensemble members, or any judges): per
    pair of judges, pairs both judged, the share with the same choice, and Cohen's κ. Order votes
    ('<judge>[ab]') are left out: order_disagreement covers them."""
    cols = ["judge_1", "judge_2", "n", "agreement", "kappa"]
    votes = canonical_votes(judge_votes(frame))
    votes = votes[~votes["judge"].str.match(ORDER_VOTE)].drop_duplicates(["item", "judge"], keep="last")
    wide = votes.pivot(index="item", columns="judge", values="label")
    names = sorted(wide.columns)
    rows = []
    for i, j1 in enumerate(names):
        for j2 in names[i + 1:]:
            both = wide[[j1, j2]].dropna()
            if len(both):
                x, y = both[j1].to_numpy(), both[j2].to_numpy()
                rows.append({"judge_1": j1, "judge_2": j2, "n": len(both), "agreement": float(np.mean(x == y)),
                             "kappa": cohen_kappa(x, y)})
    return pd.DataFrame(rows, columns=cols)


# ----------------------------------------------------------------------------- judge–human agreement
def cohen_kappa(x: np.ndarray, y: np.ndarray) -> float:
    """Cohen's κ of two label sequences (categorical): (p_o - p_e) / (1 - p_e)."""
    x, y = np.asarray(x), np.asarray(y)
    if len(x) == 0:
        return float("nan")
    cats = np.union1d(x, y)
    p_o = float(np.mean(x == y))
    p_e = float(sum(np.mean(x == c) * np.mean(y == c) for c in cats))
    return float("nan") if p_e == 1.0 else (p_o - p_e) / (1.0 - p_e)


def judge_human_pairs(frame: pd.DataFrame, judge: str | None = None) -> pd.DataFrame:
    """One row per (canonical pair, judge) that has both a judge verdict and a human consensus.

    Columns: item, run_id, judge, judge_label, human_label, gap (|score_a - score_b|, NaN if unscored).
    """
    humans = majority_vote(frame)
    jv = canonical_votes(judge_votes(frame, judge))
    jv = jv.drop_duplicates(["item", "judge"], keep="last")
    jv = jv[jv["item"].isin(humans.index)]
    return pd.DataFrame({
        "item": jv["item"].to_numpy(),
        "run_id": jv["run_id"].to_numpy(),
        "judge": jv["judge"].to_numpy(),
        "judge_label": jv["label"].to_numpy(),
        "human_label": humans.loc[jv["item"]].to_numpy(),
        "gap": (jv["score_a"] - jv["score_b"]).abs().to_numpy(dtype=float),
    })


def confusion(judge_label, human_label) -> np.ndarray:
    """4×4 counts, rows = judge, columns = human, in OPINIONS order (a, b, tie, both_bad)."""
    code = {c: i for i, c in enumerate(OPINIONS)}
    j = np.array([code[x] for x in judge_label], dtype=int)
    h = np.array([code[x] for x in human_label], dtype=int)
    return np.bincount(j * len(OPINIONS) + h, minlength=len(OPINIONS) ** 2).reshape(len(OPINIONS), len(OPINIONS))


def agreement_from_confusion(c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(agreement with ties dropped, agreement over all outcomes, Cohen's κ) from confusion counts.

    `c` has shape (..., 4, 4), so a stack of bootstrap confusions is computed at once.
    """
    c = np.asarray(c, dtype=float)
    n = c.sum(axis=(-2, -1))
    diag = np.trace(c, axis1=-2, axis2=-1)
    decisive = c[..., :2, :2]
    with np.errstate(invalid="ignore", divide="ignore"):
        agree_nt = np.trace(decisive, axis1=-2, axis2=-1) / decisive.sum(axis=(-2, -1))
        p_o = diag / n
        p_e = (c.sum(axis=-1) * c.sum(axis=-2)).sum(axis=-1) / n ** 2
        kappa = np.where(p_e < 1.0, (p_o - p_e) / (1.0 - p_e), np.nan)
    return agree_nt, p_o, kappa


def bootstrap_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def judge_agreement(frame: pd.DataFrame, by: tuple[str, ...] = ("judge",), n_boot: int = 200,
                    seed: int = 0) -> pd.DataFrame:
    """Judge–human agreement per group (by judge, or by judge and run) with percentile bootstrap CIs.

    "Ties dropped" keeps pairs where both the judge and the human consensus chose a or b; "all"
    compares every outcome (tie and both_bad included); κ is Cohen's over all outcomes.
    The bootstrap resamples pairs within each group; since every number is a function of the
    judge×human confusion counts, a resample is one multinomial draw of those counts.
    """
    pairs = judge_human_pairs(frame)
    rng = np.random.default_rng(seed)
    rows = []
    no_draws = (np.empty(0),) * 3
    for key, grp in pairs.groupby(list(by)):
        c = confusion(grp["judge_label"], grp["human_label"])
        nt, al, kappa = (float(x) for x in agreement_from_confusion(c))
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row.update(n_pairs=len(grp), n_decisive=int(c[:2, :2].sum()), agree_no_ties=nt, agree_all=al, kappa=kappa)
        if n_boot:
            draws = rng.multinomial(int(c.sum()), c.ravel() / c.sum(), size=n_boot).reshape(n_boot, *c.shape)
            boots = agreement_from_confusion(draws)
        for name, values in zip(("agree_no_ties", "agree_all", "kappa"), boots if n_boot else no_draws):
            row[f"{name}_low"], row[f"{name}_high"] = bootstrap_ci(values)
        rows.append(row)
    cols = list(by) + ["n_pairs", "n_decisive", "agree_no_ties", "agree_no_ties_low", "agree_no_ties_high",
                       "agree_all", "agree_all_low", "agree_all_high", "kappa", "kappa_low", "kappa_high"]
    return pd.DataFrame(rows, columns=cols)


def agreement_by_gap(frame: pd.DataFrame, judge: str, bins: int | list[float] = 5) -> pd.DataFrame:
    """Agreement (ties dropped) of one judge with humans per bin of the judge's score gap.

    An int gives quantile bins; a list gives bin edges.
    """
    pairs = judge_human_pairs(frame, judge)
    pairs = pairs[np.isin(pairs["judge_label"], DECISIVE) & np.isin(pairs["human_label"], DECISIVE)]
    pairs = pairs.dropna(subset=["gap"])
    if pairs.empty:
        return pd.DataFrame(columns=["gap_bin", "n", "agreement"])
    if isinstance(bins, int):
        cut = pd.qcut(pairs["gap"], bins, duplicates="drop")
    else:
        cut = pd.cut(pairs["gap"], bins, include_lowest=True)
    agree = (pairs["judge_label"] == pairs["human_label"]).astype(float)
    out = agree.groupby(cut, observed=True).agg(["size", "mean"]).rename(columns={"size": "n", "mean": "agreement"})
    out.index = out.index.astype(str)
    return out.rename_axis("gap_bin").reset_index()


@dataclass(frozen=True)
class TauCalibration:
    judge: str
    target: float
    tau: float          # NaN when no threshold reaches the target
    agreement: float    # agreement on pairs with gap >= tau
    n_pairs: int        # decisive pairs with gap >= tau


def calibrate_tau(frame: pd.DataFrame, judge: str, target_agreement: float, min_pairs: int = 10) -> TauCalibration:
    """The smallest τ such that the judge agrees with people at ≥ target on decisive pairs with gap ≥ τ.

    This is the paper's τ (ignore pairs whose reward gap is below τ), calibrated on human votes.
    Candidate τ are the observed gaps; a τ that leaves fewer than `min_pairs` pairs does not count.
    """
    pairs = judge_human_pairs(frame, judge)
    pairs = pairs[np.isin(pairs["judge_label"], DECISIVE) & np.isin(pairs["human_label"], DECISIVE)]
    pairs = pairs.dropna(subset=["gap"]).sort_values("gap", kind="stable")
    gaps = pairs["gap"].to_numpy()
    agree = (pairs["judge_label"] == pairs["human_label"]).to_numpy(dtype=float)
    # Suffix sums: agreement over pairs with gap >= gaps[i]; equal gaps share their first index.
    suffix_agree = np.cumsum(agree[::-1])[::-1]
    n_from = len(gaps) - np.arange(len(gaps))
    for i in range(len(gaps)):
        if i > 0 and gaps[i] == gaps[i - 1]:
            continue
        if n_from[i] < min_pairs:
            break
        rate = suffix_agree[i] / n_from[i]
        if rate >= target_agreement:
            return TauCalibration(judge, target_agreement, float(gaps[i]), float(rate), int(n_from[i]))
    return TauCalibration(judge, target_agreement, float("nan"), float("nan"), 0)


# ----------------------------------------------------------------------------- inter-annotator agreement
def rating_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Human label counts per canonical pair (rows) and label (columns a, b, tie, both_bad)."""
    votes = canonical_votes(human_votes(frame)).drop_duplicates(["item", "annotator"], keep="last")
    return votes.groupby(["item", "label"]).size().unstack(fill_value=0).reindex(columns=list(OPINIONS), fill_value=0)


def fleiss_kappa(counts: np.ndarray | pd.DataFrame) -> float:
    """Fleiss' κ from an items × categories count matrix; items with fewer than 2 ratings are dropped.

    Rows may have different totals (the per-item agreement uses each row's own n).
    """
    m = np.asarray(counts, dtype=float)
    n = m.sum(axis=1)
    m, n = m[n >= 2], n[n >= 2]
    if len(m) == 0:
        return float("nan")
    p_j = m.sum(axis=0) / n.sum()
    p_i = ((m * (m - 1)).sum(axis=1)) / (n * (n - 1))
    p_bar, p_e = p_i.mean(), float((p_j ** 2).sum())
    return float("nan") if p_e == 1.0 else float((p_bar - p_e) / (1 - p_e))


def krippendorff_alpha(frame: pd.DataFrame) -> float:
    """Krippendorff's α (nominal) over human votes, missing ratings allowed (the `krippendorff` package)."""
    import krippendorff

    votes = canonical_votes(human_votes(frame)).drop_duplicates(["item", "annotator"], keep="last")
    if votes.empty:
        return float("nan")
    codes = votes["label"].map({c: i for i, c in enumerate(OPINIONS)}).astype(float)
    table = votes.assign(code=codes).pivot(index="annotator", columns="item", values="code")
    if table.notna().sum(axis=0).max() < 2 or len(np.unique(codes)) < 2:
        return float("nan")
    return float(krippendorff.alpha(reliability_data=table.to_numpy(dtype=float), level_of_measurement="nominal"))


# ----------------------------------------------------------------------------- annotator report
@dataclass(frozen=True)
class FlagRules:
    """Thresholds for flagging an annotator to admins."""
    min_reliability: float = 0.7      # Dawid–Skene accuracy
    min_gold_accuracy: float = 0.7
    min_dup_consistency: float = 0.6
    max_position_p_value: float = 1e-3  # binomial test of P(left) = 0.5 ...
    min_position_effect: float = 0.2    # ... and |P(left) - 0.5| at least this
    min_votes: int = 10


def annotator_report(frame: pd.DataFrame, rules: FlagRules = FlagRules()) -> pd.DataFrame:
    """One row per annotator: votes, agreement with majority, Dawid–Skene accuracy, gold accuracy,
    duplicate consistency, P(left), and whether (and why) the annotator is flagged."""
    humans = human_votes(frame)
    if humans.empty:
        return pd.DataFrame()
    votes = canonical_votes(humans)
    majority = majority_vote(frame)
    agree = (votes["label"] == majority.reindex(votes["item"]).to_numpy()).astype(float)
    report = pd.DataFrame({"n_votes": votes.groupby("annotator").size(),
                           "agree_majority": agree.groupby(votes["annotator"]).mean()})
    _, ds = dawid_skene(frame)
    dups = duplicate_consistency(frame, "annotator")[["dup_n", "dup_consistency"]]
    side = position_bias(frame, "annotator")[["p_left", "p_value"]].rename(columns={"p_value": "left_p_value"})
    report = report.join(ds).join(gold_accuracy(frame)).join(dups).join(side)
    reasons = []
    for _, r in report.iterrows():
        why = []
        if r["n_votes"] >= rules.min_votes:
            if r["ds_accuracy"] < rules.min_reliability:
                why.append(f"reliability {r['ds_accuracy']:.2f}")
            if r.get("gold_n", 0) > 0 and r["gold_accuracy"] < rules.min_gold_accuracy:
                why.append(f"gold {r['gold_accuracy']:.2f}")
            if r.get("dup_n", 0) > 0 and r["dup_consistency"] < rules.min_dup_consistency:
                why.append(f"duplicates {r['dup_consistency']:.2f}")
            if r["left_p_value"] < rules.max_position_p_value and abs(r["p_left"] - 0.5) >= rules.min_position_effect:
                why.append(f"left {r['p_left']:.2f}")
        reasons.append("; ".join(why))
    report["flag_reasons"] = reasons
    report["flagged"] = report["flag_reasons"] != ""
    return report.rename_axis("annotator")


# ----------------------------------------------------------------------------- Bradley–Terry
def _bt_cells(comparisons: pd.DataFrame) -> tuple[pd.Index, np.ndarray, np.ndarray, np.ndarray]:
    """(items, index of a, index of b, wins of a) per comparison; ties are half a win."""
    items = pd.Index(pd.unique(pd.concat([comparisons["item_a"], comparisons["item_b"]])))
    win_a = comparisons["winner"].map({"a": 1.0, "b": 0.0, "tie": 0.5}).to_numpy(dtype=float)
    keep = np.isfinite(win_a)
    return (items, items.get_indexer(comparisons["item_a"])[keep], items.get_indexer(comparisons["item_b"])[keep],
            win_a[keep])


def bt_fit(wins: np.ndarray, prior: float, max_iter: int = 100, tol: float = 1e-10) -> np.ndarray:
    """Log-strengths (mean 0) maximising the Bradley–Terry likelihood of the win matrix by Newton steps.

    wins[i, j] = (possibly fractional) wins of i over j. The prior is `prior` wins and `prior`
    losses of every item against a virtual item of log-strength 0.
    """
    games = wins + wins.T
    won = wins.sum(axis=1)
    s = np.zeros(len(wins))
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(s[None, :] - s[:, None]))       # p[i, j] = P(i beats j)
        q = 1.0 / (1.0 + np.exp(-s))                            # P(i beats the virtual item)
        grad = won - (games * p).sum(axis=1) + prior * (1.0 - 2.0 * q)
        step = np.linalg.lstsq(bt_information(s, games, prior), grad, rcond=None)[0]
        s = s + step
        if np.max(np.abs(step)) < tol:
            break
    return s - s.mean()


def bt_information(s: np.ndarray, games: np.ndarray, prior: float) -> np.ndarray:
    """Fisher information of Bradley–Terry log-strengths `s` (minus the log-likelihood's Hessian, the
    prior's virtual games included): games[i, j] comparisons of i and j each add p(1 − p) with
    p = P(i beats j), so a pair whose outcome is a coin flip teaches the most."""
    p = 1.0 / (1.0 + np.exp(s[None, :] - s[:, None]))
    q = 1.0 / (1.0 + np.exp(-s))
    w = games * p * (1.0 - p)
    return np.diag(w.sum(axis=1) + 2.0 * prior * q * (1.0 - q)) - w


def _win_matrix(k: int, ia: np.ndarray, ib: np.ndarray, win_a: np.ndarray, weights=None) -> np.ndarray:
    w = np.ones(len(ia)) if weights is None else weights
    m = np.zeros((k, k))
    np.add.at(m, (ia, ib), w * win_a)
    np.add.at(m, (ib, ia), w * (1.0 - win_a))
    return m


def bradley_terry(comparisons: pd.DataFrame, prior: float = 0.5) -> pd.Series:
    """Bradley–Terry log-strengths (mean 0); a tie counts half a win each way.

    `comparisons` has columns item_a, item_b, winner (a|b|tie). P(i beats j) = 1 / (1 + exp(s_j - s_i)).
    `prior` adds that many wins and losses against a virtual item of log-strength 0, which keeps
    undefeated items finite; prior=0 is the plain maximum-likelihood estimate.
    """
    items, ia, ib, win_a = _bt_cells(comparisons)
    s = bt_fit(_win_matrix(len(items), ia, ib, win_a), prior)
    return pd.Series(s, index=items, name="strength")


def bt_bootstrap(comparisons: pd.DataFrame, n_boot: int = 200, seed: int = 0,
                 prior: float = 0.5) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    """(items, log-strengths, n_boot × items bootstrap log-strengths), each fit of mean 0. A resample
    of the comparisons (FastChat's arena bootstrap: votes drawn with replacement) is a multinomial
    draw of how often each comparison appears, so each is a reweighted win matrix (no copies)."""
    items, ia, ib, win_a = _bt_cells(comparisons)
    point = bt_fit(_win_matrix(len(items), ia, ib, win_a), prior)
    rng = np.random.default_rng(seed)
    n = len(ia)
    if n_boot and n:
        boots = np.array([bt_fit(_win_matrix(len(items), ia, ib, win_a, w), prior)
                          for w in rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)])
    else:
        boots = np.empty((0, len(items)))
    return items, point, boots


def bradley_terry_ci(comparisons: pd.DataFrame, n_boot: int = 200, seed: int = 0, level: float = 0.95,
                     prior: float = 0.5) -> pd.DataFrame:
    """Bradley–Terry strengths with percentile bootstrap CIs, sorted best first.

    A bootstrap resample of the comparisons is a multinomial draw of how often each comparison
    appears, so each resample is a reweighted win matrix (no copies of the frame).
    """
    items, point, boots = bt_bootstrap(comparisons, n_boot, seed, prior)
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    out = pd.DataFrame({"strength": point,
                        "low": np.quantile(boots, lo, axis=0) if len(boots) else np.nan,
                        "high": np.quantile(boots, hi, axis=0) if len(boots) else np.nan}, index=items)
    out["rank"] = out["strength"].rank(ascending=False, method="min").astype(int)
    return out.sort_values("strength", ascending=False).rename_axis("item")


# ----------------------------------------------------------------------------- one call for the page and CLI
@dataclass
class AuditSummary:
    agreement: pd.DataFrame
    agreement_by_run: pd.DataFrame
    position_annotators: pd.DataFrame
    position_judges: pd.DataFrame
    judge_flips: pd.DataFrame
    annotators: pd.DataFrame
    fleiss_kappa: float
    krippendorff_alpha: float
    taus: list[TauCalibration]
    n_votes: int
    n_pairs: int
    order_disagreement: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    judge_judge_agreement: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    skip_reasons: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)


def audit_summary(frame: pd.DataFrame, target_agreement: float = 0.9, n_boot: int = 200,
                  rules: FlagRules = FlagRules()) -> AuditSummary:
    """Every number the Audit page and `dreamdpo stats` show, computed once from one votes frame."""
    judges = sorted(frame["judge"].dropna().unique())
    return AuditSummary(
        agreement=judge_agreement(frame, ("judge",), n_boot=n_boot),
        agreement_by_run=judge_agreement(frame, ("judge", "run_id"), n_boot=n_boot),
        position_annotators=position_bias(frame, "annotator"),
        position_judges=position_bias(frame, "judge"),
        judge_flips=duplicate_consistency(frame, "judge"),
        annotators=annotator_report(frame, rules),
        fleiss_kappa=fleiss_kappa(rating_counts(frame)) if not human_votes(frame).empty else float("nan"),
        krippendorff_alpha=krippendorff_alpha(frame),
        taus=[calibrate_tau(frame, j, target_agreement) for j in judges],
        n_votes=int(len(active_votes(frame))),
        n_pairs=int(frame["pair_id"].nunique()),
        order_disagreement=order_disagreement(frame),
        judge_judge_agreement=judge_judge_agreement(frame),
        skip_reasons=skip_reasons(frame),
    )
