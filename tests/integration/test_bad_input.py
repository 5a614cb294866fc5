"""Malformed BuildJobs against the real API server: each is refused at admission with a
message that names the field, or passes admission and ends Failed/InvalidSpec with a message."""

import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from remote_docker_operator import names

from ..support import Kube, OperatorProcess

pytestmark = pytest.mark.integration

JOB = {"image": "local/job:1"}


def with_job(**job: Any) -> dict[str, Any]:
    return {"job": {**JOB, **job}}


# (id, spec, the field the refusal must name, a word of the message)
REFUSED: list[tuple[str, Any, str, str]] = [
    ("no-job", {}, "spec.job", "Required"),
    ("no-image", {"job": {"command": ["sh"]}}, "spec.job.image", "Required"),
    ("bad-image", with_job(image="UPPER CASE"), "spec.job.image", "should match"),
    ("long-image", with_job(image="a" * 600), "spec.job.image", "Too long"),
    ("empty-image", with_job(image=""), "spec.job.image", "at least 1"),
    ("command-not-list", with_job(command="sh -c true"), "spec.job.command", "must be of type"),
    ("env-without-name", with_job(env=[{"value": "x"}]), "spec.job.env[0].name", "Required"),
    ("env-bad-name", with_job(env=[{"name": "1 bad"}]), "spec.job.env[0].name", "should match"),
    (
        "envfrom-both",
        with_job(envFrom=[{"configMapRef": {"name": "a"}, "secretRef": {"name": "b"}}]),
        "spec.job.envFrom[0]",
        "exactly one of configMapRef and secretRef",
    ),
    (
        "envfrom-neither",
        with_job(envFrom=[{"prefix": "X_"}]),
        "spec.job.envFrom[0]",
        "exactly one of",
    ),
    ("relative-workdir", with_job(workingDir="src"), "spec.job.workingDir", "should match"),
    (
        "pull-policy",
        with_job(imagePullPolicy="Sometimes"),
        "spec.job.imagePullPolicy",
        "Unsupported value",
    ),
    (
        "bad-cpu",
        with_job(resources={"limits": {"cpu": "lots"}}),
        "spec.job.resources.limits.cpu",
        "should match",
    ),
    ("too-many-args", with_job(args=["x"] * 257), "spec.job.args", "Too many"),
    (
        "image-and-version",
        {"job": JOB, "engine": {"image": "local/dind:1", "version": "27"}},
        "spec.engine",
        "engine.image and engine.version are mutually exclusive",
    ),
    (
        "bad-version",
        {"job": JOB, "engine": {"version": "latest"}},
        "spec.engine.version",
        "should match",
    ),
    (
        "bad-storage",
        {"job": JOB, "engine": {"storage": "big"}},
        "spec.engine.storage",
        "should match",
    ),
    (
        "huge-mtu",
        {"job": JOB, "engine": {"mtu": 70000}},
        "spec.engine.mtu",
        "less than or equal to 9216",
    ),
    (
        "ftp-mirror",
        {"job": JOB, "engine": {"registryMirrors": ["ftp://mirror"]}},
        "spec.engine.registryMirrors[0]",
        "should match",
    ),
    (
        "many-mirrors",
        {"job": JOB, "engine": {"registryMirrors": ["https://m"] * 9}},
        "spec.engine.registryMirrors",
        "Too many",
    ),
    (
        "bad-secret-name",
        {"job": JOB, "imagePullSecrets": [{"name": "Bad_Name"}]},
        "spec.imagePullSecrets[0].name",
        "should match",
    ),
    (
        "config-without-name",
        {"job": JOB, "dockerConfigSecret": {}},
        "spec.dockerConfigSecret.name",
        "Required",
    ),
    (
        "bad-egress",
        {"job": JOB, "network": {"jobEgress": "Cluster"}},
        "spec.network.jobEgress",
        "Unsupported value",
    ),
    (
        "published-engine-port",
        {"job": JOB, "network": {"publishedPorts": {"ports": [8080, 2376]}}},
        "spec.network.publishedPorts.ports",
        "2376 and 2375 are the engine's own API, never published",
    ),
    (
        "published-nothing",
        {"job": JOB, "network": {"publishedPorts": {"ephemeral": False}}},
        "spec.network.publishedPorts",
        "publishedPorts opens nothing",
    ),
    (
        "published-port-out-of-range",
        {"job": JOB, "network": {"publishedPorts": {"ports": [0]}}},
        "spec.network.publishedPorts.ports[0]",
        "greater than or equal to 1",
    ),
    (
        "zero-deadline",
        {"job": JOB, "activeDeadlineSeconds": 0},
        "spec.activeDeadlineSeconds",
        "greater than or equal to 1",
    ),
    (
        "long-deadline",
        {"job": JOB, "activeDeadlineSeconds": 86401},
        "spec.activeDeadlineSeconds",
        "less than or equal to 86400",
    ),
    (
        "text-deadline",
        {"job": JOB, "activeDeadlineSeconds": "ten"},
        "spec.activeDeadlineSeconds",
        "must be of type integer",
    ),
    (
        "negative-ttl",
        {"job": JOB, "ttlSecondsAfterFinished": -1},
        "spec.ttlSecondsAfterFinished",
        "greater than or equal to 0",
    ),
]


