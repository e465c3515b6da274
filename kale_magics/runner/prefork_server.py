"""The step server of a local run: one Python process that imports KFP's executor and the
notebook's leading imports once, then forks a process for each step that asks.

A step of a local run is ``python3 -m kfp.dsl.executor_main ...`` started by ``kfp.local``;
most of its start is importing KFP (0.3-0.6 s) and the notebook's imports cell again
(pandas and scikit-learn: about 1 s). Here both are imported once per run, and each step's
process is a fork of this one that then runs ``kfp.dsl.executor_main`` as ``__main__``
exactly as ``python -m`` does (:func:`runpy.run_module`), and exits as the interpreter does
(:func:`finish`: threads joined, ``atexit``, streams flushed, then module teardown only when
something the step left alive would notice it).

It runs as a script, ``python -c "<runpy.run_path>" <this file> FD PRELOAD RUNTIME_MODULES
INPUT MODULE``, with the standard library only, so nothing of kale-magics is imported into the
steps' processes but the step runtime they import themselves, from the same folder
(:class:`RuntimeBundle`). ``PRELOAD`` is Python source of import statements only
(``runner.prefork.preload_source`` chooses them); it runs with the working directory and
``sys.path`` a step has when its imports cell runs. A step whose environment or working
directory differs from this process's is refused and its client runs the step itself,
unforked (``runner.prefork_client``).

Protocol, one connection per step on the Unix socket listening on descriptor ``FD`` (bound
by the local run before this starts, in a folder only its user can enter, so no client finds
it missing and no other user connects): the client sends a 4-byte big-endian length with its
standard input, output and error attached (``SCM_RIGHTS``), then that many bytes of
:mod:`marshal` data, ``{"argv": [...], "env": {...}, "cwd": "...", "executable": "..."}``
(``argv``: the module to run, then its arguments; marshal because the client imports
nothing it does not have built in); the server answers one line, ``pid N`` or ``refused
WHY``, and, when the step's process ends, ``exit CODE`` (:func:`os.waitstatus_to_exitcode`:
negative when a signal ended it). A client that goes away first takes its step's process
with it (``SIGKILL``). The server ends when its standard input (held by the local run)
closes.

Linux only (``os.pidfd_open``): elsewhere the local run starts no server.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import io
import json
import marshal
import os
import runpy
import selectors
import signal
import socket
import struct
import sys
import time
import types

#: Environment variables that may differ between the server and a step it forks: the
#: step's own value is set in the forked process. ``kfp.local``'s command sets
#: ``_KFP_RUNTIME`` for the step only; the step's shell (``sh -ec``) sets the others.
PER_STEP_ENV = ("_KFP_RUNTIME", "PWD", "OLDPWD", "SHLVL", "_")
#: Environment variable naming the steps' working directory (``runtime.step.WORKDIR_ENV``).
WORKDIR_ENV = "KALE_MAGICS_WORKDIR"
HEADER = struct.Struct(">I")


def log(message: str) -> None:
    """One line in the server's log (its standard output, a file of the run's log folder)."""
    now = time.time()
    print(f"{time.strftime('%H:%M:%S', time.localtime(now))}.{int(now % 1 * 1000):03d} {message}",
          flush=True)


def preload(source: str, runtime_modules: list[str]) -> None:
    """Import what the steps import first: KFP's executor with ``_KFP_RUNTIME=true`` (as the
    steps' command runs it) and ``runtime_modules``, the standard-library modules the step
    runtime imports; then ``source`` as their imports cell does, in the steps' working
    directory with ``""`` first on ``sys.path`` (``runtime.step``); then back.

    A name of ``runtime_modules`` that is not a module is skipped. An import of ``source``
    that fails ends the preload there; the step meets the same error itself.
    """
    start, cwd = time.perf_counter(), os.getcwd()
    sys.path[0] = cwd  # python -m puts the working directory first, as an absolute path
    os.environ["_KFP_RUNTIME"] = "true"  # as the steps' command sets it: KFP without its client
    import kfp.dsl.executor_main  # noqa: F401 (what every step runs)

    for name in runtime_modules:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    log(f"imported KFP's executor and the step runtime's standard modules in "
        f"{time.perf_counter() - start:.3f} s")
    start = time.perf_counter()
    workdir = os.environ.get(WORKDIR_ENV)
    if workdir:
        os.chdir(workdir)
    sys.path.insert(0, "")
    try:
        exec(compile(source, "<kale-magics preload>", "exec"), {"__name__": "__kale_preload__"})
    except Exception as error:  # the step's own import reports it
        log(f"preload stopped: {type(error).__name__}: {error}")
    finally:
        sys.path.remove("")
        os.chdir(cwd)
        os.environ.pop("_KFP_RUNTIME")  # each step sets its own (become_step)
    log(f"ran the leading imports in {time.perf_counter() - start:.3f} s "
        f"({len(sys.modules)} modules imported)")
    # The steps share these pages; their collections skip them. No collection first: imports
    # leave next to no garbage, and a full collection of pandas and scikit-learn takes 0.1 s.
    gc.freeze()


#: This process's environment as it started, before the preload (an import may set variables:
#: scikit-learn sets ``KMP_DUPLICATE_LIB_OK``, as it does in a step).
START_ENV = dict(os.environ)


def refusal(request: dict) -> str:
    """Why the step of ``request`` must not be a fork of this process ("" when it may)."""
    if request.get("executable") != sys.executable:
        return f"another Python: {request.get('executable')}"
    if request.get("cwd") != os.getcwd():
        return f"another working directory: {request.get('cwd')}"
    env = request.get("env") or {}
    differ = sorted(k for k in {*env, *START_ENV} - set(PER_STEP_ENV)
                    if env.get(k) != START_ENV.get(k))
    return f"environment variables differ: {', '.join(differ)}" if differ else ""


def read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    """The client's request and its standard input, output and error."""
    conn.settimeout(10)
    data, fds, _, _ = socket.recv_fds(conn, HEADER.size, 3)
    try:
        if len(data) != HEADER.size or len(fds) != 3:
            raise OSError("incomplete request")
        (size,) = HEADER.unpack(data)
        body = b""
        while len(body) < size:
            chunk = conn.recv(size - len(body))
            if not chunk:
                raise OSError("incomplete request")
            body += chunk
        request = marshal.loads(body)
        if not (isinstance(request, dict) and isinstance(request.get("argv"), list)
                and isinstance(request.get("env"), dict)):
            raise ValueError("not a step request")
    except (OSError, ValueError, EOFError, TypeError):
        for fd in fds:
            os.close(fd)
        raise
    conn.settimeout(None)
    return request, fds


