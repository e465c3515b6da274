"""Resuming local runs through ``kfp.local``'s task cache.

With caching on (the default, as on a KFP server), a step whose code, image,
inputs and parameters did not change since an earlier run into the same
pipeline root is not executed again: ``kfp.local`` (2.17) keys its cache by
component, image, command, arguments and environment, and reuses the cached
outputs. Re-running after a fix therefore re-executes only the changed step
and what depends on it. ``--from STEP`` forces STEP and everything
downstream to run, reusing cached upstream outputs.

``kfp.local`` reports a cache hit only as an INFO log record (``Task NAME
cache hit (key=...)``); :class:`CacheHits` listens for it while a run lasts.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import json
import logging
import os
import re
from typing import Any, Callable, Iterator

from kale_magics.errors import RunError
from kale_magics.model import Plan, task_name
from kale_magics.runner.status import RunStatus

_HIT = re.compile(r"^Task (\S+) cache hit \(key=([0-9a-f]+)\)")
#: Where the cache lives, under the pipeline root.
CACHE_FOLDER = ".kfp_cache"


class CacheHits(logging.Handler):
    """Calls ``on_hit(step, key_prefix)`` for each cache hit ``kfp.local`` logs."""

    def __init__(self, steps: list[str], on_hit: Callable[[str, str], None]) -> None:
        super().__init__(logging.INFO)
        self.steps = {task_name(s): s for s in steps}
        self.on_hit = on_hit

    def emit(self, record: logging.LogRecord) -> None:
        match = _HIT.match(record.getMessage())
        if match and match.group(1) in self.steps:
            self.on_hit(self.steps[match.group(1)], match.group(2))


@contextlib.contextmanager
def listening(handler: logging.Handler) -> Iterator[None]:
    """Attach ``handler`` to the root logger at INFO for the duration of a run."""
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(min(level or logging.WARNING, logging.INFO))
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def cached_outputs(cache_root: str, key_prefix: str) -> dict[str, Any]:
    """What a cache entry recorded: ``{"artifacts": {var: metadata+path}, "metrics": {...}}``."""
    entries = sorted(glob.glob(os.path.join(cache_root, f"{key_prefix}*.json")))
    try:
        with open(entries[0], encoding="utf-8") as f:
            outputs = json.load(f)
    except (IndexError, OSError, ValueError):
        return {"artifacts": {}, "metrics": {}}
    artifacts = {name[4:]: {**(value.get("metadata") or {}), "path": value.get("uri", "")}
                 for name, value in outputs.items()
                 if name.startswith("out_") and isinstance(value, dict)}
    metrics = (outputs.get("kale_metrics") or {}).get("metadata") or {}
    return {"artifacts": artifacts,
            "metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}}


def downstream(plan: Plan, step: str) -> list[str]:
    """``step`` and every step that depends on it, in plan order.

    Raises
    ------
    RunError
        ``step`` is not a step of the plan.
    """
    names = [s.name for s in plan.steps]
    if step not in names:
        raise RunError(f"--from {step!r}: no such step; steps are {', '.join(names)}")
    found = {step}
    for s in plan.steps:  # plan order is topological
        if set(s.upstream) & found:
            found.add(s.name)
    return [n for n in names if n in found]


def rerun(ir: dict[str, Any], steps: list[str]) -> dict[str, Any]:
    """A copy of ``ir`` where ``steps`` bypass the cache (they run whatever the cache holds)."""
    out = copy.deepcopy(ir)
    tasks = out["root"]["dag"]["tasks"]
    for step in steps:
        tasks[task_name(step)].setdefault("cachingOptions", {})["enableCache"] = False
    return out


def stale_warnings(plan: Plan, status: RunStatus) -> list[str]:
    """A warning for each step taken from the cache whose code reads files or other outside state.

    KFP caches on the step's code, image, inputs and parameters only, so such a
    step's cached result is the old one even when the files it reads changed.
    """
    warnings = []
    for step in plan.steps:
        if step.reads_outside and status.steps[step.name].cached:
            reads = ", ".join(f"`{what}`" for what in step.reads_outside[:3])
            warnings.append(f"step {step.name!r} came from the cache (its code and inputs did not "
                            f"change since an earlier run), but its code reads files or other "
                            f"outside state ({reads}), which may have changed since: run again "
                            f"with --no-cache, or --from {step.name}")
    return warnings
