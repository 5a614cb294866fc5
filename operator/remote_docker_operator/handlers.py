"""kopf handlers: the triggers (BuildJob, pod and EngineClass events, deletion, and one resync
loop for all BuildJobs). Each finds the BuildJob concerned and asks the reconciler to converge
it; what to do lives in decide.py, how in reconcile.py, what objects look like in builders.py.

Handlers are sync functions: kopf runs them in its thread pool, so the blocking kubernetes
client never stalls the event loop.
"""

import asyncio
import concurrent.futures
import contextvars
import itertools
import logging
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from . import builders, kopfclient, metrics, names
from . import status as st
from .config import get_settings
from .kube import Kube, Obj, load_config
from .pool import Kick
from .reconcile import EventSink, Reconciler, Requeue

logger = logging.getLogger(__name__)
SETTINGS = get_settings()
WORKERS = 16
# Every so many resync ticks, Reconciler.sweep: deletion events lost in a watch gap leave a
# namespace (and a remembered BuildJob) behind; every few minutes at the default resync.
SWEEP_EVERY = 10


def reconciler(memo: kopf.Memo) -> Reconciler:
    """The operator's one Reconciler, made at start-up and kept in kopf's memo."""
    return cast(Reconciler, memo.reconciler)


def requeue_on(loop: asyncio.AbstractEventLoop, memo: kopf.Memo) -> Requeue:
    """Runs a BuildJob through the reconciler again after a delay, on the event loop's timer
    and in kopf's thread pool, as a kopf.TemporaryError(delay=...) would for a change handler:
    no thread sleeps meanwhile."""

    def fire(uid: str) -> None:
        rec = reconciler(memo)
        state = rec.jobs.get(uid)
        if state is not None:
            # In the context it was asked from (kopf's: its log prefixes), as kopf runs its
            # own sync handlers.
            loop.run_in_executor(None, contextvars.copy_context().run, rec.reconcile, state)

    def requeue(uid: str, delay: float) -> None:
        loop.call_soon_threadsafe(loop.call_later, delay, fire, uid)

    return requeue


def kick_on(loop: asyncio.AbstractEventLoop, memo: kopf.Memo) -> Kick:
    """Refills a class's warm pool soon, in kopf's thread pool: a claim (or a failed warm
    engine) asks for it from a thread that must not wait for new engines."""

    def fire(class_name: str) -> None:
        rec = reconciler(memo)
        loop.run_in_executor(None, contextvars.copy_context().run, rec.pool.refill, class_name)

    def kick(class_name: str) -> None:
        loop.call_soon_threadsafe(fire, class_name)

    return kick


def event_poster(kube: Kube) -> EventSink:
    """Events with the operator's own client: kopf.event needs kopf's context, which work run
    from the resync loop and requeues would have to carry; an Event that cannot be posted is
    logged, never the BuildJob's failure."""

    def post(ref: Obj, type_: str, reason: str, message: str) -> None:
        try:
            kube.create(builders.build_event(ref, type_, reason, message, st.timestamp(st.now())))
        except ApiException as e:
            logger.warning("Event %s for %s not posted: %s", reason, ref["metadata"]["name"], e)

    return post


# kopf's API session, with a bounded connection pool (kopfclient.py says why).
kopf.on.login()(kopfclient.login)


