"""``kale-magics image``: a Kubeflow notebook-server image with kale-magics.

The Dockerfile is checked against Kubeflow's image rules; then, where a Docker daemon answers and
has the base image ``python:3.11`` (``.ci/python-image`` builds it), the image is built FROM a
local stand-in of a Kubeflow notebook image (no registry is reachable here) and, inside it, as
UID 1000, kale_magics imports and a ``%%kale`` cell runs in IPython.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from kale_magics import __version__, api
from kale_magics.codegen.image import KUBEFLOW_TAG, base_image, dockerfile
from tests.docker_env import docker_client_or_skip

NETWORK = os.environ.get("KALE_MAGICS_TEST_DOCKER_NETWORK", "host")
STAND_IN = "kale-magics/test-kubeflow-notebook:1"
#: A stand-in for Kubeflow's notebook-server base image (kubeflow/notebooks
#: components/example-notebook-servers/base): user jovyan (UID 1000, group users), NB_UID,
#: NB_PREFIX, HOME, port 8888, and a Python environment the user owns (Kubeflow's conda).
STAND_IN_DOCKERFILE = """\
FROM python:3.11
ENV NB_USER=jovyan NB_UID=1000 NB_PREFIX=/ HOME=/home/jovyan SHELL=/bin/bash
RUN useradd -M -s /bin/bash -N -u ${NB_UID} -g users ${NB_USER} \\
 && mkdir -p ${HOME} && chown ${NB_UID}:users ${HOME} \\
 && python3 -m venv /opt/conda && chown -R ${NB_UID}:users /opt/conda
ENV PATH=/opt/conda/bin:$PATH
EXPOSE 8888
USER ${NB_UID}
WORKDIR ${HOME}
"""
CELL_CHECK = """\
import os, site
from IPython.core.interactiveshell import InteractiveShell
import kale_magics
ip = InteractiveShell.instance()
ip.run_line_magic("load_ext", "kale_magics")
result = ip.run_cell("%%kale step train\\nanswer = 6 * 7\\nprint('answer', answer)")
assert result.success, result
assert ip.user_ns["answer"] == 42
print("uid", os.getuid(), "user site", os.path.isdir(site.getusersitepackages()),
      "module", kale_magics.__file__)
