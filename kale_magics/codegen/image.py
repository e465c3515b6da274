"""A Kubeflow notebook-server image with kale-magics: its Dockerfile and build context.

Kubeflow Notebooks run images of ``ghcr.io/kubeflow/kubeflow/notebook-servers/`` (``jupyter-scipy``,
``jupyter-pytorch``, ``codeserver-python``, ...): Jupyter (or code-server) as user ``jovyan``
(``$NB_UID`` 1000, group ``users``) on port 8888 under ``$NB_PREFIX``, with Python in a
conda environment the user owns (kubeflow/notebooks ``components/example-notebook-servers/
README.md``). The image written here extends one and keeps its rules: ``USER root`` only to put
files in place, every ``pip install`` as ``$NB_UID`` into the image's own Python (``PIP_USER=0``:
never a ``--user`` install, which the user's home volume would hide), and ``$NB_UID`` last.

The context holds ``Dockerfile``, ``requirements.txt`` (kale-magics' dependencies, the widget
panel's included, installed in their own layer so a rebuild with a new wheel reuses them) and
``wheels/`` with a wheel of this kale-magics built from its source, or no wheel and the PyPI name
``kale-magics==VERSION`` when there is no source to build from.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from kale_magics import __version__
from kale_magics.atomic import write_text_atomic
from kale_magics.errors import KaleError

#: Where Kubeflow's notebook-server images are, and the release whose tag the default uses.
KUBEFLOW_IMAGES = "ghcr.io/kubeflow/kubeflow/notebook-servers"
KUBEFLOW_TAG = "v1.10.0"
DEFAULT_BASE = "jupyter-scipy"
#: Short names ``--base`` takes for Kubeflow's images (any other value is an image reference).
KUBEFLOW_NAMES = ("jupyter-scipy", "jupyter-pytorch", "jupyter-pytorch-full",
                  "jupyter-pytorch-cuda", "jupyter-pytorch-cuda-full", "jupyter-tensorflow",
                  "jupyter-tensorflow-full", "jupyter-tensorflow-cuda",
                  "jupyter-tensorflow-cuda-full", "jupyter", "codeserver-python", "codeserver")
#: An image reference as ``docker build`` takes it (registry/path:tag or @digest).
IMAGE_REFERENCE = re.compile(r"[a-z0-9]+([._/:-][a-zA-Z0-9]+)*(:[\w][\w.-]{0,127})?(@sha256:[0-9a-f]{64})?")
#: Where the context's files go in the image.
CONTEXT_DIR = "/opt/kale-magics"
DISTRIBUTION = "kale-magics"


@dataclass(frozen=True)
class ImageContext:
    """What :func:`write_image_context` wrote.

    Attributes
    ----------
    folder:
        The build context (``Dockerfile``, ``requirements.txt``, ``wheels/``).
    base:
        The image it extends, e.g. ``ghcr.io/kubeflow/kubeflow/notebook-servers/jupyter-scipy:v1.10.0``.
    wheel:
        The wheel's file name in ``wheels/``, or "" when kale-magics comes from PyPI.
    """

    folder: str
    base: str
    wheel: str

    @property
    def build_command(self) -> str:
        """The ``docker build`` line for this context."""
        return f"docker build -t kale-notebook:{__version__} {self.folder}"


def base_image(base: str | None) -> str:
    """The full reference of ``--base``: a short Kubeflow name (``codeserver-python``) becomes
    ``ghcr.io/kubeflow/kubeflow/notebook-servers/codeserver-python:v1.10.0``; None is
    ``jupyter-scipy``; anything else is taken as an image reference.

    Raises
    ------
    KaleError
        Not an image reference (spaces, upper case in the name, ...).
    """
    name = (base or DEFAULT_BASE).strip()
    if name in KUBEFLOW_NAMES:
        return f"{KUBEFLOW_IMAGES}/{name}:{KUBEFLOW_TAG}"
    if not IMAGE_REFERENCE.fullmatch(name):
        raise KaleError(f"--base {name!r} is not an image reference; give one (e.g. "
                        f"{KUBEFLOW_IMAGES}/jupyter-scipy:{KUBEFLOW_TAG}) or a Kubeflow image "
                        f"name: {', '.join(KUBEFLOW_NAMES[:3])}, codeserver-python, ...")
    return name


def requirements(from_pypi: bool) -> list[str]:
    """What the image installs before kale-magics itself: its dependencies (the deploy panel's,
    ipywidgets, included) as this installation declares them, or ``kale-magics==VERSION`` from
    PyPI, which brings them."""
    if from_pypi:
        return [f"{DISTRIBUTION}=={__version__}"]
    declared = metadata.requires(DISTRIBUTION) or []
    return sorted(r for r in declared if "extra ==" not in r)


def dockerfile(base: str, wheel: str) -> str:
    """The Dockerfile text; ``wheel`` is the wheel's file name, or "" to install from PyPI."""
    lines = [
        f"# A Kubeflow notebook-server image with kale-magics {__version__}, written by",
        "# `kale-magics image`. Build: docker build -t kale-notebook .   (or --build-arg",
        "# BASE_IMAGE=... for another Kubeflow image). Kubeflow's rules: root only to put files",
        "# in place, pip as $NB_UID into the image's own Python (never --user), $NB_UID last.",
        f"ARG BASE_IMAGE={base}",
        "FROM ${BASE_IMAGE}",
        "",
        "USER root",
        f"COPY requirements.txt {CONTEXT_DIR}/requirements.txt",
        f"RUN chown -R ${{NB_UID}}:users {CONTEXT_DIR}",
        "USER ${NB_UID}",
        f"RUN PIP_USER=0 python3 -m pip install --no-cache-dir -r {CONTEXT_DIR}/requirements.txt",
    ]
    if wheel:
        lines += [
            "",
            "USER root",
            f"COPY wheels/{wheel} {CONTEXT_DIR}/wheels/{wheel}",
            f"RUN chown -R ${{NB_UID}}:users {CONTEXT_DIR}",
            "USER ${NB_UID}",
            f"RUN PIP_USER=0 python3 -m pip install --no-cache-dir --no-deps "
            f"{CONTEXT_DIR}/wheels/{wheel}",
        ]
    lines += ["",
              "# fail the build, not the notebook, if the magics or the panel do not import",
              'RUN python3 -c "import kale_magics, kale_widgets, kale_magics.magics"',
              "USER ${NB_UID}", ""]
    return "\n".join(lines)


