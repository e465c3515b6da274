"""Pytest fixtures for the KFP test server; import them into a test module to use them."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.kfp_server.server import KfpTestServer

#: The bearer token the shared server requires; tests grep output for it.
SECRET_TOKEN = "kfp-secret-token-4f9c1e-DO-NOT-LEAK"


@pytest.fixture(scope="session")
def kfp_server(request: pytest.FixtureRequest) -> Iterator[KfpTestServer]:
    """One KFP test server for the session, requiring :data:`SECRET_TOKEN`; stopped at the end."""
    server = KfpTestServer(token=SECRET_TOKEN).start()
    request.addfinalizer(server.stop)
    yield server


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials from the environment (as users should pass them), no user config file."""
    monkeypatch.setenv("KF_PIPELINES_TOKEN", SECRET_TOKEN)
    monkeypatch.setenv("KALE_MAGICS_CONFIG", str(tmp_path / "no-config.json"))
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
