"""Run a pipeline in a child process, mirrored into a status in the caller's process.

Why a process: ``kfp.local`` redirects ``sys.stdout``, replaces
``builtins.print``, changes logging levels and (through the local runner) sets
``TMPDIR`` for the whole process while a task runs. In a kernel, a run in the
kernel's own process or thread would swallow the output of every other cell
run meanwhile and leave its state changed. In a child process the caller stays
untouched and responsive, and a run can be canceled (its process group is killed).

The child (``python -m kale_magics.targets.child``) can be started ahead of time
(:class:`ChildWorker`) so its imports (kfp, about 2 s) are paid before the run;
it waits for one :class:`Job` (pickled, on stdin), calls the job's runner
function of the core (``kale_magics.runner.local:run_local``, ...), and writes
one JSON line per status change to its stdout, which :meth:`ChildWorker.run`
applies to a :class:`~kale_magics.runner.status.RunStatus` in the caller, so
subscribers see the same status model as for any run.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar, Mapping

from kale_magics.codegen.compile import CompiledPipeline, import_kfp_dsl
from kale_magics import errors
from kale_magics.errors import KaleError
from kale_magics.model import counted
from kale_magics.runner.status import CANCELED, FAILED, RunHooks, RunStatus, StepStatus
from kale_magics.targets.target import RunTarget

_STEP_FIELDS = {f.name for f in dataclasses.fields(StepStatus)} - {"name"}
_RUN_FIELDS = ("pipeline_root", "notices", "metrics_note", "warnings")


@dataclass(frozen=True)
class Job:
    """One run for the child: which runner, the compiled pipeline, its arguments and options.

    Attributes
    ----------
    runner:
        ``"module:function"`` of a runner with the signature of
        :func:`kale_magics.runner.local.run_local` (``compiled, arguments, *, hooks, **options``).
    """

    runner: str
    compiled: CompiledPipeline
    arguments: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)


# -- the child ------------------------------------------------------------------------------

def _emit(out: IO[str], event: str, **data: Any) -> None:
    out.write(json.dumps({"event": event, **data}, default=str) + "\n")
    out.flush()


def _step_data(step: StepStatus) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(step).items() if k in _STEP_FIELDS}


def _runner(spec: str) -> Any:
    module, _, function = spec.partition(":")
    return getattr(importlib.import_module(module), function)


def main() -> int:
    """Wait for a job on stdin, run it, report on stdout (fd 1; stray output goes to stderr)."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    import_kfp_dsl()  # KFP without its client (kfp.local does not use it): 0.05 s, not 0.9 s
    import kfp.local  # noqa: F401  (paid while waiting: the reason to start ahead of time)
    from kale_magics.analysis.names import python_source
    from kale_magics.runner import local  # noqa: F401  (the local runner, also while waiting)

    python_source("pass")  # IPython's cell transformer, which a local run reads the cells with

    try:
        job: Job = pickle.load(sys.stdin.buffer)
    except EOFError:  # the caller closed before a run
        return 0
    hooks = RunHooks(
        on_step=lambda s: _emit(out, "step", name=s.name, fields=_step_data(s)),
        on_status=lambda r: _emit(out, "status", state=r.state, error=r.error,
                                  **{k: getattr(r, k) for k in _RUN_FIELDS}),
        on_message=lambda text: _emit(out, "message", text=text))
    try:
        status = _runner(job.runner)(job.compiled, job.arguments, hooks=hooks, **job.options)
    except KaleError as error:  # raised again in the caller (see ChildWorker._apply)
        _emit(out, "error", type=type(error).__name__, message=str(error))
        return 1
    _emit(out, "done", state=status.state, error=status.error, end=status.end,
          steps={n: _step_data(s) for n, s in status.steps.items()},
          **{k: getattr(status, k) for k in _RUN_FIELDS})
    return 0


# -- the caller's side ----------------------------------------------------------------------

