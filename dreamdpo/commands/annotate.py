"""`dreamdpo annotate` (the annotator app on a log) and `dreamdpo demo` (the whole loop, offline).

The app is `streamlit run annotator/app.py` in a child process; the log's URL travels in
$DREAMDPO_DB, so the app and the optimizer read and write the same log. The child runs in its own
process group, which `stop_app` ends as a whole; on Linux it also gets SIGTERM if dreamdpo dies
without cleaning up (kill -9), so no server is left holding the port.
"""
from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from dreamdpo.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "annotator" / "app.py"
DEMO_PROMPT = "a red cube"


def add_commands(sub) -> None:
    p = sub.add_parser("annotate", help="start the annotator app (Streamlit) on the preference log")
    p.add_argument("--db", help="log URL or SQLite file (default $DREAMDPO_DB, else dreamdpo-data/log.sqlite)")
    p.add_argument("--port", type=port_number, default=8501, help="port to listen on (default: 8501)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on, 0.0.0.0 to serve a team (default: 127.0.0.1, this machine only)")
    p.set_defaults(handler=annotate_command)

    d = sub.add_parser("demo", help="the whole loop offline on a CPU: log, tokens, app and a toy run people judge",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("--prompt", default=argparse.SUPPRESS,
                   help=f"text prompt; another prompt than the current demo run's starts a new run "
                        f"(default: the current demo run's prompt, else {DEMO_PROMPT!r})")
    d.add_argument("--fresh", action="store_true", help="start a new demo run even if the last one can be resumed")
    d.add_argument("--steps", type=int, default=300, help="optimization steps")
    d.add_argument("--mode", choices=("async", "blocking"), default="async",
                   help="async: the run never waits; a model learned from people's votes judges every step and "
                        "people see the pairs it is unsure of (it steered the steerability benchmark with 30 votes); "
                        "blocking: the run waits for people at every k-th step")
    d.add_argument("--max-pairs", type=int, default=30, help="async: pairs shown to people per run, at most")
    d.add_argument("--every-k", type=int, default=10,
                   help="blocking: people judge every k-th step, the toy reward the rest")
    d.add_argument("--timeout", type=float, default=120.0,
                   help="seconds a pair waits for people: blocking, before the toy reward decides it; "
                        "async, before it expires unvoted")
    d.add_argument("--audit-rate", type=float, default=0.1,
                   help="share of the toy reward's steps also shown to people, so the Audit page can compare them")
    d.add_argument("--db", default=argparse.SUPPRESS,
                   help="log URL or SQLite file (default: $DREAMDPO_DB, else <data dir>/log.sqlite)")
    d.add_argument("--port", type=port_number, default=8501, help="port of the annotator app")
    d.add_argument("--out", default=argparse.SUPPRESS,
                   help="output directory (default: the current demo run's, else <data dir>/demo-run)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(handler=demo_command)


# ----------------------------------------------------------------------------- the app process
def port_number(text: str) -> int:
    """argparse type: a TCP port, 1-65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (1-65535)")
    return port


def check_port_free(host: str, port: int) -> None:
    """Bind as the server will (SO_REUSEADDR: a socket left in TIME-WAIT by the last run does not
    count), and say which of host or port is wrong."""
    try:
        family, kind, proto, _name, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                              flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError):
        raise UserError(f"--host {host[:80]!r} is not a known host name or address; pass an address of this "
                        "machine, e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(
                    f"port {port} on {host} is in use by another program; pass --port with a free one"
                ) from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise UserError(f"--host {host} is not an address of this machine; pass one of its addresses, "
                                "127.0.0.1 or 0.0.0.0") from None
            if e.errno == errno.EACCES:
                raise UserError(f"port {port} needs special privileges here; pass --port 1024 or above") from None
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); pass another --host or --port") from None


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the dreamdpo process that started it dies."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001, S110 (not Linux: stop_app and the signal handler still stop it)
        pass


def start_app(db_url: str, port: int, host: str = "127.0.0.1", env: dict | None = None,
              quiet: bool = True) -> subprocess.Popen:
    """The Streamlit server as a child process (its own process group, so Ctrl-C handling stays ours)."""
    child_env = {**os.environ, "DREAMDPO_DB": db_url, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), child_env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
           "--server.address", host, "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none", "--client.toolbarMode", "minimal",
           "--client.showErrorDetails", "none"]  # an unforeseen error is a message, never a traceback
    out = subprocess.DEVNULL if quiet else None
    return subprocess.Popen(cmd, env=child_env, stdout=out, stderr=out, start_new_session=True,
                            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)  # noqa: PLW1509


def wait_ready(proc: subprocess.Popen, port: int, host: str = "127.0.0.1", timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise UserError(f"the annotator app exited with code {proc.returncode}; run `dreamdpo annotate` to see why")
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/_stcore/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise UserError(f"the annotator app did not answer on port {port} within {timeout:.0f} s")


def stop_app(proc: subprocess.Popen) -> None:
    """SIGTERM to the app's whole process group (signalled only while its leader is unreaped, so the
    group id cannot belong to anyone else), SIGKILL after 10 s; returns once it has exited."""
    def signal_group(sig):
        try:
            os.killpg(proc.pid, sig)  # start_new_session: the group's id is the child's pid
        except (ProcessLookupError, PermissionError):
            pass

    if proc.poll() is None:
        signal_group(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            signal_group(signal.SIGKILL)
            proc.wait()


def annotate_command(args) -> int:
    from db.engine import connect, resolve_url

    url = resolve_url(args.db)
    connect(url)  # fail here, in one line, if the log cannot be opened or migrated
    check_port_free(args.host, args.port)
    proc = start_app(url, args.port, args.host, quiet=False)
    try:
        wait_ready(proc, args.port, args.host)
        print(f"annotator app: http://{args.host}:{args.port}  (log: {url}; Ctrl-C stops it)", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop_app(proc)


# ----------------------------------------------------------------------------- the demo
def demo_accounts(engine) -> dict:
    """The demo's admin and annotator accounts, created on first use; every start issues them fresh
    tokens (printed once, only their hashes stored), so nothing secret is kept on disk."""
    from db import accounts

    tokens = {}
    for key, name, admin in (("admin_token", "demo-admin", True), ("annotator_token", "demo-annotator", False)):
        if any(a["name"] == name for a in accounts.list_annotators(engine)):
            tokens[key] = accounts.reissue_token(engine, name)
        else:
            tokens[key] = accounts.add_annotator(engine, name, admin=admin)
    return tokens


def demo_config(args, out: Path, prompt: str):
    from dreamdpo.config import load_config

    flags = {"prompt": prompt, "backbone": "toy", "judge": "human", "steps": args.steps, "out": str(out),
             "device": "cpu", "checkpoint_every": 10}  # mesh and test views: the toy world's defaults
    overrides = [f"human.mode={args.mode}", f"human.max_pairs={args.max_pairs}", f"human.every_k={args.every_k}",
                 f"human.timeout_s={args.timeout}", "human.fallback=model", f"human.audit_rate={args.audit_rate}",
                 "assist_judge=toy-reward"]
    return load_config(flags=flags, overrides=overrides)


def demo_mode_line(h) -> str:
    """What people's votes do in this demo run, in one line."""
    if h.mode == "async":
        return (f"the run never waits: a model learned from your votes judges every step, and up to {h.max_pairs} "
                f"pairs it is unsure of are shown to people")
    return (f"people judge every {h.every_k}th step (the toy reward after {h.timeout_s:.0f} s without a vote, and on "
            f"the other steps; {h.audit_rate:.0%} of those are also shown to people for the Audit page)")


CURRENT = "demo-current"  # in the data dir: the output directory of the demo run `dreamdpo demo` resumes


def demo_run_dir(home: Path, args, engine) -> tuple[Path, str, dict | None]:
    """(output directory, prompt, the log's row of the run found there) for this start of the demo.

    The current demo run is resumed unless --fresh or another --prompt asks for a new one, which
    gets the next free <data dir>/demo-run-N (earlier runs and their files are kept)."""
    import json

    from db import runs

    if getattr(args, "out", None):
        out = Path(args.out)
    else:
        pointer = home / CURRENT
        out = Path(pointer.read_text().strip()) if pointer.is_file() else home / "demo-run"
    run = None
    link = out / "log.json"
    if link.is_file():
        try:
            run = runs.get_run(engine, int(json.loads(link.read_text())["run_id"]))
        except (ValueError, KeyError, TypeError):
            run = None
    prompt = getattr(args, "prompt", None) or (run["prompt"] if run else DEMO_PROMPT)
    if run is not None and (args.fresh or prompt != run["prompt"]) and not getattr(args, "out", None):
        n = 2
        while (home / f"demo-run-{n}").exists():
            n += 1
        out, run = home / f"demo-run-{n}", None
    if not getattr(args, "out", None):
        home.mkdir(parents=True, exist_ok=True)
        (home / CURRENT).write_text(str(out))
    return out, prompt, run


def demo_command(args) -> int:
    from db.engine import connect, data_dir, resolve_url
    from dreamdpo.commands.run import prepare_run
    from dreamdpo.optimize import optimize

    home = data_dir()
    url = resolve_url(getattr(args, "db", None))
    engine = connect(url)
    out, prompt, previous = demo_run_dir(home, args, engine)
    cfg = demo_config(args, out, prompt)
    done = previous is not None and previous["status"] in ("finished", "cancelled")
    resume = not done and (out / "checkpoints" / "last.pt").exists()
    check_port_free("127.0.0.1", args.port)
    tokens = demo_accounts(engine)
    judge, recorder = (None, None) if done else prepare_run(cfg, db_url=url, resume=resume)
    preparing = home / "preparing.txt"  # the app's Annotate page shows the toy bank's progress from it
    proc = start_app(url, args.port, env={"DREAMDPO_LEASE_S": str(cfg.human.lease_seconds),
                                          "DREAMDPO_PREPARING": str(preparing.resolve())})
    result = None
    try:
        wait_ready(proc, args.port)
        print(f"annotator app: http://127.0.0.1:{args.port}\n"
              f"  admin token:     {tokens['admin_token']}\n"
              f"  annotator token: {tokens['annotator_token']}\n"
              f"log: {url}", flush=True)
        if done:
            print(f"demo run {previous['id']} ({previous['prompt']!r}) is {previous['status']}; its renders and "
                  f"turntable are on the Runs page. Start a new one with `dreamdpo demo --fresh`, or "
                  f"`dreamdpo demo --prompt \"another prompt\"`. Ctrl-C stops the app.", flush=True)
            return keep_open(proc)
        print(f"{f'resuming run {recorder.run_id}' if resume else 'starting a run'}: {cfg.prompt!r}, "
              f"{cfg.steps} steps; {demo_mode_line(cfg.human)}", flush=True)
        prepare_toy_world(preparing, progress=not args.quiet)
        result = optimize(cfg, judge=judge, recorder=recorder, resume=resume, progress=not args.quiet)
        print(f"{result.status}: {result.steps_done} steps of run {recorder.run_id}; outputs in {result.out_dir}")
        for name, path in result.outputs.items():
            if isinstance(path, str):
                print(f"  {name}: {path}")
        print("the app stays open to look at the finished run (Runs page); Ctrl-C stops it.", flush=True)
        keep_open(proc)
        return 0 if result.status == "finished" else 1
    except KeyboardInterrupt:
        if done or result is not None:  # only the app was left to stop
            return 0 if done or result.status == "finished" else 1
        print(f"stopped; the last checkpoint is in {out}. Run `dreamdpo demo` again to resume.", file=sys.stderr)
        return 130
    finally:
        stop_app(proc)


def prepare_toy_world(marker: Path, progress: bool = True) -> None:
    """Build (or load) the toy bank the run's prior needs before the run starts, mirroring its progress
    into `marker` ("done total" layouts) for the app; the marker is removed when the bank is ready."""
    from dreamdpo.toyworld import bank

    class Mirrored(bank.tqdm):
        def __init__(self, *a, total=None, **kw):
            super().__init__(*a, total=total, **kw)
            # counted here too: a disabled bar (--quiet) counts nothing
            self.mirrored, self.mirror_total = 0, total or 0

        def update(self, n=1):
            out = super().update(n)
            self.mirrored += n
            marker.write_text(f"{self.mirrored} {self.mirror_total}")
            return out

    marker.write_text("0 0")
    plain, bank.tqdm = bank.tqdm, Mirrored
    try:
        bank.build_bank(bank.BankConfig(), progress=progress)  # optimize's ToyPrior.build() then loads it
    finally:
        bank.tqdm = plain
        marker.unlink(missing_ok=True)


def keep_open(proc: subprocess.Popen) -> int:
    """Until Ctrl-C (or the app exits by itself)."""
    return proc.wait()
