"""Forked step processes of local runs (``runner.prefork``): what is imported ahead, the client
and server protocol, and that a forked step computes what the notebook computes."""

from __future__ import annotations

import gc
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from kale_magics import api
from kale_magics.model import Annotation, Cell
from kale_magics.runner import prefork
from kale_magics.runner.local import local_ir
from tests.equivalence import compare, notebook_of

linux_only = pytest.mark.skipif(not prefork.supported(),
                                reason="forked steps need Linux with pidfd_open (kernel 5.3+)")


def plan_of(*sources: str) -> SimpleNamespace:
    """A stand-in plan with these imports/functions cells as its prelude."""
    return SimpleNamespace(prelude=tuple(Cell(index=i, source=s, annotation=Annotation("imports"))
                                         for i, s in enumerate(sources)))


def test_the_preload_is_the_leading_imports_of_the_imports_cells(tmp_path: Path) -> None:
    plan = plan_of("from __future__ import annotations\nimport os, json\nimport numpy as np\n"
                   "from sklearn.linear_model import LogisticRegression",
                   "import pandas as pd\nfrom scipy import stats")
    assert prefork.preload_source(plan, str(tmp_path)).splitlines() == [
        "import os, json", "import numpy as np",
        "from sklearn.linear_model import LogisticRegression", "import pandas as pd",
        "from scipy import stats"]


@pytest.mark.parametrize("stopper", [
    "os.environ['OMP_NUM_THREADS'] = '1'",  # the environment set before an import
    "%env OMP_NUM_THREADS=1",
    "%cd /tmp",
    "import tensorflow",  # not fork-safe
    "import torch",
    "from . import sibling",
    "def f():\n    return 1",
])
def test_the_preload_stops_at_the_first_statement_that_is_not_a_fork_safe_import(
        tmp_path: Path, stopper: str) -> None:
    plan = plan_of(f"import json\n{stopper}\nimport numpy")
    assert prefork.preload_source(plan, str(tmp_path)) == "import json"


def test_a_module_of_the_notebooks_folder_is_never_preloaded(tmp_path: Path) -> None:
    (tmp_path / "numpy.py").write_text("VALUE = 1\n")
    assert prefork.preload_source(plan_of("import json\nimport numpy"), str(tmp_path)) \
        == "import json"


def test_the_local_ir_starts_each_step_through_the_client_and_keeps_kfps_markers() -> None:
    script = ('program_path=$(mktemp -d)\n\nprintf "%s" "$0" > "$program_path/ephemeral_component.py"'
              '\n_KFP_RUNTIME=true python3 -m kfp.dsl.executor_main --component_module_path '
              '"$program_path/ephemeral_component.py" "$@"\n')
    ir = {"pipelineInfo": {"name": "p"}, "deploymentSpec": {"executors": {
        name: {"container": {"command": ["sh", "-ec", script, "def a(): ..."],
                             "args": ["--executor_input", "{{$}}"], "image": "python:3.11"}}
        for name in ("exec-a", "exec-kale-runtime")}}}
    executors = local_ir(ir, {})["deploymentSpec"]["executors"]
    assert executors["exec-kale-runtime"]["container"]["command"][2] == script  # unforked
    command = executors["exec-a"]["container"]["command"]
    assert command[3] == "def a(): ..."
    assert "python3 ${KALE_MAGICS_STEP_LAUNCH:--m} kfp.dsl.executor_main" in command[2]
    # kfp.local accepts only commands naming its executor module, and finds the user's code
    # after the element holding the program path and "$@"
    assert "kfp.dsl.executor_main" in command[2] and '"$@"' in command[2]
    assert "python3 -m kfp.dsl.executor_main" not in command[2]
    line = prefork.client_command(prefork.EXECUTOR)
    for launch, expected in ((None, "python3 -m kfp.dsl.executor_main"),
                             ("-S /x/client.py", "python3 -S /x/client.py kfp.dsl.executor_main")):
        env = {k: v for k, v in os.environ.items() if k != prefork.LAUNCH_ENV}
        words = subprocess.run(["sh", "-ec", f'printf "%s " {line}'], capture_output=True,
                               text=True, env={**env, **({prefork.LAUNCH_ENV: launch} if launch
                                                         else {})}, check=True).stdout
        assert words.strip() == expected  # no server: KFP's own command
    containers = local_ir(ir, {}, installs=True)["deploymentSpec"]["executors"]["exec-a"]
    assert containers["container"]["command"][2] == script


