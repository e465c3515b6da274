"""The local target: ``kfp.local``'s SubprocessRunner, in a child process of the caller."""

from __future__ import annotations

from kale_magics.codegen.compile import CompiledPipeline
from kale_magics.runner.local import local_notices
from kale_magics.targets.child import ChildProcessTarget, ChildWorker


class LocalTarget(ChildProcessTarget):
    """Run on this machine with :func:`kale_magics.runner.local.run_local`, out of the caller's process.

    Parameters
    ----------
    pipeline_root:
        Folder for the run's artifacts; default ``.kale/local_runs`` next to the notebook.
    enable_caching:
        Reuse outputs of unchanged steps from earlier runs into the same
        pipeline root (steps with ``--no-cache`` always run).
    from_step:
        Run this step and everything downstream even when cached.
    worker:
        A child process started ahead of time (see :class:`ChildWorker`).
    """

    name = "local"
    where = "locally"
    runner = "kale_magics.runner.local:run_local"

    def __init__(self, pipeline_root: str | None = None, *, enable_caching: bool = True,
                 from_step: str | None = None, worker: ChildWorker | None = None) -> None:
        super().__init__(worker=worker, pipeline_root=pipeline_root,
                         enable_caching=enable_caching, from_step=from_step)

    def notices(self, compiled: CompiledPipeline) -> list[str]:
        return local_notices(compiled)
