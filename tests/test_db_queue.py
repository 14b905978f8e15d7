"""Every rule of the log's write API (db/runs.py, db/images.py, db/pairs.py, db/queue.py, db/votes.py),
on a SQLite file and on a real PostgreSQL (db/pg_cluster.py)."""
from __future__ import annotations

import io
import threading
import time
from datetime import timedelta

import pandas as pd
import pytest
import sqlalchemy as sa
from PIL import Image

from db import accounts, consensus, images, pairs, queue, runs, votes
from db.errors import LogError
from db.models import Claim, Decision, Pair, Vote, utcnow
from db.models import Image as ImageRow
from db.read import PAIR_COLUMNS, VOTE_COLUMNS, pairs_frame, votes_frame


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (3 + seed % 5, 2), ((seed * 37) % 256, (seed * 91) % 256, seed % 256)).save(buf, format="PNG")
    return buf.getvalue()


def person(engine, name: str) -> int:
    return accounts.authenticate(engine, accounts.add_annotator(engine, name))["id"]


@pytest.fixture()
def run(engine):
    rid = runs.create_run(engine, "a red cube", question="Which looks more like a red cube?")
    runs.set_run_status(engine, rid, "running")
    return rid


def count(engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()


def post(engine, run, seed=0, **kw) -> int:
    return pairs.post_pair(engine, run, seed, png(2 * seed), png(2 * seed + 1), **kw)


def run_out(engine, column, pair_id: int) -> None:
    """Let a lease (Claim.expires_at) or a deadline (Pair.deadline) run out: move it one second into
    the past, so no test depends on how fast the machine gets from one call to the next."""
    key = Claim.pair_id if column is Claim.expires_at else Pair.id
    with engine.begin() as conn:
        assert conn.execute(sa.update(column.class_).where(key == pair_id)
                            .values({column.key: utcnow() - timedelta(seconds=1)})).rowcount >= 1


def test_images_are_stored_once_by_sha256(engine, run):
    from sqlalchemy.orm import Session

    with Session(engine) as s, s.begin():
        first = images.put_image(s, png(1))
        again = images.put_image(s, png(1))
    assert first == again and len(first) == 64
    post(engine, run, 0)
    pairs.post_pair(engine, run, 1, png(1), png(0))
    assert count(engine, ImageRow) == 2
    assert images.get_image(engine, first) == png(1)
    with pytest.raises(LogError, match="not PNG"):
        pairs.post_pair(engine, run, 2, b"GIF89a....", png(0))


def test_claim_order_live_running_first_then_audit_never_live_of_a_stopped_run(engine, run):
    paused = runs.create_run(engine, "a blue ball")
    runs.set_run_status(engine, paused, "paused")
    cancelled = runs.create_run(engine, "a green cone")
    p_paused = post(engine, paused, 1)
    p_audit = post(engine, run, 2, kind="audit")
    p_live_old = post(engine, run, 3)
    p_gold = post(engine, run, 4, kind="gold", gold_answer="a")
    p_live_new = post(engine, run, 5)
    post(engine, cancelled, 6)
    runs.cancel_run(engine, cancelled)
    me = person(engine, "ann")
    order = []
    while (c := queue.claim_next(engine, me)) is not None:
        order.append(c["pair_id"])
        votes.vote(engine, c["pair_id"], me, "a")
    assert order == [p_live_old, p_live_new, p_audit, p_gold]
    runs.set_run_status(engine, paused, "running")  # its pair comes back with the run
    assert queue.claim_next(engine, me)["pair_id"] == p_paused


def test_claim_returns_everything_the_page_needs(engine, run):
    pid = pairs.post_pair(engine, run, 4, png(1), png(2), render_image=png(3), votes_needed=2)
    c = queue.claim_next(engine, person(engine, "ann"), lease_seconds=60)
    assert c["pair_id"] == pid and c["step"] == 4 and c["prompt"] == "a red cube"
    assert c["question"] == "Which looks more like a red cube?" and c["kind"] == "live"
    assert (c["image_a"], c["image_b"], c["render_image"]) == (png(1), png(2), png(3))
    assert c["votes_needed"] == 2 and c["votes_in"] == 0
    assert timedelta(seconds=55) < c["expires_at"] - utcnow() <= timedelta(seconds=60)
    own = post(engine, run, 9, question="Which is rounder?")
    c2 = queue.claim_next(engine, person(engine, "bob"))
    assert c2["pair_id"] == pid  # oldest first; then the pair-specific question
    votes.vote(engine, pid, accounts.list_annotators(engine)[1]["id"], "a")
    assert queue.claim_next(engine, accounts.list_annotators(engine)[1]["id"])["question"] == "Which is rounder?"
    assert own


def test_a_held_lease_is_returned_again_not_a_new_pair(engine, run):
    first, _second = post(engine, run, 1), post(engine, run, 2)
    me = person(engine, "ann")
    assert queue.claim_next(engine, me)["pair_id"] == first
    assert queue.claim_next(engine, me)["pair_id"] == first  # a page reload burns nothing
    other = person(engine, "bob")
    assert queue.claim_next(engine, other)["pair_id"] == _second


def test_the_claim_says_which_tier_served_it(engine, run):
    """The next-task policies in order, each named in the claim's `tier`: a live pair of a running run,
    the same pair again while it is held, then a gold and an audit pair; a pair asked for by id is 'direct'."""
    assert [p.__name__ for p in queue.NEXT_TASK_POLICIES] == ["held_lease", "live_pairs", "audit_and_qc_pairs"]
    gold = post(engine, run, 1, kind="gold", gold_answer="a")
    audit = post(engine, run, 2, kind="audit")
    live = post(engine, run, 3)
    me = person(engine, "ann")
    served = []
    for _ in range(4):
        c = queue.claim_next(engine, me)
        served.append((c["pair_id"], c["tier"]))
        if served[-1] != (live, "live_pairs"):  # the live pair is claimed twice: the second time it is held
            votes.vote(engine, c["pair_id"], me, "a")
    assert served == [(live, "live_pairs"), (live, "held_lease"), (gold, "audit_and_qc_pairs"),
                      (audit, "audit_and_qc_pairs")]
    assert queue.claim_next(engine, me) is None
    duplicate = post(engine, run, 4, kind="duplicate", duplicate_of=live)
    c = queue.claim_pair(engine, duplicate, me)
    assert (c["pair_id"], c["tier"]) == (duplicate, "direct")


def test_at_most_k_people_hold_or_voted_a_pair(engine, run):
    pid = post(engine, run, 1, votes_needed=2)
    a, b, c = (person(engine, n) for n in ("a1", "a2", "a3"))
    assert queue.claim_next(engine, a)["pair_id"] == pid
    assert queue.claim_next(engine, b)["pair_id"] == pid
    assert queue.claim_next(engine, c) is None  # two holders already
    votes.vote(engine, pid, a, "a")
    assert queue.claim_next(engine, c) is None  # one voted, one holds
    queue.release(engine, pid, b)  # a skip frees the slot
    assert queue.claim_next(engine, c)["pair_id"] == pid
    assert queue.claim_next(engine, b) is None  # b skipped it: never offered again


def test_never_offered_a_pair_already_voted_on(engine, run):
    pid = post(engine, run, 1, votes_needed=3)
    me = person(engine, "ann")
    queue.claim_next(engine, me)
    votes.vote(engine, pid, me, "b")
    assert queue.claim_next(engine, me) is None


def test_expired_leases_go_back_and_votes_on_them_are_refused(engine, run):
    pid = post(engine, run, 1)
    a, b = person(engine, "ann"), person(engine, "bob")
    queue.claim_next(engine, a)
    assert queue.claim_next(engine, b) is None
    assert queue.queue_stats(engine)["expired_leases"] == 0
    run_out(engine, Claim.expires_at, pid)
    assert queue.queue_stats(engine)["expired_leases"] == 1
    assert queue.claim_next(engine, b)["pair_id"] == pid
    before = count(engine, Vote)
    with pytest.raises(LogError, match="no valid lease"):
        votes.vote(engine, pid, a, "a")
    assert count(engine, Vote) == before
    assert votes.vote(engine, pid, b, "b")["decision"]["winner"] == "b"


def test_vote_is_idempotent_and_refused_without_lease_or_account(engine, run):
    pid = post(engine, run, 1, votes_needed=2)
    a, b = person(engine, "ann"), person(engine, "bob")
    with pytest.raises(LogError, match="no valid lease"):
        votes.vote(engine, pid, a, "a")  # never claimed
    queue.claim_next(engine, a)
    first = votes.vote(engine, pid, a, "a", shown_left="b", latency_ms=800)
    assert votes.vote(engine, pid, a, "a") == first  # the same vote again: the existing one
    with pytest.raises(LogError, match="already voted"):
        votes.vote(engine, pid, a, "b")
    with pytest.raises(LogError, match="does not exist"):
        votes.vote(engine, pid, 999, "a")
    with pytest.raises(LogError, match="choice"):
        votes.vote(engine, pid, a, "left")
    queue.claim_next(engine, b)
    accounts.deactivate(engine, "bob")
    with pytest.raises(LogError, match="deactivated"):
        votes.vote(engine, pid, b, "a")
    with pytest.raises(LogError, match="deactivated"):
        queue.claim_next(engine, b)
    frame = votes_frame(engine)
    assert len(frame) == 1 and frame.iloc[0]["shown_left"] == "b" and frame.iloc[0]["latency_ms"] == 800


def test_cancelled_run_refuses_votes_and_cancels_its_pairs(engine, run):
    pid = post(engine, run, 1)
    done = post(engine, run, 2)
    me = person(engine, "ann")
    queue.claim_next(engine, me)
    runs.cancel_run(engine, run)
    with pytest.raises(LogError, match=f"run {run} was cancelled"):
        votes.vote(engine, pid, me, "a")
    assert runs.get_run(engine, run)["status"] == "cancelled"
    assert set(pairs_frame(engine)["status"]) == {"cancelled"}
    assert queue.claim_next(engine, me) is None and done
    runs.set_run_status(engine, run, "running")  # a cancelled run stays cancelled
    assert runs.get_run(engine, run)["status"] == "cancelled"
    with pytest.raises(LogError, match="cancelled"):
        post(engine, run, 3)


@pytest.mark.parametrize("votes, winner, rule, gap", [
    ({"a": 3}, "a", "unanimous", 1.0),
    ({"a": 2, "b": 1}, "a", "majority", 1 / 3),
    ({"a": 1, "b": 1}, "tie", "split", 0.0),
    ({"b": 2, "tie": 1}, "b", "majority", 2 / 3),
    ({"both_bad": 2, "a": 1}, "tie", "both_bad", 1 / 3),
    ({"tie": 1}, "tie", "unanimous", 0.0),
])
def test_outcome_rule(votes, winner, rule, gap):
    counts = {"a": 0, "b": 0, "tie": 0, "both_bad": 0} | votes
    w, r, g = consensus.outcome(counts)
    assert (w, r) == (winner, rule) and g == pytest.approx(gap)


def test_decision_written_once_when_k_votes_are_in(engine, run):
    pid = post(engine, run, 1, votes_needed=3)
    people = [person(engine, f"p{i}") for i in range(3)]
    results = []
    for who, choice in zip(people, ["a", "both_bad", "a"]):
        assert queue.claim_next(engine, who)["pair_id"] == pid
        assert votes.decide(engine, pid) is None
        results.append(votes.vote(engine, pid, who, choice))
    assert [r["decided"] for r in results] == [False, False, True]
    d = results[-1]["decision"]
    assert (d["winner"], d["rule"], d["n_a"], d["n_both_bad"]) == ("a", "majority", 2, 1)
    assert d["gap"] == pytest.approx(2 / 3)
    assert votes.decide(engine, pid)["decided_at"] == d["decided_at"]
    assert votes.get_decision(engine, pid)["winner"] == "a" and count(engine, Decision) == 1
    row = pairs_frame(engine).iloc[0]
    assert (row["status"], row["winner"], row["rule"]) == ("decided", "a", "majority")
    assert votes.vote(engine, pid, people[0], "a")["vote_id"] == results[0]["vote_id"]  # retry after decision
    late = person(engine, "late")
    assert queue.claim_next(engine, late) is None


def test_skips_do_not_count_towards_the_decision(engine, run):
    pid = post(engine, run, 1, votes_needed=1)
    a, b = person(engine, "ann"), person(engine, "bob")
    queue.claim_next(engine, a)
    assert votes.vote(engine, pid, a, "skip")["decided"] is False
    queue.claim_next(engine, b)
    assert votes.vote(engine, pid, b, "tie")["decision"]["winner"] == "tie"


def test_a_skip_keeps_its_reason_as_one_bounded_line_of_text(engine, run):
    pid, other, third = post(engine, run, 1), post(engine, run, 2), post(engine, run, 3)
    a = person(engine, "ann")
    assert queue.claim_next(engine, a)["pair_id"] == pid
    typed = "  **can't** tell\n<b>them</b>\u200b apart\t" + "x" * 500
    queue.release(engine, pid, a, reason=typed, shown_left="b", latency_ms=1234)
    assert queue.claim_next(engine, a)["pair_id"] == other
    votes.vote(engine, other, a, "skip", reason="images broken or empty")
    assert queue.claim_next(engine, a)["pair_id"] == third
    queue.release(engine, third, a, reason="   ")  # nothing left: no reason
    with pytest.raises(LogError, match="only a skip"):
        votes.vote(engine, post(engine, run, 4), a, "tie", reason="why not")
    model = votes.log_judge(engine, pid, "toy", "skip", None, None, raw="judge output")
    with engine.connect() as c:
        rows = dict(c.execute(sa.select(Vote.pair_id, Vote.raw).where(Vote.annotator_id == a)).all())
        first = c.execute(sa.select(Vote.shown_left, Vote.latency_ms).where(Vote.pair_id == pid,
                                                                             Vote.annotator_id == a)).one()
    kept = rows[pid]
    assert kept.startswith("**can't** tell <b>them</b> apart xxx") and "\n" not in kept and "\u200b" not in kept
    assert len(kept) == votes.SKIP_REASON_MAX and tuple(first) == ("b", 1234)
    assert rows[other] == "images broken or empty" and rows[third] is None
    frame = votes_frame(engine).set_index("vote_id")
    assert pd.isna(frame.loc[model, "skip_reason"])  # a judge's raw answer is no skip reason
    assert sorted(frame["skip_reason"].dropna()) == sorted([kept, "images broken or empty"])
    from db.recent import recent_votes

    assert {v["pair_id"]: v["reason"] for v in recent_votes(engine, a)}[other] == "images broken or empty"


def test_skip_reason_cleaning():
    assert votes.skip_reason(None) is None and votes.skip_reason(" \n\t ") is None
    assert votes.skip_reason("a\r\nb\x00c\u2028d") == "a b c d"
    assert votes.skip_reason("[link](http://x) :red[y] $z$") == "[link](http://x) :red[y] $z$"  # kept as typed
    assert len(votes.skip_reason("é" * 1000)) == votes.SKIP_REASON_MAX


def test_undo_while_undecided_and_vote_again(engine, run):
    pid = post(engine, run, 1, votes_needed=2)
    a, b = person(engine, "ann"), person(engine, "bob")
    queue.claim_next(engine, a)
    votes.vote(engine, pid, a, "a")
    assert votes.undo_vote(engine, pid, a) is True
    assert votes.undo_vote(engine, pid, a) is False  # nothing standing to undo
    assert queue.claim_next(engine, a)["pair_id"] == pid  # keeps the lease
    votes.vote(engine, pid, a, "b")
    queue.claim_next(engine, b)
    d = votes.vote(engine, pid, b, "b")["decision"]
    assert (d["winner"], d["n_a"], d["n_b"]) == ("b", 0, 2)  # the retracted 'a' is not counted
    assert votes.undo_vote(engine, pid, b) is False  # decided: too late
    frame = votes_frame(engine)
    assert frame["retracted"].tolist() == [True, False, False] and len(frame) == 3  # nothing deleted


def test_undo_needs_a_valid_lease(engine, run):
    pid = post(engine, run, 1, votes_needed=2)
    a = person(engine, "ann")
    queue.claim_next(engine, a)
    votes.vote(engine, pid, a, "a")
    run_out(engine, Claim.expires_at, pid)
    assert votes.undo_vote(engine, pid, a) is False


def test_model_judge_votes_share_the_votes_table(engine, run):
    pid = post(engine, run, 1)
    vid = votes.log_judge(engine, pid, "hpsv2", "b", 0.21, 0.25, raw="0.21 0.25", latency_ms=30)
    rec = votes.record_model_comparison(engine, run, 2, png(5), png(6), "imagereward", "a", 0.9, 0.4,
                                        raw="scores", t=500, t_b=400, seed_a=1, seed_b=2, cameras=[[0, 30]])
    frame = votes_frame(engine).set_index("vote_id")
    assert frame.loc[vid, "judge"] == "hpsv2" and frame.loc[vid, "annotator"] is None
    assert frame.loc[vid, "score_b"] == pytest.approx(0.25)
    d = votes.get_decision(engine, rec)
    assert (d["winner"], d["rule"]) == ("a", "judge:imagereward") and d["gap"] == pytest.approx(0.5)
    pairs = pairs_frame(engine).set_index("pair_id")
    assert pairs.loc[rec, "status"] == "decided" and pairs.loc[rec, "t_b"] == 400
    assert votes.get_decision(engine, pid) is None  # a judge vote alone decides nothing for people
    me = person(engine, "ann")
    assert queue.claim_next(engine, me)["pair_id"] == pid  # the decided record is never offered
    assert queue.claim_next(engine, me)["pair_id"] == pid


def test_wait_for_decision_returns_soon_after_the_vote(engine, run):
    pid = post(engine, run, 1)
    me = person(engine, "ann")
    queue.claim_next(engine, me)
    voted_at = []

    def vote_later():
        time.sleep(0.3)
        votes.vote(engine, pid, me, "a")
        voted_at.append(time.monotonic())

    t = threading.Thread(target=vote_later)
    t.start()
    d = votes.wait_for_decision(engine, pid, timeout=300, poll=0.02)  # returns at the decision
    returned = time.monotonic()
    t.join()
    assert d["winner"] == "a" and returned >= voted_at[0] - 0.05


def test_wait_timeout_expires_the_pair_and_late_votes_are_refused(engine, run):
    pid = post(engine, run, 1)
    me = person(engine, "ann")
    queue.claim_next(engine, me)
    assert votes.wait_for_decision(engine, pid, timeout=0.2, poll=0.05) is None
    assert pairs_frame(engine)["status"].tolist() == ["expired"]
    with pytest.raises(LogError, match="expired"):
        votes.vote(engine, pid, me, "a")
    assert count(engine, Vote) == 0


def test_deadlines_expire_pairs(engine, run):
    late = post(engine, run, 1, deadline=utcnow() + timedelta(hours=1))
    later = post(engine, run, 2, deadline=utcnow() + timedelta(hours=1))
    me = person(engine, "ann")
    assert queue.claim_next(engine, me)["pair_id"] == late
    run_out(engine, Pair.deadline, late)
    stats = queue.queue_stats(engine, me)
    assert (stats["stale_pairs"], stats["pending"]) == (1, 1)
    with pytest.raises(LogError, match="expired"):
        votes.vote(engine, late, me, "a")  # the refusal also marks it expired
    assert pairs.expire_stale(engine, now=utcnow() + timedelta(hours=2)) == 1
    assert pairs_frame(engine).set_index("pair_id")["status"].to_dict() == {late: "expired", later: "expired"}


def test_queue_stats(engine, run):
    other = runs.create_run(engine, "idle")
    for i in range(3):
        post(engine, run, i)
    post(engine, other, 9, kind="audit")
    me = person(engine, "ann")
    c = queue.claim_next(engine, me)
    votes.vote(engine, c["pair_id"], me, "a")
    s = queue.queue_stats(engine, me)
    assert s == {"pending": 3, "live_runs_waiting": 1, "done_today": 1, "expired_leases": 0, "stale_pairs": 0}


def test_runs(engine):
    rid = runs.create_run(engine, "a chair", config={"steps": 3}, backbone="toy", judge_policy={"judge": "human"},
                           name="chair")
    r = runs.get_run(engine, rid)
    assert (r["status"], r["config"], r["name"], r["step"]) == ("pending", {"steps": 3}, "chair", 0)
    runs.set_run_status(engine, rid, "running")
    runs.set_run_status(engine, rid, None, step=7, metrics={"history": [{"step": 7, "loss": 0.5}]})
    r = runs.get_run(engine, rid)
    assert (r["status"], r["step"], r["metrics"]["history"][0]["loss"]) == ("running", 7, 0.5)
    assert [x["id"] for x in runs.list_runs(engine, status="running")] == [rid]
    assert runs.list_runs(engine, status="finished") == [] and runs.get_run(engine, 99) is None
    with pytest.raises(LogError, match="status"):
        runs.set_run_status(engine, rid, "done")
    with pytest.raises(LogError, match="does not exist"):
        runs.set_run_status(engine, 99, "running")
    with pytest.raises(LogError, match="prompt"):
        runs.create_run(engine, " ")


def test_frames_have_the_documented_columns(engine, run):
    pid = post(engine, run, 1, kind="gold", gold_answer="a", seed_a=3, seed_b=4)
    dup = pairs.post_pair(engine, run, 1, png(3), png(2), kind="duplicate", duplicate_of=pid)
    votes.log_judge(engine, dup, "hps", "b", 0.1, 0.2)
    vote_rows, pair_rows = votes_frame(engine), pairs_frame(engine)
    assert list(vote_rows.columns) == VOTE_COLUMNS and list(pair_rows.columns) == PAIR_COLUMNS
    assert vote_rows.iloc[0]["duplicate_of"] == pid and vote_rows.iloc[0]["retracted"] == False  # noqa: E712
    assert str(vote_rows["created_at"].dt.tz) == "UTC"
    assert len(votes_frame(engine, run_id=run + 1)) == 0
    assert len(votes_frame(engine, since=utcnow() + timedelta(minutes=1))) == 0
    assert pair_rows.set_index("pair_id").loc[pid, "gold_answer"] == "a"
    assert pairs_frame(engine, kind="duplicate")["pair_id"].tolist() == [dup]


def test_post_pair_rejects_bad_arguments_and_writes_nothing(engine, run):
    for kw, match in [({"kind": "weird"}, "kind"), ({"votes_needed": 0}, "votes_needed"),
                      ({"gold_answer": "left"}, "gold answer"), ({"status": "expired"}, "pending, decided or indistinct")]:
        with pytest.raises(LogError, match=match):
            post(engine, run, 1, **kw)
    with pytest.raises(LogError, match="does not exist"):
        post(engine, 999, 1)
    assert count(engine, Pair) == 0 and count(engine, ImageRow) == 0


def test_claim_pair_leases_a_given_pair_under_the_same_rules(engine, run):
    first, second = post(engine, run, 1), post(engine, run, 2, votes_needed=1)
    a, b = person(engine, "ann"), person(engine, "bob")
    assert queue.claim_pair(engine, second, a)["pair_id"] == second
    assert queue.claim_pair(engine, second, a)["pair_id"] == second  # held: the same lease
    assert queue.claim_pair(engine, second, b) is None  # k = 1 holder already
    votes.vote(engine, second, a, "b")
    assert queue.claim_pair(engine, second, a) is None  # decided
    assert queue.claim_pair(engine, first, b)["pair_id"] == first
    with pytest.raises(LogError, match="does not exist"):
        queue.claim_pair(engine, 999, a)
