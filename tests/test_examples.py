"""Every example notebook, executed top to bottom in a real kernel with nbclient, then run as a
pipeline from the same kernel with ``%kale run``: the pipeline's metrics equal the notebook's."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from kale_magics import api, cli
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.integration

NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
LAST_RUN = ("import json\nfrom kale_magics import api\n"
            "run = api.NotebookSession.of(get_ipython()).last_run\n"
            "print(json.dumps({'state': run.state, 'metrics': run.metrics}))")


def execute(path: Path, extra: list[str]) -> list[str]:
    """Run ``path`` top to bottom plus ``extra`` cells in a kernel; return the extras' stdout."""
    nb = nbformat.read(path, as_version=4)
    nb.cells.extend(nbformat.v4.new_code_cell(source) for source in extra)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return ["".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
            for cell in nb.cells[-len(extra):]]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_kale_run_in_the_kernel_gives_the_notebooks_metrics(path: Path) -> None:
    keys = [m.key for s in api.read_plan(path).steps for m in s.metrics]
    assert len(keys) >= 2
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    notebook_probe = f"import json\nprint(json.dumps({{k: float(eval(k)) for k in {keys!r}}}))"
    outputs = execute(path, [notebook_probe, f"%load_ext kale_magics\n%kale run --notebook {path.name}",
                             LAST_RUN])
    expected = json.loads(outputs[0])
    run = json.loads(outputs[2])
    assert run["state"] == "SUCCEEDED"
    assert run["metrics"] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert "SUCCEEDED" in outputs[1]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # the notebook is only read


def _ir(path: Path) -> str:
    """The IR YAML without KFP's SDK version field."""
    return "\n".join(line for line in path.read_text().splitlines() if "sdkVersion" not in line)


def test_cli_and_kernel_compile_the_saved_notebook_to_the_same_ir(tmp_path: Path) -> None:
    """The kernel that ran the notebook (holding DataFrames and models) and the CLI (holding
    nothing) write the same IR for the saved file: artifact classes come from the step records
    the cells left in their saved outputs."""
    nb = nbformat.read(EXAMPLES / "wine.ipynb", as_version=4)
    saved, kernel_out, cli_out = tmp_path / "wine.ipynb", tmp_path / "kernel", tmp_path / "cli"
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(EXAMPLES)}})
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
        nbformat.write(nb, saved)  # what the editor saves: the outputs with the step records
        compile_cell = nbformat.v4.new_code_cell(f"%kale compile --notebook {saved} -o {kernel_out}")
        nb.cells.append(compile_cell)
        client.execute_cell(compile_cell, len(nb.cells) - 1)
    assert cli.main(["compile", str(saved), "-o", str(cli_out)]) == 0
    kernel_ir, cli_ir = _ir(kernel_out / "wine-classifier.yaml"), _ir(cli_out / "wine-classifier.yaml")
    assert "system.Dataset" in cli_ir and "system.Model" in cli_ir  # read from the records
    assert kernel_ir == cli_ir
    unexecuted = api.compile_notebook(EXAMPLES / "wine.ipynb", str(tmp_path / "plain"))
    assert "system.Dataset" not in Path(unexecuted.yaml_path).read_text()
