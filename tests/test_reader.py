"""Reading annotations from notebook files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kale_magics.errors import AnnotationError, NotebookError
from kale_magics.notebook.reader import read_notebook


def test_cells_above_first_annotation_are_left_out(notebook) -> None:
    path = notebook("x = 1", "%%kale step a\ny = 2", "z = 3")
    cells = read_notebook(path).cells
    assert [c.index for c in cells] == [1, 2]
    assert [c.explicit for c in cells] == [True, False]


def test_unannotated_cell_continues_the_one_above(notebook) -> None:
    path = notebook("%%kale step a\nx = 1", "#md some text", "y = x", "%%kale skip\nprint(y)", "w = 1")
    cells = read_notebook(path).cells
    assert [(c.index, c.annotation.kind, c.annotation.name) for c in cells] == [
        (0, "step", "a"), (2, "step", "a"), (3, "skip", None), (4, "skip", None)]


def test_a_cell_of_kale_line_magics_is_tool_control_and_continues_nothing(notebook) -> None:
    from kale_magics import api

    path = notebook("%load_ext kale_magics", "%%kale step load\nrows = [1, 2]",
                    "%kale panel", "more = rows + [3]",  # continues the step above the panel cell
                    "%%kale metrics\nmore_len", "# the panel\n\n%kale panel\n%kale show",
                    "%%kale step total\nsize = len(more)", "%load_ext kale_magics\n%kale check",
                    "%kale pipeline --name tool-cells")
    cells = read_notebook(path).cells
    assert [(c.index, c.annotation.kind, c.annotation.name) for c in cells] == [
        (1, "step", "load"), (3, "step", "load"), (4, "metrics", None), (6, "step", "total")]
    assert not any("%kale" in c.source for c in cells)
    with pytest.raises(api.KaleError) as raised:  # the metric is read; no magic is a metric
        api.read_plan(path)
    assert "more_len" in str(raised.value) and "run_line_magic" not in str(raised.value)
    path = notebook("%%kale step load\nrows = [1, 2]", "%kale panel", "more = rows + [3]",
                    "%%kale step total\nn = len(more)", "%%kale metrics\nn", "%kale panel",
                    "%kale pipeline --name tool-cells", name="ok")
    plan = api.read_plan(path)
    assert plan.name == "tool-cells" and [m.expression for m in plan.step("total").metrics] == ["n"]
    assert [c.index for c in plan.step("load").cells] == [0, 2]


def test_magic_line_becomes_an_empty_line(notebook) -> None:
    path = notebook("%%kale step a\nx = 1\ny = 2")
    assert read_notebook(path).cells[0].source == "\nx = 1\ny = 2"


def test_pipeline_settings_from_any_cell_later_wins(notebook) -> None:
    path = notebook("%load_ext kale_magics\n%kale pipeline --name one --experiment e",
                    "%%kale step a\nx = 1", "%kale pipeline --name two")
    settings = read_notebook(path).settings
    assert (settings.name, settings.experiment) == ("two", "e")


def test_bad_annotation_names_the_cell(notebook) -> None:
    path = notebook("x = 1", "%%kale step Bad\nx = 2")
    with pytest.raises(AnnotationError, match=r"^cell 2: invalid step name 'Bad'"):
        read_notebook(path)


def test_bad_pipeline_line_names_the_cell(notebook) -> None:
    path = notebook("%kale pipeline --nme x")
    with pytest.raises(AnnotationError, match=r"^cell 1: .*unrecognized arguments"):
        read_notebook(path)


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(NotebookError, match="notebook not found"):
        read_notebook(tmp_path / "nope.ipynb")
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{not json")
    with pytest.raises(NotebookError, match="is not a valid Jupyter notebook"):
        read_notebook(bad)


def test_sources_saved_as_lists_of_lines(tmp_path: Path) -> None:
    """Jupyter saves sources as lists of lines; the JSON reader joins them as nbformat does."""
    path = tmp_path / "lines.ipynb"
    cell = {"cell_type": "code", "id": "c1", "metadata": {"tags": ["x", 3]}, "outputs": [],
            "execution_count": None, "source": ["%%kale step one\n", "a = 1\n", "b = a"]}
    path.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [cell]}))
    (read,) = read_notebook(path).cells
    assert (read.source, read.annotation.name, read.cell_id) == ("\na = 1\nb = a", "one", "c1")


def test_version_3_notebook_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "v3.ipynb"
    path.write_text(json.dumps({"nbformat": 3, "nbformat_minor": 0, "metadata": {}, "worksheets": [
        {"cells": [{"cell_type": "code", "input": "%%kale step one\nx = 1", "language": "python",
                    "metadata": {}, "outputs": []}]}]}))
    (read,) = read_notebook(path).cells
    assert (read.annotation.name, read.source) == ("one", "\nx = 1")


def test_malformed_cell_gets_nbformats_words(tmp_path: Path) -> None:
    path = tmp_path / "odd.ipynb"
    path.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {},
                                "cells": [{"cell_type": "code", "source": 7, "metadata": {}}]}))
    with pytest.raises(NotebookError, match="odd.ipynb is not a valid Jupyter notebook"):
        read_notebook(path)


def test_reading_a_version_4_notebook_does_not_import_nbformat(notebook) -> None:
    """nbformat imports jsonschema and its format checkers (about 1.8 s); compiling must not."""
    path = notebook("%%kale step one\nx = 1")
    code = ("import sys; from kale_magics import api; api.read_plan(sys.argv[1]); "
            "print('nbformat' in sys.modules, 'jsonschema' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                            check=True)
    assert result.stdout.split() == ["False", "False"]


def test_cell_numbers_are_the_ones_jupyterlab_shows(notebook) -> None:
    """1-based, counting markdown cells: the third cell is JupyterLab's "Cell 3"."""
    from kale_magics.model import cell_place
    from kale_magics.runtime.bundle import cell_filename

    with pytest.raises(AnnotationError, match=r"^cell 3: invalid step name 'Bad'"):
        read_notebook(notebook("#md # Title", "x = 1", "%%kale step Bad\ny = 2"))
    cells = read_notebook(notebook("#md # Title", "%%kale step a\nx = 1", name="ok")).cells
    assert cells[0].index == 1 and cells[0].place == "cell 2" == cell_place(1)
    assert cell_place(0, "other.ipynb") == "other.ipynb cell 1"
    assert cell_filename("nb.ipynb", 1, "step a") == "nb.ipynb, cell 2 (step a)"  # the runtime agrees
