"""Every example notebook runs as a local pipeline and gives the metrics the notebook gives.

The reference is the notebook executed top to bottom in a real kernel with
nbclient (the ``%%kale`` cell magics run each cell as written).
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from kale_magics import api
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.integration

NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def notebook_metrics(path: Path, keys: list[str]) -> dict[str, float]:
    """Execute ``path`` top to bottom in a kernel, then evaluate the metric expressions."""
    nb = nbformat.read(path, as_version=4)
    probe = f"import json\nprint(json.dumps({{k: float(eval(k)) for k in {keys!r}}}))"
    nb.cells.append(nbformat.v4.new_code_cell(probe))
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return json.loads(nb.cells[-1].outputs[0]["text"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_example_runs_locally_with_the_notebooks_metrics(path: Path, tmp_path: Path) -> None:
    before = path.read_bytes()
    status = api.run_local(path, output_dir=str(tmp_path / "out"))
    assert status.state == "SUCCEEDED", status.error
    assert path.read_bytes() == before  # compile and run only read the notebook
    keys = list(status.metrics)
    assert len(keys) >= 2
    expected = notebook_metrics(path, keys)
    assert status.metrics == pytest.approx(expected, rel=1e-12, abs=1e-12)
