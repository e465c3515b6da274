"""Parameter sweeps: the search space, the best trial, and a real local sweep (issue 21, part 2)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import statistics
import sys
import threading

import pytest

from kale_magics import api, cli
from kale_magics.model import Parameter
from kale_magics.runner.search_space import parse_space, split_values
from kale_magics.runner.sweep import Sweep, Trial
from tests.conftest import write_notebook
from tests.kfp_server.fixtures import SECRET_TOKEN, kfp_server, token_env  # noqa: F401  (fixtures)

PARAMETERS = (Parameter("N", 10, "int"), Parameter("LR", 0.1, "float"),
              Parameter("CRITERION", "gini", "str"), Parameter("DEEP", False, "bool"),
              Parameter("SIZES", [1], "list"), Parameter("OPTS", {"a": 1}, "dict"))

#: A tiny notebook: the metric is X * 10 + len(NAME); X == 2 fails.
TINY = ("%kale pipeline --name tiny",
        "%%kale parameters\nX = 1\nNAME = 'ab'",
        "%%kale step score\nif X == 2:\n    raise ValueError('X=2 is refused')\n"
        "score = float(X) * 10 + len(NAME)",
        "%%kale metrics\nscore")


def space(*specs: str):
    return parse_space(PARAMETERS, specs)


# -- the search space -------------------------------------------------------------------------

def test_grid_is_the_product_first_parameter_slowest() -> None:
    picks = space("N=1,2", "CRITERION=gini,entropy,log_loss").grid()
    assert picks == [{"N": n, "CRITERION": c} for n in (1, 2) for c in ("gini", "entropy", "log_loss")]


def test_values_are_literals_of_the_declared_type() -> None:
    picks = space("LR=1,0.5", "DEEP=True,false", "SIZES=[1, 2],[3]", "OPTS={'a': 1, 'b': 2}",
                  "CRITERION='a,b',plain text").grid()
    first = picks[0]
    assert type(first["LR"]) is float and first["LR"] == 1.0  # an int literal for a float parameter
    assert [p["DEEP"] for p in picks[:5:4]] == [True, False]
    assert {tuple(p["SIZES"]) for p in picks} == {(1, 2), (3,)}
    assert first["OPTS"] == {"a": 1, "b": 2}
    assert {p["CRITERION"] for p in picks} == {"a,b", "plain text"}
    assert len(picks) == 2 * 2 * 2 * 1 * 2


def test_split_keeps_commas_inside_brackets_and_quotes() -> None:
    assert split_values("[1, 2], (3, 4) ,'x,y',\"z\"") == ["[1, 2]", "(3, 4)", "'x,y'", '"z"']


@pytest.mark.parametrize("specs, message", [
    (("N=1,2.5",), "parameter 'N' is int, but '2.5' is not an int literal"),
    (("N=True",), "parameter 'N' is int"),
    (("DEEP=maybe",), "parameter 'DEEP' is bool"),
    (("SIZES={1: 2}",), "parameter 'SIZES' is list"),
    (("LR=float('inf')",), "parameter 'LR' is float"),
    (("LR=1e999",), "not a finite number"),
    (("N=2**60",), "parameter 'N' is int"),
    (("DEPTH=1,2",), "unknown parameter 'DEPTH'; the pipeline's parameters (%%kale parameters) are: N, LR"),
    (("N=1", "N=2"), "parameter 'N' is given twice"),
    (("N",), "'N' is not NAME=VALUES"),
    (("N=1,,2",), "empty value"),
    (("SIZES=[1, 2",), "unclosed quote or bracket"),
    ((), "name the parameters to sweep"),
    (("N=5:1",), "the low end must be below the high end"),
    (("LR=0:1:log",), "both ends must be above 0"),
    (("N=1:2.5",), "'2.5' is not an int literal; for example N=1,2,3 or N=1:100"),
])
def test_bad_specs_are_one_line_errors(specs, message) -> None:
    with pytest.raises(api.KaleError) as raised:
        parse_space(PARAMETERS, specs)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_a_range_needs_random_picks() -> None:
    with pytest.raises(api.KaleError, match="ranges need random picks: add --random N"):
        space("N=1:10").grid()


def test_random_picks_repeat_with_the_seed() -> None:
    chosen = space("N=1:100", "LR=0.001:1:log", "CRITERION=gini,entropy", "DEEP=True")
    first, again, other = chosen.sample(20, 7), chosen.sample(20, 7), chosen.sample(20, 8)
    assert first == again and first != other
    assert all(type(p["N"]) is int and 1 <= p["N"] <= 100 for p in first)
    assert all(type(p["LR"]) is float and 0.001 <= p["LR"] <= 1 for p in first)
    assert {p["CRITERION"] for p in first} == {"gini", "entropy"} and all(p["DEEP"] for p in first)
    with pytest.raises(api.KaleError, match="--random 0: give the number of trials, 1 to 1000"):
        chosen.sample(0, 1)
    with pytest.raises(api.KaleError, match="--random 1001"):
        chosen.sample(1001, 1)


def test_a_grid_larger_than_the_limit_is_refused_before_it_is_built() -> None:
    values = ",".join(map(str, range(100)))
    with pytest.raises(api.KaleError, match="the grid has 1000000 trials, more than 1000; give "
                                            "fewer values, or take --random N picks"):
        space(f"N={values}", f"LR={values}", f"CRITERION={values}").grid()


def draws(spec: str, count: int = 4000) -> list:
    """``count`` draws of one axis, seeded (more than one sweep's trials, for the shares)."""
    axis, rng = space(spec).axes[0], random.Random(3)
    return [axis.draw(rng) for _ in range(count)]


def test_ranges_are_uniform_and_log_ranges_log_uniform() -> None:
    rates = draws("LR=0.001:1:log")
    # log-uniform on [1e-3, 1]: each decade holds a third of the draws, the median is 10**-1.5
    decades = [sum(lo <= r < lo * 10 for r in rates) / len(rates) for lo in (0.001, 0.01, 0.1)]
    assert all(0.3 < share < 0.37 for share in decades), decades
    assert abs(math.log10(statistics.median(rates)) + 1.5) < 0.05
    assert all(type(r) is float and 0.001 <= r <= 1 for r in rates)
    counts = draws("N=1:1000:log")
    assert all(type(n) is int and 1 <= n <= 1000 for n in counts)
    assert 0.3 < sum(n < 10 for n in counts) / len(counts) < 0.37  # a third below 10, not 1 %
    uniform = draws("LR=0:1")
    assert abs(statistics.mean(uniform) - 0.5) < 0.02 and min(uniform) >= 0 and max(uniform) <= 1
    integers = draws("N=1:4")
    assert set(integers) == {1, 2, 3, 4}  # both ends included
    assert all(850 < integers.count(n) < 1150 for n in range(1, 5))  # evenly


# -- the best trial and the table --------------------------------------------------------------

def _sweep(goal: str, *results: tuple[str, float | None]) -> Sweep:
    trials = [Trial(i, {"N": i}, state, {"acc": value} if value is not None else {})
              for i, (state, value) in enumerate(results, 1)]
    return Sweep("p", "acc", goal, trials, ("N",))


def test_best_is_the_succeeded_trial_with_the_best_finite_value() -> None:
    results = (("SUCCEEDED", 0.5), ("FAILED", 0.99), ("SUCCEEDED", float("nan")),
               ("SUCCEEDED", 0.8), ("SUCCEEDED", 0.8), ("SUCCEEDED", 0.2), ("SUCCEEDED", None))
    assert _sweep("maximize", *results).best.number == 4  # the first of equals
    assert _sweep("minimize", *results).best.number == 6
    assert _sweep("maximize", ("FAILED", None), ("SUCCEEDED", None)).best is None


def test_table_is_a_dataframe_or_a_list_without_pandas(monkeypatch) -> None:
    sweep = _sweep("maximize", ("SUCCEEDED", 0.5), ("SUCCEEDED", 0.7))
    frame, note = sweep.table()
    assert note == "" and list(frame.index) == [1, 2] and frame.loc[2, "best"]
    assert list(frame.columns[:3]) == ["N", "state", "acc"]
    monkeypatch.setitem(sys.modules, "pandas", None)
    rows, note = sweep.table()
    assert rows == sweep.records() and rows[1]["best"] and "pandas is not installed" in note


def test_unknown_metric_and_goal_are_refused(tmp_path) -> None:
    compiled = api.compile_notebook(write_notebook(tmp_path / "tiny.ipynb", TINY))
    with pytest.raises(api.KaleError, match="--metric 'acc' is not a metric of the pipeline; "
                                            "its metrics .* are: score"):
        api.plan_sweep(compiled, ["X=1,2"], metric="acc", goal="maximize")
    with pytest.raises(api.KaleError, match="--maximize or --minimize"):
        api.plan_sweep(compiled, ["X=1,2"], metric="score", goal="best")
    picked = api.plan_sweep(compiled, ["X=1:9"], metric="score", goal="minimize", random=3)
    assert isinstance(picked.seed, int) and len(picked.trials) == 3


# -- a real local sweep ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    path = write_notebook(folder / "tiny.ipynb", TINY)
    seen: list[list[str]] = []
    result = api.sweep(path, ["X=1,2,3"], metric="score", goal="maximize", parallel=2,
                       on_change=lambda s: seen.append([t.state for t in s.trials]))
    return result, seen


@pytest.mark.integration
def test_local_sweep_runs_every_trial_and_marks_the_best(local_sweep) -> None:
    result, seen = local_sweep
    assert [t.state for t in result.trials] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]
    assert [t.metrics for t in result.trials] == [{"score": 12.0}, {}, {"score": 32.0}]
    assert "ValueError: X=2 is refused" in result.trials[1].error  # and trial 3 still ran
    assert result.best is result.trials[2]
    assert dataclasses.replace(result, goal="minimize").best is result.trials[0]
    rows = result.records()
    assert [(r["X"], r["best"]) for r in rows] == [(1, False), (2, False), (3, True)]
    assert seen[-1] == ["SUCCEEDED", "FAILED", "SUCCEEDED"] and ["RUNNING"] * 2 in \
        [states[:2] for states in seen]  # two trials ran at once


