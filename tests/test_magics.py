"""The %kale / %%kale magics in an in-process IPython shell that re-raises nothing silently."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from kale_magics import api
from kale_magics.magics import STEP_MIME
from tests.conftest import write_notebook


@pytest.fixture
def shell():
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "kale_magics")  # loading makes a fresh session
    yield ip
    ip.run_line_magic("unload_ext", "kale_magics")
    ip.user_ns.pop("__vsc_ipynb_file__", None)


def kale(ip: InteractiveShell) -> api.NotebookSession:
    """The kernel's session, as the magics and a panel see it."""
    return api.NotebookSession.of(ip)


def run(ip: InteractiveShell, cell: str):
    result = ip.run_cell(cell)
    if result.error_before_exec or result.error_in_exec:
        raise result.error_before_exec or result.error_in_exec
    return result


# -- the cell magic runs the cell faithfully -------------------------------------------------

def test_body_runs_in_user_namespace_and_returns_last_value(shell) -> None:
    result = run(shell, "%%kale step a\nx = 20\nx + 1")
    assert result.result == 21 and shell.user_ns["x"] == 20
    assert shell.user_ns["_"] == 21


@pytest.mark.parametrize("kind", ["imports", "functions", "parameters", "metrics", "skip"])
def test_every_kind_runs_its_body(shell, kind) -> None:
    run(shell, f"%%kale {kind}\nran_{kind} = True")
    assert shell.user_ns[f"ran_{kind}"] is True


def test_statements_return_nothing(shell) -> None:
    assert run(shell, "%%kale step a\ny = 1").result is None


def test_ipython_syntax_in_body(shell) -> None:
    run(shell, "%%kale step a\nout = !echo hi\n%time z = 5")
    assert list(shell.user_ns["out"]) == ["hi"] and shell.user_ns["z"] == 5


def test_exception_points_at_the_cells_own_line(shell) -> None:
    result = shell.run_cell("%%kale step a\nok = 1\n\n1 / 0")
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    tb = result.error_in_exec.__traceback__
    while tb.tb_next:
        tb = tb.tb_next
    assert tb.tb_lineno == 4  # line 4 of the cell, the magic line being line 1


@pytest.mark.parametrize("line", ["stepp a", "step Bad", "step a --nope", "step b --after ghost"])
def test_bad_line_raises_usage_error_and_body_does_not_run(shell, line) -> None:
    shell.user_ns.pop("ran", None)
    with pytest.raises(UsageError):
        shell.run_cell_magic("kale", line, "ran = True")
    assert "ran" not in shell.user_ns


def test_near_misses_get_did_you_mean(shell) -> None:
    with pytest.raises(UsageError, match=r"unknown annotation kind 'stpe' \(did you mean 'step'\?\)"):
        shell.run_cell_magic("kale", "stpe a", "x = 1")
    with pytest.raises(UsageError, match=r"unknown action 'pannel' \(did you mean 'panel'\?\)"):
        shell.run_line_magic("kale", "pannel")
    with pytest.raises(UsageError) as far:
        shell.run_line_magic("kale", "frobnicate")
    assert "did you mean" not in str(far.value)


def test_errors_are_the_message_without_our_class_name(shell, tmp_path) -> None:
    with pytest.raises(UsageError) as bad_line:
        shell.run_cell_magic("kale", "step Bad", "x = 1")
    path = write_notebook(tmp_path / "nb.ipynb", ("%%kale step a\ny = missing_name",))
    with pytest.raises(UsageError) as bad_plan:
        shell.run_line_magic("kale", f"show --notebook {path}")
    for raised in (bad_line, bad_plan):
        assert not str(raised.value).split(":")[0].endswith("Error"), str(raised.value)
    assert str(bad_line.value).startswith("invalid step name 'Bad'")
    assert "missing_name" in str(bad_plan.value)


def test_step_cell_shows_a_compact_line_with_live_types(shell) -> None:
    with capture_output() as captured:
        run(shell, "%%kale step load\nrows = [1, 2, 3]\nunused = 5")
        run(shell, "%%kale step total --after load\nsize = len(rows)\nlabel = 'n'")
    data = captured.outputs[1].data
    assert data["text/plain"] == "step total  <- rows: list len 3 (load)"  # no reader of size yet
    assert data[STEP_MIME] == {"kind": "step", "name": "total", "after": ["load"],
                               "inputs": {"rows": "load"}, "outputs": ["size", "label"],
                               "types": {"rows": "list", "size": "int", "label": "str"},
                               "artifacts": {"size": "Artifact", "label": "Artifact"}}
    html = data["text/html"]
    assert "kale-step-line" in html and "data-name='rows'" in html and "\u2190 load" in html
    assert "data-name='size'" not in html and ">label<" not in html  # bound; no step reads them
    # the line under `load` is updated in place once a step reads from it
    update = captured.outputs[2]
    assert update.data["text/plain"] == "step load  -> rows: list len 3 (to total)"
    assert "unused" not in update.data["text/html"] and "\u2192 total" in update.data["text/html"]
    assert update.transient["display_id"] == captured.outputs[0].transient["display_id"]
    assert update.data[STEP_MIME] == captured.outputs[0].data[STEP_MIME]  # the same record


