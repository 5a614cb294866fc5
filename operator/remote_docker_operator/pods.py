"""Reading pod status: readiness, termination, and the failures that will not heal."""

from typing import Any

Pod = dict[str, Any]

# Waiting reasons that retrying will not fix within a CI job's patience.
PULL_FAILURES = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
CONFIG_FAILURES = frozenset(
    {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
)


def essence(pod: Pod) -> Pod:
    """What this module reads of a pod, and nothing else: the reconciler keeps the newest pod
    of each running BuildJob in memory, and a whole pod body (spec, managedFields, every
    container's image ids) is most of what thousands of BuildJobs would hold."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}

    def containers(key: str) -> list[dict[str, Any]]:
        return [
            {"name": c.get("name"), "state": c.get("state") or {}} for c in status.get(key) or []
        ]

    return {
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "uid", "deletionTimestamp") if k in meta
        },
        "status": {
            **{k: status[k] for k in ("phase", "reason", "message") if k in status},
            "conditions": [
                {"type": c.get("type"), "status": c.get("status")}
                for c in status.get("conditions") or []
            ],
            "containerStatuses": containers("containerStatuses"),
            "initContainerStatuses": containers("initContainerStatuses"),
        },
    }


def _container_status(pod: Pod, container: str) -> dict[str, Any]:
    status = pod.get("status") or {}
    for entry in (status.get("containerStatuses") or []) + (
        status.get("initContainerStatuses") or []
    ):
        if entry.get("name") == container:
            return dict(entry)
    return {}


def init_failed(pod: Pod, container: str) -> dict[str, Any] | None:
    """The terminated state of an init container that exited non-zero, else None."""
    state = (_container_status(pod, container).get("state") or {}).get("terminated")
    return dict(state) if state and state.get("exitCode") else None


def gave_up(pod: Pod, container: str, mark: str) -> dict[str, Any] | None:
    """The terminated state of a container that exited non-zero with a termination message
    that begins with mark (a wait that gave up before the container's own command ran)."""
    state = (_container_status(pod, container).get("state") or {}).get("terminated")
    if state and state.get("exitCode") and str(state.get("message") or "").startswith(mark):
        return dict(state)
    return None


def is_ready(pod: Pod) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def is_terminating(pod: Pod) -> bool:
    return bool(pod.get("metadata", {}).get("deletionTimestamp"))


def terminated(pod: Pod, container: str) -> dict[str, Any] | None:
    """The container's terminated state once the pod has finished, else None."""
    phase = (pod.get("status") or {}).get("phase")
    state = _container_status(pod, container).get("state") or {}
    if "terminated" in state:
        return dict(state["terminated"])
    if phase in ("Succeeded", "Failed"):  # e.g. evicted before the container ever started
        status = pod.get("status") or {}
        return {
            "exitCode": 0 if phase == "Succeeded" else 1,
            "reason": status.get("reason", phase),
            "message": status.get("message", ""),
        }
    return None


def waiting_failure(pod: Pod, container: str) -> tuple[str, str] | None:
    """(reason, message) when the container is stuck waiting for a reason that will not heal."""
    waiting = (_container_status(pod, container).get("state") or {}).get("waiting") or {}
    reason = waiting.get("reason")
    if reason in PULL_FAILURES or reason in CONFIG_FAILURES:
        return str(reason), str(waiting.get("message", ""))
    return None


def describe_exit(state: dict[str, Any]) -> str:
    text = f"exit code {state.get('exitCode')}"
    if state.get("reason"):
        text += f" ({state['reason']})"
    if state.get("message"):
        text += f": {state['message']}"
    return text
