"""The parts behind the faithfulness contract, one at a time and in-process (fast).

``tests/test_faithful.py`` proves each rule end to end against nbclient; these
tests pin the analysis, runtime and code-generation pieces each rule rests on.
"""

from __future__ import annotations

import io
import json
import os
import socket
import sqlite3
import threading
import types
from pathlib import Path

import pytest

from kale_magics.analysis.effects import cell_effects, import_aliases
from kale_magics.analysis.names import python_source, scan, scan_blocks
from kale_magics.analysis.star import StarImports
from kale_magics.codegen.literals import literal, string_literal, text_literal
from kale_magics.codegen.parameters import kfp_value
from kale_magics.model import Parameter
from kale_magics.notebook.annotations import cell_magic
from kale_magics.runtime import marshal, pickling
from kale_magics.runtime.shell import StepShell
from kale_magics.runtime.step import escape_text, unescape_text

# -- names: what a step needs beyond its plain reads --------------------------------------------


def test_names_bound_on_some_paths_are_conditional() -> None:
    use = scan("if flag:\n    a = 1\nelse:\n    a = 2\nif flag:\n    b = 1\nfor i in x:\n    c = i\n"
               "try:\n    d = f()\nexcept E:\n    d = 0\nwith g() as h:\n    e = 1\n")
    assert set(use.conditional) == {"b", "c", "i"}
    assert {"a", "d", "e", "h"} <= set(use.writes) - set(use.conditional)


def test_function_globals_are_read_by_its_callers() -> None:
    producer = scan("SCALE = 2\ndef f(x):\n    return x * SCALE + g(x)\nclass C:\n"
                    "    def m(self):\n        return OFFSET\nobj = C()\nn = 1\n")
    assert producer.globals_of["f"] == ("SCALE", "g")
    assert producer.globals_of["obj"] == ("OFFSET",) and "n" not in producer.globals_of
    consumer = scan_blocks(["y = f(1)\nSCALE = 3\nz = f(2)\ndef h():\n    return f(3)\n"],
                           callees={"f": ("SCALE", "g"), "g": ("K",)})
    assert consumer.reads == ("f",)
    assert consumer.soft_reads == ("SCALE", "g", "K")  # SCALE is read by the first call


def test_names_in_expanded_command_lines_are_soft_reads() -> None:
    use = scan(python_source("!ls {DATA_DIR} $HOME\n%env MODE=$mode\n%time f(x)\n%%capture out"))
    assert set(use.soft_reads) == {"DATA_DIR", "HOME", "mode"}
    source = python_source("%%capture out\nprint(1)")
    assert scan(source).writes == ("out",)


def test_top_level_imports_are_replayable_others_are_not() -> None:
    use = scan("import email.mime.text\nimport email.utils\nimport numpy as np\n"
               "from os import path as p\ntry:\n    import ujson as json\nexcept ImportError:\n"
               "    import json\nimport sys\nsys = 3\n")
    assert use.imported == {"email": ("import email.mime.text", "import email.utils"),
                            "np": ("import numpy as np",), "p": ("from os import path as p",)}


def test_star_imports_bind_the_module_names(tmp_path: Path) -> None:
    star = StarImports(str(tmp_path))
    use = scan_blocks(["from math import *\nfrom no_such_module_xyz import *\ny = sqrt(pi)"],
                      star_names=star)
    assert use.reads == () and use.imported["sqrt"] == ("from math import sqrt",)
    assert len(star.warnings) == 1 and "no_such_module_xyz" in star.warnings[0]


def test_aliases_and_changes_in_place() -> None:
    use = scan("params = cfg\ncfg['lr'] = 2\nx = 1\nx.a = 2\n")
    assert use.aliases == {"params": "cfg"}
    assert use.changed_in_place == ("cfg",)


# -- effects: process state, magics, files, handles ----------------------------------------------


def effects_of(code: str):
    import ast

    tree = ast.parse(python_source(code))
    return cell_effects(tree, import_aliases([tree]))


