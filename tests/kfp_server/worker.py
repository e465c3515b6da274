"""Runs one pipeline run of the KFP test server: ``python -m tests.kfp_server.worker SPEC ARGS ROOT``.

It plays the part of KFP's Argo workflow: it executes the uploaded IR with
``kfp.local`` (``SubprocessRunner(use_venv=False)``) and reports each task's
start and end as JSON lines on its stdout, which the server turns into
``run_details.task_details``. Task boundaries come from kfp.local's own log
lines ("Executing task 'x'", "Task 'x' finished with status SUCCESS"), not from
anything kale-magics prints, so the server works for any KFP pipeline.

It runs in its own process (and session) because kfp.local keeps process-wide
state and replaces ``builtins.print`` while a task runs; the server cancels or
drops a run by killing the process group.

As for a local run, KFP's ``pip install`` preamble is removed from every step
(nothing is installed into the test environment) and each run gets its own
temporary working directory, as a fresh container would.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import time
from typing import Any, TextIO

from kale_magics.runner.local import LineSink

STARTED = re.compile(r"Executing task '([^']+)'")
FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")


class LogSink(LineSink):
    """Stands in for stdout while kfp.local runs; writes task events to ``events``."""

    def __init__(self, events: TextIO, log: TextIO) -> None:
        super().__init__()
        self.events = events
        self.log = log

    def _line(self, line: str) -> None:
        self.log.write(line + "\n")
        self.log.flush()
        if (match := STARTED.search(line)) is not None:
            self.emit(event="start", task=match.group(1))
        elif (match := FINISHED.search(line)) is not None:
            state = "SUCCEEDED" if match.group(2) == "SUCCESS" else "FAILED"
            self.emit(event="end", task=match.group(1), state=state)

    def emit(self, **event: Any) -> None:
        """Write one event line, stamped with the time."""
        self.events.write(json.dumps({"time": time.time(), **event}) + "\n")
        self.events.flush()


def main(argv: list[str]) -> int:
    """Execute the pipeline in ``argv[0]`` with the arguments in ``argv[1]`` under root ``argv[2]``."""
    import yaml
    from kfp import components, local

    from kale_magics.runner.local import local_ir
    from kale_magics.runtime.step import WORKDIR_ENV

    spec_path, args_path, root = argv
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # task processes and stray prints go to the log, not the event stream
    with open(spec_path, encoding="utf-8") as f:
        ir = yaml.safe_load(f)
    with open(args_path, encoding="utf-8") as f:
        arguments = json.load(f)
    workdir = tempfile.mkdtemp(prefix="kfp-test-pod-")
    ir = local_ir(ir, {WORKDIR_ENV: workdir, "TMPDIR": workdir})
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root,
               raise_on_error=False)
    pipeline = components.load_component_from_text(yaml.safe_dump(ir))
    sink = LogSink(events, sys.stderr)
    try:
        with contextlib.redirect_stdout(sink):
            pipeline(**arguments)
    except Exception as error:  # reported like a workflow that could not start
        sink.emit(event="done", error=f"{type(error).__name__}: {error}")
        return 1
    sink.emit(event="done", error="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
