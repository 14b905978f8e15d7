"""A run and its log entry are one thing (issue 16, item 1): --resume never takes over another run,
another prompt or another process's folder, and a refused start changes nothing."""
from __future__ import annotations

import json

import pytest

from db import engine as db_engine
from db import runs
from dreamdpo.cli import main
from dreamdpo.optimize import folder_lock

pytestmark = pytest.mark.slow
RUN = ["run", "--prompt", "a red cube", "--steps", "2", "--quiet", "checkpoint_every=1", "test_views=1"]


def cli(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err.strip()


@pytest.fixture
def finished_run(toy_prior, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'a.sqlite'}"
    out = tmp_path / "run"
    code, err = cli([*RUN, "--db", url, "--out", str(out)], capsys)
    assert code == 0, err
    return url, out


def test_resume_against_another_log_is_refused(finished_run, tmp_path, capsys):
    _, out = finished_run
    other = f"sqlite:///{tmp_path / 'b.sqlite'}"
    engine = db_engine.connect(other)
    run_id = json.loads((out / "log.json").read_text())["run_id"]
    while (made := runs.create_run(engine, "an unrelated green cone")) < run_id:  # the same id, another run
        pass
    before = runs.list_runs(engine)
    code, err = cli([*RUN, "steps=3", "--db", other, "--out", str(out), "--resume"], capsys)
    assert code == 2 and "holds another run" in err and "\n" not in err, err
    assert runs.list_runs(engine) == before and made == run_id


def test_resume_with_another_prompt_is_refused(finished_run, capsys):
    url, out = finished_run
    link = (out / "log.json").read_bytes()
    argv = [*RUN, "steps=3", "--db", url, "--out", str(out), "--resume"]
    argv[argv.index("a red cube")] = "a blue sphere"
    code, err = cli(argv, capsys)
    assert code == 2 and "a red cube" in err and "\n" not in err, err
    assert (out / "log.json").read_bytes() == link


def test_a_refused_start_changes_neither_the_folder_nor_the_log(finished_run, capsys):
    url, out = finished_run
    engine = db_engine.connect(url)
    before, link = runs.list_runs(engine), (out / "log.json").read_bytes()
    code, err = cli([*RUN, "--db", url, "--out", str(out)], capsys)  # no --resume
    assert code == 2 and "--resume" in err
    assert runs.list_runs(engine) == before and (out / "log.json").read_bytes() == link


def test_a_second_process_on_the_same_folder_is_refused(toy_prior, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'a.sqlite'}"
    out = tmp_path / "busy"
    with folder_lock(out):  # another dreamdpo run holds the folder
        code, err = cli([*RUN, "--db", url, "--out", str(out)], capsys)
    assert code == 2 and "another dreamdpo run is writing" in err
    assert runs.list_runs(db_engine.connect(url)) == [] and not (out / "log.json").exists()
