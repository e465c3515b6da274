"""A corpus of malformed inputs: magic lines, notebooks and Kale metadata.

Each case names what is wrong, the typed error it must raise, and fragments
the message must contain (the cell or option it names, and the fix). The
corpus is used by tests/test_corpus.py through the CLI and the magics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import nbformat


@dataclass(frozen=True)
class Case:
    """One malformed input.

    Attributes
    ----------
    name:
        What is wrong, as a test id.
    error:
        The error class name (``AnnotationError``, ``AnalysisError``, ``NotebookError``).
    fragments:
        Text the message must contain: the cell or option, and the fix.
    cells:
        Code cell sources of the notebook (a string starting ``#md `` is markdown).
    raw:
        The notebook file's exact text, when the case is about the file itself.
    kale:
        ``(source, tags)`` cells and ``kubeflow_notebook`` metadata for Kale cases.
    """

    name: str
    error: str
    fragments: tuple[str, ...]
    cells: tuple[str, ...] = ()
    raw: str | None = None
    kale: tuple[tuple[tuple[str, tuple[str, ...]], ...], dict] | None = None


def step(line: str, body: str = "x = 1") -> tuple[str, ...]:
    """A one-cell notebook whose magic line is ``line``."""
    return (f"{line}\n{body}",)


MAGIC_LINES = [
    ("empty kind", "%%kale", "needs a kind"),
    ("unknown kind", "%%kale stepp a", "unknown annotation kind 'stepp' (did you mean 'step'?); use one of"),
    ("kind in capitals", "%%kale STEP a", "unknown annotation kind 'STEP' (did you mean 'step'?)"),
    ("no step name", "%%kale step", "required: name"),
    ("step name is a keyword", "%%kale step class", "invalid step name 'class'"),
    ("step name is a soft keyword", "%%kale step match", "invalid step name 'match'"),
    ("step name reserved", "%%kale step pipeline", "reserved"),
    ("step name reserved prefix", "%%kale step kale_train", "reserved"),
    ("step name too long", "%%kale step " + "s" * 64, "1-63 lowercase"),
    ("step name with capitals", "%%kale step Train", "for example 'train'"),
    ("step name with dash", "%%kale step train-model", "for example 'train_model'"),
    ("step name starts with digit", "%%kale step 2nd", "invalid step name '2nd'"),
    ("step name unicode", "%%kale step trainé", "invalid step name 'trainé'"),
    ("step name emoji", "%%kale step 🚀", "invalid step name"),
    ("two step names", "%%kale step a b", "unrecognized arguments: b"),
    ("unknown option", "%%kale step a --before b", "unrecognized arguments: --before b"),
    ("after without value", "%%kale step a --after", "expected at least one argument"),
    ("after itself", "%%kale step a --after a", "cannot run --after itself"),
    ("after invalid name", "%%kale step a --after B", "invalid --after step 'B'"),
    ("inputs not identifiers", "%%kale step a --inputs 1x", "--inputs '1x' is not a Python variable"),
    ("outputs keyword", "%%kale step a --outputs for", "--outputs 'for' is not a Python variable"),
    ("unclosed quote", "%%kale step a --env 'A=1", "close the quote"),
    ("imports with argument", "%%kale imports now", "takes no arguments"),
    ("skip with argument", "%%kale skip a", "takes no arguments"),
    ("cpu bad unit", "%%kale step a --cpu 2cores", "--cpu '2cores' is not valid; for example --cpu 2"),
    ("cpu negative", "%%kale step a --cpu -1", "--cpu '-1' is not valid"),
    ("memory bad unit", "%%kale step a --memory 4GB", "for example --memory 4Gi"),
    ("memory limit words", "%%kale step a --memory-limit lots", "--memory-limit 'lots'"),
    ("gpu not a number", "%%kale step a --gpu two", "for example --gpu 1"),
    ("retries negative", "%%kale step a --retries -1", "--retries '-1' is not valid"),
    ("backoff no unit", "%%kale step a --retries 1 --backoff 30", "for example --backoff 30m"),
    ("timeout days", "%%kale step a --timeout 2d", "--timeout '2d' is not valid"),
    ("env without value", "%%kale step a --env NAME", "for example --env LOG_LEVEL=debug"),
    ("env bad name", "%%kale step a --env 1A=b", "--env '1A=b' is not valid"),
    ("secret two parts", "%%kale step a --secret name:key", "--secret db-creds:password:DB_PASSWORD"),
    ("volume relative", "%%kale step a --volume data:relative", "absolute path"),
    ("volume bad pvc", "%%kale step a --volume Data_1:/data", "--volume 'Data_1:/data' is not valid"),
    ("node selector no value", "%%kale step a --node-selector pool", "--node-selector"),
    ("toleration bad effect", "%%kale step a --toleration k=v:Never", "the effect is one of"),
    ("package invalid", "%%kale step a --packages '==1.0'", "--packages '==1.0' is not valid"),
    ("label no value", "%%kale step a --label team", "for example --label team=ml"),
]

PIPELINE_LINES = [
    ("pipeline name capitals", "%kale pipeline --name My_Pipe", "invalid pipeline name 'My_Pipe'"),
    ("pipeline unknown option", "%kale pipeline --colour red", "unrecognized arguments: --colour"),
    ("pipeline bad memory default", "%kale pipeline --memory 1XB", "--memory '1XB' is not valid"),
]

NOTEBOOK_CASES = [
    Case("no steps", "AnalysisError", ("no `%%kale step NAME` cell", "annotate"),
         cells=("x = 1", "#md text")),
    Case("no code cells", "AnalysisError", ("no `%%kale step NAME` cell",), cells=("#md only",)),
    Case("same step name makes a cycle", "AnalysisError",
         ("cell 1", "cell 3", "cycle", "give the later cells a step name of their own"),
         cells=("%%kale step a\nx = 1", "%%kale step b\ny = x", "%%kale step a\nz = y")),
    Case("after unknown step", "AnalysisError", ("--after 'loda'", "did you mean 'load'"),
         cells=("%%kale step load\nx = 1", "%%kale step b --after loda\ny = x")),
    Case("after cycle", "AnalysisError", ("cycle", "->", "remove one of the --after edges"),
         cells=("%%kale step a --after b\nx = 1", "%%kale step b --after a\ny = 2")),
    Case("three step cycle", "AnalysisError", ("cycle",),
         cells=("%%kale step a --after c\nx = 1", "%%kale step b --after a\ny = 2",
                "%%kale step c --after b\nz = 3")),
    Case("empty step", "AnalysisError", ("reads `x`",),
         cells=("%%kale step a\n", "%%kale step b\ny = x")),
    Case("name from nowhere", "AnalysisError", ("cell 1", "reads `data`", "assign it in an earlier step"),
         cells=("%%kale step a\nprint(data)",)),
    Case("name from a later step", "AnalysisError", ("comes later", "move that assignment above"),
         cells=("%%kale step a\nprint(x)", "%%kale step b\nx = 1")),
    Case("name only in skip cell", "AnalysisError", ("reads `x`",),
         cells=("%%kale skip\nx = 1", "%%kale step a\ny = x")),
    Case("parameters with a call", "AnalysisError", ("line 2 `N = int('3')`", "literal"),
         cells=("%%kale parameters\nN = int('3')", "%%kale step a\nx = N")),
    Case("parameters with an expression", "AnalysisError", ("`N` is not a literal",),
         cells=("%%kale parameters\nN = 1 + 2", "%%kale step a\nx = N")),
    Case("parameters print", "AnalysisError", ("only `NAME = literal`",),
         cells=("%%kale parameters\nprint('hi')", "%%kale step a\nx = 1")),
    Case("parameters tuple", "AnalysisError", ("`T` is tuple",),
         cells=("%%kale parameters\nT = (1, 2)", "%%kale step a\nx = T")),
    Case("parameters None", "AnalysisError", ("`N` is NoneType",),
         cells=("%%kale parameters\nN = None", "%%kale step a\nx = N")),
    Case("parameters huge int", "AnalysisError", ("larger than 2**53", "make it a string"),
         cells=("%%kale parameters\nN = 99999999999999999999", "%%kale step a\nx = N")),
    Case("parameters dict int keys", "AnalysisError", ("needs string keys",),
         cells=("%%kale parameters\nD = {1: 'a'}", "%%kale step a\nx = D")),
    Case("parameters syntax error", "AnalysisError", ("SyntaxError in the parameters cell",),
         cells=("%%kale parameters\nN = ", "%%kale step a\nx = N")),
    Case("metrics undefined name", "AnalysisError", ("metric `ghost` reads no variable",),
         cells=("%%kale step a\nx = 1", "%%kale metrics\nghost")),
    Case("metrics not an expression", "AnalysisError", ("is not a Python expression",),
         cells=("%%kale step a\nx = 1", "%%kale metrics\nx = 2")),
    Case("step syntax error", "AnalysisError", ("cell 1", "SyntaxError at line 3", "fix the cell"),
         cells=("%%kale step a\nx = 1\nif x\n    y = 2",)),
    Case("continuation syntax error", "AnalysisError", ("cell 2", "SyntaxError"),
         cells=("%%kale step a\nx = 1", "def f(:\n    pass")),
    Case("bad magic in second cell", "AnnotationError", ("cell 2:", "invalid step name 'B'"),
         cells=("%%kale step a\nx = 1", "%%kale step B\ny = x")),
    Case("bad pipeline line in a cell", "AnnotationError", ("cell 1:", "unrecognized arguments"),
         cells=("%kale pipeline --nme x", "%%kale step a\nx = 1")),
    Case("param clashes with artifact", "CompileError", ("rename the parameter",),
         cells=("%%kale parameters\nin_x = 1", "%%kale step a\nx = in_x", "%%kale step b\ny = x + in_x")),
    Case("invalid json", "NotebookError", ("is not a valid Jupyter notebook", "re-save"),
         raw="{not json"),
    Case("empty file", "NotebookError", ("is not a valid Jupyter notebook",), raw=""),
    Case("json but not a notebook", "NotebookError", ("is not a valid Jupyter notebook",),
         raw=json.dumps({"hello": "world"})),
    Case("nbformat v3 without steps", "AnalysisError", ("no `%%kale step NAME` cell",),
         raw=json.dumps({"nbformat": 3, "nbformat_minor": 0, "metadata": {}, "worksheets": [
             {"cells": [{"cell_type": "code", "input": "x = 1", "language": "python",
                         "outputs": []}]}]})),
    Case("binary garbage", "NotebookError", ("is not a valid Jupyter notebook",), raw="\x00\x01\x02"),
    Case("kale cell with both", "AnnotationError", ("cell 1", "both a `%%kale` line and Kale tags"),
         kale=((("%%kale step a\nx = 1", ("step:a",)),), {})),
    Case("kale step name underscore", "AnnotationError", ("cell 1: Kale step invalid step name",),
         kale=((("x = 1", ("step:_x",)),), {})),
    Case("kale bad limit", "AnnotationError", ("Kale limit 'disk' is not supported",),
         kale=((("x = 1", ("step:a", "limit:disk:1Gi")),), {})),
    Case("kale bad limit value", "AnnotationError", ("limit:memory 'big' is not valid",),
         kale=((("x = 1", ("step:a", "limit:memory:big")),), {})),
    Case("kale metrics not print", "AnnotationError", ("`print(name)` lines",),
         kale=((("x = 1", ("step:a",)), ("x", ("pipeline-metrics",))), {})),
    Case("kale bad secret", "AnnotationError", ("--secret db-creds:password:DB_PASSWORD",),
         kale=((("x = 1", ("step:a", "secret:only:two")),), {})),
    Case("kale pipeline name wrong type", "AnnotationError", ("pipeline_name",),
         kale=((("x = 1", ("step:a",)),), {"pipeline_name": 42, "experiment_name": "e"})),
    Case("kale volumes wrong type", "AnnotationError", ("volumes",),
         kale=((("x = 1", ("step:a",)),), {"pipeline_name": "p", "volumes": "data"})),
    Case("kale steps_defaults bad tag", "AnnotationError", ("limit:memory 'x' is not valid",),
         kale=((("x = 1", ("step:a",)),), {"pipeline_name": "p", "steps_defaults": ["limit:memory:x"]})),
]


def notebook_text(case: Case) -> str:
    """The notebook file's text for ``case``."""
    if case.raw is not None:
        return case.raw
    nb = nbformat.v4.new_notebook()
    if case.kale is not None:
        cells, meta = case.kale
        for source, tags in cells:
            cell = nbformat.v4.new_code_cell(source)
            cell.metadata["tags"] = list(tags)
            nb.cells.append(cell)
        if meta:
            nb.metadata["kubeflow_notebook"] = meta
    for source in case.cells:
        nb.cells.append(nbformat.v4.new_markdown_cell(source[4:]) if source.startswith("#md ")
                        else nbformat.v4.new_code_cell(source))
    return nbformat.writes(nb)


def all_cases() -> list[Case]:
    """Every case: magic lines and pipeline lines (as one-cell notebooks) and notebooks."""
    cases = [Case(name, "AnnotationError", ("cell 1:", fragment), cells=step(line))
             for name, line, fragment in MAGIC_LINES]
    cases += [Case(name, "AnnotationError", ("cell 1:", fragment),
                   cells=(line, "%%kale step a\nx = 1")) for name, line, fragment in PIPELINE_LINES]
    return cases + NOTEBOOK_CASES

