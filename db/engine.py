"""Where the log lives and how to open it: SQLite by default, PostgreSQL with the same code.

SQLite: WAL, busy_timeout, foreign keys, and every write transaction starts with BEGIN IMMEDIATE so
that a claim's read-then-write is serialized (the SQLite equivalent of FOR UPDATE SKIP LOCKED).
Engines are cached per URL and process; a forked child gets fresh connections.
"""
from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event

from db.errors import LogError

BUSY_TIMEOUT_MS = 15_000
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
    if path.is_dir():
        raise LogError(f"{path} is a directory, not a SQLite database; give --db a file path")
    if path.exists() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            head = f.read(16)
        if head != SQLITE_MAGIC:
            raise LogError(f"{path} is not a SQLite database; give --db a new file or an existing dreamdpo log")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)


def _sqlite_setup(engine: sa.Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn):
        if conn.get_execution_options().get("readonly", False):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def _create(url: str) -> sa.Engine:
    u = sa.make_url(url)
    if u.get_backend_name() == "sqlite":
        path = _sqlite_path(u)
        if path is not None:
            _check_sqlite_file(path)
        engine = sa.create_engine(u, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
        _sqlite_setup(engine)
    elif u.get_backend_name() == "postgresql":
        engine = sa.create_engine(u, pool_pre_ping=True, connect_args={"connect_timeout": 5})
    else:
        raise LogError(f"unsupported database URL {u.render_as_string(hide_password=True)}; "
                       "use sqlite:///PATH or postgresql://USER@HOST/DB")
    return engine


def _describe(url: str) -> str:
    return sa.make_url(url).render_as_string(hide_password=True)


def _head() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


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
        raise LogError(f"cannot open the log at {_describe(str(engine.url))}: {_first_line(e)}; "
                       "check the URL and that the server is running") from None
    except sa.exc.DatabaseError as e:
        raise LogError(f"{_describe(str(engine.url))} is not a usable dreamdpo log ({_first_line(e)}); "
                       "give --db a new file or restore a backup") from None


def _first_line(e: Exception) -> str:
    orig = getattr(e, "orig", None) or e
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


def connect(url: str | None = None) -> sa.Engine:
    """An engine on the log, upgraded automatically when the database is empty (a fresh file)."""
    url = resolve_url(url)
    cached = _ENGINES.get(url)
    if cached is not None and cached[0] == os.getpid():
        return cached[1]
    if cached is not None:  # inherited over fork: never reuse the parent's connections
        cached[1].dispose(close=False)
    engine = _create(url)
    rev, has_tables = _current_revision(engine)
    head = _head()
    if rev is None and not has_tables:
        try:
            _upgrade(engine)
        except sa.exc.DBAPIError:  # another process created the schema at the same moment
            if _current_revision(engine)[0] != head:
                raise
    elif rev is None:
        raise LogError(f"{_describe(url)} holds tables but is not a dreamdpo log; give --db another database")
    elif rev != head:
        from alembic.script import ScriptDirectory

        known = {s.revision for s in ScriptDirectory.from_config(_alembic_config()).walk_revisions()}
        if rev not in known:
            raise LogError(f"the log at {_describe(url)} is at revision {rev}, newer than this dreamdpo; "
                           "upgrade dreamdpo")
        raise LogError(f"the log at {_describe(url)} is at revision {rev}, this dreamdpo needs {head}; "
                       "run `dreamdpo db upgrade`")
    _ENGINES[url] = (os.getpid(), engine)
    return engine


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
        _current_revision(engine)  # one-line errors for bad files and unreachable servers
        _upgrade(engine)
        return _current_revision(engine)[0]
    finally:
        engine.dispose()


def _dispose_after_fork() -> None:
    for _pid, engine in _ENGINES.values():
        engine.dispose(close=False)
    _ENGINES.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_dispose_after_fork)
