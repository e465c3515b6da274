"""Every example notebook, executed top to bottom in a real kernel with nbclient, then run as a
pipeline from the same kernel with ``%kale run``: the pipeline's metrics equal the notebook's."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
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
    return [stdout(cell) for cell in nb.cells[-len(extra):]]


def stdout(cell: nbformat.NotebookNode) -> str:
    """What ``cell`` printed (its stream outputs)."""
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def run_cells(path: Path) -> list[str]:
    """The cells run after the notebook's own: print its metrics' values, ``%kale run`` it,
    print the run's state and metrics."""
    keys = [m.key for s in api.read_plan(path).steps for m in s.metrics]
    assert len(keys) >= 2
    return [f"import json\nprint(json.dumps({{k: float(eval(k)) for k in {keys!r}}}))",
            f"%load_ext kale_magics\n%kale run --notebook {path.name}", LAST_RUN]


def check_run(outputs: list[str]) -> None:
    """The stdout of :func:`run_cells`: the run succeeded with the notebook's metric values."""
    expected = json.loads(outputs[0])
    run = json.loads(outputs[2])
    assert run["state"] == "SUCCEEDED"
    assert run["metrics"] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert "SUCCEEDED" in outputs[1]


def digest(path: Path) -> str:
    """The SHA-256 of the file at ``path``."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


WINE = EXAMPLES / "wine.ipynb"
OTHERS = [path for path in NOTEBOOKS if path != WINE]


@dataclass(frozen=True)
class WineSession:
    """The Wine example in one kernel (see :func:`wine_session`)."""

    before: str  # the example file's digest before the kernel ran it
    saved: Path  # the notebook as the editor saves it after the run, step records in its outputs
    kernel_out: Path  # where ``%kale compile`` in the kernel wrote the saved notebook's IR
    run_outputs: list[str]  # the stdout of :func:`run_cells`


@pytest.fixture(scope="module")
def wine_session(tmp_path_factory: pytest.TempPathFactory) -> WineSession:
    """The Wine example run once in a kernel for the two tests that need it: every cell, then
    the notebook saved and compiled with ``%kale compile`` in that kernel, then the cells of
    :func:`run_cells`."""
    folder = tmp_path_factory.mktemp("wine")
    before, saved, kernel_out = digest(WINE), folder / "wine.ipynb", folder / "kernel"
    nb = nbformat.read(WINE, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(EXAMPLES)}})
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
        nbformat.write(nb, saved)  # what the editor saves: the outputs with the step records
        for source in [f"%kale compile --notebook {saved} -o {kernel_out}", *run_cells(WINE)]:
            nb.cells.append(nbformat.v4.new_code_cell(source))
            client.execute_cell(nb.cells[-1], len(nb.cells) - 1)
    return WineSession(before, saved, kernel_out, [stdout(cell) for cell in nb.cells[-3:]])


@pytest.mark.parametrize("path", OTHERS, ids=[p.stem for p in OTHERS])
def test_kale_run_in_the_kernel_gives_the_notebooks_metrics(path: Path) -> None:
    before = digest(path)
    check_run(execute(path, run_cells(path)))
    assert digest(path) == before  # the notebook is only read


def test_kale_run_in_the_kernel_gives_the_wine_notebooks_metrics(wine_session) -> None:
    check_run(wine_session.run_outputs)
    assert digest(WINE) == wine_session.before  # the notebook is only read


def _ir(path: Path) -> str:
    """The IR YAML without KFP's SDK version field."""
    return "\n".join(line for line in path.read_text().splitlines() if "sdkVersion" not in line)


def test_cli_and_kernel_compile_the_saved_notebook_to_the_same_ir(wine_session, tmp_path: Path) -> None:
    """The kernel that ran the notebook (holding DataFrames and models) and the CLI (holding
    nothing) write the same IR for the saved file: artifact classes come from the step records
    the cells left in their saved outputs."""
    cli_out = tmp_path / "cli"
    assert cli.main(["compile", str(wine_session.saved), "-o", str(cli_out)]) == 0
    kernel_ir = _ir(wine_session.kernel_out / "wine-classifier.yaml")
    cli_ir = _ir(cli_out / "wine-classifier.yaml")
    assert "system.Dataset" in cli_ir and "system.Model" in cli_ir  # read from the records
    assert kernel_ir == cli_ir
    unexecuted = api.compile_notebook(WINE, str(tmp_path / "plain"))
    assert "system.Dataset" not in Path(unexecuted.yaml_path).read_text()
