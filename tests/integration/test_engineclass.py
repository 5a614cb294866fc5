"""EngineClass behaviour that is not an attack: a namespace's cap on concurrent engines, a
change of the namespace prefix that must not lose an existing BuildJob's namespace, and what the
API server refuses in a class."""

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from remote_docker_operator import names

from ..support import Kube, OperatorProcess, engine_class, wait_for
from .conftest import ENGINE_CLASS

pytestmark = pytest.mark.integration

RUNS = {"image": "local/job:1"}  # no KWOK_EXIT_CODE: runs until deleted


@pytest.fixture
def capped(cluster: Any) -> Iterator[str]:
    body = engine_class("capped", {**ENGINE_CLASS, "maxEnginesPerNamespace": 1})
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
    yield "capped"
    cluster.kubectl("delete", "engineclass", "capped", check=False)


def test_namespace_cap_queues_the_rest(
    kube: Kube, operator: OperatorProcess, ns: str, capped: str
) -> None:
    other = f"o-{uuid.uuid4().hex[:6]}"
    kube.create_namespace(other)
    try:
        spec = {"job": RUNS, "engine": {"className": capped}}
        kube.create_buildjob(ns, "first", spec)
        kube.wait_phase(ns, "first", "Running")
        kube.create_buildjob(ns, "second", spec)
        queued = kube.wait_phase(ns, "second", "Pending")
        assert queued["reason"] == "Queued"
        assert "maxEnginesPerNamespace" in queued["message"], queued["message"]
        # The cap is per namespace: another namespace's BuildJob of the class runs at once.
        kube.create_buildjob(other, "elsewhere", spec)
        kube.wait_phase(other, "elsewhere", "Running")
        # The default class is not capped: the same namespace runs it alongside.
        kube.create_buildjob(ns, "uncapped", {"job": RUNS})
        kube.wait_phase(ns, "uncapped", "Running")
        assert kube.status(ns, "second")["phase"] == "Pending"
        kube.delete_buildjob(ns, "first")
        kube.wait_phase(ns, "second", "Running")
    finally:
        kube.core.delete_namespace(other)


def test_prefix_change_keeps_existing_namespaces(
    kube: Kube, restore_operator: OperatorProcess, ns: str
) -> None:
    kube.create_buildjob(ns, "old", {"job": RUNS, "ttlSecondsAfterFinished": 1})
    old_ns = kube.wait_phase(ns, "old", "Running")["namespace"]
    assert old_ns.startswith("bj-")
    restore_operator.restart(RDO_NAMESPACE_PREFIX="pp-")
    # The running BuildJob is still followed in its own namespace...
    kube.core.delete_namespaced_pod(names.job_pod("old"), ns)
    assert kube.wait_phase(ns, "old", "Failed")["reason"] == "JobPodDeleted"
    # ...and its namespace is the one cleaned up after the TTL.
    wait_for(lambda: not kube.namespace_exists(old_ns), timeout=60, what="old namespace gone")
    # New BuildJobs get the new prefix.
    kube.create_buildjob(ns, "new", {"job": RUNS})
    assert kube.wait_phase(ns, "new", "Running")["namespace"].startswith("pp-")


PROFILE = "remote-docker-operator/user-namespace-engine.json"


@pytest.mark.parametrize(
    ("spec", "refusal"),
    [
        ({"isolation": "UserNamespace", "seccompProfile": PROFILE}, None),
        ({"isolation": "Rootless", "seccompProfile": PROFILE}, None),
        ({"seccompProfile": PROFILE}, "seccompProfile is for isolation UserNamespace or Rootless"),
        (
            {"isolation": "Privileged", "seccompProfile": PROFILE},
            "seccompProfile is for isolation UserNamespace or Rootless",
        ),
        ({"isolation": "Rootless"}, "isolation Rootless needs seccompProfile"),
        (
            {"isolation": "UserNamespace", "seccompProfile": "../../etc/profile.json"},
            "should match",
        ),
        ({"isolation": "UserNamespace", "seccompProfile": "/abs/profile.json"}, "should match"),
    ],
    ids=[
        "user-namespace",
        "rootless",
        "default-tier",
        "privileged",
        "rootless-unconfined",
        "climbs-out",
        "absolute",
    ],
)
def test_seccomp_profile_admission(kube: Kube, spec: dict[str, Any], refusal: str | None) -> None:
    """A Localhost profile only for the tier it means something in, and only a path below the
    kubelet's seccomp directory; the first case is the positive control."""
    body = engine_class(f"seccomp-{uuid.uuid4().hex[:6]}", {**ENGINE_CLASS, **spec})

    def create() -> None:
        kube.custom.create_cluster_custom_object(
            names.GROUP, names.VERSION, names.CLASS_PLURAL, body, dry_run="All"
        )

    if refusal is None:
        create()
        return
    with pytest.raises(ApiException) as info:
        create()
    assert info.value.status == 422, info.value.body
    message = json.loads(info.value.body)["message"]
    assert "spec.seccompProfile" in message, message
    assert refusal in message, message
