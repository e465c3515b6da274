"""Pass variables between pipeline steps: save a value as an artifact directory, load it back.

This module runs inside a pipeline step: its source is embedded in the
compiled pipeline and executed as ``kale_magics.runtime.marshal`` in a fresh
module. It therefore imports only the standard library at the top;
cloudpickle, dill, numpy, pandas and pyarrow are imported inside functions,
and numpy / pandas / pyarrow only when the value is of their type (a value
can only be an ``ndarray`` if numpy is already in ``sys.modules``).

An artifact is a directory holding data files and a manifest, ``kale.json``,
that names the format. The manifest is written last and atomically, so a
step killed while saving never leaves an artifact that loads. Formats:

``npy``
    A numpy ``ndarray`` (or ``memmap``, loaded as an ``ndarray``) without
    Python objects: ``data.npy`` in the ``.npy`` format, its data written
    straight from the array's buffer and read into a preallocated buffer.
``arrow``
    A pandas ``DataFrame`` or ``Series`` that Arrow stores exactly: an
    uncompressed Arrow IPC file (Feather v2), ``data.arrow``.
``cloudpickle``
    Everything else: ``data.pkl``, a pickle (protocol 5) whose buffers of
    1 MiB or more are stored out of band, back to back, in ``buffers.bin``.
``dill``
    What cloudpickle cannot pickle but dill can: ``data.pkl``.
``backend``
    A library type saved in its library's own format by a backend of
    :mod:`kale_magics.runtime.backends` (xgboost, LightGBM, PyTorch, Keras,
    scikit-learn, PIL, or a user's through the ``kale_magics.marshal`` entry
    points): ``data.<suffix>``; the manifest names the backend and the
    library's version, checked on load.
"""

from __future__ import annotations

import io
import json
import math
import mmap
import os
import pickle
import platform
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Mapping, NamedTuple

from kale_magics.runtime import backends

#: Version of the artifact layout; `load` refuses artifacts of another version.
FORMAT_VERSION: int = 1
#: Name of the manifest file in an artifact directory.
MANIFEST = "kale.json"
_MANIFEST_TEMP = "kale.json.tmp"
_DATA_FILES = ("data.npy", "data.arrow", "data.pkl", "buffers.bin")
#: Bytes per read or write system call.
_CHUNK = 32 << 20
#: Reads of at least this many bytes run in parallel threads.
_PARALLEL_MIN = 64 << 20
#: Pickle buffers of at least this many bytes are stored out of band.
_OUT_OF_BAND_MIN = 1 << 20
#: Rows of a DataFrame converted to Arrow and back to check the round trip is exact.
_SAMPLE_ROWS = 8
_MAX_NPY_HEADER = 1 << 24

Written = tuple[str, dict[str, int], dict[str, Any]]  # format, {file: bytes}, manifest extras


class _Into(NamedTuple):
    """Where a pickled value is loaded: the step's namespace and what its prelude bound."""

    namespace: dict[str, Any] | None
    prelude: Mapping[str, Any]


class MarshalError(Exception):
    """Raised when a value cannot be saved or an artifact cannot be loaded.

    Parameters
    ----------
    message:
        The complete user-facing message: what failed and what to do.
    variable:
        The name of the variable being saved or loaded.
    type_name:
        The value's type, e.g. ``"generator"`` or ``"pandas.DataFrame"``.
    """

    def __init__(self, message: str, variable: str, type_name: str) -> None:
        super().__init__(message)
        self.message = message
        self.variable = variable
        self.type_name = type_name

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        """Pickle with all three arguments (``Exception`` keeps only ``args``), as nbclient's
        ``CellExecutionError`` does, so the error survives crossing a process."""
        return (type(self), (self.message, self.variable, self.type_name))


