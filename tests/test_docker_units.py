"""Container runs without Docker: how step settings become container arguments, what is refused
before Docker is asked, how a container's output becomes step events, and the packages a
consumer step installs (tests/test_docker.py runs real containers)."""

from __future__ import annotations

import json

import pytest

from kale_magics import api
from kale_magics.errors import RunError
from kale_magics.runner.container_run import StepLog, explain_missing_module, install_script
from kale_magics.runner.docker import (DockerOptions, check_inputs, container_ir,
                                       container_notices, cpu_cores, memory_bytes, read_env_file,
                                       run_docker, step_container)
from kale_magics.runner.local import plan_status
from kale_magics.runtime.channel import EVENTS_FILE
from tests.test_magics import shell  # noqa: F401  (the IPython shell fixture)
from tests.test_widgets_panel import panels  # noqa: F401  (a fixture)


def _plan(notebook, *cells: str):
    return api.read_plan(notebook(*cells, name="settings"))


def test_quantities_follow_kubernetes() -> None:
    assert memory_bytes("512Mi") == 512 * 2**20
    assert memory_bytes("1G") == 10**9
    assert memory_bytes("1000") == 1000
    assert cpu_cores("500m") == 0.5
    assert cpu_cores("2") == 2.0


def test_step_settings_become_container_arguments(notebook, tmp_path) -> None:
    (tmp_path / "data").mkdir()
    plan = _plan(notebook, "%%kale step train --cpu 500m --cpu-limit 2 --memory 256Mi "
                 "--memory-limit 1Gi --gpu 1 --label team=ml --volume data:/data "
                 "--secret db:password:DB_PASSWORD --timeout 30m\nx = 1")
    options = DockerOptions(volume_map={"data": str(tmp_path / "data")})
    step = plan.steps[0]
    without_gpu = step_container(step, options, gpus=False, secrets={"DB_PASSWORD": "s3cret"})
    assert without_gpu.run_args == {
        "labels": {"kale-magics.step": "train", "team": "ml"},
        "mem_limit": 2**30, "memswap_limit": 2**30, "mem_reservation": 256 * 2**20,
        "nano_cpus": 2 * 10**9, "cpu_shares": 512}
    assert without_gpu.volumes == {str(tmp_path / "data"): {"bind": "/data", "mode": "rw"}}
    assert without_gpu.environment == {"DB_PASSWORD": "s3cret"}
    assert (without_gpu.memory_limit, without_gpu.timeout_s) == ("1Gi", 1800)
    requests = step_container(step, options, gpus=True, secrets={"DB_PASSWORD": "s"}).run_args
    assert [(r["Count"], r["Capabilities"]) for r in requests["device_requests"]] == [(1, [["gpu"]])]


def test_one_notice_lists_what_containers_cannot_apply(notebook) -> None:
    plan = _plan(notebook, "%%kale step a --gpu 1 --node-selector pool=gpu --memory 1Gi\nx = 1",
                 "%%kale step b --annotation owner=me --toleration gpu=true:NoSchedule\ny = x")
    assert container_notices(plan, gpus=False) == [
        "no effect in containers (Docker here has no GPU runtime): a --gpu 1 --node-selector "
        "pool=gpu; b --toleration gpu=true:NoSchedule --annotation owner=me"]
    assert container_notices(plan, gpus=True) == [
        "no effect in containers: a --node-selector pool=gpu; b --toleration gpu=true:NoSchedule "
        "--annotation owner=me"]


