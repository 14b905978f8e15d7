"""Outages of the log: the back-off helper the run uses, a PostgreSQL stop and start (this module's
own server), and a SQLite file deleted or replaced under a running process or app.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from streamlit.testing.v1 import AppTest

from annotator.browser import until, until_set
from annotator.guard import UNREACHABLE
from annotator.simulated import annotate
from db import accounts, pairs, queue, runs, votes
from db import engine as db_engine
from db.engine import connect, is_transient, ping, retry
from db.errors import LogError, LogGone, LogUnreachable
from db.read import pairs_frame, votes_frame
from dreamdpo.images import png_bytes
from dreamdpo.toyworld.taste import Taste

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "annotator" / "app.py")


def png(value: int) -> bytes:
    import numpy as np

    return png_bytes(np.full((8, 8, 3), value, dtype=np.uint8))


def refused() -> sa.exc.OperationalError:
    return sa.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


# ----------------------------------------------------------------------------- retry, pure
def test_retry_backs_off_through_transient_failures():
    failures, waits = [refused(), refused(), refused(), refused()], []

    def flaky():
        if failures:
            raise failures.pop()
        return "ok"

    told = []
    assert retry(flaky, timeout_s=600, first_delay_s=0.5, max_delay_s=2.0, sleep=waits.append,
                 on_retry=lambda e, wait: told.append(wait)) == "ok"
    assert waits == [0.5, 1.0, 2.0, 2.0] and told == waits


def test_retry_raises_at_once_what_retrying_cannot_fix():
    for error in (LogGone("gone"), LogError("refused"), sa.exc.IntegrityError("INSERT", {}, Exception("dup")),
                  ValueError("bug")):
        calls = []

        def fail(error=error, calls=calls):
            calls.append(1)
            raise error

        with pytest.raises(type(error)):
            retry(fail, timeout_s=600, sleep=lambda s: None)
        assert len(calls) == 1


def test_retry_gives_up_after_its_time_with_one_line():
    def down():
        raise refused()

    with pytest.raises(LogUnreachable, match="unreachable for 0 s") as info:
        retry(down, timeout_s=0.0, sleep=lambda s: None)
    assert "\n" not in str(info.value)


def test_an_outage_is_timed_from_its_first_failure_not_from_the_call():
    """A blocking step waits for people longer than the outage window, then the server goes: the run
    must retry the whole window, not give up at once; a second outage much later gets a window of its own."""
    clock = [0.0]
    waits: list[float] = []

    def sleep(s: float) -> None:
        waits.append(s)
        clock[0] += s

    def attempts(*plan):
        """Each attempt takes the time given, then fails (a number) or returns (None)."""
        todo = list(plan)

        def fn():
            took = todo.pop(0)
            if took is None:
                return "ok"
            clock[0] += took
            raise refused()
        return fn

    # a wait of 1000 s, then the server is down for about 30 s (window 60 s)
    assert retry(attempts(1000.0, 0.0, 0.0, 0.0, 0.0, 0.0, None), timeout_s=60, first_delay_s=1.0,
                 max_delay_s=8.0, sleep=sleep, clock=lambda: clock[0]) == "ok"
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    # down for good after that long wait: it gives up once the window is over, not before
    waits.clear()
    with pytest.raises(LogUnreachable):
        retry(attempts(1000.0, *[0.0] * 100), timeout_s=60, first_delay_s=1.0, max_delay_s=8.0, sleep=sleep,
              clock=lambda: clock[0])
    assert sum(waits) == 60
    # an outage, a long wait once back, and another outage: the second one is timed afresh
    waits.clear()
    assert retry(attempts(0.0, 0.0, 0.0, 1000.0, 0.0, 0.0, None), timeout_s=60, first_delay_s=1.0, max_delay_s=8.0,
                 sleep=sleep, clock=lambda: clock[0]) == "ok"
    assert waits == [1.0, 2.0, 4.0, 1.0, 2.0, 4.0]


def test_the_end_of_a_human_judged_run_is_retried_through_an_outage(sqlite_log, monkeypatch):
    """The last step's clean-up (waiting pairs expire, the model learns the last votes) meets the outage:
    it waits for the log like every step instead of failing the finished run."""
    from dreamdpo.judges.human import HumanJudge, HumanPolicy

    engine, run_id, pair = sqlite_log["engine"], sqlite_log["run_id"], sqlite_log["pair"]
    real, calls = pairs.expire_waiting, []

    def flaky(engine, run_id):
        calls.append(run_id)
        if len(calls) == 1:
            raise refused()
        return real(engine, run_id)

    monkeypatch.setattr(pairs, "expire_waiting", flaky)
    HumanJudge(engine, HumanPolicy(fallback="pull"), outage_s=600).end_of_run(run_id)
    assert calls == [run_id, run_id]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT status FROM pairs WHERE id = :p"), {"p": pair}).scalar() == "expired"


def test_which_failures_are_transient():
    sqlite = __import__("sqlite3")
    locked = sa.exc.OperationalError("BEGIN", {}, sqlite.OperationalError("database is locked"))
    no_table = sa.exc.OperationalError("SELECT", {}, sqlite.OperationalError("no such table: runs"))
    assert is_transient(refused()) and is_transient(locked) and is_transient(LogUnreachable("x"))
    assert not is_transient(no_table) and not is_transient(LogGone("x")) and not is_transient(ValueError())


# ----------------------------------------------------------------------------- SQLite file identity
@pytest.fixture
def sqlite_log(tmp_path):
    path = tmp_path / "log.sqlite"
    url = f"sqlite:///{path}"
    engine = connect(url)
    token = accounts.add_annotator(engine, "ann")
    me = accounts.authenticate(engine, token)["id"]
    run_id = runs.create_run(engine, "a red cube", status="running")
    pair = pairs.post_pair(engine, run_id, 0, png(1), png(2))
    yield {"path": path, "url": url, "engine": engine, "token": token, "me": me, "run_id": run_id, "pair": pair}
    db_engine._ENGINES.pop(url, None)
    engine.dispose()


def remove_log(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def test_a_deleted_log_file_stops_every_call_instead_of_losing_votes(sqlite_log):
    engine, me, pair = sqlite_log["engine"], sqlite_log["me"], sqlite_log["pair"]
    assert queue.claim_next(engine, me)["pair_id"] == pair
    remove_log(sqlite_log["path"])
    for call in (lambda: votes.vote(engine, pair, me, "a"), lambda: queue.claim_next(engine, me),
                 lambda: accounts.list_annotators(engine), lambda: ping(engine)):
        with pytest.raises(LogGone, match="deleted"):
            call()
    assert not sqlite_log["path"].exists()  # nothing recreated an empty log behind the user's back


def test_a_replaced_log_file_is_detected(sqlite_log, tmp_path):
    engine, me = sqlite_log["engine"], sqlite_log["me"]
    other = tmp_path / "other.sqlite"
    connect(f"sqlite:///{other}").dispose()
    db_engine._ENGINES.pop(f"sqlite:///{other}", None)
    before = other.read_bytes()
    remove_log(sqlite_log["path"])
    shutil.copy(other, sqlite_log["path"])
    with pytest.raises(LogGone, match="replaced"):
        queue.claim_next(engine, me)
    with pytest.raises(LogGone):
        retry(lambda: queue.claim_next(engine, me), timeout_s=600, sleep=lambda s: None)  # never retried
    assert sqlite_log["path"].read_bytes() == before


def test_the_app_stops_with_a_message_when_its_log_file_is_deleted(sqlite_log, monkeypatch):
    monkeypatch.setenv("DREAMDPO_DB", sqlite_log["url"])
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.text_input[0].input(sqlite_log["token"])
    at.button[0].click().run()
    assert at.session_state["pair"]["pair_id"] == sqlite_log["pair"]
    remove_log(sqlite_log["path"])
    at.button(key="vote-left").click().run()
    assert not at.exception
    assert any("deleted" in e.value for e in at.error)
    assert not [b for b in at.button if b.key and str(b.key).startswith("vote-")]
    at.run()  # and again at the next poll or click
    assert not at.exception and any("deleted" in e.value for e in at.error)


# ----------------------------------------------------------------------------- PostgreSQL stop and start
@pytest.fixture(scope="module")
def pg():
    """A cluster of this module's own, so that stopping it disturbs no other test."""
    from db import pg_cluster

    if pg_cluster.pg_bin() is None:
        pytest.skip("PostgreSQL server binaries not found; install Debian `postgresql` (make system-deps)")
    server = pg_cluster.PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


