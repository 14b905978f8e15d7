"""A simulated annotator: a process that claims pairs from the log and votes by a hidden taste
(dreamdpo.toyworld.taste), exactly as a person in the app would, through the same db API.

    python -m annotator.simulated --db URL --token TOKEN --colour green [--think 1.0] [--run ID]

It is the person of the steerability benchmark and of the async tests. It stops when the run it
follows has ended (or after --max-votes) and prints one JSON line: votes cast, and its idle time
between pairs (what a person would spend waiting for the next pair).
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def annotate(engine, annotator_id: int, taste, *, run_id: int | None = None, think_s: float = 1.0,
             max_votes: int | None = None, poll_s: float = 0.1, give_up_s: float = 3600.0,
             stop=lambda: False) -> dict:
    from db import queue, runs, votes
    from dreamdpo.cameras import Cameras
    from dreamdpo.images import images_from_png

    n_votes, waits, started = 0, [], time.monotonic()
    idle_since = time.monotonic()
    while max_votes is None or n_votes < max_votes:
        if stop() or time.monotonic() - started > give_up_s:
            break
        claim = queue.claim_next(engine, annotator_id)
        if claim is None or (run_id is not None and claim["run_id"] != run_id):
            if claim is not None:
                queue.release(engine, claim["pair_id"], annotator_id)
            # the stored status: a stalled run's live pairs are still voted on (used when it resumes)
            stored = (runs.get_run(engine, run_id) or {}).get("stored_status") if run_id is not None else None
            if run_id is not None and stored not in ("running", "pending"):
                break
            time.sleep(poll_s)
            continue
        waits.append(time.monotonic() - idle_since)
        cams = Cameras.from_dicts(claim["cameras"]) if claim.get("cameras") else None
        choice = taste.choose(images_from_png(claim["image_a"]), images_from_png(claim["image_b"]), cams)
        time.sleep(think_s)  # a person looks before they press a key
        try:
            votes.vote(engine, claim["pair_id"], annotator_id, choice, shown_left="a", latency_ms=int(think_s * 1000))
            n_votes += 1
        except Exception as e:  # the pair expired while "thinking": a person would see the next one
            print(f"vote refused: {e}", file=sys.stderr)
        idle_since = time.monotonic()
    waits.sort()
    p95 = waits[min(len(waits) - 1, int(0.95 * len(waits)))] if waits else None
    return {"votes": n_votes, "idle_s_total": round(sum(waits), 2), "idle_s_p95": p95 and round(p95, 3),
            "idle_s_median": round(waits[len(waits) // 2], 3) if waits else None}


def main(argv: list[str] | None = None) -> int:
    from db import accounts
    from db.engine import connect
    from dreamdpo.toyworld.taste import Taste

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--colour")
    p.add_argument("--shape")
    p.add_argument("--run", type=int)
    p.add_argument("--think", type=float, default=1.0)
    p.add_argument("--max-votes", type=int)
    args = p.parse_args(argv)
    engine = connect(args.db)
    who = accounts.authenticate(engine, args.token)
    if who is None:
        print("the token is not an active account's; create one with `dreamdpo annotators add NAME`", file=sys.stderr)
        return 2
    out = annotate(engine, who["id"], Taste(colour=args.colour, shape=args.shape), run_id=args.run,
                   think_s=args.think, max_votes=args.max_votes)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
