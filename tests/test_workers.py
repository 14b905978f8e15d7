"""`dreamdpo submit` and `dreamdpo worker` end to end (issue 15, item 1, Tests): real worker processes on
the session's PostgreSQL server, toy runs of few steps, checkpoints at a file:// storage URL; and the
bad inputs of both commands.

Three workers take five queued runs; one worker is killed (kill -9) in the middle of a run after its
first checkpoint. Its run is re-queued when its heartbeats stop, resumed by another worker from the
checkpoint at the storage URL, and ends with exactly the parameters of an uninterrupted run of the
same config (the queue holds two runs of each seed: the other one is the reference).
The bad inputs run the CLI in-process (`dreamdpo.cli.main`); the real entry point's one-line errors are
tests/test_bad_inputs.py's.
"""
from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict

import pytest
import sqlalchemy as sa
import torch

from annotator.browser import until, until_set
from db import engine as db_engine
from db.models import Pair, Run, Worker
from dreamdpo.cli import main as cli

STEPS, EVERY = 40, 8
TINY = ["test_views=1", "test_resolution=32", "mesh_resolution=16", "schedule.resolution=32", "export_mesh=false"]
EVENT = re.compile(r"^worker (\S+): run (\d+) (claimed|finished|cancelled|failed|lost|released)\b.*?"
                   r"t=([\d.]+)(?: held_until=([\d.]+))?")


def dreamdpo(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dreamdpo.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)


