"""Layer caches, the deciding half: which kept volume an engine may take, and which are done.

A pod mounts only claims of its own namespace, and every engine has a namespace of its own, so
a cache is carried from engine to engine as a PersistentVolume: labelled with its cache's id
(names.cache_id) and kept (reclaim policy Retain) once its first engine is up, it is bound to
one claim at a time, the `docker-cache` claim in the job namespace of the engine using it. The
claim goes when that engine stops; the volume is then Released and free for the key's next
engine, which takes it by pointing its claimRef at its own claim, with the resourceVersion read
as precondition: two engines never take one volume. Unused past its retention, it is deleted.
Pure functions over PersistentVolume bodies; caches.py acts on them.
"""

import datetime
from dataclasses import dataclass
from typing import Any

from . import names
from . import status as st
from .classes import Cache

Obj = dict[str, Any]


@dataclass(frozen=True)
class Volume:
    """A kept volume an engine takes: its claim asks for exactly this to bind it."""

    name: str
    storage_class: str
    capacity: str


def is_free(pv: Obj) -> bool:
    """No engine's claim holds it: its last claim is gone (Released), or it never had one."""
    meta, spec = pv.get("metadata") or {}, pv.get("spec") or {}
    phase = (pv.get("status") or {}).get("phase")
    if meta.get("deletionTimestamp") or spec.get("persistentVolumeReclaimPolicy") != "Retain":
        return False
    return phase == "Released" or (phase == "Available" and not spec.get("claimRef"))


def last_used(pv: Obj) -> datetime.datetime:
    annotations = (pv.get("metadata") or {}).get("annotations") or {}
    when = st.parse_time(annotations.get(names.ANNOTATION_LAST_USED))
    return when or datetime.datetime.min.replace(tzinfo=datetime.UTC)


def candidates(pvs: list[Obj]) -> list[Obj]:
    """The free ones, the most recently used (the warmest layers) first."""
    return sorted((pv for pv in pvs if is_free(pv)), key=last_used, reverse=True)


def volume(pv: Obj) -> Volume:
    spec = pv.get("spec") or {}
    return Volume(
        pv["metadata"]["name"],
        spec.get("storageClassName") or "",
        str((spec.get("capacity") or {}).get("storage", "")),
    )


def take_patch(pv: Obj, job_namespace: str, at: datetime.datetime) -> Obj:
    """Pre-binds the volume to the engine's claim, if it is still as read (and marks it used:
    a volume taken is not one to expire before its claim binds it)."""
    return {
        "metadata": {
            "resourceVersion": pv["metadata"]["resourceVersion"],
            "annotations": {names.ANNOTATION_LAST_USED: st.timestamp(at)},
        },
        "spec": {
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": job_namespace,
                "name": names.CACHE_CLAIM,
                # Its last claim's identity goes: the new claim is another object.
                "uid": None,
                "resourceVersion": None,
            }
        },
    }


def keep_patch(cache: Cache, at: datetime.datetime) -> Obj:
    """Makes a volume the cache's, kept past its claim (a new one's reclaim policy is the
    StorageClass's, usually Delete), with when it was last used."""
    return {
        "metadata": {
            "labels": {names.LABEL_MANAGED_BY: names.APP, names.LABEL_CACHE: cache.id},
            "annotations": {
                names.ANNOTATION_CACHE_KEY: cache.key,
                names.ANNOTATION_LAST_USED: st.timestamp(at),
                names.ANNOTATION_RETENTION: str(cache.retention_seconds),
            },
        },
        "spec": {"persistentVolumeReclaimPolicy": "Retain"},
    }


def used_patch(at: datetime.datetime) -> Obj:
    return {"metadata": {"annotations": {names.ANNOTATION_LAST_USED: st.timestamp(at)}}}


def expired(pv: Obj, now: datetime.datetime) -> bool:
    """Kept, bound to no claim, and unused for longer than the retention it was kept with
    (free, or taken for a claim that never came)."""
    meta, spec = pv.get("metadata") or {}, pv.get("spec") or {}
    try:
        retention = int((meta.get("annotations") or {}).get(names.ANNOTATION_RETENTION, ""))
    except ValueError:
        return False
    return (
        (pv.get("status") or {}).get("phase") in ("Released", "Available")
        and not meta.get("deletionTimestamp")
        and spec.get("persistentVolumeReclaimPolicy") == "Retain"
        and now - last_used(pv) > datetime.timedelta(seconds=retention)
    )


# The uid of no claim: an unclaimed volume whose claimRef names it is Released by the
# PersistentVolume controller, and so deleted by its provisioner.
NO_CLAIM_UID = "00000000-0000-0000-0000-000000000000"


def expire_patch(pv: Obj) -> Obj:
    """Hands the volume to its provisioner for deletion (Delete, once Released), if it is still
    as read."""
    spec: Obj = {"persistentVolumeReclaimPolicy": "Delete"}
    ref = (pv.get("spec") or {}).get("claimRef") or {}
    if not ref.get("uid"):
        spec["claimRef"] = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "namespace": ref.get("namespace") or "default",
            "name": names.CACHE_CLAIM,
            "uid": NO_CLAIM_UID,
        }
    return {"metadata": {"resourceVersion": pv["metadata"]["resourceVersion"]}, "spec": spec}


def discarded(engine: Obj | None) -> bool:
    """The engine's cache-check emptied its volume (its last engine did not stop cleanly)."""
    for entry in ((engine or {}).get("status") or {}).get("initContainerStatuses") or []:
        if entry.get("name") == names.CACHE_CHECK_CONTAINER:
            ended = (entry.get("state") or {}).get("terminated") or {}
            return "discarded" in str(ended.get("message", ""))
    return False
