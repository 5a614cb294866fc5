"""Operator settings, read once from RDO_* environment variables (the Helm chart sets them).

What an engine may be (image, resources, placement, denied ranges) is not a setting: it is the
platform admin's EngineClass (models.py), so it can differ by class and change without a
restart."""

from functools import lru_cache
from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from . import names

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class Settings(BaseSettings):
    """Each field is read from the environment variable RDO_<FIELD_NAME_IN_UPPER_CASE>."""

    model_config = SettingsConfigDict(env_prefix="RDO_", frozen=True)

    namespace_prefix: str = Field(
        "bj-",
        pattern=r"^[a-z0-9]([-a-z0-9]{0,38}[-a-z0-9])?$",
        description="Prefix of every per-job namespace.",
    )
    default_deadline_seconds: int = Field(
        3600, ge=1, le=86400, description="activeDeadlineSeconds when a BuildJob gives none."
    )
    default_ttl_seconds: int = Field(
        600, ge=0, description="ttlSecondsAfterFinished when a BuildJob gives none."
    )
    max_running: int = Field(
        0,
        ge=0,
        description="The most BuildJobs provisioned or running at once; the rest wait as Pending "
        "(reason Queued) and start in creation order. 0 means no limit.",
    )
    resync_seconds: float = Field(
        30.0, gt=0, description="How often each unfinished BuildJob is checked for drift."
    )
    cluster_domain: str = Field("cluster.local", description="The cluster's DNS domain.")
    leader_election: bool = Field(
        True,
        description="Act only while holding the Lease below, so that of several replicas exactly "
        "one acts and the others wait as standbys. Turn off only for a single replica.",
    )
    lease_name: str = Field(
        names.LEASE_NAME, max_length=253, pattern=DNS_SUBDOMAIN, description="Name of the Lease."
    )
    lease_namespace: str = Field(
        "default",
        max_length=63,
        pattern=DNS_SUBDOMAIN,
        description="Namespace of the Lease (the chart: the release namespace).",
    )
    leader_identity: str = Field(
        "",
        max_length=253,
        description="This replica's name as the Lease's holder (the chart: the pod name, so a "
        "restarted container takes its own Lease back at once). Empty: the host name and a "
        "random suffix, unique to the process.",
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
        "", description="Test-only: the reconcile step at which the operator kills itself."
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
