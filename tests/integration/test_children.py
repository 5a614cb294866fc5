"""Children of a running BuildJob deleted by hand: what the operator can rebuild without
disturbing the job it rebuilds (the resync timer notices), what it cannot (the BuildJob fails
with a reason), and that a deleted job namespace is not half-rebuilt."""

import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes.client import NetworkingV1Api
from kubernetes.client.exceptions import ApiException

from remote_docker_operator import names

from ..support import Kube, OperatorProcess, wait_for

pytestmark = pytest.mark.integration

# No KWOK_EXIT_CODE: the job pod runs until something stops it.
RUNNING_SPEC: dict[str, Any] = {
    "job": {"image": "local/job:1"},
    "imagePullSecrets": [{"name": "regcred"}],
}
# The BuildJob's job side lives beside it (in `ns`), named after it; the rest in its job
# namespace.
BESIDE = frozenset({names.job_pod("bj"), names.client_secret("bj"), names.job_policy("bj")})


def _where(ns: str, job_ns: str, child: str) -> str:
    return ns if child in BESIDE else job_ns


def _read(kube: Kube, kind: str, ns: str, name: str) -> Any:
    net = NetworkingV1Api(kube.client)
    readers: dict[str, Callable[[str, str], Any]] = {
        "NetworkPolicy": net.read_namespaced_network_policy,
        "Service": kube.core.read_namespaced_service,
        "Secret": kube.core.read_namespaced_secret,
        "Pod": kube.core.read_namespaced_pod,
    }
    try:
        return readers[kind](name, ns)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def _delete(kube: Kube, kind: str, ns: str, name: str) -> None:
    net = NetworkingV1Api(kube.client)
    deleters: dict[str, Callable[..., Any]] = {
        "NetworkPolicy": net.delete_namespaced_network_policy,
        "Service": kube.core.delete_namespaced_service,
        "Secret": kube.core.delete_namespaced_secret,
        "Pod": kube.core.delete_namespaced_pod,
    }
    deleters[kind](name, ns)


def _uid(obj: Any) -> str | None:
    return None if obj is None else str(obj.metadata.uid)


def _start(kube: Kube, ns: str, name: str) -> str:
    secret: Any = {
        "metadata": {"name": "regcred"},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": "{}"},
    }
    kube.core.create_namespaced_secret(ns, secret)
    kube.create_buildjob(ns, name, RUNNING_SPEC)
    status = kube.wait_phase(ns, name, "Running")
    return str(status["namespace"])


RECREATED = [
    ("NetworkPolicy", "default-deny"),
    ("NetworkPolicy", "engine"),
    ("NetworkPolicy", names.job_policy("bj")),
    ("Service", names.ENGINE_SERVICE),
]


@pytest.mark.parametrize(("kind", "child"), RECREATED, ids=[f"{k}-{n}" for k, n in RECREATED])
def test_deleted_child_is_recreated(
    kube: Kube, operator: OperatorProcess, ns: str, kind: str, child: str
) -> None:
    """The resync timer's drift check puts the child back; the job keeps running."""
    job_ns = _start(kube, ns, "bj")
    at = _where(ns, job_ns, child)
    old = _uid(wait_for(lambda: _read(kube, kind, at, child), what=f"{kind} {child}"))
    engine_uid = _uid(_read(kube, "Pod", job_ns, names.ENGINE_POD))
    job_uid = _uid(_read(kube, "Pod", ns, names.job_pod("bj")))
    _delete(kube, kind, at, child)
    new = wait_for(
        lambda: _uid(_read(kube, kind, at, child)) not in (None, old),
        timeout=60,
        what=f"{kind} {child} recreated",
    )
    assert new
    recreated = _read(kube, kind, at, child)
    labels = recreated.metadata.labels or {}
    assert labels.get(names.LABEL_MANAGED_BY) == names.APP
    assert labels.get(names.LABEL_OWNER_NAME) == "bj"
    status = kube.status(ns, "bj")
    assert status["phase"] == "Running", status
    # The pods were not touched on the way.
    assert _uid(_read(kube, "Pod", job_ns, names.ENGINE_POD)) == engine_uid
    assert _uid(_read(kube, "Pod", ns, names.job_pod("bj"))) == job_uid
    assert operator.alive()
    kube.delete_buildjob(ns, "bj")


FATAL = [
    # The TLS pair cannot be reissued under a running engine (children.Children.ensure_tls).
    ("Secret", names.ENGINE_TLS_SECRET, {"ChildDeleted"}),
    ("Secret", names.client_secret("bj"), {"ChildDeleted"}),
    ("Pod", names.ENGINE_POD, {"EngineFailed"}),
    ("Pod", names.job_pod("bj"), {"JobPodDeleted"}),
]


