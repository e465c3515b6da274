"""Run one pipeline step: load inputs, run the notebook code, save outputs, log metrics.

This module runs inside the pipeline step (it is embedded in every generated
component, see ``codegen.embedding``), so it imports only the standard library
and its sibling runtime modules. User code is compiled with a filename naming
the notebook cell and step, so a traceback points at the notebook; its stdout
and stderr go to the step log unchanged.

Progress is reported as one JSON line per event, prefixed with
:data:`EVENT_MARKER`, on stdout: ``start`` before the step's code runs and
``end`` after (with state, duration, outputs and metrics, or the error).
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
from typing import Any, Mapping, Sequence

from kale_magics.runtime import marshal, shell

#: Prefix of the event lines the step prints on stdout.
EVENT_MARKER = "##kale-magics-event##"
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
    """Print one event line: ``##kale-magics-event## {"event": ..., "step": ..., ...}``."""
    record = {"event": event, "step": step, "time": time.time(), **fields}
    sys.stdout.write(f"{EVENT_MARKER} {json.dumps(record, default=str)}\n")
    sys.stdout.flush()


def run_step(step: str, code: Sequence[tuple[str, str]], parameters: Mapping[str, Any],
             inputs: Mapping[str, Any], outputs: Mapping[str, Any],
             metrics: Mapping[str, str], metrics_artifact: Any = None,
             json_parameters: Sequence[str] = ()) -> None:
    """Run a step; on failure print the user's traceback and exit with status 1.

    When the process is KFP's executor (``python -m kfp.dsl.executor_main``,
    which ends once the step returns), :func:`prepare_exit` runs after a
    successful step.

    Parameters
    ----------
    step:
        The step's name.
    code:
        ``(filename, source)`` blocks run in order in one namespace: the
        imports and functions cells, then the step's cells. ``filename`` names
        the notebook cell, e.g. ``"titanic.ipynb, cell 7 (step train)"``.
    parameters:
        Pipeline parameter values the step reads, by name.
    inputs:
        KFP input artifacts (objects with ``.path``), by variable name.
    outputs:
        KFP output artifacts (``.path`` and ``.metadata``), by variable name.
    metrics:
        Metric key -> Python expression, evaluated after the code ran.
    metrics_artifact:
        The KFP ``Metrics`` output artifact (``log_metric``), or None.
    json_parameters:
        Names of list and dict parameters, which KFP carries as JSON text.

    Raises
    ------
    SystemExit
        With status 1 when the step fails, after printing what failed.
    """
    _run_step(step, code, parameters, inputs, outputs, metrics, metrics_artifact, json_parameters)
    if _main_module() == "kfp.dsl.executor_main":
        prepare_exit()


def prepare_exit() -> None:
    """Make the ending process's exit cheap: collect garbage now, then freeze what is left.

    At exit CPython's collections walk every object still alive; with pandas and
    scikit-learn loaded that took 0.35 s per step here, 0.12 s after this. The
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


def _run_step(step: str, code: Sequence[tuple[str, str]], parameters: Mapping[str, Any],
              inputs: Mapping[str, Any], outputs: Mapping[str, Any],
              metrics: Mapping[str, str], metrics_artifact: Any = None,
              json_parameters: Sequence[str] = ()) -> None:
    """The body of :func:`run_step`: the step runs here, in one namespace that ends with it."""
    workdir = os.environ.get(WORKDIR_ENV)
    if workdir:
        os.chdir(workdir)
    started = time.time()
    emit("start", step)
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    try:
        namespace.update(parameters)
        namespace.update({name: json.loads(parameters[name]) for name in json_parameters})
        for name, artifact in inputs.items():
            namespace[name] = marshal.load(artifact.path, name)
        _run_code(code, namespace)
        saved = {n: _save(step, n, namespace, a) for n, a in outputs.items()}
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


def _run_code(code: Sequence[tuple[str, str]], namespace: dict[str, Any]) -> None:
    filenames = {filename for filename, _ in code}
    for filename, source in code:
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


def _save(step: str, name: str, namespace: Mapping[str, Any], artifact: Any) -> dict[str, Any]:
    if name not in namespace:
        message = (f"step {step!r} should pass `{name}` to later steps but never assigned it; "
                   "check that the assignment runs, or remove the name from --outputs")
        print(message, file=sys.stderr)
        raise StepFailed(message, "", 0)
    metadata = marshal.save(namespace[name], artifact.path, name)
    artifact.metadata.update(metadata)
    return {**metadata, "path": artifact.path}


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