def become_step(request: dict, fds: list[int]) -> None:
    """In the forked process: take the client's standard streams, environment, arguments and
    working directory, as a process ``kfp.local`` started would have them."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    for name in PER_STEP_ENV:
        value = request["env"].get(name)
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    sys.argv = ["", *request["argv"][1:]]
    import importlib

    importlib.invalidate_caches()  # files written since the preload are found
    generators = sys.modules.get("numpy.random")
    if generators is not None:  # a new process seeds numpy's global generator at its import
        generators.seed()


class RuntimeBundle:
    """The step runtime as the steps load it: each step gets the bundle folder the run's first
    task wrote as its input artifact ``input_name``, puts it first on ``sys.path``, imports
    ``module`` and takes the folder off again (``codegen.embedding.LOADER``, ``runtime.bundle``).
    The server does the same once, at the first step that names the folder, so the steps forked
    after it find ``module`` imported from that folder (about 10 ms a step with the bundle's
    bytecode). A step naming another folder gets the runtime's modules forgotten first."""

    def __init__(self, input_name: str, module: str) -> None:
        self.input_name, self.module = input_name, module
        self.package = module.partition(".")[0]
        self.root = ""

    def folder(self, request: dict) -> str:
        """The bundle folder ``request``'s executor input gives the step ("" when none)."""
        argv = request["argv"]
        try:
            given = json.loads(argv[argv.index("--executor_input") + 1])
            artifact = given["inputs"]["artifacts"][self.input_name]["artifacts"][0]
        except (ValueError, IndexError, KeyError, TypeError):
            return ""
        uri = artifact.get("uri") if isinstance(artifact, dict) else None
        metadata = artifact.get("metadata") or {}
        if not isinstance(uri, str) or not os.path.isabs(uri) or metadata.get("_kfp_workspace"):
            return ""
        return uri if os.path.isdir(uri) else ""

    def preload(self, request: dict) -> None:
        """Import :attr:`module` from the folder ``request`` names, unless one is imported."""
        folder = self.folder(request)
        if self.root or not folder:
            return
        sys.path.insert(0, folder)
        try:
            importlib.import_module(self.module)
            self.root = folder
            log(f"imported the step runtime from {folder}")
        except Exception as error:  # the steps import it themselves and meet the error there
            log(f"step runtime not imported: {type(error).__name__}: {error}")
            self.forget()
        finally:
            sys.path.remove(folder)
        gc.freeze()

    def forget(self) -> None:
        """Drop the imported runtime's modules (in a step given another folder)."""
        for name in [n for n in sys.modules if n.partition(".")[0] == self.package]:
            del sys.modules[name]

    def suit(self, request: dict) -> None:
        """In a forked step: keep the imported runtime only if ``request`` names its folder."""
        if self.root and self.folder(request) != self.root:
            self.forget()


