"""A BuildJob's whole life against a real API server, with kwok running the pods."""

import base64
from typing import Any

import pytest
from kubernetes.client import NetworkingV1Api

from remote_docker_operator import names

from ..support import Kube, OperatorProcess, wait_for

pytestmark = pytest.mark.integration


def spec(exit_code: int | None = 0, **extra: Any) -> dict[str, Any]:
    env = [] if exit_code is None else [{"name": "KWOK_EXIT_CODE", "value": str(exit_code)}]
    return {
        "job": {
            "image": "local/job:1",
            "command": ["sh", "-c"],
            "args": ["docker version"],
            "env": env,
        },
        **extra,
    }


def test_success_end_to_end(kube: Kube, operator: OperatorProcess, ns: str) -> None:
    kube.create_buildjob(ns, "ok", spec(0, ttlSecondsAfterFinished=5))
    running = kube.wait_phase(ns, "ok", "Running", "Succeeded")
    job_ns = running["namespace"]
    assert job_ns.startswith("bj-")
    assert running["engine"]["endpoint"] == f"tcp://engine.{job_ns}.svc:2376"

    # Every child exists, once, with the labels that tie it to its BuildJob.
    uid = kube.get_buildjob(ns, "ok")["metadata"]["uid"]  # type: ignore[index]
    namespace = kube.core.read_namespace(job_ns)
    assert namespace.metadata.labels[names.LABEL_OWNER_UID] == uid
    assert namespace.metadata.labels["pod-security.kubernetes.io/enforce"] == "privileged"
    networking = NetworkingV1Api(kube.client)
    policies = networking.list_namespaced_network_policy(job_ns).items
    assert sorted(p.metadata.name for p in policies) == ["default-deny", "engine"]
    secrets = {s.metadata.name: s for s in kube.core.list_namespaced_secret(job_ns).items}
    assert set(secrets) == {"engine-tls"}
    # The job's side, beside the BuildJob, owned by it.
    beside = f"{names.LABEL_OWNER_UID}={uid}"
    assert [
        p.metadata.name
        for p in networking.list_namespaced_network_policy(ns, label_selector=beside).items
    ] == ["ok-job"]
    secrets["ok-docker"] = kube.core.read_namespaced_secret("ok-docker", ns)
    assert [r.uid for r in secrets["ok-docker"].metadata.owner_references] == [uid]
    client = secrets["ok-docker"].data
    assert base64.b64decode(client["DOCKER_HOST"]).decode() == running["engine"]["endpoint"]
    assert base64.b64decode(client["DOCKER_TLS_VERIFY"]).decode() == "1"
    for secret in secrets.values():
        for value in (secret.data or {}).values():
            assert b"CA PRIVATE" not in base64.b64decode(value)
    fingerprints = {
        s.metadata.annotations[names.ANNOTATION_CA_FINGERPRINT]
        for n, s in secrets.items()
        if n in ("engine-tls", "ok-docker")
    }
    assert len(fingerprints) == 1
    service = kube.core.read_namespaced_service("engine", job_ns)
    assert service.spec.ports[0].port == 2376

    done = kube.wait_phase(ns, "ok", "Succeeded")
    assert done["exitCode"] == 0
    assert done["reason"] == "Succeeded"
    assert done["duration"]
    assert {c["type"]: c["status"] for c in done["conditions"]} == {
        "EngineReady": "False",
        "Complete": "True",
        "Failed": "False",
    }
    # The engine goes as soon as the job ends; the job pod (and its log) stays until the TTL.
    wait_for(lambda: kube.pod(job_ns, "engine") is None, what="engine pod deleted")
    assert kube.pod(ns, "ok") is not None  # `kubectl logs ok` in the BuildJob's namespace
    wait_for(lambda: not kube.namespace_exists(job_ns), timeout=60, what="namespace deleted")
    assert kube.wait_phase(ns, "ok", "Succeeded").get("cleanedUp") is True
    # At the TTL the job's side goes too, though the BuildJob stays.
    wait_for(lambda: kube.pod(ns, "ok") is None, what="job pod deleted at the TTL")
    assert kube.core.list_namespaced_secret(ns, label_selector=beside).items == []
    assert networking.list_namespaced_network_policy(ns, label_selector=beside).items == []
    kube.wait_event(ns, "ok", "Normal", "Succeeded")
    # Events only where they say what the status does not (each is a write): not for the
    # steps on the way, which the status and its conditions already record.
    events = kube.events_for(ns, "ok")
    assert ("Normal", "Succeeded") in events  # the control: this BuildJob's Events are read
    assert not {("Normal", r) for r in ("Provisioning", "JobRunning", "CleanedUp")} & set(events)


