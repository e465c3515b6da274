"""The one interface every run target implements."""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Mapping

from kale_magics.codegen.compile import CompiledPipeline
from kale_magics.runner.status import RunHooks, RunStatus


class RunTarget(abc.ABC):
    """Where a compiled pipeline runs; one instance runs one pipeline at a time.

    A target is configured when it is made (pipeline root, caching, server,
    ...); :func:`kale_magics.api.run` types the arguments and calls :meth:`run`.
    Every target reports through the one status model
    (:class:`~kale_magics.runner.status.RunStatus` and its :class:`RunHooks`).
    """

    #: Short name for messages: ``"local"``, ``"kfp"``, ...
    name: ClassVar[str]

    def prepare(self) -> None:
        """Get ready ahead of a run (e.g. start the child process); optional, idempotent."""

    def notices(self, compiled: CompiledPipeline) -> list[str]:
        """What this target cannot honour of ``compiled`` (shown before the run starts)."""
        return []

    @abc.abstractmethod
    def run(self, compiled: CompiledPipeline, arguments: Mapping[str, Any],
            hooks: RunHooks) -> RunStatus:
        """Run ``compiled`` to its end, reporting through ``hooks``; blocks.

        Parameters
        ----------
        compiled:
            The compiled pipeline (its IR YAML is what runs).
        arguments:
            Parameter values by name, typed as KFP carries them.
        hooks:
            Subscribers to the run's status and messages.

        Returns
        -------
        RunStatus
            The final state; a failing step gives FAILED, it does not raise.

        Raises
        ------
        KaleError
            The run could not start (missing packages, unreachable server, ...).
        """

    @property
    def can_cancel(self) -> bool:
        """True while a run started by :meth:`run` can be stopped with :meth:`cancel`."""
        return False

    def cancel(self) -> None:
        """Stop the run :meth:`run` is following (call from another thread); no-op when idle."""

    def close(self) -> None:
        """Release what :meth:`prepare` started."""