class ChildWorker:
    """A started child process waiting for one job.

    Parameters
    ----------
    cwd:
        The child's working directory; default the caller's, so relative paths
        (``-o out``, ``--pipeline-root``) mean the same there.
    """

    def __init__(self, cwd: str | None = None) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="kale-run-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kale_magics.targets.child"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.log, cwd=cwd, start_new_session=True)
        self.canceled = False
        self.finished = False

    @property
    def alive(self) -> bool:
        """True while the child has not exited (it can still take a job)."""
        return self.process.poll() is None

    def run(self, job: Job, status: RunStatus) -> RunStatus:
        """Send ``job`` and apply the child's reports to ``status`` (calling its hooks) until
        the run ends; blocks. An interrupt (Ctrl-C) kills the child and is raised again.

        Returns
        -------
        RunStatus
            ``status``, finished: as the child reported it, CANCELED after :meth:`cancel`,
            or FAILED (with the child's log path) when the child died.

        Raises
        ------
        KaleError
            The runner refused to start (the child's error, of the same class).
        """
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        try:
            try:
                stdin.write(pickle.dumps(job))
                stdin.close()
            except BrokenPipeError:  # the child is gone (canceled, or failed at start)
                pass
            for line in stdout:
                if self._apply(status, line):
                    self.finished = True
                    return status  # the run is over: the child's exit is not waited for
            self.process.wait()
        except BaseException:
            self.cancel()
            raise
        if status.end is None:
            self._finish_abnormally(status)
        return status

    def _apply(self, status: RunStatus, line: bytes) -> bool:
        """Apply one report; True when the run is over."""
        try:
            event = json.loads(line)
        except ValueError:
            return False
        kind = event.pop("event", "")
        if kind == "step" and event.get("name") in status.steps:
            status.update_step(event["name"], **_known(event["fields"]))
        elif kind == "status":
            _set_run_fields(status, event)
            if event["state"] not in ("PENDING", "SUCCEEDED", "FAILED"):
                status.set_state(event["state"], event.get("error", ""))
        elif kind == "message":
            status.hooks.run_hook("on_message", event["text"])
        elif kind == "error":
            raise _error_class(event.get("type", ""))(event["message"])
        elif kind == "done":
            _set_run_fields(status, event)
            for name, fields in event["steps"].items():
                if name in status.steps:
                    vars(status.steps[name]).update(_known(fields))
            status.finish(event["state"], event.get("error", ""), end=event.get("end"))
            return True
        return False

    def _finish_abnormally(self, status: RunStatus) -> None:
        if self.canceled:
            status.finish(CANCELED, "canceled", running_state=CANCELED)
            return
        with open(self.log.name, encoding="utf-8", errors="replace") as log:
            tail = "".join(log.readlines()[-5:]).strip()
        status.finish(FAILED, f"the local run's process ended with exit code "
                              f"{self.process.returncode}; its log is {self.log.name}"
                              + (f":\n{tail}" if tail else ""))

    def cancel(self) -> None:
        """Stop the run: kill the child's process group (the steps' processes included)."""
        self.canceled = True
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """Stop an idle or running child and remove its log.

        A child that reported its run's end has nothing left to do but exit (interpreter
        shutdown with kfp loaded: about 0.1 s): it is left to exit by itself, not killed (so
        background processes a step started live on as before), and reaped by a daemon thread
        instead of being waited for."""
        if self.finished:
            threading.Thread(target=self.process.wait, name="kale-child-reaper", daemon=True).start()
        else:
            self.cancel()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None and not stream.closed:
                stream.close()
        self.log.close()
        os.unlink(self.log.name)


def _set_run_fields(status: RunStatus, event: dict[str, Any]) -> None:
    """Copy the run's fields the child reported (pipeline root, notices, warnings, ...)."""
    for key in _RUN_FIELDS:
        setattr(status, key, event.get(key, getattr(status, key)))


def _error_class(name: str) -> type[KaleError]:
    """The KaleError subclass called ``name`` (the child's error, raised again here)."""
    found = getattr(errors, name, None)
    return found if isinstance(found, type) and issubclass(found, KaleError) else KaleError


def _known(fields: dict[str, Any]) -> dict[str, Any]:
    """The step fields this version of the status model has."""
    return {k: v for k, v in fields.items() if k in _STEP_FIELDS}


class ChildProcessTarget(RunTarget):
    """A target that runs a runner function of the core in a :class:`ChildWorker`.

    Subclasses name the runner (:attr:`runner`) and pass its keyword options;
    a container target is one such subclass.

    Parameters
    ----------
    worker:
        A child started ahead of time (by :meth:`prepare` or by the caller);
        default: started by :meth:`prepare`, else when the run starts.
    options:
        Keyword options of the runner function.
    """

    #: ``"module:function"`` of the runner (see :class:`Job`).
    runner: ClassVar[str]
    #: How the first message says where the run happens (``"locally"``).
    where: ClassVar[str]

    def __init__(self, *, worker: ChildWorker | None = None, **options: Any) -> None:
        self.options = options
        self._worker = worker
        self._running: ChildWorker | None = None

    def prepare(self) -> None:
        if self._worker is None or not self._worker.alive:
            self._worker = ChildWorker()

    def run(self, compiled: CompiledPipeline, arguments: Mapping[str, Any],
            hooks: RunHooks) -> RunStatus:
        self.prepare()
        worker, self._worker = self._worker, None
        assert worker is not None
        self._running = worker
        status = RunStatus(pipeline=compiled.plan.name, hooks=hooks, steps={
            s.name: StepStatus(name=s.name, inputs=[i.name for i in s.inputs],
                               outputs=list(s.outputs)) for s in compiled.plan.steps},
            metric_order=[m.key for s in compiled.plan.steps for m in s.metrics])
        hooks.run_hook("on_message", f"running {compiled.plan.name} {self.where} "
                                     f"({counted(len(compiled.plan.steps), 'step')})")
        hooks.run_hook("on_status", status)
        try:
            return worker.run(Job(self.runner, compiled, dict(arguments), self.options), status)
        finally:
            self._running = None
            worker.close()

    @property
    def can_cancel(self) -> bool:
        return self._running is not None

    def cancel(self) -> None:
        worker = self._running
        if worker is not None:
            worker.cancel()

    def close(self) -> None:
        for worker in (self._worker, self._running):
            if worker is not None:
                worker.close()
        self._worker = self._running = None


if __name__ == "__main__":
    sys.exit(main())
