"""Annotate page: one pair at a time, keyboard first.

Left/right is shuffled per pair and the shown order logged with the vote (shown_left = the
candidate drawn on the left). The time from the pair appearing to the vote is logged as
latency_ms. A vote, the claim of the next pair and its images happen in the same rerun of the
fragment, so the next pair is on screen as soon as the vote is stored; the fragment also reruns
every DREAMDPO_POLL_S seconds (default 0.5), so a pair posted while the queue was empty appears
without a reload. Prompts and questions are drawn with st.text: HTML in them stays text.

Quality-control pairs (gold, swapped duplicates) look exactly like live pairs: no run or step is
shown, and a pair without a render of its own shows its run's latest one. A deactivated account is
sent back to the sign-in form at its next poll or click; an unreachable log is a message, retried
at every poll (annotator.guard).
"""
from __future__ import annotations

import os
import random
import time

import sqlalchemy as sa
import streamlit as st

from annotator import guard
from db import queue
from db.engine import is_transient
from db.errors import AccountInactive, LogError
from db.models import Image, Pair

POLL_S = float(os.environ.get("DREAMDPO_POLL_S", "0.5"))  # seconds between checks for a new pair
LEASE_S = float(os.environ.get("DREAMDPO_LEASE_S", "120"))  # how long a shown pair stays yours
# (label, keyboard shortcut, what it means relative to the screen)
BUTTONS = [("Left better", "Left", "left"), ("Right better", "Right", "right"), ("Tie", "t", "tie"),
           ("Both bad", "b", "both_bad"), ("Skip", "s", "skip")]
FLASH_S = 6.0  # how long a message stays while the page keeps polling
EMPTY = "No pairs are waiting for you right now. New ones appear here by themselves."


def choice_for(button: str, shown_left: str) -> str:
    """What a button means for the log: Left/Right better → the candidate shown on that side."""
    if button == "left":
        return shown_left
    if button == "right":
        return "b" if shown_left == "a" else "a"
    return button


def _claim(engine, user) -> dict | None:
    pair = queue.claim_next(engine, user["id"], lease_seconds=LEASE_S)
    if pair is not None:
        sides = st.session_state.setdefault("sides", {})
        pair["shown_left"] = sides.setdefault(pair["pair_id"], random.choice("ab"))
        pair["shown_at"] = time.monotonic()
    st.session_state["pair"] = pair
    return pair


def _vote(engine, user, button: str) -> None:
    ss = st.session_state
    pair = ss.get("pair")
    if pair is None:
        return
    ss["flash"] = None
    choice = choice_for(button, pair["shown_left"])
    latency = int((time.monotonic() - pair["shown_at"]) * 1000)
    try:
        if choice == "skip":
            queue.release(engine, pair["pair_id"], user["id"])
            ss["last"] = None
        else:
            queue.vote(engine, pair["pair_id"], user["id"], choice, shown_left=pair["shown_left"], latency_ms=latency)
            ss["last"] = pair
    except Exception as e:
        if not isinstance(e, LogError) and not is_transient(e):
            raise
        why = guard.UNREACHABLE if is_transient(e) else e
        ss["flash"] = ("warning", f"Your vote was not stored: {why}", time.monotonic() + FLASH_S)
        ss["last"] = None
    ss["pair"] = None  # the next pair is claimed in this same rerun


def _undo(engine, user) -> None:
    ss = st.session_state
    last = ss.get("last")
    if last is None:
        return
    try:
        undone = queue.undo_vote(engine, last["pair_id"], user["id"])
    except Exception as e:
        if not isinstance(e, LogError) and not is_transient(e):
            raise
        why = guard.UNREACHABLE if is_transient(e) else e
        ss["flash"] = ("warning", f"Nothing was undone: {why}", time.monotonic() + FLASH_S)
        ss["last"] = None
        return
    if undone:
        ss["flash"] = ("info", f"Vote on pair {last['pair_id']} undone: vote again.", time.monotonic() + FLASH_S)
        last["shown_at"] = time.monotonic()
        ss["pair"] = last  # the pair you were on (if any) stays leased to you and comes next
    else:
        ss["flash"] = ("warning", f"Too late to undo: pair {last['pair_id']} is already decided or your lease ran out.",
                       time.monotonic() + FLASH_S)
    ss["last"] = None


def context_render(engine, pair: dict) -> bytes | None:
    """The pair's own render, else its run's latest one (QC pairs carry none: they must not stand out)."""
    if pair.get("render_image"):
        return pair["render_image"]
    with engine.connect().execution_options(readonly=True) as conn:
        return conn.execute(sa.select(Image.png).join(Pair, Pair.render_image == Image.id)
                            .where(Pair.run_id == pair["run_id"]).order_by(Pair.id.desc()).limit(1)).scalar()


@st.fragment(run_every=POLL_S)
def pane(engine, user) -> None:
    try:
        _pane(engine, user)
    except AccountInactive:
        guard.signed_out()
    except Exception as e:
        if not guard.show_failure(e):
            raise


def _pane(engine, user) -> None:
    ss = st.session_state
    pair = ss.get("pair")
    if pair is None:
        pair = _claim(engine, user)
    stats = queue.queue_stats(engine, user["id"])
    c = st.columns(3)
    c[0].metric("Done today", stats["done_today"] or 0)
    c[1].metric("Waiting in the queue", stats["pending"])
    c[2].metric("Live runs waiting on people", stats["live_runs_waiting"])
    flash = ss.get("flash")
    if flash is not None and time.monotonic() > flash[2]:
        flash = ss["flash"] = None
    if flash is not None:
        (st.warning if flash[0] == "warning" else st.info)(flash[1])
    if pair is None:
        st.info(EMPTY)
    else:
        st.caption(f"Prompt · pair {int(pair['pair_id'])}")
        st.text(pair["prompt"])
        st.caption("Question")
        st.text(pair["question"] or "Which one matches the prompt better?")
        left, right = ("image_a", "image_b") if pair["shown_left"] == "a" else ("image_b", "image_a")
        cols = st.columns(2)
        cols[0].image(pair[left], caption="Left", width="stretch", output_format="PNG")
        cols[1].image(pair[right], caption="Right", width="stretch", output_format="PNG")
        buttons = st.columns(len(BUTTONS) + 1)
        for col, (label, key, button) in zip(buttons, BUTTONS):
            col.button(f"{label} ({'←' if key == 'Left' else '→' if key == 'Right' else key.upper()})",
                       key=f"vote-{button}", shortcut=key, on_click=_vote, args=(engine, user, button),
                       width="stretch", type="primary" if button in ("left", "right") else "secondary")
        if "context" not in pair:
            pair["context"] = context_render(engine, pair)
        if pair["context"]:
            with st.expander("Current render (context)"):
                st.image(pair["context"], width="stretch", output_format="PNG")
        need = pair["votes_needed"]
        if need > 1:
            st.caption(f"{pair['votes_in']} of {need} votes in")
    if ss.get("last") is not None:
        st.button("Undo last vote (U)", key="undo", shortcut="u", on_click=_undo, args=(engine, user))


def render(engine, user: dict) -> None:
    st.header("Annotate")
    pane(engine, user)
