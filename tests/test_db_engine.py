"""Opening the log: URLs, automatic migration, one-line errors, accounts and the CLI's bad input."""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import sqlite3
import threading

import numpy as np
import pytest
import sqlalchemy as sa

from db import accounts, pairs, runs
from db import engine as db_engine
from db.errors import LogError
from dreamdpo import cli


def test_resolve_url(monkeypatch, tmp_path):
    monkeypatch.delenv("DREAMDPO_DB", raising=False)
    monkeypatch.setenv("DREAMDPO_HOME", str(tmp_path / "home"))
    assert db_engine.resolve_url() == f"sqlite:///{tmp_path / 'home' / 'log.sqlite'}"
    assert (tmp_path / "home").is_dir()
    monkeypatch.setenv("DREAMDPO_DB", "postgresql://me@db.example/log")
    assert db_engine.resolve_url() == "postgresql+psycopg://me@db.example/log"
    assert db_engine.resolve_url(str(tmp_path / "x.db")) == f"sqlite:///{tmp_path / 'x.db'}"
    assert db_engine.resolve_url("sqlite:///y.db") == "sqlite:///y.db"


def test_sqlite_pragmas_and_fresh_file_migrated(tmp_path):
    eng = db_engine.connect(str(tmp_path / "sub" / "log.sqlite"))
    with eng.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == db_engine._head()
    assert db_engine.connect(str(tmp_path / "sub" / "log.sqlite")) is eng  # cached per process


def test_a_writer_waiting_for_the_lock_gets_it_once_freed_and_keeps_the_busy_timeout(tmp_path):
    """BEGIN IMMEDIATE is tried again while another process holds the write lock, and succeeds once it is
    released; the connection's busy timeout is the log's again afterwards (db.engine._begin_immediate)."""
    url = f"sqlite:///{tmp_path / 'log.sqlite'}"
    engine = db_engine.connect(url)
    holder = sqlite3.connect(tmp_path / "log.sqlite", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    released = threading.Event()

    def release():
        holder.execute("COMMIT")
        released.set()

    threading.Timer(0.3, release).start()
    with engine.begin() as conn:
        assert released.is_set()  # the lock was really held until then
        conn.exec_driver_sql("INSERT INTO annotators (name, role, token_hash, created_at, active) "
                             "VALUES ('x', 'annotator', 'h', CURRENT_TIMESTAMP, 1)")
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db_engine.BUSY_TIMEOUT_MS
    holder.close()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM annotators WHERE name = 'x'").scalar() == 1


def test_migration_matches_the_models(engine):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from db.models import Base

    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_foreign_keys_are_enforced(engine):
    with pytest.raises(sa.exc.IntegrityError):
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO claims (pair_id, annotator_id, claimed_at, expires_at) "
                                 "VALUES (42, 42, '2026-01-01', '2026-01-02')")


def test_an_older_revision_asks_for_upgrade(tmp_path, monkeypatch):
    path = str(tmp_path / "log.sqlite")
    db_engine.connect(path).dispose()
    db_engine._ENGINES.clear()
    monkeypatch.setattr(db_engine, "_head", lambda: "ffff")
    with pytest.raises(LogError, match="run `dreamdpo db upgrade`"):
        db_engine.connect(path)
    monkeypatch.undo()
    con = sqlite3.connect(path)
    con.execute("UPDATE alembic_version SET version_num = 'ffff'")
    con.commit()
    con.close()
    with pytest.raises(LogError, match="newer than this dreamdpo"):
        db_engine.connect(path)


def test_upgrade_from_the_first_revision_keeps_rows_and_allows_indistinct_pairs(tmp_path):
    from alembic import command

    path = tmp_path / "old.sqlite"
    url = f"sqlite:///{path}"
    cfg = db_engine._alembic_config()
    with sa.create_engine(url).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.exec_driver_sql("INSERT INTO runs (prompt, backbone, status, step, created_at, updated_at) "
                             "VALUES ('a cube', 'toy', 'finished', 3, '2026-01-01', '2026-01-01')")
    with pytest.raises(LogError, match="run `dreamdpo db upgrade`"):
        db_engine.connect(str(path))
    assert db_engine.upgrade(str(path)) == db_engine._head()
    eng = db_engine.connect(str(path))
    assert runs.get_run(eng, 1)["prompt"] == "a cube"
    from dreamdpo.images import png_bytes

    png = png_bytes(np.zeros((4, 4, 3), np.uint8))
    pair = pairs.post_pair(eng, 1, 0, png, png)
    with eng.begin() as conn:
        conn.exec_driver_sql(f"UPDATE pairs SET status = 'indistinct', distance = 0.0 WHERE id = {pair}")
        with pytest.raises(sa.exc.IntegrityError):
            with conn.begin_nested():
                conn.exec_driver_sql(f"UPDATE pairs SET status = 'lost' WHERE id = {pair}")


def test_engine_is_fork_safe(tmp_path):
    """Children forked after the parent used the log write through fresh connections."""
    path = str(tmp_path / "log.sqlite")
    eng = db_engine.connect(path)
    runs.create_run(eng, "parent")
    assert fork_children(2, path) == [0, 0]
    assert sorted(r["prompt"] for r in runs.list_runs(eng)) == ["child", "child", "parent"]


