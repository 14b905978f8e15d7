"""How long a SQLite writer waits for the write lock when several processes write in a loop: SQLite's own
busy handler (what db/engine.py used before) against db.engine._begin_immediate (short jittered tries),
side by side in one run, on the same kind of log.

Each of --writers processes runs write transactions back to back for --seconds: BEGIN IMMEDIATE, one
INSERT into runs, three small reads, COMMIT. The time from asking for the transaction to holding the
lock is recorded per transaction. Printed per method: the longest wait, the 99.9th percentile, the
transactions per second of all writers, failures (`database is locked` after the 15 s busy timeout),
and each writer's count (how fairly the lock went round).

    python bench/bench_write_lock.py [--writers 8] [--seconds 20] [--rounds 2]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time

import numpy as np

INSERT = ("INSERT INTO runs (prompt, backbone, status, step, priority, attempts, created_at, updated_at) "
          "VALUES ('bench', '', 'running', 0, 0, 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)")


def writer(url: str, method: str, seconds: float, out) -> None:
    from db import engine as db_engine

    if method == "sqlite busy handler":
        db_engine._begin_immediate = lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE")
    engine = db_engine.connect(url)
    waits, failures = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        asked = time.monotonic()
        try:
            with engine.begin() as conn:
                waits.append(time.monotonic() - asked)
                conn.exec_driver_sql(INSERT)
                for _ in range(3):
                    conn.exec_driver_sql("SELECT count(*) FROM runs WHERE id > 0").scalar()
        except Exception:  # counted: `database is locked` after the busy timeout
            failures += 1
    out.put((waits, failures))


def measure(method: str, writers: int, seconds: float) -> dict:
    from db import engine as db_engine

    url = f"sqlite:///{tempfile.mkdtemp(prefix='bench-lock-')}/log.sqlite"
    db_engine.connect(url).dispose()
    db_engine._ENGINES.clear()
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=writer, args=(url, method, seconds, out)) for _ in range(writers)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    waits = np.concatenate([np.asarray(w) for w, _ in results])
    return dict(max=float(waits.max()), p999=float(np.quantile(waits, 0.999)), per_s=len(waits) / seconds,
                failures=sum(f for _, f in results), counts=sorted(len(w) for w, _ in results))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=2, help="each method this many times, alternating")
    args = ap.parse_args()
    print("| method | longest wait | p99.9 wait | transactions/s | failures | transactions per writer |")
    print("|---|---|---|---|---|---|")
    for _ in range(args.rounds):
        for method in ("sqlite busy handler", "db.engine retry"):
            r = measure(method, args.writers, args.seconds)
            print(f"| {method} | {r['max']:.2f} s | {r['p999'] * 1000:.0f} ms | {r['per_s']:.0f} | {r['failures']} | "
                  f"{min(r['counts'])}–{max(r['counts'])} |", flush=True)


if __name__ == "__main__":
    main()