def test_process_state_is_found_through_import_aliases() -> None:
    found = effects_of("import numpy as np\nfrom random import seed\nimport os\n"
                       "np.random.seed(0)\nseed(1)\nos.environ['A'] = '1'\n%env B=2\n%cd /tmp\n"
                       "import pandas as pd\npd.options.display.max_rows = 3\nx = np.zeros(3)")
    assert [(e.what, e.kind) for e in found.state] == [
        ("numpy.random.seed(...)", "random seeds"), ("random.seed(...)", "random seeds"),
        ("os.environ['A'] = ...", "environment variables"), ("%env B=2", "environment variables"),
        ("%cd /tmp", "the working directory"), ("pd.options.display.max_rows = ...", "library settings")]


def test_skipped_magics_files_and_handles() -> None:
    found = effects_of("%matplotlib inline\n%load_ext kale_magics\n%time x = 1\n"
                       "fh = open('a')\nwith sqlite3.connect('db') as conn:\n    pass\n"
                       "df = pd.read_csv('x.csv')\n!ls")
    assert [e.what for e in found.skipped_magics] == ["%matplotlib inline"]
    assert {e.what for e in found.reads_outside} >= {"open(...)", "pd.read_csv(...)",
                                                      "a shell command"}
    assert {n: e.kind for n, e in found.handles.items()} == {"fh": "an open file",
                                                             "conn": "a database connection"}


# -- the runtime: pickling into a step -----------------------------------------------------------


def notebook_function(namespace: dict) -> types.FunctionType:
    exec("SCALE = 2\ndef scaled(x):\n    return x * SCALE\n", namespace)
    return namespace["scaled"]


def test_loaded_function_resolves_globals_in_the_loading_namespace(tmp_path: Path) -> None:
    producer = {"__name__": "__main__"}
    marshal.save(notebook_function(producer), str(tmp_path / "f"), "scaled")
    consumer = {"__name__": "__main__", "SCALE": 10}
    loaded = marshal.load(str(tmp_path / "f"), "scaled", consumer)
    assert loaded.__globals__ is consumer and loaded(3) == 30
    empty = {"__name__": "__main__"}
    assert marshal.load(str(tmp_path / "f"), "scaled", empty)(3) == 6  # the saved value fills in
    assert empty["SCALE"] == 2
    assert marshal.load(str(tmp_path / "f"), "scaled")(3) == 6  # outside a step: as saved


def test_prelude_classes_travel_by_reference(tmp_path: Path) -> None:
    code = "class Point:\n    def __init__(self, x):\n        self.x = x\n"
    producer, consumer = {"__name__": "__main__"}, {"__name__": "__main__"}
    exec(code, producer)
    exec(code, consumer)
    marshal.save([producer["Point"](3)], str(tmp_path / "p"), "points", prelude=dict(producer))
    loaded = marshal.load(str(tmp_path / "p"), "points", consumer, prelude=dict(consumer))
    assert type(loaded[0]) is consumer["Point"] and loaded[0].x == 3


def test_modules_travel_as_imports_with_their_loaded_submodules(tmp_path: Path) -> None:
    import email.mime.text

    buffer = io.BytesIO()
    pickling.dump({"m": email}, buffer)
    assert b"email.mime.text" in buffer.getvalue()
    assert pickling.load(io.BytesIO(buffer.getvalue()), {})["m"] is email


@pytest.mark.parametrize("make, kind", [
    (lambda p: open(p, "w"), "an open file"),
    (lambda p: socket.socket(), "a socket"),
    (lambda p: sqlite3.connect(":memory:"), "a connection"),
    (lambda p: _held_lock(), "a held lock"),
])
def test_handles_are_refused_and_leave_files_alone(tmp_path: Path, make, kind) -> None:
    target = tmp_path / "data.txt"
    target.write_text("kept")
    handle = make(str(tmp_path / "other.txt"))
    try:
        with pytest.raises(marshal.MarshalError) as info:
            marshal.save({"h": handle}, str(tmp_path / "out"), "state")
    finally:
        getattr(handle, "close", lambda: None)()
    assert f"cannot pass `state` (dict) to later steps: it is (or holds) {kind}" in str(info.value)
    assert not (tmp_path / "out").exists() and target.read_text() == "kept"


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


