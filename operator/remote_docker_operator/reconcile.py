"""Reconciliation, the acting half: gathers what `decide` needs, does what it returns.

Level-triggered and idempotent: every step can run again, after a crash or alongside a stale
event, and converges. Triggers are the BuildJob's own events, its pods' events, a resync timer
and requeues (errors.NotYet); one lock per BuildJob keeps them from interleaving. What to do
next is decide.py's (pure); who may start, queue.py's (pure); what objects look like,
builders.py's (pure); how each child is made, adopted and deleted safely, children.py's. This
module drives them, and `_guarded_step` is the one place a failure becomes a BuildJob's status.
"""

import datetime
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import replace

from . import builders, cache, classes, decide, failpoints, metrics, names, pods, queue
from . import status as st
from .builders import Target
from .caches import Caches
from .children import Children
from .config import Settings
from .decide import Action, Known
from .errors import InvalidSpec, NotYet, Refusal
from .jobstate import JobState, parse_spec
from .kube import Kube, Obj
from .models import TERMINAL_PHASES, EngineRequestSpec
from .pool import Kick, Pool

logger = logging.getLogger(__name__)

LOCK_WAIT_SECONDS = 60
MAX_RETRY_SECONDS = 30.0

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
        kick: Kick = lambda class_name: None,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.events = events
        self.requeue = requeue
        self.clock = clock
        self.children = Children(kube, settings, clock)
        self.jobs: dict[str, JobState] = {}
        # EngineClasses by name, kept current by their watch (handlers.py).
        self.classes: dict[str, Obj] = {}
        # BuildJob uid -> its job namespace, for namespaces made before a prefix change, and
        # the warm id of those that were warm engines.
        self.namespaces: dict[str, str] = {}
        self.warm_ids: dict[str, str] = {}
        self.pool = Pool(kube, settings, self.classes, kick, clock)
        self.caches = Caches(kube, clock)
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
                    warm_id=self.warm_ids.get(uid),
                )
                self.jobs[uid] = state
        # Our own status writes are newer than any body but the first, so only flags update.
        state.deleting = state.deleting or bool(meta.get("deletionTimestamp"))
        return state

    def pod_event(self, body: Obj, deleted: bool) -> None:
        """A pod with the operator's labels changed. Labels are anyone's to write: the pod
        counts only when it stands where the BuildJob its labels name has that pod (the engine
        in the job namespace, the job pod under the BuildJob's name in its namespace)."""
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        uid = labels.get(names.LABEL_OWNER_UID, "")
        if names.owner_kind(labels) == names.CLASS_KIND:
            self.pool.pod_event(body, deleted)
            return
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
        namespace, name = self.children.pod_place(state, role)
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
            self.warm_ids.pop(uid, None)

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
        claimed_from: str | None = None
        if state.phase in queue.WAITING_PHASES:
            waiting = self._admit(state)
            if waiting is not None:
                self._set(state, decide.SetStatus("Pending", st.QUEUED, waiting))
                return
            if state.warm_id is None and t.engine.cache is None:
                self.pool.claim(state, t)
                claimed_from = t.engine.class_name
            if state.warm_id is not None:
                state.target = t = replace(
                    t, job_namespace=state.job_namespace, warm_id=state.warm_id
                )
            wanted = t.engine.cache
            if wanted is not None and not state.cache_taken:
                taken = self.caches.take(t)
                if taken.busy:
                    why = f"every volume of cache {wanted.key!r} is in use (cache.whenBusy: Wait)"
                    self._set(state, decide.SetStatus("Pending", st.CACHE_BUSY, why))
                    raise NotYet(why, 2)
                state.cache_volume, state.cache_taken = taken.volume, True
            hit = state.cache_volume is not None
            self._set(state, decide.start(t, st.timestamp(self.clock()), hit))
            # Children are made only after Provisioning is written, so none exist yet: no
            # reads before creating them (a create that meets one anyway, 409, reads then). A
            # warm engine's all exist.
            state.started_here = state.warm_id is None
        try:
            self._run(state, decide.decide(self._known(state, pods=True, drift_check=drift_check)))
        finally:
            state.started_here = False
            if claimed_from is not None:
                self.pool.refill_soon(claimed_from)

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
            engine=self.children.pod(state, names.ENGINE_POD, drift_check) if pods else None,
            job=self.children.pod(state, names.JOB_POD, drift_check) if pods else None,
            for_client=state.for_client,
            client_bound=state.client_bound,
            warm=state.warm_id is not None,
            cache_to_keep=state.cached and not state.cache_kept,
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
                    self.children.make(state, self._target(state), check_first)
                case decide.CreatePod(name=role):
                    t = self._target(state)
                    if role == names.ENGINE_POD:
                        self.children.create_pod(state, role, builders.build_engine_pod(t))
                    else:
                        self.children.check_references(t)
                        self.children.create_pod(state, role, builders.build_job_pod(t))
                    failpoints.reached(f"{role}-pod")
                case decide.BindClient():
                    self.children.bind_client(state)
                    failpoints.reached("client-bound")
                case decide.Wait(why=why, delay=delay):
                    raise NotYet(why, delay)
                case decide.MakeQuota():
                    self.children.ensure(state, builders.build_quota(self._target(state)), False)
                    failpoints.reached("quota")
                case decide.Finish():
                    self._finish(state)
                case decide.KeepCache():
                    self._keep_cache(state)
                case decide.StopPods(job_too=job_too):
                    # A cached engine gets its pod's grace to stop cleanly (cache.py says why).
                    grace = None if state.cached else 5
                    self.children.delete(state, "Pod", names.ENGINE_POD, grace_period_seconds=grace)
                    if state.cached:
                        self.caches.release(state.job_namespace)
                    if job_too:
                        self.children.delete_job_side(state, pod_only=True)
                    failpoints.reached("finished")
                    state.cleaned = True
                    state.pods.clear()
                case decide.DeleteNamespace(ttl_seconds=ttl):
                    self.children.delete(state, "Namespace")
                    self.children.delete_job_side(state)
                    # The status says so; an Event would say nothing new (and cost a write).
                    self._write(state, {**state.status, "cleanedUp": True})
                    logger.info(
                        "BuildJob %s/%s: deleted namespace %s %ss after finishing",
                        state.namespace,
                        state.name,
                        state.job_namespace,
                        ttl,
                    )

    def _keep_cache(self, state: JobState) -> None:
        t = self._target(state)
        assert t.engine.cache is not None
        volume = self.caches.keep(t)
        state.cache_kept = True
        discarded = cache.discarded(state.pods.get(names.ENGINE_POD))
        hit = state.cache_volume is not None
        entry = {"key": t.engine.cache.key, "hit": hit, "volume": volume, "discarded": discarded}
        self._write(
            state, {**state.status, "cache": {k: v for k, v in entry.items() if v is not None}}
        )
        if discarded:
            self.events(
                state.ref,
                "Warning",
                st.CACHE_DISCARDED,
                f"cache {t.engine.cache.key!r}: volume {volume} was emptied before use: the "
                "engine that used it last did not stop cleanly, so its layers were not trusted",
            )

    @staticmethod
    def _target(state: JobState) -> Target:
        assert state.target is not None, "children are made only for a resolved BuildJob"
        return state.target

    def _resolve(self, state: JobState, spec: EngineRequestSpec) -> Target:
        """The BuildJob with its EngineClass applied, or the refusal that names the field."""
        wanted = spec.engine.class_name
        if wanted is not None and wanted not in self.classes:
            # Classes are known from their watch, a stream apart from the BuildJobs': a class
            # applied together with its first BuildJob may not have been seen yet. Asked once
            # before the BuildJob is refused for it.
            found = self.kube.get(names.CLASS_KIND, None, wanted)
            if found is not None:
                self.classes[wanted] = found
        class_name, cls = classes.pick(self.classes, wanted)
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
            state.warm_id,
        )

    # -- making children ----------------------------------------------------------------------

    # -- finishing ----------------------------------------------------------------------------

    def _fail(self, state: JobState, reason: str, message: str) -> None:
        if state.phase not in TERMINAL_PHASES:
            self._set(state, decide.SetStatus("Failed", reason, message))
        self._finish(state)

    def _finish(self, state: JobState) -> None:
        """Nothing that is not this BuildJob's own is touched (_delete checks)."""
        self._run(state, decide.finish(self._known(state)))

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
                "%s %s/%s is %s: %s",
                state.kind,
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
        metrics.status_written(state.created, state.status, new, state.kind, state.ready_condition)
        state.status = new
        return True

    # -- deletion and the orphan sweep --------------------------------------------------------

    def delete(self, body: Obj) -> None:
        """The BuildJob is gone or going: remove its namespace (with everything in it), and
        release the finalizer an earlier operator version put on it."""
        state = self.observe(body)
        with state.lock:
            state.deleting = True
            self.children.delete(state, "Namespace")
            # Gone with the BuildJob anyway (ownerReferences), but the name is free for a
            # BuildJob made again under it as soon as this returns.
            self.children.delete_job_side(state)
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
            labels = ns["metadata"].get("labels") or {}
            owner = labels.get(names.LABEL_OWNER_UID, "")
            if names.owns_namespace(ns, owner) and names.owner_kind(labels) != names.CLASS_KIND:
                self.namespaces[owner] = ns["metadata"]["name"]  # the current prefix's wins
                if names.LABEL_WARM_ENGINE in labels:
                    self.warm_ids[owner] = labels[names.LABEL_WARM_ENGINE]
        return found

    def sweep_orphans(self, managed: list[Obj], live: set[str]) -> list[str]:
        """Deletes job namespaces whose BuildJob (uid) is not among `live`, and warm engines'
        this process did not start (pool.py: their CA keys are lost). A namespace counts only
        when its name has the prefix and ends in the hash of the uid its labels name: a label
        alone is anyone's to put on their own namespace. Each is deleted only as listed: one
        changed since (a warm engine claimed) is not."""
        live = live | self.pool.ids()
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
            version = meta.get("resourceVersion")
            if self.kube.delete("Namespace", None, meta["name"], meta["uid"], None, version):
                deleted.append(meta["name"])
            self.namespaces.pop(owner, None)
        return deleted
