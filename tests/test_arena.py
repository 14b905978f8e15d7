"""The arena of finished runs: arena pairs (finished runs of one prompt, the same presentation, never a
run against itself), per-criterion verdicts, the anchored Bradley–Terry leaderboard (a planted ranking
recovered through the real claim and vote API), the active choice of pairs, and `dreamdpo arena`."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from db import accounts, arena, images, queue, runs, votes
from db import leaderboard as lb
from db.errors import LogError
from db.models import Image, Pair
from dreamdpo.cli import main as cli
from dreamdpo.images import png_bytes

PROMPT = "a red cube"


def views(value: int, n: int = 4, side: int = 8) -> bytes:
    """A turntable strip: n square views side by side."""
    return png_bytes(np.full((side, n * side, 3), value % 256, dtype=np.uint8))


def finished_run(engine, tau: float, seed: int = 0, prompt: str = PROMPT, side: int = 8, status: str = "finished",
                 judge: str = "toy-reward", with_views: bool = True) -> int:
    config = {"prompt": prompt, "judge": judge, "seed": seed, "dpo": {"tau": tau}, "out": f"outputs/{tau}-{seed}"}
    run_id = runs.create_run(engine, prompt, config=config, status="running")
    metrics = {"history": []}
    if with_views:
        metrics[arena.VIEWS_KEY] = images.save_image(engine, views(run_id * 17, side=side))
    runs.set_run_status(engine, run_id, status, step=9, metrics=metrics)
    return run_id


def arena_pairs(engine) -> list[dict]:
    with engine.connect() as c:
        return [dict(r) for r in c.execute(sa.select(Pair.__table__).where(Pair.kind == "arena")).mappings()]


# ----------------------------------------------------------------------------- posting
def test_arena_pairs_join_finished_runs_of_one_prompt_shown_the_same_way(engine):
    same = [finished_run(engine, tau, seed) for tau, seed in ((0.0, 0), (0.1, 0), (0.1, 1))]
    finished_run(engine, 0.2, side=16)                       # another presentation (larger views)
    finished_run(engine, 0.3, status="running")              # not finished
    finished_run(engine, 0.4, with_views=False)              # finished before turntable views were stored
    finished_run(engine, 0.5, prompt="a blue ball")          # another prompt
    ids = arena.post_arena_pairs(engine, PROMPT, n_pairs=10, votes_needed=2, seed=0)
    assert len(ids) == 3  # every pair of the three comparable runs, once
    posted = arena_pairs(engine)
    assert {frozenset((p["run_id"], p["run_b_id"])) for p in posted} == {
        frozenset(x) for x in ((same[0], same[1]), (same[0], same[2]), (same[1], same[2]))}
    with engine.connect() as c:
        sizes = dict((i, (w, h)) for i, w, h in c.execute(sa.select(Image.id, Image.width, Image.height)))
    for p in posted:
        a, b = runs.get_run(engine, p["run_id"]), runs.get_run(engine, p["run_b_id"])
        assert p["run_id"] != p["run_b_id"] and a["status"] == b["status"] == "finished"
        assert a["prompt"] == b["prompt"] == PROMPT
        assert (p["image_a"], p["image_b"]) == (a["metrics"][arena.VIEWS_KEY], b["metrics"][arena.VIEWS_KEY])
        assert sizes[p["image_a"]] == sizes[p["image_b"]]
        assert p["votes_needed"] == 2 and p["status"] == "pending" and p["question"] == arena.QUESTION
    assert arena.post_arena_pairs(engine, PROMPT, n_pairs=5) == []  # each pair of runs already waits for votes
    with pytest.raises(LogError, match="needs two"):
        arena.post_arena_pairs(engine, "a blue ball")
    with pytest.raises(LogError, match="not a finished run"):
        arena.post_arena_pairs(engine, PROMPT, run_ids=[same[0], same[0] + 4])  # the running one
    assert len(arena_pairs(engine)) == 3  # nothing posted by a refusal


def test_an_arena_pair_is_claimed_and_voted_like_any_pair(engine):
    a, b = finished_run(engine, 0.0), finished_run(engine, 0.1)
    [pair_id] = arena.post_arena_pairs(engine, PROMPT, votes_needed=1, seed=0)
    ann = accounts.authenticate(engine, accounts.add_annotator(engine, "ann"))["id"]
    claim = queue.claim_next(engine, ann)
    assert claim["pair_id"] == pair_id and claim["kind"] == "arena" and claim["prompt"] == PROMPT
    run_a, run_b = arena.pair_runs(engine, pair_id)
    assert {run_a, run_b} == {a, b}
    assert claim["image_a"] == images.get_image(engine, runs.get_run(engine, run_a)["metrics"][arena.VIEWS_KEY])
    votes.vote(engine, pair_id, ann, "a", shown_left="b")
    comps = arena.arena_comparisons(engine)
    assert comps[["run_a", "run_b", "winner"]].values.tolist() == [[run_a, run_b, "a"]]
    assert set(comps["item_a"]) | set(comps["item_b"]) == {"dpo.tau=0", "dpo.tau=0.1"}


# ----------------------------------------------------------------------------- items
def test_items_are_the_config_keys_that_differ_or_the_judge_or_the_seed():
    rows = [{"id": 1, "config": {"seed": 0, "judge": "toy-reward", "dpo": {"tau": 0.1}, "out": "x", "steps": 9}},
            {"id": 2, "config": {"seed": 1, "judge": "toy-reward", "dpo": {"tau": 0.1}, "out": "y", "steps": 9}},
            {"id": 3, "config": {"seed": 0, "judge": "lmm", "dpo": {"tau": 0.0}, "out": "z", "steps": 9}}]
    assert arena.item_labels(rows) == {1: "dpo.tau=0.1, judge=toy-reward", 2: "dpo.tau=0.1, judge=toy-reward",
                                       3: "dpo.tau=0, judge=lmm"}
    assert arena.item_labels(rows, "judge") == {1: "toy-reward", 2: "toy-reward", 3: "lmm"}
    assert arena.item_labels(rows, "seed") == {1: "seed 0", 2: "seed 1", 3: "seed 0"}
    assert arena.item_labels(rows[:2]) == {1: "default", 2: "default"}  # only seed and out differ
    with pytest.raises(LogError, match="not one of config, judge, seed"):
        arena.item_labels(rows, "colour")


# ----------------------------------------------------------------------------- per-criterion verdicts
def test_per_criterion_verdicts_round_trip(engine):
    finished_run(engine, 0.0), finished_run(engine, 0.1)
    [pair_id] = arena.post_arena_pairs(engine, PROMPT, votes_needed=2, seed=0)
    ann, other = (accounts.authenticate(engine, accounts.add_annotator(engine, n))["id"] for n in ("ann", "bob"))
    queue.claim_pair(engine, pair_id, ann)
    vote_id = votes.vote(engine, pair_id, ann, "b", shown_left="a")["vote_id"]
    given = {"plausibility": "a", "texture_details": "tie", "overall": "b"}
    assert arena.record_criteria(engine, vote_id, ann, given) == 3
    assert arena.record_criteria(engine, vote_id, ann, {"overall": "b"}) == 0  # the same again: nothing new
    assert arena.criteria_of(engine, vote_id) == given
    with pytest.raises(LogError, match="already answered overall"):
        arena.record_criteria(engine, vote_id, ann, {"overall": "a"})
    with pytest.raises(LogError, match="criterion 'colour' is not one of"):
        arena.record_criteria(engine, vote_id, ann, {"colour": "a"})
    with pytest.raises(LogError, match="is one of a, b, tie"):
        arena.record_criteria(engine, vote_id, ann, {"plausibility": "both_bad"})
    with pytest.raises(LogError, match="not a standing vote of yours"):
        arena.record_criteria(engine, vote_id, other, {"geometry_details": "a"})
    assert arena.criteria_of(engine, vote_id) == given  # nothing changed by a refusal
    by_plausibility = arena.arena_comparisons(engine, criterion="plausibility")
    assert by_plausibility["winner"].tolist() == ["a"]
    assert arena.arena_comparisons(engine)["winner"].tolist() == ["b"]  # the vote itself


# ----------------------------------------------------------------------------- the leaderboard
TRUE = {0.0: 0.0, 0.1: 0.9, 0.2: 0.45, 0.3: -0.6}  # dpo.tau → planted Bradley–Terry log-strength


def test_a_planted_ranking_of_configs_is_recovered_with_covering_cis(engine):
    """Four configs × two seeds of one prompt; pairs posted by the active choice, round after round,
    and voted through claim and vote by five people who follow the planted strengths. The votes are
    drawn from a fixed seed: simulated the same way with 40 other seeds, the order came out right every
    time and all three 95% CIs covered their planted rating together 34 times (85%; each alone ≈ 95%)."""
    rng = np.random.default_rng(3)
    run_tau = {finished_run(engine, tau, seed): tau for tau in TRUE for seed in (0, 1)}
    people = [accounts.authenticate(engine, accounts.add_annotator(engine, f"p{i}"))["id"] for i in range(5)]
    for _ in range(16):
        for pair_id in arena.post_arena_pairs(engine, PROMPT, n_pairs=6, votes_needed=5, baseline="dpo.tau=0",
                                              seed=int(rng.integers(1 << 30))):
            run_a, run_b = arena.pair_runs(engine, pair_id)
            p_a = 1.0 / (1.0 + math.exp(TRUE[run_tau[run_b]] - TRUE[run_tau[run_a]]))
            for person in people:
                assert queue.claim_pair(engine, pair_id, person) is not None
                votes.vote(engine, pair_id, person, "a" if rng.random() < p_a else "b", shown_left="a")
    board = arena.arena_leaderboard(engine, baseline="dpo.tau=0", n_boot=200)
    assert board.n_votes == 16 * 6 * 5
    planted = {f"dpo.tau={tau:g}": lb.ANCHOR + lb.ELO_SCALE * s for tau, s in TRUE.items()}
    assert list(board.table.index) == sorted(planted, key=planted.get, reverse=True)
    for item, row in board.table.iterrows():
        assert row["low"] <= planted[item] <= row["high"], (item, row.to_dict(), planted[item])
    assert board.table.loc["dpo.tau=0", ["rating", "low", "high"]].tolist() == [1000.0] * 3
    assert (board.counts.to_numpy() == board.counts.to_numpy().T).all()
    assert board.counts.to_numpy().sum() == 2 * board.n_votes
    rates = board.win_rate.to_numpy()
    off = ~np.eye(len(rates), dtype=bool)
    assert np.allclose(rates[off] + rates.T[off], 1.0)  # i beats j + j beats i = 1 (ties half)


def planted_comparisons(n: int, strengths: dict[str, float], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    names = list(strengths)
    rows = []
    for _ in range(n):
        a, b = rng.choice(names, 2, replace=False)
        p = 1.0 / (1.0 + math.exp(strengths[b] - strengths[a]))
        u = rng.random()
        rows.append((a, b, "tie" if abs(u - p) < 0.05 else ("a" if u < p else "b")))
    return pd.DataFrame(rows, columns=["item_a", "item_b", "winner"])


def test_the_baseline_is_anchored_and_a_change_of_baseline_only_shifts_ratings():
    comps = planted_comparisons(400, {"x": 0.0, "y": 0.7, "z": -0.3})
    on_x, on_y = lb.leaderboard(comps, "x", n_boot=50), lb.leaderboard(comps, "y", n_boot=50)
    assert on_x.table.loc["x", ["rating", "low", "high"]].tolist() == [lb.ANCHOR] * 3
    assert on_y.table.loc["y", ["rating", "low", "high"]].tolist() == [lb.ANCHOR] * 3
    shift = on_x.table["rating"] - on_y.table["rating"]
    assert np.allclose(shift, shift.iloc[0]) and shift.iloc[0] == pytest.approx(on_x.table.loc["y", "rating"] - 1000)
    # 400 points are 10:1 odds: y's rating over x's is 400·log10 of its fitted odds
    assert lb.leaderboard(comps).baseline in {"x", "y", "z"}  # default: the item with the most votes
    with pytest.raises(LogError, match="baseline 'w' has no arena votes; choose one of: x, y, z"):
        lb.leaderboard(comps, "w")
    with pytest.raises(LogError, match="no arena votes"):
        lb.leaderboard(comps.iloc[:0])


def test_ties_count_half():
    comps = pd.DataFrame({"item_a": ["x", "x"], "item_b": ["y", "y"], "winner": ["a", "tie"]})
    board = lb.leaderboard(comps, "y", n_boot=0)
    assert board.win_rate.loc["x", "y"] == 0.75 and board.counts.loc["x", "y"] == 2


# ----------------------------------------------------------------------------- which pair next
def test_the_active_choice_asks_the_least_known_pair():
    comps = planted_comparisons(300, {"a": 0.0, "b": 0.3, "c": -0.2})
    comps = comps[~((comps["item_a"].isin(["b", "c"])) & (comps["item_b"].isin(["b", "c"])))]  # b–c never met
    rng = np.random.default_rng(0)
    state = lb.choice_state(comps, ["a", "b", "c"], baseline="a")
    pairs = [("a", "b"), ("a", "c"), ("b", "c")]
    assert lb.most_informative(pairs, state, rng) == 2
    # a config nobody has voted on yet is the most uncertain of all
    state = lb.choice_state(comps, ["a", "b", "c", "d"], baseline="a")
    pairs = [("a", "b"), ("a", "c"), ("b", "c"), ("b", "d")]
    assert lb.most_informative(pairs, state, rng) == 3
    drops = lb.variance_drops(state, pairs + [("d", "d")])
    assert drops[3] == drops.max() and drops[-1] == 0.0  # a run against its own config teaches nothing
    # a batch: once b–d counts as asked many times, the next most useful pair is another one
    lb.add_expected(state, "b", "d", 200)
    assert lb.most_informative(pairs, state, rng) != 3


def test_the_policies_are_named_and_each_picks_a_candidate():
    comps = planted_comparisons(50, {"a": 0.0, "b": 0.5})
    state = lb.choice_state(comps, ["a", "b", "c"])
    pairs = [("a", "b"), ("a", "c"), ("b", "c")]
    for name, policy in lb.POLICIES.items():
        assert 0 <= policy(pairs, state, np.random.default_rng(1)) < len(pairs), name
    assert lb.least_compared(pairs, state, np.random.default_rng(1)) in (1, 2)


# ----------------------------------------------------------------------------- the command line
def test_cli_posts_pairs_and_prints_the_leaderboard(log_url, engine, capsys):
    taus = (0.0, 0.1, 0.2)
    for tau in taus:
        finished_run(engine, tau)
    finished_run(engine, 0.0, prompt="a lone run")
    assert cli(["arena", "post", "--prompt", PROMPT, "--pairs", "3", "--votes", "2", "--db", log_url]) == 0
    out = capsys.readouterr().out
    assert out.startswith("posted 3 arena pair(s) for 'a red cube', 2 vote(s) each: ")
    people = [accounts.authenticate(engine, accounts.add_annotator(engine, n))["id"] for n in ("p", "q")]
    for pair_id in (int(x) for x in out.split(": ")[1].split()):
        run_a, run_b = arena.pair_runs(engine, pair_id)
        for person in people:  # the higher τ wins every time
            queue.claim_pair(engine, pair_id, person)
            better = "a" if runs.get_run(engine, run_a)["config"]["dpo"]["tau"] > \
                runs.get_run(engine, run_b)["config"]["dpo"]["tau"] else "b"
            votes.vote(engine, pair_id, person, better)
    assert cli(["arena", "leaderboard", "--baseline", "dpo.tau=0", "--json", "--rounds", "50",
                "--db", log_url]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["baseline"] == "dpo.tau=0" and data["votes"] == 6
    assert [i["item"] for i in data["items"]] == ["dpo.tau=0.2", "dpo.tau=0.1", "dpo.tau=0"]
    assert data["items"][-1]["rating"] == 1000.0 and data["counts"]["dpo.tau=0.2"]["dpo.tau=0"] == 2
    assert data["win_rate"]["dpo.tau=0.2"]["dpo.tau=0.1"] == 1.0
    assert cli(["arena", "leaderboard", "--by", "judge", "--db", log_url]) == 2  # one judge: no two items
    assert "no arena votes between different items" in capsys.readouterr().err
    assert cli(["arena", "leaderboard", "--baseline", "dpo.tau=0.1", "--db", log_url]) == 0
    text = capsys.readouterr().out
    assert "anchored to 'dpo.tau=0.1' = 1000" in text and "win rate" in text and "== votes" in text


@pytest.mark.parametrize("args, message", [
    (["leaderboard", "--baseline", "dpo.tau=9"], "baseline 'dpo.tau=9' has no arena votes; choose one of: dpo.tau=0"),
    (["post", "--prompt", "a lone run"], "the prompt 'a lone run' has 1 finished run(s) with a turntable; an arena "
                                         "pair needs two"),
    (["post", "--prompt", "nobody asked"], "has 0 finished run(s)"),
    (["post", "--prompt", PROMPT, "--runs", "1,x"], "--runs takes run ids separated by commas"),
    (["post", "--prompt", PROMPT, "--pairs", "0"], "the number of pairs must be a whole number ≥ 1"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    from db.engine import connect

    url = f"sqlite:///{tmp_path / 'log.sqlite'}"
    engine = connect(url)
    finished_run(engine, 0.0), finished_run(engine, 0.1)
    finished_run(engine, 0.0, prompt="a lone run")
    [pair_id] = arena.post_arena_pairs(engine, PROMPT, seed=0)
    person = accounts.authenticate(engine, accounts.add_annotator(engine, "p"))["id"]
    queue.claim_pair(engine, pair_id, person)
    votes.vote(engine, pair_id, person, "a")
    before = len(arena_pairs(engine))
    assert cli(["arena", *args, "--db", url]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("dreamdpo arena: error: ")
    assert len(arena_pairs(engine)) == before  # nothing posted
