"""Runs one pipeline run of the KFP test server: ``python -m tests.kfp_server.worker SPEC ARGS ROOT CACHE``.

It plays the part of KFP's Argo workflow: it executes the uploaded IR with ``kfp.local``
(``SubprocessRunner(use_venv=False)``) and reports, as JSON lines on its stdout, each
task's start (every retry attempt), cache hit and end, and each condition group whose
condition was false, which the server applies to the run's Argo workflow. Task boundaries
come from kfp.local's own log records ("Executing task 'x'", "Task 'x' finished with status
SUCCESS", "Task x cache hit", "Skipping conditional task condition-3"), read by a filter on
the root logger, not from anything kale-magics prints, so the server works for any KFP
pipeline. A ParallelFor's iterations run in threads and kfp.local's records do not say which
iteration they are about: the worker wraps kfp.local's ``execute_task`` to note, per thread,
the iteration (``for-loop-2-iteration-1``) it runs, and tags the events with it (the
innermost loop only: a loop inside a loop is not told apart).

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
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from kale_magics.runner.local import LineSink

STARTED = re.compile(r"Executing task '([^']+)'")
FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
CACHE_HIT = re.compile(r"^Task (\S+) cache hit")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
SKIPPED = re.compile(r"^Skipping conditional task (\S+) ")
ITERATION = re.compile(r"^(.+)-iteration-(\d+)$")
#: The loop iteration the current thread runs (kfp.local runs a ParallelFor's iterations in
#: threads and logs "Executing task 'x'" without saying which iteration).
CURRENT = threading.local()


class LogSink(LineSink):
    """Stands in for stdout while kfp.local runs: the run's log, and ``emit`` for task events."""

    def __init__(self, events: TextIO, log: TextIO, termination_log: Path) -> None:
        super().__init__()
        self.events, self.log, self.termination_log = events, log, termination_log
        self.lock = threading.Lock()

    def _line(self, line: str) -> None:
        self.log.write(line + "\n")
        self.log.flush()

    def emit(self, **event: Any) -> None:
        """Write one event line, stamped with the time."""
        with self.lock:
            self.events.write(json.dumps({"time": time.time(), **event}) + "\n")
            self.events.flush()


class TaskEvents(logging.Filter):
    """Reads kfp.local's task log records (start, end, cache hit, a false condition) as events.

    A filter on the root logger, not a handler: kfp.local swaps the root logger's handlers
    for every task (``logging_utils.local_logger_context``), which races when a loop's
    iterations run in threads, so a handler misses records; a filter sees them all.
    """

    def __init__(self, sink: LogSink) -> None:
        super().__init__()
        self.sink = sink

    def filter(self, record: logging.LogRecord) -> bool:
        text, sink = ANSI.sub("", record.getMessage()), self.sink
        where = iteration()
        if (match := STARTED.search(text)) is not None:
            if not where:  # a fresh pod; a loop's iterations share the file (they run at once)
                sink.termination_log.write_text("", encoding="utf-8")
            sink.emit(event="start", task=match.group(1), **where)
        elif (match := FINISHED.search(text)) is not None:
            state = "SUCCEEDED" if match.group(2) == "SUCCESS" else "FAILED"
            message = sink.termination_log.read_text(encoding="utf-8").strip()
            sink.emit(event="end", task=match.group(1), state=state, message=message, **where)
        elif (match := CACHE_HIT.match(text)) is not None:
            sink.emit(event="cached", task=match.group(1), **where)
        elif (match := SKIPPED.match(text)) is not None:
            sink.emit(event="skipped", task=match.group(1), **where)
        return True


def iteration() -> dict[str, Any]:
    """``{"loop": group, "iteration": N}`` while this thread runs iteration N of a loop group."""
    return dict(getattr(CURRENT, "value", None) or {})


def track_iterations() -> None:
    """Make kfp.local's ``execute_task`` record, per thread, the loop iteration it runs
    (``for-loop-2-iteration-0``: kfp.local's name for iteration 0 of group ``for-loop-2``)."""
    from kfp.local.orchestrator import enhanced_dag_orchestrator as dag

    original = dag.execute_task

    def execute_task(task_name: str, **kwargs: Any) -> Any:
        match = ITERATION.match(task_name)
        if match is None:
            return original(task_name=task_name, **kwargs)
        before = getattr(CURRENT, "value", None)
        CURRENT.value = {"loop": match.group(1), "iteration": int(match.group(2))}
        try:
            return original(task_name=task_name, **kwargs)
        finally:
            CURRENT.value = before

    dag.execute_task = execute_task


def main(argv: list[str]) -> int:
    """Execute the pipeline ``argv[0]`` with arguments ``argv[1]`` under root ``argv[2]``."""
    import yaml
    from kfp import components, local

    from kale_magics.runner.local import local_ir
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
    track_iterations()
    events_filter = TaskEvents(sink)
    logging.getLogger().addFilter(events_filter)
    logging.getLogger().setLevel(logging.INFO)  # kfp.local logs outside its task contexts too
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