class Server:
    """The accept loop: a fork per request, each step process's end reported to its client."""

    def __init__(self, listener: int, bundle: RuntimeBundle) -> None:
        self.listener = socket.socket(fileno=listener)
        self.bundle = bundle
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, ("accept",))
        self.selector.register(sys.stdin, selectors.EVENT_READ, ("lifeline",))
        self.steps: dict[int, tuple[socket.socket, int]] = {}

    def serve(self) -> tuple[dict, list[int]]:
        """Serve until standard input closes (then exit); return only in a forked step process,
        with its request and its client's standard streams."""
        while True:
            for key, _ in self.selector.select():
                kind, *data = key.data
                if kind == "accept":
                    forked = self.accept()
                    if forked is not None:
                        return forked
                elif kind == "lifeline":
                    if not os.read(sys.stdin.fileno(), 4096):
                        self.stop()
                elif kind == "client":  # the client went away before its step ended
                    self.kill(data[0])
                elif kind == "step":
                    self.reap(data[0])

    def accept(self) -> tuple[dict, list[int]] | None:
        conn, _ = self.listener.accept()
        try:
            request, fds = read_request(conn)
        except (OSError, ValueError) as error:
            log(f"bad request: {error}")
            conn.close()
            return None
        why = refusal(request)
        if why:
            log(f"refused: {why}")
            for fd in fds:
                os.close(fd)
            send(conn, "refused", why)
            conn.close()
            return None
        self.bundle.preload(request)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self.close()
            conn.close()
            self.bundle.suit(request)
            return request, fds
        for fd in fds:
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        self.steps[pid] = (conn, pidfd)
        self.selector.register(pidfd, selectors.EVENT_READ, ("step", pid))
        self.selector.register(conn, selectors.EVENT_READ, ("client", pid))
        send(conn, "pid", pid)
        log(f"forked pid {pid}: {request['argv'][-1]}")
        return None

    def kill(self, pid: int) -> None:
        conn, _ = self.steps[pid]
        self.selector.unregister(conn)
        log(f"client of pid {pid} went away: killing it")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def reap(self, pid: int) -> None:
        conn, pidfd = self.steps.pop(pid)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        log(f"pid {pid} ended: {code}")
        try:
            self.selector.unregister(conn)
        except KeyError:
            pass
        send(conn, "exit", code)
        conn.close()

    def close(self) -> None:
        """In a forked step process: let go of the server's sockets and descriptors."""
        self.selector.close()
        self.listener.close()
        for conn, pidfd in self.steps.values():
            conn.close()
            os.close(pidfd)
        self.steps.clear()

    def stop(self) -> None:
        """The run ended: kill what is left of its steps and exit (``atexit`` handlers run; the
        teardown of the preloaded modules is skipped: nothing of the server outlives the run,
        and the local run waits for it to end)."""
        for pid in list(self.steps):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log("run ended")
        atexit._run_exitfuncs()
        sys.stdout.flush()
        os._exit(0)


