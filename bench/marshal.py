"""Benchmark the step data-passing layer against pickle protocol 5 and Kale's formats.

Run ``python -m bench.marshal [--quick] [--json PATH] [--repeat N] [--dir DIR] [--only TEXT]``.

For each object and each method (kale-magics ``marshal``, plain ``pickle``
protocol 5 to one file, and Kale's format: ``np.save``/``np.load`` for arrays,
``DataFrame.to_pickle``/``pd.read_pickle`` for frames, ``dill`` for the rest)
the value is saved and loaded back, the methods taking turns within each
repetition, after one untimed warm-up round (imports, checks of the result). Every variant writes a fresh file in the same temporary directory;
dirty pages are flushed (``os.sync``, not timed) before each save and each
load, so the kernel's write-back of one run does not slow the next. The
table reports the median of the repetitions (3, or 1 with ``--quick``, which
also shrinks the objects about 50 times).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import dill
import numpy as np
import pandas as pd

from kale_magics.runtime import marshal

METHODS = ("kale-magics", "pickle5", "kale")
Saver = Callable[[Any, str], Any]
Loader = Callable[[str], Any]


class Experiment:
    """A user object of a class defined in ``__main__`` (when run with ``python -m``)."""

    def __init__(self, name: str, history: list[float]) -> None:
        self.name = name
        self.params = {"lr": 0.01, "layers": [64, 32], "seed": 0}
        self.history = history

    def best(self) -> float:
        """The lowest value of ``history``."""
        return min(self.history)


@dataclass
class Result:
    """Median timings of one method on one object, in seconds, and the payload size in bytes."""

    obj: str
    method: str
    save_s: float
    load_s: float
    total_s: float
    payload_bytes: int
    runs: list[tuple[float, float]] = field(default_factory=list)

    @property
    def gb_per_s(self) -> float:
        """Payload gigabytes passed per second: the object saved and loaded back once."""
        return self.payload_bytes / self.total_s / 1e9


def main_class(cls: type) -> type:
    """Make ``cls`` a class of ``__main__``, as a class defined in a notebook is.

    cloudpickle and dill pickle ``__main__`` classes by value (the class travels
    with the object), which is what a notebook's classes need; when this module
    is imported (``python -m bench``) rather than run, the class is moved there.
    """
    main = sys.modules["__main__"]
    if cls.__module__ != "__main__":
        cls.__module__ = "__main__"
        setattr(main, cls.__qualname__, cls)
    return cls


def make_objects(scale: float) -> tuple[dict[str, Any], list[str]]:
    """The benchmark objects, sizes multiplied by ``scale``, and notes on skipped ones."""
    rng = np.random.default_rng(0)
    rows = int(10_000_000 * scale)
    array_mib, dict_mib = 512 * scale, 8 * scale
    objects: dict[str, Any] = {
        f"float64 array {array_mib:g} MiB": rng.random(int((512 << 20) * scale) // 8),
        f"DataFrame {rows:,} rows f/i/str": pd.DataFrame({
            "f": rng.random(rows), "i": np.arange(rows, dtype=np.int64),
            "s": pd.Series(np.arange(rows)).astype("str").radd("id-")}),
        f"dict of 10 arrays {dict_mib:g} MiB": {f"a{i}": rng.random(int((8 << 20) * scale) // 8)
                                               for i in range(10)},
        "__main__ class instance": main_class(Experiment)("run-1", rng.random(int(1_000_000 * scale)).tolist()),
    }
    notes = []
    try:
        from sklearn.datasets import make_classification
        from sklearn.ensemble import RandomForestClassifier

        features, labels = make_classification(n_samples=2000, n_features=20, random_state=0)
        forest = RandomForestClassifier(n_estimators=max(5, int(100 * min(1.0, scale * 10))),
                                        random_state=0, n_jobs=1)
        objects["sklearn RandomForest"] = forest.fit(features, labels)
    except ImportError:
        notes.append("sklearn RandomForest: skipped, scikit-learn is not installed")
    for make in BACKEND_OBJECTS:
        try:
            objects.update(make(scale, rng))
        except ImportError as error:
            notes.append(f"{make.__doc__.split(':')[0]}: skipped, {error.name} is not installed")
    return objects, notes


def xgboost_objects(scale: float, rng: Any) -> dict[str, Any]:
    """xgboost DMatrix and Booster: the DMatrix backend (save_binary) and the Booster's (UBJSON)."""
    import xgboost

    rows = max(1000, int(500_000 * scale))
    features = rng.random((rows, 20), dtype=np.float32)
    dmatrix = xgboost.DMatrix(features, label=features[:, 0] > 0.5)
    booster = xgboost.train({"objective": "binary:logistic", "max_depth": 6}, dmatrix,
                            max(5, int(100 * min(1.0, scale * 10))))
    return {f"xgboost DMatrix {rows:,}x20": dmatrix, "xgboost Booster": booster}


