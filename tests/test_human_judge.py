"""The human judge against a real SQLite log, with people played by threads that claim and vote
through db.queue and db.votes exactly as the app does."""
from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
import sqlalchemy as sa
import torch

from db import accounts, pairs, queue, runs, votes
from db.engine import connect
from db.errors import LogError
from db.models import Pair, Vote
from dreamdpo.errors import UserError
from dreamdpo.judges.base import Judge, JudgeContext, judgement_from_scores
from dreamdpo.judges.human import HumanJudge, HumanPolicy, decision_to_judgement, paced_budget


class FixedGapJudge(Judge):
    """Prefers 'a' by a fixed score margin (a real Judge: the scores come from the images' means)."""

    name = "fixed"

    def __init__(self, margin: float):
        self.margin = margin
        self.calls = 0

    def compare(self, images_a, images_b, prompt, context=None):
        self.calls += 1
        base = images_a.mean(dim=(1, 2, 3))
        return judgement_from_scores(self.name, base + self.margin, base)


@pytest.fixture
def log(tmp_path):
    engine = connect(f"sqlite:///{tmp_path / 'log.sqlite'}")
    run_id = runs.create_run(engine, "a red cube", question="Which is redder?", status="running")
    return engine, run_id


def images(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)


def ctx(run_id, step=0):
    return JudgeContext(step=step, t=(500, 400), seeds=(11, 12), cameras=[{"elevation": 0.0}] * 2,
                        render=torch.rand(2, 3, 8, 8), run_id=run_id)


def people(engine, choices: list[str], names=("ann", "bob", "cid")):
    """One thread per choice: a distinct annotator claims the next pair and votes that choice."""
    ids = [accounts.authenticate(engine, accounts.add_annotator(engine, n))["id"] for n in names[: len(choices)]]

    def act(aid, choice):
        end = time.monotonic() + 300  # until the judge posts its pair; only a hang takes this long
        while time.monotonic() < end:
            pair = queue.claim_next(engine, aid)
            if pair is not None:
                votes.vote(engine, pair["pair_id"], aid, choice, shown_left="a", latency_ms=5)
                return
            time.sleep(0.02)

    threads = [threading.Thread(target=act, args=(a, c)) for a, c in zip(ids, choices)]
    for t in threads:
        t.start()
    return threads


def vote_rows(engine, pair_id):
    with engine.connect() as c:
        return c.execute(sa.select(Vote.annotator_id, Vote.judge_name, Vote.choice)
                         .where(Vote.pair_id == pair_id).order_by(Vote.id)).all()


def pair_row(engine, pair_id):
    with engine.connect() as c:
        return c.execute(sa.select(Pair).where(Pair.id == pair_id)).mappings().first()


@pytest.mark.parametrize("choices,winner,gap,skip", [
    (["a"], "a", 1.0, False),
    (["b"], "b", 1.0, False),
    (["tie"], "tie", 0.0, False),
    (["both_bad"], "tie", 0.0, True),
    (["a", "b"], "tie", 0.0, False),  # a split vote: pull only
])
def test_votes_map_to_winner_and_gap(log, choices, winner, gap, skip):
    engine, run_id = log
    judge = HumanJudge(engine, HumanPolicy(votes_needed=len(choices), timeout_s=300, fallback="pull"))
    threads = people(engine, choices)
    a, b = images(0)
    j = judge.compare(a, b, "a red cube", ctx(run_id, step=3))
    for t in threads:
        t.join()
    assert (j.winner, j.gap, j.skip, j.judge, j.extra["source"]) == (winner, gap, skip, "human", "human")
    row = pair_row(engine, j.pair_id)
    assert (row["status"], row["kind"], row["step"], row["t"], row["t_b"], row["seed_a"], row["votes_needed"]) == (
        "decided", "live", 3, 500, 400, 11, len(choices))
    assert row["render_image"] is not None and row["deadline"] is not None
    assert sorted(c for _, _, c in vote_rows(engine, j.pair_id)) == sorted(choices)


