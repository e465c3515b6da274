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
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

from kale_magics.runtime import channel, marshal, shell

#: Environment variable naming the working directory of a local run's steps.
WORKDIR_ENV = "KALE_MAGICS_WORKDIR"
#: Where Kubernetes mounts a container's termination-message file (``terminationMessagePath``).
TERMINATION_LOG = "/dev/termination-log"
#: Environment variable naming that file elsewhere (the KFP test server gives each task one).
TERMINATION_LOG_ENV = "KALE_MAGICS_TERMINATION_LOG"
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
             imports: Sequence[tuple[str, str]] = (), position: int = 0) -> None:
    """Run a step; on failure print the user's traceback and exit with status 1.

    The step sees what the notebook sees at its cells: the ``prelude`` (imports
    and functions cells) runs first, then the replayed ``imports``, then the
    parameters and ``inputs`` are bound (so they win over the prelude), then
    ``code`` runs. When the process is KFP's executor (``python -m
    kfp.dsl.executor_main``, which ends once the step returns),
    :func:`prepare_exit` runs after a successful step.

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

    Raises
    ------
    SystemExit
        With status 1 when the step fails, after printing what failed.
    """
    blocks = _Blocks(tuple(prelude), tuple(imports), tuple(code))
    try:
        _run_step(step, blocks, parameters, inputs, outputs, metrics, metrics_artifact,
                  json_parameters, position)
    finally:  # an error the runtime did not expect: its traceback goes to the real stderr
        channel.OutputRelay.stop_active()
    if _main_module() == "kfp.dsl.executor_main":
        prepare_exit()


class _Blocks(NamedTuple):
    """The code a step runs, in order: prelude, replayed imports, the step's own cells."""

    prelude: tuple[tuple[str, str], ...]
    imports: tuple[tuple[str, str], ...]
    code: tuple[tuple[str, str], ...]

    @property
    def filenames(self) -> set[str]:
        return {filename for filename, _ in (*self.prelude, *self.imports, *self.code)}


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
              position: int) -> None:
    """The body of :func:`run_step`: the step runs here, in one namespace that ends with it."""
    workdir = os.environ.get(WORKDIR_ENV)
    if workdir:
        os.chdir(workdir)
    if "" not in sys.path:  # as in a kernel: modules in the working directory import
        sys.path.insert(0, "")
    if _main_module() == "kfp.dsl.executor_main":
        # What the process imported before the step (KFP's executor, this runtime) stays to the
        # end: later collections, prepare_exit's included, skip it. Not later: the step's
        # namespace must stay collectable (a file left open in a reference cycle is flushed).
        gc.freeze()
    started = time.time()
    emit("start", step)
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    filenames = blocks.filenames
    try:
        _run_code(blocks.prelude, namespace, filenames)
        prelude = dict(namespace)
        _run_code(blocks.imports, namespace, filenames)
        namespace.update({name: unescape_text(value) for name, value in parameters.items()})
        namespace.update({name: json.loads(parameters[name]) for name in json_parameters})
        received = _load_inputs(step, inputs, namespace, prelude)
        _run_code(blocks.code, namespace, filenames)
        saved = _save_outputs(step, position, outputs, namespace, prelude, received,
                              (*blocks.prelude, *blocks.code))
        values = _log_metrics(step, metrics, namespace, metrics_artifact)
    except (StepFailed, marshal.MarshalError) as error:
        if isinstance(error, marshal.MarshalError):
            print(f"step {step!r}: {error}", file=sys.stderr)
        emit("end", step, state="FAILED", duration_s=time.time() - started, **_describe(error))
        write_termination_message(step, **_describe(error))
        sys.stderr.flush()
        raise SystemExit(1) from None
    emit("end", step, state="SUCCEEDED", duration_s=time.time() - started,
         outputs=saved, metrics=values)


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
