"""The Annotate page as a person at a 1366×768 laptop screen uses it, in a real Chromium
(Playwright, /usr/bin/chromium): what fits on screen, fast key bursts, undo, the lease countdown,
the zoom, skips with a reason, sessions across reloads. Each test has its own log and app server.
No speed is asserted; every wait polls a condition with a generous time-out."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from annotator.browser import free_port, press, sign_in, until, wait_empty, wait_pair
from db import accounts, pairs, runs
from db.engine import connect
from db.models import Pair, Vote
from dreamdpo.commands.annotate import start_app, stop_app, wait_ready
from dreamdpo.images import png_bytes

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
TIMEOUT_S = 300  # only a hang takes this long, a loaded machine does not
VIEWPORT = {"width": 1366, "height": 768}


def views(seed: int, n: int = 4, side: int = 64) -> bytes:
    """A candidate as the log stores it: n square views side by side."""
    rng = np.random.default_rng(seed)
    return png_bytes(rng.integers(0, 255, (side, n * side, 3), dtype=np.uint8))


def serve(tmp_path, env: dict | None = None):
    url = f"sqlite:///{tmp_path / 'log.sqlite'}"
    engine = connect(url)
    port = free_port()
    proc = start_app(url, port, env={"DREAMDPO_POLL_S": "0.5", **(env or {})})
    wait_ready(proc, port, timeout=TIMEOUT_S)
    return engine, f"http://127.0.0.1:{port}", proc


@pytest.fixture()
def app(tmp_path):
    engine, base, proc = serve(tmp_path)
    try:
        yield engine, base
    finally:
        stop_app(proc)
        engine.dispose()


def open_page(browser, base: str, token: str):
    """Signed in at a 1366×768 laptop screen, on the Annotate page."""
    context, page = sign_in(browser, base, token, TIMEOUT_S * 1000, viewport=VIEWPORT, wait=True)
    page.get_by_role("heading", name="Annotate").wait_for()
    return context, page


def run_with_pairs(engine, n: int, votes_needed: int = 1) -> list[int]:
    run_id = runs.create_run(engine, "a red cube", question="Which is redder?", status="running")
    return [pairs.post_pair(engine, run_id, i, views(2 * i), views(2 * i + 1), votes_needed=votes_needed)
            for i in range(n)]


def people_votes(engine) -> list:
    with engine.connect() as c:
        return c.execute(sa.select(Vote.pair_id, Vote.choice, Vote.retracted).where(Vote.annotator_id.is_not(None))
                         .order_by(Vote.id)).all()


def in_viewport(page, locator) -> bool:
    box = locator.bounding_box()
    return (box is not None and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= VIEWPORT["width"]
            and box["y"] + box["height"] <= VIEWPORT["height"])


def test_both_candidates_the_buttons_and_the_prompt_fit_in_1366x768(app, browser):
    engine, base = app
    token = accounts.add_annotator(engine, "ann")
    [pid] = run_with_pairs(engine, 1)
    context, page = open_page(browser, base, token)
    try:
        wait_pair(page, pid)
        images = page.locator('[data-testid="stImage"] img')
        until(lambda: images.count() == 2 and page.evaluate(
            "Array.from(document.querySelectorAll('[data-testid=\"stImage\"] img')).every(i => i.complete && i.naturalWidth > 0)"),
            "the two candidates were not drawn")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "annotate-1366x768.png"))
        for i in range(2):
            assert in_viewport(page, images.nth(i)), f"candidate {i} is not inside the 1366×768 viewport"
            shown = images.nth(i).bounding_box()
            assert shown["width"] >= 2 * 128  # a 2×2 grid of views, each at least 128 px on screen
        for name in ("Left better", "Right better", "Tie", "Both bad", "Skip", "Can't judge"):
            assert in_viewport(page, page.get_by_role("button", name=re.compile(f"^{name}"))), name
        assert in_viewport(page, page.get_by_text("a red cube", exact=True))
        # each key hint once, in the label
        assert page.get_by_role("button", name=re.compile("^Tie")).inner_text().count("T") == 2  # "Tie · T"
    finally:
        context.close()


def test_a_burst_of_ten_keys_stores_ten_votes(app, browser):
    engine, base = app
    token = accounts.add_annotator(engine, "ann")
    pids = run_with_pairs(engine, 10)
    context, page = open_page(browser, base, token)
    try:
        wait_pair(page, pids[0])
        until(lambda: page.evaluate("!!window.__dreamdpoKeys"), "the key listener was not installed")
        burst = ["ArrowLeft", "ArrowRight", "t", "b", "ArrowLeft", "ArrowRight", "t", "ArrowLeft", "b", "ArrowRight"]
        for key in burst:
            page.keyboard.press(key)  # no waiting in between: the page redraws meanwhile
        votes = until(lambda: (v := people_votes(engine)) and len(v) >= 10 and v, "ten votes were not stored")
        assert len(votes) == 10 and sorted(v.pair_id for v in votes) == pids
        assert [v.choice for v in votes][2:4] == ["tie", "both_bad"]
        page.get_by_text(re.compile(r"^Last: Right better stored for pair \d+")).wait_for()
        wait_empty(page)
    finally:
        context.close()


def test_undo_is_offered_only_while_it_can_succeed(app, browser):
    engine, base = app
    token = accounts.add_annotator(engine, "ann")
    [shared] = run_with_pairs(engine, 1, votes_needed=2)
    context, page = open_page(browser, base, token)
    try:
        wait_pair(page, shared)
        page.get_by_role("button", name=re.compile("^Tie")).click()
        page.get_by_role("button", name=re.compile("^Undo")).wait_for()
        page.keyboard.press("u")
        page.get_by_text(re.compile(f"Vote on pair {shared} undone")).wait_for()
        assert [tuple(v)[1:] for v in people_votes(engine)] == [("tie", True)]
        wait_pair(page, shared)
        [single] = run_with_pairs(engine, 1, votes_needed=1)
        page.get_by_role("button", name=re.compile("^Left better")).click()  # stays undecided (2 needed)
        wait_pair(page, single)
        page.get_by_role("button", name=re.compile("^Undo")).wait_for()
        page.get_by_role("button", name=re.compile("^Right better")).click()  # decides at once
        page.get_by_text(re.compile(f"stored for pair {single}")).wait_for()
        wait_empty(page)
        until(lambda: page.get_by_role("button", name=re.compile("^Undo")).count() == 0,
              "an undo that cannot succeed was still offered", timeout=60)
        page.get_by_text("Your recent votes").click()
        page.get_by_text(re.compile(f"^pair {single}: Right better .* decided$")).wait_for()
    finally:
        context.close()


def test_the_countdown_expires_a_pair_which_leaves_by_itself(tmp_path, browser):
    engine, base, proc = serve(tmp_path, env={"DREAMDPO_LEASE_S": "6"})
    try:
        token = accounts.add_annotator(engine, "ann")
        [pid] = run_with_pairs(engine, 1)
        context, page = open_page(browser, base, token)
        wait_pair(page, pid)
        page.get_by_text(re.compile(r"^Time left: 0:0\d$")).wait_for()
        page.get_by_text(f"Pair {pid} ran out of time before a vote").wait_for()
        assert people_votes(engine) == []
        context.close()
    finally:
        stop_app(proc)
        engine.dispose()


def test_skip_with_nobody_else_online_releases_the_pair_to_the_run_at_once(app, browser):
    engine, base = app
    token = accounts.add_annotator(engine, "ann")
    [pid] = run_with_pairs(engine, 1)
    context, page = open_page(browser, base, token)
    try:
        wait_pair(page, pid)
        page.keyboard.press("s")
        page.get_by_text(re.compile(rf"^Last: Skipped pair {pid}: nobody else is online")).wait_for()
        with engine.connect() as c:
            assert c.execute(sa.select(Pair.status).where(Pair.id == pid)).scalar() == "expired"
        wait_empty(page)
    finally:
        context.close()


def drawn(page, selector: str) -> bool:
    """Every image under `selector` is loaded, and there is at least one."""
    return page.evaluate("(s) => { const imgs = Array.from(document.querySelectorAll(s));"
                         "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }", selector)


def test_a_click_enlarges_the_same_view_of_both_candidates_and_closing_returns(app, browser):
    engine, base = app
    token = accounts.add_annotator(engine, "ann")
    [pid] = run_with_pairs(engine, 1)
    context, page = open_page(browser, base, token)
    try:
        wait_pair(page, pid)
        grid = page.locator(".st-key-grid-left img")
        until(lambda: drawn(page, ".st-key-grid-left img") and drawn(page, ".st-key-grid-right img"),
              "the grids were not drawn")
        box = grid.bounding_box()
        grid.click(position={"x": box["width"] * 0.75, "y": box["height"] * 0.75})  # view 4 of the 2×2 grid
        for side in ("Left", "Right"):
            page.get_by_text(f"{side} (←) · view 4 of 4" if side == "Left" else f"{side} (→) · view 4 of 4",
                             exact=False).wait_for()
        until(lambda: drawn(page, ".st-key-zoom-left img") and drawn(page, ".st-key-zoom-right img"),
              "the enlarged views were not drawn")
        left, right = (page.locator(f".st-key-zoom-{s} img").bounding_box() for s in ("left", "right"))
        assert left["width"] > box["width"] / 2 * 1.5  # a view larger than in the grid
        assert abs(left["y"] - right["y"]) < 1 and abs(left["height"] - right["height"]) < 1  # aligned
        assert left["x"] + left["width"] <= right["x"]  # side by side
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "annotate-zoom-1366x768.png"))
        press(page, "unzoom")  # Esc returns to the grids
        page.locator(".st-key-grid-left img").wait_for()
        until(lambda: page.locator(".st-key-zoom-left img").count() == 0, "the enlarged view stayed")
        press(page, "zoom")  # Z opens the view enlarged last
        page.get_by_text("Left (←) · view 4 of 4", exact=False).wait_for()
        page.get_by_role("button", name="View 2").click()
        page.get_by_text("Left (←) · view 2 of 4", exact=False).wait_for()
        until(lambda: drawn(page, ".st-key-zoom-right img"), "view 2 was not drawn")
        page.locator(".st-key-zoom-right img").click()  # a click on a large view returns
        page.locator(".st-key-grid-right img").wait_for()
        assert people_votes(engine) == []  # looking is no vote
        press(page, "left")  # and the keys still vote
        until(lambda: people_votes(engine), "the vote after the zoom was not stored")
    finally:
        context.close()


def test_a_skip_with_a_reason_is_stored_and_s_still_skips_at_once(app, browser):
    engine, base = app
    token = accounts.add_annotator(engine, "ann")
    pids = run_with_pairs(engine, 3)
    context, page = open_page(browser, base, token)

    def reasons():
        with engine.connect() as c:
            return c.execute(sa.select(Vote.pair_id, Vote.choice, Vote.raw).where(Vote.annotator_id.is_not(None))
                             .order_by(Vote.id)).all()

    def next_pair(pid: int) -> None:
        """Until pair `pid` is on screen and the last pair's reasons have closed."""
        page.get_by_text(re.compile(rf"pair {pid}$")).wait_for()
        until(lambda: page.get_by_role("button", name="Skip with this reason").count() == 0,
              "the reasons stayed open on the next pair")

    try:
        wait_pair(page, pids[0])
        page.get_by_role("button", name=re.compile("^Can't judge")).click()
        page.get_by_role("button", name="Images broken or empty").click()
        until(lambda: len(reasons()) == 1, "the skip with a preset reason was not stored")
        next_pair(pids[1])
        page.get_by_role("button", name=re.compile("^Can't judge")).click()
        field = page.get_by_label("Other reason")
        field.fill("the *left* one is <b>blank</b>")
        field.press("Enter")
        until(lambda: len(reasons()) == 2, "the skip with a reason of one's own was not stored")
        page.get_by_text("Last: Skipped pair", exact=False).filter(has_text="the *left* one is <b>blank</b>").wait_for()
        next_pair(pids[2])
        press(page, "skip")  # S skips at once, no reason asked
        until(lambda: len(reasons()) == 3, "S did not skip")
        assert [tuple(r) for r in reasons()] == [(pids[0], "skip", "images broken or empty"),
                                                 (pids[1], "skip", "the *left* one is <b>blank</b>"),
                                                 (pids[2], "skip", None)]
        assert page.locator("b", has_text="blank").count() == 0  # the reason is shown as text
    finally:
        context.close()


