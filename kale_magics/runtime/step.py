"""Run one pipeline step: load inputs, run the notebook code, save outputs, log metrics.

This module runs inside the pipeline step (it is embedded in every generated
component, see ``codegen.embedding``), so it imports only the standard library
and its sibling runtime modules. User code is compiled with a filename naming
the notebook cell and step, so a traceback points at the notebook; its stdout
and stderr go to the step log unchanged.

The step sees what the notebook sees at its cells (README, "What a step
sees"): the imports and functions cells run first, then the imports replayed
from earlier steps, then the parameters and inputs are bound (they win over
the prelude), then the step's cells. Inputs that were one object in the
notebook (artifact metadata :data:`ORIGINS_KEY`) are bound to one object;
outputs sharing a part are a run-time warning (:func:`warn`).

Progress is reported as one event each through the step's own channel to the
local runner (:mod:`~kale_magics.runtime.channel`, never stdout): ``start``
before the step's code runs and ``end`` after (with state, duration, outputs
and metrics, or the error).
"""

from __future__ import annotations

import builtins
import gc
import json
import linecache
import os
import sys
import time
import traceback
from typing import Any, Iterator, Mapping, NamedTuple, Optional, Sequence

from kale_magics.runtime import channel, marshal, registration, shell

#: Environment variable naming the working directory of a local run's steps.
WORKDIR_ENV = "KALE_MAGICS_WORKDIR"
#: Where Kubernetes mounts a container's termination-message file (``terminationMessagePath``).
TERMINATION_LOG = "/dev/termination-log"
#: Environment variable naming that file elsewhere (the KFP test server gives each task one).
TERMINATION_LOG_ENV = "KALE_MAGICS_TERMINATION_LOG"
#: Set in a step's process forked by a local run's step server (``runner.prefork_client``
#: takes it out of a step it runs unforked): that process ends through
#: ``runner.prefork_server.finish``.
STEP_SERVER_ENV = "KALE_MAGICS_STEP_SERVER"
#: Starts the step's error summary in its termination message.
ERROR_MARKER = "kale-magics-step-error:"


class StepFailed(Exception):
    """The step's code, an output or a metric failed; already reported in the log."""


def emit(event: str, step: str, **fields: Any) -> None:
    """Report one event (``{"event": ..., "step": ..., "time": ..., **fields}``) to the local
    runner through the step's channel; ``start`` and ``end`` also begin and end the capture of
    the step's output into its log (see :func:`kale_magics.runtime.channel.emit`)."""
    channel.emit(event, step, **fields)


