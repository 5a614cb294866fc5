"""metrics.py as data: what the collector reports for given BuildJobs, and what each status
transition, error and API request adds. Counters are process-wide, so checks are differences."""

import datetime
import json
import re
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from remote_docker_operator import metrics, names
from remote_docker_operator import status as st
from remote_docker_operator.errors import ClassNotFound
from remote_docker_operator.kube import Kube
from remote_docker_operator.reconcile import JobState

from .test_reconcile import body, reconciler

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = (
    ROOT / "charts" / "remote-docker-operator" / "dashboards" / "remote-docker-operator.json"
)
T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
CREATED = st.timestamp(T0)


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def move(before: st.Status, phase: str, reason: str, seconds: float, **fields: Any) -> st.Status:
    return st.transition(before, phase, reason, "m", 1, at(seconds), **fields)


# -- the collector ------------------------------------------------------------------------------


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Tracked:
    """A reconciler without an API client, and a registry holding a collector of its jobs."""

    def __init__(self) -> None:
        self.rec = reconciler()
        self.registry = CollectorRegistry()
        collector = metrics.BuildJobCollector()
        collector.jobs = lambda: list(self.rec.jobs.values())
        self.registry.register(collector)

    def scrape(self) -> Samples:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in self.registry.collect()
            for s in family.samples
        }


