"""Layer caches on the real cluster, on volumes of its dynamic provisioner (local-path): the
second run of a build finds its layers cached, two engines of one key at once never mount one
volume, and an engine SIGKILLed mid-build leaves a volume the next job of the key empties and
builds on."""

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream

from remote_docker_operator import names
from remote_docker_operator import status as st

from ..support import Kube, OperatorProcess, engine_class, wait_for
from .conftest import BUSYBOX, ENGINE_CLASS, delete_kept_volumes, released
from .test_e2e import LOAD_BUSYBOX, job, job_log

pytestmark = pytest.mark.e2e

CLASS = "cached-e2e"
# A slow layer: cached, the second build skips its sleep.
BUILD = f"""set -e
{LOAD_BUSYBOX}mkdir -p /tmp/app && cd /tmp/app
printf '%s\\n' 'FROM {BUSYBOX}' 'RUN sleep 3 && echo slow >/slow' 'CMD ["cat", "/slow"]' >Dockerfile
docker build --progress=plain -t app . 2>&1
docker run --rm app
"""
# A build that is still running when its engine is killed.
LONG_BUILD = f"""set -e
{LOAD_BUSYBOX}mkdir -p /tmp/app && cd /tmp/app
printf '%s\\n' 'FROM {BUSYBOX}' 'RUN echo started && sleep 300' > Dockerfile
docker build --progress=plain -t long . 2>&1
"""
# dockerd, killed as a crash or the OOM killer would (the image may have no pidof or pkill).
KILL_DOCKERD = (
    'for p in /proc/[0-9]*; do [ "$(cat "$p/comm" 2>/dev/null)" = dockerd ] '
    '&& kill -KILL "${p#/proc/}"; done'
)


def spec(script: str, key: str) -> dict[str, Any]:
    body = job(script)
    body["engine"] = {"className": CLASS, "imagePullPolicy": "Never", "cacheKey": key}
    return body


@pytest.fixture
def cached_class(cluster: Any, kube: Kube, operator: OperatorProcess) -> Iterator[str]:
    cache = {"storageClassName": "local-path", "size": "5Gi"}
    body = engine_class(CLASS, {**ENGINE_CLASS, "imagePullPolicy": "Never", "cache": cache})
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
    yield CLASS
    cluster.kubectl("delete", "engineclass", CLASS, "--ignore-not-found")
    delete_kept_volumes(kube)


def run(kube: Kube, ns: str, name: str, script: str, key: str) -> tuple[dict[str, Any], str]:
    kube.create_buildjob(ns, name, spec(script, key))
    status = kube.wait_phase(ns, name, "Succeeded", "Failed", timeout=300)
    output = job_log(kube, ns, name)
    print(name, output)  # shown by pytest when an assertion fails
    assert status["phase"] == "Succeeded", (status, output)
    return status, output


def test_the_second_run_finds_its_layers_cached(kube: Kube, cached_class: str, ns: str) -> None:
    first, cold = run(kube, ns, "first", BUILD, "app")
    assert first["cache"]["hit"] is False
    assert "sleep 3" in cold
    assert "CACHED" not in cold
    volume = first["cache"]["volume"]
    wait_for(lambda: released(kube, volume), timeout=60, what=f"{volume} released")
    second, warm = run(kube, ns, "second", BUILD, "app")
    assert second["cache"] == {"key": "app", "hit": True, "volume": volume, "discarded": False}
    assert "CACHED" in warm, warm
    assert "slow" in warm


def test_two_engines_of_one_key_never_mount_one_volume(
    kube: Kube, cached_class: str, ns: str
) -> None:
    for name in ("a", "b"):
        kube.create_buildjob(ns, name, spec("sleep 600", "shared"))
    caches = {name: kube.wait_phase(ns, name, "Running", timeout=300)["cache"] for name in "ab"}
    assert caches["a"]["volume"] != caches["b"]["volume"], caches
    # Each volume is bound to the claim in its own engine's namespace only.
    for name, entry in caches.items():
        claim = kube.core.read_persistent_volume(entry["volume"]).spec.claim_ref
        assert claim.namespace == kube.status(ns, name)["namespace"]


def test_an_engine_killed_mid_build_does_not_poison_its_key(
    kube: Kube, cached_class: str, ns: str
) -> None:
    kube.create_buildjob(ns, "killed", spec(LONG_BUILD, "fragile"))
    status = kube.wait_phase(ns, "killed", "Running", timeout=300)
    engine_ns = status["namespace"]

    def slow_step_begun() -> bool:
        """(BuildKit runs it in a container of its own, not one `docker ps` shows.)"""
        try:
            return "started" in job_log(kube, ns, "killed")
        except ApiException as e:
            if e.status == 400:  # the job container has not started yet
                return False
            raise

    wait_for(slow_step_begun, timeout=120, interval=1, what="the build's slow step running")
    stream(
        kube.core.connect_get_namespaced_pod_exec,
        names.ENGINE_POD,
        engine_ns,
        container=names.ENGINE_CONTAINER,
        command=["sh", "-c", KILL_DOCKERD],
        stderr=True,
        stdout=True,
    )
    failed = kube.wait_phase(ns, "killed", "Failed", timeout=120)
    # The engine's end, or the job's own failed `docker build`: whichever is seen first.
    assert failed["reason"] in (st.ENGINE_FAILED, st.JOB_FAILED), failed
    volume = kube.status(ns, "killed")["cache"]["volume"]
    wait_for(lambda: released(kube, volume), timeout=120, what=f"{volume} released")
    after, output = run(kube, ns, "after", BUILD, "fragile")
    assert after["cache"] == {"key": "fragile", "hit": True, "volume": volume, "discarded": True}
    assert "slow" in output
    kube.wait_event(ns, "after", "Warning", st.CACHE_DISCARDED)
