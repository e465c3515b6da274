"""Who may do what in the KFP test server's multi-user mode, as KFP's API server decides it.

In multi-user mode (``healthz`` reports ``multi_user``) every resource lives in a namespace:

- experiments need one: an empty namespace is refused with HTTP 400 ("An experiment cannot
  have an empty namespace in multi-user mode", ``server/experiment_server.go``
  ``canAccessExperiment``); runs and recurring runs take their experiment's;
- a pipeline with an empty namespace is *shared*: anyone may read it, but writing one (a
  pipeline or a version of it) needs RBAC on pipelines in KFP's own namespace, else HTTP 403
  (``server/pipeline_server.go``, ``pipeline_upload_server.go`` ``canUploadVersionedPipeline``);
- any other namespace needs the caller's access to it (a SubjectAccessReview), else HTTP 403.

The test server's one token may use the namespaces in :attr:`Access.namespaces` and writes
shared pipelines only with :attr:`Access.shared_write`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.kfp_server.protocol import HttpError

#: Where KFP itself runs; shared-pipeline writes are authorized there.
KFP_NAMESPACE = "kubeflow"
USER = "user@example.com"


@dataclass
class Access:
    """The multi-user rules of one test server.

    Attributes
    ----------
    multi_user:
        Whether the server runs in multi-user mode.
    namespaces:
        The namespaces the token has access to.
    shared_write:
        Whether the token may create shared pipelines (RBAC in :data:`KFP_NAMESPACE`).
    """

    multi_user: bool = False
    namespaces: frozenset[str] = field(default_factory=lambda: frozenset({"kubeflow-user-example-com"}))
    shared_write: bool = False

    def _denied(self, verb: str, resource: str, namespace: str, what: str) -> HttpError:
        return HttpError(403, f"Failed to {what}: Failed to authorize with API: PermissionDenied: "
                              f"User '{USER}' is not authorized with reason:  (request: "
                              f"&ResourceAttributes{{Namespace:{namespace},Verb:{verb},"
                              f"Group:pipelines.kubeflow.org,Version:v1beta1,Resource:{resource}}})")

    def experiment(self, namespace: str, verb: str, what: str) -> None:
        """May the caller ``verb`` experiments in ``namespace``? HTTP 400/403 when not."""
        if not self.multi_user:
            return
        if not namespace:
            raise HttpError(400, f"Failed to {what}: Failed to authorize with API: Invalid input error: "
                                 "An experiment cannot have an empty namespace in multi-user mode")
        if namespace not in self.namespaces:
            raise self._denied(verb, "experiments", namespace, what)

    def pipeline_write(self, namespace: str, what: str, upload: str = "") -> None:
        """May the caller create a pipeline (or version) in ``namespace`` ("": shared)? 403 when not."""
        if not self.multi_user:
            return
        if (not namespace and not self.shared_write) or (namespace and namespace not in self.namespaces):
            error = self._denied("create", "pipelines", namespace or KFP_NAMESPACE, what)
            raise HttpError(403, str(error), upload) if upload else error

    def pipeline_read(self, namespace: str, what: str) -> None:
        """May the caller read pipelines in ``namespace``? Shared ones are readable by all."""
        if self.multi_user and namespace and namespace not in self.namespaces:
            raise self._denied("list", "pipelines", namespace, what)
