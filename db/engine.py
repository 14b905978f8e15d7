"""Where the log lives and how to open it: SQLite by default, PostgreSQL with the same code.

SQLite: WAL, busy_timeout, foreign keys, and every write transaction starts with BEGIN IMMEDIATE so
that a claim's read-then-write is serialized (the SQLite equivalent of FOR UPDATE SKIP LOCKED); a
writer waiting for the lock tries again every few milliseconds (`_begin_immediate`).
Engines are cached per URL and process; a forked child gets fresh connections.

Outages: `retry` calls a log operation again with back-off while the failure is transient (server
down, file locked); `is_transient` says which failures are. A SQLite file deleted or replaced under
a running process is caught at every connection checkout (file identity: device and inode) and
raises LogGone, because writes to an unlinked file are silently lost.
"""
from __future__ import annotations

import errno
import os
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy import event

from db.errors import LogError, LogGone, LogUnreachable

T = TypeVar("T")
BUSY_TIMEOUT_MS = 15_000
BEGIN_RETRY_S = (0.0005, 0.003)  # a waiting writer's pause between two tries of BEGIN IMMEDIATE (jittered)
SQLITE_MAGIC = b"SQLite format 3\x00"
_ENGINES: dict[str, tuple[int, sa.Engine]] = {}


def data_dir() -> Path:
    path = Path(os.environ.get("DREAMDPO_HOME") or "dreamdpo-data")
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_url(url: str | None = None) -> str:
    """Explicit URL or path, else $DREAMDPO_DB, else the SQLite file in the data directory."""
    url = url or os.environ.get("DREAMDPO_DB") or f"sqlite:///{data_dir() / 'log.sqlite'}"
    if "://" not in url:  # a bare file path
        url = f"sqlite:///{Path(url).expanduser()}"
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            url = "postgresql+psycopg://" + url[len(plain):]
    return url


def _sqlite_path(url: sa.URL) -> Path | None:
    db = url.database
    return None if not db or db == ":memory:" else Path(db)


def _check_sqlite_file(path: Path) -> None:
    try:
        if path.is_dir():
            raise LogError(f"{path} is a directory, not a SQLite database; give --db a file path")
        if path.exists() and path.stat().st_size > 0:
            with open(path, "rb") as f:
                head = f.read(16)
            if head != SQLITE_MAGIC:
                raise LogError(f"{path} is not a SQLite database; give --db a new file or an existing dreamdpo log")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # /dev/null/x, a file where a folder should be, no permission
        blocker = next((p for p in path.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise LogError(f"cannot put the log at {path}: {blocker} is a file, not a folder; "
                           "give --db a path inside a folder") from None
        raise LogError(
            f"cannot use {path} for the log ({e.strerror or e}); give --db a file in a writable folder"
        ) from None


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _guard_identity(path: Path, known: dict) -> None:
    """Raise LogGone when the file this engine opened was deleted or replaced since."""
    ident = _file_identity(path)
    if "ident" not in known:
        if ident is not None:
            known["ident"] = ident
        return
    if ident is None:
        raise LogGone(f"the log file {path} was deleted while in use; votes cannot be stored. "
                      "Restore it (or start again on a new log) and restart")
    if ident != known["ident"]:
        raise LogGone(f"the log file {path} was replaced by another file while in use; restart to use the new one")


def _sqlite_setup(engine: sa.Engine, path: Path | None) -> None:
    if path is not None:
        known: dict = {}

        @event.listens_for(engine, "do_connect")
        def before_connect(_dialect, _record, _cargs, _cparams):
            _guard_identity(path, known)  # before sqlite3 would create a new empty file

        @event.listens_for(engine, "checkout")
        def on_checkout(_dbapi_conn, _record, _proxy):
            _guard_identity(path, known)

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn):
        if conn.get_execution_options().get("readonly", False):
            conn.exec_driver_sql("BEGIN")
        else:
            _begin_immediate(conn)


def _begin_immediate(conn: sa.Connection) -> None:
    """BEGIN IMMEDIATE, tried again every 0.5–3 ms (jittered) until BUSY_TIMEOUT_MS has passed.

    SQLite's own busy handler sleeps 100 ms between tries once a writer has waited 0.3 s, and the lock
    goes to whoever asks at the moment it is free: with several processes writing in a loop, one waiter
    can lose every try for the whole busy timeout (seen in tests/test_db_concurrency.py on an idle
    machine: `database is locked` after 15 s, 9 processes). Short jittered tries give each waiter its turn.
    The last try, and any other error, goes through SQLAlchemy, so failures are reported as before."""
    raw = conn.connection.dbapi_connection
    assert raw is not None
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    raw.execute("PRAGMA busy_timeout = 0")
    try:
        while time.monotonic() < deadline:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    break
            time.sleep(random.uniform(*BEGIN_RETRY_S))
    finally:
        raw.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _parse(url: str) -> sa.URL:
    try:
        return sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError) as e:
        raise LogError(f"{url.split('@')[-1]!r} is not a database URL ({_first_line(e)}); "
                       "use sqlite:///PATH, a file path, or postgresql://USER@HOST[:PORT]/DB") from None


