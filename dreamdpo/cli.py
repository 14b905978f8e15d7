"""`dreamdpo run | submit | worker | demo | annotate | export | stats | annotators | db | toyworld | arena`.

Each command family lives in dreamdpo/commands/<name>.py and exposes `add_commands(subparsers)`;
a command's handler takes the parsed args and returns an exit code. Imports are lazy so that
`dreamdpo annotators list` does not pay for torch.

Every refusal is one line on stderr and exit code 2 (bad arguments included). SIGTERM is turned
into the same interrupt as Ctrl-C, so that a command's `finally` stops its children (the app's
Streamlit server, the demo's run) before dreamdpo exits, as systemd, Docker and Kubernetes expect.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys

COMMAND_MODULES = ["run", "queue", "log", "annotate", "audit", "toyworld", "arena"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, like Ctrl-C's KeyboardInterrupt."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (not the usage block) and exits 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's real default; never "(default: None)" or a flag's "(default: False)"."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


# `dreamdpo run` options whose default comes from RunConfig (None on the command line, so that a
# --config file is not overridden): their help shows RunConfig's value
RUN_CONFIG_DEFAULTS = {"prompt": "prompt", "backbone": "backbone", "judge": "judge", "steps": "steps",
                       "seed": "seed", "device": "device", "tau": "dpo.tau"}


class RunDefaultsFormatter(DefaultsFormatter):
    """`dreamdpo run --help`: RunConfig's defaults, read only when the help is printed (RunConfig imports
    torch, which no other command should pay for)."""

    def _get_help_string(self, action):
        text = super()._get_help_string(action)
        path = RUN_CONFIG_DEFAULTS.get(action.dest)
        if path is None or "default" in text:
            return text
        from dreamdpo.config import RunConfig

        value = RunConfig()
        for part in path.split("."):
            value = getattr(value, part)
        return f"{text} (default: {value!r})".strip().replace("%", "%%")


def _all_parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _all_parsers(child)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
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
    for p in _all_parsers(parser):
        p.formatter_class = DefaultsFormatter
    if "run" in sub.choices:
        sub.choices["run"].formatter_class = RunDefaultsFormatter
    return parser


def _on_sigterm(signum, _frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    from db.engine import explain
    from dreamdpo.errors import UserError

    parser = build_parser()
    args = parser.parse_args(argv)
    previous = previous_int = None
    if _main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        # Ctrl-C or `kill -INT` stops every command, even one started by a shell that ignores SIGINT for its
        # background jobs (Python then leaves SIGINT ignored: `dreamdpo annotate &` could not be stopped by it)
        previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return int(args.handler(args) or 0)
    except UserError as e:
        return _refuse(args, e)
    except Terminated:
        print("terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a log or disk failure met anywhere: one line, never a traceback
        known = explain(e)
        if known is None:
            raise
        return _refuse(args, known)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _refuse(args, error: Exception) -> int:
    text = " ".join(str(error).split())  # one line, however the message was built
    if len(text) > 500:
        text = text[:497] + "…"
    print(f"dreamdpo {args.command}: error: {text}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
