"""Arena page (admins): post arena pairs between finished runs of a prompt, and the anchored
Bradley–Terry leaderboard of configs, judges or seeds from people's votes on them, with the win-rate
matrix and the vote counts beside it. People vote on arena pairs in Annotate, like any pair.

Everything shown comes from db/arena.py and db/leaderboard.py, which `dreamdpo arena` prints too.
"""
from __future__ import annotations

import pandas as pd

from db import arena
from db import leaderboard as lb
from db.criteria import CRITERIA
from db.errors import LogError

OVERALL = "the vote itself"


def _post(engine) -> None:
    import streamlit as st

    st.subheader("Post arena pairs")
    prompts = arena.arena_prompts(engine)
    if not prompts:
        st.info("No prompt has two finished runs with a turntable yet; arena pairs compare those.")
        return
    with st.form("arena-post"):
        cols = st.columns([4, 1, 1, 2])
        prompt = cols[0].selectbox("Prompt", list(prompts), format_func=lambda p: f"{p} ({prompts[p]} runs)")
        n_pairs = cols[1].number_input("Pairs", min_value=1, max_value=500, value=5, step=1)
        votes_needed = cols[2].number_input("Votes each", min_value=1, max_value=50, value=arena.VOTES_NEEDED, step=1)
        policy = cols[3].selectbox("Choice of pairs", list(lb.POLICIES),
                                   help="active: the pairs whose votes most shrink the leaderboard's CIs")
        go = st.form_submit_button("Post pairs")
    if go:
        try:
            ids = arena.post_arena_pairs(engine, prompt, n_pairs=int(n_pairs), votes_needed=int(votes_needed),
                                         policy=policy)
        except LogError as e:
            st.error(f"No pair posted: {e}")
            return
        if ids:
            st.success(f"Posted {len(ids)} arena pair(s): {', '.join(map(str, ids))}. People get them in Annotate.")
        else:
            st.info("No new pair: every pair of these runs already waits for votes.")


def _board(engine) -> None:
    import streamlit as st

    st.subheader("Leaderboard")
    cols = st.columns(3)
    by = cols[0].selectbox("Rank", list(arena.BY), format_func=lambda b: f"by {b}")
    criterion = cols[1].selectbox("On", [OVERALL, *CRITERIA],
                                  format_func=lambda c: c if c == OVERALL else CRITERIA[c])
    comparisons = arena.arena_comparisons(engine, by, None if criterion == OVERALL else criterion)
    items = sorted(set(comparisons["item_a"]) | set(comparisons["item_b"]))
    if not items:
        st.info("No arena votes yet: post pairs above; people vote on them in Annotate.")
        return
    counts = pd.concat([comparisons["item_a"], comparisons["item_b"]]).value_counts()
    baseline = cols[2].selectbox("Baseline (rated 1000)", items, index=items.index(str(counts.idxmax())),
                                key="arena-baseline")
    try:
        board = lb.leaderboard(comparisons, baseline)
    except LogError as e:
        st.info(str(e))
        return
    st.caption(f"{board.n_votes} votes · Bradley–Terry ratings anchored to {baseline} = 1000 (400 points: 10:1 "
               f"odds) · {board.level:.0%} CIs from 200 bootstrap rounds over the votes · ties count half")
    st.dataframe(board.table.round({"rating": 0, "low": 0, "high": 0, "win_rate": 3}))
    left, right = st.columns(2)
    left.caption("Win rate (row beats column)")
    left.dataframe(board.win_rate.round(3))
    right.caption("Votes")
    right.dataframe(board.counts)


def render(engine, user: dict) -> None:
    """Admins only: posting pairs asks people for their time."""
    import streamlit as st

    st.header("Arena")
    if user.get("role") != "admin":
        st.error("This page is for admins only.")
        return
    _post(engine)
    _board(engine)
