"""The %%kale cell magic runs the cell as if the magic line were not there."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell


@pytest.fixture(scope="module")
def shell():
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "kale_magics")
    yield ip
    ip.run_line_magic("unload_ext", "kale_magics")


def test_body_runs_in_user_namespace_and_returns_last_value(shell) -> None:
    result = shell.run_cell("%%kale step a\nx = 20\nx + 1")
    assert result.success
    assert result.result == 21
    assert shell.user_ns["x"] == 20


def test_trailing_semicolon_and_statements_return_nothing(shell) -> None:
    assert shell.run_cell("%%kale step a\ny = 1").result is None


def test_ipython_syntax_in_body(shell) -> None:
    result = shell.run_cell("%%kale step a\nout = !echo hi\n%time z = 5")
    assert result.success
    assert list(shell.user_ns["out"]) == ["hi"] and shell.user_ns["z"] == 5


def test_exception_points_at_the_cells_own_line(shell, capsys) -> None:
    result = shell.run_cell("%%kale step a\nok = 1\n1 / 0")
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    tb = result.error_in_exec.__traceback__
    while tb.tb_next:
        tb = tb.tb_next
    assert tb.tb_lineno == 3  # line 3 of the cell, the magic line being line 1


@pytest.mark.parametrize("line", ["%%kale stepp a", "%%kale step Bad", "%%kale step a --nope"])
def test_bad_line_raises_usage_error_and_body_does_not_run(shell, line) -> None:
    shell.user_ns.pop("ran", None)
    with pytest.raises(UsageError):
        shell.run_cell_magic("kale", line.removeprefix("%%kale "), "ran = True")
    assert "ran" not in shell.user_ns


def test_pipeline_line_magic(shell) -> None:
    shell.run_line_magic("kale", "pipeline --name demo --experiment e")
    with pytest.raises(UsageError, match="invalid pipeline name"):
        shell.run_line_magic("kale", "pipeline --name Bad_Name")
    with pytest.raises(UsageError, match="unknown action"):
        shell.run_line_magic("kale", "frobnicate")


def test_help_lists_the_grammar(shell) -> None:
    doc = shell.find_cell_magic("kale").__doc__
    assert "--after STEP" in doc and "%kale pipeline" in doc and "imports | functions" in doc