def lightgbm_objects(scale: float, rng: Any) -> dict[str, Any]:
    """LightGBM Booster: its backend (model_to_string text)."""
    import lightgbm

    features = rng.random((20_000, 20))
    data = lightgbm.Dataset(features, features[:, 0] > 0.5)
    rounds = max(5, int(100 * min(1.0, scale * 10)))
    return {"LightGBM Booster": lightgbm.train({"objective": "binary", "verbose": -1}, data, rounds)}


def torch_objects(scale: float, rng: Any) -> dict[str, Any]:
    """PyTorch tensor and nn.Module: the torch backend (torch.save with cloudpickle)."""
    import torch

    mib = 256 * scale
    width = max(64, int(1024 * scale ** 0.5))
    module = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(),
                                 torch.nn.Linear(width, 10))
    return {f"torch tensor {mib:g} MiB": torch.from_numpy(rng.random(int((256 << 20) * scale) // 8)),
            f"torch Module {width}-wide MLP": module}


def keras_objects(scale: float, rng: Any) -> dict[str, Any]:
    """Keras model: the Keras backend (.keras); Keras 3 on PyTorch where TensorFlow is absent."""
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None and importlib.util.find_spec("torch"):
        os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    width = max(32, int(512 * scale ** 0.5))
    model = keras.Sequential([keras.Input((width,)), keras.layers.Dense(width),
                              keras.layers.Dense(10)])
    return {f"Keras {width}-wide model": model}


def pil_objects(scale: float, rng: Any) -> dict[str, Any]:
    """PIL image: the PIL backend (PNG, lossless)."""
    from PIL import Image

    side = max(64, int(4096 * scale ** 0.5))
    pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    return {f"PIL image {side}x{side} RGB": Image.fromarray(pixels)}


def sklearn_objects(scale: float, rng: Any) -> dict[str, Any]:
    """scikit-learn nearest neighbours: the joblib backend (arrays of 1 MiB or more, memory-mapped)."""
    from sklearn.neighbors import KNeighborsClassifier

    rows = max(20_000, int(2_000_000 * scale))
    features = rng.random((rows, 16))
    model = KNeighborsClassifier(algorithm="brute").fit(features, features[:, 0] > 0.5)
    return {f"sklearn KNeighbors {rows:,}x16": model}


#: Makers of the objects each marshal backend saves (an ImportError skips one with a note).
BACKEND_OBJECTS = (xgboost_objects, lightgbm_objects, torch_objects, keras_objects, pil_objects,
                   sklearn_objects)


def kale_format(value: Any) -> tuple[Saver, Loader]:
    """Kale's save and load for ``value`` (kale/marshal/backends.py of Kale 2.3): np.save,
    DataFrame.to_pickle, joblib for scikit-learn, xgboost's own formats, else dill (also for
    Keras models and torch modules, which Kale 2.3 saves as ``.keras`` and TorchScript)."""
    if isinstance(value, np.ndarray):
        return (lambda v, p: np.save(p, v)), (lambda p: np.load(p))
    if isinstance(value, (pd.DataFrame, pd.Series)):
        return (lambda v, p: v.to_pickle(p)), pd.read_pickle
    native = _kale_native(type(value).__module__.split(".")[0], type(value).__name__)
    if native is not None:
        return native

    def dill_save(v: Any, p: str) -> None:
        with open(p, "wb") as file:
            dill.dump(v, file)

    def dill_load(p: str) -> Any:
        with open(p, "rb") as file:
            return dill.load(file)

    return dill_save, dill_load


def _kale_native(top: str, name: str) -> tuple[Saver, Loader] | None:
    """Kale 2.3's own backend for a library type, where it has one (its regexes match these)."""
    if top == "sklearn":
        import joblib

        return joblib.dump, joblib.load
    if (top, name) == ("xgboost", "DMatrix"):
        import xgboost

        return (lambda v, p: v.save_binary(p)), xgboost.DMatrix
    if (top, name) == ("xgboost", "Booster"):
        import xgboost

        def load_booster(p: str) -> Any:
            booster = xgboost.Booster()
            booster.load_model(p)
            return booster

        return (lambda v, p: v.save_model(p + ".json")), load_booster  # run_once adds ".json"
    return None


def pickle_save(value: Any, path: str) -> None:
    """Plain pickle, protocol 5, to one file."""
    with open(path, "wb") as file:
        pickle.dump(value, file, protocol=5)


def pickle_load(path: str) -> Any:
    """Plain ``pickle.load`` of one file."""
    with open(path, "rb") as file:
        return pickle.load(file)


def method_functions(method: str, value: Any) -> tuple[Saver, Loader]:
    """``(save, load)`` of ``method`` for ``value``; paths name a file (or our directory)."""
    if method == "kale-magics":
        return (lambda v, p: marshal.save(v, p, "x")), (lambda p: marshal.load(p, "x"))
    if method == "pickle5":
        return pickle_save, pickle_load
    return kale_format(value)


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, result)`` of calling ``function`` once."""
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def same(a: Any, b: Any) -> bool:
    """Whether the loaded value ``b`` equals the original ``a`` (cheap checks for big objects)."""
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, pd.DataFrame):
        return a.equals(b) and list(a.dtypes) == list(b.dtypes)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    if isinstance(a, Experiment):
        return a.history == b.history and a.best() == b.best()
    return type(a).__qualname__ == type(b).__qualname__


def run_once(method: str, value: Any, directory: str, check: bool) -> tuple[float, float]:
    """Save and load ``value`` once with ``method`` in a fresh path; return the two durations."""
    save, load = method_functions(method, value)
    path = os.path.join(directory, f"{method}.out")
    os.sync()
    save_s, _ = timed(lambda: save(value, path))
    if method == "kale" and isinstance(value, np.ndarray):
        path += ".npy"  # np.save adds the suffix
    if not os.path.exists(path) and os.path.exists(path + ".json"):
        path += ".json"  # xgboost picks the format by suffix
    os.sync()
    load_s, loaded = timed(lambda: load(path))
    if check and not same(value, loaded):
        raise AssertionError(f"{method} did not round-trip the value")
    del loaded
    if os.path.isdir(path):
        shutil.rmtree(path)
    else:
        os.remove(path)
    return save_s, load_s


def payload_bytes(value: Any, directory: str) -> int:
    """Size of the value's pickle (protocol 5): the bytes each method has to move; for a value
    pickle cannot save (an xgboost DMatrix), the size of our artifact."""
    path = os.path.join(directory, "size.pkl")
    try:
        pickle_save(value, path)
        size = os.path.getsize(path)
    except Exception:
        marshal.save(value, path + ".d", "x")
        size = sum(e.stat().st_size for e in os.scandir(path + ".d"))
        shutil.rmtree(path + ".d")
    if os.path.exists(path):
        os.remove(path)
    return size


def bench_object(name: str, value: Any, repeat: int, directory: str,
                 notes: list[str] | None = None) -> list[Result]:
    """Time every method on ``value``, taking turns, ``repeat`` times after an untimed warm-up.

    A method other than ours that cannot save ``value`` (pickle and a DMatrix) is left out,
    with a note in ``notes``.
    """
    runs: dict[str, list[tuple[float, float]]] = {}
    for method in METHODS:  # imports, first allocations, checks of the loaded value
        try:
            run_once(method, value, directory, check=True)
            runs[method] = []
        except Exception as error:
            if method == "kale-magics":
                raise
            _clear(directory)
            (notes if notes is not None else []).append(
                f"{name}: {method} cannot save it ({type(error).__name__}: {str(error)[:80]})")
    for _ in range(repeat):
        for method in runs:
            runs[method].append(run_once(method, value, directory, check=False))
    size = payload_bytes(value, directory)
    return [Result(name, method, statistics.median(s for s, _ in times),
                   statistics.median(l for _, l in times),
                   statistics.median(s + l for s, l in times), size, times)
            for method, times in runs.items()]


def print_table(results: list[Result], notes: list[str]) -> None:
    """Print one row per object and method, ratios on the kale-magics row."""
    header = (f"{'object':28} {'method':12} {'save s':>8} {'load s':>8} {'total s':>8} "
              f"{'GB/s':>6} {'ours/pickle5':>12} {'kale/ours':>9}")
    print(header)
    print("-" * len(header))
    by_key = {(r.obj, r.method): r for r in results}
    for r in results:
        ratios = ""
        if r.method == "kale-magics":
            pickle5, kale = by_key.get((r.obj, "pickle5")), by_key.get((r.obj, "kale"))
            ratios = (f"{r.total_s / pickle5.total_s:12.2f}" if pickle5 else f"{'-':>12}") + \
                (f" {kale.total_s / r.total_s:9.2f}" if kale else f" {'-':>9}")
        print(f"{r.obj:28} {r.method:12} {r.save_s:8.3f} {r.load_s:8.3f} {r.total_s:8.3f} "
              f"{r.gb_per_s:6.2f} {ratios}")
    for note in notes:
        print(note)
    print("GB/s: pickle-5 size of the object / (save + load); "
          "ours/pickle5 and kale/ours: ratios of total seconds")


def to_json(results: list[Result], notes: list[str], quick: bool, repeat: int) -> dict[str, Any]:
    """The figures as a JSON-ready dict."""
    rows = [{**asdict(r), "gb_per_s": r.gb_per_s} for r in results]
    by_key = {(r.obj, r.method): r for r in results}
    ratios = {obj: {"ours_over_pickle5": r.total_s / by_key[(obj, "pickle5")].total_s,
                    "kale_over_ours": by_key[(obj, "kale")].total_s / r.total_s}
              for (obj, method), r in by_key.items() if method == "kale-magics"
              and (obj, "pickle5") in by_key and (obj, "kale") in by_key}
    return {"quick": quick, "repeat": repeat, "cpus": os.cpu_count(),
            "results": rows, "ratios": ratios, "notes": notes}


def _clear(directory: str) -> None:
    """Remove what a failed save left in ``directory``."""
    for entry in os.scandir(directory):
        shutil.rmtree(entry.path) if entry.is_dir() else os.remove(entry.path)


def measure(quick: bool = False, repeat: int | None = None, parent: str = "/tmp",
            only: str | None = None) -> tuple[list[Result], list[str]]:
    """Time every method on every object (``quick``: about 1/50 sizes, 1 repetition).

    Parameters
    ----------
    repeat:
        Timed repetitions per object and method; default 3, or 1 when ``quick``.
    parent:
        Folder in which a temporary directory holds the files (removed afterwards).
    only:
        Only the objects whose name contains this text.

    Returns
    -------
    tuple
        The results (one per object and method) and notes on skipped objects.
    """
    repeat = repeat or (1 if quick else 3)
    objects, notes = make_objects(1 / 50 if quick else 1.0)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-marshal-", dir=parent) as directory:
        for name in list(objects):
            value = objects.pop(name)  # dropped after its turn: the full-size objects are large
            if not only or only in name:
                results += bench_object(name, value, repeat, directory, notes)
            del value
    return results, notes


def main(argv: list[str] | None = None) -> None:
    """Parse the options, run the benchmark, print the table (and write JSON)."""
    parser = argparse.ArgumentParser(prog="python -m bench.marshal",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="~1/50 sizes and 1 repetition")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    parser.add_argument("--repeat", type=int, help="repetitions (default 3, 1 with --quick)")
    parser.add_argument("--dir", default="/tmp", help="parent of the temporary directory")
    parser.add_argument("--only", metavar="TEXT", help="only the objects whose name contains TEXT")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    results, notes = measure(args.quick, repeat, args.dir, args.only)
    print_table(results, notes)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(to_json(results, notes, args.quick, repeat), file, indent=1)


if __name__ == "__main__":
    main()
