"""Runs of the log: create one, read it (with its liveness, db/liveness.py), change its status, step,
metrics and config, its heartbeat, cancel it. Every write is one short transaction
(`with Session(engine) as s, s.begin():`) that locks the run's row first.
"""
from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from db import liveness
from db.engine import read_only
from db.errors import LogError
from db.models import RUN_STATUSES, Pair, Run, utcnow


def create_run(engine: sa.Engine, prompt: str, question: str | None = None, config: dict | None = None,
               backbone: str = "", judge_policy: dict | None = None, name: str | None = None,
               status: str = "pending", fingerprint: str | None = None) -> int:
    if not isinstance(prompt, str) or not prompt.strip():
        raise LogError("a run needs a non-empty prompt")
    _check_status(status)
    with Session(engine) as s, s.begin():
        run = Run(prompt=prompt, question=question, config=config, backbone=backbone or "",
                  judge_policy=judge_policy, name=name, status=status, step=0, fingerprint=fingerprint)
        s.add(run)
        s.flush()
        return run.id


def get_run(engine: sa.Engine, run_id: int, now: datetime | None = None,
            stalled_after_s: float | None = None) -> dict | None:
    """The run's row (a read: never waits for the write lock). A 'running' run that has shown no
    sign of life for stalled_after_s reads as status 'stalled' (db/liveness.py; stored status in
    'stored_status', which is never rewritten)."""
    with read_only(engine) as conn:
        row = conn.execute(sa.select(Run.__table__).where(Run.id == run_id)).mappings().first()
    return None if row is None else liveness.shown(dict(row), now or utcnow(), stalled_after_s)


def list_runs(engine: sa.Engine, status: str | None = None, now: datetime | None = None,
              stalled_after_s: float | None = None) -> list[dict]:
    """Every run, oldest first, read as get_run reads one. `status` filters on the status as read:
    'stalled' gives the stalled runs, 'running' the running ones that are not stalled."""
    now = now or utcnow()
    stmt = sa.select(Run.__table__).order_by(Run.id)
    if status == liveness.STALLED:
        stmt = stmt.where(liveness.stalled_clause(now, stalled_after_s))
    elif status is not None:
        stmt = stmt.where(Run.status == status)
        if status == "running":
            stmt = stmt.where(~liveness.stalled_clause(now, stalled_after_s))
    with read_only(engine) as conn:
        return [liveness.shown(dict(r), now, stalled_after_s) for r in conn.execute(stmt).mappings()]


def set_run_config(engine: sa.Engine, run_id: int, key: str, value: object) -> None:
    """Set one key of the run's config (None removes it), in one transaction."""
    with Session(engine) as s, s.begin():
        run = s.get(Run, run_id, with_for_update=True)
        if run is None:
            raise LogError(f"run {run_id} does not exist; list runs with `dreamdpo stats`")
        config = dict(run.config or {})
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
        run.config = config


# An admin's extra questions for a run's multimodal-LLM judge, kept like the annotators'
# instructions: one key of the run's config (set_run_config). Plain text, one question a line.
JUDGE_QUESTIONS_KEY = "judge_questions"
MAX_JUDGE_QUESTIONS = 10  # each one costs 2 model calls per comparison (both orders) and judged view
MAX_JUDGE_QUESTION_CHARS = 300


def parse_judge_questions(text: str | list[str] | None) -> list[str]:
    """Text (one question a line; blank lines dropped; spaces and control characters squeezed) or a
    list → the questions; LogError (one line) for more than MAX_JUDGE_QUESTIONS or a question longer
    than MAX_JUDGE_QUESTION_CHARS."""
    questions = _clean_questions(text.splitlines() if isinstance(text, str) else list(text or []))
    if len(questions) > MAX_JUDGE_QUESTIONS:
        raise LogError(f"{len(questions)} questions: at most {MAX_JUDGE_QUESTIONS} per run "
                       "(each one is asked in both orders at every judged step)")
    long = [i for i, q in enumerate(questions, 1) if len(q) > MAX_JUDGE_QUESTION_CHARS]
    if long:
        raise LogError(f"question {long[0]} is {len(questions[long[0] - 1])} characters long; "
                       f"at most {MAX_JUDGE_QUESTION_CHARS}")
    return questions


