"""Marshal backends (kale_magics/runtime/backends.py): each library type saved in its own format,
chosen by class name without importing anything, with its library's version checked on load."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from kale_magics.runtime import backends
from kale_magics.runtime.marshal import MarshalError, load, save

X = np.random.default_rng(0).random((40, 4))
Y = (X[:, 0] > 0.5).astype(int)


def round_trip(value: object, tmp_path: Path, name: str = "v") -> tuple[object, dict]:
    """Save and load ``value``; the loaded value and the artifact's manifest."""
    path = tmp_path / name
    save(value, str(path), name)
    manifest = json.loads((path / "kale.json").read_text())
    return load(str(path), name), manifest


def assert_backend(manifest: dict, name: str, library: str) -> None:
    assert manifest["kale_format"] == "backend" and manifest["backend"] == name
    assert manifest["library"] == library and manifest["library_version"]


def test_xgboost_dmatrix_and_booster(tmp_path) -> None:
    xgb = pytest.importorskip("xgboost")
    dmatrix = xgb.DMatrix(X, label=Y, feature_names=list("abcd"))
    back, manifest = round_trip(dmatrix, tmp_path, "d")
    assert_backend(manifest, "xgboost.DMatrix", "xgboost")
    assert (back.num_row(), back.num_col(), back.feature_names) == (40, 4, list("abcd"))
    assert np.array_equal(back.get_label(), Y)
    booster = xgb.train({"objective": "binary:logistic"}, dmatrix, 3)
    back, manifest = round_trip(booster, tmp_path, "b")
    assert_backend(manifest, "xgboost.Booster", "xgboost")
    assert np.array_equal(back.predict(dmatrix), booster.predict(dmatrix))


def test_lightgbm_booster(tmp_path) -> None:
    lgb = pytest.importorskip("lightgbm")
    booster = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(X, Y), 3)
    back, manifest = round_trip(booster, tmp_path)
    assert_backend(manifest, "lightgbm.Booster", "lightgbm")
    assert np.array_equal(back.predict(X), booster.predict(X))


