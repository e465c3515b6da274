"""Marshal backends: library types saved in their library's own format.

This module runs inside a pipeline step, embedded like the rest of the
runtime: it imports only the standard library at the top. A backend is chosen
by the NAME of a class in the value's method resolution order (most specific
first), so nothing is imported to choose it; the backend imports its library
only when a value of its type is saved or loaded. A class is known by
``top.QualName``: its top-level package and its qualified name
(``xgboost.core.DMatrix`` is ``xgboost.DMatrix``), which survives a
library's moving classes between its own modules.

Built-in backends follow Kale's marshal backends (kubeflow/kale
``backend/kale/marshal/backends.py``), each in its library's own format:

==============================  ===============================================================
type                            format
==============================  ===============================================================
``xgboost.DMatrix``             ``DMatrix.save_binary``
``xgboost.Booster``             ``Booster.save_model`` (UBJSON)
``lightgbm.Booster``            ``Booster.model_to_string`` (text)
``torch.Tensor``, ``torch.nn``  ``torch.save`` (a module with cloudpickle, so classes from the
``Module``                      notebook travel by value), loaded onto the CPU without a GPU
``keras.Model``                 ``Model.save`` (``.keras``)
``sklearn.BaseEstimator``       ``joblib.dump``, loaded with numpy memory maps (copy on write), for
                                an estimator holding arrays of 1 MiB or more (training data of a
                                nearest-neighbours model, a wide linear model); smaller ones, a
                                forest of small trees, pickle several times faster (cloudpickle)
``PIL.Image``                   TIFF, uncompressed (lossless for every mode)
==============================  ===============================================================

Users add backends through the entry point group ``kale_magics.marshal``: the
entry point's NAME is the class name it handles (``top.QualName``) and its
object has ``save(value, path)`` and ``load(path)``; optional ``suffix`` (file
name suffix, default ``bin``), ``library`` (distribution whose version is
recorded, default the entry point's distribution) and ``wants(value)`` (False
leaves the value to the pickles). The step's packages must include the entry
point's distribution (kale-magics adds it when the step imports the type's
package).

Each artifact records the backend and its library's version; loading checks
the version (a different major.minor version is refused with the fix).
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

#: The entry point group of user backends.
ENTRY_POINT_GROUP = "kale_magics.marshal"


@dataclass(frozen=True)
class Backend:
    """How one library type is saved and loaded.

    Attributes
    ----------
    name:
        The class name it handles, ``top.QualName`` (``"xgboost.DMatrix"``).
    library:
        The distribution whose version is recorded and checked (``"xgboost"``).
    module:
        The module imported to read the library's version (``"xgboost"``).
    suffix:
        Suffix of the data file, ``data.<suffix>``.
    save:
        ``save(value, path)`` writes ``value`` to the file ``path``.
    load:
        ``load(path)`` returns the value saved in the file ``path``.
    wants:
        ``wants(value)``: False leaves the value to the pickles; None takes every value.
    """

    name: str
    library: str
    module: str
    suffix: str
    save: Callable[[Any, str], None]
    load: Callable[[str], Any]
    wants: Callable[[Any], bool] | None = None

    @property
    def file(self) -> str:
        """The data file's name in the artifact directory."""
        return f"data.{self.suffix}"


def class_names(cls: type) -> list[str]:
    """``top.QualName`` of ``cls`` and of each class in its MRO, most specific first."""
    names = []
    for klass in cls.__mro__:
        top = str(getattr(klass, "__module__", "") or "").split(".")[0]
        names.append(f"{top}.{klass.__qualname__}")
    return names


def find(value: object) -> Backend | None:
    """The backend for ``value``'s type, or None (natives and pickles handle it).

    Looks at built-in backends and entry points by class name only; the
    backend's library and the entry point's module are not imported here.
    """
    for name in class_names(type(value)):
        backend = _BUILTINS.get(name)
        if backend is None and name in _plugins():  # scanned only past a built-in's classes
            backend = _plugin(name)
        if backend is not None:
            return backend if backend.wants is None or backend.wants(value) else None
    return None


def by_name(name: str) -> Backend | None:
    """The backend that saved an artifact (its manifest's ``backend``), or None if unknown here."""
    if name in _BUILTINS:
        return _BUILTINS[name]
    return _plugin(name) if name in _plugins() else None


def library_version(backend: Backend) -> str:
    """The installed version of ``backend``'s library ("unknown" when it does not say)."""
    return _version(backend.library, backend.module)


@functools.cache
def _version(library: str, module: str) -> str:
    """Installed version of distribution ``library`` (else ``module.__version__``), looked up
    once per process: ``importlib.metadata`` scans ``sys.path`` (milliseconds per call)."""
    from importlib import metadata

    try:
        return metadata.version(library)
    except metadata.PackageNotFoundError:
        imported = sys.modules.get(module) or importlib.import_module(module)
        return str(getattr(imported, "__version__", "unknown"))