def pg_ctl(server, *args: str) -> None:
    server._run(str(server.bin / "pg_ctl"), "-D", str(server.data), *args)


def pg_stop(server) -> None:
    pg_ctl(server, "-m", "fast", "-w", "stop")


def pg_start(server) -> None:
    """Start again with the options of the first start (postmaster.opts)."""
    pg_ctl(server, "-w", "-t", "60", "-l", str(server.root / "log"), "restart")


@pytest.mark.slow
def test_retry_carries_a_call_through_a_postgresql_restart(pg):
    url = pg.database()
    engine = connect(url)
    accounts.add_annotator(engine, "ann")
    pg_stop(pg)
    outages = []

    def back_up(error, wait):
        outages.append(str(error).splitlines()[0])
        if len(outages) == 2:  # the server comes back while the caller is waiting
            pg_start(pg)

    try:
        with pytest.raises(LogUnreachable):
            ping(engine)
        names = retry(lambda: [a["name"] for a in accounts.list_annotators(engine)], timeout_s=300,
                      first_delay_s=0.05, on_retry=back_up)
    finally:
        pg_start(pg)
    assert names == ["ann"] and len(outages) == 2
    token = accounts.add_annotator(engine, "bob")  # writes work again on the same engine
    assert accounts.authenticate(engine, token)["name"] == "bob"


