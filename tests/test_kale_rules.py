"""Kale's reading of cell tags, rule by rule (issue 15), as Kale's ``NotebookProcessor.parse_notebook``
(kubeflow/kale ``backend/kale/processors/nbprocessor.py``) reads them.

Each rule that changes what a pipeline computes is proved by running the notebook top to bottom
with nbclient and as a pipeline, and comparing the values.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from kale_magics import api
from kale_magics.errors import AnalysisError, AnnotationError
from tests.equivalence import compare
from tests.test_kale_tags import tagged


#: Turns a value into JSON the same way in the kernel and here (frames and arrays by content).
CANONICAL = ("def _canonical(v):\n"
             "    if hasattr(v, 'to_json'):\n        return ['pandas', v.to_json()]\n"
             "    if hasattr(v, 'tolist'):\n        return ['array', v.tolist()]\n"
             "    return v\n")


def canonical(value: object) -> object:
    """``value`` as JSON data: a DataFrame or Series by its ``to_json``, an array by its list."""
    namespace: dict = {}
    exec(CANONICAL, namespace)
    return json.loads(json.dumps(namespace["_canonical"](value)))


def notebook_values(path: Path, names: list[str]) -> dict[str, object]:
    """Run ``path`` top to bottom in a kernel; the values of ``names`` at the end, as JSON data
    (see :func:`canonical`)."""
    nb = nbformat.read(path, as_version=4)
    probe = (f"import json\n{CANONICAL}"
             f"print(json.dumps({{n: _canonical(eval(n)) for n in {names!r}}}))")
    nb.cells.append(nbformat.v4.new_code_cell(probe))
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return json.loads("".join(o.get("text", "") for o in nb.cells[-1].outputs))


def pipeline_values(path: Path) -> dict[str, object]:
    """Run ``path`` as a local pipeline; its metrics (the values of its metrics cell)."""
    status = api.run_local(path, pipeline_root=str(path.parent / "root"))
    assert status.state == "SUCCEEDED", {n: s.error for n, s in status.steps.items()}
    return dict(status.metrics)


def assert_same_values(path: Path) -> None:
    """Run ``path`` with nbclient and as a pipeline (tests/equivalence.py): same metrics, and
    every step prints what its cells print in the kernel."""
    result = compare(path, pipeline_root=path.parent / "root")
    assert result.notebook_metrics and result.same_metrics() and result.same_prints(), \
        result.explain()


# -- rule 1: skip is transparent --------------------------------------------------------------


SKIP_NOTEBOOK = [("y = 1", ["step:load"]), ("print('plot', y)", ["skip"]),
                 ("y = y * 10", []),  # Kale: continues `load` (the cell before the skip)
                 ("z = y + 1", ["step:use", "prev:load"]), ("print(y)\nprint(z)", ["pipeline-metrics"])]


def test_untagged_cells_after_a_skip_continue_the_step_before_it(tmp_path) -> None:
    plan = api.read_plan(tagged(tmp_path / "nb.ipynb", SKIP_NOTEBOOK))
    assert [c.index for c in plan.step("load").cells] == [0, 2]
    assert plan.step("use").inputs[0].producer == "load"


@pytest.mark.integration
def test_skip_transparency_gives_the_notebooks_values(tmp_path) -> None:
    path = tagged(tmp_path / "nb.ipynb", SKIP_NOTEBOOK)
    assert_same_values(path)  # y = 10, z = 11: the cell after the skip ran in `load`
    assert pipeline_values(path) == {"y": 10, "z": 11}


def test_magics_keep_their_rule_after_skip(notebook) -> None:
    path = notebook("%%kale step load\ny = 1", "%%kale skip\ny = y * 2", "y = y * 10",
                    "%%kale step use\nz = y + 1")
    plan = api.read_plan(path)
    assert [c.index for c in plan.step("load").cells] == [0]  # the cell after a skip is skipped


# -- rule 2: an empty step name is an untagged cell ---------------------------------------------


@pytest.mark.parametrize("tag", ["step:", "block:"])
def test_empty_step_name_continues_the_cell_above(tmp_path, tag) -> None:
    path = tagged(tmp_path / "nb.ipynb", [("x = 1", ["step:load"]), ("x = x + 1", [tag]),
                                          ("y = x", ["step:use"])])
    plan = api.read_plan(path)
    assert [c.index for c in plan.step("load").cells] == [0, 1]
    assert [s.name for s in plan.steps] == ["load", "use"]


def test_empty_step_name_after_skip_continues_the_step_before_the_skip(tmp_path) -> None:
    path = tagged(tmp_path / "nb.ipynb", [("x = 1", ["step:load"]), ("x", ["skip"]),
                                          ("x = x + 1", ["step:"])])
    assert [c.index for c in api.read_plan(path).step("load").cells] == [0, 2]


# -- rule 3: one step name on several cells is one step -------------------------------------------


MERGED = [("a = 1", ["step:first"]), ("b = a + 1", ["step:second"]),
          ("d = a + 10", ["step:first"]),  # not adjacent: merged into `first`, after its cell 0
          ("c = d + b", ["step:third"]), ("print(a)\nprint(b)\nprint(c)", ["pipeline-metrics"])]


def test_same_step_name_merges_cells_in_notebook_order(tmp_path) -> None:
    plan = api.read_plan(tagged(tmp_path / "nb.ipynb", MERGED))
    assert [s.name for s in plan.steps] == ["first", "second", "third"]
    assert [c.index for c in plan.step("first").cells] == [0, 2]
    assert {(i.name, i.producer) for i in plan.step("third").inputs} == {("d", "first"),
                                                                         ("b", "second")}
    assert plan.warnings == ()


def test_a_merged_step_changing_what_another_read_is_a_warning(tmp_path) -> None:
    path = tagged(tmp_path / "nb.ipynb", [("a = 1", ["step:first"]), ("b = a + 1", ["step:second"]),
                                          ("a = a + 10", ["step:first"])])
    warnings = api.read_plan(path).warnings
    assert len(warnings) == 1 and warnings[0].startswith(
        "cell 2 ('b = a + 1'): step 'second' reads `a`, which cell 3 ('a = a + 10') assigns "
        "afterwards in the same step 'first'")
    assert warnings[0].endswith("give that cell a step name of its own")


def test_a_merged_step_shadowing_what_it_receives_is_a_warning(tmp_path) -> None:
    path = tagged(tmp_path / "nb.ipynb", [("x = 1", ["step:first"]), ("x = 2", ["step:second"]),
                                          ("y = x", ["step:first"])])
    plan = api.read_plan(path)
    assert plan.step("first").inputs[0].producer == "second"
    assert any("step 'first' reads `x`, which cell 1 ('x = 1') assigns in the same step 'first'"
               in w and "wins over the one received" in w for w in plan.warnings)


@pytest.mark.integration
def test_merged_step_gives_the_notebooks_values(tmp_path) -> None:
    assert_same_values(tagged(tmp_path / "nb.ipynb", MERGED))


CYCLE = [("a = 1", ["step:first"]), ("b = a + 1", ["step:second"]), ("c = b + 1", ["step:first"]),
         ("print(c)", ["pipeline-metrics"])]


def test_merge_that_makes_a_cycle_is_refused_naming_the_cells(notebook) -> None:
    path = notebook("%%kale step first\na = 1", "%%kale step second\nb = a + 1",
                    "%%kale step first\nc = b + 1")
    with pytest.raises(AnalysisError) as info:
        api.read_plan(path)
    message = str(info.value)
    assert "cell 1 ('a = 1') and cell 3 ('c = b + 1')" in message
    assert "cycle: " in message and "give the later cells a step name of their own" in message


def test_kale_tagged_merge_that_makes_a_cycle_runs_its_cells_as_steps_of_their_own(tmp_path) -> None:
    plan = api.read_plan(tagged(tmp_path / "nb.ipynb", CYCLE))  # Kale compiles it (Example.ipynb)
    assert [(s.name, [c.index for c in s.cells]) for s in plan.steps] == [
        ("first", [0]), ("second", [1]), ("first_2", [2])]
    assert plan.warnings[0].startswith("the cells of step 'first' (cell 1 ('a = 1') and cell 3 "
                                       "('c = b + 1')) are one step because they share its name, "
                                       "and merging them makes a cycle")
    assert plan.warnings[0].endswith("so cell 3 runs as step 'first_2'")


@pytest.mark.integration
def test_kale_tagged_merge_split_gives_the_notebooks_values(tmp_path) -> None:
    assert_same_values(tagged(tmp_path / "nb.ipynb", CYCLE))


def test_same_step_name_in_magics_merges_too(notebook) -> None:
    plan = api.read_plan(notebook("%%kale step a\nx = 1", "%%kale step b\ny = x",
                                  "%%kale step a\nz = 2"))
    assert [c.index for c in plan.step("a").cells] == [0, 2]


def test_settings_on_a_later_cell_of_a_merged_step_are_a_warning(tmp_path) -> None:
    path = tagged(tmp_path / "nb.ipynb", [("a = 1", ["step:first", "limit:memory:1Gi"]),
                                          ("a = 2", ["step:first", "limit:memory:2Gi"])])
    plan = api.read_plan(path)
    assert plan.step("first").settings.memory_limit == "1Gi"
    assert any("cell 2" in w and "taken from its first cell" in w for w in plan.warnings)


def test_prev_tags_on_a_later_cell_of_a_merged_step_are_ignored_as_in_kale(tmp_path) -> None:
    path = tagged(tmp_path / "nb.ipynb", [("a = 1", ["step:first"]), ("b = 1", ["step:second"]),
                                          ("c = 1", ["step:first", "prev:second"])])
    plan = api.read_plan(path)
    assert plan.step("first").after == ()
    assert any(w.startswith("cell 3 ('c = 1'): the settings and --after (prev:) edges of step "
                            "'first' are taken from its first cell") for w in plan.warnings)


# -- rule 4: a parameter listed in pipeline-metrics is a metric -----------------------------------


PARAM_METRIC = [("import math", ["imports"]), ("d1 = 5\nd2 = 6", ["pipeline-parameters"]),
                ("m = math.sqrt(d2)", ["step:first"]), ("s = m * d1", ["step:second"]),
                ("print(d1)\nprint(d2)\nprint(s)", ["pipeline-metrics"])]


def test_parameter_metric_is_logged_by_the_first_step_reading_it(tmp_path) -> None:
    plan = api.read_plan(tagged(tmp_path / "nb.ipynb", PARAM_METRIC))
    assert [m.key for m in plan.step("first").metrics] == ["d2"]
    assert [m.key for m in plan.step("second").metrics] == ["d1", "s"]


def test_parameter_metric_no_step_reads_goes_to_the_first_step(tmp_path) -> None:
    path = tagged(tmp_path / "nb.ipynb", [("p = 3", ["pipeline-parameters"]), ("x = 1", ["step:a"]),
                                          ("print(p)", ["pipeline-metrics"])])
    step = api.read_plan(path).step("a")
    assert [m.key for m in step.metrics] == ["p"] and step.parameters == ("p",)


@pytest.mark.integration
def test_parameter_metrics_give_the_notebooks_values(tmp_path) -> None:
    assert_same_values(tagged(tmp_path / "nb.ipynb", PARAM_METRIC))


# -- rule 5: malformed prev tags, and warnings printed when the compile fails ----------------------


def test_prev_with_two_names_is_a_malformed_prev_tag(tmp_path) -> None:
    path = tagged(tmp_path / "nb.ipynb", [("x = 1", ["step:sum"]),
                                          ("y = x", ["prev:sum:cumsum", "step:os"])])
    with pytest.raises(AnnotationError) as info:
        api.read_plan(path)
    assert str(info.value) == ("cell 2: tag 'prev:sum:cumsum' is a malformed `prev:` tag (one step "
                               "name after the colon); write one tag per upstream step (prev:sum, "
                               "prev:cumsum)")


def test_two_step_names_on_one_cell_are_refused(tmp_path) -> None:
    with pytest.raises(AnnotationError, match="cell 1: a cell can belong to one step only"):
        api.read_plan(tagged(tmp_path / "nb.ipynb", [("x = 1", ["step:a", "step:b"])]))


def test_unknown_tag_warnings_are_printed_when_the_compile_fails(tmp_path) -> None:
    path = tagged(tmp_path / "nb.ipynb", [("N = 3", ["parameters"]), ("x = 1", ["step:use"]),
                                          ("print(N)", ["pipeline-metrics"])])
    with pytest.raises(AnalysisError) as info:
        api.read_plan(path)
    assert "unknown tag 'parameters' ignored (Kale 0.x's name for pipeline-parameters" in str(info.value)
    assert any("unknown tag 'parameters'" in w for w in info.value.warnings)
    result = subprocess.run([sys.executable, "-m", "kale_magics", "compile", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "metric `N` reads no variable" in result.stderr
    assert "unknown tag 'parameters'" in result.stderr


def test_warnings_before_a_malformed_tag_are_kept(tmp_path) -> None:
    path = tagged(tmp_path / "nb.ipynb", [("x = 1", ["step:a", "mystery"]),
                                          ("y = x", ["prev:a:b", "step:b"])])
    with pytest.raises(AnnotationError, match=r"malformed `prev:` tag.*warnings: cell 1: unknown "
                                              r"tag 'mystery' ignored"):
        api.read_plan(path)


# -- rule 6: convert keeps the DAG and the name ---------------------------------------------------


def shape(plan) -> list[tuple]:
    """What must survive a conversion: steps, their cells' code, edges, data, parameters, metrics."""
    return [(s.name, s.upstream, s.inputs, s.outputs, s.parameters, s.metrics, s.settings,
             [c.source.strip().removeprefix("%%kale").strip() for c in s.cells if c.source.strip()])
            for s in plan.steps]


