"""Hypothesis strategies for hostile notebooks, and the checks every compile must pass.

Each example is a notebook file of one class (:data:`CLASSES`): a valid notebook carrying
hostile but legal text, or one whose names, magic lines, Kale tags, Kale metadata,
parameters, cell sources, JSON structure or file name were drawn from pools of what
breaks code generators (quotes, backslashes, ``\\N``, triple quotes, lone surrogates,
NUL, line separators, names of builtins and of generated code, paths, huge and
non-finite numbers, ...). Code that creates :data:`SENTINEL` in the working directory is
planted wherever user text can go; compiling must never create it.

:func:`check_compile` compiles one example and says what happened: ``"compiled"`` (the
DSL parses, the files are under the output folder, nothing else was written) or
``"refused: <ErrorClass>"`` (a one-line KaleError that is not "a kale-magics bug").
``tests/test_fuzz.py`` runs a bounded number of examples in CI; ``python -m tests.fuzz_run``
runs more and prints the counts per class (docs/reliability.md).
"""

from __future__ import annotations

import ast
import json
import os
import shlex
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from kale_magics import api
from kale_magics.errors import KaleError

#: A file compiling must never create (relative: the checks run in the example's folder).
SENTINEL = "PWNED-kale-fuzz"
CODE = f'__import__("pathlib").Path("{SENTINEL}").touch()'
#: Text that breaks naive code generators, shells, YAML or terminals.
PAYLOADS = (
    CODE, f'""";{CODE};"""', f"''';{CODE};'''", f"';{CODE};'", f'";{CODE};"',
    f"{{{CODE}}}", f"$(touch {SENTINEL})", f"`touch {SENTINEL}`", "\\N", "\\", "\\x", "\\u12",
    "'''", '"""', "'", '"', "#", "\n", "\r", "\r\n", "\x00", "\x0b", "\x1b[31m", "\u2028",
    "\u0085", "\ud800", "\udcff", "\ufeff", "🚀", "é", "{}", "%s", "{{PIPELINE_NAME}}",
    "{{$.inputs.parameters['x']}}", "../../victim", "/tmp/victim", "..", "a" * 300,
    "http://alice:Sup3rS3cret@127.0.0.1:9", "-", "--name", "=", ":", " ")
HOSTILE = st.one_of(st.sampled_from(PAYLOADS), st.text(max_size=10),
                    st.lists(st.sampled_from(PAYLOADS), min_size=2, max_size=3).map("x".join))
#: Step and variable names: valid ones, names of builtins and of generated code, invalid ones.
STEP_NAMES = ("a", "b", "train", "load_data", "exec", "compile", "setattr", "eval", "filter",
              "kubernetes", "dsl", "root", "pipeline", "compiler", "a_task", "b_task", "a_driver",
              "prep", "prep_driver", "a_b", "a__b", "a_", "int", "str", "bool", "float", "kale_x",
              "kfp", "builtins", "json", "sys", "types", "x" * 63, "x" * 64, "Train", "é", "_a",
              "1a", "a-b", "class", "match", "type", "")
PARAM_NAMES = ("N", "RATE", "a", "b", "kubernetes", "dsl", "_p", "__x", "in_v0", "out_v0",
               "kale_metrics", "α", "BASE_IMAGE", "NOTEBOOK", "pipeline", "a_task", "int", "print",
               "exec", "x" * 200)
PARAM_VALUES = ("1", "-2.5", "1e400", "-1e400", "float('nan')", "2**60", "9007199254740993",
                "True", "None", "'text'", "b'bytes'", "[1, (2, 3)]", "[b'x']", "{1: 2}",
                "{'a': {1: 2}}", "{1, 2}", "1j", "[1j]", "(1, 2)", "{'a': [1, {'b': None}]}",
                "[float('inf')]", "f(x)", "x", "'\\ud800'", "'\\x00'", "[[[[[]]]]]", "'''a'''",
                repr(CODE), repr('""";' + CODE))
SOURCE_LINES = ("x = 1", "y = x + 1", "print(x)", "!echo hi", "files = !ls", "%time z = 1",
                "%matplotlib inline", "%%bash", "exec('w = 1')", "import os", "import numpy",
                "from math import *", "del x", "global g", "def f(:", "\tx = 1", "  x = 1",
                "x = (", "return 1", "yield 1", "await g()", "x = 1 \\", "lambda: (yield)",
                "class C: pass", "x: int = 1", "[a := 1]", "x = '''", "__import__('os')",
                CODE, "# " + CODE, f"'{CODE}'")
OPTIONS = ("--after", "--inputs", "--outputs", "--cpu", "--memory", "--gpu", "--accelerator",
           "--image", "--retries", "--backoff", "--timeout", "--cache", "--no-cache", "--env",
           "--secret", "--volume", "--node-selector", "--toleration", "--label", "--annotation",
           "--packages", "--cpu-limit", "--memory-limit")
PIPELINE_OPTIONS = ("--name", "--experiment", "--description", "--image", "--host",
                    "--pip-index-url", "--pip-trusted-host", "--env", "--timeout", "--label",
                    "--notebook", "--volume")
