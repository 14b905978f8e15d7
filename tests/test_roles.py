"""Roles, for each page and each call an annotator can make.

- Audit, Arena, Export and Admin are admin-only: absent from an annotator's navigation, their URLs lead
  nowhere (real browser), and each page refuses an annotator when rendered directly (AppTest).
- An annotator never sees another annotator's name or statistics on the pages open to them.
- A deactivated account can do nothing: no claim, vote, undo or skip (API and app), and reactivation
  gives it its old token back.
- QC pairs look exactly like live pairs; names are unique without regard to case; text from the log
  is plain text, never markdown.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from streamlit.testing.v1 import AppTest

from annotator.browser import CHROMIUM, free_port, sign_in, until
from db import accounts, pairs, qc, queue, runs, votes
from db.engine import connect
from db.errors import AccountInactive, LogError
from db.models import Vote
from dreamdpo.cli import main
from dreamdpo.images import png_bytes

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "annotator" / "app.py")
SECRET = "zed-the-other"  # another annotator, whose name and numbers an annotator must never see
MARKDOWN = "[click me](http://evil.example/x) **bold** :red[red] $x^2$"


def png(value: int) -> bytes:
    import numpy as np

    return png_bytes(np.full((8, 16, 3), value, dtype=np.uint8))


@pytest.fixture
def log(log):
    """conftest's log (ann, root) and another annotator, SECRET."""
    engine, url, tokens, users = log
    tokens[SECRET] = accounts.add_annotator(engine, SECRET)
    users[SECRET] = accounts.authenticate(engine, tokens[SECRET])
    return log


def render(module: str, url: str, user: dict) -> AppTest:
    def script(module, url, user):
        import importlib

        from db.engine import connect

        importlib.import_module(f"annotator.{module}").render(connect(url), user)

    return AppTest.from_function(script, args=(module, url, user), default_timeout=60).run()


