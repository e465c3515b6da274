"""Every malformed input of tests/corpus.py, through the API, the CLI and the magics.

For each case: the right error class; a message naming the cell or option and
the fix; no traceback through the CLI (one line, exit 2) or the magics (a
UsageError); and no file written.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import nbformat
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from kale_magics import api, cli
from kale_magics.errors import KaleError
from tests.corpus import MAGIC_LINES, all_cases, notebook_text

CASES = all_cases()


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 60


@pytest.fixture(scope="module")
def shell():
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "kale_magics")
    return ip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case, tmp_path: Path, capsys, shell) -> None:
    path = tmp_path / "case.ipynb"
    path.write_text(notebook_text(case), encoding="utf-8")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    out = tmp_path / "out"

    with pytest.raises(KaleError) as info:
        api.compile_notebook(path, str(out))
    assert type(info.value).__name__ == case.error
    for fragment in case.fragments:
        assert fragment in str(info.value), (fragment, str(info.value))

    code = cli.main(["compile", str(path), "-o", str(out)])
    stdout, stderr = capsys.readouterr()
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert case.fragments[-1] in stderr

    with pytest.raises(UsageError) as usage:
        shell.run_line_magic("kale", f"compile --notebook {path} -o {out}")
    assert case.fragments[-1] in str(usage.value)

    assert not out.exists()  # nothing written
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # the notebook untouched


@pytest.mark.parametrize("name, line, fragment", MAGIC_LINES, ids=[m[0] for m in MAGIC_LINES])
def test_bad_magic_line_in_the_kernel_runs_nothing(shell, name, line, fragment) -> None:
    shell.user_ns.pop("ran", None)
    with pytest.raises(UsageError) as info:
        shell.run_cell_magic("kale", line.removeprefix("%%kale").strip(), "ran = True")
    assert fragment in str(info.value)
    assert "ran" not in shell.user_ns


def extreme_notebook(path: Path, sources: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, str(path))
    return path


def test_five_thousand_cells_analyse(tmp_path) -> None:
    sources = ["%%kale step s0\nv0 = 0"] + [
        f"%%kale step s{i}\nv{i} = v{i - 50} + 1" if i % 50 == 0 else f"w{i} = {i}"
        for i in range(1, 5000)]
    start = time.perf_counter()
    plan = api.read_plan(extreme_notebook(tmp_path / "big.ipynb", sources))
    assert len(plan.steps) == 100 and time.perf_counter() - start < 60
    assert plan.step("s4950").inputs[0].name == "v4900"


def test_very_long_cell_and_ipython_syntax_everywhere_compile(tmp_path) -> None:
    long_cell = "%%kale step long\n" + "\n".join(f"x{i} = {i} ** 2" for i in range(20000))
    ipython = ("%%kale step shell\n!echo hi\nfiles = !ls\n%time y = 1\n%matplotlib inline\n"
               "%load_ext autoreload\n%autoreload 2\ny2 = y + len(files)")
    cells = ["%load_ext kale_magics", "%%kale imports\n%matplotlib inline\nimport os", long_cell,
             ipython, "%%bash\necho continuation cell of step shell", "%%kale metrics\ny2"]
    compiled = api.compile_notebook(extreme_notebook(tmp_path / "x.ipynb", cells), str(tmp_path / "o"))
    assert Path(compiled.yaml_path).exists()
    assert [c.index for c in compiled.plan.step("shell").cells] == [3, 4]