def test_majority_of_three_gives_the_vote_margin():
    d = dict(winner="a", gap=1 / 3, rule="majority", n_a=2, n_b=1, n_tie=0, n_both_bad=0)
    j = decision_to_judgement(d, 7)
    assert (j.winner, j.gap, j.pair_id, j.extra["counts"]) == ("a", pytest.approx(1 / 3), 7,
                                                              {"a": 2, "b": 1, "tie": 0, "both_bad": 0})


@pytest.mark.parametrize("fallback,winner,skip,logged", [
    ("model", "a", False, ("fallback:fixed", "a")),
    ("pull", "tie", False, ("fallback:pull", "tie")),
    ("skip", "tie", True, ("fallback:skip", "skip")),
])
def test_timeout_applies_the_fallback_logs_it_and_refuses_late_votes(log, fallback, winner, skip, logged):
    engine, run_id = log
    model = FixedGapJudge(0.5)
    judge = HumanJudge(engine, HumanPolicy(timeout_s=0.3, fallback=fallback), model_judge=model)
    aid = accounts.authenticate(engine, accounts.add_annotator(engine, "late"))["id"]
    a, b = images(1)
    j = judge.compare(a, b, "a red cube", ctx(run_id))
    assert (j.winner, j.skip, j.extra["source"]) == (winner, skip, logged[0])
    assert pair_row(engine, j.pair_id)["status"] == "expired"
    assert [(n, c) for _, n, c in vote_rows(engine, j.pair_id)] == [logged]
    assert queue.claim_next(engine, aid) is None  # the expired pair is not offered any more


def test_late_vote_with_a_lease_is_refused(log):
    engine, run_id = log
    aid = accounts.authenticate(engine, accounts.add_annotator(engine, "slow"))["id"]
    for timeout_s in (0.6, 5, 60):  # a longer wait only when a busy machine claimed too late to test anything
        judge = HumanJudge(engine, HumanPolicy(timeout_s=timeout_s, fallback="pull"))
        claimed, done = {}, threading.Event()

        def claim(claimed=claimed, done=done):
            while not claimed and not done.is_set():
                claimed.update(queue.claim_next(engine, aid) or {})
                time.sleep(0.02)

        t = threading.Thread(target=claim)
        t.start()
        j = judge.compare(*images(2), "a red cube", ctx(run_id, step=int(timeout_s * 10)))
        done.set()
        t.join()
        if claimed:
            break
    assert claimed["pair_id"] == j.pair_id
    with pytest.raises(LogError, match="expired"):
        votes.vote(engine, j.pair_id, aid, "a")


def test_every_kth_step_goes_to_people_and_the_rest_to_the_model(log):
    engine, run_id = log
    model = FixedGapJudge(0.2)
    judge = HumanJudge(engine, HumanPolicy(every_k=2, timeout_s=300), model_judge=model)
    threads = people(engine, ["b"])
    j0 = judge.compare(*images(3), "p", ctx(run_id, step=0))
    j1 = judge.compare(*images(4), "p", ctx(run_id, step=1))
    for t in threads:
        t.join()
    assert (j0.judge, j0.winner, j0.pair_id is not None) == ("human", "b", True)
    assert (j1.judge, j1.winner, j1.pair_id, j1.extra["source"]) == ("fixed", "a", None, "fixed")
    assert model.calls == 1


@pytest.mark.parametrize("margin,asked", [(0.5, False), (0.01, True)])
def test_people_only_when_the_model_is_unsure(log, margin, asked):
    engine, run_id = log
    judge = HumanJudge(engine, HumanPolicy(uncertain_below=0.1, timeout_s=0.3, fallback="model"),
                       model_judge=FixedGapJudge(margin))
    j = judge.compare(*images(5), "p", ctx(run_id))
    if asked:  # nobody votes → the pair was posted and the model fallback decided
        assert j.extra["source"] == "fallback:fixed" and pair_row(engine, j.pair_id)["kind"] == "live"
    else:
        assert j.judge == "fixed" and j.pair_id is None