# -- code generation: KFP placeholders never reach KFP -------------------------------------------


@pytest.mark.parametrize("text", ["{{$}}", "x{{$.pipeline_job_name}}y", "{{{{", "/kfp-workspace/a",
                                  "plain 'quoted' \\ text", ""])
def test_literals_hold_no_placeholder_and_evaluate_to_the_text(text: str) -> None:
    for rendered in (string_literal(text), text_literal(text + "\n" + text, "    "),
                     literal({text: [text, (text,)]})):
        assert "{{" not in rendered and "/kfp-workspace" not in rendered
    assert eval(string_literal(text)) == text
    assert eval(text_literal(text + "\n" + text, "    ")) == text + "\n" + text
    assert eval(literal({text: [text, (text,)]})) == {text: [text, (text,)]}


@pytest.mark.parametrize("value", ["{{$.pipeline_task_name}}", "/kfp-workspace", "plain",
                                   "kale-magics-escaped-text:looks escaped"])
def test_str_parameter_values_round_trip(value: str) -> None:
    carried = kfp_value(Parameter("P", value, "str"), value)
    assert "{{" not in carried and "/kfp-workspace" not in carried
    assert unescape_text(carried) == value
    assert (carried == value) == (escape_text(value) == value)


def test_json_parameter_values_round_trip() -> None:
    value = {"a{{": ["{{$}}", "/kfp-workspace", {"b": "{{{"}]}
    carried = kfp_value(Parameter("P", value, "dict"), value)
    assert "{{" not in carried and "/kfp-workspace" not in carried
    assert json.loads(carried) == value


# -- the shell of a step: magics as IPython runs them --------------------------------------------


def test_env_set_env_cd_and_expansion(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    shell = StepShell({"where": "sub", "value": "v1"})
    monkeypatch.setenv("KALE_T_A", "")
    shell.run_line_magic("env", "KALE_T_A=$value")
    shell.run_line_magic("set_env", "KALE_T_B {value}2")
    assert (os.environ["KALE_T_A"], os.environ["KALE_T_B"]) == ("v1", "v12")
    assert shell.run_line_magic("env", "KALE_T_A") == "v1"
    shell.run_line_magic("cd", "{where}")
    assert os.getcwd() == str(tmp_path / "sub")
    shell.run_line_magic("cd", "-q -")
    assert os.getcwd() == str(tmp_path)
    assert capsys.readouterr().out == f"env: KALE_T_A=v1\nenv: KALE_T_B=v12\n{tmp_path / 'sub'}\n"
    monkeypatch.delenv("KALE_T_B")


def test_capture_keeps_output_under_its_name(capsys) -> None:
    namespace: dict = {}
    StepShell(namespace).run_cell_magic("capture", "out", "print('hidden')")
    assert namespace["out"].stdout == "hidden\n" and capsys.readouterr().out == ""


# -- the one grammar: IPython's rules for a cell magic -------------------------------------------


@pytest.mark.parametrize("source, expected", [
    ("%%kale step a\nx = 1", ("step a", "\nx = 1")),
    ("\n\n%%kale step b\nx = 1", ("step b", "\n\n\nx = 1")),
    ("    %%kale step c\n    x = 1", ("step c", "\nx = 1")),
    (">>> %%kale step d\n>>> x = 1", ("step d", "\nx = 1")),
    ("# comment\n%%kale step e", None),
    ("%%kalex step f", None),
    ("x = '%%kale step g'", None),
])
def test_cell_magic_follows_ipython(source: str, expected) -> None:
    assert cell_magic(source) == expected
    from IPython.core.inputtransformer2 import TransformerManager

    ran = TransformerManager().transform_cell(source)
    assert ("run_cell_magic('kale'" in ran) == (expected is not None)
