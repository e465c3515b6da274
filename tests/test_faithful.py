"""The faithfulness contract, case by case (issue 13): each notebook runs top to bottom with nbclient
and as a local pipeline, and the steps print the same; or the compile says why, naming the cell.

The helper is ``tests/equivalence.py``. Case numbers refer to the issue's list.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kale_magics import api
from kale_magics.errors import AnalysisError
from tests.equivalence import compare, notebook_of

pytestmark = pytest.mark.integration


def same(tmp_path: Path, *cells: str, **kwargs) -> None:
    """Assert the notebook and the pipeline print the same in every step."""
    result = compare(notebook_of(tmp_path, *cells), **kwargs)
    assert result.same_prints(), result.explain()
    assert result.same_metrics(), result.explain()


# -- case 1: received inputs win over the prelude ---------------------------------------------


def test_case01_inputs_win_over_the_functions_cell(tmp_path: Path) -> None:
    same(tmp_path, "%%kale functions\nTHRESHOLD = 0.5\ndef above(x):\n    return x > THRESHOLD",
         "%%kale step a\nTHRESHOLD = 0.8",
         "%%kale step b\nprint('threshold', THRESHOLD, above(0.6))")


# -- case 2: notebook functions and classes resolve their globals where they are called -------


def test_case02_function_reads_globals_of_the_calling_step(tmp_path: Path) -> None:
    same(tmp_path,
         "%%kale step a\nSCALE = 2\ndef scaled(x):\n    return x * SCALE\n"
         "class Meter:\n    def read(self):\n        return SCALE + OFFSET\nOFFSET = 1\nm = Meter()",
         "%%kale step c\nOFFSET = 100",
         "%%kale step b\nSCALE = 10\nprint('scaled', scaled(3))\nprint('meter', m.read())")


def test_case02_function_globals_come_from_the_nearest_step_above_the_caller(tmp_path: Path) -> None:
    same(tmp_path,
         "%%kale step a\nSCALE = 2\ndef scaled(x):\n    return x * helper(x)\n"
         "def helper(x):\n    return SCALE",
         "%%kale step a2\nSCALE = 5",
         "%%kale step b\nprint('scaled', scaled(3))\nSCALE = 7\nprint('again', scaled(3))")


# -- case 3: one object under two names stays one object --------------------------------------


def test_case03_aliases_stay_one_object(tmp_path: Path) -> None:
    same(tmp_path, "%%kale step a\ncfg = {'lr': 1}\nparams = cfg",
         "%%kale step b\ncfg['lr'] = 2\nprint('lr', params['lr'], cfg['lr'], params is cfg)")


def test_case03_alias_passed_through_another_step(tmp_path: Path) -> None:
    same(tmp_path, "%%kale step a\ncfg = {'lr': 1}",
         "%%kale step a2\nparams = cfg\nprint('same', params is cfg)",
         "%%kale step b\ncfg['lr'] = 2",
         "%%kale step c\nprint('lr', params['lr'], cfg['lr'], params is cfg)")


def test_case03_change_in_place_reaches_the_alias_in_a_later_step(tmp_path: Path) -> None:
    same(tmp_path, "%%kale step a\ncfg = {'lr': 1}\nparams = cfg",
         "%%kale step b\ncfg['lr'] = 2",
         "%%kale step c\nprint('lr', params['lr'])")


def test_case03_shared_parts_are_a_run_time_warning(tmp_path: Path) -> None:
    path = notebook_of(tmp_path, "%%kale step a\nrates = [1]\nconfig = {'rates': rates}",
                       "%%kale step b\nrates.append(2)\nprint(config['rates'])")
    status = api.run_local(path, enable_caching=False)
    warning = next(w for w in status.warnings if "share a list" in w)
    assert "`config` and `rates`" in warning and "step 'a'" in warning


# -- case 4: a parameters cell below a step that assigns the same name ------------------------


def test_case04_later_parameters_cell_wins(tmp_path: Path) -> None:
    same(tmp_path, "%%kale step a\nN = 5\nprint('a', N)", "%%kale parameters\nN = 10",
         "%%kale step b\nprint('b', N)")


# -- case 5: the kernel and the reader agree on which cells are annotated ---------------------


def test_case05_blank_first_line_is_still_an_annotation(tmp_path: Path) -> None:
    path = notebook_of(tmp_path, "%%kale step a\nx = 1\nprint('a ran')",
                       "\n%%kale step b\nprint('b ran', x)",
                       "  %%kale step c\n  print('c ran', x)")
    result = compare(path)
    assert [s.name for s in result.plan.steps] == ["a", "b", "c"]
    assert result.same_prints(), result.explain()
    assert result.notebook["b"] == ["b ran 1"] and result.notebook["c"] == ["c ran 1"]


# -- case 6: %env, %set_env and %cd run in the step; skipped magics are listed ----------------


def test_case06_env_and_cd_magics_run_in_the_step(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "here.txt").write_text("inside\n")
    mode = "fast"
    result = compare(notebook_of(
        tmp_path, f"%%kale step a\n%env MODE={mode}\n%set_env LEVEL=2\nimport os\n"
        "print('env', os.environ['MODE'], os.environ['LEVEL'])\n%cd -q sub\n"
        "print('file', open('here.txt').read().strip())\n%matplotlib inline\nx = 1"))
    assert result.same_prints(), result.explain()
    assert result.notebook["a"] == ["env: MODE=fast", "env: LEVEL=2", "env fast 2", "file inside"]
    warning = result.warning("%matplotlib inline", "step 'a'", "cell 2")
    skipped = warning.split(" skips ")[1].split("which only the notebook runs")[0]
    assert "%cd" not in skipped and "%env" not in skipped and "move it to a `%%kale skip`" in warning


# -- case 7: process state does not travel between steps: warned, naming both cells -----------


@pytest.mark.parametrize("setting, kind", [
    ("import os\nos.environ['MODE'] = 'x'", "environment variables"),
    ("%env MODE=x", "environment variables"),
    ("import random\nrandom.seed(1)", "random seeds"),
    ("import numpy as np\nnp.random.seed(1)", "random seeds"),
    ("import sys\nsys.path.append('/tmp')", "sys.path"),
    ("import pandas as pd\npd.set_option('display.max_rows', 5)", "library settings"),
    ("import warnings\nwarnings.filterwarnings('ignore')", "library settings"),
    ("import os\nos.chdir('/tmp')", "the working directory"),
])
def test_case07_process_state_set_in_a_step_is_a_warning(notebook, setting, kind) -> None:
    plan = api.read_plan(notebook("%%kale step a\n" + setting + "\nx = 1",
                                  "%%kale step b\nprint(x)"))
    warning = next(w for w in plan.warnings if kind in w)
    assert warning.startswith("cell 1 (")
    assert "step 'a' changes" in warning and "'b' (cell 2" in warning
    assert "imports or functions cell" in warning


def test_case07_process_state_in_the_prelude_or_the_last_step_is_no_warning(notebook) -> None:
    plan = api.read_plan(notebook("%%kale imports\nimport random\nrandom.seed(1)",
                                  "%%kale step a\nx = random.random()",
                                  "%%kale step b\nimport random\nrandom.seed(2)\nprint(x)"))
    assert not [w for w in plan.warnings if "random seeds" in w]


def test_case07_seed_in_a_step_differs_and_says_so(tmp_path: Path) -> None:
    result = compare(notebook_of(tmp_path, "%%kale step a\nimport random\nrandom.seed(7)\nx = 1",
                                 "%%kale step b\nprint('draw', random.random() < 2)"))
    assert result.same_prints(), result.explain()
    result.warning("random seeds", "`random.seed(...)` (line 3)", "'b' (cell 3")


# -- case 8: KFP placeholders in user text reach the step byte for byte -----------------------


def test_case08_placeholders_in_code_and_parameters_are_not_substituted(tmp_path: Path) -> None:
    same(tmp_path, "%%kale parameters\nTASK = '{{$.pipeline_task_name}}'\nPATHS = ['/kfp-workspace/{{$}}']",
         "%%kale step a\nprint('job', '{{$.pipeline_job_name}}', '{{$}}', '/kfp-workspace')\n"
         "print('params', TASK, PATHS)\nprint('braces', '{{{{x}}}}')")


def test_case08_placeholder_in_a_run_argument(tmp_path: Path) -> None:
    path = notebook_of(tmp_path, "%%kale parameters\nNAME = 'x'", "%%kale step a\nprint('name', NAME)")
    status = api.run_local(path, {"NAME": "{{$.pipeline_job_name}}"}, enable_caching=False)
    assert "name {{$.pipeline_job_name}}" in status.steps["a"].log


# -- case 9: handles are refused, naming the variable and its cell ----------------------------


def test_case09_open_file_passed_to_a_later_step_is_refused(notebook) -> None:
    with pytest.raises(AnalysisError) as info:
        api.read_plan(notebook("%%kale step a\nfh = open('out.txt', 'w')\nfh.write('data')",
                               "%%kale step b\nfh.close()"))
    message = str(info.value)
    assert message.startswith("cell 1 (")
    assert "`fh`" in message and "an open file" in message and "step 'b' reads it" in message
    assert "open it again in step 'b'" in message and "\n" not in message


def test_case09_handle_inside_a_value_fails_the_step_and_keeps_the_file(tmp_path: Path) -> None:
    path = notebook_of(tmp_path, "%%kale step a\nfh = open('out.txt', 'w')\nfh.write('data')\n"
                       "fh.flush()\nstate = {'log': fh}", "%%kale step b\nprint(state)")
    status = api.run_local(path, enable_caching=False)
    assert status.state == "FAILED"
    log = "\n".join(status.steps["a"].log)
    assert "cannot pass `state` (dict) to later steps: it is (or holds) an open file" in log
    assert (tmp_path / "out.txt").read_text() == "data"


# -- case 10: independent steps run locally in notebook order ---------------------------------


def test_case10_independent_steps_run_in_notebook_order(tmp_path: Path) -> None:
    names = ["s2", "s4", "s3", "s1", "s5"]
    path = notebook_of(tmp_path, *(f"%%kale step {n}\nprint('{n}')" for n in names))
    order: list[str] = []
    hooks = api.RunHooks(on_step=lambda s: order.append(s.name) if s.state == "RUNNING" else None)
    status = api.run_local(path, hooks=hooks, enable_caching=False)
    assert status.state == "SUCCEEDED"
    assert order == names
    # the cluster IR stays parallel: each step waits for the runtime task only
    assert all(t.get("dependentTasks", []) in ([], ["kale-runtime"]) for t in _tasks(path))


def _tasks(path: Path) -> list[dict]:
    import yaml

    compiled = api.compile_notebook(path)
    with open(compiled.yaml_path, encoding="utf-8") as f:
        return list(yaml.safe_load(f)["root"]["dag"]["tasks"].values())


# -- case 11: a conditionally assigned name passes on what the step received ------------------


def test_case11_branch_not_taken_passes_on_the_received_value(tmp_path: Path) -> None:
    same(tmp_path, "%%kale parameters\nDEBUG = False", "%%kale step a\nthreshold = 0.5",
         "%%kale step b\nif DEBUG:\n    threshold = 0.9\nfor i in range(0):\n    limit = i",
         "%%kale step c\nprint('threshold', threshold)")


# -- case 12: a parameter read inside a function of the functions cell ------------------------


def test_case12_parameter_read_by_a_prelude_function(tmp_path: Path) -> None:
    same(tmp_path, "%%kale functions\ndef scaled(x):\n    return x * FACTOR",
         "%%kale parameters\nFACTOR = 3", "%%kale step a\nprint('scaled', scaled(2))")


# -- case 13: modules are not data: the import is replayed ------------------------------------


def test_case13_submodule_import_is_replayed(tmp_path: Path) -> None:
    result = compare(notebook_of(
        tmp_path, "%%kale step a\nimport email.mime.text\nimport os.path as osp\nx = 1",
        "%%kale step b\nprint(email.mime.text.MIMEText('hi')['Content-Type'], osp.sep)"))
    assert result.same_prints(), result.explain()
    step = result.plan.step("b")
    assert not step.inputs
    assert [statement for _, statement in step.imports] == ["import email.mime.text",
                                                             "import os.path as osp"]


# -- case 14: star imports bind the module's public names -------------------------------------


def test_case14_star_import_names_are_known(tmp_path: Path) -> None:
    result = compare(notebook_of(tmp_path, "%%kale imports\nfrom math import *",
                                 "%%kale step a\nprint('root', sqrt(16), floor(pi))"))
    assert result.same_prints(), result.explain()


# -- case 15: a skipped cell assigning what a later step reads --------------------------------


def test_case15_skipped_assignment_is_warned_naming_both_cells(tmp_path: Path) -> None:
    result = compare(notebook_of(tmp_path, "%%kale step a\nx = 1", "%%kale skip\nx = 2",
                                 "%%kale step b\nprint('x', x)"))
    warning = result.warning("step 'b' reads `x`", "cell 3 ('x = 2')", "step 'a' (cell 2")
    assert "remove `%%kale skip`" in warning
    assert result.notebook["b"] == ["x 2"] and "x 1" in result.pipeline["b"]


# -- case 16: a cached step that reads files --------------------------------------------------


def test_case16_cached_step_reading_a_file_says_so(tmp_path: Path) -> None:
    from kale_magics.views.text import run_summary

    data = tmp_path / "data.txt"
    data.write_text("1\n")
    path = notebook_of(tmp_path, "%%kale step load\nvalue = int(open('data.txt').read())",
                       "%%kale step show\nprint('value', value)")
    root = tmp_path / "root"
    assert api.run_local(path, pipeline_root=str(root)).state == "SUCCEEDED"
    data.write_text("2\n")
    status = api.run_local(path, pipeline_root=str(root))
    assert status.steps["load"].cached
    summary = run_summary(status)
    line = next(line for line in summary.splitlines() if "from the cache" in line)
    assert "load" in line and "open(...)" in line and "--no-cache" in line and "--from load" in line


# -- cases found beyond the list ------------------------------------------------------


def test_object_changed_by_a_method_in_a_later_step(tmp_path: Path) -> None:
    """`model.fit(X, y)` in its own step: the next step sees the fitted model, as in the kernel."""
    same(tmp_path, "%%kale step make\nclass Model:\n    def __init__(self):\n        self.w = 0\n"
         "    def fit(self, k):\n        self.w = k\nmodel = Model()\nitems = [1]",
         "%%kale step train\nmodel.fit(3)\nitems.append(2)",
         "%%kale step use\nprint('w', model.w, items)")


def test_prelude_class_instances_are_instances_of_the_steps_class(tmp_path: Path) -> None:
    same(tmp_path, "%%kale functions\nclass Point:\n    def __init__(self, x):\n        self.x = x",
         "%%kale step a\np = Point(2)",
         "%%kale step b\nprint('point', isinstance(p, Point), type(p) is Point, p.x)")


def test_star_import_in_a_step_is_replayed_in_a_later_one(tmp_path: Path) -> None:
    result = compare(notebook_of(tmp_path, "%%kale step a\nfrom math import *\nx = 1",
                                 "%%kale step b\nprint('root', sqrt(x + 15))"))
    assert result.same_prints(), result.explain()
    assert [s for _, s in result.plan.step("b").imports] == ["from math import sqrt"]


def test_module_inside_a_value_is_imported_again_with_its_submodules(tmp_path: Path) -> None:
    same(tmp_path, "%%kale step a\nimport email.mime.text\nmods = {'email': email}",
         "%%kale step b\nprint(mods['email'].mime.text.MIMEText('x')['Content-Type'])")


def test_expanded_names_in_shell_lines_are_passed(tmp_path: Path) -> None:
    same(tmp_path, "%%kale step a\nword = 'hello'\nfolder = '.'",
         "%%kale step b\n!echo {word.upper()} $word\nfiles = !ls {folder}\nprint('listed', 'nb.ipynb' in files)")


def test_function_returned_by_a_notebook_function_reads_the_callers_globals(tmp_path: Path) -> None:
    same(tmp_path, "%%kale step a\nSCALE = 1\ndef outer():\n    def inner():\n        return SCALE\n"
         "    return inner\nh = outer()", "%%kale step a2\nSCALE = 3", "%%kale step b\nprint('h', h())")


def test_module_written_by_an_earlier_step_imports_in_a_later_one(tmp_path: Path) -> None:
    same(tmp_path, "%%kale step a\n%%writefile helper_mod.py\nVALUE = 7",
         "%%kale step b\nimport helper_mod\nprint('value', helper_mod.VALUE)",
         "%%kale step c\nprint('again', helper_mod.VALUE + 1)")
