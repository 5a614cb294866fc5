"""Warm pools on a real API server (kwok runs the pods): the pool fills and refills, a claim
takes one engine whose certificates no one else's client can use, an operator killed with idle
warm engines recycles them, a deleted class drains its pool, and a BuildJob deleted while
claiming leaves nothing."""

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from kubernetes.client import NetworkingV1Api

from remote_docker_operator import failpoints, names

from ..support import Kube, OperatorProcess, engine_class, wait_for
from .conftest import ENGINE_CLASS

pytestmark = pytest.mark.integration

CLASS = "warm"
SIZE = 2
RUNS = {"image": "local/job:1"}  # no KWOK_EXIT_CODE: runs until deleted
CLIENT_ENV = {"DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"}


def warm_namespaces(kube: Kube, ready_only: bool = False) -> set[str]:
    """The class's warm engines not claimed (nor being deleted); ready_only: with a Ready pod."""
    selector = f"{names.LABEL_OWNER_KIND}={names.CLASS_KIND},{names.LABEL_OWNER_NAME}={CLASS}"
    found = set()
    for ns in kube.core.list_namespace(label_selector=selector).items:
        if ns.metadata.deletion_timestamp or ns.status.phase == "Terminating":
            continue
        if ready_only:
            pods = kube.core.list_namespaced_pod(ns.metadata.name).items
            ready = [
                p
                for p in pods
                if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
            ]
            if not ready:
                continue
        found.add(ns.metadata.name)
    return found


def pool_status(kube: Kube) -> dict[str, Any]:
    body = kube.custom.get_cluster_custom_object(
        names.GROUP, names.VERSION, names.CLASS_PLURAL, CLASS
    )
    return dict((body.get("status") or {}).get("warmPool") or {})


def full_pool(kube: Kube) -> set[str]:
    """Waits for the pool to hold SIZE ready engines (and its status to say so); returns them."""

    def full() -> set[str] | None:
        ready = warm_namespaces(kube, ready_only=True)
        return ready if len(ready) == SIZE and pool_status(kube).get("ready") == SIZE else None

    return wait_for(full, timeout=60, what=f"{SIZE} warm engines ready")


def apply_class(cluster: Any, size: int = SIZE) -> None:
    body = engine_class(CLASS, {**ENGINE_CLASS, "warmPool": {"size": size}})
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))


@pytest.fixture
def warm_class(cluster: Any, kube: Kube, operator: OperatorProcess) -> Iterator[str]:
    apply_class(cluster)
    yield CLASS
    cluster.kubectl("delete", "engineclass", CLASS, "--ignore-not-found")
    wait_for(lambda: not warm_namespaces(kube), timeout=60, what="the pool drained")


def secret_data(kube: Kube, namespace: str, name: str) -> dict[str, str]:
    secret = kube.core.read_namespaced_secret(name, namespace)
    return {k: base64.b64decode(v).decode() for k, v in secret.data.items()}


def cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def test_pool_fills_a_claim_takes_one_and_it_refills(kube: Kube, warm_class: str, ns: str) -> None:
    warm = full_pool(kube)
    kube.create_buildjob(ns, "hot", {"job": RUNS, "engine": {"className": warm_class}})
    status = kube.wait_phase(ns, "hot", "Running")
    assert status["namespace"] in warm, "a warm engine was claimed"
    assert status["engine"]["warm"] is True
    assert status["message"].startswith("engine ready"), status["message"]
    claimed = kube.core.read_namespace(status["namespace"])
    uid = kube.get_buildjob(ns, "hot")["metadata"]["uid"]  # type: ignore[index]
    assert claimed.metadata.labels[names.LABEL_OWNER_UID] == uid
    assert names.LABEL_OWNER_KIND not in claimed.metadata.labels
    # Every child in it is the BuildJob's now, and its policy admits the job pod.
    for pod in kube.core.list_namespaced_pod(status["namespace"]).items:
        assert pod.metadata.labels[names.LABEL_OWNER_UID] == uid
    networking = NetworkingV1Api(kube.client)
    policy = networking.read_namespaced_network_policy(names.POLICY_ENGINE, status["namespace"])
    admitted = policy.spec.ingress[0]._from[0].pod_selector.match_labels
    assert admitted[names.LABEL_OWNER_UID] == uid
    # The pool refills behind the claim, with new engines.
    refilled = full_pool(kube)
    assert status["namespace"] not in refilled
    assert pool_status(kube)["claims"] >= 1
    # A BuildJob asking for more than the class's defaults starts cold: a miss.
    misses = pool_status(kube)["misses"]
    cold_spec = {"job": RUNS, "engine": {"className": warm_class, "version": "26"}}
    kube.create_buildjob(ns, "cold", cold_spec)
    cold = kube.wait_phase(ns, "cold", "Running")
    assert cold["namespace"] not in refilled | warm
    assert "warm" not in cold["engine"]
    wait_for(lambda: pool_status(kube)["misses"] == misses + 1, what="the miss counted")
    # Deleting the BuildJob deletes the claimed engine's namespace with it.
    kube.delete_buildjob(ns, "hot")
    wait_for(
        lambda: not kube.namespace_exists(status["namespace"]), timeout=60, what="claimed ns gone"
    )


