"""The local cluster's dynamic volume provisioner (cluster/addons/local-path.yaml): a claim of
the default StorageClass is bound to a new directory of the node once a pod uses it, what one
pod writes the next one reads, and deleting the claim removes the volume and its directory,
as a cloud's StorageClass would (the layer cache of issue 12 will stand on it)."""

from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import StorageV1Api

from ..support import Kube, wait_for
from .conftest import BUSYBOX, Cluster

pytestmark = pytest.mark.e2e


def pod(name: str, script: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": BUSYBOX,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", script],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
            ],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "cache"}}],
        },
    }


def finished(kube: Kube, ns: str, name: str) -> str:
    wait_for(
        lambda: kube.pod(ns, name).status.phase in ("Succeeded", "Failed"),
        timeout=120,
        what=f"pod {name} done",
    )
    assert kube.pod(ns, name).status.phase == "Succeeded"
    log: str = kube.core.read_namespaced_pod_log(name, ns)
    return log


def test_a_claim_gets_a_node_directory_that_outlives_its_pods(
    cluster: Cluster, kube: Kube, ns: str
) -> None:
    default = [
        c.metadata.name
        for c in StorageV1Api(kube.client).list_storage_class().items
        if (c.metadata.annotations or {}).get("storageclass.kubernetes.io/is-default-class")
        == "true"
    ]
    assert default == ["local-path"]
    kube.core.create_namespaced_persistent_volume_claim(
        ns,
        {
            "metadata": {"name": "cache"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "64Mi"}},
            },
        },
    )
    # Bound only once a pod uses it (WaitForFirstConsumer), to a volume the provisioner makes.
    claim = kube.core.read_namespaced_persistent_volume_claim("cache", ns)
    assert claim.status.phase == "Pending"
    wait_for(lambda: kube.has_default_account(ns), what="default ServiceAccount")
    kube.core.create_namespaced_pod(ns, pod("writer", "echo written-by-the-first-pod > /data/f"))
    finished(kube, ns, "writer")
    claim = kube.core.read_namespaced_persistent_volume_claim("cache", ns)
    assert claim.status.phase == "Bound"
    volume = kube.core.read_persistent_volume(claim.spec.volume_name)
    path = Path(volume.spec.host_path.path if volume.spec.host_path else volume.spec.local.path)
    assert path.is_relative_to(cluster.node.local_path), path
    assert (path / "f").read_text() == "written-by-the-first-pod\n"

    kube.core.create_namespaced_pod(ns, pod("reader", "cat /data/f"))
    assert finished(kube, ns, "reader") == "written-by-the-first-pod\n"

    for name in ("writer", "reader"):
        kube.core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
    kube.core.delete_namespaced_persistent_volume_claim("cache", ns)
    wait_for(
        lambda: (
            claim.spec.volume_name
            not in {v.metadata.name for v in kube.core.list_persistent_volume().items}
        ),
        timeout=120,
        what="volume deleted",
    )
    wait_for(lambda: not path.exists(), timeout=60, what="its directory removed")
