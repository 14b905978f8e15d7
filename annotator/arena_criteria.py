"""An arena pair's optional per-criterion choices on the Annotate page (GPTEval3D-like criteria,
db/criteria.py): one Left / Right / Tie row per criterion under the vote buttons, nothing chosen
at first. They are asked as the screen shows the pair and stored in the pair's a/b terms beside the
person's vote (db.arena.record_criteria), after it: a criterion left blank is simply not stored."""
from __future__ import annotations

import streamlit as st

from db import arena
from db.criteria import CRITERIA
from db.engine import is_transient
from db.errors import LogError

SIDES = ("Left", "Right", "Tie")


def _key(pair: dict, criterion: str) -> str:
    return f"criterion-{int(pair['pair_id'])}-{criterion}"


def ask(pair: dict) -> None:
    """The optional choices, folded away so that the pair and its buttons still fit one screen."""
    with st.expander("Per criterion (optional)"):
        for criterion, question in CRITERIA.items():
            st.radio(question, SIDES, index=None, horizontal=True, key=_key(pair, criterion))


def chosen(pair: dict) -> dict[str, str]:
    """The choices made on screen for this pair, in its a/b terms (Left is the candidate shown left)."""
    out = {}
    for criterion in CRITERIA:
        side = st.session_state.get(_key(pair, criterion))
        if side in SIDES:
            right = "b" if pair["shown_left"] == "a" else "a"
            out[criterion] = {"Left": pair["shown_left"], "Right": right, "Tie": "tie"}[side]
    return out


def store(engine, user: dict, pair: dict, vote_id: int) -> int | None:
    """Store the choices made for an arena pair beside the vote just cast: how many were stored, or
    None when the log refused or could not be reached (the vote itself is stored already)."""
    given = chosen(pair) if pair.get("kind") == "arena" else {}
    if not given:
        return 0
    try:
        return arena.record_criteria(engine, vote_id, user["id"], given)
    except Exception as e:
        if not isinstance(e, LogError) and not is_transient(e):
            raise
        return None