def test_unmapped_pvc_is_refused_naming_it_before_docker_is_asked(notebook, monkeypatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    compiled = api.compile_notebook(notebook("%%kale step load --volume titanic-data:/data\nx = 1",
                                             name="pvc"))
    with pytest.raises(RunError, match="step 'load' mounts PVC 'titanic-data' at /data, which has "
                       "no local folder in a container run: add --volume-map titanic-data=DIR"):
        run_docker(compiled)
    with pytest.raises(RunError, match="--volume-map titanic-data=/nonexistent/x: no such folder"):
        run_docker(compiled, options=DockerOptions(volume_map={"titanic-data": "/nonexistent/x"}))


def test_secrets_come_from_the_env_file(notebook, tmp_path, monkeypatch) -> None:
    plan = _plan(notebook, "%%kale step a --secret db:password:DB_PASSWORD\nx = 1")
    with pytest.raises(RunError, match="step 'a' reads secret db:password as DB_PASSWORD, but no "
                       "--secret-env-file was given: pass --secret-env-file FILE with a line "
                       "DB_PASSWORD=VALUE"):
        check_inputs(plan, DockerOptions())
    env_file = tmp_path / "secrets.env"
    env_file.write_text("# comment\n\nOTHER=1\n")
    with pytest.raises(RunError, match=f"{env_file} has no DB_PASSWORD"):
        check_inputs(plan, DockerOptions(secret_env_file=str(env_file)))
    env_file.write_text("  DB_PASSWORD='a=b' \nFROM_HOST\n")
    monkeypatch.setenv("FROM_HOST", "here")
    assert read_env_file(str(env_file)) == {"DB_PASSWORD": "'a=b' ", "FROM_HOST": "here"}
    assert check_inputs(plan, DockerOptions(secret_env_file=str(env_file)))["DB_PASSWORD"] == "'a=b' "
    with pytest.raises(RunError, match="cannot read --secret-env-file /nonexistent.env"):
        check_inputs(plan, DockerOptions(secret_env_file="/nonexistent.env"))


def test_no_docker_daemon_is_one_clear_error(notebook, monkeypatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    compiled = api.compile_notebook(notebook("%%kale step a\nx = 1", name="nodaemon"))
    with pytest.raises(RunError, match=r"^cannot reach Docker \(.*\): start Docker Desktop or the "
                       "Docker daemon, or point DOCKER_HOST at its socket$"):
        run_docker(compiled)


def test_container_ir_keeps_kfps_install_and_names_each_step(notebook, tmp_path) -> None:
    compiled = api.compile_notebook(notebook("%%kale step a\nx = 1", "%%kale step b\ny = x",
                                             name="ir"), str(tmp_path / "out"))
    from kale_magics.codegen.compile import read_ir

    executors = container_ir(read_ir(compiled)[0], compiled.plan)["deploymentSpec"]["executors"]
    for step in ("a", "b"):
        container = executors[f"exec-{step}"]["container"]
        assert {"name": "KALE_MAGICS_STEP", "value": step} in container["env"]
        install = install_script(container["command"])
        assert install is not None and "pip install" in install and "'dill==" in install
        assert not install.rstrip().endswith('"$@"')  # the component itself is not run
    assert install_script(["sh", "-ec", "python3 -m kfp.dsl.executor_main"]) is None


def _step_log(notebook, tmp_path, step="train"):
    """A StepLog of step ``train`` (or a task that is no step) with a channel folder; the lines
    it forwards, and a function appending an event to the channel as the step runtime does."""
    plan = _plan(notebook, "%%kale step train\nx = 1")
    status = plan_status(plan, "/tmp/root", None, [])
    lines: list[str] = []
    log = StepLog(step, 100.0, status, str(tmp_path), out=lines.append)

    def event(kind: str, **fields) -> None:
        with open(tmp_path / EVENTS_FILE, "a") as f:
            f.write(json.dumps({"event": kind, "step": "train", **fields}) + "\n")

    return log, status, lines, event


def _events(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / EVENTS_FILE).read_text().splitlines()]


def test_output_is_forwarded_as_it_comes_and_install_time_is_set(notebook, tmp_path) -> None:
    log, status, lines, event = _step_log(notebook, tmp_path)
    log.write("WARNING: Running pip as the 'root' user\n")
    assert status.steps["train"].install_s is None
    event("start", time=112.5)
    log.write("\nkfp exec")  # the runtime's wake-up line, then a partial one
    assert status.steps["train"].install_s == 12.5  # before the runner reads the start event
    log.write("utor\n")
    event("end", time=113.0, state="SUCCEEDED")
    log.close()
    assert lines == ["WARNING: Running pip as the 'root' user", "", "kfp executor"]
    log.exited(1, "")  # the step reported its end: nothing is added
    assert len(_events(tmp_path)) == 2


def test_container_killed_for_memory_ends_the_step_failed(notebook, tmp_path) -> None:
    log, _, lines, event = _step_log(notebook, tmp_path)
    event("start", time=101.0)
    log.write("\n")
    log.exited(137, "out of memory (limit 512Mi)")
    end = _events(tmp_path)[-1]
    assert (end["event"], end["state"], end["error"]) == ("end", "FAILED", "out of memory (limit 512Mi)")
    assert lines[-1] == ""  # wakes the runner


def test_failed_install_reports_pips_error_in_the_step_log(notebook, tmp_path) -> None:
    log, _, _, _ = _step_log(notebook, tmp_path)
    log.write("Collecting nope==9\nERROR: No matching distribution found for nope==9\n\n")
    log.exited(1, "")
    start, end = _events(tmp_path)
    assert (start["event"], start["time"]) == ("start", 100.0)
    assert end["error"] == ("installing the step's packages failed (exit code 1): ERROR: No "
                            "matching distribution found for nope==9")
    assert (tmp_path / "train.log").read_text() == ("Collecting nope==9\nERROR: No matching "
                                                    "distribution found for nope==9\n")


def test_missing_module_error_names_the_package_to_add() -> None:
    from importlib import metadata

    from kale_magics.runner.status import StepStatus

    step = StepStatus(name="train", state="FAILED", error="ModuleNotFoundError: No module named 'yaml'")
    explain_missing_module(step, ["cloudpickle==3", "dill==0.4"])
    assert step.error == ("ModuleNotFoundError: No module named 'yaml'; module 'yaml' is not in the "
                          "step's packages_to_install (cloudpickle==3, dill==0.4): add --packages "
                          f"PyYAML=={metadata.version('PyYAML')} to step 'train'")
    provided = StepStatus(name="t", state="FAILED", error="ModuleNotFoundError: No module named 'yaml'")
    explain_missing_module(provided, ["PyYAML==6"])  # provided, yet missing: nothing to add
    assert provided.error == "ModuleNotFoundError: No module named 'yaml'"


@pytest.mark.parametrize("producer, value, wanted", [
    ("import pandas as pd", "pd.DataFrame({'a': [1]})", {"pandas", "pyarrow"}),
    ("import numpy as np", "np.arange(3)", {"numpy"}),
    ("from sklearn.linear_model import LinearRegression", "LinearRegression()", {"scikit-learn"}),
])
def test_a_consumer_installs_what_loading_its_inputs_needs(notebook, tmp_path, producer, value,
                                                           wanted) -> None:
    path = notebook(f"%%kale step make\n{producer}\nthing = {value}",
                    "%%kale step copy\nsame = thing",
                    "%%kale step use\nprint(same)", name="consumer")
    compiled = api.compile_notebook(path, str(tmp_path / "out"))
    names = {step: {r.split("==")[0] for r in reqs} for step, reqs in compiled.packages.items()}
    assert wanted <= names["make"] and wanted <= names["copy"] and wanted <= names["use"]
    assert compiled.packages["use"] == compiled.packages["make"]  # pinned alike


def test_step_lines_show_install_time_apart_from_the_steps_own() -> None:
    from kale_magics.runner.status import StepStatus
    from kale_magics.views.text import step_line

    step = StepStatus(name="train", state="SUCCEEDED", duration_s=1.234, install_s=8.06)
    assert step_line(step) == "train  SUCCEEDED  1.2 s  (installed in 8.1 s)"
    assert step_line(StepStatus(name="train", state="RUNNING")) == "train  RUNNING"


@pytest.mark.parametrize("args, message", [
    (["--volume-map", "data=/tmp"], "kale-magics: error: --volume-map applies to runs in containers: add --docker"),
    (["--docker", "--host", "http://127.0.0.1:9"], "kale-magics: error: --docker runs the steps in containers on this machine"),
    (["--docker", "--volume-map", "data"], "kale-magics: error: --volume-map 'data' is not valid; for example --volume-map data=./data"),
    (["--docker"], "kale-magics: error: step 'load' mounts PVC 'data' at /data, which has no local "
     "folder in a container run: add --volume-map data=DIR"),
])
def test_cli_refuses_bad_container_options_in_one_line(notebook, tmp_path, monkeypatch, args,
                                                        message) -> None:
    from tests.test_cli import cli

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    path = notebook("%%kale step load --volume data:/data\nx = 1", name="cliopts")
    result = cli("run", str(path), "-o", str(tmp_path / "out"), *args)
    assert result.returncode == 2
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1


def test_a_task_that_is_no_step_has_its_output_forwarded_as_it_comes(notebook, tmp_path) -> None:
    log, status, lines, event = _step_log(notebook, tmp_path, step="kale-runtime")
    log.write("pip output\n")
    event("start", time=101.0)
    log.write("\n")
    log.exited(1, "")
    assert lines == ["pip output", ""]
    assert status.steps["train"].install_s is None and len(_events(tmp_path)) == 1


@pytest.mark.parametrize("options, message", [
    ("--docker-network host", "--docker-network applies to runs in containers: add --docker"),
    ("--docker --remote", "--docker runs the steps in containers on this machine"),
])
def test_magic_refuses_bad_container_options_as_the_cli_does(shell, notebook, options,
                                                             message) -> None:
    from IPython.core.error import UsageError

    path = notebook("%%kale step a\nx = 1", name="magicopts")
    with pytest.raises(UsageError) as raised:
        shell.run_line_magic("kale", f"run --notebook {path} {options}")
    assert str(raised.value).startswith(message)


def test_panel_offers_containers_and_refuses_a_bad_volume_map_before_anything_starts(
        shell, panels, tmp_path) -> None:
    from kale_widgets.form import CONTAINERS
    from tests.conftest import write_notebook
    from tests.test_widgets_panel import FLOW, make_panel

    panel = make_panel(panels, write_notebook(tmp_path / "flow.ipynb", FLOW), shell,
                       warm_worker=False)
    assert panel.form.container_box.layout.display == "none"
    panel.form.target.value = CONTAINERS
    assert panel.form.container_box.layout.display == ""
    assert panel.form.remote_box.layout.display == "none"
    panel.form.network.value, panel.form.volume_map.value = " host ", "data=/tmp, scratch"
    choice = panel.form.chosen_target()
    assert (choice.containers, choice.remote, choice.docker_network,
            choice.volume_map) == (True, False, "host", ("data=/tmp", "scratch"))
    panel.run_button.click()
    assert "kale-error" in panel.message.value
    assert "--volume-map &#x27;scratch&#x27; is not valid" in panel.message.value
    assert panel.control.status is None and not panel.control.active
