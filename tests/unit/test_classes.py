"""EngineClass resolution as data: which class, whether it allows the spec, what engine comes
of it. Every refusal names the BuildJob's field."""

from typing import Any

import pytest

from remote_docker_operator import classes
from remote_docker_operator.errors import ClassNotFound, ClassRefused
from remote_docker_operator.models import BuildJobSpec, EngineClassSpec

from ..support import engine_class


def spec(**engine: Any) -> BuildJobSpec:
    return BuildJobSpec.model_validate({"job": {"image": "a"}, "engine": engine})


def resolve(
    cls: dict[str, Any], labels: dict[str, str] | None = None, **engine: Any
) -> classes.Engine:
    return classes.resolve(
        "c", EngineClassSpec.model_validate(cls), spec(**engine), "team-a", labels or {}
    )


def test_pick_named_default_and_newest_default() -> None:
    old = engine_class("old", {"image": "a"}, default=True)
    old["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    new = engine_class("new", {"image": "b"}, default=True)
    new["metadata"]["creationTimestamp"] = "2026-02-01T00:00:00Z"
    plain = engine_class("plain", {"image": "c"})
    known = {c["metadata"]["name"]: c for c in (old, new, plain)}
    assert classes.pick(known, None)[0] == "new"
    assert classes.pick(known, "plain")[1].image == "c"
    with pytest.raises(ClassNotFound, match=r"spec\.engine\.className: EngineClass 'nope'"):
        classes.pick(known, "nope")
    with pytest.raises(ClassNotFound, match="no EngineClass is marked default"):
        classes.pick({"plain": plain}, None)


def test_defaults_come_from_the_class() -> None:
    e = resolve({"image": "reg/dind@sha256:" + "a" * 64, "storage": {"default": "7Gi"}})
    assert e.image == "reg/dind@sha256:" + "a" * 64
    assert e.storage == "7Gi"
    assert "fc00::/7" in e.denied_cidrs
    assert e.probe_targets == ()


@pytest.mark.parametrize(
    ("cls", "engine", "field"),
    [
        ({"image": "d"}, {"image": "evil/root:1"}, "spec.engine.image"),
        (
            {"image": "d", "allowedImages": ["good/*"]},
            {"image": "evil/root:1"},
            "spec.engine.image",
        ),
        ({"image": "d"}, {"version": "27"}, "spec.engine.version"),
        (
            {"image": "d", "versionedImage": {"repository": "docker", "versions": ["27"]}},
            {"version": "26"},
            "spec.engine.version",
        ),
        ({"image": "d", "storage": {"max": "100Gi"}}, {"storage": "1Ei"}, "spec.engine.storage"),
        (
            {"image": "d", "resources": {"max": {"memory": "4Gi"}}},
            {"resources": {"limits": {"memory": "5Gi"}}},
            "spec.engine.resources.limits.memory",
        ),
        (
            {"image": "d", "resources": {"max": {"cpu": "2"}}},
            {"resources": {"requests": {"cpu": "2500m"}}},
            "spec.engine.resources.requests.cpu",
        ),
        (
            {"image": "d", "daemon": {"allowRegistryMirrors": False}},
            {"registryMirrors": ["https://m.example"]},
            "spec.engine.registryMirrors",
        ),
        ({"image": "d"}, {"insecureRegistries": ["r:5000"]}, "spec.engine.insecureRegistries"),
    ],
)
def test_refusals_name_the_field(cls: dict[str, Any], engine: dict[str, Any], field: str) -> None:
    with pytest.raises(ClassRefused) as e:
        resolve(cls, **engine)
    assert str(e.value).startswith(f"{field}: EngineClass 'c' ")


@pytest.mark.parametrize(
    ("cls", "engine", "image"),
    [
        ({"image": "d", "allowedImages": ["good/*"]}, {"image": "good/dind:2"}, "good/dind:2"),
        ({"image": "d", "allowedImages": ["x/y:1"]}, {"image": "x/y:1"}, "x/y:1"),
        ({"image": "d"}, {"image": "d"}, "d"),
        (
            {"image": "d", "versionedImage": {"repository": "docker", "tagSuffix": "-dind"}},
            {"version": "26"},
            "docker:26-dind",
        ),
    ],
)
def test_allowed_images(cls: dict[str, Any], engine: dict[str, Any], image: str) -> None:
    assert resolve(cls, **engine).image == image


def test_within_bounds_passes() -> None:
    e = resolve(
        {
            "image": "d",
            "storage": {"max": "100Gi"},
            "resources": {"max": {"cpu": "2", "memory": "4Gi"}},
        },
        storage="100Gi",
        resources={"limits": {"cpu": "2", "memory": "4096Mi"}},
    )
    assert e.storage == "100Gi"
    assert e.resource_max == {"cpu": "2", "memory": "4Gi"}


def test_namespace_selector() -> None:
    cls = {
        "image": "d",
        "namespaceSelector": {
            "matchLabels": {"tier": "ci"},
            "matchExpressions": [{"key": "frozen", "operator": "DoesNotExist"}],
        },
    }
    assert resolve(cls, {"tier": "ci"}).class_name == "c"
    for labels in ({}, {"tier": "prod"}, {"tier": "ci", "frozen": "1"}):
        with pytest.raises(
            ClassRefused, match=r"spec\.engine\.className: .* not open to namespace 'team-a'"
        ):
            resolve(cls, labels)


def test_a_maximum_below_the_default_lowers_the_default() -> None:
    assert resolve({"image": "d", "storage": {"max": "10Gi"}}).storage == "10Gi"
    assert resolve({"image": "d", "storage": {"max": "10Gi"}}, storage="5Gi").storage == "5Gi"
