"""PostgreSQL's one-round-trip vote + claim (db/vote_function.py) against the Core path it replaces.

The same scripted session of many people (claims, votes, repeated votes, skips, undos, releases, expired
leases and deadlines, a cancelled run, a deactivated account) is played on two fresh PostgreSQL logs, one
through the server-side function and one through the Core statements, on the same clock: every answer,
every refusal and every row of the log must come out the same."""
from __future__ import annotations

import itertools
import random
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from db import accounts, consensus, pairs, queue, runs, vote_function, votes
from db import engine as db_engine
from db.errors import LogError
from db.models import Claim, Decision, Pair, Vote
from tests.test_db_queue import png

pytestmark = pytest.mark.postgres


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


def play(url: str, server_side: bool, clock: Clock, seed: int = 7) -> tuple[list, dict]:
    """The scripted session on the log at `url`: (every call's answer or refusal, the log's rows)."""
    eng = db_engine.connect(url)
    if not server_side:
        vote_function.use_core_path(eng)
    assert (vote_function.ready(eng) is not None) == server_side
    rng = random.Random(seed)
    people = [accounts.authenticate(eng, accounts.add_annotator(eng, f"p{i}"))["id"] for i in range(4)]
    run_ids = [runs.create_run(eng, p, question="Which is better?") for p in ("a red cube", "a blue sphere")]
    for r in run_ids:
        runs.set_run_status(eng, r, "running")
    for i in range(40):
        deadline = clock.now + timedelta(seconds=rng.choice([30, 200, 10_000])) if rng.random() < 0.3 else None
        kind = rng.choice(["live", "live", "gold", "audit"])
        pairs.post_pair(eng, run_ids[i % 2], i, png(2 * i), png(2 * i + 1), votes_needed=rng.choice([1, 2, 3]),
                        kind=kind, gold_answer="a" if kind == "gold" else None, deadline=deadline)
    held: dict[int, int | None] = {p: None for p in people}
    log: list = []
    for step in range(300):
        clock.now += timedelta(seconds=rng.choice([0, 1, 2, 5]))
        if step == 150:
            runs.set_run_status(eng, run_ids[1], "cancelled")
        if step == 200:
            accounts.deactivate(eng, "p3")
        me = rng.choice(people)
        op = rng.random()
        try:
            if held[me] is None or op < 0.1:
                claim = queue.claim_next(eng, me, lease_seconds=rng.choice([3, 60]))
                held[me] = None if claim is None else claim["pair_id"]
                log.append(("claim", me, claim))
            elif op < 0.8:
                pid = held[me] if rng.random() < 0.9 else rng.randrange(1, 45)
                choice = rng.choice(["a", "a", "b", "tie", "both_bad", "skip"])
                got = queue.vote_and_claim_next(eng, pid, me, choice, shown_left=rng.choice("ab"),
                                                latency_ms=rng.randrange(100, 5000), lease_seconds=rng.choice([3, 60]))
                held[me] = None if got["next"] is None else got["next"]["pair_id"]
                log.append(("vote_and_claim", me, pid, choice, got))
                if rng.random() < 0.3:  # a double click (the same vote again), or a change of mind (refused)
                    again = rng.choice([choice, choice, "b" if choice == "a" else "a"])
                    log.append(("again", queue.vote_and_claim_next(eng, pid, me, again, lease_seconds=60)))
            elif op < 0.9:
                log.append(("undo", me, votes.undo_vote(eng, rng.randrange(1, 45), me)))
            else:
                pid = held[me]
                queue.release(eng, pid, me)
                held[me] = None
                log.append(("release", me, pid))
        except LogError as e:
            held[me] = None
            log.append(("refused", me, str(e)))
    rows = {}
    with eng.connect() as conn:
        for table, key in ((Vote, Vote.id), (Claim, (Claim.pair_id, Claim.annotator_id)), (Decision, Decision.pair_id),
                           (Pair, Pair.id)):
            cols = [c for c in table.__table__.c if c.name != "created_at"]
            keys = key if isinstance(key, tuple) else (key,)
            rows[table.__tablename__] = conn.execute(sa.select(*cols).order_by(*keys)).all()
    return log, rows


def test_the_server_side_call_answers_and_writes_as_the_core_path(pg_server, monkeypatch):
    answers, logs = {}, {}
    for server_side in (True, False):
        clock = Clock()
        for module in (queue, votes):
            monkeypatch.setattr(module, "utcnow", clock)
        answers[server_side], logs[server_side] = play(pg_server.database(), server_side, clock)
    kinds = [entry[0] for entry in answers[True]]
    # the script reached every kind of answer, refusals included
    assert {"claim", "vote_and_claim", "again", "undo", "release", "refused"} <= set(kinds)
    refusals = " ".join(e[2] for e in answers[True] if e[0] == "refused")
    for why in ("no valid lease", "already voted", "was cancelled", "deactivated", "takes no more votes"):
        assert why in refusals
    results = [e[-1] for e in answers[True] if e[0] in ("vote_and_claim", "again")]
    assert sum(r["vote"]["decided"] for r in results) >= 10
    assert {r["next"]["tier"] for r in results if r["next"]} == {"held_lease", "live_pairs", "audit_and_qc_pairs"}
    for a, b in zip(answers[True], answers[False], strict=True):
        assert a == b
    assert logs[True] == logs[False]
    assert len(logs[True]["decisions"]) >= 10


def test_the_server_side_decision_rule_is_the_consensus_rule(pg_server):
    eng = db_engine.connect(pg_server.database())
    assert vote_function.ready(eng) is not None
    _, outcome_fn = vote_function._names()
    with eng.connect() as conn:
        for counts in itertools.product(range(4), repeat=4):
            n = dict(zip(("a", "b", "tie", "both_bad"), counts, strict=True))
            if sum(counts) == 0:
                continue
            got = conn.execute(sa.text(f"SELECT * FROM {outcome_fn}(:a, :b, :t, :bb)"),
                               dict(a=n["a"], b=n["b"], t=n["tie"], bb=n["both_bad"])).one()
            assert tuple(got) == consensus.outcome(n), n


def test_a_log_whose_role_cannot_create_functions_votes_on_the_core_path(pg_server):
    """A read-write role without CREATE on the schema: the vote and claim still work (Core statements)."""
    url = pg_server.database()
    owner = db_engine.connect(url)
    with owner.begin() as conn:
        conn.exec_driver_sql("CREATE ROLE clerk LOGIN")
        conn.exec_driver_sql("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        conn.exec_driver_sql("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO clerk")
        conn.exec_driver_sql("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO clerk")
    rid = runs.create_run(owner, "a red cube")
    runs.set_run_status(owner, rid, "running")
    first, second = (pairs.post_pair(owner, rid, i, png(2 * i), png(2 * i + 1)) for i in range(2))
    me = accounts.authenticate(owner, accounts.add_annotator(owner, "ann"))["id"]
    clerk = db_engine.connect(url.replace("postgres@", "clerk@"))
    assert vote_function.ready(clerk) is None
    assert queue.claim_next(clerk, me)["pair_id"] == first
    got = queue.vote_and_claim_next(clerk, first, me, "a")
    assert got["vote"]["decided"] and got["next"]["pair_id"] == second
