"""Runs one pipeline run of the KFP test server: ``python -m tests.kfp_server.worker SPEC ARGS ROOT CACHE``.

It plays the part of KFP's Argo workflow: it executes the uploaded IR with ``kfp.local``
(``SubprocessRunner(use_venv=False)``) and reports, as JSON lines on its stdout, each
task's start (every retry attempt), cache hit and end, which the server applies to the
run's Argo workflow. Task boundaries come from kfp.local's own log lines ("Executing task
'x'", "Task 'x' finished with status SUCCESS", "Task x cache hit"), not from anything
kale-magics prints, so the server works for any KFP pipeline.

Like a pod, every task gets a Kubernetes termination-message file: empty when the task
starts, read when it ends (its text becomes the end event's ``message``, which Argo puts
in the node message). Its path is in :data:`~kale_magics.runtime.step.TERMINATION_LOG_ENV`,
as Kubernetes mounts the file at ``/dev/termination-log``.

It runs in its own process (and session) because kfp.local keeps process-wide state and
replaces ``builtins.print`` while a task runs; the server cancels or drops a run by killing
the process group. As for a local run, KFP's ``pip install`` preamble is removed from every
step (nothing is installed into the test environment) and each run gets its own temporary
working directory, as a fresh container would. With a cache folder (argument 4), kfp.local's
task cache stands in for KFP's: a task whose component, command and inputs ran before is
not executed again (the run's own folders are passed through the environment, not the IR,
so they do not change the cache key).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from kale_magics.runner.local import LineSink

STARTED = re.compile(r"Executing task '([^']+)'")
FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
CACHE_HIT = re.compile(r"^Task (\S+) cache hit")


class LogSink(LineSink):
    """Stands in for stdout while kfp.local runs; writes task events to ``events``."""

    def __init__(self, events: TextIO, log: TextIO, termination_log: Path) -> None:
        super().__init__()
        self.events, self.log, self.termination_log = events, log, termination_log

    def _line(self, line: str) -> None:
        self.log.write(line + "\n")
        self.log.flush()
        if (match := STARTED.search(line)) is not None:
            self.termination_log.write_text("", encoding="utf-8")  # a fresh pod
            self.emit(event="start", task=match.group(1))
        elif (match := FINISHED.search(line)) is not None:
            state = "SUCCEEDED" if match.group(2) == "SUCCESS" else "FAILED"
            message = self.termination_log.read_text(encoding="utf-8").strip()
            self.emit(event="end", task=match.group(1), state=state, message=message)

    def emit(self, **event: Any) -> None:
        """Write one event line, stamped with the time."""
        self.events.write(json.dumps({"time": time.time(), **event}) + "\n")
        self.events.flush()


class CacheHits(logging.Handler):
    """Reports kfp.local's cache hits (logged outside the task's log context) as events."""

    def __init__(self, sink: LogSink) -> None:
        super().__init__(logging.INFO)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if (match := CACHE_HIT.match(record.getMessage())) is not None:
            self.sink.emit(event="cached", task=match.group(1))


def main(argv: list[str]) -> int:
    """Execute the pipeline ``argv[0]`` with arguments ``argv[1]`` under root ``argv[2]``."""
    import yaml
    from kfp import components, local

    from kale_magics.runner.local import local_ir
    from kale_magics.runner.local_cache import listening
    from kale_magics.runtime.step import TERMINATION_LOG_ENV, WORKDIR_ENV

    spec_path, args_path, root, cache_root = argv
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # task processes and stray prints go to the log, not the event stream
    with open(spec_path, encoding="utf-8") as f:
        ir = yaml.safe_load(f)
    with open(args_path, encoding="utf-8") as f:
        arguments = json.load(f)
    workdir = tempfile.mkdtemp(prefix="kfp-test-pod-")
    termination_log = Path(root).parent / "termination-log"
    termination_log.write_text("", encoding="utf-8")
    os.environ.update({WORKDIR_ENV: workdir, "TMPDIR": workdir,
                       TERMINATION_LOG_ENV: str(termination_log)})
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root,
               raise_on_error=False, enable_caching=bool(cache_root), cache_root=cache_root or None)
    text = yaml.safe_dump(local_ir(ir, {}))
    for placeholder, variable in (("{{$.pipeline_job_uuid}}", "KFP_TEST_RUN_ID"),
                                  ("{{$.pipeline_job_name}}", "KFP_TEST_RUN_NAME")):
        if os.environ.get(variable):  # as KFP's driver resolves them: the run's, not kfp.local's
            text = text.replace(placeholder, os.environ[variable])
    pipeline = components.load_component_from_text(text)
    sink = LogSink(events, sys.stderr, termination_log)
    try:
        with contextlib.redirect_stdout(sink), listening(CacheHits(sink)):
            pipeline(**arguments)
    except Exception as error:  # reported like a workflow that could not start
        sink.emit(event="done", error=f"{type(error).__name__}: {error}")
        return 1
    sink.emit(event="done", error="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