OPTION_VALUES = ("1", "500m", "4Gi", "2", "30s", "2h", "A=1", "A=" + CODE, "s:k:E", "d:/d",
                 "k=v:NoSchedule", "team=ml", "python:3.11", "torch==2.1", "pvc:/data", "x",
                 "-1", "0", "1e9", "nan", "", "a", "b")
KALE_TAGS = ("step:a", "step:b", "step:exec", "step:a__b", "step:a_task", "step:kubernetes",
             "block:b", "prev:a", "prev:b", "prev:zz", "limit:cpu:1", "limit:memory:2Gi",
             "limit:memory:x", "limit:nvidia.com/gpu:2", "limit:foo:1", "image:python:3.11",
             "label:k:v", "annotation:k:v", "secret:a:b:C", "secret:bad", "cache:enabled",
             "pipeline-parameters", "pipeline-metrics", "imports", "functions", "skip",
             "report:x", "unknown", "")
META_KEYS = ("pipeline_name", "experiment_name", "experiment", "pipeline_description",
             "base_image", "docker_image", "enable_caching", "volumes", "steps_defaults",
             "kfp_host", "katib_run", "other")
FILE_NAMES = ("nb", f'x""";{CODE};"""y', f"x''';{CODE};'''y", "a\\N", "a\\", "a\nb", "a\rb",
              "{}", "'", "%s", "ü", "🚀", ".hidden", "-dash", "a b", "train", "a" * 200,
              os.fsdecode(b"bad\xff"), "\u2028", "CON", "__init__", "dsl", "pipeline")
#: The classes of examples, each counted separately in docs/reliability.md.
CLASSES = ("valid", "names", "magic-lines", "kale-tags", "kale-metadata", "parameters",
           "cell-sources", "notebook-json", "file-names")

JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | HOSTILE
                           | st.floats(allow_nan=False, allow_infinity=False),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(HOSTILE, inner, max_size=3), max_leaves=6)


def _quoted(value: str) -> str:
    return shlex.quote(value)


@st.composite
def valid_cells(draw: Any) -> list[str]:
    """A valid notebook's cells: hostile-but-legal text in descriptions, parameters, sources."""
    description = " ".join(draw(HOSTILE).splitlines()).replace("\ud800", "?").replace("\udcff", "?")
    cells = ["%kale pipeline --description=" + _quoted(description)
             + " --experiment " + _quoted("e" + draw(st.text("abc-_ ", max_size=5)))]
    text = draw(st.text(st.characters(blacklist_categories=("Cs",)), max_size=20))
    cells.append(f"%%kale parameters\nN = {draw(st.integers(-5, 5))}\nLABEL = {(text + CODE)!r}")
    for i in range(draw(st.integers(1, 4))):
        reads = f"v{i - 1} + " if i and draw(st.booleans()) else ""
        cells.append(f"%%kale step s{i}\n# {CODE}\nv{i} = {reads}N\nlabel = LABEL  # {text!r}")
    cells.append(f"%%kale metrics\nv0  # {CODE}")
    return cells


#: A valid value of each option whose values have a grammar; others take any text.
VALID_VALUES = {"--after": "s0", "--inputs": "v0", "--outputs": "q", "--cpu": "500m",
                "--memory": "4Gi", "--gpu": "1", "--retries": "2", "--backoff": "30s",
                "--timeout": "2h", "--env": "A=1", "--secret": "s:k:E", "--volume": "pvc:/data",
                "--node-selector": "pool=gpu", "--toleration": "k=v:NoSchedule",
                "--label": "team=ml", "--annotation": "k=v", "--packages": "torch==2.1",
                "--cpu-limit": "2", "--memory-limit": "8Gi", "--name": "p-1",
                "--host": "http://127.0.0.1:9", "--pip-index-url": "https://mirror/simple"}


@st.composite
def _option(draw: Any, options: tuple[str, ...]) -> list[str]:
    option = draw(st.sampled_from(options))
    if option in ("--cache", "--no-cache"):
        return [option]
    valid = VALID_VALUES.get(option)
    value = draw(st.sampled_from(OPTION_VALUES + STEP_NAMES) | HOSTILE) if valid is None or \
        draw(st.booleans()) else valid
    if valid and "=" in valid and draw(st.booleans()):  # a valid key with a hostile value
        value = valid.split("=")[0] + "=" + draw(HOSTILE)
    return [option, _quoted(value)]


@st.composite
def step_line(draw: Any) -> str:
    words = ["%%kale", "step", draw(st.sampled_from(STEP_NAMES) | HOSTILE)]
    for _ in range(draw(st.integers(0, 3))):
        words += draw(_option(OPTIONS))
    return " ".join(words)


@st.composite
def pipeline_line(draw: Any) -> str:
    words = ["%kale", "pipeline"]
    for _ in range(draw(st.integers(1, 4))):
        words += draw(_option(PIPELINE_OPTIONS))
    return " ".join(words)


