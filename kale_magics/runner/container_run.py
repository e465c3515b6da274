"""The containers of one container run: each task's container, started, followed and removed.

kfp.local's ``DockerRunner`` takes ``docker run`` arguments for the whole run and refuses
``volumes`` (``kfp/local/config.py``, KFP 2.17). The extension point used here: kfp.local looks
up the handler of a DockerRunner task as ``kfp.local.docker_task_handler.DockerTaskHandler``
each time a task runs (``task_dispatcher.run_single_task_implementation``), so for the length of
a run (:func:`handler_installed`) that name is a subclass whose ``run`` is
:meth:`ContainerRun.run`: the task's container with its step's own settings, its output
followed by a :class:`StepLog`. The step is named by the environment variable :data:`STEP_ENV`,
which the run adds to each executor of the IR and which the container does not get.

Installing once per set of packages: KFP's command starts with a ``pip install`` of the
step's packages. The first time a base image meets a given install command, that command runs
in a container of the base image, which is then committed as an image (``kale-magics/env``,
tagged with a hash of the base image's id and the command); a step container starts from that
image and runs KFP's whole command, whose ``pip install`` then finds everything installed. The
step's container thus holds exactly the base image plus what its own install command installs,
as in a pod, without repeating the same install in every step of a run and in every run.
``reuse_installs=False`` installs in every container instead.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from kale_magics.codegen.packages import installed_packages
from kale_magics.model import requirement_name
from kale_magics.runner.status import FAILED, RunStatus, StepStatus
from kale_magics.runtime.channel import CHANNEL_ENV, EVENTS_FILE, log_path

#: Environment variable naming a task's step in the IR a container run executes.
STEP_ENV = "KALE_MAGICS_STEP"
#: Where the shared pip cache is mounted in each container.
PIP_CACHE_MOUNT = "/kale-magics/pip-cache"
#: Repository of the images holding a base image plus installed packages.
ENV_REPOSITORY = "kale-magics/env"
#: Label of those images (its value: the base image) and, with the step's name, of step containers.
ENV_LABEL, STEP_LABEL = "kale-magics.env", "kale-magics.step"
#: Label of every container of a run, its value the run's pipeline root.
RUN_LABEL = "kale-magics.run"
#: How KFP's lightweight component command runs the component after its install preamble.
_RUN_COMPONENT = '&& "$0" "$@"'


@dataclass(frozen=True)
class StepContainer:
    """What a step's container gets beyond KFP's own arguments.

    Attributes
    ----------
    run_args:
        Keyword arguments of ``docker.DockerClient.containers.run`` (limits, labels, devices).
    volumes:
        Host folder -> ``{"bind": path, "mode": "rw"}`` (mapped PVCs).
    environment:
        Secret values by environment variable name.
    memory_limit:
        The ``--memory-limit`` as written (for the out-of-memory message), or None.
    timeout_s:
        Seconds after which the container is killed, or None.
    """

    run_args: dict[str, Any]
    volumes: dict[str, dict[str, str]] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    memory_limit: str | None = None
    timeout_s: float | None = None


@contextlib.contextmanager
def handler_installed(run: "ContainerRun") -> Iterator[None]:
    """Make kfp.local run DockerRunner tasks through ``run`` while the block runs."""
    from kfp.local import docker_task_handler
    from kfp.local import status as kfp_status

    original = docker_task_handler.DockerTaskHandler

    class StepContainerHandler(original):  # type: ignore[misc, valid-type]
        def run(self) -> Any:
            step = self.env_vars.pop(STEP_ENV)
            code = run.run(self, step)
            return kfp_status.Status.SUCCESS if code == 0 else kfp_status.Status.FAILURE

    docker_task_handler.DockerTaskHandler = StepContainerHandler
    try:
        yield
    finally:
        docker_task_handler.DockerTaskHandler = original


@dataclass
class ContainerRun:
    """Runs the containers of one pipeline run.

    Attributes
    ----------
    containers:
        Each step's container settings.
    status:
        The run's status (a step's ``install_s`` is set here).
    packages:
        Each step's ``packages_to_install`` (named when an import fails).
    pip_cache:
        Host folder mounted as pip's cache, or "".
    reuse_installs:
        Start step containers from an image with their packages installed (module docstring).
    task_errors:
        Why each failed task that is no step (the ``kale-runtime`` task) failed, one line each;
        filled while the run goes on.

    Every container is labelled :data:`RUN_LABEL` = the run's pipeline root, so a run whose
    process was killed can be cleaned up (:func:`remove_run_containers`).
    """

    containers: Mapping[str, StepContainer]
    status: RunStatus
    packages: Mapping[str, list[str]]
    pip_cache: str
    reuse_installs: bool = True
    task_errors: list[str] = field(default_factory=list)

    def run(self, handler: Any, step: str) -> int:
        """Run the task of ``handler`` (a kfp.local ``DockerTaskHandler``) as ``step``'s
        container; forward its output; return its exit code. Containers are removed."""
        import docker

        spec = self.containers.get(step) or StepContainer(run_args={"labels": {STEP_LABEL: step}})
        channel = os.environ.get(CHANNEL_ENV)  # the run's, set while it lasts (runner.local)
        client = docker.from_env()
        try:
            log = StepLog(step, time.time(), self.status, channel)
            image, code = self._environment(client, handler, log)
            if code != 0:
                self._failed(log, code, "")
                return code
            container = client.containers.run(
                image=image, command=handler.full_command, detach=True,
                volumes={**handler.get_volumes_to_mount(client), **spec.volumes,
                         **self._pip_volume()},
                environment={**handler.env_vars, **spec.environment, **self._pip_env(),
                             **({CHANNEL_ENV: channel} if channel else {})},
                **handler.runner.container_run_args,
                **{**spec.run_args, "labels": {**spec.run_args.get("labels", {}), **self._run_label()}})
            code, oom, killed = _follow(container, log, spec.timeout_s)
            if code != 0:
                self._failed(log, code, _why(spec, oom, killed))
                if step in self.status.steps:
                    explain_missing_module(self.status.steps[step], self.packages.get(step, []))
            return code
        finally:
            client.close()

    def _failed(self, log: "StepLog", code: int, why: str) -> None:
        """A task's container exited with ``code`` != 0: end its step FAILED, or, for a task
        that is no step, keep why in :attr:`task_errors`."""
        log.exited(code, why)
        if log.step not in self.status.steps:
            self.task_errors.append(f"task {log.step!r} failed in its container (exit code "
                                    f"{code}): {why or log.last_line()}")

    def _environment(self, client: Any, handler: Any, log: "StepLog") -> tuple[str, int]:
        """The image to start the step from, and the exit code of installing into it (0 when
        nothing had to be installed)."""
        install = install_script(handler.full_command)
        if install is None or not self.reuse_installs:
            return handler.image, 0
        base = client.images.get(handler.image)
        tag = hashlib.sha256(f"{base.id}\n{install}".encode()).hexdigest()[:16]
        if client.images.list(name=f"{ENV_REPOSITORY}:{tag}"):
            return f"{ENV_REPOSITORY}:{tag}", 0
        container = client.containers.run(
            image=handler.image, command=["sh", "-c", install], detach=True,
            volumes=self._pip_volume(), environment=self._pip_env(),
            labels={ENV_LABEL: handler.image, **self._run_label()}, **handler.runner.container_run_args)
        code, _, _ = _follow(container, log, None, commit=(ENV_REPOSITORY, tag, handler.image))
        return f"{ENV_REPOSITORY}:{tag}", code

    def _run_label(self) -> dict[str, str]:
        return {RUN_LABEL: self.status.pipeline_root}

    def _pip_volume(self) -> dict[str, dict[str, str]]:
        if not self.pip_cache:
            return {}
        os.makedirs(self.pip_cache, exist_ok=True)
        return {os.path.abspath(self.pip_cache): {"bind": PIP_CACHE_MOUNT, "mode": "rw"}}

    def _pip_env(self) -> dict[str, str]:
        return {"PIP_CACHE_DIR": PIP_CACHE_MOUNT} if self.pip_cache else {}


def install_script(command: list[str]) -> str | None:
    """The ``pip install`` preamble of KFP's lightweight component command, or None.

    KFP writes ``["sh", "-c", "<install> && \\"$0\\" \\"$@\\"\\n", "sh", "-ec", "<program>", ...]``
    (``kfp.dsl.component_factory._get_packages_to_install_command``, KFP 2.17).
    """
    if command[:2] != ["sh", "-c"] or len(command) < 4 or "pip install" not in command[2]:
        return None
    install, found, _ = command[2].rpartition(_RUN_COMPONENT)
    return install if found else None


def _follow(container: Any, log: "StepLog", timeout_s: float | None,
            commit: tuple[str, str, str] | None = None) -> tuple[int, bool, bool]:
    """Stream the container's output into ``log`` until it exits, then remove it (after
    committing it as ``(repository, tag, base image)`` when it exited 0 and ``commit`` is
    given). The container is killed after ``timeout_s``.

    Returns
    -------
    tuple of (int, bool, bool)
        The exit code, whether it ran out of memory, whether the timeout killed it.
    """
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        with contextlib.suppress(Exception):
            container.kill()

    timer = threading.Timer(timeout_s, kill) if timeout_s else None
    try:
        if timer is not None:
            timer.daemon = True
            timer.start()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for chunk in container.logs(stream=True, follow=True):
            log.write(decoder.decode(chunk))
        log.write(decoder.decode(b"", final=True))
        log.close()
        code = int(container.wait().get("StatusCode", 1))
        container.reload()
        oom = bool(container.attrs.get("State", {}).get("OOMKilled"))
        if commit is not None and code == 0:
            repository, tag, base = commit
            container.commit(repository=repository, tag=tag,
                             changes=[f"LABEL {ENV_LABEL}={base} {RUN_LABEL}="])
    finally:
        if timer is not None:
            timer.cancel()
        container.remove(force=True)
    return code, oom, killed.is_set()


def _why(spec: StepContainer, oom: bool, killed: bool) -> str:
    """Why a container failed, when the step could not say: "out of memory (limit 512Mi)"."""
    if oom:
        return f"out of memory (limit {spec.memory_limit})" if spec.memory_limit else "out of memory"
    if killed:
        return f"timed out after {spec.timeout_s:g} s (--timeout)"
    return ""


class StepLog:
    """Follows one task's container for the local runner: forwards the container's output to
    kfp.local's stdout, where each line prompts the runner to read the run's channel
    (``runtime.channel``: the step runtime in the container writes its events and its log into
    the channel folder, mounted at the same path), and reports what the step could not: a
    failed install, running out of memory, a timeout.

    Parameters
    ----------
    step:
        The step's name (or, for a task that is no step, the task's).
    started:
        When installing for it started (seconds since the epoch).
    status:
        The run's status; the step's ``install_s`` is set when its ``start`` event is seen, just
        before the line that makes the runner apply that event is forwarded.
    channel:
        The run's channel folder, or None.
    out:
        Where lines go (default ``print``, which kfp.local indents while a task runs).
    """

    def __init__(self, step: str, started: float, status: RunStatus, channel: str | None,
                 out: Callable[[str], Any] = print) -> None:
        self.step, self.started, self.status, self.channel = step, started, status, channel
        self.out = out
        self.events = os.path.join(channel, EVENTS_FILE) if channel else ""
        self.offset = _size(self.events)  # earlier events are other steps' or attempts'
        self.partial = ""
        self.recent: collections.deque[str] = collections.deque(maxlen=20)  # before the code
        self.code_started = self.ended = False

    def write(self, text: str) -> None:
        """Take the next piece of output (any number of lines, maybe partial)."""
        self.partial += text
        *lines, self.partial = self.partial.split("\n")
        for line in lines:
            self._line(line)

    def close(self) -> None:
        """The output ended: take a last unterminated line."""
        if self.partial:
            self._line(self.partial)
            self.partial = ""

    def _line(self, line: str) -> None:
        self._read_events()
        if not self.code_started and line.strip():
            self.recent.append(line.strip())
        self.out(line)

    def _read_events(self) -> None:
        if not self.events or self.step not in self.status.steps:
            return
        with contextlib.suppress(OSError), open(self.events, "rb") as f:
            f.seek(self.offset)
            data = f.read()
            complete = data[:data.rfind(b"\n") + 1]
            self.offset += len(complete)
            for line in complete.splitlines():
                with contextlib.suppress(ValueError):
                    self._event(json.loads(line))

    def _event(self, event: Any) -> None:
        if not isinstance(event, dict) or event.get("step") != self.step:
            return
        if event.get("event") == "start":
            self.code_started = True
            self.status.steps[self.step].install_s = round(event["time"] - self.started, 3)
        elif event.get("event") == "end":
            self.ended = True

    def last_line(self) -> str:
        """The last line of output before the step's code started ("no output" when none)."""
        return self.recent[-1] if self.recent else "no output"

    def exited(self, code: int, why: str) -> None:
        """The container exited with ``code`` != 0: end the step as FAILED unless it did."""
        self._read_events()
        if self.ended or not self.events or self.step not in self.status.steps:
            return
        if not self.code_started:
            self._append({"event": "start", "step": self.step, "time": self.started})
            with open(log_path(self.channel or "", self.step), "a", encoding="utf-8") as f:
                f.write("".join(f"{line}\n" for line in self.recent))
            why = (f"{why} while installing the step's packages" if why else
                   f"installing the step's packages failed (exit code {code}): "
                   f"{self.last_line()}")
        why = why or f"the step's container exited with code {code} before the step ended"
        start = self.status.steps[self.step].start or self.started
        self._append({"event": "end", "step": self.step, "time": time.time(), "state": FAILED,
                      "duration_s": time.time() - start, "error": why})
        self.ended = True
        self.out("")  # the runner reads the channel now

    def _append(self, event: dict[str, Any]) -> None:
        with open(self.events, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")
        self.offset = _size(self.events)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path) if path else 0
    except OSError:
        return 0


