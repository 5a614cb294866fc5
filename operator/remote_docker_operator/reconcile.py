"""Reconciliation: from a BuildJob and what exists, decide and do the next steps.

Level-triggered and idempotent: every step can run again, after a crash or alongside a stale
event, and converges. Triggers are the BuildJob's own events, its pods' events and a resync
timer; one lock per BuildJob keeps them from interleaving.
"""

import datetime
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from . import builders, certs, failpoints, names, pods
from . import status as st
from .builders import Target
from .config import Settings
from .kube import Kube, Obj
from .models import TERMINAL_PHASES, BuildJob

logger = logging.getLogger(__name__)

ACTIVE_PHASES = frozenset({"Provisioning", "Running"})
LOCK_WAIT_SECONDS = 60
SA_RETRIES = 100
SA_RETRY_SECONDS = 0.1
# Certificates outlive the deadline by this much: enough for the job's last `docker` calls.
CERT_MARGIN = datetime.timedelta(hours=1)

# Records a Kubernetes Event on the BuildJob: (buildjob ref, type, reason, message).
EventSink = Callable[[Obj, str, str, str], None]


class InvalidSpec(Exception):
    """The spec passed admission but cannot work; the message names the field."""


class ChildLost(Exception):
    """A child object the BuildJob cannot do without was deleted by someone."""


@dataclass
class JobState:
    """What the operator remembers of one BuildJob between triggers."""

    uid: str
    namespace: str
    name: str
    created: str  # creationTimestamp: the queue's order (to the second)
    seen: int  # the order this operator first saw it in: breaks ties within a second
    generation: int | None
    target: Target | None
    invalid: str | None  # why the spec cannot work, when it cannot
    status: st.Status
    has_finalizer: bool = False
    deleting: bool = False
    gone: bool = False
    admitted: bool = False
    provisioned: bool = False
    cleaned: bool = False  # engine (and a cut-short job's pod) deleted after finishing
    # The newest body of each child pod from the pod watch (None: deleted), so that following
    # a job costs no reads; a pod not seen yet is read from the API server.
    pods: dict[str, Obj | None] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def phase(self) -> str | None:
        return self.status.get("phase")

    @property
    def ref(self) -> Obj:
        return {
            "apiVersion": names.API_VERSION,
            "kind": names.KIND,
            "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid},
        }


