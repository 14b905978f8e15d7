"""`dreamdpo export` / `dreamdpo stats` and the Audit / Export pages on a real SQLite log holding
the synthetic log (written through the log's write API: db.runs, db.pairs, db.queue, db.votes)."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from streamlit.testing.v1 import AppTest

from dreamdpo.cli import main


@pytest.fixture()
def log(synthetic_log):
    """conftest's synthetic log: ~1000 votes written through claims once per session (~12 s), hence slow."""
    return synthetic_log


@pytest.mark.slow
def test_export_cli_round_trips_the_database(log, tmp_path, capsys):
    from db.read import votes_frame

    url, engine = log
    frame = votes_frame(engine)
    assert main(["export", "--format", "pickapic", "--out", str(tmp_path / "pp"), "--db", url, "--include-ties"]) == 0
    manifest = json.loads((tmp_path / "pp" / "manifest.json").read_text())
    assert manifest["counts"]["comparisons"] == len(frame)
    table = pq.read_table(tmp_path / "pp" / "train.parquet").to_pandas()
    opinions = frame[frame["choice"].isin(["a", "b"]) & ~frame["retracted"]]  # train: decisive votes only
    assert frame["retracted"].sum() > 0 and manifest["counts"]["excluded"]["retracted"] == frame["retracted"].sum()
    assert sorted(table["ranking_id"]) == sorted(opinions["vote_id"])
    assert table["choice"].value_counts().to_dict() == opinions["choice"].value_counts().to_dict()
    ties = pq.read_table(tmp_path / "pp" / "ties.parquet").to_pandas()
    assert sorted(ties["ranking_id"]) == sorted(frame.loc[(frame["choice"] == "tie") & ~frame["retracted"], "vote_id"])
    assert set(table["kind"]) >= {"live", "gold", "duplicate"}
    # image bytes equal the ones posted
    from db import qc

    row = table.iloc[0]
    stored = qc._pair_images(engine, int(row["pair_id"]))
    assert row["jpg_0"] == stored["png_a"] and row["jpg_1"] == stored["png_b"]
    assert "exported" in capsys.readouterr().out


@pytest.mark.slow
def test_export_cli_filters_and_bad_input(log, tmp_path, capsys):
    url, _ = log
    assert main(["export", "--format", "jsonl", "--out", str(tmp_path / "r2"), "--db", url, "--run", "2"]) == 0
    lines = (tmp_path / "r2" / "comparisons.jsonl").read_text().splitlines()
    assert lines and all(json.loads(x)["run_id"] == 2 for x in lines)
    assert main(["export", "--format", "trl", "--out", str(tmp_path / "future"), "--db", url,
                 "--since", "2999-01-01"]) == 0
    assert json.loads((tmp_path / "future" / "manifest.json").read_text())["counts"]["comparisons"] == 0
    assert main(["export", "--format", "trl", "--out", str(tmp_path / "x"), "--db", url, "--since", "soon"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a date" in err[0]


@pytest.mark.slow
def test_stats_cli_prints_the_page_numbers(log, capsys):
    from db.audit import AuditFilters, audit_data
    from dreamdpo.commands.audit import format_audit

    url, engine = log
    assert main(["stats", "--db", url]) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"the log at {url}\n" + format_audit(audit_data(engine, AuditFilters())).strip()
    assert "toy-judge" in out and "FLAGGED" in out and "lefty" in out.split("FLAGGED")[1]
    assert main(["stats", "--db", url, "--judge", "first-judge"]) == 0
    out = capsys.readouterr().out.split("== per run")[0]
    assert "first-judge" in out and "toy-judge" not in out


def _render(page: str, url: str, user: dict):
    import importlib

    from db.engine import connect

    importlib.import_module(f"annotator.{page}").render(connect(url), user)


ADMIN = {"id": 1, "name": "root", "role": "admin", "active": True}
ANNOTATOR = {"id": 2, "name": "eve", "role": "annotator", "active": True}


@pytest.mark.slow
def test_export_page_refuses_non_admins_and_offers_downloads_to_admins(log):
    url, _ = log
    at = AppTest.from_function(_render, args=("export_page", url, ANNOTATOR), default_timeout=120).run()
    assert at.error and "admins only" in at.error[0].value and not at.button
    at = AppTest.from_function(_render, args=("export_page", url, ADMIN), default_timeout=120).run()
    assert not at.error
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert "comparisons" in at.json[0].value


@pytest.mark.slow
def test_audit_page_shows_the_planted_facts(log):
    url, _ = log
    at = AppTest.from_function(_render, args=("audit_page", url, ADMIN), default_timeout=120).run()
    assert not at.exception
    assert any("Fleiss" in m.label for m in at.metric)
    assert at.warning and "lefty" in at.warning[0].value and "spammer" in at.warning[0].value
    frames = [d.value for d in at.dataframe]
    assert any("toy-judge" in str(f.get("judge", [])) for f in frames)


def test_stats_and_export_on_an_empty_log(tmp_path, capsys):
    from db.engine import connect

    url = f"sqlite:///{tmp_path / 'empty.db'}"
    for argv in (["stats"], ["export", "--format", "jsonl", "--out", str(tmp_path / "never")]):
        assert main([*argv, "--db", url]) == 2  # a log that does not exist is never created by a reader
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no log at" in err[0] and str(tmp_path / "empty.db") in err[0]
    assert not (tmp_path / "empty.db").exists() and not (tmp_path / "never").exists()
    connect(url)  # a log with nothing in it yet
    assert main(["stats", "--db", url]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"the log at {url}" and "votes 0" in out
    assert main(["export", "--format", "jsonl", "--out", str(tmp_path / "e"), "--db", url]) == 0
    assert f"from the log at {url}" in capsys.readouterr().out
    assert json.loads((tmp_path / "e" / "manifest.json").read_text())["counts"]["comparisons"] == 0
