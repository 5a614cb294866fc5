"""Reconciliation, the acting half: gathers what `decide` needs, does what it returns.

Level-triggered and idempotent: every step can run again, after a crash or alongside a stale
event, and converges. Triggers are the BuildJob's own events, its pods' events, a resync timer
and requeues (errors.NotYet); one lock per BuildJob keeps them from interleaving. What to do
next is decide.py's (pure); who may start, queue.py's (pure); what objects look like,
builders.py's (pure). This module makes the API calls, and `_guarded_step` is the one place a
failure becomes a BuildJob's status.
"""

import datetime
import itertools
import json
import logging
import threading
from collections.abc import Callable

from kubernetes.client.exceptions import ApiException

from . import builders, certs, classes, decide, failpoints, metrics, names, pods, queue
from . import status as st
from .builders import Target
from .config import Settings
from .decide import Action, Known
from .errors import ChildLost, ForeignObject, InvalidSpec, NotYet, Refusal
from .jobstate import JobState, parse_spec
from .kube import Kube, Obj
from .models import TERMINAL_PHASES, EngineRequestSpec

logger = logging.getLogger(__name__)

LOCK_WAIT_SECONDS = 60
# A new namespace's "default" ServiceAccount appears a moment after the namespace.
SA_RETRY_SECONDS = 0.1
MAX_RETRY_SECONDS = 30.0
# Certificates outlive the deadline by this much: enough for the job's last `docker` calls.
CERT_MARGIN = datetime.timedelta(hours=1)

