"""Decide: from what the operator knows of one BuildJob (or DockerEngine) and its pods, the next
actions.

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
# How long a DockerEngine waits for the client pod it names to exist: one made by a webhook at
# the pod's admission is written before its pod is.
CLIENT_POD_GRACE_SECONDS = 30


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
    job: Obj | None = None  # a DockerEngine's: the client pod (the tenant's, never ours)
    for_client: bool = False  # a DockerEngine: no job pod of its own, a client pod instead
    client_bound: bool = False  # the client pod carries this engine's label
    warm: bool = False  # the engine was a warm one: its children exist, made for nobody
    cache_to_keep: bool = False  # a cached engine whose volume is not kept for its key yet

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
class BindClient:
    """Labels the client pod for the engine's policy, and makes it the DockerEngine's owner."""


@dataclass(frozen=True)
class Wait:
    """Nothing to do but ask again after `delay` seconds (errors.NotYet)."""

    why: str
    delay: float


@dataclass(frozen=True)
class KeepCache:
    """The engine runs: its cache volume is kept for its key (and the status says which)."""


@dataclass(frozen=True)
class StopPods:
    job_too: bool


@dataclass(frozen=True)
class DeleteNamespace:
    """The TTL ran out: the namespace goes and the status says cleanedUp."""

    ttl_seconds: int


Action = (
    SetStatus
    | Fail
    | MakeChildren
    | CreatePod
    | MakeQuota
    | Finish
    | StopPods
    | KeepCache
    | DeleteNamespace
    | BindClient
    | Wait
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
        return provision_for_client(k) if k.for_client else provision(k)
    if k.phase == "Running":
        return follow_client(k) if k.for_client else follow(k)
    return []


def start(t: builders.Target, start_time: str, cache_hit: bool | None = None) -> SetStatus:
    """Admitted: Provisioning, with what the user may want to know at once (cache_hit: whether
    a cached engine starts on its key's kept volume)."""
    fields: dict[str, Any] = {
        "startTime": start_time,
        "namespace": t.job_namespace,
        "engineClass": t.engine.class_name,
        "engine": {"endpoint": t.docker_host, "ready": False},
    }
    if t.warm_id:
        fields["engine"]["warm"] = True
    if t.engine.cache is not None:
        fields["cache"] = {"key": t.engine.cache.key, "hit": bool(cache_hit)}
    if t.kind == names.DOCKER_ENGINE_KIND:
        fields["clientSecret"] = t.client_secret
    message = (
        f"claimed warm engine {t.job_namespace}"
        if t.warm_id
        else f"creating namespace {t.job_namespace} and the engine"
    )
    return SetStatus("Provisioning", st.PROVISIONING, message, fields)


def _engine_side(k: Known) -> list[Action]:
    """While provisioning: the children (re-read on a drift check) and the engine pod."""
    actions: list[Action] = []
    if not k.children_made or k.drift_check:
        # A warm engine's children are read and rebuilt for their owner (its policy admits
        # this owner's client, which it did not before).
        actions.append(MakeChildren(check_first=k.drift_check or k.warm))
    if k.engine is None:
        actions.append(CreatePod(names.ENGINE_POD))
    return actions


def provision(k: Known) -> list[Action]:
    actions = _engine_side(k)
    # The job pod starts alongside the engine: its init container holds the job back until
    # the engine answers over mutual TLS, so the two start-ups overlap.
    if k.job is None:
        actions.append(CreatePod(names.JOB_POD))
    elif (unreachable := job_gave_up(k.job)) is not None:
        return [*actions, unreachable]
    running = SetStatus(
        "Running",
        st.JOB_RUNNING,
        f"engine ready; job pod {k.namespace}/{k.job_pod} started",
        {"jobPod": k.job_pod},
    )
    return _once_engine_ready(k, actions, running)


def _once_engine_ready(k: Known, actions: list[Action], running: SetStatus) -> list[Action]:
    """actions, then what the engine's state adds: its failure, nothing while it starts, or
    (ready) the quota and `running`."""
    if k.engine is None:
        return actions
    if (failed := engine_failure(k.engine)) is not None:
        return [*actions, failed]
    if not pods.is_ready(k.engine):
        return actions
    # Last, once both pods exist: until the quota controller has counted a new quota, the
    # API server refuses every create in its namespace ("status unknown for quota").
    keep: list[Action] = [KeepCache()] if k.cache_to_keep else []
    return [*actions, MakeQuota(), *keep, running]


def provision_for_client(k: Known) -> list[Action]:
    """A DockerEngine: the engine, and its client pod labelled and made its owner."""
    actions = _engine_side(k)
    if k.job is None:
        started = k.started
        if started and k.now >= started + datetime.timedelta(seconds=CLIENT_POD_GRACE_SECONDS):
            return [
                *actions,
                Fail(
                    st.CLIENT_POD_NOT_FOUND,
                    f"spec.clientPod.name: pod {k.namespace}/{k.job_pod} not found "
                    f"within {CLIENT_POD_GRACE_SECONDS}s",
                ),
            ]
        return [*actions, Wait(f"client pod {k.namespace}/{k.job_pod} does not exist yet", 1)]
    if (gone := client_gone(k.job)) is not None:
        return [*actions, gone, Finish()]
    if not k.client_bound:
        actions.append(BindClient())
    running = SetStatus(
        "Running", st.ENGINE_READY, f"engine ready for pod {k.namespace}/{k.job_pod}"
    )
    return _once_engine_ready(k, actions, running)


def follow_client(k: Known) -> list[Action]:
    actions: list[Action] = []
    if not k.children_made or k.drift_check:
        actions.append(MakeChildren(check_first=True))
    if k.job is None or not k.client_bound:
        # Not bound: a new pod was made under the client's name; the engine was not its.
        gone = SetStatus(
            "Succeeded", st.CLIENT_GONE, f"the client pod {k.namespace}/{k.job_pod} was deleted"
        )
        return [*actions, gone, Finish()]
    if (ended := client_gone(k.job)) is not None:
        return [*actions, ended, Finish()]
    if k.engine is None:
        return [*actions, Fail(st.ENGINE_FAILED, "the engine pod was deleted")]
    failed = engine_failure(k.engine)
    return [*actions, failed] if failed is not None else actions


def client_gone(client: Obj) -> SetStatus | None:
    """The client pod finished or is going: the engine's work is done."""
    phase = (client.get("status") or {}).get("phase")
    name = f"{client['metadata'].get('namespace')}/{client['metadata'].get('name')}"
    if phase in ("Succeeded", "Failed"):
        return SetStatus("Succeeded", st.CLIENT_GONE, f"the client pod {name} finished ({phase})")
    if pods.is_terminating(client):
        return SetStatus("Succeeded", st.CLIENT_GONE, f"the client pod {name} is being deleted")
    return None


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
    stuck = (
        pods.waiting_failure(job, names.JOB_CONTAINER)
        or pods.waiting_failure(job, names.WAIT_CONTAINER)
        or pods.waiting_failure(job, names.GATE_CONTAINER)
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
    """The job pod's wait gave up (its init container, or the gate in its job container): the
    engine never answered, or a destination the NetworkPolicy denies did; or the gate could
    not be put in place."""
    uninstalled = pods.init_failed(job, names.GATE_CONTAINER)
    if uninstalled is not None:
        # The operator's wait image, not the job: without the gate its command cannot start.
        return Fail(
            st.ENGINE_FAILED,
            f"the job pod's gate could not be copied from the wait image ({names.GATE_IN_IMAGE} "
            "in RDO_WAIT_IMAGE): " + pods.describe_exit(uninstalled),
        )
    unreachable = pods.init_failed(job, names.WAIT_CONTAINER) or pods.gave_up(
        job, names.JOB_CONTAINER, names.GATE_MARK
    )
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
    """The engine goes as soon as the job ends (a DockerEngine's client is never touched); the
    namespace after the TTL."""
    # Only a BuildJob that got as far as provisioning has children.
    if not k.started:
        return []
    actions: list[Action] = []
    if not k.engine_stopped:
        cut_short = k.status.get("reason") not in RAN_TO_END
        actions.append(StopPods(job_too=cut_short and not k.for_client))
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