def run_step(step: str, code: Sequence[tuple[str, str]], parameters: Mapping[str, Any],
             inputs: Mapping[str, Any], outputs: Mapping[str, Any],
             metrics: Mapping[str, str], metrics_artifact: Any = None,
             json_parameters: Sequence[str] = (), prelude: Sequence[tuple[str, str]] = (),
             imports: Sequence[tuple[str, str]] = (), position: int = 0,
             loop: Optional[tuple[str, str]] = None, returns: str = "",
             scalars: Optional[Mapping[str, str]] = None, final_status: Any = None,
             run_steps: Sequence[str] = (), registrations: Sequence[Mapping[str, str]] = (),
             model_registry: str = "",
             run: Optional[Mapping[str, str]] = None) -> Optional[list[str]]:
    """Run a step; on failure print the user's traceback and exit with status 1.

    The step sees what the notebook sees at its cells: the ``prelude`` (imports
    and functions cells) runs first, then the replayed ``imports``, then the
    parameters and ``inputs`` are bound (so they win over the prelude), then
    ``code`` runs. When the process is KFP's executor (``python -m
    kfp.dsl.executor_main``, which ends once the step returns) and no step server
    serves the run, :func:`prepare_exit` runs after a successful step.

    Parameters
    ----------
    step:
        The step's name.
    code:
        ``(filename, source)`` blocks run in order in one namespace: the step's
        cells. ``filename`` names the notebook cell, e.g.
        ``"titanic.ipynb, cell 7 (step train)"``.
    parameters:
        Pipeline parameter values the step reads, by name. A str value
        escaped by :func:`escape_text` (it held KFP placeholder syntax) is
        unescaped.
    inputs:
        KFP input artifacts (objects with ``.path`` and ``.metadata``), by variable name.
    outputs:
        KFP output artifacts (``.path`` and ``.metadata``), by variable name.
    metrics:
        Metric key -> Python expression, evaluated after the code ran.
    metrics_artifact:
        The KFP ``Metrics`` output artifact (``log_metric``), or None.
    json_parameters:
        Names of list and dict parameters, which KFP carries as JSON text.
    prelude:
        ``(filename, source)`` blocks of the imports and functions cells, run first.
    imports:
        ``(filename, source)`` import statements of earlier steps that bound
        modules (or names imported from them) this step reads: modules are not
        passed as data, their imports are run again here, after the prelude.
    position:
        Index of the step's first cell in the notebook: of two steps passing
        the same object, the later one's value is bound (see :func:`_bind_identities`).
    loop:
        ``(VARIABLE, ITEM)`` for one item of a ``--for`` step: ITEM is JSON text, bound
        decoded to VARIABLE after the inputs; the ``start`` and ``end`` events carry it.
    returns:
        A variable the step returns as the items of a later ``--for`` step: a list whose
        items are each given as JSON text (``kale_magics.codegen.control``).
    scalars:
        Variable -> the path of an output parameter: variables a later ``--if`` compares,
        written there as JSON text (they must be numbers, text, booleans or None).
    final_status:
        For the ``--on-exit`` step: KFP's ``dsl.PipelineTaskFinalStatus`` of the run's other
        steps, bound as ``PIPELINE_STATUS`` (:func:`pipeline_status`).
    run_steps:
        For the ``--on-exit`` step: the other steps' names.
    registrations, model_registry, run:
        Models to register after the step's code ran, the Model Registry's address ("" to
        skip) and ``{"id", "name"}`` of the run (see :func:`registration.register`).

    Returns
    -------
    list of str or None
        With ``returns``: the JSON text of each item of that variable; else None.

    Raises
    ------
    SystemExit
        With status 1 when the step fails, after printing what failed.
    """
    blocks = _Blocks(tuple(prelude), tuple(imports), tuple(code))
    # A fork of a local run's step server (runner/prefork_server) ends by looking among the
    # objects it made for any that need finalizing, so none may be frozen here. A process of
    # its own freezes to make its exit cheap.
    freeze = _main_module() == "kfp.dsl.executor_main" and STEP_SERVER_ENV not in os.environ
    try:
        items = _run_step(step, blocks, parameters, inputs, outputs, metrics, metrics_artifact,
                          json_parameters, position,
                          _Control(loop, returns, scalars or {}, final_status, tuple(run_steps)),
                          _Registering(tuple(registrations), model_registry, dict(run or {})),
                          freeze)
    finally:  # an error the runtime did not expect: its traceback goes to the real stderr
        channel.OutputRelay.stop_active()
    if freeze:
        prepare_exit()
    return items


class _Control(NamedTuple):
    """The control-flow arguments of a step: its loop item, the variable it returns as items."""

    loop: Optional[tuple[str, str]] = None
    returns: str = ""
    scalars: Mapping[str, str] = {}
    final_status: Any = None
    run_steps: tuple[str, ...] = ()

    def save_scalars(self, step: str, namespace: Mapping[str, Any]) -> None:
        """Write each of :attr:`scalars` as JSON text to its output parameter's path."""
        for name, path in self.scalars.items():
            problem = scalar_problem(name, namespace.get(name)) if name in namespace else (
                f"`{name}` was never assigned (the assignment did not run)")
            if problem:
                message = f"step {step!r}: a later step's --if reads {problem}"
                print(message, file=sys.stderr)
                raise StepFailed(message, "", 0)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(json.dumps(namespace[name]))

    def fields(self) -> dict[str, Any]:
        """Event fields: the item (JSON text) of a ``--for`` step."""
        return {"item": self.loop[1]} if self.loop else {}

    def bind(self, namespace: dict[str, Any]) -> None:
        if self.loop:
            namespace[self.loop[0]] = json.loads(self.loop[1])
        if self.final_status is not None:
            namespace[PIPELINE_STATUS] = pipeline_status(self.final_status, self.run_steps)

    def items(self, step: str, namespace: Mapping[str, Any]) -> Optional[list[str]]:
        """The JSON text of each item of :attr:`returns`; StepFailed when it is not a list of
        JSON values."""
        if not self.returns:
            return None
        value = namespace.get(self.returns)
        if not isinstance(value, (list, tuple)):
            message = (f"step {step!r}: a later --for step loops over `{self.returns}`, which is "
                       f"a {type(value).__name__}, not a list; assign it a list")
            print(message, file=sys.stderr)
            raise StepFailed(message, "", 0)
        return [item_text(step, self.returns, item) for item in value]