@pytest.mark.integration
def test_local_trials_have_their_own_pipeline_roots(local_sweep) -> None:
    result, _ = local_sweep
    roots = [t.pipeline_root for t in result.trials]
    assert len(set(roots)) == 3 and all(os.path.isdir(os.path.join(r, "logs")) for r in roots)
    assert [os.path.basename(r) for r in roots] == ["trial-001", "trial-002", "trial-003"]
    assert os.path.basename(os.path.dirname(roots[0])).startswith("tiny-")


@pytest.mark.integration
def test_local_trials_are_in_the_notebooks_run_history(local_sweep) -> None:
    result, _ = local_sweep
    notebook = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.dirname(result.trials[0].pipeline_root)))), "tiny.ipynb")
    runs = api.run_history(notebook).runs
    assert sorted((r.parameters["X"], r.state, r.metrics.get("score")) for r in runs) == [
        (1, "SUCCEEDED", 12.0), (2, "FAILED", None), (3, "SUCCEEDED", 32.0)]


# -- the front ends: parsing errors before anything runs, the magic's table and _kale_sweep ----

@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_notebook(tmp_path_factory.mktemp("tiny") / "tiny.ipynb", TINY)


@pytest.mark.parametrize("argv, message", [
    (["X=1,2", "--metric", "score"], "one of the arguments --maximize --minimize is required"),
    (["X=1,2", "--maximize"], "the following arguments are required: --metric"),
])
def test_cli_usage_errors(tiny_path, capsys, argv, message) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main(["sweep", str(tiny_path), *argv])
    assert raised.value.code == 2 and f"kale-magics sweep: error: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["Y=1,2", "--metric", "score", "--maximize"], "unknown parameter 'Y'"),
    (["X=a,b", "--metric", "score", "--maximize"], "parameter 'X' is int, but 'a' is not"),
    (["X=1:5", "--metric", "score", "--maximize"], "ranges need random picks"),
    (["X=1,2", "--metric", "acc", "--minimize"], "--metric 'acc' is not a metric"),
    (["X=1,2", "--metric", "score", "--minimize", "--parallel", "0"], "--parallel 0"),
])
def test_cli_errors_are_one_line_before_any_trial(tiny_path, capsys, argv, message) -> None:
    assert cli.main(["sweep", str(tiny_path), *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("kale-magics: error: ") and message in captured.err
    assert captured.err.count("\n") == 1 and captured.out == ""
    assert not (tiny_path.parent / ".kale" / "sweeps").exists()  # nothing ran


@pytest.fixture
def shell():
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "kale_magics")
    yield ip
    ip.run_line_magic("unload_ext", "kale_magics")
    ip.user_ns.pop("_kale_sweep", None)


@pytest.mark.parametrize("line, message", [
    ("X=1,2 --metric score", "--maximize or --minimize"),
    ("X=1,2 --maximize", "the following arguments are required: --metric"),
    ("--metric score --maximize", "name the parameters to sweep"),
    ("X=1,2 --metric score --maximize --bogus", "unrecognized arguments: --bogus"),
    ("X=1,x --metric score --maximize", "parameter 'X' is int, but 'x' is not an int literal"),
    ("X=1:3:log --metric score --maximize --random 0", "--random 0"),
])
def test_magic_errors_are_usage_errors(shell, tiny_path, line, message) -> None:
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("-", r"\-")):
        shell.run_line_magic("kale", f"sweep {line} --notebook {tiny_path}")
    assert "_kale_sweep" not in shell.user_ns


