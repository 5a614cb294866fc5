"""The e2e tier: a real single-node cluster (cluster/localcluster.py --tier real) where pods
really run, images built locally (images/build.py), and the operator as a real process."""

import os
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes.config import new_client_from_config

from ..support import ARTIFACTS, ROOT, Kube, OperatorProcess, operator_for

sys.path.insert(0, str(ROOT / "cluster"))
from localcluster import BIN, Cluster, Ports
from node import STAND_IN_DENIED, STAND_IN_INTERNET

# The default denied ranges plus the stand-in for "a denied range" (e.g. cloud metadata) that
# holds a server of the tests' own.
DENIED = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,169.254.0.0/16," + (
    f"{STAND_IN_DENIED.rsplit('.', 2)[0]}.0.0/16"
)
OPERATOR_ENV = {
    "RDO_RESYNC_SECONDS": "2",
    "RDO_ENGINE_IMAGE_REPOSITORY": "rdo.local/dind",
    "RDO_ENGINE_VERSION": "20.10",
    "RDO_ENGINE_IMAGE_SUFFIX": "",
    "RDO_DENIED_CIDRS": DENIED,
}
JOB_IMAGE = "rdo.local/job:1"
HELM = str(BIN / "helm")
BUSYBOX = "rdo.local/busybox:1.36"


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    c = Cluster(
        Path(os.environ.get("RDO_CLUSTER_DIR", ARTIFACTS / "cluster")), Ports(), tier="real"
    )
    started_here = not c.running()
    c.up()
    # The tests run their own operator: remove the one `make up` installed, if any.
    c.kubectl("delete", "namespace", "remote-docker-operator", "--ignore-not-found", "--wait")
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
def operator(cluster: Cluster) -> Iterator[OperatorProcess]:
    yield from operator_for(cluster, OPERATOR_ENV)


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
