"""The thin layer that talks to the API server.

Creates are idempotent (409 means the object is already there: it is adopted), deletes and reads
of missing objects are no-ops (404), and objects travel as plain dicts: the builders' manifests
go out as they are, and responses are read as raw JSON, which is much cheaper than the client's
model classes.
"""

import json
import logging
from collections.abc import Callable
from typing import Any

import kubernetes
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi, NetworkingV1Api
from kubernetes.client.exceptions import ApiException

from . import names

logger = logging.getLogger(__name__)
Obj = dict[str, Any]


class Kube:
    def __init__(self, client: ApiClient | None = None) -> None:
        self.client = client or ApiClient()
        self.core = CoreV1Api(self.client)
        self.net = NetworkingV1Api(self.client)
        self.custom = CustomObjectsApi(self.client)

    # Per kind: (create, read, delete, replace); namespaced calls take the namespace first.
    def _calls(self, kind: str) -> tuple[Callable[..., Any], ...]:
        c, n = self.core, self.net
        table: dict[str, tuple[Callable[..., Any], ...]] = {
            "Namespace": (
                c.create_namespace,
                c.read_namespace,
                c.delete_namespace,
                c.replace_namespace,
            ),
            "Pod": (
                c.create_namespaced_pod,
                c.read_namespaced_pod,
                c.delete_namespaced_pod,
                c.replace_namespaced_pod,
            ),
            "Secret": (
                c.create_namespaced_secret,
                c.read_namespaced_secret,
                c.delete_namespaced_secret,
                c.replace_namespaced_secret,
            ),
            "Service": (
                c.create_namespaced_service,
                c.read_namespaced_service,
                c.delete_namespaced_service,
                c.replace_namespaced_service,
            ),
            "NetworkPolicy": (
                n.create_namespaced_network_policy,
                n.read_namespaced_network_policy,
                n.delete_namespaced_network_policy,
                n.replace_namespaced_network_policy,
            ),
        }
        return table[kind]

    @staticmethod
    def _args(kind: str, namespace: str | None) -> tuple[str, ...]:
        return () if kind == "Namespace" or namespace is None else (namespace,)

    def create(self, manifest: Obj) -> Obj | None:
        """Creates the object; returns it, or None when it already existed (409)."""
        kind, meta = manifest["kind"], manifest["metadata"]
        create = self._calls(kind)[0]
        try:
            response = create(
                *self._args(kind, meta.get("namespace")), manifest, _preload_content=False
            )
        except ApiException as e:
            if e.status == 409:
                return None
            raise
        logger.info("Created %s %s", kind.lower(), _ref(meta))
        return _json(response)

    def ensure(self, manifest: Obj) -> Obj:
        """Creates the object or, if it exists, returns the existing one (create-or-adopt)."""
        created = self.create(manifest)
        if created is not None:
            return created
        meta = manifest["metadata"]
        existing = self.get(manifest["kind"], meta.get("namespace"), meta["name"])
        if existing is None:  # deleted between our 409 and our read: try once more
            return self.ensure(manifest)
        return existing

    def get(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        read = self._calls(kind)[1]
        try:
            return _json(read(name, *self._args(kind, namespace), _preload_content=False))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def replace(self, manifest: Obj) -> Obj:
        kind, meta = manifest["kind"], manifest["metadata"]
        replace = self._calls(kind)[3]
        return _json(
            replace(
                meta["name"],
                *self._args(kind, meta.get("namespace")),
                manifest,
                _preload_content=False,
            )
        )

    def delete(
        self, kind: str, namespace: str | None, name: str, grace_period_seconds: int | None = None
    ) -> bool:
        """Deletes the object; False when it was already gone."""
        delete = self._calls(kind)[2]
        kwargs: dict[str, Any] = {"propagation_policy": "Background"}
        if grace_period_seconds is not None:
            kwargs["grace_period_seconds"] = grace_period_seconds
        try:
            delete(name, *self._args(kind, namespace), _preload_content=False, **kwargs)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        logger.info("Deleted %s %s", kind.lower(), f"{namespace}/{name}" if namespace else name)
        return True

    def list_namespaces(self, label_selector: str) -> list[Obj]:
        items: list[Obj] = _json(
            self.core.list_namespace(label_selector=label_selector, _preload_content=False)
        )["items"]
        return items

    # -- BuildJobs ------------------------------------------------------------------------------

    def get_buildjob(self, namespace: str, name: str) -> Obj | None:
        try:
            return _json(
                self.custom.get_namespaced_custom_object(
                    names.GROUP,
                    names.VERSION,
                    namespace,
                    names.PLURAL,
                    name,
                    _preload_content=False,
                )
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def list_buildjobs(self) -> list[Obj]:
        items: list[Obj] = _json(
            self.custom.list_cluster_custom_object(
                names.GROUP, names.VERSION, names.PLURAL, _preload_content=False
            )
        )["items"]
        return items

    def patch_buildjob_status(self, namespace: str, name: str, patch: Obj) -> bool:
        """Merge-patches the status subresource; False when the BuildJob is gone."""
        try:
            self.custom.patch_namespaced_custom_object_status(
                names.GROUP,
                names.VERSION,
                namespace,
                names.PLURAL,
                name,
                {"status": patch},
                _preload_content=False,
            )
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True


def _json(response: Any) -> Obj:
    data: Obj = json.loads(response.data)
    return data


def _ref(meta: Obj) -> str:
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else str(meta["name"])


def load_config() -> None:
    """In-cluster config when running in a pod, else the kubeconfig (KUBECONFIG or ~/.kube)."""
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