def test_audit_pairs_are_posted_without_waiting_with_the_model_vote_on_the_same_pair(log):
    engine, run_id = log
    judge = HumanJudge(engine, HumanPolicy(every_k=1000, audit_rate=1.0, votes_needed=2, timeout_s=3600),
                       model_judge=FixedGapJudge(0.3))
    j = judge.compare(*images(6), "p", ctx(run_id, step=1))  # a wait would have expired the pair below
    assert j.judge == "fixed" and j.extra["audit"] and j.pair_id is not None
    row = pair_row(engine, j.pair_id)
    assert (row["kind"], row["status"], row["votes_needed"], row["deadline"]) == ("audit", "pending", 2, None)
    assert [(n, c) for _, n, c in vote_rows(engine, j.pair_id)] == [("fixed", "a")]
    # a person can now vote on it: the join of model and human votes is one pair
    aid = accounts.authenticate(engine, accounts.add_annotator(engine, "auditor"))["id"]
    assert queue.claim_next(engine, aid)["pair_id"] == j.pair_id


def test_audit_sampling_rate_is_seeded_per_step(log):
    engine, run_id = log
    policy = HumanPolicy(every_k=10_000, audit_rate=0.3)
    draws = [HumanJudge(engine, policy, model_judge=FixedGapJudge(0.1), seed=4)._audit_draw(s) for s in range(1, 2001)]
    again = [HumanJudge(engine, policy, model_judge=FixedGapJudge(0.1), seed=4)._audit_draw(s) for s in range(1, 2001)]
    assert draws == again
    assert 0.25 < sum(draws) / len(draws) < 0.35


def test_a_cancelled_run_stops_the_wait(log):
    engine, run_id = log
    judge = HumanJudge(engine, HumanPolicy(timeout_s=600, fallback="pull"))  # only the cancel ends this wait

    def cancel_once_posted():
        while not runs.list_runs(engine) or _pairs(engine) == 0:
            time.sleep(0.05)
        runs.cancel_run(engine, run_id)

    threading.Thread(target=cancel_once_posted, daemon=True).start()
    j = judge.compare(*images(7), "p", ctx(run_id))
    assert j.skip and j.extra["source"] == "cancelled"
    assert pair_row(engine, j.pair_id)["status"] == "cancelled"
    # cancelled before the next step posts anything: a skip, not a crash
    later = judge.compare(*images(8), "p", ctx(run_id, step=1))
    assert later.skip and later.extra["source"] == "cancelled"


def test_a_pair_expired_early_ends_the_wait_with_the_fallback(log):
    """Skip with nobody else online expires the live pair at once (the app): the run must not wait out
    its deadline. Were it to, this test would hang until pytest-timeout."""
    engine, run_id = log
    judge = HumanJudge(engine, HumanPolicy(timeout_s=3600, fallback="pull"))

    def expire_once_posted():
        while _pairs(engine) == 0:
            time.sleep(0.05)
        assert pairs.expire_pair(engine, 1)

    threading.Thread(target=expire_once_posted, daemon=True).start()
    j = judge.compare(*images(9), "p", ctx(run_id))
    assert j.judge == "fallback:pull" and not j.skip and j.extra["wait_s"] < 3600
    assert pair_row(engine, j.pair_id)["status"] == "expired"


def _pairs(engine) -> int:
    with engine.connect() as conn:
        return conn.exec_driver_sql("SELECT count(*) FROM pairs").scalar()


@pytest.mark.parametrize("policy,model,message", [
    (HumanPolicy(), None, "fallback=model needs a model judge"),
    (HumanPolicy(fallback="pull", uncertain_below=0.1), None, "uncertain_below needs a model judge"),
    (HumanPolicy(fallback="later"), FixedGapJudge(0), "fallback must be one of"),
    (HumanPolicy(votes_needed=0), FixedGapJudge(0), "votes_needed must be ≥ 1"),
    (HumanPolicy(every_k=0), FixedGapJudge(0), "every_k must be ≥ 1"),
    (HumanPolicy(audit_rate=2), FixedGapJudge(0), "audit_rate must be in"),
    (HumanPolicy(mode="async", pace_until=1.5), FixedGapJudge(0), "pace_until must be in"),
])
def test_bad_policies_are_one_line_errors(log, policy, model, message):
    with pytest.raises(UserError, match=message) as e:
        HumanJudge(log[0], policy, model_judge=model)
    assert "\n" not in str(e.value)


