"""The analysis notebooks run top to bottom (on the synthetic log), so they cannot rot."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["audit.ipynb"])
def test_notebook_runs_top_to_bottom(name, monkeypatch):
    # The kernel spec launches `python`: make that this interpreter (the venv's).
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.delenv("DREAMDPO_DB", raising=False)
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert any("Fleiss" in o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
