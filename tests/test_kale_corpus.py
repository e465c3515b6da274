"""Kale's own public notebooks, unchanged (tests/kale_corpus/, listed in corpus.json).

Every notebook Kale 2.3 accepts compiles; every one that runs offline runs to SUCCEEDED, with the
notebook's own values (by nbclient, top to bottom) where they are not random; converting to
``%%kale`` lines and back to tags keeps each pipeline. With Kale 2.3 installed (its venv of
bench/kale_env.py) the recorded verdicts of Kale are checked too.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest

from kale_magics import api
from kale_magics.runtime import marshal
from tests.kale_cli import KaleResult, run_kale
from tests.test_kale_rules import canonical, notebook_values

CORPUS = Path(__file__).parent / "kale_corpus"
LISTED = json.loads((CORPUS / "corpus.json").read_text())["notebooks"]
COMPILES = sorted(n for n, e in LISTED.items() if "refused" not in e)
RUNS = sorted(n for n, e in LISTED.items() if not e["run"].startswith("no"))


def copy(name: str, tmp_path: Path) -> Path:
    """The corpus notebook ``name`` copied (with the notebooks it references) into ``tmp_path``."""
    shutil.copytree(CORPUS, tmp_path / "corpus", ignore=shutil.ignore_patterns("*.json", "*.md"))
    return tmp_path / "corpus" / name


def shape(plan) -> list[tuple]:
    """What a conversion must keep: each step, its edges, data, parameters, metrics and code."""
    return [(s.name, s.upstream, s.inputs, s.outputs, s.parameters, s.metrics, s.settings,
             [c.source.strip() for c in s.cells if c.source.strip()]) for s in plan.steps]


def test_every_listed_notebook_is_there() -> None:
    found = sorted(str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*.ipynb"))
    assert found == sorted(LISTED)


@pytest.mark.parametrize("name", COMPILES)
def test_every_notebook_compiles(tmp_path, name) -> None:
    compiled = api.compile_notebook(copy(name, tmp_path), str(tmp_path / "out"))
    assert Path(compiled.yaml_path).stat().st_size > 0


@pytest.mark.parametrize("name", sorted(n for n, e in LISTED.items() if "refused" in e))
def test_refused_ones_say_why(tmp_path, name) -> None:
    with pytest.raises(api.KaleError) as info:
        api.compile_notebook(copy(name, tmp_path), str(tmp_path / "out"))
    assert LISTED[name]["refused"] in str(info.value)


def test_every_notebook_kale_accepts_is_compiled() -> None:
    accepted = {n for n, e in LISTED.items() if e["kale23"] == "accepts"}
    assert accepted <= set(COMPILES)


@pytest.mark.parametrize("name", COMPILES)
def test_convert_both_ways_keeps_the_pipeline(tmp_path, name) -> None:
    source = copy(name, tmp_path)
    original = api.read_plan(source)
    magics, _ = api.convert(source, source.with_name("m_" + source.name), "magics")
    converted = api.read_plan(magics)
    assert shape(converted) == shape(original) and converted.name == original.name
    assert converted.parameters == original.parameters
    tags, _ = api.convert(magics, source.with_name("t_" + source.name), "kale-tags")
    again = api.read_plan(tags)
    assert [s[:6] for s in shape(again)] == [s[:6] for s in shape(original)]
    assert again.name == original.name


def artifact_value(root: Path, name: str) -> object:
    """The value of the artifact ``out_<name>`` a local run under ``root`` saved."""
    manifests = sorted(root.rglob(f"out_{name}/kale.json"))
    assert manifests, f"no artifact of `{name}` under {root}"
    return marshal.load(str(manifests[0].parent), name)


def top_to_bottom(path: Path) -> Path:
    """``path`` as the kernel runs it: each ``notebook:`` cell replaced by the cells of the
    notebook it references (Kale's composition), written beside it."""
    nb = nbformat.read(path, as_version=4)
    cells = []
    for cell in nb.cells:
        reference = cell.metadata.get("notebook_path")
        cells += nbformat.read(path.parent / reference, as_version=4).cells if reference else [cell]
    nb.cells = cells
    inlined = path.with_name("inlined_" + path.name)
    nbformat.write(nb, str(inlined))
    return inlined


@pytest.mark.integration
@pytest.mark.parametrize("name", RUNS)
def test_runs_offline_with_the_notebooks_values(tmp_path, name) -> None:
    entry = LISTED[name]
    path = copy(name, tmp_path)
    root = tmp_path / "root"
    status = api.run_local(path, pipeline_root=str(root), output_dir=str(tmp_path / "out"))
    assert status.state == "SUCCEEDED", {n: (s.error, s.log[-5:]) for n, s in status.steps.items()
                                         if s.state != "SUCCEEDED"}
    if entry["run"] != "values":
        return
    pipeline = {n: status.metrics[n] if n in status.metrics else artifact_value(root, n)
                for n in entry["compare"]}
    assert {n: canonical(v) for n, v in pipeline.items()} == \
        notebook_values(top_to_bottom(path), entry["compare"])


KALE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / \
    "kale-magics-bench" / "kale-venv" / "bin" / "kale"


@pytest.fixture(scope="module")
def kale_verdicts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KaleResult]:
    """``kale --nb`` on every listed notebook, each in a copy of the corpus of its own (one
    import of Kale for them all: tests/kale_cli.py)."""
    names = sorted(LISTED)
    paths = [copy(name, tmp_path_factory.mktemp("kale-verdict")) for name in names]
    return dict(zip(names, run_kale(KALE, paths)))


@pytest.mark.integration
@pytest.mark.skipif(not KALE.exists(), reason=f"Kale 2.3 is not installed at {KALE} "
                                              "(python -m bench creates it)")
@pytest.mark.parametrize("name", sorted(LISTED))
def test_kale_verdicts_are_as_recorded(kale_verdicts, name) -> None:
    result = kale_verdicts[name]
    if LISTED[name]["kale23"] == "accepts":
        assert result.returncode == 0, result.stderr[-1000:]
    else:
        assert result.returncode != 0 and LISTED[name]["kale23"] in result.stdout + result.stderr
