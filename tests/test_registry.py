"""Model Registry: ``%%kale step --register``, registration in the step with the real
``model-registry`` client against the stand-in registry (tests/registry_server), and
``%kale models`` / ``kale-magics models``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from kale_magics import api
from kale_magics.errors import AnnotationError, KaleError
from kale_magics.notebook.annotations import cell_line, parse_cell_line, parse_pipeline_line
from kale_magics.runner.registry import registry_arguments
from kale_magics.runtime import registration
from tests.conftest import write_notebook
from tests.registry_server.server import RegistryTestServer

pytest.importorskip("model_registry", reason="the model-registry client is not installed "
                    "(pip install model-registry, or '.[test]')")

TOKEN = "mr-token-5d1a-DO-NOT-LEAK"
WINE = ("%kale pipeline --name wine",
        "%%kale imports\nfrom sklearn.linear_model import LogisticRegression",
        "%%kale step train --register model:wine --register-version v1\n"
        "model = LogisticRegression().fit([[0], [1], [2], [3]], [0, 0, 1, 1])",
        "%%kale step score\naccuracy = model.score([[0], [3]], [0, 1])",
        "%%kale metrics\naccuracy")


@pytest.fixture
def registry():
    with RegistryTestServer(token=TOKEN) as server:
        yield server
        assert not server.violations


@pytest.fixture
def environment(monkeypatch, tmp_path, registry):
    """The registry from the environment, as users set it; no config file."""
    monkeypatch.setenv("MODEL_REGISTRY_URL", registry.url)
    monkeypatch.setenv("MODEL_REGISTRY_TOKEN", TOKEN)
    monkeypatch.setenv("KALE_MAGICS_CONFIG", str(tmp_path / "no-config.json"))
    return registry


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wine")
    return api.compile_notebook(write_notebook(folder / "wine.ipynb", WINE), str(folder / "out"))


# -- the grammar -----------------------------------------------------------------------------

def test_register_options_parse_and_print_back():
    line = ("%%kale step train --register model:wine --register clf --model-format sklearn:1.5 "
            "--register-version v2")
    annotation = parse_cell_line(line)
    assert [(r.variable, r.model, r.format, r.format_version, r.version)
            for r in annotation.registrations] == [("model", "wine", "sklearn", "1.5", "v2"),
                                                   ("clf", "clf", "sklearn", "1.5", "v2")]
    assert parse_cell_line(cell_line(annotation)) == annotation
    settings = parse_pipeline_line("%kale pipeline --model-registry https://mr.kubeflow:8443/")
    assert settings.model_registry == "https://mr.kubeflow:8443"


@pytest.mark.parametrize("line, message", [
    ("step t --register 1x", "--register '1x' is not valid"),
    ("step t --register m:'a b'", "--register 'm:a b' is not valid"),
    ("step t --model-format sklearn", "--model-format needs --register"),
    ("step t --register m --register-version 'v 1'", "--register-version 'v 1' is not valid"),
])
def test_bad_register_options_are_one_line_errors(line, message):
    with pytest.raises(AnnotationError, match=message):
        parse_cell_line(line)


def test_bad_registry_address_is_refused():
    with pytest.raises(AnnotationError, match="--model-registry 'mr:8080' is not valid"):
        parse_pipeline_line("%kale pipeline --model-registry mr:8080")


# -- code generation -------------------------------------------------------------------------

def test_registered_variable_is_a_model_artifact_and_the_step_installs_the_client(compiled):
    dsl = Path(compiled.dsl_path).read_text()
    assert "out_model: Output[Model]" in dsl
    assert "registrations=[{'variable': 'model', 'model': 'wine', 'version': 'v1'}]" in dsl
    assert "kale_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER" in dsl
    assert any(p.startswith("model-registry") for p in compiled.packages["train"])
    ir = Path(compiled.yaml_path).read_text()
    assert "kale_model_registry" in ir and "{{$.pipeline_job_name}}" in ir


def test_the_registry_address_is_a_parameter_and_no_token_reaches_the_ir(tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_REGISTRY_TOKEN", TOKEN)
    path = write_notebook(tmp_path / "nb.ipynb", (
        "%kale pipeline --model-registry http://mr:8080",
        "%%kale step train --register model --model-format onnx\nmodel = 1"))
    compiled = api.compile_notebook(path, str(tmp_path / "out"))
    dsl, ir = Path(compiled.dsl_path).read_text(), Path(compiled.yaml_path).read_text()
    assert "kale_model_registry: str = 'http://mr:8080'" in dsl
    assert TOKEN not in dsl and TOKEN not in ir


def test_registering_a_variable_the_step_does_not_assign_is_a_compile_error(tmp_path):
    path = write_notebook(tmp_path / "nb.ipynb", (
        "%%kale step load\nmodel = 1", "%%kale step train --register model\nscore = model + 1"))
    with pytest.raises(KaleError, match="cell 2 .*: step 'train' registers `model` \\(--register\\), "
                       "which the step never assigns"):
        api.compile_notebook(path, str(tmp_path / "out"))


def test_a_parameter_named_like_a_registration_argument_is_refused(tmp_path):
    path = write_notebook(tmp_path / "nb.ipynb", (
        "%%kale parameters\nkale_run_id = 'x'", "%%kale step train --register m\nm = kale_run_id"))
    with pytest.raises(KaleError, match="parameter `kale_run_id` has the name of an argument"):
        api.compile_notebook(path, str(tmp_path / "out"))


def test_exporting_to_kale_tags_says_registration_is_lost(tmp_path):
    path = write_notebook(tmp_path / "wine.ipynb", WINE)
    _, warnings = api.convert(path, tmp_path / "kale.ipynb", "kale-tags")
    assert any("Kale tags cannot express --register --register-version" in w for w in warnings)


def test_a_local_run_without_the_client_refuses_with_the_pip_line(compiled, monkeypatch):
    from kale_magics.runner import local

    real = local._installed_version
    monkeypatch.setattr(local, "_installed_version",
                        lambda name: None if name == "model-registry" else real(name))
    with pytest.raises(KaleError, match=r"run `pip install model-registry==[0-9.]+` first"):
        local._check_packages(compiled)


# -- the address: notebook, environment, config file ------------------------------------------

def test_registry_arguments_follow_notebook_environment_config(compiled, tmp_path, monkeypatch):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_registry": "http://from-config:8080"}))
    env = {"KALE_MAGICS_CONFIG": str(config)}
    assert registry_arguments(compiled.plan, "local", env)[0] == {
        "kale_model_registry": "http://from-config:8080"}
    env["MODEL_REGISTRY_URL"] = "http://from-env:8080/"
    assert registry_arguments(compiled.plan, "kfp", env)[0] == {
        "kale_model_registry": "http://from-env:8080"}
    no_address = {"KALE_MAGICS_CONFIG": str(tmp_path / "none.json")}
    arguments, messages = registry_arguments(compiled.plan, "local", no_address)
    assert arguments == {"kale_model_registry": ""}
    assert messages == ["model registration skipped: no Model Registry address (model wine); give "
                        "one with %kale pipeline --model-registry URL or $MODEL_REGISTRY_URL"]
    with pytest.raises(KaleError, match="registers model wine, but no Model Registry address"):
        registry_arguments(compiled.plan, "kfp", no_address)


# -- in the step: the real client against the stand-in registry --------------------------------

class _Artifact:
    uri = "minio://mlpipeline/v2/artifacts/wine/run-7/train/out_model"


def test_the_step_registers_with_the_real_client(registry, monkeypatch, capsys):
    from sklearn.linear_model import LogisticRegression

    monkeypatch.setenv("MODEL_REGISTRY_TOKEN", TOKEN)
    model = LogisticRegression()
    found = registration.register(
        "train", [{"variable": "model", "model": "wine"}], {"model": model},
        {"model": _Artifact()}, registry.url, {"id": "run-7-id", "name": "wine-run-7"})
    import sklearn
    assert found == [{"model": "wine", "version": "wine-run-7", "uri": _Artifact.uri,
                      "format": "sklearn"}]
    (artifact,) = registry.artifacts.values()
    assert artifact["uri"] == _Artifact.uri
    assert (artifact["modelFormatName"], artifact["modelFormatVersion"]) == ("sklearn",
                                                                             sklearn.__version__)
    assert (artifact["modelSourceKind"], artifact["modelSourceClass"], artifact["modelSourceId"],
            artifact["modelSourceName"]) == ("kfp", "pipelinerun", "run-7-id", "wine-run-7")
    assert "modelSourceGroup" not in artifact  # no pod namespace here; the empty field is omitted
    assert [v["name"] for v in registry.versions.values()] == ["wine-run-7"]
    assert "registered model 'wine' version 'wine-run-7'" in capsys.readouterr().out
    with pytest.raises(registration.RegistrationError,
                       match="model wine version wine-run-7 exists; name a new version with "
                             "--register-version"):
        registration.register("train", [{"variable": "model", "model": "wine"}], {"model": model},
                              {"model": _Artifact()}, registry.url,
                              {"id": "run-7-id", "name": "wine-run-7"})


def test_a_wrong_token_is_one_clear_error(registry, monkeypatch):
    monkeypatch.setenv("MODEL_REGISTRY_TOKEN", "wrong")
    with pytest.raises(registration.RegistrationError,
                       match=f"cannot reach the Model Registry at {registry.url}: .*401"):
        registration.register("train", [{"variable": "m", "model": "m", "format": "onnx"}],
                              {"m": 1}, {"m": _Artifact()}, registry.url, {"id": "i", "name": "n"})


def test_without_an_address_the_step_says_it_skipped(capsys):
    assert registration.register("train", [{"variable": "m", "model": "wine"}], {"m": 1}, {}, "",
                                 {"id": "i", "name": "n"}) == []
    assert "skipped registering model 'wine': no Model Registry address" in capsys.readouterr().out


@pytest.mark.parametrize("module, expected", [
    ("sklearn.ensemble._forest", "sklearn"), ("xgboost.sklearn", "xgboost"),
    ("torch.nn.modules.linear", "pytorch"), ("onnx.onnx_ml_pb2", "onnx"),
    ("lightgbm.basic", "lightgbm"), ("keras.src.models", "tensorflow")])
def test_the_format_follows_the_module_of_the_type(module, expected):
    kind = type("Model", (), {"__module__": module})
    assert registration.model_format(kind())[0] == expected
    assert module.partition(".")[0] not in ("torch", "onnx") or \
        module.partition(".")[0] not in sys.modules  # told without importing the library


def test_an_unknown_type_asks_for_the_format():
    with pytest.raises(registration.RegistrationError, match="builtins.dict; name it with "
                       "--model-format"):
        registration.model_format({})


def test_the_stand_in_refuses_unknown_fields_and_omits_empty_ones(registry):
    auth = f"Bearer {TOKEN}"
    status, answer = registry.handle("POST", "/api/model_registry/v1alpha3/registered_models", auth,
                                     json.dumps({"name": "m", "colour": "red"}).encode())
    assert (status, answer["message"]) == (400, "json: unknown field 'colour'")
    status, answer = registry.handle("POST", "/api/model_registry/v1alpha3/registered_models", auth,
                                     json.dumps({"name": "m", "description": ""}).encode())
    assert status == 201 and "description" not in answer and answer["state"] == "LIVE"
    assert registry.handle("GET", "/api/model_registry/v1/registered_models", "", b"")[0] == 401


# -- a local run registers; %kale models and kale-magics models list ----------------------------

def test_a_local_run_registers_then_refuses_the_same_version(compiled, environment, tmp_path):
    messages: list[str] = []
    hooks = api.RunHooks(on_message=messages.append)
    status = api.run(compiled, api.LocalTarget(str(tmp_path / "root")), hooks)
    assert status.state == "SUCCEEDED", status
    assert f"registering model wine at {environment.url} (from $MODEL_REGISTRY_URL)" in messages
    (artifact,) = environment.artifacts.values()
    assert artifact["uri"].startswith(str(tmp_path / "root")) and artifact["modelSourceName"]
    assert Path(artifact["uri"]).exists()  # the saved model (KFP Model artifact)
    again = api.run(compiled, api.LocalTarget(str(tmp_path / "root")), hooks)
    assert again.state == "FAILED"
    assert "model wine version v1 exists; name a new version with --register-version" in \
        again.steps["train"].error
    assert again.steps["score"].state != "SUCCEEDED"


def _register(registry, *versions):
    from model_registry import ModelRegistry

    client = ModelRegistry(registry.url, author="test", user_token=TOKEN)
    for version in versions:
        client.register_model("wine", f"file:///models/{version}", model_format_name="sklearn",
                              model_format_version="1.5", version=version, model_source_kind="kfp",
                              model_source_class="pipelinerun", model_source_id=f"id-{version}",
                              model_source_name=f"run-{version}")


def test_kale_models_lists_the_notebooks_versions(environment, tmp_path):
    _register(environment, "v1", "v2")
    path = write_notebook(tmp_path / "wine.ipynb", WINE)
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "kale_magics")
    try:
        with capture_output() as captured:
            shell.run_line_magic("kale", f"models --notebook {path}")
    finally:
        shell.run_line_magic("unload_ext", "kale_magics")
    lines = captured.stdout.splitlines()
    assert lines[0] == f"Model Registry {environment.url}"
    assert lines[1].split() == ["model", "version", "format", "created", "(UTC)", "run", "uri"]
    assert [line.split()[:4] for line in lines[2:]] == [["wine", "v1", "sklearn", "1.5"],
                                                        ["wine", "v2", "sklearn", "1.5"]]
    assert "run-v2 (id-v2)" in lines[3] and lines[3].endswith("file:///models/v2")


def test_cli_models_and_its_errors(environment, tmp_path):
    _register(environment, "v1")
    path = write_notebook(tmp_path / "wine.ipynb", WINE)
    plain = write_notebook(tmp_path / "plain.ipynb", ("%%kale step a\nx = 1",))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kale_magics", "models", *args],
                              capture_output=True, text=True, timeout=120)

    done = cli(str(path))
    assert done.returncode == 0, done.stderr
    assert "wine   v1" in done.stdout
    refused = cli(str(plain))
    assert (refused.returncode, refused.stderr.strip()) == (
        2, "kale-magics: error: plain.ipynb registers no model; add --register VAR[:NAME] to the "
           "%%kale step that makes it")
    down = cli(str(path), "--model-registry", "http://127.0.0.1:9")
    assert down.returncode == 2
    assert down.stderr.startswith("kale-magics: error: cannot reach the Model Registry at "
                                  "http://127.0.0.1:9") and "Traceback" not in down.stderr


# -- on a KFP server (the stand-in, tests/kfp_server): the run is the model's source -----------

from tests.kfp_server.fixtures import kfp_server, token_env  # noqa: E402,F401  (fixtures)


def test_a_kfp_run_registers_with_the_run_as_source(compiled, kfp_server, token_env,  # noqa: F811
                                                    registry, monkeypatch):
    monkeypatch.setenv("MODEL_REGISTRY_TOKEN", TOKEN)
    monkeypatch.delenv("MODEL_REGISTRY_URL", raising=False)
    target = api.KfpTarget(kfp_server.url, watch_options=api.watch_options(interval_s=0.5))
    before = len(kfp_server.store.runs)
    with pytest.raises(KaleError, match="registers model wine, but no Model Registry address"):
        api.run(compiled, target)
    assert len(kfp_server.store.runs) == before  # refused before anything was submitted
    monkeypatch.setenv("MODEL_REGISTRY_URL", registry.url)
    status = api.run(compiled, target)
    assert status.state == "SUCCEEDED", status
    (artifact,) = registry.artifacts.values()
    workflow = kfp_server.store.runs[status.run_id].workflow.name
    assert (artifact["modelSourceId"], artifact["modelSourceName"], artifact["modelSourceGroup"]) \
        == (status.run_id, workflow, "kubeflow")
    assert kfp_server.run_json(status.run_id)["runtime_config"]["parameters"] == {
        "kale_model_registry": registry.url}
    spec = json.dumps(kfp_server.run_json(status.run_id))
    assert TOKEN not in spec