def test_a_claimed_engines_certificates_are_its_alone(kube: Kube, warm_class: str, ns: str) -> None:
    full_pool(kube)
    spec = {"job": RUNS, "engine": {"className": warm_class}}
    for name in ("a", "b"):
        kube.create_buildjob(ns, name, spec)
    statuses = {name: kube.wait_phase(ns, name, "Running") for name in ("a", "b")}
    assert all(s["engine"]["warm"] for s in statuses.values())
    engines = {name: s["namespace"] for name, s in statuses.items()}
    assert engines["a"] != engines["b"], "each engine is handed out once"
    client = {name: secret_data(kube, ns, names.client_secret(name)) for name in engines}
    server = {
        name: secret_data(kube, job_ns, names.ENGINE_TLS_SECRET) for name, job_ns in engines.items()
    }
    for name, other in (("a", "b"), ("b", "a")):
        mine = cert(client[name]["cert.pem"])
        # Signed by its engine's CA, which its engine trusts...
        assert client[name]["ca.pem"] == server[name]["ca.pem"]
        mine.verify_directly_issued_by(cert(server[name]["ca.pem"]))
        # ...and by no other engine's.
        with pytest.raises((ValueError, InvalidSignature)):
            mine.verify_directly_issued_by(cert(server[other]["ca.pem"]))
    # Nor by a warm engine still waiting in the pool.
    for idle in full_pool(kube):
        idle_ca = cert(secret_data(kube, idle, names.ENGINE_TLS_SECRET)["ca.pem"])
        for name in engines:
            with pytest.raises((ValueError, InvalidSignature)):
                cert(client[name]["cert.pem"]).verify_directly_issued_by(idle_ca)
    # No CA key was ever written: every key in these secrets is a leaf's, not the CA's.
    for data in (*client.values(), *server.values()):
        ca_key = cert(data["ca.pem"]).public_key()
        assert cert(data["cert.pem"]).public_key() != ca_key
        assert set(data) <= {"ca.pem", "cert.pem", "key.pem", *CLIENT_ENV}


def test_operator_killed_with_idle_engines_recycles_them(
    kube: Kube, restore_operator: OperatorProcess, warm_class: str, ns: str
) -> None:
    before = full_pool(kube)
    restore_operator.kill()
    restore_operator.start()
    # Their CA keys died with the process: deleted, never handed out; new ones replace them.
    wait_for(lambda: not warm_namespaces(kube) & before, timeout=90, what="old engines recycled")
    after = full_pool(kube)
    kube.create_buildjob(ns, "after", {"job": RUNS, "engine": {"className": warm_class}})
    status = kube.wait_phase(ns, "after", "Running")
    assert status["namespace"] not in before
    assert status["namespace"] in after
    for old in before:
        wait_for(lambda old=old: not kube.namespace_exists(old), timeout=60, what=f"{old} gone")


def test_deleting_a_class_drains_its_pool(cluster: Any, kube: Kube, warm_class: str) -> None:
    warm = full_pool(kube)
    cluster.kubectl("delete", "engineclass", warm_class)
    for namespace in warm:
        wait_for(
            lambda n=namespace: not kube.namespace_exists(n), timeout=60, what=f"{namespace} gone"
        )
    # Control: the class back, the pool is back.
    apply_class(cluster)
    assert not full_pool(kube) & warm


