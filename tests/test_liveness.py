"""A run that died is read as 'stalled', not 'running' forever (db/liveness.py), on SQLite and PostgreSQL.

Times are explicit (rows moved into the past, `now` passed to the reads): no test sleeps."""
from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from PIL import Image

from db import accounts, liveness, pairs, queue, runs, votes
from db.errors import LogError
from db.models import Run, utcnow
from dreamdpo.recording import DbRecorder

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 2), (seed % 256, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def stored(engine, run_id: int) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(Run.__table__).where(Run.id == run_id)).mappings().one())


def set_times(engine, run_id: int, **values) -> None:
    with engine.begin() as conn:
        assert conn.execute(sa.update(Run).where(Run.id == run_id).values(**values)).rowcount == 1


def running(engine, prompt="a red cube") -> int:
    rid = runs.create_run(engine, prompt)
    runs.set_run_status(engine, rid, "running")
    return rid


def started(engine) -> DbRecorder:
    rec = DbRecorder(engine)
    rec.start({"steps": 3}, "a red cube", "Which is redder?", "toy", "toy-reward", fingerprint="f" * 64)
    return rec


# ----------------------------------------------------------------------------- the pure predicate
def test_the_predicate_on_plain_rows():
    old, fresh = T0 - timedelta(seconds=121), T0 - timedelta(seconds=119)
    assert liveness.stalled({"status": "running", "heartbeat_at": old, "updated_at": T0}, T0, 120)
    assert not liveness.stalled({"status": "running", "heartbeat_at": fresh, "updated_at": old}, T0, 120)
    # a row that predates the heartbeat: its last update counts
    assert liveness.stalled({"status": "running", "heartbeat_at": None, "updated_at": old}, T0, 120)
    assert not liveness.stalled({"status": "running", "heartbeat_at": None, "updated_at": fresh}, T0, 120)
    for status in ("pending", "paused", "finished", "failed", "cancelled"):
        assert not liveness.stalled({"status": status, "heartbeat_at": old, "updated_at": old}, T0, 120)
    # what a read returned: judged on the stored status, and reading it twice changes nothing
    shown = liveness.shown({"status": "running", "heartbeat_at": old, "updated_at": old}, T0, 120)
    assert (shown["status"], shown["stored_status"], shown["last_seen"]) == ("stalled", "running", old)
    assert liveness.stalled(shown, T0, 120) and liveness.shown(shown, T0, 120)["status"] == "stalled"
    assert liveness.silent_for(shown, T0) == 121


def test_one_threshold_argument_then_environment_then_default(monkeypatch):
    monkeypatch.delenv(liveness.STALLED_AFTER_ENV, raising=False)
    assert liveness.stalled_after_s() == liveness.DEFAULT_STALLED_AFTER_S == 120
    monkeypatch.setenv(liveness.STALLED_AFTER_ENV, "30")
    assert liveness.stalled_after_s() == 30 and liveness.stalled_after_s(5) == 5
    row = {"status": "running", "heartbeat_at": T0 - timedelta(seconds=60)}
    assert liveness.stalled(row, T0) and not liveness.stalled(row, T0, after_s=90)
    for bad in ("soon", "0", "-5", "nan", "inf"):
        monkeypatch.setenv(liveness.STALLED_AFTER_ENV, bad)
        with pytest.raises(LogError, match="seconds"):
            liveness.stalled_after_s()


