"""Synthetic annotated notebooks for the benchmarks, and their Kale-tagged twins.

A synthetic notebook of ``n`` steps has one imports cell, one parameters cell
(plain constants only, which Kale 2.3 accepts), ``n`` step cells and a metrics
cell. The steps form a chain of fan-out/fan-in groups::

    s0 -> (s1, s2, s3) -> s4 -> (s5, s6, s7) -> s8 -> ...

Every fan-out step reads the list its group's source produced, every fan-in
step reads all the lists of its group, so each step has at least one passed
variable and the DAG has parallel branches.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

#: Width of each fan-out.
FAN_OUT = 3

IMPORTS = "%%kale imports\nimport math"
PARAMETERS = "%%kale parameters\nSCALE = 2\nOFFSET = 1.5\nLABEL = \"bench\"\nENABLED = True"


def step_sources(steps: int) -> list[str]:
    """The ``%%kale step`` cell sources of a ``steps``-step fan-out/fan-in chain (``steps`` >= 2).

    The last step assigns ``total``, the metric.
    """
    if steps < 2:
        raise ValueError(f"a synthetic notebook needs at least 2 steps, not {steps}")
    cells = ["%%kale step s0\na0 = [float(i) * SCALE + OFFSET for i in range(8)]"]
    source_var = "a0"
    while steps - len(cells) - 1 >= 2:  # room for a branch and a fan-in before the last step
        width = min(FAN_OUT, steps - len(cells) - 2)
        branches = [f"b{len(cells) + k}" for k in range(width)]
        cells += [f"%%kale step s{len(cells) + k}\n"
                  f"{var} = [math.sqrt(abs(v)) * {len(cells) + k} for v in {source_var}]\n"
                  f"if not ENABLED:\n    {var} = []" for k, var in enumerate(branches)]
        source_var = f"a{len(cells)}"
        summed = " + ".join(f"{var}[k]" for var in branches)
        cells.append(f"%%kale step s{len(cells)}\n"
                     f"{source_var} = [{summed} for k in range(len({branches[0]}))]\n"
                     f"print(LABEL, len({source_var}))")
    if len(cells) < steps - 1:  # one slot left: a plain link of the chain
        cells.append(f"%%kale step s{len(cells)}\n"
                     f"a{len(cells)} = [v + 1 for v in {source_var}]")
        source_var = f"a{len(cells) - 1}"
    cells.append(f"%%kale step s{len(cells)}\ntotal = sum({source_var})")
    return cells


def write_synthetic(folder: Path, steps: int) -> Path:
    """Write ``folder/synthetic_<steps>.ipynb`` (``steps`` step cells plus 3 cells) and return it."""
    nb = nbformat.v4.new_notebook()
    sources = [f"%load_ext kale_magics\n%kale pipeline --name synthetic-{steps}", IMPORTS, PARAMETERS,
               *step_sources(steps), "%%kale metrics\ntotal"]
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"synthetic_{steps}.ipynb"
    nbformat.write(nb, str(path))
    return path


def large_functions_cell(size: int) -> str:
    """A ``%%kale functions`` cell of at least ``size`` bytes: small functions ``f_0``, ``f_1``, ...
    and ``f_last``, the last of them."""
    parts, count = ["%%kale functions\n"], 0
    while sum(len(p) for p in parts) < size:
        parts.append(f"def f_{count}(value):\n    \"\"\"Add {count} to value.\"\"\"\n"
                     f"    return value + {count}\n\n")
        count += 1
    parts.append(f"f_last = f_{count - 1}\n")
    return "".join(parts)


def write_large_cell(folder: Path, size: int) -> Path:
    """Write ``folder/large_cell.ipynb``: a functions cell of ``size`` bytes and two steps using it.

    The steps print ``RESULT <n>`` and ``AGAIN <n>``, ``n`` the number of functions.
    """
    nb = nbformat.v4.new_notebook()
    sources = ["%load_ext kale_magics\n%kale pipeline --name large-cell", large_functions_cell(size),
               "%%kale step use\nresult = f_last(1)\nprint('RESULT', result)",
               "%%kale step again\nprint('AGAIN', f_0(result))"]
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "large_cell.ipynb"
    nbformat.write(nb, str(path))
    return path


def kale_tagged(notebook: Path, folder: Path) -> tuple[Path | None, str]:
    """Export ``notebook`` with Kale's cell tags into ``folder``: ``(path, "")`` or ``(None, why)``.

    Uses :func:`kale_magics.api.convert` with ``to="kale-tags"``, the conversion behind
    ``kale-magics convert --to kale-tags``.
    """
    from kale_magics import api

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / notebook.name
    try:
        api.convert(notebook, out, "kale-tags")
    except api.KaleError as error:
        return None, f"export to Kale tags failed: {error}"
    return out, ""
