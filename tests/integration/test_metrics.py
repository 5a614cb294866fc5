"""/metrics of the session operator, scraped before and after a known sequence of BuildJobs:
every count must have moved by exactly what the sequence did.

The operator's counters live as long as its process and other tests' BuildJobs come and go, so
every check is a difference between two scrapes of this test.
"""

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..support import Kube, engine_class, wait_for
from .conftest import ENGINE_CLASS

pytestmark = pytest.mark.integration

Key = tuple[str, frozenset[tuple[str, str]]]
RUNS = {"image": "local/job:1"}  # no KWOK_EXIT_CODE: runs until deleted


def exits(code: int) -> dict[str, Any]:
    return {"job": {**RUNS, "env": [{"name": "KWOK_EXIT_CODE", "value": str(code)}]}}


# The operator listens on this machine: no proxy from the environment in between.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def scrape(url: str) -> dict[Key, float]:
    with OPENER.open(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def first_scrape(url: str) -> dict[Key, float] | None:
    """None while the operator (just started, perhaps) does not listen yet."""
    try:
        return scrape(url)
    except urllib.error.URLError:
        return None


def key(name: str, **labels: str) -> Key:
    return name, frozenset(labels.items())


def moved(before: dict[Key, float], after: dict[Key, float], keys: list[Key]) -> dict[Key, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in keys}


def wait_moved(url: str, before: dict[Key, float], expected: dict[Key, float]) -> dict[Key, float]:
    """Scrapes until the differences are the expected ones (the status the test saw is
    written a moment before the operator's memory has it); the last scrape."""
    last: dict[Key, float] = {}

    def check() -> bool:
        last.clear()
        last.update(scrape(url))
        return moved(before, last, list(expected)) == expected

    try:
        wait_for(check, timeout=30, what="the expected metrics")
    except AssertionError:
        got = moved(before, last, list(expected))
        wrong = {k: (got[k], v) for k, v in expected.items() if got[k] != v}
        raise AssertionError(f"(moved, expected) where they differ: {wrong}") from None
    return last


@pytest.fixture
def capped(cluster: Any) -> Iterator[str]:
    body = engine_class("metrics-capped", {**ENGINE_CLASS, "maxEnginesPerNamespace": 1})
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
    yield "metrics-capped"
    cluster.kubectl("delete", "engineclass", "metrics-capped", check=False)


def test_counts_of_a_known_sequence(kube: Kube, metrics_url: str, ns: str, capped: str) -> None:
    before = wait_for(lambda: first_scrape(metrics_url), what="/metrics answering")

    # Two of a class capped at one engine per namespace: one runs, one waits in the queue.
    kube.create_buildjob(ns, "runs", {"job": RUNS, "engine": {"className": capped}})
    kube.wait_phase(ns, "runs", "Running")
    kube.create_buildjob(ns, "waits", {"job": RUNS, "engine": {"className": capped}})
    assert kube.wait_phase(ns, "waits", "Pending")["reason"] == "Queued"
    # One succeeds, one fails with exit code 3, one is refused for a class that does not exist.
    kube.create_buildjob(ns, "ok", exits(0))
    kube.create_buildjob(ns, "bad", exits(3))
    kube.create_buildjob(ns, "nope", {"job": RUNS, "engine": {"className": "no-such-class"}})
    assert kube.wait_phase(ns, "ok", "Succeeded", "Failed")["phase"] == "Succeeded"
    assert kube.wait_phase(ns, "bad", "Failed")["reason"] == "JobFailed"
    assert kube.wait_phase(ns, "nope", "Failed")["reason"] == "EngineClassNotFound"

    buildjobs = "remote_docker_buildjobs"
    finished = "remote_docker_buildjobs_finished_total"
    expected = {
        key(buildjobs, kind="BuildJob", phase="Running", reason="JobRunning"): 1,
        key(buildjobs, kind="BuildJob", phase="Pending", reason="Queued"): 1,
        key(buildjobs, kind="BuildJob", phase="Succeeded", reason="Succeeded"): 1,
        key(buildjobs, kind="BuildJob", phase="Failed", reason="JobFailed"): 1,
        key(buildjobs, kind="BuildJob", phase="Failed", reason="EngineClassNotFound"): 1,
        key("remote_docker_queue_depth"): 1,
        key(finished, kind="BuildJob", phase="Succeeded", reason="Succeeded"): 1,
        key(finished, kind="BuildJob", phase="Failed", reason="JobFailed"): 1,
        key(finished, kind="BuildJob", phase="Failed", reason="EngineClassNotFound"): 1,
        # runs, ok and bad had an engine; nope never started.
        key("remote_docker_engine_ready_seconds_count", kind="BuildJob"): 3,
        key("remote_docker_engine_ready_seconds_bucket", kind="BuildJob", le="+Inf"): 3,
        key("remote_docker_job_duration_seconds_count", kind="BuildJob", phase="Succeeded"): 1,
        key("remote_docker_job_duration_seconds_count", kind="BuildJob", phase="Failed"): 1,
        key(
            "remote_docker_reconcile_errors_total", reason="EngineClassNotFound", outcome="failed"
        ): 1,
    }
    after = wait_moved(metrics_url, before, expected)
    # The positive control of the reconciler's requests: creating children counts.
    created = key("remote_docker_api_requests_total", verb="POST", code="201")
    posts = after.get(created, 0.0) - before.get(created, 0.0)
    assert posts >= 3 * 8, posts  # each engine's namespace, pods, secrets, service, ...

    # The queue drains when the running one goes: the gauges move back.
    kube.delete_buildjob(ns, "runs")
    kube.wait_phase(ns, "waits", "Running")
    again = {
        **expected,
        key(buildjobs, kind="BuildJob", phase="Pending", reason="Queued"): 0,
        key("remote_docker_queue_depth"): 0,
        key("remote_docker_engine_ready_seconds_count", kind="BuildJob"): 4,
        key("remote_docker_engine_ready_seconds_bucket", kind="BuildJob", le="+Inf"): 4,
    }
    # Finishes still counted once, however many resyncs (1 s apart) passed over them since.
    wait_moved(metrics_url, before, again)
