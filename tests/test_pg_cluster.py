"""The test PostgreSQL server never outlives its owner: kill -9 of the owner, SIGTERM to a pytest
session, and clusters left by a dead owner found at the next start (db/pg_cluster.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from db import pg_cluster

pytestmark = pytest.mark.skipif(pg_cluster.pg_bin() is None, reason="needs the PostgreSQL server binaries")
TIMEOUT_S = 300  # generous: only a server that is never stopped takes this long


def gone(pid: int, root: Path) -> bool:
    return pg_cluster._start_ticks(pid) is None and not root.exists()


def until(condition, what: str) -> None:
    end = time.monotonic() + TIMEOUT_S
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"{what} after {TIMEOUT_S} s")
        time.sleep(0.2)


def start_owner(code: str, cwd: Path) -> tuple[subprocess.Popen, Path, int]:
    """A child process that starts a cluster (or a pytest session that does) and prints its folder and pid."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    for line in proc.stdout:  # pytest may print before the test does
        if line.startswith("CLUSTER "):
            break
    else:
        raise AssertionError(f"the owner started no cluster (exit code {proc.wait()})")
    root, pid = Path(line.split()[1]), int(line.split()[2])
    assert pg_cluster._start_ticks(pid) is not None and root.exists()
    return proc, root, pid


@pytest.mark.slow
@pytest.mark.postgres
def test_kill_9_of_the_owner_stops_the_server(tmp_path):
    proc, root, pid = start_owner("""
        import signal
        from db.pg_cluster import PostgresServer
        s = PostgresServer().start()
        print("CLUSTER", s.root, s.pids()[0], flush=True)
        signal.pause()
    """, tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    until(lambda: gone(pid, root), "the server of a killed owner still runs")


@pytest.mark.slow
@pytest.mark.postgres
def test_sigterm_to_a_pytest_session_stops_its_server(tmp_path):
    (tmp_path / "test_inner.py").write_text(textwrap.dedent("""
        import signal

        def test_holds_the_server(pg_server):
            print("CLUSTER", pg_server.root, pg_server.pids()[0], flush=True)
            signal.pause()
    """))
    conftest = Path(__file__).with_name("conftest.py")
    (tmp_path / "conftest.py").write_text(conftest.read_text())
    proc, root, pid = start_owner(f"""
        import sys, pytest
        sys.exit(pytest.main(["-q", "-s", "-p", "no:cacheprovider", "--rootdir", {str(tmp_path)!r},
                              {str(tmp_path / "test_inner.py")!r}]))
    """, tmp_path)
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(TIMEOUT_S)
    assert proc.returncode != 0  # interrupted, not passed
    assert gone(pid, root)  # stopped by the session's own finalizer, before it exited


def test_a_cluster_of_a_dead_owner_is_removed_at_the_next_start(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, live, young = (tmp_path / (pg_cluster.PREFIX + n) for n in ("stale", "live", "young"))
    for d in (stale, live, young):
        (d / "data").mkdir(parents=True)
    (stale / pg_cluster.OWNER_FILE).write_text(f"{dead.pid} 1")
    (live / pg_cluster.OWNER_FILE).write_text(f"{os.getpid()} {pg_cluster._start_ticks(os.getpid())}")
    # no owner file: a folder being set up right now (or one from before owner files) is kept while young
    assert pg_cluster.remove_stale(str(tmp_path)) == [stale]
    assert not stale.exists() and live.exists() and young.exists()
    old = time.time() - pg_cluster.LEGACY_AGE_S - 1
    os.utime(young, (old, old))
    assert pg_cluster.remove_stale(str(tmp_path)) == [young]
