"""Pytest fixtures for the KFP test server; import them into a test module to use them."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.kfp_server.server import KfpTestServer

#: The bearer token the shared server requires; tests grep output for it.
SECRET_TOKEN = "kfp-secret-token-4f9c1e-DO-NOT-LEAK"
_SERVER = pytest.StashKey[KfpTestServer]()


@pytest.fixture
def kfp_server(request: pytest.FixtureRequest) -> Iterator[KfpTestServer]:
    """The session's strict KFP test server, requiring :data:`SECRET_TOKEN`.

    One server for the whole session (kept in pytest's config stash, stopped at the end);
    each test using it fails when the server answered that test outside KFP's API spec.
    """
    config = request.config
    if _SERVER not in config.stash:
        config.stash[_SERVER] = KfpTestServer(token=SECRET_TOKEN, strict=True).start()
        config.add_cleanup(config.stash[_SERVER].stop)
    server = config.stash[_SERVER]
    seen = len(server.violations)
    yield server
    new = server.violations[seen:]
    assert not new, "the KFP test server answered outside KFP's API spec:\n" + "\n".join(new)


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials from the environment (as users should pass them), no user config file."""
    monkeypatch.setenv("KF_PIPELINES_TOKEN", SECRET_TOKEN)
    monkeypatch.setenv("KALE_MAGICS_CONFIG", str(tmp_path / "no-config.json"))
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    monkeypatch.delenv("KF_PIPELINES_NAMESPACE", raising=False)