#: The name the ``--on-exit`` step reads the run's state from.
PIPELINE_STATUS = "PIPELINE_STATUS"


def pipeline_status(final_status: Any, steps: Sequence[str]) -> dict[str, Any]:
    """``PIPELINE_STATUS`` of the ``--on-exit`` step: ``{"state": "SUCCEEDED" | "FAILED" | ...,
    "failed_steps": [...], "error": "..."}``.

    ``state`` and ``error`` come from KFP's ``dsl.PipelineTaskFinalStatus`` (its
    ``state`` and ``error_message``, KFP 2.17). KFP does not say which tasks failed:
    a local run reads it from the run's events (:mod:`~kale_magics.runtime.channel`);
    elsewhere the steps whose task names the error message holds are listed.
    """
    state = str(getattr(final_status, "state", "") or "")
    error = str(getattr(final_status, "error_message", "") or "")
    failed = _failed_in_channel(steps)
    if failed is None:
        failed = [s for s in steps if s.replace("_", "-") in error]
    return {"state": state, "failed_steps": failed, "error": error}


def _failed_in_channel(steps: Sequence[str]) -> Optional[list[str]]:
    """The steps whose (any item's) last ``end`` event in the local run's events failed, in
    ``steps`` order; None without a channel (on a cluster)."""
    folder = os.environ.get(channel.CHANNEL_ENV)
    if not folder:
        return None
    failed: set[str] = set()
    try:
        with open(os.path.join(folder, channel.EVENTS_FILE), encoding="ascii") as f:
            for line in f:
                event = json.loads(line)
                if event.get("event") == "end" and event.get("state") == "FAILED":
                    failed.add(event.get("step"))
    except (OSError, ValueError):
        return None
    return [s for s in steps if s in failed]


#: The types a ``--if`` condition compares.
SCALAR_TYPES = (bool, int, float, str, type(None))


def condition_value(expression: str, values: Mapping[str, Any]) -> bool:
    """The truth of a ``--if`` EXPR over ``values`` (the names it reads).

    EXPR was checked by the grammar (``notebook.step_options.condition``): comparisons of
    names and literals joined by and/or, so it is evaluated without builtins.
    """
    return bool(eval(compile(expression, "<--if>", "eval"), {"__builtins__": {}}, dict(values)))


def scalar_problem(name: str, value: Any) -> str:
    """"" when ``value`` of ``name`` can be compared by a ``--if``, else why not (for messages)."""
    if isinstance(value, SCALAR_TYPES):
        return ""
    return (f"`{name}` is a {type(value).__name__}, and a --if condition compares numbers, text, "
            "booleans or None; compare a number computed from it")


def run_condition(steps: Sequence[str], expression: str, values: Mapping[str, Any],
                  json_values: Sequence[str] = ()) -> bool:
    """Evaluate the ``--if`` EXPR of ``steps`` inside the pipeline's condition task.

    Parameters
    ----------
    steps:
        The steps the condition guards (reported in the ``condition`` event).
    expression:
        The checked EXPR.
    values:
        The names EXPR reads: parameter values (text escaped by :func:`escape_text` is
        unescaped), and for the names in ``json_values`` the JSON text an earlier step
        emitted (:func:`_save_scalars`).

    Returns
    -------
    bool
        The condition's value; the pipeline runs ``steps`` when it is True (``dsl.If``).
    """
    names = {n: json.loads(v) if n in json_values else unescape_text(v) for n, v in values.items()}
    value = condition_value(expression, names)
    print(f"--if {expression}: {value} ({', '.join(f'{n}={v!r}' for n, v in names.items())})")
    for step in steps:
        channel.emit("condition", step, value=value, expression=expression)
    return value