# --- the protocol, with a module of our own in place of KFP's executor ------------------------

STEP_MODULE = """import os, sys, time
mode = sys.argv[1]
print("pid", os.getpid(), "ppid", os.getppid(), "runtime", os.environ.get("_KFP_RUNTIME"),
      "pwd", os.environ.get("PWD"), "server", "KALE_MAGICS_STEP_SERVER" in os.environ, flush=True)
if mode == "sleep":
    time.sleep(60)
sys.exit(int(mode))
"""


def test_the_server_imports_every_standard_module_the_runtime_imports() -> None:
    """``RUNTIME_IMPORTS`` is the standard-library modules ``kale_magics/runtime`` imports
    anywhere (a name imported from a package counts when it is a module)."""
    import ast
    import importlib.util

    from kale_magics import runtime

    names: set[str] = set()
    for path in Path(runtime.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names
                             if importlib.util.find_spec(node.module).submodule_search_locations
                             and importlib.util.find_spec(f"{node.module}.{alias.name}"))
    stdlib = {n for n in names if n.partition(".")[0] in sys.stdlib_module_names - {"__future__"}}
    assert set(prefork.RUNTIME_IMPORTS) == stdlib


def test_the_server_the_client_and_the_runtime_name_the_same_variables() -> None:
    """The client and the server run as scripts and the runtime from the run's bundle: each
    holds its own copy of the variables' names."""
    from kale_magics.runner import prefork_client, prefork_server
    from kale_magics.runtime import step

    assert prefork_client.SERVER_ENV == step.STEP_SERVER_ENV
    assert prefork_server.WORKDIR_ENV == step.WORKDIR_ENV


def test_the_server_imports_the_runtime_from_the_folder_the_steps_name_and_only_that(
        tmp_path: Path) -> None:
    """The step server imports the runtime from the bundle folder a step's executor input
    names; a step naming another folder gets it forgotten, and imports its own."""
    from kale_magics.runner.prefork_server import RuntimeBundle

    def bundle(name: str) -> Path:
        (tmp_path / name / "kmbundle").mkdir(parents=True)
        (tmp_path / name / "kmbundle" / "__init__.py").write_text("")
        (tmp_path / name / "kmbundle" / "runtime.py").write_text(f"FOLDER = {name!r}\n")
        return tmp_path / name

    def request(folder: Path) -> dict:
        given = {"inputs": {"artifacts": {"rt": {"artifacts": [{"uri": str(folder)}]}}}}
        return {"argv": ["kfp.dsl.executor_main", "--executor_input", json.dumps(given)]}

    first, second = bundle("first"), bundle("second")
    runtime = RuntimeBundle("rt", "kmbundle.runtime")
    path = list(sys.path)
    try:
        assert runtime.folder({"argv": ["kfp.dsl.executor_main"]}) == ""
        runtime.preload(request(first))
        assert sys.modules["kmbundle.runtime"].FOLDER == "first" and sys.path == path
        runtime.suit(request(first))
        assert "kmbundle.runtime" in sys.modules
        runtime.preload(request(second))  # one folder per run: the first stays
        assert sys.modules["kmbundle.runtime"].FOLDER == "first"
        runtime.suit(request(second))
        assert not [name for name in sys.modules if name.startswith("kmbundle")]
    finally:
        runtime.forget()
        gc.unfreeze()  # preload froze this process's objects, as it does the server's


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A step server with nothing preloaded; ``stepmod`` importable through PYTHONPATH."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "stepmod.py").write_text(STEP_MODULE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "mods"))
    with prefork.step_server(plan_of(), {}, str(tmp_path), str(tmp_path)):
        yield SimpleNamespace(log=tmp_path / prefork.LOG_NAME, env=dict(os.environ))


