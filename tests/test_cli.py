"""The kale-magics command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kale_magics", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


SMALL = ("%%kale parameters\nN = 2", "%%kale step a\nx = N * 10\nprint('a ran')",
         "%%kale step b\ny = x + 1", "%%kale metrics\ny")


def test_compile_writes_dsl_and_yaml_next_to_the_notebook(notebook) -> None:
    path = notebook(*SMALL, name="small")
    result = cli("compile", str(path))
    assert result.returncode == 0, result.stderr
    assert (path.parent / ".kale" / "small.py").exists()
    assert (path.parent / ".kale" / "small.yaml").exists()
    assert "small.yaml" in result.stdout


def test_compile_to_chosen_folder(notebook, tmp_path: Path) -> None:
    result = cli("compile", str(notebook(*SMALL, name="small")), "-o", str(tmp_path / "o"))
    assert result.returncode == 0 and (tmp_path / "o" / "small.yaml").exists()


def test_show_prints_steps_edges_and_producers(notebook) -> None:
    result = cli("show", str(notebook(*SMALL, name="small")))
    assert result.returncode == 0
    assert "step b  cells 3   after: a" in result.stdout
    assert "<- x (a)" in result.stdout


@pytest.mark.integration
def test_run_json(notebook) -> None:
    result = cli("run", str(notebook(*SMALL, name="small")), "--param", "N=3", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["state"] == "SUCCEEDED" and data["pipeline"] == "small"
    assert data["metrics"] == {"y": 31.0}
    assert data["steps"]["b"]["inputs"] == ["x"] and data["steps"]["a"]["outputs"] == ["x"]
    assert set(data["steps"]["a"]) >= {"state", "duration_s", "inputs", "outputs"}
    assert Path(data["pipeline_root"]).is_dir()


@pytest.mark.integration
def test_run_prints_steps_and_summary_and_fails_with_1(notebook) -> None:
    ok = cli("run", str(notebook(*SMALL, name="small")))
    assert ok.returncode == 0
    assert "a  RUNNING" in ok.stdout and "b  SUCCEEDED" in ok.stdout
    assert "pipeline small SUCCEEDED" in ok.stdout and "y = 21" in ok.stdout
    bad = cli("run", str(notebook("%%kale step a\nraise ValueError('no good')", name="bad")))
    assert bad.returncode == 1
    assert "step a failed (bad.ipynb, cell 1 (step a), line 2): ValueError: no good" in bad.stdout


@pytest.mark.parametrize("cells, message", [
    (("%%kale step Bad\nx = 1",), "cell 1: invalid step name 'Bad'"),
    (("%%kale step a\ny = x",), "step 'a' reads `x`"),
])
def test_errors_are_one_line_and_exit_2(notebook, cells, message) -> None:
    result = cli("compile", str(notebook(*cells, name="err")))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_missing_notebook_and_bad_param(tmp_path: Path, notebook) -> None:
    result = cli("show", str(tmp_path / "none.ipynb"))
    assert result.returncode == 2 and "notebook not found" in result.stderr
    result = cli("run", str(notebook(*SMALL, name="small")), "--param", "N")
    assert result.returncode == 2 and "is not NAME=VALUE" in result.stderr