# ----------------------------------------------------------------------------- writing it
def test_start_and_every_progress_write_the_heartbeat_in_the_steps_update(engine):
    before = utcnow()
    rec = started(engine)
    row = stored(engine, rec.run_id)
    assert row["status"] == "running" and before <= row["heartbeat_at"] <= utcnow()
    set_times(engine, rec.run_id, heartbeat_at=T0, updated_at=T0)

    updates = []

    def count(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("UPDATE"):
            updates.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        rec.progress(0, {"loss": 1.0})
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    row = stored(engine, rec.run_id)
    assert row["step"] == 0 and before <= row["heartbeat_at"] <= utcnow()
    assert row["heartbeat_at"] == row["updated_at"]
    assert len(updates) == 1 and "heartbeat_at" in updates[0]  # the step's own UPDATE, no extra round trip


def test_the_apps_status_buttons_are_no_sign_of_life(engine):
    rid = running(engine)
    set_times(engine, rid, heartbeat_at=T0)
    runs.set_run_status(engine, rid, "paused")
    runs.set_run_status(engine, rid, "running")  # an admin's Resume on a run whose process is gone
    assert stored(engine, rid)["heartbeat_at"] == T0
    assert runs.get_run(engine, rid)["status"] == "stalled"


def test_a_paused_run_beats_while_it_waits_and_a_wait_for_people_beats(engine):
    rec = started(engine)
    runs.set_run_status(engine, rec.run_id, "paused")
    set_times(engine, rec.run_id, heartbeat_at=T0)
    assert rec.control() == "paused" and stored(engine, rec.run_id)["heartbeat_at"] == T0  # beat at start, moments ago
    rec._last_beat -= liveness.BEAT_EVERY_S
    assert rec.control() == "paused" and stored(engine, rec.run_id)["heartbeat_at"] > T0
    runs.set_run_status(engine, rec.run_id, "running")
    assert runs.get_run(engine, rec.run_id)["status"] == "running"  # resumed by the admin: alive at once

    pair = pairs.post_pair(engine, rec.run_id, 0, png(1), png(2))
    set_times(engine, rec.run_id, heartbeat_at=T0)
    assert votes.wait_for_decision(engine, pair, timeout=0.3, poll=0.02, beat_every=None) is None
    assert stored(engine, rec.run_id)["heartbeat_at"] == T0
    pair = pairs.post_pair(engine, rec.run_id, 1, png(3), png(4))
    assert votes.wait_for_decision(engine, pair, timeout=0.3, poll=0.02, beat_every=0.05) is None
    assert stored(engine, rec.run_id)["heartbeat_at"] > T0


# ----------------------------------------------------------------------------- reading it
def test_an_old_heartbeat_reads_stalled_a_fresh_one_running_and_the_stored_status_is_kept(engine):
    rid = running(engine)
    set_times(engine, rid, heartbeat_at=T0, updated_at=T0 + timedelta(seconds=100))  # the heartbeat wins
    fresh, old = T0 + timedelta(seconds=119), T0 + timedelta(seconds=121)
    assert runs.get_run(engine, rid, now=fresh)["status"] == "running"
    run = runs.get_run(engine, rid, now=old)
    assert (run["status"], run["stored_status"], run["last_seen"]) == ("stalled", "running", T0)
    assert runs.get_run(engine, rid, now=old, stalled_after_s=600)["status"] == "running"
    assert stored(engine, rid)["status"] == "running"  # a read never rewrites it

    other = running(engine, "a blue ball")
    set_times(engine, other, heartbeat_at=old)
    assert [(r["id"], r["status"]) for r in runs.list_runs(engine, now=old)] == [(rid, "stalled"), (other, "running")]
    assert [r["id"] for r in runs.list_runs(engine, status="stalled", now=old)] == [rid]
    assert [r["id"] for r in runs.list_runs(engine, status="running", now=old)] == [other]


def test_a_row_without_heartbeat_falls_back_to_its_last_update(engine):
    rid = running(engine)
    set_times(engine, rid, heartbeat_at=None, updated_at=T0)
    assert runs.get_run(engine, rid, now=T0 + timedelta(seconds=60))["status"] == "running"
    run = runs.get_run(engine, rid, now=T0 + timedelta(seconds=600))
    assert (run["status"], run["last_seen"]) == ("stalled", T0)
    assert [r["id"] for r in runs.list_runs(engine, status="stalled", now=T0 + timedelta(seconds=600))] == [rid]


@pytest.mark.parametrize("status", ["finished", "failed", "cancelled", "paused", "pending"])
def test_a_run_that_is_not_running_is_never_stalled(engine, status):
    rid = running(engine)
    runs.set_run_status(engine, rid, status)
    set_times(engine, rid, heartbeat_at=T0, updated_at=T0)
    later = T0 + timedelta(days=30)
    assert runs.get_run(engine, rid, now=later)["status"] == status
    assert [r["status"] for r in runs.list_runs(engine, now=later)] == [status]
    assert runs.list_runs(engine, status="stalled", now=later) == []


def test_sql_and_predicate_agree(engine):
    """list_runs(status='stalled') (the SQL) and get_run (the predicate) give the same runs."""
    now = T0 + timedelta(seconds=200)
    cases = [("running", T0, T0), ("running", None, T0), ("running", now, T0), ("running", None, now),
             ("finished", T0, T0), ("paused", None, T0)]
    ids = []
    for status, beat, updated in cases:
        rid = running(engine)
        runs.set_run_status(engine, rid, status)
        set_times(engine, rid, heartbeat_at=beat, updated_at=updated)
        ids.append(rid)
    by_predicate = [rid for rid in ids if runs.get_run(engine, rid, now=now)["status"] == "stalled"]
    assert by_predicate == ids[:2]
    assert [r["id"] for r in runs.list_runs(engine, status="stalled", now=now)] == by_predicate


def test_a_stalled_runs_live_pairs_are_still_offered_and_resuming_makes_it_running(engine):
    """By design: votes cast while the run is down are used after --resume (tests/test_async_human.py)."""
    rec = started(engine)
    pair = pairs.post_pair(engine, rec.run_id, 0, png(5), png(6))
    set_times(engine, rec.run_id, heartbeat_at=utcnow() - timedelta(hours=1))  # the process died an hour ago
    assert runs.get_run(engine, rec.run_id)["status"] == "stalled"
    ann = accounts.authenticate(engine, accounts.add_annotator(engine, "ann"))["id"]
    claim = queue.claim_next(engine, ann)
    assert claim is not None and claim["pair_id"] == pair
    votes.vote(engine, pair, ann, "a")
    assert votes.get_decision(engine, pair)["winner"] == "a"

    resumed = DbRecorder(engine, run_id=rec.run_id)
    resumed.start({"steps": 3}, "a red cube", "Which is redder?", "toy", "toy-reward", fingerprint="f" * 64)
    assert runs.get_run(engine, rec.run_id)["status"] == "running"
