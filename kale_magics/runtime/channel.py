"""The step's channel to the local runner: an events file and the step's own log file.

A local run (``runner.local``) names a folder in :data:`CHANNEL_ENV`. In it the
step runtime

- appends one JSON line per event (``start``, ``end``, ``warning``) to :data:`EVENTS_FILE`,
  so nothing the user's code prints (any bytes, a line that looks like an
  event) is ever read as an event: the step's stdout carries output only;
- while the step's code runs, points the process's stdout and stderr (file
  descriptors 1 and 2, so ``print``, ``!cmd``, C libraries and child
  processes alike) into a pipe whose reader thread writes every byte to
  ``<step>.log`` in that folder (:class:`OutputRelay`). kfp.local reads the
  step's stdout until every holder of it has closed it, so a background child
  (``subprocess.Popen(...)``) started by the step would otherwise keep the run
  waiting until the child exits; children hold the relay's pipe instead, and
  the step's end is its own. Output a background child writes after the step
  ended is not kept (the pipe's reader is gone: the child gets ``EPIPE``).

After each event one empty line is written to the real stdout (kfp.local's
pipe), so the runner, which reads kfp.local's output, looks at the events file
at once. Without :data:`CHANNEL_ENV` (on a KFP cluster) events are not written
and output goes to stdout and stderr as usual.

Standard library only: this module runs inside the pipeline step.
"""

from __future__ import annotations

import json
import os
import select
import sys
import threading
import time
from typing import Any, ClassVar, Optional

#: Environment variable naming the channel folder of a local run.
CHANNEL_ENV = "KALE_MAGICS_CHANNEL"
#: The events file in the channel folder: one JSON object per line.
EVENTS_FILE = "events.jsonl"
#: Seconds a step's end waits for its log to be written out (a child flooding the pipe).
DRAIN_TIMEOUT_S = 10.0


def log_path(folder: str, step: str) -> str:
    """The step's log file in the channel ``folder``: ``<folder>/<step>.log``."""
    return os.path.join(folder, f"{step}.log")


def emit(event: str, step: str, **fields: Any) -> None:
    """Append one event to the channel's events file (nothing without a channel).

    ``start`` then starts capturing the step's output into its log; ``end``
    first stops it, so the log is complete when the runner reads the event.
    """
    folder = os.environ.get(CHANNEL_ENV)
    if not folder:
        return
    if event == "end":
        OutputRelay.stop_active()
    record = {"event": event, "step": step, "time": time.time(), **fields}
    line = (json.dumps(record, default=str) + "\n").encode("ascii")  # ensure_ascii: any text fits
    fd = os.open(os.path.join(folder, EVENTS_FILE), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    _wake()
    if event == "start":
        OutputRelay.start(log_path(folder, step))


def _wake() -> None:
    """One empty line on the real stdout (kfp.local's pipe), so the runner reads the events
    file now; while the step's output is relayed, fd 1 is the relay's and the real one saved."""
    relay = OutputRelay.active
    try:
        os.write(relay.saved[0] if relay is not None else 1, b"\n")
    except OSError:
        pass


class OutputRelay:
    """Stdout and stderr of this process (fds 1 and 2) into a log file, through a pipe.

    The process's standard streams exist once per process, so at most one relay
    is active (:attr:`active`).
    """

    active: ClassVar[Optional["OutputRelay"]] = None

    def __init__(self, path: str) -> None:
        _flush_std()
        self.saved = (os.dup(1), os.dup(2))  # os.dup: not inherited by child processes
        self.read, write = os.pipe()
        os.dup2(write, 1)
        os.dup2(write, 2)
        os.close(write)
        self.log = open(path, "ab", buffering=0)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._pump, name="kale-magics-output", daemon=True)
        self.thread.start()

    @classmethod
    def start(cls, path: str) -> None:
        """Start relaying into ``path`` (appending: a retried step keeps its earlier attempts)."""
        cls.stop_active()
        cls.active = cls(path)

    @classmethod
    def stop_active(cls) -> None:
        """Stop the active relay, if any; see :meth:`stop`."""
        relay, cls.active = cls.active, None
        if relay is not None:
            relay.stop()

    def _pump(self) -> None:
        """Copy the pipe to the log until end of file, or until stopping and nothing is left."""
        while True:
            ready, _, _ = select.select([self.read], [], [], 0.05)
            if ready:
                data = os.read(self.read, 1 << 16)
                if not data:
                    return
                self.log.write(data)
            elif self.stopping.is_set():
                return

    def stop(self) -> None:
        """Give the process its own stdout and stderr back, and write out what was captured.

        Everything this process wrote is in the log when this returns (within
        :data:`DRAIN_TIMEOUT_S`); children still holding the pipe do not delay it.
        """
        _flush_std()
        for fd, saved in zip((1, 2), self.saved):
            os.dup2(saved, fd)
            os.close(saved)
        self.stopping.set()
        self.thread.join(DRAIN_TIMEOUT_S)
        if not self.thread.is_alive():
            os.close(self.read)
            self.log.close()


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # closed or replaced by user code
            pass
