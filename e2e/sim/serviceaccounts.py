"""The service account controller: every active namespace has a `default` ServiceAccount
(created again if deleted), as kube-controller-manager's does."""

from __future__ import annotations

from e2e.sim.controllers import Controller
from e2e.sim.core import NAMESPACES, SERVICEACCOUNTS
from e2e.sim.errors import ApiError

__all__ = ["ServiceAccountController"]

DEFAULT_ACCOUNT = "default"


class ServiceAccountController(Controller):
    """Creates the `default` ServiceAccount in namespaces that lack it."""

    name = "serviceaccount-controller"
    resources = (NAMESPACES.key, SERVICEACCOUNTS.key)

    def reconcile(self) -> None:
        namespaces, _ = self.rest.list(
            NAMESPACES, None, lambda ns: not ns["metadata"].get("deletionTimestamp"))
        for ns in namespaces:
            name = ns["metadata"]["name"]
            if self.rest.store.find(SERVICEACCOUNTS.key, name, DEFAULT_ACCOUNT) is not None:
                continue
            try:
                self.rest.create(SERVICEACCOUNTS, name, {"metadata": {"name": DEFAULT_ACCOUNT}})
            except ApiError as e:
                # Raced with a client, or the namespace began terminating meanwhile.
                if e.reason not in ("AlreadyExists", "Forbidden", "NotFound"):
                    raise
