"""Run targets: where a compiled pipeline runs, each behind the same :class:`RunTarget` interface.

- :class:`~kale_magics.targets.local.LocalTarget`: ``kfp.local``'s SubprocessRunner,
  always in a child process of the caller (:mod:`kale_magics.targets.child`);
- :class:`~kale_magics.targets.docker.DockerTarget`: every step in a container of its image
  (``kfp.local``'s DockerRunner), from a child process as well;
- :class:`~kale_magics.targets.kfp.KfpTarget`: a KFP server (submit, then watch).

A target running a runner function of the core out of the caller's process is a
:class:`~kale_magics.targets.child.ChildProcessTarget` naming that function. Front ends call
:func:`kale_magics.api.run` with a target (papermill's ``engines.py`` is the model:
one interface, one call).
"""

from kale_magics.targets.target import RunTarget

__all__ = ["RunTarget"]
