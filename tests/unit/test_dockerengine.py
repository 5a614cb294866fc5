"""A DockerEngine as data: its children (builders), its decisions (decide) and its spec."""

import datetime
from typing import Any

import pytest

from remote_docker_operator import builders, certs, decide, names
from remote_docker_operator import status as st
from remote_docker_operator.decide import (
    BindClient,
    CreatePod,
    Fail,
    Finish,
    Known,
    MakeChildren,
    MakeQuota,
    SetStatus,
    StopPods,
    Wait,
)
from remote_docker_operator.jobstate import parse_spec

from ..support import make_engine_target, make_target

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)


# -- builders -----------------------------------------------------------------------------------


def test_the_engine_admits_the_labelled_client_pod_only() -> None:
    t = make_engine_target()
    engine = builders.build_network_policies(t)[1]
    [rule] = engine["spec"]["ingress"]
    assert rule["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ci"}},
            "podSelector": {"matchLabels": {names.client_label(t.uid): "true"}},
        }
    ]
    assert rule["ports"] == [{"protocol": "TCP", "port": names.ENGINE_PORT}]
    # A BuildJob's engine admits its job pod by owner uid and component, as before.
    job = builders.build_network_policies(make_target())[1]["spec"]["ingress"][0]["from"][0]
    assert job["podSelector"]["matchLabels"][names.LABEL_COMPONENT] == names.COMPONENT_JOB


def test_published_ports_open_to_the_client_too() -> None:
    t = make_engine_target(
        {"clientPod": {"name": "runner"}, "network": {"publishedPorts": {"ports": [8080]}}}
    )
    ports = builders.build_network_policies(t)[1]["spec"]["ingress"][0]["ports"]
    assert {"protocol": "TCP", "port": 8080} in ports
    assert builders.build_engine_service(t)["spec"]["clusterIP"] == "None"


def test_client_secret_is_named_apart_and_owned_by_the_dockerengine() -> None:
    t = make_engine_target()
    bundle = certs.issue(["engine"], [], datetime.timedelta(hours=1), NOW)
    secret = builders.build_client_secret(t, bundle.client)
    meta = secret["metadata"]
    assert (meta["namespace"], meta["name"]) == ("ci", "eng-dockerengine")
    assert meta["ownerReferences"] == [
        {
            "apiVersion": names.API_VERSION,
            "kind": names.DOCKER_ENGINE_KIND,
            "name": "eng",
            "uid": t.uid,
            "controller": True,
        }
    ]
    assert meta["labels"][names.LABEL_COMPONENT] == names.COMPONENT_CLIENT
    assert meta["labels"][names.LABEL_OWNER_KIND] == names.DOCKER_ENGINE_KIND
    assert secret["stringData"]["DOCKER_HOST"] == t.docker_host
    # Every child of the engine's namespace says whose it is, kind included...
    assert builders.build_namespace(t)["metadata"]["labels"][names.LABEL_OWNER_KIND] == (
        names.DOCKER_ENGINE_KIND
    )
    # ...while a BuildJob's children stay as they were built before DockerEngine existed.
    assert (
        names.LABEL_OWNER_KIND not in builders.build_namespace(make_target())["metadata"]["labels"]
    )


def test_a_dockerengine_has_no_job_pod_and_keeps_no_namespace_by_default() -> None:
    t = make_engine_target()
    with pytest.raises(AssertionError, match="no job pod"):
        builders.build_job_pod(t)
    assert t.ttl_seconds == 0
    assert make_target().ttl_seconds == t.settings.default_ttl_seconds
    kept = make_engine_target({"clientPod": {"name": "r"}, "ttlSecondsAfterFinished": 30})
    assert kept.ttl_seconds == 30


def test_parse_spec_reads_each_kind_by_its_own_model() -> None:
    body: dict[str, Any] = {"spec": {"clientPod": {"name": "runner"}}}
    spec, invalid = parse_spec(body, names.DOCKER_ENGINE_KIND)
    assert invalid is None
    assert spec is not None
    _, invalid = parse_spec(body, names.KIND)
    assert invalid == "spec.job: Field required"
    _, invalid = parse_spec({"spec": {}}, names.DOCKER_ENGINE_KIND)
    assert invalid == "spec.clientPod: Field required"


# -- decide -------------------------------------------------------------------------------------


def known(phase: str, started_ago: float = 10, **kw: Any) -> Known:
    status: dict[str, Any] = {
        "phase": phase,
        "startTime": st.timestamp(NOW - datetime.timedelta(seconds=started_ago)),
    }
    status.update(kw.pop("status", {}))
    return Known(
        now=NOW,
        status=status,
        deadline_seconds=600,
        ttl_seconds=0,
        job_namespace="bj-x",
        namespace="ci",
        job_pod="runner",
        for_client=True,
        **kw,
    )


def pod(ready: bool = False, phase: str = "Running", deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "runner", "namespace": "ci", "uid": "u"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    return {
        "metadata": meta,
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_provisioning_makes_the_engine_and_never_a_job_pod() -> None:
    actions = decide.decide(known("Provisioning", job=pod()))
    assert actions == [MakeChildren(check_first=False), CreatePod(names.ENGINE_POD), BindClient()]


def test_a_client_pod_not_there_yet_is_waited_for_then_fails() -> None:
    [*_, wait] = decide.decide(known("Provisioning", children_made=True, engine=pod()))
    assert isinstance(wait, Wait)
    late = decide.CLIENT_POD_GRACE_SECONDS + 1
    [fail] = decide.decide(known("Provisioning", late, children_made=True, engine=pod()))
    assert isinstance(fail, Fail)
    assert fail.reason == st.CLIENT_POD_NOT_FOUND
    assert fail.message.startswith("spec.clientPod.name: pod ci/runner not found")


def test_ready_engine_and_bound_client_run() -> None:
    actions = decide.decide(
        known("Provisioning", children_made=True, engine=pod(True), job=pod(), client_bound=True)
    )
    assert actions[0] == MakeQuota()
    assert isinstance(actions[1], SetStatus)
    assert (actions[1].phase, actions[1].reason) == ("Running", st.ENGINE_READY)


@pytest.mark.parametrize(
    ("client", "bound", "words"),
    [
        (None, False, "was deleted"),
        (pod(), False, "was deleted"),  # another pod under the name: not the one bound
        (pod(phase="Succeeded"), True, "finished (Succeeded)"),
        (pod(phase="Failed"), True, "finished (Failed)"),
        (pod(deleting=True), True, "is being deleted"),
    ],
)
def test_the_client_going_ends_the_engine_well(
    client: dict[str, Any] | None, bound: bool, words: str
) -> None:
    actions = decide.decide(
        known("Running", children_made=True, engine=pod(True), job=client, client_bound=bound)
    )
    [done, finish] = actions
    assert isinstance(done, SetStatus)
    assert (done.phase, done.reason) == ("Succeeded", st.CLIENT_GONE)
    assert words in done.message
    assert finish == Finish()


def test_a_running_engine_with_its_client_needs_nothing() -> None:
    running = known("Running", children_made=True, engine=pod(True), job=pod(), client_bound=True)
    assert decide.decide(running) == []
    lost = known("Running", children_made=True, job=pod(), client_bound=True)
    [fail] = decide.decide(lost)
    assert isinstance(fail, Fail)
    assert fail.reason == st.ENGINE_FAILED


def test_finishing_stops_the_engine_never_the_client() -> None:
    failed = known(
        "Failed",
        status={"reason": st.DEADLINE_EXCEEDED, "completionTime": st.timestamp(NOW)},
    )
    assert decide.finish(failed)[0] == StopPods(job_too=False)