def client(env: dict[str, str], *args: str, **options) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-S", str(prefork.CLIENT_SOURCE), "stepmod", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **options)


def wait_for(predicate, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@linux_only
def test_a_forked_step_gets_the_clients_output_and_exit_status_and_its_own_environment(
        server: SimpleNamespace) -> None:
    # the step's shell sets PWD (kfp.local runs `sh -ec`): the step's own value, not the server's
    process = client({**server.env, "_KFP_RUNTIME": "true", "PWD": "/shell/said"}, "3")
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 3
    fields = out.decode().split()
    assert fields[0] == "pid" and fields[5] == "true" and fields[7] == "/shell/said"
    assert fields[9] == "True"  # a forked step: the runtime leaves the end to the server
    assert f"forked pid {fields[1]}" in server.log.read_text()  # the server's child, not the client's
    assert fields[3] != str(process.pid)


@linux_only
def test_a_step_whose_environment_differs_runs_unforked(server: SimpleNamespace) -> None:
    process = client({**server.env, "OMP_NUM_THREADS": "1"}, "4")
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 4
    fields = out.decode().split()
    assert fields[1] == str(process.pid)  # os.execve: the client became the step
    assert fields[9] == "False"  # ends as a process of its own
    assert "refused: environment variables differ: OMP_NUM_THREADS" in server.log.read_text()


@linux_only
def test_a_killed_client_takes_its_step_process_with_it(server: SimpleNamespace) -> None:
    process = client(server.env, "sleep")
    assert process.stdout is not None
    pid = int(process.stdout.readline().split()[1])
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    wait_for(lambda: f"pid {pid} ended: -{int(signal.SIGKILL)}" in server.log.read_text())


@linux_only
def test_a_signalled_client_ends_its_step_process_the_same_way(server: SimpleNamespace) -> None:
    process = client(server.env, "sleep")
    assert process.stdout is not None
    pid = int(process.stdout.readline().split()[1])
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == -signal.SIGTERM
    assert f"pid {pid} ended: -{int(signal.SIGTERM)}" in server.log.read_text()


def test_without_a_server_the_client_is_kfps_executor(tmp_path: Path) -> None:
    (tmp_path / "stepmod.py").write_text(STEP_MODULE)
    env = {k: v for k, v in os.environ.items() if k != "KALE_MAGICS_STEP_SERVER"}
    process = client({**env, "PYTHONPATH": str(tmp_path)}, "5")
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 5 and out.decode().split()[1] == str(process.pid)


# --- forked steps compute what the notebook computes -------------------------------------------

@linux_only
def test_forked_steps_draw_fresh_random_numbers_exit_normally_and_match_the_notebook(
        tmp_path: Path) -> None:
    """Each step is a fork of one process that imported numpy: without a fresh seed every step
    would draw the same numbers (in the kernel they differ); atexit handlers, non-daemon
    threads and a file a module keeps open end as in a process that exits normally."""
    path = notebook_of(
        tmp_path,
        "%%kale imports\nimport random\nimport numpy as np\nimport numpy.random\nimport atexit\n"
        "import threading",
        "%%kale step a\nx = float(np.random.rand())\nr = random.random()",
        "%%kale step b\ny = float(np.random.rand())\ns = random.random()",
        "%%kale step c\nprint('numpy differs', x != y)\nprint('random differs', r != s)\n"
        "def late():\n    import time\n    time.sleep(0.3)\n    open('thread.txt', 'w').write('t')\n"
        "threading.Thread(target=late).start()\n"
        "atexit.register(lambda: open('atexit.txt', 'w').write('a'))\n"
        "random.kept = open('kept.txt', 'w')  # open to the end, held by a module\n"
        "random.kept.write('k')")
    result = compare(path)
    assert result.same_prints(), result.explain()
    assert result.pipeline["c"][:2] == ["numpy differs True", "random differs True"]
    (log,) = tmp_path.rglob(prefork.LOG_NAME)
    text = log.read_text()
    assert "refused" not in text and text.count("forked pid") == 3  # a, b, c (not the runtime task)
    assert "imported the step runtime from" in text
    for name in ("atexit.txt", "thread.txt", "kept.txt"):  # the kernel wrote them at its end
        (tmp_path / name).unlink()
    status = api.run_local(api.compile_notebook(path), enable_caching=False)
    assert status.state == "SUCCEEDED", status.error
    assert (tmp_path / "atexit.txt").read_text() == "a"
    assert (tmp_path / "thread.txt").read_text() == "t"
    assert (tmp_path / "kept.txt").read_text() == "k"


LEFT_OPEN = """%%kale step a
random.text = open("kept.txt", "w")  # open to the end, held by a module the server imported
random.text.write("k")
random.zipped = gzip.open("kept.gz", "wt")  # a wrapper in a wrapper: closed outermost first
random.zipped.write("z")
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fputs(b"c", ctypes.c_void_p(libc.fopen(b"kept-c.txt", b"w")))  # the C library's buffer
print("left open")"""


def files_left_open(folder: Path) -> dict[str, str]:
    """The contents of LEFT_OPEN's files (gone afterwards): what a process's end wrote out."""
    found = {}
    for name in ("kept.txt", "kept.gz", "kept-c.txt"):
        path = folder / name
        if path.exists():
            found[name] = (gzip.decompress(path.read_bytes()).decode() if name.endswith(".gz")
                           else path.read_text())
            path.unlink()
    return found


@linux_only
def test_files_a_forked_step_leaves_open_are_written_out_as_a_python_process_writes_them(
        tmp_path: Path) -> None:
    """A forked step's process ends without the interpreter's teardown when nothing alive needs
    finalizing; the files it leaves open (Python's, the C library's) are still written out, as
    when the step's code runs as a Python script. (A kernel writes none of them while it lives,
    and nbclient's kernel none when it ends.) A gzip file is closed before the file under it, so
    it is whole; a script's teardown may close them in either order and cut the gzip file short."""
    imports = "import ctypes\nimport gzip\nimport random"
    script = imports + "\n" + LEFT_OPEN.split("\n", 1)[1]
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "kept.gz").unlink()
    python = files_left_open(tmp_path)
    assert python == {"kept.txt": "k", "kept-c.txt": "c"}
    path = notebook_of(tmp_path, "%%kale imports\n" + imports, LEFT_OPEN)
    result = compare(path)
    assert result.same_prints(), result.explain()
    assert files_left_open(tmp_path) == {**python, "kept.gz": "z"}
    (log,) = tmp_path.rglob(prefork.LOG_NAME)
    assert log.read_text().count("forked pid") == 1


