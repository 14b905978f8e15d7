"""db.queue.vote_and_claim_next: a vote and the next claim in one transaction (the Annotate page's call
after each vote), on a SQLite file and on a real PostgreSQL. Same rules as vote() then claim_next();
the many-process guarantees are in tests/test_db_concurrency.py."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from db import accounts, queue, runs, votes
from db.errors import LogError
from db.models import Claim, Decision, Pair, Vote
from tests.test_db_queue import count, person, post, run_out


@pytest.fixture()
def run(engine):
    rid = runs.create_run(engine, "a red cube")
    runs.set_run_status(engine, rid, "running")
    return rid


def test_the_vote_is_stored_and_the_next_pair_comes_back(engine, run):
    first, second = post(engine, run, 1), post(engine, run, 2, kind="gold", gold_answer="a")
    me = person(engine, "ann")
    claim = queue.claim_next(engine, me)
    got = queue.vote_and_claim_next(engine, claim["pair_id"], me, "b", shown_left="b", latency_ms=700)
    assert got["vote"]["decided"] and got["vote"]["decision"]["winner"] == "b"
    nxt = got["next"]
    assert (nxt["pair_id"], nxt["tier"]) == (second, "audit_and_qc_pairs")
    assert nxt.keys() == claim.keys()  # everything the page needs, as claim_next gives it
    assert nxt["image_a"] != claim["image_a"] and nxt["prompt"] == "a red cube" and nxt["votes_in"] == 0
    with engine.connect() as conn:
        assert conn.execute(sa.select(Vote.choice, Vote.shown_left, Vote.latency_ms)
                            .where(Vote.pair_id == first)).one() == ("b", "b", 700)
        assert conn.execute(sa.select(Pair.status).where(Pair.id == first)).scalar_one() == "decided"
        assert conn.execute(sa.select(Claim.annotator_id).where(Claim.pair_id == second)).scalar_one() == me
    # the last pair: nothing comes next
    last = queue.vote_and_claim_next(engine, second, me, "a")
    assert last["next"] is None and last["vote"]["decided"]
    assert count(engine, Decision) == 2


def test_a_pair_needing_more_votes_is_decided_by_the_last_one(engine, run):
    pid = post(engine, run, 1, votes_needed=2)
    a, b = person(engine, "ann"), person(engine, "bob")
    queue.claim_next(engine, a), queue.claim_next(engine, b)
    got = queue.vote_and_claim_next(engine, pid, a, "tie")
    assert got == {"vote": {"vote_id": got["vote"]["vote_id"], "decided": False, "decision": None}, "next": None}
    assert votes.undo_vote(engine, pid, a)  # undo still works: the lease is kept after the vote
    queue.vote_and_claim_next(engine, pid, a, "a")
    d = queue.vote_and_claim_next(engine, pid, b, "a")["vote"]["decision"]
    assert (d["winner"], d["rule"], d["n_a"]) == ("a", "unanimous", 2)


def test_the_same_vote_again_is_the_same_vote_and_a_held_pair_comes_next(engine, run):
    """Idempotent (a double click): the existing vote, no second row; the pair claimed by the first call is
    given back as held, not a new one."""
    first, second, _third = post(engine, run, 1), post(engine, run, 2), post(engine, run, 3)
    me = person(engine, "ann")
    queue.claim_next(engine, me)
    once = queue.vote_and_claim_next(engine, first, me, "a")
    again = queue.vote_and_claim_next(engine, first, me, "a")
    assert again["vote"] == once["vote"] and count(engine, Vote) == 1
    assert (once["next"]["pair_id"], again["next"]["pair_id"], again["next"]["tier"]) == (second, second, "held_lease")
    with pytest.raises(LogError, match="already voted"):
        queue.vote_and_claim_next(engine, first, me, "b")


def test_a_refused_vote_claims_nothing(engine, run):
    first, second = post(engine, run, 1), post(engine, run, 2)
    a, b = person(engine, "ann"), person(engine, "bob")
    with pytest.raises(LogError, match="no valid lease"):
        queue.vote_and_claim_next(engine, first, a, "a")  # never claimed
    with pytest.raises(LogError, match="choice"):
        queue.vote_and_claim_next(engine, first, a, "left")
    with pytest.raises(LogError, match="does not exist"):
        queue.vote_and_claim_next(engine, 10_000, a, "a")
    queue.claim_next(engine, a)
    run_out(engine, Pair.deadline, first)
    with pytest.raises(LogError, match="expired"):  # the expiry is kept, the vote refused
        queue.vote_and_claim_next(engine, first, a, "a")
    queue.claim_next(engine, b)
    accounts.deactivate(engine, "bob")
    with pytest.raises(LogError, match="deactivated"):
        queue.vote_and_claim_next(engine, second, b, "a")
    assert count(engine, Vote) == 0
    with engine.connect() as conn:  # no lease was taken by the refused calls
        leases = conn.execute(sa.select(Claim.pair_id, Claim.annotator_id).order_by(Claim.pair_id)).all()
        assert conn.execute(sa.select(Pair.status).where(Pair.id == first)).scalar_one() == "expired"
    assert leases == [(first, a), (second, b)]


def test_at_most_k_holders_through_the_combined_call(engine, run):
    """The next claim obeys the k-holder rule: a pair two people hold is not handed to a third."""
    first, shared = post(engine, run, 1), post(engine, run, 2, votes_needed=2)
    a, b, c = (person(engine, n) for n in ("a1", "a2", "a3"))
    assert queue.claim_next(engine, a)["pair_id"] == first
    assert queue.claim_next(engine, b)["pair_id"] == shared
    assert queue.claim_next(engine, c)["pair_id"] == shared
    assert queue.vote_and_claim_next(engine, first, a, "a")["next"] is None  # b and c hold the shared pair
    queue.release(engine, shared, c)
    later = post(engine, run, 3)
    assert queue.vote_and_claim_next(engine, shared, b, "a")["next"]["pair_id"] == later
