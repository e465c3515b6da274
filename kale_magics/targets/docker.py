"""The container target: every step in a container of its image (:mod:`kale_magics.runner.docker`),
run from a child process of the caller like the local target."""

from __future__ import annotations

from typing import Any, Mapping

from kale_magics.codegen.compile import CompiledPipeline
from kale_magics.runner.docker import DockerOptions, docker_notices, stop_containers
from kale_magics.runner.status import RunHooks, RunStatus
from kale_magics.targets.child import ChildProcessTarget, ChildWorker


class DockerTarget(ChildProcessTarget):
    """Run with :func:`kale_magics.runner.docker.run_docker`, out of the caller's process.

    Each step runs in a container of its base image that installs only the step's
    ``packages_to_install``, as a KFP pod does (``kfp.local.DockerRunner``); so does the
    ``kale-runtime`` task that writes the step runtime every step loads.

    Parameters
    ----------
    pipeline_root:
        Folder for the run's artifacts; default ``container_runs`` beside the compiled YAML
        (``.kale/container_runs`` next to the notebook).
    options:
        Network, PVC folders, secrets file, pip cache, installing once
        (:func:`kale_magics.runner.docker.docker_options` makes them from what a user types).
    enable_caching, from_step, worker:
        As for :class:`~kale_magics.targets.local.LocalTarget`.
    """

    name = "docker"
    where = "in containers"
    runner = "kale_magics.runner.docker:run_docker"

    def __init__(self, pipeline_root: str | None = None, *, options: DockerOptions | None = None,
                 enable_caching: bool = True, from_step: str | None = None,
                 worker: ChildWorker | None = None) -> None:
        self.docker_options = options or DockerOptions()
        super().__init__(worker=worker, pipeline_root=pipeline_root, options=self.docker_options,
                         enable_caching=enable_caching, from_step=from_step)
        self._compiled: CompiledPipeline | None = None

    def notices(self, compiled: CompiledPipeline) -> list[str]:
        """Settings containers cannot apply (one notice), after checking that every PVC has a
        folder and every secret a value and that Docker answers.

        Raises
        ------
        RunError
            A PVC has no folder, a secret no value, or Docker cannot be reached.
        """
        return docker_notices(compiled, self.docker_options)

    def run(self, compiled: CompiledPipeline, arguments: Mapping[str, Any],
            hooks: RunHooks) -> RunStatus:
        self._compiled = compiled
        return super().run(compiled, arguments, hooks)

    def cancel(self) -> None:
        """Kill the run's process, then its containers, which outlive it."""
        super().cancel()
        if self._compiled is not None:
            stop_containers(self._compiled, self.options["pipeline_root"])