@pytest.mark.parametrize("cells", [SKIP_NOTEBOOK, MERGED, PARAM_METRIC], ids=["skip", "merged", "param"])
def test_tags_to_magics_keeps_the_dag(tmp_path, cells) -> None:
    source = tagged(tmp_path / "kale.ipynb", cells)
    magics, _ = api.convert(source, tmp_path / "magics.ipynb", "magics")
    before, after = api.read_plan(source), api.read_plan(magics)
    assert [(s.name, s.upstream, s.inputs, s.outputs, s.parameters, s.metrics) for s in after.steps] \
        == [(s.name, s.upstream, s.inputs, s.outputs, s.parameters, s.metrics) for s in before.steps]
    assert [[c.index for c in s.cells] for s in after.steps] == \
        [[c.index + 1 for c in s.cells] for s in before.steps]  # + the inserted %kale pipeline cell
    assert after.name == before.name == "kale"


def test_magics_to_tags_keeps_the_dag_after_a_skip(notebook, tmp_path) -> None:
    source = notebook("%%kale step load\ny = 1", "%%kale skip\ny = y * 2", "y = y * 10",
                      "%%kale step use\nz = y + 1", "%%kale step load\nw = 3", name="magic")
    tags, _ = api.convert(source, tmp_path / "tags.ipynb", "kale-tags")
    nb = nbformat.read(tags, 4)
    assert nb.cells[2].metadata["tags"] == ["skip"]  # explicit: Kale's skip is transparent
    assert nb.cells[4].metadata["tags"] == ["step:load"]  # prev: tags only on a step's first cell
    before, after = api.read_plan(source), api.read_plan(tags)
    assert [(s.name, s.upstream, [c.index for c in s.cells]) for s in after.steps] == \
        [(s.name, s.upstream, [c.index for c in s.cells]) for s in before.steps]
    assert after.name == before.name == "magic"


