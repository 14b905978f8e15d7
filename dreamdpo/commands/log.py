"""`dreamdpo db upgrade` and `dreamdpo annotators add NAME [--admin] | list | deactivate NAME | activate NAME`."""
from __future__ import annotations

import argparse


def _db_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=None, help="database URL or SQLite file (default: $DREAMDPO_DB, else "
                                              "dreamdpo-data/log.sqlite under $DREAMDPO_HOME or .)")


def add_commands(subparsers) -> None:
    db = subparsers.add_parser("db", help="the preference log's database")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = db_sub.add_parser("upgrade", help="migrate the log to this version's schema (Alembic)")
    _db_option(up)
    up.set_defaults(handler=run_upgrade)

    ann = subparsers.add_parser("annotators", help="annotator accounts")
    ann_sub = ann.add_subparsers(dest="annotators_command", required=True, metavar="ACTION")
    add = ann_sub.add_parser("add", help="create an account and print its token once")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="may open the admin pages")
    _db_option(add)
    add.set_defaults(handler=run_add)
    ls = ann_sub.add_parser("list", help="list accounts")
    _db_option(ls)
    ls.set_defaults(handler=run_list)
    de = ann_sub.add_parser("deactivate", help="block an account (its votes stay)")
    de.add_argument("name")
    _db_option(de)
    de.set_defaults(handler=run_deactivate)
    ac = ann_sub.add_parser("activate", help="unblock a deactivated account (its old token works again)")
    ac.add_argument("name")
    _db_option(ac)
    ac.set_defaults(handler=run_activate)


def run_upgrade(args: argparse.Namespace) -> int:
    from db.engine import resolve_url, upgrade

    rev = upgrade(args.db)
    print(f"the log at {resolve_url(args.db)} is at revision {rev}")
    return 0


def run_add(args: argparse.Namespace) -> int:
    from db.accounts import add_annotator
    from db.engine import connect

    token = add_annotator(connect(args.db), args.name, admin=args.admin)
    print(f"added {'admin' if args.admin else 'annotator'} {args.name}; token (shown once, keep it):")
    print(token)
    return 0


def run_list(args: argparse.Namespace) -> int:
    from db.accounts import list_annotators
    from db.engine import connect

    people = list_annotators(connect(args.db))
    if not people:
        print("no annotators yet; add one with `dreamdpo annotators add NAME`")
    for p in people:
        state = "active" if p["active"] else "deactivated"
        print(f"{p['id']:>5}  {p['name']:<24} {p['role']:<10} {state:<12} {p['created_at']:%Y-%m-%d %H:%M}")
    return 0


def run_deactivate(args: argparse.Namespace) -> int:
    from db.accounts import set_active
    from db.engine import connect

    print(f"deactivated {set_active(connect(args.db), args.name, False)}")
    return 0


def run_activate(args: argparse.Namespace) -> int:
    from db.accounts import set_active
    from db.engine import connect

    print(f"activated {set_active(connect(args.db), args.name, True)}")
    return 0
