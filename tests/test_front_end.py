"""The deploy panel in VS Code with ipywidgets 8.1.9 (issue 20 item 11): a one-line notice with
the fix when ``%kale panel`` is shown there, and none elsewhere."""

from __future__ import annotations

from IPython.utils.capture import capture_output

from kale_magics.session.front_end import installed_ipywidgets, widget_notices
from tests.conftest import write_notebook
from tests.test_magics import shell  # noqa: F401  (fixture)

VSCODE = {"__vsc_ipynb_file__": "/home/me/nb.ipynb"}


def test_only_vscode_with_ipywidgets_8_1_9_gets_the_notice() -> None:
    (notice,) = widget_notices(VSCODE, "8.1.9")
    assert "pip install ipywidgets==8.1.8" in notice and "vscode-jupyter#17504" in notice
    assert "\n" not in notice
    assert widget_notices(VSCODE, "8.1.8") == [] and widget_notices(VSCODE, "8.1.7") == []
    assert widget_notices(VSCODE, None) == []
    assert widget_notices({}, "8.1.9") == []  # JupyterLab, Notebook 7: they render 8.1.9


def test_panel_magic_prints_the_notice_in_vscode_only(shell, tmp_path) -> None:  # noqa: F811
    path = write_notebook(tmp_path / "nb.ipynb", ["%%kale step a\nx = 1"])
    shell.run_line_magic("kale", f"pipeline --notebook {path}")
    with capture_output() as plain:
        shell.run_line_magic("kale", "panel")
    shell.user_ns["__vsc_ipynb_file__"] = str(path)
    with capture_output() as vscode:
        shell.run_line_magic("kale", "panel")
    assert "notice" not in plain.stdout
    broken = installed_ipywidgets() == "8.1.9"  # the version installed here decides
    lines = vscode.stdout.splitlines()
    assert (lines == [f"notice: {widget_notices(shell.user_ns, '8.1.9')[0]}"]) is broken
    assert len(vscode.outputs) == 1 and "application/vnd.jupyter.widget-view+json" in vscode.outputs[0].data
    for panel in shell.magics_manager.registry["KaleMagics"].panels.values():
        panel.close()
