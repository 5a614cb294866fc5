"""The integration tier: a real kube-apiserver, etcd, kube-controller-manager and
kube-scheduler built from source, with kwok standing in for kubelets, started once per session.
"""

import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes.config import new_client_from_config

from remote_docker_operator import names

from ..support import (
    ARTIFACTS,
    OPERATOR_USER,
    ROOT,
    Kube,
    OperatorProcess,
    install_chart_identity,
    operator_for,
    register_webhook,
    wait_for,
)

sys.path.insert(0, str(ROOT / "cluster"))
from localcluster import BIN, Cluster, Ports, free_port

# Fast resync so deadlines, TTLs and drift are noticed within a second or two in tests.
OPERATOR_ENV = {
    "RDO_LOG_LEVEL": "DEBUG",
    "RDO_RESYNC_SECONDS": "1",
    "RDO_DEFAULT_TTL_SECONDS": "600",
    # Its /metrics (test_metrics.py), on a port free when the session starts.
    "RDO_METRICS_PORT": str(free_port()),
}
# The image of the init container the webhook gives a client pod (kwok pulls nothing).
WAIT_IMAGE = "local/remote-docker-operator:test"
# The default class of the tier: local images (kwok pulls nothing), any version of them.
ENGINE_CLASS = {
    "image": "local/dind:27",
    "versionedImage": {"repository": "local/dind"},
    "allowedImages": ["local/*"],
    "storage": {"max": "100Gi"},
    "daemon": {"allowInsecureRegistries": True},
}


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    missing = [
        b
        for b in (
            "helm",
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok",
            "kubectl",
        )
        if not (BIN / b).exists()
    ]
    if missing:
        pytest.fail(f"missing {missing} in {BIN}: run `make bins` (cluster/build-bins.sh)")
    workdir = ARTIFACTS / "integration"
    shutil.rmtree(workdir, ignore_errors=True)
    # The audit log records every request of the operator's ServiceAccount (test_leader.py
    # tells the replicas apart by their tokens).
    c = Cluster(workdir, Ports.free(), tier="kwok", audit_users=(OPERATOR_USER,))
    try:
        c.up()
        c.install_crds(ROOT / "crds")
        yield c
    finally:
        c.down()


@pytest.fixture(scope="session")
def kube(cluster: Cluster) -> Kube:
    return Kube(new_client_from_config(str(cluster.kubeconfig)))


@pytest.fixture(scope="session")
def operator_kubeconfig(cluster: Cluster) -> Path:
    """The chart's ServiceAccount, RBAC, admission policies and a default EngineClass; the
    operator authenticates as that ServiceAccount."""
    return install_chart_identity(
        cluster, BIN / "helm", ENGINE_CLASS, cluster.dir / "operator.token"
    )


@pytest.fixture(scope="session")
def webhook_env(cluster: Cluster) -> dict[str, str]:
    return register_webhook(cluster, BIN / "helm", free_port(), WAIT_IMAGE, "IfNotPresent")


@pytest.fixture(scope="session")
def operator(
    cluster: Cluster, operator_kubeconfig: Path, webhook_env: dict[str, str]
) -> Iterator[OperatorProcess]:
    yield from operator_for(cluster, {**OPERATOR_ENV, **webhook_env}, operator_kubeconfig)


@pytest.fixture
def metrics_url(operator: OperatorProcess) -> str:
    return f"http://127.0.0.1:{OPERATOR_ENV['RDO_METRICS_PORT']}/metrics"


@pytest.fixture
def restore_operator(operator: OperatorProcess) -> Iterator[OperatorProcess]:
    """For tests that restart the operator with other settings: back to the defaults after."""
    yield operator
    operator.restart()


@pytest.fixture
def ns(kube: Kube) -> Iterator[str]:
    """A fresh user namespace per test, deleted (with its BuildJobs) after it."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.create_namespace(name)
    yield name
    # Its BuildJobs and DockerEngines are gone (the operator done with them) before the next
    # test, so one test's teardown never overlaps the next; the namespace itself is left to
    # Kubernetes (deleting an empty one still takes the namespace controller about 5 s). Its
    # pods go at once: the controller would look again only after half their grace period.
    kube.core.delete_collection_namespaced_pod(name, grace_period_seconds=0)
    for plural in PLURALS:
        kube.custom.delete_collection_namespaced_custom_object(
            names.GROUP, names.VERSION, name, plural
        )

    def emptied() -> bool:
        return not any(
            kube.custom.list_namespaced_custom_object(names.GROUP, names.VERSION, name, plural)[
                "items"
            ]
            for plural in PLURALS
        )

    wait_for(emptied, timeout=120, what=f"the BuildJobs and DockerEngines of {name} gone")
    kube.core.delete_namespace(name)


PLURALS = (names.PLURAL, names.DOCKER_ENGINE_PLURAL)


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    if call.when == "call" and call.excinfo is not None:
        logs = ARTIFACTS / "integration" / "logs"
        item.add_report_section(
            "call", "cluster logs", f"see {logs} (operator.log and one file per component)"
        )
