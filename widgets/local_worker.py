"""Local runs for the panel in a child process, mirrored into a status in the kernel.

Why a process and not a thread of the kernel: ``kfp.local`` redirects
``sys.stdout`` and replaces ``builtins.print`` for the whole process while a
task runs, so a threaded run swallows the ``print`` output of every other cell
the user runs meanwhile (into the step's log), and its state is process-global.
In a child process the kernel stays untouched and responsive, and a local run
can be canceled (its process group is killed).

The child (``python -m kale_widgets.local_worker``) is started ahead of time so
its imports (kfp, ~2 s) are paid before Run is pressed; it waits for one job
(a pickled :class:`Job` on stdin), runs it with :func:`kale_magics.api.run_local`,
and writes one JSON line per status change to its stdout, which the kernel
applies to its own :class:`~kale_magics.runner.status.RunStatus` so the panel's
hooks see the same status model as for any run.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import IO, Any

from kale_magics import api
from kale_magics.runner.status import CANCELED, FAILED, RunStatus, StepStatus

_STEP_FIELDS = {f.name for f in dataclasses.fields(StepStatus)} - {"name"}
_RUN_FIELDS = ("pipeline_root", "notices", "metrics_note")


@dataclass(frozen=True)
class Job:
    """One local run: the compiled pipeline, its arguments and run options."""

    compiled: api.CompiledPipeline
    arguments: dict[str, Any]
    pipeline_root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def run_options(enable_caching: bool) -> dict[str, Any]:
    """Keyword options of :func:`kale_magics.api.run_local` for the panel's settings
    (caching only where the installed version takes it)."""
    accepted = inspect.signature(api.run_local).parameters
    return {"enable_caching": enable_caching} if "enable_caching" in accepted else {}


# -- the child ------------------------------------------------------------------------------

def _emit(out: IO[str], event: str, **data: Any) -> None:
    out.write(json.dumps({"event": event, **data}, default=str) + "\n")
    out.flush()


def _step_data(step: StepStatus) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(step).items() if k in _STEP_FIELDS}


def main() -> int:
    """Wait for a job on stdin, run it, report on stdout (fd 1; stray output goes to stderr)."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        job: Job = pickle.load(sys.stdin.buffer)
    except EOFError:  # the panel closed before a run
        return 0
    hooks = api.RunHooks(
        on_step=lambda s: _emit(out, "step", name=s.name, fields=_step_data(s)),
        on_status=lambda r: _emit(out, "status", state=r.state, error=r.error,
                                  **{k: getattr(r, k) for k in _RUN_FIELDS}))
    try:
        status = api.run_local(job.compiled, job.arguments, pipeline_root=job.pipeline_root,
                               hooks=hooks, **job.options)
    except api.KaleError as error:
        _emit(out, "error", message=f"{type(error).__name__}: {error}")
        return 1
    _emit(out, "done", state=status.state, error=status.error, end=status.end,
          steps={n: _step_data(s) for n, s in status.steps.items()})
    return 0


# -- the kernel's side ----------------------------------------------------------------------

class LocalWorker:
    """A started child process waiting for one local run.

    Parameters
    ----------
    cwd:
        The child's working directory (runs use the notebook's folder anyway).
    """

    def __init__(self, cwd: str | None = None) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="kale-panel-run-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kale_widgets.local_worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.log, cwd=cwd, start_new_session=True)
        self.canceled = False

    def run(self, job: Job, status: RunStatus) -> RunStatus:
        """Send ``job`` and apply the child's reports to ``status`` (calling its hooks) until
        the run ends; blocks, so call it from a thread.

        Returns
        -------
        RunStatus
            ``status``, finished: as the child reported it, CANCELED after :meth:`cancel`,
            or FAILED (with the child's log path) when the child died.
        """
        stdin = self.process.stdin
        assert stdin is not None and self.process.stdout is not None
        try:
            stdin.write(pickle.dumps(job))
            stdin.close()
        except BrokenPipeError:  # the child is gone (canceled, or failed at start)
            pass
        for line in self.process.stdout:
            if self._apply(status, line):
                break
        self.process.wait()
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
            for key in _RUN_FIELDS:
                setattr(status, key, event.get(key, getattr(status, key)))
            if event["state"] not in ("PENDING", "SUCCEEDED", "FAILED"):
                status.set_state(event["state"], event.get("error", ""))
        elif kind == "error":
            status.finish(FAILED, event["message"])
            return True
        elif kind == "done":
            for name, fields in event["steps"].items():
                if name in status.steps:
                    vars(status.steps[name]).update(_known(fields))
            status.finish(event["state"], event.get("error", ""), end=event.get("end"))
            return True
        return False

    def _finish_abnormally(self, status: RunStatus) -> None:
        if self.canceled:
            status.finish(CANCELED, "canceled from the panel", running_state=CANCELED)
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
        """Stop an idle or running child and remove its log."""
        self.cancel()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None and not stream.closed:
                stream.close()
        self.log.close()
        os.unlink(self.log.name)


def _known(fields: dict[str, Any]) -> dict[str, Any]:
    """The step fields this version of the status model has."""
    return {k: v for k, v in fields.items() if k in _STEP_FIELDS}


if __name__ == "__main__":
    sys.exit(main())
