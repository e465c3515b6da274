"""The panel's updates from background threads reach the front end, in a real kernel
(issue 20 item 11; ipywidgets issues 4001 and 4020, ipykernel 7 changed how a thread's
output is routed).

A kernel started with jupyter_client shows ``%kale panel`` and presses Run; the cell ends at
once and the run goes on in the panel's threads. The test is the front end: it reads the
kernel's IOPub channel and asserts that the comm ``update`` messages of the panel's widgets
arrive after the cell finished (so from a background thread), up to every step succeeded,
and that no thread raised.
"""

from __future__ import annotations

import queue
import time

import pytest

from tests.conftest import write_notebook

pytestmark = pytest.mark.integration
manager = pytest.importorskip("jupyter_client.manager")

FLOW = ("%%kale parameters\nN = 3",
        "%%kale step make\nitems = list(range(N))",
        "%%kale step total\nsize = sum(items)",
        "%%kale metrics\nsize")


def execute(client, code: str, timeout: float = 60) -> list[dict]:
    """Run ``code``; the IOPub messages of that request until the kernel is idle again."""
    msg_id = client.execute(code)
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        msg = client.get_iopub_msg(timeout=deadline - time.time())
        if msg["parent_header"].get("msg_id") != msg_id:
            seen.append(msg)  # a thread's message (another parent) is kept too
            continue
        seen.append(msg)
        if msg["msg_type"] == "error":
            raise AssertionError("\n".join(msg["content"]["traceback"]))
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return seen
    raise AssertionError(f"no idle after {code!r}")


def stdout_of(messages: list[dict]) -> str:
    return "".join(m["content"]["text"] for m in messages
                   if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")


def test_background_thread_updates_reach_the_client(tmp_path) -> None:
    path = write_notebook(tmp_path / "flow.ipynb", FLOW)
    km, client = manager.start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    try:
        shown = execute(client, f"%load_ext kale_magics\n%kale panel --notebook {str(path)!r}")
        opened = {m["content"]["comm_id"] for m in shown if m["msg_type"] == "comm_open"}
        assert any("application/vnd.jupyter.widget-view+json" in m["content"].get("data", {})
                   for m in shown if m["msg_type"] == "display_data")
        ids = stdout_of(execute(client, (
            "_panel = get_ipython().magics_manager.registry['KaleMagics'].panels["
            f"{str(path)!r}]\nprint(_panel.dag_html.model_id, _panel.status_html.model_id)")))
        dag_id, status_id = ids.split()
        assert {dag_id, status_id} <= opened  # the client knows these models
        execute(client, "_panel.run_button.click()")  # returns at once; the run goes on in threads
        updates, errors, deadline = [], [], time.time() + 120
        while time.time() < deadline:
            try:
                msg = client.get_iopub_msg(timeout=1)
            except queue.Empty:
                continue
            content = msg["content"]
            if msg["msg_type"] == "stream" and "Traceback" in content["text"]:
                errors.append(content["text"])
            if msg["msg_type"] == "comm_msg" and content["data"].get("method") == "update":
                updates.append((content["comm_id"], content["data"]["state"]))
            dag = [s["value"] for c, s in updates if c == dag_id and "value" in s]
            if dag and dag[-1].count("succeeded") == 2:
                break
        assert not errors, errors[0]
        dag = [s["value"] for c, s in updates if c == dag_id and "value" in s]
        assert dag and dag[-1].count("succeeded") == 2, f"{len(updates)} updates, none final"
        assert any("running" in value for value in dag)  # seen while it ran, not only at the end
        assert any(c == status_id for c, _ in updates)
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=True)
