"""Layer caches on a real API server and its PersistentVolume controller (kwok runs the pods;
the volumes are static ones of a class with no provisioner): a key's volume is kept and taken
again, never by two engines at once, never by another namespace's key; a busy key waits when
its class says so; a volume unused past its retention is handed back for deletion."""

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from kubernetes.config import new_client_from_config

from remote_docker_operator import names
from remote_docker_operator import status as st

from ..support import Kube, OperatorProcess, engine_class, wait_for
from .conftest import ENGINE_CLASS

pytestmark = pytest.mark.integration

STORAGE_CLASS = "rdo-static"  # no StorageClass object: claims bind at once to volumes of it
RUNS = {"image": "local/job:1"}  # no KWOK_EXIT_CODE: runs until deleted


def finishing(key: str, class_name: str) -> dict[str, Any]:
    job = {"image": "local/job:1", "env": [{"name": "KWOK_EXIT_CODE", "value": "0"}]}
    return {"job": job, "engine": {"className": class_name, "cacheKey": key}}


def running(key: str, class_name: str) -> dict[str, Any]:
    return {"job": RUNS, "engine": {"className": class_name, "cacheKey": key}}


@pytest.fixture
def volumes(kube: Kube) -> Iterator[list[str]]:
    """Four unclaimed volumes, as a provisioner would have made them (reclaim policy Delete)."""
    made = [f"rdo-cache-{uuid.uuid4().hex[:6]}-{i}" for i in range(4)]
    for name in made:
        kube.core.create_persistent_volume(
            {
                "metadata": {"name": name},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": STORAGE_CLASS,
                    "persistentVolumeReclaimPolicy": "Delete",
                    "hostPath": {"path": f"/tmp/{name}"},
                },
            }
        )
    yield made
    for name in made:
        try:
            kube.core.delete_persistent_volume(name)
        except ApiException as e:
            if e.status != 404:
                raise


def apply_class(cluster: Any, name: str, when_busy: str = "Fresh") -> None:
    cache = {"storageClassName": STORAGE_CLASS, "size": "1Gi", "whenBusy": when_busy}
    body = engine_class(name, {**ENGINE_CLASS, "cache": cache})
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))


@pytest.fixture
def cached_class(cluster: Any, operator: OperatorProcess, volumes: list[str]) -> Iterator[str]:
    name = f"cached-{uuid.uuid4().hex[:6]}"
    apply_class(cluster, name)
    yield name
    cluster.kubectl("delete", "engineclass", name, "--ignore-not-found")


def pv(kube: Kube, name: str) -> Any:
    return kube.core.read_persistent_volume(name)


def released(kube: Kube, name: str) -> bool:
    return bool(pv(kube, name).status.phase == "Released")


def test_a_keys_volume_is_kept_and_taken_again(
    kube: Kube, cached_class: str, ns: str, volumes: list[str]
) -> None:
    kube.create_buildjob(ns, "one", finishing("org/app", cached_class))
    first = kube.wait_phase(ns, "one", "Succeeded")
    assert first["cache"]["hit"] is False
    volume = first["cache"]["volume"]
    assert volume in volumes
    kept = pv(kube, volume)
    assert kept.spec.persistent_volume_reclaim_policy == "Retain"
    assert kept.metadata.labels[names.LABEL_CACHE] == names.cache_id(cached_class, ns, "org/app")
    # The engine stopped: its claim went, the volume is free for the key's next engine.
    wait_for(lambda: released(kube, volume), timeout=60, what=f"{volume} released")
    kube.create_buildjob(ns, "two", finishing("org/app", cached_class))
    second = kube.wait_phase(ns, "two", "Succeeded")
    assert second["cache"] == {"key": "org/app", "hit": True, "volume": volume, "discarded": False}
    # Another key, and the same key in another namespace, start on volumes of their own.
    kube.create_buildjob(ns, "other-key", finishing("org/other", cached_class))
    assert kube.wait_phase(ns, "other-key", "Succeeded")["cache"]["hit"] is False
    elsewhere = f"o-{uuid.uuid4().hex[:6]}"
    kube.create_namespace(elsewhere)
    try:
        wait_for(lambda: released(kube, volume), timeout=60, what=f"{volume} released again")
        kube.create_buildjob(elsewhere, "same-key", finishing("org/app", cached_class))
        there = kube.wait_phase(elsewhere, "same-key", "Succeeded")
        assert there["cache"]["hit"] is False
        assert there["cache"]["volume"] != volume
    finally:
        kube.core.delete_namespace(elsewhere)


