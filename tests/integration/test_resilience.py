"""The operator killed, restarted, rate-limited by a queue; orphans swept."""

from typing import Any

import pytest
from kubernetes.client import NetworkingV1Api

from remote_docker_operator import failpoints, names

from ..support import Kube, OperatorProcess, wait_for

pytestmark = pytest.mark.integration


def finishing(code: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "job": {"image": "local/job:1", "env": [{"name": "KWOK_EXIT_CODE", "value": str(code)}]},
        **extra,
    }


def children(kube: Kube, job_ns: str, ns: str = "", uid: str = "") -> dict[str, list[str]]:
    """What the job namespace holds, and (given ns and uid) the job's side beside the
    BuildJob."""
    beside: dict[str, list[str]] = {}
    if ns:
        selector = f"{names.LABEL_OWNER_UID}={uid}"
        networking = NetworkingV1Api(kube.client)
        beside = {
            "beside": sorted(
                [
                    *(
                        f"policy {p.metadata.name}"
                        for p in networking.list_namespaced_network_policy(
                            ns, label_selector=selector
                        ).items
                    ),
                    *(
                        f"secret {s.metadata.name}"
                        for s in kube.core.list_namespaced_secret(ns, label_selector=selector).items
                    ),
                    *(
                        f"pod {p.metadata.name}"
                        for p in kube.core.list_namespaced_pod(ns, label_selector=selector).items
                    ),
                ]
            )
        }
    return beside | {
        "policies": sorted(
            p.metadata.name
            for p in NetworkingV1Api(kube.client).list_namespaced_network_policy(job_ns).items
        ),
        "secrets": sorted(s.metadata.name for s in kube.core.list_namespaced_secret(job_ns).items),
        "services": sorted(
            s.metadata.name for s in kube.core.list_namespaced_service(job_ns).items
        ),
        "pods": sorted(p.metadata.name for p in kube.core.list_namespaced_pod(job_ns).items),
    }


@pytest.mark.parametrize("step", [s for s in failpoints.STEPS if s != "finished"])
def test_killed_at_each_step_converges(
    kube: Kube, restore_operator: OperatorProcess, ns: str, step: str
) -> None:
    """SIGKILL right after a provisioning step; a restarted operator finishes the job with
    exactly one of every child."""
    operator = restore_operator
    operator.restart(RDO_FAILPOINT=step)
    kube.core.create_namespaced_secret(
        ns,
        {
            "metadata": {"name": "regcred"},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": "{}"},
        },
    )
    # No KWOK_EXIT_CODE: the job runs until deleted, so its children can be counted.
    kube.create_buildjob(
        ns, "crash", {"job": {"image": "local/job:1"}, "imagePullSecrets": [{"name": "regcred"}]}
    )
    wait_for(lambda: not operator.alive(), timeout=30, what=f"operator to die at {step}")
    operator.start()
    status = kube.wait_phase(ns, "crash", "Running")
    job_ns = status["namespace"]
    uid = kube.get_buildjob(ns, "crash")["metadata"]["uid"]  # type: ignore[index]
    assert children(kube, job_ns, ns, uid) == {
        "beside": ["pod crash", "policy crash-job", "secret crash-docker"],
        "policies": ["default-deny", "engine"],
        "secrets": ["engine-tls"],
        "services": ["engine"],
        "pods": ["engine"],
    }
    secrets = [
        kube.core.read_namespaced_secret("engine-tls", job_ns),
        kube.core.read_namespaced_secret("crash-docker", ns),
    ]
    prints = {s.metadata.annotations[names.ANNOTATION_CA_FINGERPRINT] for s in secrets}
    assert len(prints) == 1, "engine and client certificates come from one CA"


def test_killed_after_finishing_converges(
    kube: Kube, restore_operator: OperatorProcess, ns: str
) -> None:
    operator = restore_operator
    operator.restart(RDO_FAILPOINT="finished")
    kube.create_buildjob(ns, "fin", finishing(0))
    wait_for(lambda: not operator.alive(), timeout=30, what="operator to die")
    operator.start()
    status = kube.wait_phase(ns, "fin", "Succeeded")
    wait_for(lambda: kube.pod(status["namespace"], "engine") is None, what="engine deleted")


