"""Dependency analysis: producers, edges, parameters, metrics and compile-time errors."""

from __future__ import annotations

import pytest

from kale_magics.analysis.plan import build_plan
from kale_magics.errors import AnalysisError
from kale_magics.model import Input, Plan
from kale_magics.notebook.reader import read_notebook


def plan_of(notebook, *cells: str) -> Plan:
    annotated = read_notebook(notebook(*cells))
    return build_plan(annotated.cells, annotated.settings, annotated.path)


def test_data_edges_from_nearest_producer_above(notebook) -> None:
    plan = plan_of(notebook,
                   "%%kale step a\nx = 1",
                   "%%kale step b\nx = 2",
                   "%%kale step c\ny = x + 1")
    assert plan.step("c").inputs == (Input("x", "b"),)
    assert plan.step("b").outputs == ("x",)
    assert plan.step("a").outputs == ()


def test_independent_steps_stay_parallel_and_fan_in(notebook) -> None:
    plan = plan_of(notebook,
                   "%%kale step load\ndf = [1, 2]",
                   "%%kale step left\nl = sum(df)",
                   "%%kale step right\nr = len(df)",
                   "%%kale step join\nout = l + r")
    assert plan.step("left").upstream == ("load",)
    assert plan.step("right").upstream == ("load",)
    assert plan.step("join").upstream == ("left", "right")
    assert plan.step("load").outputs == ("df",)


def test_after_edges_are_kept(notebook) -> None:
    plan = plan_of(notebook, "%%kale step a\nx = 1", "%%kale step b --after a\ny = 2")
    assert plan.step("b").upstream == ("a",)
    assert plan.step("b").inputs == ()


def test_after_a_later_step_reorders(notebook) -> None:
    plan = plan_of(notebook, "%%kale step a --after b\nx = 1", "%%kale step b\ny = 2")
    assert [s.name for s in plan.steps] == ["b", "a"]


def test_step_spanning_cells_and_own_bindings(notebook) -> None:
    plan = plan_of(notebook,
                   "%%kale step a\nx = 1",
                   "%%kale step b\ny = x",
                   "z = y + x",
                   "%%kale step c\nprint(z)")
    b = plan.step("b")
    assert [c.index for c in b.cells] == [1, 2]
    assert b.inputs == (Input("x", "a"),)
    assert plan.step("c").inputs == (Input("z", "b"),)


def test_prelude_parameters_and_builtins_need_no_producer(notebook) -> None:
    plan = plan_of(notebook,
                   "%%kale imports\nimport math",
                   "%%kale functions\nSCALE = 2\ndef f(v):\n    return v * SCALE",
                   "%%kale parameters\nN = 3\nRATE = -0.5",
                   "%%kale step a\nx = f(math.sqrt(N))\nprint(len([x]))\n!echo hi")
    a = plan.step("a")
    assert a.inputs == ()
    assert a.parameters == ("N",)
    assert [(p.name, p.value, p.type) for p in plan.parameters] == [
        ("N", 3, "int"), ("RATE", -0.5, "float")]
    assert [c.index for c in plan.prelude] == [0, 1]


def test_each_step_gets_only_the_parameters_it_reads(notebook) -> None:
    plan = plan_of(notebook, "%%kale parameters\nA = 1\nB = 'b'",
                   "%%kale step one\nx = A", "%%kale step two\ny = B + str(x)")
    assert plan.step("one").parameters == ("A",)
    assert plan.step("two").parameters == ("B",)


def test_a_step_reassigning_a_parameter_becomes_its_producer(notebook) -> None:
    plan = plan_of(notebook, "%%kale parameters\nN = 1",
                   "%%kale step a\nN = N * 2", "%%kale step b\nm = N")
    assert plan.step("a").parameters == ("N",)
    assert plan.step("b").inputs == (Input("N", "a"),)


def test_function_free_variables_are_inputs(notebook) -> None:
    plan = plan_of(notebook, "%%kale step a\nK = 10",
                   "%%kale step b\ndef g():\n    return K\nv = g()")
    assert plan.step("b").inputs == (Input("K", "a"),)


def test_inputs_and_outputs_overrides(notebook) -> None:
    plan = plan_of(notebook,
                   "%%kale step a --outputs made\nexec('made = 1')\nitems = []",
                   "%%kale step b --outputs items\nitems.append(1)",
                   "%%kale step c --inputs made\nprint(made, items)")
    assert plan.step("c").inputs == (Input("items", "b"), Input("made", "a"))
    assert plan.step("a").outputs == ("items", "made")
    assert plan.step("b").outputs == ("items",)


