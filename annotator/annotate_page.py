"""Annotate page: one pair at a time, keyboard first, everything in one 1366×768 screen.

Left/right is shuffled per pair and the shown order logged with the vote (shown_left = the
candidate drawn on the left). The time from the pair appearing to the vote is logged as
latency_ms. A vote and the claim of the next pair are one transaction (db.queue.vote_and_claim_next),
drawn in the same rerun of the fragment, so the next pair is on screen as soon as the vote is stored;
the fragment also reruns every DREAMDPO_POLL_S seconds (default 0.5), so a pair posted while the queue was empty appears
without a reload, and the countdown of the lease ticks. Prompts and questions are drawn with
st.text: HTML in them stays text.

Keys go through annotator.keys (queued in the page, handled one by one, never lost in a redraw),
and every key or click is answered on the "Last:" line with what was stored. Undo is offered only
while it can succeed (the pair is undecided and the lease holds), beside that line. A pair whose
lease or deadline runs out leaves the screen by itself. A skipped live pair goes to the next person;
with nobody else online it is expired at once, so the run falls back without waiting out the deadline.

Skip (S or the button) skips at once. "Can't judge?" beside it skips with a reason: a preset one or a
short text of one's own, stored with the skip (db.votes.skip_reason: plain text, bounded) and shown
only as text.

Zoom: a click on a view of either candidate (or Z for the view enlarged last, or the digit keys 1–9)
shows that view of both candidates alone, larger, side by side; the view buttons below switch views,
and a click on a large view, Esc or Close returns to the grids. Every zoom action says where to go,
never "the other way" (no toggle), so a key and a click handled in either order end the same. Votes
work the same while zoomed; the next pair starts with its grids.

An arena pair (two finished runs of the prompt, annotator.arena_criteria) shows each run's turntable
views in the same grid, and under the buttons optional Left / Right / Tie choices per criterion,
stored beside the vote.

Quality-control pairs (gold, swapped duplicates) look exactly like live pairs: no run or step is
shown, and a pair without a render of its own shows its run's latest one. A deactivated account is
sent back to the sign-in form at its next poll or click; an unreachable log is a message, retried
at every poll (annotator.guard).
"""
from __future__ import annotations

import io
import os
import random
import time

import streamlit as st
from PIL import Image

from annotator import arena_criteria, guard, instructions, keys
from annotator.plain import md
from annotator.views import grid_png, view_at, view_count, view_png
from db import feedback, pairs, queue, votes
from db.engine import is_transient
from db.errors import AccountInactive, LogError
from db.models import utcnow
from db.recent import latest_render, recent_votes

POLL_S = float(os.environ.get("DREAMDPO_POLL_S", "0.5"))  # seconds between checks for a new pair
LEASE_S = float(os.environ.get("DREAMDPO_LEASE_S", "120"))  # how long a shown pair stays yours
ONLINE_S = 60.0  # someone who claimed or voted this recently is online
IMAGE_PX = 400  # each candidate's grid of views on screen: two side by side fit 1366×768 with the buttons
ZOOM_PX = 440  # one view of each candidate, zoomed: as wide as a candidate's column
# a skip's preset reasons (stored as written here; "Other" is a short text of one's own)
SKIP_REASONS = ("can't tell them apart", "images broken or empty")
# (label, what it means relative to the screen, key hint)
BUTTONS = [("Left better", "left", "←"), ("Right better", "right", "→"), ("Tie", "tie", "T"),
           ("Both bad", "both_bad", "B"), ("Skip", "skip", "S")]
SAID = {"left": "Left better", "right": "Right better", "tie": "Tie", "both_bad": "Both bad", "skip": "Skip"}
FLASH_S = 6.0  # how long a warning stays while the page keeps polling
HINT = "Keys: ← → T B S (U undoes while it can) · click a view, Z or 1–9 to enlarge it, Esc to go back"
EMPTY = "No pairs are waiting for you right now. New ones appear here by themselves."


def choice_for(button: str, shown_left: str) -> str:
    """What a button means for the log: Left/Right better → the candidate shown on that side."""
    if button == "left":
        return shown_left
    if button == "right":
        return "b" if shown_left == "a" else "a"
    return button


def side_of(choice: str, shown_left: str | None) -> str:
    """Inverse of choice_for, for a person's own list of votes."""
    if choice in ("a", "b") and shown_left in ("a", "b"):
        return "left" if choice == shown_left else "right"
    return choice


def _claim(engine, user) -> dict | None:
    return _on_screen(queue.claim_next(engine, user["id"], lease_seconds=LEASE_S))


