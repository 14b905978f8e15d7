"""AppTest tests of the arena in the app, on a real SQLite log: an admin posts arena pairs and reads
the leaderboard on the Arena page; an annotator gets an arena pair in Annotate (both runs' turntable
views, no run's render as context) and its per-criterion choices are stored beside the vote."""
from __future__ import annotations

from db import arena
from test_app import page
from test_arena import PROMPT, arena_pairs, finished_run


def test_the_arena_page_posts_pairs_and_shows_the_leaderboard(log):
    engine, url, _, users = log
    for tau in (0.0, 0.1, 0.2):
        finished_run(engine, tau)
    at = page("arena_page", url, users["root"]).run()
    assert not at.exception
    assert "No arena votes yet" in at.info[0].value
    at.number_input[0].set_value(3)
    at.number_input[1].set_value(1)
    at.button[0].click().run()  # Post pairs
    assert not at.exception and "Posted 3 arena pair(s)" in at.success[0].value
    posted = arena_pairs(engine)
    assert len(posted) == 3 and {p["votes_needed"] for p in posted} == {1}
    from db import accounts, queue, runs, votes

    person = accounts.authenticate(engine, accounts.add_annotator(engine, "p"))["id"]
    for p in posted:  # the higher τ wins
        queue.claim_pair(engine, p["id"], person)
        tau = {r: runs.get_run(engine, r)["config"]["dpo"]["tau"] for r in (p["run_id"], p["run_b_id"])}
        votes.vote(engine, p["id"], person, "a" if tau[p["run_id"]] > tau[p["run_b_id"]] else "b")
    at.run()
    at.selectbox(key="arena-baseline").select("dpo.tau=0").run()
    assert not at.exception
    table, rates, counts = (d.value for d in at.dataframe)
    assert list(table.index) == ["dpo.tau=0.2", "dpo.tau=0.1", "dpo.tau=0"]
    assert table.loc["dpo.tau=0", "rating"] == 1000
    assert rates.loc["dpo.tau=0.2", "dpo.tau=0"] == 1.0 and counts.loc["dpo.tau=0.1", "dpo.tau=0"] == 1
    assert "3 votes" in at.caption[0].value and "anchored to dpo.tau=0 = 1000" in at.caption[0].value


def test_an_arena_pair_in_annotate_stores_its_criteria_with_the_vote(log):
    engine, url, _, users = log
    finished_run(engine, 0.0), finished_run(engine, 0.1)
    [pair_id] = arena.post_arena_pairs(engine, PROMPT, votes_needed=1, seed=0)
    at = page("annotate_page", url, users["ann"]).run()
    assert not at.exception
    pair = at.session_state["pair"]
    assert pair["pair_id"] == pair_id and pair["kind"] == "arena" and pair["context"] is None
    assert [t.value for t in at.text][:2] == [PROMPT, arena.QUESTION]
    at.radio(key=f"criterion-{pair_id}-plausibility").set_value("Left")
    at.radio(key=f"criterion-{pair_id}-overall").set_value("Tie")
    at.button(key="vote-right").click().run()
    assert not at.exception
    shown_left = pair["shown_left"]
    right = "b" if shown_left == "a" else "a"
    [vote] = arena.arena_comparisons(engine).to_dict("records")
    assert vote["winner"] == right
    from db.read import votes_frame

    vote_id = int(votes_frame(engine)["vote_id"].iloc[-1])
    assert arena.criteria_of(engine, vote_id) == {"plausibility": shown_left, "overall": "tie"}
    assert "with 2 criteria" in at.session_state["ack"]
