"""The step runtime, called in-process as a generated component calls it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kale_magics.runtime import marshal
from kale_magics.runtime.channel import CHANNEL_ENV, EVENTS_FILE
from kale_magics.runtime.step import WORKDIR_ENV, run_step


class FakeArtifact:
    """Stands in for a KFP artifact: a path and metadata (and log_metric for Metrics)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.metadata: dict[str, Any] = {}

    def log_metric(self, key: str, value: float) -> None:
        self.metadata[key] = value


@pytest.fixture(autouse=True)
def channel(tmp_path: Path, monkeypatch) -> Path:
    """The folder a local run would name in $KALE_MAGICS_CHANNEL."""
    folder = tmp_path / "channel"
    folder.mkdir()
    monkeypatch.setenv(CHANNEL_ENV, str(folder))
    return folder


def events(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / EVENTS_FILE).read_text().splitlines()]


def test_inputs_code_outputs_and_metrics(tmp_path: Path, capsys, channel: Path) -> None:
    marshal.save([1, 2, 3], str(tmp_path / "in"), "nums")
    out, metrics = FakeArtifact(tmp_path / "out"), FakeArtifact(tmp_path / "m")
    run_step(step="s", code=[("nb.ipynb, cell 1 (imports)", "import math\n"),
                             ("nb.ipynb, cell 2 (step s)", "\ntotal = math.fsum(nums) * K\nprint('hi')\n")],
             parameters={"K": 2, "L": "[1, 2]"}, json_parameters=["L"],
             inputs={"nums": FakeArtifact(tmp_path / "in")}, outputs={"total": out},
             metrics={"total": "total", "n": "len(L)"}, metrics_artifact=metrics)
    assert marshal.load(out.path, "total") == 12.0
    assert out.metadata["kale_format"]
    assert metrics.metadata == {"total": 12.0, "n": 2.0}
    captured = capsys.readouterr().out
    assert "hi" in captured
    start, end = events(channel)
    assert (start["event"], end["event"], end["state"]) == ("start", "end", "SUCCEEDED")
    assert end["metrics"] == {"total": 12.0, "n": 2.0}
    assert end["outputs"]["total"]["path"] == out.path


def test_failure_prints_user_traceback_and_exits_1(tmp_path: Path, capsys, channel: Path) -> None:
    with pytest.raises(SystemExit) as info:
        run_step(step="s", code=[("nb.ipynb, cell 4 (step s)", "\nx = 1\n\ndef f():\n    return {}['k']\nf()\n")],
                 parameters={}, inputs={}, outputs={}, metrics={})
    assert info.value.code == 1
    captured = capsys.readouterr()
    assert 'File "nb.ipynb, cell 4 (step s)", line 6, in <module>' in captured.err
    assert "return {}['k']" in captured.err and "KeyError: 'k'" in captured.err
    assert "runtime" not in captured.err
    end = events(channel)[-1]
    assert (end["state"], end["error"], end["cell"], end["line"]) == (
        "FAILED", "KeyError: 'k'", "nb.ipynb, cell 4 (step s)", 5)


def test_output_never_assigned_and_non_numeric_metric(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        run_step(step="s", code=[("c", "x = 1\n")], parameters={}, inputs={},
                 outputs={"y": FakeArtifact(tmp_path / "y")}, metrics={})
    assert "should pass `y` to later steps but never assigned it" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_step(step="s", code=[("c", "x = 'text'\n")], parameters={}, inputs={}, outputs={},
                 metrics={"x": "x"}, metrics_artifact=FakeArtifact(tmp_path / "m"))
    assert "metric `x` of step 's' failed: ValueError" in capsys.readouterr().err


def test_workdir_and_notebook_names(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv(WORKDIR_ENV, str(tmp_path))
    monkeypatch.chdir("/")
    out = FakeArtifact(tmp_path / "o")
    run_step(step="s", code=[("c", "import os\nwhere = os.getcwd()\ndisplay(where)\n"
                                   "get_ipython().run_line_magic('matplotlib', 'inline')\n")],
             parameters={}, inputs={}, outputs={"where": out}, metrics={})
    assert marshal.load(out.path, "where") == str(tmp_path)
    captured = capsys.readouterr()
    assert repr(str(tmp_path)) in captured.out
    assert "skipped notebook-only magic in the pipeline step: %matplotlib inline" in captured.err