def test_torch_tensor_and_module_defined_in_the_notebook(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    namespace = {"__name__": "__main__", "torch": torch}  # as a step runs notebook code
    exec(textwrap.dedent("""
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = torch.nn.Linear(4, 1)
            def forward(self, x):
                return self.linear(x)
        net = Net()
        """), namespace)
    tensor = torch.arange(12.0).reshape(3, 4)
    back, manifest = round_trip(tensor, tmp_path, "t")
    assert_backend(manifest, "torch.Tensor", "torch")
    assert torch.equal(back, tensor)
    back, manifest = round_trip(namespace["net"], tmp_path, "net")
    assert_backend(manifest, "torch.Module", "torch")
    assert type(back).__name__ == "Net" and torch.equal(back(tensor), namespace["net"](tensor))


def test_sklearn_estimator_with_big_arrays_loads_with_copy_on_write_memory_maps(tmp_path) -> None:
    preprocessing = pytest.importorskip("sklearn.preprocessing")
    scaler = preprocessing.StandardScaler().fit(np.random.default_rng(1).random((3, 300_000)))
    back, manifest = round_trip(scaler, tmp_path, "scaler")
    assert_backend(manifest, "sklearn.BaseEstimator", "scikit-learn")
    probe = np.random.default_rng(3).random((2, 300_000))
    assert np.array_equal(back.transform(probe), scaler.transform(probe))
    assert isinstance(back.mean_, np.memmap)  # mapped from the artifact, not read into memory
    back.mean_[0] = -1.0  # writable: copy on write, the artifact is unchanged
    assert load(str(tmp_path / "scaler"), "scaler").mean_[0] == scaler.mean_[0]


def test_sklearn_estimator_of_small_arrays_is_pickled(tmp_path) -> None:
    ensemble = pytest.importorskip("sklearn.ensemble")
    model = ensemble.RandomForestClassifier(n_estimators=3, random_state=0).fit(X, Y)
    back, manifest = round_trip(model, tmp_path)  # a forest: many small arrays, pickles faster
    assert manifest["kale_format"] == "cloudpickle"
    assert np.array_equal(back.predict(X), model.predict(X))


def test_sklearn_class_defined_in_the_notebook_falls_back_to_cloudpickle(tmp_path) -> None:
    base = pytest.importorskip("sklearn.base")
    namespace = {"__name__": "__main__", "BaseEstimator": base.BaseEstimator}
    exec("class Mine(BaseEstimator):\n    def __init__(self, k=3):\n        self.k = k\n", namespace)
    mine = namespace["Mine"](k=5)
    mine.data_ = np.zeros(1 << 18)  # 2 MiB: the joblib backend's, which cannot pickle the class
    back, manifest = round_trip(mine, tmp_path)
    assert manifest["kale_format"] == "cloudpickle" and back.k == 5 and back.data_.shape == (1 << 18,)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I", "F", "I;16"])
def test_pil_images_keep_mode_size_and_pixels(tmp_path, mode) -> None:
    image_module = pytest.importorskip("PIL.Image")
    size = len(image_module.new(mode, (5, 3)).tobytes())
    image = image_module.frombytes(mode, (5, 3), np.random.default_rng(2).bytes(size))
    back, manifest = round_trip(image, tmp_path)
    assert_backend(manifest, "PIL.Image", "pillow")
    assert (back.mode, back.size, back.tobytes()) == (image.mode, image.size, image.tobytes())


def test_keras_model(tmp_path, monkeypatch) -> None:
    if importlib.util.find_spec("tensorflow") is None and importlib.util.find_spec("torch"):
        monkeypatch.setenv("KERAS_BACKEND", os.environ.get("KERAS_BACKEND", "torch"))
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    back, manifest = round_trip(model, tmp_path)
    assert_backend(manifest, "keras.Model", "keras")
    assert np.allclose(back.predict(X, verbose=0), model.predict(X, verbose=0))


def test_other_library_version_is_refused_with_the_fix(tmp_path) -> None:
    xgb = pytest.importorskip("xgboost")
    path = tmp_path / "d"
    save(xgb.DMatrix(X), str(path), "d")
    manifest = json.loads((path / "kale.json").read_text())
    manifest["library_version"] = "0.1.0"
    (path / "kale.json").write_text(json.dumps(manifest))
    with pytest.raises(MarshalError) as info:
        load(str(path), "d")
    assert str(info.value).endswith(f"saved with xgboost 0.1.0, this step has xgboost "
                                    f"{xgb.__version__}; install xgboost==0.1.0 in this step "
                                    "(--packages xgboost==0.1.0, or the same image)")


def test_unknown_backend_is_refused_with_the_fix(tmp_path) -> None:
    path = tmp_path / "v"
    save(1, str(path), "v")
    manifest = json.loads((path / "kale.json").read_text())
    (path / "data.bin").write_bytes(b"x")
    manifest.update(kale_format="backend", backend="nowhere.Thing", library="nowhere",
                    library_version="1.0", files={"data.bin": 1})
    (path / "kale.json").write_text(json.dumps(manifest))
    with pytest.raises(MarshalError, match="no marshal backend 'nowhere.Thing' here: install the "
                                           "package providing the `kale_magics.marshal` entry point"):
        load(str(path), "v")


def test_choosing_a_backend_imports_nothing(tmp_path) -> None:
    code = textwrap.dedent(f"""
        import sys
        from kale_magics.runtime.marshal import save, load
        save({{"a": [1, 2]}}, {str(tmp_path / 'a')!r}, "a")
        load({str(tmp_path / 'a')!r}, "a")
        heavy = {{"xgboost", "lightgbm", "torch", "keras", "sklearn", "PIL", "joblib"}}
        print(sorted(heavy & set(sys.modules)))
        """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_class_names_follow_the_mro_by_top_level_package() -> None:
    class Local(dict):
        pass

    assert backends.class_names(Local)[1:] == ["builtins.dict", "builtins.object"]
    assert backends.distribution_for("xgboost.core.DMatrix") == "xgboost"
    assert backends.distribution_for("sklearn.ensemble._forest.RandomForestClassifier") is None
    assert backends.distribution_for("builtins.int") is None


PLUGIN = {
    "thinglib.py": "class Thing:\n    def __init__(self, v):\n        self.v = v\n",
    "thing_backend.py": textwrap.dedent("""
        import thinglib
        suffix = "thing"
        def save(value, path):
            open(path, "w").write(str(value.v))
        def load(path):
            return thinglib.Thing(int(open(path).read()))
        """),
    "thinglib-1.2.dist-info/METADATA": "Metadata-Version: 2.1\nName: thinglib\nVersion: 1.2\n",
    "thinglib-1.2.dist-info/top_level.txt": "thinglib\n",
    "thing_kale-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: thing-kale\nVersion: 0.1\n",
    "thing_kale-0.1.dist-info/top_level.txt": "thing_backend\n",
    "thing_kale-0.1.dist-info/entry_points.txt": "[kale_magics.marshal]\nthinglib.Thing = thing_backend\n"
                                                 "[other]\nx = y\n",
}


def write_plugin(folder: Path) -> None:
    """A library `thinglib` and a distribution `thing-kale` with a marshal backend for its Thing."""
    for name, text in PLUGIN.items():
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text(text)


def test_entry_point_backend_is_loaded_only_for_its_type(tmp_path) -> None:
    write_plugin(tmp_path)
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(tmp_path)!r})
        import thinglib
        from kale_magics.runtime.marshal import save, load
        save([1], {str(tmp_path / 'plain')!r}, "plain")
        before = "thing_backend" in sys.modules
        save(thinglib.Thing(7), {str(tmp_path / 't')!r}, "t")
        manifest = json.load(open({str(tmp_path / 't' / 'kale.json')!r}))
        print(json.dumps([before, load({str(tmp_path / 't')!r}, "t").v, manifest["backend"],
                          manifest["library"], manifest["library_version"], sorted(manifest["files"])]))
        """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [False, 7, "thinglib.Thing", "thing-kale", "0.1", ["data.thing"]]


def test_a_step_using_the_library_installs_the_backends_distribution(tmp_path) -> None:
    write_plugin(tmp_path)
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(tmp_path)!r})
        from kale_magics.codegen.packages import InstalledPackages, step_packages
        installed = InstalledPackages()
        print(json.dumps([step_packages(["thinglib"], installed)[0],
                          step_packages(["json"], installed)[0]]))
        """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with_thing, without = json.loads(result.stdout)
    assert "thing-kale==0.1" in with_thing and "thinglib==1.2" in with_thing
    assert not any(r.startswith("thing") for r in without)