def test_registry_keyed_by_cell_id(shell) -> None:
    class Kernel:
        cell = "cell-1"

        def get_parent(self):
            return {"metadata": {"cellId": self.cell}}

    shell.kernel = Kernel()
    try:
        run(shell, "%%kale step a\nx = 1")
        run(shell, "%%kale step a\nx = 2")  # the same cell run again replaces its entry
        shell.kernel.cell = "cell-2"
        run(shell, "%%kale skip\nprint(x)")
    finally:
        del shell.kernel
    cells = kale(shell).registry.cells()
    assert [(c.key, c.annotation.kind) for c in cells] == [("cell-1", "step"), ("cell-2", "skip")]
    assert cells[0].source.strip() == "x = 2"


def test_loading_twice_is_harmless_and_help_lists_the_grammar(shell) -> None:
    shell.run_line_magic("load_ext", "kale_magics")
    shell.run_line_magic("reload_ext", "kale_magics")
    doc = shell.find_cell_magic("kale").__doc__
    for fragment in ("--after STEP", "%kale pipeline", "imports | functions", "%kale run",
                     "%kale check", "--kale-tags"):
        assert fragment in doc


# -- line magics --------------------------------------------------------------------------------

SMALL = ("%load_ext kale_magics",
         "%%kale parameters\nN = 3",
         "%%kale step make\nitems = list(range(N))",
         "%%kale step total\nsize = sum(items)",
         "%%kale metrics\nsize")


@pytest.fixture
def small(tmp_path: Path) -> Path:
    return write_notebook(tmp_path / "small.ipynb", SMALL)


def run_notebook_cells(ip: InteractiveShell, path: Path) -> None:
    for cell in nbformat.read(path, as_version=4).cells:
        run(ip, cell.source)


def test_pipeline_line_magic(shell) -> None:
    run(shell, "%kale pipeline --name demo --experiment e --notebook x.ipynb")
    assert (kale(shell).settings.name, kale(shell).settings.notebook) == ("demo", "x.ipynb")
    with pytest.raises(UsageError, match="invalid pipeline name"):
        shell.run_line_magic("kale", "pipeline --name Bad_Name")
    with pytest.raises(UsageError, match="unknown action 'frobnicate'"):
        shell.run_line_magic("kale", "frobnicate")
    with pytest.raises(UsageError, match="unrecognized arguments: --bogus"):
        shell.run_line_magic("kale", "show --bogus")


def test_show_text_and_html_with_live_types(shell, small) -> None:
    run_notebook_cells(shell, small)
    with capture_output() as captured:
        shell.run_line_magic("kale", f"show --notebook {small}")
    data = captured.outputs[0].data
    assert "step total  cells 4   after: make" in data["text/plain"]
    assert "<svg" in data["text/html"] and "items: list len 3 (make)" in data["text/html"]


def test_check_reports_formats_and_unpicklable_values(shell, small) -> None:
    run_notebook_cells(shell, small)
    with capture_output() as captured:
        shell.run_line_magic("kale", f"check --notebook {small}")
    assert "ok    items" in captured.outputs[0].data["text/plain"]
    shell.user_ns["items"] = (i for i in range(3))
    with capture_output() as captured, pytest.raises(UsageError, match="cannot be passed"):
        shell.run_line_magic("kale", f"check --notebook {small}")
    text = captured.outputs[0].data["text/plain"]
    assert "FAIL  items" in text and "step 'make'" in text and "generator" in text


def test_notebook_found_from_vscode_and_missing_notebook_says_pass_it(shell, small) -> None:
    with pytest.raises(UsageError, match="pass it: `%kale pipeline --notebook PATH.ipynb`"):
        shell.run_line_magic("kale", "show")
    shell.user_ns["__vsc_ipynb_file__"] = str(small)
    with capture_output() as captured:
        shell.run_line_magic("kale", "show")
    assert "pipeline small" in captured.outputs[0].data["text/plain"]


def _without_sdk_version(yaml_text: str) -> str:
    return "\n".join(line for line in yaml_text.splitlines() if "sdkVersion" not in line)


