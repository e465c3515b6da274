"""Notebooks tagged for Kale: read unchanged, and converted both ways."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from kale_magics import api
from kale_magics.errors import AnnotationError, NotebookError
from kale_magics.model import StepSettings
from tests.conftest import EXAMPLES
from tests.kale_cli import KaleResult, run_kale


def tagged(path: Path, cells: list[tuple[str, list[str]]], meta: dict | None = None) -> Path:
    """Write a notebook of ``(source, tags)`` code cells and optional kubeflow_notebook metadata."""
    nb = nbformat.v4.new_notebook()
    for source, tags in cells:
        cell = nbformat.v4.new_code_cell(source)
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    if meta is not None:
        nb.metadata["kubeflow_notebook"] = meta
    nbformat.write(nb, str(path))
    return path


BASE = [("import math", ["imports"]), ("N = 3\nNAME = 'x'", ["pipeline-parameters"]),
        ("def double(v):\n    return 2 * v", ["functions"]),
        ("a = double(N)", ["step:first"]), ("a", ["skip"])]


def test_kale_kinds_steps_prev_and_metrics(tmp_path) -> None:
    path = tagged(tmp_path / "nb.ipynb", BASE + [
        ("b = math.sqrt(a)", ["step:second", "prev:first"]),
        ("c = b + 1", []),  # an untagged cell continues the step above
        ("print(b)\nprint(c)", ["pipeline-metrics"])])
    plan = api.read_plan(path)
    assert [p.name for p in plan.parameters] == ["N", "NAME"]
    assert [c.index for c in plan.prelude] == [0, 2]
    second = plan.step("second")
    assert second.after == ("first",) and [c.index for c in second.cells] == [5, 6]
    assert [m.key for m in second.metrics] == ["b", "c"]
    assert plan.warnings == ()


def test_block_tags_of_kale_1(tmp_path) -> None:
    path = tagged(tmp_path / "old.ipynb", [("x = 1", ["block:load"]),
                                           ("y = x", ["block:use", "prev:load"])])
    plan = api.read_plan(path)
    assert [s.name for s in plan.steps] == ["load", "use"]


@pytest.mark.parametrize("tag, expected", [
    ("limit:cpu:2", StepSettings(cpu_limit="2")),
    ("limit:memory:4Gi", StepSettings(memory_limit="4Gi")),
    ("limit:nvidia.com/gpu:2", StepSettings(gpu=2, accelerator="nvidia.com/gpu")),
    ("limit:amd.com/gpu:1", StepSettings(gpu=1, accelerator="amd.com/gpu")),
    ("image:python:3.12-slim", StepSettings(image="python:3.12-slim")),
    ("annotation:owner:alice", StepSettings(annotations=(("owner", "alice"),))),
    ("label:team:ml", StepSettings(labels=(("team", "ml"),))),
    ("cache:disabled", StepSettings(cache=False)),
    ("cache:enabled", StepSettings(cache=True)),
    ("secret:db-creds:password:DB_PASSWORD",
     StepSettings(secrets=(("db-creds", "password", "DB_PASSWORD"),))),
])
def test_each_settings_tag_applies(tmp_path, tag, expected) -> None:
    path = tagged(tmp_path / "nb.ipynb", [("x = 1", ["step:only", tag])])
    assert api.read_plan(path).step("only").settings == expected


def test_settings_tags_reach_the_ir(tmp_path) -> None:
    path = tagged(tmp_path / "nb.ipynb", [("x = 1", ["step:only", "label:team:ml",
                                                      "annotation:owner:alice", "limit:memory:1Gi"])])
    dsl = Path(api.compile_notebook(path, str(tmp_path / "out")).dsl_path).read_text()
    assert "kubernetes.add_pod_label(only_task, label_key='team', label_value='ml')" in dsl
    assert "kubernetes.add_pod_annotation(only_task, annotation_key='owner'" in dsl
    assert "only_task.set_memory_limit('1Gi')" in dsl


def test_unknown_tag_and_key_are_warnings(tmp_path) -> None:
    path = tagged(tmp_path / "nb.ipynb", [("x = 1", ["step:only", "mystery", "report:enabled"])],
                  {"pipeline_name": "p", "experiment_name": "e", "surprise": 1, "katib_run": False})
    plan = api.read_plan(path)
    assert plan.warnings == (
        "kubeflow_notebook: key 'katib_run' ignored", "kubeflow_notebook: key 'surprise' ignored",
        "cell 1: unknown tag 'mystery' ignored",
        "cell 1: tag 'report:enabled' has no effect here (Kale-specific)")
    result = subprocess.run([sys.executable, "-m", "kale_magics", "show", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "warning: cell 1: unknown tag 'mystery' ignored" in result.stderr


def test_notebook_metadata(tmp_path) -> None:
    meta = {"pipeline_name": "kale-pipe", "experiment": {"name": "exp"},
            "pipeline_description": "desc", "docker_image": "python:3.10", "enable_caching": False,
            "volumes": [{"name": "data", "mount_point": "/data", "type": "pvc"},
                        {"name": "new", "mount_point": "/new", "type": "new_pvc"}],
            "steps_defaults": ["label:app:demo", "limit:memory:1Gi"], "kfp_host": "http://kfp:8888"}
    plan = api.read_plan(tagged(tmp_path / "nb.ipynb", [("x = 1", ["step:only"])], meta))
    s = plan.settings
    assert (plan.name, s.experiment, s.description, s.host) == ("kale-pipe", "exp", "desc",
                                                                "http://kfp:8888")
    assert plan.step("only").settings == StepSettings(
        image="python:3.10", cache=False, volumes=(("data", "/data"),), labels=(("app", "demo"),),
        memory_limit="1Gi")
    assert plan.warnings == ("kubeflow_notebook: volume 'new' of type 'new_pvc' is not supported "
                             "(only existing PVCs, type pvc)",)
    base = api.read_plan(tagged(tmp_path / "b.ipynb", [("x = 1", ["step:only"])],
                                {"pipeline_name": "p", "experiment_name": "e", "base_image": "img:1"}))
    assert base.step("only").settings.image == "img:1" and base.settings.experiment == "e"


def test_mixed_notebook_and_a_cell_with_both(tmp_path) -> None:
    mixed = tagged(tmp_path / "mixed.ipynb", [("x = 1", ["step:load"]),
                                              ("%%kale step use\ny = x + 1", [])])
    assert api.read_plan(mixed).step("use").inputs[0].producer == "load"
    both = tagged(tmp_path / "both.ipynb", [("%%kale step a\nx = 1", ["step:a"])])
    with pytest.raises(AnnotationError, match=r"^cell 1: the cell has both a `%%kale` line and Kale tags"):
        api.read_plan(both)


@pytest.mark.parametrize("tags, fragment", [
    (["step:_hidden"], "cell 1: Kale step invalid step name '_hidden'"),
    (["step:a", "limit:ephemeral-storage:1Gi"], "Kale limit 'ephemeral-storage' is not supported"),
    (["step:a", "limit:memory:lots"], "limit:memory 'lots' is not valid"),
])
def test_tags_we_cannot_use_are_clear_errors(tmp_path, tags, fragment) -> None:
    with pytest.raises(AnnotationError) as info:
        api.read_plan(tagged(tmp_path / "nb.ipynb", [("x = 1", tags)]))
    assert fragment in str(info.value)


def test_metrics_cell_must_be_print_lines(tmp_path) -> None:
    path = tagged(tmp_path / "nb.ipynb", [("x = 1", ["step:a"]), ("x + 1", ["pipeline-metrics"])])
    with pytest.raises(AnnotationError, match="`print\\(name\\)` lines; `x \\+ 1` is not one"):
        api.read_plan(path)


@pytest.mark.parametrize("name", ["wine", "titanic"])
def test_round_trip_magics_tags_magics_is_the_identity(tmp_path, name) -> None:
    source = EXAMPLES / f"{name}.ipynb"
    before = source.read_bytes()
    tags, warnings = api.convert(source, tmp_path / "tags.ipynb", "kale-tags")
    back, _ = api.convert(tags, tmp_path / "back.ipynb", "magics")
    assert nbformat.read(back, 4) == nbformat.read(source, 4)
    assert source.read_bytes() == before
    assert any("became constants in a functions cell" in w for w in warnings)
    assert sorted(os.listdir(tmp_path)) == ["back.ipynb", "tags.ipynb"]  # no temporary files left


def test_export_tags_steps_and_metadata(tmp_path) -> None:
    tags, _ = api.convert(EXAMPLES / "titanic.ipynb", tmp_path / "tags.ipynb", "kale-tags")
    nb = nbformat.read(tags, 4)
    cells = {c.metadata.get("tags", [None])[0]: c for c in nb.cells if c.cell_type == "code"}
    assert cells["step:results"].metadata["tags"] == [
        "step:results", "prev:split_data", "prev:train_forest", "prev:train_gboost", "prev:train_logreg"]
    assert "limit:nvidia.com/gpu:1" in cells["step:train_gboost"].metadata["tags"]
    assert cells["pipeline-metrics"].source.splitlines()[0] == "print(logreg_accuracy)"
    assert not any(c.source.startswith("%%kale") for c in nb.cells)
    meta = nb.metadata["kubeflow_notebook"]
    assert (meta["pipeline_name"], meta["experiment_name"]) == ("titanic-survival", "titanic")


def test_foreign_kale_notebook_converts_to_magics_with_the_same_pipeline(tmp_path) -> None:
    source = EXAMPLES / "titanic_kale.ipynb"
    magics, _ = api.convert(source, tmp_path / "magics.ipynb", "magics")
    nb = nbformat.read(magics, 4)
    assert nb.cells[0].source.startswith("%load_ext kale_magics\n%kale pipeline --name titanic-kale")
    assert "kubeflow_notebook" not in nb.metadata
    assert not any(t for c in nb.cells for t in c.metadata.get("tags", []) if ":" in t)
    original, converted = api.read_plan(source), api.read_plan(magics)
    shape = lambda plan: [(s.name, s.upstream, s.inputs, s.outputs, s.parameters, s.metrics,  # noqa: E731
                           s.settings) for s in plan.steps]
    assert shape(converted) == shape(original)
    assert converted.parameters == original.parameters


def test_convert_refuses_the_source_and_unknown_targets(tmp_path) -> None:
    copy = tmp_path / "wine.ipynb"
    shutil.copy(EXAMPLES / "wine.ipynb", copy)
    with pytest.raises(NotebookError, match="refusing to overwrite the source notebook"):
        api.convert(copy, copy, "kale-tags")
    with pytest.raises(NotebookError, match="use --to magics or --to kale-tags"):
        api.convert(copy, tmp_path / "x.ipynb", "yaml")


KALE_VENV = Path(os.environ.get("KALE_MAGICS_KALE_VENV",
                                Path.home() / ".cache" / "kale-magics" / "kale-venv"))


def kale_executable() -> Path:
    """Kale 2.3 in a virtual environment of its own, installed on first use (or skip)."""
    kale = KALE_VENV / "bin" / "kale"
    if not kale.exists():
        subprocess.run([sys.executable, "-m", "venv", str(KALE_VENV)], check=True)
        install = subprocess.run([str(KALE_VENV / "bin" / "pip"), "install", "-q",
                                  "kubeflow-kale==2.3.0"], capture_output=True, text=True, timeout=600)
        if install.returncode != 0:
            pytest.skip(f"kubeflow-kale does not install here: {install.stderr.strip()[-300:]}")
    return kale


KALE_EXAMPLES = ("wine", "titanic")


@pytest.fixture(scope="module")
def kale_on_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KaleResult]:
    """``kale --nb`` on each example exported to Kale's tags, each in a folder of its own (one
    import of Kale for them all: tests/kale_cli.py)."""
    kale = kale_executable()
    exported = [Path(api.convert(EXAMPLES / f"{name}.ipynb",
                                 tmp_path_factory.mktemp("kale-export") / f"{name}_tags.ipynb",
                                 "kale-tags")[0]) for name in KALE_EXAMPLES]
    return dict(zip(KALE_EXAMPLES, run_kale(kale, exported, timeout_s=300)))


@pytest.mark.integration
@pytest.mark.parametrize("name", KALE_EXAMPLES)
def test_kale_accepts_the_exported_notebook(kale_on_exports, name) -> None:
    result = kale_on_exports[name]
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Successfully saved generated code" in result.stdout + result.stderr