def set_judge_questions(engine: sa.Engine, run_id: int, text: str | list[str] | None) -> list[str]:
    """An admin sets (or, with nothing, clears) the run's extra questions for its multimodal-LLM
    judge; returns them as stored. LogError for too many or too long ones (nothing is written)."""
    questions = parse_judge_questions(text)
    set_run_config(engine, run_id, JUDGE_QUESTIONS_KEY, questions or None)
    return questions


def judge_questions(engine: sa.Engine, run_id: int) -> list[str]:
    """The run's extra questions for its multimodal-LLM judge ([] when none, or the run is unknown)."""
    config = (get_run(engine, run_id) or {}).get("config")
    stored = config.get(JUDGE_QUESTIONS_KEY) if isinstance(config, dict) else None
    if not isinstance(stored, list):
        return []
    # written past set_judge_questions (by hand): the first ones, cut to size
    return [q[:MAX_JUDGE_QUESTION_CHARS] for q in _clean_questions(stored)][:MAX_JUDGE_QUESTIONS]


def _clean_questions(lines: list) -> list[str]:
    """Strings only; control characters and runs of spaces become one space; empty ones dropped."""
    cleaned = (" ".join("".join(c if c.isprintable() else " " for c in q).split()) for q in lines
               if isinstance(q, str))
    return [q for q in cleaned if q]


def _check_status(status: str) -> None:
    if status not in RUN_STATUSES:
        raise LogError(f"run status {status!r} is not one of {', '.join(RUN_STATUSES)}")


def set_run_status(engine: sa.Engine, run_id: int, status: str | None, step: int | None = None,
                   metrics: dict | None = None, heartbeat: bool = False) -> None:
    """Change status (None keeps it), step and metrics of a run. A cancelled run stays cancelled.
    heartbeat=True (the optimizer itself, never the app) also records a sign of life in the same
    UPDATE (runs.heartbeat_at; db/liveness.py)."""
    if status is not None:
        _check_status(status)
    with Session(engine) as s, s.begin():
        run = s.get(Run, run_id, with_for_update=True)
        if run is None:
            raise LogError(f"run {run_id} does not exist; list runs with `dreamdpo stats`")
        if status is not None and not (run.status == "cancelled" and status in ("running", "paused", "pending")):
            run.status = status
        if step is not None:
            run.step = int(step)
        if metrics is not None:
            run.metrics = metrics
        run.updated_at = utcnow()
        if heartbeat:
            run.heartbeat_at = run.updated_at
        if status == "cancelled":
            _cancel_pending(s, run_id)


def beat(engine: sa.Engine, run_id: int | None = None, pair_id: int | None = None) -> None:
    """A sign of life of the run (or of the run a pair belongs to) without a step: one UPDATE of
    runs.heartbeat_at (db/liveness.py). Only the optimizer's process calls it."""
    target = Run.id == run_id if pair_id is None else Run.id == sa.select(Pair.run_id).where(
        Pair.id == pair_id).scalar_subquery()
    with Session(engine) as s, s.begin():
        s.execute(sa.update(Run).where(target).values(heartbeat_at=utcnow()))


def _cancel_pending(s: Session, run_id: int) -> None:
    s.execute(sa.update(Pair).where(Pair.run_id == run_id, Pair.status == "pending").values(status="cancelled"))


def cancel_run(engine: sa.Engine, run_id: int) -> None:
    """Status cancelled; its pending pairs are cancelled and votes on them refused from now on."""
    set_run_status(engine, run_id, "cancelled")
