"""Generates every copy of the operator's settings from `config.Settings`, as crd.py generates
the CRDs from the models: field names, types, defaults, descriptions and constraints.

`python -m remote_docker_operator.settings_chart [ROOT]` (`make generate`) rewrites, under ROOT
(the checkout; default the current directory):

- charts/remote-docker-operator/values.schema.json: `properties.operator`;
- charts/remote-docker-operator/values.yaml: the `operator:` block between its markers;
- charts/remote-docker-operator/templates/_settings.tpl: the Deployment's RDO_* environment,
  which deployment.yaml includes, so it needs no edit when a setting is added;
- README.md: the settings table between its markers.

A unit test fails when a committed copy differs from what this module generates.

Each field of Settings becomes the value `operator.<fieldInCamelCase>` and the variable
RDO_<FIELD_NAME>, unless config.CHART_FIXED (the chart passes the default itself) or
config.CHART_ABSENT (test-only) says otherwise.
"""

import json
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic.alias_generators import to_camel
from pydantic_settings import BaseSettings

from .config import Settings

CHART = Path("charts") / "remote-docker-operator"
VALUES_KEY = "operator"
HELPER = "remote-docker-operator.settingsEnv"
WIDTH = 100
GENERATED = "generated from config.py's Settings by `make generate`; do not edit"
# The generated block of values.yaml and of the README lies between the lines holding these.
BEGIN, END = "BEGIN operator settings", "END operator settings"

ChartUse = Literal["value", "fixed", "derived", "pod", "absent"]


@dataclass(frozen=True)
class Setting:
    """One field of Settings, as the chart and the README see it."""

    env: str
    key: str
    chart: ChartUse
    default: Any
    description: str
    # The field's JSON schema without pydantic's title and our x-chart markers; a nullable
    # field has "type": [T, "null"].
    schema: dict[str, Any]
    # chart "derived": the Go template pipeline that gives the value, and the values it reads.
    template: str = ""
    values: str = ""
    # chart "pod": the pod's own field (downward API) that gives the value.
    field_path: str = ""

    @property
    def type(self) -> str:
        kind = self.schema["type"]
        return str(kind[0] if isinstance(kind, list) else kind)

    @property
    def nullable(self) -> bool:
        return isinstance(self.schema["type"], list)


def _field_schema(node: dict[str, Any], name: str) -> dict[str, Any]:
    """Flatten Optional's anyOf-with-null into "type": [T, "null"]; refuse other shapes, which
    the env helper would not know how to pass."""
    node = {k: v for k, v in node.items() if k != "title" and not k.startswith("x-chart")}
    any_of = node.pop("anyOf", None)
    if any_of is not None:
        rest = [branch for branch in any_of if branch != {"type": "null"}]
        if len(rest) != 1 or len(rest) == len(any_of) or "type" not in rest[0]:
            raise ValueError(f"Settings.{name}: only T or T | None fields are supported")
        node = {**rest[0], **node, "type": [rest[0]["type"], "null"]}
    if "type" not in node:
        raise ValueError(f"Settings.{name}: its JSON schema has no type")
    return node


def settings(model: type[BaseSettings] = Settings) -> list[Setting]:
    prefix = str(model.model_config.get("env_prefix", ""))
    schema = model.model_json_schema(mode="validation")
    if "$defs" in schema:
        raise ValueError(f"{model.__name__}: nested models are not supported as settings")
    out = []
    for name, field in model.model_fields.items():
        if field.alias or field.validation_alias:
            raise ValueError(f"{model.__name__}.{name}: aliases change the variable's name")
        if not field.description:
            raise ValueError(f"{model.__name__}.{name}: every setting needs a description")
        node = schema["properties"][name]
        chart = node.get("x-chart", "value")
        if chart not in ("value", "fixed", "derived", "pod", "absent"):
            raise ValueError(f"{model.__name__}.{name}: unknown x-chart {chart!r}")
        out.append(
            Setting(
                env=(prefix + name).upper(),
                key=to_camel(name),
                chart=chart,
                default=field.get_default(call_default_factory=True),
                description=field.description,
                schema=_field_schema(node, name),
                template=str(node.get("x-chart-template", "")),
                values=str(node.get("x-chart-values", "")),
                field_path=str(node.get("x-chart-field", "")),
            )
        )
    return out