def _create(url: str) -> sa.Engine:
    u = _parse(url)
    if u.get_backend_name() == "sqlite":
        path = _sqlite_path(u)
        if path is not None:
            _check_sqlite_file(path)
        engine = sa.create_engine(u, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
        _sqlite_setup(engine, path)
    elif u.get_backend_name() == "postgresql":
        if u.port is not None and not 0 < u.port < 65536:
            raise LogError(f"port {u.port} in the database URL is not a port (1-65535); fix --db")
        engine = sa.create_engine(u, pool_pre_ping=True, connect_args={"connect_timeout": 5})
    else:
        raise LogError(f"unsupported database URL {u.render_as_string(hide_password=True)}; "
                       "use sqlite:///PATH or postgresql://USER@HOST/DB")
    return engine


def describe(url: str | None = None) -> str:
    """The log's URL as it may be shown (password hidden); None → the default log."""
    return _parse(resolve_url(url)).render_as_string(hide_password=True)


def _head() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:  # only a broken install has no migrations
        raise LogError(f"no Alembic revisions found beside {Path(__file__).with_name('alembic.ini')}; "
                       "reinstall dreamdpo")
    return head


def _alembic_config():
    from alembic.config import Config

    return Config(str(Path(__file__).with_name("alembic.ini")))


def _current_revision(engine: sa.Engine) -> tuple[str | None, bool]:
    """(revision, database has any table). Raises LogError when the file or server is unusable."""
    try:
        with engine.connect().execution_options(readonly=True) as conn:
            names = sa.inspect(conn).get_table_names()
            rev = None
            if "alembic_version" in names:
                rev = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
            return rev, bool(names)
    except sa.exc.OperationalError as e:
        raise LogUnreachable(f"cannot open the log at {describe(str(engine.url))}: {_first_line(e)}; "
                       "check the URL and that the server is running") from None
    except sa.exc.DatabaseError as e:
        raise LogError(f"{describe(str(engine.url))} is not a usable dreamdpo log ({_first_line(e)}); "
                       "give --db a new file or restore a backup") from None


def _first_line(e: Exception) -> str:
    orig = getattr(e, "orig", None) or e
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


def connect(url: str | None = None, create: bool = True) -> sa.Engine:
    """An engine on the log, upgraded automatically when the database is empty (a fresh file). With
    create=False (commands that only read the log: stats, export) a missing or empty log is a one-line
    error, and nothing is written."""
    url = resolve_url(url)
    cached = _ENGINES.get(url)
    if cached is not None and cached[0] == os.getpid():
        return cached[1]
    if cached is not None:  # inherited over fork: never reuse the parent's connections
        cached[1].dispose(close=False)
    path = _sqlite_path(_parse(url))
    if not create and path is not None and not path.exists():  # before sqlite3 would create the file
        raise LogError(f"there is no log at {path}; give --db the log to read (the URL `dreamdpo run` or "
                       "`dreamdpo demo` used)")
    engine = _create(url)
    rev, has_tables = _current_revision(engine)
    head = _head()
    if rev is None and not has_tables and not create:
        engine.dispose()
        raise LogError(f"{describe(url)} is empty, not a dreamdpo log yet; give --db the log to read")
    if rev is None and not has_tables:
        _use_wal(engine)
        try:
            _upgrade(engine)
        except sa.exc.DBAPIError:  # another process created the schema at the same moment
            if _current_revision(engine)[0] != head:
                raise
    else:
        _check_ours(url, rev, has_tables)
        if rev != head:
            raise LogError(f"the log at {describe(url)} is at revision {rev}, this dreamdpo needs {head}; "
                           "run `dreamdpo db upgrade`")
        _use_wal(engine)
    _ENGINES[url] = (os.getpid(), engine)
    return engine


def _use_wal(engine: sa.Engine) -> None:
    """WAL is stored in the file: set once the file is known to be a dreamdpo log (or empty), so that
    opening someone else's database never rewrites its header."""
    if engine.dialect.name != "sqlite" or _sqlite_path(engine.url) is None:
        return
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
            cur.execute("PRAGMA journal_mode = WAL")
        cur.close()
    finally:
        raw.close()


def _check_ours(url: str, rev: str | None, has_tables: bool) -> None:
    """A database with tables must be a dreamdpo log at a revision this version knows."""
    if rev is None and has_tables:
        raise LogError(f"{describe(url)} holds tables but is not a dreamdpo log; give --db another database")
    if rev is not None:
        from alembic.script import ScriptDirectory

        known = {s.revision for s in ScriptDirectory.from_config(_alembic_config()).walk_revisions()}
        if rev not in known:
            raise LogError(f"the log at {describe(url)} is at revision {rev}, newer than this dreamdpo; "
                           "upgrade dreamdpo")


def _upgrade(engine: sa.Engine) -> None:
    from alembic import command

    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def upgrade(url: str | None = None) -> str:
    """Alembic upgrade to head; returns the revision the log is at now."""
    url = resolve_url(url)
    engine = _create(url)
    try:
        rev, has_tables = _current_revision(engine)  # one-line errors for bad files and unreachable servers
        _check_ours(url, rev, has_tables)  # never write into a foreign or a newer database
        _use_wal(engine)
        _upgrade(engine)
        rev = _current_revision(engine)[0]
        if rev is None:  # Alembic wrote no revision: never report the upgrade as done
            raise LogError(f"the upgrade of the log at {describe(url)} left no revision; run it again")
        return rev
    finally:
        engine.dispose()


# ----------------------------------------------------------------------------- outages
def is_transient(exc: BaseException) -> bool:
    """True when trying again later may succeed: server down or restarting, connection dropped, file busy."""
    if isinstance(exc, LogGone):
        return False
    if isinstance(exc, LogUnreachable):
        return True
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, sa.exc.InterfaceError):
            return True
        if isinstance(exc, sa.exc.OperationalError):
            text = _first_line(exc).lower()
            if "locked" in text or "busy" in text:
                return True
            return "sqlite" not in type(getattr(exc, "orig", exc)).__module__  # PostgreSQL: connection-level
        return False
    return isinstance(exc, (ConnectionError, TimeoutError))


