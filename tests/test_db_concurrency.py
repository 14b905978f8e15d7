"""Many OS processes on one log: one poster, ≥8 annotators, then kill -9 in the middle of the loops.

Invariants checked from the database and from what each process was told (its acknowledgements):
zero lost votes, zero votes without a lease, no pair with more than k voters, every decision
written once and equal to the votes it counts.

The loops run until the log holds enough work (counted events, polled), not for a fixed time:
a loaded machine makes a test slower, never red. TIMEOUT_S only catches a hang.
"""
from __future__ import annotations

import io
import multiprocessing as mp
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image

CTX = mp.get_context("fork")
TIMEOUT_S = 600


def png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (i % 256, (i // 256) % 256, 7)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def poster(url: str, run_id: int, stop, out: str, seed: int) -> None:
    """The optimizer's side: post pairs (k = 1..3), wait for some decisions, record what it was told."""
    from db import pairs, votes
    from db.engine import connect

    eng, rng, i = connect(url), random.Random(seed), 0
    with open(out, "a") as f:
        while not stop.is_set():
            ids = []
            for _ in range(4):
                i += 1
                ids.append(pairs.post_pair(eng, run_id, i, png(2 * i), png(2 * i + 1), votes_needed=rng.randint(1, 3)))
            d = votes.wait_for_decision(eng, ids[0], timeout=rng.choice([0.05, 0.5, 2.0]), poll=0.02)
            f.write(f"wait {ids[0]} {d['winner'] if d else 'none'}\n")
            f.flush()
            time.sleep(0.05)


def annotator(url: str, annotator_id: int, stop, out: str, seed: int) -> None:
    """A person's loop: claim, sometimes skip, stall past the lease or try a pair they do not hold."""
    from db import queue, votes
    from db.engine import connect
    from db.errors import LogError

    eng, rng = connect(url), random.Random(seed)
    with open(out, "a") as f:
        while not stop.is_set():
            c = queue.claim_next(eng, annotator_id, lease_seconds=rng.choice([0.15, 30, 30, 30]))
            if c is None:
                time.sleep(0.02)
                continue
            pid, r = c["pair_id"], rng.random()
            if r < 0.05:
                queue.release(eng, pid, annotator_id)
                continue
            if r < 0.10:  # a vote on a pair not held must be refused
                other = pid + rng.randint(1, 5)
                try:
                    res = votes.vote(eng, other, annotator_id, "a")
                    if res["vote_id"] is not None and not _held_or_voted(eng, other, annotator_id):
                        f.write(f"BAD unleased vote accepted on {other}\n")
                except LogError:
                    pass
            if r > 0.97:
                time.sleep(0.2)  # the short lease may run out meanwhile
            choice = rng.choice(["a", "a", "b", "b", "tie", "both_bad"])
            try:
                res = votes.vote(eng, pid, annotator_id, choice, shown_left=rng.choice("ab"))
            except LogError as e:
                f.write(f"refused {pid} {str(e)[:40]!r}\n")
                f.flush()
                continue
            f.write(f"vote {res['vote_id']} {pid} {choice}\n")
            f.flush()
            if rng.random() < 0.05 and votes.vote(eng, pid, annotator_id, choice)["vote_id"] != res["vote_id"]:
                f.write(f"BAD repeated vote on {pid} not idempotent\n")


def annotator_combined(url: str, annotator_id: int, stop, out: str, seed: int) -> None:
    """The Annotate page's loop: each vote claims the next pair in the same transaction
    (db.queue.vote_and_claim_next); sometimes a skip, a stall past the lease, or the same vote twice."""
    from db import queue
    from db.engine import connect
    from db.errors import LogError

    eng, rng = connect(url), random.Random(seed)
    c = None
    with open(out, "a") as f:
        while not stop.is_set():
            lease = rng.choice([0.15, 30, 30, 30])
            if c is None:
                c = queue.claim_next(eng, annotator_id, lease_seconds=lease)
                if c is None:
                    time.sleep(0.02)
                    continue
            pid, r = c["pair_id"], rng.random()
            if r < 0.05:
                queue.release(eng, pid, annotator_id)
                c = None
                continue
            if r > 0.97:
                time.sleep(0.2)  # the short lease may run out meanwhile
            choice = rng.choice(["a", "a", "b", "b", "tie", "both_bad"])
            try:
                res = queue.vote_and_claim_next(eng, pid, annotator_id, choice, shown_left=rng.choice("ab"),
                                                lease_seconds=lease)
            except LogError as e:
                f.write(f"refused {pid} {str(e)[:40]!r}\n")
                f.flush()
                c = None
                continue
            f.write(f"vote {res['vote']['vote_id']} {pid} {choice}\n")
            f.flush()
            if rng.random() < 0.05:
                again = queue.vote_and_claim_next(eng, pid, annotator_id, choice, lease_seconds=lease)
                if again["vote"]["vote_id"] != res["vote"]["vote_id"]:
                    f.write(f"BAD repeated vote on {pid} not idempotent\n")
                if (again["next"] or {}).get("pair_id") != (res["next"] or {}).get("pair_id") and res["next"]:
                    f.write(f"BAD the claim after a repeated vote on {pid} is not the held one\n")
            c = res["next"]


def _held_or_voted(eng, pair_id, annotator_id) -> bool:
    with eng.connect() as conn:
        return bool(conn.exec_driver_sql(
            f"SELECT count(*) FROM claims WHERE pair_id = {pair_id} AND annotator_id = {annotator_id}").scalar())


def read_acks(paths) -> tuple[dict, list, list]:
    votes, waits, bad = {}, [], []
    for p in paths:
        for line in Path(p).read_text().splitlines():
            parts = line.split()
            if line.startswith("vote ") and len(parts) == 4:
                votes[int(parts[1])] = (int(parts[2]), parts[3])
            elif line.startswith("wait ") and len(parts) == 3:
                waits.append((int(parts[1]), parts[2]))
            elif line.startswith("BAD"):
                bad.append(line)
    return votes, waits, bad


def check_log(url: str, acked: dict, waits: list, bad: list, killed: set[int] = frozenset()) -> dict:
    from db.consensus import outcome
    from db.engine import connect

    assert bad == []
    eng = connect(url)
    with eng.connect() as conn:
        votes = conn.execute(sa.text(
            "SELECT v.id, v.pair_id, v.annotator_id, v.choice, v.created_at, c.claimed_at, c.expires_at "
            "FROM votes v LEFT JOIN claims c ON c.pair_id = v.pair_id AND c.annotator_id = v.annotator_id "
            "WHERE v.annotator_id IS NOT NULL AND NOT v.retracted")).all()
        pairs = {r.id: r for r in conn.execute(sa.text("SELECT id, status, votes_needed FROM pairs"))}
        decisions = {r.pair_id: r for r in conn.execute(sa.text("SELECT * FROM decisions"))}
    by_id = {v.id: v for v in votes}
    # zero lost votes: everything a process was told is stored, unchanged
    for vid, (pid, choice) in acked.items():
        assert vid in by_id and (by_id[vid].pair_id, by_id[vid].choice) == (pid, choice)
    # nothing stored that nobody was told about (a process killed mid-call may have one unacknowledged vote)
    unacked = [v for v in votes if v.id not in acked and v.choice != "skip"]
    assert all(v.annotator_id in killed for v in unacked), unacked[:3]
    assert len(unacked) <= len(killed) * 2
    # zero votes without a lease: each standing non-skip vote was cast inside its claim's lease
    for v in votes:
        if v.choice != "skip":
            assert v.claimed_at is not None and v.claimed_at <= v.created_at < v.expires_at, v
    # no pair with more than k voters; decisions exactly once and equal to the votes they count
    per_pair: dict[int, Counter] = {}
    for v in votes:
        if v.choice != "skip":
            per_pair.setdefault(v.pair_id, Counter())[v.choice] += 1
    for pid, counts in per_pair.items():
        assert sum(counts.values()) <= pairs[pid].votes_needed
    for pid, p in pairs.items():
        counts = per_pair.get(pid, Counter())
        if pid in decisions:
            d = decisions[pid]
            assert p.status == "decided" and sum(counts.values()) == p.votes_needed
            assert (d.n_a, d.n_b, d.n_tie, d.n_both_bad) == (counts["a"], counts["b"], counts["tie"],
                                                              counts["both_bad"])
            full = {"a": 0, "b": 0, "tie": 0, "both_bad": 0} | dict(counts)
            assert (d.winner, d.rule) == outcome(full)[:2]
        else:
            assert p.status in ("pending", "expired") and sum(counts.values()) < p.votes_needed
    # what wait_for_decision returned is what was written
    for pid, winner in waits:
        if winner == "none":
            assert pid not in decisions and pairs[pid].status == "expired"
        else:
            assert decisions[pid].winner == winner
    return dict(votes=len(votes), decisions=len(decisions), pairs=len(pairs), waits=len(waits))


def setup_log(url: str, n_people: int) -> tuple[int, list[int]]:
    from db import accounts, runs
    from db.engine import connect

    eng = connect(url)
    run_id = runs.create_run(eng, "a red cube")
    runs.set_run_status(eng, run_id, "running")
    people = [accounts.authenticate(eng, accounts.add_annotator(eng, f"p{i}"))["id"] for i in range(n_people)]
    eng.dispose()
    return run_id, people


def start(target, *args) -> mp.Process:
    p = CTX.Process(target=target, args=args, daemon=True)
    p.start()
    return p


def counts(url: str) -> dict:
    """Standing people's votes, decisions, and the poster's acknowledged waits so far."""
    from db.engine import connect

    with connect(url).connect() as conn:
        return dict(votes=conn.exec_driver_sql("SELECT count(*) FROM votes WHERE annotator_id IS NOT NULL "
                                               "AND NOT retracted AND choice <> 'skip'").scalar(),
                    decisions=conn.exec_driver_sql("SELECT count(*) FROM decisions").scalar())


def wait_until(url: str, what: str, **at_least) -> dict:
    """Poll the log until every count reaches its floor; only a hang reaches the time-out."""
    end = time.monotonic() + TIMEOUT_S
    while True:
        seen = counts(url)
        if all(seen[k] >= n for k, n in at_least.items()):
            return seen
        if time.monotonic() > end:
            raise AssertionError(f"{what}: {seen} after {TIMEOUT_S} s, wanted {at_least}")
        time.sleep(0.1)


def finish(procs: list[mp.Process], stop) -> None:
    """Stop the loops and wait for each process; none is left behind, even when the test fails."""
    stop.set()
    try:
        for p in procs:
            p.join(timeout=TIMEOUT_S)
            assert p.exitcode == 0, f"process {p.pid} ended with {p.exitcode}"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["two_calls", "one_call"])
def test_one_poster_eight_annotators_until_enough_work(log_url, tmp_path, loop):
    """8 annotator processes and a poster, each person claiming then voting (two calls) or voting and
    claiming the next pair in one call (vote_and_claim_next): nothing lost, every vote inside its lease,
    at most k voters, each decision written once."""
    person = annotator if loop == "two_calls" else annotator_combined
    run_id, people = setup_log(log_url, 8)
    stop = CTX.Event()
    outs = [str(tmp_path / f"ack{i}") for i in range(9)]
    procs = [start(poster, log_url, run_id, stop, outs[0], 0)]
    procs += [start(person, log_url, who, stop, outs[i + 1], i + 1) for i, who in enumerate(people)]
    try:
        wait_until(log_url, "the poster and annotators did too little work", votes=100, decisions=30)
    finally:
        finish(procs, stop)
    acked, waits, bad = read_acks(outs)
    seen = check_log(log_url, acked, waits, bad)
    assert seen["votes"] >= 100 and seen["decisions"] >= 30 and seen["waits"] > 5  # the run did real work
    print(f"\n{log_url.split(':')[0]} ({loop}): {seen}")


@pytest.mark.slow
def test_kill_9_in_the_middle_and_restart(log_url, tmp_path):
    run_id, people = setup_log(log_url, 6)
    stop = CTX.Event()
    outs = [str(tmp_path / f"ack{i}") for i in range(7)]
    procs = [start(poster, log_url, run_id, stop, outs[0], 0)]
    procs += [start(annotator, log_url, who, stop, outs[i + 1], i + 1) for i, who in enumerate(people)]
    killed = set()
    try:
        for round_ in range(3):  # kill -9 two annotators mid-loop, restart them under the same accounts
            floor = counts(log_url)["votes"] + 10  # once each round has seen some votes
            wait_until(log_url, f"round {round_}", votes=floor)
            for k in (1 + round_ % 6, 1 + (round_ + 3) % 6):
                os.kill(procs[k].pid, signal.SIGKILL)
                procs[k].join()
                killed.add(people[k - 1])
                procs[k] = start(annotator, log_url, people[k - 1], stop, outs[k], 100 + 10 * round_ + k)
        os.kill(procs[0].pid, signal.SIGKILL)  # and the poster, mid-post or mid-wait
        procs[0].join()
        procs[0] = start(poster, log_url, run_id, stop, outs[0], 99)
        wait_until(log_url, "after the restarts", votes=max(50, counts(log_url)["votes"] + 10))
    finally:
        finish(procs, stop)
    acked, waits, bad = read_acks(outs)
    seen = check_log(log_url, acked, waits, bad, killed=killed)
    assert seen["votes"] >= 50
    if log_url.startswith("sqlite"):
        from db.engine import connect

        with connect(log_url).connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