def json_item(item: Any) -> Optional[str]:
    """``item`` as the JSON text a ``--for`` step receives, or None when JSON cannot hold it
    unchanged (loop items travel as KFP parameters, which are JSON)."""
    try:
        text = json.dumps(item, sort_keys=True, allow_nan=False)
        back = json.loads(text)
    except (TypeError, ValueError):
        return None
    return text if back == item and type(back) is type(item) else None


def item_problem(step: str, name: str, item: Any) -> str:
    """Why ``item`` of ``name`` cannot be an item of ``step``'s ``--for`` loop, for messages."""
    text = repr(item)
    text = text if len(text) <= 60 else text[:57] + "..."
    return (f"step {step!r}: the item {text} of `{name}` (a {type(item).__name__}) cannot be a "
            "--for item: items travel as JSON, so use numbers, text, booleans, None, or lists "
            "and dicts of them with text keys (a path or an index instead of an object)")


def item_text(step: str, name: str, item: Any) -> str:
    """:func:`json_item`, or StepFailed (printed) naming the item."""
    text = json_item(item)
    if text is None:
        message = item_problem(step, name, item)
        print(message, file=sys.stderr)
        raise StepFailed(message, "", 0)
    return text


class _Blocks(NamedTuple):
    """The code a step runs, in order: prelude, replayed imports, the step's own cells."""

    prelude: tuple[tuple[str, str], ...]
    imports: tuple[tuple[str, str], ...]
    code: tuple[tuple[str, str], ...]

    @property
    def filenames(self) -> set[str]:
        return {filename for filename, _ in (*self.prelude, *self.imports, *self.code)}


class _Registering(NamedTuple):
    """What :func:`registration.register` needs besides the step's variables and outputs."""

    registrations: tuple[Mapping[str, str], ...] = ()
    registry: str = ""
    run: Mapping[str, str] = {}


#: Prefix of a str parameter value escaped by :func:`escape_text`.
ESCAPED_TEXT = "kale-magics-escaped-text:"
#: Text KFP replaces in a component's command and parameter values (kfp.local's
#: ``placeholder_utils.resolve_individual_placeholder``; Argo replaces ``{{...}}`` too).
PLACEHOLDER_MARKS = ("{{", "/kfp-workspace")


def escape_text(text: str) -> str:
    """``text`` unchanged unless KFP would substitute something in it; then a form it leaves alone.

    The escaped form is :data:`ESCAPED_TEXT` and JSON where every ``{`` is
    ``\\u007b`` and every ``/`` is ``\\u002f`` (valid JSON escapes), so it holds
    no placeholder; :func:`unescape_text` restores the text byte for byte.
    """
    if not any(mark in text for mark in PLACEHOLDER_MARKS) and not text.startswith(ESCAPED_TEXT):
        return text
    return ESCAPED_TEXT + json.dumps(text).replace("{", "\\u007b").replace("/", "\\u002f")


def unescape_text(value: Any) -> Any:
    """The inverse of :func:`escape_text` (other values are returned as they are)."""
    if isinstance(value, str) and value.startswith(ESCAPED_TEXT):
        return json.loads(value[len(ESCAPED_TEXT):])
    return value


def prepare_exit() -> None:
    """Make the ending process's exit cheap: collect garbage now, then freeze what is left.

    At exit CPython's collections walk every object still alive; with pandas and
    scikit-learn loaded that took 0.35 s per step here, 0.12 s after this. What the
    process had imported before the step started (KFP's executor, the runtime) was
    frozen then, so this collection skips it (about 40 % of the objects with
    Titanic's imports). Freezing after the imports cell would skip them all, but it
    would freeze the step's namespace too, and what only the namespace holds would
    never be collected. The
    step's namespace is garbage by now, so its objects are finalized here as at
    exit (an unclosed file is flushed); the frozen objects are still freed at
    shutdown, only not searched for cycles, and Python does not promise
    ``__del__`` for objects alive at exit anyway (Python reference, ``object.__del__``).
    """
    gc.collect()
    gc.freeze()


def _main_module() -> str:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", "") or ""