def test_metrics_attach_to_the_latest_producer(notebook) -> None:
    plan = plan_of(notebook, "%%kale parameters\nW = 2",
                   "%%kale step a\nacc = 0.5", "%%kale step b\nloss = 0.1",
                   "%%kale metrics\nacc\nloss * W  # weighted\n\nacc + loss")
    assert [m.key for m in plan.step("a").metrics] == ["acc"]
    b = plan.step("b")
    assert [m.key for m in b.metrics] == ["loss * W", "acc + loss"]
    assert b.inputs == (Input("acc", "a"),)
    assert b.parameters == ("W",)


def test_skip_cells_are_not_steps(notebook) -> None:
    plan = plan_of(notebook, "%%kale step a\nx = 1", "%%kale skip\nx.bit_length()")
    assert [s.name for s in plan.steps] == ["a"]


def test_pipeline_name_defaults_to_notebook_stem(notebook) -> None:
    annotated = read_notebook(notebook("%%kale step a\nx = 1", name="My Notebook"))
    plan = build_plan(annotated.cells, annotated.settings, annotated.path)
    assert plan.name == "my-notebook"


@pytest.mark.parametrize("cells, fragment", [
    (["x = 1"], "has no `%%kale step NAME` cell"),
    (["%%kale step a\nx = 1", "%%kale step b\ny = x", "%%kale step a\nz = y"],
     "the cells of step 'a' (cell 1 ('x = 1') and cell 3 ('z = y')) are one step"),
    (["%%kale step a\nx = 1", "%%kale step b --after aa\ny = 2"],
     "runs --after 'aa', which is not a step; did you mean 'a'?"),
    (["%%kale step a --after b\nx = 1", "%%kale step b --after a\ny = 2"],
     "the steps form a cycle: "),
    (["%%kale step a\ny = x + 1"], "cell 1 ('y = x + 1'): step 'a' reads `x`, which no earlier step"),
    (["%%kale step a\ny = x + 1", "%%kale step b\nx = 2"],
     "it is assigned in cell 2 ('x = 2') of step 'b', which comes later"),
    (["%%kale step a\nvalue = 1", "%%kale step b\nprint(valeu)"], "did you mean `value`?"),
    (["%%kale skip\nx = 1", "%%kale step a\nprint(x)"], "step 'a' reads `x`"),
    (["%%kale parameters\nN = int('3')", "%%kale step a\nx = N"],
     "line 2 `N = int('3')`: the value of `N` is not a literal"),
    (["%%kale parameters\nN = None", "%%kale step a\nx = N"], "`N` is NoneType"),
    (["%%kale parameters\nprint(1)", "%%kale step a\nx = 1"], "only `NAME = literal`"),
    (["%%kale parameters\nD = {1: 2}", "%%kale step a\nx = D"], "needs string keys"),
    (["%%kale parameters\nBIG = 2**60", "%%kale step a\nx = BIG"], "not a literal"),
    (["%%kale parameters\nBIG = 1152921504606846976", "%%kale step a\nx = BIG"], "larger than 2**53"),
    (["%%kale step a\nx = (", "y = 1"], "SyntaxError at line 2"),
    (["%%kale step a\nacc = 1", "%%kale metrics\nacc +"], "is not a Python expression"),
    (["%%kale step a\nacc = 1", "%%kale metrics\nlen([])"], "reads no variable an earlier step"),
    (["%%kale step a --inputs ghost\nx = 1"], "add `--outputs ghost` to that step"),
])
def test_errors_name_the_cell_and_the_fix(notebook, cells, fragment) -> None:
    with pytest.raises(AnalysisError) as info:
        plan_of(notebook, *cells)
    assert fragment in str(info.value)


def test_cycle_message_lists_the_cycle(notebook) -> None:
    with pytest.raises(AnalysisError) as info:
        plan_of(notebook, "%%kale step a --after c\nx = 1", "%%kale step b --after a\ny = 2",
                "%%kale step c --after b\nz = 3")
    message = str(info.value)
    assert all(name in message for name in ("a", "b", "c")) and "->" in message


def test_example_notebooks_analyse(tmp_path) -> None:
    from tests.conftest import EXAMPLES

    for path in sorted(EXAMPLES.glob("*.ipynb")):
        annotated = read_notebook(path)
        plan = build_plan(annotated.cells, annotated.settings, annotated.path)
        assert len(plan.steps) >= 4, path
        assert any(len(s.upstream) >= 2 for s in plan.steps), f"{path}: no fan-in"
        assert any(s.metrics for s in plan.steps), path
