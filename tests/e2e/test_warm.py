"""Warm engines on the real cluster: a job builds on a claimed warm engine, and the isolation
matrix holds for pool engines: each claimed engine answers its own job only, and an idle warm
engine answers no job at all."""

import json
from collections.abc import Iterator
from typing import Any

import pytest

from remote_docker_operator import names

from ..support import Kube, OperatorProcess, engine_class, wait_for
from .conftest import ENGINE_CLASS
from .test_e2e import MULTI_STAGE, PROBE, checks, exec_in_job, job

pytestmark = pytest.mark.e2e

CLASS = "warm-e2e"
SIZE = 3


def pool_ready(kube: Kube) -> int:
    body = kube.custom.get_cluster_custom_object(
        names.GROUP, names.VERSION, names.CLASS_PLURAL, CLASS
    )
    return int(((body.get("status") or {}).get("warmPool") or {}).get("ready") or 0)


def idle_engines(kube: Kube) -> set[str]:
    selector = f"{names.LABEL_OWNER_KIND}={names.CLASS_KIND},{names.LABEL_OWNER_NAME}={CLASS}"
    return {
        ns.metadata.name
        for ns in kube.core.list_namespace(label_selector=selector).items
        if not ns.metadata.deletion_timestamp
    }


@pytest.fixture
def warm_class(cluster: Any, kube: Kube, operator: OperatorProcess) -> Iterator[str]:
    spec = {**ENGINE_CLASS, "imagePullPolicy": "Never", "warmPool": {"size": SIZE}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(engine_class(CLASS, spec)))
    wait_for(lambda: pool_ready(kube) == SIZE, timeout=180, what=f"{SIZE} warm engines ready")
    yield CLASS
    cluster.kubectl("delete", "engineclass", CLASS, "--ignore-not-found")
    wait_for(lambda: not idle_engines(kube), timeout=120, what="the pool drained")


def test_warm_engines_build_and_answer_their_own_job_only(
    kube: Kube, warm_class: str, ns: str
) -> None:
    jobs = ("a", "b")
    for name in jobs:
        kube.create_buildjob(
            ns,
            name,
            {**job("sleep 600"), "engine": {"className": warm_class, "imagePullPolicy": "Never"}},
        )
    status = {name: kube.wait_phase(ns, name, "Running", timeout=120) for name in jobs}
    assert all(s["engine"].get("warm") for s in status.values()), status
    engines = {name: s["namespace"] for name, s in status.items()}
    # Engines still in the pool, claimed by nobody (the refill's new ones among them).
    idle = sorted(idle_engines(kube) - set(engines.values()))
    assert idle, "the pool holds idle engines to probe"
    targets = {**engines, **{f"idle{i}": n for i, n in enumerate(idle)}}
    script = PROBE + "".join(
        f"""probe tcp-{target} engine.{namespace}.svc 2376
DOCKER_HOST=tcp://engine.{namespace}.svc:2376 timeout 20 docker version >/dev/null 2>&1 \\
  && echo "CHECK tls-{target}=open" || echo "CHECK tls-{target}=closed"
"""
        for target, namespace in targets.items()
    )
    for source in jobs:
        wait_for(
            lambda s=source: kube.pod(ns, s).status.phase == "Running",
            timeout=120,
            what=f"job pod of {source} running",
        )
        found = checks(exec_in_job(kube, ns, source, script))
        assert found == {
            f"{probe}-{target}": "open" if target == source else "closed"
            for target in targets
            for probe in ("tcp", "tls")
        }, (source, targets)
    # The claimed engine is a whole engine: a multi-stage build, buildx, a container run.
    output = exec_in_job(kube, ns, "a", MULTI_STAGE)
    assert "built in stage one" in output, output
    assert "buildx built" in output, output
