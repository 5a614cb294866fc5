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

from . import builders, certs, classes, failpoints, metrics, names, pods
from . import status as st
from .builders import Target
from .config import Settings
from .errors import ChildLost, ForeignObject, InvalidSpec, Refusal
from .kube import Kube, Obj
from .models import TERMINAL_PHASES, BuildJob, BuildJobSpec

logger = logging.getLogger(__name__)

ACTIVE_PHASES = frozenset({"Provisioning", "Running"})
LOCK_WAIT_SECONDS = 60
SA_RETRIES = 100
SA_RETRY_SECONDS = 0.1
# Certificates outlive the deadline by this much: enough for the job's last `docker` calls.
CERT_MARGIN = datetime.timedelta(hours=1)

# Records a Kubernetes Event on the BuildJob: (buildjob ref, type, reason, message).
EventSink = Callable[[Obj, str, str, str], None]


@dataclass
class JobState:
    """What the operator remembers of one BuildJob between triggers."""

    uid: str
    namespace: str
    name: str
    created: str  # creationTimestamp: the queue's order (to the second)
    seen: int  # the order this operator first saw it in: breaks ties within a second
    generation: int | None
    spec: BuildJobSpec | None
    invalid: str | None  # why the spec cannot work, when it cannot
    status: st.Status
    # Never read from the BuildJob (its status is writable by more than the operator): the
    # namespace this operator found labelled for the uid at start-up, else made from the prefix.
    job_namespace: str
    # The BuildJob with its class resolved; set when it is admitted, or found running.
    target: Target | None = None
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


