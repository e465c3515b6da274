"""Forked step processes for local runs: import KFP and the notebook's leading imports once per
run instead of once per step.

A local run starts a step server (:mod:`kale_magics.runner.prefork_server`) next to
``kfp.local``; each step's command starts a small client
(:mod:`kale_magics.runner.prefork_client`) that gets a fork of the server as its step
process. What a step computes stays what a fresh ``python -m kfp.dsl.executor_main``
computes, because the server imports only what the step would import first anyway, in
the same state:

- only the leading run of import statements of the imports and functions cells (the step
  runs them first), stopping at the first other statement (``os.environ[...] = ...``,
  ``%env``, a function) and at the first module that is neither in the standard library
  nor in :data:`FORK_SAFE`, or that the notebook's folder holds (a ``%%writefile`` module
  can change before a step runs);
- in the steps' working directory, with the run's environment and ``sys.path``; a step
  whose environment differs (``--env`` on the step) runs unforked;
- besides, the standard-library modules the step runtime imports (:data:`RUNTIME_IMPORTS`),
  which every step imports before or after its code, and, once the run's first task wrote it,
  the runtime itself from the bundle folder every step imports it from;
- numpy's global random generator is seeded afresh in each step process, as at import
  (Python's ``random`` reseeds itself on fork);
- the step process ends as the interpreter's exit does (``prefork_server.finish``).

What differs: output printed or warnings shown while the leading imports run go to the
server's log (``step-server.log`` in the run's log folder), not the step's log; a step
process's parent is the server. Set ``KALE_MAGICS_PREFORK=0`` to start every step
unforked. Linux only; elsewhere every step starts unforked.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.machinery
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Mapping

from kale_magics.codegen.cell_code import python_sources
from kale_magics.codegen.embedding import RUNTIME_INPUT, RUNTIME_MODULE
from kale_magics.model import Plan
from kale_magics.runner.prefork_client import SERVER_ENV
from kale_magics.runner.process_env import environment_variables

#: Environment variable that turns the step server off when "0".
PREFORK_ENV = "KALE_MAGICS_PREFORK"
#: Environment variable holding the words that start the client in the steps' command
#: (``-S <client script>``); unset, the command starts KFP's executor as KFP's does.
LAUNCH_ENV = "KALE_MAGICS_STEP_LAUNCH"
#: The server's log, in the run's log folder.
LOG_NAME = "step-server.log"
#: Third-party packages imported ahead of the steps, besides the standard library: their import
#: reads nothing but the environment and the working directory, which the server shares, and
#: the threads it starts survive a fork as designed (OpenBLAS and Arrow re-form their pools in
#: the child; OpenMP in xgboost and LightGBM starts its pool at the first parallel region, in
#: the step). Not here: torch, TensorFlow, JAX (threads and device state at import that a fork
#: breaks or that could not be checked here).
FORK_SAFE = frozenset({"numpy", "pandas", "scipy", "sklearn", "matplotlib", "seaborn",
                       "statsmodels", "xgboost", "lightgbm", "PIL", "joblib", "pyarrow", "yaml",
                       "requests", "cloudpickle", "dill"})
#: What KFP's lightweight component runs, and what runs instead (``kfp.local`` puts its own
#: Python in place of ``python3``): the client where a step server set ``$KALE_MAGICS_STEP_LAUNCH``,
#: else KFP's executor itself (a test server's run, a run with the server off).
EXECUTOR = "python3 -m kfp.dsl.executor_main"
CLIENT = "python3 ${%s:--m} kfp.dsl.executor_main" % LAUNCH_ENV
SERVER_SOURCE = Path(__file__).with_name("prefork_server.py")
#: Runs the server script by its path with ``sys.path`` as ``python -c`` leaves it (not the
#: script's folder first, as ``python SCRIPT`` would: the steps inherit it).
SERVER_BOOT = "import runpy, sys; runpy.run_path(sys.argv.pop(1), run_name='__main__')"
CLIENT_SOURCE = Path(__file__).with_name("prefork_client.py")


#: The standard-library modules the step runtime (``kale_magics.runtime``, which every step
#: loads from the run's bundle) imports anywhere in its code: the step server imports them
#: before forking. Written out (reading them from the runtime's source in each run's process
#: took 0.1 s); ``tests/test_prefork.py`` checks the list against the source.
RUNTIME_IMPORTS = ("ast", "base64", "builtins", "concurrent.futures", "contextlib", "dataclasses",
                   "functools", "gc", "importlib", "importlib.metadata", "io", "json",
                   "linecache", "logging", "lzma", "math", "mmap", "os", "pickle", "platform",
                   "re", "select", "string", "subprocess", "sys", "threading", "time",
                   "traceback", "types", "typing", "warnings")


def client_command(script: str) -> str:
    """KFP's component script (``sh -ec SCRIPT``) with the executor started through the client;
    ``script`` unchanged when it does not start KFP's executor."""
    return script.replace(EXECUTOR, CLIENT)


