"""Preference-log speed (issues 2 and 15): votes/s with 8 annotator processes, p95 of claim_next, vote
and vote_and_claim_next with a big log (default 100k pairs, 1M votes), p95 from decision written to
wait_for_decision returning. SQLite file and a throw-away PostgreSQL (db/pg_cluster.py) unless --engines
says otherwise.

Throughput loops, side by side in one run: `combined` (vote_and_claim_next: what the Annotate page does;
on PostgreSQL one round trip, db/vote_function.py), `combined_core` (the same call as Core statements),
`separate` (claim_next, then vote), and with --before TREE (a checkout of an older dreamdpo, e.g. from
`git archive`) that tree's own claim_next + vote loop, run in a child process from that tree.
The SQLite big log is built once and cached in /tmp (--cache; copied for each run).

    python bench/bench_db.py [--engines sqlite,postgresql] [--pairs 100000] [--votes 1000000] [--before /tmp/base]
"""
from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from db import accounts, images, pairs, queue, runs, vote_function, votes
from db.engine import connect
from db.models import Decision, Pair, Vote, utcnow

CTX = mp.get_context("fork")


def png(i: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (i % 256, (i // 256) % 256, (i // 65536) % 256)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def p95(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=20)[-1]


def people(eng, n: int, prefix: str) -> list[int]:
    return [accounts.authenticate(eng, accounts.add_annotator(eng, f"{prefix}{i}"))["id"] for i in range(n)]


# ----------------------------------------------------------------------------- votes/s
def _annotate(url: str, who: int, seconds: float, start_at: float, q, loop: str = "separate") -> None:
    eng = connect(url)
    if loop == "combined_core":  # PostgreSQL's vote + claim as Core statements, not its server-side function
        vote_function.use_core_path(eng)
    while time.time() < start_at:
        time.sleep(0.001)
    n, end = 0, start_at + seconds
    c = queue.claim_next(eng, who) if loop != "separate" else None
    while time.time() < end:
        if loop in ("combined", "combined_core"):  # the Annotate page: the vote claims the next pair in its transaction
            if c is None:
                break
            c = queue.vote_and_claim_next(eng, c["pair_id"], who, "a")["next"]
        else:
            c = queue.claim_next(eng, who)
            if c is None:
                break
            votes.vote(eng, c["pair_id"], who, "a")
        n += 1
    q.put(n)


def votes_per_second(url: str, n_procs: int = 8, seconds: float = 10.0, n_pairs: int = 20000,
                     loop: str = "separate") -> float:
    eng = connect(url)
    run = runs.create_run(eng, "throughput")
    runs.set_run_status(eng, run, "running")
    images = [png(i) for i in range(16)]
    for i in range(n_pairs):
        pairs.post_pair(eng, run, i, images[i % 16], images[(i + 1) % 16]) if i < 16 else None
    bulk_pairs(eng, run, n_pairs - 16, images, status="pending")
    analyze(eng)
    who = people(eng, n_procs, "tp")
    q = CTX.Queue()
    start_at = time.time() + 1.0
    procs = [CTX.Process(target=_annotate, args=(url, w, seconds, start_at, q, loop)) for w in who]
    for p in procs:
        p.start()
    total = sum(q.get() for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


# ----------------------------------------------------------------------------- a big log
def bulk_pairs(eng, run: int, n: int, pngs: list[bytes], status: str, votes_needed: int = 1) -> None:
    from sqlalchemy.orm import Session

    with Session(eng) as s, s.begin():
        ids = [images.put_image(s, im) for im in pngs]
    now = utcnow()
    rows = [dict(run_id=run, step=i, view=-1, image_a=ids[i % len(ids)], image_b=ids[(i + 1) % len(ids)],
                 status=status, votes_needed=votes_needed, kind="live", created_at=now) for i in range(n)]
    with eng.begin() as conn:
        for k in range(0, n, 20000):
            conn.execute(sa.insert(Pair), rows[k:k + 20000])


def build_big_log(url: str, n_pairs: int, n_votes: int) -> tuple[int, list[int], float]:
    """n_pairs decided pairs with n_votes human votes (and their decisions); returns run, people, seconds."""
    t0 = time.perf_counter()
    eng = connect(url)
    run = runs.create_run(eng, "a big log")
    runs.set_run_status(eng, run, "running")
    per_pair = max(1, n_votes // n_pairs)
    who = people(eng, per_pair, "big")
    images = [png(i) for i in range(64)]
    bulk_pairs(eng, run, n_pairs, images, status="decided", votes_needed=per_pair)
    with eng.connect() as conn:
        first = conn.execute(sa.select(sa.func.min(Pair.id)).where(Pair.run_id == run)).scalar()
    now = utcnow()
    choices = ["a", "b", "tie", "both_bad"]
    with eng.begin() as conn:
        batch = []
        for pid in range(first, first + n_pairs):
            for k in range(per_pair):
                batch.append(dict(pair_id=pid, annotator_id=who[k], choice=choices[(pid + k) % 4], created_at=now,
                                  retracted=False, shown_left="a"))
            if len(batch) >= 50000:
                conn.execute(sa.insert(Vote), batch)
                batch = []
        if batch:
            conn.execute(sa.insert(Vote), batch)
        dec = [dict(pair_id=pid, winner="a", gap=0.5, rule="majority", n_a=per_pair, n_b=0, n_tie=0, n_both_bad=0,
                    decided_at=now) for pid in range(first, first + n_pairs)]
        for k in range(0, len(dec), 50000):
            conn.execute(sa.insert(Decision), dec[k:k + 50000])
    analyze(eng)
    return run, who, time.perf_counter() - t0


def analyze(eng) -> None:
    """Fresh planner statistics after a bulk load (PostgreSQL's autovacuum would do it within a minute)."""
    if eng.dialect.name == "postgresql":
        with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    else:
        with eng.begin() as conn:
            conn.exec_driver_sql("ANALYZE")


def claim_vote_latency(url: str, run: int, n: int = 400) -> tuple[float, float, float, float, float, float]:
    """p95 and median (ms) of claim_next, of vote, and of vote_and_claim_next, one annotator, with `n`
    fresh pending pairs for each."""
    eng = connect(url)
    bulk_pairs(eng, run, 2 * n, [png(1000 + i) for i in range(8)], status="pending")
    (me,) = people(eng, 1, "lat" + str(time.time_ns() % 10**9))
    claims, vote_ms, both = [], [], []
    for _ in range(n):
        t0 = time.perf_counter()
        c = queue.claim_next(eng, me)
        t1 = time.perf_counter()
        votes.vote(eng, c["pair_id"], me, random.choice("ab"))
        t2 = time.perf_counter()
        claims.append((t1 - t0) * 1000)
        vote_ms.append((t2 - t1) * 1000)
    c = queue.claim_next(eng, me)
    for _ in range(n - 1):
        t0 = time.perf_counter()
        c = queue.vote_and_claim_next(eng, c["pair_id"], me, random.choice("ab"))["next"]
        both.append((time.perf_counter() - t0) * 1000)
    return (p95(claims), statistics.median(claims), p95(vote_ms), statistics.median(vote_ms), p95(both),
            statistics.median(both))


def cached_big_log(url: str, n_pairs: int, n_votes: int, cache_dir: str) -> tuple[int, float, str]:
    """The SQLite big log, built once into cache_dir and copied to `url`'s file: (run, seconds, how)."""
    path = Path(sa.make_url(url).database or "")
    cached = Path(cache_dir) / f"dreamdpo-bench-log-{n_pairs}-{n_votes}.sqlite"
    t0 = time.perf_counter()
    if not cached.exists():
        part = cached.with_suffix(".part")
        part.unlink(missing_ok=True)
        build_big_log(f"sqlite:///{part}", n_pairs, n_votes)
        _copy_sqlite(part, cached)  # a consistent copy, WAL included
        how = "built and cached"
    else:
        how = "copied from the cache"
    _copy_sqlite(cached, path)
    with connect(url).connect() as conn:
        run = conn.execute(sa.select(sa.func.min(Pair.run_id))).scalar_one()
    return run, time.perf_counter() - t0, how


def _copy_sqlite(src: Path, dst: Path) -> None:
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    a.close()
    b.close()


def before_votes_per_second(tree: str, url: str, n_procs: int, seconds: float) -> float:
    """The claim_next + vote loop of an older dreamdpo checkout (its bench's votes_per_second), run from
    that tree in a child process on a fresh log at `url`."""
    code = ("import sys; from bench.bench_db import votes_per_second; "
            f"print(votes_per_second({url!r}, {n_procs}, {seconds}))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- decision → wait returns
def _waiter(url: str, pair_ids: list[int], q) -> None:
    eng = connect(url)
    for pid in pair_ids:
        d = votes.wait_for_decision(eng, pid, timeout=30, poll=0.05)
        q.put((pid, time.time(), d["decided_at"].timestamp()))


def decision_to_wait(url: str, n: int = 60) -> tuple[float, float]:
    eng = connect(url)
    run = runs.create_run(eng, "wait")
    runs.set_run_status(eng, run, "running")
    ids = [pairs.post_pair(eng, run, i, png(5000 + i), png(6000 + i)) for i in range(n)]
    (me,) = people(eng, 1, "wait")
    q = CTX.Queue()
    w = CTX.Process(target=_waiter, args=(url, ids, q))
    w.start()
    lags = []
    for pid in ids:
        time.sleep(random.uniform(0.05, 0.15))
        c = queue.claim_next(eng, me)
        assert c["pair_id"] == pid
        votes.vote(eng, pid, me, "a")
        _, returned, decided = q.get(timeout=30)
        lags.append(returned - decided)
    w.join()
    return p95(lags), statistics.median(lags)


def run_all(args, servers: list) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.engines.split(","):
            if name == "sqlite":
                def url_for(tag, tmp=tmp):
                    return f"sqlite:///{tmp}/{tag}.sqlite"
            else:
                from db.pg_cluster import PostgresServer

                if not servers:
                    servers.append(PostgresServer())
                    servers[0].start()

                def url_for(tag, server=servers[0]):
                    return server.database()
            for loop in args.loops.split(","):
                if loop == "before":
                    if not args.before:
                        continue
                    vps = before_votes_per_second(args.before, url_for("before"), args.procs, args.seconds)
                else:
                    vps = votes_per_second(url_for(f"tp-{loop}"), args.procs, args.seconds, loop=loop)
                print(f"{name}: {vps:.0f} votes/s with {args.procs} annotator processes, loop {loop}", flush=True)
            url = url_for("big")
            if name == "sqlite" and args.cache:
                run, built, how = cached_big_log(url, args.pairs, args.votes, args.cache)
            else:
                run, _, built = build_big_log(url, args.pairs, args.votes)
                how = "built"
            c95, c50, v95, v50, b95, b50 = claim_vote_latency(url, run)
            print(f"{name}: log of {args.pairs} pairs + {args.votes} votes {how} in {built:.0f} s; "
                  f"claim_next p95 {c95:.1f} ms (median {c50:.1f}), vote p95 {v95:.1f} ms (median {v50:.1f}), "
                  f"vote_and_claim_next p95 {b95:.1f} ms (median {b50:.1f})", flush=True)
            w95, w50 = decision_to_wait(url)
            print(f"{name}: decision written → wait_for_decision returned: p95 {w95 * 1000:.0f} ms "
                  f"(median {w50 * 1000:.0f}) with poll 50 ms", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default="sqlite,postgresql")
    ap.add_argument("--pairs", type=int, default=100_000)
    ap.add_argument("--votes", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--loops", default="before,separate,combined",
                    help="throughput loops to run side by side: before (needs --before), separate, combined, "
                         "combined_core (on PostgreSQL: vote_and_claim_next as Core statements, without "
                         "db/vote_function.py's one round trip; the same as combined on SQLite)")
    ap.add_argument("--before", default=None, help="an older dreamdpo tree whose claim_next + vote loop to run too")
    ap.add_argument("--cache", default=tempfile.gettempdir(),
                    help="folder where the SQLite big log is built once ('' to build it every time)")
    args = ap.parse_args(argv)
    servers: list = []
    try:
        run_all(args, servers)
    finally:  # even when the output pipe closes early: never leave a server running
        for server in servers:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
