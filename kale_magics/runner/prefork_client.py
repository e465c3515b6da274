"""A local run's step command: ask the run's step server for a forked step process, or run
the step itself.

``kfp.local`` starts this as ``python3 -S <this file> kfp.dsl.executor_main ARGS``
(``runner.prefork.client_command``, in place of ``python3 -m kfp.dsl.executor_main ARGS``) with
``$KALE_MAGICS_STEP_SERVER`` naming the server's socket
(:mod:`kale_magics.runner.prefork_server` has the protocol). ``-S`` and built-in modules only
(``_socket``, ``_signal``, ``marshal``: ``socket``, ``signal`` and ``json`` would import
``enum`` and ``re``, three times the interpreter's own start): the client starts in about
15 ms. The client waits for the step process to end and exits as it did, so ``kfp.local``
sees one process with the step's output and exit status. With no server, or a server that
refuses, it becomes KFP's executor itself (``os.execv``), exactly the command it replaced.
"""

from __future__ import annotations

import _signal
import _socket
import marshal
import os
import sys

SERVER_ENV = "KALE_MAGICS_STEP_SERVER"
#: Signals passed on to the step process; held back until its pid is known.
FORWARDED = {_signal.SIGTERM, _signal.SIGINT}


def run_unforked() -> None:
    """Become ``python3 -m MODULE ARGS`` (``sys.argv[1:]``), the command this client stands for,
    without ``$KALE_MAGICS_STEP_SERVER`` (the step runtime reads it as "forked": a process of
    its own ends as any does, ``runtime.step.run_step``)."""
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, FORWARDED)
    env = {name: value for name, value in os.environ.items() if name != SERVER_ENV}
    os.execve(sys.executable, [sys.executable, "-m", *sys.argv[1:]], env)


class Replies:
    """The server's reply lines on ``conn`` (``b"pid 12"``, ``b"exit 0"``; ``b""`` once it closed)."""

    def __init__(self, conn: _socket.socket) -> None:
        self.conn = conn
        self.pending = b""

    def line(self) -> bytes:
        while b"\n" not in self.pending:
            try:
                chunk = self.conn.recv(4096)
            except InterruptedError:  # a forwarded signal's handler ran
                continue
            if not chunk:
                return b""
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line


def request_fork(path: str) -> tuple[Replies, int] | None:
    """Ask the server at ``path`` for a step process; the server's replies and the step
    process's pid, or None."""
    request = marshal.dumps({"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd(),
                             "executable": sys.executable})
    fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2))
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        conn.connect(path)
        conn.sendmsg([len(request).to_bytes(4, "big")],
                     [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        conn.sendall(request)
        replies = Replies(conn)
        kind, _, value = replies.line().partition(b" ")
        if kind == b"pid":
            return replies, int(value)
    except (OSError, ValueError):
        pass
    conn.close()
    return None


def wait(replies: Replies, pid: int) -> int:
    """Forward SIGTERM and SIGINT (blocked since the client started) to the step process; its
    exit code when it ends."""
    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for signum in FORWARDED:
        _signal.signal(signum, forward)
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, FORWARDED)  # one that came meanwhile runs now
    kind, _, value = replies.line().partition(b" ")
    try:
        return int(value) if kind == b"exit" else 1
    except ValueError:
        return 1  # the server went away: the step's end is unknown


def main() -> None:
    _signal.pthread_sigmask(_signal.SIG_BLOCK, FORWARDED)
    path = os.environ.get(SERVER_ENV)
    forked = request_fork(path) if path else None
    if forked is None:
        run_unforked()
    code = wait(*forked)
    if code < 0:  # ended by a signal: end the same way
        _signal.signal(-code, _signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


if __name__ == "__main__":
    main()
