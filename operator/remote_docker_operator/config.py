"""Operator settings, read once from RDO_* environment variables (the Helm chart sets them).

This class is the one source of truth for them: settings_chart.py generates from it the chart's
values (values.yaml's `operator:` block and values.schema.json), the Deployment's environment
(templates/_settings.tpl) and the README's table. Adding a field here and running
`make generate` is all a new setting needs.

What an engine may be (image, resources, placement, denied ranges) is not a setting: it is the
platform admin's EngineClass (models.py), so it can differ by class and change without a
restart."""

from functools import lru_cache
from typing import Literal, Self

from pydantic import Field, JsonValue, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from . import names

# How the Helm chart sets a field, given as `json_schema_extra`. Without either, the chart has a
# value for it under `operator:` (camelCase) that becomes the variable.
# The chart passes the default itself and offers no value: other parts of the Deployment (a
# probe, a port) depend on it.
CHART_FIXED: dict[str, JsonValue] = {"x-chart": "fixed"}


# Made by the chart from values of its own (a Go template pipeline), because other parts of
# the chart (a Service, a port) use the same values.
def chart_derived(template: str, values: str) -> dict[str, JsonValue]:
    return {"x-chart": "derived", "x-chart-template": template, "x-chart-values": values}


# Read by the chart from the pod itself (the downward API's fieldRef).
def chart_pod_field(path: str) -> dict[str, JsonValue]:
    return {"x-chart": "pod", "x-chart-field": path}


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
    webhook_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the admission webhook that gives a pod labelled "
        "remotedocker.dev/engine its DockerEngine (HTTPS, on all addresses); 0 serves none.",
        json_schema_extra=chart_derived(
            "ternary .Values.webhook.port 0 .Values.webhook.enabled | int64 | toString | quote",
            "`webhook.enabled` and `webhook.port`",
        ),
    )
    webhook_cert_dir: str = Field(
        "/etc/remote-docker-operator/webhook",
        description="Directory with the webhook's serving certificate (tls.crt, tls.key).",
        json_schema_extra=CHART_FIXED,
    )
    wait_image: str = Field(
        "",
        description="Image with the operator's waits for an engine (the chart: the operator's own "
        "image): the init container the webhook puts first in a client pod, which holds the pod's "
        "containers back until the engine answers, and the gate a BuildJob's job container with "
        "a command starts behind. Empty: a client pod gets no wait, and every job pod waits in an "
        "init container of the engine image (slower: the kubelet starts the job a relist later).",
        json_schema_extra=chart_derived(
            'include "remote-docker-operator.image" . | quote', "the operator's image"
        ),
    )
    wait_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent",
        description="Pull policy of that image.",
        json_schema_extra=chart_derived(".Values.image.pullPolicy | quote", "`image.pullPolicy`"),
    )
    leader_election: bool = Field(
        True,
        description="Act only while holding the Lease below, so that of several replicas exactly "
        "one acts and the others wait as standbys. Turn off only for a single replica.",
    )
    lease_name: str = Field(
        names.LEASE_NAME,
        max_length=253,
        pattern=DNS_NAME,
        description="Name of the Lease (the chart: the release's full name, which its Role names).",
        json_schema_extra=chart_derived(
            'include "remote-docker-operator.fullname" . | quote', "the release's full name"
        ),
    )
    lease_namespace: str = Field(
        "default",
        max_length=63,
        pattern=DNS_NAME,
        description="Namespace of the Lease (the chart: the release namespace).",
        json_schema_extra=chart_pod_field("metadata.namespace"),
    )
    leader_identity: str = Field(
        "",
        max_length=253,
        description="This replica's name as the Lease's holder (the chart: the pod name, so a "
        "restarted container takes its own Lease back at once). Empty: the host name and a "
        "random suffix, unique to the process.",
        json_schema_extra=chart_pod_field("metadata.name"),
    )
    lease_duration_seconds: int = Field(
        8,
        ge=2,
        le=300,
        description="How long a standby waits, from the last renewal it saw, before taking the "
        "Lease over: the takeover time after the leader dies.",
    )
    lease_renew_deadline_seconds: float = Field(
        5.0,
        gt=0,
        description="The leader exits when it has not renewed the Lease for this long (less "
        "than the duration: the margin covers a late renewal and clock rates).",
    )
    lease_retry_period_seconds: float = Field(
        1.0, gt=0, description="How often the leader renews and a standby checks the Lease."
    )
    failpoint: str = Field(
        "",
        description="Test-only: the reconcile step after which the operator SIGKILLs itself "
        "(failpoints.py).",
        json_schema_extra=CHART_ABSENT,
    )

    @model_validator(mode="after")
    def _lease_timing(self) -> Self:
        # The leader must give up before a standby may take over, and retry before giving up.
        if not (
            self.lease_duration_seconds
            > self.lease_renew_deadline_seconds
            > self.lease_retry_period_seconds
        ):
            raise ValueError(
                "need lease_duration_seconds > lease_renew_deadline_seconds"
                " > lease_retry_period_seconds"
            )
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
