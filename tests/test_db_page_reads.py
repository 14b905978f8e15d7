"""The reads and the one write the app's pages make through db/ (no SQL in annotator/): a person's
recent votes and a run's latest render (db/recent.py), the waiting pairs per run (db/feedback.py),
the account a session cookie is checked against (db/accounts.py), a run's config key (db/runs.py)."""
from __future__ import annotations

from datetime import timedelta

import pytest

from db import accounts, feedback, queue, runs, votes
from db.errors import LogError
from db.models import utcnow
from db.recent import latest_render, recent_votes
from test_db_queue import person, png, post


@pytest.fixture()
def run(engine):
    rid = runs.create_run(engine, "a red cube", config={"lr": 0.01})
    runs.set_run_status(engine, rid, "running")
    return rid


def vote(engine, pair_id, annotator_id, choice):
    assert queue.claim_pair(engine, pair_id, annotator_id) is not None
    return votes.vote(engine, pair_id, annotator_id, choice, shown_left="a")


def test_recent_votes_are_the_persons_own_newest_first_with_the_outcome(engine, run):
    ann, other = person(engine, "ann"), person(engine, "bob")
    first, second, third = post(engine, run, 1), post(engine, run, 2, votes_needed=2), post(engine, run, 3)
    vote(engine, first, ann, "a")
    vote(engine, second, ann, "b")
    vote(engine, third, other, "tie")
    mine = recent_votes(engine, ann)
    assert [v["pair_id"] for v in mine] == [second, first]
    assert [(v["choice"], v["winner"], v["retracted"]) for v in mine] == [("b", None, False), ("a", "a", False)]
    assert set(mine[0]) == {"pair_id", "choice", "shown_left", "created_at", "retracted", "winner", "reason"}
    assert [v["pair_id"] for v in recent_votes(engine, ann, n=1)] == [second]
    assert recent_votes(engine, person(engine, "new")) == []


def test_latest_render_is_the_runs_newest_pair_with_one(engine, run):
    assert latest_render(engine, run) is None
    post(engine, run, 1, render_image=png(100))
    post(engine, run, 2, render_image=png(101))
    post(engine, run, 3)  # a QC-like pair without a render does not hide the run's latest one
    assert latest_render(engine, run) == png(101)
    other = runs.create_run(engine, "a blue sphere")
    assert latest_render(engine, other) is None


def test_waiting_pairs_by_run_counts_what_waiting_pairs_counts(engine, run):
    other = runs.create_run(engine, "a blue sphere")
    post(engine, run, 1, deadline=utcnow() + timedelta(hours=1))
    post(engine, run, 2)
    post(engine, run, 3, deadline=utcnow() - timedelta(seconds=1))  # past its deadline
    post(engine, run, 4, kind="gold", gold_answer="a")  # not a live pair
    decided = post(engine, other, 1)
    vote(engine, decided, person(engine, "ann"), "a")
    post(engine, other, 2)
    by_run = feedback.waiting_pairs_by_run(engine)
    assert by_run == {run: 2, other: 1}
    assert all(feedback.waiting_pairs(engine, r) == n for r, n in by_run.items())


def test_session_account_is_the_active_account_with_its_token_hash(engine):
    token = accounts.add_annotator(engine, "ann")
    ann = accounts.authenticate(engine, token)
    got = accounts.session_account(engine, ann["id"])
    assert got == {**ann, "token_hash": accounts.token_hash(token)}
    assert accounts.token_hash_of(engine, ann["id"]) == accounts.token_hash(token)
    accounts.deactivate(engine, "ann")
    assert accounts.session_account(engine, ann["id"]) is None
    assert accounts.session_account(engine, 10_000) is None


def test_set_run_config_sets_and_removes_one_key(engine, run):
    runs.set_run_config(engine, run, "instructions", "Pick the redder one.")
    assert runs.get_run(engine, run)["config"] == {"lr": 0.01, "instructions": "Pick the redder one."}
    runs.set_run_config(engine, run, "instructions", None)
    runs.set_run_config(engine, run, "missing", None)
    assert runs.get_run(engine, run)["config"] == {"lr": 0.01}
    with pytest.raises(LogError, match="run 10000 does not exist"):
        runs.set_run_config(engine, 10_000, "instructions", "x")