def test_a_converted_notebook_keeps_its_pipeline_name(tmp_path) -> None:
    source = tagged(tmp_path / "candies.ipynb", [("x = 1", ["step:a"])])
    magics, _ = api.convert(source, tmp_path / "candies-magics.ipynb", "magics")
    assert api.read_plan(magics).name == "candies"


# -- Kale 2.3's composition: `notebook:NAME` cells reference other notebooks ------------------------


def reference(name: str, path: str | None = None, source: str = "") -> nbformat.NotebookNode:
    """A `notebook:NAME` cell referencing ``path``."""
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = [f"notebook:{name}"]
    if path is not None:
        cell.metadata["notebook_path"] = path
    return cell


def composed(tmp_path: Path, cells: list) -> Path:
    """A root notebook of ``cells`` (nbformat cells, or (source, tags)) beside `part.ipynb`."""
    tagged(tmp_path / "part.ipynb", [("import math", ["imports"]), ("a = math.sqrt(16)", ["step:load"]),
                                     ("b = a + 1", ["step:use", "prev:load"])],
           {"pipeline_name": "part", "base_image": "python:3.12"})
    nb = nbformat.v4.new_notebook()
    for cell in cells:
        if isinstance(cell, tuple):
            cell, tags = nbformat.v4.new_code_cell(cell[0]), cell[1]
            if tags:
                cell.metadata["tags"] = tags
        nb.cells.append(cell)
    nbformat.write(nb, str(tmp_path / "root.ipynb"))
    return tmp_path / "root.ipynb"