def signed_in(token: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.text_input[0].input(token)
    at.button[0].click().run()
    return at


def shown_text(at: AppTest) -> str:
    """Every string the page drew (values, labels, captions, tables)."""
    parts = []
    for kind in ("title", "header", "subheader", "text", "caption", "markdown", "info", "warning", "error",
                 "success", "code", "json"):
        parts += [str(e.value) for e in getattr(at, kind)]
    parts += [f"{m.label} {m.value}" for m in at.metric]
    parts += [b.label for b in at.button]
    parts += [d.value.to_string() for d in at.dataframe]
    parts += [str(e.label) for e in at.expander]
    return "\n".join(parts)


def busy_log(engine, users) -> tuple[int, int]:
    """A running run with a render, a pair the other annotator voted on, and one open pair."""
    run_id = runs.create_run(engine, "a red cube", status="running")
    voted = pairs.post_pair(engine, run_id, 0, png(1), png(2), render_image=png(3), votes_needed=2)
    queue.claim_pair(engine, voted, users[SECRET]["id"])
    votes.vote(engine, voted, users[SECRET]["id"], "a")
    votes.record_model_comparison(engine, run_id, 1, png(4), png(5), "toy-reward", "b", 0.1, 0.3)
    return run_id, voted


# ----------------------------------------------------------------------------- pages
@pytest.mark.parametrize("module", ["audit_page", "arena_page", "export_page", "admin_page"])
def test_admin_pages_refuse_an_annotator_and_open_for_an_admin(log, module):
    engine, url, _, users = log
    busy_log(engine, users)
    at = render(module, url, users["ann"])
    assert not at.exception
    assert at.error and "admins only" in at.error[0].value
    assert not at.dataframe and not at.button and not at.metric and SECRET not in shown_text(at)
    at = render(module, url, users["root"])
    assert not at.exception and not at.error


@pytest.mark.parametrize("module", ["annotate_page", "runs_page"])
def test_an_annotator_never_sees_another_annotators_identity_or_numbers(log, module):
    engine, url, _, users = log
    busy_log(engine, users)
    at = render(module, url, users["ann"])
    assert not at.exception
    text = shown_text(at)
    assert SECRET not in text and "root" not in text
    if module == "annotate_page":  # the counts an annotator sees are theirs or the queue's
        [counts] = [c.value for c in at.caption if "Done today" in c.value]
        assert re.search(r"(^|· )Done today: 0 · waiting in the queue: \d+ · live runs waiting on people: \d+$", counts)


def test_text_from_the_log_is_never_markdown_on_the_runs_page(log):
    engine, url, _, users = log
    runs.create_run(engine, MARKDOWN, backbone=MARKDOWN, judge_policy={"judge": MARKDOWN}, status="running")
    at = render("runs_page", url, users["root"])
    assert any(MARKDOWN in t.value for t in at.text)
    assert sum(MARKDOWN in t.value for t in at.text) == 2  # the prompt, and the backbone/judge line
    for kind in ("markdown", "caption", "subheader", "info", "warning", "error"):
        assert not any("](http" in str(e.value) for e in getattr(at, kind)), kind


def test_markdown_escaping_keeps_the_characters():
    from annotator.plain import md

    assert md("a_b") == "a\\_b"
    escaped = md(MARKDOWN)
    assert re.sub(r"\\(.)", r"\1", escaped) == MARKDOWN  # unescaping gives back exactly the text
    assert not re.search(r"(?<!\\)[\[\]()*:$]", escaped)  # no active markdown character is left


# ----------------------------------------------------------------------------- QC pairs
def pair_look(at: AppTest) -> dict:
    """What an annotator sees of a pair, with the numbers (ids) blanked."""
    def blank(s):
        return re.sub(r"\d+", "#", str(s))

    return {"captions": [blank(c.value) for c in at.caption], "texts": [t.value for t in at.text],
            "buttons": [b.label for b in at.button], "expanders": [e.label for e in at.expander],
            "images": len(at.get("imgs")), "metrics": [m.label for m in at.metric]}


@pytest.mark.parametrize("kind", ["gold", "duplicate"])
def test_qc_pairs_look_exactly_like_live_pairs(log, kind):
    engine, url, _, users = log
    run_id = runs.create_run(engine, "a red cube", question="Which is redder?", status="running")
    live = pairs.post_pair(engine, run_id, 7, png(10), png(200), render_image=png(90), question="Which is redder?")
    at = render("annotate_page", url, users["ann"])
    assert at.session_state["pair"]["pair_id"] == live
    live_look = pair_look(at)
    at.button(key="vote-left").click().run()  # decides the live pair
    if kind == "gold":
        qc_pair = qc.post_gold_pair(engine, run_id, png(30), png(40), "a", question="Which is redder?")
    else:
        qc_pair = qc.post_swapped_duplicate(engine, live)
    at = render("annotate_page", url, users["root"])  # a fresh page, as the live pair was seen
    assert at.session_state["pair"]["pair_id"] == qc_pair
    assert pair_look(at) == live_look
    assert "step" not in " ".join(c.value for c in at.caption)  # gold pairs have step -1


# ----------------------------------------------------------------------------- deactivated accounts
def standing(engine, pair_id: int, annotator_id: int) -> list:
    with engine.connect() as c:
        return c.execute(sa.select(Vote.choice, Vote.retracted).where(
            Vote.pair_id == pair_id, Vote.annotator_id == annotator_id)).all()


def test_a_deactivated_account_can_do_nothing_through_the_api(log):
    engine, _, _, users = log
    me = users["ann"]["id"]
    run_id = runs.create_run(engine, "p", status="running")
    voted = pairs.post_pair(engine, run_id, 0, png(1), png(2), votes_needed=2)
    held = pairs.post_pair(engine, run_id, 1, png(3), png(4), votes_needed=2)
    fresh = pairs.post_pair(engine, run_id, 2, png(5), png(6))
    queue.claim_pair(engine, voted, me)
    votes.vote(engine, voted, me, "a")
    queue.claim_pair(engine, held, me)
    accounts.deactivate(engine, "ann")
    calls = {"undo": lambda: votes.undo_vote(engine, voted, me), "release": lambda: queue.release(engine, held, me),
             "vote": lambda: votes.vote(engine, held, me, "b"), "claim_next": lambda: queue.claim_next(engine, me),
             "claim_pair": lambda: queue.claim_pair(engine, fresh, me)}
    for call in calls.values():
        with pytest.raises(AccountInactive, match="deactivated"):
            call()
    assert standing(engine, voted, me) == [("a", False)]  # the vote stands, not retracted
    assert standing(engine, held, me) == []  # no skip row either
    assert accounts.authenticate(engine, log[2]["ann"]) is None


def test_a_deactivated_account_with_its_page_open_cannot_undo_and_sees_no_traceback(log):
    engine, _, tokens, users = log
    run_id = runs.create_run(engine, "p", status="running")
    pair = pairs.post_pair(engine, run_id, 0, png(1), png(2), votes_needed=2)
    at = signed_in(tokens["ann"])
    at.button(key="vote-tie").click().run()
    assert standing(engine, pair, users["ann"]["id"]) == [("tie", False)]
    accounts.deactivate(engine, "ann")
    at.button(key="undo").click().run()
    assert not at.exception
    assert standing(engine, pair, users["ann"]["id"]) == [("tie", False)]
    assert any("deactivated" in e.value for e in at.error)  # back at the sign-in form, with the reason
    assert not [b for b in at.button if b.key and str(b.key).startswith("vote-")]


def test_a_deactivated_account_with_a_pair_shown_cannot_skip_or_vote(log):
    engine, _, tokens, users = log
    run_id = runs.create_run(engine, "p", status="running")
    pair = pairs.post_pair(engine, run_id, 0, png(1), png(2))
    for button in ("vote-skip", "vote-left"):
        at = signed_in(tokens["ann"])
        accounts.deactivate(engine, "ann")
        at.button(key=button).click().run()
        assert not at.exception
        assert standing(engine, pair, users["ann"]["id"]) == []
        assert any("deactivated" in e.value for e in at.error)
        accounts.activate(engine, "ann")


# ----------------------------------------------------------------------------- names
def test_names_are_unique_without_regard_to_case_and_accounts_reactivate(log, capsys):
    engine, url, tokens, _ = log
    for name in ("ANN", "Ann", "aNn"):
        with pytest.raises(LogError, match="already exists"):
            accounts.add_annotator(engine, name)
    assert main(["annotators", "deactivate", "ANN", "--db", url]) == 0
    assert accounts.authenticate(engine, tokens["ann"]) is None
    assert main(["annotators", "activate", "Ann", "--db", url]) == 0
    assert "activated ann" in capsys.readouterr().out
    assert accounts.authenticate(engine, tokens["ann"])["name"] == "ann"
    assert [a["name"] for a in accounts.list_annotators(engine)] == ["ann", "root", SECRET]


def test_the_admin_page_reactivates_an_account(log):
    engine, url, tokens, users = log
    accounts.deactivate(engine, SECRET)
    at = render("admin_page", url, users["root"])
    form = [s for s in at.selectbox if s.label == "Reactivate"]
    assert form and form[0].options == [SECRET]
    at.button(key="FormSubmitter:reactivate-Reactivate").click().run()
    assert accounts.authenticate(engine, tokens[SECRET])["name"] == SECRET


# ----------------------------------------------------------------------------- a real browser


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian chromium at /usr/bin/chromium (make system-deps)")
    pytest.importorskip("playwright")
    from dreamdpo.commands.annotate import start_app, stop_app, wait_ready

    url = f"sqlite:///{tmp_path_factory.mktemp('roles') / 'log.sqlite'}"
    engine = connect(url)
    tokens = {n: accounts.add_annotator(engine, n, admin=n == "root") for n in ("ann", "root")}
    runs.create_run(engine, MARKDOWN, backbone=MARKDOWN, status="running")
    port = free_port()
    proc = start_app(url, port)
    try:
        wait_ready(proc, port, timeout=180)
        yield f"http://127.0.0.1:{port}", tokens
    finally:
        stop_app(proc)


def nav_links(page) -> set[str]:
    page.locator("[data-testid=stSidebarNav] a").first.wait_for(timeout=60_000)
    return {t.strip() for t in page.locator("[data-testid=stSidebarNav] a").all_inner_texts()}


def heading(page, title: str):
    return page.locator("h2", has_text=re.compile(rf"^\s*{title}\s*$"))


def go(page, path: str) -> None:
    """Open /path inside the running app (what a link or a typed URL in the open session does)."""
    page.evaluate(f"window.history.pushState(null, '', '/{path}'); "
                  "window.dispatchEvent(new PopStateEvent('popstate'))")


@pytest.mark.browser
def test_admin_pages_are_not_in_an_annotators_navigation_and_their_urls_lead_nowhere(served, browser):
    base, tokens = served
    context, page = sign_in(browser, f"{base}/audit", tokens["ann"], 120_000, wait=True)  # a fresh load of an admin URL
    try:
        heading(page, "Annotate").wait_for(timeout=60_000)
        assert nav_links(page) == {"Annotate", "Runs"}
        for path in ("audit", "arena", "export", "admin"):
            def sent_back(path=path):
                # read in the page: Playwright's page.url only follows the app's history changes while a
                # Playwright call runs, so polling it between sleeps never saw the app send them back
                # (every path used all 30 tries: 250 s)
                return not page.evaluate("location.pathname").rstrip("/").endswith(path)

            for _ in range(30):  # a popstate that lands during a rerun can be dropped: ask again
                go(page, path)
                try:
                    until(sent_back, f"not sent back from /{path}", timeout=2.0)
                    break
                except AssertionError:
                    assert heading(page, path.capitalize()).count() == 0
            assert sent_back()  # the app sent them back to its default page
            heading(page, "Annotate").wait_for(timeout=60_000)
            assert heading(page, path.capitalize()).count() == 0
    finally:
        context.close()


@pytest.mark.browser
def test_admins_reach_the_same_urls(served, browser):
    base, tokens = served
    context, page = sign_in(browser, base, tokens["root"], 120_000, wait=True)
    try:
        assert nav_links(page) == {"Annotate", "Runs", "Audit", "Arena", "Export", "Admin"}
        for path in ("audit", "arena", "export", "admin"):
            go(page, path)
            heading(page, path.capitalize()).wait_for(timeout=60_000)
    finally:
        context.close()


@pytest.mark.browser
def test_a_markdown_link_from_the_log_is_not_a_link(served, browser):
    base, tokens = served
    context, page = sign_in(browser, base, tokens["ann"], 120_000, wait=True)
    try:
        page.locator("[data-testid=stSidebarNav] a", has_text="Runs").click()
        page.get_by_text(MARKDOWN).first.wait_for(timeout=60_000)
        assert page.locator("a[href*='evil.example']").count() == 0
        assert page.locator("strong", has_text="bold").count() == 0
    finally:
        context.close()
