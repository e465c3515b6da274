"""Control flow: ``--for`` loops and ``--if`` conditions (grammar, plan, IR shape against golden,
kernel, local run equal to nbclient's).

Set KALE_UPDATE_GOLDEN=1 to rewrite tests/golden/control.yaml after an intended change.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from kale_magics import api
from kale_magics.errors import AnalysisError, AnnotationError
from kale_magics.model import Loop
from kale_magics.notebook.annotations import cell_line, pipeline_line
from tests.equivalence import compare, notebook_of
from tests.test_codegen import GOLDEN, compile_to_dict, normalise

IF = "--if \"best > LIMIT and MODE == 'full'\""
LOOP_CELLS = (
    "%%kale parameters\nC_VALUES = [1, 2, 3]\nOFFSET = 10\nMODE = 'full'\nLIMIT = 15",
    "%%kale step base\nfolds = ['a', 'b']\nscale = 2",
    "%%kale step sweep --for c in C_VALUES --parallelism 2\nscore = c * scale + OFFSET\n"
    "label = f'c={c}'",
    "%%kale step per_fold --for f in folds\nsized = f * scale",
    "%%kale step best\nprint(score, label, sized)\nbest = max(score)\nprint(best)",
    f"%%kale step deploy {IF}\nprint('deploying', best)\nurl = f'http://serve/{{best}}'",
    f"%%kale step notify {IF}\nprint('notify', url)",
    "%%kale step never --if \"best > 100 or MODE == 'none'\"\nprint('never')",
)


@pytest.fixture(scope="module")
def loops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return notebook_of(tmp_path_factory.mktemp("loops"), *LOOP_CELLS, name="loops")


@pytest.fixture(scope="module")
def loops_ir(loops: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    ir, _ = compile_to_dict(loops, tmp_path_factory.mktemp("out"))
    return ir


# -- grammar -------------------------------------------------------------------------------

def test_for_parses_and_prints_back() -> None:
    annotation = api.parse_annotation("step sweep --for c in C_VALUES --parallelism 2 --cpu 1")
    assert annotation.loop == Loop("c", "C_VALUES", 2)
    assert api.parse_annotation(cell_line(annotation)) == annotation


@pytest.mark.parametrize("line, fragment", [
    ("step s --for c of C", "write --for VAR in LIST"),
    ("step s --for c in c", "two different variable names"),
    ("step s --for c in C --parallelism 0", "at least 1"),
    ("step s --parallelism 2", "add `--for VAR in LIST`"),
])
def test_bad_for_lines_say_how_to_write_them(line: str, fragment: str) -> None:
    with pytest.raises(AnnotationError, match=fragment):
        api.parse_annotation(line)


# -- plan and IR -----------------------------------------------------------------------------

def test_loop_over_a_parameter_that_is_not_a_list_is_refused(notebook) -> None:
    path = notebook("%%kale parameters\nC = 0.5", "%%kale step s --for c in C\nx = c")
    with pytest.raises(AnalysisError, match=r"parameter `C` is 0.5, a float, not a list"):
        api.read_plan(path)


def test_loop_over_an_unknown_list_and_metrics_in_a_loop_are_refused(notebook) -> None:
    with pytest.raises(AnalysisError, match="reads `nowhere`, which no earlier step assigns"):
        api.read_plan(notebook("%%kale step s --for c in nowhere\nx = c"))
    path = notebook("%%kale parameters\nC = [1]", "%%kale step s --for c in C\nx = c",
                    "%%kale metrics\nx")
    with pytest.raises(AnalysisError, match="logged by --for step 's'"):
        api.read_plan(path)


def test_golden_loops_ir(loops_ir: dict) -> None:
    got = normalise(loops_ir)
    golden = GOLDEN / "control.yaml"
    if os.environ.get("KALE_UPDATE_GOLDEN"):
        golden.write_text(yaml.safe_dump(got, sort_keys=True))
    assert golden.is_file(), f"{golden} is missing: write it with KALE_UPDATE_GOLDEN=1"
    assert got == yaml.safe_load(golden.read_text())


def test_loop_ir_shape(loops_ir: dict) -> None:
    tasks = loops_ir["root"]["dag"]["tasks"]
    loops = {name: task for name, task in tasks.items() if "parameterIterator" in task}
    assert len(loops) == 2
    cap = [t.get("iteratorPolicy", {}).get("parallelismLimit") for t in loops.values()]
    assert sorted(cap, key=str) == [2, None]
    # the loop over a parameter takes its items from kale_items; the other from base's Output
    assert "kale-items" in tasks
    assert loops_ir["components"]["comp-base"]["outputDefinitions"]["parameters"]["Output"][
        "parameterType"] == "LIST"
    best = loops_ir["components"]["comp-best"]["inputDefinitions"]["artifacts"]
    assert all(best[f"in_{n}"].get("isArtifactList") for n in ("score", "label", "sized"))


# -- the kernel ------------------------------------------------------------------------------

@pytest.fixture
def shell():
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "kale_magics")
    yield ip
    ip.run_line_magic("unload_ext", "kale_magics")
    for name in ("C", "scale", "score", "c", "y"):
        ip.user_ns.pop(name, None)


def test_loop_cell_runs_once_per_item_from_the_same_start(shell) -> None:
    shell.user_ns.update(C=[1, 2, 3], scale=10, c="before")
    with capture_output() as out:
        shell.run_cell_magic("kale", "step sweep --for c in C", "scale = scale + c\nscore = scale")
    assert shell.user_ns["score"] == [11, 12, 13]  # each item starts from scale = 10
    assert shell.user_ns["scale"] == [11, 12, 13]
    assert shell.user_ns["c"] == "before"
    assert "ran once for each of the 3 items of `C`" in out.outputs[0].data["text/plain"]


@pytest.mark.parametrize("value, fragment", [
    ("5", "is a int, not a list"), ("[object()]", "cannot be a --for item"),
])
def test_loop_over_a_non_list_is_refused_before_the_body_runs(shell, value, fragment) -> None:
    shell.run_cell(f"C = {value}")
    with pytest.raises(UsageError, match=fragment):
        shell.run_cell_magic("kale", "step sweep --for c in C", "y = 1")
    assert "y" not in shell.user_ns


# -- local run equals the notebook -----------------------------------------------------------

def test_loops_compute_what_the_notebook_computes(loops: Path, tmp_path: Path) -> None:
    seen = compare(loops, pipeline_root=tmp_path / "root")
    assert seen.same_prints(), seen.explain()
    assert seen.notebook["best"] == ["[12, 14, 16] ['c=1', 'c=2', 'c=3'] ['aa', 'bb']", "16"]
    sweep = seen.status.steps["sweep"]
    assert sweep.item_counts() == {"SUCCEEDED": 3} and sweep.state == "SUCCEEDED"
    assert seen.notebook["notify"] == ["notify http://serve/16"]
    assert seen.notebook["never"] == [] and seen.status.steps["never"].state == "SKIPPED"
    assert seen.status.steps["notify"].state == "SUCCEEDED"


# -- --if --------------------------------------------------------------------------------------

@pytest.mark.parametrize("expression, fragment", [
    ("len(x) > 1", "`len(x)` is a call"), ("x.y > 1", "`x.y` is an attribute"),
    ("x", "`x` is not a comparison"), ("x >", "is not a Python expression"),
])
def test_bad_conditions_are_refused_naming_the_part(expression: str, fragment: str) -> None:
    with pytest.raises(AnnotationError, match=re.escape(fragment)):
        api.parse_annotation(f"step s --if '{expression}'")


def test_condition_parses_and_prints_back() -> None:
    annotation = api.parse_annotation(f"step deploy {IF}")
    assert annotation.condition.names == ("best", "LIMIT", "MODE")
    assert api.parse_annotation(cell_line(annotation)) == annotation


def test_unknown_variable_in_a_condition_is_refused_at_compile_time(notebook) -> None:
    path = notebook("%%kale step a\nbest = 1", "%%kale step b --if 'bets > 0'\nx = 1")
    with pytest.raises(AnalysisError, match=r"reads `bets`, which is neither .*did you mean `best`"):
        api.read_plan(path)


def test_reading_a_conditional_steps_variable_needs_the_same_condition(notebook) -> None:
    path = notebook("%%kale step a\nbest = 1", "%%kale step b --if 'best > 0'\nx = 1",
                    "%%kale step c\nprint(x)")
    with pytest.raises(AnalysisError, match=r"step 'c' reads `x` of step 'b', which runs only "
                       r"--if 'best > 0'.*give step 'c' the same"):
        api.read_plan(path)


def test_condition_ir_shape(loops_ir: dict) -> None:
    tasks = loops_ir["root"]["dag"]["tasks"]
    conditions = {n: t for n, t in tasks.items() if "triggerPolicy" in t}
    assert len(conditions) == 2
    group = loops_ir["components"][next(t["componentRef"]["name"] for t in conditions.values()
                                        if "deploy" in str(loops_ir["components"][
                                            t["componentRef"]["name"]]))]
    assert set(group["dag"]["tasks"]) == {"deploy", "notify"}  # one dsl.If for one EXPR
    outputs = loops_ir["components"]["comp-best"]["outputDefinitions"]["parameters"]
    assert outputs["val_best"]["parameterType"] == "STRING"


def test_condition_cell_runs_only_when_true_and_says_so(shell) -> None:
    shell.user_ns.update(score=0.5)
    with capture_output() as out:
        shell.run_cell_magic("kale", "step deploy --if 'score > 0.9'", "y = 1")
    assert "y" not in shell.user_ns
    assert "did not run: its condition `score > 0.9` is false" in out.outputs[0].data["text/plain"]
    shell.run_cell_magic("kale", "step deploy --if 'score > 0.1'", "y = 1")
    assert shell.user_ns["y"] == 1
    with pytest.raises(UsageError, match="reads `nope`, not defined in this kernel"):
        shell.run_cell_magic("kale", "step deploy --if 'nope > 0.1'", "y = 2")


# -- --on-exit ---------------------------------------------------------------------------------

EXIT_CELLS = ("%kale pipeline --on-exit summary", "%%kale parameters\nN = 3",
              "%%kale step train\nacc = N / 4", "%%kale step other\nprint('other', acc)",
              "%%kale step summary\nprint('summary', N, PIPELINE_STATUS)")


def test_on_exit_parses_and_prints_back() -> None:
    settings = api.parse_pipeline_settings("--on-exit summary")
    assert settings.on_exit == "summary"
    assert api.parse_pipeline_settings(pipeline_line(settings)) == settings


def test_exit_step_must_exist_and_cannot_read_other_steps(notebook) -> None:
    with pytest.raises(AnalysisError, match="--on-exit 'summry' names no step; did you mean"):
        api.read_plan(notebook("%kale pipeline --on-exit summry", "%%kale step summary\nx = 1"))
    path = notebook("%kale pipeline --on-exit summary", "%%kale step a\nacc = 1",
                    "%%kale step summary\nprint(acc)")
    with pytest.raises(AnalysisError, match="reads `acc` of step 'a', but it runs whether or not"):
        api.read_plan(path)


def test_exit_ir_shape(notebook, tmp_path: Path) -> None:
    ir, dsl = compile_to_dict(notebook(*EXIT_CELLS, name="exits"), tmp_path / "out")
    tasks = ir["root"]["dag"]["tasks"]
    assert tasks["summary"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    handler = next(t for n, t in tasks.items() if n.startswith("exit-handler"))
    assert set(ir["components"][handler["componentRef"]["name"]]["dag"]["tasks"]) == {
        "train", "other"}
    assert "dsl.PipelineTaskFinalStatus" in dsl
    assert [s.name for s in api.read_plan(tmp_path / "exits.ipynb").steps][-1] == "summary"


def test_exit_step_sees_the_run_in_the_kernel_and_the_pipeline(notebook, tmp_path: Path) -> None:
    path = notebook_of(tmp_path / "ok", *EXIT_CELLS, name="exits")
    seen = compare(path, pipeline_root=tmp_path / "root")
    assert seen.same_prints(), seen.explain()
    assert seen.notebook["summary"] == [
        "summary 3 {'state': 'SUCCEEDED', 'failed_steps': [], 'error': ''}"]
    failing = notebook_of(tmp_path / "bad", *EXIT_CELLS[:2], "%%kale step train\nacc = N / 0",
                          *EXIT_CELLS[3:], name="exits")
    status = api.run_local(api.compile_notebook(failing), pipeline_root=str(tmp_path / "root2"))
    assert status.state == "FAILED" and status.steps["other"].state == "SKIPPED"
    assert status.steps["summary"].log[-1].startswith(
        "summary 3 {'state': 'FAILED', 'failed_steps': ['train'],")


def test_exit_step_in_the_kernel_reads_the_notebooks_run_so_far(shell) -> None:
    shell.run_line_magic("kale", "pipeline --on-exit summary")
    with pytest.raises(ZeroDivisionError):
        shell.run_cell_magic("kale", "step train", "y = 1 / 0")
    shell.run_cell_magic("kale", "step summary", "y = PIPELINE_STATUS")
    assert shell.user_ns["y"] == {"state": "FAILED", "failed_steps": ["train"],
                                  "error": "ZeroDivisionError: division by zero"}


# -- drawing -----------------------------------------------------------------------------------

def test_dag_draws_loops_conditions_groups_and_the_exit_step_apart(loops: Path) -> None:
    from kale_magics.runner.status import RunStatus, StepStatus
    from kale_magics.views import rich
    from kale_magics.views.dag import Shape, dag_svg
    from kale_magics.views.text import plan_text

    plan = api.read_plan(loops)
    status = RunStatus(pipeline=plan.name, steps={s.name: StepStatus(name=s.name)
                                                  for s in plan.steps})
    status.steps["sweep"].items = {"1": "SUCCEEDED", "2": "SUCCEEDED", "3": "RUNNING"}
    svg = rich.dag_html(plan, status, 0.0)
    assert re.search(r'data-step="sweep"[^>]*data-kind="loop".*2/3 succeeded, 1/3 running', svg)
    assert svg.count('class="kale-condition"') >= 3  # dashed edges into deploy/notify/never
    assert "if best &gt; LIMIT and MODE ==" in svg
    assert "for c in C_VALUES (2 at a time)" in plan_text(plan)
    drawn = dag_svg([("a", ()), ("b", ("a",)), ("end", ())], shapes={
        "a": Shape(group="sub.ipynb"), "b": Shape(group="sub.ipynb"), "end": Shape(exit=True)})
    assert drawn.count('class="kale-group" data-group="sub.ipynb"') == 1
    ys = {m[0]: int(m[1]) for m in re.findall(r'data-step="(\w+)".*?<rect x="\d+" y="(\d+)"', drawn)}
    assert ys["end"] > ys["b"] > ys["a"] and "on exit" in drawn


def test_kale_conversion_names_what_kale_tags_cannot_express(loops: Path, tmp_path: Path) -> None:
    _, warnings = api.convert(loops, tmp_path / "kale.ipynb", "kale-tags")
    text = "\n".join(warnings)
    assert "Kale tags cannot express --for c in C_VALUES --parallelism 2" in text
    assert re.search(r"--if .*best > LIMIT.*\(Kale runs the step once, unconditionally\)", text)
    exits = notebook_of(tmp_path / "exit", *EXIT_CELLS, name="exits")
    _, warnings = api.convert(exits, tmp_path / "kale2.ipynb", "kale-tags")
    assert any("--on-exit summary: Kale tags cannot express an exit step" in w for w in warnings)


# -- %%kale notebook ---------------------------------------------------------------------------

INNER = ("%%kale parameters\nFACTOR = 2\nVALUES = [1, 2]",
         "%%kale step scale --for v in VALUES\nscaled = v * FACTOR",
         "%%kale step add\ntotal = sum(scaled)\nprint('inner total', total)")
OUTER = ("%%kale parameters\nBASE = 10", "%%kale step start\nstart = BASE + 1",
         "%%kale notebook inner.ipynb --param FACTOR=start --outputs total\n# the inner pipeline",
         "%%kale step finish\nprint('finish', total + start)")


@pytest.fixture(scope="module")
def outer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sub")
    notebook_of(folder, *INNER, name="inner")
    return notebook_of(folder, *OUTER, name="outer")


def test_notebook_line_parses_and_prints_back() -> None:
    annotation = api.parse_annotation("notebook prep.ipynb --param 'N=M * 2' --outputs df y")
    assert annotation.notebook.params == (("N", "M * 2"),) and annotation.outputs == ("df", "y")
    assert api.parse_annotation(cell_line(annotation)) == annotation
    with pytest.raises(AnnotationError, match="is not NAME=EXPR"):
        api.parse_annotation("notebook prep.ipynb --param N=")


def test_sub_notebook_steps_join_the_plan_as_a_group(outer: Path, tmp_path: Path) -> None:
    plan = api.read_plan(outer)
    assert [s.name for s in plan.steps] == ["start", "inner_params", "inner_scale", "inner_add",
                                            "finish"]
    assert plan.step("inner_scale").loop is not None  # the nested case: a loop in a sub-notebook
    assert plan.step("finish").inputs[1].producer == "inner_add"
    from kale_magics.views import rich
    assert rich.dag_html(plan, None, 0.0).count('data-group="inner.ipynb"') == 1
    ir, _ = compile_to_dict(outer, tmp_path / "out")
    got = normalise(ir)
    golden = GOLDEN / "subnotebook.yaml"
    if os.environ.get("KALE_UPDATE_GOLDEN"):
        golden.write_text(yaml.safe_dump(got, sort_keys=True))
    assert got == yaml.safe_load(golden.read_text())


def test_sub_notebook_errors_name_the_fix(outer: Path) -> None:
    folder = outer.parent
    cycle = notebook_of(folder, "%%kale notebook cyc_b.ipynb\n#", name="cyc_a")
    notebook_of(folder, "%%kale notebook cyc_a.ipynb\n#", name="cyc_b")
    with pytest.raises(AnnotationError, match=r"cycle of notebooks: cyc_a.ipynb -> cyc_b.ipynb "
                       r"-> cyc_a.ipynb"):
        api.read_plan(cycle)
    hidden = notebook_of(folder, "%%kale notebook inner.ipynb --outputs total\n#",
                         "%%kale step f\nprint(scaled)", name="hidden")
    with pytest.raises(AnalysisError, match="add `--outputs scaled` to its `%%kale notebook"):
        api.read_plan(hidden)
    unknown = notebook_of(folder, "%%kale notebook inner.ipynb --param NOPE=1\n#", name="unknown")
    with pytest.raises(AnnotationError, match="--param NOPE names no parameter"):
        api.read_plan(unknown)
    code = notebook_of(folder, "%%kale notebook inner.ipynb\nx = 1", name="code")
    with pytest.raises(AnnotationError, match="its body holds comments, not code"):
        api.read_plan(code)


def test_sub_notebook_computes_what_the_notebook_computes(outer: Path, tmp_path: Path) -> None:
    seen = compare(outer, pipeline_root=tmp_path / "root")
    assert seen.same_prints(), seen.explain()
    assert seen.notebook["finish"] == ["finish 44"]  # FACTOR = start = 11: 11 + 22, plus 11
    assert seen.pipeline["inner_add"][-1] == "inner total 33"


def test_kale_conversion_of_a_sub_notebook_cell_warns(outer: Path, tmp_path: Path) -> None:
    _, warnings = api.convert(outer, tmp_path / "kale.ipynb", "kale-tags")
    assert any("Kale tags cannot express `notebook` (a sub-pipeline" in w for w in warnings)
