"""Run history and bringing a step back into the kernel (issue 20 items 9 and 10).

One notebook runs locally three times (module-scoped): N=3, N=5 (the step ``total``
fails), N=3 again (every step from kfp.local's cache). The records each run left
are listed, compared, and loaded back into an IPython shell with ``%kale load``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from kale_magics import api, cli
from kale_magics.runner import history
from kale_magics.views import history as views
from tests.conftest import write_notebook

CELLS = ("%kale pipeline --name hist",
         "%%kale imports\nimport collections",
         "%%kale parameters\nN = 3\nRATE = 0.5\nTAGS = ['a', 'b']",
         "%%kale step make\nitems = list(range(N))\ncounts = collections.Counter(items)",
         "%%kale step total\ntotal = sum(items) / (N - 5)",
         "%%kale step report\nshare = total * RATE * len(counts)\nprint(share)",
         "%%kale metrics\ntotal")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, list[api.RunStatus], list[api.RunRecord]]:
    """The notebook, the three runs' statuses and their records (oldest first)."""
    folder = tmp_path_factory.mktemp("history")
    notebook = write_notebook(folder / "hist.ipynb", CELLS)
    compiled = api.compile_notebook(notebook)
    statuses = [api.run_local(compiled, {"N": n}) for n in (3, 5, 3)]
    found = api.run_history(notebook).runs
    return notebook, statuses, list(reversed(found))


def test_every_local_run_is_recorded_with_state_parameters_and_metrics(runs) -> None:
    notebook, statuses, records = runs
    assert [s.state for s in statuses] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]
    assert [r.state for r in records] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]
    assert [r.parameters["N"] for r in records] == [3, 5, 3]
    assert records[0].parameters == {"N": 3, "RATE": 0.5, "TAGS": ["a", "b"]}  # decoded, as written
    assert records[0].metrics == records[2].metrics == {"total": -1.5} and records[1].metrics == {}
    assert all(r.where == "local" and r.notebook == str(notebook) for r in records)
    assert all(r.duration_s is not None and 0 < r.duration_s < 120 for r in records)
    assert [r.start for r in records] == sorted(r.start for r in records)
    failed = records[1].step("total")
    assert failed.state == "FAILED" and failed.error.startswith("ZeroDivisionError")
    assert records[1].step("report").state == "SKIPPED"
    assert [s.cached for s in records[2].steps] == [True, True, True]


def test_a_record_is_the_runs_folder_and_names_artifact_folders(runs) -> None:
    _, statuses, records = runs
    first = records[0]
    assert os.path.isfile(os.path.join(first.folder, history.RECORD_FILE))
    assert first.folder.startswith(statuses[0].pipeline_root)
    make = first.step("make")
    assert set(make.outputs) == {"items", "counts"} and all(os.path.isdir(p) for p in make.outputs.values())
    assert make.types["counts"] == "collections.Counter"
    assert first.step("report").inputs["counts"] == ("make", make.outputs["counts"])


def test_other_notebooks_runs_and_unreadable_records_are_left_out(runs, tmp_path) -> None:
    notebook, _, records = runs
    other = write_notebook(tmp_path / "hist.ipynb", CELLS)  # same name, other folder
    assert api.run_history(other, pipeline_roots=[records[0].folder + "/../.."]).runs == ()
    broken = Path(records[0].folder).parent / "hist-broken"
    broken.mkdir()
    (broken / history.RECORD_FILE).write_text("{not json")
    assert len(api.run_history(notebook).runs) == 3


