"""A DockerEngine's whole life against a real API server, with kwok running the pods: one engine
for a pod the tenant runs (a CI runner's), which the operator labels and never otherwise
touches."""

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import NetworkingV1Api
from kubernetes.client.exceptions import ApiException
from kubernetes.config import new_client_from_config

from remote_docker_operator import failpoints, names

from ..support import Kube, OperatorProcess, wait_for
from .test_resilience import children

pytestmark = pytest.mark.integration

DE = names.DOCKER_ENGINE_PLURAL


def runner(kube: Kube, ns: str, name: str = "runner", exit_code: int | None = None) -> Any:
    """A pod standing in for a CI runner: it runs until deleted (exit_code: ends with it)."""
    env = [] if exit_code is None else [{"name": "KWOK_EXIT_CODE", "value": str(exit_code)}]
    # A new namespace's "default" ServiceAccount appears a moment after it; pods wait for it.
    wait_for(lambda: kube.has_default_account(ns), what="default ServiceAccount")
    return kube.core.create_namespaced_pod(
        ns,
        {
            "metadata": {"name": name, "labels": {"app": "ci-runner"}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "runner", "image": "local/job:1", "env": env}],
            },
        },
    )


def engine_for(client: str, **extra: Any) -> dict[str, Any]:
    return {"clientPod": {"name": client}, **extra}


def uid_of(kube: Kube, ns: str, name: str) -> str:
    return str(kube.get_buildjob(ns, name, DE)["metadata"]["uid"])  # type: ignore[index]


def test_engine_for_a_running_pod(kube: Kube, operator: OperatorProcess, ns: str) -> None:
    pod = runner(kube, ns)
    kube.create_dockerengine(ns, "eng", engine_for("runner"))
    status = kube.wait_phase(ns, "eng", "Running", plural=DE)
    uid = uid_of(kube, ns, "eng")
    job_ns = status["namespace"]
    assert status["reason"] == "EngineReady"
    assert status["clientSecret"] == "eng-dockerengine"
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"Ready": "True", "Complete": "False", "Failed": "False"}

    # The client Secret beside the pod, owned by the DockerEngine, with the engine's address.
    secret = kube.core.read_namespaced_secret("eng-dockerengine", ns)
    assert [r.uid for r in secret.metadata.owner_references] == [uid]
    data = {k: base64.b64decode(v).decode() for k, v in secret.data.items()}
    assert data["DOCKER_HOST"] == status["engine"]["endpoint"] == f"tcp://engine.{job_ns}.svc:2376"
    assert data["DOCKER_TLS_VERIFY"] == "1"
    assert {"ca.pem", "cert.pem", "key.pem"} <= set(data)
    assert "PRIVATE" not in data["ca.pem"]

    # The client pod carries the engine's label, and nothing else of it changed; it owns the
    # DockerEngine, so the garbage collector ends the engine with the pod.
    labelled = kube.pod(ns, "runner")
    assert labelled.metadata.labels == {"app": "ci-runner", names.client_label(uid): "true"}
    assert labelled.spec.containers[0].image == pod.spec.containers[0].image
    owners = kube.get_buildjob(ns, "eng", DE)["metadata"]["ownerReferences"]  # type: ignore[index]
    assert [(o["kind"], o["name"], o["uid"]) for o in owners] == [
        ("Pod", "runner", pod.metadata.uid)
    ]

    # The engine admits that label in this namespace, and no job pod or job policy exists.
    networking = NetworkingV1Api(kube.client)
    engine_policy = networking.read_namespaced_network_policy(names.POLICY_ENGINE, job_ns)
    peer = engine_policy.spec.ingress[0]._from[0]
    assert peer.pod_selector.match_labels == {names.client_label(uid): "true"}
    assert peer.namespace_selector.match_labels == {"kubernetes.io/metadata.name": ns}
    mine = f"{names.LABEL_OWNER_UID}={uid}"
    assert networking.list_namespaced_network_policy(ns, label_selector=mine).items == []
    assert kube.core.list_namespaced_pod(ns, label_selector=mine).items == []

    # The client pod goes: so do the DockerEngine (garbage collector), its namespace and Secret.
    kube.core.delete_namespaced_pod("runner", ns, grace_period_seconds=0)
    wait_for(lambda: kube.get_buildjob(ns, "eng", DE) is None, what="DockerEngine collected")
    wait_for(lambda: not kube.namespace_exists(job_ns), timeout=60, what="engine namespace gone")
    wait_for(
        lambda: kube.core.list_namespaced_secret(ns, label_selector=mine).items == [],
        what="client Secret gone",
    )


