"""Loops, conditions and the exit step on the KFP test server (strict mode), through the CLI.

The server runs the uploaded IR with kfp.local and reports it as KFP 2.17's API server
reports an Argo workflow (``tests/kfp_server/argo.py``): loop iterations are nodes
``for-loop-N(i)``, a false condition's group is Skipped, the helper tasks (``kale-items``,
``kale-if-*``) are nodes too. The user sees only their steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kale_magics import api, cli
from tests.equivalence import execute, notebook_of, printed
from tests.test_control import INNER, OUTER
from tests.kfp_server.fixtures import kfp_server, token_env  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration

CELLS = ("%kale pipeline --name control-remote --on-exit summary",
         "%%kale parameters\nC_VALUES = [1, 2, 3]\nBAD = 0",
         "%%kale step sweep --for c in C_VALUES\nscore = 10 * c if c != BAD else 1 / 0",
         "%%kale step best\nbest = max(score)\nprint('best is', best)",
         "%%kale metrics\nbest",
         "%%kale step never --if \"best > 100\"\nprint('never ran')",
         "%%kale step deploy --if \"best > 20\"\nprint('deploying', best)",
         "%%kale step summary\nprint('summary', PIPELINE_STATUS)")


@pytest.fixture(scope="module")
def control_notebook(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return notebook_of(tmp_path_factory.mktemp("control-remote"), *CELLS, name="control")


def run_json(server, path: Path, capsys, *params: str) -> tuple[int, dict, str]:
    """``kale-magics run --host ... --json``: exit code, the run's JSON, the run's server log."""
    args = ["run", str(path), "-o", str(path.parent / "out"), "--host", server.url,
            "--interval", "0.3", "--json"]
    code = cli.main(args + [a for p in params for a in ("--param", p)])
    out = capsys.readouterr().out
    result = json.loads(out)
    log = (server.folder / result["run_id"] / "log.txt").read_text(errors="replace")
    return code, result, log


def test_loop_conditions_and_exit_step_on_the_server(kfp_server, token_env, control_notebook) -> None:  # noqa: F811
    """Followed without the plan, as ``kale-magics status --watch`` does: the steps come from the
    run's pipeline spec, nested groups included, helper tasks left out."""
    session = api.connect(kfp_server.url)
    submission = api.submit(control_notebook, session, output_dir=str(control_notebook.parent / "out"))
    events: list[tuple[str, str]] = []
    status = api.watch_remote(session, submission.run_id, api.RunHooks(
        on_step=lambda s: events.append((s.name, s.state))), interval_s=0.3)
    assert status.state == "SUCCEEDED", status
    # no kale-items, kale-if-* helper tasks, no groups
    assert list(status.steps) == ["sweep", "best", "never", "deploy", "summary"]
    assert {n: s.state for n, s in status.steps.items()} == {
        "sweep": "SUCCEEDED", "best": "SUCCEEDED", "never": "SKIPPED", "deploy": "SUCCEEDED",
        "summary": "SUCCEEDED"}
    assert status.steps["sweep"].items == {"#0": "SUCCEEDED", "#1": "SUCCEEDED", "#2": "SUCCEEDED"}
    assert ("never", "SKIPPED") in events and ("never", "RUNNING") not in events
    assert events.index(("never", "SKIPPED")) < events.index(("summary", "RUNNING"))  # seen live
    # the fan-in's value from ML Metadata, as the notebook computes it top to bottom in a kernel
    in_the_kernel = printed(execute(control_notebook, ["print(repr(float(best)))"]).cells[-1])
    assert status.metrics == {"best": float(in_the_kernel[-1])} == {"best": 30.0}
    assert status.metrics_note == ""
    log = (kfp_server.folder / submission.run_id / "log.txt").read_text(errors="replace")
    assert "best is 30" in log and "deploying 30" in log and "never ran" not in log
    assert "summary {'state': 'SUCCEEDED'" in log


def test_a_failing_item_fails_the_loop_and_the_exit_step_still_runs(kfp_server, token_env,  # noqa: F811
                                                                    control_notebook, capsys) -> None:
    code, result, log = run_json(kfp_server, control_notebook, capsys, "BAD=2")
    assert code != 0 and result["state"] == "FAILED", result
    steps = result["steps"]
    sweep = steps["sweep"]
    assert sweep["state"] == "FAILED" and sweep["items"]["#1"] == "FAILED", sweep
    assert sweep["error"].startswith("item #1 failed: ZeroDivisionError"), sweep["error"]
    assert {n: steps[n]["state"] for n in ("best", "never", "deploy", "summary")} == {
        "best": "SKIPPED", "never": "SKIPPED", "deploy": "SKIPPED", "summary": "SUCCEEDED"}
    assert "summary {'state': 'FAILED'" in log and "'sweep'" in log


def test_a_sub_notebook_with_a_loop_on_the_server(kfp_server, token_env, tmp_path) -> None:  # noqa: F811
    """The nested case: a ``%%kale notebook`` whose steps hold a ``--for`` loop."""
    notebook_of(tmp_path, *INNER, name="inner")
    outer = notebook_of(tmp_path, *OUTER, name="outer")
    session = api.connect(kfp_server.url)
    submission = api.submit(outer, session, output_dir=str(tmp_path / "out"))
    status = api.watch_remote(session, submission.run_id, interval_s=0.3)
    assert {n: s.state for n, s in status.steps.items()} == {
        "start": "SUCCEEDED", "inner_params": "SUCCEEDED", "inner_scale": "SUCCEEDED",
        "inner_add": "SUCCEEDED", "finish": "SUCCEEDED"}, status
    assert status.steps["inner_scale"].items == {"#0": "SUCCEEDED", "#1": "SUCCEEDED"}
    log = (kfp_server.folder / submission.run_id / "log.txt").read_text(errors="replace")
    assert "inner total 33" in log and "finish 44" in log  # FACTOR = start = 11: [11, 22]
