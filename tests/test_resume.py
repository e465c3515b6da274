"""Step failures and recovery: fix and re-run resumes from the cache; --from; torn artifacts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from kale_magics import api, cli
from kale_magics.runtime import marshal

pytestmark = pytest.mark.integration

CELLS = ["%%kale parameters\nN = 3",
         "%%kale step load\nitems = list(range(N))\nprint('load ran')",
         "%%kale step total\nsize = sum(items) / DIVISOR",
         "%%kale step report\ndouble = size * 2",
         "%%kale metrics\ndouble"]


def notebook_with(path: Path, divisor: str) -> Path:
    nb = nbformat.v4.new_notebook()
    cells = [*CELLS[:1], "%%kale functions\nDIVISOR = " + divisor, *CELLS[1:]]
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, str(path))
    return path


def test_failure_then_fix_resumes_from_the_failed_step(tmp_path, capsys) -> None:
    path = notebook_with(tmp_path / "nb.ipynb", "0")
    first = api.run_local(path)
    assert first.state == "FAILED"
    total = first.steps["total"]
    assert (total.state, total.error) == ("FAILED", "ZeroDivisionError: division by zero")
    assert (total.cell, total.line) == ("nb.ipynb, cell 4 (step total)", 2)
    assert first.steps["report"].state == "SKIPPED"  # dependents are not run
    assert any("size = sum(items) / DIVISOR" in line for line in total.log_tail())

    notebook_with(path, "1")  # the fix: the functions cell changes, so every step's code does too
    fixed = api.run_local(path)
    assert fixed.state == "SUCCEEDED" and fixed.metrics == {"double": 6.0}

    again = api.run_local(path)  # nothing changed: every step comes from the cache
    assert [s.cached for s in again.steps.values()] == [True, True, True]
    assert again.metrics == {"double": 6.0}

    code = cli.main(["run", str(path), "--from", "total"])
    out = capsys.readouterr().out
    assert code == 0
    assert "load  SUCCEEDED  (cached)" in out and "total  RUNNING" in out and "report  RUNNING" in out


def test_only_the_changed_step_runs_again(tmp_path) -> None:
    path = tmp_path / "nb.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in
                ["%%kale step load\nitems = [1, 2]", "%%kale step total\nsize = sum(items)",
                 "%%kale step report\nout = size + 1"]]
    nbformat.write(nb, str(path))
    api.run_local(path)
    nb.cells[1].source = "%%kale step total\nsize = sum(items) * 10"
    nbformat.write(nb, str(path))
    status = api.run_local(path)
    assert [(n, s.cached) for n, s in status.steps.items()] == [
        ("load", True), ("total", False), ("report", False)]
    no_cache = api.run_local(path, enable_caching=False)
    assert not any(s.cached for s in no_cache.steps.values())


def test_unknown_from_step_is_a_clear_error(tmp_path) -> None:
    path = notebook_with(tmp_path / "nb.ipynb", "1")
    with pytest.raises(api.KaleError, match="--from 'nope': no such step; steps are load, total, report"):
        api.run_local(path, from_step="nope")


WRITER = """
import sys, numpy
from kale_magics.runtime import marshal
marshal.save(numpy.ones(100_000_000), sys.argv[1], "big")  # 800 MB: the kill lands mid-write
"""


def test_a_step_killed_mid_write_leaves_no_loadable_artifact(tmp_path) -> None:
    target = tmp_path / "big"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target)])
    deadline = time.time() + 30
    while not (target / "data.npy").exists() and time.time() < deadline:
        time.sleep(0.01)
    os.kill(writer.pid, signal.SIGKILL)  # no cleanup can run
    writer.wait()
    assert (target / "data.npy").exists() and not (target / "kale.json").exists()
    with pytest.raises(marshal.MarshalError, match="`big`"):
        marshal.load(str(target), "big")
