"""Per-step execution settings: grammar, compiled IR (compared as data), packages, local runs.

Set KALE_UPDATE_GOLDEN=1 to rewrite tests/golden/settings.yaml after an intended change.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kale_magics import api
from kale_magics.errors import AnnotationError, RunError
from kale_magics.notebook.annotations import parse_cell_line, parse_pipeline_line
from tests.test_codegen import normalise

GOLDEN = Path(__file__).parent / "golden" / "settings.yaml"

OPTIONS = {
    "cpu": "--cpu 500m --cpu-limit 2",
    "memory": "--memory 4Gi --memory-limit 8Gi",
    "gpu": "--gpu 2",
    "accelerator": "--gpu 1 --accelerator nvidia.com/a100",
    "image": "--image python:3.12-slim",
    "retries": "--retries 3 --backoff 90s",
    "timeout": "--timeout 2h",
    "nocache": "--no-cache",
    "env": "--env MODE=fast --env 'GREETING=hello world'",
    "secret": "--secret db-creds:password:DB_PASSWORD",
    "volume": "--volume data:/data",
    "nodesel": "--node-selector pool=gpu",
    "toleration": "--toleration gpu=true:NoSchedule --toleration spot:NoExecute",
    "packages": "--packages requests==2.31.0 numpy==1.26.4",
}


def settings_notebook(notebook) -> Path:
    cells = ["%kale pipeline --name settings --memory 1Gi --env SHARED=1 "
             "--pip-index-url https://mirror.example/simple --pip-trusted-host mirror.example",
             "%%kale imports\nimport json\nimport numpy as np"]
    cells += [f"%%kale step {name} {options}\n{name}_out = 1" for name, options in OPTIONS.items()]
    cells.append("%%kale step combined " + " ".join(OPTIONS.values()) + " --env SHARED=2\nc = 1")
    return notebook(*cells, name="settings")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from tests.conftest import write_notebook

    folder = tmp_path_factory.mktemp("settings")
    path = settings_notebook(lambda *cells, name: write_notebook(folder / f"{name}.ipynb", cells))
    result = api.compile_notebook(path, str(folder / "out"))
    with open(result.yaml_path, encoding="utf-8") as f:
        documents = list(yaml.safe_load_all(f))
    return result, documents


def executor(documents: list[dict[str, Any]], step: str) -> dict[str, Any]:
    return documents[0]["deploymentSpec"]["executors"][f"exec-{step}"]["container"]


def kubernetes(documents: list[dict[str, Any]], step: str) -> dict[str, Any]:
    return documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"][f"exec-{step}"]


def test_golden_ir_of_every_option(compiled) -> None:
    _, documents = compiled
    got = [normalise(documents[0]), documents[1]]
    if os.environ.get("KALE_UPDATE_GOLDEN"):
        GOLDEN.write_text(yaml.safe_dump_all(got, sort_keys=True))
    assert GOLDEN.is_file(), f"{GOLDEN} is missing: write it with KALE_UPDATE_GOLDEN=1"
    assert got == list(yaml.safe_load_all(GOLDEN.read_text()))


def test_resources_where_kfp_expects_them(compiled) -> None:
    _, docs = compiled
    assert executor(docs, "cpu")["resources"]["resourceCpuRequest"] == "500m"
    assert executor(docs, "cpu")["resources"]["resourceCpuLimit"] == "2"
    assert executor(docs, "memory")["resources"]["resourceMemoryRequest"] == "4Gi"
    assert executor(docs, "memory")["resources"]["resourceMemoryLimit"] == "8Gi"
    accelerator = executor(docs, "gpu")["resources"]["accelerator"]
    assert (accelerator["resourceType"], accelerator["resourceCount"]) == ("nvidia.com/gpu", "2")
    assert executor(docs, "accelerator")["resources"]["accelerator"]["resourceType"] == "nvidia.com/a100"
    # the pipeline default (--memory 1Gi) applies where the step sets none
    assert executor(docs, "cpu")["resources"]["resourceMemoryRequest"] == "1Gi"


def test_image_retries_cache_env(compiled) -> None:
    _, docs = compiled
    tasks = docs[0]["root"]["dag"]["tasks"]
    assert executor(docs, "image")["image"] == "python:3.12-slim"
    assert executor(docs, "cpu")["image"] == f"python:{sys.version_info.major}.{sys.version_info.minor}"
    assert tasks["retries"]["retryPolicy"]["maxRetryCount"] == 3
    assert tasks["retries"]["retryPolicy"]["backoffDuration"] == "90s"
    assert tasks["nocache"]["cachingOptions"] == {}  # KFP writes enableCache only when true
    assert tasks["cpu"]["cachingOptions"] == {"enableCache": True}
    env = {e["name"]: e["value"] for e in executor(docs, "env")["env"]}
    assert env == {"SHARED": "1", "MODE": "fast", "GREETING": "hello world"}
    combined = {e["name"]: e["value"] for e in executor(docs, "combined")["env"]}
    assert combined["SHARED"] == "2"  # the step's own value wins over the pipeline default


def test_kubernetes_settings_in_the_platform_spec(compiled) -> None:
    _, docs = compiled
    assert kubernetes(docs, "timeout")["activeDeadlineSeconds"] == "7200"
    assert kubernetes(docs, "secret")["secretAsEnv"][0]["keyToEnv"] == [
        {"envVar": "DB_PASSWORD", "secretKey": "password"}]
    assert kubernetes(docs, "volume")["pvcMount"][0]["mountPath"] == "/data"
    assert kubernetes(docs, "nodesel")["nodeSelector"]["labels"] == {"pool": "gpu"}
    tolerations = kubernetes(docs, "toleration")["tolerations"]
    assert tolerations == [{"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
                           {"key": "spot", "operator": "Exists", "effect": "NoExecute"}]
    assert set(kubernetes(docs, "combined")) == {"activeDeadlineSeconds", "secretAsEnv", "pvcMount",
                                                  "nodeSelector", "tolerations"}


def test_packages_index_and_overrides(compiled) -> None:
    result, docs = compiled
    install = executor(docs, "packages")["command"][2]
    assert "'requests==2.31.0'" in install and "'numpy==1.26.4'" in install
    assert "--index-url https://mirror.example/simple" in install
    assert "--trusted-host mirror.example" in install
    assert result.packages["packages"] == ["cloudpickle==" + _version("cloudpickle"),
                                           "dill==" + _version("dill"), "numpy==1.26.4",
                                           "requests==2.31.0"]


def _version(name: str) -> str:
    from importlib import metadata

    return metadata.version(name)


def test_pinned_packages_from_imports(notebook, tmp_path) -> None:
    path = notebook("%%kale imports\nimport os, random\nimport numpy as np",
                    "%%kale step a\nimport pandas as pd\nx = 1",
                    "%%kale step b\nimport sklearn.ensemble as ens\nfrom collections import Counter\ny = x",
                    name="imports")
    result = api.compile_notebook(path, str(tmp_path / "out"))
    names = {step: [r.split("==")[0] for r in reqs] for step, reqs in result.packages.items()}
    # b receives x from a, so it also installs what a installs (to load what a may pass)
    assert names == {"a": ["cloudpickle", "dill", "numpy", "pandas", "pyarrow"],
                     "b": ["cloudpickle", "dill", "numpy", "pandas", "pyarrow", "scikit-learn"]}
    assert all("==" in r for reqs in result.packages.values() for r in reqs)
    assert "scikit-learn==" + _version("scikit-learn") in result.packages["b"]


def test_unknown_import_is_a_compile_warning(notebook, tmp_path) -> None:
    path = notebook("%%kale step a\nimport surely_not_installed_mod\nx = 1", name="unknown")
    result = api.compile_notebook(path, str(tmp_path / "out"))
    assert result.warnings == ("no installed package provides module 'surely_not_installed_mod'; "
                               "install it here, or name its package with --packages",)


@pytest.mark.parametrize("line, fragment", [
    ("--cpu 2x", "--cpu '2x' is not valid; for example --cpu 2 (or 500m)"),
    ("--cpu-limit -1", "--cpu-limit '-1' is not valid"),
    ("--memory 4GB", "--memory '4GB' is not valid; for example --memory 4Gi (or 512Mi)"),
    ("--memory-limit lots", "--memory-limit 'lots' is not valid"),
    ("--gpu one", "--gpu 'one' is not valid; for example --gpu 1"),
    ("--retries -2", "--retries '-2' is not valid"),
    ("--backoff 30", "--backoff '30' is not valid; for example --backoff 30m (or 90s, 2h)"),
    ("--timeout 2d", "--timeout '2d' is not valid"),
    ("--env 1X=2", "--env '1X=2' is not valid; for example --env LOG_LEVEL=debug"),
    ("--env NOVALUE", "--env 'NOVALUE' is not valid"),
    ("--secret onlyname", "for example --secret db-creds:password:DB_PASSWORD"),
    ("--volume data", "for example --volume data:/data"),
    ("--volume data:relative", "a PVC name, then an absolute path"),
    ("--node-selector pool", "for example --node-selector"),
    ("--toleration gpu=true:Sometimes", "the effect is one of NoSchedule, PreferNoSchedule, NoExecute"),
    ("--packages 'not a requirement!'", "--packages 'not a requirement!' is not valid"),
])
def test_bad_values_name_the_option_and_an_example(line, fragment) -> None:
    with pytest.raises(AnnotationError) as info:
        parse_cell_line(f"%%kale step s {line}")
    assert fragment in str(info.value)
    with pytest.raises(AnnotationError):
        parse_pipeline_line(f"%kale pipeline {line}")


def test_local_notice_lists_what_kfp_local_ignores(compiled) -> None:
    result, _ = compiled
    notice = api.LocalTarget().notices(result)[0]
    assert notice.startswith("ignored locally")
    for fragment in ("cpu --cpu 500m --cpu-limit 2 --memory 1Gi", "gpu --memory 1Gi --gpu 2",
                     "timeout --memory 1Gi --timeout 7200s", "--volume data:/data",
                     "--secret db-creds:password:DB_PASSWORD", "--node-selector pool=gpu",
                     "--toleration spot:NoExecute", "image --memory 1Gi --image python:3.12-slim"):
        assert fragment in notice
    assert "retries" not in notice.replace("retries --memory 1Gi", "")  # retries apply locally
    assert any("numpy==1.26.4" in n and "the local run uses" in n for n in api.LocalTarget().notices(result))


def test_missing_package_fails_before_running(notebook, tmp_path) -> None:
    path = notebook("%%kale step a --packages surely-not-installed-dist==1.0\nx = 1", name="missing")
    with pytest.raises(RunError, match=r"\(a: surely-not-installed-dist==1.0\); a local run never "
                                       r"installs anything: run `pip install surely-not-installed-dist==1.0`"):
        api.run_local(path, output_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out" / "local_runs").exists()


def test_missing_module_fails_before_running(notebook, tmp_path) -> None:
    path = notebook("%%kale imports\nimport json", "%%kale step a\nx = 1",
                    "%%kale step b\nimport nonexistent_pkg_xyz.sub as sub\ny = x", name="nomod")
    with pytest.raises(RunError, match=r"^steps import modules that are not installed here "
                                       r"\(b: nonexistent_pkg_xyz\); a local run never installs "
                                       r"anything: run `pip install nonexistent_pkg_xyz` first.*"
                                       r"--packages"):
        api.run_local(path, output_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out" / "local_runs").exists()  # no step started


@pytest.mark.integration
def test_imports_that_may_not_run_or_are_beside_the_notebook_do_not_refuse(notebook, tmp_path) -> None:
    (tmp_path / "helper_beside.py").write_text("VALUE = 41\n")
    path = notebook("%%kale step a\nimport helper_beside\ntry:\n    import nonexistent_pkg_xyz\n"
                    "except ImportError:\n    nonexistent_pkg_xyz = None\n"
                    "def later():\n    import other_missing_pkg_xyz\n"
                    "x = helper_beside.VALUE + 1",
                    "%%kale step b\nprint(x, nonexistent_pkg_xyz)", name="maybe")
    status = api.run_local(path, output_dir=str(tmp_path / "out"))
    assert status.state == "SUCCEEDED", status.error
    assert "42 None" in "\n".join(status.steps["b"].log)


@pytest.mark.integration
def test_settings_apply_locally_env_and_retries(notebook, tmp_path) -> None:
    marker = tmp_path / "attempts"
    path = notebook("%kale pipeline --env SHARED=yes",
                    f"%%kale step flaky --retries 2 --memory 1Gi --env MODE=fast\n"
                    f"import os\nwith open({str(marker)!r}, 'a') as f:\n    f.write('x')\n"
                    f"if len(open({str(marker)!r}).read()) < 2:\n    raise RuntimeError('first try fails')\n"
                    "mode = os.environ['MODE'] + os.environ['SHARED']",
                    "%%kale step use\nprint(mode)", name="flaky")
    status = api.run_local(path, output_dir=str(tmp_path / "out"))
    assert status.state == "SUCCEEDED", status.error
    assert marker.read_text() == "xx"  # kfp.local retried the step once
    assert "fastyes" in "\n".join(status.steps["use"].log)
    assert status.notices == ["ignored locally (kfp.local runs every step here, in this Python): "
                              "flaky --memory 1Gi"]


def test_remote_package_keeps_platform_spec_and_step_caching(compiled) -> None:
    from kale_magics.runner.remote import package

    result, _ = compiled
    text, version = package(result, None)
    documents = list(yaml.safe_load_all(text))
    assert len(documents) == 2 and "kubernetes" in documents[1]["platforms"]
    tasks = documents[0]["root"]["dag"]["tasks"]
    assert tasks["nocache"]["cachingOptions"] == {} and tasks["cpu"]["cachingOptions"]["enableCache"]
    off, off_version = package(result, False)
    assert all(not t["cachingOptions"]["enableCache"]
               for t in list(yaml.safe_load_all(off))[0]["root"]["dag"]["tasks"].values())
    assert off_version != version and package(result, None)[1] == version


def test_ir_is_what_the_kfp_compiler_writes(compiled, tmp_path) -> None:
    """Our libyaml writer gives the documents and header of ``kfp.compiler.Compiler().compile``."""
    import importlib.util

    from kfp import compiler

    result, documents = compiled
    spec = importlib.util.spec_from_file_location("settings_dsl", result.dsl_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reference = tmp_path / "kfp.yaml"
    compiler.Compiler().compile(module.pipeline, str(reference))
    kfp_text = reference.read_text(encoding="utf-8")
    assert list(yaml.safe_load_all(kfp_text)) == documents and len(documents) == 2
    ours = Path(result.yaml_path).read_text(encoding="utf-8")
    header = [line for line in kfp_text.splitlines() if line.startswith("#")]
    assert header and [line for line in ours.splitlines() if line.startswith("#")] == header


def test_installed_packages_match_importlib_and_are_reused(tmp_path, monkeypatch) -> None:
    from importlib import metadata

    from kale_magics.codegen.packages import installed_packages

    snapshot = installed_packages()
    expected = metadata.packages_distributions()
    assert {m: snapshot.owner(m) for m in expected} == {m: d[0] for m, d in expected.items()}
    assert snapshot.owner("no_such_module_here") is None
    assert installed_packages() is snapshot
    monkeypatch.syspath_prepend(str(tmp_path))  # what installing into a new folder looks like
    assert installed_packages() is not snapshot
    again = installed_packages()
    (tmp_path / "new_dist-1.0.dist-info").mkdir()  # an install changes the folder's mtime
    stat = tmp_path.stat()
    os.utime(tmp_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # past the clock's tick
    assert installed_packages() is not again
