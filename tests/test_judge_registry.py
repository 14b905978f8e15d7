"""The judge registry (dreamdpo.judges): one parser and loader of judge specs that the CLI, the
config and the error messages read."""
import pytest

from dreamdpo import judges
from dreamdpo.config import load_config
from dreamdpo.errors import UserError
from dreamdpo.judges import JUDGE_HELP, Member, parse_spec


@pytest.mark.parametrize("spec, members", [
    ("none", [Member("none")]),
    ("toy-reward", [Member("toy-reward")]),
    ("hpsv2", [Member("hpsv2")]),
    ("imagereward:/w/ImageReward.pt", [Member("imagereward", "/w/ImageReward.pt")]),
    ("lmm:Qwen/Qwen2-VL-2B-Instruct", [Member("lmm", "Qwen/Qwen2-VL-2B-Instruct")]),
    ("lmm-api", [Member("lmm-api")]),
    ("lmm-api:gpt-4o", [Member("lmm-api", "gpt-4o")]),
    ("human", [Member("human")]),
    ("hpsv2+imagereward+lmm:/models/qwen", [Member("hpsv2"), Member("imagereward"), Member("lmm", "/models/qwen")]),
])
def test_specs_parse(spec, members):
    assert parse_spec(spec) == members


def test_logged_names():
    assert [m.name for m in parse_spec("hpsv2:/w.pt+lmm:Qwen/X+lmm-api:m+lmm-api")] == [
        "hpsv2", "lmm:Qwen/X", "lmm-api:m", "lmm-api"]
    assert judges._unique_names(parse_spec("toy-reward+toy-reward+hpsv2")) == ["toy-reward", "toy-reward#2", "hpsv2"]


@pytest.mark.parametrize("spec, words", [
    ("pickscore", "unknown judge 'pickscore'; choose one of: none"),
    ("", "the judge is empty"),
    ("lmm", "needs a model: lmm:MODEL_ID_OR_PATH"),
    ("toy-reward:weights", "unknown judge 'toy-reward:weights'"),
    ("none+hpsv2", "'none' cannot be part of a judge ensemble"),
    ("hpsv2+human", "'human' cannot be part of a judge ensemble"),
    ("hpsv2++imagereward", "unknown judge ''"),
])
def test_bad_specs_are_one_line_errors_that_list_the_judges(spec, words):
    with pytest.raises(UserError, match=words.replace("(", r"\(").replace("+", r"\+")) as e:
        parse_spec(spec)
    assert "\n" not in str(e.value)


def test_every_name_is_in_the_help_text():
    for name in judges.NAMES:
        assert name in JUDGE_HELP


def test_loading():
    assert judges.load("none") is None
    toy = judges.load("toy-reward", "cpu")
    assert toy.name == "toy-reward"
    from dreamdpo.judges.ensemble import EnsembleJudge

    pair = judges.load("toy-reward+toy-reward", "cpu")
    assert isinstance(pair, EnsembleJudge) and [m.name for m in pair.members] == ["toy-reward", "toy-reward#2"]
    with pytest.raises(UserError, match="human judge needs the preference log"):
        judges.load("human")
    with pytest.raises(UserError, match="judge_weights is ambiguous"):
        judges.load("hpsv2+imagereward", weights="/w")


def test_reward_weights_from_the_spec_reach_the_loader(tmp_path):
    with pytest.raises(UserError, match=f"HPSv2 weights not found at {tmp_path / 'nope.pt'}"):
        judges.load(f"hpsv2:{tmp_path / 'nope.pt'}", "cpu")


def test_cost_guard_wraps_only_when_asked():
    from dreamdpo.judges.ensemble import BudgetJudge

    assert not isinstance(judges.load("toy-reward", "cpu", fallback="toy-reward"), BudgetJudge)
    guarded = judges.load("toy-reward", "cpu", max_calls=5, fallback="none")
    assert isinstance(guarded, BudgetJudge) and guarded.fallback is None and guarded.name == "toy-reward"


def test_optimize_delegates_to_the_registry():
    from dreamdpo.optimize import load_model_judge, load_run_judge

    assert load_model_judge("none", "cpu") is None
    assert type(load_model_judge("toy-reward", "cpu")).__name__ == "ToyRewardJudge"
    cfg = load_config(None, {"judge": "toy-reward+toy-reward"}, ["judge_max_calls=3", "assist_judge=none"])
    judge = load_run_judge(cfg, "cpu")
    assert judge.max_calls == 3 and judge.judge.name == "toy-reward+toy-reward"


def test_config_reads_the_registry():
    with pytest.raises(UserError, match="unknown judge 'pickscore'; choose one of: none") as e:
        load_config(None, {"judge": "pickscore"}, [])
    assert JUDGE_HELP in str(e.value)
    with pytest.raises(UserError, match="assist_judge must be a model judge or none"):
        load_config(None, {"judge": "human"}, ["assist_judge=human"])
    with pytest.raises(UserError, match="judge_max_calls must be ≥ 1"):
        load_config(None, {}, ["judge_max_calls=0"])
    cfg = load_config(None, {"judge": "lmm:Qwen/Qwen2-VL-2B-Instruct+hpsv2", "prompt": "a cube"}, [])
    assert cfg.run_name() == "a-cube-lmm-Qwen2-VL-2B-Instruct+hpsv2-s0"  # no '/' or ':' in the folder name


def test_cli_help_lists_the_judges(capsys):
    from dreamdpo.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "lmm:MODEL_ID_OR_PATH" in out and "join model judges with +" in out