# Records a Kubernetes Event on the BuildJob: (buildjob ref, type, reason, message).
EventSink = Callable[[Obj, str, str, str], None]
# Runs the BuildJob of this uid through `reconcile` again after so many seconds.
Requeue = Callable[[str, float], None]


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        events: EventSink,
        requeue: Requeue,
        clock: Callable[[], datetime.datetime] = st.now,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.events = events
        self.requeue = requeue
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
        """Registers a BuildJob or DockerEngine (its body's kind; none: a BuildJob) seen in an
        event or a list; returns its state."""
        meta = body["metadata"]
        uid = meta["uid"]
        kind = body.get("kind") or names.KIND
        with self._jobs_lock:
            state = self.jobs.get(uid)
            if state is None:
                spec, invalid = parse_spec(body, kind)
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
                    kind=kind,
                )
                self.jobs[uid] = state
        # Our own status writes are newer than any body but the first, so only flags update.
        state.deleting = state.deleting or bool(meta.get("deletionTimestamp"))
        return state

    @staticmethod
    def _pod_place(state: JobState, role: str) -> tuple[str, str]:
        """Namespace and name of the engine pod or the job pod (a DockerEngine's: its client
        pod) (role: ENGINE_POD or JOB_POD)."""
        if role == names.ENGINE_POD:
            return state.job_namespace, names.ENGINE_POD
        return state.namespace, state.job_pod

    def _pod(self, state: JobState, role: str, fresh: bool = False) -> Obj | None:
        if state.for_client and role == names.JOB_POD:
            return self._client(state, fresh)
        if state.started_here and role not in state.pods:
            state.pods[role] = None
        if fresh or role not in state.pods:
            namespace, name = self._pod_place(state, role)
            pod = self._owned(state, "Pod", name, namespace)
            state.pods[role] = None if pod is None else pods.essence(pod)
        return state.pods[role]

    def _client(self, state: JobState, fresh: bool) -> Obj | None:
        """A DockerEngine's client pod: the tenant's own, read as it is (no events come for
        it) while provisioning and at each resync."""
        if fresh or state.phase == "Provisioning" or names.JOB_POD not in state.pods:
            pod = self.kube.get("Pod", state.namespace, state.job_pod)
            labels = ((pod or {}).get("metadata") or {}).get("labels") or {}
            state.client_bound = labels.get(names.client_label(state.uid)) == "true"
            state.pods[names.JOB_POD] = None if pod is None else pods.essence(pod)
        return state.pods[names.JOB_POD]

    def _bind_client(self, state: JobState) -> None:
        """Makes the client pod the DockerEngine's owner (the garbage collector deletes the
        DockerEngine, and so the operator its engine, when the pod goes, even while no operator
        runs), then labels the pod, which the engine's policy admits by that label. In that
        order: the label is what says it is done."""
        client = state.pods.get(names.JOB_POD)
        assert client is not None, "a client pod is bound only once read"
        pod, pod_uid = client["metadata"]["name"], client["metadata"]["uid"]
        owner = self.kube.get(state.kind, state.namespace, state.name)
        if owner is None or owner["metadata"]["uid"] != state.uid:
            state.gone = True
            return
        meta = owner["metadata"]
        owners = meta.get("ownerReferences") or []
        if not any(o.get("uid") == pod_uid for o in owners):
            ref = {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": pod_uid}
            # Beside the owners it has (a CI system's own); the version read is a precondition.
            patch = [
                {
                    "op": "test",
                    "path": "/metadata/resourceVersion",
                    "value": meta["resourceVersion"],
                },
                {"op": "add", "path": "/metadata/ownerReferences", "value": [*owners, ref]},
            ]
            if not self.kube.patch(state.kind, state.namespace, state.name, patch):
                raise NotYet(f"{state.kind} {state.name} changed while being bound; again", 1)
        # The uid read is a precondition: a pod made since under that name is not labelled.
        label = {"metadata": {"uid": pod_uid, "labels": {names.client_label(state.uid): "true"}}}
        if not self.kube.patch("Pod", state.namespace, pod, label):
            state.pods.pop(names.JOB_POD, None)
            raise NotYet(f"client pod {state.namespace}/{pod} changed; reading it again", 1)
        state.client_bound = True

    def _owned(
        self, state: JobState, kind: str, name: str | None = None, namespace: str | None = None
    ) -> Obj | None:
        """The child of that kind and name (no name: the job namespace itself; no namespace:
        in the job namespace), if it is this BuildJob's; ForeignObject if something else
        stands there."""
        if kind == "Namespace":
            obj = self.kube.get(kind, None, state.job_namespace)
            where = state.job_namespace
        else:
            assert name is not None
            namespace = namespace or state.job_namespace
            obj = self.kube.get(kind, namespace, name)
            where = f"{namespace}/{name}"
        if obj is not None and not self._is_ours(state, obj):
            labels = obj["metadata"].get("labels") or {}
            if (
                namespace == state.namespace
                and labels.get(names.LABEL_MANAGED_BY) == names.APP
                and labels.get(names.LABEL_OWNER_NAME) == state.name
                and names.owner_kind(labels) == state.kind
            ):
                # The owner was deleted and made again under its name: its predecessor's job
                # pod, Secret or policy goes with it (the garbage collector, by their
                # ownerReference), which takes a moment.
                raise NotYet(f"{kind} {where} of an earlier {state.kind} {state.name} is going", 1)
            raise ForeignObject(
                f"{kind} {where} exists but was not made by the operator for this BuildJob; "
                "it was left alone and nothing of this BuildJob was put in it"
            )
        return obj

    def _is_ours(self, state: JobState, obj: Obj) -> bool:
        meta = obj.get("metadata") or {}
        if obj.get("kind") == "Namespace":
            # Made before its BuildJob existed: someone guessed the name ahead of us.
            return (
                names.owns_namespace(obj, state.uid)
                and meta.get("creationTimestamp", "") >= state.created
            )
        labels = meta.get("labels") or {}
        return (
            labels.get(names.LABEL_MANAGED_BY) == names.APP
            and labels.get(names.LABEL_OWNER_UID) == state.uid
        )

    def pod_event(self, body: Obj, deleted: bool) -> None:
        """A pod with the operator's labels changed. Labels are anyone's to write: the pod
        counts only when it stands where the BuildJob its labels name has that pod (the engine
        in the job namespace, the job pod under the BuildJob's name in its namespace)."""
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        uid = labels.get(names.LABEL_OWNER_UID, "")
        state = self.jobs.get(uid)
        if state is None:
            owner = self.kube.get(
                names.owner_kind(labels),
                labels.get(names.LABEL_OWNER_NAMESPACE, ""),
                labels.get(names.LABEL_OWNER_NAME, ""),
            )
            if owner is None or owner["metadata"]["uid"] != uid:
                return  # its BuildJob is gone; the namespace goes with it
            state = self.observe({**owner, "kind": names.owner_kind(labels)})
        role = (
            names.ENGINE_POD
            if labels.get(names.LABEL_COMPONENT) == names.COMPONENT_ENGINE
            else names.JOB_POD
        )
        namespace, name = self._pod_place(state, role)
        # A DockerEngine's client pod is the tenant's: what it says of itself is not its status.
        ignored = state.for_client and role == names.JOB_POD
        if ignored or (meta.get("namespace"), meta.get("name")) != (namespace, name):
            logger.warning(
                "Ignored pod %s/%s: it claims BuildJob %s/%s, whose %s pod is %s/%s",
                meta.get("namespace"),
                meta.get("name"),
                state.namespace,
                state.name,
                role,
                namespace,
                name,
            )
            return
        self.reconcile(state, pod_event=body, pod_deleted=deleted, role=role)

    def forget(self, uid: str) -> None:
        with self._jobs_lock:
            self.jobs.pop(uid, None)
            self.namespaces.pop(uid, None)

    # -- the reconcile loop -------------------------------------------------------------------

    def reconcile(
        self,
        state: JobState,
        drift_check: bool = False,
        pod_event: Obj | None = None,
        pod_deleted: bool = False,
        role: str = names.ENGINE_POD,
    ) -> None:
        """pod_event: the body a pod event brought (pod_deleted: the event said it went), of
        the pod in that role."""
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
                state.pods[role] = None if pod_deleted else pods.essence(pod_event)
            self._guarded_step(state, drift_check)
        finally:
            state.lock.release()
        if state.phase in TERMINAL_PHASES or state.gone:
            self.start_queued()

    def resync(self, state: JobState) -> None:
        """The periodic check of an unfinished BuildJob: deadline, TTL, the queue, and (while it
        runs) children deleted or changed behind the operator's back."""
        logger.debug("Resync of BuildJob %s/%s", state.namespace, state.name)
        self.reconcile(state, drift_check=state.phase in decide.ACTIVE_PHASES)

    def due_for_resync(self) -> list[JobState]:
        return [s for s in list(self.jobs.values()) if s.live and not s.status.get("cleanedUp")]

    def _guarded_step(self, state: JobState, drift_check: bool) -> None:
        """The one error boundary: every entry point (events, the timer, the queue, requeues)
        steps a BuildJob through here, so a refusal always ends that BuildJob, and only that
        one, and a step that must wait is tried again later rather than slept on."""
        if not state.live:
            return
        try:
            self._step(state, drift_check)
        except Refusal as e:
            metrics.reconcile_error(e)
            self._fail(state, e.reason, str(e))
        except NotYet as e:
            delay = min(e.delay * 2**state.retries, MAX_RETRY_SECONDS)
            state.retries += 1
            logger.debug(
                "BuildJob %s/%s: %s; again in %.1fs", state.namespace, state.name, e, delay
            )
            self.requeue(state.uid, delay)
        except Exception as e:
            metrics.reconcile_error(e)
            raise
        else:
            state.retries = 0

    def _step(self, state: JobState, drift_check: bool) -> None:
        if state.phase in TERMINAL_PHASES:
            self._finish(state)
            return
        if state.invalid or state.spec is None:
            raise InvalidSpec(state.invalid or "spec: missing")
        if state.target is None:
            state.target = self._resolve(state, state.spec)
        t = state.target
        if state.phase in queue.WAITING_PHASES:
            waiting = self._admit(state)
            if waiting is not None:
                self._set(state, decide.SetStatus("Pending", st.QUEUED, waiting))
                return
            self._set(state, decide.start(t, st.timestamp(self.clock())))
            # Children are made only after Provisioning is written, so none exist yet: no
            # reads before creating them (a create that meets one anyway, 409, reads then).
            state.started_here = True
        try:
            self._run(state, decide.decide(self._known(state, pods=True, drift_check=drift_check)))
        finally:
            state.started_here = False

    def _known(self, state: JobState, pods: bool = False, drift_check: bool = False) -> Known:
        """What decide needs; with pods, the BuildJob's pods too (from the watch, or read)."""
        settings = self.settings
        spec = state.spec
        return Known(
            now=self.clock(),
            status=state.status,
            deadline_seconds=builders.deadline_seconds(spec, settings),
            ttl_seconds=None if spec is None else builders.ttl_seconds(spec, settings),
            job_namespace=state.job_namespace,
            namespace=state.namespace,
            job_pod=state.job_pod,
            children_made=state.provisioned,
            drift_check=drift_check,
            engine_stopped=state.cleaned,
            engine=self._pod(state, names.ENGINE_POD, drift_check) if pods else None,
            job=self._pod(state, names.JOB_POD, drift_check) if pods else None,
            for_client=state.for_client,
            client_bound=state.client_bound,
        )

    def _run(self, state: JobState, actions: list[Action]) -> None:
        """Does what decide said, in order; a Fail ends the list (it finishes the BuildJob)."""
        for action in actions:
            match action:
                case decide.SetStatus():
                    self._set(state, action)
                case decide.Fail(reason=reason, message=message):
                    self._fail(state, reason, message)
                    return
                case decide.MakeChildren(check_first=check_first):
                    self._make_children(state, self._target(state), check_first)
                case decide.CreatePod(name=role):
                    t = self._target(state)
                    if role == names.ENGINE_POD:
                        self._create_pod(state, role, builders.build_engine_pod(t))
                    else:
                        self._check_secrets(t)
                        self._create_pod(state, role, builders.build_job_pod(t))
                    failpoints.reached(f"{role}-pod")
                case decide.BindClient():
                    self._bind_client(state)
                    failpoints.reached("client-bound")
                case decide.Wait(why=why, delay=delay):
                    raise NotYet(why, delay)
                case decide.MakeQuota():
                    self._ensure(state, builders.build_quota(self._target(state)), False)
                case decide.Finish():
                    self._finish(state)
                case decide.StopPods(job_too=job_too):
                    self._delete(state, "Pod", names.ENGINE_POD, grace_period_seconds=5)
                    if job_too:
                        self._delete_job_side(state, pod_only=True)
                    failpoints.reached("finished")
                    state.cleaned = True
                    state.pods.clear()
                case decide.DeleteNamespace(ttl_seconds=ttl):
                    self._delete(state, "Namespace")
                    self._delete_job_side(state)
                    # The status says so; an Event would say nothing new (and cost a write).
                    self._write(state, {**state.status, "cleanedUp": True})
                    logger.info(
                        "BuildJob %s/%s: deleted namespace %s %ss after finishing",
                        state.namespace,
                        state.name,
                        state.job_namespace,
                        ttl,
                    )

    @staticmethod
    def _target(state: JobState) -> Target:
        assert state.target is not None, "children are made only for a resolved BuildJob"
        return state.target

    def _resolve(self, state: JobState, spec: EngineRequestSpec) -> Target:
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
            state.kind,
        )

    # -- making children ----------------------------------------------------------------------

    def _make_children(self, state: JobState, t: Target, check_first: bool) -> None:
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
        if not state.for_client:
            self._ensure(state, builders.build_job_policy(t), check_first)
        failpoints.reached("policies")
        service = self._ensure(state, builders.build_engine_service(t), check_first)
        failpoints.reached("service")
        self._ensure_tls(state, t, service["spec"].get("clusterIP"))
        failpoints.reached("tls")
        state.provisioned = True

    def _ensure(self, state: JobState, manifest: Obj, check_first: bool) -> Obj:
        """Creates the child, or adopts the one that exists when it is this BuildJob's; with
        check_first, one that is no longer what was built is put back as built."""
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        where = manifest["metadata"].get("namespace")
        if check_first and (existing := self._owned(state, kind, name, where)) is not None:
            return self._revert(manifest, existing)
        created = self.kube.create(manifest)
        if created is not None:
            return created
        existing = self._owned(state, kind, name, where)
        if existing is None:  # deleted between our 409 and our read: try once more
            return self._ensure(state, manifest, check_first=False)
        logger.info("Adopted existing %s %s", kind.lower(), name)
        # Something was made before after all (a previous operator's work): read before
        # creating from here on.
        state.started_here = False
        return existing

    def _revert(self, built: Obj, existing: Obj) -> Obj:
        if not decide.drifted(built, existing):
            return existing
        meta = existing["metadata"]
        # The resourceVersion read: a change made since then is seen at the next check.
        body = {
            **built,
            "metadata": {**built["metadata"], "resourceVersion": meta["resourceVersion"]},
        }
        logger.warning(
            "Reverted %s %s: it was changed from what the operator built",
            built["kind"].lower(),
            "/".join(filter(None, (meta.get("namespace"), meta["name"]))),
        )
        return self.kube.replace(body)

    def _check_secrets(self, t: Target) -> None:
        """The registry credentials the job pod will use, read in the BuildJob's namespace
        before the pod is made: one missing or of another kind is a refusal that names the
        field, not a pod stuck waiting for a volume."""
        spec = t.job_spec
        wanted: list[tuple[str, str, tuple[str, ...]]] = [
            (f"spec.imagePullSecrets[{i}].name", ref.name, builders.DOCKER_CONFIG_TYPES)
            for i, ref in enumerate(spec.image_pull_secrets or [])
        ]
        if spec.docker_config_secret:
            wanted.append(
                (
                    "spec.dockerConfigSecret.name",
                    spec.docker_config_secret.name,
                    builders.DOCKER_CONFIG_TYPES[:1],
                )
            )
        for field_path, source_name, types in wanted:
            source = self.kube.get("Secret", t.namespace, source_name)
            if source is None:
                raise InvalidSpec(f"{field_path}: Secret {t.namespace}/{source_name} not found")
            if source.get("type") not in types or not builders.registry_key(source):
                raise InvalidSpec(
                    f"{field_path}: Secret {t.namespace}/{source_name} is of type "
                    f"{source.get('type')!r}; it must be {' or '.join(types)} with its key"
                )

    def _ensure_tls(self, state: JobState, t: Target, cluster_ip: str | None) -> None:
        """Both TLS secrets, from one CA. A mismatched or half-written pair (a crash between the
        two writes) is reissued while no engine uses it; after that, losing one is fatal."""
        if state.started_here and all(
            self.kube.create(m) is not None for m in self._tls_pair(t, cluster_ip)
        ):
            return  # else one existed after all (409): read both and check, as below
        secrets = [
            self._owned(state, "Secret", state.client_secret, state.namespace),
            self._owned(state, "Secret", names.ENGINE_TLS_SECRET),
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
        for manifest, existing in zip(self._tls_pair(t, cluster_ip), secrets, strict=True):
            if existing is not None or self.kube.create(manifest) is None:
                self.kube.replace(manifest)

    def _tls_pair(self, t: Target, cluster_ip: str | None) -> tuple[Obj, Obj]:
        """A new CA's client and engine secrets, in that order (the CA's key is dropped
        here)."""
        valid_for = datetime.timedelta(seconds=t.deadline_seconds) + CERT_MARGIN
        bundle = certs.issue(
            builders.engine_dns_names(t),
            [cluster_ip] if cluster_ip and cluster_ip != "None" else [],
            valid_for,
            self.clock(),
        )
        return builders.build_client_secret(t, bundle), builders.build_engine_tls_secret(t, bundle)

    def _create_pod(self, state: JobState, role: str, manifest: Obj) -> None:
        try:
            created = self.kube.create(manifest)
        except ApiException as e:
            # A namespace's "default" ServiceAccount appears a moment after the namespace;
            # until then the ServiceAccount admission plugin refuses pods with 403.
            if e.status == 403 and "serviceaccount" in (e.body or ""):
                raise NotYet("the job namespace has no ServiceAccount yet", SA_RETRY_SECONDS) from e
            # A field the user gave us refused (400, 422), or an admission rule (403: a
            # LimitRange maximum, Pod Security, a policy): either way this pod cannot be.
            if e.status in (400, 403, 422):
                raise InvalidSpec(_refused_pod_message(e, role)) from e
            raise
        # What the API server returned is as new as the watch's next event; one that already
        # existed (409) is read when next needed.
        if created is None:
            state.pods.pop(role, None)
        else:
            state.pods[role] = pods.essence(created)

    # -- finishing ----------------------------------------------------------------------------

    def _fail(self, state: JobState, reason: str, message: str) -> None:
        if state.phase not in TERMINAL_PHASES:
            self._set(state, decide.SetStatus("Failed", reason, message))
        self._finish(state)

    def _finish(self, state: JobState) -> None:
        """Nothing that is not this BuildJob's own is touched (_delete checks)."""
        self._run(state, decide.finish(self._known(state)))

    def _delete_job_side(self, state: JobState, pod_only: bool = False) -> None:
        """The job pod and, unless pod_only, its Secret and NetworkPolicy: what the BuildJob has
        in its own namespace (the garbage collector removes them with the BuildJob too). A
        DockerEngine's client pod is the tenant's, never deleted: only its Secret is ours."""
        namespace = state.namespace
        if not state.for_client:
            pod = state.job_pod
            self._delete(state, "Pod", pod, grace_period_seconds=0, namespace=namespace)
        if not pod_only:
            self._delete(state, "Secret", state.client_secret, namespace=namespace)
            if not state.for_client:
                policy = names.job_policy(state.name)
                self._delete(state, "NetworkPolicy", policy, namespace=namespace)

    def _delete(
        self,
        state: JobState,
        kind: str,
        name: str | None = None,
        grace_period_seconds: int | None = None,
        namespace: str | None = None,
    ) -> None:
        """Deletes a child if, and only if, it is this BuildJob's: read, check its labels (and a
        namespace's name), delete with the uid read as precondition."""
        try:
            obj = self._owned(state, kind, name, namespace)
        except (ForeignObject, NotYet) as e:
            logger.warning("BuildJob %s/%s: not deleting: %s", state.namespace, state.name, e)
            return
        if obj is not None:
            meta = obj["metadata"]
            self.kube.delete(
                kind, meta.get("namespace"), meta["name"], meta["uid"], grace_period_seconds
            )

    # -- queueing -----------------------------------------------------------------------------

    def _admit(self, state: JobState) -> str | None:
        """None when the BuildJob may start (and it is marked admitted), else what it waits
        for. The lock makes "decide and mark" one step: two threads never take one slot."""
        if state.admitted:
            return None
        with self._admission:
            waiting = queue.waiting_for(state, self.jobs.values(), self.settings.max_running)
            state.admitted = waiting is None
        return waiting

    def start_queued(self) -> None:
        """Gives free slots to the oldest waiting BuildJobs."""
        for state in queue.next_up(list(self.jobs.values()), self.settings.max_running):
            with state.lock:
                self._guarded_step(state, drift_check=False)

    # -- status -------------------------------------------------------------------------------

    def _set(self, state: JobState, change: decide.SetStatus) -> None:
        before = state.status
        new = st.transition(
            before,
            change.phase,
            change.reason,
            change.message,
            state.generation,
            self.clock(),
            state.ready_condition,
            **change.fields,
        )
        if not self._write(state, new):
            return
        if (before.get("phase"), before.get("reason")) != (change.phase, change.reason):
            if change.reason in st.EVENT_REASONS or change.phase == "Failed":
                kind = "Warning" if change.phase == "Failed" else "Normal"
                self.events(state.ref, kind, change.reason, change.message)
            logger.info(
                "BuildJob %s/%s is %s: %s",
                state.namespace,
                state.name,
                change.phase,
                change.message,
            )

    def _write(self, state: JobState, new: st.Status) -> bool:
        patch = st.merge_patch(state.status, new)
        if not patch:
            return False
        if not self.kube.patch_status(state.kind, state.namespace, state.name, patch):
            state.gone = True
            return False
        metrics.status_written(state.created, state.status, new)
        state.status = new
        return True

    # -- deletion and the orphan sweep --------------------------------------------------------

    def delete(self, body: Obj) -> None:
        """The BuildJob is gone or going: remove its namespace (with everything in it), and
        release the finalizer an earlier operator version put on it."""
        state = self.observe(body)
        with state.lock:
            state.deleting = True
            self._delete(state, "Namespace")
            # Gone with the BuildJob anyway (ownerReferences), but the name is free for a
            # BuildJob made again under it as soon as this returns.
            self._delete_job_side(state)
            meta = body["metadata"]
            if names.LEGACY_FINALIZER in (meta.get("finalizers") or []):
                self.kube.remove_finalizer(state.kind, meta, names.LEGACY_FINALIZER)
        self.forget(state.uid)
        self.start_queued()

    def sweep(self) -> list[str]:
        """What a missed deletion event would leave: forgets BuildJobs that are gone, deletes
        their job namespaces and finishes deletions still held by the legacy finalizer;
        returns the namespaces deleted. (Start-up runs the same, sweep_listed, from the lists
        it reads anyway, for deletions while no operator ran.)"""
        # Namespaces first: each one listed was made for a BuildJob that existed before it,
        # so is in the later list unless gone. The other order deletes new jobs' namespaces.
        managed = self.load_namespaces()
        return self.sweep_listed(managed, *self.list_buildjobs())

    def list_buildjobs(self) -> tuple[list[Obj], int]:
        """Every BuildJob and DockerEngine (each with its kind: items of a list have none), and
        a mark that what is observed after it is newer than the list."""
        listed_after = next(self._seen)
        found = [
            {**body, "kind": kind}
            for kind in (names.KIND, names.DOCKER_ENGINE_KIND)
            for body in self.kube.list(kind)
        ]
        return found, listed_after

    def sweep_listed(self, managed: list[Obj], found: list[Obj], listed_after: int) -> list[str]:
        """The sweep, from lists already made: the job namespaces (listed first), then the
        BuildJobs with their mark (list_buildjobs)."""
        live = {bj["metadata"]["uid"] for bj in found}
        for state in list(self.jobs.values()):
            if state.seen < listed_after and state.uid not in live:
                self.forget(state.uid)
        for bj in found:
            if bj["metadata"].get("deletionTimestamp"):
                self.delete(bj)
        return self.sweep_orphans(managed, live)

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

    def sweep_orphans(self, managed: list[Obj], live: set[str]) -> list[str]:
        """Deletes job namespaces whose BuildJob (uid) is not among `live`. A namespace counts
        only when its name has the prefix and ends in the hash of the uid its labels name: a
        label alone is anyone's to put on their own namespace."""
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
            self.namespaces.pop(owner, None)
        return deleted


# Pod field paths the API server names -> the BuildJob fields they are built from.
_FIELD_OF = {
    names.JOB_POD: {"spec.containers[0].": "spec.job."},
    names.ENGINE_POD: {
        "spec.containers[0].": "spec.engine.",
        "spec.volumes[0].emptyDir.sizeLimit": "spec.engine.storage",
    },
}


def _refused_pod_message(e: ApiException, role: str) -> str:
    """The API server's reason, with the pod's field paths turned into the BuildJob's."""
    try:
        message = str(json.loads(e.body or "").get("message", e.reason))
    except (TypeError, ValueError):
        message = str(e.reason)
    for pod_path, spec_path in _FIELD_OF[role].items():
        message = message.replace(pod_path, spec_path)
    return "the API server refused the pod: " + message
