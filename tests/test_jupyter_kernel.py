"""The magics in a kernel started by a real Jupyter server: the notebook is found without --notebook."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from tests.conftest import EXAMPLES

pytestmark = pytest.mark.integration
jupyter_client = pytest.importorskip("jupyter_client")
pytest.importorskip("jupyter_server")

TOKEN = "kale-magics-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(port: int, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method="POST" if body is not None else "GET",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.fixture
def server(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(EXAMPLES / "wine.ipynb", root / "wine.ipynb")
    port = free_port()
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--no-browser", f"--port={port}",
         "--ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
         "--allow-root"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            api(port, "/api/status")
            break
        except OSError:
            time.sleep(0.3)
    else:
        process.kill()
        pytest.fail("jupyter server did not start within 60 s")
    yield port, root, env["JUPYTER_RUNTIME_DIR"]
    process.terminate()
    process.wait(timeout=30)


def test_show_check_run_without_notebook_argument(server) -> None:
    port, root, runtime = server
    session = api(port, "/api/sessions", {"path": "wine.ipynb", "type": "notebook",
                                          "kernel": {"name": "python3"}})
    connection = Path(runtime) / f"kernel-{session['kernel']['id']}.json"
    client = jupyter_client.BlockingKernelClient(connection_file=str(connection))
    client.load_connection_file()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    outputs: list[str] = []

    def collect(message: dict) -> None:
        content = message["content"]
        if message["msg_type"] == "stream":
            outputs.append(content["text"])
        elif message["msg_type"] in ("display_data", "execute_result", "update_display_data"):
            outputs.append(content["data"].get("text/plain", ""))
        elif message["msg_type"] == "error":
            outputs.append(f"ERROR {content['ename']}: {content['evalue']}")

    try:
        for cell in nbformat.read(root / "wine.ipynb", as_version=4).cells:
            if cell.cell_type == "code":
                reply = client.execute_interactive(cell.source, output_hook=collect, timeout=120)
                assert reply["content"]["status"] == "ok", outputs[-1:]
        for action in ("%kale show", "%kale check", "%kale run"):
            outputs.clear()
            reply = client.execute_interactive(action, output_hook=collect, timeout=300)
            assert reply["content"]["status"] == "ok", outputs
            text = "\n".join(outputs)
            assert {"%kale show": "pipeline wine-classifier (6 steps",
                    "%kale check": "every passed variable serialises",
                    "%kale run": "pipeline wine-classifier SUCCEEDED"}[action] in text
    finally:
        client.stop_channels()
