"""notebooks/analysis.ipynb runs for real on the small results fixture and draws its figures."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "analysis.ipynb"
FIXTURE = ROOT / "tests" / "fixtures" / "results_small.csv"


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "notebook has no code cells"
    assert all(not c.outputs and c.execution_count is None for c in code), \
        "clear the notebook's outputs before committing it"


@pytest.fixture
def executed_notebook(monkeypatch, tmp_path):
    monkeypatch.setenv("DNM_RESULTS_CSV", str(FIXTURE))
    # A kernelspec named python3 in the user's Jupyter folder would win over this venv's kernel.
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # cwd = notebooks/, as when a person opens it in Jupyter.
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    return nb


def test_notebook_draws_figures_without_errors(executed_notebook):
    outputs = [o for c in executed_notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    # accuracy heatmap, model-norm heatmap, best-configuration curves (the fixture has one c), and the
    # gradient and update magnitude histograms and relative update sizes of its recorded layer tables
    assert len(images) >= 6, f"expected at least 6 figures, got {len(images)}"
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert str(FIXTURE) in text, "the notebook did not use the results CSV it was given"
    # The claims section: the table scripts/claims.py writes, with a verdict for every claim.
    tables = [o.data["text/markdown"] for o in outputs if o.output_type == "display_data" and "text/markdown" in o.data]
    assert len(tables) == 1 and "| claim | rule | numbers | verdict |" in tables[0]
    assert tables[0].count("**holds**") + tables[0].count("**does not hold**") + tables[0].count("**cannot be judged**") \
        == tables[0].count("\n| ") - 1

