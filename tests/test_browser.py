"""The annotator app in a real Chromium (Playwright, /usr/bin/chromium), against a real optimization.

What AppTest cannot do: keyboard shortcuts, the polling fragment, two people at once, a closed tab.
The app runs as `dreamdpo annotate` runs it (a Streamlit child process on the same SQLite log).
"""
from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from annotator.browser import free_port, press, sign_in, until, wait_empty, wait_pair
from db import accounts, pairs, runs, votes
from db.engine import connect
from db.models import Claim, Pair, Vote, utcnow
from dreamdpo.commands.annotate import start_app, stop_app, wait_ready

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
TIMEOUT_S = 300  # generous: only a hang takes this long, a loaded machine does not
SMALL = [
    "field.n_levels=4", "field.log2_hashmap_size=12", "field.max_resolution=64", "field.hidden=16",
    "render.n_samples=16", "schedule.resolution=32", "schedule.resolution_milestones=[]",
    "test_views=4", "test_resolution=32", "export_mesh=false", "checkpoint_every=5", "device=cpu",
]


@pytest.fixture()
def server(browser, tmp_path):
    """Each test has its own log and its own app server, so nothing an earlier test left in a queue
    (a pending pair, a lease, a quality-control pair) decides what this one sees."""
    url = f"sqlite:///{tmp_path / 'log.sqlite'}"
    engine = connect(url)
    port = free_port()
    proc = start_app(url, port, env={"DREAMDPO_POLL_S": "0.5"})
    try:
        wait_ready(proc, port, timeout=TIMEOUT_S)
        yield engine, f"http://127.0.0.1:{port}"
    finally:
        stop_app(proc)  # the app's whole process group
        engine.dispose()


def annotator(engine, name: str) -> tuple[str, int]:
    token = accounts.add_annotator(engine, name)
    return token, accounts.authenticate(engine, token)["id"]


def pending_pair(engine, run_id: int, after: int = 0) -> int:
    """The first pending live pair of the run posted after pair `after`."""
    def first():
        with engine.connect() as c:
            return c.execute(sa.select(Pair.id).where(Pair.run_id == run_id, Pair.status == "pending",
                                                      Pair.kind == "live", Pair.id > after)
                             .order_by(Pair.id)).scalar()
    return until(first, "the optimizer posted no pair")


def people_votes(engine, pair_id):
    with engine.connect() as c:
        return c.execute(sa.select(Vote.annotator_id, Vote.choice, Vote.shown_left, Vote.latency_ms)
                         .where(Vote.pair_id == pair_id, Vote.annotator_id.is_not(None),
                                Vote.retracted.is_(False))).all()


def post(engine, run_id: int, pngs, i: int, **kw) -> int:
    return pairs.post_pair(engine, run_id, 0, pngs[2 * i], pngs[2 * i + 1], **kw)


def test_keyboard_votes_drive_a_real_optimization(server, browser, tiny_sd, tmp_path):
    from dreamdpo.config import load_config
    from dreamdpo.judges.human import HumanJudge
    from dreamdpo.optimize import optimize
    from dreamdpo.recording import DbRecorder

    engine, base = server
    token, _ = annotator(engine, "keys")
    keys = ["left", "right", "tie", "left", "both_bad"]
    cfg = load_config(flags={"prompt": "a red cube", "backbone": tiny_sd, "judge": "human", "steps": len(keys),
                             "out": str(tmp_path / "run")},
                      overrides=SMALL + [f"human.timeout_s={TIMEOUT_S}", "human.fallback=pull", "assist_judge=none"])
    judge = HumanJudge(engine, cfg.human, model_judge=None)
    recorder = DbRecorder(engine)
    result = {}
    loop = threading.Thread(target=lambda: result.update(r=optimize(cfg, judge=judge, recorder=recorder,
                                                                    progress=False)), daemon=True)
    loop.start()
    context, page = sign_in(browser, base, token)
    try:
        until(lambda: recorder.run_id is not None, "the run was not created")
        pair_ids = [0]
        for step, key in enumerate(keys):
            pid = pending_pair(engine, recorder.run_id, after=pair_ids[-1])
            wait_pair(page, pid)
            if step == 1:
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "annotate-page.png"), full_page=True)
            press(page, key)
            until(lambda pid=pid: votes.get_decision(engine, pid), f"step {step}: the key {key} decided nothing")
            pair_ids.append(pid)
        pair_ids = pair_ids[1:]
        loop.join(TIMEOUT_S)
    finally:
        context.close()
        if loop.is_alive() and recorder.run_id is not None:  # a failure above: stop the loop's wait
            runs.cancel_run(engine, recorder.run_id)
            loop.join(TIMEOUT_S)
    assert not loop.is_alive()
    res = result["r"]
    assert res.status == "finished" and len(res.metrics) == len(keys)
    for step, (key, pid) in enumerate(zip(keys, pair_ids)):
        [(_, choice, shown_left, latency)] = people_votes(engine, pid)
        expected = {"left": shown_left, "right": "b" if shown_left == "a" else "a"}.get(key, key)
        assert choice == expected and latency > 0
        row = res.metrics[step]
        winner = {"tie": "tie", "both_bad": "tie"}.get(expected, expected)
        assert (row["step"], row["winner"], row["source"], row["skip"]) == (step, winner, "human",
                                                                          int(expected == "both_bad"))
        assert row["gap"] == (1.0 if winner in ("a", "b") else 0.0)
        assert row["push"] == int(winner in ("a", "b"))
    assert runs.get_run(engine, recorder.run_id)["status"] == "finished"


