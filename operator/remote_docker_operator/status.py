"""Status and condition logic: pure functions over plain dicts (the wire format).

A BuildJob's status is computed here and written whole; conditions follow metav1.Condition,
keeping lastTransitionTime while a condition's status does not change.
"""

import datetime
from typing import Any

Status = dict[str, Any]

ENGINE_READY = "EngineReady"
READY = "Ready"  # a DockerEngine's condition for the same
COMPLETE = "Complete"
FAILED = "Failed"

# Reasons (CamelCase, as Kubernetes reasons are).
QUEUED = "Queued"
PROVISIONING = "Provisioning"
ENGINE_STARTING = "EngineStarting"
JOB_RUNNING = "JobRunning"
SUCCEEDED = "Succeeded"
JOB_FAILED = "JobFailed"
ENGINE_FAILED = "EngineFailed"
DEADLINE_EXCEEDED = "DeadlineExceeded"
INVALID_SPEC = "InvalidSpec"
JOB_POD_DELETED = "JobPodDeleted"
IMAGE_PULL_FAILED = "ImagePullFailed"
CHILD_DELETED = "ChildDeleted"
ENGINE_CLASS_NOT_FOUND = "EngineClassNotFound"
ENGINE_CLASS_REFUSED = "EngineClassRefused"
FOREIGN_OBJECT = "ForeignObject"
NETWORK_POLICY_NOT_ENFORCED = "NetworkPolicyNotEnforced"
# Every volume of the BuildJob's cacheKey is in use and its class says to wait.
CACHE_BUSY = "CacheBusy"
# An Event: the cache volume was emptied before use (its last engine did not stop cleanly).
CACHE_DISCARDED = "CacheDiscarded"
# A DockerEngine's.
CLIENT_GONE = "ClientGone"
CLIENT_POD_NOT_FOUND = "ClientPodNotFound"

# Transitions worth an Event besides every failure (a Warning): those that tell what the
# status alone does not show in `kubectl describe` or to an Event-based alert (why a BuildJob
# waits, that it ended well). Provisioning and JobRunning are in the status and its conditions'
# times; each Event is one more write to the API server per BuildJob.
EVENT_REASONS = frozenset({QUEUED, SUCCEEDED, CLIENT_GONE})


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def timestamp(at: datetime.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


def format_duration(seconds: float) -> str:
    """Like kubectl's durations: 45s, 3m12s, 2h5m."""
    total = max(int(seconds), 0)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    at: datetime.datetime,
) -> list[dict[str, Any]]:
    """Conditions with `type_` set; lastTransitionTime moves only when the status flips."""
    value = "True" if status else "False"
    old = next((c for c in conditions if c.get("type") == type_), None)
    changed = old is None or old.get("status") != value
    new = {
        "type": type_,
        "status": value,
        "observedGeneration": generation,
        "lastTransitionTime": timestamp(at) if changed else old["lastTransitionTime"],  # type: ignore[index]
        "reason": reason,
        "message": message,
    }
    return [new if c.get("type") == type_ else c for c in conditions] if old else [*conditions, new]


def transition(
    current: Status,
    phase: str,
    reason: str,
    message: str,
    generation: int | None,
    at: datetime.datetime,
    ready_type: str = ENGINE_READY,
    **fields: Any,
) -> Status:
    """The whole new status for entering (or staying in) `phase`.

    The three conditions always tell the same story as the phase, so they are derived from it.
    ready_type: the engine's condition, EngineReady for a BuildJob, Ready for a DockerEngine.
    """
    status = {
        **current,
        **fields,
        "phase": phase,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }
    engine_ready = phase == "Running"
    conditions = list(current.get("conditions") or [])
    if engine_ready:
        conditions = set_condition(
            conditions,
            ready_type,
            True,
            ENGINE_READY,
            "the engine answers over mutual TLS",
            generation,
            at,
        )
    else:
        conditions = set_condition(conditions, ready_type, False, reason, message, generation, at)
    conditions = set_condition(
        conditions, COMPLETE, phase == "Succeeded", reason, message, generation, at
    )
    conditions = set_condition(
        conditions, FAILED, phase == "Failed", reason, message, generation, at
    )
    status["conditions"] = conditions
    status["engine"] = {**(status.get("engine") or {}), "ready": engine_ready}
    if phase in ("Succeeded", "Failed") and not current.get("completionTime"):
        status["completionTime"] = timestamp(at)
        started = parse_time(status.get("startTime"))
        if started:
            status["duration"] = format_duration((at - started).total_seconds())
    return status


def merge_patch(old: Status, new: Status) -> Status:
    """The JSON merge patch that turns `old` into `new` (top level; removed keys become null)."""
    patch: Status = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch
