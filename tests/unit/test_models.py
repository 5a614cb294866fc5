from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from remote_docker_operator import names
from remote_docker_operator.models import BuildJob, BuildJobSpec, DockerEngine, EngineClass


def test_minimal_spec_gets_defaults() -> None:
    spec = BuildJobSpec.model_validate({"job": {"image": "docker:27-cli"}})
    assert spec.network.job_egress == "Internet"
    assert spec.engine.version is None
    assert spec.engine.image is None
    assert spec.active_deadline_seconds is None


def test_camel_case_round_trip() -> None:
    wire = {
        "job": {
            "image": "docker:27-cli",
            "workingDir": "/src",
            "imagePullPolicy": "Never",
            "envFrom": [{"secretRef": {"name": "creds"}}],
        },
        "engine": {"version": "27.3", "storage": 10, "registryMirrors": ["https://m.example"]},
        "imagePullSecrets": [{"name": "regcred"}],
        "dockerConfigSecret": {"name": "hub"},
        "network": {"jobEgress": "None"},
        "activeDeadlineSeconds": 60,
        "ttlSecondsAfterFinished": 0,
    }
    spec = BuildJobSpec.model_validate(wire)
    assert spec.engine.storage == "10"  # integers are quantities too
    assert spec.job.working_dir == "/src"
    dumped = spec.model_dump(by_alias=True, exclude_none=True)
    assert dumped["network"] == {"jobEgress": "None"}
    assert dumped["job"]["envFrom"] == [{"secretRef": {"name": "creds"}}]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "job"),
        ({"job": {"image": "UPPER/case"}}, "job.image"),
        ({"job": {"image": "docker:27-cli", "workingDir": "relative"}}, "job.workingDir"),
        ({"job": {"image": "a"}, "engine": {"version": "latest"}}, "engine.version"),
        ({"job": {"image": "a"}, "engine": {"storage": "lots"}}, "engine.storage"),
        ({"job": {"image": "a"}, "engine": {"mtu": 100}}, "engine.mtu"),
        ({"job": {"image": "a"}, "activeDeadlineSeconds": 0}, "activeDeadlineSeconds"),
        ({"job": {"image": "a"}, "activeDeadlineSeconds": 86401}, "activeDeadlineSeconds"),
        ({"job": {"image": "a"}, "ttlSecondsAfterFinished": -1}, "ttlSecondsAfterFinished"),
        ({"job": {"image": "a"}, "network": {"jobEgress": "Cluster"}}, "network.jobEgress"),
        (
            {"job": {"image": "a"}, "network": {"publishedPorts": {"ports": [2376]}}},
            "network.publishedPorts",
        ),
        (
            {"job": {"image": "a"}, "network": {"publishedPorts": {}}},
            "network.publishedPorts",
        ),
        (
            {"job": {"image": "a"}, "network": {"publishedPorts": {"ports": [70000]}}},
            "network.publishedPorts.ports.0",
        ),
        (
            {"job": {"image": "a"}, "imagePullSecrets": [{"name": "Bad_Name"}]},
            "imagePullSecrets.0.name",
        ),
    ],
)
def test_invalid_specs_name_the_field(spec: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        BuildJobSpec.model_validate(spec)
    locations = [".".join(str(p) for p in error["loc"]) for error in info.value.errors()]
    assert locations == [field]


def test_image_references() -> None:
    good = [
        "docker:27-cli",
        "busybox",
        "registry.local:5000/team/app:1.2.3",
        "ghcr.io/o/r@sha256:" + "a" * 64,
        "localhost/x_y__z-w.v:tag",
    ]
    for image in good:
        BuildJobSpec.model_validate({"job": {"image": image}})
    for image in ["", "docker:", ":tag", "a b", "-lead", "x" * 600]:
        with pytest.raises(ValidationError):
            BuildJobSpec.model_validate({"job": {"image": image}})


def test_whole_object_parses_and_ignores_metadata() -> None:
    job = BuildJob.model_validate(
        {
            "apiVersion": "remotedocker.dev/v1alpha1",
            "kind": "BuildJob",
            "metadata": {"name": "x"},
            "spec": {"job": {"image": "a"}},
            "status": {"phase": "Running", "exitCode": 3},
        }
    )
    assert job.status is not None
    assert job.status.exit_code == 3


@pytest.mark.parametrize(
    "example", sorted((Path(__file__).parents[2] / "examples").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_example_of_ours_is_one_the_models_accept(example: Path) -> None:
    """Each BuildJob (and DockerEngine) in the examples; ci-pod.yaml is Kubernetes' own kinds,
    a pod labelled for the webhook (e2e runs it)."""
    docs = [d for d in yaml.safe_load_all(example.read_text()) if d]
    ours = [d for d in docs if d["apiVersion"] == "remotedocker.dev/v1alpha1"]
    assert ours or any(
        d["kind"] == "Pod" and names.LABEL_ENGINE_REQUEST in d["metadata"]["labels"] for d in docs
    ), example.name
    for body in ours:
        model = {"BuildJob": BuildJob, "DockerEngine": DockerEngine, "EngineClass": EngineClass}[
            body["kind"]
        ]
        model.model_validate(body)
