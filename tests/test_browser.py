"""The annotator app in a real Chromium (Playwright, /usr/bin/chromium), against a real optimization.

What AppTest cannot do: keyboard shortcuts, the polling fragment, two people at once, a closed tab.
The app runs as `dreamdpo annotate` runs it (a Streamlit child process on the same SQLite log).
"""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from db import accounts, queue
from db.engine import connect
from db.models import Pair, Vote
from dreamdpo.commands.annotate import start_app, stop_app, wait_ready

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LEASE_S = 4  # short leases so that the closed-tab test finishes quickly
KEYS = {"left": "ArrowLeft", "right": "ArrowRight", "tie": "t", "both_bad": "b", "skip": "s"}
SMALL = [
    "field.n_levels=4", "field.log2_hashmap_size=12", "field.max_resolution=64", "field.hidden=16",
    "render.n_samples=16", "schedule.resolution=32", "schedule.resolution_milestones=[]",
    "test_views=4", "test_resolution=32", "export_mesh=false", "checkpoint_every=5", "device=cpu",
]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian chromium at /usr/bin/chromium (.ci/run installs it)")
    url = f"sqlite:///{tmp_path_factory.mktemp('log') / 'log.sqlite'}"
    engine = connect(url)
    port = free_port()
    proc = start_app(url, port, env={"DREAMDPO_LEASE_S": str(LEASE_S), "DREAMDPO_POLL_S": "0.5"})
    try:
        wait_ready(proc, port)
        yield engine, f"http://127.0.0.1:{port}"
    finally:
        stop_app(proc)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


def sign_in(browser, base: str, token: str):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(base)
    page.locator("input[type=password]").fill(token)
    page.get_by_role("button", name="Sign in").click()
    return context, page


def annotator(engine, name: str) -> tuple[str, int]:
    token = accounts.add_annotator(engine, name)
    return token, accounts.authenticate(engine, token)["id"]


def wait_pair(page, pair_id: int, timeout=30_000):
    page.get_by_text(re.compile(rf"pair {pair_id}$")).wait_for(timeout=timeout)
    page.get_by_role("button", name=re.compile(r"^Skip")).wait_for(timeout=timeout)
    time.sleep(0.3)  # the shortcut handlers attach after the buttons are drawn


def press(page, key: str) -> None:
    page.evaluate("document.activeElement && document.activeElement.blur()")  # keys go to the page
    page.keyboard.press(KEYS[key])


def pending_pair(engine, run_id: int, timeout=60.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with engine.connect() as c:
            pid = c.execute(sa.select(Pair.id).where(Pair.run_id == run_id, Pair.status == "pending")
                            .order_by(Pair.id)).scalar()
        if pid is not None:
            return pid
        time.sleep(0.05)
    raise AssertionError("the optimizer posted no pair")


def people_votes(engine, pair_id):
    with engine.connect() as c:
        return c.execute(sa.select(Vote.annotator_id, Vote.choice, Vote.shown_left, Vote.latency_ms)
                         .where(Vote.pair_id == pair_id, Vote.annotator_id.is_not(None),
                                Vote.retracted.is_(False))).all()


def test_keyboard_votes_drive_a_real_optimization(server, browser, tmp_path):
    from dreamdpo.config import load_config
    from dreamdpo.judges.human import HumanJudge
    from dreamdpo.optimize import optimize
    from dreamdpo.recording import DbRecorder
    from tiny_models import make_tiny_sd

    engine, base = server
    token, _ = annotator(engine, "keys")
    keys = ["left", "right", "tie", "left", "both_bad"]
    cfg = load_config(flags={"prompt": "a red cube", "backbone": make_tiny_sd(tmp_path / "sd", resolution=32),
                             "judge": "human", "steps": len(keys), "out": str(tmp_path / "run")},
                      overrides=SMALL + ["human.timeout_s=90", "human.fallback=pull", "assist_judge=none"])
    judge = HumanJudge(engine, cfg.human, model_judge=None)
    recorder = DbRecorder(engine)
    result = {}
    loop = threading.Thread(target=lambda: result.update(r=optimize(cfg, judge=judge, recorder=recorder,
                                                                    progress=False)), daemon=True)
    loop.start()
    context, page = sign_in(browser, base, token)
    try:
        while recorder.run_id is None:
            time.sleep(0.05)
        pair_ids = []
        for step, key in enumerate(keys):
            pid = pending_pair(engine, recorder.run_id)
            wait_pair(page, pid)
            if step == 1:
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "annotate-page.png"), full_page=True)
            for _ in range(3):  # a key pressed while Streamlit re-draws can be lost; the page then still shows the pair
                press(page, key)
                end = time.monotonic() + 5
                while queue.get_decision(engine, pid) is None and time.monotonic() < end:
                    time.sleep(0.05)
                if queue.get_decision(engine, pid) is not None:
                    break
                print(f"step {step}: key {key} not stored yet, pressing again")
            pair_ids.append(pid)
        loop.join(120)
    finally:
        context.close()
        if loop.is_alive() and recorder.run_id is not None:  # a failure above: stop the loop's wait
            queue.cancel_run(engine, recorder.run_id)
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
    assert queue.get_run(engine, recorder.run_id)["status"] == "finished"


