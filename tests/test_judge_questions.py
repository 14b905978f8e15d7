"""An admin's questions for a run's multimodal-LLM judge (issue 14, item 2): written on the Runs page,
kept in the log (db.runs.judge_questions), read by the run's LMM judge and asked beside its own
questions; every answer is kept with the vote. The LMM judge talks to the fake OpenAI-compatible
server of tests/fake_openai.py."""
from __future__ import annotations

import json

import pytest
import torch
from streamlit.testing.v1 import AppTest

from db import runs
from db.errors import LogError
from dreamdpo.judges.base import JudgeContext
from dreamdpo.judges.lmm import LMMConfig, LMMJudge
from fake_openai import serve_as_endpoint

KEY = "sk-questions-test-51c2e7"
RED = torch.zeros(1, 3, 32, 32)
RED[:, 0] = 0.9
BLUE = torch.zeros(1, 3, 32, 32)
BLUE[:, 2] = 0.9
GLOSSY = "Is the cube glossy, like polished plastic?"


def page(module: str, url: str, user: dict):
    def script(module, url, user):
        import importlib

        from db.engine import connect

        importlib.import_module(f"annotator.{module}").render(connect(url), user)

    return AppTest.from_function(script, args=(module, url, user), default_timeout=120)


def asked(request: dict) -> str:
    return " ".join(p["text"] for p in request["body"]["messages"][0]["content"] if p["type"] == "text")


@pytest.fixture
def endpoint(monkeypatch):
    yield from serve_as_endpoint(monkeypatch, KEY)


# ---------------------------------------------------------------- the log


def test_questions_are_one_a_line_plain_text_and_bounded(engine):
    run_id = runs.create_run(engine, "a red cube")
    assert runs.judge_questions(engine, run_id) == []
    saved = runs.set_judge_questions(engine, run_id, f"  {GLOSSY}\n\n\tIs it   <b>small</b>?\x07\n")
    assert saved == [GLOSSY, "Is it <b>small</b>?"] == runs.judge_questions(engine, run_id)
    with pytest.raises(LogError, match=f"at most {runs.MAX_JUDGE_QUESTIONS}"):
        runs.set_judge_questions(engine, run_id, "\n".join(f"q{i}" for i in range(runs.MAX_JUDGE_QUESTIONS + 1)))
    with pytest.raises(LogError, match=f"question 2 is {runs.MAX_JUDGE_QUESTION_CHARS + 1} characters"):
        runs.set_judge_questions(engine, run_id, "ok\n" + "x" * (runs.MAX_JUDGE_QUESTION_CHARS + 1))
    assert runs.judge_questions(engine, run_id) == saved  # a refused text writes nothing
    runs.set_run_config(engine, run_id, "instructions", "Prefer round cubes.")  # the same mechanism, apart
    runs.set_judge_questions(engine, run_id, "")
    assert runs.judge_questions(engine, run_id) == []
    assert runs.get_run(engine, run_id)["config"] == {"instructions": "Prefer round cubes."}


# ---------------------------------------------------------------- the app


def lmm_run(engine, judge="lmm-api:fake-vl") -> int:
    return runs.create_run(engine, "a red cube", status="running", judge_policy={"judge": judge},
                           config={"lmm": {"questions_every": 10}})


def test_an_admin_saves_questions_on_the_runs_page_and_an_annotator_cannot(log):
    engine, url, _, users = log
    run_id, plain = lmm_run(engine), lmm_run(engine, judge="toy-reward")
    at = page("runs_page", url, users["ann"]).run()
    assert not at.text_area and not [b for b in at.button if b.label == "Save questions"]
    at = page("runs_page", url, users["root"]).run()
    assert not [t for t in at.text_area if t.key == f"judge-questions-{plain}"]  # no LMM judge, no questions
    at.text_area(key=f"judge-questions-{run_id}").input(f"{GLOSSY}\n\nIs it **small**?")
    at.button(key=f"save-judge-questions-{run_id}").click().run()
    assert runs.judge_questions(engine, run_id) == [GLOSSY, "Is it **small**?"]
    assert any("Saved 2 questions" in s.value and "within 10 steps" in s.value for s in at.success)
    at.text_area(key=f"judge-questions-{run_id}").input("\n".join(["Is it red?"] * (runs.MAX_JUDGE_QUESTIONS + 1)))
    at.button(key=f"save-judge-questions-{run_id}").click().run()
    assert any(f"at most {runs.MAX_JUDGE_QUESTIONS}" in e.value for e in at.error)
    assert runs.judge_questions(engine, run_id) == [GLOSSY, "Is it **small**?"]  # unchanged
    at = page("runs_page", url, users["root"]).run()  # shown again as saved
    assert at.text_area(key=f"judge-questions-{run_id}").value == f"{GLOSSY}\nIs it **small**?"