def finish(code: int) -> None:
    """End a forked step's process as the interpreter's exit does (``Py_FinalizeEx``), but skip
    the teardown of modules when nothing the process made would notice it; exit with ``code``.

    The teardown frees every object left, the preloaded modules' too: each free writes to a page
    this process shares with the server, which the kernel then copies (0.1-0.2 s per step with
    pandas and scikit-learn). So, in the interpreter's order: non-daemon threads are joined,
    ``atexit`` handlers run, ``sys.stdout`` and ``sys.stderr`` are flushed, garbage is collected
    (its finalizers run). Files the step left open are then closed (:func:`close_files`: in the
    teardown they may never be, when a preloaded module, frozen in the server, holds them).
    When an object this process made is still alive and would be finalized by the teardown
    (:func:`needs_finalizing`), or a flush failed, or the step disabled the collector, the
    interpreter's own exit goes on. Else the C library's buffers are flushed (what a C extension
    printed) and the process ends with :func:`os._exit`. The preloaded modules' own objects are
    the server's; Python does not promise ``__del__`` for objects alive at exit anyway (Python
    reference, ``object.__del__``).
    """
    threading = sys.modules.get("threading")
    if threading is not None:
        threading._shutdown()  # what the interpreter's exit does first (wait_for_thread_shutdown)
    atexit._run_exitfuncs()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None and not stream.closed:
                stream.flush()
    except Exception:  # the interpreter's exit reports it and exits with 120
        sys.exit(code)
    if not gc.isenabled():
        sys.exit(code)
    gc.collect()
    made = gc.get_objects()  # what this process made and still holds: the server's are frozen
    close_files(made)
    if any(needs_finalizing(obj) for obj in made):
        sys.exit(code)
    del made
    import ctypes

    ctypes.CDLL(None).fflush(None)
    os._exit(code)


def close_files(objects: list) -> None:
    """Close the files among ``objects`` that are still open, each wrapper (a text file, a buffer,
    a gzip file) before the file it wraps, so it flushes into it first. An error is printed as
    the interpreter prints a finalizer's, and the next file is closed."""
    files = [obj for obj in objects if isinstance(obj, io.IOBase) and not _closed(obj)]
    wrapped = {id(inner) for file in files for inner in _held(file)}
    for file in sorted(files, key=lambda file: id(file) in wrapped):
        if not _closed(file):
            try:
                file.close()
            except Exception:
                print(f"Exception ignored in: {file!r}", file=sys.stderr)
                import traceback

                traceback.print_exc()


def _held(obj: object) -> list:
    """What ``obj`` refers to directly or through its attributes' dictionary."""
    held = gc.get_referents(obj)
    return held + [value for item in held if isinstance(item, dict) for value in item.values()]


def needs_finalizing(obj: object) -> bool:
    """Whether the interpreter's teardown would finalize ``obj`` with an effect: an open file, a
    paused generator or coroutine (its ``finally`` would run), any other object whose type has
    ``__del__``."""
    if getattr(type(obj), "__del__", None) is None:
        return False
    if isinstance(obj, io.IOBase):
        return not _closed(obj)
    if isinstance(obj, types.GeneratorType):
        return obj.gi_suspended
    if isinstance(obj, types.CoroutineType):
        return obj.cr_suspended
    if isinstance(obj, types.AsyncGeneratorType):
        return obj.ag_frame is not None
    return True


def _closed(file: io.IOBase) -> bool:
    try:
        return bool(file.closed)
    except (ValueError, AttributeError):  # detached from its buffer, or half made
        return True


def send(conn: socket.socket, kind: str, value: object) -> None:
    """One reply line, ``KIND VALUE``, to a client; a client that went away is not an error."""
    text = " ".join(f"{value}".split())  # one line
    try:
        conn.sendall(f"{kind} {text}\n".encode(errors="replace"))
    except OSError:
        pass


def main() -> None:
    """Start serving (``sys.argv``: the listening socket's descriptor, the preload source, the
    runtime's standard modules separated by spaces, the runtime bundle's input name and the
    module the steps import from it); in
    a forked step process run the module the client names (KFP's executor) as ``python -m
    MODULE ARGS`` would, then exit normally."""
    listener, source, runtime_modules = int(sys.argv[1]), sys.argv[2], sys.argv[3].split()
    server = Server(listener, RuntimeBundle(sys.argv[4], sys.argv[5]))  # clients may connect
    # (and wait) while the preload runs
    preload(source, runtime_modules)
    request, fds = server.serve()
    del server
    become_step(request, fds)
    code = 0
    try:
        runpy.run_module(request["argv"][0], run_name="__main__", alter_sys=True)
    except SystemExit as exiting:  # as the interpreter reads it (pythonrun.c _Py_HandleSystemExit)
        if exiting.code is not None and not isinstance(exiting.code, int):
            raise  # printed by the interpreter, which exits with 1
        code = exiting.code or 0
    finish(code)


if __name__ == "__main__":
    main()
