"""Runs page: every run with its first and latest render and its turntable (kept after the run
ends, so `dreamdpo annotate` on the same log shows finished runs), one chart per quantity on its
own axis (loss, gap, the learned model's agreement with people, who decided the steps), and the
steps waiting on people. Admins may pause, resume or cancel a run (the loop polls its status);
cancelling asks for a confirmation first. Admins also write a run's instructions for annotators and,
for a run judged by a multimodal LLM, extra questions its judge asks (db.runs.judge_questions).
A run whose process stopped without saying so (kill -9, a lost machine) reads as 'stalled'
(db/liveness.py) and says how to continue it; its waiting pairs can still be voted on, and the
votes are used when it is resumed. Queued runs (`dreamdpo submit`) show their priority, the worker
holding them and the claims so far (db/run_queue.py); an admin may reorder the queue by priority,
and pause or cancel a queued run before any worker claims it."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from annotator import instructions
from annotator.plain import md
from db import feedback, images, liveness, run_queue, runs
from db.errors import LogError

LIVE = ("queued", "pending", "running", "stalled", "paused")
BINS = 20  # the share of steps each source decided is shown over at most this many windows of steps
CHARTS = (("loss", "Loss"), ("gap", "Gap between the candidates (0–1)"),
          ("agreement", "Learned model's agreement with people (leave-one-out)"))


def curves(history: list[dict]) -> pd.DataFrame:
    """Step-indexed numeric columns of the run's history (loss, gap, agreement, …)."""
    frame = pd.DataFrame(history)
    cols = [c for c, _ in CHARTS if c in frame]
    if frame.empty or not cols or "step" not in frame:
        return pd.DataFrame()
    return frame.set_index("step")[cols].apply(pd.to_numeric, errors="coerce")


