"""What an EngineClass decides, on the real cluster: where engines run, with which runtime, and
that a cluster which does not enforce NetworkPolicy runs no job at all."""

from typing import Any

import pytest

from remote_docker_operator import names

from ..support import Kube, OperatorProcess, engine_class, wait_for
from .conftest import ENGINE_CLASS
from .test_e2e import job, run

pytestmark = pytest.mark.e2e

NODE = "rdo-node"
POOL_LABEL = "rdo-test/pool"
TAINT = "rdo-test/builders"


def scheduled(kube: Kube, namespace: str, pod: str) -> str | None:
    """'yes' once the pod has a node, 'no' while the scheduler finds none (Unschedulable)."""
    found = kube.pod(namespace, pod)
    if found is None:
        return None
    if found.spec.node_name:
        return "yes"
    for c in found.status.conditions or []:
        if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
            return "no"
    return None


def test_engine_runs_only_on_a_node_its_class_selects(
    cluster: Any, kube: Kube, operator: OperatorProcess, ns: str, classes: Any
) -> None:
    placed = classes(engine_class("placed", {**ENGINE_CLASS, "nodeSelector": {POOL_LABEL: "b"}}))
    kube.create_buildjob(
        ns,
        "placed",
        job("docker version", engine={"className": placed, "imagePullPolicy": "Never"}),
    )
    job_ns = kube.wait_phase(ns, "placed", "Provisioning")["namespace"]
    try:
        # The node is no builder yet: the engine waits, unscheduled, while the job pod runs.
        assert (
            wait_for(lambda: scheduled(kube, job_ns, names.ENGINE_POD), what="scheduling") == "no"
        )
        assert wait_for(lambda: scheduled(kube, ns, "placed"), what="job pod") == "yes"
        cluster.kubectl("label", "node", NODE, f"{POOL_LABEL}=b")
        status = kube.wait_phase(ns, "placed", "Succeeded", "Failed", timeout=300)
        assert status["phase"] == "Succeeded", status
    finally:
        cluster.kubectl("label", "node", NODE, f"{POOL_LABEL}-")


def test_engine_tolerates_what_its_class_tolerates(
    cluster: Any, kube: Kube, operator: OperatorProcess, ns: str, classes: Any
) -> None:
    toleration = {"key": TAINT, "operator": "Exists", "effect": "NoSchedule"}
    tolerant = classes(engine_class("tolerant", {**ENGINE_CLASS, "tolerations": [toleration]}))
    cluster.kubectl("taint", "node", NODE, f"{TAINT}=only:NoSchedule")
    try:
        kube.create_buildjob(
            ns,
            "tol",
            job("docker version", engine={"className": tolerant, "imagePullPolicy": "Never"}),
        )
        job_ns = kube.wait_phase(ns, "tol", "Provisioning")["namespace"]
        # The engine tolerates the taint and lands; the job pod (the class does not place it)
        # does not: the taint really keeps pods off.
        assert wait_for(lambda: scheduled(kube, job_ns, names.ENGINE_POD), what="engine") == "yes"
        assert wait_for(lambda: scheduled(kube, ns, "tol"), what="job pod") == "no"
    finally:
        cluster.kubectl("taint", "node", NODE, f"{TAINT}-")
    status = kube.wait_phase(ns, "tol", "Succeeded", "Failed", timeout=300)
    assert status["phase"] == "Succeeded", status


def test_runtime_class_handler_is_used(
    cluster: Any, kube: Kube, operator: OperatorProcess, ns: str, classes: Any
) -> None:
    handler = "rdo-traced"  # cluster/node.py: runc behind a wrapper that logs each call
    runtime = classes(
        {
            "apiVersion": "node.k8s.io/v1",
            "kind": "RuntimeClass",
            "metadata": {"name": "traced"},
            "handler": handler,
        }
    )
    traced = classes(engine_class("traced", {**ENGINE_CLASS, "runtimeClassName": runtime}))
    kube.create_buildjob(
        ns, "rt", job("sleep 30", engine={"className": traced, "imagePullPolicy": "Never"})
    )
    job_ns = kube.wait_phase(ns, "rt", "Running", timeout=300)["namespace"]
    engine, job_pod = kube.pod(job_ns, names.ENGINE_POD), kube.pod(ns, names.job_pod("rt"))
    assert engine.spec.runtime_class_name == runtime
    engine_id = engine.status.container_statuses[0].container_id.removeprefix("containerd://")

    def job_container_id() -> str | None:
        statuses = kube.pod(ns, names.job_pod("rt")).status.container_statuses or []
        return statuses[0].container_id if statuses else None

    job_id = wait_for(job_container_id, what="the job container").removeprefix("containerd://")
    log = cluster.node.traced_runc_log.read_text()
    assert engine_id in log  # the engine ran under the class's handler...
    assert job_id not in log
    assert job_pod.spec.runtime_class_name is None
    kube.delete_buildjob(ns, "rt")


def test_probe_fails_a_buildjob_where_policies_are_not_enforced(
    cluster: Any, kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    cluster.node.firewall_down()  # the policies stay, nothing enforces them
    try:
        kube.create_buildjob(ns, "unfenced", job("echo should-not-run"))
        status = kube.wait_phase(ns, "unfenced", "Succeeded", "Failed", timeout=300)
        assert status["phase"] == "Failed", status
        assert status["reason"] == "NetworkPolicyNotEnforced", status
        assert "does not enforce NetworkPolicy" in status["message"]
        assert "10.96.0.1:443" in status["message"]  # the API server answered
    finally:
        cluster.node.firewall_up()
    # Positive control: with the policy controller back, the same job runs.
    status, output = run(kube, ns, "fenced", "echo ran")
    assert status["phase"] == "Succeeded", (status, output)
    assert "ran" in output
