"""Layer caches as data: which classes allow a cacheKey, what a cached engine and its claim look
like, and which kept volumes are free, taken, done or were emptied."""

import datetime
from typing import Any

import pytest

from remote_docker_operator import builders, cache, names
from remote_docker_operator import status as st
from remote_docker_operator.errors import ClassRefused

from ..support import make_target

NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
CACHED_CLASS = {
    "image": "docker:27-dind",
    "cache": {"storageClassName": "fast", "size": "30Gi", "retentionSeconds": 3600},
}


def cached(key: str = "org/app", namespace: str = "ci", **class_spec: Any) -> builders.Target:
    spec = {"job": {"image": "docker:27-cli"}, "engine": {"cacheKey": key}}
    return make_target(spec, {**CACHED_CLASS, **class_spec}, namespace=namespace)


def test_a_cache_key_needs_a_class_with_caches() -> None:
    with pytest.raises(ClassRefused, match=r"spec\.engine\.cacheKey"):
        make_target({"job": {"image": "x"}, "engine": {"cacheKey": "k"}}, {"image": "d:1"})


def test_a_cache_belongs_to_its_class_namespace_and_key() -> None:
    ids = {
        names.cache_id("a", "ci", "k"),
        names.cache_id("b", "ci", "k"),
        names.cache_id("a", "other", "k"),
        names.cache_id("a", "ci", "k2"),
    }
    assert len(ids) == 4


def test_a_cached_engine_runs_on_its_claim_and_checks_it_first() -> None:
    t = cached()
    assert t.engine.cache is not None
    pod = builders.build_engine_pod(t)
    spec = pod["spec"]
    data = next(v for v in spec["volumes"] if v["name"] == "docker-data")
    assert data == {"name": "docker-data", "persistentVolumeClaim": {"claimName": "docker-cache"}}
    (check,) = spec["initContainers"]
    assert check["name"] == names.CACHE_CHECK_CONTAINER
    assert names.CACHE_MARKER in check["command"][2]
    launcher = spec["containers"][0]["command"][2]
    # The marker goes only after dockerd stopped with 0; exec would lose the chance.
    assert f"rm -f /var/lib/docker/{names.CACHE_MARKER}" in launcher
    assert "exec dind" not in launcher
    assert f"--shutdown-timeout={builders.CACHED_SHUTDOWN_SECONDS}" in spec["containers"][0]["args"]
    assert spec["terminationGracePeriodSeconds"] == builders.CACHED_GRACE_SECONDS
    assert builders.build_quota(t)["spec"]["hard"]["persistentvolumeclaims"] == "1"
    # Without a key: an emptyDir, no claim allowed.
    plain = make_target(engine_class=CACHED_CLASS)
    assert "initContainers" not in builders.build_engine_pod(plain)["spec"]
    assert builders.build_quota(plain)["spec"]["hard"]["persistentvolumeclaims"] == "0"


def test_a_claim_asks_for_a_kept_volume_as_it_is_or_a_new_one_as_the_class_says() -> None:
    t = cached()
    new = builders.build_cache_claim(t, None)["spec"]
    assert new == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "30Gi"}},
        "storageClassName": "fast",
    }
    kept = cache.Volume("pv-1", "slow", "10Gi")
    claim = builders.build_cache_claim(t, kept)
    assert claim["metadata"]["namespace"] == t.job_namespace
    assert claim["metadata"]["labels"][names.LABEL_CACHE] == t.engine.cache.id  # type: ignore[union-attr]
    assert claim["spec"]["volumeName"] == "pv-1"
    assert claim["spec"]["storageClassName"] == "slow"
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"


def pv(phase: str, used: datetime.datetime | None = None, **spec: Any) -> dict[str, Any]:
    annotations = {names.ANNOTATION_RETENTION: "3600"}
    if used:
        annotations[names.ANNOTATION_LAST_USED] = st.timestamp(used)
    return {
        "metadata": {
            "name": f"pv-{phase}-{used}",
            "resourceVersion": "7",
            "annotations": annotations,
        },
        "spec": {"persistentVolumeReclaimPolicy": "Retain", **spec},
        "status": {"phase": phase},
    }


def test_only_released_or_unclaimed_kept_volumes_are_free() -> None:
    assert cache.is_free(pv("Released", claimRef={"name": "old", "uid": "u"}))
    assert cache.is_free(pv("Available"))
    assert not cache.is_free(pv("Available", claimRef={"name": names.CACHE_CLAIM}))  # taken
    assert not cache.is_free(pv("Bound"))
    assert not cache.is_free(pv("Released", persistentVolumeReclaimPolicy="Delete"))


def test_the_warmest_free_volume_is_taken_first_with_a_precondition() -> None:
    old = pv("Released", NOW - datetime.timedelta(hours=2))
    new = pv("Released", NOW - datetime.timedelta(minutes=1))
    busy = pv("Bound", NOW)
    assert cache.candidates([old, busy, new]) == [new, old]
    patch = cache.take_patch(new, "bj-1", NOW)
    assert patch["metadata"]["resourceVersion"] == "7"
    assert patch["metadata"]["annotations"][names.ANNOTATION_LAST_USED] == st.timestamp(NOW)
    ref = patch["spec"]["claimRef"]
    assert (ref["namespace"], ref["name"], ref["uid"]) == ("bj-1", names.CACHE_CLAIM, None)


def test_unbound_volumes_unused_past_their_retention_expire() -> None:
    long_ago = NOW - datetime.timedelta(hours=2)
    assert cache.expired(pv("Released", long_ago), NOW)
    assert not cache.expired(pv("Released", NOW - datetime.timedelta(minutes=5)), NOW)
    assert not cache.expired(pv("Bound", long_ago), NOW)
    # Taken for a claim that never came: it expires as well, released to its provisioner.
    orphan = pv("Available", long_ago, claimRef={"namespace": "bj-1", "name": "docker-cache"})
    assert cache.expired(orphan, NOW)
    patch = cache.expire_patch(orphan)
    assert patch["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    assert patch["spec"]["claimRef"]["uid"] == cache.NO_CLAIM_UID
    released = pv("Released", long_ago, claimRef={"name": "x", "uid": "u"})
    assert "claimRef" not in cache.expire_patch(released)["spec"]


def test_a_kept_volume_says_whose_it_is_and_stays() -> None:
    t = cached()
    assert t.engine.cache is not None
    patch = cache.keep_patch(t.engine.cache, NOW)
    assert patch["spec"] == {"persistentVolumeReclaimPolicy": "Retain"}
    assert patch["metadata"]["labels"][names.LABEL_CACHE] == t.engine.cache.id
    assert patch["metadata"]["annotations"][names.ANNOTATION_CACHE_KEY] == "org/app"


def test_an_emptied_volume_is_seen_in_the_engine_pod() -> None:
    def engine(message: str) -> dict[str, Any]:
        terminated = {"exitCode": 0, "message": message}
        entry = {"name": names.CACHE_CHECK_CONTAINER, "state": {"terminated": terminated}}
        return {"status": {"initContainerStatuses": [entry]}}

    assert cache.discarded(engine("discarded\n"))
    assert not cache.discarded(engine(""))
    assert not cache.discarded(None)
