"""People teach the run without it ever waiting (human.mode=async), through the log, across a kill -9.

A real `dreamdpo run` process on the toy world, a simulated annotator voting through the same db API
as the app, and the log as the only link between them.
"""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa
import torch

from annotator.simulated import annotate
from db import accounts, feedback
from db.engine import connect
from dreamdpo.toyworld.taste import Taste

pytestmark = pytest.mark.slow
RUN_ARGS = ["--prompt", "a cube", "--judge", "human", "--steps", "60", "--quiet", "checkpoint_every=10",
            "human.mode=async", "human.max_pairs=14", "test_views=2", "human.timeout_s=600"]


def wait_for(what, timeout=900.0, poll=0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = what()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s")


def people_decided(engine, run_id: int) -> set[int]:
    return {r["pair_id"] for r in feedback.people_decisions(engine, run_id)}


def test_async_run_learns_from_people_survives_kill_9_and_never_reposts(toy_prior, tmp_path):
    url = f"sqlite:///{tmp_path / 'log.sqlite'}"
    out = tmp_path / "run"
    engine = connect(url)
    who = accounts.authenticate(engine, accounts.add_annotator(engine, "sim"))["id"]
    cmd = [sys.executable, "-m", "dreamdpo.cli", "run", *RUN_ARGS, "--db", url, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run_id = wait_for(lambda: (rows := _runs(engine)) and rows[0])
    ckpt = out / "checkpoints" / "last.pt"
    green = Taste(colour="green")
    annotate(engine, who, green, run_id=run_id, think_s=0.0, max_votes=3)
    # a pair waits for people when the process dies
    wait_for(lambda: ckpt.exists() and feedback.waiting_pairs(engine, run_id) >= 1 or first.poll() is not None)
    assert first.poll() is None, first.stderr.read().decode()[-2000:]
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = people_decided(engine, run_id)
    # the run is down but still 'running' in the log: people keep voting on its waiting pairs
    annotate(engine, who, green, run_id=run_id, think_s=0.0, max_votes=feedback.waiting_pairs(engine, run_id))
    down = people_decided(engine, run_id) - before
    assert down

    stop = threading.Event()
    voter = threading.Thread(target=annotate, args=(engine, who, green),
                             kwargs={"run_id": run_id, "think_s": 0.0, "stop": stop.is_set}, daemon=True)
    voter.start()
    try:
        second = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=1800)
        assert second.returncode == 0, second.stderr[-2000:]
    finally:
        stop.set()
        voter.join(timeout=60)

    state = torch.load(ckpt, weights_only=False)["judge"]["learned"]
    learned = [pid for pid, *_ in state["examples"]]
    decided = people_decided(engine, run_id)
    # every decision people made is in the model's training set, once; those made while it was down too
    assert sorted(learned) == sorted(set(learned)) and set(learned) == decided and down <= set(learned)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT step, status, distance, deadline FROM pairs WHERE run_id = :r"),
                            {"r": run_id}).all()
    asked = [r for r in rows if r.deadline is not None]
    # each decision with a winner pushed the object once more, replayed at the parameters of the step it
    # landed in; across the crash none twice (a metrics row after the checkpoint is dropped and redone)
    with open(out / "metrics.csv", newline="") as f:
        replayed = sum(int(r["replayed"] or 0) for r in csv.DictReader(f))
    clear = [r for r in feedback.people_decisions(engine, run_id) if r["winner"] in ("a", "b")]
    assert 1 <= replayed <= len(clear)
    # a step is posted to people at most once, across the crash and the resume
    assert len({r.step for r in asked}) == len(asked) and 3 <= len(asked) <= 14
    # no pair people could not tell apart ever reached them
    assert all(r.distance is not None and r.distance >= 0.005 for r in asked)
    assert all(r.status == "indistinct" for r in rows if r.distance is not None and r.distance < 0.005)
    # the model learned the person's taste from those decisions: held out one at a time, it agrees with
    # the person more often than chance (bench/bench_steer.py measures it over a full run)
    from dreamdpo.judges.learned import PreferenceModel

    model = PreferenceModel.from_state_dict(state)
    assert len(model.examples) >= 3 and float(model.theta[1:].abs().max()) > 0
    assert model.agreement() > 0.5


def _runs(engine):
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(sa.text("SELECT id FROM runs ORDER BY id"))]