def source_shares(history: list[dict], bins: int = BINS) -> pd.DataFrame:
    """Share of steps each source decided ('learned', 'human', 'toy-reward', …) per window of steps,
    indexed by the window's first step; empty when the history names no source."""
    frame = pd.DataFrame(history)
    if frame.empty or "source" not in frame or "step" not in frame:
        return pd.DataFrame()
    frame = frame.dropna(subset=["source"])
    if frame.empty:
        return pd.DataFrame()
    steps = pd.to_numeric(frame["step"], errors="coerce")
    width = max(1, int((steps.max() - steps.min()) // bins) + 1)
    window = (steps - steps.min()) // width * width + steps.min()
    counts = pd.crosstab(window.astype(int), frame["source"].astype(str))
    counts.index.name = "step"
    return counts.div(counts.sum(axis=1), axis=0)


def controls(engine, run: dict) -> None:
    c = st.columns(4)
    rid = run["id"]
    ss = st.session_state
    if run["status"] in ("running", "queued") and c[0].button("Pause", key=f"pause-{rid}"):
        runs.set_run_status(engine, rid, "paused")
        st.rerun()
    if run["status"] == "paused" and c[0].button("Resume", key=f"resume-{rid}"):
        run_queue.resume_run(engine, rid)  # a queued run nobody holds goes back to the queue
        st.rerun()
    if run["status"] in ("queued", "paused") and run.get("storage"):
        priority = c[2].number_input("Priority (higher first)", value=int(run.get("priority") or 0), step=1,
                                     key=f"priority-{rid}")
        if priority != int(run.get("priority") or 0) and c[3].button("Set priority", key=f"set-priority-{rid}"):
            run_queue.set_priority(engine, rid, int(priority))
            st.rerun()
    if run["status"] not in LIVE:
        return
    if not ss.get(f"confirm-cancel-{rid}"):
        if c[1].button("Cancel run", key=f"cancel-{rid}"):
            ss[f"confirm-cancel-{rid}"] = True
            st.rerun()
        return
    st.warning(f"Cancel run {int(rid)}? It stops at its next step, its waiting pairs are withdrawn and votes on "
               "them are refused. This cannot be undone.")
    c = st.columns(4)
    if c[0].button("Yes, cancel the run", key=f"cancel-yes-{rid}", type="primary"):
        runs.cancel_run(engine, rid)
        ss.pop(f"confirm-cancel-{rid}", None)
        st.rerun()
    if c[1].button("No, keep it", key=f"cancel-no-{rid}"):
        ss.pop(f"confirm-cancel-{rid}", None)
        st.rerun()


def stalled_note(run: dict, now=None) -> str | None:
    """What a stalled run's header says, and what to do (None for any other run)."""
    if run["status"] != liveness.STALLED:
        return None
    minutes = int((liveness.silent_for(run, now) or 0.0) // 60)
    return (f"stalled (no sign of life for {minutes} min): the run's process has stopped (killed, machine lost, "
            "log unreachable) and its status still says running. Continue it on the machine it ran on with "
            "`dreamdpo run ... --resume` (its own --out, --db and prompt), or cancel it. Its waiting pairs "
            "can still be voted on: the votes are used when it resumes.")


def asks_an_lmm(run: dict) -> bool:
    """The run's judge, or the model judge beside people, has a multimodal-LLM member ('lmm:', 'lmm-api')."""
    policy = run.get("judge_policy") or {}
    specs = [policy.get("judge"), policy.get("assist_judge")]
    return any(part.strip().startswith("lmm") for spec in specs if isinstance(spec, str) for part in spec.split("+"))


def judge_questions_editor(engine, run: dict) -> None:
    """An admin's extra questions for the run's LMM judge: plain text, one a line, stored in the log."""
    rid = run["id"]
    with st.expander("Questions for the run's LMM judge"):
        text = st.text_area(
            f"Asked in both orders after the judge's own questions; one a line, at most {runs.MAX_JUDGE_QUESTIONS}, "
            f"{runs.MAX_JUDGE_QUESTION_CHARS} characters each (empty = none)",
            "\n".join(runs.judge_questions(engine, rid)), key=f"judge-questions-{rid}", height=150)
        if st.button("Save questions", key=f"save-judge-questions-{rid}"):
            try:
                saved = runs.set_judge_questions(engine, rid, text)
            except LogError as e:
                st.error(str(e))
            else:
                every = ((run.get("config") or {}).get("lmm") or {}).get("questions_every", 10)
                st.success(f"Saved {len(saved)} question{'s' * (len(saved) != 1)}: the judge reads them within "
                           f"{int(every)} steps (lmm.questions_every) and asks them from then on; "
                           "each vote keeps the answers.")


def queue_line(run: dict) -> str:
    """A queued run's place in the queue: priority, the worker holding it, claims so far, its storage."""
    holder = f"held by worker {run['worker']}" if run.get("worker") and run["status"] in ("running", "paused",
                                                                                         "stalled") else (
        f"last worker {run['worker']}" if run.get("worker") else "no worker yet")
    return (f"queued run · priority {int(run.get('priority') or 0)} · {holder} · "
            f"claims {int(run.get('attempts') or 0)} · storage {run['storage']}")


def resume_command(run: dict) -> str:
    """The command that continues the run: its folder's config.yaml holds every key it was started with."""
    out = (run.get("config") or {}).get("out") or "OUT"
    return f"dreamdpo run --config {out}/config.yaml --resume --db LOG"


def show_run(engine, run: dict, waiting: int, admin: bool) -> None:
    metrics = run.get("metrics") or {}
    history = metrics.get("history") or []
    st.subheader(f"Run {int(run['id'])} · {md(run['status'])} · step {int(run['step'])}")
    if (note := stalled_note(run)) is not None:
        st.warning(note)
        if admin:
            st.code(resume_command(run), language="bash")  # a code block: plain text, never markdown
            st.caption("OUT: the run's --out folder; LOG: the --db it was started with (this app's log).")
    st.text(run["prompt"])  # text from the log is plain text, never markdown
    if run.get("storage"):  # a queued run (dreamdpo submit)
        st.text(queue_line(run))
    st.text(f"backbone {run['backbone'] or '?'} · judge {(run.get('judge_policy') or {}).get('judge', '?')} · "
            f"steps waiting on people: {waiting}")
    renders = [("first_preview", "First render"), ("preview", "Latest render"), ("turntable", "Turntable")]
    if metrics.get("first_preview") == metrics.get("preview"):
        renders = renders[1:]
    shown = [(title, images.get_image(engine, metrics[key])) for key, title in renders if metrics.get(key)]
    shown = [(title, png) for title, png in shown if png is not None]
    if shown:
        for col, (title, png) in zip(st.columns(3), shown):
            col.image(png, caption=title, width="stretch", output_format="PNG")
    else:
        st.caption("No render yet: the first one is logged after the run's first steps.")
    frame = curves(history)
    shares = source_shares(history)
    panels = [(title, frame[[key]].dropna()) for key, title in CHARTS if key in frame and frame[key].notna().any()]
    if not shares.empty:
        panels.append(("Share of steps decided by each source", shares))
    if panels:
        for col, (title, data) in zip(st.columns(len(panels)), panels):
            col.caption(title)
            if title.startswith("Share"):
                col.bar_chart(data, stack=True, height=220)
            else:
                col.line_chart(data, height=220)
    else:
        st.caption("No curves yet: the run has not logged a step.")
    if metrics.get("outputs"):
        st.json(metrics["outputs"], expanded=False)
    if admin:
        with st.expander("Instructions for annotators"):
            text = st.text_area("What people see for this run (empty = the default)",
                                instructions.for_run(engine, run["id"]), key=f"instructions-{run['id']}", height=200)
            if st.button("Save instructions", key=f"save-instructions-{run['id']}"):
                instructions.save(engine, run["id"], None if text.strip() == instructions.DEFAULT else text)
                st.success("Saved: annotators see them with this run's next pair.")
        if asks_an_lmm(run):
            judge_questions_editor(engine, run)
        controls(engine, run)
    st.divider()


def render(engine, user: dict) -> None:
    st.header("Runs")
    all_runs = runs.list_runs(engine)
    if not all_runs:
        st.info("No runs in the log yet. Start one with `dreamdpo run` or `dreamdpo demo`.")
        return
    live = [r for r in all_runs if r["status"] in LIVE]
    show_all = st.toggle("Show finished and cancelled runs too", value=not live,
                         help="finished runs keep their renders, turntable and curves")
    waiting = feedback.waiting_pairs_by_run(engine)
    shown = [r for r in reversed(all_runs) if show_all or r["status"] in LIVE]
    if not shown:
        st.info("No live runs right now; switch on 'Show finished and cancelled runs too' to see the others.")
    for run in shown:
        show_run(engine, run, waiting.get(run["id"], 0), user["role"] == "admin")