HOLDER = """import os


class Noisy:
    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)

    def __del__(self, write=os.write):  # what it needs kept: the teardown clears modules
        write(self.fd, b"finalized")
"""


@linux_only
def test_an_object_a_forked_step_leaves_to_finalize_is_finalized_as_in_a_python_script(
        tmp_path: Path) -> None:
    """An object with ``__del__`` still alive when the step ends (held by a module of the
    notebook's folder, which the server never imports) makes the forked process end through the
    interpreter's teardown, which finalizes it as it does when the code runs as a script."""
    (tmp_path / "holder.py").write_text(HOLDER)
    subprocess.run([sys.executable, "-c", "import holder\nholder.kept = holder.Noisy('del.txt')"],
                   cwd=tmp_path, check=True)
    assert (tmp_path / "del.txt").read_text() == "finalized"
    (tmp_path / "del.txt").unlink()
    path = notebook_of(tmp_path, "%%kale imports\nimport holder",
                       "%%kale step a\nholder.kept = holder.Noisy('del.txt')")
    status = api.run_local(api.compile_notebook(path), enable_caching=False)
    assert status.state == "SUCCEEDED", status.error
    assert (tmp_path / "del.txt").read_text() == "finalized"
    (log,) = tmp_path.rglob(prefork.LOG_NAME)
    assert log.read_text().count("forked pid") == 1


