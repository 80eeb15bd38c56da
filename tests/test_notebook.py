"""The debugging walkthrough notebook, executed top to bottom from the repository root so that it
never rots, and stored without outputs so that its diffs stay readable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "debugging_walkthrough.ipynb"


@pytest.mark.unit
def test_notebook_is_stored_without_outputs() -> None:
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    code = [cell for cell in cells if cell["cell_type"] == "code"]
    assert code, "the walkthrough has no code cells"
    stored = [i for i, cell in enumerate(code) if cell["outputs"] or cell["execution_count"] is not None]
    assert not stored, (
        f"code cells {stored} keep outputs; clear them "
        f"(jupyter nbconvert --clear-output --inplace {NOTEBOOK.relative_to(ROOT)})"
    )


@pytest.mark.notebook
@pytest.mark.slow
def test_walkthrough_runs_top_to_bottom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("nbclient", "nbformat", "ipykernel", "matplotlib"):
        pytest.importorskip(module, reason=f"{module} is not installed (pip install -e '.[notebook]')")
    import nbclient
    import nbformat

    monkeypatch.setenv("WALKTHROUGH_RECORDS", str(tmp_path))  # the kernel inherits this environment
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()  # raises CellExecutionError with the cell and its traceback

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    text = "".join(output.get("text", "") for output in outputs)
    assert "verdict: PARITY" in text and "verdict: DIVERGED" in text, text
    assert "at step 1" in text, text  # the changed learning rate shows after the first update
    assert sum("image/png" in output.get("data", {}) for output in outputs) == 2
    assert len(list(tmp_path.glob("*/manifest.json"))) == 3
