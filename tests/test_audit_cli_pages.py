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


def test_run_names_say_tau_seed_and_what_differs():
    from db.audit import run_names

    base = {"prompt": "a red cube", "seed": 0, "steps": 300, "device": "cpu", "out": "/tmp/a",
            "dpo": {"tau": 0.05, "candidates": 2}}
    runs = [{"id": 3, "prompt": "a red cube", "config": base},
            {"id": 4, "prompt": "a red cube", "config": {**base, "seed": 1, "out": "/tmp/b", "device": "cuda"}},
            {"id": 5, "prompt": "a red cube", "config": {**base, "dpo": {"tau": 0.01, "candidates": 8}}}]
    assert run_names(runs) == {3: "run 3 (τ=0.05, seed 0, dpo.candidates=2)",
                               4: "run 4 (τ=0.05, seed 1, dpo.candidates=2)",
                               5: "run 5 (τ=0.01, seed 0, dpo.candidates=8)"}  # out and device never name a run
    assert run_names(runs[:1]) == {3: "run 3 (τ=0.05, seed 0)"}
    other = [runs[0], {"id": 9, "prompt": "a blue\nsphere " + "x" * 60, "config": None}]
    names = run_names(other)
    assert names[3] == 'run 3 ("a red cube", τ=0.05, seed 0)'  # the only config: nothing differs
    assert names[9].startswith('run 9 ("a blue sphere xxx') and names[9].endswith('x…")') and len(names[9]) < 60


def test_the_bradley_terry_table_names_candidates_by_run_and_config_and_is_rounded(tmp_path, capsys):
    import numpy as np

    from db import accounts, pairs, queue, runs, votes
    from db.audit import AuditFilters, audit_data
    from db.engine import connect
    from dreamdpo.commands.audit import format_audit
    from dreamdpo.images import png_bytes

    engine = connect(f"sqlite:///{tmp_path / 'log.db'}")
    people = [accounts.authenticate(engine, accounts.add_annotator(engine, n))["id"] for n in ("ann", "bob")]
    rid = runs.create_run(engine, "a red cube", status="running", config={"seed": 0, "dpo": {"tau": 0.05}})
    image = lambda i: png_bytes(np.full((4, 4, 3), i, np.uint8))  # noqa: E731
    # a cycle of three candidates, each winning once: equal strengths, 0 up to rounding noise
    for step, (sa_, sb_) in enumerate([(1106104, 2002), (2002, 3003), (3003, 1106104)]):
        pid = pairs.post_pair(engine, rid, step * 10, image(step), image(step + 50), seed_a=sa_, seed_b=sb_)
        queue.claim_next(engine, people[0])
        votes.vote(engine, pid, people[0], "a")
    ranking = audit_data(engine, AuditFilters(n_boot=20)).ranking
    assert sorted(ranking.index) == ["run 1 (τ=0.05, seed 0) · step 0 · noise 1106104",
                                     "run 1 (τ=0.05, seed 0) · step 0 · noise 2002",
                                     "run 1 (τ=0.05, seed 0) · step 10 · noise 3003"]
    for col in ("strength", "low", "high"):
        values = ranking[col].to_numpy()
        assert not np.signbit(values[values == 0]).any()  # 0.0, never -0.0
        assert (np.round(values, 3) == values).all()
    printed = format_audit(audit_data(engine, AuditFilters(n_boot=20)))
    table = printed.split("Bradley-Terry")[1]
    assert "run 1 (τ=0.05, seed 0) · step 0 · noise 1106104" in table
    assert "-0.000" not in printed and "e-1" not in table and "run1/seed" not in printed