@linux_only
def test_prefork_off_runs_every_step_unforked(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(prefork.PREFORK_ENV, "0")
    path = notebook_of(tmp_path, "%%kale imports\nimport json",
                       "%%kale step a\nprint(json.dumps([1]))")
    status = api.run_local(api.compile_notebook(path))
    assert status.state == "SUCCEEDED" and status.steps["a"].log[-1] == "[1]"
    assert not list(tmp_path.rglob(prefork.LOG_NAME))


PROCESS_PROBE = """%%kale step a
info = {"cwd": os.getcwd(), "path": sys.path, "argv0": os.path.basename(sys.argv[0]),
        "main": sys.modules["__main__"].__spec__.name, "argv": len(sys.argv),
        "env": sorted(k for k in os.environ if not k.startswith("KALE_MAGICS_STEP_")),
        "stdout": [sys.stdout.isatty(), sys.stdout.line_buffering, sys.stdout.encoding],
        "stdin": [sys.stdin.isatty(), sys.stdin.encoding],
        "signals": [str(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM,
                                                        signal.SIGPIPE, signal.SIGCHLD)],
        "gc": [gc.isenabled(), gc.get_threshold()], "flags": list(sys.flags),
        "numpy": "numpy" in sys.modules, "pwd": os.environ.get("PWD") == os.getcwd()}
print("INFO", json.dumps(info))"""


@linux_only
def test_a_forked_step_process_looks_like_an_unforked_one(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """What a step can see of its process, forked and with the server off, is the same."""
    path = notebook_of(tmp_path, "%%kale imports\nimport gc, json, os, signal, sys\nimport numpy",
                       PROCESS_PROBE)
    compiled = api.compile_notebook(path)
    seen = []
    for prefork_on in ("1", "0"):
        monkeypatch.setenv(prefork.PREFORK_ENV, prefork_on)
        status = api.run_local(compiled, enable_caching=False)
        assert status.state == "SUCCEEDED", status.error
        (line,) = [x for x in status.steps["a"].log if x.startswith("INFO ")]
        info = json.loads(line[5:])
        # each run has its own temporary folders and pipeline-root folders (named by time)
        info["path"] = [re.sub(r"kale-magics-run-\w+/tmp\.\w+|\d", "", p) for p in info["path"]]
        seen.append(info)
    assert seen[0] == seen[1]
    assert len(list(tmp_path.rglob(prefork.LOG_NAME))) == 1  # the first run was forked


@linux_only
def test_forked_steps_fit_boosted_models_with_threads_as_the_notebook_does(tmp_path: Path) -> None:
    """xgboost and LightGBM imported by the step server; each forked step starts its OpenMP
    threads itself and the models score as in the kernel."""
    pytest.importorskip("xgboost")
    pytest.importorskip("lightgbm")
    result = compare(notebook_of(
        tmp_path, "%%kale imports\nimport numpy as np\nimport xgboost as xgb\nimport lightgbm as lgb",
        "%%kale step data\nrng = np.random.default_rng(0)\nX = rng.normal(size=(400, 6))\n"
        "y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)",
        "%%kale step boost\nbooster = xgb.XGBClassifier(n_estimators=20, max_depth=3, n_jobs=2,"
        " random_state=0).fit(X, y)\nxgb_accuracy = float((booster.predict(X) == y).mean())",
        "%%kale step light\nmodel = lgb.LGBMClassifier(n_estimators=20, n_jobs=2, random_state=0,"
        " verbose=-1).fit(X, y)\nlgb_accuracy = float((model.predict(X) == y).mean())",
        "%%kale metrics\nxgb_accuracy\nlgb_accuracy"))
    assert result.status.state == "SUCCEEDED", result.explain()
    assert result.same_metrics() and len(result.pipeline_metrics) == 2, result.explain()
    (log,) = tmp_path.rglob(prefork.LOG_NAME)
    assert "refused" not in log.read_text() and log.read_text().count("forked pid") == 3