def _run_step(step: str, blocks: _Blocks, parameters: Mapping[str, Any],
              inputs: Mapping[str, Any], outputs: Mapping[str, Any],
              metrics: Mapping[str, str], metrics_artifact: Any, json_parameters: Sequence[str],
              position: int, control: "_Control",
              registering: "_Registering", freeze: bool = False) -> Optional[list[str]]:
    """The body of :func:`run_step`: the step runs here, in one namespace that ends with it.
    With ``freeze``, what the process holds before the step is frozen first."""
    workdir = os.environ.get(WORKDIR_ENV)
    if workdir:
        os.chdir(workdir)
    if "" not in sys.path:  # as in a kernel: modules in the working directory import
        sys.path.insert(0, "")
    if freeze:
        # What the process imported before the step (KFP's executor, this runtime) stays to the
        # end: later collections, prepare_exit's included, skip it. Not later: the step's
        # namespace must stay collectable (a file left open in a reference cycle is flushed).
        gc.freeze()
    started = time.time()
    emit("start", step, **control.fields())
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    filenames = blocks.filenames
    try:
        _run_code(blocks.prelude, namespace, filenames)
        prelude = dict(namespace)
        _run_code(blocks.imports, namespace, filenames)
        namespace.update({name: unescape_text(value) for name, value in parameters.items()})
        namespace.update({name: json.loads(parameters[name]) for name in json_parameters})
        received = _load_inputs(step, inputs, namespace, prelude)
        control.bind(namespace)
        _run_code(blocks.code, namespace, filenames)
        saved = _save_outputs(step, position, outputs, namespace, prelude, received,
                              (*blocks.prelude, *blocks.code))
        values = _log_metrics(step, metrics, namespace, metrics_artifact)
        items = control.items(step, namespace)
        control.save_scalars(step, namespace)
        registration.register(step, registering.registrations, namespace, outputs,
                              registering.registry, registering.run)
    except (StepFailed, marshal.MarshalError, registration.RegistrationError) as error:
        if not isinstance(error, StepFailed):
            print(f"step {step!r}: {error}", file=sys.stderr)
        emit("end", step, state="FAILED", duration_s=time.time() - started, **_describe(error),
             **control.fields())
        write_termination_message(step, **_describe(error))
        sys.stderr.flush()
        raise SystemExit(1) from None
    emit("end", step, state="SUCCEEDED", duration_s=time.time() - started,
         outputs=saved, metrics=values, **control.fields())
    return items


def write_termination_message(step: str, error: str, cell: str, line: int) -> None:
    """Leave a failed step's error summary as its container's Kubernetes termination message.

    Kubernetes reads the file at the container's ``terminationMessagePath`` (default
    ``/dev/termination-log``) when the container ends and puts it in the container status;
    Argo appends it to a failed pod's node message (``Error (exit code 1): <message>``,
    workflow/controller/operator.go ``inferFailedReason``), which KFP keeps in the run's
    workflow manifest (the v1beta1 run detail), where the client reads it back. The message
    is :data:`ERROR_MARKER` and one line of JSON (``step``, ``error``, ``cell``, ``line``),
    under Kubernetes' 4096-byte limit. It is written only in a KFP executor pod (KFP sets
    ``KFP_POD_NAME`` there, ``argocompiler`` ``commonEnvs``), or to the file named by
    :data:`TERMINATION_LOG_ENV`, and only when the file already exists (Kubernetes mounts
    it): a local run, even inside a notebook pod, never touches the pod's file.

    Parameters
    ----------
    step:
        The step's name.
    error, cell, line:
        ``"ZeroDivisionError: division by zero"``, the cell's filename, the 1-based line.
    """
    in_kfp_pod = bool(os.environ.get("KFP_POD_NAME"))
    path = os.environ.get(TERMINATION_LOG_ENV) or (TERMINATION_LOG if in_kfp_pod else "")
    if not path or not os.path.isfile(path):
        return
    summary = {"step": step, "error": error[:800], "cell": cell[:150], "line": line}
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"{ERROR_MARKER} {json.dumps(summary, ensure_ascii=False)}")
    except OSError:  # not writable: the step still fails with its log, only without the summary
        pass


def _run_code(blocks: Sequence[tuple[str, str]], namespace: dict[str, Any],
              filenames: set[str]) -> None:
    for filename, source in blocks:
        lines = source.splitlines(keepends=True)
        linecache.cache[filename] = (len(source), None, lines, filename)
        shell.install(namespace, filename)
        try:
            compiled = compile(source, filename, "exec")
            exec(compiled, namespace)
        except BaseException as error:  # user code may raise anything, SystemExit included
            _print_user_traceback(error, filenames)
            raise StepFailed(*_location(error, filenames, filename)) from error


