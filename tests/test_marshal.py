"""Tests of the step data-passing layer, ``kale_magics.runtime.marshal``."""

from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from kale_magics.runtime import marshal
from kale_magics.runtime.marshal import FORMAT_VERSION, MarshalError, load, save

MARSHAL_SOURCE = Path(marshal.__file__).read_text("utf-8")
REPO = Path(__file__).resolve().parents[1]


def round_trip(value: Any, tmp_path: Path, variable: str = "x") -> tuple[Any, dict[str, Any]]:
    """Save ``value`` in a fresh artifact directory and load it back; return it and the metadata."""
    path = str(tmp_path / variable)
    metadata = save(value, path, variable)
    return load(path, variable), metadata


def manifest_of(tmp_path: Path, variable: str = "x") -> dict[str, Any]:
    return json.loads((tmp_path / variable / "kale.json").read_text("utf-8"))


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter; fail the test with its stderr when it fails."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    return result


# -- numpy --------------------------------------------------------------------------------

ARRAYS = {
    "float64 2-d": np.arange(12, dtype=np.float64).reshape(3, 4) / 7,
    "int8": np.arange(-5, 5, dtype=np.int8),
    "uint64 max": np.array([0, 2**64 - 1], dtype=np.uint64),
    "bool": np.array([True, False, True]),
    "complex128": np.array([1 + 2j, -3.5j]),
    "float16 big-endian": np.arange(6, dtype=">f2"),
    "datetime64[ns]": np.array(["2020-01-01T00:00:00.000000001", "NaT"], dtype="datetime64[ns]"),
    "timedelta64[s]": np.array([1, -2], dtype="timedelta64[s]"),
    "unicode": np.array(["a", "ünï"]),
    "structured": np.array([(1, 2.5, b"ab")], dtype=[("i", "<i4"), ("f", "<f8"), ("b", "S2")]),
    "0-d": np.array(3.25),
    "empty": np.empty((0, 3)),
    "fortran order": np.asfortranarray(np.arange(24.0).reshape(2, 3, 4)),
    "non-contiguous": np.arange(100.0).reshape(10, 10)[::3, 1::2],
    "transposed 3-d": np.arange(60, dtype=np.int32).reshape(3, 4, 5).transpose(1, 2, 0)[:, ::2],
    "negative strides": np.arange(10)[::-1],
}


@pytest.mark.parametrize("name", ARRAYS)
def test_array_round_trips_as_npy(name: str, tmp_path: Path) -> None:
    array = ARRAYS[name]
    loaded, metadata = round_trip(array, tmp_path)
    assert metadata["kale_format"] == "npy"
    assert type(loaded) is np.ndarray and loaded.dtype == array.dtype
    assert loaded.shape == array.shape
    np.testing.assert_array_equal(loaded, array)
    assert loaded.flags.writeable
    if array.flags.f_contiguous and not array.flags.c_contiguous:
        assert loaded.flags.f_contiguous  # Fortran order is kept
    else:
        assert loaded.flags.c_contiguous


def test_npy_artifact_is_a_standard_npy_file(tmp_path: Path) -> None:
    array = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    save(array, str(tmp_path / "x"), "x")
    plain = np.load(tmp_path / "x" / "data.npy")
    np.testing.assert_array_equal(plain, array)
    assert plain.flags.f_contiguous


@pytest.mark.skipif(not hasattr(os, "preadv") or (os.cpu_count() or 1) < 2,
                    reason="parallel reads need os.preadv and two CPUs")
