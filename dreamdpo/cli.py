"""`dreamdpo run | demo | annotate | export | stats | annotators | db | toyworld`.

Each command family lives in dreamdpo/commands/<name>.py and exposes `add_commands(subparsers)`;
a command's handler takes the parsed args and returns an exit code. Imports are lazy so that
`dreamdpo annotators list` does not pay for torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ["run", "log", "annotate", "audit", "toyworld"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dreamdpo", description="Preference-aligned text-to-3D (DreamDPO), with people in the loop and a log "
                                     "of every comparison.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"dreamdpo.commands.{name}")
        except ModuleNotFoundError as e:  # a command family not built yet
            if e.name == f"dreamdpo.commands.{name}":
                continue
            raise
        mod.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from db.errors import LogError
    from dreamdpo.errors import UserError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (UserError, LogError) as e:
        print(f"dreamdpo {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
