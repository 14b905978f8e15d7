"""`dreamdpo toyworld ...` commands (the comparison suite itself: test_toyworld_compare.py)."""
import pytest

from dreamdpo.cli import main
from dreamdpo.errors import UserError
from dreamdpo.toyworld.compare import run_comparison


def test_build_bank_command_builds_then_loads(tmp_path, capsys):
    args = ["toyworld", "build-bank", "--cameras", "1", "--cache", str(tmp_path)]
    assert main(args) == 0
    assert "built in" in capsys.readouterr().out
    assert main(args) == 0
    assert "loaded from cache" in capsys.readouterr().out


def test_compare_rejects_unknown_method():
    with pytest.raises(UserError, match="unknown method"):
        run_comparison(methods=["magic"])
