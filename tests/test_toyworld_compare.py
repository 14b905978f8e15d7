"""The toy-world comparison suite: prompts and groups, the bootstrap CI, the group table, the picture,
and a short end-to-end run of `dreamdpo toyworld compare` (2 prompts, 1 seed, 2 steps)."""
import json

import pytest
from PIL import Image

from dreamdpo.cli import main
from dreamdpo.config import load_config
from dreamdpo.errors import UserError
from dreamdpo.toyworld.compare import (
    GROUPS,
    METHODS,
    SUITE,
    bootstrap_ci,
    draw_grid,
    prompt_table,
    suite,
    suite_prompt,
    table,
)
from dreamdpo.toyworld.vocab import parse_prompt


def test_suite_has_three_groups_of_parsable_prompts_with_binding_cases():
    assert len(SUITE) >= 12 and len({p.text for p in SUITE}) == len(SUITE)
    for g in GROUPS:
        assert len([p for p in SUITE if p.group == g]) >= 4
    for p in SUITE:
        scene = parse_prompt(p.text)
        expect = "single" if len(scene.objects) == 1 else ("two" if scene.relation == "and" else "relation")
        assert p.group == expect, p
    assert all(p.group != "single" for p in SUITE if p.binding)
    assert {p.group for p in SUITE if p.binding} == {"two", "relation"}
    assert [p.group for p in suite(["relation"])] == ["relation"] * len(suite(["relation"]))
    with pytest.raises(UserError, match="unknown prompt group"):
        suite(["triple"])


def test_prompts_outside_the_suite_are_grouped_by_their_parsed_scene():
    assert suite_prompt("a cube").group == "single"
    assert suite_prompt("a pink cone and a cyan torus").group == "two"
    assert suite_prompt("a pink cone right of a cyan torus").group == "relation"
    assert suite_prompt(SUITE[5].text) is SUITE[5]
    with pytest.raises(UserError):
        suite_prompt("a red dragon")


def test_every_method_is_a_valid_config_and_one_draws_eight_candidates():
    cfgs = {m: load_config(None, {"prompt": "a red cube", **flags}, []) for m, flags in METHODS.items()}
    assert cfgs["sds"].judge == "none"
    n = [m for m, c in cfgs.items() if c.judge != "none" and c.dpo.candidates == 8]
    assert len(n) == 1 and all(c.dpo.candidates == 2 for m, c in cfgs.items() if m not in n)


def test_bootstrap_ci_contains_the_mean_narrows_with_more_runs_and_is_deterministic():
    few = [0.0, 1.0, 0.5, 0.25, 0.75]
    m, lo, hi = bootstrap_ci(few)
    assert m == pytest.approx(0.5) and 0.0 <= lo < m < hi <= 1.0
    assert bootstrap_ci(few) == (m, lo, hi)  # a fixed RNG seed
    _, lo2, hi2 = bootstrap_ci(few * 8)  # the same spread, 8× the runs
    assert lo < lo2 < m < hi2 < hi
    assert bootstrap_ci([0.3]) == (0.3, 0.3, 0.3)
    assert bootstrap_ci([0.7] * 5) == pytest.approx((0.7, 0.7, 0.7))
    _, lo90, hi90 = bootstrap_ci(few, level=0.9)
    assert lo <= lo90 and hi90 <= hi


def _rows(thumbs=None):
    rows = []
    for m, a in (("sds", 0.5), ("dreamdpo τ=0.01", 1.0)):
        for prompt, group in (("p single", "single"), ("p two", "two"), ("p rel", "relation"), ("q rel", "relation")):
            for seed, delta in ((0, 0.0), (1, 0.2)):
                rows.append({"method": m, "prompt": prompt, "group": group, "seed": seed, "alignment": a - delta,
                             "binding": 0.5, "thumb": (thumbs or {}).get((m, prompt))})
    return rows


def test_table_has_one_row_per_method_and_a_ci_per_group_from_the_rows_group_field():
    lines = table(_rows()).splitlines()
    assert lines[0] == "| method | single (n=2) | two (n=2) | relation (n=4) | all |"
    assert len(lines) == 4 and all(line.count("|") == 6 for line in lines)
    assert lines[2].startswith("| sds | 0.40 [0.30, 0.50] | 0.40 [0.30, 0.50] | 0.40 [")
    assert lines[3].startswith("| dreamdpo τ=0.01 | 0.90 [0.80, 1.00] |")
    p = prompt_table(_rows()).splitlines()
    assert p[0] == "| prompt | group | sds | dreamdpo τ=0.01 |"
    assert p[2] == "| p single | single | 0.40 | 0.90 |" and p[3] == "| p two | two | 0.40 (0.50) | 0.90 (0.50) |"


def test_grid_is_prompts_by_methods_with_grey_cells_for_missing_thumbnails(tmp_path):
    red = tmp_path / "red.png"
    Image.new("RGB", (128, 32), (220, 20, 20)).save(red)
    path = draw_grid(_rows({("sds", "p two"): str(red)}), tmp_path / "grid.png")
    im = Image.open(path).convert("RGB")
    w, h = im.size
    assert h >= 4 * 32 and w >= 2 * 128
    colours = {c for _, c in im.getcolors(w * h)}
    assert (220, 20, 20) in colours and (200, 200, 200) in colours


@pytest.mark.slow  # ~60 s at load ≈ 2 (4 short runs, the prior loaded once)
def test_compare_command_runs_a_short_suite_and_writes_table_and_picture(toy_prior, tmp_path, capsys):
    out = tmp_path / "cmp"
    prompts = ["a red cube", "a red cube to the left of a blue sphere"]
    methods = ["sds", "dreamdpo N=8 τ=0.01"]
    args = ["toyworld", "compare", "--prompts", *prompts, "--seeds", "1", "--steps", "2", "--methods", *methods,
            "--test-views", "2", "--out", str(out), "--no-progress", "test_resolution=32", "export_mesh=false"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    rows = json.loads((out / "rows.json").read_text())
    assert [(r["method"], r["prompt"], r["group"]) for r in rows] == [
        (m, p, g) for p, g in zip(prompts, ("single", "relation")) for m in methods]
    lines = table(rows).splitlines()
    assert lines[0] == "| method | single (n=1) | relation (n=1) | all |"
    assert [line.split(" | ")[0] for line in lines[2:]] == [f"| {m}" for m in methods]
    assert lines[0] in printed and lines[0] in (out / "table.md").read_text()
    grid = Image.open(out / "grid.png")
    thumb = Image.open(rows[0]["thumb"])
    assert thumb.size == (2 * 64, 64)  # 2 turntable views of 64 px
    assert grid.size[0] >= 2 * thumb.size[0] and grid.size[1] >= 2 * thumb.size[1]
