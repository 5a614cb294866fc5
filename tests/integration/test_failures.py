"""Pods that cannot start, as a kubelet reports them (kwok's pod-start stage in
cluster/kwok-stages.yaml plays that kubelet): each BuildJob ends Failed with the reason and the
kubelet's own words, instead of waiting for its deadline.

The triggers are what a user could write: an image tag `does-not-exist` cannot be pulled, an
engine image tagged `never-answers` runs but never answers its job pod's wait-for-engine (a job
without a command: one with a command waits behind the gate in its own container, whose giving
up the stage plays from the job's KWOK_EXIT_CODE and KWOK_EXIT_MESSAGE), and an
env or envFrom reference to a Secret or ConfigMap named `missing-*` (the stage's stand-in for
one the BuildJob's namespace lacks) cannot be resolved. Other references, or optional ones, are
the positive control: the same stage lets that job run.
"""

from typing import Any

import pytest

from remote_docker_operator import names

from ..support import Kube, OperatorProcess, wait_for

pytestmark = pytest.mark.integration

# Seconds: a failure the operator handles ends the BuildJob within a resync or two; one it does
# not leaves it Provisioning or Running until this runs out.
SETTLE = 30


def job(**fields: Any) -> dict[str, Any]:
    return {"image": "local/job:1", "env": [{"name": "KWOK_EXIT_CODE", "value": "0"}], **fields}


