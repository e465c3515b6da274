"""Shared fixtures: writing small annotated notebooks to a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "notebooks"


def write_notebook(path: Path, sources: Sequence[str]) -> Path:
    """Write a notebook whose code cells have ``sources`` (a source starting with '#md ' is markdown)."""
    nb = nbformat.v4.new_notebook()
    for source in sources:
        if source.startswith("#md "):
            nb.cells.append(nbformat.v4.new_markdown_cell(source[4:]))
        else:
            nb.cells.append(nbformat.v4.new_code_cell(source))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, os.fspath(path))
    return path


@pytest.fixture
def notebook(tmp_path: Path) -> Callable[..., Path]:
    """``notebook(cell, cell, ..., name="nb")`` writes ``tmp_path/nb.ipynb`` and returns its path."""

    def make(*sources: str, name: str = "nb") -> Path:
        return write_notebook(tmp_path / f"{name}.ipynb", sources)

    return make