def test_large_array_is_read_by_parallel_threads(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(marshal, "_PARALLEL_MIN", 1)
    monkeypatch.setattr(marshal, "_CHUNK", 4096)  # many chunks, read by several threads
    array = np.random.default_rng(0).random(100_003)
    save(array, str(tmp_path / "x"), "x")
    readers: set[int] = set()
    preadv = os.preadv

    def recording_preadv(*args: Any) -> int:
        readers.add(threading.get_ident())
        time.sleep(0.001)  # hold the chunk a moment, so the pool's other thread takes the next
        return preadv(*args)

    monkeypatch.setattr(os, "preadv", recording_preadv)
    loaded = load(str(tmp_path / "x"), "x")
    np.testing.assert_array_equal(loaded, array)
    assert len(readers) >= 2 and threading.get_ident() not in readers


def test_non_contiguous_array_is_written_in_row_blocks(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(marshal, "_CHUNK", 64)  # several blocks of rows
    array = np.arange(2000, dtype=np.int64).reshape(100, 20)[::2, ::3]
    loaded, _ = round_trip(array, tmp_path)
    np.testing.assert_array_equal(loaded, array)


@pytest.mark.parametrize("array", [np.array([1, "a", None], dtype=object),
                                   np.array(["x", "yz"], dtype=np.dtypes.StringDType()),
                                   np.ma.masked_array([1, 2, 3], mask=[0, 1, 0])],
                         ids=["object", "StringDType", "masked"])
def test_arrays_with_objects_or_subclasses_are_pickled(array: np.ndarray, tmp_path: Path) -> None:
    loaded, metadata = round_trip(array, tmp_path)
    assert metadata["kale_format"] == "cloudpickle"
    assert type(loaded) is type(array) and loaded.dtype == array.dtype
    assert loaded.tolist() == array.tolist()


def test_numpy_scalar_round_trips(tmp_path: Path) -> None:
    loaded, metadata = round_trip(np.float32(1.5), tmp_path)
    assert metadata["kale_format"] == "cloudpickle"
    assert metadata["python_type"] == "numpy.float32"
    assert type(loaded) is np.float32 and loaded == np.float32(1.5)


# -- pandas -------------------------------------------------------------------------------

def arrow_frames() -> dict[str, pd.DataFrame]:
    n = 5
    return {
        "numbers and strings": pd.DataFrame({"f": [0.5, np.nan, 2, 3, 4], "i": range(n),
                                             "s": ["a", None, "c", "d", "é"]}),
        "categorical": pd.DataFrame({"c": pd.Categorical(list("abcab"), categories=list("cbaz"),
                                                         ordered=True)}),
        "datetime tz": pd.DataFrame({"t": pd.date_range("2020-03-29", periods=n, freq="h",
                                                        tz="Europe/Athens"),
                                     "naive ns": pd.date_range("2020", periods=n, unit="ns")}),
        "nullable": pd.DataFrame({"I": pd.array([1, None, 3, 4, 5], dtype="Int64"),
                                  "b": pd.array([True, None, False, True, True], dtype="boolean"),
                                  "td": pd.to_timedelta(range(n), unit="s")}),
        "string storages": pd.DataFrame({"pa": pd.array(list("abcde"), dtype="string[pyarrow]"),
                                         "u8": np.arange(n, dtype=np.uint8)}),
        "named index": pd.DataFrame({"v": range(n)}, index=pd.Index(list("vwxyz"), name="key")),
        "range index step": pd.DataFrame({"v": range(n)}, index=pd.RangeIndex(10, 20, 2)),
        "multiindex rows": pd.DataFrame(
            {"v": range(n)}, index=pd.MultiIndex.from_product([["a"], range(n)], names=["k", "j"])),
        "multiindex columns": pd.DataFrame(
            np.arange(10).reshape(5, 2),
            columns=pd.MultiIndex.from_tuples([("a", "x"), ("a", "y")])),
        "no rows": pd.DataFrame({"a": pd.Series([], dtype="float64"),
                                 "s": pd.Series([], dtype="str")}),
    }


@pytest.mark.parametrize("name", list(arrow_frames()))
def test_frame_round_trips_exactly_as_arrow(name: str, tmp_path: Path) -> None:
    frame = arrow_frames()[name]
    loaded, metadata = round_trip(frame, tmp_path)
    assert metadata["kale_format"] == "arrow"
    assert metadata["python_type"] == "pandas.DataFrame"
    pd.testing.assert_frame_equal(loaded, frame, check_exact=True, check_index_type=True,
                                  check_column_type=True, check_freq=True, check_flags=True)


def test_default_string_dtype_survives(tmp_path: Path) -> None:
    frame = pd.DataFrame({"s": ["x", None]})
    assert frame["s"].dtype == "str"
    loaded, _ = round_trip(frame, tmp_path)
    assert loaded["s"].dtype == frame["s"].dtype and loaded["s"].isna().tolist() == [False, True]


def pickled_frames() -> dict[str, pd.DataFrame]:
    with_attrs = pd.DataFrame({"a": [1, 2]})
    with_attrs.attrs["source"] = ("db", 1)
    return {
        "object column": pd.DataFrame({"o": pd.Series([1, "a", None], dtype=object)}),
        "object strings": pd.DataFrame({"o": pd.Series(["a", "b"], dtype=object)}),
        "attrs": with_attrs,
        "duplicate columns": pd.DataFrame([[1, 2]], columns=["a", "a"]),
        "integer labels": pd.DataFrame(np.arange(4).reshape(2, 2)),
        "mixed labels": pd.DataFrame([[1, 2]], columns=["a", 1]),
        "index with freq": pd.DataFrame({"v": range(3)}, index=pd.date_range("2020", periods=3)),
        "python strings": pd.DataFrame({"s": pd.array(["a", None], dtype="string[python]")}),
        "complex": pd.DataFrame({"c": [1j, 2]}),
        "sparse": pd.DataFrame({"s": pd.arrays.SparseArray([0, 0, 1])}),
        "no columns": pd.DataFrame(index=range(3)),
    }


@pytest.mark.parametrize("name", list(pickled_frames()))
def test_frame_arrow_cannot_store_exactly_is_pickled(name: str, tmp_path: Path) -> None:
    frame = pickled_frames()[name]
    loaded, metadata = round_trip(frame, tmp_path)
    assert metadata["kale_format"] == "cloudpickle"
    pd.testing.assert_frame_equal(loaded, frame, check_exact=True, check_index_type=True,
                                  check_column_type=True, check_freq=True)
    assert loaded.attrs == frame.attrs


def test_frame_subclass_is_pickled(tmp_path: Path) -> None:
    class Frame(pd.DataFrame):
        @property
        def _constructor(self) -> type:
            return Frame

    loaded, metadata = round_trip(Frame({"a": [1]}), tmp_path)
    assert metadata["kale_format"] == "cloudpickle" and type(loaded).__name__ == "Frame"


def test_frame_without_pyarrow_is_not_converted(tmp_path: Path) -> None:
    """Where pyarrow is not installed (blocked before pandas is imported, in a fresh process)
    a DataFrame is pickled, and comes back equal."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["pyarrow"] = None  # `import pyarrow` raises ImportError
        import pandas as pd
        from kale_magics.runtime.marshal import load, save
        frame = pd.DataFrame({{"a": [1.5, 2.5]}})
        print(save(frame, {str(tmp_path / "x")!r}, "x")["kale_format"])
        pd.testing.assert_frame_equal(load({str(tmp_path / "x")!r}, "x"), frame)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["cloudpickle"]
    assert round_trip(pd.DataFrame({"a": [1.5, 2.5]}), tmp_path, "y")[1]["kale_format"] == "arrow"


@pytest.mark.parametrize("series, kale_format", [
    (pd.Series([1.5, 2.5], name="price"), "arrow"),
    (pd.Series(["a", None], index=pd.Index([3, 1], name="k")), "arrow"),
    (pd.Series(pd.Categorical(["x", "y"]), name=7), "arrow"),
    (pd.Series([1, 2], name=("a", "b")), "cloudpickle"),
    (pd.Series([object(), 1]), "cloudpickle"),
], ids=["str name", "no name", "int name", "tuple name", "objects"])
def test_series_round_trips(series: pd.Series, kale_format: str, tmp_path: Path) -> None:
    loaded, metadata = round_trip(series, tmp_path)
    assert metadata["kale_format"] == kale_format
    assert metadata["python_type"] == "pandas.Series"
    if kale_format == "arrow":
        pd.testing.assert_series_equal(loaded, series, check_exact=True, check_index_type=True)
    else:
        assert loaded.name == series.name and len(loaded) == len(series)


# -- pickles ------------------------------------------------------------------------------

def test_dict_round_trips_with_cloudpickle(tmp_path: Path) -> None:
    value = {"a": [1, 2.5, "x"], "b": {"nested": (None, True)}, 3: b"\x00"}
    loaded, metadata = round_trip(value, tmp_path)
    assert loaded == value
    assert metadata["kale_format"] == "cloudpickle" and metadata["python_type"] == "builtins.dict"
    assert sorted(os.listdir(tmp_path / "x")) == ["data.pkl", "kale.json"]  # no large buffers


def test_large_buffers_are_stored_out_of_band(tmp_path: Path) -> None:
    value = {"big": np.arange(300_000, dtype=np.float64), "small": np.arange(3),
             "raw": bytearray(b"z" * (2 << 20)),  # the C pickler keeps bytearrays in band
             "fortran": np.asfortranarray(np.ones((512, 512)))}
    loaded, _ = round_trip(value, tmp_path)
    manifest = manifest_of(tmp_path)
    assert manifest["buffers"] == [2_400_000, 2 << 20]
    assert (tmp_path / "x" / "buffers.bin").stat().st_size == 2_400_000 + (2 << 20)
    assert loaded["fortran"].flags.f_contiguous
    np.testing.assert_array_equal(loaded["fortran"], value["fortran"])
    np.testing.assert_array_equal(loaded["big"], value["big"])
    np.testing.assert_array_equal(loaded["small"], value["small"])
    assert loaded["raw"] == value["raw"]
    loaded["big"][0] = -1.0  # loaded arrays are writable


def test_lambda_round_trips(tmp_path: Path) -> None:
    offset = 10
    loaded, _ = round_trip(lambda x: x + offset, tmp_path)
    assert loaded(5) == 15


def test_dill_is_used_when_cloudpickle_fails(tmp_path: Path) -> None:
    loaded, metadata = round_trip({"lock": threading.Lock()}, tmp_path)
    assert metadata["kale_format"] == "dill"
    assert loaded["lock"].acquire(blocking=False)


def test_main_class_instance_crosses_processes(tmp_path: Path) -> None:
    """A class defined in ``__main__`` (a notebook) loads in a process that never defined it."""
    run_python(f"""
        from kale_magics.runtime import marshal

        class Point:
            def __init__(self, x, y):
                self.x, self.y = x, y
            def norm(self):
                return (self.x ** 2 + self.y ** 2) ** 0.5

        metadata = marshal.save(Point(3, 4), {str(tmp_path / 'p')!r}, "p")
        assert metadata["python_type"] == "__main__.Point", metadata
    """, tmp_path)
    result = run_python(f"""
        import __main__
        from kale_magics.runtime import marshal
        assert not hasattr(__main__, "Point")
        point = marshal.load({str(tmp_path / 'p')!r}, "p")
        print(type(point).__name__, point.norm())
    """, tmp_path)
    assert result.stdout.split() == ["Point", "5.0"]


def test_unserialisable_value_raises_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "gen"
    with pytest.raises(MarshalError) as caught:
        save((i for i in range(3)), str(path), "gen")
    error = caught.value
    assert error.variable == "gen" and error.type_name == "generator"
    message = str(error)
    assert message.startswith("cannot pass `gen` (generator) to later steps: cloudpickle failed "
                              "(TypeError: cannot pickle 'generator' object) and so did dill (")
    assert "Compute `gen` in each step that reads it instead of passing it" in message
    assert not path.exists()


def test_failed_save_into_existing_directory_empties_it(tmp_path: Path) -> None:
    (tmp_path / "gen").mkdir()
    with pytest.raises(MarshalError):
        save({"ok": 1, "bad": (i for i in range(3))}, str(tmp_path / "gen"), "gen")
    assert list((tmp_path / "gen").iterdir()) == []


# -- the artifact directory ---------------------------------------------------------------

def test_manifest_describes_the_artifact(tmp_path: Path) -> None:
    metadata = save(np.zeros((2, 3), dtype=np.int16), str(tmp_path / "x"), "x")
    manifest = manifest_of(tmp_path)
    assert metadata == {"kale_format": "npy", "kale_format_version": FORMAT_VERSION,
                        "python_type": "numpy.ndarray", "bytes": metadata["bytes"]}
    assert manifest["kale_format"] == "npy" and manifest["kale_format_version"] == 1
    assert manifest["python_type"] == "numpy.ndarray" and manifest["variable"] == "x"
    assert manifest["files"] == {"data.npy": (tmp_path / "x" / "data.npy").stat().st_size}
    on_disk = sum(f.stat().st_size for f in (tmp_path / "x").iterdir())
    assert metadata["bytes"] == on_disk
    assert sorted(os.listdir(tmp_path / "x")) == ["data.npy", "kale.json"]


def test_metadata_is_json_serialisable(tmp_path: Path) -> None:
    metadata = save(pd.DataFrame({"a": [1]}), str(tmp_path / "x"), "x")
    assert json.loads(json.dumps(metadata)) == metadata


def test_save_into_existing_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    loaded, _ = round_trip([1, 2], tmp_path)
    assert loaded == [1, 2]


def test_save_replaces_a_previous_artifact(tmp_path: Path) -> None:
    save(np.arange(3), str(tmp_path / "x"), "x")
    loaded, metadata = round_trip({"now": "dict"}, tmp_path)
    assert loaded == {"now": "dict"} and metadata["kale_format"] == "cloudpickle"
    assert "data.npy" not in os.listdir(tmp_path / "x")


def test_save_refuses_a_directory_with_other_files(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(MarshalError, match="not empty"):
        save(1, str(tmp_path / "x"), "x")
    assert os.listdir(tmp_path / "x") == ["notes.txt"]


def test_save_to_a_missing_parent_raises_marshal_error(tmp_path: Path) -> None:
    with pytest.raises(MarshalError, match="cannot save `x`"):
        save(1, str(tmp_path / "no" / "x"), "x")


@pytest.mark.parametrize("value", [np.arange(10), {"big": np.zeros(1 << 18)}], ids=["npy", "pickle"])
def test_full_disk_raises_marshal_error_and_cleans_up(value: Any, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(marshal, "_write_views", full)
    with pytest.raises(MarshalError) as caught:
        save(value, str(tmp_path / "x"), "x")
    assert "No space left on device" in str(caught.value) and "free space" in str(caught.value)
    assert "dill" not in str(caught.value)  # a storage failure is not retried with dill
    assert not (tmp_path / "x").exists()


def test_interrupted_save_leaves_no_loadable_artifact(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def killed(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)  # dies just before the manifest appears
    with pytest.raises(KeyboardInterrupt):
        save(np.arange(10), str(tmp_path / "x"), "x")
    monkeypatch.undo()
    with pytest.raises(MarshalError, match="holds no kale-magics artifact"):
        load(str(tmp_path / "x"), "x")


# -- loading errors -----------------------------------------------------------------------

def test_load_of_missing_path(tmp_path: Path) -> None:
    with pytest.raises(MarshalError) as caught:
        load(str(tmp_path / "nothing"), "model")
    assert "`model`" in str(caught.value) and "rerun" in str(caught.value)
    assert caught.value.variable == "model"


def test_load_of_directory_without_manifest(tmp_path: Path) -> None:
    save(np.arange(3), str(tmp_path / "x"), "x")
    (tmp_path / "x" / "kale.json").unlink()  # as if the step died before writing it
    with pytest.raises(MarshalError, match="holds no kale-magics artifact"):
        load(str(tmp_path / "x"), "x")


def test_load_of_corrupt_manifest(tmp_path: Path) -> None:
    save([1], str(tmp_path / "x"), "x")
    (tmp_path / "x" / "kale.json").write_text("{not json")
    with pytest.raises(MarshalError, match="unreadable kale.json"):
        load(str(tmp_path / "x"), "x")


def test_load_of_other_format_version(tmp_path: Path) -> None:
    save([1], str(tmp_path / "x"), "x")
    manifest = manifest_of(tmp_path)
    manifest["kale_format_version"] = FORMAT_VERSION + 1
    (tmp_path / "x" / "kale.json").write_text(json.dumps(manifest))
    with pytest.raises(MarshalError) as caught:
        load(str(tmp_path / "x"), "x")
    message = str(caught.value)
    assert f"version {FORMAT_VERSION + 1}" in message and "same kale-magics version" in message
    assert caught.value.type_name == "list"


def test_load_of_unknown_format(tmp_path: Path) -> None:
    save([1], str(tmp_path / "x"), "x")
    manifest = manifest_of(tmp_path)
    manifest["kale_format"] = "hdf5"
    (tmp_path / "x" / "kale.json").write_text(json.dumps(manifest))
    with pytest.raises(MarshalError, match="unknown format 'hdf5'"):
        load(str(tmp_path / "x"), "x")


@pytest.mark.parametrize("value, data_file", [(np.arange(1000), "data.npy"),
                                              (pd.DataFrame({"a": range(100)}), "data.arrow"),
                                              ({"a": list(range(100))}, "data.pkl")])
def test_load_of_truncated_data(value: Any, data_file: str, tmp_path: Path) -> None:
    save(value, str(tmp_path / "x"), "x")
    data = tmp_path / "x" / data_file
    data.write_bytes(data.read_bytes()[:-10])
    with pytest.raises(MarshalError, match="incomplete or corrupt"):
        load(str(tmp_path / "x"), "x")


def test_load_of_corrupt_pickle(tmp_path: Path) -> None:
    save({"a": 1}, str(tmp_path / "x"), "x")
    data = tmp_path / "x" / "data.pkl"
    data.write_bytes(b"\x00" * data.stat().st_size)  # same size, garbage
    with pytest.raises(MarshalError, match="corrupt") as caught:
        load(str(tmp_path / "x"), "x")
    assert isinstance(caught.value.__cause__, pickle.UnpicklingError)


def test_load_with_a_missing_package_says_what_to_install(tmp_path: Path) -> None:
    save({"a": 1}, str(tmp_path / "x"), "x")
    data = tmp_path / "x" / "data.pkl"
    # protocol 0 names globals as text lines, so the module name can be swapped
    stream = pickle.dumps(_Marker(), protocol=0).replace(__name__.encode(), b"no_such_pkg_xyz")
    data.write_bytes(stream)
    manifest = manifest_of(tmp_path)
    manifest["files"]["data.pkl"] = len(stream)
    (tmp_path / "x" / "kale.json").write_text(json.dumps(manifest))
    with pytest.raises(MarshalError, match="install `no_such_pkg_xyz`"):
        load(str(tmp_path / "x"), "x")


class _Marker:
    """A class pickled by reference to this test module."""


# -- running inside a pipeline step -------------------------------------------------------

def test_embedded_module_saves_a_dict_without_numpy_or_pandas(tmp_path: Path) -> None:
    """Executed from source as in a compiled pipeline, saving a dict imports no heavy library."""
    (tmp_path / "marshal_source.py").write_text(MARSHAL_SOURCE, "utf-8")
    result = run_python(f"""
        import sys, types
        source = open("marshal_source.py", encoding="utf-8").read()
        module = types.ModuleType("kale_magics.runtime.marshal")
        sys.modules[module.__name__] = module
        exec(compile(source, "kale_magics/runtime/marshal.py", "exec"), module.__dict__)
        metadata = module.save({{"a": [1, 2]}}, {str(tmp_path / 'd')!r}, "d")
        assert module.load({str(tmp_path / 'd')!r}, "d") == {{"a": [1, 2]}}
        heavy = sorted(m for m in ("numpy", "pandas", "pyarrow") if m in sys.modules)
        print(metadata["kale_format"], heavy)
    """, tmp_path)
    assert result.stdout.strip() == "cloudpickle []"


def test_module_uses_only_stdlib_at_top_level() -> None:
    import ast

    tree = ast.parse(MARSHAL_SOURCE)
    top = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = {alias.name.split(".")[0] for node in top if isinstance(node, ast.Import)
             for alias in node.names}
    names |= {node.module.split(".")[0] for node in top
              if isinstance(node, ast.ImportFrom) and node.module}
    runtime = {node.module for node in top if isinstance(node, ast.ImportFrom)
               and (node.module or "").startswith("kale_magics")}
    assert runtime <= {"kale_magics.runtime"}  # its siblings only, embedded beside it
    assert names <= set(sys.stdlib_module_names) | {"__future__", "kale_magics"}, names
    assert all(not (isinstance(n, ast.ImportFrom) and n.level) for n in ast.walk(tree))
    assert "__file__" not in MARSHAL_SOURCE


def test_python_type_uses_the_public_name(tmp_path: Path) -> None:
    assert save(pd.Series([1]), str(tmp_path / "s"), "s")["python_type"] == "pandas.Series"
    assert save(_Marker(), str(tmp_path / "m"), "m")["python_type"] == f"{__name__}._Marker"
    assert save(len, str(tmp_path / "f"), "f")["python_type"] == \
        "builtins.builtin_function_or_method"


def test_marshal_error_survives_pickling() -> None:
    """A MarshalError crosses a process boundary (a child run, a worker) with all its fields."""
    error = MarshalError("cannot save `gen`: generator; pass a list", "gen", "generator")
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.variable, copy.type_name) == (
        MarshalError, "cannot save `gen`: generator; pass a list", "gen", "generator")