def _cell(source: str, tags: Any = None) -> dict[str, Any]:
    cell: dict[str, Any] = {"cell_type": "code", "execution_count": None, "metadata": {},
                            "outputs": [], "source": source}
    if tags is not None:
        cell["metadata"]["tags"] = tags
    return cell


def _document(cells: list[dict[str, Any]], meta: dict[str, Any] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                               "language": "python"}}
    if meta is not None:
        metadata["kubeflow_notebook"] = meta
    return {"nbformat": 4, "nbformat_minor": 4, "metadata": metadata, "cells": cells}


@st.composite
def example(draw: Any) -> tuple[str, str, bytes]:
    """``(class, file name, file bytes)`` of one notebook."""
    kind = draw(st.sampled_from(CLASSES))
    cells = draw(valid_cells())
    name, meta = "nb", None
    doc_cells: list[dict[str, Any]] = []
    if kind == "names":
        names = draw(st.lists(st.sampled_from(STEP_NAMES), min_size=1, max_size=4))
        cells = cells[:2] + [f"%%kale step {n}\nv{i} = N" for i, n in enumerate(names)]
    elif kind == "magic-lines":
        lines = draw(st.lists(step_line() | pipeline_line(), min_size=1, max_size=3))
        cells += [f"{line}\nq = 1" for line in lines]
    elif kind == "parameters":
        names = draw(st.lists(st.sampled_from(PARAM_NAMES), min_size=1, max_size=3))
        values = draw(st.lists(st.sampled_from(PARAM_VALUES), min_size=len(names),
                               max_size=len(names)))
        cells.append("%%kale parameters\n" + "\n".join(f"{n} = {v}" for n, v in zip(names, values)))
        cells.append("%%kale step use_params\nw = [" + ", ".join(names) + "]")
    elif kind == "cell-sources":
        body = draw(st.lists(st.sampled_from(SOURCE_LINES) | HOSTILE, min_size=1, max_size=5))
        kind_line = draw(st.sampled_from(("%%kale step z", "%%kale functions", "%%kale imports",
                                          "%%kale metrics", "%%kale skip", "", "%%kale step z\n")))
        cells.append(kind_line + "\n" + "\n".join(body))
    elif kind == "kale-tags":
        doc_cells = [_cell(draw(st.sampled_from(SOURCE_LINES)),
                           draw(st.lists(st.sampled_from(KALE_TAGS) | HOSTILE, max_size=3)
                                | st.sampled_from([None, "step:a", [1, None], {"a": 1}])))
                     for _ in range(draw(st.integers(1, 4)))]
    elif kind == "kale-metadata":
        meta = draw(st.dictionaries(st.sampled_from(META_KEYS), JSON_VALUES, max_size=4)
                    | st.fixed_dictionaries({"pipeline_name": HOSTILE | st.sampled_from(PAYLOADS)}))
    elif kind == "file-names":
        name = draw(st.sampled_from(FILE_NAMES))
    document = _document([_cell(c) for c in cells] + doc_cells, meta)
    if kind == "notebook-json":
        return kind, name, draw(_broken(document))
    return kind, name, json.dumps(document).encode()


@st.composite
def _broken(draw: Any, document: dict[str, Any]) -> bytes:
    """``document`` with one part replaced by a random JSON value, or not JSON at all."""
    how = draw(st.sampled_from(("cells", "cell", "source", "metadata", "nbformat", "bytes", "v3")))
    if how == "bytes":
        return draw(st.binary(max_size=60))
    if how == "v3":
        return json.dumps({"nbformat": 3, "nbformat_minor": 0, "metadata": {},
                           "worksheets": [{"cells": [{"cell_type": "code", "input": "x = 1",
                                                      "language": "python"}]}]}).encode()
    value = draw(JSON_VALUES)
    if how in ("cells", "metadata", "nbformat"):
        document[how] = value
    elif how == "cell":
        document["cells"][0] = value
    else:
        document["cells"][-1]["source"] = value
    return json.dumps(document).encode()


def check_compile(folder: Path, name: str, data: bytes) -> str:
    """Compile one example written into the empty ``folder``; return what happened.

    Raises
    ------
    AssertionError
        The sentinel appeared, a file was written outside the output folder, the DSL does
        not parse, or an error was not a one-line KaleError, or called itself a bug.
    """
    path = folder / f"{name}.ipynb"
    path.write_bytes(data)
    out = folder / "out"
    try:
        compiled = api.compile_notebook(path, str(out))
    except KaleError as error:
        message = str(error)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        assert "kale-magics bug" not in message, message
        outcome = f"refused: {type(error).__name__}"
    else:
        assert Path(compiled.dsl_path).parent == out and Path(compiled.yaml_path).parent == out
        ast.parse(Path(compiled.dsl_path).read_text(encoding="utf-8"))
        outcome = "compiled"
    assert not (folder / SENTINEL).exists() and not Path(SENTINEL).exists(), "user text ran"
    assert set(os.listdir(folder)) <= {path.name, "out"}, os.listdir(folder)
    return outcome