def test_two_annotators_k2_both_counted_decided_once(server, browser):
    engine, base = server
    run_id = queue.create_run(engine, "two people", status="running")
    import numpy as np

    from dreamdpo.images import png_bytes

    pid = queue.post_pair(engine, run_id, 0, png_bytes(np.zeros((8, 8, 3), np.uint8)),
                          png_bytes(np.full((8, 8, 3), 255, np.uint8)), votes_needed=2)
    (t1, a1), (t2, a2) = annotator(engine, "pat"), annotator(engine, "sam")
    c1, p1 = sign_in(browser, base, t1)
    c2, p2 = sign_in(browser, base, t2)
    try:
        wait_pair(p1, pid)
        wait_pair(p2, pid)
        press(p1, "tie")
        p1.get_by_text("No pairs are waiting for you").wait_for(timeout=10_000)
        assert queue.get_decision(engine, pid) is None
        press(p2, "tie")
        p2.get_by_text("No pairs are waiting for you").wait_for(timeout=10_000)
    finally:
        c1.close()
        c2.close()
    assert sorted((a, c) for a, c, _, _ in people_votes(engine, pid)) == sorted([(a1, "tie"), (a2, "tie")])
    d = queue.get_decision(engine, pid)
    assert (d["winner"], d["rule"], d["n_tie"]) == ("tie", "unanimous", 2)
    with engine.connect() as c:
        assert c.execute(sa.text("select count(*) from decisions where pair_id = :p"), {"p": pid}).scalar() == 1


def test_closed_tab_lease_expires_and_another_annotator_gets_the_pair(server, browser):
    engine, base = server
    run_id = queue.create_run(engine, "closed tab", status="running")
    import numpy as np

    from dreamdpo.images import png_bytes

    pid = queue.post_pair(engine, run_id, 0, png_bytes(np.zeros((8, 8, 3), np.uint8)),
                          png_bytes(np.full((8, 8, 3), 9, np.uint8)))
    (t1, _), (t2, a2) = annotator(engine, "leaver"), annotator(engine, "stayer")
    c1, p1 = sign_in(browser, base, t1)
    wait_pair(p1, pid)
    c1.close()  # mid-pair: no vote, the lease runs out
    c2, p2 = sign_in(browser, base, t2)
    try:
        p2.get_by_text("No pairs are waiting for you").wait_for(timeout=10_000)
        wait_pair(p2, pid, timeout=(LEASE_S + 10) * 1000)
        press(p2, "right")
        p2.get_by_text("No pairs are waiting for you").wait_for(timeout=10_000)
    finally:
        c2.close()
    [(who, choice, shown_left, _)] = people_votes(engine, pid)
    assert who == a2 and choice == ("b" if shown_left == "a" else "a")


def test_html_in_prompt_is_inert_and_cancelled_run_refuses_with_a_message(server, browser):
    engine, base = server
    xss = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
    run_id = queue.create_run(engine, xss, question="<b>bold?</b>", status="running")
    import numpy as np

    from dreamdpo.images import png_bytes

    pid = queue.post_pair(engine, run_id, 0, png_bytes(np.zeros((8, 8, 3), np.uint8)),
                          png_bytes(np.full((8, 8, 3), 40, np.uint8)))
    token, _ = annotator(engine, "careful")
    context, page = sign_in(browser, base, token)
    try:
        wait_pair(page, pid)
        page.get_by_text(xss, exact=True).wait_for(timeout=5000)
        page.get_by_text("<b>bold?</b>", exact=True).wait_for(timeout=5000)
        assert page.evaluate("window.pwned") is None
        queue.cancel_run(engine, run_id)
        press(page, "left")
        page.get_by_text(f"run {run_id} was cancelled").wait_for(timeout=10_000)
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
            page.get_by_text("not valid").wait_for(timeout=10_000)
            assert page.get_by_role("heading", name="Annotate").count() == 0
        finally:
            context.close()
