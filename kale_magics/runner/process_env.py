"""Environment variables of this process set for a block (a local run's), then put back."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Mapping


@contextlib.contextmanager
def environment_variables(changes: Mapping[str, str]) -> Iterator[None]:
    """Set ``changes`` in this process's environment (processes started meanwhile inherit
    them) while the block runs; then give each variable its earlier value back, or remove it
    where it had none."""
    previous = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