def _print_user_traceback(error: BaseException, filenames: set[str]) -> None:
    """Print the traceback from the first frame in notebook code, as Jupyter shows it."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename not in filenames:
        tb = tb.tb_next
    sys.stdout.flush()
    traceback.print_exception(type(error), error, tb, file=sys.stderr)
    sys.stderr.flush()


def _location(error: BaseException, filenames: set[str], fallback: str) -> tuple[str, str, int]:
    """``(message, filename, line)`` of the deepest frame in notebook code."""
    where, line = fallback, getattr(error, "lineno", 0) or 0
    for frame, lineno in traceback.walk_tb(error.__traceback__):
        if frame.f_code.co_filename in filenames:
            where, line = frame.f_code.co_filename, lineno
    return f"{type(error).__name__}: {error}", where, line


class _Received(NamedTuple):
    """An input as it was loaded: the object and where it came from."""

    value: Any
    origins: tuple[str, ...]
    position: int


def _load_inputs(step: str, inputs: Mapping[str, Any], namespace: dict[str, Any],
                 prelude: Mapping[str, Any]) -> dict[str, _Received]:
    """Load every input into ``namespace``, then bind inputs that are one object in the notebook
    to one object here."""
    received = {}
    for name, artifact in inputs.items():
        if isinstance(artifact, list):  # the per-item values of a --for step, in item order
            namespace[name] = [marshal.load(a.path, name, namespace, prelude) for a in artifact]
            continue
        value = marshal.load(artifact.path, name, namespace, prelude)
        namespace[name] = value
        metadata = getattr(artifact, "metadata", None) or {}
        received[name] = _Received(value, tuple(metadata.get(ORIGINS_KEY) or ()),
                                   int(metadata.get(POSITION_KEY) or 0))
    _bind_identities(received, namespace)
    return received


#: Prefix of a warning the step prints in its log (runners list them with the run's warnings).
WARNING_PREFIX = "[kale-magics] warning: "
#: Objects looked at per output when checking what outputs share.
_SHARED_LIMIT = 10_000


def warn(message: str) -> None:
    """Print a warning in the step's log (after :data:`WARNING_PREFIX`) and report it to the
    local runner as a ``warning`` event, so it is never read from what the step printed."""
    sys.stdout.flush()
    print(f"{WARNING_PREFIX}{message}", file=sys.stderr, flush=True)
    channel.emit("warning", "", message=message)


def _mutable_parts(value: Any) -> Iterator[Any]:
    """The lists, dicts, sets and notebook-class instances in ``value`` (itself included),
    following containers and instance attributes, at most :data:`_SHARED_LIMIT` objects."""
    todo, seen = [value], set()
    while todo and len(seen) < _SHARED_LIMIT:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (list, tuple, set, frozenset)):
            todo.extend(obj)
        elif isinstance(obj, dict):
            todo.extend(obj.values())
        elif getattr(type(obj), "__module__", None) == "__main__" and hasattr(obj, "__dict__"):
            todo.extend(vars(obj).values())
        else:
            continue
        if not isinstance(obj, (tuple, frozenset)):
            yield obj


def _warn_shared(step: str, names: Sequence[str], namespace: Mapping[str, Any]) -> None:
    """Warn about outputs that share a mutable part without being one object: each is saved on
    its own, so a later step gets separate copies (one object under two names is kept)."""
    owner: dict[int, str] = {}
    warned = set()
    for name in sorted(names):
        value = namespace[name]
        for part in _mutable_parts(value):
            other = owner.setdefault(id(part), name)
            if other == name or namespace[other] is value or (other, name) in warned:
                continue
            warned.add((other, name))
            warn(f"step {step!r} passes `{other}` and `{name}`, which share a "
                 f"{type(part).__name__}: later steps get a separate copy of each, so a change "
                 "made in place through one is not seen through the other there; pass one of "
                 "them and make the other from it in the step that uses both")


#: Artifact metadata: the ``name@step`` origins of the object (see :func:`_origins`).
ORIGINS_KEY = "kale_same_object_as"
#: Artifact metadata: the index of the producing step's first cell.
POSITION_KEY = "kale_step_cell"


def _bind_identities(received: Mapping[str, _Received], namespace: dict[str, Any]) -> None:
    """Inputs whose origins meet were one object in the notebook: bind them to one object here,
    the value of the latest producer (a change made in place there is seen through every name)."""
    groups: list[set[str]] = []
    for name, item in sorted(received.items()):
        joined = [g for g in groups if any(set(received[m].origins) & set(item.origins)
                                           for m in g)] if item.origins else []
        merged = set().union(*joined, {name})
        groups = [g for g in groups if g not in joined] + [merged]
    for group in groups:
        if len(group) > 1:
            latest = max(sorted(group), key=lambda n: received[n].position)
            for name in group:
                namespace[name] = namespace[latest]


def _origins(step: str, name: str, value: Any, outputs: Mapping[str, Any],
             namespace: Mapping[str, Any], received: Mapping[str, _Received]) -> list[str]:
    """``name@step`` for ``name`` and every other output that is the same object, plus the
    origins of inputs that are that object: how a later step finds names that are one object."""
    found = {f"{other}@{step}" for other in outputs
             if other in namespace and namespace[other] is value}
    for item in received.values():
        if item.value is value:
            found.update(item.origins)
    return sorted(found | {f"{name}@{step}"})


def _save_outputs(step: str, position: int, outputs: Mapping[str, Any],
                  namespace: Mapping[str, Any], prelude: Mapping[str, Any],
                  received: Mapping[str, _Received],
                  code: Sequence[tuple[str, str]] = ()) -> dict[str, dict[str, Any]]:
    saved = {}
    for name, artifact in outputs.items():
        if name not in namespace:
            message = (f"step {step!r} should pass `{name}` to later steps but never assigned it "
                       "(the assignment did not run) and received no value for it; assign it on "
                       "every path through the step, or remove it from --outputs")
            print(message, file=sys.stderr)
            raise StepFailed(message, "", 0)
        value = namespace[name]
        try:
            metadata = marshal.save(value, artifact.path, name, prelude)
        except marshal.MarshalError as error:  # name the cell and line that assign it
            where, line = _assigned_at(code, name)
            message = f"step {step!r}: {error}"
            print(message + (f" ({where}, line {line})" if where else ""), file=sys.stderr)
            raise StepFailed(message, where, line) from None
        metadata[ORIGINS_KEY] = _origins(step, name, value, outputs, namespace, received)
        metadata[POSITION_KEY] = position
        artifact.metadata.update(metadata)
        saved[name] = {**metadata, "path": artifact.path}
    _warn_shared(step, list(outputs), namespace)
    return saved


def _assigned_at(code: Sequence[tuple[str, str]], name: str) -> tuple[str, int]:
    """``(filename, line)`` of the last top-level statement of ``code`` that binds ``name``."""
    import ast

    found = ("", 0)
    for filename, source in code:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for statement in tree.body:
            targets = [n for n in ast.walk(statement) if isinstance(n, ast.Name)
                       and isinstance(n.ctx, ast.Store) and n.id == name]
            if targets:
                found = (filename, statement.lineno)
    return found


def _log_metrics(step: str, metrics: Mapping[str, str], namespace: dict[str, Any],
                 artifact: Any) -> dict[str, float]:
    values: dict[str, float] = {}
    for key, expression in metrics.items():
        try:
            value = eval(compile(expression, f"<metric {key}>", "eval"), namespace)
            values[key] = float(value)
        except Exception as error:
            message = (f"metric `{key}` of step {step!r} failed: {type(error).__name__}: {error}; "
                       "a metric must evaluate to a number")
            print(message, file=sys.stderr)
            raise StepFailed(message, "", 0) from None
        if artifact is not None:
            artifact.log_metric(key, values[key])
    if artifact is not None and getattr(artifact, "path", None):
        # KFP keeps metrics in the artifact's metadata only; a file at its path makes the
        # artifact real, so kfp.local's cache (which checks that output files exist) can reuse it
        os.makedirs(os.path.dirname(artifact.path) or ".", exist_ok=True)
        with open(artifact.path, "w", encoding="utf-8") as f:
            json.dump(values, f, sort_keys=True)
    return values


def _describe(error: Exception) -> dict[str, Any]:
    if isinstance(error, StepFailed) and len(error.args) == 3:
        message, where, line = error.args
        return {"error": message, "cell": where, "line": line}
    return {"error": str(error), "cell": "", "line": 0}