@pytest.mark.integration
def test_an_unpassable_value_names_the_cell_and_line_that_assigns_it(tmp_path) -> None:
    from kale_magics import api
    from tests.test_kale_tags import tagged

    # a generator bound to the name itself is refused at compile time (test_faithful_more.py)
    path = tagged(tmp_path / "nb.ipynb", [("n = 3\ngen = {'g': (i for i in range(n))}",
                                           ["step:make"]),
                                          ("total = sum(gen['g'])", ["step:use"])])
    status = api.run_local(path, pipeline_root=str(tmp_path / "root"))
    make = status.steps["make"]
    assert status.state == "FAILED" and make.state == "FAILED"
    assert make.error.startswith("step 'make': cannot pass `gen` (dict) to later steps")
    assert "cannot pickle 'generator' object" in make.error
    assert (make.cell, make.line) == ("nb.ipynb, cell 1 (step make)", 2)


def test_backends_module_imports_only_the_standard_library_at_top_level() -> None:
    import ast

    tree = ast.parse(Path(backends.__file__).read_text())
    top = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import)
           for alias in node.names}
    top |= {node.module.split(".")[0] for node in tree.body
            if isinstance(node, ast.ImportFrom) and node.module}
    assert top <= set(sys.stdlib_module_names) | {"__future__"}, top
