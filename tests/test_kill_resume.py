"""Kill -9 of a human-judged run, a vote cast while it is down, then `--resume` (issue 16, item 2), on
SQLite and on PostgreSQL (conftest's `log_url`).

A real blocking `dreamdpo run` process on a tiny toy world, a simulated annotator voting through the
same db API as the app, and the log as the only link between them. The process is killed while it
waits for people at a step after its last checkpoint, so that the resumed run does again steps that
were already judged (and logged) before the crash. Below it, the recorder's part of that on its own.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter

import pytest
import sqlalchemy as sa
import torch

from annotator.browser import until_set
from annotator.simulated import annotate
from db import accounts
from db import engine as db_engine
from db.export import ExportFilters, export_log
from db.read import pairs_frame, votes_frame
from dreamdpo.judges.base import JudgeContext, Judgement
from dreamdpo.recording import DbRecorder
from dreamdpo.toyworld.taste import Taste

# people judge the even steps, the assist model the odd ones; checkpoints after steps 2, 5 and 8. A kill
# while step 4 or 8 waits for people leaves a judged step to redo (3; 6 and 7), one the model judged among them
STEPS, EVERY = 10, 3
TINY = ["test_views=1", "test_resolution=32", "mesh_resolution=16", "schedule.resolution=32"]
RUN_ARGS = ["--prompt", "a cube", "--judge", "human", "--steps", str(STEPS), "--quiet", f"checkpoint_every={EVERY}",
            "human.timeout_s=600", "human.every_k=2", *TINY]



def waiting_step(engine, run_id: int) -> int | None:
    """The step whose pair waits for people now (a blocking run waits on one at a time)."""
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT step FROM pairs WHERE run_id = :r AND status = 'pending' "
                                    "AND deadline IS NOT NULL"), {"r": run_id}).scalar()


def metrics_steps(out) -> list[int]:
    with open(out / "metrics.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def metrics_row(out, step: int) -> dict:
    with open(out / "metrics.csv", newline="") as f:
        return next(r for r in csv.DictReader(f) if int(r["step"]) == step)


@pytest.mark.slow
def test_kill_9_a_vote_while_down_and_resume_use_every_decision_once(toy_prior, log_url, tmp_path):
    out = tmp_path / "run"
    engine = db_engine.connect(log_url)
    who = accounts.authenticate(engine, accounts.add_annotator(engine, "sim"))["id"]
    taste = Taste(colour="green")
    cmd = [sys.executable, "-m", "dreamdpo.cli", "run", *RUN_ARGS, "--db", log_url, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        run_id = until_set(lambda: (out / "log.json").exists() and json.loads((out / "log.json").read_text())["run_id"]
                          or (None if first.poll() is None else -1))
        assert run_id > 0, first.stderr.read().decode()[-2000:]
        # people answer each pair as it comes, until the run waits at a step after its last checkpoint
        while True:
            step = until_set(lambda: waiting_step(engine, run_id) if first.poll() is None else -1)
            assert step >= 0, f"the run ended before the scenario: {first.stderr.read().decode()[-2000:]}"
            if step > EVERY and step % EVERY:
                break
            assert annotate(engine, who, taste, run_id=run_id, think_s=0.0, max_votes=1)["votes"] == 1
            until_set(lambda s=step: None if waiting_step(engine, run_id) == s else True)  # the vote landed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    killed_at, checkpoint = step, step // EVERY * EVERY
    assert checkpoint < killed_at and killed_at % 2 == 0
    assert metrics_steps(out) == list(range(killed_at))  # every finished step's row survived the kill

    # the run is down, its pair still waits: a person votes on it
    before = set(votes_frame(engine, run_id)["pair_id"])
    assert annotate(engine, who, taste, run_id=run_id, think_s=0.0, max_votes=1)["votes"] == 1
    (down_pair,) = set(votes_frame(engine, run_id)["pair_id"]) - before
    pairs = pairs_frame(engine, run_id).set_index("pair_id")
    assert pairs.loc[down_pair, "step"] == killed_at and pairs.loc[down_pair, "status"] == "decided"
    down_winner = pairs.loc[down_pair, "winner"]

    stop = threading.Event()
    voter = threading.Thread(target=annotate, args=(engine, who, taste),
                             kwargs={"run_id": run_id, "think_s": 0.0, "stop": stop.is_set}, daemon=True)
    voter.start()
    try:
        second = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=900)
    finally:
        stop.set()
        voter.join(timeout=60)
    assert second.returncode == 0, second.stderr[-2000:]

    # metrics.csv: every step once, in order; the step people decided while the run was down used that vote
    assert metrics_steps(out) == list(range(STEPS))
    row = metrics_row(out, killed_at)
    assert (row["source"], row["winner"]) == ("human", down_winner)
    # the log: one pair per step, across the crash and the resume (a redone step reuses its pair)
    pairs = pairs_frame(engine, run_id)
    assert set(pairs["kind"]) == {"live"}
    assert sorted(pairs["step"]) == list(range(STEPS)), Counter(pairs["step"])
    asked = pairs[pairs["deadline"].notna()]
    assert set(asked["step"]) <= set(range(0, STEPS, 2)) and killed_at in set(asked["step"])
    assert killed_at - 1 not in set(asked["step"])  # redone after the resume, and logged by the run itself
    assert (asked["status"] == "decided").all() and asked["rule"].notna().all()
    # people voted once per asked pair; no fallback or model vote stands in for them
    votes = votes_frame(engine, run_id)
    people = votes[votes["annotator"].notna()]
    assert sorted(people["pair_id"]) == sorted(asked["pair_id"]) and set(people["annotator"]) == {"sim"}
    assert votes[votes["pair_id"].isin(asked["pair_id"]) & votes["annotator"].isna()].empty
    # the export holds each asked step once
    manifest = export_log(engine, "jsonl", tmp_path / "export", ExportFilters(run_id=run_id, humans_only=True,
                                                                               include_ties=True))
    with open(tmp_path / "export" / "comparisons.jsonl") as f:
        exported = [json.loads(line)["step"] for line in f]
    assert sorted(exported) == sorted(asked["step"]) and len(set(exported)) == len(exported)
    assert manifest["counts"]["comparisons"] == len(exported)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT status FROM runs WHERE id = :r"), {"r": run_id}).scalar() == "finished"



# ----------------------------------------------------------------------------- the recorder on its own
def recorded(rec: DbRecorder, step: int, group: int, judge: str = "toy-reward") -> Judgement:
    """What the loop hands the recorder for one camera group of a step (the groups share the step's seeds)."""
    j = Judgement(winner="a", gap=0.1, judge=judge, scores_a=[0.6], scores_b=[0.5])
    images = torch.full((2, 2, 3, 8, 8), (step * 4 + group) / 64)
    images[1] += 0.5 / 64
    rec.record(j, images[0], images[1], JudgeContext(step=step, t=(900, 900), seeds=(100 + step, 200 + step),
                                                     cameras=[{"group": group}], distance=0.1))
    return j


def test_a_step_done_again_is_logged_once_with_every_camera_group(engine):
    start = ({"steps": 3}, "a red cube", "Which is redder?", "toy", "toy-reward")
    first = DbRecorder(engine)
    first.start(*start, fingerprint="f" * 64)
    posted = [recorded(first, 0, g).pair_id for g in (0, 1)] + [recorded(first, 1, 0, judge="indistinct").pair_id]
    assert len(set(posted)) == 3  # both groups of step 0 logged, step 1 as indistinct
    # killed after step 1; --resume from a checkpoint at step 0 does steps 0 and 1 again
    again = DbRecorder(engine, run_id=first.run_id)
    again.start(*start, fingerprint="f" * 64)
    redone = [recorded(again, 0, g).pair_id for g in (0, 1)] + [recorded(again, 1, 0, judge="indistinct").pair_id]
    assert redone[0] == posted[0] and redone[2] == posted[2]  # the step's pair, found by (run, step, seeds)
    new = [recorded(again, 2, g).pair_id for g in (0, 1)]
    pairs = pairs_frame(engine, first.run_id)
    assert sorted(pairs["step"]) == [0, 0, 1, 2, 2] and set(new) <= set(pairs["pair_id"])
    assert len(votes_frame(engine, first.run_id)) == 4  # one model vote per logged model-judged group
