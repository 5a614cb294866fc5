"""Warm pools, the acting half: starts the warm engines warm.py says a class needs, follows
their pods, hands one out per claim and drops the rest.

A warm engine is a cold engine's namespace, policies, Service, server certificate, pod and
quota, owned by its class under a random warm id until claimed; its policy admits nobody. Its
CA's key lives only in this process (`warm.Member.authority`): the claim issues the client
certificate from it and drops it, so no certificate that engine trusts can be made again. An
engine whose key this process does not hold (the operator restarted) is never handed out: the
orphan sweep deletes its namespace, as it counts only the ids in `ids()` as live.
"""

import datetime
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

from kubernetes.client.exceptions import ApiException

from . import builders, classes, decide, failpoints, metrics, names, pods, warm
from .builders import Target
from .certs import Authority
from .children import CERT_MARGIN, claim_patch
from .config import Settings
from .errors import ClassRefused
from .jobstate import JobState
from .kube import Kube, Obj
from .models import DockerEngineSpec, WarmPool
from .warm import Member

logger = logging.getLogger(__name__)

# Asks for the class's pool to be refilled soon, off the caller's thread (handlers.py).
Kick = Callable[[str], None]


class Pool:
    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        known_classes: dict[str, Obj],
        kick: Kick,
        clock: Callable[[], datetime.datetime],
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.classes = known_classes  # the reconciler's, kept current by the class watch
        self.kick = kick
        self.clock = clock
        self.members: dict[str, Member] = {}
        self.claims: Counter[str] = Counter()
        self.misses: Counter[str] = Counter()
        self._failures: Counter[str] = Counter()
        self._not_before: dict[str, datetime.datetime] = {}
        self._written: dict[str, Obj] = {}
        self._lock = threading.Lock()
        self._refilling: dict[str, threading.Lock] = {}

    def ids(self) -> set[str]:
        """Warm ids whose namespaces are this process's (the sweep keeps these)."""
        with self._lock:
            return set(self.members)

    def of_class(self, class_name: str) -> list[Member]:
        with self._lock:
            return [m for m in self.members.values() if m.class_name == class_name]

    # -- the class's side ---------------------------------------------------------------------

    def _wanted(self, class_name: str) -> tuple[WarmPool | None, classes.Engine | None]:
        body = self.classes.get(class_name)
        spec = None if body is None else classes.parse_class(body)
        if spec is None or isinstance(spec, str) or spec.warm_pool is None:
            return None, None
        # Warm engines belong to no namespace until claimed: whether the claimant's namespace
        # may use the class was decided before it claims.
        open_to_all = spec.model_copy(update={"namespace_selector": None})
        try:
            engine = classes.resolve(class_name, open_to_all, _DEFAULTS, "", {})
        except ClassRefused:
            return None, None
        return spec.warm_pool, engine

    def refill(self, class_name: str) -> None:
        """Brings the class's pool to what warm.plan says; one refill per class at a time (a
        concurrent one is skipped: the next resync runs it again)."""
        busy = self._refilling.setdefault(class_name, threading.Lock())
        if not busy.acquire(blocking=False):
            return
        try:
            pool, engine = self._wanted(class_name)
            now = self.clock()
            plan = warm.plan(pool, engine, self.of_class(class_name), now)
            for member, why in plan.drop:
                self.discard(member, why)
            # Before starting more: the status says what this process holds (one that just
            # started holds none, whatever its predecessor last wrote).
            self.write_status(class_name, pool)
            waiting = self._not_before.get(class_name)
            if pool is not None and engine is not None and (waiting is None or now >= waiting):
                for _ in range(plan.start):
                    if not self._start(class_name, pool, engine):
                        break
            self.write_status(class_name, pool)
        finally:
            busy.release()

    def refill_all(self) -> None:
        """Every class with a pool, or with warm engines left (a class deleted or changed)."""
        names_ = set(self.classes) | {m.class_name for m in list(self.members.values())}
        for class_name in sorted(names_):
            self.refill(class_name)

    def _start(self, class_name: str, pool: WarmPool, engine: classes.Engine) -> bool:
        now = self.clock()
        warm_id = str(uuid.uuid4())
        t = builders.warm_target(
            class_name, warm_id, engine, self.settings, self.settings.namespace_prefix
        )
        deadline = warm.pod_deadline_seconds(pool, self.settings.default_deadline_seconds)
        authority = Authority(datetime.timedelta(seconds=deadline) + CERT_MARGIN, now)
        member = Member(warm_id, class_name, t.job_namespace, engine, now, authority, deadline)
        with self._lock:
            self.members[warm_id] = member
        server = authority.server(builders.engine_dns_names(t), [])
        try:
            for manifest in builders.build_warm_children(t, server, deadline):
                created = self.kube.create(manifest)
                if created is not None:
                    key = (manifest["kind"], manifest["metadata"]["name"])
                    member.uids[key] = created["metadata"]["uid"]
        except ApiException as e:
            self._failed(member, f"the API server refused it: {e.status} {e.reason}")
            return False
        logger.info("Started warm engine %s of EngineClass %s", t.job_namespace, class_name)
        return True

    def _failed(self, member: Member, why: str) -> None:
        self._failures[member.class_name] += 1
        delay = warm.backoff_seconds(self._failures[member.class_name])
        self._not_before[member.class_name] = self.clock() + datetime.timedelta(seconds=delay)
        logger.warning(
            "Warm engine %s of EngineClass %s failed (%s); refilling in %.0fs",
            member.namespace,
            member.class_name,
            why,
            delay,
        )
        self.discard(member, why)

    def discard(self, member: Member, why: str) -> None:
        """Forgets the warm engine and deletes its namespace, unless it was claimed meanwhile."""
        with self._lock:
            if self.members.get(member.id) is not member or member.claimed:
                return
            del self.members[member.id]
        ns = self.kube.get("Namespace", None, member.namespace)
        labels = ((ns or {}).get("metadata") or {}).get("labels") or {}
        if ns is None or names.owner_kind(labels) != names.CLASS_KIND:
            return
        meta = ns["metadata"]
        # The version read: a claim that relabelled it since keeps it.
        version = meta["resourceVersion"]
        if self.kube.delete("Namespace", None, meta["name"], meta["uid"], None, version):
            logger.info("Deleted warm engine %s: %s", member.namespace, why)

    def pod_event(self, body: Obj, deleted: bool) -> None:
        """A warm engine's pod changed: ready to be claimed, or failed (dropped, refilled)."""
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        member = self.members.get(labels.get(names.LABEL_OWNER_UID, ""))
        if member is None or member.claimed or meta.get("namespace") != member.namespace:
            return
        failure = None if deleted else decide.engine_failure(body)
        if deleted or failure is not None:
            self._failed(member, failure.message if failure else "its pod was deleted")
            self.kick(member.class_name)
        elif pods.is_ready(body) and not member.ready:
            member.ready = True
            self._failures.pop(member.class_name, None)
            logger.info(
                "Warm engine %s of EngineClass %s is ready", member.namespace, member.class_name
            )
            self.write_status(member.class_name)

    # -- the claim ----------------------------------------------------------------------------

    def claim(self, state: JobState, t: Target) -> bool:
        """Makes a warm engine this BuildJob's (or DockerEngine's): its namespace relabelled,
        its client Secret written, `state.warm_id` and `state.job_namespace` set. False: none
        fits (a miss; it starts cold)."""
        class_name = t.engine.class_name
        pool, _ = self._wanted(class_name)
        if pool is None or pool.size == 0:
            return False
        now = self.clock()
        with self._lock:
            fitting = [
                m
                for m in self.members.values()
                if m.class_name == class_name and warm.fits(m, t, now)
            ]
            member = min(fitting, key=lambda m: m.created, default=None)
            if member is not None:
                member.claimed = True  # handed out once: from here on nobody else's
        if member is None or not self._take(state, t, member, now):
            self.misses[class_name] += 1
            metrics.warm_claim(class_name, hit=False)
            return False
        self.claims[class_name] += 1
        metrics.warm_claim(class_name, hit=True)
        return True

    def refill_soon(self, class_name: str) -> None:
        """After a claim (hit or miss), once the claimant's pods exist: a refill started during
        the claim competes with it for the API server and the node (a new engine's start is a
        second or two of CPU), and the claimant is the one waiting."""
        pool, _ = self._wanted(class_name)
        if pool is not None and pool.size > 0:
            self.kick(class_name)

    def _take(self, state: JobState, t: Target, member: Member, now: datetime.datetime) -> bool:
        with self._lock:
            del self.members[member.id]
        uids = dict(member.uids)
        # The namespace first: from here on it is the owner's (deleted with it), whatever
        # happens next. The uid it was made with is the precondition: handed out once, so no
        # other claim relabelled it since.
        ns_uid = uids.get(("Namespace", member.namespace))
        if (
            ns_uid is None
            or self.kube.patch("Namespace", "", member.namespace, claim_patch(state, ns_uid))
            is None
        ):
            logger.warning("Warm engine %s was gone when claimed", member.namespace)
            return False
        state.warm_id, state.job_namespace = member.id, member.namespace
        # Its pod is relabelled here; the rest is rebuilt for the claimant by Children.ensure.
        pod_uid = uids.pop(("Pod", names.ENGINE_POD), None)
        state.warm_uids = uids
        claimed = replace(t, job_namespace=member.namespace, warm_id=member.id)
        not_after = now + datetime.timedelta(seconds=t.deadline_seconds) + CERT_MARGIN
        self.kube.create(builders.build_client_secret(claimed, member.authority.client(not_after)))
        failpoints.reached("warm-claimed")
        if pod_uid is not None:
            deadline = warm.claimed_pod_deadline(member, t, now)
            patch = claim_patch(state, pod_uid, activeDeadlineSeconds=deadline)
            # None: gone meanwhile, which the claimant's steps see as they would at any time.
            self.kube.patch("Pod", member.namespace, names.ENGINE_POD, patch)
        logger.info(
            "%s %s/%s claimed warm engine %s",
            state.kind,
            state.namespace,
            state.name,
            member.namespace,
        )
        return True

    # -- status -------------------------------------------------------------------------------

    def write_status(self, class_name: str, pool: WarmPool | None = None) -> None:
        if pool is None:
            pool, _ = self._wanted(class_name)
        if class_name not in self.classes:
            return
        members = [m for m in self.of_class(class_name) if not m.claimed]
        now = self.clock()
        ready = [m for m in members if m.ready]
        status: Obj = {
            "size": pool.size if pool else 0,
            "ready": len(ready),
            "starting": len(members) - len(ready),
            "claims": self.claims[class_name],
            "misses": self.misses[class_name],
            "oldestIdleSeconds": int(max((m.age(now) for m in ready), default=0))
            if ready
            else None,
        }
        metrics.warm_pool(class_name, len(ready), len(members) - len(ready))
        # Idle age alone changes every second: written with a change of anything else.
        essence = {k: v for k, v in status.items() if k != "oldestIdleSeconds"}
        if self._written.get(class_name) == essence:
            return
        try:
            self.kube.patch_status(names.CLASS_KIND, "", class_name, {"warmPool": status})
        except ApiException as e:
            logger.warning("Status of EngineClass %s not written: %s", class_name, e)
            return
        self._written[class_name] = essence


# What a warm engine is started as: its class's defaults, nothing asked.
_DEFAULTS = DockerEngineSpec.model_validate({"clientPod": {"name": "none"}})