# -- values.schema.json -------------------------------------------------------------------------


def values_schema_node(model: type[BaseSettings] = Settings) -> dict[str, Any]:
    """The `operator` node of the chart's values schema."""
    properties = {
        s.key: {**s.schema, "description": f"{s.env}: {s.description}"}
        for s in settings(model)
        if s.chart == "value"
    }
    return {
        "description": "Operator settings (config.py's Settings), one RDO_* environment "
        "variable each.",
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }


def values_schema(text: str, model: type[BaseSettings] = Settings) -> str:
    schema = json.loads(text)
    schema["properties"][VALUES_KEY] = values_schema_node(model)
    return json.dumps(schema, indent=2) + "\n"


# -- values.yaml --------------------------------------------------------------------------------


def _scalar(key: str, value: Any) -> str:
    """`key: value` as YAML, a collection in flow style so it stays on the line under its
    comment."""
    text = yaml.safe_dump({key: value}, default_flow_style=True, width=1000).strip()
    return text.removeprefix("{").removesuffix("}")  # one key, so no braces needed around it


def _comment(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# ")


def values_block(model: type[BaseSettings] = Settings) -> str:
    lines = [f"# {BEGIN}: {GENERATED}."]
    lines += _comment(
        "Operator settings: each becomes one RDO_* environment variable of the operator (see "
        '"Operator settings" in the README). The defaults are the operator\'s own.',
        "",
    )
    lines.append(f"{VALUES_KEY}:")
    for s in settings(model):
        if s.chart != "value":
            continue
        text = f"{s.env}: {s.description}"
        allowed = _allowed(s)
        if allowed:
            text += f" Allowed: {allowed}."
        if s.type == "number":
            text += (
                " On the command line give a fraction with --set-json (--set passes 0.5 as a "
                "string, which the schema refuses)."
            )
        lines += _comment(text, "  ")
        lines.append("  " + _scalar(s.key, s.default))
    lines.append(f"# {END}")
    return "\n".join(lines) + "\n"


def _splice(text: str, block: str, begin: str, end: str, where: str) -> str:
    """Replace the lines from the one holding `begin` to the one holding `end` (inclusive)."""
    line = r"^[^\n]*{}[^\n]*\n"
    pattern = re.compile(
        line.format(re.escape(begin)) + ".*?" + line.format(re.escape(end)), re.M | re.S
    )
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"{where}: expected one pair of {begin!r} ... {end!r} markers")
    return pattern.sub(lambda _: block, text)


def values_yaml(text: str, model: type[BaseSettings] = Settings) -> str:
    return _splice(text, values_block(model), BEGIN, END, "values.yaml")


# -- the Deployment's environment ---------------------------------------------------------------

# Helm renders every value as a Go value: integers as int64 (else 1000000 comes out 1e+06),
# collections as JSON, which pydantic-settings parses for such fields.
_PIPE = {
    "string": "quote",
    "integer": "int64 | toString | quote",
    "number": "toString | quote",
    "boolean": "toString | quote",
    "array": "toJson | quote",
    "object": "toJson | quote",
}