def start_worker(url: str, tmp_path, i: int) -> tuple[subprocess.Popen, object]:
    log = open(tmp_path / f"worker-{i}.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dreamdpo.cli", "worker", "--db", url, "--beat-s", "0.5", "--dead-after-s", "4",
         "--poll-s", "0.2", "--scratch", str(tmp_path)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return proc, log


def runs_table(engine) -> dict[int, dict]:
    with engine.connect() as conn:
        return {r["id"]: dict(r) for r in conn.execute(sa.select(Run.__table__)).mappings()}


def events(tmp_path, n: int) -> list[tuple[str, int, str, float, float | None]]:
    """(worker, run, what, t, held_until) of every worker's log lines."""
    out = []
    for i in range(n):
        for line in (tmp_path / f"worker-{i}.log").read_text().splitlines():
            m = EVENT.match(line)
            if m:
                out.append((m[1], int(m[2]), m[3], float(m[4]), float(m[5]) if m[5] else None))
    return out


def state(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def tensors_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.slow
@pytest.mark.postgres
def test_three_workers_run_five_queued_runs_once_and_a_killed_workers_run_resumes_bit_for_bit(
        toy_prior, pg_server, tmp_path):
    url = pg_server.database()
    store = tmp_path / "store"
    sub = dreamdpo("submit", "--db", url, "--prompt", "a red cube", "--seeds", "0", "0", "1", "1", "2",
                   "--storage", store.as_uri(), f"steps={STEPS}", f"checkpoint_every={EVERY}", *TINY)
    assert sub.returncode == 0, sub.stderr
    ids = [int(i) for i in re.search(r"^ids: (.+)$", sub.stdout, re.M)[1].split()]
    assert len(ids) == 5
    engine = db_engine.connect(url)
    workers = [start_worker(url, tmp_path, i) for i in range(3)]
    by_pid = {p.pid: p for p, _ in workers}
    try:
        # the victim: a seed-0 run past its first checkpoint (copied to the storage URL), well before its end
        def victim():
            for rid in ids[:2]:
                r = runs_table(engine)[rid]
                if (r["status"] == "running" and EVERY < r["step"] < STEPS - 10
                        and (store / f"run-{rid}" / "checkpoints" / "last.pt").exists()):
                    return rid, r["worker"]
            assert all(p.poll() is None for p in by_pid.values()), "a worker ended on its own"
            return None

        run_id, holder = until_set(victim, "a seed-0 run past its first checkpoint", timeout=600)
        killed = by_pid[int(holder.split(":")[1])]
        kill_t = time.time()
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=60)
        until(lambda: all(r["status"] in ("finished", "failed", "cancelled") for r in runs_table(engine).values()),
              "every queued run ended", timeout=900)
    finally:
        for proc, _ in workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=120) for proc, _ in workers]
        for _, log in workers:
            log.close()
    logs = "\n".join((tmp_path / f"worker-{i}.log").read_text()[-3000:] for i in range(3))
    rows = runs_table(engine)
    assert {rows[i]["status"] for i in ids} == {"finished"}, logs
    # every run finished exactly once
    ev = events(tmp_path, 3)
    assert Counter(r for _, r, what, _, _ in ev if what == "finished") == Counter(ids), logs
    assert not [e for e in ev if e[2] in ("failed", "cancelled")], logs
    # the killed worker's run went back to the queue and another worker resumed it from its checkpoint
    claims = [(w, t) for w, r, what, t, _ in ev if r == run_id and what == "claimed"]
    assert rows[run_id]["attempts"] == len(claims) >= 2, logs
    assert re.search(rf"run {run_id} claimed \(attempt 2, resumed from its checkpoint", logs), logs
    assert rows[run_id]["worker"] != holder
    # no run is ever held by two workers: each claim comes after the previous holder's last write that
    # proved it held the run (its held_until), or after the kill of the killed worker
    held = defaultdict(list)
    ends = {(w, r): (t if until_t is None else until_t) for w, r, what, t, until_t in ev if what != "claimed"}
    for w, r, what, t, _ in ev:
        if what == "claimed":
            end = ends.get((w, r), kill_t if w == holder else None)
            assert end is not None, f"worker {w} claimed run {r} and never let it go"
            held[r].append((t, end, w))
    for r, spans in held.items():
        spans.sort()
        for (_, end, w1), (start, _, w2) in zip(spans, spans[1:]):
            assert end < start, f"run {r} held by {w1} until {end} and claimed by {w2} at {start}"
    # bit for bit: the resumed run's final parameters and optimizer state equal the uninterrupted twin's
    twin = ids[1] if run_id == ids[0] else ids[0]
    resumed, reference = (state(store / f"run-{i}" / "checkpoints" / "last.pt") for i in (run_id, twin))
    assert resumed["step"] == reference["step"] == STEPS
    assert tensors_equal(resumed["renderer"], reference["renderer"])
    assert tensors_equal(resumed["optimizer"]["state"], reference["optimizer"]["state"])
    # the storage holds each step's metrics once and the finished outputs; the log each step's pair once
    with open(store / f"run-{run_id}" / "metrics.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(STEPS))
    assert (store / f"run-{run_id}" / "turntable" / "contact_sheet.png").exists()
    with engine.connect() as conn:
        per_step = conn.execute(sa.select(Pair.step, sa.func.count()).where(Pair.run_id == run_id)
                                .group_by(Pair.step)).all()
        stopped = conn.execute(sa.select(Worker.name, Worker.stopped_at)).all()
    assert sorted(s for s, _ in per_step) == list(range(STEPS)) and {n for _, n in per_step} == {1}
    # the survivors stopped cleanly on SIGTERM and say so in the log; the killed one never could
    assert sorted(codes) == sorted([-signal.SIGKILL, 128 + signal.SIGTERM, 128 + signal.SIGTERM]), logs
    assert sorted(name for name, at in stopped if at is None) == [holder]


@pytest.mark.slow
def test_sigterm_gives_the_run_back_to_the_queue_and_the_next_worker_finishes_it(toy_prior, tmp_path):
    url = f"sqlite:///{tmp_path / 'log.sqlite'}"
    store = tmp_path / "store"
    sub = dreamdpo("submit", "--db", url, "--prompt", "a blue sphere", "--storage", store.as_uri(),
                   "steps=200", f"checkpoint_every={EVERY}", *TINY)
    assert sub.returncode == 0, sub.stderr
    run_id = int(re.search(r"^ids: (\d+)$", sub.stdout, re.M)[1])
    engine = db_engine.connect(url)
    proc, log = start_worker(url, tmp_path, 0)
    try:
        until(lambda: runs_table(engine)[run_id]["step"] > EVERY
              and (store / f"run-{run_id}" / "checkpoints" / "last.pt").exists(), "the run past a checkpoint")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    row = runs_table(engine)[run_id]
    assert (row["status"], row["worker"], row["attempts"]) == ("queued", None, 1)
    assert f"run {run_id} released to the queue" in (tmp_path / "worker-0.log").read_text()
    done = dreamdpo("worker", "--db", url, "--once", "--scratch", str(tmp_path), "--poll-s", "0.2")
    assert done.returncode == 0, done.stderr
    assert re.search(rf"run {run_id} claimed \(attempt 2, resumed from its checkpoint", done.stdout), done.stdout
    assert runs_table(engine)[run_id]["status"] == "finished"


@pytest.mark.parametrize("args, says", [
    (["--prompts", "PROMPTS", "--storage", "STORE"], "PROMPTS line 3 \\(config 'default', seed 0\\): the toy world does not know the word 'banana'"),
    (["--prompt", "a red cube", "--storage", "file:///proc/no-such-folder"], "storage URL file:///proc/no-such-folder is unreachable"),
    (["--prompt", "a red cube", "--storage", "STORE", "--config", "dpo.tau=0.01", "--config", "steps=-1"], "config 'steps=-1', seed 0\\): steps must be ≥ 1"),
])
def test_submit_refuses_bad_input_in_one_line_and_queues_nothing(tmp_path, capsys, args, says):
    url = f"sqlite:///{tmp_path / 'log.sqlite'}"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n# a comment\na purple banana\n")
    args = [str(prompts) if a == "PROMPTS" else (tmp_path / "store").as_uri() if a == "STORE" else a for a in args]
    assert cli(["submit", "--db", url, "--prompt", "a green cone", "--storage", (tmp_path / "store").as_uri()]) == 0
    capsys.readouterr()
    assert cli(["submit", "--db", url, *args]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and re.search(says.replace("PROMPTS", re.escape(str(prompts))), lines[0]), err
    with db_engine.connect(url).connect() as conn:  # the earlier queued run is still there, and alone
        assert conn.execute(sa.select(Run.prompt, Run.status)).all() == [("a green cone", "queued")]


def test_a_worker_asked_for_a_gpu_it_does_not_have_is_refused_before_registering(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    url = f"sqlite:///{tmp_path / 'log.sqlite'}"
    assert cli(["submit", "--db", url, "--prompt", "a green cone", "--storage", (tmp_path / "store").as_uri()]) == 0
    capsys.readouterr()
    assert cli(["worker", "--db", url, "--device", "cuda", "--once"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "dreamdpo worker: error: device 'cuda' asked for but no CUDA GPU is visible; use --device cpu"]
    with db_engine.connect(url).connect() as conn:
        assert conn.execute(sa.select(Run.status, Run.worker, Run.attempts)).all() == [("queued", None, 0)]
        assert conn.execute(sa.select(sa.func.count()).select_from(Worker)).scalar_one() == 0
