"""Run queue speed (issue 15, item 1): workers' claim latency on both engines, and the time from a
worker's kill -9 to its run being resumed by another worker.

1. Claims: --runs queued runs, --claimers processes (workers on many hosts) each claiming until the
   queue is empty, side by side on a SQLite file and a throw-away PostgreSQL (db/pg_cluster.py).
   Each claim is timed (db.run_queue.claim_run: one UPDATE, SKIP LOCKED on PostgreSQL); p50/p95/max
   and claims/s. Then the heartbeat (worker_beat) and the dead-worker sweep (requeue_dead) with every
   claimer's run held.
2. Kill → resume: two real `dreamdpo worker` processes on PostgreSQL, two toy runs; the holder of one
   is killed (kill -9) after its first checkpoint; timed: kill → re-queued, → claimed again, → the
   resumed run's first new step in the log. With --beat-s / --dead-after-s (the worker's defaults are
   10 s / 60 s; a re-queue comes dead-after-s to dead-after-s + beat-s after the last beat).

    python bench/bench_queue.py [--engines sqlite,postgresql] [--runs 2000] [--claimers 8] [--kills 3]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from annotator.browser import until
from db import run_queue
from db.engine import connect
from db.models import Run

CTX = mp.get_context("fork")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


# ----------------------------------------------------------------------------- claims
def _claimer(url: str, name: str, start_at: float, q) -> None:
    eng = connect(url)
    run_queue.register_worker(eng, name)
    while time.time() < start_at:
        time.sleep(0.001)
    times, ids = [], []
    while True:
        t0 = time.perf_counter()
        run = run_queue.claim_run(eng, name)
        times.append((time.perf_counter() - t0) * 1000)
        if run is None:
            break
        ids.append(run["id"])
    q.put((times, ids, time.time()))


def claims(url: str, n_runs: int, n_claimers: int) -> dict:
    eng = connect(url)
    config = {"prompt": "a red cube", "steps": 300, "seed": 0}  # a config of realistic size is not needed here
    for start in range(0, n_runs, 500):
        run_queue.submit_runs(eng, [run_queue.QueuedRun(f"a red cube {i}", config, "toy")
                                    for i in range(start, min(n_runs, start + 500))], "file:///shared/runs")
    q = CTX.Queue()
    start_at = time.time() + 1.5
    procs = [CTX.Process(target=_claimer, args=(url, f"w{i}", start_at, q)) for i in range(n_claimers)]
    for p in procs:
        p.start()
    results = [q.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    times = [t for r in results for t in r[0]]
    ids = [i for r in results for i in r[1]]
    assert len(ids) == len(set(ids)) == n_runs, "a run claimed twice or not at all"
    wall = max(r[2] for r in results) - start_at
    # heartbeats and the sweep, on a log where n_claimers workers hold runs
    beats, sweeps = [], []
    held = {f"w{i}": r[1][-1] for i, r in enumerate(results) if r[1]}
    for _ in range(200):
        for name, rid in held.items():
            t0 = time.perf_counter()
            run_queue.worker_beat(eng, name, rid)
            beats.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        run_queue.requeue_dead(eng, 60.0)
        sweeps.append((time.perf_counter() - t0) * 1000)
    return {"p50": pct(times, 0.5), "p95": pct(times, 0.95), "max": max(times), "per_s": n_runs / wall,
            "beat_p95": pct(beats, 0.95), "sweep_p95": pct(sweeps, 0.95)}


# ----------------------------------------------------------------------------- kill → resume
def run_row(eng, run_id: int) -> dict:
    with eng.connect() as conn:
        return dict(conn.execute(sa.select(Run.__table__).where(Run.id == run_id)).mappings().one())


def kill_to_resume(url: str, tmp: Path, beat_s: float, dead_after_s: float, steps: int = 400,
                   every: int = 20) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "dreamdpo.cli"]
    store = tmp / f"store-{time.time_ns()}"
    out = subprocess.run([*cli, "submit", "--db", url, "--prompt", "a red cube", "--seeds", "0", "1",
                          "--storage", store.as_uri(), f"steps={steps}", f"checkpoint_every={every}",
                          "test_views=1", "test_resolution=32", "export_mesh=false", "schedule.resolution=32"],
                         capture_output=True, text=True, env=env, check=True).stdout
    ids = [int(i) for i in out.strip().splitlines()[-1].split()[1:]]
    workers = [subprocess.Popen([*cli, "worker", "--db", url, "--beat-s", str(beat_s), "--dead-after-s",
                                 str(dead_after_s), "--poll-s", "0.2", "--scratch", str(tmp)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env) for _ in range(3)]
    eng = connect(url)
    try:
        victim = ids[0]
        row = until(lambda: (r := run_row(eng, victim))["step"] > every + 2
                    and (store / f"run-{victim}" / "checkpoints" / "last.pt").exists() and r, "a checkpoint", 900)
        pid = int(row["worker"].split(":")[1])
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        until(lambda: (r := run_row(eng, victim))["status"] == "queued" or r["attempts"] > 1, "re-queue", 900)
        requeued = time.time() - killed_at
        until(lambda: run_row(eng, victim)["attempts"] == 2, "a second claim", 900)
        claimed = time.time() - killed_at
        step_then = run_row(eng, victim)["step"]
        # the resumed run's first step logged (its progress write after the checkpoint's step)
        until(lambda: (r := run_row(eng, victim))["attempts"] == 2 and r["step"] != step_then, "a resumed step", 900)
        resumed = time.time() - killed_at
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in workers:
            w.wait(timeout=120)
    return {"requeued": requeued, "claimed": claimed, "resumed": resumed}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default="sqlite,postgresql")
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--claimers", type=int, default=8)
    ap.add_argument("--kills", type=int, default=3, help="kill → resume repetitions (0: skip)")
    ap.add_argument("--beat-s", type=float, default=2.0)
    ap.add_argument("--dead-after-s", type=float, default=10.0)
    args = ap.parse_args(argv)
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at start", flush=True)
    server = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in filter(None, args.engines.split(",")):  # --engines '': only the kills
                if name == "sqlite":
                    url = f"sqlite:///{tmp}/claims.sqlite"
                else:
                    from db.pg_cluster import PostgresServer

                    server = server or PostgresServer()
                    server.start()
                    url = server.database()
                r = claims(url, args.runs, args.claimers)
                print(f"{name}: {args.runs} runs, {args.claimers} claimer processes: claim p50 {r['p50']:.1f} ms, "
                      f"p95 {r['p95']:.1f} ms, max {r['max']:.0f} ms; {r['per_s']:.0f} claims/s; heartbeat p95 "
                      f"{r['beat_p95']:.1f} ms, dead-worker sweep p95 {r['sweep_p95']:.1f} ms "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
            if args.kills:
                if server is None:
                    from db.pg_cluster import PostgresServer

                    server = PostgresServer()
                    server.start()
                got = []
                for i in range(args.kills):
                    r = kill_to_resume(server.database(), Path(tmp), args.beat_s, args.dead_after_s)
                    got.append(r)
                    print(f"kill -9 #{i + 1} (beat {args.beat_s:g} s, dead after {args.dead_after_s:g} s): "
                          f"re-queued after {r['requeued']:.1f} s, claimed by another worker after "
                          f"{r['claimed']:.1f} s, its first resumed step after {r['resumed']:.1f} s "
                          f"(load {os.getloadavg()[0]:.1f})", flush=True)
                if got:
                    print("kill → resumed step: median "
                          f"{statistics.median(r['resumed'] for r in got):.1f} s over {len(got)}", flush=True)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