def test_two_engines_of_one_key_never_share_a_volume(
    kube: Kube, cached_class: str, ns: str
) -> None:
    kube.create_buildjob(ns, "seed", finishing("shared", cached_class))
    volume = kube.wait_phase(ns, "seed", "Succeeded")["cache"]["volume"]
    wait_for(lambda: released(kube, volume), timeout=60, what=f"{volume} released")
    for name in ("a", "b"):
        kube.create_buildjob(ns, name, running("shared", cached_class))
    caches = [kube.wait_phase(ns, name, "Running")["cache"] for name in ("a", "b")]
    assert caches[0]["volume"] != caches[1]["volume"], caches
    assert sorted(c["hit"] for c in caches) == [False, True], "one took the kept volume"
    # Each claim is bound to its own volume.
    bound = {pv(kube, c["volume"]).spec.claim_ref.namespace: c["volume"] for c in caches}
    assert len(bound) == 2


def test_a_busy_key_waits_when_its_class_says_so(
    cluster: Any, kube: Kube, operator: OperatorProcess, ns: str, volumes: list[str]
) -> None:
    name = f"waits-{uuid.uuid4().hex[:6]}"
    apply_class(cluster, name, when_busy="Wait")
    try:
        kube.create_buildjob(ns, "seed", finishing("k", name))
        volume = kube.wait_phase(ns, "seed", "Succeeded")["cache"]["volume"]
        wait_for(lambda: released(kube, volume), timeout=60, what=f"{volume} released")
        kube.create_buildjob(ns, "holder", running("k", name))
        assert kube.wait_phase(ns, "holder", "Running")["cache"]["volume"] == volume
        kube.create_buildjob(ns, "waiter", running("k", name))
        waiting = kube.wait_phase(ns, "waiter", "Pending")
        wait_for(
            lambda: kube.status(ns, "waiter").get("reason") == st.CACHE_BUSY,
            what="waiter CacheBusy",
        )
        assert kube.status(ns, "waiter")["phase"] == "Pending", waiting
        # Control: the holder gone, the waiter takes the volume.
        kube.delete_buildjob(ns, "holder")
        taken = kube.wait_phase(ns, "waiter", "Running", timeout=120)["cache"]
        assert (taken["volume"], taken["hit"]) == (volume, True)
    finally:
        cluster.kubectl("delete", "engineclass", name, "--ignore-not-found")


def test_a_volume_unused_past_its_retention_is_handed_back(
    kube: Kube, cached_class: str, ns: str
) -> None:
    used = {}
    for key in ("stale", "fresh"):
        kube.create_buildjob(ns, key, finishing(key, cached_class))
        used[key] = kube.wait_phase(ns, key, "Succeeded")["cache"]["volume"]
        wait_for(lambda k=key: released(kube, used[k]), timeout=60, what=f"{key} released")
    # One's last use a day ago (its retention is the class's default, a week: shortened here).
    stale = {names.ANNOTATION_LAST_USED: "2026-01-01T00:00:00Z", names.ANNOTATION_RETENTION: "60"}
    kube.core.patch_persistent_volume(used["stale"], {"metadata": {"annotations": stale}})

    def handed_back(name: str) -> bool:
        """Deleted, or about to be (with no provisioner here, the PV controller may delete
        the object itself or mark it Failed)."""
        try:
            return bool(pv(kube, name).spec.persistent_volume_reclaim_policy == "Delete")
        except ApiException as e:
            if e.status == 404:
                return True
            raise

    wait_for(
        lambda: handed_back(used["stale"]),
        timeout=60,
        what="the stale volume handed back to its provisioner",
    )
    # Control: the one used just now, judged by the same sweep, is kept.
    assert pv(kube, used["fresh"]).spec.persistent_volume_reclaim_policy == "Retain"


def test_operator_writes_only_cache_volumes(
    kube: Kube, cached_class: str, operator_kubeconfig: Path, ns: str, volumes: list[str]
) -> None:
    """The operator may patch PersistentVolumes cluster-wide (RBAC cannot narrow it); the
    chart's guard lets it change only its own cache volumes."""
    as_operator = Kube(new_client_from_config(str(operator_kubeconfig)))
    kube.create_buildjob(ns, "own", finishing("guarded", cached_class))
    kept = kube.wait_phase(ns, "own", "Succeeded")["cache"]["volume"]
    other = next(v for v in volumes if v != kept and not pv(kube, v).spec.claim_ref)
    steal = {"spec": {"claimRef": {"namespace": "bj-x", "name": names.CACHE_CLAIM}}}
    with pytest.raises(ApiException) as refused:
        as_operator.core.patch_persistent_volume(other, steal, dry_run="All")
    assert refused.value.status == 403, refused.value.body
    assert "may write only" in (refused.value.body or ""), refused.value.body
    # Control: its own cache volume it may change.
    as_operator.core.patch_persistent_volume(kept, steal, dry_run="All")