# ---------------------------------------------------------------- the judge


def test_the_judge_asks_an_admins_questions_from_its_next_read_and_the_answers_land_in_the_log(log, endpoint):
    from db.read import votes_frame
    from dreamdpo.commands.run import admin_questions_reader
    from dreamdpo.judges import read_questions_from
    from dreamdpo.recording import DbRecorder

    engine = log[0]
    cfg = LMMConfig(template=False, criteria=["overall"], questions_every=3, backoff_s=0.01, timeout_s=5.0)
    judge = LMMJudge.api(config=cfg)
    assert read_questions_from(judge, admin_questions_reader(engine)) == 1
    recorder = DbRecorder(engine)
    recorder.start({"lmm": {"questions_every": 3}}, "a red cube", "", "toy", "lmm-api:fake-vl")
    raws = {}
    for step in range(5):
        if step == 1:  # the admin writes the question after the run's first read
            runs.set_judge_questions(engine, recorder.run_id, GLOSSY)
        endpoint.requests.clear()
        ctx = JudgeContext(step=step, seeds=(2 * step, 2 * step + 1), run_id=recorder.run_id)
        verdict = judge.compare(RED, BLUE, "a red cube", ctx)
        recorder.record(verdict, RED, BLUE, ctx)
        raws[step] = json.loads(verdict.raw)
        glossy = [r for r in endpoint.requests if GLOSSY.rstrip("?") in asked(r)]
        assert len(glossy) == (2 if step >= 3 else 0), step  # read at steps 0 and 3: asked from step 3 on
        assert len(endpoint.requests) == (4 if step >= 3 else 2)  # both orders of each question
    assert raws[2]["questions"] == ["criterion:overall"] and "texts" not in raws[2]
    assert raws[3]["questions"] == ["criterion:overall", "admin:0"] and raws[3]["texts"] == {"admin:0": GLOSSY}
    assert {(a["q"], a["order"]) for a in raws[3]["answers"]} >= {("admin:0", "ab"), ("admin:0", "ba")}
    # every answer is in the log with the judge's vote on its pair
    frame = votes_frame(engine)
    logged = frame[frame["judge"] == "lmm-api:fake-vl"].sort_values("step")
    assert list(logged["step"]) == list(range(5))
    with engine.connect() as conn:
        stored = {step: json.loads(raw) for step, raw in conn.exec_driver_sql(
            "SELECT p.step, v.raw FROM votes v JOIN pairs p ON p.id = v.pair_id WHERE v.judge_name = 'lmm-api:fake-vl'")}
    assert stored[4]["texts"] == {"admin:0": GLOSSY}
    assert [a for a in stored[4]["answers"] if a["q"] == "admin:0"] == [
        a for a in raws[4]["answers"] if a["q"] == "admin:0"]
    assert len([a for a in stored[4]["answers"] if a["q"] == "admin:0"]) == 2
    # a cleared list is no longer asked, from the next read on
    runs.set_judge_questions(engine, recorder.run_id, None)
    endpoint.requests.clear()
    judge.compare(RED, BLUE, "a red cube", JudgeContext(step=6, seeds=(12, 13), run_id=recorder.run_id))
    assert len(endpoint.requests) == 2


def test_an_unreadable_log_keeps_the_questions_last_read(endpoint):
    judge = LMMJudge.api(config=LMMConfig(template=False, questions_every=1, backoff_s=0.01, timeout_s=5.0))
    answers = iter([[GLOSSY], None, []])
    judge.read_questions = lambda run_id: next(answers)
    for step, n in enumerate([4, 4, 2]):  # None: the log is down, keep asking; [] cleared
        endpoint.requests.clear()
        judge.compare(RED, BLUE, "a red cube", JudgeContext(step=step, run_id=1))
        assert len(endpoint.requests) == n, step


