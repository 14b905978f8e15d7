"""The run queue's db API (db/run_queue.py) on SQLite and PostgreSQL: all-or-none submits, priority
order, concurrent claimers, dead workers' runs re-queued, the fence; and the fsspec run folder
(dreamdpo/storage.py)."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from db import run_queue, runs
from db.errors import LogError
from db.models import Run, utcnow
from db.run_queue import QueuedRun
from dreamdpo.errors import UserError
from dreamdpo.storage import CHECKPOINT, RunStorage, check_reachable

STORE = "file:///shared/dreamdpo-runs"


def queue(engine, n: int, priority: int = 0, prompt: str = "a red cube") -> list[int]:
    return run_queue.submit_runs(engine, [QueuedRun(prompt=f"{prompt} {i}", config={"seed": i}, backbone="toy")
                                          for i in range(n)], STORE, priority=priority)


def row(engine, run_id: int) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(Run.__table__).where(Run.id == run_id)).mappings().one())


def count(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(Run)).scalar_one()


def test_submit_queues_every_run_with_its_own_folder_or_none(engine):
    ids = queue(engine, 3, priority=2)
    assert len(set(ids)) == 3
    for run_id in ids:
        r = row(engine, run_id)
        assert (r["status"], r["priority"], r["attempts"], r["worker"]) == ("queued", 2, 0, None)
        assert r["storage"] == f"{STORE}/run-{run_id}"
    before = count(engine)
    with pytest.raises(LogError):  # the third is bad: the first two are not queued either
        run_queue.submit_runs(engine, [QueuedRun("a cube", {}), QueuedRun("a cone", {}), QueuedRun("  ", {})], STORE)
    with pytest.raises(LogError, match="not a URL"):
        run_queue.submit_runs(engine, [QueuedRun("a cube", {})], "/local/only")
    assert count(engine) == before


def test_claims_take_the_highest_priority_then_the_oldest(engine):
    low = queue(engine, 2, priority=0)
    high = queue(engine, 2, priority=5)
    mid = queue(engine, 1, priority=1)
    run_queue.register_worker(engine, "w1")
    claimed = [run_queue.claim_run(engine, "w1") for _ in range(5)]
    assert [c["id"] for c in claimed] == high + mid + low
    assert all(c["status"] == "running" and c["worker"] == "w1" and c["attempts"] == 1 for c in claimed)
    assert run_queue.claim_run(engine, "w1") is None
    cancelled = queue(engine, 2)
    runs.cancel_run(engine, cancelled[0])  # the Runs page's cancel: never claimed
    assert run_queue.claim_run(engine, "w1")["id"] == cancelled[1]
    assert run_queue.claim_run(engine, "w1") is None


def test_concurrent_claimers_never_get_the_same_run(engine):
    ids = queue(engine, 24)
    got: dict[str, list[int]] = {f"w{i}": [] for i in range(4)}
    start = threading.Barrier(len(got))
    errors: list[BaseException] = []

    def claimer(name):
        try:
            run_queue.register_worker(engine, name)
            start.wait()
            while (run := run_queue.claim_run(engine, name)) is not None:
                got[name].append(run["id"])
        except BaseException as e:  # noqa: B036 - reported below
            errors.append(e)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    every = [i for claims in got.values() for i in claims]
    assert sorted(every) == sorted(ids)  # each run claimed exactly once
    for name, claims in got.items():
        assert all(row(engine, i)["worker"] == name for i in claims)


def test_a_dead_workers_run_is_requeued_and_its_writes_are_fenced(engine):
    a, b = queue(engine, 2)
    run_queue.register_worker(engine, "dead")
    run_queue.register_worker(engine, "alive")
    assert run_queue.claim_run(engine, "dead")["id"] == a
    assert run_queue.claim_run(engine, "alive")["id"] == b
    assert run_queue.update_held(engine, a, "dead", step=3)
    later = utcnow() + timedelta(seconds=30)
    run_queue.worker_beat(engine, "alive", b)  # beats; "dead" does not
    assert run_queue.requeue_dead(engine, dead_after_s=60, now=later) == []  # not silent long enough yet
    with engine.begin() as conn:  # "alive" beat 30 s after "dead"'s last beat
        conn.execute(sa.text("UPDATE workers SET heartbeat_at = :t WHERE name = 'alive'"), {"t": later.replace(tzinfo=None)})
    assert run_queue.requeue_dead(engine, dead_after_s=20, now=later) == [a]
    r = row(engine, a)
    assert (r["status"], r["worker"], r["attempts"], r["step"]) == ("queued", None, 1, 3)
    assert row(engine, b)["worker"] == "alive"
    # the dead worker comes back: its run is not its own any more, and nothing it writes lands
    assert run_queue.worker_beat(engine, "dead", a) is False
    assert run_queue.update_held(engine, a, "dead", step=7, status="finished") is False
    assert not run_queue.holds(engine, a, "dead")
    assert (row(engine, a)["step"], row(engine, a)["status"]) == (3, "queued")
    again = run_queue.claim_run(engine, "alive")
    assert (again["id"], again["attempts"]) == (a, 2)
    assert run_queue.update_held(engine, a, "alive", step=4)
    assert run_queue.update_held(engine, a, "dead", step=9) is False
    assert row(engine, a)["step"] == 4
    assert run_queue.requeue_dead(engine, dead_after_s=20) == []  # "alive" beat at its claim: nothing to do


def test_a_run_that_keeps_killing_workers_fails_and_a_paused_one_stays_paused(engine):
    a, b = queue(engine, 2)
    later = utcnow() + timedelta(seconds=120)
    for attempt in range(1, run_queue.MAX_ATTEMPTS + 1):
        run_queue.register_worker(engine, f"w{attempt}")
        assert run_queue.claim_run(engine, f"w{attempt}")["id"] == a
        assert run_queue.requeue_dead(engine, dead_after_s=60, now=later) == [a]
    assert row(engine, a)["status"] == "failed"
    run_queue.register_worker(engine, "p")
    assert run_queue.claim_run(engine, "p")["id"] == b
    runs.set_run_status(engine, b, "paused")  # an admin pauses it; then its worker dies
    assert run_queue.requeue_dead(engine, dead_after_s=60, now=later) == [b]
    assert (row(engine, b)["status"], row(engine, b)["worker"]) == ("paused", None)
    assert run_queue.claim_run(engine, "p") is None  # paused: not claimable
    run_queue.set_priority(engine, b, 9)
    assert run_queue.resume_run(engine, b) == "queued"  # nobody holds it: back to the queue
    assert (row(engine, b)["priority"], run_queue.claim_run(engine, "p")["id"]) == (9, b)
    runs.set_run_status(engine, b, "paused")
    assert run_queue.resume_run(engine, b) == "running"  # its worker holds it and polls the status
    with pytest.raises(LogError, match="not paused"):
        run_queue.resume_run(engine, b)
    with pytest.raises(LogError, match="not waiting"):
        run_queue.set_priority(engine, a, 1)  # failed: not in the queue any more


def test_a_stopping_worker_releases_its_run_and_a_cancelled_run_stays_cancelled(engine):
    a, b = queue(engine, 2)
    run_queue.register_worker(engine, "w")
    assert run_queue.claim_run(engine, "w")["id"] == a
    assert run_queue.release_run(engine, a, "w")
    assert (row(engine, a)["status"], row(engine, a)["worker"], row(engine, a)["attempts"]) == ("queued", None, 1)
    assert run_queue.release_run(engine, a, "w") is False
    assert run_queue.claim_run(engine, "w")["id"] == a
    runs.cancel_run(engine, a)  # an admin cancels it while the worker runs it
    assert run_queue.update_held(engine, a, "w", status="running", step=2)
    assert row(engine, a)["status"] == "cancelled"
    run_queue.stop_worker(engine, "w")
    assert [w["alive"] for w in run_queue.list_workers(engine)] == [False]
    assert run_queue.requeue_dead(engine, dead_after_s=60) == []  # cancelled runs are not held
    assert run_queue.queue_counts(engine) == {"cancelled": 1, "queued": 1}


def test_a_run_folder_at_a_storage_url(tmp_path, run_folder):
    store = RunStorage("memory://dreamdpo-test/run-7")
    local = run_folder
    assert not store.fetch_resume(tmp_path / "empty")
    store.put_file(local / "checkpoints" / "last.pt", CHECKPOINT)
    store.put_file(local / "metrics.csv", "metrics.csv")
    other = tmp_path / "other"
    assert store.fetch_resume(other)
    assert (other / CHECKPOINT).read_bytes() == b"ckpt-1" and (other / "metrics.csv").read_text() == "step\n0\n"
    store.put_tree(local)
    assert store.exists("turntable/frame_000.png") and not store.exists(".lock")
    assert not [p for p in store.fs.find(store.root) if ".part-" in p]  # no temporary copy left
    assert store.url_of("mesh.obj") == "memory://dreamdpo-test/run-7/mesh.obj"


@pytest.mark.parametrize("url, says", [
    ("file:///proc/no-such-folder", "unreachable"),
    ("memory://x", "inside one process"),
    ("nosuch://bucket/x", "cannot be used"),
    ("/plain/path", "not a URL"),
])
def test_an_unusable_storage_url_is_one_line(url, says):
    with pytest.raises(UserError, match=says) as e:
        check_reachable(url)
    assert "\n" not in str(e.value)


def test_a_reachable_storage_url_is_accepted_and_left_clean(tmp_path):
    check_reachable((tmp_path / "runs").as_uri())
    assert (tmp_path / "runs").is_dir() and not list((tmp_path / "runs").iterdir())


def test_the_runs_page_shows_queued_runs_and_an_admin_reorders_pauses_and_resumes_them(log):
    from streamlit.testing.v1 import AppTest

    engine, url, _, users = log
    first, second = queue(engine, 2)
    run_queue.register_worker(engine, "gpu-host:1:cuda:0")

    def runs_page(user):
        def script(url, user):
            from annotator import runs_page
            from db.engine import connect

            runs_page.render(connect(url), user)

        return AppTest.from_function(script, args=(url, user), default_timeout=120).run()

    at = runs_page(users["ann"])
    shown = [t.value for t in at.text if t.value.startswith("queued run")]
    assert len(shown) == 2 and all("priority 0 · no worker yet · claims 0" in t for t in shown), shown
    assert not at.number_input  # annotators cannot reorder the queue
    at = runs_page(users["root"])
    at.number_input(key=f"priority-{second}").set_value(7).run()
    at.button(key=f"set-priority-{second}").click().run()
    assert row(engine, second)["priority"] == 7
    at.button(key=f"pause-{first}").click().run()
    assert row(engine, first)["status"] == "paused"
    claimed = run_queue.claim_run(engine, "gpu-host:1:cuda:0")
    assert claimed["id"] == second and run_queue.claim_run(engine, "gpu-host:1:cuda:0") is None  # paused: skipped
    at = runs_page(users["root"])
    assert any("held by worker gpu-host:1:cuda:0 · claims 1" in t.value for t in at.text)
    at.button(key=f"resume-{first}").click().run()
    assert row(engine, first)["status"] == "queued"  # nobody held it: back to the queue
