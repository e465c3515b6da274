"""Executes the runs of the KFP test server in worker processes, as KFP's Argo backend would.

Each run gets a :class:`Execution`: a daemon thread that starts the worker
(:mod:`tests.kfp_server.worker`) in its own process group, reads its task
events and updates the run's :class:`~tests.kfp_server.resources.RunRecord`.
Terminating or dropping a run kills the process group.
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

from tests.kfp_server.resources import RunRecord, Store

ROOT = Path(__file__).resolve().parents[2]
#: How a failed executor pod is reported by Argo (KFP shows the node message).
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
    """

    def __init__(self, store: Store, run: RunRecord, spec_text: str, arguments: dict,
                 folder: Path, pending_s: float = 0.3) -> None:
        self.store, self.run, self.folder, self.pending_s = store, run, folder, pending_s
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "pipeline.yaml").write_text(spec_text, encoding="utf-8")
        (folder / "arguments.json").write_text(json.dumps(arguments), encoding="utf-8")
        self.process: Optional[subprocess.Popen] = None
        self.outcome = ""  # "canceled" or "dropped" when the server ended the run
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"kfp-test-run-{run.fields['run_id'][:8]}")

    def start(self) -> None:
        """Start executing in the background."""
        self.thread.start()

    def cancel(self) -> None:
        """Terminate the run: CANCELING now, CANCELED when the worker is gone."""
        with self.store.lock:
            if self.run.state in ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED"):
                return
            self.run.set_state("CANCELING")
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

    def _run(self) -> None:
        time.sleep(self.pending_s)
        with self._lock:
            if self.outcome:
                return self._finish(None)
            with open(self.folder / "log.txt", "wb") as log:  # the worker keeps its own copy
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "tests.kfp_server.worker", str(self.folder / "pipeline.yaml"),
                     str(self.folder / "arguments.json"), str(self.folder / "root")],
                    cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
                    env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
        done_error: Optional[str] = None
        assert self.process.stdout is not None
        for line in self.process.stdout:  # ends when the worker exits or is killed
            event = json.loads(line)
            with self.store.lock:
                if event["event"] == "start":
                    self.run.task_started(event["task"])
                elif event["event"] == "end":
                    error = POD_ERROR if event["state"] == "FAILED" else ""
                    self.run.task_ended(event["task"], event["state"], error)
                else:
                    done_error = event["error"]
        self.process.stdout.close()
        self.process.wait()
        self._finish(done_error)

    def _finish(self, done_error: Optional[str]) -> None:
        with self.store.lock:
            run = self.run
            if self.outcome == "dropped":
                self.store.runs.pop(run.fields["run_id"], None)
                return
            running = [t for t in run.tasks if t["state"] == "RUNNING" and t is not run.root]
            if self.outcome == "canceled":
                for task in running:
                    run.finish_task(task, "CANCELED")
                run.set_state("CANCELED")
            elif done_error is None:
                for task in running:
                    run.finish_task(task, "FAILED", POD_ERROR)
                run.set_state("FAILED", f"workflow executor exited with code {self.process.returncode}")
            elif done_error:
                run.set_state("FAILED", done_error)
            else:
                failed = [t["display_name"] for t in run.tasks if t["state"] == "FAILED"]
                run.set_state("FAILED" if failed else "SUCCEEDED",
                              f"task {failed[0]!r} failed: {POD_ERROR}" if failed else "")
