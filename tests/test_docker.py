"""Pipelines run in real containers (``kfp.local.DockerRunner``): every step in its base image
with only its ``packages_to_install``, as a KFP pod runs it.

Skipped where no Docker daemon answers (``DOCKER_HOST`` or the default socket) or the base
image is missing and cannot be pulled; ``.ci/run`` starts a daemon and builds the image.
Containers use the network ``$KALE_MAGICS_TEST_DOCKER_NETWORK`` (default ``host``: a daemon
started with ``--bridge=none`` reaches the package index only that way).
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import pickle
import subprocess
import sys
import threading
import time
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Iterator

import pytest
from IPython.utils.capture import capture_output

from kale_magics import api
from kale_magics.codegen.pipeline import default_image
from kale_magics.runner.docker import DockerOptions, container_root, run_docker, stop_containers
from kale_magics.runner.status import RunStatus
from tests.conftest import EXAMPLES
from tests.docker_env import docker_client_or_skip
from tests.test_examples import execute
from tests.conftest import write_notebook
from tests.test_magics import kale, shell  # noqa: F401  (shell: the IPython shell fixture)
from tests.test_widgets_panel import panels  # noqa: F401  (a fixture)

pytestmark = pytest.mark.integration
NETWORK = os.environ.get("KALE_MAGICS_TEST_DOCKER_NETWORK", "host")


@pytest.fixture(scope="module", autouse=True)
def docker_ready() -> None:
    """Skip the module unless a Docker daemon answers and has (or can pull) the base image."""
    docker_client_or_skip(default_image()).close()


def _run(path: Path, tmp_path: Path, **options) -> tuple[RunStatus, list[str]]:
    compiled = api.compile_notebook(path, str(tmp_path / "out"))
    seen: list[str] = []
    hooks = api.RunHooks(on_step=lambda s: seen.append(f"{s.name} {s.state}"))
    caching = options.pop("enable_caching", True)
    status = run_docker(compiled, options=DockerOptions(network=NETWORK, **options),
                        pipeline_root=str(tmp_path / "root"), hooks=hooks, enable_caching=caching)
    return status, seen


def _notebook_metrics(path: Path) -> dict[str, float]:
    keys = [m.key for s in api.read_plan(path).steps for m in s.metrics]
    probe = f"import json\nprint(json.dumps({{k: float(eval(k)) for k in {keys!r}}}))"
    return json.loads(execute(path, [probe])[0])


@pytest.mark.parametrize("name, volume_map", [
    ("wine", {}),
    ("titanic", {"titanic-data": str(EXAMPLES / "data")}),  # the notebook reads data/titanic from /
])
def test_examples_in_containers_give_the_notebooks_metrics(name, volume_map, tmp_path) -> None:
    path = EXAMPLES / f"{name}.ipynb"
    status, seen = _run(path, tmp_path, volume_map=volume_map)
    assert status.state == "SUCCEEDED", status.error
    assert status.metrics == pytest.approx(_notebook_metrics(path), rel=1e-9, abs=1e-12)
    for step in status.steps.values():
        assert step.state == "SUCCEEDED" and step.install_s > 0 and step.duration_s > 0
        assert f"{step.name} RUNNING" in seen
    if name == "titanic":
        assert "train_gboost --gpu 1" in status.notices[0]
        assert any("train.csv" in line for line in status.steps["load_data"].log)  # !ls -l


def test_settings_volume_secret_env_and_a_consumer_that_imports_nothing(notebook, tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.csv").write_text("x\n1\n2\n3\n")
    secrets = tmp_path / "secrets.env"
    secrets.write_text("DB_PASSWORD=s3cret\n")
    path = notebook(
        "%%kale step load --volume data:/data --secret db:password:DB_PASSWORD --env LOG_LEVEL=debug\n"
        "import os\nimport pandas as pd\ndf = pd.read_csv('/data/in.csv')\n"
        "seen = [os.environ['DB_PASSWORD'], os.environ['LOG_LEVEL'], os.getcwd()]",
        "%%kale step use --volume data:/data\n"
        "from importlib import metadata\n"
        "total = int(df['x'].sum())\n"
        "kale = [d.metadata['Name'] for d in metadata.distributions() if 'kale' in d.metadata['Name']]\n"
        "open('/data/out.txt', 'w').write(' '.join(seen + [str(total), repr(kale)]))",
        "%%kale metrics\ntotal", name="settings")
    status, _ = _run(path, tmp_path, volume_map={"data": str(data)}, secret_env_file=str(secrets))
    assert status.state == "SUCCEEDED", status.error
    # `use` imports nothing yet loads a DataFrame: it installs pandas and pyarrow from `load`;
    # the container has no kale-magics; a step starts in the image's working directory
    assert (data / "out.txt").read_text() == "s3cret debug / 6 []"
    assert status.metrics == {"total": 6.0}


def _started_containers(root: str, since: float) -> list[dict[str, str]]:
    """Labels and image of every step's (or task's) container a run into ``root`` started since
    ``since`` (not those installing packages into an image)."""
    import docker

    client = docker.from_env()
    try:
        events = client.events(since=int(since), until=int(time.time()) + 1, decode=True,
                               filters={"type": "container", "event": "start",
                                        "label": [f"kale-magics.run={root}",
                                                  "kale-magics.step"]})
        started = [event["Actor"]["Attributes"] for event in events]
        for attributes in started:  # an image of installed packages: its base image
            attributes["base"] = (client.images.get(attributes["image"]).labels
                                  .get("kale-magics.env", attributes["image"]))
        return started
    finally:
        client.close()


def test_the_runtime_task_runs_in_a_container_and_every_step_loads_the_runtime_it_wrote(
        notebook, tmp_path) -> None:
    probe = ("import sys\nfrom importlib import metadata\n"
             "print('runtime from', sys.modules['kale_magics.runtime.step'].__file__)\n"
             "print('kale installed:', [d.metadata['Name'] for d in metadata.distributions() "
             "if 'kale' in d.metadata['Name'].lower()])")
    path = notebook(f"%%kale step a\nx = 40\n{probe}", f"%%kale step b\ny = x + 2\n{probe}",
                    "%%kale metrics\ny", name="runtime")
    since = time.time()
    status, _ = _run(path, tmp_path)
    assert (status.state, status.metrics) == ("SUCCEEDED", {"y": 42.0}), status.error
    root = str(tmp_path / "root")
    started = _started_containers(root, since)
    assert sorted(c["kale-magics.step"] for c in started) == ["a", "b", "kale-runtime"]
    assert {c["base"] for c in started} == {default_image()}  # the stock image, nothing added
    for step in status.steps.values():
        runtime = next(line for line in step.log if line.startswith("runtime from"))
        assert runtime.startswith(f"runtime from {root}/")  # the artifact the runtime task wrote
        assert runtime.endswith("/kale-runtime/bundle/kale_magics/runtime/step.py")
        assert "kale installed: []" in step.log


def test_a_step_over_its_memory_limit_fails_out_of_memory(notebook, tmp_path) -> None:
    path = notebook("%%kale step hog --memory-limit 512Mi\nblock = b'x' * (2 << 30)\nsize = len(block)",
                    "%%kale step after\nprint(size)", name="hog")
    status, _ = _run(path, tmp_path)
    assert status.state == "FAILED"
    hog = status.steps["hog"]
    assert (hog.state, hog.error) == ("FAILED", "out of memory (limit 512Mi)")
    assert status.steps["after"].state == "SKIPPED"
    assert "step 'hog' failed: out of memory (limit 512Mi)" in status.error


def test_an_import_the_compile_cannot_see_fails_naming_the_package(notebook, tmp_path) -> None:
    path = notebook("%%kale step parse\nimport importlib\nloaded = importlib.import_module('yaml').__name__",
                    name="hidden")
    status, _ = _run(path, tmp_path)
    parse = status.steps["parse"]
    assert parse.state == "FAILED"
    assert parse.error.startswith("ModuleNotFoundError: No module named 'yaml'; module 'yaml' is "
                                  "not in the step's packages_to_install (cloudpickle==")
    assert "add --packages PyYAML==" in parse.error and parse.error.endswith("to step 'parse'")
    assert parse.cell.endswith("(step parse)") and parse.line == 3  # the %%kale line is 1


@pytest.fixture
def package_index(tmp_path) -> Iterator[tuple[str, list[str]]]:
    """A package index on 127.0.0.1 serving one small wheel, ``kmprobe==1.0``, with the caching
    headers PyPI sends; yields its URL and the list of paths it was asked for."""
    wheel = _probe_wheel(tmp_path / "files")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    asked: list[str] = []

    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            if self.path.rstrip("/") == "/simple/kmprobe":
                body = f'<a href="/files/{wheel.name}#sha256={digest}">{wheel.name}</a>'.encode()
                self._send(body, "text/html", "max-age=600")
            elif self.path == f"/files/{wheel.name}":
                self._send(wheel.read_bytes(), "application/zip", "max-age=365000000, immutable")
            else:
                self.send_error(404)

        def _send(self, body: bytes, kind: str, cache: str) -> None:
            self.send_response(200)
            for header, value in (("Content-Type", kind), ("Content-Length", str(len(body))),
                                  ("Cache-Control", f"{cache}, public")):
                self.send_header(header, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/simple", asked
    server.shutdown()
    server.server_close()


def _probe_wheel(folder: Path) -> Path:
    folder.mkdir()
    files = {"kmprobe/__init__.py": "ANSWER = 42\n",
             "kmprobe-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: kmprobe\nVersion: 1.0\n",
             "kmprobe-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\n"
                                            "Root-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{name},sha256={_b64_digest(text.encode())},{len(text)}\n"
                     for name, text in files.items()) + "kmprobe-1.0.dist-info/RECORD,,\n"
    wheel = folder / "kmprobe-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in {**files, "kmprobe-1.0.dist-info/RECORD": record}.items():
            archive.writestr(name, text)
    return wheel


def _b64_digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _probe_notebook(notebook, url: str):
    """Two steps that each install ``kmprobe`` from the index at ``url`` (PyPI for the rest)."""
    return notebook(f"%kale pipeline --pip-index-url https://pypi.org/simple --pip-index-url {url} "
                    "--pip-trusted-host 127.0.0.1",
                    "%%kale step probe --packages kmprobe==1.0\nimport kmprobe\nanswer = kmprobe.ANSWER",
                    "%%kale step again --packages kmprobe==1.0\nimport kmprobe\nsame = answer == kmprobe.ANSWER",
                    "%%kale metrics\nanswer\nsame", name="index")


@pytest.fixture
def new_env_images_removed() -> Iterator[None]:
    """Remove the images of installed packages a test makes (they hold its random index port)."""
    import docker

    client = docker.from_env()
    before = {image.id for image in client.images.list(filters={"label": "kale-magics.env"})}
    yield
    for image in client.images.list(filters={"label": "kale-magics.env"}):
        if image.id not in before:
            client.images.remove(image.id, force=True)
    client.close()


def _downloads(asked: list[str]) -> list[str]:
    return [p for p in asked if p.startswith("/files/")]


def test_pip_index_options_apply_and_the_shared_pip_cache_saves_downloads(
        notebook, tmp_path, package_index) -> None:
    url, asked = package_index
    path = _probe_notebook(notebook, url)
    options = {"pip_cache": str(tmp_path / "pip-cache"), "reuse_installs": False}
    first, _ = _run(path, tmp_path, **options)
    assert first.state == "SUCCEEDED", first.error
    assert first.metrics == {"answer": 42.0, "same": 1.0}
    # both steps installed kmprobe from our index; the second got it from the pip cache
    assert _downloads(asked) == ["/files/kmprobe-1.0-py3-none-any.whl"]
    second, _ = _run(path, tmp_path, enable_caching=False, **options)
    assert second.state == "SUCCEEDED" and not second.steps["probe"].cached
    assert len(_downloads(asked)) == 1


def test_each_set_of_packages_is_installed_once(notebook, tmp_path, package_index,
                                                new_env_images_removed) -> None:
    url, asked = package_index
    path = _probe_notebook(notebook, url)
    first, _ = _run(path, tmp_path, pip_cache="")  # no pip cache: every install downloads
    assert first.state == "SUCCEEDED", first.error
    assert len(_downloads(asked)) == 1  # installed once, for both steps
    second, _ = _run(path, tmp_path, pip_cache="", enable_caching=False)
    assert second.state == "SUCCEEDED" and not second.steps["again"].cached
    assert len(_downloads(asked)) == 1


def test_a_runtime_task_that_cannot_install_fails_the_run_naming_it(notebook, tmp_path,
                                                                     package_index) -> None:
    url, _ = package_index  # serves kmprobe only: kfp, which the runtime task installs, is missing
    path = notebook(f"%kale pipeline --pip-index-url {url} --pip-trusted-host 127.0.0.1",
                    "%%kale step a\nx = 1", name="noruntime")
    status, _ = _run(path, tmp_path)
    assert status.state == "FAILED" and status.steps["a"].state == "SKIPPED"
    assert status.error == (f"task 'kale-runtime' failed in its container (exit code 1): ERROR: "
                            f"No matching distribution found for kfp=={metadata.version('kfp')}")


def test_containers_of_a_killed_run_are_stopped(notebook, tmp_path) -> None:
    import docker

    compiled = api.compile_notebook(notebook("%%kale step nap\nimport time\ntime.sleep(120)",
                                             name="nap"), str(tmp_path / "out"))
    root = str(tmp_path / "root")
    code = ("import sys, pickle; from kale_magics.runner.docker import DockerOptions, container_root, run_docker, stop_containers; "
            "run_docker(pickle.load(sys.stdin.buffer), options=DockerOptions(network=sys.argv[1]), "
            "pipeline_root=sys.argv[2])")
    child = subprocess.Popen([sys.executable, "-c", code, NETWORK, root], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    child.stdin.write(pickle.dumps(compiled))
    child.stdin.close()
    client = docker.from_env()
    label = {"label": f"kale-magics.run={container_root(compiled, root)}"}
    try:
        deadline = time.time() + 120
        while not client.containers.list(filters={"label": [label["label"], "kale-magics.step=nap"]}):
            assert time.time() < deadline and child.poll() is None, "the step's container never started"
            time.sleep(0.5)
        child.kill()  # as the panel's Cancel does: the run's process group gets SIGKILL
        child.wait()
        assert client.containers.list(filters=label)  # the container outlives its run
        assert stop_containers(compiled, root) == 1
        assert not client.containers.list(all=True, filters=label)
    finally:
        child.kill()
        client.close()


def test_cli_runs_in_containers_and_reports_install_time(notebook, tmp_path) -> None:
    from tests.test_cli import cli

    path = notebook("%%kale step a\nx = 40", "%%kale step b\ny = x + 2", "%%kale metrics\ny",
                    name="clidocker")
    result = cli("run", str(path), "--docker", "--docker-network", NETWORK, "-o",
                 str(tmp_path / "out"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["state"], report["metrics"]) == ("SUCCEEDED", {"y": 42.0})
    assert report["pipeline_root"] == str(tmp_path / "out" / "container_runs")
    assert all(step["install_s"] > 0 for step in report["steps"].values())


def test_magic_runs_in_containers(shell, notebook, tmp_path) -> None:
    path = notebook("%%kale step a\nx = 40", "%%kale step b\ny = x + 2", "%%kale metrics\ny",
                    name="magicdocker")
    with capture_output() as captured:
        shell.run_line_magic("kale", f"run --notebook {path} --docker --docker-network {NETWORK} "
                             f"--pipeline-root {tmp_path / 'root'}")
    run = kale(shell).last_run
    assert (run.state, run.metrics) == ("SUCCEEDED", {"y": 42.0})
    assert all(step.install_s > 0 for step in run.steps.values())
    assert "pipeline magicdocker SUCCEEDED" in captured.stdout


def test_panel_runs_in_containers(shell, panels, tmp_path) -> None:
    from kale_widgets.form import CONTAINERS
    from tests.test_widgets_panel import FLOW, make_panel, states

    panel = make_panel(panels, write_notebook(tmp_path / "flow.ipynb", FLOW), shell,
                       warm_worker=False)
    panel.form.target.value = CONTAINERS
    assert panel.form.container_box.layout.display == ""
    assert panel.form.remote_box.layout.display == "none"
    panel.form.network.value = NETWORK
    panel.run_button.click()
    status = panel.control.wait(300)
    panel.refresh()
    assert status.state == "SUCCEEDED", panel.message.value
    assert states(panel) == {"make": "SUCCEEDED", "total": "SUCCEEDED"}
    assert status.metrics == {"size": 3 * 0.5 + 2 + 1}
    assert all(step.install_s > 0 for step in status.steps.values())


def test_panel_cancel_stops_the_containers(shell, panels, tmp_path) -> None:
    import docker

    from kale_widgets.form import CONTAINERS
    from tests.test_widgets_panel import make_panel, slow_notebook, states

    panel = make_panel(panels, slow_notebook(tmp_path, seconds=120), shell, warm_worker=False)
    panel.form.target.value = CONTAINERS
    panel.form.network.value = NETWORK
    panel.run_button.click()
    deadline = time.time() + 120
    while time.time() < deadline and not (panel.control.status and states(panel)["wait"] == "RUNNING"):
        time.sleep(0.2)
    client = docker.from_env()
    try:
        assert client.containers.list(filters={"label": "kale-magics.step=wait"})
        panel.cancel_button.click()
        status = panel.control.wait(60)
        assert status.state == "CANCELED"
        deadline = time.time() + 30  # the containers are removed right after the run's process
        while client.containers.list(all=True, filters={"label": "kale-magics.step=wait"}):
            assert time.time() < deadline, panel.message.value
            time.sleep(0.2)
        assert "Error" not in panel.message.value
    finally:
        client.close()
