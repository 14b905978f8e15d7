"""`dreamdpo demo` restarts (which run it resumes, when it starts a fresh one) and the CLI's help texts."""
from __future__ import annotations

import argparse
import json

import pytest

from db import runs
from db.engine import connect
from dreamdpo.cli import build_parser
from dreamdpo.commands.annotate import DEMO_PROMPT, demo_run_dir


def args(**kw):
    return argparse.Namespace(fresh=kw.pop("fresh", False), **kw)


def finish(engine, out, prompt):
    run_id = runs.create_run(engine, prompt, status="running")
    out.mkdir(parents=True, exist_ok=True)
    (out / "log.json").write_text(json.dumps({"run_id": run_id}))
    runs.set_run_status(engine, run_id, "finished")
    return run_id


def test_the_demo_resumes_its_run_and_starts_a_fresh_one_only_when_asked(tmp_path):
    engine = connect(f"sqlite:///{tmp_path / 'log.sqlite'}")
    home = tmp_path / "data"
    out, prompt, run = demo_run_dir(home, args(), engine)
    assert (out, prompt, run) == (home / "demo-run", DEMO_PROMPT, None)
    first = finish(engine, out, prompt)
    out, prompt, run = demo_run_dir(home, args(), engine)  # a finished run is found, not restarted
    assert out == home / "demo-run" and run["id"] == first and run["status"] == "finished"
    out, prompt, run = demo_run_dir(home, args(fresh=True), engine)
    assert (out, prompt, run) == (home / "demo-run-2", DEMO_PROMPT, None)
    assert demo_run_dir(home, args(), engine)[0] == home / "demo-run-2"  # the fresh run is now the current one
    finish(engine, out, prompt)
    out, prompt, run = demo_run_dir(home, args(prompt="a blue ball"), engine)  # another prompt: a new run
    assert (out, prompt, run) == (home / "demo-run-3", "a blue ball", None)
    assert (home / "demo-run" / "log.json").exists()  # nothing of the earlier runs is deleted


@pytest.mark.parametrize("command", [["run"], ["demo"], ["annotate"], ["export"], ["stats"], ["annotators", "add"]])
def test_help_texts_show_real_defaults(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(command + ["--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "(default: False)" not in text
    if command == ["run"]:
        assert "(default: 'a red cube')" in text and "(default: 'toy')" in text
    if command == ["demo"]:
        assert "(default: 300)" in text and "(default: 8501)" in text


@pytest.mark.parametrize("mode", ["async", "blocking"])
def test_the_demo_runs_people_in_the_mode_asked_async_by_default(mode, tmp_path):
    from dreamdpo.commands.annotate import demo_config

    ns = build_parser().parse_args(["demo"] + ([] if mode == "async" else ["--mode", mode]))
    cfg = demo_config(ns, tmp_path / "out", DEMO_PROMPT)
    assert cfg.human.mode == mode and cfg.human.max_pairs == 30 and cfg.judge == "human"
    assert cfg.export_mesh and cfg.mesh_resolution == 64  # the toy world's defaults reach the demo


def test_the_demo_mirrors_the_toy_bank_progress_for_the_app_and_removes_it(tmp_path, monkeypatch):
    from dreamdpo.commands.annotate import prepare_toy_world
    from dreamdpo.toyworld import bank

    marker, seen = tmp_path / "preparing.txt", []

    def fake_build(config, progress=True):
        with bank.tqdm(total=3, disable=True) as bar:
            for _ in range(3):
                bar.update(1)
                seen.append(marker.read_text())

    monkeypatch.setattr(bank, "build_bank", fake_build)
    prepare_toy_world(marker, progress=False)
    assert seen == ["1 3", "2 3", "3 3"]
    assert not marker.exists() and bank.tqdm.__name__ == "tqdm"