def test_runs_table_lists_every_run_newest_first(runs, capsys) -> None:
    notebook, _, records = runs
    assert cli.main(["runs", str(notebook)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["RUN", "WHERE", "STATE", "START", "DURATION", "PARAMETERS", "METRICS"]
    assert [line.split()[0] for line in lines[1:]] == [r.run_id for r in reversed(records)]
    assert "N=5, RATE=0.5, TAGS=['a', 'b']" in lines[2] and "FAILED" in lines[2]
    assert lines[1].endswith("total=-1.5") and lines[2].endswith("-")
    assert cli.main(["runs", str(notebook), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["parameters"]["N"] for r in listed] == [3, 5, 3]


def test_two_runs_compared_mark_what_differs(runs, capsys) -> None:
    notebook, _, records = runs
    rows = {r.name: r for r in api.compare_runs(records[0], records[1])}
    assert rows["N"].differs and rows["total"].differs and rows["state"].differs
    assert not rows["RATE"].differs and not rows["TAGS"].differs
    assert not rows["duration_s"].differs  # durations always differ a little: never marked
    assert cli.main(["runs", str(notebook), "--compare", records[0].run_id, records[1].run_id]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [records[0].run_id, records[1].run_id]
    marked = [re.split(r"\s{2,}", line[1:].strip())[0] for line in out if line.startswith("*")]
    assert marked == ["state", "parameter N", "metric total"]
    assert re.split(r"\s{2,}", out[1].strip()) == ["*", "state", "SUCCEEDED", "FAILED"]
    html = views.comparison_html(records[0], records[1], list(rows.values()))
    assert html.count('class="kale-differs"') == 3


def test_unknown_or_ambiguous_run_is_one_line(runs, capsys) -> None:
    notebook, _, records = runs
    assert cli.main(["runs", str(notebook), "--compare", "nope", records[0].run_id]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kale-magics: error: no run 'nope' of this notebook") and err.count("\n") == 1
    assert cli.main(["runs", str(notebook), "--compare", "hist-", records[0].run_id]) == 2
    assert "matches 3 runs" in capsys.readouterr().err


# -- %kale load ---------------------------------------------------------------------------------

@pytest.fixture
def shell(runs):
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "kale_magics")
    ip.run_line_magic("kale", f"pipeline --notebook {runs[0]}")
    yield ip
    ip.run_line_magic("unload_ext", "kale_magics")
    for name in ("items", "counts", "total", "share"):
        ip.user_ns.pop(name, None)


def kale(ip: InteractiveShell, line: str) -> str:
    with capture_output() as captured:
        ip.run_line_magic("kale", line)
    return captured.stdout


def test_load_binds_a_succeeded_steps_outputs_from_a_chosen_run(runs, shell) -> None:
    _, _, records = runs
    out = kale(shell, f"load make --run {records[1].run_id}")
    assert shell.user_ns["items"] == [0, 1, 2, 3, 4]
    assert type(shell.user_ns["counts"]).__name__ == "Counter" and shell.user_ns["counts"][4] == 1
    assert out.splitlines() == [
        f"loaded counts (collections.Counter): output of step 'make', run {records[1].run_id}",
        f"loaded items (list): output of step 'make', run {records[1].run_id}"]


def test_load_of_a_failed_step_binds_its_inputs(runs, shell) -> None:
    _, _, records = runs
    out = kale(shell, f"load total --run {records[1].run_id}")
    assert shell.user_ns["items"] == [0, 1, 2, 3, 4]
    assert out.strip() == f"loaded items (list): input of step 'total', made by 'make', run {records[1].run_id}"
    # and now the step's code fails in the kernel as it did in the run
    result = shell.run_cell("total = sum(items) / (5 - 5)")
    assert isinstance(result.error_in_exec, ZeroDivisionError)


def test_load_defaults_to_the_latest_run_and_reads_cached_outputs(runs, shell) -> None:
    _, _, records = runs
    out = kale(shell, "load total total")
    assert shell.user_ns["total"] == -1.5 and records[2].run_id in out  # the cached run


def test_load_errors_are_one_line_and_bind_nothing(runs, shell) -> None:
    _, _, records = runs
    cases = {"load nope": "run {run} has no step 'nope'; its steps are: make, total, report",
             "load make nope": "step 'make' of run {run} saved or received no `nope`; it has: "
                               "counts, items",
             "load make --run zzz": "no run 'zzz' of this notebook under"}
    for line, message in cases.items():
        with pytest.raises(UsageError) as caught:
            shell.run_line_magic("kale", line)
        assert message.format(run=records[2].run_id) in str(caught.value)
        assert "\n" not in str(caught.value) and "items" not in shell.user_ns


def test_load_of_a_removed_artifact_says_so(runs, shell, tmp_path) -> None:
    notebook, _, records = runs
    record = records[0]
    path = record.step("make").outputs["items"]
    os.rename(path, path + ".moved")
    try:
        with pytest.raises(UsageError, match="cannot load `items` of step 'make'"):
            shell.run_line_magic("kale", f"load make --run {record.run_id}")
        assert "items" not in shell.user_ns and "counts" not in shell.user_ns  # all or nothing
    finally:
        os.rename(path + ".moved", path)


def test_runs_magic_prints_the_same_table(runs, shell) -> None:
    notebook, _, _ = runs
    with capture_output() as captured:
        shell.run_line_magic("kale", "runs")
    assert captured.outputs[0].data["text/plain"] == views.runs_text(api.run_history(notebook))
    assert captured.outputs[0].data["text/html"].count('class="kale-run"') == 3


def test_no_runs_yet(notebook) -> None:
    path = notebook(*CELLS)
    assert views.runs_text(api.run_history(path)).startswith("no recorded runs of this notebook")
    with pytest.raises(api.KaleError, match="no recorded run of this notebook under"):
        api.load_step(path, "make", [], {})
