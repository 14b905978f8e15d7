"""Queued runs and the workers that claim them (issue "Beyond one machine", item 1).

`dreamdpo submit` writes runs with status 'queued' (submit_runs: all of them or none). `dreamdpo worker`
processes, one per GPU on any number of hosts, register (table `workers`), beat, and claim the next
queued run: the highest priority first, then the oldest.

Why `SELECT ... FOR UPDATE SKIP LOCKED` and not a queue library (procrastinate, pgqueuer, pq): the log
already is the source of truth for runs (the Runs page, the annotation queue and the audit read the same
row), a run is one row of one table, and the claim is one UPDATE of that row. A library would keep its
own jobs table and its own worker process model beside `runs`, and the two would have to be kept in
step; it would also need PostgreSQL, while SQLite must still work. SKIP LOCKED (PostgreSQL ≥ 9.5) lets
any number of claimers take distinct rows without waiting on each other. On SQLite the claim is one
short write transaction (BEGIN IMMEDIATE, db/engine.py): correct for the workers of one host (SQLite
over a network file system is not safe; use PostgreSQL for many hosts).

Liveness and fencing. A worker beats every few seconds (worker_beat: workers.heartbeat_at, and the
heartbeat of the run it holds). Any live worker re-queues the runs of workers that have not beaten for
`dead_after_s` (requeue_dead: status back to 'queued', worker NULL, attempts kept; a run that has used
up max_attempts fails instead). A worker keeps a run only while its own writes to it match
(`UPDATE runs ... WHERE id = :run AND worker = :me`): once its run went back to the queue, its next
beat or step write matches no row, and it stops that run at once (update_held returns False). So no
run is ever held by two workers; a lost worker may at most have logged the pair of the step it was
doing, which the next holder finds again by (run, step, seeds) and does not log twice.

Times are the clients' clocks (as db/liveness.py): hosts need synchronised clocks (NTP), to well
within dead_after_s.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from db.engine import read_only
from db.errors import LogError
from db.models import Pair, Run, UTCDateTime, Worker, utcnow

DEFAULT_BEAT_S = 10.0
DEFAULT_DEAD_AFTER_S = 60.0
MAX_ATTEMPTS = 3  # claims of one run before a run that keeps losing its worker is marked failed
HELD = ("running", "paused")  # the statuses of a run a worker holds


@dataclass(frozen=True)
class QueuedRun:
    """One run to queue: what `dreamdpo run` would be given, resolved to a full config."""

    prompt: str
    config: dict
    backbone: str = ""
    judge_policy: dict | None = None
    name: str | None = None
    question: str | None = None


def _positive(value: float, what: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise LogError(f"{what} must be a positive number of seconds, got {value}")
    return value


def run_storage(base: str, run_id: int) -> str:
    """The storage URL of one run: its own folder under the submitted storage URL."""
    return f"{base.rstrip('/')}/run-{int(run_id)}"


def submit_runs(engine: sa.Engine, queued: list[QueuedRun], storage: str, priority: int = 0) -> list[int]:
    """Queue the runs in one transaction (all or none); each gets its own folder under `storage`
    (run_storage). Returns their ids, in order."""
    if not queued:
        raise LogError("nothing to queue: give at least one prompt")
    if not storage or "://" not in storage:
        raise LogError(f"storage {storage!r} is not a URL; give e.g. file:///shared/dreamdpo-runs")
    for q in queued:
        if not isinstance(q.prompt, str) or not q.prompt.strip():
            raise LogError("a queued run needs a non-empty prompt")
    now = utcnow()
    ids: list[int] = []
    with engine.begin() as conn:
        for q in queued:
            run_id = conn.execute(sa.insert(Run).values(
                prompt=q.prompt, question=q.question, config=q.config, backbone=q.backbone or "",
                judge_policy=q.judge_policy, name=q.name, status="queued", step=0, priority=int(priority),
                attempts=0, created_at=now, updated_at=now).returning(Run.id)).scalar_one()
            conn.execute(sa.update(Run).where(Run.id == run_id).values(storage=run_storage(storage, run_id)))
            ids.append(int(run_id))
    return ids


# ----------------------------------------------------------------------------- workers


def register_worker(engine: sa.Engine, name: str, host: str = "", device: str = "cpu") -> None:
    """A worker starts (or starts again under the same name): alive now, holding nothing."""
    now = utcnow()
    with engine.begin() as conn:
        done = conn.execute(sa.update(Worker).where(Worker.name == name).values(
            host=host, device=device, started_at=now, heartbeat_at=now, stopped_at=None, run_id=None)).rowcount
        if not done:
            conn.execute(sa.insert(Worker).values(name=name, host=host, device=device, started_at=now,
                                                  heartbeat_at=now, stopped_at=None, run_id=None))


def worker_beat(engine: sa.Engine, name: str, run_id: int | None = None) -> bool:
    """The worker's heartbeat, and its held run's (the fence: runs.heartbeat_at only WHERE worker = name).
    False when the worker was given a run_id it no longer holds (re-queued, or another worker's now):
    it must stop that run at once."""
    now = utcnow()
    with engine.begin() as conn:
        held = True
        if run_id is not None:  # runs before workers, as claim_run: one lock order, no deadlock
            held = conn.execute(sa.update(Run).where(Run.id == run_id, Run.worker == name)
                                .values(heartbeat_at=now)).rowcount == 1
        conn.execute(sa.update(Worker).where(Worker.name == name).values(
            heartbeat_at=now, run_id=run_id if held else None))
    return held


def stop_worker(engine: sa.Engine, name: str) -> None:
    """A worker ends cleanly: stopped, holding nothing (its run, if any, was released first)."""
    with engine.begin() as conn:
        conn.execute(sa.update(Worker).where(Worker.name == name).values(stopped_at=utcnow(), run_id=None))


def list_workers(engine: sa.Engine, now: datetime | None = None,
                 dead_after_s: float = DEFAULT_DEAD_AFTER_S) -> list[dict]:
    """Every worker, newest first, with 'alive' (beat within dead_after_s and not stopped)."""
    now = now or utcnow()
    with read_only(engine) as conn:
        rows = [dict(r) for r in conn.execute(sa.select(Worker.__table__).order_by(
            Worker.started_at.desc())).mappings()]
    for r in rows:
        r["alive"] = r["stopped_at"] is None and (now - r["heartbeat_at"]).total_seconds() <= dead_after_s
    return rows


# ----------------------------------------------------------------------------- claims


def claim_run(engine: sa.Engine, worker: str) -> dict | None:
    """The next queued run (highest priority, then oldest), now held by `worker` (status 'running',
    attempts + 1), or None when nothing is queued. One UPDATE: on PostgreSQL its row is picked with
    FOR UPDATE SKIP LOCKED, so concurrent claimers never wait for each other nor get the same run."""
    queued = Run.__table__.alias("queued")  # an alias: never correlated to the UPDATE's own table
    pick = (sa.select(queued.c.id).where(queued.c.status == "queued")
            .order_by(queued.c.priority.desc(), queued.c.id).limit(1))
    if engine.dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    now = utcnow()
    with engine.begin() as conn:
        row = conn.execute(
            sa.update(Run).where(Run.id == pick.scalar_subquery(), Run.status == "queued")
            .values(status="running", worker=worker, claimed_at=now, attempts=Run.attempts + 1,
                    heartbeat_at=now, updated_at=now)
            .returning(*Run.__table__.c)).mappings().first()
        if row is None:
            return None
        conn.execute(sa.update(Worker).where(Worker.name == worker).values(run_id=row["id"], heartbeat_at=now))
        return dict(row)


def update_held(engine: sa.Engine, run_id: int, worker: str, status: str | None = None, step: int | None = None,
                metrics: dict | None = None) -> bool:
    """A held run's write (step, metrics, status; and its heartbeat), fenced: it happens only while
    `worker` holds the run. False when it does not any more (nothing written). As
    db.runs.set_run_status, a cancelled run stays cancelled (its pending pairs are cancelled too)."""
    now = utcnow()
    values: dict = {"updated_at": now, "heartbeat_at": now}
    if step is not None:
        values["step"] = int(step)
    if metrics is not None:
        values["metrics"] = metrics
    if status is not None:
        values["status"] = (status if status not in ("running", "paused", "pending", "queued")
                            else sa.case((Run.status == "cancelled", "cancelled"), else_=status))
    with engine.begin() as conn:
        held = conn.execute(sa.update(Run).where(Run.id == run_id, Run.worker == worker)
                            .values(**values)).rowcount == 1
        if held and status == "cancelled":
            conn.execute(sa.update(Pair).where(Pair.run_id == run_id, Pair.status == "pending")
                         .values(status="cancelled"))
    return held


def holds(engine: sa.Engine, run_id: int, worker: str) -> bool:
    """True while `worker` holds the run (a read; the writes are fenced by update_held)."""
    with read_only(engine) as conn:
        return conn.execute(sa.select(Run.id).where(Run.id == run_id, Run.worker == worker,
                                                    Run.status.in_(HELD))).first() is not None


def release_run(engine: sa.Engine, run_id: int, worker: str) -> bool:
    """A worker stopping cleanly (SIGINT/SIGTERM) gives its run back: 'queued' for the next worker,
    which resumes it from its last checkpoint. A paused run stays paused (and unheld), a cancelled one
    cancelled. False when the worker did not hold it."""
    with engine.begin() as conn:
        done = conn.execute(sa.update(Run).where(Run.id == run_id, Run.worker == worker).values(
            status=sa.case((Run.status == "running", "queued"), else_=Run.status),
            worker=None, claimed_at=None, updated_at=utcnow())).rowcount == 1
        conn.execute(sa.update(Worker).where(Worker.name == worker).values(run_id=None))
    return done


def requeue_dead(engine: sa.Engine, dead_after_s: float = DEFAULT_DEAD_AFTER_S, now: datetime | None = None,
                 max_attempts: int = MAX_ATTEMPTS) -> list[int]:
    """Runs held by a worker that has not beaten for dead_after_s (or stopped, or never registered) go
    back to the queue: status 'queued' (a paused one stays paused), worker NULL, attempts kept. A run
    already claimed max_attempts times fails instead (it keeps killing its workers). Any worker may
    call it; concurrent calls re-queue each run once. Returns the ids."""
    cutoff = (now or utcnow()) - timedelta(seconds=_positive(dead_after_s, "dead_after_s"))
    alive = sa.select(Worker.name).where(Worker.heartbeat_at >= sa.literal(cutoff, UTCDateTime()),
                                         Worker.stopped_at.is_(None))
    with engine.begin() as conn:
        ids = conn.execute(sa.update(Run).where(
            Run.worker.is_not(None), Run.status.in_(HELD), Run.worker.not_in(alive.scalar_subquery())
        ).values(
            status=sa.case((sa.and_(Run.status == "running", Run.attempts >= max_attempts), "failed"),
                           (Run.status == "running", "queued"), else_=Run.status),
            worker=None, claimed_at=None, updated_at=utcnow()).returning(Run.id)).scalars().all()
        if ids:
            conn.execute(sa.update(Worker).where(Worker.run_id.in_(ids)).values(run_id=None))
    return sorted(int(i) for i in ids)


# ----------------------------------------------------------------------------- the Runs page


def set_priority(engine: sa.Engine, run_id: int, priority: int) -> None:
    """An admin reorders the queue: higher priority is claimed first (only a run not yet done)."""
    with engine.begin() as conn:
        done = conn.execute(sa.update(Run).where(Run.id == run_id, Run.status.in_(("queued", "paused")))
                            .values(priority=int(priority), updated_at=utcnow())).rowcount
    if not done:
        raise LogError(f"run {run_id} is not waiting in the queue; only a queued or paused run's priority "
                       "can be changed")


def resume_run(engine: sa.Engine, run_id: int) -> str:
    """Resume a paused run: a queued run no worker holds goes back to the queue ('queued'); any other
    goes on 'running' (its worker or `dreamdpo run` process polls its status). Returns the new status."""
    with engine.begin() as conn:
        status = conn.execute(sa.update(Run).where(Run.id == run_id, Run.status == "paused").values(
            status=sa.case((sa.and_(Run.worker.is_(None), Run.storage.is_not(None)), "queued"),
                           else_="running"),
            updated_at=utcnow()).returning(Run.status)).scalar()
    if status is None:
        raise LogError(f"run {run_id} is not paused; nothing to resume")
    return str(status)


def queue_counts(engine: sa.Engine) -> dict[str, int]:
    """How many submitted runs (those with a storage URL) are in each status."""
    with read_only(engine) as conn:
        rows = conn.execute(sa.select(Run.status, sa.func.count()).where(Run.storage.is_not(None))
                            .group_by(Run.status)).all()
    return {str(s): int(n) for s, n in rows}