def _on_screen(pair: dict | None) -> dict | None:
    """A claimed pair becomes the one on screen: its sides (kept per pair in this tab) and when it appeared."""
    if pair is not None:
        sides = st.session_state.setdefault("sides", {})
        pair["shown_left"] = sides.setdefault(pair["pair_id"], random.choice("ab"))
        pair["shown_at"] = time.monotonic()
    st.session_state["pair"] = pair
    return pair


def _flash(kind: str, text: str) -> None:
    st.session_state["flash"] = (kind, text, time.monotonic() + FLASH_S)


def _vote(engine, user, button: str, reason: str | None = None) -> None:
    ss = st.session_state
    pair = ss.get("pair")
    if pair is None:
        ss["ack"] = f"{SAID.get(button, button)}: ignored, no pair on screen."
        return
    ss["flash"] = None
    choice = choice_for(button, pair["shown_left"])
    latency = int((time.monotonic() - pair["shown_at"]) * 1000)
    try:
        if choice == "skip":
            reason = votes.skip_reason(reason)
            queue.release(engine, pair["pair_id"], user["id"], reason=reason, shown_left=pair["shown_left"],
                          latency_ms=latency)
            alone = feedback.annotators_online(engine, ONLINE_S, excluding=user["id"]) == 0
            gone = pair.get("kind") == "live" and alone and pairs.expire_pair(engine, pair["pair_id"])
            why = f" (reason: {md(reason)})" if reason else ""
            ss["ack"] = (f"Skipped pair {pair['pair_id']}{why}: "
                         + ("nobody else is online, so the run decides it without people." if gone
                            else "it goes to the next person."))
            ss["last"] = None
        else:
            # the next pair is claimed in the vote's transaction: one write per vote
            got = queue.vote_and_claim_next(engine, pair["pair_id"], user["id"], choice,
                                            shown_left=pair["shown_left"], latency_ms=latency, lease_seconds=LEASE_S)
            judged = arena_criteria.store(engine, user, pair, got["vote"]["vote_id"])  # an arena pair's, if any
            ss["ack"] = f"{SAID[button]} stored for pair {pair['pair_id']}" + (
                f" with {judged} criteria." if judged else "." if judged == 0 else "; its criteria were not.")
            ss["last"] = pair
            _on_screen(got["next"])
            return
    except Exception as e:
        if not isinstance(e, LogError) and not is_transient(e):
            raise
        why = guard.UNREACHABLE if is_transient(e) else e
        _flash("warning", f"Your vote was not stored: {why}")
        ss["ack"] = f"{SAID.get(button, button)} on pair {pair['pair_id']}: not stored."
        ss["last"] = None
    ss["pair"] = None  # the next pair is claimed in this same rerun


def _skip_other(engine, user) -> None:
    """The popover's own-words reason: skip with it (an empty text skips without a reason)."""
    _vote(engine, user, "skip", reason=st.session_state.get("skip-other-text"))


def zoomed(pair: dict | None) -> int | None:
    """The view of `pair` shown enlarged, or None while the grids are shown."""
    zoom = st.session_state.get("zoom")
    return zoom["view"] if pair is not None and zoom and zoom["pair_id"] == pair["pair_id"] else None


def views_of(pair: dict) -> int:
    """How many views each candidate of the pair shows."""
    if "views" not in pair:
        pair["views"] = view_count(*Image.open(io.BytesIO(pair["image_a"])).size)
    return pair["views"]


def _zoom(view: int | None) -> None:
    """Enlarge view `view` of the pair on screen (None: back to the grids)."""
    ss = st.session_state
    pair = ss.get("pair")
    if pair is None or view is None:
        ss["zoom"] = None
        return
    view = min(max(0, view), views_of(pair) - 1)
    ss["zoom"] = {"pair_id": pair["pair_id"], "view": view}
    ss["zoom_last"] = view


def _zoom_action(action: str, at: tuple[float, float] | None) -> None:
    ss = st.session_state
    pair = ss.get("pair")
    if action == "unzoom":
        _zoom(None)
    elif action == "zoom" and at is not None and pair is not None:
        _zoom(view_at(views_of(pair), *at))
    elif action == "zoom":  # Z: the view enlarged last (already zoomed: stays; Esc goes back)
        if zoomed(pair) is None:
            _zoom(ss.get("zoom_last", 0))
    elif action.startswith("view"):
        _zoom(int(action[4:]) - 1)


def undoable(engine, last: dict | None) -> bool:
    """Undo can succeed: the pair is undecided and the lease still holds."""
    if last is None or last["expires_at"] <= utcnow():
        return False
    return votes.get_decision(engine, last["pair_id"]) is None


