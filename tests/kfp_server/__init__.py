"""A KFP v2beta1 API test server for the remote-run tests (lives with the tests, not shipped)."""

from tests.kfp_server.server import KfpTestServer

__all__ = ["KfpTestServer"]
