"""docs/walkthrough.ipynb runs from top to bottom, and the copy in the repository shows its outputs."""

from __future__ import annotations

import re

import nbformat
from conftest import ROOT
from nbclient import NotebookClient

NOTEBOOK = ROOT / "docs" / "walkthrough.ipynb"


def printed(notebook: nbformat.NotebookNode) -> str:
    return "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.outputs if output.output_type == "stream")


def test_the_committed_notebook_shows_its_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code_cells), "commit the notebook executed, with its outputs"
    assert sum("image/png" in output.get("data", {}) for cell in code_cells for output in cell.outputs) == 2


def test_the_notebook_runs_clean_and_its_hand_worked_loss_matches_the_class():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "docs")}}
                   ).execute()  # raises CellExecutionError on the first failing cell
    text = printed(notebook)
    by_hand, from_class = re.search(r"loss by hand: (\S+)\s+loss from train_step: (\S+)", text).groups()
    assert by_hand == from_class
    assert "return of one greedy episode: 500.0" in text