def test_a_smaller_pool_is_trimmed_and_size_zero_claims_nothing(
    cluster: Any, kube: Kube, warm_class: str, ns: str
) -> None:
    full_pool(kube)
    apply_class(cluster, size=0)
    wait_for(lambda: not warm_namespaces(kube), timeout=60, what="the pool emptied")
    kube.create_buildjob(ns, "none", {"job": RUNS, "engine": {"className": warm_class}})
    status = kube.wait_phase(ns, "none", "Running")
    assert "warm" not in status["engine"]


def test_buildjob_deleted_while_claiming_leaves_nothing(
    kube: Kube, restore_operator: OperatorProcess, warm_class: str, ns: str
) -> None:
    operator = restore_operator
    step = failpoints.WARM_STEPS[0]
    before = full_pool(kube)
    operator.restart(RDO_FAILPOINT=step)
    # The restarted operator's own engines (it recycles those it did not start).
    wait_for(lambda: not warm_namespaces(kube) & before, timeout=90, what="old engines recycled")
    warm = full_pool(kube)
    kube.create_buildjob(ns, "doomed", {"job": RUNS, "engine": {"className": warm_class}})
    wait_for(lambda: not operator.alive(), timeout=30, what=f"operator to die at {step}")
    uid = kube.get_buildjob(ns, "doomed")["metadata"]["uid"]  # type: ignore[index]
    claimed = [
        n for n in warm if kube.core.read_namespace(n).metadata.labels[names.LABEL_OWNER_UID] == uid
    ]
    assert len(claimed) == 1, "killed right after the claim"
    kube.delete_buildjob(ns, "doomed")
    operator.start()
    wait_for(lambda: not kube.namespace_exists(claimed[0]), timeout=60, what="claimed ns gone")
    secrets = [s.metadata.name for s in kube.core.list_namespaced_secret(ns).items]
    assert names.client_secret("doomed") not in secrets
    # The other idle engine was recycled (its key died with the process); the pool refills.
    assert not full_pool(kube) & warm


def test_a_claim_rebuilds_only_the_children_the_pool_made(
    kube: Kube, warm_class: str, ns: str
) -> None:
    """A claim rewrites a warm engine's children without reading them first, on the uid each
    was made with: one put there since by someone else (deleted and made again, open to any
    pod) is not overwritten: the claimant fails naming it, and it is left as it stands."""
    warm = full_pool(kube)
    networking = NetworkingV1Api(kube.client)
    planted = {}
    for namespace in warm:
        networking.delete_namespaced_network_policy(names.POLICY_ENGINE, namespace)
        body = {
            "metadata": {"name": names.POLICY_ENGINE, "labels": {"planted": "yes"}},
            "spec": {"podSelector": {}, "ingress": [{}]},
        }
        made = networking.create_namespaced_network_policy(namespace, body)
        planted[namespace] = made.metadata.uid
    # Handed out oldest first: each planted engine in turn, then only new ones.
    for i in range(SIZE):
        name = f"planted-{i}"
        kube.create_buildjob(ns, name, {"job": RUNS, "engine": {"className": warm_class}})
        status = kube.wait_phase(ns, name, "Failed")
        assert status["reason"] == "ForeignObject", status
        where = status["namespace"]
        assert where in warm
        assert f"NetworkPolicy {where}/{names.POLICY_ENGINE}" in status["message"]
        left = networking.read_namespaced_network_policy(names.POLICY_ENGINE, where)
        assert left.metadata.uid == planted[where]
        assert left.metadata.labels == {"planted": "yes"}
        assert left.spec.ingress[0]._from is None, "still open as planted: not rebuilt"
    # Control: an engine the pool made and nobody touched is claimed, its policy rebuilt.
    full_pool(kube)
    kube.create_buildjob(ns, "control", {"job": RUNS, "engine": {"className": warm_class}})
    control = kube.wait_phase(ns, "control", "Running")
    assert control["engine"]["warm"] is True
    assert control["namespace"] not in warm
    policy = networking.read_namespaced_network_policy(names.POLICY_ENGINE, control["namespace"])
    uid = kube.get_buildjob(ns, "control")["metadata"]["uid"]  # type: ignore[index]
    admitted = policy.spec.ingress[0]._from[0].pod_selector.match_labels
    assert admitted[names.LABEL_OWNER_UID] == uid