def test_collector_counts_by_phase_and_reason() -> None:
    tracked = Tracked()
    rec = tracked.rec
    rec.observe(body("a", CREATED))  # no status yet
    rec.observe(body("b", CREATED, "Pending")).status["reason"] = "Queued"
    rec.observe(body("c", CREATED, "Pending")).status["reason"] = "Queued"
    rec.observe(body("d", CREATED, "Running")).status["reason"] = "JobRunning"
    rec.observe(body("e", CREATED, "Failed")).status["reason"] = "JobFailed"
    rec.observe(body("f", CREATED, "Failed")).status["reason"] = "EngineClassNotFound"
    rec.observe(body("g", CREATED, "Succeeded")).status["reason"] = "Succeeded"
    rec.observe(body("h", CREATED, "Succeeded")).gone = True  # deleted: not counted
    engine = {**body("i", CREATED, "Running"), "kind": names.DOCKER_ENGINE_KIND}
    rec.observe(engine).status["reason"] = "EngineReady"

    def bj(phase: str, reason: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        labels = (("kind", "BuildJob"), ("phase", phase), ("reason", reason))
        return "remote_docker_buildjobs", labels

    assert tracked.scrape() == {
        bj("Pending", ""): 1,
        bj("Pending", "Queued"): 2,
        bj("Running", "JobRunning"): 1,
        bj("Failed", "JobFailed"): 1,
        bj("Failed", "EngineClassNotFound"): 1,
        bj("Succeeded", "Succeeded"): 1,
        (
            "remote_docker_buildjobs",
            (("kind", "DockerEngine"), ("phase", "Running"), ("reason", "EngineReady")),
        ): 1,
        ("remote_docker_queue_depth", ()): 3,
    }
    rec.forget("b")
    assert tracked.scrape()[("remote_docker_queue_depth", ())] == 2


def test_collector_with_nothing_tracked_exposes_zero_depth() -> None:
    assert Tracked().scrape() == {("remote_docker_queue_depth", ()): 0}


# -- status transitions ---------------------------------------------------------------------


def written(before: st.Status, after: st.Status) -> None:
    metrics.status_written(CREATED, before, after, names.KIND, st.ENGINE_READY)


def test_engine_ready_is_observed_once_from_creation() -> None:
    count, total = (
        value("remote_docker_engine_ready_seconds_count", kind="BuildJob"),
        value("remote_docker_engine_ready_seconds_sum", kind="BuildJob"),
    )
    le5 = value("remote_docker_engine_ready_seconds_bucket", kind="BuildJob", le="5.0")
    pending = move({}, "Pending", st.QUEUED, 1)
    provisioning = move(pending, "Provisioning", st.PROVISIONING, 3, startTime=st.timestamp(at(3)))
    running = move(provisioning, "Running", st.JOB_RUNNING, 7)
    for before, after in [({}, pending), (pending, provisioning), (provisioning, running)]:
        written(before, after)
    # Staying Running (a new message) and finishing observe no second readiness.
    written(running, move(running, "Running", st.JOB_RUNNING, 9))
    written(running, move(running, "Succeeded", st.SUCCEEDED, 20))
    assert value("remote_docker_engine_ready_seconds_count", kind="BuildJob") == count + 1
    assert value("remote_docker_engine_ready_seconds_sum", kind="BuildJob") == total + 7
    assert value("remote_docker_engine_ready_seconds_bucket", kind="BuildJob", le="5.0") == le5


def test_a_dockerengines_readiness_is_its_ready_condition() -> None:
    def count() -> float:
        return value("remote_docker_engine_ready_seconds_count", kind=names.DOCKER_ENGINE_KIND)

    before = count()
    start = {"startTime": st.timestamp(at(1))}
    provisioning = st.transition(start, "Provisioning", st.PROVISIONING, "m", 1, at(1), st.READY)
    running = st.transition(provisioning, "Running", st.ENGINE_READY, "m", 1, at(4), st.READY)
    assert {c["type"] for c in running["conditions"]} == {st.READY, st.COMPLETE, st.FAILED}
    metrics.status_written(CREATED, provisioning, running, names.DOCKER_ENGINE_KIND, st.READY)
    assert count() == before + 1


def test_finish_counts_and_observes_the_duration_once() -> None:
    def snapshot() -> tuple[float, ...]:
        return (
            value(
                "remote_docker_buildjobs_finished_total",
                kind="BuildJob",
                phase="Failed",
                reason="JobFailed",
            ),
            value("remote_docker_job_duration_seconds_count", kind="BuildJob", phase="Failed"),
            value("remote_docker_job_duration_seconds_sum", kind="BuildJob", phase="Failed"),
            value("remote_docker_job_duration_seconds_count", kind="BuildJob", phase="Succeeded"),
        )

    before = snapshot()
    running = move({"startTime": st.timestamp(at(10))}, "Running", st.JOB_RUNNING, 12)
    failed = move(running, "Failed", st.JOB_FAILED, 70, exitCode=3)
    written(running, failed)
    # The TTL's cleanedUp write keeps completionTime: not a second finish.
    written(failed, {**failed, "cleanedUp": True})
    assert snapshot() == (before[0] + 1, before[1] + 1, before[2] + 60, before[3])


def test_refused_before_start_counts_without_a_duration() -> None:
    labels = {"kind": "BuildJob", "phase": "Failed", "reason": st.ENGINE_CLASS_NOT_FOUND}
    finished = value("remote_docker_buildjobs_finished_total", **labels)
    durations = value("remote_docker_job_duration_seconds_count", kind="BuildJob", phase="Failed")
    written({}, move({}, "Failed", st.ENGINE_CLASS_NOT_FOUND, 1))
    assert value("remote_docker_buildjobs_finished_total", **labels) == finished + 1
    assert (
        value("remote_docker_job_duration_seconds_count", kind="BuildJob", phase="Failed")
        == durations
    )


# -- errors and API requests ----------------------------------------------------------------


def test_reconcile_errors_by_reason_and_outcome() -> None:
    refused = {"reason": "EngineClassNotFound", "outcome": "failed"}
    raised = {"reason": "ApiException", "outcome": "raised"}
    a, b = (
        value("remote_docker_reconcile_errors_total", **refused),
        value("remote_docker_reconcile_errors_total", **raised),
    )
    metrics.reconcile_error(ClassNotFound("spec.engine.className: nope"))
    metrics.reconcile_error(ApiException(status=500))
    metrics.reconcile_error(ApiException(status=500))
    assert value("remote_docker_reconcile_errors_total", **refused) == a + 1
    assert value("remote_docker_reconcile_errors_total", **raised) == b + 2


def test_the_reconcilers_error_boundary_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through Reconciler._guarded_step: a refusal fails the BuildJob and counts; any other
    error counts and still propagates (kopf retries the trigger)."""
    rec = reconciler()
    state: JobState = rec.observe(body("x", CREATED))
    writes: list[st.Status] = []
    monkeypatch.setattr(rec, "_write", lambda _s, new: writes.append(new) or True)
    refused = {"reason": "EngineClassNotFound", "outcome": "failed"}
    before = value("remote_docker_reconcile_errors_total", **refused)
    monkeypatch.setattr(rec, "_step", _raiser(ClassNotFound("no class")))
    rec._guarded_step(state, drift_check=False)
    assert value("remote_docker_reconcile_errors_total", **refused) == before + 1
    assert writes
    assert writes[-1]["reason"] == "EngineClassNotFound"

    raised = {"reason": "ApiException", "outcome": "raised"}
    before = value("remote_docker_reconcile_errors_total", **raised)
    monkeypatch.setattr(rec, "_step", _raiser(ApiException(status=503)))
    with pytest.raises(ApiException):
        rec._guarded_step(state, drift_check=False)
    assert value("remote_docker_reconcile_errors_total", **raised) == before + 1


def _raiser(error: Exception) -> Any:
    def step(*_: Any) -> None:
        raise error

    return step


class FakeResponse:
    def __init__(self, status: int, data: bytes = b"{}") -> None:
        self.status = status
        self.data = data
        self.reason = "r"
        self.headers: dict[str, str] = {}

    def read(self) -> bytes:
        return self.data

    def getheader(self, _name: str) -> str:
        return "0"


class FakeClient:
    """An ApiClient whose call_api answers from a list (an exception is raised)."""

    def __init__(self, *answers: FakeResponse | Exception) -> None:
        self.answers = list(answers)

    def param_serialize(self, method: str, url: str, **_: Any) -> tuple[Any, ...]:
        return method, url, {}, None, None

    def call_api(self, *_: Any, **__: Any) -> FakeResponse:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_api_requests_by_verb_and_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("remote_docker_operator.kube.time.sleep", lambda _s: None)
    labels = [("GET", "200"), ("GET", "404"), ("POST", "429"), ("POST", "201"), ("GET", "error")]
    before = [value("remote_docker_api_requests_total", verb=v, code=c) for v, c in labels]
    kube = Kube(FakeClient(  # type: ignore[arg-type]
        FakeResponse(200, json.dumps({"items": []}).encode()),
        FakeResponse(404, b"{}"),
        FakeResponse(429),  # raised: both attempts count
        FakeResponse(201),
        ConnectionError("refused"),
    ))  # fmt: skip
    assert kube.list("Pod") == []
    assert kube.get("Pod", "ns", "p") is None
    assert kube.create({"kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}}) == {}
    with pytest.raises(ConnectionError):
        kube.get("Pod", "ns", "p")
    after = [value("remote_docker_api_requests_total", verb=v, code=c) for v, c in labels]
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1, 1, 1]


# -- the exposition and the dashboard -------------------------------------------------------


def defined_names() -> set[str]:
    """Every sample name the operator can expose under the prefix."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    out = set()
    for family in REGISTRY.collect():
        if family.name.startswith(metrics.PREFIX):
            out |= {family.name + s for s in suffixes[family.type]}
    return out


def test_every_metric_is_prefixed_and_exposed() -> None:
    names = defined_names()
    assert names >= {
        "remote_docker_buildjobs",
        "remote_docker_queue_depth",
        "remote_docker_buildjobs_finished_total",
        "remote_docker_engine_ready_seconds_bucket",
        "remote_docker_job_duration_seconds_bucket",
        "remote_docker_reconcile_errors_total",
        "remote_docker_api_requests_total",
    }
    text = generate_latest(REGISTRY).decode()
    assert "# TYPE remote_docker_queue_depth gauge" in text


def test_dashboard_queries_only_defined_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs
    used = {m for e in exprs for m in re.findall(r"\b" + metrics.PREFIX + r"[a-z_]+", e)}
    defined = defined_names()
    assert used
    assert used <= defined, used - defined
    # And every metric family has a panel.
    families = {n.removesuffix("_bucket") for n in defined if not n.endswith(("_sum", "_count"))}
    shown = {n.removesuffix("_bucket") for n in used}
    assert families <= shown, families - shown
