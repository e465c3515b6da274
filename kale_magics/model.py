"""Plain data shared by the kale-magics layers.

Nothing here does work: the notebook reader produces :class:`Cell` and
:class:`PipelineSettings`, the analysis turns them into a :class:`Plan`, code
generation renders a plan, and the runners report on it. All classes are frozen
dataclasses so a plan can be shared between threads (the widget's watcher, the
kernel) without copying.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: The annotation kinds of ``%%kale KIND``, in the order the help lists them.
CELL_KINDS = ("imports", "functions", "parameters", "step", "metrics", "skip")

#: Kinds whose code is prepended to every step (Kale semantics).
PRELUDE_KINDS = ("imports", "functions")


@dataclass(frozen=True)
class Annotation:
    """One parsed ``%%kale KIND ...`` line.

    Attributes
    ----------
    kind:
        One of :data:`CELL_KINDS`.
    name:
        The step name for ``kind == "step"``, else None.
    after:
        Step names given with ``--after``: ordering edges kept as written.
    inputs:
        ``--inputs`` override: names the step reads from earlier steps in
        addition to those the analysis finds. Empty when not given.
    outputs:
        ``--outputs`` override: names the step passes on in addition to those
        later steps are found to read. Empty when not given.
    """

    kind: str
    name: str | None = None
    after: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class PipelineSettings:
    """Settings from ``%kale pipeline ...`` lines; None means "not set".

    Attributes
    ----------
    name:
        Pipeline name (KFP ``pipeline_info.name``); defaults to the notebook's
        file stem, made KFP-safe, when not set.
    experiment:
        KFP experiment name for remote runs.
    description:
        Pipeline description.
    image:
        Base image of every step (a stock ``python:3.X`` image by default).
    host:
        KFP API endpoint for remote runs, e.g. ``http://127.0.0.1:8888``.
    notebook:
        Path of the notebook file, for kernels that cannot tell (nbclient, papermill).
    """

    name: str | None = None
    experiment: str | None = None
    description: str | None = None
    image: str | None = None
    host: str | None = None
    notebook: str | None = None

    def merged(self, other: "PipelineSettings") -> "PipelineSettings":
        """Return these settings with every field ``other`` sets overriding."""
        values = {k: v for k, v in vars(other).items() if v is not None}
        return PipelineSettings(**{**vars(self), **values})


@dataclass(frozen=True)
class Cell:
    """A code cell of the notebook with its effective annotation.

    Attributes
    ----------
    index:
        Position of the cell in the notebook (0-based, counting every cell,
        markdown included), as Jupyter's cell list shows it.
    source:
        The cell's code with the ``%%kale`` line replaced by an empty line, so
        line numbers in it are the notebook cell's own line numbers.
    annotation:
        The cell's own annotation, or the one it continues from the cell above.
    explicit:
        True when the cell carries its own ``%%kale`` line.
    cell_id:
        The nbformat cell id, when the notebook has one.
    """

    index: int
    source: str
    annotation: Annotation
    explicit: bool = True
    cell_id: str | None = None

    @property
    def first_line(self) -> str:
        """The first non-empty line of the cell, for error messages."""
        for line in self.source.splitlines():
            if line.strip():
                return line.strip()
        return ""

    def describe(self) -> str:
        """``cell 7 ("model = fit(df)")``: how errors name this cell."""
        return f"cell {self.index} ({self.first_line[:60]!r})"


@dataclass(frozen=True)
class Parameter:
    """A pipeline parameter from a ``%%kale parameters`` cell.

    Attributes
    ----------
    name:
        Python identifier; also the KFP pipeline parameter name.
    value:
        The literal default: int, float, str, bool, list or dict of literals.
    type:
        ``"int" | "float" | "str" | "bool" | "list" | "dict"``, from the literal.
    """

    name: str
    value: Any
    type: str


@dataclass(frozen=True)
class Input:
    """A variable a step reads from an earlier step (a KFP input artifact)."""

    name: str
    producer: str


@dataclass(frozen=True)
class Metric:
    """A line of a ``%%kale metrics`` cell, logged by the step that produces it.

    Attributes
    ----------
    key:
        The metric's name in the KFP ``Metrics`` artifact (the line's text).
    expression:
        Python expression evaluated in the producing step after its code ran.
    """

    key: str
    expression: str


@dataclass(frozen=True)
class Step:
    """One pipeline step: one KFP component and one task.

    Attributes
    ----------
    name:
        KFP-safe identifier, unique in the pipeline.
    cells:
        The step's cells in notebook order (the annotated one first).
    after:
        ``--after`` ordering edges, as written.
    inputs:
        Variables read from earlier steps with their producers, sorted by name.
    outputs:
        Variables this step passes on to later steps, sorted.
    parameters:
        Names of the pipeline parameters the step reads, sorted.
    metrics:
        Metrics this step logs after its code ran.
    """

    name: str
    cells: tuple[Cell, ...]
    after: tuple[str, ...] = ()
    inputs: tuple[Input, ...] = ()
    outputs: tuple[str, ...] = ()
    parameters: tuple[str, ...] = ()
    metrics: tuple[Metric, ...] = ()

    @property
    def upstream(self) -> tuple[str, ...]:
        """Every step this one waits for (data and ``--after`` edges), sorted."""
        return tuple(sorted({i.producer for i in self.inputs} | set(self.after)))


@dataclass(frozen=True)
class Plan:
    """The pipeline as the analysis sees it: what code generation renders.

    Attributes
    ----------
    name:
        KFP-safe pipeline name.
    settings:
        The notebook's ``%kale pipeline`` settings.
    parameters:
        Pipeline parameters in notebook order.
    prelude:
        ``imports`` and ``functions`` cells, prepended to every step.
    steps:
        Steps in notebook order (a topological order of the DAG).
    notebook:
        Path of the notebook the plan was built from ("" when built from cells).
    """

    name: str
    settings: PipelineSettings
    parameters: tuple[Parameter, ...]
    prelude: tuple[Cell, ...]
    steps: tuple[Step, ...]
    notebook: str = ""
    warnings: tuple[str, ...] = field(default=())

    def step(self, name: str) -> Step:
        """Return the step called ``name``; raises KeyError when absent."""
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)
