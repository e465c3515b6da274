"""A local run's step command: ask the run's step server for a forked step process, or run
the step itself.

``kfp.local`` starts this as ``python3 -S <this file> kfp.dsl.executor_main ARGS``
(``runner.prefork.client_command``, in place of ``python3 -m kfp.dsl.executor_main ARGS``) with
``$KALE_MAGICS_STEP_SERVER`` naming the server's socket
(:mod:`kale_magics.runner.prefork_server` has the protocol). ``-S`` and the standard
library only: the client starts in about 20 ms. The client waits for the step process to
end and exits as it did, so ``kfp.local`` sees one process with the step's output and exit
status. With no server, or a server that refuses, it becomes KFP's executor itself
(``os.execv``), exactly the command it replaced.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
from typing import BinaryIO

SERVER_ENV = "KALE_MAGICS_STEP_SERVER"


#: Signals passed on to the step process; held back until its pid is known.
FORWARDED = {signal.SIGTERM, signal.SIGINT}


def run_unforked() -> None:
    """Become ``python3 -m MODULE ARGS`` (``sys.argv[1:]``), the command this client stands for."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    os.execv(sys.executable, [sys.executable, "-m", *sys.argv[1:]])


def request_fork(path: str) -> tuple[BinaryIO, int] | None:
    """Ask the server at ``path`` for a step process; the server's replies and the step
    process's pid, or None."""
    request = json.dumps({"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd(),
                          "executable": sys.executable}).encode()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        socket.send_fds(conn, [struct.pack(">I", len(request))], [0, 1, 2])
        conn.sendall(request)
        replies = conn.makefile("rb")
        reply = json.loads(replies.readline() or b"{}")
    except (OSError, ValueError):
        conn.close()
        return None
    if "pid" not in reply:
        conn.close()
        return None
    return replies, reply["pid"]


def wait(replies: BinaryIO, pid: int) -> int:
    """Forward SIGTERM and SIGINT (blocked since the client started) to the step process; its
    exit code when it ends."""
    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)  # one that came meanwhile runs now
    line = replies.readline()
    try:
        return int(json.loads(line)["exit"])
    except (ValueError, KeyError, TypeError):
        return 1  # the server went away: the step's end is unknown


def main() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    path = os.environ.get(SERVER_ENV)
    forked = request_fork(path) if path else None
    if forked is None:
        run_unforked()
    code = wait(*forked)
    if code < 0:  # ended by a signal: end the same way
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


if __name__ == "__main__":
    main()