def test_stopped_while_buildjobs_come_and_go(
    kube: Kube, restore_operator: OperatorProcess, ns: str
) -> None:
    operator = restore_operator
    kube.create_buildjob(ns, "before", finishing(0, ttlSecondsAfterFinished=600))
    job_ns = kube.wait_phase(ns, "before", "Succeeded")["namespace"]
    operator.stop()
    kube.create_buildjob(ns, "while-down", finishing(0))
    kube.delete_buildjob(ns, "before")
    # No finalizer holds it: gone at once, its namespace left until an operator runs again.
    wait_for(lambda: kube.get_buildjob(ns, "before") is None, what="deleted BuildJob gone")
    assert kube.namespace_exists(job_ns)
    operator.start()
    kube.wait_phase(ns, "while-down", "Succeeded")
    wait_for(lambda: not kube.namespace_exists(job_ns), what="its namespace swept at start")


def test_deletion_missed_while_running_is_swept(
    kube: Kube, restore_operator: OperatorProcess, ns: str
) -> None:
    """A namespace whose BuildJob is gone, appearing while the operator runs (as a deletion
    event lost in a watch gap leaves one): the periodic sweep deletes it, no restart needed.
    Beside it, a live BuildJob's namespace stays."""
    kube.create_buildjob(ns, "kept", finishing(0, ttlSecondsAfterFinished=600))
    kept = kube.wait_phase(ns, "kept", "Succeeded")["namespace"]
    orphan = orphan_namespace(kube, "00000000-0000-0000-0000-000000000001")
    pid = restore_operator.proc.pid if restore_operator.proc else None
    wait_for(lambda: not kube.namespace_exists(orphan), timeout=90, what="orphan swept")
    assert restore_operator.proc is not None
    assert restore_operator.proc.pid == pid, "the operator restarted: not the periodic sweep"
    assert kube.namespace_exists(kept)


def test_legacy_finalizer_released_on_deletion(kube: Kube, ns: str) -> None:
    """BuildJobs made by earlier builds of the operator carry its finalizer: this one takes it
    off once the namespace is deleted, or they would never go."""
    body = finishing(0, ttlSecondsAfterFinished=600)
    kube.create_buildjob(ns, "legacy", body, finalizers=[names.LEGACY_FINALIZER])
    job_ns = kube.wait_phase(ns, "legacy", "Succeeded")["namespace"]
    bj = kube.get_buildjob(ns, "legacy")
    assert bj is not None
    assert bj["metadata"]["finalizers"] == [names.LEGACY_FINALIZER]
    kube.delete_buildjob(ns, "legacy")
    wait_for(lambda: kube.get_buildjob(ns, "legacy") is None, what="legacy BuildJob gone")
    wait_for(lambda: not kube.namespace_exists(job_ns), what="its namespace deleted")


def test_orphan_sweep(kube: Kube, restore_operator: OperatorProcess) -> None:
    orphan = orphan_namespace(kube, "00000000-0000-0000-0000-000000000000")
    restore_operator.restart()
    wait_for(lambda: not kube.namespace_exists(orphan), timeout=60, what="orphan deleted")


def test_queue_runs_in_creation_order(
    kube: Kube, restore_operator: OperatorProcess, ns: str
) -> None:
    restore_operator.restart(RDO_MAX_RUNNING="1")
    kube.create_buildjob(ns, "q1", {"job": {"image": "local/job:1"}})  # runs until deleted
    kube.wait_phase(ns, "q1", "Running")
    for name in ("q2", "q3"):
        kube.create_buildjob(ns, name, finishing(0))
    for name in ("q2", "q3"):
        status = kube.wait_phase(ns, name, "Pending")
        assert status["reason"] == "Queued"
    kube.delete_buildjob(ns, "q1")
    kube.wait_phase(ns, "q2", "Provisioning", "Running", "Succeeded")
    q2 = kube.wait_phase(ns, "q2", "Succeeded")
    q3 = kube.wait_phase(ns, "q3", "Succeeded")
    assert q2["startTime"] <= q3["startTime"]
    kube.wait_event(ns, "q3", "Normal", "Queued")


def orphan_namespace(kube: Kube, owner: str) -> str:
    """A job namespace as the operator makes them, for a BuildJob (uid) that does not exist."""
    orphan = names.job_namespace("bj-", owner)
    kube.core.create_namespace(
        {
            "metadata": {
                "name": orphan,
                "labels": {names.LABEL_MANAGED_BY: names.APP, names.LABEL_OWNER_UID: owner},
            }
        }
    )
    return orphan