def test_a_reload_keeps_the_session_and_sign_out_ends_it(app, browser):
    engine, base = app
    token = accounts.add_annotator(engine, "ann")
    context, page = open_page(browser, base, token)
    try:
        assert token not in page.url
        until(lambda: any(c["name"] == "dreamdpo_session" for c in context.cookies()), "no session cookie")
        cookie = next(c for c in context.cookies() if c["name"] == "dreamdpo_session")
        assert token not in cookie["value"]
        page.reload()
        page.get_by_role("heading", name="Annotate").wait_for()
        other = context.new_page()  # a new tab of the same browser
        other.goto(base)
        other.get_by_role("heading", name="Annotate").wait_for()
        other.close()
        page.get_by_role("button", name="Sign out").click()
        page.locator("input[type=password]").wait_for()
        until(lambda: not any(c["name"] == "dreamdpo_session" for c in context.cookies()), "the cookie stayed")
        page.reload()
        page.locator("input[type=password]").wait_for()
        # the old cookie, replayed, no longer signs anyone in
        fresh = browser.new_context(viewport=VIEWPORT)
        fresh.add_cookies([cookie])
        p2 = fresh.new_page()
        p2.goto(base)
        p2.locator("input[type=password]").wait_for()
        assert p2.get_by_role("heading", name="Annotate").count() == 0
        fresh.close()
    finally:
        context.close()
