"""Stopping `dreamdpo annotate` / `dreamdpo demo` stops their children: after SIGTERM, SIGINT or even
kill -9 of dreamdpo, nothing serves the port and the Streamlit child is gone; a restart on the same
port right away is not refused (a socket in TIME-WAIT is not "in use").

Every wait polls a condition with a generous time-out.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dreamdpo.commands.annotate import check_port_free
from dreamdpo.errors import UserError

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str, poll: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def serving(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has stopped; only its exit status is left


def children(pid: int) -> list[int]:
    """The Streamlit processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(fields[1]) == pid and b"streamlit" in cmdline:
                found.append(int(entry.name))
    return found


def start(args: list[str], tmp_path: Path, env: dict | None = None) -> subprocess.Popen:
    """dreamdpo as a shell starts a background job (`dreamdpo annotate &`): with SIGINT ignored, which
    Python keeps unless the program installs its own handler."""
    log = open(tmp_path / f"dreamdpo-{len(list(tmp_path.glob('dreamdpo-*')))}.log", "wb")  # noqa: SIM115 (the child writes it)
    return subprocess.Popen([sys.executable, "-m", "dreamdpo.cli", *args], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # noqa: PLW1509


def start_annotate(tmp_path: Path, port: int) -> tuple[subprocess.Popen, int]:
    proc = start(["annotate", "--db", str(tmp_path / "log.sqlite"), "--port", str(port)], tmp_path)
    wait_for(lambda: serving(port) or proc.poll() is not None, 180, "the app to serve")
    assert proc.poll() is None, (tmp_path / "dreamdpo-0.log").read_text()
    [app] = wait_for(lambda: children(proc.pid), 30, "the Streamlit child")
    return proc, app


def assert_stopped(port: int, app: int) -> None:
    wait_for(lambda: not alive(app), 60, "the Streamlit child to exit")
    wait_for(lambda: not listening(port), 60, "the port to be free")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_annotate_stops_its_streamlit_child(tmp_path, sig):
    port = free_port()
    proc, app = start_annotate(tmp_path, port)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) in (0, 130, 143)
    assert_stopped(port, app)


def test_kill_9_of_annotate_still_stops_its_child(tmp_path):
    """dreamdpo gets no chance to clean up; the child's parent-death signal (Linux) ends it."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the parent-death signal is Linux only")
    port = free_port()
    proc, app = start_annotate(tmp_path, port)
    proc.kill()
    proc.wait(timeout=60)
    assert_stopped(port, app)


def test_a_restart_on_the_same_port_is_not_refused(tmp_path):
    port = free_port()
    proc, app = start_annotate(tmp_path, port)
    for _ in range(5):  # connections the server closes leave sockets in TIME-WAIT on its port
        assert serving(port)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert_stopped(port, app)
    check_port_free("127.0.0.1", port)  # TIME-WAIT only: free, as the server will see it
    again, app2 = start_annotate(tmp_path, port)
    try:
        assert serving(port)
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(timeout=60)
    assert_stopped(port, app2)


def test_a_port_someone_listens_on_is_reported_in_use():
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(UserError, match="in use"):
            check_port_free("127.0.0.1", s.getsockname()[1])


def test_sigterm_to_the_demo_stops_its_app_and_its_run(tmp_path, toy_prior):
    """The demo: the app child and the optimization in dreamdpo itself both end (the toy bank comes
    from the session's cache, which `toy_prior` fills)."""
    port = free_port()
    proc = start(["demo", "--port", str(port), "--steps", "50", "--quiet", "--db", str(tmp_path / "log.sqlite"),
                  "--out", str(tmp_path / "out")], tmp_path)
    try:
        wait_for(lambda: serving(port) or proc.poll() is not None, 600, "the demo's app to serve")
        assert proc.poll() is None, (tmp_path / "dreamdpo-0.log").read_text()
        [app] = wait_for(lambda: children(proc.pid), 30, "the Streamlit child")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) in (130, 143), (tmp_path / "dreamdpo-0.log").read_text()
        assert_stopped(port, app)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