@pytest.mark.integration
def test_magic_sweep_shows_a_live_table_and_sets_kale_sweep(shell, tiny_path, monkeypatch) -> None:
    from kale_magics import magics

    shown: list[dict] = []

    class Handle:
        def update(self, data, raw=False):
            shown.append(data)

    monkeypatch.setattr(magics, "display", lambda data, **kw: shown.append(data) or Handle())
    shell.run_line_magic("kale", f"sweep --metric score --minimize X=3,2 NAME='a' "
                                 f"--notebook {tiny_path}")
    frame = shell.user_ns["_kale_sweep"]
    assert list(frame["state"]) == ["SUCCEEDED", "FAILED"] and list(frame["best"]) == [True, False]
    assert frame.loc[1, "score"] == 31.0 and frame.loc[1, "NAME"] == "a"
    assert "*1" in shown[-1]["text/plain"] and "data-best='true'" in shown[-1]["text/html"]
    assert any("running" in d.get("text/plain", "") for d in shown)  # updated while it ran


# -- a remote sweep against the KFP test server ------------------------------------------------

@pytest.mark.integration
def test_remote_sweep_through_the_cli(kfp_server, token_env, tmp_path, capsys) -> None:  # noqa: F811
    """Three KFP runs from one uploaded version, two at once; each trial's metric value read from
    ML Metadata (as locally: 12, none, 32), the best marked."""
    path = write_notebook(tmp_path / "tiny.ipynb", TINY)
    uploads = sum(r.startswith("POST /apis/v2beta1/pipelines/upload") for r in kfp_server.requests)
    code = cli.main(["sweep", str(path), "X=1,2,3", "--metric", "score", "--maximize",
                     "--parallel", "2", "--host", kfp_server.url, "--interval", "0.3", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    trials = result["trials"]
    assert [(t["X"], t["state"]) for t in trials] == [(1, "SUCCEEDED"), (2, "FAILED"), (3, "SUCCEEDED")]
    assert "ValueError: X=2 is refused" in trials[1]["error"] and result["best"] == 3
    assert [t["score"] for t in trials] == [12.0, None, 32.0] and [t["best"] for t in trials] == \
        [False, False, True]
    for trial in trials:
        run = kfp_server.run_json(trial["run_id"])
        assert run["runtime_config"]["parameters"] == {"X": trial["X"]}
        assert re.fullmatch(rf"tiny sweep \d{{8}}-\d{{6}} trial {trial['trial']}", run["display_name"])
        assert trial["url"] == f"{kfp_server.url}/#/runs/details/{trial['run_id']}"
    assert len({kfp_server.run_json(t["run_id"])["pipeline_version_reference"]["pipeline_version_id"]
                for t in trials}) == 1
    assert sum(r.startswith("POST /apis/v2beta1/pipelines/upload")
               for r in kfp_server.requests) - uploads == 1
    assert "best: trial 3 (X=3): score = 32" in err and "no best trial" not in err
    assert f"sweep of tiny: 3 trials {kfp_server.url}" in err and SECRET_TOKEN not in out + err


@pytest.mark.integration
def test_halting_a_sweep_cancels_the_running_trial_and_starts_no_other(tmp_path) -> None:
    path = write_notebook(tmp_path / "slow.ipynb", (
        "%kale pipeline --name slow", "%%kale imports\nimport time", "%%kale parameters\nX = 1",
        "%%kale step wait\ntime.sleep(120)\nscore = X", "%%kale metrics\nscore"))
    halt = threading.Event()

    def changed(sweep: Sweep) -> None:
        if sweep.trials[0].state == "RUNNING":
            halt.set()

    result = api.sweep(path, ["X=1,2,3"], metric="score", goal="maximize", halt=halt,
                       on_change=changed)
    assert [t.state for t in result.trials] == ["CANCELED"] * 3
    assert result.trials[0].start is not None and result.trials[0].duration_s < 100
    assert [t.start for t in result.trials[1:]] == [None, None] and result.best is None


@pytest.mark.integration
def test_magic_sweep_where_no_trial_succeeds_is_a_usage_error(shell, tiny_path) -> None:
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match="sweep of tiny: no trial succeeded; see the table above"):
        shell.run_line_magic("kale", f"sweep X=2 --metric score --maximize --notebook {tiny_path}")
    assert list(shell.user_ns["_kale_sweep"]["state"]) == ["FAILED"]  # the table is still there


@pytest.mark.integration
def test_magic_sweep_on_the_kfp_server(shell, kfp_server, token_env, tmp_path, monkeypatch) -> None:  # noqa: F811
    from kale_magics import magics

    shown: list[dict] = []

    class Handle:
        def update(self, data, raw=False):
            shown.append(data)

    monkeypatch.setattr(magics, "display", lambda data, **kw: shown.append(data) or Handle())
    path = write_notebook(tmp_path / "tiny.ipynb", TINY)
    shell.run_line_magic("kale", f"sweep X=1,3 --metric score --maximize --parallel 2 "
                                 f"--host {kfp_server.url} --interval 0.3 --notebook {path}")
    frame = shell.user_ns["_kale_sweep"]
    assert list(frame["state"]) == ["SUCCEEDED", "SUCCEEDED"]
    assert list(frame["score"]) == [12.0, 32.0] and list(frame["best"]) == [False, True]
    html = shown[-1]["text/html"]
    assert all(f"href='{url}'" in html for url in frame["url"])  # each trial links to its run
    assert "*2" in shown[-1]["text/plain"] and "data-best='true'" in html
