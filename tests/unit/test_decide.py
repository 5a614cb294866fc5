"""decide.py as data: from what is known of a BuildJob, the next actions."""

import datetime
from typing import Any

from remote_docker_operator import builders, decide, names
from remote_docker_operator import status as st
from remote_docker_operator.decide import (
    CreatePod,
    DeleteNamespace,
    Fail,
    Finish,
    Known,
    MakeChildren,
    MakeQuota,
    SetStatus,
    StopPods,
)

from ..support import make_target

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)


def known(phase: str | None, **kw: Any) -> Known:
    status: dict[str, Any] = {"phase": phase} if phase else {}
    status.update(kw.pop("status", {}))
    if phase and phase != "Pending":
        status.setdefault("startTime", st.timestamp(NOW - datetime.timedelta(seconds=10)))
    return Known(
        now=NOW, status=status, deadline_seconds=600, ttl_seconds=60, job_namespace="bj-x", **kw
    )


def pod(ready: bool = False, **state: Any) -> dict[str, Any]:
    container = names.JOB_CONTAINER if "job" in state.pop("who", "") else names.ENGINE_CONTAINER
    return {
        "metadata": {"name": "p"},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"name": container, "state": state}] if state else [],
        },
    }


def test_provisioning_from_nothing_makes_everything_but_the_quota() -> None:
    assert decide.decide(known("Provisioning")) == [
        MakeChildren(check_first=False),
        CreatePod(names.ENGINE_POD),
        CreatePod(names.JOB_POD),
    ]


def test_ready_engine_makes_the_quota_then_runs() -> None:
    actions = decide.decide(
        known("Provisioning", children_made=True, engine=pod(ready=True), job=pod())
    )
    assert actions[0] == MakeQuota()
    assert isinstance(actions[1], SetStatus)
    assert actions[1].phase == "Running"


def test_drift_check_rereads_children_even_when_made() -> None:
    actions = decide.decide(
        known("Running", children_made=True, drift_check=True, engine=pod(True), job=pod())
    )
    assert actions == [MakeChildren(check_first=True)]


def test_deadline_passed_fails() -> None:
    late = st.timestamp(NOW - datetime.timedelta(seconds=601))
    [action] = decide.decide(known("Running", status={"startTime": late}))
    assert isinstance(action, Fail)
    assert action.reason == st.DEADLINE_EXCEEDED


def test_job_exit_code_decides_the_phase() -> None:
    ok = pod(who="job", terminated={"exitCode": 0})
    bad = pod(who="job", terminated={"exitCode": 3, "reason": "Error"})
    engine = pod(True)
    assert decide.decide(known("Running", children_made=True, engine=engine, job=ok)) == [
        SetStatus("Succeeded", st.SUCCEEDED, "the job exited with code 0", {"exitCode": 0}),
        Finish(),
    ]
    failed = decide.decide(known("Running", children_made=True, engine=engine, job=bad))
    assert isinstance(failed[0], SetStatus)
    assert (failed[0].phase, failed[0].fields) == ("Failed", {"exitCode": 3})


def test_the_gate_giving_up_is_the_wait_s_failure_not_the_job_s() -> None:
    engine = pod(True)
    cases = {
        # exit code, termination message -> reason
        (1, f"{names.GATE_MARK}engine tcp://e:2376 unreachable over mutual TLS: x"): (
            st.ENGINE_FAILED
        ),
        (builders.PROBE_REACHABLE_EXIT, f"{names.GATE_MARK}NetworkPolicy is not enforced: x"): (
            st.NETWORK_POLICY_NOT_ENFORCED
        ),
        # The job's own exit, with the same code but not the gate's words: the job failed.
        (builders.PROBE_REACHABLE_EXIT, "tests failed"): st.JOB_FAILED,
        (1, ""): st.JOB_FAILED,
    }
    for (code, message), reason in cases.items():
        ended = {"exitCode": code, "reason": "Error", "message": message}
        job = pod(who="job", terminated=ended)
        [action, *_] = decide.decide(known("Running", children_made=True, engine=engine, job=job))
        assert isinstance(action, (Fail, SetStatus))
        assert action.reason == reason, (code, message)
        assert message in action.message


def test_a_gate_that_cannot_be_installed_fails_naming_the_wait_image() -> None:
    ended = {"exitCode": 128, "reason": "StartError", "message": "exec: no such file"}
    job = pod(who="job")
    job["status"]["initContainerStatuses"] = [
        {"name": names.GATE_CONTAINER, "state": {"terminated": ended}}
    ]
    job["status"]["phase"] = "Failed"
    [action, *_] = decide.decide(known("Running", children_made=True, engine=pod(True), job=job))
    assert isinstance(action, Fail)
    assert action.reason == st.ENGINE_FAILED
    assert "RDO_WAIT_IMAGE" in action.message
    assert action.message.endswith("exit code 128 (StartError): exec: no such file")


