"""End to end on CPU: the default toy run (toy prior, and the toy reward for DreamDPO) turns
"a red cube" into something the independent evaluator calls a red cube."""
import pytest

from dreamdpo.config import load_config
from dreamdpo.optimize import optimize
from dreamdpo.toyworld.evaluate import evaluate_views

STEPS = 300  # the toy default; the product promise is a red cube from `dreamdpo run --prompt "a red cube"`


@pytest.mark.slow
@pytest.mark.parametrize("judge", ["none", "toy-reward"])
def test_short_run_ends_with_a_red_cube(tmp_path, judge):
    cfg = load_config(None, {"prompt": "a red cube", "judge": judge, "steps": STEPS, "device": "cpu",
                             "out": str(tmp_path / judge), "test_views": 8}, [])
    result = optimize(cfg, progress=False)
    ev = evaluate_views(result.test_views, result.test_cameras, "a red cube")
    assert ev["colour_correct"] >= 0.75, ev
    assert ev["shape_correct"] >= 0.6, ev