def parse_spec(body: Obj, settings: Settings) -> tuple[Target | None, str | None]:
    meta = body["metadata"]
    try:
        job = BuildJob.model_validate({"spec": body.get("spec")})
    except ValidationError as e:
        first = e.errors()[0]
        where = "spec." + ".".join(str(p) for p in first["loc"][1:])
        return None, f"{where}: {first['msg']}"
    return Target(meta["name"], meta["namespace"], meta["uid"], job.spec, settings), None


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        events: EventSink,
        clock: Callable[[], datetime.datetime] = st.now,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.events = events
        self.clock = clock
        self.jobs: dict[str, JobState] = {}
        self._jobs_lock = threading.Lock()
        self._admission = threading.Lock()
        # Watch events arrive in the order objects were written, so this orders BuildJobs
        # created within the same second (creationTimestamp has whole seconds only).
        self._seen = itertools.count()

    # -- bookkeeping --------------------------------------------------------------------------

    def observe(self, body: Obj) -> JobState:
        """Registers a BuildJob seen in an event or a list; returns its state."""
        meta = body["metadata"]
        uid = meta["uid"]
        with self._jobs_lock:
            state = self.jobs.get(uid)
            if state is None:
                target, invalid = parse_spec(body, self.settings)
                state = JobState(
                    uid=uid,
                    namespace=meta["namespace"],
                    name=meta["name"],
                    created=meta.get("creationTimestamp", ""),
                    seen=next(self._seen),
                    generation=meta.get("generation"),
                    target=target,
                    invalid=invalid,
                    status=dict(body.get("status") or {}),
                )
                self.jobs[uid] = state
        # Our own status writes are newer than any body but the first, so only flags update.
        state.has_finalizer = names.FINALIZER in (meta.get("finalizers") or [])
        state.deleting = state.deleting or bool(meta.get("deletionTimestamp"))
        return state

    def _pod(self, state: JobState, t: Target, name: str, fresh: bool = False) -> Obj | None:
        if fresh or name not in state.pods:
            state.pods[name] = self.kube.get("Pod", t.job_namespace, name)
        return state.pods[name]

    def forget(self, uid: str) -> None:
        with self._jobs_lock:
            self.jobs.pop(uid, None)

    # -- the reconcile loop -------------------------------------------------------------------

    def reconcile(
        self,
        state: JobState,
        drift_check: bool = False,
        pod_event: Obj | None = None,
        pod_deleted: bool = False,
    ) -> None:
        """pod_event: the body a pod event brought (pod_deleted: the event said it went)."""
        # Another trigger is already converging this BuildJob; a waiting thread would only
        # repeat its work. (API calls time out, so a holder never keeps the lock for long.)
        if not state.lock.acquire(timeout=LOCK_WAIT_SECONDS):
            logger.warning(
                "BuildJob %s/%s: reconcile still busy after %ss; skipping this trigger",
                state.namespace,
                state.name,
                LOCK_WAIT_SECONDS,
            )
            return
        try:
            # Stored under the lock, so a read in flight never overwrites a newer event; a
            # finished BuildJob reads its pods no more.
            if pod_event is not None and state.phase not in TERMINAL_PHASES:
                state.pods[pod_event["metadata"]["name"]] = None if pod_deleted else pod_event
            if state.deleting or state.gone:
                return
            try:
                self._step(state, drift_check)
            except InvalidSpec as e:
                self._fail(state, st.INVALID_SPEC, str(e))
            except ChildLost as e:
                self._fail(state, st.CHILD_DELETED, str(e))
        finally:
            state.lock.release()
        if state.phase in TERMINAL_PHASES or state.gone:
            self.start_queued()

    def _step(self, state: JobState, drift_check: bool) -> None:
        if state.phase in TERMINAL_PHASES:
            self._finish(state)
            return
        if state.invalid or state.target is None:
            raise InvalidSpec(state.invalid or "spec: missing")
        if not state.has_finalizer:
            return  # kopf adds the finalizer first; that update brings us back
        if self._deadline_passed(state):
            self._fail(
                state,
                st.DEADLINE_EXCEEDED,
                f"activeDeadlineSeconds ({state.target.deadline_seconds}s) exceeded",
            )
            return
        t = state.target
        if state.phase in (None, "Pending"):
            if not self._admit(state):
                self._set(
                    state,
                    "Pending",
                    st.QUEUED,
                    f"waiting: {self.settings.max_running} BuildJobs are running",
                )
                return
            self._set(
                state,
                "Provisioning",
                st.PROVISIONING,
                f"creating namespace {t.job_namespace} and the engine",
                startTime=st.timestamp(self.clock()),
                namespace=t.job_namespace,
                engine={"endpoint": t.docker_host, "ready": False},
            )
        if drift_check:
            state.provisioned = False
        if state.phase == "Provisioning":
            self._provision(state, t, check_first=drift_check)
        elif state.phase == "Running":
            if not state.provisioned:
                self._provision_children(state, t, check_first=True)
            self._follow_job(state, t, fresh=drift_check)

    # -- provisioning -------------------------------------------------------------------------

    def _provision(self, state: JobState, t: Target, check_first: bool) -> None:
        if not state.provisioned:
            self._provision_children(state, t, check_first)
        engine = self._pod(state, t, names.ENGINE_POD, fresh=check_first)
        if engine is None:
            self._create_pod(state, builders.build_engine_pod(t))
            failpoints.reached("engine-pod")
        # The job pod starts alongside the engine: its init container holds the job back
        # until the engine answers over mutual TLS, so the two start-ups overlap.
        job = self._pod(state, t, names.JOB_POD, fresh=check_first)
        if job is None:
            self._create_pod(state, builders.build_job_pod(t))
            failpoints.reached("job-pod")
        elif self._unreachable(state, job):
            return
        if engine is None or self._engine_failed(state, engine) or not pods.is_ready(engine):
            return
        self._set(
            state,
            "Running",
            st.JOB_RUNNING,
            f"engine ready; job pod {t.job_namespace}/{names.JOB_POD} started",
            jobPod=names.JOB_POD,
        )

    def _provision_children(self, state: JobState, t: Target, check_first: bool) -> None:
        """Everything but the pods, in dependency order; each create adopts what exists."""
        ns = self._ensure(builders.build_namespace(t), check_first)
        if ns.get("status", {}).get("phase") == "Terminating" or ns["metadata"].get(
            "deletionTimestamp"
        ):
            raise ChildLost(f"namespace {t.job_namespace} is being deleted")
        failpoints.reached("namespace")
        for policy in builders.build_network_policies(t):
            self._ensure(policy, check_first)
        failpoints.reached("policies")
        self._copy_secrets(t, check_first)
        failpoints.reached("secret-copies")
        service = self._ensure(builders.build_engine_service(t), check_first)
        failpoints.reached("service")
        self._ensure_tls(t, service["spec"].get("clusterIP"))
        failpoints.reached("tls")
        state.provisioned = True

    def _ensure(self, manifest: Obj, check_first: bool) -> Obj:
        if check_first:
            meta = manifest["metadata"]
            existing = self.kube.get(manifest["kind"], meta.get("namespace"), meta["name"])
            if existing is not None:
                return existing
        return self.kube.ensure(manifest)

    def _copy_secrets(self, t: Target, check_first: bool) -> None:
        wanted = [
            (f"spec.imagePullSecrets[{i}].name", ref.name, names.pull_secret_copy(ref.name))
            for i, ref in enumerate(t.spec.image_pull_secrets or [])
        ]
        if t.spec.docker_config_secret:
            wanted.append(
                (
                    "spec.dockerConfigSecret.name",
                    t.spec.docker_config_secret.name,
                    names.DOCKER_CONFIG_SECRET,
                )
            )
        for field_path, source_name, copy_name in wanted:
            if check_first and self.kube.get("Secret", t.job_namespace, copy_name):
                continue
            source = self.kube.get("Secret", t.namespace, source_name)
            if source is None:
                raise InvalidSpec(f"{field_path}: Secret {t.namespace}/{source_name} not found")
            if field_path.startswith("spec.dockerConfigSecret") and ".dockerconfigjson" not in (
                source.get("data") or {}
            ):
                raise InvalidSpec(
                    f"{field_path}: Secret {t.namespace}/{source_name} has no "
                    ".dockerconfigjson key (type kubernetes.io/dockerconfigjson)"
                )
            self.kube.create(builders.build_secret_copy(t, source, copy_name))

    def _ensure_tls(self, t: Target, cluster_ip: str | None) -> None:
        """Both TLS secrets, from one CA. A mismatched or half-written pair (a crash between the
        two writes) is reissued while no engine uses it; after that, losing one is fatal."""
        ns = t.job_namespace
        secrets = [
            self.kube.get("Secret", ns, n) for n in (names.ENGINE_TLS_SECRET, names.CLIENT_SECRET)
        ]
        prints = {
            ((s or {}).get("metadata", {}).get("annotations") or {}).get(
                names.ANNOTATION_CA_FINGERPRINT
            )
            for s in secrets
        }
        if None not in secrets and len(prints) == 1 and None not in prints:
            return
        if self.kube.get("Pod", ns, names.ENGINE_POD) is not None:
            raise ChildLost("the engine's TLS secrets were deleted or changed while it runs")
        valid_for = datetime.timedelta(seconds=t.deadline_seconds) + CERT_MARGIN
        bundle = certs.issue(
            builders.engine_dns_names(t),
            [cluster_ip] if cluster_ip and cluster_ip != "None" else [],
            valid_for,
            self.clock(),
        )
        for manifest in (
            builders.build_client_secret(t, bundle),
            builders.build_engine_tls_secret(t, bundle),
        ):
            if self.kube.create(manifest) is None:
                self.kube.replace(manifest)

    def _create_pod(self, state: JobState, manifest: Obj) -> None:
        name = manifest["metadata"]["name"]
        # A namespace's "default" ServiceAccount appears a moment after the namespace; until
        # then the ServiceAccount admission plugin refuses pods with 403.
        for attempt in range(SA_RETRIES):
            try:
                created = self.kube.create(manifest)
            except ApiException as e:
                if e.status in (400, 422):  # the API server refused a field the user gave us
                    raise InvalidSpec(_refused_pod_message(e, name)) from e
                if (
                    e.status == 403
                    and "serviceaccount" in (e.body or "")
                    and (attempt + 1 < SA_RETRIES)
                ):
                    time.sleep(SA_RETRY_SECONDS)
                    continue
                raise
            # What the API server returned is as new as the watch's next event; one that
            # already existed (409) is read when next needed.
            if created is None:
                state.pods.pop(name, None)
            else:
                state.pods[name] = created
            return

    def _engine_failed(self, state: JobState, engine: Obj) -> bool:
        """Fails the BuildJob when its engine is gone or stuck for good."""
        ended = pods.terminated(engine, names.ENGINE_CONTAINER)
        stuck = pods.waiting_failure(engine, names.ENGINE_CONTAINER)
        if ended is not None:
            message = f"the engine stopped: {pods.describe_exit(ended)}"
        elif stuck is not None:
            message = f"the engine cannot start: {stuck[0]}: {stuck[1]}"
        elif pods.is_terminating(engine):
            message = "the engine pod was deleted"
        else:
            return False
        self._fail(state, st.ENGINE_FAILED, message)
        return True

    # -- running ------------------------------------------------------------------------------

    def _follow_job(self, state: JobState, t: Target, fresh: bool) -> None:
        job = self._pod(state, t, names.JOB_POD, fresh)
        if job is None:
            self._fail(state, st.JOB_POD_DELETED, "the job pod was deleted before it finished")
            return
        if self._unreachable(state, job):
            return
        ended = pods.terminated(job, names.JOB_CONTAINER)
        if ended is not None:
            code = int(ended.get("exitCode", 1))
            if code == 0:
                self._set(
                    state, "Succeeded", st.SUCCEEDED, "the job exited with code 0", exitCode=0
                )
            else:
                self._set(
                    state,
                    "Failed",
                    st.JOB_FAILED,
                    f"the job failed: {pods.describe_exit(ended)}",
                    exitCode=code,
                )
            self._finish(state)
            return
        if pods.is_terminating(job):
            self._fail(state, st.JOB_POD_DELETED, "the job pod was deleted before it finished")
            return
        stuck = pods.waiting_failure(job, names.JOB_CONTAINER) or pods.waiting_failure(
            job, names.WAIT_CONTAINER
        )
        if stuck is not None:
            reason = st.IMAGE_PULL_FAILED if stuck[0] in pods.PULL_FAILURES else st.INVALID_SPEC
            self._fail(state, reason, f"the job container cannot start: {stuck[0]}: {stuck[1]}")
            return
        engine = self._pod(state, t, names.ENGINE_POD, fresh)
        if engine is None:
            self._fail(state, st.ENGINE_FAILED, "the engine pod was deleted")
        else:
            self._engine_failed(state, engine)

    def _unreachable(self, state: JobState, job: Obj) -> bool:
        """Fails the BuildJob when the job pod gave up waiting for its engine."""
        unreachable = pods.init_failed(job, names.WAIT_CONTAINER)
        if unreachable is None:
            return False
        self._fail(
            state,
            st.ENGINE_FAILED,
            "the job pod could not reach its engine: " + pods.describe_exit(unreachable),
        )
        return True

    # -- finishing ----------------------------------------------------------------------------

    def _fail(self, state: JobState, reason: str, message: str) -> None:
        if state.phase not in TERMINAL_PHASES:
            self._set(state, "Failed", reason, message)
        self._finish(state)

    def _finish(self, state: JobState) -> None:
        """The engine goes as soon as the job ends; the namespace after the TTL."""
        ns = state.status.get("namespace")
        if not ns:
            return
        if not state.cleaned:
            self.kube.delete("Pod", ns, names.ENGINE_POD, grace_period_seconds=5)
            # A job that ran to its end keeps its pod (and log) until the TTL; one that was cut
            # short (deadline, engine lost, cannot start) has its pod stopped now.
            if state.status.get("reason") not in (st.SUCCEEDED, st.JOB_FAILED):
                self.kube.delete("Pod", ns, names.JOB_POD, grace_period_seconds=0)
            failpoints.reached("finished")
            state.cleaned = True
            state.pods.clear()
        if state.status.get("cleanedUp") or state.target is None:
            return
        finished = st.parse_time(state.status.get("completionTime"))
        ttl = datetime.timedelta(seconds=state.target.ttl_seconds)
        if finished and self.clock() >= finished + ttl:
            self.kube.delete("Namespace", None, ns)
            self._write(state, {**state.status, "cleanedUp": True})
            self.events(
                state.ref,
                "Normal",
                "CleanedUp",
                f"deleted namespace {ns} {state.target.ttl_seconds}s after finishing",
            )

    def _deadline_passed(self, state: JobState) -> bool:
        started = st.parse_time(state.status.get("startTime"))
        if started is None or state.target is None:
            return False
        return self.clock() >= started + datetime.timedelta(seconds=state.target.deadline_seconds)

    # -- queueing -----------------------------------------------------------------------------

    def _admit(self, state: JobState) -> bool:
        """At most max_running BuildJobs provision or run at once; the rest start in creation
        order as slots free up."""
        limit = self.settings.max_running
        if limit == 0 or state.admitted:
            return True
        with self._admission:
            jobs = list(self.jobs.values())
            # Admitted but not yet written as Provisioning counts too: two threads must not
            # both take the last slot.
            active = sum(
                1
                for s in jobs
                if not s.deleting
                and not s.gone
                and (s.phase in ACTIVE_PHASES or (s.admitted and s.phase in (None, "Pending")))
            )
            waiting = sorted(
                (s.created, s.seen)
                for s in jobs
                if s.phase in (None, "Pending")
                and not s.admitted
                and not s.deleting
                and not s.gone
                and s.target is not None
            )
            rank = (
                waiting.index((state.created, state.seen))
                if (state.created, state.seen) in waiting
                else len(waiting)
            )
            if rank < limit - active:
                state.admitted = True
        return state.admitted

    def start_queued(self) -> None:
        """Gives free slots to the oldest waiting BuildJobs."""
        if self.settings.max_running == 0:
            return
        waiting = sorted(
            (
                s
                for s in list(self.jobs.values())
                if s.phase == "Pending" and not s.admitted and not s.deleting
            ),
            key=lambda s: (s.created, s.seen),
        )
        for state in waiting[: self.settings.max_running]:
            with state.lock:
                if not state.deleting and not state.gone:
                    self._step(state, drift_check=False)

    # -- status -------------------------------------------------------------------------------

    def _set(self, state: JobState, phase: str, reason: str, message: str, **fields: Any) -> None:
        before = state.status
        new = st.transition(
            before, phase, reason, message, state.generation, self.clock(), **fields
        )
        if not self._write(state, new):
            return
        if (before.get("phase"), before.get("reason")) != (phase, reason):
            kind = "Warning" if phase == "Failed" else "Normal"
            self.events(state.ref, kind, reason, message)
            logger.info("BuildJob %s/%s is %s: %s", state.namespace, state.name, phase, message)

    def _write(self, state: JobState, new: st.Status) -> bool:
        patch = st.merge_patch(state.status, new)
        if not patch:
            return False
        if not self.kube.patch_status(names.KIND, state.namespace, state.name, patch):
            state.gone = True
            return False
        state.status = new
        return True

    # -- deletion and the orphan sweep --------------------------------------------------------

    def delete(self, body: Obj) -> None:
        """The BuildJob is being deleted: remove its namespace (with everything in it)."""
        state = self.observe(body)
        with state.lock:
            state.deleting = True
            ns = (body.get("status") or {}).get("namespace") or state.status.get("namespace")
            if state.target is not None:
                ns = state.target.job_namespace
            if ns:
                self.kube.delete("Namespace", None, ns)
        self.forget(state.uid)
        self.start_queued()

    def sweep_orphans(self) -> list[str]:
        """Deletes job namespaces whose BuildJob no longer exists (e.g. deleted while the
        operator was down and its finalizer removed by hand)."""
        live = {bj["metadata"]["uid"] for bj in self.kube.list(names.KIND)}
        deleted = []
        selector = f"{names.LABEL_MANAGED_BY}={names.APP}"
        for ns in self.kube.list("Namespace", selector):
            owner = (ns["metadata"].get("labels") or {}).get(names.LABEL_OWNER_UID)
            if owner not in live and not ns["metadata"].get("deletionTimestamp"):
                self.kube.delete("Namespace", None, ns["metadata"]["name"])
                deleted.append(ns["metadata"]["name"])
        return deleted


# Pod field paths the API server names -> the BuildJob fields they are built from.
_FIELD_OF = {
    names.JOB_POD: {"spec.containers[0].": "spec.job."},
    names.ENGINE_POD: {
        "spec.containers[0].": "spec.engine.",
        "spec.volumes[0].emptyDir.sizeLimit": "spec.engine.storage",
    },
}


def _refused_pod_message(e: ApiException, pod: str) -> str:
    """The API server's reason, with the pod's field paths turned into the BuildJob's."""
    try:
        message = str(json.loads(e.body or "").get("message", e.reason))
    except (TypeError, ValueError):
        message = str(e.reason)
    for pod_path, spec_path in _FIELD_OF[pod].items():
        message = message.replace(pod_path, spec_path)
    return "the API server refused the pod: " + message