def _undo(engine, user) -> None:
    ss = st.session_state
    last = ss.get("last")
    if last is None:
        ss["ack"] = "Undo: nothing to undo."
        return
    try:
        undone = votes.undo_vote(engine, last["pair_id"], user["id"])
    except Exception as e:
        if not isinstance(e, LogError) and not is_transient(e):
            raise
        why = guard.UNREACHABLE if is_transient(e) else e
        _flash("warning", f"Nothing was undone: {why}")
        ss["last"] = None
        return
    if undone:
        ss["ack"] = f"Vote on pair {last['pair_id']} undone: vote again."
        last["shown_at"] = time.monotonic()
        ss["pair"] = last  # the pair you were on (if any) stays leased to you and comes next
    else:
        ss["ack"] = f"Undo: pair {last['pair_id']} was decided meanwhile or your lease ran out; your vote stands."
    ss["last"] = None


def context_render(engine, pair: dict) -> bytes | None:
    """The pair's own render, else its run's latest one (QC pairs carry none: they must not stand out);
    none for an arena pair (one run's render beside both would favour a side)."""
    if pair.get("kind") == "arena":
        return None
    return pair.get("render_image") or latest_render(engine, pair["run_id"])


def preparation() -> tuple[int, int] | None:
    """(done, total) while `dreamdpo demo` builds its toy bank ($DREAMDPO_PREPARING names its progress file)."""
    path = os.environ.get("DREAMDPO_PREPARING")
    if not path:
        return None
    try:
        with open(path) as f:
            done, total = f.read().split()
        return int(done), int(total)
    except (OSError, ValueError):
        return None


def time_left(pair: dict) -> float:
    """Seconds until the pair is no longer yours to vote on (lease end or the run's deadline)."""
    ends = [t for t in (pair.get("expires_at"), pair.get("deadline")) if t is not None]
    return min(t for t in ends).timestamp() - utcnow().timestamp() if ends else float("inf")


def clock(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 60}:{s % 60:02d}"


@st.fragment(run_every=POLL_S)
def pane(engine, user) -> None:
    try:
        _pane(engine, user)
    except AccountInactive:
        guard.signed_out()
    except Exception as e:
        if not guard.show_failure(e):
            raise


def _act(engine, user, action: str, at: tuple[float, float] | None = None) -> None:
    if action in ("zoom", "unzoom") or action.startswith("view"):
        _zoom_action(action, at)
    elif action == "undo":
        if undoable(engine, st.session_state.get("last")):
            _undo(engine, user)
        else:
            st.session_state["ack"] = "Undo: nothing that can still be undone."
    else:
        _vote(engine, user, action)


def _pane(engine, user) -> None:
    ss = st.session_state
    key = keys.pressed()
    if key is not None:
        _act(engine, user, key[1], key[2])
        keys.handled()
    pair = ss.get("pair")
    if pair is not None and time_left(pair) <= 0:
        _flash("warning", f"Pair {pair['pair_id']} ran out of time before a vote; it went back to the queue.")
        pair = ss["pair"] = None
    if pair is None:
        pair = _claim(engine, user)
    # fixed containers: what is inside changes from poll to poll, their order never does, so no
    # element is drawn twice while the page redraws
    warn, main, foot, context, more = (st.container() for _ in range(5))
    flash = ss.get("flash")
    if flash is not None and time.monotonic() > flash[2]:
        flash = ss["flash"] = None
    if flash is not None:
        warn.warning(flash[1])
    stats = queue.queue_stats(engine, user["id"])
    counts = (f"Done today: {stats['done_today'] or 0} · waiting in the queue: {stats['pending']} · "
              f"live runs waiting on people: {stats['live_runs_waiting']}")
    with main:
        _show_pair(engine, user, pair, counts)
    with foot:
        last = f"Last: {ss.get('ack') or 'nothing yet. ' + HINT}"
        if undoable(engine, ss.get("last")):  # beside the line that says what was stored
            said, undo = st.columns([5, 1], vertical_alignment="center")
            said.caption(last)
            undo.button("Undo · U", key="undo", on_click=_undo, args=(engine, user), width="stretch")
        else:
            st.caption(last)
    if pair is not None:
        if "context" not in pair:
            pair["context"] = context_render(engine, pair)
        if pair["context"]:
            with context.expander("Current render (context)"):
                st.image(pair["context"], width="stretch", output_format="PNG")
    with more.expander("Instructions"):
        run_id = (pair or {}).get("run_id") or ss.get("instructions_run")
        if pair is not None:
            ss["instructions_run"] = pair["run_id"]
        st.text(instructions.for_run(engine, run_id) if run_id else instructions.DEFAULT)
    mine = recent_votes(engine, user["id"])
    if mine:
        with more.expander("Your recent votes"):
            for v in mine:
                what = "retracted" if v["retracted"] else ("decided" if v["winner"] else "waiting for the run")
                why = f" ({v['reason']})" if v.get("reason") else ""  # st.text: a reason stays text
                st.text(f"pair {v['pair_id']}: {SAID.get(side_of(v['choice'], v['shown_left']), v['choice'])}{why}"
                        f" · {v['created_at']:%H:%M:%S} UTC · {what}")