def finish(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    """The BuildJob's status once it has finished, either way."""
    return kube.wait_phase(ns, name, "Succeeded", "Failed", timeout=SETTLE)


def assert_cut_short(kube: Kube, ns: str, name: str, job_ns: str, reason: str) -> None:
    """What every failure to start leaves: a Warning Event, and neither pod running on."""
    kube.wait_event(ns, name, "Warning", reason)
    wait_for(
        lambda: (
            kube.pod(job_ns, names.ENGINE_POD) is None and kube.pod(ns, names.job_pod(name)) is None
        ),
        timeout=SETTLE,
        what=f"both pods of {ns}/{name} deleted",
    )


def test_job_image_cannot_be_pulled(kube: Kube, operator: OperatorProcess, ns: str) -> None:
    kube.create_buildjob(ns, "pull", {"job": job(image="local/job:does-not-exist")})
    status = finish(kube, ns, "pull")
    assert (status["phase"], status["reason"]) == ("Failed", "ImagePullFailed"), status
    assert status["message"].startswith("the job container cannot start: ErrImagePull: "), status
    assert '"local/job:does-not-exist": not found' in status["message"], status
    assert "exitCode" not in status, status
    assert_cut_short(kube, ns, "pull", status["namespace"], "ImagePullFailed")


def test_engine_image_cannot_be_pulled(kube: Kube, operator: OperatorProcess, ns: str) -> None:
    spec = {"job": job(), "engine": {"image": "local/dind:does-not-exist"}}
    kube.create_buildjob(ns, "engine-pull", spec)
    status = finish(kube, ns, "engine-pull")
    assert (status["phase"], status["reason"]) == ("Failed", "EngineFailed"), status
    assert status["message"].startswith("the engine cannot start: ErrImagePull: "), status
    assert '"local/dind:does-not-exist": not found' in status["message"], status
    assert_cut_short(kube, ns, "engine-pull", status["namespace"], "EngineFailed")


def test_engine_never_answers(kube: Kube, operator: OperatorProcess, ns: str) -> None:
    """The engine pod runs but is never Ready; the job pod's wait-for-engine gives up."""
    spec = {"job": job(), "engine": {"image": "local/dind:never-answers"}}
    kube.create_buildjob(ns, "silent", spec)
    status = finish(kube, ns, "silent")
    assert (status["phase"], status["reason"]) == ("Failed", "EngineFailed"), status
    assert status["message"] == (
        "the job pod could not reach its engine: exit code 1 (Error): "
        "engine unreachable over mutual TLS (kwok: its image never answers)"
    ), status
    assert status["engine"]["ready"] is False, status
    assert_cut_short(kube, ns, "silent", status["namespace"], "EngineFailed")


@pytest.mark.parametrize(
    ("code", "said", "reason"),
    [
        (1, "engine tcp://engine.x.svc:2376 unreachable over mutual TLS: EOF", "EngineFailed"),
        (
            3,
            "NetworkPolicy is not enforced: 10.96.0.1:443, which the policies deny, answered "
            "from the job pod",
            "NetworkPolicyNotEnforced",
        ),
    ],
)
def test_the_gate_gives_up(
    kube: Kube, operator: OperatorProcess, ns: str, code: int, said: str, reason: str
) -> None:
    """A job with a command waits behind the gate in its job container; when the gate gives
    up, the BuildJob fails for the wait's reason, in the gate's words, not as the job's."""
    message = names.GATE_MARK + said
    env = [
        {"name": "KWOK_EXIT_CODE", "value": str(code)},
        {"name": "KWOK_EXIT_MESSAGE", "value": message},
    ]
    kube.create_buildjob(ns, "gated", {"job": job(command=["make"], env=env)})
    pod = wait_for(lambda: kube.pod(ns, names.job_pod("gated")), what="the job pod")
    assert [c.name for c in pod.spec.init_containers] == [names.GATE_CONTAINER]
    assert pod.spec.containers[0].command[-2:] == ["--", "make"]
    status = finish(kube, ns, "gated")
    assert (status["phase"], status["reason"]) == ("Failed", reason), status
    assert status["message"].endswith(f"exit code {code} (Error): {message}"), status
    assert_cut_short(kube, ns, "gated", status["namespace"], reason)


def test_a_job_that_fails_with_the_gates_exit_code_is_the_jobs_failure(
    kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    """The control: the same exit code without the gate's words is the job's own."""
    env = [{"name": "KWOK_EXIT_CODE", "value": "3"}]
    kube.create_buildjob(ns, "own", {"job": job(command=["make"], env=env)})
    status = finish(kube, ns, "own")
    assert (status["phase"], status["reason"], status["exitCode"]) == ("Failed", "JobFailed", 3)


# (id, spec.job fields, the kubelet's message): references to what the BuildJob's namespace
# lacks.
MISSING_REFS: list[tuple[str, dict[str, Any], str]] = [
    (
        "env-secret",
        {
            "env": [
                {
                    "name": "TOKEN",
                    "valueFrom": {"secretKeyRef": {"name": "missing-app", "key": "k"}},
                }
            ]
        },
        'secret "missing-app" not found',
    ),
    (
        "env-configmap",
        {
            "env": [
                {"name": "K", "valueFrom": {"configMapKeyRef": {"name": "missing-app", "key": "k"}}}
            ]
        },
        'configmap "missing-app" not found',
    ),
    (
        "envFrom-secret",
        {"envFrom": [{"secretRef": {"name": "missing-app"}}]},
        'secret "missing-app" not found',
    ),
    (
        "envFrom-configmap",
        {"envFrom": [{"configMapRef": {"name": "missing-app"}}]},
        'configmap "missing-app" not found',
    ),
]


def make_user_objects(kube: Kube, ns: str) -> None:
    kube.core.create_namespaced_secret(ns, {"metadata": {"name": "app"}, "stringData": {"k": "v"}})
    kube.core.create_namespaced_config_map(ns, {"metadata": {"name": "app"}, "data": {"k": "v"}})


@pytest.mark.parametrize(
    ("fields", "message"), [r[1:] for r in MISSING_REFS], ids=[r[0] for r in MISSING_REFS]
)
def test_job_refers_to_what_its_namespace_lacks(
    kube: Kube, operator: OperatorProcess, ns: str, fields: dict[str, Any], message: str
) -> None:
    make_user_objects(kube, ns)
    env = [*fields.get("env", []), {"name": "KWOK_EXIT_CODE", "value": "0"}]
    kube.create_buildjob(ns, "config", {"job": job(**{**fields, "env": env})})
    status = finish(kube, ns, "config")
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidSpec"), status
    assert status["message"] == (
        f"the job container cannot start: CreateContainerConfigError: {message}"
    ), status
    assert_cut_short(kube, ns, "config", status["namespace"], "InvalidSpec")


def test_job_refers_to_what_its_namespace_holds(
    kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    """Positive control: references to what the BuildJob's namespace holds (the operator's
    client Secret, the user's own objects, the ConfigMap every namespace gets) or optional
    ones run, through the same stage."""
    make_user_objects(kube, ns)
    env = [
        {
            "name": "HOST",
            "valueFrom": {
                "secretKeyRef": {"name": names.client_secret("resolves"), "key": "DOCKER_HOST"}
            },
        },
        {
            "name": "CA",
            "valueFrom": {"configMapKeyRef": {"name": "kube-root-ca.crt", "key": "ca.crt"}},
        },
        {
            "name": "OPT",
            "valueFrom": {"secretKeyRef": {"name": "missing-app", "key": "k", "optional": True}},
        },
        {"name": "KWOK_EXIT_CODE", "value": "0"},
    ]
    env_from = [
        {"configMapRef": {"name": "kube-root-ca.crt"}},
        {"secretRef": {"name": "app"}},
        {"secretRef": {"name": "missing-app", "optional": True}},
    ]
    kube.create_buildjob(ns, "resolves", {"job": job(env=env, envFrom=env_from)})
    status = finish(kube, ns, "resolves")
    assert (status["phase"], status["reason"], status.get("exitCode")) == (
        "Succeeded",
        "Succeeded",
        0,
    ), status


def test_pod_security_of_the_buildjobs_namespace_applies(
    kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    """The job pod runs in the BuildJob's namespace, so that namespace's Pod Security level
    applies: "restricted" refuses a job running as root, and the BuildJob says so."""
    level = "pod-security.kubernetes.io/enforce"
    kube.core.patch_namespace(ns, {"metadata": {"labels": {level: "restricted"}}})
    kube.create_buildjob(ns, "strict", {"job": job()})
    status = finish(kube, ns, "strict")
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidSpec"), status
    assert 'violates PodSecurity "restricted:latest"' in status["message"], status
    assert "runAsNonRoot" in status["message"], status
    # Positive control: at "baseline" the same job runs.
    kube.core.patch_namespace(ns, {"metadata": {"labels": {level: "baseline"}}})
    kube.create_buildjob(ns, "fine", {"job": job()})
    assert finish(kube, ns, "fine")["reason"] == "Succeeded"
