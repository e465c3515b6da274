"""Local runs through kfp.local: real pipelines, real subprocesses, no stubs."""

from __future__ import annotations

import builtins
import logging
import os
import re
import sys
import threading
from pathlib import Path

import pytest
import yaml

from kale_magics import api
from kale_magics.runner.local import local_ir
from tests.conftest import write_notebook

pytestmark = pytest.mark.integration

LABEL = "it's \"quoted\"\nline two \\ ünï"

FEATURES = (
    "%load_ext kale_magics\n%kale pipeline --name features",
    "%%kale imports\nimport numpy as np",
    "%%kale functions\nclass Point:\n    def __init__(self, x):\n        self.x = x\nOFFSET = 10",
    f"%%kale parameters\nLABEL = {LABEL!r}\nN = 3\nRATE = -0.5\nITEMS = [1, 'two']\nOPTS = {{'k': [1]}}",
    "%%kale step make\n%matplotlib inline\n!echo shell says hi\n"
    "points = [Point(i) for i in range(N)]\narr = np.arange(N) * RATE\nprint('made', len(points))\n"
    "import os, tempfile\nprint('tmpdir', os.environ['TMPDIR'], tempfile.gettempdir())",
    "%%kale step left\nleft = sum(p.x for p in points) + OFFSET",
    "%%kale step right\nright = float(arr.sum())\nprint('label is', repr(LABEL), ITEMS, OPTS)",
    "%%kale step join\ntotal = np.float64(left + right)",
    "%%kale metrics\ntotal\nleft",
)


@pytest.fixture(scope="module")
def features_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("features")
    path = write_notebook(folder / "features.ipynb", FEATURES)
    events = []
    hooks = api.RunHooks(on_step=lambda s: events.append((s.name, s.state)))
    before = os.environ.get("TMPDIR")
    status = api.run_local(path, {"N": "4"}, hooks=hooks)
    return status, events, (before, os.environ.get("TMPDIR"))


def test_pipeline_succeeds_with_metrics(features_run) -> None:
    status, _, _ = features_run
    assert status.state == "SUCCEEDED", status.error
    # N=4 from the command line: left = 0+1+2+3 + 10, right = -0.5 * (0+1+2+3)
    assert status.metrics == {"total": 16.0 - 3.0, "left": 16.0}
    assert all(s.state == "SUCCEEDED" for s in status.steps.values())


def test_events_in_order(features_run) -> None:
    _, events, _ = features_run
    assert events[:2] == [("make", "RUNNING"), ("make", "SUCCEEDED")]
    assert events[-2:] == [("join", "RUNNING"), ("join", "SUCCEEDED")]
    assert len(events) == 8


def test_user_output_and_ipython_syntax_reach_the_log(features_run) -> None:
    status, _, _ = features_run
    log = "\n".join(status.steps["make"].log)
    assert "made 4" in log
    assert "shell says hi" in log
    assert "skipped notebook-only magic in the pipeline step: %matplotlib inline" in log


def test_string_parameter_arrives_unchanged(features_run) -> None:
    status, _, _ = features_run
    log = "\n".join(status.steps["right"].log)
    assert f"label is {LABEL!r} [1, 'two'] {{'k': [1]}}" in log


def test_artifacts_have_formats_and_temp_folders_are_removed(features_run) -> None:
    status, _, (tmpdir_before, tmpdir_after) = features_run
    artifacts = status.steps["make"].artifacts
    assert set(artifacts) == {"arr", "points"}
    assert artifacts["arr"]["kale_format"] != artifacts["points"]["kale_format"]
    assert all(Path(a["path"]).exists() for a in artifacts.values())
    assert artifacts["arr"]["path"].startswith(status.pipeline_root)
    line = next(line for line in status.steps["make"].log if line.startswith("tmpdir "))
    step_tmpdir, step_tempdir = line.split()[1:]
    assert step_tmpdir == step_tempdir and "kale-magics-run-" in step_tmpdir
    assert not os.path.exists(step_tmpdir)  # the run's temporary folder is gone
    assert tmpdir_after == tmpdir_before  # and this process's TMPDIR is restored


def test_to_json_shape(features_run) -> None:
    data = features_run[0].to_json()
    assert data["pipeline"] == "features" and data["state"] == "SUCCEEDED"
    step = data["steps"]["left"]
    assert step["inputs"] == ["points"] and step["outputs"] == ["left"]
    assert isinstance(step["duration_s"], float)


def test_failing_step_reports_cell_line_and_traceback(notebook) -> None:
    path = notebook("%%kale step ok\nx = 1",
                    "%%kale step boom\ny = x + 1\nz = y / 0",
                    "%%kale step later\nw = z", name="failing")
    status = api.run_local(path)
    assert status.state == "FAILED"
    boom = status.steps["boom"]
    assert boom.state == "FAILED"
    assert boom.error == "ZeroDivisionError: division by zero"
    assert (boom.cell, boom.line) == ("failing.ipynb, cell 2 (step boom)", 3)
    log = "\n".join(boom.log)
    assert 'File "failing.ipynb, cell 2 (step boom)", line 3' in log
    assert "z = y / 0" in log
    assert "\x1b[" not in log
    assert "kale_magics/runtime" not in log  # the runtime's own frames are hidden
    assert status.steps["later"].state == "SKIPPED"
    assert "step 'boom' failed" in status.error