def _show_pair(engine, user, pair: dict | None, counts: str) -> None:
    """The pair (prompt, question, time left, both candidates or one view of each enlarged, vote buttons)."""
    if pair is None:
        st.caption(counts)
        preparing = preparation()
        if preparing is not None:
            done, total = preparing
            st.progress(done / total if total else 0.0,
                        text=f"The demo is preparing its toy world (built once, then cached): {done} of "
                             f"{total or '?'} layouts rendered. The first pair appears here by itself.")
        st.info(EMPTY)
        return
    top = st.columns([5, 4, 3])
    with top[0]:
        st.caption(f"Prompt · pair {int(pair['pair_id'])}")
        st.text(pair["prompt"])
    with top[1]:
        st.caption("Question")
        st.text(pair["question"] or "Which one matches the prompt better?")
    with top[2]:
        st.caption(f"Time left: {clock(time_left(pair))}")
        need = pair["votes_needed"]
        st.caption(counts if need <= 1 else f"{pair['votes_in']} of {need} votes in · {counts}")
    left, right = ("image_a", "image_b") if pair["shown_left"] == "a" else ("image_b", "image_a")
    view = zoomed(pair)
    shown = zip(st.columns(2), (left, right), ("left", "right"), ("Left (←)", "Right (→)"))
    if view is None:
        grids = pair.setdefault("grids", {})
        for col, side, where, title in shown:
            if side not in grids:
                grids[side] = grid_png(pair[side], IMAGE_PX)
            col.container(key=f"grid-{where}").image(grids[side], caption=f"{title} · click a view to enlarge it",
                                                     width=IMAGE_PX, output_format="PNG")
    else:
        n = views_of(pair)
        big = pair.setdefault("zoomed", {})
        for col, side, where, title in shown:
            if (side, view) not in big:
                big[side, view] = view_png(pair[side], view, ZOOM_PX)
            col.container(key=f"zoom-{where}").image(big[side, view], width=ZOOM_PX, output_format="PNG",
                                                     caption=f"{title} · view {view + 1} of {n} · click to go back")
        nav = st.columns(max(n, 4) + 2)
        for i in range(n):
            nav[i].button(f"View {i + 1}", key=f"nav-view-{i + 1}", on_click=_zoom, args=(i,), width="stretch",
                          disabled=i == view)  # the view shown (not red: red buttons vote)
        nav[-1].button("Close · Esc", key="nav-close", on_click=_zoom, args=(None,), width="stretch")
    buttons = st.columns(len(BUTTONS) + 1)
    if pair.get("kind") == "arena":  # two finished runs: optional choices per criterion, under the buttons
        arena_criteria.ask(pair)
    for col, (label, button, hint) in zip(buttons, BUTTONS):
        col.button(f"{label} · {hint}", key=f"vote-{button}", on_click=_vote, args=(engine, user, button),
                   width="stretch", type="primary" if button in ("left", "right") else "secondary")
    # one popover per pair (its key): the next pair's starts closed, whatever had the focus in this one
    with buttons[-1].popover("Can't judge?", key=f"skip-why-{pair['pair_id']}", width="stretch",
                             help="Skip this pair and say why (optional). S skips without a reason."):
        st.caption("Skip this pair because:")
        for i, reason in enumerate(SKIP_REASONS):
            st.button(reason.capitalize(), key=f"skip-reason-{i}", on_click=_vote, args=(engine, user, "skip"),
                      kwargs={"reason": reason}, width="stretch")
        with st.form("skip-other", clear_on_submit=True, border=False):
            st.text_input("Other reason", key="skip-other-text", max_chars=votes.SKIP_REASON_MAX,
                          placeholder="in a few words")
            st.form_submit_button("Skip with this reason", on_click=_skip_other, args=(engine, user),
                                  width="stretch")


def render(engine, user: dict) -> None:
    st.header("Annotate")
    pane(engine, user)
