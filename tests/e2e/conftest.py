"""The e2e tier: a real single-node cluster (cluster/localcluster.py --tier real) where pods
really run, images built locally (images/build.py), and the operator as a real process."""

import json
import os
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.config import new_client_from_config

from remote_docker_operator import names
from remote_docker_operator.models import DEFAULT_DENIED_CIDRS

from ..support import (
    ARTIFACTS,
    ROOT,
    Kube,
    OperatorProcess,
    install_chart_identity,
    operator_for,
    register_webhook,
    uninstall_chart_identity,
    uninstall_make_up,
    unregister_webhook,
    wait_for,
)

sys.path.insert(0, str(ROOT / "cluster"))
from localcluster import BIN, Cluster, Ports, free_port
from node import STAND_IN_DENIED, STAND_IN_INTERNET

OPERATOR_ENV = {"RDO_RESYNC_SECONDS": "2"}
# The default class of the tier: the engine image built here, and the default denied ranges plus
# the stand-in for "a denied range" (e.g. cloud metadata) that holds a server of the tests' own.
ENGINE_CLASS = {
    "image": "rdo.local/dind:26.1",
    "versionedImage": {"repository": "rdo.local/dind", "tagSuffix": ""},
    "allowedImages": ["rdo.local/*"],
    "deniedCidrs": [*DEFAULT_DENIED_CIDRS, f"{STAND_IN_DENIED.rsplit('.', 2)[0]}.0.0/16"],
}
JOB_IMAGE = "rdo.local/job:1"
OPERATOR_IMAGE = "rdo.local/remote-docker-operator:0.1.0"
HELM = str(BIN / "helm")
BUSYBOX = "rdo.local/busybox:1.36"


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    c = Cluster(
        Path(os.environ.get("RDO_CLUSTER_DIR", ARTIFACTS / "cluster")), Ports(), tier="real"
    )
    started_here = not c.running()
    c.up()
    # The tests run their own operator: remove the one `make up` installed, if any (with its
    # cluster-wide objects: its admission policies would hold the tests' operator back).
    uninstall_make_up(c)
    c.install_crds(ROOT / "crds")
    try:
        yield c
    finally:
        if started_here:
            c.down()


@pytest.fixture(scope="session")
def kube(cluster: Cluster) -> Kube:
    return Kube(new_client_from_config(str(cluster.kubeconfig)))


@pytest.fixture(scope="session")
def operator_kubeconfig(cluster: Cluster) -> Iterator[Path]:
    """The chart's ServiceAccount, RBAC, admission policies and a default EngineClass; the
    operator authenticates as that ServiceAccount. Removed after the session: the cluster may
    be `make up`'s, whose own release must not meet them."""
    yield install_chart_identity(
        cluster, BIN / "helm", ENGINE_CLASS, cluster.dir / "operator.token"
    )
    uninstall_chart_identity(cluster, BIN / "helm", ENGINE_CLASS)


@pytest.fixture(scope="session")
def webhook_env(cluster: Cluster) -> Iterator[dict[str, str]]:
    """The chart's webhook, served by the tests' operator; its init container runs the operator
    image built here."""
    yield register_webhook(cluster, BIN / "helm", free_port(), OPERATOR_IMAGE, "Never")
    unregister_webhook(cluster, BIN / "helm")


@pytest.fixture(scope="session")
def operator(
    cluster: Cluster, operator_kubeconfig: Path, webhook_env: dict[str, str]
) -> Iterator[OperatorProcess]:
    yield from operator_for(cluster, {**OPERATOR_ENV, **webhook_env}, operator_kubeconfig)


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, tuple[str, int]]]:
    """TCP servers of the tests' own on this machine's stand-in addresses: one for 'the
    internet', one inside a denied range (standing in for the cloud metadata address)."""
    listeners = []
    found = {}
    for name, address in (("internet", STAND_IN_INTERNET), ("denied", STAND_IN_DENIED)):
        server = socket.create_server((address, 0))
        found[name] = (address, server.getsockname()[1])
        listeners.append(server)
        threading.Thread(target=_serve, args=(server,), daemon=True).start()
    yield found
    for server in listeners:
        server.close()


def _serve(server: socket.socket) -> None:
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            conn.sendall(b"hello\n")


@pytest.fixture
def ns(kube: Kube) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    kube.create_namespace(name)
    yield name
    kube.core.delete_namespace(name)


@pytest.fixture
def classes(cluster: Any) -> Iterator[Any]:
    """Applies EngineClasses (and other cluster objects) for one test; deletes them after."""
    made: list[dict[str, Any]] = []

    def apply(obj: dict[str, Any]) -> str:
        cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))
        made.append(obj)
        return str(obj["metadata"]["name"])

    yield apply
    for obj in made:
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found", input=json.dumps(obj))


def released(kube: Kube, volume: str) -> bool:
    return bool(kube.core.read_persistent_volume(volume).status.phase == "Released")


def delete_kept_volumes(kube: Kube) -> None:
    """Hands every kept cache volume back to the provisioner (which deletes its directory), as
    the operator does once its retention has passed; after a test that made some."""
    selector = f"{names.LABEL_MANAGED_BY}={names.APP},{names.LABEL_CACHE}"

    def kept() -> list[Any]:
        return list(kube.core.list_persistent_volume(label_selector=selector).items)

    for pv in kept():
        wait_for(lambda n=pv.metadata.name: released(kube, n), timeout=120, what="released")
        policy = {"spec": {"persistentVolumeReclaimPolicy": "Delete"}}
        kube.core.patch_persistent_volume(pv.metadata.name, policy)
    wait_for(lambda: not kept(), timeout=120, what="the cache volumes deleted")