def test_job_failure_reports_exit_code(kube: Kube, operator: OperatorProcess, ns: str) -> None:
    kube.create_buildjob(ns, "bad", spec(3))
    status = kube.wait_phase(ns, "bad", "Failed")
    assert status["reason"] == "JobFailed"
    assert status["exitCode"] == 3
    assert "exit code 3" in status["message"]
    job_ns = status["namespace"]
    wait_for(lambda: kube.pod(job_ns, "engine") is None, what="engine pod deleted")
    assert kube.pod(ns, "bad") is not None  # kept for its logs
    kube.wait_event(ns, "bad", "Warning", "JobFailed")


def test_deadline(kube: Kube, operator: OperatorProcess, ns: str) -> None:
    kube.create_buildjob(ns, "slow", spec(None, activeDeadlineSeconds=3))
    kube.wait_phase(ns, "slow", "Running")
    status = kube.wait_phase(ns, "slow", "Failed", timeout=30)
    assert status["reason"] == "DeadlineExceeded"
    job_ns = status["namespace"]
    wait_for(
        lambda: kube.pod(job_ns, "engine") is None and kube.pod(ns, "slow") is None,
        what="both pods deleted",
    )


def test_engine_failure(kube: Kube, operator: OperatorProcess, ns: str) -> None:
    kube.create_buildjob(ns, "eng", spec(None))
    job_ns = kube.wait_phase(ns, "eng", "Running")["namespace"]
    kube.core.patch_namespaced_pod_status(
        "engine",
        job_ns,
        {
            "status": {
                "phase": "Failed",
                "containerStatuses": [
                    {
                        "name": "dockerd",
                        "image": "x",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                    }
                ],
            }
        },
    )
    status = kube.wait_phase(ns, "eng", "Failed")
    assert status["reason"] == "EngineFailed"
    assert "137" in status["message"]
    wait_for(lambda: kube.pod(ns, "eng") is None, what="job pod deleted")


def test_job_pod_deleted(kube: Kube, operator: OperatorProcess, ns: str) -> None:
    kube.create_buildjob(ns, "gone", spec(None))
    kube.wait_phase(ns, "gone", "Running")
    kube.core.delete_namespaced_pod("gone", ns, grace_period_seconds=0)
    status = kube.wait_phase(ns, "gone", "Failed")
    assert status["reason"] == "JobPodDeleted"


def test_delete_removes_everything(kube: Kube, operator: OperatorProcess, ns: str) -> None:
    kube.create_buildjob(ns, "del", spec(None))
    job_ns = kube.wait_phase(ns, "del", "Running")["namespace"]
    uid = kube.get_buildjob(ns, "del")["metadata"]["uid"]  # type: ignore[index]
    beside = f"{names.LABEL_OWNER_UID}={uid}"
    assert kube.pod(ns, "del") is not None
    kube.delete_buildjob(ns, "del")
    wait_for(lambda: kube.get_buildjob(ns, "del") is None, what="BuildJob gone")
    wait_for(lambda: not kube.namespace_exists(job_ns), timeout=60, what="namespace gone")
    networking = NetworkingV1Api(kube.client)
    wait_for(
        lambda: (
            not (
                kube.core.list_namespaced_pod(ns, label_selector=beside).items
                or kube.core.list_namespaced_secret(ns, label_selector=beside).items
                or networking.list_namespaced_network_policy(ns, label_selector=beside).items
            )
        ),
        timeout=60,
        what="the job side beside it gone",
    )


def test_a_buildjob_made_again_under_its_name_runs(
    kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    """CI deletes and re-applies: the new BuildJob's job pod, Secret and policy take the names
    its predecessor's hold until they are gone."""
    kube.create_buildjob(ns, "again", spec(None))
    kube.wait_phase(ns, "again", "Running")
    kube.delete_buildjob(ns, "again")
    wait_for(lambda: kube.get_buildjob(ns, "again") is None, what="BuildJob gone")
    kube.create_buildjob(ns, "again", spec(0))
    status = kube.wait_phase(ns, "again", "Succeeded", "Failed")
    assert status["reason"] == "Succeeded", status


def test_delete_during_provisioning(kube: Kube, operator: OperatorProcess, ns: str) -> None:
    kube.create_buildjob(ns, "early", spec(None))
    wait_for(lambda: kube.status(ns, "early").get("namespace"), what="provisioning started")
    job_ns = kube.status(ns, "early")["namespace"]
    kube.delete_buildjob(ns, "early")
    wait_for(lambda: kube.get_buildjob(ns, "early") is None, what="BuildJob gone")
    wait_for(lambda: not kube.namespace_exists(job_ns), timeout=60, what="namespace gone")