def test_unpicklable_output_names_variable_and_step(notebook) -> None:
    # a generator bound to the name itself is refused at compile time (tests/test_faithful_more.py)
    path = notebook("%%kale step make\ngen = {'numbers': (i for i in range(3))}",
                    "%%kale step use\nprint(list(gen))", name="unpicklable")
    status = api.run_local(path)
    make = status.steps["make"]
    assert make.state == "FAILED"
    assert "`gen`" in make.error and "generator" in make.error


def test_local_ir_removes_pip_install_and_keeps_the_program() -> None:
    command = ["sh", "-c", "python3 -m pip install --quiet 'kfp==2.17.0' && \"$0\" \"$@\"\n",
               "sh", "-ec", "program", "source"]
    ir = {"pipelineInfo": {"name": "p"}, "deploymentSpec": {"executors": {"exec-a": {"container": {
        "image": "python:3.11", "command": command, "args": ["--x"]}}}}}
    local = local_ir(ir, {"B": "2", "A": "1"})
    container = local["deploymentSpec"]["executors"]["exec-a"]["container"]
    assert container["command"] == ["sh", "-ec", "program", "source"]
    assert container["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert ir["deploymentSpec"]["executors"]["exec-a"]["container"]["command"] == command


def test_compiled_example_has_pip_installs_that_local_runs_drop(tmp_path) -> None:
    compiled = api.compile_notebook("notebooks/wine.ipynb", str(tmp_path))
    ir = yaml.safe_load(Path(compiled.yaml_path).read_text())
    commands = {n: e["container"]["command"] for n, e in ir["deploymentSpec"]["executors"].items()}
    assert all("pip install" in c[2] for c in commands.values())
    assert all(re.search(r"scikit-learn==\S+", c[2]) for n, c in commands.items()
               if n != "exec-kale-runtime")  # the runtime task needs kfp only
    local = local_ir(ir, {})
    assert not any("pip" in " ".join(e["container"]["command"][:3])
                   for e in local["deploymentSpec"]["executors"].values())


def test_bad_argument_is_a_clear_error(notebook) -> None:
    path = notebook("%%kale parameters\nN = 1", "%%kale step a\nx = N", name="args")
    with pytest.raises(api.KaleError, match="parameter 'N' is int, but 'x' is not a valid int"):
        api.run_local(path, {"N": "x"})
    with pytest.raises(api.KaleError, match="unknown parameter 'M'; the pipeline's parameters are: N"):
        api.run_local(path, {"M": "1"})


def test_pipeline_named_like_a_step_runs_every_step(notebook) -> None:
    path = notebook("%%kale step same\nx = 1", "%%kale step other\ny = x + 1", name="same")
    status = api.run_local(path)
    assert status.state == "SUCCEEDED", status.error
    assert [s.state for s in status.steps.values()] == ["SUCCEEDED", "SUCCEEDED"]


def test_file_a_step_left_open_is_complete_for_the_next_step(notebook) -> None:
    """The step process ends with its garbage collected first (runtime.step.prepare_exit), so a
    file left open inside a reference cycle is flushed, as a normal interpreter exit does."""
    path = notebook("%%kale step write\nclass Holder:\n    pass\nholder = Holder()\nholder.me = holder\n"
                    "holder.out = open('left_open.txt', 'w')\nholder.out.write('all of it')\ndone = 1",
                    "%%kale step read\nwith open('left_open.txt') as f:\n    text = f.read()\n"
                    "assert text == 'all of it', repr(text)\nafter = done",
                    name="left_open")
    status = api.run_local(path)
    assert status.state == "SUCCEEDED", status.error
    assert (path.parent / "left_open.txt").read_text() == "all of it"


def _process_state() -> tuple:
    """What kfp.local changes in the process that runs it, while a task runs."""
    root = logging.getLogger()
    return (builtins.print, sys.stdout, os.environ.get("TMPDIR"), root.level, list(root.handlers))


def test_a_local_run_leaves_the_callers_process_as_it_was(notebook) -> None:
    """A kernel is a guest house: while a local run goes on (here in a thread, as the panel's
    does; the kernel's other cells run meanwhile) and after it, ``print``, stdout, TMPDIR and
    the root logger of the caller's process are untouched: kfp.local runs in a child process."""
    path = notebook("%%kale imports\nimport time", "%%kale step wait\ntime.sleep(3)\ndone = 1",
                    "%%kale step after\nx = done", name="guest")
    compiled = api.compile_notebook(path)
    before = _process_state()
    running, results = threading.Event(), []
    hooks = api.RunHooks(on_step=lambda s: running.set() if s.name == "wait" else None)
    thread = threading.Thread(target=lambda: results.append(
        api.run(compiled, api.LocalTarget(), hooks)))
    thread.start()
    assert running.wait(60), "step 'wait' never started"
    during = _process_state()
    thread.join(60)
    assert results and results[0].state == "SUCCEEDED", results
    assert during == before
    assert _process_state() == before


def test_metrics_keep_the_notebooks_order_when_the_step_comes_from_the_cache(tmp_path) -> None:
    path = write_notebook(tmp_path / "order.ipynb", (
        "%%kale step a\nzeta = 1.0\nalpha = 2.0\nmid = 3.0", "%%kale metrics\nzeta\nmid\nalpha"))
    compiled = api.compile_notebook(path)
    runs = [api.run_local(compiled, pipeline_root=str(tmp_path / "root")) for _ in range(2)]
    assert [run.steps["a"].cached for run in runs] == [False, True]
    # kfp.local's cache may give the metrics back in another order (sorted, as seen before)
    assert [list(run.metrics) for run in runs] == [["zeta", "mid", "alpha"]] * 2