def preload_source(plan: Plan, workdir: str) -> str:
    """The import statements the step server runs ahead of the steps (Python source, one per
    line, from ``ast.unparse``): the leading imports of ``plan``'s imports and functions cells,
    up to the first statement that is not a fork-safe import (module docstring above).

    ``workdir`` is the steps' working directory: a module found there is never preloaded.
    """
    sources = python_sources(plan.prelude)
    kept: list[str] = []
    for cell in plan.prelude:
        try:
            body = ast.parse(sources[cell.index]).body
        except (SyntaxError, ValueError):
            break
        for node in body:
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                continue
            if not _preloadable(node, workdir):
                return "\n".join(kept)
            kept.append(ast.unparse(node))
    return "\n".join(kept)


def _preloadable(node: ast.stmt, workdir: str) -> bool:
    if isinstance(node, ast.Import):
        modules = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        modules = [node.module]
    else:
        return False
    tops = {module.partition(".")[0] for module in modules}
    return all((top in FORK_SAFE or top in sys.stdlib_module_names)
               and importlib.machinery.PathFinder.find_spec(top, [workdir]) is None
               for top in tops)


def supported() -> bool:
    """True when steps can be forked here: Linux with ``pidfd_open`` and descriptor passing, and
    not turned off with ``KALE_MAGICS_PREFORK=0``."""
    if os.environ.get(PREFORK_ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    if not (hasattr(os, "pidfd_open") and hasattr(socket, "send_fds")):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # a kernel older than 5.3
        return False
    return True


@contextlib.contextmanager
def step_server(plan: Plan, env: Mapping[str, str], workdir: str, log_folder: str
                ) -> Iterator[None]:
    """Serve forked step processes while the block runs (a local run's ``kfp.local`` call).

    ``env`` holds the environment variables the IR gives every step; the server gets this
    process's environment plus those, and its log is ``log_folder/step-server.log``. When
    :func:`supported`, ``$KALE_MAGICS_STEP_LAUNCH`` (the client, for the steps' command) and
    ``$KALE_MAGICS_STEP_SERVER`` (the server's socket) are set in this process's environment
    for the block only, as the run's other variables (``runner.local``); otherwise nothing is
    and the steps start unforked.
    """
    if not supported() or re.search(r"[\s*?\[\]]", str(CLIENT_SOURCE)):  # not one shell word
        yield
        return
    folder = tempfile.mkdtemp(prefix="kale-magics-steps-")
    path = os.path.join(folder, "socket")
    try:
        with environment_variables({SERVER_ENV: path, LAUNCH_ENV: f"-S {CLIENT_SOURCE}"}):
            process = _start(path, plan, env, workdir, log_folder)
            try:
                yield
            finally:
                _stop(process)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _start(path: str, plan: Plan, env: Mapping[str, str], workdir: str,
           log_folder: str) -> subprocess.Popen:
    """Bind and listen on ``path`` here (a step that starts before the server is ready waits
    in the backlog), then start the server with the socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener, \
            open(os.path.join(log_folder, LOG_NAME), "ab") as log:
        listener.bind(path)
        listener.listen(64)
        return subprocess.Popen(
            [sys.executable, "-c", SERVER_BOOT, str(SERVER_SOURCE), str(listener.fileno()),
             preload_source(plan, workdir), " ".join(RUNTIME_IMPORTS), RUNTIME_INPUT,
             RUNTIME_MODULE],
            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **env}, pass_fds=(listener.fileno(),))


def _stop(process: subprocess.Popen) -> None:
    """Close the server's lifeline (it kills what is left of its steps and exits)."""
    assert process.stdin is not None
    process.stdin.close()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
