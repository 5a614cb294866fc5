from pathlib import Path
from typing import Any

import pytest
import yaml

from remote_docker_operator import crd

ROOT = Path(__file__).resolve().parents[2]
DIRS = [ROOT / "crds", ROOT / "charts" / "remote-docker-operator" / "crds"]


def walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every schema node with its path."""
    out = []
    if isinstance(node, dict):
        out.append((path, node))
        for name, sub in (node.get("properties") or {}).items():
            out += walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            out += walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            out += walk(node["additionalProperties"], f"{path}{{}}")
    return out


def test_committed_crds_match_the_models() -> None:
    """Run `make crds` after changing models.py."""
    for directory in DIRS:
        assert sorted(p.name for p in directory.iterdir()) == sorted(crd.files())
        for name, text in crd.files().items():
            assert (directory / name).read_text() == text, f"{directory / name}: run `make crds`"


@pytest.mark.parametrize("resource", crd.RESOURCES, ids=lambda r: r.kind)
def test_schema_is_structural(resource: crd.Resource) -> None:
    schema = crd.openapi_schema(resource)
    for path, node in walk(schema):
        assert "$ref" not in node, path
        assert "title" not in node, path
        assert "default" not in node, path
        assert {"type": "null"} not in node.get("anyOf", []), path
        assert not ("properties" in node and "additionalProperties" in node), path
        if "anyOf" not in node and "x-kubernetes-preserve-unknown-fields" not in node:
            assert "type" in node, path


def test_crd_shape() -> None:
    doc = crd.build_crd()
    spec = doc["spec"]
    assert doc["metadata"]["name"] == "buildjobs.remotedocker.dev"
    assert spec["names"]["shortNames"] == ["bj"]
    assert spec["scope"] == "Namespaced"
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Reason", "Exit", "Class", "Age", "Duration"]


def test_engineclass_crd_shape() -> None:
    doc = crd.build_crd(crd.RESOURCES[2])
    spec = doc["spec"]
    assert doc["metadata"]["name"] == "engineclasses.remotedocker.dev"
    assert spec["scope"] == "Cluster"
    assert spec["names"]["shortNames"] == ["ec"]
    schema = spec["versions"][0]["schema"]["openAPIV3Schema"]
    nodes = dict(walk(schema))
    assert nodes[".spec"]["required"] == ["image"]
    assert rules(schema, ".spec.deniedCidrs[]") == ["isCIDR(self)"]
    assert rules(schema, ".spec.resources.max") == ["self.all(k, k in ['cpu', 'memory'])"]


def rules(schema: dict[str, Any], path: str) -> list[str]:
    nodes = dict(walk(schema))
    return [r["rule"] for r in nodes[path].get("x-kubernetes-validations", [])]


def test_cel_rules() -> None:
    schema = crd.openapi_schema()
    assert rules(schema, ".spec") == ["self == oldSelf"]
    assert rules(schema, ".spec.engine") == ["!(has(self.image) && has(self.version))"]
    assert rules(schema, ".spec.job.envFrom[]") == ["has(self.configMapRef) != has(self.secretRef)"]
    assert rules(schema, "") == ["size(self.metadata.name) <= 63"]
    nodes = dict(walk(schema))
    assert nodes[".spec.activeDeadlineSeconds"]["minimum"] == 1
    assert nodes[".spec.activeDeadlineSeconds"]["maximum"] == 86400
    assert nodes[".spec.ttlSecondsAfterFinished"]["minimum"] == 0
    assert nodes[".spec.engine.storage"]["x-kubernetes-int-or-string"] is True
    assert "pattern" in nodes[".spec.job.image"]
    assert nodes[".spec"].get("required") == ["job"]


def test_rendered_yaml_parses() -> None:
    assert yaml.safe_load(crd.render()) == crd.build_crd()
