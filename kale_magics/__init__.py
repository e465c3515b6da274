"""kale-magics: turn an annotated Jupyter notebook into a Kubeflow Pipelines v2 pipeline.

``%load_ext kale_magics`` registers the ``%kale`` / ``%%kale`` magics; the
Python API is :mod:`kale_magics.api`; the command line is ``kale-magics``.
This module stays light: importing it must not import kfp or IPython.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load_ipython_extension(ipython: Any) -> None:
    """Register the ``kale`` magic in ``ipython`` (``%load_ext kale_magics``)."""
    from kale_magics.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the ``kale`` magic from ``ipython`` (``%unload_ext kale_magics``)."""
    from kale_magics.magics import unload_ipython_extension as unload

    unload(ipython)
