"""Hostile and unusual notebooks (issue 14): nothing user-written executes at compile time,
nothing is written outside the output folder, names that would clash are refused with a
valid alternative, bad input is one line and exit code 2."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kale_magics import api
from kale_magics.errors import AnnotationError, CompileError, KaleError
from tests.conftest import write_notebook

CODE = '__import__("pathlib").Path("PWNED").touch()'


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kale_magics", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def bad_input(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a command that refused bad input (exit 2, nothing else)."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kale-magics: error: "), result.stderr
    assert "Traceback" not in result.stderr and "kale-magics bug" not in result.stderr
    return lines[0]


def write_json(path: Path, cells: list[str], meta: dict | None = None) -> Path:
    """A notebook file written with json (so lone surrogates survive as \\ud800 escapes)."""
    document = {"nbformat": 4, "nbformat_minor": 4, "metadata": {"kubeflow_notebook": meta or {}},
                "cells": [{"cell_type": "code", "execution_count": None, "metadata": {},
                           "outputs": [], "source": c} for c in cells]}
    path.write_text(json.dumps(document))
    return path


# -- file names and user text in the generated module ----------------------------------------

@pytest.mark.parametrize("stem", [f'x""";{CODE};"""y', f"x''';{CODE};'''y", "a\\N", "a\\",
                                  "line\nbreak", "{}%s", "ü 🚀", os.fsdecode(b"bad\xff")])
def test_notebook_file_name_never_runs_and_is_a_literal(tmp_path: Path, monkeypatch, stem) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_notebook(tmp_path / f"{stem}.ipynb", ["%%kale step a\nx = 1"])
    compiled = api.compile_notebook(path, str(tmp_path / "out"))
    module = ast.parse(Path(compiled.dsl_path).read_text(encoding="utf-8"))
    notebook = next(node.value.value for node in module.body if isinstance(node, ast.Assign)
                    and node.targets[0].id == "NOTEBOOK")
    assert notebook == f"{stem}.ipynb"
    assert stem not in ast.get_docstring(module)
    assert not (tmp_path / "PWNED").exists()


def test_description_experiment_and_env_values_stay_text(notebook, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = notebook(f"%kale pipeline --description '\"\"\";{CODE}' --experiment '\\N{{x}}'",
                    f"%%kale step a --env 'A=\"\"\";{CODE}' --image 'img\\N'\nx = 1")
    compiled = api.compile_notebook(path, str(tmp_path / "out"))
    ast.parse(Path(compiled.dsl_path).read_text(encoding="utf-8"))
    assert not (tmp_path / "PWNED").exists()


# -- names that become file names ------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../victim", "/tmp/victim", "..", "a/b", "Victim", "a.b"])
def test_kale_pipeline_name_is_checked_like_the_magic(tmp_path: Path, name: str) -> None:
    (tmp_path / "victim.py").write_text("precious")
    path = write_json(tmp_path / "nb.ipynb", ["%%kale step a\nx = 1"], {"pipeline_name": name})
    line = bad_input(cli("compile", str(path), "-o", str(tmp_path / "out")))
    assert "kubeflow_notebook: pipeline_name" in line and "for example" in line
    assert (tmp_path / "victim.py").read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == ["nb.ipynb", "victim.py"]


def test_a_plan_named_like_a_path_is_not_written(notebook, tmp_path: Path) -> None:
    from dataclasses import replace

    from kale_magics.codegen.compile import compile_plan

    plan = api.read_plan(notebook("%%kale step a\nx = 1"))
    with pytest.raises(AnnotationError, match="invalid pipeline name '../x'"):
        compile_plan(replace(plan, name="../x"), str(tmp_path / "out"))
    assert not (tmp_path / "x.py").exists() and not (tmp_path / "out").exists()


# -- names that collide with generated code or KFP -------------------------------------------

#: Cells where ``{N}`` is the clashing name, and the name: the error's alternative must work.
CLASHES = {
    "step kubernetes": (["%kale pipeline --timeout 1h", "%%kale step {N}\nx = 1"], "kubernetes"),
    "a and a_task": (["%%kale step a\nx = 1", "%%kale step {N}\ny = x"], "a_task"),
    "prep and prep_driver": (["%%kale step prep\nx = 1", "%%kale step {N}\ny = x"], "prep_driver"),
    "a_b and a__b": (["%%kale step a_b\nx = 1", "%%kale step {N}\ny = x"], "a__b"),
    "a and a_": (["%%kale step a\nx = 1", "%%kale step {N}\ny = x"], "a_"),
    "parameter like a step": (["%%kale parameters\n{N} = 1", "%%kale step a\nx = {N}"], "a"),
    "parameter kubernetes": (["%kale pipeline --timeout 1h", "%%kale parameters\n{N} = 1",
                              "%%kale step a\nx = {N}"], "kubernetes"),
    "parameter like a task": (["%%kale parameters\n{N} = 1", "%%kale step b\nx = {N}"], "b_task"),
    "parameter _p": (["%%kale parameters\n{N} = 1", "%%kale step a\nx = {N}"], "_p"),
    "non-ASCII parameter": (["%%kale parameters\n{N} = 1", "%%kale step a\nx = {N}"], "α"),
    "non-ASCII variable": (["%%kale step a\n{N} = 1", "%%kale step b\ny = {N}"], "café"),
}


@pytest.mark.parametrize("case", sorted(CLASHES))
def test_clash_is_refused_naming_a_valid_alternative(tmp_path: Path, case: str) -> None:
    cells, name = CLASHES[case]
    path = write_notebook(tmp_path / "nb.ipynb", [c.replace("{N}", name) for c in cells])
    line = bad_input(cli("compile", str(path)))
    assert repr(name) in line or f"`{name}`" in line, line
    alternative = re.search(r"\(for example [`']([^`']+)[`']\)", line).group(1)
    fixed = write_notebook(tmp_path / "fixed.ipynb", [c.replace("{N}", alternative) for c in cells])
    result = cli("compile", str(fixed))
    assert result.returncode == 0, (alternative, result.stderr)


@pytest.mark.integration
def test_steps_named_like_builtins_the_runtime_uses_run(notebook) -> None:
    path = notebook("%%kale step exec\nx = 1", "%%kale step compile\ny = x + 1",
                    "%%kale step setattr\nz = y + 1", "%%kale step filter\nw = z + 1",
                    "%%kale metrics\nw")
    status = api.run_local(path)
    assert status.state == "SUCCEEDED", status.error
    assert status.metrics == {"w": 4.0}


# -- bad input: one line, exit 2, before anything runs ---------------------------------------

@pytest.mark.parametrize("cells, meta", [
    (["%%kale step a\nx = '\ud800'"], None),
    (["%kale pipeline --description 'a\ud800b'", "%%kale step a\nx = 1"], None),
    (["%%kale step a\nx = 1"], {"pipeline_description": "a\udcffb"}),
], ids=["cell source", "--description", "Kale metadata"])
def test_lone_surrogate_is_bad_input(tmp_path: Path, cells, meta) -> None:
    line = bad_input(cli("run", str(write_json(tmp_path / "nb.ipynb", cells, meta))))
    assert "lone surrogate" in line
    assert not (tmp_path / ".kale").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "NaN"])
def test_non_finite_float_argument_is_bad_input_before_anything_runs(notebook, value) -> None:
    path = notebook("%%kale parameters\nF = 1.5", "%%kale step a\nx = F")
    line = bad_input(cli("run", str(path), "--param", f"F={value}"))
    assert "parameter 'F'" in line and "finite" in line
    assert not (path.parent / ".kale" / "local_runs").exists()


@pytest.mark.parametrize("default", ["1e400", "[1, (2, 3)]", "[b'x']", "{'a': {1: 2}}"])
def test_parameter_default_kfp_cannot_carry_is_a_compile_error(notebook, default) -> None:
    path = notebook(f"%%kale parameters\nP = {default}", "%%kale step a\nx = P")
    with pytest.raises(CompileError, match="parameter `P`"):
        api.compile_notebook(path)


def test_list_argument_with_a_tuple_is_refused(notebook) -> None:
    plan = api.read_plan(notebook("%%kale parameters\nL = [1]", "%%kale step a\nx = L"))
    with pytest.raises(KaleError, match="JSON cannot carry"):
        api.coerce_arguments(plan, {"L": "[(1, 2)]"})


def test_a_bad_list_value_shows_the_fix_in_the_syntax_it_was_typed_in(notebook) -> None:
    plan = api.read_plan(notebook("%%kale parameters\nNAMES = ['a']", "%%kale step a\nx = NAMES"))
    with pytest.raises(KaleError) as option:
        api.coerce_arguments(plan, {"NAMES": "[1, 2"})
    with pytest.raises(KaleError) as field:
        api.coerce_arguments(plan, {"NAMES": "[1, 2"}, fields=True)
    assert str(option.value).endswith("for example --param 'NAMES=[1, 2]'")
    assert str(field.value).endswith("for example [1, 2]")


def test_host_with_password_is_refused_redacted(notebook) -> None:
    line = bad_input(cli("run", str(notebook("%%kale step a\nx = 1")),
                         "--host", "http://alice:Sup3rS3cretPw@127.0.0.1:9"))
    assert "Sup3rS3cretPw" not in line and "alice" not in line and "http://***@127.0.0.1:9" in line
    assert "unknown host name" not in line


def test_convert_into_a_missing_folder_names_the_folder(notebook, tmp_path: Path) -> None:
    line = bad_input(cli("convert", str(notebook("%%kale step a\nx = 1")), "--to", "kale-tags",
                         "-o", str(tmp_path / "missing" / "out.ipynb")))
    assert f"the folder {tmp_path / 'missing'} does not exist" in line