def test_two_annotators_k2_both_counted_decided_once(server, browser, pngs):
    engine, base = server
    run_id = runs.create_run(engine, "two people", status="running")
    pid = post(engine, run_id, pngs, 0, votes_needed=2)
    (t1, a1), (t2, a2) = annotator(engine, "pat"), annotator(engine, "sam")
    c1, p1 = sign_in(browser, base, t1)
    c2, p2 = sign_in(browser, base, t2)
    try:
        wait_pair(p1, pid)
        wait_pair(p2, pid)
        press(p1, "tie")
        wait_empty(p1)
        assert votes.get_decision(engine, pid) is None
        press(p2, "tie")
        wait_empty(p2)
    finally:
        c1.close()
        c2.close()
    assert sorted((a, c) for a, c, _, _ in people_votes(engine, pid)) == sorted([(a1, "tie"), (a2, "tie")])
    d = votes.get_decision(engine, pid)
    assert (d["winner"], d["rule"], d["n_tie"]) == ("tie", "unanimous", 2)
    with engine.connect() as c:
        assert c.execute(sa.text("select count(*) from decisions where pair_id = :p"), {"p": pid}).scalar() == 1


def test_closed_tab_lease_expires_and_another_annotator_gets_the_pair(server, browser, pngs):
    engine, base = server
    run_id = runs.create_run(engine, "closed tab", status="running")
    pid = post(engine, run_id, pngs, 1)
    (t1, a1), (t2, a2) = annotator(engine, "leaver"), annotator(engine, "stayer")
    c1, p1 = sign_in(browser, base, t1)
    wait_pair(p1, pid)
    c1.close()  # mid-pair: no vote; the lease holds the pair until it runs out
    c2, p2 = sign_in(browser, base, t2)
    try:
        wait_empty(p2)  # the leaver's lease still holds the pair
        with engine.begin() as c:  # the lease runs out (moved into the past, so no test waits on a clock)
            n = c.execute(sa.update(Claim).where(Claim.pair_id == pid, Claim.annotator_id == a1)
                          .values(expires_at=utcnow() - timedelta(seconds=1))).rowcount
        assert n == 1
        wait_pair(p2, pid)  # the page's polling finds the pair again
        press(p2, "right")
        wait_empty(p2)
    finally:
        c2.close()
    [(who, choice, shown_left, _)] = people_votes(engine, pid)
    assert who == a2 and choice == ("b" if shown_left == "a" else "a")


def test_html_in_prompt_is_inert_and_cancelled_run_refuses_with_a_message(server, browser, pngs):
    engine, base = server
    xss = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
    run_id = runs.create_run(engine, xss, question="<b>bold?</b>", status="running")
    pid = post(engine, run_id, pngs, 2)
    token, _ = annotator(engine, "careful")
    context, page = sign_in(browser, base, token)
    try:
        wait_pair(page, pid)
        page.get_by_text(xss, exact=True).wait_for()
        page.get_by_text("<b>bold?</b>", exact=True).wait_for()
        assert page.evaluate("window.pwned") is None
        runs.cancel_run(engine, run_id)
        press(page, "left")
        page.get_by_text(f"run {run_id} was cancelled").wait_for()
    finally:
        context.close()
    assert people_votes(engine, pid) == []


def test_bad_tokens_are_refused(server, browser):
    engine, base = server
    token, _ = annotator(engine, "gone")
    accounts.deactivate(engine, "gone")
    for bad in ("nonsense", token):
        context, page = sign_in(browser, base, bad)
        try:
            page.get_by_text("not valid").wait_for()
            assert page.get_by_role("heading", name="Annotate").count() == 0
        finally:
            context.close()