@kopf.on.startup()
async def startup(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    # No finalizer, progress annotations or diff-base: only event handlers are registered
    # (a change handler, on.delete included, would cost a finalizer patch, a diff-base copy of
    # every body and one more round trip before a BuildJob starts). The deletion event brings
    # a job namespace down; Reconciler.sweep covers a missed one.
    # Events come from phase transitions; kopf's per-log-line events would flood the BuildJob.
    settings.posting.level = logging.WARNING
    # Only our own pods, filtered by the API server rather than in this process.
    settings.watching.label_selectors["v1", "pods"] = f"{names.LABEL_MANAGED_BY}={names.APP}"
    # Reconciles mostly wait on the API server; more threads than cores keeps throughput up.
    settings.execution.max_workers = WORKERS
    # The one place that decides peering: standalone, since only the replica holding the
    # leader Lease runs kopf at all (leader.py). kopf applies this before it would start
    # peering, which waits for the startup handlers.
    settings.peering.standalone = True
    # The CRD is installed before the operator (Helm's crds/); watching every CRD in the
    # cluster for new resources would only cost an RBAC rule.
    settings.scanning.disabled = True

    load_config(pool_size=WORKERS)
    kube = Kube()
    loop = asyncio.get_running_loop()
    rec = Reconciler(
        kube,
        SETTINGS,
        event_poster(kube),
        requeue_on(loop, memo),
        kick=kick_on(loop, memo),
    )
    # Blocking reads: off the event loop.
    await asyncio.to_thread(_load, rec, logger)
    memo.reconciler = rec
    metrics.track(lambda: list(rec.jobs.values()))
    memo.resync = asyncio.create_task(
        resync_forever(rec, SETTINGS.resync_seconds, settings.execution.executor)
    )


def _load(rec: Reconciler, logger: kopf.Logger) -> None:
    # Know every class, every job namespace and every BuildJob before admitting any, so the
    # queue's limits and order hold at once and no BuildJob is resolved against a class not
    # seen yet.
    for body in rec.kube.list(names.CLASS_KIND):
        rec.classes[body["metadata"]["name"]] = body
    # The sweep's own lists, read once: namespaces first, as Reconciler.sweep says why.
    managed = rec.load_namespaces()
    found, listed_after = rec.list_buildjobs()
    for body in found:
        rec.observe(body)
    _swept(rec.sweep_listed(managed, found, listed_after), logger)
    rec.caches.expire()


def sweep(rec: Reconciler, logger: logging.Logger | kopf.Logger) -> None:
    _swept(rec.sweep(), logger)
    # Cache volumes unused past their retention: as rarely as the sweep, a cluster-wide list.
    rec.caches.expire()


def _swept(namespaces: list[str], logger: logging.Logger | kopf.Logger) -> None:
    for namespace in namespaces:
        logger.info("Deleted orphaned namespace %s", namespace)


@kopf.on.event(names.GROUP, names.VERSION, names.PLURAL)
def buildjob_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    _owner_event(body, type, memo)


@kopf.on.event(names.GROUP, names.VERSION, names.DOCKER_ENGINE_PLURAL)
def dockerengine_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    _owner_event(body, type, memo)


def _owner_event(body: kopf.Body, type: str | None, memo: kopf.Memo) -> None:
    """A BuildJob's event, or a DockerEngine's (the same life but for the job pod); the body
    says which."""
    rec = reconciler(memo)
    if type == "DELETED" or body.metadata.deletion_timestamp:
        # Going: another finalizer may hold it a while (or an earlier version's, released here).
        rec.delete(dict(body))
        return
    state = rec.observe(dict(body))
    # New (or newly listed) BuildJobs, and those not started yet. Later updates are our own
    # status writes; pod events and the timer drive the rest.
    if type in (None, "ADDED") or state.phase in (None, "Pending"):
        rec.reconcile(state)


@kopf.on.event("v1", "pods", labels={names.LABEL_MANAGED_BY: names.APP})
def pod_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    reconciler(memo).pod_event(dict(body), deleted=type == "DELETED")


@kopf.on.event(names.GROUP, names.VERSION, names.CLASS_PLURAL)
def engineclass_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Classes are read from memory when a BuildJob is admitted; this keeps them current, and
    their warm pools filled (or drained, the class deleted)."""
    rec = reconciler(memo)
    name = body.metadata.name or ""
    if type == "DELETED":
        rec.classes.pop(name, None)
    else:
        rec.classes[name] = dict(body)
    rec.pool.refill(name)


async def resync_forever(
    rec: Reconciler, interval: float, executor: concurrent.futures.Executor
) -> None:
    """Every unfinished BuildJob, every `interval` seconds (Reconciler.resync), WORKERS at a
    time in kopf's thread pool, and the orphan sweep every SWEEP_EVERY ticks. One loop for all
    rather than a kopf timer per BuildJob: each timer keeps its own copy of the BuildJob's body
    and a task for as long as the BuildJob exists, thousands of them while finished BuildJobs
    wait for their TTL."""
    loop = asyncio.get_running_loop()
    for tick in itertools.count(1):
        await asyncio.sleep(interval)
        if tick % SWEEP_EVERY == 0:
            try:
                await loop.run_in_executor(
                    executor, contextvars.copy_context().run, sweep, rec, logger
                )
            except Exception:
                # An API error or the connection's (urllib3's: a timeout, a reset): either way
                # this loop must go on, as it is the only retry a failed event handler gets.
                logger.exception("Orphan sweep failed (tried again in %d ticks)", SWEEP_EVERY)
        try:
            await loop.run_in_executor(
                executor, contextvars.copy_context().run, rec.pool.refill_all
            )
        except Exception:
            logger.exception("Warm pool refill failed (tried again next tick)")
        due = rec.due_for_resync()
        for start in range(0, len(due), WORKERS):
            batch = due[start : start + WORKERS]
            results = await asyncio.gather(
                *(
                    # In kopf's context (its log prefixes), as kopf runs its sync handlers.
                    loop.run_in_executor(executor, contextvars.copy_context().run, rec.resync, s)
                    for s in batch
                ),
                return_exceptions=True,
            )
            for state, result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    # As kopf would for a failed timer: logged, and tried at the next tick.
                    logger.error(
                        "Resync of BuildJob %s/%s failed: %r", state.namespace, state.name, result
                    )


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("resync")
    if task is not None:
        task.cancel()
