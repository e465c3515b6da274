"""What the benchmark ran on: cores, memory, Python, package versions, commit."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("kale-magics", "kfp", "numpy", "pandas", "pyarrow", "scikit-learn", "nbclient",
            "ipython", "cloudpickle", "dill", "matplotlib")


def machine_info() -> dict[str, Any]:
    """The machine and software the figures were measured with."""
    return {"cpus": os.cpu_count(), "memory_gib": _memory_gib(),
            "python": platform.python_version(), "implementation": sys.implementation.name,
            "platform": platform.platform(), "packages": _versions(), "commit": _commit(),
            "load_average": load_average()}


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other work on the machine skews timings)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _commit() -> str | None:
    """The repository's HEAD commit (with ``+dirty`` when files changed), or None outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, text=True,
                              capture_output=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               text=True, capture_output=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty.strip() else "")
