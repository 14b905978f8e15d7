"""A throw-away PostgreSQL cluster for tests and benchmarks: initdb + pg_ctl in a temp dir, unix socket only.

It must never outlive the process that started it, however that process ends:
- `stop()` on a normal end (the test session's finalizer, or atexit);
- a watchdog process (`python -m db.pg_cluster watch OWNER_PID ROOT`, in its own session so a Ctrl-C
  to the terminal does not reach it) stops the cluster once its owner is gone, even after kill -9;
- `remove_stale()` at the next start removes any cluster whose owner is gone (the watchdog itself
  was killed, or a cluster from before the watchdog existed).
"""
from __future__ import annotations

import atexit
import glob
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlalchemy as sa

PREFIX = "dreamdpo-pg-"
OWNER_FILE = "owner"  # "<pid> <start time in clock ticks>" of the process the cluster belongs to
LEGACY_AGE_S = 600  # a cluster folder without an owner file older than this is an orphan


def pg_bin() -> Path | None:
    """The newest PostgreSQL server binaries (Debian layout first, then PATH), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _start_ticks(pid: int) -> int | None:
    """Start time of a live, non-zombie process (so a reused pid is not mistaken for the owner)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _owner_alive(root: Path) -> bool:
    try:
        pid, ticks = (int(x) for x in (root / OWNER_FILE).read_text().split())
    except (OSError, ValueError):  # no owner file: a legacy or half-made folder, orphaned once old enough
        try:
            return time.time() - root.stat().st_mtime < LEGACY_AGE_S
        except OSError:
            return False
    return _start_ticks(pid) == ticks


def _as_postgres(root: Path) -> list[str]:
    """initdb refuses to run as root: then the server runs as the postgres user."""
    if os.geteuid() != 0:
        return []
    os.chmod(root, 0o777)
    return ["runuser", "-u", "postgres", "--"]


def _stop_cluster(root: Path, bin_dir: Path | None) -> None:
    data = root / "data"
    if bin_dir is not None and (data / "postmaster.pid").exists():
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=False)
    shutil.rmtree(root, ignore_errors=True)


def remove_stale(tmp: str | None = None) -> list[Path]:
    """Stop and delete every throw-away cluster whose owner process is gone; returns their folders."""
    removed = []
    for root in Path(tmp or tempfile.gettempdir()).glob(PREFIX + "*"):
        if root.is_dir() and not _owner_alive(root):
            _stop_cluster(root, pg_bin())
            removed.append(root)
    return removed


class PostgresServer:
    """One throw-away cluster; `database()` hands out fresh databases (copies of a migrated template)."""

    def __init__(self, owner_pid: int | None = None) -> None:
        bin_dir = pg_bin()
        if bin_dir is None:
            raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found in "
                                    "/usr/lib/postgresql/*/bin or PATH; install Debian `postgresql`")
        self.bin: Path = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix=PREFIX))
        owner = owner_pid or os.getpid()
        (self.root / OWNER_FILE).write_text(f"{owner} {_start_ticks(owner)}")
        self.data = self.root / "data"
        self.as_user = _as_postgres(self.root)
        self.admin: sa.Engine | None = None  # set by start()
        self._counter = itertools.count()
        self._watchdog = subprocess.Popen(
            [sys.executable, "-m", "db.pg_cluster", "watch", str(owner), str(self.root)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))})
        atexit.register(self.stop)

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       timeout=300)

    def start(self) -> PostgresServer:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")
        opts = (f"-c listen_addresses='' -c unix_socket_directories={self.root} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c autovacuum_naptime=1")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-w", "-t", "300",
                  "-l", str(self.root / "log"), "start")
        import sqlalchemy as sa

        from db.engine import connect

        admin = sa.create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql("CREATE DATABASE dreamdpo_template")
        admin.dispose()
        connect(self.url("dreamdpo_template")).dispose()  # migrated once; databases copy it
        self.admin = sa.create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        return self

    def url(self, name: str) -> str:
        return f"postgresql+psycopg://postgres@/{name}?host={self.root}"

    def database(self, empty: bool = False) -> str:
        """A new database: a migrated copy of the template, or an empty one."""
        name = f"t{next(self._counter)}_{os.getpid()}"
        from db import engine as db_engine

        template = db_engine._ENGINES.pop(self.url("dreamdpo_template"), None)
        if template is not None:  # nobody may be connected to a template while it is copied
            template[1].dispose()
        if self.admin is None:
            raise RuntimeError("start() the server before asking it for a database")
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}" + ("" if empty else " TEMPLATE dreamdpo_template"))
        return self.url(name)

    def pids(self) -> list[int]:
        """The postmaster's pid while it runs (for tests of the clean-up)."""
        try:
            return [int((self.data / "postmaster.pid").read_text().split()[0])]
        except (OSError, ValueError, IndexError):
            return []

    def stop(self) -> None:
        """Idempotent: stop the cluster, delete its folder, end the watchdog."""
        if self.admin is not None:
            self.admin.dispose()
        _stop_cluster(self.root, self.bin)
        if self._watchdog.poll() is None:
            self._watchdog.terminate()
            self._watchdog.wait(30)
        atexit.unregister(self.stop)


def watch(owner: int, root: Path, poll_s: float = 0.5) -> None:
    """Wait until the owner process is gone (or the cluster was stopped), then stop the cluster."""
    ticks = _start_ticks(owner)
    while root.exists() and ticks is not None and _start_ticks(owner) == ticks:
        time.sleep(poll_s)
    if root.exists():
        _stop_cluster(root, pg_bin())


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "watch":
        watch(int(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit("usage: python -m db.pg_cluster watch OWNER_PID ROOT")
