"""Decide: from what the operator knows of one BuildJob and its pods, the next actions.

Pure: no API calls, no clock of its own, nothing mutated. reconcile.py gathers what `decide`
needs (its pods from the watch, or a read), does what comes back, in order, and asks again on
the next trigger. The same knowledge always gives the same actions, and each action is
idempotent, so a crash between two of them only repeats work.
"""

import datetime
from dataclasses import dataclass, field
from typing import Any

from . import builders, names, pods
from . import status as st
from .kube import Obj
from .models import TERMINAL_PHASES

ACTIVE_PHASES = frozenset({"Provisioning", "Running"})
# A job that ran to its end keeps its pod (and log) until the TTL; one cut short has it stopped.
RAN_TO_END = frozenset({st.SUCCEEDED, st.JOB_FAILED})


@dataclass(frozen=True)
class Known:
    """One BuildJob as the operator knows it at one moment."""

    now: datetime.datetime
    status: st.Status
    deadline_seconds: int
    ttl_seconds: int | None  # None: the spec is unreadable, so no TTL can be trusted
    job_namespace: str
    namespace: str = ""  # the BuildJob's, where its job pod runs
    job_pod: str = ""  # the job pod's name
    children_made: bool = False  # everything but the pods and the quota exists
    drift_check: bool = False  # re-read what exists instead of trusting what was made
    engine_stopped: bool = False  # the engine (and a cut-short job pod) was deleted
    engine: Obj | None = None
    job: Obj | None = None

    @property
    def phase(self) -> str | None:
        return self.status.get("phase")

    @property
    def started(self) -> datetime.datetime | None:
        return st.parse_time(self.status.get("startTime"))


# -- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetStatus:
    phase: str
    reason: str
    message: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Fail:
    """Ends the BuildJob Failed (if it has not ended yet) and then finishes it."""

    reason: str
    message: str


@dataclass(frozen=True)
class MakeChildren:
    """Namespace, LimitRange, NetworkPolicies, Secret copies, Service and TLS Secrets, in that
    order; check_first re-reads each and reverts a changed one."""

    check_first: bool


@dataclass(frozen=True)
class CreatePod:
    name: str


@dataclass(frozen=True)
class MakeQuota:
    pass


@dataclass(frozen=True)
class Finish:
    """Asks `finish` what ending the BuildJob takes now (after a status change)."""


@dataclass(frozen=True)
class StopPods:
    job_too: bool


@dataclass(frozen=True)
class DeleteNamespace:
    """The TTL ran out: the namespace goes and the status says cleanedUp."""

    ttl_seconds: int


Action = (
    SetStatus | Fail | MakeChildren | CreatePod | MakeQuota | Finish | StopPods | DeleteNamespace
)


# -- decisions --------------------------------------------------------------------------------


def decide(k: Known) -> list[Action]:
    """What an admitted BuildJob needs next (the queue decides admission: queue.py)."""
    if k.phase in TERMINAL_PHASES:
        return finish(k)
    started = k.started
    if started and k.now >= started + datetime.timedelta(seconds=k.deadline_seconds):
        return [
            Fail(st.DEADLINE_EXCEEDED, f"activeDeadlineSeconds ({k.deadline_seconds}s) exceeded")
        ]
    if k.phase == "Provisioning":
        return provision(k)
    if k.phase == "Running":
        return follow(k)
    return []


def start(t: builders.Target, start_time: str) -> SetStatus:
    """Admitted: Provisioning, with what the user may want to know at once."""
    return SetStatus(
        "Provisioning",
        st.PROVISIONING,
        f"creating namespace {t.job_namespace} and the engine",
        {
            "startTime": start_time,
            "namespace": t.job_namespace,
            "engineClass": t.engine.class_name,
            "engine": {"endpoint": t.docker_host, "ready": False},
        },
    )


def provision(k: Known) -> list[Action]:
    actions: list[Action] = []
    if not k.children_made or k.drift_check:
        actions.append(MakeChildren(check_first=k.drift_check))
    if k.engine is None:
        actions.append(CreatePod(names.ENGINE_POD))
    # The job pod starts alongside the engine: its init container holds the job back until
    # the engine answers over mutual TLS, so the two start-ups overlap.
    if k.job is None:
        actions.append(CreatePod(names.JOB_POD))
    elif (unreachable := job_gave_up(k.job)) is not None:
        return [*actions, unreachable]
    if k.engine is None:
        return actions
    if (failed := engine_failure(k.engine)) is not None:
        return [*actions, failed]
    if not pods.is_ready(k.engine):
        return actions
    # Last, once both pods exist: until the quota controller has counted a new quota, the
    # API server refuses every create in its namespace ("status unknown for quota").
    return [
        *actions,
        MakeQuota(),
        SetStatus(
            "Running",
            st.JOB_RUNNING,
            f"engine ready; job pod {k.namespace}/{k.job_pod} started",
            {"jobPod": k.job_pod},
        ),
    ]


def follow(k: Known) -> list[Action]:
    actions: list[Action] = []
    if not k.children_made or k.drift_check:
        actions.append(MakeChildren(check_first=True))
    return [*actions, *_job_outcome(k)]