def compatible(saved: str, installed: str) -> bool:
    """Whether an artifact saved with version ``saved`` loads with ``installed``: same major.minor."""
    return saved.split(".")[:2] == installed.split(".")[:2]


def distribution_for(type_name: str) -> str | None:
    """The distribution a step needs to load a value of the type named ``type_name``
    (``module.QualName`` as the live analysis shows it), when a backend saves it; else None."""
    top, _, qualname = type_name.partition(".")
    backend = _BUILTINS.get(f"{top}.{qualname.rsplit('.', 1)[-1]}")
    if backend is not None:
        return backend.library
    return _plugin_distribution(type_name)


# -- user backends ------------------------------------------------------------------------


@functools.cache
def _plugins() -> dict[str, Any]:
    """Entry points of :data:`ENTRY_POINT_GROUP` by name (their modules are not imported)."""
    from importlib import metadata

    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


@functools.cache
def _plugin(name: str) -> Backend:
    """Load the entry point ``name`` as a Backend (imports the plugin's module)."""
    entry = _plugins()[name]
    target = entry.load()
    top = name.split(".")[0]
    library = getattr(target, "library", None) or (entry.dist.name if entry.dist else top)
    return Backend(name=name, library=library, module=top, suffix=getattr(target, "suffix", "bin"),
                   save=target.save, load=target.load, wants=getattr(target, "wants", None))


def _plugin_distribution(type_name: str) -> str | None:
    entry = _plugins().get(type_name)
    return entry.dist.name if entry is not None and entry.dist is not None else None


# -- built-in backends --------------------------------------------------------------------


def _save_dmatrix(value: Any, path: str) -> None:
    value.save_binary(path, silent=True)


def _load_dmatrix(path: str) -> Any:
    import xgboost

    return xgboost.DMatrix(path)


def _save_xgb_booster(value: Any, path: str) -> None:
    value.save_model(path)


def _load_xgb_booster(path: str) -> Any:
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(path)
    return booster


def _save_lgb_booster(value: Any, path: str) -> None:
    with open(path, "w", encoding="utf-8") as file:
        file.write(value.model_to_string(num_iteration=-1))


def _load_lgb_booster(path: str) -> Any:
    import lightgbm

    with open(path, encoding="utf-8") as file:
        return lightgbm.Booster(model_str=file.read())


def _save_torch(value: Any, path: str) -> None:
    import torch

    if isinstance(value, torch.Tensor):
        torch.save(value, path)
    else:  # a module's class may come from the notebook: cloudpickle pickles it by value
        import cloudpickle

        torch.save(value, path, pickle_module=cloudpickle)


def _load_torch(path: str) -> Any:
    import torch

    location = None if torch.cuda.is_available() else "cpu"
    return torch.load(path, map_location=location, weights_only=False)


def _save_keras(value: Any, path: str) -> None:
    value.save(path)


def _load_keras(path: str) -> Any:
    import keras

    return keras.models.load_model(path)


#: Bytes of array attributes from which an estimator is saved with joblib and memory-mapped.
_JOBLIB_MIN = 1 << 20


def _wants_joblib(value: Any) -> bool:
    """Whether the estimator's own array attributes hold at least :data:`_JOBLIB_MIN` bytes."""
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return False
    arrays = [v for v in vars(value).values() if isinstance(v, numpy.ndarray)] \
        if hasattr(value, "__dict__") else []
    return sum(a.nbytes for a in arrays) >= _JOBLIB_MIN


def _save_joblib(value: Any, path: str) -> None:
    import joblib

    joblib.dump(value, path)


def _load_joblib(path: str) -> Any:
    import joblib

    return joblib.load(path, mmap_mode="c")


def _save_image(value: Any, path: str) -> None:
    value.save(path, format="TIFF")  # uncompressed, lossless for every mode


def _load_image(path: str) -> Any:
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.copy()


def _builtins() -> dict[str, Backend]:
    table = [
        ("xgboost.DMatrix", "xgboost", "xgboost", "dmatrix", _save_dmatrix, _load_dmatrix),
        ("xgboost.Booster", "xgboost", "xgboost", "ubj", _save_xgb_booster, _load_xgb_booster),
        ("lightgbm.Booster", "lightgbm", "lightgbm", "txt", _save_lgb_booster, _load_lgb_booster),
        ("torch.Tensor", "torch", "torch", "pt", _save_torch, _load_torch),
        ("torch.Module", "torch", "torch", "pt", _save_torch, _load_torch),
        ("keras.Model", "keras", "keras", "keras", _save_keras, _load_keras),
        ("sklearn.BaseEstimator", "scikit-learn", "sklearn", "joblib", _save_joblib, _load_joblib,
         _wants_joblib),
        ("PIL.Image", "pillow", "PIL", "tiff", _save_image, _load_image),
    ]
    return {row[0]: Backend(*row) for row in table}


_BUILTINS = _builtins()


def is_data_file(name: str) -> bool:
    """Whether ``name`` is a data file a backend may write (``data.<suffix>``, a plain name)."""
    return name.startswith("data.") and "/" not in name and os.sep not in name and ".." not in name
