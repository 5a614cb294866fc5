"""The thin layer that talks to the API server.

Creates are idempotent (409: the object is already there, and the reconciler decides whether it
may adopt it), deletes and reads of missing objects are no-ops (404), and 429 responses are
retried after their Retry-After.
Objects travel as plain dicts over the kubernetes client's REST transport (its configuration,
authentication and TLS): the builders' manifests go out as they are, so the API server (not a
client-side model) judges them, and responses are read as raw JSON, which is also much cheaper
than the client's model classes.
"""

import json
import logging
import time
from typing import Any

import kubernetes
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException

from . import metrics, names

logger = logging.getLogger(__name__)
Obj = dict[str, Any]

# kind -> (API path prefix, plural)
RESOURCES: dict[str, tuple[str, str]] = {
    "Namespace": ("/api/v1", "namespaces"),
    "Pod": ("/api/v1", "pods"),
    "Secret": ("/api/v1", "secrets"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Service": ("/api/v1", "services"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    "ResourceQuota": ("/api/v1", "resourcequotas"),
    "LimitRange": ("/api/v1", "limitranges"),
    "PersistentVolume": ("/api/v1", "persistentvolumes"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "Event": ("/api/v1", "events"),
    names.KIND: (f"/apis/{names.API_VERSION}", names.PLURAL),
    names.DOCKER_ENGINE_KIND: (f"/apis/{names.API_VERSION}", names.DOCKER_ENGINE_PLURAL),
    names.CLASS_KIND: (f"/apis/{names.API_VERSION}", names.CLASS_PLURAL),
    # The admission webhook's question: may a pod's ServiceAccount create DockerEngines?
    "SubjectAccessReview": ("/apis/authorization.k8s.io/v1", "subjectaccessreviews"),
}
THROTTLE_RETRIES = 5
# (connect, read) seconds: a call that hangs must not hold a BuildJob's lock forever.
REQUEST_TIMEOUT = (5.0, 30.0)
MAX_RETRY_AFTER = 10.0


def path(
    kind: str, namespace: str | None = None, name: str | None = None, subresource: str | None = None
) -> str:
    prefix, plural = RESOURCES[kind]
    parts = [prefix]
    if namespace and kind != "Namespace":
        parts.append(f"namespaces/{namespace}")
    parts.append(plural)
    if name:
        parts.append(name)
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


class Kube:
    def __init__(self, client: ApiClient | None = None) -> None:
        self.client = client or ApiClient()

    def request(
        self,
        method: str,
        url_path: str,
        body: Obj | None = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        """One API call; raises ApiException for any error status, after retrying 429s."""
        headers = {"Accept": "application/json", "Content-Type": content_type}
        for attempt in range(THROTTLE_RETRIES + 1):
            method_, url, header_params, payload, _ = self.client.param_serialize(
                method,
                url_path,
                query_params=query,
                header_params=dict(headers),
                body=body,
                auth_settings=["BearerToken"],
            )
            try:
                response = self.client.call_api(
                    method_, url, header_params, payload, _request_timeout=REQUEST_TIMEOUT
                )
            except Exception:
                metrics.api_request(method, None)
                raise
            metrics.api_request(method, response.status)
            data = response.read()  # type: ignore[no-untyped-call]
            if response.status == 429 and attempt < THROTTLE_RETRIES:
                retry_after = response.getheader("Retry-After") or "1"  # type: ignore[no-untyped-call]
                delay = min(float(retry_after) if retry_after.isdigit() else 1.0, MAX_RETRY_AFTER)
                logger.warning(
                    "API server throttled %s %s; retrying in %ss", method, url_path, delay
                )
                time.sleep(delay)
                continue
            if response.status >= 400:
                raise ApiException.from_response(
                    http_resp=response, body=data.decode(errors="replace"), data=None
                )
            return json.loads(data) if data else {}
        raise AssertionError("unreachable")

    def create(self, manifest: Obj) -> Obj | None:
        """Creates the object; returns it, or None when it already existed (409, or a full
        quota's 403 for a name that exists)."""
        kind, meta = manifest["kind"], manifest["metadata"]
        namespace = meta.get("namespace")
        try:
            created = self.request("POST", path(kind, namespace), manifest)
        except ApiException as e:
            if e.status == 409:
                return None
            # A full ResourceQuota refuses a create before the API server looks whether the
            # name is taken: in a job namespace whose quota is made, every child exists, and
            # an operator that restarted meets this, not 409, when it makes them again.
            if (
                e.status == 403
                and "exceeded quota" in (e.body or "")
                and meta.get("name")
                and self.get(kind, namespace, meta["name"]) is not None
            ):
                return None
            raise
        logger.info("Created %s %s", kind.lower(), _ref(meta))
        return created

    def get(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        try:
            return self.request("GET", path(kind, namespace, name))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def replace(self, manifest: Obj) -> Obj:
        kind, meta = manifest["kind"], manifest["metadata"]
        return self.request("PUT", path(kind, meta.get("namespace"), meta["name"]), manifest)

    def delete(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        uid: str,
        grace_period_seconds: int | None = None,
        resource_version: str | None = None,
    ) -> bool:
        """Deletes the object with exactly this uid (and, when given, unchanged since this
        resourceVersion was read); False when it was already gone (or another object of the same
        name stands there now, or it changed: 409 on a precondition)."""
        preconditions = {"uid": uid}
        if resource_version:
            preconditions["resourceVersion"] = resource_version
        options: Obj = {"propagationPolicy": "Background", "preconditions": preconditions}
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        try:
            self.request("DELETE", path(kind, namespace, name), options)
        except ApiException as e:
            if e.status in (404, 409):
                return False
            raise
        logger.info("Deleted %s %s", kind.lower(), f"{namespace}/{name}" if namespace else name)
        return True

    def remove_finalizer(self, kind: str, meta: Obj, finalizer: str) -> None:
        """Takes one finalizer off, if the object still has the finalizers read (a JSON patch
        whose test fails, 422, means someone else changed them: the next event brings the
        newer list); gone already is fine."""
        finalizers = meta.get("finalizers") or []
        patch = [
            {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
            {
                "op": "replace",
                "path": "/metadata/finalizers",
                "value": [f for f in finalizers if f != finalizer],
            },
        ]
        try:
            self.request(
                "PATCH",
                path(kind, meta.get("namespace"), meta["name"]),
                patch,  # type: ignore[arg-type]
                content_type="application/json-patch+json",
            )
        except ApiException as e:
            if e.status not in (404, 422):
                raise

    def patch(self, kind: str, namespace: str, name: str, body: Obj | list[Obj]) -> Obj | None:
        """A merge patch (a JSON patch when body is a list): the object patched, or None when it
        is gone, or is not the one a precondition in the patch names (409, or a failed test:
        422)."""
        json_patch = isinstance(body, list)
        try:
            patched: Obj = self.request(
                "PATCH",
                path(kind, namespace, name),
                body,  # type: ignore[arg-type]
                content_type="application/json-patch+json"
                if json_patch
                else "application/merge-patch+json",
            )
        except ApiException as e:
            if e.status in (404, 409, 422):
                return None
            raise
        return patched

    def list(self, kind: str, label_selector: str | None = None) -> list[Obj]:
        query = [("labelSelector", label_selector)] if label_selector else None
        items: list[Obj] = self.request("GET", path(kind), query=query)["items"]
        return items

    def patch_status(self, kind: str, namespace: str, name: str, status: Obj) -> bool:
        """Merge-patches the status subresource; False when the object is gone."""
        try:
            self.request(
                "PATCH",
                path(kind, namespace, name, "status"),
                {"status": status},
                content_type="application/merge-patch+json",
            )
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True


def _ref(meta: Obj) -> str:
    name = meta.get("name") or meta.get("generateName", "")
    return f"{meta['namespace']}/{name}" if meta.get("namespace") else str(name)


def load_config(pool_size: int) -> None:
    """In-cluster config when running in a pod, else the kubeconfig (KUBECONFIG or ~/.kube).

    pool_size: connections kept open to the API server; at least one per worker thread, or
    every burst opens (and TLS-handshakes) new ones and discards them."""
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    config = Configuration.get_default_copy()
    config.connection_pool_maxsize = pool_size
    Configuration.set_default(config)
