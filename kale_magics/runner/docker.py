"""Run a compiled pipeline in containers, as a cluster runs it, with ``kfp.local.DockerRunner``.

Every task runs in a container of its base image that installs only the task's
``packages_to_install`` with KFP's own ``pip install`` preamble, exactly what a
KFP pod does; kale-magics itself is not in the image: the first task,
``kale-runtime``, writes the step runtime as an artifact (in its own container)
and every step loads it from there. So a step that imports a module its
packages do not provide fails here as it would on the cluster, not later.

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

Steps run through kfp.local's orchestration (caching, retries, artifacts under the pipeline
root, mounted at the same path) with each task's container started by
:mod:`kale_magics.runner.container_run`, which applies the per-step settings and installs each
distinct set of packages once.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from kale_magics.codegen.compile import CompiledPipeline, read_ir
from kale_magics.codegen.settings import local_noops
from kale_magics.errors import RunError
from kale_magics.model import Plan, Step
from kale_magics.runner import local_cache
from kale_magics.runner.container_run import (STEP_ENV, STEP_LABEL, ContainerRun, StepContainer,
                                              handler_installed, remove_run_containers)
from kale_magics.runner.local import execute_plan, local_ir, plan_status
from kale_magics.runner.status import FAILED, RunHooks, RunStatus

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
    reuse_installs:
        Install each distinct set of packages once into an image that step containers start
        from (``kale-magics/env:<hash>``); False to install in every container, as pods do.
    """

    network: str | None = None
    volume_map: Mapping[str, str] = field(default_factory=dict)
    secret_env_file: str | None = None
    pip_cache: str = field(default_factory=default_pip_cache)
    reuse_installs: bool = True


def docker_options(network: str | None = None, volume_map: Iterable[str] = (),
                   secret_env_file: str | None = None, fresh_installs: bool = False) -> DockerOptions:
    """:class:`DockerOptions` from the words a user types (``--volume-map data=./data``).

    Raises
    ------
    RunError
        A volume map is not ``PVC=DIR``, or names a PVC twice.
    """
    mapped: dict[str, str] = {}
    for entry in volume_map:
        pvc, sep, folder = entry.partition("=")
        if not sep or not pvc or not folder:
            raise RunError(f"--volume-map {entry!r} is not valid; for example --volume-map "
                           "data=./data (a PVC name, then a local folder)")
        if pvc in mapped:
            raise RunError(f"--volume-map maps PVC {pvc!r} twice; give one folder per PVC")
        mapped[pvc] = os.path.abspath(os.path.expanduser(folder))
    return DockerOptions(network=network or None, volume_map=mapped,
                         secret_env_file=secret_env_file or None, reuse_installs=not fresh_installs)


def chosen_docker_options(docker: bool, remote: bool, network: str | None = None,
                          volume_map: Iterable[str] = (), secret_env_file: str | None = None,
                          fresh_installs: bool = False) -> DockerOptions | None:
    """The container options of a ``run`` command line (``--docker`` and its options), or None
    when the run is not in containers.

    Parameters
    ----------
    docker:
        ``--docker`` was given.
    remote:
        The run goes to a KFP server (``--host`` or ``--remote``).
    network, volume_map, secret_env_file, fresh_installs:
        As :func:`docker_options` takes them.

    Raises
    ------
    RunError
        ``--docker`` with a KFP server, a container option without ``--docker``, or a bad
        volume map (:func:`docker_options`).
    """
    if docker and remote:
        raise RunError("--docker runs the steps in containers on this machine; leave out "
                       "--host/--remote, or --docker to run on the KFP server")
    given = [option for option, value in (("--docker-network", network),
                                          ("--volume-map", volume_map),
                                          ("--secret-env-file", secret_env_file),
                                          ("--fresh-installs", fresh_installs)) if value]
    if given and not docker:
        raise RunError(f"{given[0]} applies to runs in containers: add --docker")
    return docker_options(network, volume_map, secret_env_file, fresh_installs) if docker else None


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
    step (or, for a task that is no step, the task) in :data:`STEP_ENV`, no working-directory
    change (a step starts in the image's)."""
    prepared = local_ir(ir, {}, installs=True)
    steps = {local_cache.task_name(step.name): step.name for step in plan.steps}
    for task_name, task in prepared["root"]["dag"]["tasks"].items():
        component = prepared["components"][task["componentRef"]["name"]]
        container = prepared["deploymentSpec"]["executors"][component["executorLabel"]]["container"]
        container["env"] = [*container.get("env", []),
                            {"name": STEP_ENV, "value": steps.get(task_name, task_name)}]
    return prepared


def container_root(compiled: CompiledPipeline, pipeline_root: str | None = None) -> str:
    """The absolute pipeline root of a container run: ``pipeline_root``, else
    ``<output folder>/container_runs``."""
    return os.path.abspath(pipeline_root or os.path.join(os.path.dirname(compiled.yaml_path),
                                                         "container_runs"))


def docker_notices(compiled: CompiledPipeline, options: DockerOptions | None = None) -> list[str]:
    """What a container run of ``compiled`` cannot apply (:func:`container_notices`), asking the
    daemon whether it has GPUs, after checking ``options`` as :func:`run_docker` does.

    Raises
    ------
    RunError
        A PVC has no folder or a secret no value (:func:`check_inputs`), or Docker cannot be
        reached.
    """
    check_inputs(compiled.plan, options or DockerOptions())
    client = connect()
    try:
        return container_notices(compiled.plan, has_gpu(client))
    finally:
        client.close()


def stop_containers(compiled: CompiledPipeline, pipeline_root: str | None = None) -> int:
    """Kill and remove the containers of a container run of ``compiled`` into ``pipeline_root``
    (a run whose process was killed leaves them running); returns how many there were.

    Raises
    ------
    RunError
        Docker cannot be reached.
    """
    client = connect()
    try:
        return remove_run_containers(client, container_root(compiled, pipeline_root))
    finally:
        client.close()


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
    root = container_root(compiled, pipeline_root)
    client = connect()
    try:
        gpus = has_gpu(client)
        ensure_images(client, ir)
        remove_run_containers(client, root)
    finally:
        client.close()
    status = plan_status(plan, root, hooks, container_notices(plan, gpus))
    if from_step is not None:
        ir = local_cache.rerun(ir, local_cache.downstream(plan, from_step))
    run = ContainerRun({s.name: step_container(s, options, gpus, secrets) for s in plan.steps},
                       status, compiled.packages, options.pip_cache, options.reuse_installs)
    network = {"network_mode": options.network} if options.network else {}
    from kfp import local

    with handler_installed(run):
        execute_plan(plan, container_ir(ir, plan), dict(arguments or {}), status, echo,
                     enable_caching, runner=local.DockerRunner(**network))
    if run.task_errors and status.state == FAILED and not status.failed_steps:
        status.error = f"{run.task_errors[0]}{_network_hint(options)}"  # not kfp.local's log tail
        status.hooks.run_hook("on_status", status)
    return status


def _network_hint(options: DockerOptions) -> str:
    """How to let containers reach the package index, for a run whose install failed."""
    if options.network:
        return ""
    return ("; if the containers cannot reach the package index, give them a network that "
            "does (--docker-network host where the Docker daemon has no bridge)")
