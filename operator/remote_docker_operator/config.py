"""Operator settings, read once from RDO_* environment variables (the Helm chart sets them).

This class is the one source of truth for them: settings_chart.py generates from it the chart's
values (values.yaml's `operator:` block and values.schema.json), the Deployment's environment
(templates/_settings.tpl) and the README's table. Adding a field here and running
`make generate` is all a new setting needs.

What an engine may be (image, resources, placement, denied ranges) is not a setting: it is the
platform admin's EngineClass (models.py), so it can differ by class and change without a
restart."""

from functools import lru_cache
from typing import Literal

from pydantic import Field, JsonValue
from pydantic_settings import BaseSettings, SettingsConfigDict

# How the Helm chart sets a field, given as `json_schema_extra`. Without either, the chart has a
# value for it under `operator:` (camelCase) that becomes the variable.
# The chart passes the default itself and offers no value: other parts of the Deployment (a
# probe, a port) depend on it.
CHART_FIXED: dict[str, JsonValue] = {"x-chart": "fixed"}


# Made by the chart from values of its own (a Go template pipeline), because other parts of
# the chart (a Service, a port) use the same values.
def chart_derived(template: str, values: str) -> dict[str, JsonValue]:
    return {"x-chart": "derived", "x-chart-template": template, "x-chart-values": values}


# Not in the chart at all (test-only switches).
CHART_ABSENT: dict[str, JsonValue] = {"x-chart": "absent"}

DNS_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class Settings(BaseSettings):
    """Each field is read from the environment variable RDO_<FIELD_NAME_IN_UPPER_CASE>."""

    model_config = SettingsConfigDict(env_prefix="RDO_", frozen=True)

    namespace_prefix: str = Field(
        "bj-",
        pattern=r"^[a-z0-9]([-a-z0-9]{0,38}[-a-z0-9])?$",
        description="Prefix of every per-job namespace (a BuildJob made before a change keeps "
        "its namespace).",
    )
    default_deadline_seconds: int = Field(
        3600, ge=1, le=86400, description="activeDeadlineSeconds of a BuildJob that gives none."
    )
    default_ttl_seconds: int = Field(
        600, ge=0, description="ttlSecondsAfterFinished of a BuildJob that gives none."
    )
    max_running: int = Field(
        0,
        ge=0,
        description="The most BuildJobs provisioning or running at once; the rest wait as "
        "Pending (reason Queued) and start in creation order. 0 means no limit.",
    )
    resync_seconds: float = Field(
        30.0,
        gt=0,
        description="How often each unfinished BuildJob is checked (deadline, TTL, children "
        "deleted or changed behind the operator's back).",
    )
    cluster_domain: str = Field(
        "cluster.local",
        pattern=DNS_NAME,
        max_length=253,
        description="The cluster's DNS domain (for the engine certificate's names).",
    )
    log_level: Literal["INFO", "DEBUG"] = Field(
        "INFO",
        description="DEBUG for kopf's verbose log (every handler run); INFO logs what the "
        "operator does, and every failure.",
    )
    log_format: Literal["full", "plain", "json"] = Field(
        "full",
        description="kopf's log format: full (time, logger, level, message), plain (the message "
        "only) or json (JSON lines).",
    )
    liveness_endpoint: str = Field(
        "http://0.0.0.0:8080/healthz",
        pattern=r"^(http://[^/\s]+(/\S*)?)?$",
        description="Where kopf serves its liveness probe (http only); empty disables it.",
        json_schema_extra=CHART_FIXED,
    )
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the Prometheus endpoint (/metrics, on all addresses); 0 serves none. "
        "Off by default so that a local run binds no port unasked; the chart turns it on.",
        json_schema_extra=chart_derived(
            "ternary .Values.metrics.port 0 .Values.metrics.enabled | int64 | toString | quote",
            "`metrics.enabled` and `metrics.port`",
        ),
    )
    failpoint: str = Field(
        "",
        description="Test-only: the reconcile step after which the operator SIGKILLs itself "
        "(failpoints.py).",
        json_schema_extra=CHART_ABSENT,
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