def test_engine_lost_while_running_fails() -> None:
    [action] = decide.decide(known("Running", children_made=True, engine=None, job=pod()))
    assert action == Fail(st.ENGINE_FAILED, "the engine pod was deleted")
    stuck = pod(waiting={"reason": "ErrImagePull", "message": "no such image"})
    [action] = decide.decide(known("Running", children_made=True, engine=stuck, job=pod()))
    assert isinstance(action, Fail)
    assert "ErrImagePull" in action.message


def test_finish_stops_a_cut_short_job_and_keeps_a_finished_one() -> None:
    cut = known("Failed", status={"reason": st.DEADLINE_EXCEEDED})
    assert decide.finish(cut) == [StopPods(job_too=True)]
    ran = known("Succeeded", status={"reason": st.SUCCEEDED})
    assert decide.finish(ran) == [StopPods(job_too=False)]
    assert decide.finish(known("Failed", engine_stopped=True)) == []


def test_finish_deletes_the_namespace_after_the_ttl_once() -> None:
    done = NOW - datetime.timedelta(seconds=61)
    due = known("Succeeded", engine_stopped=True, status={"completionTime": st.timestamp(done)})
    assert decide.finish(due) == [DeleteNamespace(60)]
    soon = known("Succeeded", engine_stopped=True, status={"completionTime": st.timestamp(NOW)})
    assert decide.finish(soon) == []
    cleaned = known(
        "Succeeded",
        engine_stopped=True,
        status={"completionTime": st.timestamp(done), "cleanedUp": True},
    )
    assert decide.finish(cleaned) == []
    # Never provisioned: nothing to stop or delete.
    assert decide.finish(Known(NOW, {"phase": "Failed"}, 600, 60, "bj-x")) == []


def test_drifted_sees_edits_but_not_server_defaults() -> None:
    [policy, *_] = builders.build_network_policies(make_target())
    existing = {
        **policy,
        "metadata": {**policy["metadata"], "uid": "u", "resourceVersion": "9", "generation": 1},
        "spec": {**policy["spec"], "ingress": None},
    }
    # What the API server adds (metadata, empty fields, defaults it fills in) is not drift ...
    assert not decide.drifted(policy, existing)
    service = builders.build_engine_service(make_target())
    filled = {**service["spec"], "clusterIP": "10.0.0.9", "sessionAffinity": "None"}
    assert not decide.drifted(service, {**service, "spec": filled})
    # ... a changed value, a key added (a selector narrowed to nothing: the deny-all policy
    # would deny nothing), a list grown, a label removed, or a different build are.
    assert decide.drifted(policy, {**existing, "spec": {**policy["spec"], "extra": 1}})
    assert decide.drifted(policy, {**policy, "spec": {**policy["spec"], "podSelector": {"x": 1}}})
    assert decide.drifted(
        policy, {**policy, "spec": {**policy["spec"], "policyTypes": ["Ingress"]}}
    )
    unlabelled = {**policy["metadata"], "labels": {}}
    assert decide.drifted(policy, {**policy, "metadata": unlabelled})
    rebuilt = {**policy["metadata"], "annotations": {names.ANNOTATION_BUILT_FROM: "other"}}
    assert decide.drifted(policy, {**policy, "metadata": rebuilt})


def test_only_fences_service_and_secrets_are_reverted() -> None:
    """The namespace, quota and LimitRange are checked for existence only (see REVERTED_KINDS)."""
    t = make_target()
    quota = builders.build_quota(t)
    changed = {**quota, "spec": {"hard": {"pods": "20"}}}
    assert not decide.drifted(quota, changed)
    ns = builders.build_namespace(t)
    assert not decide.drifted(ns, {**ns, "metadata": {**ns["metadata"], "labels": {}}})
    service = builders.build_engine_service(t)
    assert decide.drifted(service, {**service, "spec": {**service["spec"], "selector": {}}})


def test_event_names_its_buildjob() -> None:
    ref = {
        "apiVersion": "remotedocker.dev/v1alpha1",
        "kind": "BuildJob",
        "metadata": {"name": "bj", "namespace": "ci", "uid": "u1"},
    }
    event = builders.build_event(ref, "Warning", "JobFailed", "x" * 2000, "2026-01-01T00:00:00Z")
    assert event["metadata"] == {"generateName": "bj.", "namespace": "ci"}
    assert event["involvedObject"]["uid"] == "u1"
    assert (event["type"], event["reason"]) == ("Warning", "JobFailed")
    assert len(event["message"]) == 1024


def test_start_records_where_the_engine_will_be() -> None:
    t = make_target()
    change = decide.start(t, "2026-01-01T00:00:00Z")
    assert (change.phase, change.reason) == ("Provisioning", st.PROVISIONING)
    assert change.fields == {
        "startTime": "2026-01-01T00:00:00Z",
        "namespace": t.job_namespace,
        "engineClass": t.engine.class_name,
        "engine": {"endpoint": t.docker_host, "ready": False},
    }