@pytest.mark.parametrize(("kind", "child", "reasons"), FATAL, ids=[f"{k}-{n}" for k, n, _ in FATAL])
def test_deleted_child_fails_the_buildjob(
    kube: Kube, operator: OperatorProcess, ns: str, kind: str, child: str, reasons: set[str]
) -> None:
    job_ns = _start(kube, ns, "bj")
    _delete(kube, kind, _where(ns, job_ns, child), child)
    status = kube.wait_phase(ns, "bj", "Failed", timeout=60)
    assert status["reason"] in reasons, status
    assert status.get("message"), status
    wait_for(
        lambda: ("Warning", status["reason"]) in kube.events_for(ns, "bj"),
        what=f"a Warning event {status['reason']}",
    )
    # Cut short: the engine and the job pod are stopped; the namespace stays until the TTL.
    wait_for(
        lambda: (
            _read(kube, "Pod", job_ns, names.ENGINE_POD) is None
            and _read(kube, "Pod", ns, names.job_pod("bj")) is None
        ),
        timeout=60,
        what="pods deleted after failing",
    )
    assert kube.namespace_exists(job_ns)
    if kind == "Secret":  # not reissued behind the failed BuildJob's back
        assert _read(kube, "Secret", _where(ns, job_ns, child), child) is None
    assert operator.alive()
    kube.delete_buildjob(ns, "bj")


def test_deleted_job_namespace_fails_and_is_not_rebuilt(
    kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    job_ns = _start(kube, ns, "bj")
    kube.core.delete_namespace(job_ns)
    status = kube.wait_phase(ns, "bj", "Failed", timeout=60)
    # The resync notices the Terminating namespace (ChildDeleted) unless a pod event for the
    # namespace controller deleting the pods gets there first.
    assert status["reason"] in {"ChildDeleted", "JobPodDeleted", "EngineFailed"}, status
    assert status.get("message"), status
    wait_for(lambda: not kube.namespace_exists(job_ns), timeout=90, what="job namespace gone")
    # Several resyncs later (RDO_RESYNC_SECONDS=1) nothing has been put back.
    time.sleep(3)
    assert not kube.namespace_exists(job_ns)
    assert kube.status(ns, "bj")["phase"] == "Failed"
    assert operator.alive()
    kube.delete_buildjob(ns, "bj")
    wait_for(lambda: kube.get_buildjob(ns, "bj") is None, timeout=60, what="BuildJob deleted")


# An edit to each child's content that would weaken a fence or misroute the engine, as a JSON
# merge patch, and a reader of the field it changes.
EDITS: list[tuple[str, str, dict[str, Any], Callable[[Any], Any]]] = [
    (
        "NetworkPolicy",
        names.job_policy("bj"),
        {"spec": {"egress": [{}]}},  # one rule that allows everything
        lambda o: o.spec.egress,
    ),
    (
        "NetworkPolicy",
        "engine",
        {"spec": {"ingress": [{}]}},  # the engine open to any pod
        lambda o: o.spec.ingress,
    ),
    (
        "Service",
        names.ENGINE_SERVICE,
        {"spec": {"selector": {names.LABEL_COMPONENT: names.COMPONENT_JOB}}},
        lambda o: o.spec.selector,
    ),
]


def _patch(kube: Kube, kind: str, ns: str, name: str, patch: dict[str, Any]) -> None:
    net = NetworkingV1Api(kube.client)
    patchers: dict[str, Callable[..., Any]] = {
        "NetworkPolicy": net.patch_namespaced_network_policy,
        "Service": kube.core.patch_namespaced_service,
        "Secret": kube.core.patch_namespaced_secret,
    }
    patchers[kind](name, ns, patch)


@pytest.mark.parametrize(
    ("kind", "child", "patch", "field"), EDITS, ids=[f"{k}-{n}" for k, n, _, _ in EDITS]
)
def test_edited_child_is_reverted(
    kube: Kube,
    operator: OperatorProcess,
    ns: str,
    kind: str,
    child: str,
    patch: dict[str, Any],
    field: Callable[[Any], Any],
) -> None:
    """Drift in content, not only in existence: the resync puts the child back as built, in
    place (same uid), and then leaves it alone."""
    job_ns = _start(kube, ns, "bj")
    at = _where(ns, job_ns, child)
    built = wait_for(lambda: _read(kube, kind, at, child), what=f"{kind} {child}")
    # Control: with nothing changed, several resyncs (RDO_RESYNC_SECONDS=1) write nothing.
    time.sleep(3)
    assert _read(kube, kind, at, child).metadata.resource_version == (
        built.metadata.resource_version
    )
    _patch(kube, kind, at, child, patch)
    edited = _read(kube, kind, at, child)
    assert field(edited) != field(built), "the edit did not land"
    wait_for(
        lambda: field(_read(kube, kind, at, child)) == field(built),
        timeout=60,
        what=f"{kind} {child} reverted",
    )
    reverted = _read(kube, kind, at, child)
    assert reverted.metadata.uid == built.metadata.uid
    # Reverted once, then left alone: no write loop against the API server's own defaults.
    time.sleep(3)
    assert _read(kube, kind, at, child).metadata.resource_version == (
        reverted.metadata.resource_version
    )
    assert kube.status(ns, "bj")["phase"] == "Running"
    assert operator.alive()
    kube.delete_buildjob(ns, "bj")
