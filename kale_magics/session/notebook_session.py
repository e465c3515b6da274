"""One notebook in one kernel: the state the magics and the panel share.

A :class:`NotebookSession` holds what the kernel knows beyond the saved
notebook: the user namespace (live values), the registry of ``%%kale`` cells
run here, the ``%kale pipeline`` settings run here, the last run and the last
KFP connection. There is one per IPython shell (:meth:`NotebookSession.of`),
kept on the shell itself, so the magics and a panel made with
``DeployPanel()`` share it without knowing each other.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, MutableMapping

from kale_magics.analysis.live import LiveValue, artifact_class, describe
from kale_magics.analysis.names import NameUse, scan_trees
from kale_magics.errors import AnnotationError
from kale_magics.model import Annotation, PipelineSettings, Plan
from kale_magics.notebook.annotations import parse_pipeline_line
from kale_magics.notebook.locate import locate_notebook
from kale_magics.notebook.step_record import step_record
from kale_magics.runner.connection import KfpSession
from kale_magics.runner.status import RunStatus
from kale_magics.runtime import marshal
from kale_magics.runtime.step import PIPELINE_STATUS
from kale_magics.session.control import condition_holds, run_loop
from kale_magics.session.registry import ExecutedCell, Registry

#: Kinds whose names the kernel tracks: steps (inputs, outputs) and what steps may read.
ANALYSED_KINDS = ("step", "imports", "functions", "parameters")
#: The attribute of an IPython shell that holds its session.
SHELL_ATTRIBUTE = "kale_magics_session"


@dataclass(frozen=True)
class StepRun:
    """What a step cell just run in the kernel passes: inputs with producers, outputs, live values.

    Attributes
    ----------
    name, after:
        The step's name and its ``--after`` steps.
    inputs:
        Variable -> the step run here that last bound it, for the names the cell reads.
    outputs:
        Names the cell binds (not starting with ``_``), in binding order.
    live:
        Type and size of each input and output the namespace holds.
    readers:
        Output -> the other steps run in this kernel that read it (``--outputs`` names
        too, with no reader known): what travels on, as far as the kernel knows.
    """

    name: str
    after: tuple[str, ...]
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    live: dict[str, LiveValue] = field(default_factory=dict)
    readers: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def passed(self) -> tuple[str, ...]:
        """The outputs that travel to a later step (:attr:`readers`), in binding order, then
        ``--outputs`` names the cell does not bind."""
        return (*(n for n in self.outputs if n in self.readers),
                *(n for n in self.readers if n not in self.outputs))

    def record(self) -> dict[str, Any]:
        """The step's record for the cell's output (``notebook.step_record``): what the saved
        notebook keeps of this run, read back when the file is compiled."""
        return step_record(self.name, self.after, self.inputs, self.outputs,
                           {n: v.type_name for n, v in self.live.items()},
                           {n: self.live[n].artifact_class for n in self.outputs if n in self.live})


class NotebookSession:
    """The kernel's side of one notebook.

    Parameters
    ----------
    namespace:
        The user namespace (``shell.user_ns``): live values for checks and views.

    Attributes
    ----------
    registry:
        The ``%%kale`` cells run in this kernel.
    settings:
        ``%kale pipeline`` settings run in this kernel (a later line's values win).
    last_run:
        The status of the last run started from this kernel, or None.
    server:
        The KFP connection of the last remote action, or None.
    """

    def __init__(self, namespace: MutableMapping[str, Any] | None = None) -> None:
        self.namespace: MutableMapping[str, Any] = namespace if namespace is not None else {}
        self.registry = Registry()
        self.settings = PipelineSettings()
        self.last_run: RunStatus | None = None
        self.server: KfpSession | None = None
        #: Steps whose cell raised the last time it ran here, with the error (for PIPELINE_STATUS).
        self.failed_steps: dict[str, str] = {}

    @classmethod
    def of(cls, shell: Any, fresh: bool = False) -> "NotebookSession":
        """The session of IPython ``shell`` (made on first use, or anew with ``fresh``)."""
        session = getattr(shell, SHELL_ATTRIBUTE, None)
        if session is None or fresh:
            session = cls(shell.user_ns)
            setattr(shell, SHELL_ATTRIBUTE, session)
        return session

    def pipeline(self, options: str) -> PipelineSettings:
        """Apply a ``%kale pipeline OPTIONS`` line run in the kernel; return the settings.

        Raises
        ------
        AnnotationError
            An unknown option or an invalid value.
        """
        self.settings = self.settings.merged(parse_pipeline_line(options))
        return self.settings

    def notebook(self, given: str | None = None) -> str:
        """The .ipynb path: ``given``, ``%kale pipeline --notebook``, else what the kernel can tell.

        Raises
        ------
        NotebookError
            The kernel cannot tell; the message says to pass ``--notebook``.
        """
        return locate_notebook(given or self.settings.notebook, self.namespace)

    def record(self, cell_id: str | None, annotation: Annotation, source: str,
               tree: ast.Module) -> ExecutedCell:
        """Record a run of an annotated cell (its body parsed as ``tree``), before it runs.

        Raises
        ------
        AnnotationError
            The cell runs ``--after`` a step this kernel has not run (the body must not run).
        """
        unknown = [a for a in annotation.after if a not in self.registry.step_names()]
        if unknown:
            raise AnnotationError(f"step {annotation.name!r} runs --after {unknown[0]!r}, which has "
                                  "not run as a step in this kernel; run that step's cell first, "
                                  "or fix the name")
        use = scan_trees([tree]) if annotation.kind in ANALYSED_KINDS else NameUse((), (), ())
        return self.registry.record(cell_id, annotation, source, use)

    def run_body(self, entry: ExecutedCell, run_once: Callable[[], Any]) -> tuple[Any, str]:
        """Run the body of the annotated cell ``entry`` as its control options say.

        ``run_once`` runs the body once in the user namespace and returns the value of
        its last expression. A plain cell runs once; a ``--for`` step once per item
        (:func:`kale_magics.session.control.run_loop`); a ``--if`` step only when its
        condition holds (:func:`kale_magics.session.control.condition_holds`).

        Returns
        -------
        tuple
            ``(value, note)``: the value to display (None for a loop) and a line saying
            what ran differently from a plain cell ("" for a plain cell).

        Raises
        ------
        AnnotationError
            The loop's list is missing, not a list, or holds an item JSON cannot carry; a
            name the condition reads is missing or not a scalar.
        """
        loop, condition = entry.annotation.loop, entry.annotation.condition
        step = entry.annotation.name or ""
        if entry.annotation.kind != "step":
            return run_once(), ""
        if condition is not None and not condition_holds(step, condition, self.namespace):
            return None, (f"step {step!r} did not run: its condition "
                          f"`{condition.expression}` is false")
        if step == self.settings.on_exit:
            self.namespace[PIPELINE_STATUS] = self.pipeline_status()
        self.failed_steps.pop(step, None)
        try:
            if loop is None:
                return run_once(), ""
            return None, run_loop(step, loop, entry.use.writes, self.namespace, run_once)
        except BaseException as error:
            self.failed_steps[step] = f"{type(error).__name__}: {error}"
            raise

    def sub_arguments(self, annotation: Annotation) -> dict[str, Any]:
        """The parameters of a ``%%kale notebook`` cell's notebook: each ``--param`` EXPR
        evaluated in the user namespace.

        Raises
        ------
        AnnotationError
            An EXPR fails; the message names it and the error.
        """
        assert annotation.notebook is not None
        values = {}
        for name, expression in annotation.notebook.params:
            try:
                values[name] = eval(compile(expression, f"<--param {name}>", "eval"),
                                    dict(self.namespace))
            except Exception as error:
                raise AnnotationError(f"--param {name}={expression}: {type(error).__name__}: "
                                      f"{error}; fix the expression or run the cells it reads "
                                      "first") from None
        return values

    def bind_outputs(self, status: RunStatus, producers: Mapping[str, str]) -> None:
        """Bind each variable a sub-notebook's run passed on (``producers``: variable -> step)
        into the user namespace, loaded from the run's artifacts.

        Raises
        ------
        AnnotationError
            The run kept no artifact for a variable.
        """
        loaded = {}
        for name, step in producers.items():
            saved = status.steps[step].artifacts.get(name) if step in status.steps else None
            if not saved or "path" not in saved:
                raise AnnotationError(f"--outputs {name}: step {step!r} of the sub-notebook left "
                                      "no artifact for it")
            loaded[name] = marshal.load(saved["path"], name, dict(self.namespace))
        self.namespace.update(loaded)

    def pipeline_status(self) -> dict[str, Any]:
        """``PIPELINE_STATUS`` as the ``--on-exit`` step sees it in the kernel: the notebook's own
        run so far, ``{"state": "SUCCEEDED" | "FAILED", "failed_steps": [...], "error": "..."}``,
        a step failed when its cell's last run here raised (the pipeline's shape:
        ``runtime.step.pipeline_status``)."""
        failed = list(self.failed_steps)
        return {"state": "FAILED" if failed else "SUCCEEDED", "failed_steps": failed,
                "error": self.failed_steps[failed[0]] if failed else ""}

    def unrecorded_types(self, plan: Plan, recorded: Mapping[str, str]) -> tuple[str, ...]:
        """Warnings for passed variables whose artifact class in this kernel differs from what
        the saved notebook records (the compiled IR uses the saved one: save the notebook)."""
        warnings = []
        for step in plan.steps:
            for name in step.outputs:
                if name not in self.namespace:
                    continue
                live = artifact_class(self.namespace[name])
                saved = recorded.get(name, "Artifact")
                if live != saved:
                    warnings.append(f"`{name}` of step {step.name!r} is a {live} in this kernel, "
                                    f"but the saved notebook records {saved}: save the notebook "
                                    f"so the compiled pipeline passes it as a {live}")
        return tuple(warnings)

    def step_run(self, entry: ExecutedCell) -> StepRun:
        """What the step cell ``entry`` passes, with the live values it read and bound."""
        producers = self.registry.producers(entry.key)
        loop = entry.annotation.loop
        own = {loop.variable} if loop else set()
        reads = (*((loop.items,) if loop else ()), *entry.use.reads)
        inputs = {n: producers[n] for n in reads if n in producers and n not in own}
        outputs = tuple(n for n in entry.use.writes if not n.startswith("_") and n not in own)
        live = {n: describe(self.namespace[n]) for n in (*inputs, *outputs) if n in self.namespace}
        return StepRun(entry.annotation.name or "", entry.annotation.after, inputs, outputs, live,
                       self.readers(entry))

    def readers(self, entry: ExecutedCell) -> dict[str, tuple[str, ...]]:
        """Output of the step cell ``entry`` -> the other steps run here that read it; its
        ``--outputs`` names are passed on whoever reads them (an empty tuple when unknown)."""
        outputs = [n for n in entry.use.writes if not n.startswith("_")]
        found = self.registry.readers(entry.key, outputs)
        declared = {n: () for n in entry.annotation.outputs if n not in found}
        return {**found, **declared}
