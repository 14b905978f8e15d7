"""Shared fixtures, built once per session: an isolated data home (the toy bank's cache lives there),
the default toy prior, a tiny SD model, PNGs, the synthetic log, and a real PostgreSQL server.

Markers: `slow` (seconds to minutes), `browser` (a real Chromium), `postgres` (put on every test that
runs on the PostgreSQL server: through the `log_url` parameter, or by asking for `pg_server`). The quick
tier is `make test-fast` = `pytest -m "not slow and not browser and not postgres"` (the PostgreSQL
variants repeat the SQLite ones on the server); CI (`make test`) runs everything.
"""
from __future__ import annotations

import os
import signal
import subprocess

import numpy as np
import pytest

from dreamdpo.images import png_bytes


def pytest_configure(config):
    """SIGTERM (CI cancelling a job, `timeout`, systemd) ends the session like Ctrl-C: fixtures are
    finalized, so servers and child processes are stopped."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, interrupt)


def pytest_collection_modifyitems(items):
    """A test that asks for the PostgreSQL server is a `postgres` test, marked or not."""
    for item in items:
        if "pg_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session", autouse=True)
def data_home(tmp_path_factory):
    """Every test runs with its own $DREAMDPO_HOME (toy bank cache, default log) and without the
    user's $DREAMDPO_DB, so nothing outside the session's temp dir is read or written."""
    home = tmp_path_factory.mktemp("dreamdpo-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DREAMDPO_HOME", str(home))
        mp.delenv("DREAMDPO_DB", raising=False)
        yield home


# ----------------------------------------------------------------------------- models
@pytest.fixture(scope="session")
def toy_prior(data_home):
    """The default toy prior; its bank is rendered once per session into the session's data home."""
    from dreamdpo.toyworld.prior import ToyPrior

    return ToyPrior.build(progress=False)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    """A tiny random-weight latent SD model folder (32 px renders), loaded like a hub model."""
    from dreamdpo.priors.tiny import make_tiny_sd

    return make_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "tiny-sd", latent=True, resolution=32)


# ----------------------------------------------------------------------------- images and logs
@pytest.fixture()
def run_folder(tmp_path):
    """A worker's local run folder: a checkpoint, metrics, the folder lock (never copied) and a turntable frame."""
    local = tmp_path / "run"
    (local / "checkpoints").mkdir(parents=True)
    (local / "checkpoints" / "last.pt").write_bytes(b"ckpt-1")
    (local / "metrics.csv").write_text("step\n0\n")
    (local / ".lock").write_text("")
    (local / "turntable").mkdir()
    (local / "turntable" / "frame_000.png").write_bytes(b"png")
    return local


NEWER_CHECKPOINT = b"ckpt-2"


def checkpoint_round_trip(store, local, tmp_path) -> None:
    """What a worker does with a run's folder in an object store (tests/test_storage_*.py): nothing to resume
    at first, a checkpoint and metrics put, a later checkpoint (NEWER_CHECKPOINT) replacing the first, both
    fetched back by a resuming worker, then the whole folder put."""
    from dreamdpo.storage import CHECKPOINT

    assert not store.fetch_resume(tmp_path / "empty")
    store.put_file(local / "checkpoints" / "last.pt", CHECKPOINT)
    store.put_file(local / "metrics.csv", "metrics.csv")
    (local / "checkpoints" / "last.pt").write_bytes(NEWER_CHECKPOINT)
    store.put_file(local / "checkpoints" / "last.pt", CHECKPOINT)
    other = tmp_path / "other"
    assert store.fetch_resume(other)
    assert (other / CHECKPOINT).read_bytes() == NEWER_CHECKPOINT
    assert (other / "metrics.csv").read_text() == "step\n0\n"
    store.put_tree(local)


@pytest.fixture(scope="session")
def pngs() -> list[bytes]:
    """64 distinct small PNGs (8×8, flat colours), for pairs that need images but not particular ones."""
    return [png_bytes(np.full((8, 8, 3), (i * 4, 255 - i * 4, (i * 37) % 256), np.uint8)) for i in range(64)]


@pytest.fixture(scope="session")
def synthetic_log(tmp_path_factory):
    """(url, engine) of a SQLite log holding the synthetic log (db/synthetic.py, planted facts),
    written through the queue as the app would. Read-only for the tests that use it."""
    from db import synthetic
    from db.engine import connect

    url = f"sqlite:///{tmp_path_factory.mktemp('synthetic') / 'log.db'}"
    engine = connect(url)
    synthetic.write_log(engine, synthetic.SyntheticSpec(n_live=120, n_gold=20, seed=3), image_size=8)
    return url, engine


# ----------------------------------------------------------------------------- browser
@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session (annotator/browser.py); each test opens its own contexts."""
    from annotator.browser import CHROMIUM, launch

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"needs Debian chromium at {CHROMIUM} (make system-deps installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


# ----------------------------------------------------------------------------- PostgreSQL
@pytest.fixture(scope="session")
def pg_server():
    """A throw-away PostgreSQL cluster for the session (db/pg_cluster.py). It stops at the end of the
    session, on Ctrl-C or SIGTERM (finalizer, atexit) and, through its watchdog, after kill -9; any
    cluster a killed earlier session left behind is removed first."""
    from db import pg_cluster

    if pg_cluster.pg_bin() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or PATH; "
                    "install Debian `postgresql` (make system-deps)")
    pg_cluster.remove_stale()
    server = pg_cluster.PostgresServer()
    try:
        try:
            server.start()
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"could not start the test PostgreSQL: {e.stderr.decode(errors='replace')}") from e
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def log_url(request, tmp_path):
    """URL of a fresh, migrated log on each engine (a SQLite file; a new database on the server)."""
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


# ----------------------------------------------------------------------------- the app's log
@pytest.fixture()
def log(tmp_path, monkeypatch):
    """A fresh SQLite log the app opens ($DREAMDPO_DB) with an annotator `ann` and an admin `root`:
    (engine, url, tokens by name, users by name). test_roles adds a third person on top."""
    from db import accounts
    from db.engine import connect

    url = f"sqlite:///{tmp_path / 'log.sqlite'}"
    monkeypatch.setenv("DREAMDPO_DB", url)
    engine = connect(url)
    tokens = {n: accounts.add_annotator(engine, n, admin=n == "root") for n in ("ann", "root")}
    users = {n: accounts.authenticate(engine, t) for n, t in tokens.items()}
    return engine, url, tokens, users
