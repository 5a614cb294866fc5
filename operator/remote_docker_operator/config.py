"""Operator settings, read once from RDO_* environment variables (the Helm chart sets them)."""

import ipaddress
import json
from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Each field is read from the environment variable RDO_<FIELD_NAME_IN_UPPER_CASE>."""

    model_config = SettingsConfigDict(env_prefix="RDO_", frozen=True)

    engine_image_repository: str = Field(
        "docker",
        description="Image repository of the engine; the tag is the BuildJob's engine.version "
        "followed by engineImageSuffix.",
    )
    engine_image_suffix: str = Field(
        "-dind", description="Appended to the version to form the tag."
    )
    engine_version: str = Field(
        "27", description="Engine version used when a BuildJob names neither version nor image."
    )
    engine_storage: str = Field("20Gi", description="Default size limit of /var/lib/docker.")
    namespace_prefix: str = Field(
        "bj-",
        pattern=r"^[a-z0-9]([-a-z0-9]{0,38}[-a-z0-9])?$",
        description="Prefix of every per-job namespace.",
    )
    denied_cidrs: Annotated[list[str], NoDecode] = Field(
        default=[
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "169.254.0.0/16",
        ],
        description="Egress to these ranges is denied to both engine and job pods: the cluster's "
        "pod and service ranges and the cloud metadata address must be among them. "
        "Comma-separated list or JSON array.",
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
    failpoint: str = Field(
        "", description="Test-only: the reconcile step at which the operator kills itself."
    )

    @field_validator("denied_cidrs", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("denied_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        return [str(ipaddress.ip_network(cidr, strict=False)) for cidr in value]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
