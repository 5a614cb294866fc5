"""Generates the CRDs (BuildJob, DockerEngine, EngineClass) from the pydantic models.

`python -m remote_docker_operator.crd DIR...` writes every CRD into each DIR; a unit test fails
when a committed copy differs from what this module generates.
"""

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from . import names
from .models import BuildJob, DockerEngine, EngineClass

# Keys pydantic emits that a structural CRD schema must not have (defaults are left out on
# purpose: the operator applies them, so stored objects stay exactly as the user wrote them).
_DROPPED = frozenset({"title", "default"})

BUILDJOB_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason"},
    {"name": "Exit", "type": "integer", "jsonPath": ".status.exitCode"},
    {"name": "Class", "type": "string", "jsonPath": ".status.engineClass"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Duration", "type": "string", "jsonPath": ".status.duration"},
    {
        "name": "Engine",
        "type": "string",
        "priority": 1,
        "jsonPath": '.status.conditions[?(@.type=="EngineReady")].status',
    },
    {"name": "Namespace", "type": "string", "priority": 1, "jsonPath": ".status.namespace"},
]
DOCKERENGINE_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason"},
    {"name": "Client", "type": "string", "jsonPath": ".spec.clientPod.name"},
    {"name": "Class", "type": "string", "jsonPath": ".status.engineClass"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Secret", "type": "string", "priority": 1, "jsonPath": ".status.clientSecret"},
    {"name": "Endpoint", "type": "string", "priority": 1, "jsonPath": ".status.engine.endpoint"},
    {"name": "Namespace", "type": "string", "priority": 1, "jsonPath": ".status.namespace"},
]
# The name is copied into label values on every child object, which hold 63 characters.
_NAME_IS_A_LABEL = {
    "rule": "size(self.metadata.name) <= 63",
    "message": "metadata.name: must be no more than 63 characters (it is used as a label value)",
}
ENGINECLASS_COLUMNS: list[dict[str, Any]] = [
    {
        "name": "Default",
        "type": "string",
        "jsonPath": ".metadata.annotations." + names.ANNOTATION_DEFAULT_CLASS.replace(".", "\\."),
    },
    {"name": "Image", "type": "string", "jsonPath": ".spec.image"},
    {"name": "Runtime", "type": "string", "jsonPath": ".spec.runtimeClassName"},
    {"name": "Warm", "type": "integer", "jsonPath": ".status.warmPool.ready"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


@dataclass(frozen=True)
class Resource:
    """One custom resource: its names, its model and what kubectl shows of it."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    scope: str
    model: type[BaseModel]
    description: str
    columns: list[dict[str, Any]]
    status: bool
    rules: list[dict[str, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.plural}.{names.GROUP}"


RESOURCES = (
    Resource(
        names.KIND,
        names.PLURAL,
        names.SHORT_NAMES,
        "Namespaced",
        BuildJob,
        "A CI job run against its own isolated remote Docker engine, in a namespace of its own.",
        BUILDJOB_COLUMNS,
        status=True,
        rules=[_NAME_IS_A_LABEL],
    ),
    Resource(
        names.DOCKER_ENGINE_KIND,
        names.DOCKER_ENGINE_PLURAL,
        names.DOCKER_ENGINE_SHORT_NAMES,
        "Namespaced",
        DockerEngine,
        "An isolated remote Docker engine, in a namespace of its own, for one pod that already "
        "runs (a CI runner's): its client Secret is written beside the pod, and the engine goes "
        "when the pod does.",
        DOCKERENGINE_COLUMNS,
        status=True,
        rules=[_NAME_IS_A_LABEL],
    ),
    Resource(
        names.CLASS_KIND,
        names.CLASS_PLURAL,
        names.CLASS_SHORT_NAMES,
        "Cluster",
        EngineClass,
        "What a Docker engine may be and do, decided by the platform admin: image, placement, "
        "runtime, resources, storage, who may use it and where its engines may connect.",
        ENGINECLASS_COLUMNS,
        status=True,
    ),
)


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Inline $refs, turn Optional's anyOf-with-null into the plain type, drop titles/defaults."""
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    while True:  # a $ref may sit inside Optional's anyOf, and a def may itself be a $ref
        if "$ref" in node:
            target = defs[node.pop("$ref").removeprefix("#/$defs/")]
            node = {**target, **node}  # siblings (description, CEL rules) win
            continue
        any_of = node.get("anyOf")
        if any_of and {"type": "null"} in any_of:
            rest = [branch for branch in any_of if branch != {"type": "null"}]
            del node["anyOf"]
            if len(rest) == 1:
                node = {**rest[0], **node}
            else:
                node["anyOf"] = rest
            continue
        break
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    # A dict keyed by a Literal: pydantic lists the keys as propertyNames, which CRDs lack.
    if isinstance(node.get("propertyNames"), dict):
        keys = node.pop("propertyNames").get("enum")
        if keys:
            node.setdefault("x-kubernetes-validations", []).append(
                {"rule": f"self.all(k, k in {keys!r})", "message": f"keys must be among {keys}"}
            )
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        # Property names are user data, not schema keywords: recurse into each, keep the names.
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        else:
            out[key] = _structural(value, defs)
    if "properties" in out or "additionalProperties" in out:
        out.setdefault("type", "object")
    return out


def openapi_schema(resource: Resource = RESOURCES[0]) -> dict[str, Any]:
    raw = resource.model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema: dict[str, Any] = _structural(raw, defs)
    schema["description"] = resource.description
    if resource.rules:
        schema["x-kubernetes-validations"] = resource.rules
    return schema


def build_crd(resource: Resource = RESOURCES[0]) -> dict[str, Any]:
    version: dict[str, Any] = {
        "name": names.VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": openapi_schema(resource)},
    }
    if resource.status:
        version["subresources"] = {"status": {}}
    version["additionalPrinterColumns"] = resource.columns
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": resource.name, "labels": {"app.kubernetes.io/name": names.APP}},
        "spec": {
            "group": names.GROUP,
            "scope": resource.scope,
            "names": {
                "kind": resource.kind,
                "listKind": f"{resource.kind}List",
                "singular": resource.kind.lower(),
                "plural": resource.plural,
                "shortNames": list(resource.short_names),
                **({"categories": ["all"]} if resource.scope == "Namespaced" else {}),
            },
            "versions": [version],
        },
    }


def render(resource: Resource = RESOURCES[0]) -> str:
    header = "# Generated by `python -m remote_docker_operator.crd` from models.py. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(resource), sort_keys=False, width=100)


def files() -> dict[str, str]:
    """File name -> content of every CRD."""
    return {f"{r.name}.yaml": render(r) for r in RESOURCES}


def _closed(node: Any) -> Any:
    """A CRD schema as a Helm values schema: objects with declared properties refuse unknown
    keys (the API server would prune them silently); open structures stay open."""
    if isinstance(node, list):
        return [_closed(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _closed(v) for k, v in node.items()}
    if "properties" in out:
        out["additionalProperties"] = False
    return out


def engine_class_values_schema() -> dict[str, Any]:
    """The chart's `engineClass.spec` values schema: the EngineClass CRD's own spec schema."""
    spec: dict[str, Any] = _closed(openapi_schema(RESOURCES[2])["properties"]["spec"])
    return spec


def values_schema(path: Path) -> str:
    """The chart's values.schema.json with engineClass.spec generated."""
    schema = json.loads(path.read_text())
    schema["properties"]["engineClass"]["properties"]["spec"] = engine_class_values_schema()
    return json.dumps(schema, indent=2) + "\n"


def main(argv: list[str]) -> int:
    """DIR... [--values-schema FILE]: writes every CRD into each DIR, and the EngineClass spec
    into the chart's values schema."""
    directories, schema = argv, None
    if "--values-schema" in argv:
        at = argv.index("--values-schema")
        directories, schema = argv[:at] + argv[at + 2 :], Path(argv[at + 1])
    for directory in directories:
        for name, text in files().items():
            (Path(directory) / name).write_text(text)
    if schema is not None:
        schema.write_text(values_schema(schema))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
