"""Is a 'running' run still alive? The one definition of a stalled run.

Writing (the optimizer's heartbeat, runs.heartbeat_at):
- DbRecorder.start sets it when the run starts or resumes, and every DbRecorder.progress sets it in
  the same UPDATE as the step and the metrics (db.runs.set_run_status(..., heartbeat=True)): no extra
  round trip per step.
- Where a run can be alive for long without a step, it beats at most every BEAT_EVERY_S: a blocking
  wait for people (db.votes.wait_for_decision) and a run an admin paused (DbRecorder.control).
- Nothing else beats: the app's Pause/Resume buttons change the status, never the heartbeat.

Reading: a run whose stored status is 'running' and whose last sign of life (heartbeat_at, or
updated_at for rows that predate the heartbeat) is more than `after_s` seconds old is *stalled*:
its process died (kill -9, a lost machine, a server restart) without writing 'failed' or
'paused'. db.runs.get_run and db.runs.list_runs report it with status 'stalled' (the stored status is
kept in 'stored_status', the time of the last sign of life in 'last_seen'). The stored status is
never rewritten: a resumed run (`dreamdpo run ... --resume`) simply beats again and reads
'running' at once. Only 'running' can be stalled; a finished, failed, cancelled, paused or pending
run never is.

The threshold: `after_s` where given, else the environment variable DREAMDPO_STALLED_AFTER_S, else
120 s. It has to be longer than the slowest step (BEAT_EVERY_S covers waits for people).

The queue is not changed by this: live pairs of a stalled run are still offered to people (the claim
tiers of db/queue.py read the stored status). That is by design: a vote cast while the run is down
is used when it is resumed (tests/test_async_human.py votes while the run is down). Only what the
app shows changes.
"""
from __future__ import annotations

import math
import os
from datetime import datetime, timedelta

import sqlalchemy as sa

from db.errors import LogError
from db.models import Run, UTCDateTime, utcnow

STALLED_AFTER_ENV = "DREAMDPO_STALLED_AFTER_S"
DEFAULT_STALLED_AFTER_S = 120.0
BEAT_EVERY_S = 30.0  # how often a run alive without steps (waiting for people, paused) beats
STALLED = "stalled"  # a status that is only ever read, never stored


def stalled_after_s(after_s: float | None = None) -> float:
    """The threshold in seconds: the argument, else $DREAMDPO_STALLED_AFTER_S, else 120."""
    if after_s is None:
        raw = os.environ.get(STALLED_AFTER_ENV, "").strip()
        if not raw:
            return DEFAULT_STALLED_AFTER_S
        try:
            after_s = float(raw)
        except ValueError:
            raise LogError(f"{STALLED_AFTER_ENV} must be a number of seconds, got {raw[:40]!r}") from None
    after_s = float(after_s)
    if not math.isfinite(after_s) or after_s <= 0:
        raise LogError(f"the stalled-run threshold must be a positive number of seconds, got {after_s}")
    return after_s


def last_sign_of_life(run: dict) -> datetime | None:
    """The run's heartbeat, or its last update for rows written before the heartbeat existed."""
    return run.get("heartbeat_at") or run.get("updated_at")


def stalled(run: dict, now: datetime | None = None, after_s: float | None = None) -> bool:
    """True when the run is stored as 'running' but has shown no sign of life for more than after_s."""
    if run.get("stored_status", run.get("status")) != "running":
        return False
    seen = last_sign_of_life(run)
    if seen is None:
        return False
    return ((now or utcnow()) - seen).total_seconds() > stalled_after_s(after_s)


def stalled_clause(now: datetime | None = None, after_s: float | None = None):
    """The same rule as `stalled`, as a SQL condition on runs (for queries that filter on it)."""
    cutoff = (now or utcnow()) - timedelta(seconds=stalled_after_s(after_s))
    seen = sa.func.coalesce(Run.heartbeat_at, Run.updated_at)
    return sa.and_(Run.status == "running", seen < sa.literal(cutoff, UTCDateTime()))


def shown(run: dict, now: datetime | None = None, after_s: float | None = None) -> dict:
    """The run's row as the app reads it: 'status' is 'stalled' for a stalled run; 'stored_status'
    is what the log holds and 'last_seen' the last sign of life (no time-dependent values other
    than 'status', so two reads of an unchanged live run compare equal)."""
    out = dict(run)
    out["stored_status"] = run["status"]
    out["last_seen"] = last_sign_of_life(run)
    if stalled(out, now, after_s):
        out["status"] = STALLED
    return out


def silent_for(run: dict, now: datetime | None = None) -> float | None:
    """Seconds since the run's last sign of life (None when the row has no time at all)."""
    seen = last_sign_of_life(run)
    return None if seen is None else max(0.0, ((now or utcnow()) - seen).total_seconds())
