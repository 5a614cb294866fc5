"""Prometheus metrics: every metric the operator exposes is defined here, named remote_docker_*.

Counts of BuildJobs by phase are read from the reconciler's memory at scrape time (a collector),
so they cannot drift from what the operator knows; what happens once (a BuildJob finishing, its
engine becoming ready, an error, an API request) is counted where it happens, through the small
functions below. The endpoint is prometheus_client's own HTTP server, on RDO_METRICS_PORT.
"""

import datetime
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from . import status as st
from .errors import Refusal

PREFIX = "remote_docker_"

BUILDJOBS_FINISHED = Counter(
    PREFIX + "buildjobs_finished",
    "BuildJobs and DockerEngines (kind) that reached Succeeded or Failed since the operator "
    "started, by phase and reason.",
    ["kind", "phase", "reason"],
)
ENGINE_READY = Histogram(
    PREFIX + "engine_ready_seconds",
    "From a BuildJob's (or DockerEngine's: kind) creation to its engine answering over mutual "
    "TLS (time queued included); whole seconds, as Kubernetes timestamps have.",
    ["kind"],
    buckets=(1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800),
)
JOB_DURATION = Histogram(
    PREFIX + "job_duration_seconds",
    "From a BuildJob's (or DockerEngine's: kind) start (provisioning began) to its end, by "
    "final phase; whole seconds. Those refused before they started are not observed.",
    ["kind", "phase"],
    buckets=(5, 10, 30, 60, 120, 300, 600, 900, 1200, 1800, 2700, 3600, 7200, 14400, 86400),
)
RECONCILE_ERRORS = Counter(
    PREFIX + "reconcile_errors",
    "Reconcile steps that raised, by reason: outcome=failed when the BuildJob was failed with "
    "that reason (a refusal); outcome=raised when the step raised anything else (reason: the "
    "exception's class name), which the next trigger (at the latest the resync timer) meets "
    "again or not.",
    ["reason", "outcome"],
)
API_REQUESTS = Counter(
    PREFIX + "api_requests",
    "Requests the operator's reconciler made to the Kubernetes API server, by HTTP verb and "
    "final response code (code=error: no response). urllib3's own retries (a 429 or 503 with "
    "Retry-After) within one request are not seen; the operator's retries of a 429 count each. "
    "Not counted: kopf's own requests (its watches and Events).",
    ["verb", "code"],
)

WARM_CLAIMS = Counter(
    PREFIX + "warm_claims",
    "BuildJobs and DockerEngines of a class with a warm pool, by whether they got a warm engine "
    "(result=hit) or started a cold one (result=miss).",
    ["engine_class", "result"],
)
WARM_ENGINES = Gauge(
    PREFIX + "warm_engines",
    "Warm engines not claimed yet, by class and state (ready, starting).",
    ["engine_class", "state"],
)


class TrackedJob(Protocol):
    """What the collector reads of a BuildJob the reconciler remembers (reconcile.JobState)."""

    status: st.Status
    gone: bool
    kind: str


class BuildJobCollector(Collector):
    """BuildJobs by phase and reason, and the queue's depth, as the reconciler knows them."""

    def __init__(self) -> None:
        self.jobs: Callable[[], Iterable[TrackedJob]] = list

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_phase = GaugeMetricFamily(
            PREFIX + "buildjobs",
            "BuildJobs and DockerEngines (kind) the operator knows, by status phase and reason "
            "(one it has not given a status yet counts as Pending with no reason).",
            labels=["kind", "phase", "reason"],
        )
        queue = GaugeMetricFamily(
            PREFIX + "queue_depth",
            "BuildJobs and DockerEngines waiting to start (Pending, e.g. Queued behind "
            "maxRunning or a class's maxEnginesPerNamespace).",
        )
        tally: Tally[tuple[str, str, str]] = Tally()
        for job in self.jobs():
            # One the operator has not written a status for yet waits like a Pending one.
            if not job.gone:
                phase = job.status.get("phase") or "Pending"
                tally[job.kind, phase, job.status.get("reason") or ""] += 1
        for labels, count in sorted(tally.items()):
            by_phase.add_metric(list(labels), count)
        queue.add_metric([], sum(n for (_, phase, _), n in tally.items() if phase == "Pending"))
        yield by_phase
        yield queue


BUILDJOBS = BuildJobCollector()
REGISTRY.register(BUILDJOBS)


def track(jobs: Callable[[], Iterable[TrackedJob]]) -> None:
    """Makes the collector read these BuildJobs (the reconciler's, once it exists)."""
    BUILDJOBS.jobs = jobs


def serve(port: int) -> None:
    """Serves /metrics on all addresses at `port` in a daemon thread; 0 serves nothing."""
    if port:
        start_http_server(port)


def status_written(
    created: str, before: st.Status, after: st.Status, kind: str, ready_type: str
) -> None:
    """A BuildJob's (or DockerEngine's: kind) status went from `before` to `after` (written
    to the API server). Each moment is observed once: when the phase first becomes Running
    (the engine is ready: condition ready_type), and when completionTime first appears."""
    if after.get("phase") == "Running" and before.get("phase") != "Running":
        ready = _condition_time(after, ready_type)
        born = st.parse_time(created)
        if ready and born:
            ENGINE_READY.labels(kind).observe(_seconds(born, ready))
    finished = st.parse_time(after.get("completionTime"))
    if finished and not before.get("completionTime"):
        phase = str(after.get("phase"))
        BUILDJOBS_FINISHED.labels(kind, phase, str(after.get("reason"))).inc()
        started = st.parse_time(after.get("startTime"))
        if started:
            JOB_DURATION.labels(kind, phase).observe(_seconds(started, finished))


def reconcile_error(error: Exception) -> None:
    """A reconcile step raised `error` (reconcile.Reconciler._guarded_step)."""
    if isinstance(error, Refusal):
        RECONCILE_ERRORS.labels(error.reason, "failed").inc()
    else:
        RECONCILE_ERRORS.labels(type(error).__name__, "raised").inc()


def api_request(verb: str, code: int | None) -> None:
    """One request to the API server; code None when no response came."""
    API_REQUESTS.labels(verb.upper(), "error" if code is None else str(code)).inc()


def _condition_time(status: st.Status, type_: str) -> datetime.datetime | None:
    conditions: list[dict[str, Any]] = status.get("conditions") or []
    for c in conditions:
        if c.get("type") == type_ and c.get("status") == "True":
            return st.parse_time(c.get("lastTransitionTime"))
    return None


def _seconds(start: datetime.datetime, end: datetime.datetime) -> float:
    return max((end - start).total_seconds(), 0.0)


def warm_claim(engine_class: str, hit: bool) -> None:
    WARM_CLAIMS.labels(engine_class, "hit" if hit else "miss").inc()


def warm_pool(engine_class: str, ready: int, starting: int) -> None:
    WARM_ENGINES.labels(engine_class, "ready").set(ready)
    WARM_ENGINES.labels(engine_class, "starting").set(starting)