@pytest.mark.parametrize(
    ("spec", "field", "words"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED]
)
def test_refused_at_admission(kube: Kube, ns: str, spec: Any, field: str, words: str) -> None:
    with pytest.raises(ApiException) as info:
        kube.create_buildjob(ns, "bad", spec)
    assert info.value.status == 422, info.value.body
    message = json.loads(info.value.body)["message"]
    assert field in message, message
    assert words in message, message


def test_missing_spec_refused(kube: Kube, ns: str) -> None:
    body = {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": "nospec", "namespace": ns},
    }
    with pytest.raises(ApiException) as info:
        kube.custom.create_namespaced_custom_object(
            names.GROUP, names.VERSION, ns, names.PLURAL, body
        )
    assert info.value.status == 422
    assert "spec: Required value" in json.loads(info.value.body)["message"]


def test_long_name_refused(kube: Kube, ns: str) -> None:
    with pytest.raises(ApiException) as info:
        kube.create_buildjob(ns, "n" * 64, {"job": JOB})
    assert info.value.status == 422
    assert "metadata.name: must be no more than 63 characters" in info.value.body


def test_spec_is_immutable(kube: Kube, ns: str) -> None:
    kube.create_buildjob(
        ns, "fixed", {"job": {**JOB, "env": [{"name": "KWOK_EXIT_CODE", "value": "0"}]}}
    )
    with pytest.raises(ApiException) as info:
        kube.custom.patch_namespaced_custom_object(
            names.GROUP,
            names.VERSION,
            ns,
            names.PLURAL,
            "fixed",
            {"spec": {"activeDeadlineSeconds": 5}},
        )
    assert info.value.status == 422
    assert "spec is immutable" in info.value.body


# Specs the schema accepts that cannot work: each ends Failed/InvalidSpec, naming the cause.
INVALID: list[tuple[str, dict[str, Any], str]] = [
    (
        "missing-pull-secret",
        {"job": JOB, "imagePullSecrets": [{"name": "nope"}]},
        "spec.imagePullSecrets[0].name: Secret {ns}/nope not found",
    ),
    (
        "missing-docker-config",
        {"job": JOB, "dockerConfigSecret": {"name": "nope"}},
        "spec.dockerConfigSecret.name: Secret {ns}/nope not found",
    ),
    (
        "docker-config-wrong-type",
        {"job": JOB, "dockerConfigSecret": {"name": "opaque"}},
        "is of type 'Opaque'; it must be kubernetes.io/dockerconfigjson",
    ),
    (
        "bad-value-from",
        {"job": {**JOB, "env": [{"name": "X", "valueFrom": {"bogus": {}}}]}},
        "spec.job.env[0].valueFrom: Invalid value",
    ),
    (
        "request-over-limit",
        {"job": {**JOB, "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}},
        "spec.job.resources.requests: Invalid value",
    ),
]


@pytest.mark.parametrize(("spec", "message"), [r[1:] for r in INVALID], ids=[r[0] for r in INVALID])
def test_invalid_spec_fails(
    kube: Kube, operator: OperatorProcess, ns: str, spec: dict[str, Any], message: str
) -> None:
    kube.core.create_namespaced_secret(
        ns, {"metadata": {"name": "opaque"}, "stringData": {"x": "y"}}
    )
    kube.create_buildjob(ns, "invalid", spec)
    status = kube.wait_phase(ns, "invalid", "Failed")
    assert status["reason"] == "InvalidSpec"
    assert message.format(ns=ns) in status["message"]
    kube.wait_event(ns, "invalid", "Warning", "InvalidSpec")
