import pytest

from dreamdpo.config import RunConfig, load_config, parse_overrides
from dreamdpo.errors import UserError


def test_layers_in_order(tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text("steps: 50\nseed: 3\ndpo:\n  tau: 0.2\nschedule:\n  t_end: [0.1, 0.4]\n")
    cfg = load_config(y, {"seed": 9, "backbone": "some/model"}, ["dpo.tau=0.01", "camera.n_views=4"])
    assert cfg.steps == 50 and cfg.seed == 9  # flag beats file
    assert cfg.dpo.tau == 0.01  # override beats file
    assert cfg.schedule.t_end == (0.1, 0.4)  # lists become typed tuples
    assert cfg.camera.n_views == 4


def test_defaults_are_the_papers_for_a_real_backbone():
    cfg = load_config(flags={"backbone": "stabilityai/stable-diffusion-2-1-base"})
    assert cfg.guidance_scale == 7.5 and cfg.steps == 10000
    assert cfg.schedule.t_start == (0.98, 0.98) and cfg.schedule.t_end == (0.02, 0.50)
    assert cfg.optim.lr_grid == 1e-2 and cfg.optim.lr_mlp == 1e-3 and cfg.optim.eps == 1e-15


def test_config_round_trips_through_yaml(tmp_path):
    import yaml

    cfg = load_config(flags={"backbone": "x", "steps": 7}, overrides=["dpo.tau=0.3"])
    y = tmp_path / "c.yaml"
    y.write_text(yaml.safe_dump(cfg.to_dict()))
    again = load_config(y)
    assert again == cfg


@pytest.mark.parametrize(
    "flags, overrides, message",
    [
        ({"prompt": "  "}, [], "prompt is empty"),
        ({"judge": "gpt9"}, [], "unknown judge 'gpt9'"),
        ({}, ["dpo.tau=-0.1"], "tau must be ≥ 0"),
        ({}, ["dpo.taus=1"], "unknown config key 'dpo.taus'"),
        ({}, ["steps=many"], "must be int"),
        ({}, ["nokey"], "is not key=value"),
    ],
)
def test_bad_input_is_one_line(flags, overrides, message):
    with pytest.raises(UserError) as e:
        load_config(flags={"backbone": "x", **flags}, overrides=overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_parse_overrides_nests_and_parses_yaml_values():
    assert parse_overrides(["a.b=1", "a.c=[1, 2]", "d=true"]) == {"a": {"b": 1, "c": [1, 2]}, "d": True}


def test_run_name_is_filesystem_safe():
    name = RunConfig(prompt="A red cube / <b>bold</b>!").run_name()
    assert "/" not in name and "<" not in name and name.startswith("a-red-cube")