def test_a_finished_client_ends_its_engine_and_is_left_alone(
    kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    runner(kube, ns, "once", exit_code=0)
    kube.create_dockerengine(ns, "eng", engine_for("once"))
    done = kube.wait_phase(ns, "eng", "Succeeded", plural=DE)
    assert done["reason"] == "ClientGone", done
    assert "once" in done["message"]
    job_ns = done["namespace"]
    wait_for(lambda: not kube.namespace_exists(job_ns), timeout=60, what="engine namespace gone")
    assert kube.wait_phase(ns, "eng", "Succeeded", plural=DE).get("cleanedUp") is True
    # The client is the tenant's: finished, it stays for them to read.
    assert kube.pod(ns, "once") is not None
    kube.wait_event(ns, "eng", "Normal", "ClientGone")


def test_deleting_the_dockerengine_ends_the_engine_not_the_pod(
    kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    runner(kube, ns)
    kube.create_dockerengine(ns, "eng", engine_for("runner"))
    job_ns = kube.wait_phase(ns, "eng", "Running", plural=DE)["namespace"]
    uid = uid_of(kube, ns, "eng")
    kube.delete_buildjob(ns, "eng", DE)
    wait_for(lambda: not kube.namespace_exists(job_ns), timeout=60, what="engine namespace gone")
    mine = f"{names.LABEL_OWNER_UID}={uid}"
    wait_for(
        lambda: kube.core.list_namespaced_secret(ns, label_selector=mine).items == [],
        what="client Secret gone",
    )
    assert kube.pod(ns, "runner").metadata.deletion_timestamp is None


def test_a_missing_client_pod_fails_naming_the_field(
    kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    kube.create_dockerengine(ns, "eng", engine_for("nobody"))
    failed = kube.wait_phase(ns, "eng", "Failed", plural=DE, timeout=120)
    assert failed["reason"] == "ClientPodNotFound", failed
    assert failed["message"].startswith(f"spec.clientPod.name: pod {ns}/nobody not found")
    wait_for(
        lambda: not kube.namespace_exists(failed["namespace"]),
        timeout=60,
        what="engine namespace gone",
    )
    # Positive control: the same DockerEngine with its pod there runs.
    runner(kube, ns, "somebody")
    kube.create_dockerengine(ns, "eng2", engine_for("somebody"))
    kube.wait_phase(ns, "eng2", "Running", plural=DE)


def test_two_engines_for_one_pod_each_admit_it(
    kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    runner(kube, ns)
    for name in ("a", "b"):
        kube.create_dockerengine(ns, name, engine_for("runner"))
    for name in ("a", "b"):
        kube.wait_phase(ns, name, "Running", plural=DE)
    labels = kube.pod(ns, "runner").metadata.labels
    for name in ("a", "b"):
        assert labels[names.client_label(uid_of(kube, ns, name))] == "true"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "spec.clientPod"),
        ({"clientPod": {"name": "Not_A_Name"}}, "spec.clientPod.name"),
        (engine_for("r", network={"publishedPorts": {}}), "spec.network.publishedPorts"),
        (engine_for("r", ttlSecondsAfterFinished=-1), "spec.ttlSecondsAfterFinished"),
        (engine_for("r", job={"image": "x"}), None),  # pruned: a DockerEngine has no job
    ],
)
def test_bad_input_refused_at_admission(
    kube: Kube, ns: str, spec: dict[str, Any], field: str | None
) -> None:
    if field is None:
        created = kube.create_dockerengine(ns, "pruned", spec)
        assert "job" not in created["spec"]  # positive control: admitted, the unknown pruned
        return
    with pytest.raises(ApiException) as e:
        kube.create_dockerengine(ns, "bad", spec)
    assert e.value.status == 422
    assert field in json.loads(e.value.body)["message"]


def test_operator_may_label_a_client_pod_and_nothing_more(
    kube: Kube, operator: OperatorProcess, operator_kubeconfig: Path, ns: str
) -> None:
    """The guard lets the operator add a client label to a tenant's pod, nothing else."""
    as_operator = Kube(new_client_from_config(str(operator_kubeconfig)))
    runner(kube, ns)
    label = names.client_label("some-uid")
    as_operator.core.patch_namespaced_pod(
        "runner", ns, {"metadata": {"labels": {label: "true"}}}, dry_run="All"
    )  # admitted: the positive control
    for patch in (
        {"metadata": {"labels": {"app": "hijacked"}}},
        {"metadata": {"labels": {label: "true", "extra": "x"}}},
        {"metadata": {"annotations": {"x": "y"}}},
        {"metadata": {"labels": {label: "yes"}}},
    ):
        with pytest.raises(ApiException) as e:
            as_operator.core.patch_namespaced_pod("runner", ns, patch, dry_run="All")
        assert e.value.status == 403, (patch, e.value.body)
        assert "client label" in json.loads(e.value.body)["message"]


# The steps where a DockerEngine's path differs from a BuildJob's (its client Secret, made with
# the TLS pair; the client bound; the quota after the engine alone): the namespace, policies and
# service are made by the very code test_resilience.py kills a BuildJob after.
DOCKER_ENGINE_STEPS = ("tls", "engine-pod", "client-bound", "quota")


@pytest.mark.parametrize("step", DOCKER_ENGINE_STEPS)
def test_killed_at_each_step_converges(
    kube: Kube, restore_operator: OperatorProcess, ns: str, step: str
) -> None:
    assert step in (*failpoints.STEPS, *failpoints.CLIENT_STEPS)
    """SIGKILL right after a provisioning step; a restarted operator makes the engine ready
    with exactly one of every child, and the client labelled and owning it."""
    operator = restore_operator
    operator.restart(RDO_FAILPOINT=step)
    pod = runner(kube, ns)
    kube.create_dockerengine(ns, "crash", engine_for("runner"))
    wait_for(lambda: not operator.alive(), timeout=30, what=f"operator to die at {step}")
    operator.start()
    job_ns = kube.wait_phase(ns, "crash", "Running", plural=DE)["namespace"]
    uid = uid_of(kube, ns, "crash")
    assert children(kube, job_ns, ns, uid) == {
        "beside": ["secret crash-dockerengine"],
        "policies": ["default-deny", "engine"],
        "secrets": ["engine-tls"],
        "services": ["engine"],
        "pods": ["engine"],
    }
    assert kube.pod(ns, "runner").metadata.labels[names.client_label(uid)] == "true"
    owners = kube.get_buildjob(ns, "crash", DE)["metadata"]["ownerReferences"]  # type: ignore[index]
    assert [o["uid"] for o in owners] == [pod.metadata.uid]


def test_operator_may_write_a_client_secret_but_no_client_pod(
    kube: Kube, operator: OperatorProcess, operator_kubeconfig: Path, ns: str
) -> None:
    """Component "client" is a DockerEngine's Secret, beside the pod: never a pod of its own."""
    as_operator = Kube(new_client_from_config(str(operator_kubeconfig)))
    labels = {
        names.LABEL_MANAGED_BY: names.APP,
        names.LABEL_COMPONENT: names.COMPONENT_CLIENT,
        names.LABEL_OWNER_NAMESPACE: ns,
        names.LABEL_OWNER_UID: "some-uid",
        names.LABEL_OWNER_KIND: names.DOCKER_ENGINE_KIND,
    }
    meta = {"name": "planted", "labels": labels}
    as_operator.core.create_namespaced_secret(
        ns, {"metadata": meta, "stringData": {"a": "b"}}, dry_run="All"
    )  # admitted: the positive control
    wait_for(lambda: kube.has_default_account(ns), what="default ServiceAccount")
    pod = {
        "metadata": meta,
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "local/job:1",
                    "securityContext": {"allowPrivilegeEscalation": False},
                }
            ]
        },
    }
    with pytest.raises(ApiException) as e:
        as_operator.core.create_namespaced_pod(ns, pod, dry_run="All")
    assert e.value.status == 403, e.value.body
    # The same pod as a job's is admitted: what refused it was its component alone.
    job_labels = {**labels, names.LABEL_COMPONENT: names.COMPONENT_JOB}
    job_pod = {**pod, "metadata": {"name": "planted", "labels": job_labels}}
    as_operator.core.create_namespaced_pod(ns, job_pod, dry_run="All")