def test_quality_control_pairs_are_mixed_in_after_live_pairs(log):
    from db import qc

    engine, run_id = log
    from dreamdpo.images import views_png

    ga, gb = images(6)
    gold = qc.post_gold_pair(engine, run_id, views_png(ga), views_png(gb), "a")
    # the person answers the seeded gold pair (offered first); the live pair's outcome does not matter here
    judge = HumanJudge(engine, HumanPolicy(timeout_s=0.5, gold_rate=1.0, duplicate_rate=1.0, fallback="pull"))
    threads = people(engine, ["a"])
    j = judge.compare(*images(7), "p", ctx(run_id, step=0))
    for t in threads:
        t.join()
    with engine.connect() as c:
        rows = c.execute(sa.select(Pair.id, Pair.kind, Pair.duplicate_of, Pair.gold_answer, Pair.image_a,
                                   Pair.image_b).order_by(Pair.id)).all()
    kinds = [r.kind for r in rows]
    assert kinds.count("gold") == 2 and kinds.count("duplicate") == 1  # the seeded gold pair + one copy
    dup = next(r for r in rows if r.kind == "duplicate")
    live = next(r for r in rows if r.kind == "live")
    assert dup.duplicate_of == live.id == j.pair_id
    assert (dup.image_a, dup.image_b) == (live.image_b, live.image_a)  # sides swapped
    assert next(r for r in rows if r.kind == "gold" and r.id != gold).gold_answer == "a"
    with pytest.raises(UserError, match="gold_rate"):
        HumanJudge(engine, HumanPolicy(gold_rate=2.0, fallback="pull"))


class FeatureJudge(FixedGapJudge):
    """A model judge with image features, as async mode needs (its learned model's input)."""

    def features(self, images):
        return images.mean(dim=(2, 3))


@pytest.mark.parametrize("replay", [True, False])
def test_async_hands_each_late_decision_to_the_loop_once_with_what_remakes_its_pair(log, replay):
    engine, run_id = log
    judge = HumanJudge(engine, HumanPolicy(mode="async", ask_uncertainty=0.0, max_pairs=1, replay_late=replay),
                       model_judge=FeatureJudge(0.0))
    asked = judge.compare(*images(0), "a red cube", ctx(run_id, step=3))
    assert asked.extra.get("asked") and judge.late_decisions() == []
    for t in people(engine, ["b"]):
        t.join()
    judge.compare(*images(1), "a red cube", ctx(run_id, step=4))  # learns the decision as this step begins
    late = judge.late_decisions()
    assert len(judge.learned.examples) == 1
    if not replay:
        assert late == []
        return
    assert [(d.pair_id, d.step, d.t, d.seeds, d.verdict.winner, d.verdict.gap) for d in late] == [
        (asked.pair_id, 3, (500, 400), (11, 12), "b", 1.0)]
    assert late[0].cameras == [{"elevation": 0.0}] * 2
    judge.compare(*images(2), "a red cube", ctx(run_id, step=5))
    assert judge.late_decisions() == []  # never twice


def test_paced_budget_spreads_the_pairs_over_the_first_share_of_the_steps():
    assert [paced_budget(30, 0.5, s, 300) for s in (0, 4, 5, 9, 10, 74, 148, 149, 299)] == [1, 1, 2, 2, 3, 15, 30, 30, 30]
    assert paced_budget(30, 0.0, 0, 300) == paced_budget(30, 0.5, 0, 0) == 30  # no pacing, or steps unknown


def test_async_posts_no_more_pairs_than_the_paced_budget_allows(log):
    """An unsure model, nobody voting and room for many waiting pairs: what limits the posts is the pacing."""
    engine, run_id = log
    judge = HumanJudge(engine, HumanPolicy(mode="async", ask_uncertainty=0.0, max_pairs=10, pace_until=0.5,
                                           waiting_per_annotator=100), model_judge=FeatureJudge(0.0))
    posted = []
    for step in range(60):
        judge.compare(*images(step), "a red cube", replace(ctx(run_id, step=step), seeds=(2 * step, 2 * step + 1),
                                                           steps=100))
        posted.append(_pairs(engine))
    assert posted == [paced_budget(10, 0.5, s, 100) for s in range(60)]
    assert posted[0] == 1 and posted[49] == 10 and posted[59] == 10