def source_root() -> Path | None:
    """The source checkout this kale-magics runs from (with ``setup.cfg``), or None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "setup.cfg").is_file() and (root / "kale_magics").is_dir() else None


def build_wheel(root: Path, folder: Path) -> str:
    """Build kale-magics' wheel from ``root`` into ``folder`` with pip; return its file name.

    Tries the environment's own setuptools first (no download), then pip's isolated build.

    Raises
    ------
    KaleError
        pip could not build it; the message has pip's last line.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        for isolation in (["--no-build-isolation"], []):
            done = subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation,
                 "-w", scratch, str(root)], capture_output=True, text=True, timeout=600)
            built = sorted(Path(scratch).glob("kale_magics-*.whl"))
            if done.returncode == 0 and built:
                shutil.copy2(built[-1], folder / built[-1].name)
                return built[-1].name
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    raise KaleError(f"cannot build the kale-magics wheel from {root}: {last}; or pass "
                    "--from-pypi to install kale-magics from PyPI in the image")


def write_image_context(output_dir: str | os.PathLike[str], base: str | None = None,
                        from_pypi: bool = False) -> ImageContext:
    """Write the build context of a Kubeflow notebook image with kale-magics into ``output_dir``.

    Parameters
    ----------
    output_dir:
        The folder to write (made if missing; its ``Dockerfile``, ``requirements.txt`` and
        ``wheels/`` are replaced).
    base:
        The image to extend: a Kubeflow name (:data:`KUBEFLOW_NAMES`, default ``jupyter-scipy``;
        ``codeserver-python`` for VS Code) or any image reference.
    from_pypi:
        Install kale-magics from PyPI (``kale-magics==VERSION``) instead of a wheel built from
        this source; the default when there is no source checkout.

    Raises
    ------
    KaleError
        A bad ``base``, or the wheel cannot be built.
    """
    image = base_image(base)
    folder = Path(output_dir)
    root = None if from_pypi else source_root()
    wheels = folder / "wheels"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if wheels.is_dir():
            shutil.rmtree(wheels)
        wheel = build_wheel(root, wheels) if root else ""
        write_text_atomic(folder / "requirements.txt", "\n".join(requirements(not root)) + "\n")
        write_text_atomic(folder / "Dockerfile", dockerfile(image, wheel))
    except OSError as error:
        raise KaleError(f"cannot write the image's build context to {folder}: "
                        f"{error.strerror or error}; choose another folder with -o DIR") from None
    return ImageContext(str(folder), image, wheel)