def retry(fn: Callable[[], T], *, timeout_s: float = 300.0, first_delay_s: float = 0.5, max_delay_s: float = 10.0,
          on_retry: Callable[[BaseException, float], None] | None = None,
          sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> T:
    """fn(), called again with exponential back-off while it fails transiently, for up to timeout_s.

    Anything not transient (LogGone, a refused vote) is raised at once; once the log has been failing
    for timeout_s the last transient failure becomes a LogUnreachable. The outage is timed from its
    first failure, not from the call: fn may be a long wait for people that meets an outage late. An
    attempt that ran for timeout_s or more before failing reached the log meanwhile (a failing
    connection fails in seconds): its failure begins a new outage. on_retry(error, delay) is told of
    every wait."""
    began: float | None = None  # the current outage's first failure
    delay = first_delay_s
    while True:
        attempt = clock()
        try:
            return fn()
        except Exception as e:
            if not is_transient(e):
                raise
            now = clock()
            if began is None or now - attempt >= timeout_s:
                began, delay = now, first_delay_s
            left = began + timeout_s - now
            if left <= 0:
                raise LogUnreachable(f"the log has been unreachable for {timeout_s:.0f} s ({_first_line(e)}); "
                                     "check the database server or file, then resume") from None
            wait = min(delay, max_delay_s, left)
            if on_retry is not None:
                on_retry(e, wait)
            sleep(wait)
            delay *= 2


def read_only(engine: sa.Engine) -> sa.Connection:
    """A read-only connection (plain BEGIN on SQLite: readers never wait for writers)."""
    return engine.connect().execution_options(readonly=True)


def ping(engine: sa.Engine) -> None:
    """A cheap read: raises LogGone, or LogUnreachable with one line, when the log cannot be used now."""
    try:
        with engine.connect().execution_options(readonly=True) as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.DBAPIError as e:
        raise LogUnreachable(f"the log is unreachable ({_first_line(e)}); retrying") from None


def explain(exc: BaseException) -> LogError | None:
    """A one-line LogError for a database or file-system failure met anywhere (the CLI prints it), else None."""
    if isinstance(exc, LogError):
        return exc
    if isinstance(exc, sa.exc.StatementError):
        text = _first_line(exc)
        low = text.lower()
        if "nul" in low and "0x00" in low:
            return LogError("a text contains a NUL character, which the log cannot store; remove it")
        if not isinstance(exc, sa.exc.DBAPIError):
            return LogError(f"the log refused a value ({text}); nothing was changed")
        if "full" in low:
            return LogError(f"the disk holding the log is full ({text}); free some space and retry")
        if "locked" in low or "busy" in low:
            return LogUnreachable(f"the log is locked by another process ({text}); retry when it is done")
        if is_transient(exc):
            return LogUnreachable(f"the log is unreachable ({text}); check the database server, then retry")
        return LogError(f"the log refused the operation ({text}); nothing was changed")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {exc.filename}" if exc.filename else ""
        return LogError(f"no space left on the device{where}; free some space and retry")
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = f" {exc.filename}" if exc.filename else ""
        return LogError(f"not allowed to write{where} ({exc.strerror}); choose a writable location")
    return None


def _dispose_after_fork() -> None:
    for _pid, engine in _ENGINES.values():
        engine.dispose(close=False)
    _ENGINES.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_dispose_after_fork)