@pytest.mark.slow
def test_the_app_says_the_log_is_unreachable_then_carries_on(pg, monkeypatch):
    url = pg.database()
    engine = connect(url)
    token = accounts.add_annotator(engine, "ann")
    run_id = runs.create_run(engine, "a red cube", status="running")
    pair = pairs.post_pair(engine, run_id, 0, png(1), png(2))
    monkeypatch.setenv("DREAMDPO_DB", url)
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.text_input[0].input(token)
    at.button[0].click().run()
    assert at.session_state["pair"]["pair_id"] == pair
    pg_stop(pg)
    try:
        at.button(key="vote-left").click().run()  # a vote clicked on the page while the server is down
        assert not at.exception
        assert [w.value for w in at.warning] == [UNREACHABLE]
        at.run()  # the next poll: still down, still the message
        assert not at.exception and [w.value for w in at.warning] == [UNREACHABLE]
    finally:
        pg_start(pg)
    at.run()
    assert not at.exception and UNREACHABLE not in [w.value for w in at.warning]
    assert any("not stored" in w.value for w in at.warning)  # what happened to the click is said once back
    assert votes.get_decision(engine, pair) is None  # the vote clicked while down was not stored ...
    assert at.session_state["pair"]["pair_id"] == pair  # ... and the same pair, still leased, is shown again
    at.button(key="vote-left").click().run()
    assert votes.get_decision(engine, pair) is not None


def test_ping_on_a_healthy_log(sqlite_log):
    ping(sqlite_log["engine"])
    assert os.path.exists(sqlite_log["path"])


# ----------------------------------------------------------------------------- the same in a real browser
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.slow
@pytest.mark.browser
def test_in_a_browser_the_page_comes_back_by_itself_after_an_outage(pg, browser):
    """No reload, no click: the annotate pane and a page opened while the log was down both recover."""
    import re
    import socket

    from dreamdpo.commands.annotate import start_app, stop_app, wait_ready

    url = pg.database()
    engine = connect(url)
    token = accounts.add_annotator(engine, "ann")
    pair = pairs.post_pair(engine, runs.create_run(engine, "a red cube", status="running"), 0, png(1), png(2))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = start_app(url, port, env={"DREAMDPO_RETRY_S": "1"})
    try:
        wait_ready(proc, port, timeout=180)
        # the session's Chromium (conftest: one Playwright per session); one context per person (cookies)
        context, later = browser.new_context(), browser.new_context()
        try:
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{port}", timeout=120_000)
            page.locator("input[type=password]").fill(token)
            page.get_by_role("button", name="Sign in").click()
            shown = page.get_by_text(re.compile(rf"pair {pair}$"))
            shown.wait_for(timeout=120_000)
            pg_stop(pg)
            try:
                page.get_by_text(UNREACHABLE).wait_for(timeout=120_000)
                other = later.new_page()  # someone signing in while the log is down
                other.goto(f"http://127.0.0.1:{port}", timeout=120_000)
                other.locator("input[type=password]").fill(token)
                other.get_by_role("button", name="Sign in").click()
                other.get_by_text(UNREACHABLE).wait_for(timeout=120_000)
            finally:
                pg_start(pg)
            shown.wait_for(timeout=120_000)
            page.get_by_text(UNREACHABLE).wait_for(state="detached", timeout=120_000)
            other.get_by_text(UNREACHABLE).wait_for(state="detached", timeout=120_000)  # the app reran by itself
            other.locator("input[type=password]").wait_for(timeout=120_000)  # to the sign-in form
        finally:
            context.close()
            later.close()
    finally:
        stop_app(proc)


