"""Audit page: judge–human agreement, inter-annotator agreement, position bias, τ calibration,
annotator flags, people's skips by reason and a Bradley–Terry ranking of candidates (each named by its
run, τ, seed and the config that differs between runs), filtered by run, judge, annotator and date.
Tables are rounded to 3 decimals.

db/audit.py computes everything the page shows without Streamlit, so `dreamdpo stats` prints the
same numbers and the bench times exactly what the page waits for.
"""
from __future__ import annotations

import pandas as pd

from db import stats
from db.audit import AuditFilters, audit_data


def render(engine, user: dict) -> None:
    """Admins only: the page names every annotator with their statistics."""
    import streamlit as st

    from annotator.plain import md

    st.header("Audit")
    if user.get("role") != "admin":
        st.error("This page is for admins only.")
        return
    from db.read import votes_frame

    everything = votes_frame(engine)
    if everything.empty:
        st.info("The log has no votes yet.")
        return
    cols = st.columns(4)
    runs = sorted(everything["run_id"].dropna().unique().tolist())
    run_id = cols[0].selectbox("Run", [None] + runs, format_func=lambda r: "all runs" if r is None else f"run {r}")
    judges = sorted(everything["judge"].dropna().unique().tolist())
    judge = cols[1].selectbox("Judge", [None] + judges, format_func=lambda j: "all judges" if j is None else j)
    people = sorted(everything["annotator"].dropna().unique().tolist())
    annotator = cols[2].selectbox("Annotator", [None] + people, format_func=lambda a: "everyone" if a is None else a)
    created = pd.to_datetime(everything["created_at"], utc=True)
    dates = cols[3].date_input("Dates", (created.min().date(), created.max().date()))
    picked = isinstance(dates, tuple) and len(dates) == 2
    since, until = (dates[0], dates[1] + pd.Timedelta(days=1)) if picked else (None, None)
    target = st.slider("Target agreement for τ", 0.5, 1.0, 0.9, 0.01)
    filters = AuditFilters(run_id, judge, annotator, since and str(since), until and str(until), target)
    data = audit_data(engine, filters, everything)
    s = data.summary

    def table(frame: pd.DataFrame, **kwargs) -> None:
        """Every table rounded to 3 decimals, no negative zero."""
        st.dataframe(stats.rounded(frame), **kwargs)

    m = st.columns(4)
    m[0].metric("Votes", s.n_votes)
    m[1].metric("Pairs", s.n_pairs)
    m[2].metric("Fleiss' κ", f"{s.fleiss_kappa:.3f}")
    m[3].metric("Krippendorff's α", f"{s.krippendorff_alpha:.3f}")

    st.subheader("Judge–human agreement")
    table(s.agreement, hide_index=True)
    if not s.agreement.empty:
        st.bar_chart(s.agreement.set_index("judge")[["agree_no_ties", "agree_all", "kappa"]])
    st.caption("Ties dropped: pairs where both the judge and the human majority chose a or b. "
               "CIs: percentile bootstrap over pairs.")
    table(s.agreement_by_run, hide_index=True)

    st.subheader("τ calibrated on people")
    table(pd.DataFrame([t.__dict__ for t in s.taus]), hide_index=True)
    for j in judges if judge is None else [judge]:
        by_gap = stats.agreement_by_gap(data.votes, j)
        if len(by_gap):
            st.caption(f"{md(j)}: agreement by score gap")
            st.bar_chart(by_gap.set_index("gap_bin")["agreement"])

    st.subheader("Position bias")
    table(pd.concat({"annotators": s.position_annotators, "judges": s.position_judges}))
    st.caption("P(left chosen) with a two-sided binomial test against 0.5.")
    table(s.judge_flips.rename_axis("judge"))
    st.caption("Model judges asked in both orders (swapped duplicates): share of verdicts that flip.")
    table(s.order_disagreement)
    st.caption("Judges that ask each pair in both orders (A/B, then B/A): share of pairs whose two orders "
               "disagree (then the verdict is a tie) and P(first shown chosen).")
    if not s.judge_judge_agreement.empty:
        st.subheader("Agreement between judges")
        table(s.judge_judge_agreement, hide_index=True)
        st.caption("Model judges on the same pairs (ensemble members): share of equal choices and Cohen's κ.")

    st.subheader("Annotators")
    table(s.annotators)
    flagged = s.annotators[s.annotators["flagged"]] if not s.annotators.empty else s.annotators
    if len(flagged):
        st.warning("Flagged: " + "; ".join(f"{md(n)} ({md(r)})" for n, r in flagged["flag_reasons"].items()))

    st.subheader("Skips by reason")
    if s.skip_reasons.empty:
        st.info("Nobody skipped a pair.")
    else:
        table(s.skip_reasons, hide_index=True)  # a reason is a cell of text, never markdown
        st.caption("People's skips (not undone) and the reason they gave, if any.")

    st.subheader("Bradley–Terry ranking of candidates")
    if data.ranking.empty:
        st.info("No candidate comparisons with a human consensus yet.")
    else:
        table(data.ranking)
