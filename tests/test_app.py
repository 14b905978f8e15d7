"""AppTest tests of the annotator app on a real SQLite log (keys and timers are in test_browser.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from streamlit.testing.v1 import AppTest

from db import accounts, images, pairs, queue, runs, votes
from db.models import Pair, Vote
from dreamdpo.images import png_bytes

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "annotator" / "app.py")
XSS = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'


def png(value: int) -> bytes:
    import numpy as np

    return png_bytes(np.full((8, 16, 3), value, dtype=np.uint8))


def page(module: str, url: str, user: dict):
    def script(module, url, user):
        import importlib

        from db.engine import connect

        importlib.import_module(f"annotator.{module}").render(connect(url), user)

    return AppTest.from_function(script, args=(module, url, user), default_timeout=120)


def texts(at) -> list[str]:
    return [t.value for t in at.text]


def run_with_pair(engine, prompt="a red cube", question="Which is redder?", votes_needed=1):
    run_id = runs.create_run(engine, prompt, question=question, status="running")
    pair_id = pairs.post_pair(engine, run_id, 0, png(10), png(200), render_image=png(90), votes_needed=votes_needed)
    return run_id, pair_id


def count_images(node) -> int:
    """Images drawn under `node` (at.get("imgs") does not see st.image in this Streamlit)."""
    own = int(getattr(node, "type", None) == "image")
    return own + sum(count_images(c) for c in getattr(node, "children", {}).values())


def stored_votes(engine, pair_id):
    with engine.connect() as c:
        return c.execute(sa.select(Vote.choice, Vote.shown_left, Vote.latency_ms, Vote.retracted)
                         .where(Vote.pair_id == pair_id, Vote.annotator_id.is_not(None))).all()


@pytest.mark.parametrize("token", ["", "not-a-token"])
def test_no_valid_token_no_page(log, token):
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not any(h.value == "Annotate" for h in at.header)
    at.text_input[0].input(token)
    at.button[0].click().run()
    assert "not valid" in at.error[0].value
    assert not any(h.value == "Annotate" for h in at.header)


def test_deactivated_token_is_refused_even_mid_session(log):
    engine, url, tokens, _ = log
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.text_input[0].input(tokens["ann"])
    at.button[0].click().run()
    assert any(h.value == "Annotate" for h in at.header)
    accounts.deactivate(engine, "ann")
    at.run()
    assert not any(h.value == "Annotate" for h in at.header)
    assert "no longer valid" in at.error[0].value
    at.text_input[0].input(tokens["ann"])
    at.button[0].click().run()
    assert "not valid" in at.error[0].value


def test_login_shows_annotate_and_admin_only_for_admins(log):
    _, _, tokens, _ = log
    for name in ("ann", "root"):
        at = AppTest.from_file(APP, default_timeout=120).run()
        at.text_input[0].input(tokens[name])
        at.button[0].click().run()
        assert [h.value for h in at.header] == ["Annotate"]
        assert any(f"Signed in as {name}" in c.value for c in at.sidebar.caption)
    assert page("admin_page", log[1], log[3]["ann"]).run().error[0].value == "This page is for admins only."


def test_empty_queue_message(log):
    engine, url, _, users = log
    at = page("annotate_page", url, users["ann"]).run()
    assert "No pairs are waiting for you" in at.info[0].value
    assert not [b for b in at.button if b.key and b.key.startswith("vote-")]


@pytest.mark.parametrize("button", ["left", "right", "tie", "both_bad"])
def test_buttons_write_the_right_vote_with_the_shown_order(log, button):
    engine, url, _, users = log
    _, pair_id = run_with_pair(engine)
    at = page("annotate_page", url, users["ann"]).run()
    shown_left = at.session_state["pair"]["shown_left"]
    assert shown_left in ("a", "b")
    at.button(key=f"vote-{button}").click().run()
    expected = {"left": shown_left, "right": "b" if shown_left == "a" else "a"}.get(button, button)
    [(choice, logged_left, latency, retracted)] = stored_votes(engine, pair_id)
    assert (choice, logged_left, retracted) == (expected, shown_left, False)
    assert latency is not None and latency >= 0
    assert votes.get_decision(engine, pair_id) is not None
    assert "No pairs are waiting for you" in at.info[0].value  # the queue is empty again


def test_sides_are_randomized_across_pairs(log):
    engine, url, _, users = log
    run_id = runs.create_run(engine, "p", status="running")
    for step in range(24):
        pairs.post_pair(engine, run_id, step, png(step), png(255 - step))
    at = page("annotate_page", url, users["ann"]).run()
    seen = set()
    for _ in range(24):
        seen.add(at.session_state["pair"]["shown_left"])
        at.button(key="vote-tie").click().run()
    assert seen == {"a", "b"}


def test_skip_releases_and_the_pair_is_not_offered_again(log):
    engine, url, _, users = log
    run_id, pair_id = run_with_pair(engine)
    other = pairs.post_pair(engine, run_id, 1, png(3), png(4))
    at = page("annotate_page", url, users["ann"]).run()
    assert at.session_state["pair"]["pair_id"] == pair_id
    assert queue.claim_next(engine, users["root"]["id"])["pair_id"] == other  # someone else is online
    at.button(key="vote-skip").click().run()
    assert "No pairs are waiting for you" in at.info[0].value
    assert any("it goes to the next person" in c.value for c in at.caption)
    assert votes.get_decision(engine, pair_id) is None
    votes.vote(engine, other, users["root"]["id"], "a")
    assert queue.claim_next(engine, users["root"]["id"])["pair_id"] == pair_id


def test_skip_with_nobody_else_online_hands_the_pair_to_the_run_at_once(log):
    engine, url, _, users = log
    _, pair_id = run_with_pair(engine)
    at = page("annotate_page", url, users["ann"]).run()
    at.button(key="vote-skip").click().run()
    assert any("nobody else is online" in c.value for c in at.caption)
    with engine.connect() as c:
        assert c.execute(sa.select(Pair.status).where(Pair.id == pair_id)).scalar() == "expired"
    assert queue.claim_next(engine, users["root"]["id"]) is None


def skip_rows(engine, pair_id):
    with engine.connect() as c:
        return c.execute(sa.select(Vote.choice, Vote.raw, Vote.shown_left).where(
            Vote.pair_id == pair_id, Vote.annotator_id.is_not(None))).all()


def test_skip_without_a_reason_stores_none(log):
    engine, url, _, users = log
    _, pair_id = run_with_pair(engine)
    at = page("annotate_page", url, users["ann"]).run()
    shown_left = at.session_state["pair"]["shown_left"]
    at.button(key="vote-skip").click().run()
    assert skip_rows(engine, pair_id) == [("skip", None, shown_left)]


def test_skip_with_a_preset_reason_is_stored_and_shown_as_text(log):
    from annotator.annotate_page import SKIP_REASONS

    engine, url, _, users = log
    _, pair_id = run_with_pair(engine)
    at = page("annotate_page", url, users["ann"]).run()
    assert at.session_state["pair"]["pair_id"] == pair_id
    at.button(key="skip-reason-1").click().run()
    assert [tuple(r)[:2] for r in skip_rows(engine, pair_id)] == [("skip", SKIP_REASONS[1])]
    assert any(f"Skipped pair {pair_id} (reason: {SKIP_REASONS[1]})" in c.value for c in at.caption)
    assert f"pair {pair_id}: Skip ({SKIP_REASONS[1]})" in " ".join(texts(at))  # the person's own list
    assert "No pairs are waiting for you" in at.info[0].value


def test_skip_with_own_words_is_one_bounded_line_never_markdown(log):
    from db.votes import SKIP_REASON_MAX

    engine, url, _, users = log
    run_id, pair_id = run_with_pair(engine)
    other = pairs.post_pair(engine, run_id, 1, png(3), png(4))
    at = page("annotate_page", url, users["ann"]).run()
    typed = "  **bold**   [a link](http://x) " + XSS  # the field takes SKIP_REASON_MAX characters, one line
    assert at.text_input(key="skip-other-text").max_chars == SKIP_REASON_MAX
    at.text_input(key="skip-other-text").input(typed)
    next(b for b in at.button if b.label == "Skip with this reason").click().run()
    [(choice, raw, _)] = skip_rows(engine, pair_id)
    assert choice == "skip" and raw == "**bold** [a link](http://x) " + XSS
    [ack] = [c.value for c in at.caption if c.value.startswith("Last: Skipped")]
    assert "\\*\\*bold\\*\\*" in ack and "\\<script\\>" in ack  # escaped: shown as the characters typed
    assert at.session_state["pair"]["pair_id"] == other
    assert not any("<script>" in m.value and "\\<" not in m.value for m in at.markdown)
    # an empty text skips without a reason
    next(b for b in at.button if b.label == "Skip with this reason").click().run()
    assert skip_rows(engine, other) == [("skip", None, at.session_state["sides"][other])]


def strip(value: int, n: int = 4) -> bytes:
    """A candidate of n 8-px views side by side, view i filled with value + 10 i."""
    import numpy as np

    return png_bytes(np.concatenate([np.full((8, 8, 3), value + 10 * i, np.uint8) for i in range(n)], 1))


def test_a_view_is_zoomed_for_both_candidates_and_closes(log):
    import io

    from PIL import Image

    from annotator.annotate_page import ZOOM_PX
    from annotator.views import view_at

    engine, url, _, users = log
    run_id = runs.create_run(engine, "a red cube", status="running")
    first = pairs.post_pair(engine, run_id, 0, strip(0), strip(100))
    second = pairs.post_pair(engine, run_id, 1, strip(50), strip(150))
    at = page("annotate_page", url, users["ann"]).run()
    assert count_images(at.main) == 2 and not [b for b in at.button if b.key == "nav-close"]
    # what a click on the lower right view of a grid, or the key 2, asks for
    assert view_at(4, 0.9, 0.9) == 3 and view_at(4, 0.1, 0.1) == 0 and view_at(4, 0.8, 0.2) == 1
    at.session_state["zoom"] = {"pair_id": first, "view": 3}
    at.run()
    assert count_images(at.main) == 2 and [b.key for b in at.button if b.key and b.key.startswith("nav-")] == [
        "nav-view-1", "nav-view-2", "nav-view-3", "nav-view-4", "nav-close"]
    assert [c.split(" · ")[:2] for c in captions_of(at.main)] == [["Left (←)", "view 4 of 4"], ["Right (→)", "view 4 of 4"]]
    shown = at.session_state["pair"]["zoomed"]
    assert {k[1] for k in shown} == {3} and len(shown) == 2  # the same view of both candidates
    for png_ in shown.values():
        img = Image.open(io.BytesIO(png_))
        assert img.size == (ZOOM_PX, ZOOM_PX) and img.getpixel((0, 0))[0] in (30, 130)  # view 4: value + 30
    at.button(key="nav-view-2").click().run()
    assert at.session_state["zoom"] == {"pair_id": first, "view": 1}
    at.button(key="vote-tie").click().run()  # votes work while zoomed; the next pair starts with its grids
    assert stored_votes(engine, first)[0][0] == "tie"
    assert at.session_state["pair"]["pair_id"] == second and not [b for b in at.button if b.key == "nav-close"]
    at.session_state["zoom"] = {"pair_id": second, "view": 0}
    at.run()
    at.button(key="nav-close").click().run()
    assert at.session_state["zoom"] is None and not [b for b in at.button if b.key == "nav-close"]


def captions_of(node) -> list[str]:
    """The captions of the images drawn under `node`."""
    own = list(node.captions) if getattr(node, "type", None) == "image" else []
    return own + [c for child in getattr(node, "children", {}).values() for c in captions_of(child)]


def test_undo_while_the_lease_holds_then_vote_again(log):
    engine, url, _, users = log
    _, pair_id = run_with_pair(engine, votes_needed=2)
    at = page("annotate_page", url, users["ann"]).run()
    at.button(key="vote-tie").click().run()
    assert stored_votes(engine, pair_id)[0][0] == "tie"
    assert any("Tie stored for pair" in c.value for c in at.caption)  # the vote is acknowledged
    at.button(key="undo").click().run()
    assert any(f"Vote on pair {pair_id} undone" in c.value for c in at.caption)
    assert at.session_state["pair"]["pair_id"] == pair_id
    assert [r.retracted for r in stored_votes(engine, pair_id)] == [True]
    at.button(key="vote-left").click().run()
    assert [r.retracted for r in stored_votes(engine, pair_id)] == [True, False]


def test_undo_is_not_offered_once_the_pair_is_decided(log):
    engine, url, _, users = log
    _, pair_id = run_with_pair(engine, votes_needed=1)
    at = page("annotate_page", url, users["ann"]).run()
    at.button(key="vote-tie").click().run()
    assert not [b for b in at.button if b.key == "undo"]
    assert [r.retracted for r in stored_votes(engine, pair_id)] == [False]


def test_undo_is_withdrawn_when_the_pair_is_decided_by_someone_else(log):
    engine, url, _, users = log
    _, pair_id = run_with_pair(engine, votes_needed=2)
    at = page("annotate_page", url, users["ann"]).run()
    at.button(key="vote-tie").click().run()
    assert [b for b in at.button if b.key == "undo"]
    queue.claim_pair(engine, pair_id, users["root"]["id"])
    votes.vote(engine, pair_id, users["root"]["id"], "a")
    at.run()
    assert not [b for b in at.button if b.key == "undo"]


def test_own_recent_votes_are_listed(log):
    engine, url, _, users = log
    _, pair_id = run_with_pair(engine)
    at = page("annotate_page", url, users["ann"]).run()
    at.button(key="vote-both_bad").click().run()
    assert any(t.startswith(f"pair {pair_id}: Both bad") and t.endswith("decided") for t in texts(at))


def test_vote_after_the_run_was_cancelled_is_refused_with_a_message(log):
    engine, url, _, users = log
    run_id, pair_id = run_with_pair(engine)
    at = page("annotate_page", url, users["ann"]).run()
    runs.cancel_run(engine, run_id)
    at.button(key="vote-left").click().run()
    assert f"run {run_id} was cancelled" in at.warning[0].value
    assert stored_votes(engine, pair_id) == []


def test_html_in_prompt_and_question_is_text(log):
    engine, url, _, users = log
    run_with_pair(engine, prompt=XSS, question=XSS + " which?")
    at = page("annotate_page", url, users["ann"]).run()
    assert XSS in texts(at) and XSS + " which?" in texts(at)
    assert not any(XSS in m.value for m in at.markdown)


def test_runs_page_controls_are_for_admins_only(log):
    engine, url, _, users = log
    run_id, _ = run_with_pair(engine)
    runs.set_run_status(engine, run_id, None, step=3, metrics={"history": [
        {"step": 0, "loss": 1.0, "gap": 0.5}, {"step": 1, "loss": 0.8, "gap": 1.0}]})
    at = page("runs_page", url, users["ann"]).run()
    assert any("steps waiting on people: 1" in t for t in texts(at))
    assert not [b for b in at.button if b.label in ("Pause", "Resume", "Cancel run")]
    at = page("runs_page", url, users["root"]).run()
    at.button(key=f"pause-{run_id}").click().run()
    assert runs.get_run(engine, run_id)["status"] == "paused"
    at.button(key=f"resume-{run_id}").click().run()
    assert runs.get_run(engine, run_id)["status"] == "running"
    at.button(key=f"cancel-{run_id}").click().run()
    assert runs.get_run(engine, run_id)["status"] == "running"  # asks first
    assert any(f"Cancel run {run_id}?" in w.value for w in at.warning)
    at.button(key=f"cancel-no-{run_id}").click().run()
    assert runs.get_run(engine, run_id)["status"] == "running"
    at.button(key=f"cancel-{run_id}").click().run()
    at.button(key=f"cancel-yes-{run_id}").click().run()
    assert runs.get_run(engine, run_id)["status"] == "cancelled"


def test_runs_page_charts_each_quantity_on_its_own_axis_and_keeps_finished_runs(log):
    engine, url, _, users = log
    run_id, _ = run_with_pair(engine)
    history = [{"step": s, "loss": 4000.0 / (s + 1), "gap": 0.1 * (s % 10), "source": src,
                **({"agreement": 0.5 + s / 100} if s % 5 == 0 else {})}
               for s, src in zip(range(40), ["learned", "human", "toy-reward", "learned"] * 10)]
    first, latest = png(10), png(200)
    with Session(engine) as s, s.begin():
        ids = [images.put_image(s, first), images.put_image(s, latest)]
    runs.set_run_status(engine, run_id, "finished", step=40,
                         metrics={"history": history, "first_preview": ids[0], "preview": ids[1], "turntable": ids[1]})
    at = page("runs_page", url, users["ann"]).run()
    assert at.toggle[0].value  # no live run: finished ones are shown
    assert [c.value for c in at.caption if c.value in ("Loss", "Gap between the candidates (0–1)")] == [
        "Loss", "Gap between the candidates (0–1)"]
    assert any(c.value.startswith("Learned model's agreement") for c in at.caption)
    assert any(c.value.startswith("Share of steps") for c in at.caption)
    assert len(at.get("vega_lite_chart")) == 4  # four charts, four axes
    assert count_images(at.main) == 3  # first render, latest render, turntable
    assert not any("nan" in t.lower() for t in texts(at))


def test_source_shares_sum_to_one_per_window():
    from annotator.runs_page import source_shares

    history = [{"step": s, "source": "human" if s % 4 == 0 else "learned"} for s in range(100)]
    shares = source_shares(history, bins=10)
    assert len(shares) == 10 and (shares.sum(axis=1).round(9) == 1).all()
    assert abs(shares["human"].mean() - 0.25) < 0.01
    assert source_shares([{"step": 0, "loss": 1.0}]).empty


def test_admin_page_creates_and_deactivates_tokens(log):
    engine, url, _, users = log
    at = page("admin_page", url, users["root"]).run()
    at.text_input[0].input("carol")
    at.checkbox[0].uncheck()
    at.button[0].click().run()
    token = at.code[0].value
    assert accounts.authenticate(engine, token)["name"] == "carol"
    at.selectbox[0].select("carol")
    at.button[1].click().run()
    assert accounts.authenticate(engine, token) is None


def count_type(node, kind: str) -> int:
    own = int(getattr(node, "type", None) == kind)
    return own + sum(count_type(c, kind) for c in getattr(node, "children", {}).values())


def test_export_downloads_stay_after_a_rerun(log):
    engine, url, _, users = log
    _, pair_id = run_with_pair(engine)
    queue.claim_pair(engine, pair_id, users["ann"]["id"])
    votes.vote(engine, pair_id, users["ann"]["id"], "a")
    at = page("export_page", url, users["root"]).run()
    assert count_type(at.main, "download_button") == 0
    at.button[0].click().run()
    assert not at.exception and count_type(at.main, "download_button") == 2
    at.run()  # any other rerun (a download, a filter change) keeps both downloads
    assert count_type(at.main, "download_button") == 2
    assert "comparisons" in at.json[0].value


def test_the_empty_queue_shows_the_demos_preparation(log, tmp_path, monkeypatch):
    _, url, _, users = log
    marker = tmp_path / "preparing.txt"
    marker.write_text("12 54")
    monkeypatch.setenv("DREAMDPO_PREPARING", str(marker))
    at = page("annotate_page", url, users["ann"]).run()
    [bar] = at.get("progress")
    assert "12 of 54 layouts" in bar.proto.text and abs(bar.proto.value - 22) <= 1
    marker.unlink()
    at.run()
    assert not at.get("progress") and "No pairs are waiting for you" in at.info[0].value


def test_an_admin_edits_a_runs_instructions_and_annotators_see_them_as_text(log):
    engine, url, _, users = log
    run_id, _ = run_with_pair(engine)
    at = page("annotate_page", url, users["ann"]).run()
    assert any("Tie (T): both are equally good" in t for t in texts(at))  # the default says what each answer does
    at = page("runs_page", url, users["root"]).run()
    at.text_area(key=f"instructions-{run_id}").input("Prefer **sharp** edges. " + XSS)
    at.button(key=f"save-instructions-{run_id}").click().run()
    at = page("annotate_page", url, users["ann"]).run()
    assert "Prefer **sharp** edges. " + XSS in texts(at)
    assert not [a for a in page("runs_page", url, users["ann"]).run().text_area]  # annotators cannot edit


def test_a_stalled_run_says_so_and_how_to_resume_it(log):
    from datetime import timedelta

    from db.models import Run, utcnow

    engine, url, _, users = log
    run_id, _ = run_with_pair(engine)
    with engine.begin() as conn:  # the process died 7 minutes ago (kill -9): the log still says running
        conn.execute(sa.update(Run).where(Run.id == run_id).values(heartbeat_at=utcnow() - timedelta(minutes=7)))
    at = page("runs_page", url, users["ann"]).run()
    assert any("stalled (no sign of life for 7 min)" in w.value and "--resume" in w.value for w in at.warning)
    assert not at.code  # the command is for admins
    at = page("runs_page", url, users["root"]).run()
    assert any("--resume" in c.value for c in at.code)
    assert not [b for b in at.button if b.label == "Pause"] and at.button(key=f"cancel-{run_id}")
    assert runs.get_run(engine, run_id)["stored_status"] == "running"
    runs.set_run_status(engine, run_id, None, step=1, heartbeat=True)  # resumed: it beats again
    assert not page("runs_page", url, users["ann"]).run().warning