def explain_missing_module(step: StepStatus, packages: list[str]) -> None:
    """Name the package to add in ``step``'s error when it failed importing a module its
    packages do not provide (the import was hidden from the compile, e.g. ``importlib``).

    Called when the step's container has ended, after the runner applied the step's ``end``
    event; the run's summary and final status show it.
    """
    if step.state == FAILED:
        step.error = missing_module_hint(step.error, step.name, packages)


_MISSING_MODULE = re.compile(r"ModuleNotFoundError: No module named '([A-Za-z0-9_]+)")


def missing_module_hint(error: str, step: str, packages: list[str]) -> str:
    """``error``, plus which package to add when it is an import of a module the step's
    packages do not provide (its import was hidden from the compile, e.g. ``importlib``)."""
    match = _MISSING_MODULE.match(error)
    if not match:
        return error
    module = match.group(1)
    owner = installed_packages().owner(module)
    if owner is not None and requirement_name(owner) in {requirement_name(p) for p in packages}:
        return error
    fix = installed_packages().pin(owner) if owner else "DISTRIBUTION"
    listed = ", ".join(packages) or "none"
    return (f"{error}; module {module!r} is not in the step's packages_to_install ({listed}): "
            f"add --packages {fix} to step {step!r}")


def remove_run_containers(client: Any, pipeline_root: str) -> int:
    """Kill and remove the containers of runs into ``pipeline_root`` (left by a run whose
    process was killed, e.g. canceled from the panel); returns how many there were."""
    containers = client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={pipeline_root}"})
    for container in containers:
        with contextlib.suppress(Exception):
            container.remove(force=True)
    return len(containers)
