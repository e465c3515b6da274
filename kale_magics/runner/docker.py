"""Run a compiled pipeline in containers, as a cluster runs it, with ``kfp.local.DockerRunner``.

Every step runs in a container of its base image that installs only the step's
``packages_to_install`` with KFP's own ``pip install`` preamble, exactly what a
KFP pod does; kale-magics itself is not in the image (the step runtime is
embedded in each component). So a step that imports a module its packages do
not provide fails here as it would on the cluster, not later.

Step settings take effect where Docker has an equivalent:

================================  ============================================================
``--memory-limit``                ``mem_limit`` and ``memswap_limit`` (no swap, as in a pod);
                                  a step over it ends FAILED, "out of memory (limit 512Mi)"
``--memory``                      ``mem_reservation`` (Docker's soft limit)
``--cpu-limit``                   ``nano_cpus``
``--cpu``                         ``cpu_shares``, 1024 per CPU (what the kubelet writes to
                                  ``cpu.shares``)
``--gpu N`` (NVIDIA)              a device request for N GPUs, where Docker has a GPU runtime
``--env``                         the container's environment (from the IR)
``--secret SECRET:KEY:ENV``       ``ENV`` from a local env file (``secret_env_file``)
``--volume PVC:/PATH``            the folder mapped to PVC (``volume_map``), mounted at /PATH
``--timeout``                     the container is killed after it, as a pod's deadline
``--label``                       a container label
``--retries``, ``--cache``        kfp.local, as for local runs
================================  ============================================================

``--node-selector``, ``--toleration`` and ``--annotation`` (and a GPU where Docker has none)
have no effect; one notice lists them. A shared pip cache folder is mounted into every
container (``PIP_CACHE_DIR``), so a second run downloads nothing again.

Extension point: kfp.local's ``DockerRunner`` takes ``docker run`` arguments for the whole run
and refuses ``volumes`` (``kfp/local/config.py``, KFP 2.17). kfp.local looks up the handler of
a DockerRunner task as ``kfp.local.docker_task_handler.DockerTaskHandler`` each time a task
runs (``task_dispatcher.run_single_task_implementation``); for the length of a run that name is
a subclass (:func:`_handler_class`) that runs the task's container with its step's settings and
follows it (:class:`StepLog`). The step is named by an environment variable the run adds to
each executor of the IR (:data:`STEP_ENV`).
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from kale_magics.codegen.compile import CompiledPipeline, read_ir
from kale_magics.codegen.packages import installed_packages
from kale_magics.codegen.settings import local_noops
from kale_magics.errors import RunError
from kale_magics.model import Plan, Step, requirement_name
from kale_magics.runner import local_cache
from kale_magics.runner.local import execute, local_ir, plan_status
from kale_magics.runner.status import FAILED, RunHooks, RunStatus
from kale_magics.runtime.step import EVENT_MARKER

#: Environment variable naming a task's step in the IR a container run executes.
STEP_ENV = "KALE_MAGICS_STEP"
#: Where the shared pip cache is mounted in each container.
PIP_CACHE_MOUNT = "/kale-magics/pip-cache"
#: Label put on every step container (with the step's name as value).
STEP_LABEL = "kale-magics.step"
#: Settings Docker has no equivalent for.
_NO_DOCKER_EQUIVALENT = ("--node-selector", "--toleration", "--annotation")
_MEMORY_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
                 "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def default_pip_cache() -> str:
    """``$XDG_CACHE_HOME/kale-magics/pip`` (default ``~/.cache/kale-magics/pip``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "kale-magics", "pip")


@dataclass(frozen=True)
class DockerOptions:
    """How a container run maps the pipeline onto this machine's Docker.

    Attributes
    ----------
    network:
        Docker network mode of the step containers (``"host"``, ``"bridge"``, a network's
        name), or None for Docker's default. Steps that install packages need to reach the
        package index from it.
    volume_map:
        PVC name -> local folder mounted where a step's ``--volume PVC:/PATH`` says.
    secret_env_file:
        A ``docker run --env-file`` style file (``ENV=VALUE`` lines) giving the value of each
        ``--secret SECRET:KEY:ENV``, or None.
    pip_cache:
        Host folder shared by every container as pip's cache; "" for none.
    """

    network: str | None = None
    volume_map: Mapping[str, str] = field(default_factory=dict)
    secret_env_file: str | None = None
    pip_cache: str = field(default_factory=default_pip_cache)


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