def test_a_guarded_ensemble_and_the_model_judge_beside_people_read_the_questions(endpoint, log):
    """read_questions_from reaches every LMM judge: an ensemble's, the cost guard's, and the assist judge
    of a human-judged run; the guard counts the admin's questions before it spends them."""
    from dreamdpo import judges
    from dreamdpo.commands.run import admin_questions_reader
    from dreamdpo.judges.human import HumanJudge, HumanPolicy

    engine = log[0]
    cfg = LMMConfig(template=False, questions_every=1, backoff_s=0.01, timeout_s=5.0)
    guarded = judges.load("toy-reward+lmm-api", "cpu", lmm=cfg, max_calls=6, fallback="toy-reward")
    assert judges.read_questions_from(guarded, admin_questions_reader(engine)) == 1
    human = HumanJudge(engine, HumanPolicy(), model_judge=judges.load("lmm-api", "cpu", lmm=cfg))
    assert judges.read_questions_from(human, admin_questions_reader(engine)) == 1
    run_id = runs.create_run(engine, "a red cube")
    runs.set_judge_questions(engine, run_id, GLOSSY)
    endpoint.requests.clear()
    first = guarded.compare(RED, BLUE, "a red cube", JudgeContext(step=0, run_id=run_id))
    assert len(endpoint.requests) == 4 and guarded.used == 4 + 1  # 2 questions × 2 orders, + the toy reward's
    with pytest.warns(UserWarning, match="judge_max_calls=6"):
        second = guarded.compare(RED, BLUE, "a red cube", JudgeContext(step=1, run_id=run_id))
    assert "source" not in first.extra and second.extra["source"] == "fallback:toy-reward"
    assert len(endpoint.requests) == 4  # the next comparison would pass the budget: never asked


@pytest.mark.slow
def test_a_run_asks_the_question_an_admin_wrote_while_it_ran(tmp_path, endpoint, toy_prior):
    """`dreamdpo run --judge lmm-api` on the log; the admin writes a question after the run's first
    comparison: the later pairs' votes hold its answers in both orders, the earlier ones none."""
    from db.engine import connect
    from dreamdpo.cli import main

    db, out = tmp_path / "log.sqlite", tmp_path / "run"
    engine = connect(str(db))

    def admin(body):
        if "A or B" in " ".join(p.get("text", "") for p in body["messages"][0]["content"]) and not admin.done:
            admin.done = True
            runs.set_judge_questions(engine, 1, GLOSSY)

    admin.done = False
    endpoint.on_request = admin
    code = main(["run", "--prompt", "a red cube", "--judge", "lmm-api", "--steps", "8", "--device", "cpu",
                 "--out", str(out), "--db", str(db), "--quiet", "test_views=2", "test_resolution=32",
                 "lmm.template=false", "lmm.questions_every=1", "lmm.backoff_s=0.01"])
    assert code == 0
    with engine.connect() as conn:
        raws = [json.loads(r) for (r,) in conn.exec_driver_sql(
            "SELECT v.raw FROM votes v JOIN pairs p ON p.id = v.pair_id "
            "WHERE v.judge_name = 'lmm-api:fake-vl' ORDER BY p.step")]
    assert len(raws) >= 2, "the toy run judged fewer than two steps"
    assert raws[0]["questions"] == ["criterion:overall"]
    for raw in raws[1:]:
        assert raw["questions"] == ["criterion:overall", "admin:0"] and raw["texts"] == {"admin:0": GLOSSY}
        assert sorted(a["order"] for a in raw["answers"] if a["q"] == "admin:0") == ["ab", "ba"]
    assert sum(GLOSSY.rstrip("?") in asked(r) for r in endpoint.requests) == 2 * (len(raws) - 1)


def test_an_admins_questions_never_name_a_run():
    """Like the instructions, they are edited while a run goes: the Audit tables' run names leave them out."""
    from db.audit import run_names

    names = run_names([{"id": 1, "prompt": "a red cube", "config": {"seed": 0, "judge_questions": [GLOSSY]}},
                       {"id": 2, "prompt": "a red cube", "config": {"seed": 0}}])
    assert names == {1: "run 1 (seed 0)", 2: "run 2 (seed 0)"}
