"""settings_chart.py: the chart's and README's copies of Settings are what it generates, and it
refuses fields it could not pass through the chart. That a new field needs nothing but
`make generate` is shown with helm in test_chart.py (test_a_new_setting_needs_no_edit_but_generate).
"""

from pathlib import Path

import pytest
from pydantic import Field

from remote_docker_operator import settings_chart
from remote_docker_operator.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_committed_copies_match_settings() -> None:
    """Run `make generate` after changing config.py."""
    generated = settings_chart.files(ROOT)
    assert len(generated) == 4
    for path, text in generated.items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)}: run `make generate`"


def test_every_setting_is_in_each_copy() -> None:
    every = settings_chart.settings()
    assert [s.env for s in every] == [f"RDO_{name.upper()}" for name in Settings.model_fields]
    helper = settings_chart.env_helper()
    table = settings_chart.readme_table()
    schema = settings_chart.values_schema_node()["properties"]
    block = settings_chart.values_block()
    for s in every:
        assert f"| `{s.env}` |" in table
        assert (f"- name: {s.env}\n" in helper) == (s.chart != "absent"), s.env
        assert (s.key in schema) == (s.chart == "value"), s.env
        assert (f"\n  {s.key}: " in block) == (s.chart == "value"), s.env
    by_env = {s.env: s for s in every}
    assert by_env["RDO_LIVENESS_ENDPOINT"].chart == "fixed"
    assert by_env["RDO_FAILPOINT"].chart == "absent"
    assert by_env["RDO_MAX_RUNNING"].chart == "value"
    assert '  value: "http://0.0.0.0:8080/healthz"\n' in helper


def test_schema_keeps_types_defaults_and_constraints() -> None:
    schema = settings_chart.values_schema_node()
    assert schema["additionalProperties"] is False
    deadline = schema["properties"]["defaultDeadlineSeconds"]
    assert deadline["type"] == "integer"
    assert (deadline["minimum"], deadline["maximum"], deadline["default"]) == (1, 86400, 3600)
    assert deadline["description"].startswith("RDO_DEFAULT_DEADLINE_SECONDS: ")
    assert schema["properties"]["resyncSeconds"]["exclusiveMinimum"] == 0
    assert schema["properties"]["logFormat"]["enum"] == ["full", "plain", "json"]
    assert "title" not in deadline


def test_nullable_field_is_skipped_when_null() -> None:
    class Nullable(Settings):
        lease_name: str | None = Field(None, description="A nullable setting.")

    node = settings_chart.values_schema_node(Nullable)["properties"]["leaseName"]
    assert node["type"] == ["string", "null"]
    assert "anyOf" not in node
    helper = settings_chart.env_helper(Nullable)
    assert '{{- if not (kindIs "invalid" .Values.operator.leaseName) }}' in helper


def test_markers_are_required() -> None:
    with pytest.raises(ValueError, match="markers"):
        settings_chart.values_yaml("operator:\n  maxRunning: 0\n")
    text = "a\n# BEGIN operator settings\nstale-line\n# END operator settings\nb\n"
    spliced = settings_chart.values_yaml(text)
    assert spliced.startswith("a\n# BEGIN operator settings: generated")
    assert spliced.endswith("# END operator settings\nb\n")
    assert "stale-line" not in spliced
    assert settings_chart.values_yaml(spliced) == spliced  # regenerating changes nothing


class NoDescription(Settings):
    lease_seconds: int = 15


class Union(Settings):
    lease: int | str = Field(15, description="Either.")


class Aliased(Settings):
    lease: int = Field(15, alias="RDO_LEASE_TIME", description="Renamed.")


class Unknown(Settings):
    lease: int = Field(15, description="Marked wrong.", json_schema_extra={"x-chart": "maybe"})


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (NoDescription, "needs a description"),
        (Union, "only T or T | None"),
        (Aliased, "aliases"),
        (Unknown, "unknown x-chart"),
    ],
)
def test_unsupported_fields_are_refused(model: type[Settings], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings_chart.settings(model)