def memory_bytes(quantity: str) -> int:
    """Bytes of a Kubernetes memory quantity: ``"512Mi"`` -> 536870912, ``"1G"`` -> 10**9."""
    number, unit = re.fullmatch(r"([0-9]+)([A-Za-z]*)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * _MEMORY_UNITS[unit]


def cpu_cores(quantity: str) -> float:
    """CPUs of a Kubernetes CPU quantity: ``"500m"`` -> 0.5, ``"2"`` -> 2.0."""
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _wants_nvidia(step: Step) -> bool:
    accelerator = step.settings.accelerator or "nvidia.com/gpu"
    return bool(step.settings.gpu) and accelerator.startswith("nvidia.com/")


def step_container(step: Step, options: DockerOptions, gpus: bool,
                   secrets: Mapping[str, str]) -> StepContainer:
    """The container settings of ``step`` (see the module's table).

    Parameters
    ----------
    step:
        The step, with its settings.
    options:
        The run's Docker options (its volume map; checked by :func:`check_inputs`).
    gpus:
        True when Docker here can hand out NVIDIA GPUs.
    secrets:
        Values by environment variable name (from :func:`read_env_file`).
    """
    s = step.settings
    args: dict[str, Any] = {"labels": {STEP_LABEL: step.name, **dict(s.labels)}}
    if s.memory_limit:
        args["mem_limit"] = args["memswap_limit"] = memory_bytes(s.memory_limit)
    if s.memory:
        args["mem_reservation"] = memory_bytes(s.memory)
    if s.cpu_limit:
        args["nano_cpus"] = int(cpu_cores(s.cpu_limit) * 1e9)
    if s.cpu:
        args["cpu_shares"] = max(2, int(cpu_cores(s.cpu) * 1024))
    if gpus and _wants_nvidia(step):
        from docker.types import DeviceRequest

        args["device_requests"] = [DeviceRequest(count=s.gpu, capabilities=[["gpu"]])]
    volumes = {os.path.abspath(options.volume_map[pvc]): {"bind": path, "mode": "rw"}
               for pvc, path in s.volumes}
    return StepContainer(run_args=args, volumes=volumes,
                         environment={env: secrets[env] for _, _, env in s.secrets},
                         memory_limit=s.memory_limit, timeout_s=s.timeout_s)


def container_noops(step: Step, gpus: bool) -> list[str]:
    """The step's settings that have no effect in a container, as the options the user wrote."""
    return [option for option in local_noops(step)
            if option.startswith(_NO_DOCKER_EQUIVALENT)
            or (option.startswith("--gpu ") and not (gpus and _wants_nvidia(step)))]


def container_notices(plan: Plan, gpus: bool) -> list[str]:
    """The one notice naming every setting a container run cannot apply, or none."""
    ignored = [f"{step.name} {' '.join(noops)}" for step in plan.steps
               if (noops := container_noops(step, gpus))]
    if not ignored:
        return []
    why = "" if gpus else " (Docker here has no GPU runtime)"
    return [f"no effect in containers{why}: {'; '.join(ignored)}"]


def read_env_file(path: str) -> dict[str, str]:
    """Variables of a ``docker run --env-file`` file.

    One ``NAME=VALUE`` per line, taken literally (quotes are part of the value); blank lines
    and lines starting with ``#`` are skipped; a line ``NAME`` alone takes NAME's value from
    this process's environment (docker/cli ``opts/envfile.go``).

    Raises
    ------
    RunError
        The file cannot be read.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as error:
        raise RunError(f"cannot read --secret-env-file {path}: {error.strerror or error}; "
                       "give a file of NAME=VALUE lines") from None
    values = {}
    for line in lines:
        line = line.lstrip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if sep or name in os.environ:
            values[name] = value if sep else os.environ[name]
    return values


def check_inputs(plan: Plan, options: DockerOptions) -> dict[str, str]:
    """Check that every PVC has a local folder and every secret a value; return the secrets.

    Raises
    ------
    RunError
        A step mounts a PVC the volume map lacks (or maps to a missing folder), or reads a
        secret the env file does not give; the message names it and the option to fix it.
    """
    for step in plan.steps:
        for pvc, path in step.settings.volumes:
            folder = options.volume_map.get(pvc)
            if folder is None:
                raise RunError(f"step {step.name!r} mounts PVC {pvc!r} at {path}, which has no "
                               f"local folder in a container run: add --volume-map {pvc}=DIR")
            if not os.path.isdir(folder):
                raise RunError(f"--volume-map {pvc}={folder}: no such folder; create it or "
                               "map the PVC to an existing one")
    wanted = [(step.name, secret) for step in plan.steps for secret in step.settings.secrets]
    if not wanted:
        return {}
    values = read_env_file(options.secret_env_file) if options.secret_env_file else {}
    for step_name, (name, key, env) in wanted:
        if env not in values:
            where = (f"{options.secret_env_file} has no {env}" if options.secret_env_file
                     else "no --secret-env-file was given")
            raise RunError(f"step {step_name!r} reads secret {name}:{key} as {env}, but {where}: "
                           f"pass --secret-env-file FILE with a line {env}=VALUE")
    return values


def connect() -> Any:
    """A ``docker.DockerClient`` for the daemon of ``DOCKER_HOST`` (or the default socket).

    Raises
    ------
    RunError
        The ``docker`` package is missing or no daemon answers.
    """
    try:
        import docker
    except ImportError:
        raise RunError("running in containers needs the docker Python package: "
                       "pip install 'kale-magics[docker]'") from None
    try:
        client = docker.from_env()
        client.ping()
        return client
    except docker.errors.DockerException as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RunError(f"cannot reach Docker ({first}): start Docker Desktop or the Docker "
                       "daemon, or point DOCKER_HOST at its socket") from None


def has_gpu(client: Any) -> bool:
    """True when the daemon has the NVIDIA container runtime (it can hand out GPUs)."""
    return "nvidia" in (client.info().get("Runtimes") or {})


def ensure_images(client: Any, ir: Mapping[str, Any]) -> None:
    """Make sure every step's image is on the daemon, pulling the missing ones.

    Raises
    ------
    RunError
        An image is neither there nor can it be pulled; the message says how to get it.
    """
    import docker

    images = {executor["container"]["image"]
              for executor in ir.get("deploymentSpec", {}).get("executors", {}).values()
              if "container" in executor}
    for image in sorted(images):
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            try:
                client.images.pull(image)
            except docker.errors.DockerException as error:
                raise RunError(f"image {image!r} is not on this Docker and cannot be pulled "
                               f"({str(error).splitlines()[0]}): pull or build it first (README, "
                               "'Running in containers'), or choose another with --image") from None


def container_ir(ir: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """A copy of the IR for a container run: KFP's pip installs kept, each executor naming its
    step in :data:`STEP_ENV`, no working-directory change (a step starts in the image's)."""
    prepared = local_ir(ir, {}, installs=True)
    tasks = prepared["root"]["dag"]["tasks"]
    for step in plan.steps:
        component = prepared["components"][tasks[local_cache.task_name(step.name)]
                                           ["componentRef"]["name"]]
        container = prepared["deploymentSpec"]["executors"][component["executorLabel"]]["container"]
        container["env"] = [*container.get("env", []), {"name": STEP_ENV, "value": step.name}]
    return prepared


def run_docker(compiled: CompiledPipeline, arguments: Mapping[str, Any] | None = None, *,
               options: DockerOptions | None = None, pipeline_root: str | None = None,
               hooks: RunHooks | None = None, echo: Any = None, enable_caching: bool = True,
               from_step: str | None = None) -> RunStatus:
    """Run ``compiled`` with every step in its own container (``kfp.local.DockerRunner``).

    Parameters
    ----------
    compiled:
        The compiled pipeline (its YAML is what runs).
    arguments:
        Pipeline parameter values, already typed; missing ones take their defaults.
    options:
        Network, volume map, secrets file and pip cache (see :class:`DockerOptions`).
    pipeline_root:
        Folder for the run's artifacts; default ``<output folder>/container_runs``.
        Containers write there as the image's user (root in Python images).
    hooks:
        Subscribers to the run's status changes; a step's ``install_s`` is set when its
        code starts.
    echo:
        When given, every line of kfp.local's output is also written here.
    enable_caching, from_step:
        As for :func:`kale_magics.runner.local.run_local`.

    Returns
    -------
    RunStatus
        The final state of the run and every step. A failed step does not raise.

    Raises
    ------
    RunError
        A PVC has no local folder, a secret no value, Docker cannot be reached, or an image
        is missing and cannot be pulled.
    """
    options = options or DockerOptions()
    plan = compiled.plan
    if from_step is not None:
        local_cache.downstream(plan, from_step)  # a bad name fails before Docker is asked
    secrets = check_inputs(plan, options)
    ir, _ = read_ir(compiled)
    client = connect()
    try:
        gpus = has_gpu(client)
        ensure_images(client, ir)
    finally:
        client.close()
    root = os.path.abspath(pipeline_root or os.path.join(os.path.dirname(compiled.yaml_path),
                                                         "container_runs"))
    status = plan_status(plan, root, hooks, container_notices(plan, gpus))
    if from_step is not None:
        ir = local_cache.rerun(ir, local_cache.downstream(plan, from_step))
    run = ContainerRun({s.name: step_container(s, options, gpus, secrets) for s in plan.steps},
                       status, compiled.packages, options.pip_cache)
    network = {"network_mode": options.network} if options.network else {}
    from kfp import local

    with _handler_installed(run):
        execute(container_ir(ir, plan), dict(arguments or {}), root, status, echo,
                enable_caching, runner=local.DockerRunner(**network))
    return status


@contextlib.contextmanager
def _handler_installed(run: "ContainerRun") -> Iterator[None]:
    """Make kfp.local run DockerRunner tasks with :func:`_handler_class` while the block runs."""
    from kfp.local import docker_task_handler

    original = docker_task_handler.DockerTaskHandler
    docker_task_handler.DockerTaskHandler = _handler_class(run, original)
    try:
        yield
    finally:
        docker_task_handler.DockerTaskHandler = original


def _handler_class(run: "ContainerRun", base: type) -> type:
    """A subclass of kfp.local's ``DockerTaskHandler`` whose ``run`` is :meth:`ContainerRun.run`."""
    from kfp.local import status as kfp_status

    class StepContainerHandler(base):  # type: ignore[misc, valid-type]
        def run(self) -> Any:
            step = self.env_vars.pop(STEP_ENV)
            code = run.run(self, step)
            return kfp_status.Status.SUCCESS if code == 0 else kfp_status.Status.FAILURE

    return StepContainerHandler


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
    """

    containers: Mapping[str, StepContainer]
    status: RunStatus
    packages: Mapping[str, list[str]]
    pip_cache: str

    def run(self, handler: Any, step: str) -> int:
        """Run the task of ``handler`` (a kfp.local ``DockerTaskHandler``) as ``step``'s
        container; forward its output; return its exit code. The container is removed."""
        import docker

        spec = self.containers[step]
        client = docker.from_env()
        try:
            started = time.time()
            container = client.containers.run(
                image=handler.image, command=handler.full_command, detach=True,
                volumes={**handler.get_volumes_to_mount(client), **spec.volumes,
                         **self._pip_volume()},
                environment={**handler.env_vars, **spec.environment, **self._pip_env()},
                **handler.runner.container_run_args, **spec.run_args)
            log = StepLog(step, started, self.status, self.packages.get(step, []))
            try:
                code, killed = _follow(container, log, spec.timeout_s)
                container.reload()
                oom = bool(container.attrs.get("State", {}).get("OOMKilled"))
            finally:
                container.remove(force=True)
            if code != 0:
                log.exited(code, _why(spec, oom, killed))
            return code
        finally:
            client.close()

    def _pip_volume(self) -> dict[str, dict[str, str]]:
        if not self.pip_cache:
            return {}
        os.makedirs(self.pip_cache, exist_ok=True)
        return {os.path.abspath(self.pip_cache): {"bind": PIP_CACHE_MOUNT, "mode": "rw"}}

    def _pip_env(self) -> dict[str, str]:
        return {"PIP_CACHE_DIR": PIP_CACHE_MOUNT} if self.pip_cache else {}


def _follow(container: Any, log: "StepLog", timeout_s: float | None) -> tuple[int, bool]:
    """Stream the container's output into ``log`` until it exits; kill it after ``timeout_s``.
    Returns the exit code and whether the timeout killed it."""
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        with contextlib.suppress(Exception):
            container.kill()

    timer = threading.Timer(timeout_s, kill) if timeout_s else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for chunk in container.logs(stream=True, follow=True):
            log.write(decoder.decode(chunk))
        log.write(decoder.decode(b"", final=True))
        log.close()
        code = int(container.wait().get("StatusCode", 1))
    finally:
        if timer is not None:
            timer.cancel()
    return code, killed.is_set()


def _why(spec: StepContainer, oom: bool, killed: bool) -> str:
    """Why a container failed, when the step could not say: "out of memory (limit 512Mi)"."""
    if oom:
        return f"out of memory (limit {spec.memory_limit})" if spec.memory_limit else "out of memory"
    if killed:
        return f"timed out after {spec.timeout_s:g} s (--timeout)"
    return ""


class StepLog:
    """Forwards one step container's output to kfp.local's stdout, where the local runner
    reads the step runtime's event lines (``runner.local``), and reports what the step could
    not: a failed install, running out of memory, a timeout.

    Lines before the step's code starts are the install's; they are held back and forwarded
    right after the step's ``start`` event, so they land in the step's log.

    Parameters
    ----------
    step:
        The step's name.
    started:
        When its container started (seconds since the epoch).
    status:
        The run's status; the step's ``install_s`` is set just before its ``start`` event is
        forwarded, whose update notifies the hooks.
    packages:
        The step's ``packages_to_install``, named when one of its imports fails.
    out:
        Where lines go (default ``print``, which kfp.local indents while a task runs).
    """

    def __init__(self, step: str, started: float, status: RunStatus, packages: list[str],
                 out: Callable[[str], Any] = print) -> None:
        self.step, self.started, self.status, self.packages = step, started, status, packages
        self.out = out
        self.partial = ""
        self.held: list[str] | None = []  # None once the step's code started
        self.ended = False

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
        event = _event(line)
        if event is None or event.get("step") != self.step:
            if self.held is None:
                self.out(line)
            else:
                self.held.append(line)
        elif event.get("event") == "start":
            self.status.steps[self.step].install_s = round(event["time"] - self.started, 3)
            self.out(line)
            self._release()
        else:
            self.ended = True
            if event.get("state") == FAILED:
                event["error"] = missing_module_hint(event.get("error", ""), self.step,
                                                     self.packages)
            self.out(f"{EVENT_MARKER} {json.dumps(event)}")

    def _release(self) -> None:
        for held in self.held or []:
            self.out(held)
        self.held = None

    def exited(self, code: int, why: str) -> None:
        """The container exited with ``code`` != 0: end the step as FAILED unless it did."""
        if self.ended:
            return
        installing = self.held is not None
        if installing:
            self.out(f"{EVENT_MARKER} {json.dumps({'event': 'start', 'step': self.step, 'time': self.started})}")
            last = next((line for line in reversed(self.held or []) if line.strip()), "")
            self._release()
            why = (f"{why} while installing the step's packages" if why else
                   f"installing the step's packages failed (exit code {code}): {last.strip()}")
        why = why or f"the step's container exited with code {code} before the step ended"
        self.out(f"kale-magics: {why}")
        start = self.status.steps[self.step].start or self.started
        end = {"event": "end", "step": self.step, "time": time.time(), "state": FAILED,
               "duration_s": time.time() - start, "error": why}
        self.out(f"{EVENT_MARKER} {json.dumps(end)}")
        self.ended = True


def _event(line: str) -> dict[str, Any] | None:
    text = line.strip()
    if not text.startswith(EVENT_MARKER):
        return None
    try:
        event = json.loads(text[len(EVENT_MARKER):])
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


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
