"""`dreamdpo toyworld ...` commands and the comparison table."""
import pytest

from dreamdpo.cli import main
from dreamdpo.errors import UserError
from dreamdpo.toyworld.compare import METHODS, run_comparison, table


def test_build_bank_command_builds_then_loads(tmp_path, capsys):
    args = ["toyworld", "build-bank", "--cameras", "1", "--cache", str(tmp_path)]
    assert main(args) == 0
    assert "built in" in capsys.readouterr().out
    assert main(args) == 0
    assert "loaded from cache" in capsys.readouterr().out


def test_compare_rejects_unknown_method():
    with pytest.raises(UserError, match="unknown method"):
        run_comparison(methods=["magic"])


def test_table_means_over_seeds_and_splits_single_and_two_object():
    rows = []
    for m, a in (("sds", 0.5), ("dreamdpo τ=0", 1.0)):
        for seed, delta in ((0, 0.0), (1, 0.2)):
            rows.append({"method": m, "prompt": "a red cube", "seed": seed, "alignment": a - delta, "binding": 1.0})
            rows.append({"method": m, "prompt": "a red cube and a blue sphere", "seed": seed,
                         "alignment": 0.6, "binding": 0.25 * seed})
    text = table(rows)
    lines = text.splitlines()
    assert lines[0].startswith("| method | a red cube | a red cube and a blue sphere |")
    assert lines[2] == "| sds | 0.40 | 0.60 | 0.40 | 0.60 (0.12) | 0.50 |"
    assert lines[3].startswith("| dreamdpo τ=0 | 0.90 |")
    assert len(METHODS) == 5 and "sds" in METHODS
