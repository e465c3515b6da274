"""Plain data shared by the kale-magics layers.

Nothing here does work: the notebook reader produces :class:`Cell` and
:class:`PipelineSettings`, the analysis turns them into a :class:`Plan`, code
generation renders a plan, and the runners report on it. All classes are frozen
dataclasses so a plan can be shared between threads (the widget's watcher, the
kernel) without copying.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from packaging.utils import canonicalize_name

#: The annotation kinds of ``%%kale KIND``, in the order the help lists them.
CELL_KINDS = ("imports", "functions", "parameters", "step", "metrics", "skip", "notebook")

#: Kinds whose code is prepended to every step (Kale semantics).
PRELUDE_KINDS = ("imports", "functions")


def cell_place(index: float, notebook: str = "") -> str:
    """How every message names a notebook cell: ``cell 10``, or ``other.ipynb cell 3``.

    The number is the one people see: 1-based and counting every cell, markdown
    included, as JupyterLab's status bar ("Cell 10 of 12") and Notebook 7 number
    them. ``index`` is the cell's 0-based position in the notebook's cell list
    (nbformat's ``cells``), so index 9 is ``cell 10``.

    Parameters
    ----------
    index:
        The 0-based position in the cell list (a referenced notebook's cell: its position
        in that notebook).
    notebook:
        The file name of the notebook the cell is in when it is not the pipeline's own.
    """
    where = f"{notebook} " if notebook else ""
    return f"{where}cell {int(index) + 1}"


def counted(count: int, noun: str) -> str:
    """``1 step``, ``2 steps``, ``0 parameters``: a count with its noun in the right number
    (``noun`` is the singular; the plural adds ``s``)."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def requirement_name(requirement: str) -> str:
    """The canonical distribution name of a pip requirement (PEP 503, ``packaging``'s
    ``canonicalize_name``): ``"Scikit_Learn>=1"`` -> ``"scikit-learn"``, ``"zope.interface"`` ->
    ``"zope-interface"``."""
    return canonicalize_name(re.split(r"[<>=!~\[ ;@]", requirement.strip(), maxsplit=1)[0])


def task_name(step: str) -> str:
    """The KFP task (and component) name of a step: ``train_forest`` -> ``train-forest``.

    KFP names a component after its function, made Kubernetes-safe: lowercase, runs of
    other characters as one ``-``, no ``-`` at either end (``kfp.dsl.utils.maybe_rename_for_k8s``,
    KFP 2.17).
    """
    return re.sub("-+", "-", re.sub("[^-0-9a-z]+", "-", step.lower())).strip("-")


def _merge_entries(key: Callable[[Any], object]) -> dict[str, Any]:
    """Field metadata of a repeatable setting: entries with the same ``key`` are one setting."""
    return {"same": key}


def _first(entry: Any) -> object:
    return entry[0]


def _whole_list(entry: Any) -> object:
    """Every entry is the same setting: a list given later replaces the earlier one."""
    return "the list"


def _merged(base: Any, later: Any) -> dict[str, Any]:
    """Field values of dataclass ``base`` with ``later``'s set values laid over them.

    A value of ``later`` that is set (not None) wins; repeatable settings
    (tuples) are merged, an entry of ``later`` replacing ``base``'s entry that is
    the same setting by its field's ``same`` key (metadata), else added.
    """
    values = {}
    for spec in fields(base):
        mine, theirs = getattr(base, spec.name), getattr(later, spec.name)
        if isinstance(mine, tuple):
            same = spec.metadata.get("same", lambda entry: entry)
            replaced = {same(entry) for entry in theirs}
            values[spec.name] = tuple(e for e in mine if same(e) not in replaced) + theirs
        else:
            values[spec.name] = mine if theirs is None else theirs
    return values


@dataclass(frozen=True)
class StepSettings:
    """How a step runs: resources, image, retries, environment. None or empty means "not set".

    Given on ``%%kale step`` lines and, as defaults for every step, on
    ``%kale pipeline`` lines; ``defaults.merged(own)`` lays a step's own values
    over the defaults. Values are validated and normalised by the grammar: CPU and
    memory as Kubernetes quantities (``"500m"``, ``"4Gi"``), durations in
    seconds.

    Attributes
    ----------
    cpu, cpu_limit:
        CPU request and limit (``"2"``, ``"500m"``).
    memory, memory_limit:
        Memory request and limit (``"4Gi"``).
    gpu:
        Number of accelerators (KFP accelerator limit).
    accelerator:
        Accelerator type, e.g. ``"nvidia.com/gpu"`` (the default when ``gpu`` is set).
    image:
        The step's base image.
    retries:
        Times KFP retries the step after a failure.
    backoff_s:
        Seconds before the first retry.
    timeout_s:
        The pod's active deadline in seconds (kfp-kubernetes ``set_timeout``).
    cache:
        KFP caching on (True) or off (False) for the step.
    env:
        ``(NAME, VALUE)`` environment variables (one per NAME).
    secrets:
        ``(SECRET, KEY, ENV_NAME)``: a Kubernetes secret's key as an environment variable
        (one per ENV_NAME).
    volumes:
        ``(PVC, MOUNT_PATH)``: existing persistent volume claims to mount (one per MOUNT_PATH).
    node_selector:
        ``(LABEL, VALUE)`` node labels the pod must match (one per LABEL).
    tolerations:
        ``(KEY, VALUE, EFFECT)`` taints the pod tolerates.
    packages:
        Requirements that add to or override the derived ones (``"torch==2.1"``; one
        per distribution).
    labels, annotations:
        ``(KEY, VALUE)`` Kubernetes labels and annotations of the step's pod (one per KEY).
    """

    cpu: str | None = None
    cpu_limit: str | None = None
    memory: str | None = None
    memory_limit: str | None = None
    gpu: int | None = None
    accelerator: str | None = None
    image: str | None = None
    retries: int | None = None
    backoff_s: float | None = None
    timeout_s: int | None = None
    cache: bool | None = None
    env: tuple[tuple[str, str], ...] = field(default=(), metadata=_merge_entries(_first))
    secrets: tuple[tuple[str, str, str], ...] = field(
        default=(), metadata=_merge_entries(lambda entry: entry[2]))
    volumes: tuple[tuple[str, str], ...] = field(
        default=(), metadata=_merge_entries(lambda entry: entry[1]))
    node_selector: tuple[tuple[str, str], ...] = field(default=(), metadata=_merge_entries(_first))
    tolerations: tuple[tuple[str, str, str], ...] = ()
    packages: tuple[str, ...] = field(default=(), metadata=_merge_entries(requirement_name))
    labels: tuple[tuple[str, str], ...] = field(default=(), metadata=_merge_entries(_first))
    annotations: tuple[tuple[str, str], ...] = field(default=(), metadata=_merge_entries(_first))

    def merged(self, later: "StepSettings") -> "StepSettings":
        """These settings with ``later``'s laid over them: a value ``later`` sets wins;
        lists are merged, an entry of ``later`` replacing the one here for the same setting
        (env name, mount path, distribution, ...)."""
        return StepSettings(**_merged(self, later))


@dataclass(frozen=True)
class Registration:
    """A model a step registers in the Kubeflow Model Registry after it ran (``--register``).

    Attributes
    ----------
    variable:
        The step's variable holding the model; saved as a KFP ``Model`` artifact.
    model:
        The registered model's name (``--register VAR:NAME``; default the variable's name).
    format, format_version:
        The model format (``--model-format sklearn:1.5``); None: told in the step from the
        value's type (``runtime.registration.model_format``).
    version:
        The version's name (``--register-version``); None: the run's name.
    """

    variable: str
    model: str
    format: str | None = None
    format_version: str | None = None
    version: str | None = None


@dataclass(frozen=True)
class Loop:
    """``--for VARIABLE in ITEMS [--parallelism N]`` of a step: the step runs once per item.

    Attributes
    ----------
    variable:
        The name bound to each item while the step's code runs (the step's own: later steps
        do not see it).
    items:
        The list the step runs over: a list parameter or a variable an earlier step assigns.
    parallelism:
        How many items run at once at most (``dsl.ParallelFor(parallelism=...)``); None: no cap.
    """

    variable: str
    items: str
    parallelism: int | None = None


@dataclass(frozen=True)
class Condition:
    """``--if "EXPR"`` of a step: the step runs only when EXPR is true.

    Attributes
    ----------
    expression:
        EXPR as ``ast.unparse`` writes it back (``"best_accuracy > 0.9 and MODE == 'full'"``):
        comparisons of names with literals joined by ``and``/``or``, checked by the grammar.
    names:
        The names EXPR reads, in order of first use: pipeline parameters or scalar
        variables of earlier steps.
    """

    expression: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class SubNotebook:
    """``%%kale notebook PATH [--param NAME=EXPR ...]``: a notebook whose pipeline runs here.

    Attributes
    ----------
    path:
        The annotated notebook, relative to the folder of the one that holds the cell.
    params:
        ``(NAME, EXPR)``: the sub-notebook's parameter NAME set from EXPR, a Python
        expression over this notebook's parameters and variables.
    """

    path: str
    params: tuple[tuple[str, str], ...] = ()


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
    settings:
        The step's own execution settings (resources, image, retries, ...).
    loop:
        ``--for VAR in LIST``: the step runs once per item of LIST; None for a plain step.
    condition:
        ``--if "EXPR"``: the step runs only when EXPR is true; None for a plain step.
    registrations:
        Models the step registers in the Model Registry (``--register``).
    notebook:
        For ``kind == "notebook"``: the sub-notebook and its parameters (its ``--outputs``
        are :attr:`outputs`).
    """

    kind: str
    name: str | None = None
    after: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    settings: StepSettings = field(default_factory=StepSettings)
    loop: Loop | None = None
    condition: Condition | None = None
    registrations: tuple[Registration, ...] = ()
    notebook: SubNotebook | None = None


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
    host:
        KFP API endpoint for remote runs, e.g. ``http://127.0.0.1:8888``.
    notebook:
        Path of the notebook file, for kernels that cannot tell (nbclient, papermill).
    pip_index_urls, pip_trusted_hosts:
        Where steps install packages from on the cluster (a mirror, a private index).
    model_registry:
        The Kubeflow Model Registry's REST address (``https://registry:443``) for steps that
        ``--register`` models; without it, ``$MODEL_REGISTRY_URL`` or the config file.
    step_defaults:
        Execution settings every step gets unless it sets its own.
    on_exit:
        ``--on-exit STEP``: the step that runs after every other step, whether they
        succeeded or not (``dsl.ExitHandler``), and reads ``PIPELINE_STATUS``.
    """

    name: str | None = None
    experiment: str | None = None
    description: str | None = None
    host: str | None = None
    notebook: str | None = None
    pip_index_urls: tuple[str, ...] = field(default=(), metadata=_merge_entries(_whole_list))
    pip_trusted_hosts: tuple[str, ...] = field(default=(), metadata=_merge_entries(_whole_list))
    model_registry: str | None = None
    step_defaults: StepSettings = field(default_factory=StepSettings)
    on_exit: str | None = None

    @property
    def image(self) -> str | None:
        """The base image of every step (``--image`` on the pipeline line), or None."""
        return self.step_defaults.image

    def merged(self, later: "PipelineSettings") -> "PipelineSettings":
        """These settings with ``later``'s laid over them, as a later ``%kale pipeline`` line
        is: a value or list ``later`` sets wins; step defaults merge as
        :meth:`StepSettings.merged` does."""
        values = _merged(self, later)
        values["step_defaults"] = self.step_defaults.merged(later.step_defaults)
        return PipelineSettings(**values)


@dataclass(frozen=True)
class Cell:
    """A code cell of the notebook with its effective annotation.

    Attributes
    ----------
    index:
        Position of the cell in the notebook's cell list (0-based, counting every
        cell, markdown included); messages show it 1-based (:func:`cell_place`).
    source:
        The cell's code with the ``%%kale`` line replaced by an empty line, so
        line numbers in it are the notebook cell's own line numbers.
    annotation:
        The cell's own annotation, or the one it continues from the cell above.
    explicit:
        True when the cell carries its own ``%%kale`` line.
    cell_id:
        The nbformat cell id, when the notebook has one.
    tagged:
        True when the annotation comes from Kale's cell tags (its own or the
        cell's above), where Kale's rules apply.
    notebook:
        The file name of the notebook the cell is in when it is not the
        pipeline's own: a notebook a ``notebook:NAME`` cell references (Kale's
        composition); "" for the pipeline's notebook. Such a cell's ``index``
        is a fraction between the referencing cell's and the next one's, so
        indices stay unique and in notebook order; ``number`` is its position
        in its own notebook.
    number:
        The cell's position in its own notebook, for a cell of a referenced
        notebook; None when it is ``index``.
    scope:
        For a cell of a ``%%kale notebook`` sub-notebook: the labels of the sub-notebooks
        it is in, joined by ``/`` (``"prep"``, ``"prep/inner"``); "" for the pipeline's
        own notebook and for Kale's ``notebook:NAME`` cells.
    """

    index: int
    source: str
    annotation: Annotation
    explicit: bool = True
    cell_id: str | None = None
    tagged: bool = False
    notebook: str = ""
    number: int | None = None
    scope: str = ""

    @property
    def first_line(self) -> str:
        """The first non-empty line of the cell, for error messages."""
        for line in self.source.splitlines():
            if line.strip():
                return line.strip()
        return ""

    def describe(self) -> str:
        """``cell 8 ("model = fit(df)")``: how errors name this cell (``notebook_a.ipynb cell 2
        (...)`` for a cell of a referenced notebook); numbers as :func:`cell_place`."""
        return f"{self.place} ({self.first_line[:60]!r})"

    @property
    def place(self) -> str:
        """``cell 8`` (1-based, every cell counted), or ``notebook_a.ipynb cell 2`` for a cell
        of a referenced notebook: :func:`cell_place`."""
        if self.notebook:
            return cell_place(self.number if self.number is not None else 0, self.notebook)
        return cell_place(self.index)


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
    settings:
        The step's execution settings, pipeline defaults included.
    imports:
        ``(cell, statement)``: import statements of earlier steps that bound
        modules (or names imported from them) this step reads, replayed in the
        step instead of passing modules as data, in notebook order.
    reads_outside:
        What in the step's code reads files or other outside state
        (``"pandas.read_csv(...)"``): a cached result of the step may be stale.
    loop:
        ``--for VAR in LIST``: the step runs once per item (``dsl.ParallelFor``) and every
        output is the list of its per-item values, in item order (``dsl.Collected``).
    condition:
        ``--if "EXPR"``: the step runs only when EXPR is true (``dsl.If``).
    condition_inputs:
        The names of :attr:`condition` that earlier steps assign, with those steps (the
        others are pipeline parameters).
    scalars:
        Variables of this step a later step's condition reads: emitted as output
        parameters (JSON text) as well as artifacts.
    registrations:
        Models the step registers in the Model Registry after its code ran; each
        variable is also one of ``outputs``.
    """

    name: str
    cells: tuple[Cell, ...]
    after: tuple[str, ...] = ()
    inputs: tuple[Input, ...] = ()
    outputs: tuple[str, ...] = ()
    parameters: tuple[str, ...] = ()
    metrics: tuple[Metric, ...] = ()
    settings: StepSettings = field(default_factory=StepSettings)
    imports: tuple[tuple[Cell, str], ...] = ()
    reads_outside: tuple[str, ...] = ()
    loop: Loop | None = None
    condition: Condition | None = None
    condition_inputs: tuple[Input, ...] = ()
    scalars: tuple[str, ...] = ()
    registrations: tuple[Registration, ...] = ()

    @property
    def upstream(self) -> tuple[str, ...]:
        """Every step this one waits for (data, condition and ``--after`` edges), sorted."""
        return tuple(sorted({i.producer for i in (*self.inputs, *self.condition_inputs)}
                            | set(self.after)))


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
    warnings:
        What the compile found that may make the pipeline differ from the
        notebook run top to bottom, each naming the cell and the fix.
    """

    name: str
    settings: PipelineSettings
    parameters: tuple[Parameter, ...]
    prelude: tuple[Cell, ...]
    steps: tuple[Step, ...]
    notebook: str = ""
    warnings: tuple[str, ...] = field(default=())
    #: Kale-tagged steps that read names no step assigns: compiled with a warning, as Kale does
    #: (``%%kale`` steps get an error), so converting to ``%%kale`` lines keeps their tags.
    lenient_steps: tuple[str, ...] = ()

    def step(self, name: str) -> Step:
        """Return the step called ``name``; raises KeyError when absent."""
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)