def test_a_referenced_notebooks_steps_join_the_pipeline_under_its_name(tmp_path) -> None:
    root = composed(tmp_path, [reference("part", "./part.ipynb"), ("c = b * 2", ["step:final"]),
                               ("print(c)", ["pipeline-metrics"])])
    plan = api.read_plan(root)
    assert [s.name for s in plan.steps] == ["part_load", "part_use", "final"]
    assert plan.step("part_use").after == ("part_load",)
    assert plan.step("final").inputs[0].producer == "part_use"
    assert plan.step("part_load").settings.image == "python:3.12"  # the referenced notebook's own
    assert plan.step("part_load").cells[0].describe() == "part.ipynb cell 2 ('a = math.sqrt(16)')"


@pytest.mark.integration
def test_a_composed_pipeline_gives_the_values_of_the_notebooks_run_in_turn(tmp_path) -> None:
    root = composed(tmp_path, [reference("part", "./part.ipynb"), ("c = b * 2", ["step:final"]),
                               ("print(c)", ["pipeline-metrics"])])
    assert pipeline_values(root) == {"c": 10.0}


def test_untagged_cells_after_a_reference_belong_to_the_next_step(tmp_path) -> None:
    root = composed(tmp_path, [reference("part", "./part.ipynb"), ("d = 1", []),
                               ("c = b * d", ["step:final"])])
    assert [c.index for c in api.read_plan(root).step("final").cells] == [1, 2]
    dangling = composed(tmp_path, [reference("part", "./part.ipynb"), ("d = 1", [])])
    with pytest.raises(AnnotationError, match="cell 2: untagged code after a `notebook:` cell must "
                                              "be followed by a `step:` cell that owns it"):
        api.read_plan(dangling)


@pytest.mark.parametrize("cell, fragment", [
    (reference("part"), "`notebook:part` cell is missing a 'notebook_path' in its cell metadata"),
    (reference("part", "./part.ipynb", "x = 1"), "`notebook:part` cell contains code"),
    (reference("part", "./nowhere.ipynb"), "nowhere.ipynb"),
])
def test_bad_references_are_clear_errors(tmp_path, cell, fragment) -> None:
    with pytest.raises(api.KaleError) as info:
        api.read_plan(composed(tmp_path, [cell, ("c = 1", ["step:final"])]))
    assert fragment in str(info.value)


def test_nested_references_are_refused(tmp_path) -> None:
    composed(tmp_path, [])
    inner = nbformat.v4.new_notebook()
    inner.cells.append(reference("part", "./part.ipynb"))
    nbformat.write(inner, str(tmp_path / "middle.ipynb"))
    root = composed(tmp_path, [reference("middle", "./middle.ipynb"), ("c = 1", ["step:final"])])
    with pytest.raises(AnnotationError, match="not supported inside a referenced notebook"):
        api.read_plan(root)