# ----------------------------------------------------------------------------- a real run through a stop and start

@pytest.mark.slow
@pytest.mark.parametrize("judge", ["human", "toy-reward"])
def test_a_run_carries_on_through_a_postgresql_stop_and_start(pg, toy_prior, tmp_path, judge):
    """`dreamdpo run` while the server stops for a few seconds: the run waits and retries, then finishes
    with exit 0, its row 'finished', and each step in the log once.

    human: people judge the even steps (the run cannot finish without them, so the server goes down
    mid-run whatever the machine's speed: right after a vote, while the run moves to its next pair),
    the assist model the odd ones. toy-reward: the model judges and logs every step of a longer run;
    the server stops once the run has logged its first steps."""
    steps = 10 if judge == "human" else 150
    url, out = pg.database(), tmp_path / "run"
    engine = connect(url)
    who = accounts.authenticate(engine, accounts.add_annotator(engine, "sim"))["id"]
    cmd = [sys.executable, "-m", "dreamdpo.cli", "run", "--prompt", "a cube", "--judge", judge, "--steps", str(steps),
           "--quiet", "human.every_k=2", "human.timeout_s=600", "test_views=1", "test_resolution=32",
           "mesh_resolution=16", "schedule.resolution=32", "--db", url, "--out", str(out)]
    with open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                                stderr=stderr)
    voter, stop, taste = None, threading.Event(), Taste(colour="green")
    try:
        alive = lambda: None if proc.poll() is None else -1  # noqa: E731
        run_id = until_set(lambda: json.loads((out / "log.json").read_text())["run_id"] if (out / "log.json").exists()
                       else alive())
        assert run_id > 0, (tmp_path / "stderr.txt").read_text()[-2000:]
        if judge == "human":
            for _ in range(2):
                assert annotate(engine, who, taste, run_id=run_id, think_s=0.0, max_votes=1)["votes"] == 1
        else:
            until_set(lambda: (runs.get_run(engine, run_id) or {}).get("step") if alive() is None else -1)
        pg_stop(pg)
        try:
            if judge == "toy-reward":  # down until the run's own writes have met the outage, however slow its steps
                until(lambda: "the log is unreachable" in (tmp_path / "stderr.txt").read_text() or alive(),
                      "the run meeting the outage", timeout=600)
            else:
                time.sleep(5)  # the outage, while the run waits for people's next decision
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-2000:]  # not dead of it
        finally:
            pg_start(pg)
        if judge == "human":
            voter = threading.Thread(target=annotate, args=(engine, who, taste),
                                     kwargs={"run_id": run_id, "think_s": 0.0, "stop": stop.is_set}, daemon=True)
            voter.start()
        code = proc.wait(timeout=900)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if voter is not None:
            voter.join(timeout=60)
    err = (tmp_path / "stderr.txt").read_text()
    assert code == 0, err[-2000:]
    if judge == "toy-reward":
        assert "the log is unreachable" in err  # the outage met the run's own writes
    run = runs.get_run(engine, run_id)
    assert (run["status"], run["step"]) == ("finished", steps - 1)
    assert [h["step"] for h in run["metrics"]["history"]] == list(range(steps))
    with open(out / "metrics.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(steps))
    logged = pairs_frame(engine, run_id)
    assert sorted(logged["step"]) == list(range(steps))  # each step logged once, none lost nor doubled
    cast = votes_frame(engine, run_id)
    asked = logged[logged["deadline"].notna()]
    assert sorted(cast.loc[cast["annotator"].notna(), "pair_id"]) == sorted(asked["pair_id"])
    judged = logged[(logged["status"] == "decided") & logged["deadline"].isna()]
    assert sorted(cast.loc[cast["annotator"].isna(), "pair_id"]) == sorted(judged["pair_id"])  # one model vote each
