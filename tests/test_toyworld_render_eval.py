"""The analytic renderer and the evaluator that judges toy-world results (it is not the toy reward)."""
import random

import torch

from dreamdpo.cameras import CameraConfig, orbit_cameras, random_cameras
from dreamdpo.toyworld.evaluate import evaluate_views
from dreamdpo.toyworld.render import colour_tensor, colourize, render, render_geometry, scene_layout
from dreamdpo.toyworld.vocab import COLOURS, SHAPES, parse_prompt

CAMS = orbit_cameras(6)


def test_render_is_deterministic_in_range_and_linear_in_colour():
    scene = parse_prompt("a red cube and a blue sphere")
    a, b = render(scene, CAMS), render(scene, CAMS)
    assert a.shape == (6, 3, 64, 64) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    # object pixels exist, the background is white, and red sits on the left from the front camera
    front = a[0]
    left, right = front[:, :, :32], front[:, :, 32:]
    redness = lambda x: ((x[0] - x[2]) > 0.3).sum()  # noqa: E731
    assert redness(left) > 20 and redness(right) == 0
    assert torch.allclose(a[:, :, 0, 0], torch.ones(6, 3))
    # colourize(maps, colours) is the same render
    maps = render_geometry(scene_layout(scene), CAMS)
    assert torch.allclose(colourize(maps, colour_tensor(["red", "blue"])), a, atol=1e-6)


def test_objects_fit_the_initial_blob_region():
    cams = random_cameras(CameraConfig(), 16, torch.Generator().manual_seed(0))
    for shape in SHAPES:
        cov = render_geometry(scene_layout(parse_prompt(f"a red {shape}")), cams).coverage.sum(1)
        frac = cov.flatten(1).mean(1)
        assert (frac > 0.04).all() and (frac < 0.5).all(), shape
        assert cov[:, :2].sum() == 0 and cov[:, -2:].sum() == 0  # nothing touches the top/bottom border


def test_evaluator_names_every_single_object_render():
    cams = random_cameras(CameraConfig(), 6, torch.Generator().manual_seed(1))
    for c in COLOURS:
        for s in SHAPES:
            p = f"a {c} {s}"
            ev = evaluate_views(render(parse_prompt(p), cams), cams, p)
            assert ev["colour_correct"] == 1.0, (p, ev["predicted"])
            assert ev["shape_correct"] >= 5 / 6, (p, ev["predicted"])


def test_evaluator_detects_wrong_colour_shape_and_binding():
    cams = CAMS
    ev = evaluate_views(render(parse_prompt("a blue cube"), cams), cams, "a red cube")
    assert ev["colour_correct"] == 0 and ev["shape_correct"] > 0.8 and ev["alignment"] <= 0.6
    ev = evaluate_views(render(parse_prompt("a red cone"), cams), cams, "a red cube")
    assert ev["colour_correct"] == 1 and ev["shape_correct"] < 0.2
    rng = random.Random(0)
    for _ in range(4):
        c1, c2 = rng.sample(list(COLOURS), 2)
        s1, s2 = rng.sample(list(SHAPES), 2)
        prompt = f"a {c1} {s1} and a {c2} {s2}"
        good = evaluate_views(render(parse_prompt(prompt), cams), cams, prompt)
        swapped = evaluate_views(render(parse_prompt(f"a {c2} {s1} and a {c1} {s2}"), cams), cams, prompt)
        assert good["binding_correct"] >= 4 / 6 and good["alignment"] > 0.85, (prompt, good["predicted"])
        assert swapped["binding_correct"] <= 1 / 6 and swapped["alignment"] < good["alignment"], prompt


def test_evaluator_checks_sides_and_empty_images():
    cams = orbit_cameras(4, elevation=10.0)[torch.tensor([0])]  # the front view
    p = "a red cube to the left of a blue sphere"
    ok = evaluate_views(render(parse_prompt(p), cams), cams, p)
    mirrored = evaluate_views(render(parse_prompt("a red cube to the right of a blue sphere"), cams), cams, p)
    assert ok["position_correct"] == 1 and mirrored["position_correct"] == 0
    assert mirrored["binding_correct"] == 1
    blank = evaluate_views(torch.ones(2, 3, 64, 64), CAMS[:2], "a red cube")
    assert blank["alignment"] < 0.5


def test_finish_quality_scores_the_truth_one_and_a_blur_or_wrong_shape_less():
    p = "a red cube"
    truth = render(parse_prompt(p), CAMS, 128, 128)  # test views are 128 px; the evaluator resizes
    ev = evaluate_views(truth, CAMS, p)
    assert ev["scene_iou"] > 0.95 and abs(ev["edge_sharpness"] - 1) < 0.1
    blurred = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(truth, (4,) * 4, mode="replicate"), 9, 1)
    assert evaluate_views(blurred, CAMS, p)["edge_sharpness"] < 0.8 * ev["edge_sharpness"]
    assert evaluate_views(render(parse_prompt("a red torus"), CAMS, 128, 128), CAMS, p)["scene_iou"] < 0.8
    assert evaluate_views(torch.ones(2, 3, 64, 64), CAMS[:2], p)["edge_sharpness"] == 0  # no outline