def _job_outcome(k: Known) -> list[Action]:
    job = k.job
    deleted = Fail(st.JOB_POD_DELETED, "the job pod was deleted before it finished")
    if job is None:
        return [deleted]
    if (unreachable := job_gave_up(job)) is not None:
        return [unreachable]
    ended = pods.terminated(job, names.JOB_CONTAINER)
    if ended is not None:
        code = int(ended.get("exitCode", 1))
        if code == 0:
            done = SetStatus(
                "Succeeded", st.SUCCEEDED, "the job exited with code 0", {"exitCode": 0}
            )
        else:
            done = SetStatus(
                "Failed",
                st.JOB_FAILED,
                f"the job failed: {pods.describe_exit(ended)}",
                {"exitCode": code},
            )
        return [done, Finish()]
    if pods.is_terminating(job):
        return [deleted]
    stuck = pods.waiting_failure(job, names.JOB_CONTAINER) or pods.waiting_failure(
        job, names.WAIT_CONTAINER
    )
    if stuck is not None:
        reason = st.IMAGE_PULL_FAILED if stuck[0] in pods.PULL_FAILURES else st.INVALID_SPEC
        return [Fail(reason, f"the job container cannot start: {stuck[0]}: {stuck[1]}")]
    if k.engine is None:
        return [Fail(st.ENGINE_FAILED, "the engine pod was deleted")]
    failed = engine_failure(k.engine)
    return [failed] if failed is not None else []


def engine_failure(engine: Obj) -> Fail | None:
    """The engine is gone or stuck for good."""
    ended = pods.terminated(engine, names.ENGINE_CONTAINER)
    stuck = pods.waiting_failure(engine, names.ENGINE_CONTAINER)
    if ended is not None:
        return Fail(st.ENGINE_FAILED, f"the engine stopped: {pods.describe_exit(ended)}")
    if stuck is not None:
        return Fail(st.ENGINE_FAILED, f"the engine cannot start: {stuck[0]}: {stuck[1]}")
    if pods.is_terminating(engine):
        return Fail(st.ENGINE_FAILED, "the engine pod was deleted")
    return None


def job_gave_up(job: Obj) -> Fail | None:
    """The job pod's init container gave up: the engine never answered, or a destination the
    NetworkPolicy denies did."""
    unreachable = pods.init_failed(job, names.WAIT_CONTAINER)
    if unreachable is None:
        return None
    if unreachable.get("exitCode") == builders.PROBE_REACHABLE_EXIT:
        return Fail(
            st.NETWORK_POLICY_NOT_ENFORCED,
            "a destination the job's NetworkPolicy denies answered from the job pod: this "
            "cluster does not enforce NetworkPolicy (install a network plugin that does, "
            "or turn the EngineClass's networkPolicyProbe off knowingly): "
            + pods.describe_exit(unreachable),
        )
    return Fail(
        st.ENGINE_FAILED,
        "the job pod could not reach its engine: " + pods.describe_exit(unreachable),
    )


def finish(k: Known) -> list[Action]:
    """The engine goes as soon as the job ends; the namespace after the TTL."""
    # Only a BuildJob that got as far as provisioning has children.
    if not k.started:
        return []
    actions: list[Action] = []
    if not k.engine_stopped:
        actions.append(StopPods(job_too=k.status.get("reason") not in RAN_TO_END))
    if k.status.get("cleanedUp") or k.ttl_seconds is None:
        return actions
    finished = st.parse_time(k.status.get("completionTime"))
    if finished and k.now >= finished + datetime.timedelta(seconds=k.ttl_seconds):
        actions.append(DeleteNamespace(k.ttl_seconds))
    return actions


# -- drift ------------------------------------------------------------------------------------

# Kinds put back as built when they drift: the fences (NetworkPolicies), where the engine's
# name points (the Service) and credentials (Secrets), which the ClusterRole may update. The
# namespace, LimitRange and ResourceQuota are checked for existence only: updating namespaces
# would be a cluster-wide right, and the other two hold quantities the API server rewrites in
# its own canonical form ("0.5" -> "500m").
REVERTED_KINDS = frozenset({"NetworkPolicy", "Service", "Secret"})


# Keys the API server fills in on the kinds reverted (a Service's addresses and policies, a
# port's protocol): their presence in what exists is not drift. Any other key that was not
# built is, since an added key can change what a rule means (a selector narrowed to nothing).
SERVER_FILLED = frozenset(
    {
        "clusterIP",
        "clusterIPs",
        "ipFamilies",
        "ipFamilyPolicy",
        "sessionAffinity",
        "internalTrafficPolicy",
        "protocol",
    }
)


def drifted(built: Obj, existing: Obj) -> bool:
    """Whether a child that exists is no longer what the operator built: a field the operator
    set changed or removed, a key or list item added, or built by another operator version.
    Labels and annotations others add, and fields the API server fills in, do not count."""
    if built["kind"] not in REVERTED_KINDS:
        return False
    if _built_from(built) != _built_from(existing):
        return True
    labels = existing.get("metadata", {}).get("labels") or {}
    if any(labels.get(k) != v for k, v in built["metadata"].get("labels", {}).items()):
        return True
    return any(
        not _same(value, existing.get(key))
        for key, value in built.items()
        if key not in ("apiVersion", "kind", "metadata")
    )


def _built_from(obj: Obj) -> str | None:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(names.ANNOTATION_BUILT_FROM)
    return None if value is None else str(value)


def _same(built: Any, existing: Any) -> bool:
    if isinstance(built, dict):
        if not isinstance(existing, dict):
            return not built and existing is None
        extra = {k for k, v in existing.items() if k not in built and v not in (None, {}, [])}
        return extra <= SERVER_FILLED and all(_same(v, existing.get(k)) for k, v in built.items())
    if isinstance(built, list):
        return (
            isinstance(existing, list)
            and len(built) == len(existing)
            and all(_same(b, e) for b, e in zip(built, existing, strict=True))
        )
    return bool(built == existing)
