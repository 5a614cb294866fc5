"""Operator settings, read once from RDO_* environment variables (the Helm chart sets them).

What an engine may be (image, resources, placement, denied ranges) is not a setting: it is the
platform admin's EngineClass (models.py), so it can differ by class and change without a
restart."""

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the Prometheus endpoint (/metrics, on all addresses); 0 serves none. "
        "Off by default so that a local run binds no port unasked; the chart turns it on.",
    )
    failpoint: str = Field(
        "", description="Test-only: the reconcile step at which the operator kills itself."
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
