"""Executes the runs of the KFP test server in worker processes, as KFP's Argo backend would.

Each run gets an :class:`Execution`: a daemon thread that starts the worker
(:mod:`tests.kfp_server.worker`) in its own process group, reads its task events and
updates the run's Argo workflow and state. Terminating or dropping a run kills the
process group.

Terminating follows KFP (``resource/resource_manager.go`` TerminateRun,
``storage/run_store.go`` TerminateRun, ``common/util/workflow.go`` IsTerminating): a run
that has not finished becomes CANCELING (no state-history entry), the workflow's
``activeDeadlineSeconds`` is set to 0, Argo kills the pods and fails the workflow, and the
run ends FAILED; nothing maps it to CANCELED. Terminating a finished (or already
terminating) run is HTTP 400 "Row not found". The lenient mode ends the run CANCELED and
accepts terminating a finished run, as the original stand-in did.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import yaml

from tests.kfp_server.mlmd import MlmdStore, task_outputs
from tests.kfp_server.protocol import HttpError
from tests.kfp_server.resources import TERMINAL, RunRecord, Store

ROOT = Path(__file__).resolve().parents[2]
#: How Argo reports a failed pod without a termination message (``inferFailedReason``).
POD_ERROR = "Error (exit code 1)"


class Execution:
    """The background execution of one run.

    Parameters
    ----------
    store, run:
        Where the run lives and its record.
    spec_text:
        The pipeline IR YAML to run.
    arguments:
        The run's parameter values.
    folder:
        Folder for the run's files (spec, arguments, pipeline root, log).
    pending_s:
        How long the run stays PENDING before its first task starts (scheduling).
    cache_root:
        kfp.local's task cache shared by the server's runs (KFP's cache), or None.
    cancel_s:
        How long Argo takes to stop a terminated run (CANCELING lasts this long).
    mlmd:
        Where the run's tasks are recorded as KFP's launcher records them (their metric values).
    """

    def __init__(self, store: Store, run: RunRecord, spec_text: str, arguments: dict,
                 folder: Path, pending_s: float = 0.3, cache_root: Optional[Path] = None,
                 cancel_s: float = 0.5, mlmd: Optional[MlmdStore] = None) -> None:
        self.store, self.run, self.folder, self.pending_s = store, run, folder, pending_s
        self.mlmd, self.spec_text = mlmd, spec_text
        self.cache_root, self.cancel_s = cache_root, cancel_s
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "pipeline.yaml").write_text(spec_text, encoding="utf-8")
        (folder / "arguments.json").write_text(json.dumps(arguments), encoding="utf-8")
        self.process: Optional[subprocess.Popen] = None
        self.outcome = ""  # "canceled" or "dropped" when the server ended the run
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"kfp-test-run-{run.run_id[:8]}")

    def start(self) -> None:
        """Start executing in the background."""
        self.thread.start()

    def cancel(self) -> None:
        """Terminate the run (see the module docstring).

        Raises
        ------
        HttpError
            400 "Row not found" in strict mode when the run is finished or already terminating.
        """
        with self.store.lock:
            run = self.run
            if run.state in TERMINAL or (run.strict and run.state == "CANCELING"):
                if run.strict:
                    raise HttpError(400, f"Failed to terminate run {run.run_id}: Invalid input error: "
                                         f"Failed to terminate a run {run.run_id}. Row not found")
                return
            run.set_state("CANCELING", record=not run.strict)
            run.workflow.terminated = True
        self._stop("canceled")

    def drop(self) -> None:
        """Lose the run mid-way: kill the worker; the run disappears from the server."""
        self._stop("dropped")

    def _stop(self, outcome: str) -> None:
        with self._lock:
            self.outcome = outcome
            if self.process is not None and self.process.poll() is None:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _command(self) -> list[str]:
        folder = self.folder
        return [sys.executable, "-m", "tests.kfp_server.worker", str(folder / "pipeline.yaml"),
                str(folder / "arguments.json"), str(folder / "root"),
                str(self.cache_root or "")]

    def _pod_env(self) -> dict[str, str]:
        """What a KFP pod knows of its run: the run id and the workflow's name (KFP's
        ``{{$.pipeline_job_uuid}}`` and ``{{$.pipeline_job_name}}``, which the worker puts in
        place of kfp.local's own), and the namespace file of its service account (named by
        ``KALE_MAGICS_NAMESPACE_FILE``; in single-user mode the ``kubeflow`` namespace)."""
        namespace = self.folder / "namespace"
        namespace.write_text(self.run.namespace or "kubeflow", encoding="utf-8")
        return {"KFP_TEST_RUN_ID": self.run.run_id, "KFP_TEST_RUN_NAME": self.run.workflow.name,
                "KALE_MAGICS_NAMESPACE_FILE": str(namespace)}

    def _run(self) -> None:
        time.sleep(self.pending_s)
        with self._lock:
            if self.outcome:
                return self._finish(None)
            with self.store.lock:
                self.run.workflow.start(time.time())
            with open(self.folder / "log.txt", "wb") as log:  # the worker keeps its own copy
                self.process = subprocess.Popen(
                    self._command(), cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
                    start_new_session=True,
                    env={**os.environ, **self._pod_env(),
                         "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
        done_error: Optional[str] = None
        assert self.process.stdout is not None
        for line in self.process.stdout:  # ends when the worker exits or is killed
            event = json.loads(line)
            if event["event"] == "done":
                done_error = event["error"]
            else:
                self._apply(event)
                self._record(event)
        self.process.stdout.close()
        self.process.wait()
        self._finish(done_error)

    def _apply(self, event: dict) -> None:
        """One task event of the worker, applied to the run's workflow."""
        with self.store.lock:
            run, task, when = self.run, event.get("task", ""), event["time"]
            if task not in run.workflow.tasks:
                return
            if run.state == "PENDING":
                run.set_state("RUNNING")
            iteration = event.get("iteration")
            if event["event"] == "start":
                run.workflow.start_task(task, when, iteration)
            elif event["event"] == "cached":
                run.workflow.cache_task(task, when, iteration)
            elif event["event"] == "skipped":
                run.workflow.skip_group(task, when, iteration)
            elif event["event"] == "end":
                message = POD_ERROR + (f": {event['message']}" if event.get("message") else "")
                run.workflow.end_task(task, event["state"] == "SUCCEEDED", when, message, iteration)

    def _record(self, event: dict) -> None:
        """A task's end, recorded in ML Metadata with the outputs it wrote (as KFP's launcher)."""
        task = event.get("task", "")
        if self.mlmd is None or event["event"] != "end" or task not in self.run.workflow.tasks:
            return
        succeeded = event["state"] == "SUCCEEDED"
        try:
            spec = next(iter(yaml.safe_load_all(self.spec_text)), None) or {}
        except yaml.YAMLError:
            spec = {}
        outputs = task_outputs(spec, str(self.folder / "root"), task) if succeeded else {}
        self.mlmd.record_task(self.run.run_id, task, succeeded, outputs)

    def _finish(self, done_error: Optional[str]) -> None:
        if self.outcome == "canceled":
            time.sleep(self.cancel_s)  # Argo notices the deadline and stops the pods
        with self.store.lock:
            run, workflow, now = self.run, self.run.workflow, time.time()
            if self.outcome == "dropped":
                self.store.runs.pop(run.run_id, None)
                return
            if not workflow.nodes:
                workflow.start(now)
            if self.outcome == "canceled":
                workflow.finish("Failed", now, "Stopped with strategy 'Terminate'")
                return run.set_state("FAILED" if run.strict else "CANCELED", "canceled")
            failed = [n["displayName"] for n in workflow.nodes.values()
                      if n["phase"] == "Failed" and n["templateName"] == "system-container-executor"]
            if done_error is None or done_error or failed:
                reason = done_error or f"workflow executor exited with code {self.process.returncode}"
                workflow.finish("Failed", now, "child failed" if failed else reason)
                return run.set_state("FAILED", f"task {failed[0]!r} failed: {POD_ERROR}" if failed
                                     else reason)
            workflow.finish("Succeeded", now)
            run.set_state("SUCCEEDED")
