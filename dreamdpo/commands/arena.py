"""`dreamdpo arena post | leaderboard`: arena pairs between finished runs of a prompt, and the anchored
Bradley–Terry leaderboard of configs (or judges, or seeds) from people's votes on them (db/arena.py,
db/leaderboard.py; no torch imported)."""
from __future__ import annotations

import argparse
import json
import math

import pandas as pd

_DB_HELP = ("the log: a database URL or SQLite path (default: $DREAMDPO_DB, else the local SQLite log); "
            "a missing log is an error, never created")


def add_commands(subparsers) -> None:
    from db.arena import BY, VOTES_NEEDED
    from db.criteria import CRITERION_NAMES
    from db.leaderboard import POLICIES

    arena = subparsers.add_parser("arena", help="compare finished runs with people's votes: post pairs, leaderboard")
    sub = arena.add_subparsers(dest="arena_command", required=True, metavar="ACTION")
    post = sub.add_parser("post", help="post arena pairs between finished runs of one prompt")
    post.add_argument("--prompt", required=True, help="the prompt whose finished runs are compared")
    post.add_argument("--runs", default=None, metavar="ID[,ID]", help="only these runs (default: every finished "
                      "run of the prompt with a turntable)")
    post.add_argument("--pairs", type=int, default=1, help="how many pairs to post")
    post.add_argument("--votes", type=int, default=VOTES_NEEDED, help="people per pair")
    post.add_argument("--policy", choices=list(POLICIES), default="active",
                      help="active: the pair whose votes most shrink the leaderboard's CIs; random; round_robin")
    post.add_argument("--baseline", default=None, help="the config the CIs are anchored to (default: the one with "
                      "the most votes)")
    post.add_argument("--db", default=None, help=_DB_HELP)
    post.set_defaults(handler=run_post)

    board = sub.add_parser("leaderboard", help="Bradley–Terry ratings with bootstrap CIs, anchored to a baseline")
    board.add_argument("--baseline", default=None, help="the item rated 1000 (default: the one with the most votes)")
    board.add_argument("--by", choices=list(BY), default="config", help="what is ranked")
    board.add_argument("--criterion", choices=list(CRITERION_NAMES), default=None,
                       help="rank on people's verdicts on this criterion instead of their overall votes")
    board.add_argument("--rounds", type=int, default=200, help="bootstrap rounds (votes resampled)")
    board.add_argument("--json", action="store_true", help="print JSON instead of tables")
    board.add_argument("--db", default=None, help=_DB_HELP)
    board.set_defaults(handler=run_leaderboard)


def _run_ids(text: str | None) -> list[int] | None:
    from dreamdpo.errors import UserError

    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--runs takes run ids separated by commas, like 3,5,8; not {text!r}") from None


def run_post(args: argparse.Namespace) -> int:
    from db.arena import post_arena_pairs
    from db.engine import connect

    ids = post_arena_pairs(connect(args.db, create=False), args.prompt, run_ids=_run_ids(args.runs),
                           n_pairs=args.pairs, votes_needed=args.votes, policy=args.policy, baseline=args.baseline)
    if not ids:
        print("no new pair: every pair of these runs already waits for votes")
        return 0
    print(f"posted {len(ids)} arena pair(s) for {args.prompt!r}, {args.votes} vote(s) each: "
          + " ".join(str(i) for i in ids))
    return 0


def _num(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 3)


def leaderboard_json(board) -> dict:
    """The leaderboard as plain data (what --json prints)."""
    return {"baseline": board.baseline, "votes": board.n_votes, "level": board.level,
            "items": [{"item": item, "rank": int(r["rank"]), "rating": _num(r["rating"]), "low": _num(r["low"]),
                       "high": _num(r["high"]), "votes": int(r["votes"]), "win_rate": _num(r["win_rate"])}
                      for item, r in board.table.iterrows()],
            "win_rate": {a: {b: _num(v) for b, v in row.items()} for a, row in board.win_rate.iterrows()},
            "counts": {a: {b: int(v) for b, v in row.items()} for a, row in board.counts.iterrows()}}


def format_leaderboard(board, by: str) -> str:
    """The leaderboard, the win-rate matrix and the vote counts as plain text."""
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 60):
        table = board.table.assign(rating=board.table["rating"].round(0), low=board.table["low"].round(0),
                                   high=board.table["high"].round(0), win_rate=board.table["win_rate"].round(3))
        return "\n".join([
            f"{by} leaderboard: {board.n_votes} votes, anchored to {board.baseline!r} = 1000 "
            f"(400 points: 10:1 odds), {board.level:.0%} bootstrap CIs",
            table.to_string(),
            "\n== win rate (row beats column, ties half)",
            board.win_rate.round(3).to_string(na_rep="-"),
            "\n== votes",
            board.counts.to_string(),
        ])


def run_leaderboard(args: argparse.Namespace) -> int:
    from db.arena import arena_leaderboard
    from db.engine import connect

    board = arena_leaderboard(connect(args.db, create=False), by=args.by, baseline=args.baseline,
                              criterion=args.criterion, n_boot=args.rounds)
    print(json.dumps(leaderboard_json(board), indent=1) if args.json else format_leaderboard(board, args.by))
    return 0
