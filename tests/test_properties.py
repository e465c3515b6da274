"""Property-based tests (hypothesis): random magic lines, random valid notebooks, random parameters.

The example counts are fixed below (MAGIC_EXAMPLES, NOTEBOOK_EXAMPLES,
RUN_EXAMPLES) and reported in docs/reliability.md.
"""

from __future__ import annotations

import ast
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kale_magics import api
from kale_magics.errors import AnnotationError
from kale_magics.model import Annotation
from kale_magics.notebook.annotations import parse_cell_line
from tests.conftest import write_notebook

MAGIC_EXAMPLES, NOTEBOOK_EXAMPLES, RUN_EXAMPLES = 500, 25, 5
MARKER = "\u2063kale-user-text\u2063"  # an invisible separator: found only where user text went

TOKENS = ["step", "imports", "functions", "parameters", "metrics", "skip", "--after", "--inputs",
          "--outputs", "--cpu", "--memory", "--gpu", "--retries", "--backoff", "--timeout",
          "--env", "--secret", "--volume", "--toleration", "--no-cache", "--packages", "--image",
          "a", "b_2", "Train", "x", "1", "4Gi", "30s", "A=1", "s:k:E", "d:/d", "k=v:NoSchedule",
          "'", '"', "\\", "--", "-", "=", ":", "é", "🚀", "class", "kale_x", "pipeline", ""]


@settings(max_examples=MAGIC_EXAMPLES, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=8)), max_size=8))
def test_magic_lines_parse_or_raise_our_error(words: list[str]) -> None:
    line = "%%kale " + " ".join(words)
    try:
        result = parse_cell_line(line)
    except AnnotationError as error:
        assert str(error)  # a message, never empty
    else:
        assert isinstance(result, Annotation)


SAFE_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
SCALARS = st.one_of(
    st.integers(-(2 ** 53), 2 ** 53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.builds(lambda t: MARKER + t + "'''\"\"\"\\\n", SAFE_TEXT))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3),
                   st.dictionaries(st.text("abcxyz", min_size=1, max_size=4), SCALARS, max_size=3))


@st.composite
def notebooks(draw: Any) -> tuple[list[str], dict[str, Any], dict[str, str]]:
    """Cells of a random valid notebook, its parameters, and each variable's producer."""
    params = {f"P{i}": draw(VALUES) for i in range(draw(st.integers(0, 3)))}
    cells = ["%%kale parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())] \
        if params else []
    producers: dict[str, str] = {}
    for i in range(draw(st.integers(1, 5))):
        name = f"s{i}"
        reads = draw(st.lists(st.sampled_from(sorted(producers) or ["_"]), max_size=3, unique=True))
        reads = [r for r in reads if r != "_"]
        used = draw(st.lists(st.sampled_from(sorted(params) or ["_"]), max_size=2, unique=True))
        used = [p for p in used if p != "_"]
        after = draw(st.lists(st.sampled_from([f"s{j}" for j in range(i)] or ["_"]), max_size=2,
                              unique=True))
        after = [a for a in after if a != "_"]
        line = f"%%kale step {name}" + (f" --after {' '.join(after)}" if after else "")
        body = f"v{i} = [{', '.join([*reads, *used])}]"
        cells.append(f"{line}\n{body}")
        producers[f"v{i}"] = name
    return cells, params, producers


@settings(max_examples=NOTEBOOK_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(notebooks())
def test_random_notebooks_compile_to_ir_with_exact_parameters(case) -> None:
    cells, params, producers = case
    with tempfile.TemporaryDirectory() as folder:
        path = write_notebook(Path(folder) / "random.ipynb", cells)
        compiled = api.compile_notebook(path, str(Path(folder) / "out"))
        for step in compiled.plan.steps:
            assert all(producers[i.name] == i.producer for i in step.inputs)
        dsl = Path(compiled.dsl_path).read_text(encoding="utf-8")
        with open(compiled.yaml_path, encoding="utf-8") as f:
            ir = yaml.safe_load(f)
    tree = ast.parse(dsl)
    assert_user_text_only_in_pipeline_defaults(tree)
    defaults = ir["root"].get("inputDefinitions", {}).get("parameters", {})
    for name, value in params.items():
        assert_default_is_exact(defaults[name], value)


#: The IR's parameterType of each Python type (lists and dicts travel as JSON text).
KFP_TYPES = {bool: "BOOLEAN", int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE", str: "STRING",
             list: "STRING", dict: "STRING"}


def assert_default_is_exact(spec: dict[str, Any], value: Any) -> None:
    """The IR keeps the parameter's type and its exact value (KFP writes numbers as doubles:
    an int must come back integral and equal, a float equal with its sign, a bool a bool)."""
    assert spec["parameterType"] == KFP_TYPES[type(value)], (spec, value)
    got = spec["defaultValue"]
    if isinstance(value, (list, dict)):
        assert json.loads(got) == value
    elif isinstance(value, bool):
        assert got is value
    elif isinstance(value, int):
        assert float(got).is_integer() and int(got) == value
    elif isinstance(value, float):
        assert isinstance(got, float) and got == value
        assert math.copysign(1.0, got) == math.copysign(1.0, value)
    else:
        assert got == value and isinstance(got, str)


@pytest.mark.parametrize("value, spec", [
    (True, {"parameterType": "NUMBER_INTEGER", "defaultValue": 1.0}),
    (3, {"parameterType": "NUMBER_INTEGER", "defaultValue": 3.5}),
    (3, {"parameterType": "NUMBER_DOUBLE", "defaultValue": 3.0}),
    (-0.0, {"parameterType": "NUMBER_DOUBLE", "defaultValue": 0.0}),
    (1.5, {"parameterType": "NUMBER_DOUBLE", "defaultValue": "1.5"}),
])
def test_a_changed_number_or_type_is_caught(value, spec) -> None:
    """The property check above can fail for ints, floats and bools (it is not vacuous)."""
    with pytest.raises(AssertionError):
        assert_default_is_exact(spec, value)


def assert_user_text_only_in_pipeline_defaults(tree: ast.Module) -> None:
    """Parameter text (marked) appears only as a default of the ``pipeline`` function."""
    pipeline = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "pipeline")
    allowed = {id(d) for d in pipeline.args.defaults}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and MARKER in node.value:
            assert id(node) in allowed, node.value
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and getattr(n.func, "id", "") in ("exec", "eval")]
    assert not calls  # the module executes no code: steps import the runtime from its artifact


@pytest.mark.integration
@settings(max_examples=RUN_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["A", "B", "C"]), VALUES, min_size=1))
def test_parameter_values_arrive_in_the_step_unchanged(params: dict[str, Any]) -> None:
    cells = ["%%kale parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items()),
             "%%kale step show\nimport json\nprint('PARAMS', json.dumps({"
             + ", ".join(f"{k!r}: [type({k}).__name__, {k}]" for k in params) + "}))"]
    with tempfile.TemporaryDirectory() as folder:
        path = write_notebook(Path(folder) / "params.ipynb", cells)
        status = api.run_local(path, output_dir=str(Path(folder) / "out"))
    assert status.state == "SUCCEEDED", status.error
    line = next(l for l in status.steps["show"].log if l.startswith("PARAMS "))
    received = json.loads(line[len("PARAMS "):])
    for name, value in params.items():
        kind, got = received[name]
        assert kind == type(value).__name__
        assert got == json.loads(json.dumps(value))