def env_helper(model: type[BaseSettings] = Settings) -> str:
    """templates/_settings.tpl: a named template with one env entry per setting."""
    lines = [
        "{{/*",
        "The operator's RDO_* environment, one variable per setting:",
        f"{GENERATED}.",
        "*/}}",
        f'{{{{- define "{HELPER}" }}}}',
    ]
    for s in settings(model):
        if s.chart == "absent":
            continue
        if s.chart == "fixed":
            # Other parts of the Deployment depend on this value (a probe, a port).
            lines += [f"- name: {s.env}", f"  value: {json.dumps(str(s.default))}"]
            continue
        if s.chart == "derived":
            lines += [f"- name: {s.env}", f"  value: {{{{ {s.template} }}}}"]
            continue
        if s.chart == "pod":
            lines += [
                f"- name: {s.env}",
                "  valueFrom:",
                "    fieldRef:",
                f"      fieldPath: {s.field_path}",
            ]
            continue
        value = f".Values.{VALUES_KEY}.{s.key}"
        entry = [f"- name: {s.env}", f"  value: {{{{ {value} | {_PIPE[s.type]} }}}}"]
        if s.nullable:  # null means unset: the operator's own default
            entry = [f'{{{{- if not (kindIs "invalid" {value}) }}}}', *entry, "{{- end }}"]
        lines += entry
    lines.append("{{- end }}")
    return "\n".join(lines) + "\n"


# -- README -------------------------------------------------------------------------------------


def _allowed(s: Setting) -> str:
    """The field's constraints in words."""
    node, parts = s.schema, []
    if "enum" in node:
        parts.append("one of " + ", ".join(str(v) for v in node["enum"]))
    for keyword, word in (
        ("minimum", "at least"),
        ("exclusiveMinimum", "more than"),
        ("maximum", "at most"),
        ("exclusiveMaximum", "less than"),
    ):
        if keyword in node:
            parts.append(f"{word} {node[keyword]}")
    if "minLength" in node:
        parts.append(f"at least {node['minLength']} characters")
    if "maxLength" in node:
        parts.append(f"at most {node['maxLength']} characters")
    if "pattern" in node:
        parts.append(f"matches {node['pattern']}")
    if s.nullable:
        parts.append("or unset")
    return ", ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(value: Any) -> str:
    if value is None:
        return "unset"
    if value == "":
        return "empty"
    text = value if isinstance(value, str) else json.dumps(value)
    return f"`{_cell(text)}`"


def readme_table(model: type[BaseSettings] = Settings) -> str:
    chart = {"fixed": "set by the chart", "absent": "not in the chart"}
    lines = [
        f"<!-- {BEGIN}: {GENERATED}. -->",
        "| variable | chart value | default | allowed | meaning |",
        "|---|---|---|---|---|",
    ]
    for s in settings(model):
        value = chart.get(s.chart, f"`{VALUES_KEY}.{s.key}`")
        if s.chart == "derived":
            value = f"from {s.values}"
        if s.chart == "pod":
            value = f"the pod's `{s.field_path}`"
        allowed = _allowed(s)
        allowed = f"`{_cell(allowed)}`" if allowed.startswith("matches") else _cell(allowed)
        lines.append(
            f"| `{s.env}` | {value} | {_code(s.default)} | {allowed or s.type} "
            f"| {_cell(s.description)} |"
        )
    lines.append(f"<!-- {END} -->")
    return "\n".join(lines) + "\n"


def readme(text: str, model: type[BaseSettings] = Settings) -> str:
    return _splice(text, readme_table(model), BEGIN, END, "README.md")


# -- files --------------------------------------------------------------------------------------


def files(root: Path, model: type[BaseSettings] = Settings) -> dict[Path, str]:
    """Path -> the content it should have, for every generated copy under `root`."""
    chart = root / CHART
    schema, values, doc = chart / "values.schema.json", chart / "values.yaml", root / "README.md"
    return {
        schema: values_schema(schema.read_text(), model),
        values: values_yaml(values.read_text(), model),
        chart / "templates" / "_settings.tpl": env_helper(model),
        doc: readme(doc.read_text(), model),
    }


def write(root: Path, model: type[BaseSettings] = Settings) -> None:
    for path, text in files(root, model).items():
        path.write_text(text)


def main(argv: list[str]) -> int:
    write(Path(argv[0]) if argv else Path.cwd())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
