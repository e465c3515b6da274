"""The Docker daemon the container tests use, or a skip saying why there is none."""

from __future__ import annotations

import os
from typing import Any

import pytest


def docker_client_or_skip(image: str) -> Any:
    """A ``docker.DockerClient`` of the daemon ``$DOCKER_HOST`` (or the default socket) names,
    with ``image`` on it (pulled if missing and a registry answers).

    Skips the calling test or module, saying why and what to do, when the ``docker`` package is
    missing, no daemon answers, or the image is neither there nor pullable (no registry is
    reachable here: ``.ci/python-image`` builds ``python:3.11``).
    """
    try:
        import docker
    except ImportError:
        pytest.skip("the docker Python package is not installed: pip install -e '.[test]'")
    where = os.environ.get("DOCKER_HOST") or "the default socket"
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException:
        pytest.skip(f"no Docker daemon reachable at {where}: start Docker, or run .ci/run, "
                    "which starts one")
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        try:
            client.images.pull(image)
        except docker.errors.DockerException:
            client.close()
            pytest.skip(f"image {image} is not on the Docker at {where} and cannot be pulled: "
                        "build it with .ci/python-image")
    return client