"""


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> api.ImageContext:
    return api.notebook_image(tmp_path_factory.mktemp("image") / "ctx")


def test_short_names_are_kubeflow_images_and_bad_ones_are_refused():
    assert base_image(None) == \
        f"ghcr.io/kubeflow/kubeflow/notebook-servers/jupyter-scipy:{KUBEFLOW_TAG}"
    assert base_image("codeserver-python").endswith(f"/codeserver-python:{KUBEFLOW_TAG}")
    assert base_image("registry.local:5000/team/nb:2@sha256:" + "a" * 64).startswith("registry")
    with pytest.raises(api.KaleError, match="--base 'Bad Image' is not an image reference"):
        base_image("Bad Image")


def test_the_dockerfile_keeps_kubeflows_rules(context):
    text = (Path(context.folder) / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines[:2] == [f"ARG BASE_IMAGE={context.base}", "FROM ${BASE_IMAGE}"]
    users = [line for line in lines if line.startswith("USER ")]
    assert users[-1] == "USER ${NB_UID}" and lines[-1] == "USER ${NB_UID}"
    for index, line in enumerate(lines):  # as root: only COPY and chown, never pip
        if line.startswith("RUN") and "pip" in line:
            assert [u for u in lines[:index] if u.startswith("USER ")][-1] == "USER ${NB_UID}"
            assert line.startswith("RUN PIP_USER=0 python3 -m pip install --no-cache-dir")
        assert "--user" not in line
    wheel = Path(context.folder) / "wheels" / context.wheel
    assert wheel.is_file() and context.wheel.startswith("kale_magics-")
    requirements = (Path(context.folder) / "requirements.txt").read_text().split()
    assert any(r.startswith("ipywidgets") for r in requirements)  # the panel's widgets
    assert any(r.startswith("kfp<") or r.startswith("kfp>") for r in requirements)


def test_the_wheel_holds_every_package_of_the_source(context):
    import zipfile

    root = Path(__file__).resolve().parents[1]
    wanted = {str(p.relative_to(root)) for p in (root / "kale_magics").rglob("*.py")
              if "__pycache__" not in p.parts}
    wanted |= {"kale_widgets/" + str(p.relative_to(root / "widgets"))
               for p in (root / "widgets").rglob("*.py")}
    with zipfile.ZipFile(Path(context.folder) / "wheels" / context.wheel) as wheel:
        missing = wanted - set(wheel.namelist())
    assert not missing, f"setup.cfg's packages leave out {sorted(missing)}"


def test_from_pypi_installs_the_release_by_name(tmp_path):
    context = api.notebook_image(tmp_path / "ctx", "codeserver-python", from_pypi=True)
    assert context.wheel == "" and not any((tmp_path / "ctx" / "wheels").glob("*"))
    assert (tmp_path / "ctx" / "requirements.txt").read_text() == f"kale-magics=={__version__}\n"
    assert "codeserver-python" in (tmp_path / "ctx" / "Dockerfile").read_text()
    assert "wheels/" not in dockerfile(context.base, "")


def test_cli_image_writes_the_context_and_says_how_to_build(tmp_path):
    done = subprocess.run([sys.executable, "-m", "kale_magics", "image", "--from-pypi", "-o",
                           str(tmp_path / "ctx")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"wrote {tmp_path / 'ctx'}/Dockerfile (FROM ghcr.io/kubeflow/kubeflow/notebook-servers/"
        f"jupyter-scipy:{KUBEFLOW_TAG}, with kale-magics from PyPI)",
        f"build it: docker build -t kale-notebook:{__version__} "
        f"{tmp_path / 'ctx'}"]
    bad = subprocess.run([sys.executable, "-m", "kale_magics", "image", "--base", "x y"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


# -- built with Docker, run as UID 1000 ---------------------------------------------------------

@pytest.fixture(scope="module")
def docker_client():
    client = docker_client_or_skip("python:3.11")
    yield client
    client.close()


def _build(client, folder: str | None, tag: str, dockerfile_text: str | None = None, **kwargs):
    import docker

    try:
        if dockerfile_text is not None:  # a context of one Dockerfile
            data = io.BytesIO()
            with tarfile.open(fileobj=data, mode="w") as tar:
                info = tarfile.TarInfo("Dockerfile")
                info.size = len(dockerfile_text.encode())
                tar.addfile(info, io.BytesIO(dockerfile_text.encode()))
            data.seek(0)
            return client.images.build(fileobj=data, custom_context=True, tag=tag, rm=True,
                                       network_mode=NETWORK, **kwargs)[0]
        return client.images.build(path=folder, tag=tag, rm=True, network_mode=NETWORK,
                                   **kwargs)[0]
    except docker.errors.BuildError as error:
        log = "".join(str(entry.get("stream") or entry.get("error") or "")
                      for entry in error.build_log)
        pytest.fail(f"building {tag} failed: {error}\n{log[-3000:]}")


def test_the_image_builds_on_a_kubeflow_base_and_runs_a_kale_cell_as_uid_1000(docker_client,
                                                                              context):
    try:
        docker_client.images.get(STAND_IN)
    except Exception:  # noqa: BLE001 - docker.errors.ImageNotFound
        _build(docker_client, None, STAND_IN, STAND_IN_DOCKERFILE)
    image = _build(docker_client, context.folder, "kale-magics/test-kale-notebook:latest",
                   buildargs={"BASE_IMAGE": STAND_IN})
    assert image.attrs["Config"]["User"] == "1000"
    assert "8888/tcp" in image.attrs["Config"]["ExposedPorts"]
    output = docker_client.containers.run(image.id, ["python3", "-c", CELL_CHECK], remove=True,
                                          network_mode="none", stderr=True).decode()
    assert "answer 42" in output
    assert "uid 1000 user site False module /opt/conda/lib/python3.11/site-packages/" in output
