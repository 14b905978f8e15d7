"""Every bad input of issue 16's sweep: one line on stderr (no traceback), exit code 2, and the log
and the outputs exactly as they were (every row of every table, and the files under the test's folder).

The CLI runs in-process (`dreamdpo.cli.main`), so a traceback would be an exception escaping the test;
two cases also run as a real `python -m dreamdpo.cli` process.
"""
from __future__ import annotations

import errno
import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from db import accounts, pairs, queue, runs, votes
from db import engine as db_engine
from dreamdpo.cli import main
from dreamdpo.images import png_bytes

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("annotators", "runs", "images", "pairs", "votes", "claims", "decisions")


def png(value: int) -> bytes:
    import numpy as np

    return png_bytes(np.full((8, 8, 3), value, dtype=np.uint8))


@pytest.fixture
def world(tmp_path):
    """A small log (accounts, a run, a decided pair with votes) and a folder of files that must not change."""
    url = f"sqlite:///{tmp_path / 'log.sqlite'}"
    engine = db_engine.connect(url)
    accounts.add_annotator(engine, "alice")
    admin = accounts.authenticate(engine, accounts.add_annotator(engine, "root", admin=True))
    run_id = runs.create_run(engine, "a red cube", status="running")
    pair = pairs.post_pair(engine, run_id, 0, png(10), png(200))
    queue.claim_pair(engine, pair, admin["id"])
    votes.vote(engine, pair, admin["id"], "a")
    votes.record_model_comparison(engine, run_id, 1, png(20), png(30), "toy-reward", "b", 0.1, 0.2)
    files = tmp_path / "files"
    files.mkdir()
    (files / "afile").write_text("not a folder\n")
    (files / "adir").mkdir()
    (files / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (files / "nul.yaml").write_text('prompt: "a red\\0 cube"\n')
    (files / "huge.yaml").write_text("prompt: " + "x" * 1_000_000 + "\n")
    (files / "resumed").mkdir()
    (files / "resumed" / "log.json").write_text("{not json")
    foreign = sqlite3.connect(files / "foreign.sqlite")
    foreign.execute("CREATE TABLE stuff (x)")
    foreign.commit()
    foreign.close()
    future = files / "future.sqlite"
    db_engine.connect(f"sqlite:///{future}").dispose()
    db_engine._ENGINES.pop(f"sqlite:///{future}", None)
    con = sqlite3.connect(future)
    con.execute("UPDATE alembic_version SET version_num = 'ffff'")
    con.commit()
    con.close()
    return {"url": url, "engine": engine, "files": files, "tmp": tmp_path}


def log_rows(engine) -> list:
    """Every row of every table of the log, in a stable order."""
    with engine.connect().execution_options(readonly=True) as conn:
        return [(t, tuple(r)) for t in TABLES for r in conn.exec_driver_sql(f"SELECT * FROM {t} ORDER BY 1")]


def tree(folder: Path) -> dict:
    """Path → sha256 of every file under the folder (directories as None)."""
    return {str(p.relative_to(folder)): None if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


def cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    return code, capsys.readouterr().err


# (id, argv with {url} {files} {tmp} placeholders, a phrase the one line must hold)
CASES = [
    ("db-under-dev-null", ["annotators", "list", "--db", "/dev/null/x"], "is a file, not a folder"),
    ("db-file-as-folder", ["annotators", "list", "--db", "{files}/afile/log.sqlite"], "is a file, not a folder"),
    ("db-pg-port-out-of-range", ["annotators", "list", "--db", "postgresql://u@localhost:99999/db"], "not a port"),
    ("db-pg-port-not-a-number", ["annotators", "list", "--db", "postgresql://u@localhost:http/db"], "not a database URL"),
    ("db-upgrade-future-revision", ["db", "upgrade", "--db", "{files}/future.sqlite"], "newer than this dreamdpo"),
    ("db-upgrade-foreign-database", ["db", "upgrade", "--db", "{files}/foreign.sqlite"], "not a dreamdpo log"),
    ("stats-since-garbage", ["stats", "--since", "garbage", "--db", "{url}"], "not a date"),
    ("export-since-garbage", ["export", "--format", "jsonl", "--out", "{tmp}/ex", "--since", "garbage", "--db", "{url}"],
     "not a date"),
    ("export-out-is-a-file", ["export", "--format", "jsonl", "--out", "{files}/afile", "--db", "{url}"], "afile"),
    ("override-yaml-tag", ["run", "--prompt", "a red cube", "--out", "{tmp}/out", "--db", "{url}",
                           "dpo.tau=!!python/object/apply:os.system [echo]"], "not plain YAML"),
    ("device-foo", ["run", "--prompt", "a red cube", "--device", "foo", "--out", "{tmp}/out", "--db", "{url}"],
     "not a device"),
    ("config-is-a-directory", ["run", "--config", "{files}/adir", "--out", "{tmp}/out", "--db", "{url}"],
     "is a directory"),
    ("config-is-binary", ["run", "--config", "{files}/binary.yaml", "--out", "{tmp}/out", "--db", "{url}"],
     "not a text file"),
    ("nul-in-prompt", ["run", "--config", "{files}/nul.yaml", "--out", "{tmp}/out", "--db", "{url}"], "NUL"),
    ("megabyte-prompt", ["run", "--config", "{files}/huge.yaml", "--out", "{tmp}/out", "--db", "{url}"],
     "the limit is"),
    ("malformed-log-json", ["run", "--prompt", "a red cube", "--resume", "--out", "{files}/resumed", "--db", "{url}",
                            "steps=1"], "log.json"),
    ("annotate-port-99999", ["annotate", "--port", "99999", "--db", "{url}"], "not a port"),
    ("annotate-port-word", ["annotate", "--port", "http", "--db", "{url}"], "not a port number"),
    ("annotate-foreign-host", ["annotate", "--host", "192.0.2.1", "--port", "8501", "--db", "{url}"],
     "not an address of this machine"),
    ("annotate-unknown-host", ["annotate", "--host", "no-such-host.invalid", "--db", "{url}"], "not a known host"),
    ("name-taken-other-case", ["annotators", "add", "ALICE", "--db", "{url}"], "already exists"),
    ("name-with-space", ["annotators", "add", "two words", "--db", "{url}"], "must be"),
    ("deactivate-nobody", ["annotators", "deactivate", "nobody", "--db", "{url}"], "no annotator named"),
    ("activate-nobody", ["annotators", "activate", "nobody", "--db", "{url}"], "no annotator named"),
]
for key, value in [("preview_every", "0"), ("test_views", "0"), ("schedule.resolution", "0"),
                   ("schedule.resolution", "-64"), ("test_resolution", "0"), ("render.n_samples", "0"),
                   ("guidance_scale", ".nan"), ("guidance_scale", ".inf"), ("mesh_resolution", "0"),
                   ("optim.lr_grid", "-0.01"), ("optim.lr_mlp", "-1"), ("dpo.tau", ".nan"),
                   ("human.timeout_s", "0"), ("seed", "-1")]:
    CASES.append((f"{key}={value}", ["run", "--prompt", "a red cube", "--out", "{tmp}/out", "--db", "{url}",
                                     f"{key}={value}"], key))


@pytest.mark.parametrize("argv, phrase", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(world, capsys, argv, phrase):
    argv = [a.format(url=world["url"], files=world["files"], tmp=world["tmp"]) for a in argv]
    rows, files = log_rows(world["engine"]), tree(world["files"])
    code, err = cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert phrase in lines[0] and len(lines[0]) < 600
    assert log_rows(world["engine"]) == rows
    assert tree(world["files"]) == files
    assert not (world["tmp"] / "out").exists() and not (world["tmp"] / "ex").exists()


@pytest.mark.parametrize("argv, phrase", [(["annotate", "--port", "99999"], "not a port"),
                                          (["annotators", "list", "--db", "/dev/null/x"], "not a folder")])
def test_the_real_entry_point_prints_one_line(argv, phrase):
    r = subprocess.run([sys.executable, "-m", "dreamdpo.cli", *argv], capture_output=True, text=True, cwd=ROOT,
                       timeout=300, check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and phrase in r.stderr, r.stderr


# ----------------------------------------------------------------------------- locks
@pytest.fixture
def short_busy_timeout(monkeypatch, world):
    """A writer that cannot get the lock gives up after 0.5 s (instead of 15 s); engines rebuilt for it."""
    monkeypatch.setattr(db_engine, "BUSY_TIMEOUT_MS", 500)
    cached = db_engine._ENGINES.pop(world["url"], None)
    if cached is not None:
        cached[1].dispose()
    world["engine"] = db_engine.connect(world["url"])
    return world


def hold_write_lock(url: str) -> sqlite3.Connection:
    con = sqlite3.connect(sa.make_url(url).database, isolation_level=None, timeout=30)
    con.execute("BEGIN IMMEDIATE")
    con.execute("UPDATE runs SET step = step")
    return con


def test_read_only_commands_never_wait_for_the_write_lock(short_busy_timeout, capsys, tmp_path):
    w = short_busy_timeout
    lock = hold_write_lock(w["url"])
    try:
        for argv in (["annotators", "list"], ["stats"],
                     ["export", "--format", "jsonl", "--out", str(tmp_path / "export")]):
            code, err = cli(argv + ["--db", w["url"]], capsys)
            assert code == 0, (argv, err)
    finally:
        lock.rollback()
        lock.close()


def test_a_write_under_a_long_lock_is_one_line_and_changes_nothing(short_busy_timeout, capsys):
    w = short_busy_timeout
    rows = log_rows(w["engine"])
    lock = hold_write_lock(w["url"])
    try:
        code, err = cli(["annotators", "add", "bob", "--db", w["url"]], capsys)
    finally:
        lock.rollback()
        lock.close()
    assert code == 2 and len(err.strip().splitlines()) == 1 and "locked" in err, err
    assert log_rows(w["engine"]) == rows


# ----------------------------------------------------------------------------- disk full
def test_disk_full_for_the_log_is_one_line_and_changes_nothing(world, capsys):
    """SQLite's own SQLITE_FULL: the log may not grow by a single page."""
    engine = world["engine"]
    with engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()

    @sa.event.listens_for(engine, "connect")
    def no_room(dbapi_conn, _record):
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")

    engine.dispose()
    added, name = [], None
    for i in range(300):  # rows until the log would need one more page
        name = f"bob{i}-" + "x" * 150
        code, err = cli(["annotators", "add", name, "--db", world["url"]], capsys)
        if code != 0:
            break
        added.append(name)
    sa.event.remove(engine, "connect", no_room)
    engine.dispose()
    assert code == 2 and "full" in err and len(err.strip().splitlines()) == 1, err
    names = {a["name"] for a in accounts.list_annotators(engine)}
    assert name not in names and set(added) <= names  # the refused write left nothing behind, lost nothing


def test_disk_full_during_an_export_is_one_line_and_leaves_no_folder(world, capsys, monkeypatch):
    rows = log_rows(world["engine"])
    real = Path.write_bytes

    def full(self, data):
        if self.suffix == ".png":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    out = world["tmp"] / "export"
    code, err = cli(["export", "--format", "jsonl", "--out", str(out), "--db", world["url"]], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no space left" in err, err
    assert log_rows(world["engine"]) == rows
    assert not out.exists() or not any(out.iterdir())  # nothing half-written that would block a retry
    monkeypatch.undo()
    assert cli(["export", "--format", "jsonl", "--out", str(out), "--db", world["url"]], capsys)[0] == 0
