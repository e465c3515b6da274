"""The run targets of a sweep's trials: one per trial, local or on a KFP server.

Local trials may run at once safely: each :class:`~kale_magics.targets.local.LocalTarget` runs
in its own child process (kfp.local's changes to stdout, ``print``, logging and ``TMPDIR`` stay
in it) and gets its own pipeline root ``<root>/trial-NNN``, so the runs share no kfp.local
cache, channel folder (``logs/``) or artifacts. They do share the notebook's folder as working
directory, as the notebook does: trials that write the same files there may collide when run
in parallel.

Remote trials share one connection; the pipeline version and the experiment are made once
before any trial starts (:func:`prepare_remote`), so parallel trials never race to upload the
same version, and each trial is one KFP run named ``<pipeline> sweep <time> trial N``. When a
trial's run ends its metric values are read from ML Metadata through the KFP UI's host
(:mod:`kale_magics.runner.mlmd`; KFP's REST API has none) by the session's reader, shared
by the trials, so an unreachable MLMD is tried once and every trial says the same why.
"""

from __future__ import annotations

import datetime
import glob
import os
from typing import Callable

from kale_magics.codegen.compile import CompiledPipeline
from kale_magics.runner import remote
from kale_magics.runner.connection import KfpSession
from kale_magics.runner.mlmd import reader_of
from kale_magics.runner.sweep import Trial
from kale_magics.runner.watch import WatchOptions
from kale_magics.targets.kfp import KfpTarget
from kale_magics.targets.local import LocalTarget


def sweep_stamp() -> str:
    """``20260102-130405``: the local time naming a sweep's folder and runs."""
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def sweep_root(compiled: CompiledPipeline, pipeline_root: str | None, stamp: str) -> str:
    """Where a local sweep's trials go: ``pipeline_root``, default
    ``<output folder>/sweeps/<pipeline>-<stamp>`` (beside ``local_runs``)."""
    return os.path.abspath(pipeline_root or os.path.join(
        os.path.dirname(compiled.yaml_path), "sweeps", f"{compiled.plan.name}-{stamp}"))


def trial_roots(output_dir: str) -> list[str]:
    """The pipeline roots of the local sweeps' trials under ``output_dir`` (``.kale/``), where
    the run history finds their runs."""
    return sorted(glob.glob(os.path.join(glob.escape(output_dir), "sweeps", "*", "trial-[0-9]*")))


def local_trials(root: str) -> Callable[[Trial], LocalTarget]:
    """Targets of local trials: trial N runs in its own child process into ``<root>/trial-NNN``
    (no cache is shared between trials)."""
    return lambda trial: LocalTarget(os.path.join(root, f"trial-{trial.number:03d}"))


def prepare_remote(session: KfpSession, compiled: CompiledPipeline, experiment: str | None,
                   enable_caching: bool | None) -> None:
    """Check the pipeline can run on the server, upload its version and make its experiment
    once, before the trials (each trial's submit then reuses them).

    Raises
    ------
    KaleError, RunError, KfpConnectionError, KfpAuthError
        As :func:`kale_magics.runner.remote.submit` raises them.
    """
    remote.require_namespace(session, "submitting a sweep")
    remote.check_task_names(compiled)
    remote.upload(session, compiled, enable_caching)
    remote.ensure_experiment(session, experiment or compiled.plan.settings.experiment
                             or remote.DEFAULT_EXPERIMENT)


def remote_trials(session: KfpSession, compiled: CompiledPipeline, stamp: str, *,
                  experiment: str | None = None, enable_caching: bool | None = None,
                  pipeline_root: str | None = None,
                  watch_options: WatchOptions = WatchOptions()) -> Callable[[Trial], KfpTarget]:
    """Targets of remote trials: trial N is the run ``<pipeline> sweep <stamp> trial N`` on the
    server of ``session``, followed to its end, then its metric values read from ML Metadata."""
    metrics = reader_of(session)

    def target(trial: Trial) -> KfpTarget:
        return KfpTarget(session=session, experiment=experiment, enable_caching=enable_caching,
                         pipeline_root=pipeline_root, watch_options=watch_options,
                         run_name=f"{compiled.plan.name} sweep {stamp} trial {trial.number}",
                         metrics=metrics)
    return target
