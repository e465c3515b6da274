"""What the kernel knows about a variable's value: its type, size and KFP artifact class.

Artifact classes come from the value's type, through its MRO, never from the
variable's name (Kale guesses from substrings of names): a pandas DataFrame or
Series or a numpy array is a ``Dataset``; a scikit-learn estimator, a PyTorch
``nn.Module`` or a Keras model is a ``Model``; anything else is an ``Artifact``.
Nothing is imported to decide: a value can only be a DataFrame if pandas is
already imported.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Mapping

from kale_magics.model import Plan

#: (module, class) pairs whose instances are datasets or models.
_DATASET_CLASSES = (("pandas", "DataFrame"), ("pandas", "Series"), ("numpy", "ndarray"))
_SIZED = (list, tuple, dict, set, frozenset, str, bytes)
_MODEL_CLASSES = (("sklearn.base", "BaseEstimator"), ("torch.nn", "Module"),
                  ("keras", "Model"), ("xgboost", "Booster"), ("lightgbm", "Booster"))


@dataclass(frozen=True)
class LiveValue:
    """A variable's value as the kernel holds it.

    Attributes
    ----------
    type_name:
        The value's class name, e.g. ``DataFrame``.
    size_bytes:
        In-memory size in bytes where it is cheap to know (arrays, frames), else None.
    shape:
        ``"891x12"`` for arrays and frames, ``"len 3"`` for sized containers, else "".
    artifact_class:
        ``"Dataset"``, ``"Model"`` or ``"Artifact"``.
    """

    type_name: str
    size_bytes: int | None
    shape: str
    artifact_class: str


def _is_instance(value: Any, classes: tuple[tuple[str, str], ...]) -> bool:
    for module_name, class_name in classes:
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if isinstance(cls, type) and isinstance(value, cls):
            return True
    return False


def artifact_class(value: Any) -> str:
    """``"Dataset"``, ``"Model"`` or ``"Artifact"`` for ``value``, from its type."""
    if _is_instance(value, _DATASET_CLASSES):
        return "Dataset"
    if _is_instance(value, _MODEL_CLASSES):
        return "Model"
    return "Artifact"


def describe(value: Any) -> LiveValue:
    """Type, size and artifact class of ``value``, without serialising it."""
    shape = getattr(value, "shape", None)
    if isinstance(shape, tuple) and all(isinstance(n, int) for n in shape):
        shape_text = "x".join(str(n) for n in shape) or "scalar"
    elif isinstance(value, _SIZED):
        shape_text = f"len {len(value)}"
    else:
        shape_text = ""
    size = getattr(value, "nbytes", None)
    if size is None and _is_instance(value, (("pandas", "DataFrame"), ("pandas", "Series"))):
        size = int(value.memory_usage(deep=False).sum()) if hasattr(value, "columns") \
            else int(value.memory_usage(deep=False))
    return LiveValue(type_name=type(value).__name__,
                     size_bytes=size if isinstance(size, int) else None,
                     shape=shape_text, artifact_class=artifact_class(value))


def artifact_types(plan: Plan, namespace: Mapping[str, Any]) -> dict[str, str]:
    """Artifact class of every variable ``plan`` passes that ``namespace`` holds."""
    passed = {name for step in plan.steps for name in step.outputs}
    return {name: artifact_class(namespace[name]) for name in sorted(passed) if name in namespace}