def fork_children(n: int, path: str) -> list[int | None]:
    """n forked processes that each create a run on the log at path; their exit codes. Plain processes, not
    a multiprocessing Pool: a Pool forked from the suite's many-threaded process once hung in its terminate
    (a worker left waiting on the task queue's lock; the CI pass stopped until its 30-minute time-out)."""
    ctx = mp.get_context("fork")
    children = [ctx.Process(target=_create_in_child, args=(path,)) for _ in range(n)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
        if child.is_alive():
            child.kill()
            child.join()
    return [child.exitcode for child in children]


def _create_in_child(path: str) -> None:
    runs.create_run(db_engine.connect(path), "child")


def test_accounts(engine):
    token = accounts.add_annotator(engine, "alice", admin=True)
    accounts.add_annotator(engine, "bob")
    me = accounts.authenticate(engine, token)
    assert (me["name"], me["admin"], me["active"]) == ("alice", True, True)
    assert accounts.authenticate(engine, token + "x") is None and accounts.authenticate(engine, "") is None
    with engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT token_hash FROM annotators WHERE name = 'alice'").scalar()
        everything = " ".join(str(v) for row in conn.exec_driver_sql("SELECT * FROM annotators") for v in row)
    assert stored == hashlib.sha256(token.encode()).hexdigest() and token not in everything
    with pytest.raises(LogError, match="already exists"):
        accounts.add_annotator(engine, "alice")
    with pytest.raises(LogError, match="name"):
        accounts.add_annotator(engine, "two words")
    accounts.deactivate(engine, "alice")
    assert accounts.authenticate(engine, token) is None
    assert [(a["name"], a["active"]) for a in accounts.list_annotators(engine)] == [("alice", False), ("bob", True)]
    with pytest.raises(LogError, match="no annotator named"):
        accounts.deactivate(engine, "carol")


# ----------------------------------------------------------------------------- the CLI
def run_cli(args, capsys) -> tuple[int, str, str]:
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_annotators_and_upgrade(log_url, capsys):
    code, out, _ = run_cli(["annotators", "add", "alice", "--admin", "--db", log_url], capsys)
    token = out.strip().splitlines()[-1]
    assert code == 0 and accounts.authenticate(db_engine.connect(log_url), token)["admin"] is True
    code, out, _ = run_cli(["annotators", "list", "--db", log_url], capsys)
    assert code == 0 and "alice" in out and "admin" in out and token not in out
    code, out, _ = run_cli(["db", "upgrade", "--db", log_url], capsys)
    assert code == 0 and db_engine._head() in out
    assert run_cli(["annotators", "deactivate", "alice", "--db", log_url], capsys)[0] == 0
    assert accounts.authenticate(db_engine.connect(log_url), token) is None


def snapshot(url: str) -> list:
    eng = db_engine.connect(url)
    with eng.connect() as conn:
        return [tuple(r) for t in ("annotators", "runs", "pairs", "votes", "claims", "decisions")
                for r in conn.exec_driver_sql(f"SELECT * FROM {t} ORDER BY 1")]


@pytest.mark.parametrize("args, message", [
    (["annotators", "add", "alice"], "already exists"),
    (["annotators", "add", "bad name"], "must be"),
    (["annotators", "deactivate", "nobody"], "no annotator named"),
])
def test_cli_bad_input_is_one_line_and_changes_nothing(log_url, capsys, args, message):
    accounts.add_annotator(db_engine.connect(log_url), "alice")
    before = snapshot(log_url)
    code, _, err = run_cli(args + ["--db", log_url], capsys)
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1
    assert snapshot(log_url) == before


@pytest.mark.parametrize("content", [b"this is not a database\n" * 50, b"SQLite format 3\x00" + b"\xff" * 5000])
def test_cli_refuses_a_corrupt_or_foreign_file(tmp_path, capsys, content):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(content)
    for args in (["annotators", "list"], ["annotators", "add", "alice"], ["db", "upgrade"]):
        code, _, err = run_cli(args + ["--db", str(bad)], capsys)
        assert code != 0 and len(err.strip().splitlines()) == 1 and "--db" in err
    assert bad.read_bytes() == content


def test_cli_refuses_an_unreachable_postgresql(capsys, tmp_path):
    url = f"postgresql://nobody@/nothing?host={tmp_path}"  # no server listens on this socket dir
    for args in (["annotators", "list"], ["db", "upgrade"]):
        code, _, err = run_cli(args + ["--db", url], capsys)
        assert code != 0 and "cannot open the log" in err and len(err.strip().splitlines()) == 1


def test_a_database_with_foreign_tables_is_refused(tmp_path, capsys):
    path = tmp_path / "other.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE stuff (x)")
    con.commit()
    con.close()
    code, _, err = run_cli(["annotators", "list", "--db", str(path)], capsys)
    assert code != 0 and "not a dreamdpo log" in err



def test_a_fresh_log_opened_by_many_processes_at_once(tmp_path):
    path = str(tmp_path / "fresh.sqlite")
    assert fork_children(4, path) == [0, 0, 0, 0]
    assert sorted(r["id"] for r in runs.list_runs(db_engine.connect(path))) == [1, 2, 3, 4]


def test_reissued_token_replaces_the_old_one_and_demo_accounts_keep_no_secret(engine, tmp_path, monkeypatch):
    from dreamdpo.commands.annotate import demo_accounts

    old = accounts.add_annotator(engine, "erin")
    new = accounts.reissue_token(engine, "erin")
    assert accounts.authenticate(engine, old) is None and accounts.authenticate(engine, new)["name"] == "erin"
    with pytest.raises(LogError, match="no annotator named"):
        accounts.reissue_token(engine, "nobody")
    monkeypatch.chdir(tmp_path)
    first, second = demo_accounts(engine), demo_accounts(engine)  # a re-run signs the same accounts in anew
    assert accounts.authenticate(engine, first["admin_token"]) is None
    assert accounts.authenticate(engine, second["admin_token"])["admin"] is True
    assert accounts.authenticate(engine, second["annotator_token"])["name"] == "demo-annotator"
    assert not any(second["admin_token"] in p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file())