def save(value: object, path: str, variable: str,
         prelude: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``value`` as the artifact directory ``path``.

    Parameters
    ----------
    value:
        Any Python value.
    path:
        The artifact directory: created (its parent must exist), or existing
        empty or holding a previous kale-magics artifact (replaced).
    variable:
        The variable's name, for the manifest and error messages.
    prelude:
        The names the step's imports and functions cells bound: pickled
        functions and classes among them are saved by reference
        (see :mod:`kale_magics.runtime.pickling`).

    Returns
    -------
    dict
        ``kale_format`` (str), ``kale_format_version`` (:data:`FORMAT_VERSION`),
        ``python_type`` (``module.qualname``, e.g. ``"pandas.DataFrame"``), and
        ``bytes``, the total written (data files and manifest).

    Raises
    ------
    MarshalError
        When neither cloudpickle nor dill can serialise ``value``, when it is or
        holds a handle (an open file, a socket, a connection, a lock), or when
        ``path`` cannot be written; no partial artifact is left behind.
    """
    python_type = _qualified_name(type(value))
    type_name = _display_name(python_type)
    created = _prepare_directory(path, variable, type_name)
    try:
        kale_format, total = _write_artifact(value, path, variable, python_type, prelude or {})
    except OSError as error:
        _discard(path, created)
        raise _storage_error(error, path, variable, type_name) from error
    except BaseException:  # KeyboardInterrupt too: leave no partial artifact
        _discard(path, created)
        raise
    return {"kale_format": kale_format, "kale_format_version": FORMAT_VERSION,
            "python_type": python_type, "bytes": total}


def load(path: str, variable: str, namespace: dict[str, Any] | None = None,
         prelude: Mapping[str, Any] | None = None) -> object:
    """Load the value saved by :func:`save` in the artifact directory ``path``.

    Parameters
    ----------
    path:
        The artifact directory.
    variable:
        The variable's name, for error messages.
    namespace:
        The loading step's namespace: functions and classes defined in the
        notebook get it as their globals. None loads them as saved.
    prelude:
        The names the loading step's imports and functions cells bound.

    Returns
    -------
    object
        The value, of the type it was saved with.

    Raises
    ------
    MarshalError
        When ``path`` holds no kale-magics artifact (missing, or no manifest:
        the saving step did not finish), one of another format version, an
        incomplete or corrupt one, or one whose loading fails (e.g. a package
        missing in this step's image). The message says what to do.
    """
    manifest = _read_manifest(path, variable)
    type_name = _display_name(str(manifest.get("python_type", "unknown")))
    _check_files(path, manifest, variable, type_name)
    try:
        return _READERS[manifest["kale_format"]](path, manifest, _Into(namespace, prelude or {}))
    except Exception as error:
        raise _load_error(error, path, manifest, variable, type_name) from error


# -- type names ---------------------------------------------------------------------------


def _qualified_name(cls: type) -> str:
    """``module.qualname`` of ``cls``, by its shortest import path (``pandas.DataFrame``)."""
    parts = str(getattr(cls, "__module__", None) or "builtins").split(".")
    for end in range(1, len(parts)):
        module = sys.modules.get(".".join(parts[:end]))
        if module is None:
            continue
        if cls.__qualname__ == cls.__name__ and vars(module).get(cls.__name__) is cls:
            return f"{'.'.join(parts[:end])}.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _display_name(python_type: str) -> str:
    """The type as users write it: builtins without their module (``generator``)."""
    return python_type.removeprefix("builtins.")


# -- the artifact directory ---------------------------------------------------------------


def _prepare_directory(path: str, variable: str, type_name: str) -> bool:
    """Make ``path`` an empty directory; return whether it was created."""
    try:
        os.mkdir(path)
        return True
    except FileExistsError:
        pass
    except OSError as error:  # no parent, no permission, read-only volume
        raise _storage_error(error, path, variable, type_name) from error
    if not os.path.isdir(path):
        raise MarshalError(f"cannot save `{variable}` ({type_name}): {path} exists and is not "
                           "a directory; remove it or choose another output path",
                           variable, type_name)
    foreign = {name for name in os.listdir(path) if not _is_ours(name)}
    if foreign:
        raise MarshalError(f"cannot save `{variable}` ({type_name}): {path} is not empty (it holds "
                           f"{', '.join(sorted(foreign))}); save into an empty directory",
                           variable, type_name)
    _remove_files(path)  # a previous, possibly partial, artifact
    return False


def _remove_files(path: str) -> None:
    """Remove the manifest (first, so the artifact stops loading), then the data files."""
    backend_files = sorted(n for n in os.listdir(path) if backends.is_data_file(n)) \
        if os.path.isdir(path) else []
    for name in dict.fromkeys((MANIFEST, _MANIFEST_TEMP, *_DATA_FILES, *backend_files)):
        try:
            os.remove(os.path.join(path, name))
        except FileNotFoundError:
            pass


def _discard(path: str, created: bool) -> None:
    """Undo a failed save: remove its files, and ``path`` itself if it was created."""
    try:
        _remove_files(path)
        if created:
            os.rmdir(path)
    except OSError:
        pass  # best effort: without a manifest the directory does not load anyway


def _write_manifest(path: str, manifest: dict[str, Any]) -> int:
    """Write ``kale.json`` atomically (temporary file, then rename); return its size in bytes."""
    data = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")
    temporary = os.path.join(path, _MANIFEST_TEMP)
    with open(temporary, "wb") as file:
        file.write(data)
    os.replace(temporary, os.path.join(path, MANIFEST))
    return len(data)


def _read_manifest(path: str, variable: str) -> dict[str, Any]:
    """Read and check ``kale.json``; raise MarshalError if absent, corrupt or of another version."""
    where = f"cannot load `{variable}`: {path}"
    try:
        with open(os.path.join(path, MANIFEST), "rb") as file:
            manifest = json.loads(file.read())
    except FileNotFoundError:
        raise MarshalError(f"{where} holds no kale-magics artifact (no {MANIFEST}): the step that "
                           f"produces `{variable}` did not finish saving it; rerun that step",
                           variable, "unknown") from None
    except (OSError, ValueError) as error:
        raise MarshalError(f"{where} has an unreadable {MANIFEST} ({type(error).__name__}: "
                           f"{error}); the artifact is corrupt, rerun the step that produces "
                           f"`{variable}`", variable, "unknown") from error
    if not isinstance(manifest, dict):
        raise MarshalError(f"{where} has an invalid {MANIFEST} (not a JSON object); rerun the step "
                           f"that produces `{variable}`", variable, "unknown")
    type_name = _display_name(str(manifest.get("python_type", "unknown")))
    version = manifest.get("kale_format_version")
    if version != FORMAT_VERSION:
        raise MarshalError(f"{where} is in kale-magics artifact format version {version}, but this "
                           f"step reads version {FORMAT_VERSION}: compile the pipeline and run all "
                           "its steps with the same kale-magics version", variable, type_name)
    if manifest.get("kale_format") not in _READERS or not isinstance(manifest.get("files"), dict):
        raise MarshalError(f"{where} has an invalid {MANIFEST} (unknown format "
                           f"{manifest.get('kale_format')!r}); rerun the step that produces "
                           f"`{variable}`", variable, type_name)
    return manifest


def _check_files(path: str, manifest: dict[str, Any], variable: str, type_name: str) -> None:
    """Raise MarshalError unless every data file exists with the size the manifest records."""
    for name, size in manifest["files"].items():
        if name not in _DATA_FILES and not backends.is_data_file(name):
            raise MarshalError(f"cannot load `{variable}` ({type_name}): {path} names an unknown "
                               f"data file {name!r}; rerun the step that produces `{variable}`",
                               variable, type_name)
        try:
            actual: int | str = os.path.getsize(os.path.join(path, name))
        except OSError:
            actual = "missing"
        if actual != size:
            raise MarshalError(f"cannot load `{variable}` ({type_name}): {path} is incomplete or "
                               f"corrupt ({name} is {actual} bytes, expected {size}); rerun the "
                               f"step that produces `{variable}`", variable, type_name)


def _is_ours(name: str) -> bool:
    """Whether ``name`` is a file a kale-magics artifact holds."""
    return name in (MANIFEST, _MANIFEST_TEMP, *_DATA_FILES) or backends.is_data_file(name)


def _storage_error(error: OSError, path: str, variable: str, type_name: str) -> MarshalError:
    return MarshalError(f"cannot save `{variable}` ({type_name}) to {path}: "
                        f"{type(error).__name__}: {error}; check that the volume is writable "
                        "and has free space", variable, type_name)


def _load_error(error: Exception, path: str, manifest: dict[str, Any], variable: str,
                type_name: str) -> MarshalError:
    detail = f"{type(error).__name__}: {error}"
    if isinstance(error, _VersionMismatch):
        return MarshalError(f"cannot load `{variable}` ({type_name}) from {path}: {error}",
                            variable, type_name)
    if isinstance(error, ImportError):
        hint = (f"install `{error.name or 'the missing package'}` in this step's image "
                f"(the step that saved `{variable}` had it)")
    else:
        saved_with = manifest.get("python", "unknown")
        hint = (f"the artifact is corrupt or was written with incompatible library versions "
                f"(saved with Python {saved_with}, loading with {platform.python_version()}); "
                f"rerun the step that produces `{variable}`")
    return MarshalError(f"cannot load `{variable}` ({type_name}) from {path}: {detail}; {hint}",
                        variable, type_name)


# -- raw reads and writes -----------------------------------------------------------------


def _write_views(file: io.RawIOBase, views: list[memoryview]) -> int:
    """Write every byte of ``views`` to the unbuffered ``file``; return the bytes written."""
    total = 0
    for view in views:
        view = view.cast("B")
        for start in range(0, len(view), _CHUNK):
            chunk = view[start:start + _CHUNK]
            while len(chunk):
                chunk = chunk[file.write(chunk):]
        total += len(view)
    return total


def _read_into(path: str, offset: int, views: list[memoryview]) -> None:
    """Fill the writable ``views`` with consecutive bytes of ``path`` from ``offset``.

    Large reads are split into chunks read by parallel threads (``os.preadv``
    releases the GIL, and the page faults and copies run side by side): about
    1.6 times faster on two CPUs.

    Raises
    ------
    EOFError
        When the file ends before the views are full.
    """
    jobs = []
    for view in views:
        view = view.cast("B")
        jobs += [(view[start:start + _CHUNK], offset + start)
                 for start in range(0, len(view), _CHUNK)]
        offset += len(view)
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "preadv") and sum(len(view) for view, _ in jobs) >= _PARALLEL_MIN:
            with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
                for _ in pool.map(lambda job: _pread_exact(fd, *job), jobs):
                    pass
        else:
            for job in jobs:
                _pread_exact(fd, *job)
    finally:
        os.close(fd)


def _pread_exact(fd: int, view: memoryview, offset: int) -> None:
    """Fill ``view`` with the bytes of ``fd`` at ``offset``; raise EOFError at a short file."""
    while len(view):
        if hasattr(os, "preadv"):
            count = os.preadv(fd, [view], offset)
        else:
            os.lseek(fd, offset, os.SEEK_SET)
            count = io.FileIO(fd, "rb", closefd=False).readinto(view) or 0
        if count == 0:
            raise EOFError(f"file ends at byte {offset}, before the data it should hold")
        view, offset = view[count:], offset + count


def _allocate(size: int) -> mmap.mmap:
    """A writable buffer of ``size`` (> 0) zero bytes, memory that is returned to the OS when freed.

    A private anonymous map is neither zero-filled up front (like ``bytearray``)
    nor shared memory (``mmap``'s default, slower to fault in). It is not
    advised to use huge pages: where the kernel compacts memory on demand,
    huge-page faults made loads up to 5 times slower, and erratically so.
    """
    private = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    return mmap.mmap(-1, size, flags=private) if private else mmap.mmap(-1, size)


# -- choosing and writing a format --------------------------------------------------------


def _write_artifact(value: object, path: str, variable: str, python_type: str,
                    prelude: Mapping[str, Any]) -> tuple[str, int]:
    """Write the data files, then the manifest; return the format and the bytes written."""
    kale_format, files, extras = _write_data(value, path, variable, _display_name(python_type),
                                             prelude)
    manifest = {"kale_format": kale_format, "kale_format_version": FORMAT_VERSION,
                "python_type": python_type, "variable": variable, "files": files,
                "python": platform.python_version(), **extras}
    return kale_format, sum(files.values()) + _write_manifest(path, manifest)


def _write_data(value: object, path: str, variable: str, type_name: str,
                prelude: Mapping[str, Any]) -> Written:
    """Write the data files of ``value`` in the best format that stores it exactly."""
    writer = _native_writer(value)
    written = writer(value, path) if writer is not None else None
    failures: list[str] = []
    if written is None:
        written = _write_backend(value, path, failures)
    if written is None:
        _remove_files(path)
        written = _write_pickled(value, path, variable, type_name, prelude, failures)
    return written


def _write_backend(value: object, path: str, failures: list[str]) -> Written | None:
    """Save ``value`` with the backend of its type; None when it has none or the backend failed
    (the failure is appended to ``failures``, and the pickles are tried next)."""
    backend = backends.find(value)
    if backend is None:
        return None
    target = os.path.join(path, backend.file)
    try:
        backend.save(value, target)
        version = backends.library_version(backend)
    except Exception as error:
        if isinstance(error, OSError) and error.errno is not None:
            raise  # the storage failed, not the library
        _remove_files(path)
        failures.append(f"the {backend.name} backend failed ({type(error).__name__}: {error})")
        return None
    return "backend", {backend.file: os.path.getsize(target)}, {
        "backend": backend.name, "library": backend.library, "library_version": version}


def _native_writer(value: object) -> Callable[[Any, str], Written | None] | None:
    """The columnar/array writer for ``value``'s type, or None for the pickle formats.

    Dispatches with ``isinstance`` on classes of modules already imported: a
    value can only be an ndarray or a DataFrame if numpy or pandas is loaded.
    """
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray):
        return _write_npy
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(value, (pandas.DataFrame, pandas.Series)):
        return _write_arrow
    return None


def _write_pickled(value: object, path: str, variable: str, type_name: str,
                   prelude: Mapping[str, Any], failures: list[str] | None = None) -> Written:
    """Pickle ``value`` with cloudpickle, else dill; raise MarshalError when both fail or
    when it holds a handle.

    The message lists every failure (a backend's first, from ``failures``) and
    a fix that works for ``%%kale`` and Kale-tag notebooks alike.
    """
    from kale_magics.runtime import pickling

    failures = list(failures or ())
    tried = len(failures)
    for writer in (_write_cloudpickle, _write_dill):
        try:
            return writer(value, path, prelude)
        except pickling.Refused as error:
            _remove_files(path)
            raise MarshalError(f"cannot pass `{variable}` ({type_name}) to later steps: {error}",
                               variable, type_name) from None
        except Exception as error:
            if isinstance(error, OSError) and error.errno is not None:
                raise  # the storage failed, not the pickler
            _remove_files(path)
            failures.append(f"{type(error).__name__}: {error}")
    pickles = f"cloudpickle failed ({failures[tried]}) and so did dill ({failures[tried + 1]})"
    raise MarshalError(f"cannot pass `{variable}` ({type_name}) to later steps: "
                       f"{'; '.join([*failures[:tried], pickles])}. Compute `{variable}` in each "
                       "step that reads it instead of passing it (move its assignment there), or "
                       "make it a value that can be saved (an array, a DataFrame, or a type a "
                       "kale_magics.marshal backend handles)", variable, type_name)


def _write_cloudpickle(value: object, path: str, prelude: Mapping[str, Any]) -> Written:
    """Pickle ``value`` (protocol 5) to ``data.pkl``, big buffers out of band to ``buffers.bin``."""
    from kale_magics.runtime import pickling

    buffers: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            view = buffer.raw()
        except BufferError:  # not contiguous: pickle it in band
            return True
        if view.nbytes < _OUT_OF_BAND_MIN:
            return True
        buffers.append(view)
        return False

    with open(os.path.join(path, "data.pkl"), "xb") as file:
        pickling.dump(value, file, buffer_callback=out_of_band, prelude=prelude)
        pickled = file.tell()
    files = {"data.pkl": pickled}
    if buffers:
        with open(os.path.join(path, "buffers.bin"), "xb", buffering=0) as file:
            files["buffers.bin"] = _write_views(file, buffers)
    return "cloudpickle", files, {"buffers": [view.nbytes for view in buffers]}


def _write_dill(value: object, path: str, prelude: Mapping[str, Any]) -> Written:
    """Pickle ``value`` with dill (protocol 5) to ``data.pkl``."""
    from kale_magics.runtime import pickling

    with open(os.path.join(path, "data.pkl"), "xb") as file:
        pickling.dump_dill(value, file, prelude)
        return "dill", {"data.pkl": file.tell()}, {}


# -- numpy --------------------------------------------------------------------------------


def _write_npy(array: Any, path: str) -> Written | None:
    """Write ``array`` as ``data.npy``; None when it needs pickling (objects, subclasses)."""
    numpy = sys.modules["numpy"]
    if type(array) not in (numpy.ndarray, numpy.memmap) or array.dtype.hasobject \
            or array.dtype.itemsize == 0:
        return None
    header = _npy_header(array)
    if header is None:
        return None
    with open(os.path.join(path, "data.npy"), "xb", buffering=0) as file:
        size = _write_views(file, [memoryview(header)])
        for block in _array_blocks(array):
            size += _write_views(file, [block])
    return "npy", {"data.npy": size}, {}


def _npy_header(array: Any) -> bytes | None:
    """The ``.npy`` header of ``array`` (format 1.0, else 2.0), or None if it has none."""
    from numpy.lib import format as npy

    fields = npy.header_data_from_array_1_0(array)
    for write in (npy.write_array_header_1_0, npy.write_array_header_2_0):
        header = io.BytesIO()
        try:
            write(header, fields)
            return header.getvalue()
        except ValueError:  # too long for 1.0, or field names not latin-1
            continue
    return None


def _array_blocks(array: Any) -> Iterator[memoryview]:
    """The bytes of ``array`` in the order its header declares, without copying contiguous data.

    A non-contiguous array is copied to C order a block of rows at a time
    (about 32 MiB), so saving it never doubles its memory.
    """
    if array.flags.c_contiguous or array.flags.f_contiguous:
        yield _flat_bytes(array)
        return
    rows = max(1, _CHUNK // max(1, array.nbytes // array.shape[0]))
    for start in range(0, array.shape[0], rows):
        yield _flat_bytes(array[start:start + rows].copy(order="C"))


def _flat_bytes(array: Any) -> memoryview:
    """A byte view of the buffer of a C- or Fortran-contiguous ``array`` (no copy)."""
    flat = array if array.flags.c_contiguous else array.T
    return memoryview(flat.reshape(-1).view("u1"))


def _read_npy(path: str, manifest: dict[str, Any], into: _Into) -> Any:
    """Read ``data.npy`` into a new writable array (its ``base`` is the buffer from `_allocate`)."""
    import numpy
    from numpy.lib import format as npy

    target = os.path.join(path, "data.npy")
    readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
    with open(target, "rb") as file:
        version = npy.read_magic(file)
        if version not in readers:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, fortran_order, dtype = readers[version](file, max_header_size=_MAX_NPY_HEADER)
        offset = file.tell()
    if dtype.hasobject:
        raise ValueError(f"data.npy declares dtype {dtype}, which holds Python objects")
    order = "F" if fortran_order else "C"
    size = math.prod(shape) * dtype.itemsize
    if offset + size != manifest["files"]["data.npy"]:
        raise ValueError(f"data.npy header declares {size} bytes of data; the file holds "
                         f"{manifest['files']['data.npy'] - offset}")
    if size == 0:
        return numpy.empty(shape, dtype, order=order)
    buffer = _allocate(size)
    _read_into(target, offset, [memoryview(buffer)])
    return numpy.frombuffer(buffer, dtype).reshape(shape, order=order)


# -- pandas -------------------------------------------------------------------------------


def _write_arrow(value: Any, path: str) -> Written | None:
    """Write a DataFrame or Series as ``data.arrow``; None unless Arrow stores it exactly."""
    pandas = sys.modules["pandas"]
    if type(value) is pandas.Series and (value.name is None or type(value.name) in (str, int)):
        frame = value.to_frame(name="series")
        extras = {"pandas": "Series", "series_name": value.name}
    elif type(value) is pandas.DataFrame:
        frame, extras = value, {"pandas": "DataFrame"}
    else:
        return None  # a subclass, or a Series name JSON cannot hold
    table = _exact_arrow_table(frame, pandas)
    if table is None:
        return None
    import pyarrow

    target = os.path.join(path, "data.arrow")
    with pyarrow.OSFile(target, "wb") as sink, pyarrow.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return "arrow", {"data.arrow": os.path.getsize(target)}, extras


def _exact_arrow_table(frame: Any, pandas: Any) -> Any:
    """``frame`` as a ``pyarrow.Table`` if converting back gives an identical frame, else None.

    Rejects what Arrow cannot store exactly: ``attrs``, object dtypes (their
    values' types would change) and, checked by a round trip of the first
    rows, everything whose dtypes, index, labels, flags or ``freq`` change
    (e.g. python-backed strings, duplicate or non-string column labels).
    Returns None when pyarrow is not installed.
    """
    if frame.attrs or any(_holds_objects(dtype, pandas) for dtype in _all_dtypes(frame)):
        return None
    try:
        import pyarrow
    except ImportError:
        return None
    sample = frame.iloc[:_SAMPLE_ROWS]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            back = pyarrow.Table.from_pandas(sample, preserve_index=None).to_pandas()
            pandas.testing.assert_frame_equal(
                back, sample, check_exact=True, check_index_type=True, check_column_type=True,
                check_flags=True, check_freq=True)
            return pyarrow.Table.from_pandas(frame, preserve_index=None)
    except Exception:  # any failure to convert or compare means "not exact"
        return None


def _all_dtypes(frame: Any) -> list[Any]:
    """The dtypes of ``frame``'s columns and of its index levels."""
    levels = getattr(frame.index, "levels", [frame.index])
    return [*frame.dtypes, *(level.dtype for level in levels)]


def _holds_objects(dtype: Any, pandas: Any) -> bool:
    """Whether ``dtype`` stores Python objects (also as the categories of a categorical)."""
    if isinstance(dtype, pandas.CategoricalDtype):
        return _holds_objects(dtype.categories.dtype, pandas)
    return bool(getattr(dtype, "hasobject", False))


def _read_arrow(path: str, manifest: dict[str, Any], into: _Into) -> Any:
    """Read ``data.arrow`` into one buffer and convert it to the saved DataFrame or Series.

    Columns pandas keeps in Arrow memory (e.g. the default ``str`` dtype) are
    views into that buffer, as with ``pandas.read_feather``: while one lives,
    the whole buffer stays allocated.
    """
    import pyarrow

    target = os.path.join(path, "data.arrow")
    buffer = _allocate(manifest["files"]["data.arrow"])
    _read_into(target, 0, [memoryview(buffer)])
    frame = pyarrow.ipc.open_file(pyarrow.py_buffer(buffer)).read_all().to_pandas()
    if manifest.get("pandas") != "Series":
        return frame
    series = frame.iloc[:, 0]
    series.name = manifest["series_name"]
    return series


# -- pickles ------------------------------------------------------------------------------


def _read_cloudpickle(path: str, manifest: dict[str, Any], into: _Into) -> Any:
    """Read the out-of-band buffers, then unpickle ``data.pkl`` with them."""
    from kale_magics.runtime import pickling

    buffers = [_allocate(size) for size in manifest["buffers"]]
    if buffers:
        _read_into(os.path.join(path, "buffers.bin"), 0, [memoryview(b) for b in buffers])
    with open(os.path.join(path, "data.pkl"), "rb") as file:
        return pickling.load(file, into.namespace, into.prelude, buffers)


def _read_dill(path: str, manifest: dict[str, Any], into: _Into) -> Any:
    """Unpickle ``data.pkl`` with dill."""
    from kale_magics.runtime import pickling

    with open(os.path.join(path, "data.pkl"), "rb") as file:
        return pickling.load_dill(file, into.namespace, into.prelude)


def _read_backend(path: str, manifest: dict[str, Any], into: _Into) -> Any:
    """Load a ``backend`` artifact with the backend its manifest names, checking the library's
    version (same major.minor as when saved)."""
    name = str(manifest.get("backend"))
    backend = backends.by_name(name)
    library = manifest.get("library", "its library")
    if backend is None:
        raise ImportError(f"no marshal backend {name!r} here: install the package providing the "
                          f"`{backends.ENTRY_POINT_GROUP}` entry point {name!r} in this step",
                          name=str(library))
    saved, installed = str(manifest.get("library_version")), backends.library_version(backend)
    if not backends.compatible(saved, installed):
        raise _VersionMismatch(f"saved with {library} {saved}, this step has {library} "
                               f"{installed}; install {library}=={saved} in this step "
                               f"(--packages {library}=={saved}, or the same image)")
    return backend.load(os.path.join(path, backend.file))


class _VersionMismatch(Exception):
    """An artifact saved with a library version this step does not have."""


_READERS: dict[str, Callable[[str, dict[str, Any], _Into], Any]] = {
    "npy": _read_npy, "arrow": _read_arrow, "cloudpickle": _read_cloudpickle, "dill": _read_dill,
    "backend": _read_backend}