def test_kernel_and_file_compile_the_same_ir(shell, tmp_path) -> None:
    """Artifact classes come from the step records saved in the notebook, never from the
    kernel alone: the same saved file gives the same IR in the kernel and from the CLI."""
    sources = ("%%kale imports\nimport numpy as np", "%%kale step make\nitems = np.arange(3)",
               "%%kale step total\nsize = int(items.sum())")
    path = write_notebook(tmp_path / "typed.ipynb", sources)
    saved = nbformat.read(path, as_version=4)
    for cell in saved.cells:
        with capture_output() as captured:
            run(shell, cell.source)
        cell.outputs = [nbformat.v4.new_output("display_data", data=o.data)
                        for o in captured.outputs]
    shell.run_line_magic("kale", f"compile --notebook {path} -o {tmp_path / 'unsaved'}")
    assert "out_items: Output[Artifact]" in (tmp_path / "unsaved" / "typed.py").read_text()
    nbformat.write(saved, path)  # the editor saves the outputs with the records
    shell.run_line_magic("kale", f"compile --notebook {path} -o {tmp_path / 'kernel'}")
    from_file = api.compile_notebook(path, str(tmp_path / "cli"))
    kernel_dsl = (tmp_path / "kernel" / "typed.py").read_text()
    assert "out_items: Output[Dataset]" in kernel_dsl
    assert kernel_dsl == (tmp_path / "cli" / "typed.py").read_text()
    assert _without_sdk_version((tmp_path / "kernel" / "typed.yaml").read_text()) == \
        _without_sdk_version(open(from_file.yaml_path).read())


@pytest.mark.integration
def test_run_and_status(shell, small) -> None:
    run_notebook_cells(shell, small)
    with pytest.raises(UsageError, match="no run yet"):
        shell.run_line_magic("kale", "status")
    with capture_output() as captured:
        shell.run_line_magic("kale", f"run --notebook {small} --param N=5")
    assert kale(shell).last_run.metrics == {"size": 10.0}
    assert "<svg" in captured.outputs[-1].data["text/html"]
    assert "SUCCEEDED" in captured.outputs[-1].data["text/html"]
    with capture_output() as captured:
        shell.run_line_magic("kale", "status")
    assert "pipeline small SUCCEEDED" in captured.stdout and "size = 10" in captured.stdout


def test_a_bad_param_is_refused_before_anything_is_printed(shell, small) -> None:
    with capture_output() as captured, pytest.raises(UsageError, match="parameter 'N' is int"):
        shell.run_line_magic("kale", f"run --notebook {small} --param N=five")
    assert captured.stdout == "" and captured.outputs == []  # no "running ... locally"
    assert kale(shell).last_run is None


def test_export_kale_tags_writes_a_copy_and_refuses_the_source(shell, small, tmp_path) -> None:
    out = tmp_path / "tagged.ipynb"
    before = small.read_bytes()
    shell.run_line_magic("kale", f"export --notebook {small} --kale-tags {out}")
    tagged = nbformat.read(out, as_version=4)
    tags = [c.metadata.get("tags") for c in tagged.cells]
    assert tags == [None, ["pipeline-parameters"], ["step:make"], ["step:total", "prev:make"],
                    ["pipeline-metrics"]]
    assert tagged.cells[4].source == "print(size)" and tagged.cells[0].source == ""
    assert tagged.metadata["kubeflow_notebook"]["pipeline_name"] == "small"
    with pytest.raises(UsageError, match="refusing to overwrite the source notebook"):
        shell.run_line_magic("kale", f"export --notebook {small} --kale-tags {small}")
    assert small.read_bytes() == before


def test_check_warns_about_unsaved_cells(shell, small) -> None:
    class Kernel:
        cell = None

        def get_parent(self):
            return {"metadata": {"cellId": self.cell}}

    ids = [c.id for c in nbformat.read(small, as_version=4).cells]
    shell.kernel = Kernel()
    try:
        for cell_id, source in zip(ids, SMALL):
            shell.kernel.cell = cell_id
            run(shell, source.replace("range(N)", "range(N + 1)"))
        shell.kernel.cell = "new-cell"
        run(shell, "%%kale skip\npass")
    finally:
        del shell.kernel
    with capture_output() as captured:
        shell.run_line_magic("kale", f"check --notebook {small}")
    text = captured.outputs[0].data["text/plain"]
    assert "warning: cell 3 ('items = list(range(N))') differs from what this kernel ran" in text
    assert "ran in this kernel but is not in the saved notebook" in text


def test_check_says_to_save_when_the_kernel_knows_a_type_the_file_does_not(shell, tmp_path) -> None:
    path = write_notebook(tmp_path / "typed.ipynb", (
        "%%kale imports\nimport numpy as np", "%%kale step make\nitems = np.arange(3)",
        "%%kale step total\nsize = int(items.sum())"))
    for cell in nbformat.read(path, as_version=4).cells:
        run(shell, cell.source)
    with capture_output() as captured:
        shell.run_line_magic("kale", f"check --notebook {path}")
    assert ("`items` of step 'make' is a Dataset in this kernel, but the saved notebook records "
            "Artifact: save the notebook") in captured.outputs[0].data["text/plain"]
