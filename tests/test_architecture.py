"""The layers of docs/architecture.md, enforced: an import that points up, or from one front end
into another, fails here with the file, the line and the rule it breaks.

Every ``import`` and ``from ... import`` in ``kale_magics/`` and ``widgets/`` (``kale_widgets``)
is read with :mod:`ast`, including imports inside functions, so a lazy import cannot hide a
dependency.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kale_magics"

#: Plain data, typed errors, atomic writes and secret redaction: what every layer may use.
BASE = {"errors", "model", "atomic", "redaction"}
CORE = BASE | {"notebook", "analysis", "codegen", "runner", "runtime", "convert"}
#: Which units each unit may import (itself always). "package" is ``kale_magics`` itself
#: (``__version__``), which every unit may read.
ALLOWED: dict[str, set[str]] = {
    "redaction": set(),
    "errors": {"redaction", "model"},
    "model": set(),
    "atomic": set(),
    "runtime": set(),
    "notebook": BASE,
    "analysis": BASE | {"notebook", "runtime"},
    "codegen": BASE | {"notebook", "analysis", "runtime"},
    "runner": BASE | {"codegen", "runtime"},
    "convert": BASE | {"notebook", "analysis"},
    "session": CORE,
    "targets": CORE,
    "views": CORE | {"session"},
    "api": CORE | {"session", "targets"},
    "cli": {"api", "views"},
    "magics": {"api", "views"},
    "kale_widgets": {"api", "views"},
    "package": {"magics"},
    "__main__": {"cli"},
}
FRONT_ENDS = {"cli", "magics", "kale_widgets"}


def _sources() -> list[tuple[str, Path]]:
    """``(module name, path)`` of every module of kale_magics and kale_widgets."""
    found = []
    for package, folder in (("kale_magics", PACKAGE), ("kale_widgets", ROOT / "widgets")):
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found.append((".".join((package, *parts)), path))
    return found


def unit_of(module: str) -> str | None:
    """The layer unit of a module name; None outside kale-magics."""
    parts = module.split(".")
    if parts[0] == "kale_widgets":
        return "kale_widgets"
    if parts[0] != "kale_magics":
        return None
    if len(parts) == 1:
        return "package"
    return parts[1]


def _imported(node: ast.AST) -> list[str]:
    """Module names an import statement brings in (``from kale_magics import api`` -> the submodule)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        assert node.level == 0, "relative imports are not used in kale-magics"
        if node.module == "kale_magics":
            return [f"kale_magics.{a.name}" if (PACKAGE / a.name).exists()
                    or (PACKAGE / f"{a.name}.py").exists() else "kale_magics" for a in node.names]
        return [node.module or ""]
    return []


def edges_of(module: str, path: str, source: str) -> list[tuple[str, int, str, str]]:
    """``(path, line, from unit, to unit)`` for every import in ``source`` that crosses units."""
    edges = []
    source_unit = unit_of(module)
    for node in ast.walk(ast.parse(source, path)):
        for name in _imported(node):
            target = unit_of(name)
            if target is not None and target != source_unit:
                edges.append((path, node.lineno, source_unit, target))
    return edges


def import_edges() -> list[tuple[str, int, str, str]]:
    """The crossing imports of the whole of kale-magics."""
    return [edge for module, path in _sources()
            for edge in edges_of(module, str(path.relative_to(ROOT)), path.read_text())]


def violations(edges: list[tuple[str, int, str, str]]) -> list[str]:
    """One line per import the layers forbid, naming the file, the line and the rule."""
    broken = [f"{path}:{line}: {source} may not import {target} (it may import: "
              f"{', '.join(sorted(ALLOWED[source])) or 'nothing of kale-magics'})"
              for path, line, source, target in edges
              if target not in ALLOWED[source] and target != "package"]
    crossing = [f"{path}:{line}: front end {source} imports front end {target}"
                for path, line, source, target in edges
                if source in FRONT_ENDS and target in FRONT_ENDS]
    return broken + crossing


def test_the_rules_themselves_have_no_cycle() -> None:
    graphlib.TopologicalSorter(ALLOWED).prepare()  # raises CycleError


def test_every_import_follows_the_layers() -> None:
    broken = violations(import_edges())
    assert not broken, "\n".join(broken)


def test_the_scan_sees_imports_everywhere() -> None:
    """Real crossings are found (the scan is not vacuous), lazy ones included."""
    edges = {(source, target) for _, _, source, target in import_edges()}
    assert {("magics", "api"), ("api", "targets"), ("analysis", "notebook"),
            ("runner", "runtime"), ("kale_widgets", "views")} <= edges


def test_every_unit_is_placed() -> None:
    units = {unit_of(module) for module, _ in _sources()}
    assert units <= set(ALLOWED), f"add to ALLOWED and docs/architecture.md: {units - set(ALLOWED)}"


@pytest.mark.parametrize("module, source", [
    ("kale_magics.notebook.reader", "from kale_magics.analysis.names import python_source"),
    ("kale_magics.runtime.step", "import kale_magics.model"),
    ("kale_magics.magics", "def panel():\n    from kale_widgets import DeployPanel"),
    ("kale_widgets.panel", "from kale_magics.session.registry import Registry"),
    ("kale_magics.api", "from kale_magics import cli"),
])
def test_a_forbidden_import_is_reported(module, source) -> None:
    """Each rule of docs/architecture.md can fail: a module breaking it is named with its line."""
    found = violations(edges_of(module, "example.py", source))
    assert found and all(line.startswith("example.py:") for line in found)
