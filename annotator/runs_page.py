"""Runs page: live runs with their latest render and turntable, loss/gap curves, the steps waiting
on people; admins may pause, resume or cancel a run (the loop polls its status)."""
from __future__ import annotations

import pandas as pd
import sqlalchemy as sa
import streamlit as st

from annotator.plain import md
from db import queue
from db.models import Pair, utcnow

LIVE = ("pending", "running", "paused")


def waiting_on_people(engine) -> dict[int, int]:
    """Run id → pending live pairs not past their deadline."""
    now = utcnow()
    with engine.connect().execution_options(readonly=True) as conn:  # a read never takes the write lock
        rows = conn.execute(sa.select(Pair.run_id, sa.func.count()).where(
            Pair.status == "pending", Pair.kind == "live",
            sa.or_(Pair.deadline.is_(None), Pair.deadline > now)).group_by(Pair.run_id)).all()
    return {int(r): int(n) for r, n in rows}


def curves(history: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(history)
    cols = [c for c in ("loss", "gap") if c in frame]
    if frame.empty or not cols:
        return pd.DataFrame()
    return frame.set_index("step")[cols].apply(pd.to_numeric, errors="coerce")


def controls(engine, run: dict) -> None:
    c = st.columns(3)
    rid = run["id"]
    if run["status"] == "running" and c[0].button("Pause", key=f"pause-{rid}"):
        queue.set_run_status(engine, rid, "paused")
        st.rerun()
    if run["status"] == "paused" and c[0].button("Resume", key=f"resume-{rid}"):
        queue.set_run_status(engine, rid, "running")
        st.rerun()
    if run["status"] in LIVE and c[1].button("Cancel run", key=f"cancel-{rid}"):
        queue.cancel_run(engine, rid)
        st.rerun()


def show_run(engine, run: dict, waiting: int, admin: bool) -> None:
    metrics = run.get("metrics") or {}
    st.subheader(f"Run {int(run['id'])} · {md(run['status'])} · step {int(run['step'])}")
    st.text(run["prompt"])  # text from the log is plain text, never markdown
    st.text(f"backbone {run['backbone'] or '?'} · judge {(run.get('judge_policy') or {}).get('judge', '?')} · "
            f"steps waiting on people: {waiting}")
    cols = st.columns(2)
    for col, key, title in ((cols[0], "preview", "Latest render"), (cols[1], "turntable", "Turntable")):
        png = queue.get_image(engine, metrics[key]) if metrics.get(key) else None
        if png is not None:
            col.image(png, caption=title, width="stretch", output_format="PNG")
    frame = curves(metrics.get("history") or [])
    if not frame.empty:
        st.line_chart(frame)
    if metrics.get("outputs"):
        st.json(metrics["outputs"], expanded=False)
    if admin:
        controls(engine, run)
    st.divider()


def render(engine, user: dict) -> None:
    st.header("Runs")
    runs = queue.list_runs(engine)
    if not runs:
        st.info("No runs in the log yet. Start one with `dreamdpo run` or `dreamdpo demo`.")
        return
    show_all = st.toggle("Show finished and cancelled runs too", value=False)
    waiting = waiting_on_people(engine)
    shown = [r for r in reversed(runs) if show_all or r["status"] in LIVE]
    if not shown:
        st.info("No live runs right now.")
    for run in shown:
        show_run(engine, run, waiting.get(run["id"], 0), user["role"] == "admin")
