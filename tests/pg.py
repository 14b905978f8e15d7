"""A real PostgreSQL server for the tests: initdb + pg_ctl in a temp dir, unix socket only.

Import the fixtures into a test module with `from pg import engine, pg_server, log_url  # noqa: F401`.
`engine` is parametrized over a SQLite file and a fresh PostgreSQL database per test. Skips (with the
reason) only when the PostgreSQL server binaries are absent; `make system-deps` / .ci/run install them.
"""
from __future__ import annotations

import atexit
import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    """One throw-away cluster; `database()` hands out fresh databases (copies of a migrated template)."""

    def __init__(self) -> None:
        self.bin = pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="dreamdpo-pg-"))
        self.data = self.root / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root: run the server as the postgres user
            os.chmod(self.root, 0o777)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._counter = itertools.count()

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       timeout=120)

    def start(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")
        opts = (f"-c listen_addresses='' -c unix_socket_directories={self.root} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c autovacuum_naptime=1")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-w", "-t", "60",
                  "-l", str(self.root / "log"), "start")
        import sqlalchemy as sa

        from db.engine import connect

        admin = sa.create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql("CREATE DATABASE dreamdpo_template")
        admin.dispose()
        connect(self.url("dreamdpo_template")).dispose()  # migrated once; tests copy it
        self.admin = sa.create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)

    def url(self, name: str) -> str:
        return f"postgresql+psycopg://postgres@/{name}?host={self.root}"

    def database(self, empty: bool = False) -> str:
        """A new database: a migrated copy of the template, or an empty one."""
        name = f"t{next(self._counter)}_{os.getpid()}"
        from db import engine as db_engine

        template = db_engine._ENGINES.pop(self.url("dreamdpo_template"), None)
        if template is not None:  # nobody may be connected to a template while it is copied
            template[1].dispose()
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}" + ("" if empty else " TEMPLATE dreamdpo_template"))
        return self.url(name)

    def stop(self) -> None:
        subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server():
    if pg_bin() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or PATH; "
                    "install Debian `postgresql` (make system-deps)")
    server = PostgresServer()
    atexit.register(server.stop)  # also when the session dies without teardown (Ctrl-C, an error)
    try:
        server.start()
    except subprocess.CalledProcessError as e:
        server.stop()
        raise RuntimeError(f"could not start the test PostgreSQL: {e.stderr.decode(errors='replace')}") from e
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def log_url(request, tmp_path):
    """URL of a fresh, migrated log on each engine."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'log.sqlite'}"
    return request.getfixturevalue("pg_server").database()


@pytest.fixture()
def engine(log_url):
    from db import engine as db_engine

    eng = db_engine.connect(log_url)
    yield eng
    db_engine._ENGINES.pop(log_url, None)
    eng.dispose()