def parse_spec(body: Obj) -> tuple[BuildJobSpec | None, str | None]:
    try:
        job = BuildJob.model_validate({"spec": body.get("spec")})
    except ValidationError as e:
        first = e.errors()[0]
        where = "spec." + ".".join(str(p) for p in first["loc"][1:])
        return None, f"{where}: {first['msg']}"
    return job.spec, None


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
        # EngineClasses by name, kept current by their watch (handlers.py).
        self.classes: dict[str, Obj] = {}
        # BuildJob uid -> its job namespace, for namespaces made before a prefix change.
        self.namespaces: dict[str, str] = {}
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
                spec, invalid = parse_spec(body)
                state = JobState(
                    uid=uid,
                    namespace=meta["namespace"],
                    name=meta["name"],
                    created=meta.get("creationTimestamp", ""),
                    seen=next(self._seen),
                    generation=meta.get("generation"),
                    spec=spec,
                    invalid=invalid,
                    status=dict(body.get("status") or {}),
                    job_namespace=self.namespaces.get(uid)
                    or names.job_namespace(self.settings.namespace_prefix, uid),
                )
                self.jobs[uid] = state
        # Our own status writes are newer than any body but the first, so only flags update.
        state.has_finalizer = names.FINALIZER in (meta.get("finalizers") or [])
        state.deleting = state.deleting or bool(meta.get("deletionTimestamp"))
        return state

    def _pod(self, state: JobState, name: str, fresh: bool = False) -> Obj | None:
        if fresh or name not in state.pods:
            state.pods[name] = self._owned(state, "Pod", name)
        return state.pods[name]

    def _owned(self, state: JobState, kind: str, name: str) -> Obj | None:
        """The child of that name in the job namespace, if it is this BuildJob's; ForeignObject
        if something else stands there."""
        namespace = None if kind == "Namespace" else state.job_namespace
        obj = self.kube.get(kind, namespace, name or state.job_namespace)
        if obj is not None and not self._is_ours(state, obj):
            where = f"{namespace}/{name}" if namespace else obj["metadata"]["name"]
            raise ForeignObject(
                f"{kind} {where} exists but was not made by the operator for this BuildJob; "
                "it was left alone and nothing of this BuildJob was put in it"
            )
        return obj

    def _is_ours(self, state: JobState, obj: Obj) -> bool:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        if labels.get(names.LABEL_MANAGED_BY) != names.APP:
            return False
        if labels.get(names.LABEL_OWNER_UID) != state.uid:
            return False
        if obj.get("kind") == "Namespace":
            # Made before its BuildJob existed: someone guessed the name ahead of us.
            return (
                names.owns_namespace(obj, state.uid)
                and meta.get("creationTimestamp", "") >= state.created
            )
        return True

    def pod_event(self, body: Obj, deleted: bool) -> None:
        """A pod with the operator's labels changed. Labels are anyone's to write: the pod
        counts only when it stands in the job namespace of the BuildJob its labels name."""
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        uid = labels.get(names.LABEL_OWNER_UID, "")
        state = self.jobs.get(uid)
        if state is None:
            owner = self.kube.get(
                names.KIND,
                labels.get(names.LABEL_OWNER_NAMESPACE, ""),
                labels.get(names.LABEL_OWNER_NAME, ""),
            )
            if owner is None or owner["metadata"]["uid"] != uid:
                return  # its BuildJob is gone; the namespace goes with it
            state = self.observe(owner)
        if meta.get("namespace") != state.job_namespace:
            logger.warning(
                "Ignored pod %s/%s: it claims BuildJob %s/%s, whose pods live in %s",
                meta.get("namespace"),
                meta.get("name"),
                state.namespace,
                state.name,
                state.job_namespace,
            )
            return
        self.reconcile(state, pod_event=body, pod_deleted=deleted)

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
            self._guarded_step(state, drift_check)
        finally:
            state.lock.release()
        if state.phase in TERMINAL_PHASES or state.gone:
            self.start_queued()

    def _guarded_step(self, state: JobState, drift_check: bool) -> None:
        """The one error boundary: every entry point (events, the timer, the queue) steps a
        BuildJob through here, so a refusal always ends that BuildJob, and only that one."""
        if state.deleting or state.gone:
            return
        try:
            self._step(state, drift_check)
        except Refusal as e:
            metrics.reconcile_error(e)
            self._fail(state, e.reason, str(e))
        except Exception as e:
            metrics.reconcile_error(e)
            raise

    def _step(self, state: JobState, drift_check: bool) -> None:
        if state.phase in TERMINAL_PHASES:
            self._finish(state)
            return
        if state.invalid or state.spec is None:
            raise InvalidSpec(state.invalid or "spec: missing")
        if not state.has_finalizer:
            return  # kopf adds the finalizer first; that update brings us back
        if state.target is None:
            state.target = self._resolve(state, state.spec)
        if self._deadline_passed(state):
            self._fail(
                state,
                st.DEADLINE_EXCEEDED,
                f"activeDeadlineSeconds ({state.target.deadline_seconds}s) exceeded",
            )
            return
        t = state.target
        if state.phase in (None, "Pending"):
            waiting = self._admit(state)
            if waiting is not None:
                self._set(state, "Pending", st.QUEUED, waiting)
                return
            self._set(
                state,
                "Provisioning",
                st.PROVISIONING,
                f"creating namespace {t.job_namespace} and the engine",
                startTime=st.timestamp(self.clock()),
                namespace=t.job_namespace,
                engineClass=t.engine.class_name,
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

    def _resolve(self, state: JobState, spec: BuildJobSpec) -> Target:
        """The BuildJob with its EngineClass applied, or the refusal that names the field."""
        class_name, cls = classes.pick(self.classes, spec.engine.class_name)
        labels: dict[str, str] = {}
        if cls.namespace_selector is not None:
            ns = self.kube.get("Namespace", None, state.namespace) or {}
            labels = ns.get("metadata", {}).get("labels") or {}
        engine = classes.resolve(class_name, cls, spec, state.namespace, labels)
        return Target(
            state.name,
            state.namespace,
            state.uid,
            spec,
            self.settings,
            state.job_namespace,
            engine,
        )

    # -- provisioning -------------------------------------------------------------------------

    def _provision(self, state: JobState, t: Target, check_first: bool) -> None:
        if not state.provisioned:
            self._provision_children(state, t, check_first)
        engine = self._pod(state, names.ENGINE_POD, fresh=check_first)
        if engine is None:
            self._create_pod(state, builders.build_engine_pod(t))
            failpoints.reached("engine-pod")
        # The job pod starts alongside the engine: its init container holds the job back
        # until the engine answers over mutual TLS, so the two start-ups overlap.
        job = self._pod(state, names.JOB_POD, fresh=check_first)
        if job is None:
            self._create_pod(state, builders.build_job_pod(t))
            failpoints.reached("job-pod")
        elif self._unreachable(state, job):
            return
        if engine is None or self._engine_failed(state, engine) or not pods.is_ready(engine):
            return
        # Last, once both pods exist: until the quota controller has counted a new quota, the
        # API server refuses every create in its namespace ("status unknown for quota").
        self._ensure(state, builders.build_quota(t), check_first=False)
        self._set(
            state,
            "Running",
            st.JOB_RUNNING,
            f"engine ready; job pod {t.job_namespace}/{names.JOB_POD} started",
            jobPod=names.JOB_POD,
        )

    def _provision_children(self, state: JobState, t: Target, check_first: bool) -> None:
        """Everything but the pods, in dependency order; each create adopts what exists, and
        only if it is this BuildJob's (ForeignObject otherwise)."""
        ns = self._ensure(state, builders.build_namespace(t), check_first)
        if ns.get("status", {}).get("phase") == "Terminating" or ns["metadata"].get(
            "deletionTimestamp"
        ):
            raise ChildLost(f"namespace {t.job_namespace} is being deleted")
        failpoints.reached("namespace")
        limits = builders.build_limit_range(t)
        if limits is not None:
            self._ensure(state, limits, check_first)
        for policy in builders.build_network_policies(t):
            self._ensure(state, policy, check_first)
        failpoints.reached("policies")
        self._copy_secrets(state, t, check_first)
        failpoints.reached("secret-copies")
        service = self._ensure(state, builders.build_engine_service(t), check_first)
        failpoints.reached("service")
        self._ensure_tls(state, t, service["spec"].get("clusterIP"))
        failpoints.reached("tls")
        state.provisioned = True

    def _ensure(self, state: JobState, manifest: Obj, check_first: bool) -> Obj:
        """Creates the child, or adopts the one that exists when it is this BuildJob's."""
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        if check_first and (existing := self._owned(state, kind, name)) is not None:
            return existing
        created = self.kube.create(manifest)
        if created is not None:
            return created
        existing = self._owned(state, kind, name)
        if existing is None:  # deleted between our 409 and our read: try once more
            return self._ensure(state, manifest, check_first=False)
        logger.info("Adopted existing %s %s", kind.lower(), name)
        return existing

    def _copy_secrets(self, state: JobState, t: Target, check_first: bool) -> None:
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
            if check_first and self._owned(state, "Secret", copy_name):
                continue
            source = self.kube.get("Secret", t.namespace, source_name)
            if source is None:
                raise InvalidSpec(f"{field_path}: Secret {t.namespace}/{source_name} not found")
            # Only registry credentials travel: a Secret of any other type (a service-account
            # token, a TLS key) is never copied out of the tenant's namespace.
            types = (
                builders.DOCKER_CONFIG_TYPES[:1]
                if field_path.startswith("spec.dockerConfigSecret")
                else builders.DOCKER_CONFIG_TYPES
            )
            if source.get("type") not in types or not builders.registry_key(source):
                raise InvalidSpec(
                    f"{field_path}: Secret {t.namespace}/{source_name} is of type "
                    f"{source.get('type')!r}; it must be {' or '.join(types)} with its key"
                )
            self._ensure(state, builders.build_secret_copy(t, source, copy_name), False)

    def _ensure_tls(self, state: JobState, t: Target, cluster_ip: str | None) -> None:
        """Both TLS secrets, from one CA. A mismatched or half-written pair (a crash between the
        two writes) is reissued while no engine uses it; after that, losing one is fatal."""
        secrets = [
            self._owned(state, "Secret", n) for n in (names.ENGINE_TLS_SECRET, names.CLIENT_SECRET)
        ]
        prints = {
            ((s or {}).get("metadata", {}).get("annotations") or {}).get(
                names.ANNOTATION_CA_FINGERPRINT
            )
            for s in secrets
        }
        if None not in secrets and len(prints) == 1 and None not in prints:
            return
        if self._owned(state, "Pod", names.ENGINE_POD) is not None:
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
                if (
                    e.status == 403
                    and "serviceaccount" in (e.body or "")
                    and (attempt + 1 < SA_RETRIES)
                ):
                    time.sleep(SA_RETRY_SECONDS)
                    continue
                # A field the user gave us refused (400, 422), or an admission rule (403: a
                # LimitRange maximum, Pod Security, a policy): either way this pod cannot be.
                if e.status in (400, 403, 422):
                    raise InvalidSpec(_refused_pod_message(e, name)) from e
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
        job = self._pod(state, names.JOB_POD, fresh)
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
        engine = self._pod(state, names.ENGINE_POD, fresh)
        if engine is None:
            self._fail(state, st.ENGINE_FAILED, "the engine pod was deleted")
        else:
            self._engine_failed(state, engine)

    def _unreachable(self, state: JobState, job: Obj) -> bool:
        """Fails the BuildJob when the job pod gave up waiting for its engine."""
        unreachable = pods.init_failed(job, names.WAIT_CONTAINER)
        if unreachable is None:
            return False
        if unreachable.get("exitCode") == builders.PROBE_REACHABLE_EXIT:
            self._fail(
                state,
                st.NETWORK_POLICY_NOT_ENFORCED,
                "a destination the job's NetworkPolicy denies answered from the job pod: this "
                "cluster does not enforce NetworkPolicy (install a network plugin that does, "
                "or turn the EngineClass's networkPolicyProbe off knowingly): "
                + pods.describe_exit(unreachable),
            )
            return True
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
        """The engine goes as soon as the job ends; the namespace after the TTL. Nothing that
        is not this BuildJob's own is touched (_delete checks)."""
        # Only a BuildJob that got as far as provisioning has children. The status says so,
        # but names none of them: those come from the uid alone.
        if not state.status.get("startTime"):
            return
        if not state.cleaned:
            self._delete(state, "Pod", names.ENGINE_POD, grace_period_seconds=5)
            # A job that ran to its end keeps its pod (and log) until the TTL; one that was cut
            # short (deadline, engine lost, cannot start) has its pod stopped now.
            if state.status.get("reason") not in (st.SUCCEEDED, st.JOB_FAILED):
                self._delete(state, "Pod", names.JOB_POD, grace_period_seconds=0)
            failpoints.reached("finished")
            state.cleaned = True
            state.pods.clear()
        if state.status.get("cleanedUp") or state.spec is None:
            return
        ttl_seconds = state.spec.ttl_seconds_after_finished
        if ttl_seconds is None:
            ttl_seconds = self.settings.default_ttl_seconds
        finished = st.parse_time(state.status.get("completionTime"))
        if finished and self.clock() >= finished + datetime.timedelta(seconds=ttl_seconds):
            self._delete(state, "Namespace", "")
            self._write(state, {**state.status, "cleanedUp": True})
            self.events(
                state.ref,
                "Normal",
                "CleanedUp",
                f"deleted namespace {state.job_namespace} {ttl_seconds}s after finishing",
            )

    def _delete(
        self, state: JobState, kind: str, name: str, grace_period_seconds: int | None = None
    ) -> None:
        """Deletes a child if, and only if, it is this BuildJob's: read, check its labels (and a
        namespace's name), delete with the uid read as precondition."""
        try:
            obj = self._owned(state, kind, name)
        except ForeignObject as e:
            logger.warning("BuildJob %s/%s: not deleting: %s", state.namespace, state.name, e)
            return
        if obj is not None:
            meta = obj["metadata"]
            self.kube.delete(
                kind, meta.get("namespace"), meta["name"], meta["uid"], grace_period_seconds
            )

    def _deadline_passed(self, state: JobState) -> bool:
        started = st.parse_time(state.status.get("startTime"))
        if started is None or state.target is None:
            return False
        return self.clock() >= started + datetime.timedelta(seconds=state.target.deadline_seconds)

    # -- queueing -----------------------------------------------------------------------------

    def _admit(self, state: JobState) -> str | None:
        """At most max_running BuildJobs provision or run at once, and at most the class's
        maxEnginesPerNamespace of one class in one namespace; the rest start in creation order
        as slots free up. None when admitted, else what it waits for."""
        if state.admitted:
            return None
        with self._admission:
            if not self._namespace_has_room(state):
                t = state.target
                assert t is not None  # only a resolved BuildJob can be over its class's cap
                return (
                    f"waiting: {t.engine.max_per_namespace} engines of EngineClass "
                    f"{t.engine.class_name!r} run in namespace {state.namespace} "
                    "(its maxEnginesPerNamespace)"
                )
            limit = self.settings.max_running
            if limit == 0:
                state.admitted = True
                return None
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
                and s.spec is not None
            )
            rank = (
                waiting.index((state.created, state.seen))
                if (state.created, state.seen) in waiting
                else len(waiting)
            )
            if rank < limit - active:
                state.admitted = True
        if state.admitted:
            return None
        return f"waiting: {limit} BuildJobs are running (the operator's maxRunning)"

    def _namespace_has_room(self, state: JobState) -> bool:
        t = state.target
        if t is None or t.engine.max_per_namespace == 0:
            return True
        same = [
            s
            for s in list(self.jobs.values())
            if s is not state
            and s.namespace == state.namespace
            and s.target is not None
            and s.target.engine.class_name == t.engine.class_name
            and not s.deleting
            and not s.gone
        ]
        active = sum(1 for s in same if s.admitted or s.phase in ACTIVE_PHASES)
        earlier = sum(
            1
            for s in same
            if not s.admitted
            and s.phase in (None, "Pending")
            and (s.created, s.seen) < (state.created, state.seen)
        )
        return active + earlier < t.engine.max_per_namespace

    def start_queued(self) -> None:
        """Gives free slots to the oldest waiting BuildJobs."""
        waiting = sorted(
            (
                s
                for s in list(self.jobs.values())
                if s.phase == "Pending" and not s.admitted and not s.deleting
            ),
            key=lambda s: (s.created, s.seen),
        )
        if self.settings.max_running:
            waiting = waiting[: self.settings.max_running]
        for state in waiting:
            with state.lock:
                self._guarded_step(state, drift_check=False)

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
        metrics.status_written(state.created, state.status, new)
        state.status = new
        return True

    # -- deletion and the orphan sweep --------------------------------------------------------

    def delete(self, body: Obj) -> None:
        """The BuildJob is being deleted: remove its namespace (with everything in it)."""
        state = self.observe(body)
        with state.lock:
            state.deleting = True
            self._delete(state, "Namespace", "")
        self.forget(state.uid)
        self.start_queued()

    def load_namespaces(self) -> list[Obj]:
        """Learns which job namespace each BuildJob has (they outlive a change of prefix), from
        the namespaces the operator labelled; returns them."""
        found = self.kube.list("Namespace", f"{names.LABEL_MANAGED_BY}={names.APP}")
        prefix = self.settings.namespace_prefix
        for ns in sorted(found, key=lambda n: n["metadata"]["name"].startswith(prefix)):
            owner = (ns["metadata"].get("labels") or {}).get(names.LABEL_OWNER_UID, "")
            if names.owns_namespace(ns, owner):
                self.namespaces[owner] = ns["metadata"]["name"]  # the current prefix's wins
        return found

    def sweep_orphans(self, managed: list[Obj]) -> list[str]:
        """Deletes job namespaces whose BuildJob no longer exists (e.g. deleted while the
        operator was down and its finalizer removed by hand). A namespace counts only when its
        name has the prefix and ends in the hash of the uid its labels name: a label alone is
        anyone's to put on their own namespace."""
        live = {bj["metadata"]["uid"] for bj in self.kube.list(names.KIND)}
        deleted = []
        for ns in managed:
            meta = ns["metadata"]
            owner = (meta.get("labels") or {}).get(names.LABEL_OWNER_UID, "")
            if (
                owner in live
                or meta.get("deletionTimestamp")
                or not meta["name"].startswith(self.settings.namespace_prefix)
                or not names.owns_namespace(ns, owner)
            ):
                continue
            if self.kube.delete("Namespace", None, meta["name"], meta["uid"]):
                deleted.append(meta["name"])
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
