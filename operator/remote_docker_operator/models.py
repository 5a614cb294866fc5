"""The BuildJob API (remotedocker.dev/v1alpha1) as pydantic models.

These models are the single source of truth: the CRD's OpenAPI schema is generated from them
(crd.py), and the operator parses every BuildJob through them. Constraints that the API server
can check are written here as schema constraints or CEL rules, so bad input is refused at
admission with a message that names the field.
"""

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, Any]:
    """One x-kubernetes-validations entry (a CEL rule the API server evaluates)."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are pruned by the API server."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


# -- scalar types ---------------------------------------------------------------------------

# The reference grammar of distribution/reference: [domain/]path[:tag][@digest]. As in docker,
# a first component is a registry domain only with a dot or a port, or when it is localhost.
_DOMAIN_PART = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_PATTERN = (
    rf"^(?:(?:localhost|{_DOMAIN_PART}(?:\.{_DOMAIN_PART})+)(?::[0-9]+)?/|{_DOMAIN_PART}:[0-9]+/)?"
    rf"{_PATH_PART}(?:/{_PATH_PART})*"
    r"(?::[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
ImageRef = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=IMAGE_PATTERN)]

DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ObjectName = Annotated[
    str, StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
]

# Kubernetes' resource.Quantity: an integer or a string such as 500m, 2Gi or 1e3.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
Quantity = Annotated[
    str,
    BeforeValidator(lambda v: str(v) if isinstance(v, int) and not isinstance(v, bool) else v),
    StringConstraints(max_length=64, pattern=QUANTITY_PATTERN),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "pattern": QUANTITY_PATTERN,
        }
    ),
]
ShortString = Annotated[str, StringConstraints(max_length=4096)]
PullPolicy = Literal["Always", "IfNotPresent", "Never"]

# Fields whose shape Kubernetes validates when the pod is created (e.g. env valueFrom): kept
# verbatim, and a pod the API server refuses ends the BuildJob Failed/InvalidSpec.
FreeForm = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]


# -- spec -------------------------------------------------------------------------------------


class LocalObjectReference(ApiModel):
    name: ObjectName = Field(description="Name of an object in the BuildJob's namespace.")


class OptionalReference(LocalObjectReference):
    optional: bool | None = Field(None, description="Whether the object may be missing.")


class EnvVar(ApiModel):
    name: str = Field(
        min_length=1,
        max_length=256,
        pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$",
        description="Environment variable name.",
    )
    value: str | None = Field(None, max_length=32768, description="Literal value.")
    value_from: FreeForm | None = Field(
        None, description="A Kubernetes EnvVarSource (secretKeyRef, configMapKeyRef, ...)."
    )


class EnvFromSource(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.configMapRef) != has(self.secretRef)",
                    "exactly one of configMapRef and secretRef must be set",
                )
            ]
        }
    )
    prefix: str | None = Field(None, max_length=253, description="Prefix for every variable.")
    config_map_ref: OptionalReference | None = Field(None, description="A ConfigMap to read.")
    secret_ref: OptionalReference | None = Field(None, description="A Secret to read.")


class Resources(ApiModel):
    limits: dict[str, Quantity] | None = Field(
        None, max_length=16, description="Resource limits, e.g. {cpu: 2, memory: 4Gi}."
    )
    requests: dict[str, Quantity] | None = Field(
        None, max_length=16, description="Resource requests."
    )


class JobContainer(ApiModel):
    """The primary container: the user's CI step, run against the remote engine."""

    image: ImageRef = Field(description="Image of the job container, e.g. docker:27-cli.")
    image_pull_policy: PullPolicy | None = Field(None, description="Pull policy of the image.")
    command: list[ShortString] | None = Field(
        None, max_length=64, description="Entrypoint override."
    )
    args: list[Annotated[str, StringConstraints(max_length=65536)]] | None = Field(
        None, max_length=256, description="Arguments to the entrypoint."
    )
    env: list[EnvVar] | None = Field(None, max_length=128, description="Environment variables.")
    env_from: list[EnvFromSource] | None = Field(
        None, max_length=16, description="ConfigMaps and Secrets to load as environment."
    )
    working_dir: str | None = Field(
        None, max_length=4096, pattern=r"^/", description="Working directory (absolute path)."
    )
    resources: Resources | None = Field(None, description="Compute resources of the job pod.")


class EngineSpec(ApiModel):
    """The remote Docker engine (what CircleCI calls setup_remote_docker)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!(has(self.image) && has(self.version))",
                    "engine.image and engine.version are mutually exclusive",
                )
            ]
        }
    )
    version: str | None = Field(
        None,
        max_length=16,
        pattern=r"^[0-9]+(\.[0-9]+){0,2}$",
        description="Docker version; selects the default dind image's tag (e.g. 27 -> "
        "docker:27-dind). Mutually exclusive with image.",
    )
    image: ImageRef | None = Field(None, description="The engine image, overriding version.")
    image_pull_policy: PullPolicy | None = Field(None, description="Pull policy of the image.")
    resources: Resources | None = Field(None, description="Compute resources of the engine pod.")
    storage: Quantity | None = Field(
        None, description="Size limit of the emptyDir holding /var/lib/docker (default 20Gi)."
    )
    registry_mirrors: (
        list[
            Annotated[
                str, StringConstraints(max_length=512, pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
            ]
        ]
        | None
    ) = Field(None, max_length=8, description="dockerd --registry-mirror URLs.")
    insecure_registries: (
        list[Annotated[str, StringConstraints(max_length=256, pattern=r"^[a-zA-Z0-9.:/\[\]-]+$")]]
        | None
    ) = Field(None, max_length=16, description="dockerd --insecure-registry entries.")
    mtu: int | None = Field(None, ge=576, le=9216, description="dockerd --mtu.")


class NetworkSpec(ApiModel):
    job_egress: Literal["Internet", "None"] = Field(
        "Internet",
        description="Internet: the job pod may reach the internet (never the cluster); None: the "
        "job pod reaches only its engine and DNS. The engine may always pull from the internet.",
    )


class BuildJobSpec(ApiModel):
    job: JobContainer = Field(description="The job container.")
    engine: EngineSpec = Field(
        default_factory=EngineSpec, description="The job's private Docker engine."
    )
    image_pull_secrets: list[LocalObjectReference] | None = Field(
        None,
        max_length=8,
        description="Secrets in this namespace for pulling the job image; copied into the job's "
        "namespace.",
    )
    docker_config_secret: LocalObjectReference | None = Field(
        None,
        description="A kubernetes.io/dockerconfigjson Secret in this namespace: the engine's "
        "docker login for pulls and pushes, also given to the job as its docker config.",
    )
    network: NetworkSpec = Field(default_factory=NetworkSpec, description="Network isolation.")
    active_deadline_seconds: int | None = Field(
        None,
        ge=1,
        le=86400,
        description="Seconds from start after which the BuildJob fails with DeadlineExceeded.",
    )
    ttl_seconds_after_finished: int | None = Field(
        None,
        ge=0,
        le=2592000,
        description="Seconds after finishing until the job's namespace (and its logs) is deleted.",
    )


# -- status -----------------------------------------------------------------------------------

Phase = Literal["Pending", "Provisioning", "Running", "Succeeded", "Failed"]
TERMINAL_PHASES: frozenset[str] = frozenset({"Succeeded", "Failed"})


class Condition(ApiModel):
    """metav1.Condition."""

    type: str = Field(max_length=316)
    status: Literal["True", "False", "Unknown"]
    observed_generation: int | None = Field(None, ge=0)
    last_transition_time: str
    reason: str = Field(max_length=1024)
    message: str = Field("", max_length=32768)


class EngineStatus(ApiModel):
    endpoint: str | None = Field(None, description="DOCKER_HOST as the job sees it.")
    ready: bool = Field(False, description="Whether the engine answers over mutual TLS.")


class BuildJobStatus(ApiModel):
    phase: Phase | None = Field(
        None, description="Pending, Provisioning, Running, Succeeded or Failed."
    )
    reason: str | None = Field(None, description="Why the BuildJob is in its phase (CamelCase).")
    message: str | None = Field(None, description="Details for a person.")
    namespace: str | None = Field(None, description="The per-job namespace.")
    engine: EngineStatus | None = Field(None, description="The remote engine.")
    job_pod: str | None = Field(None, description="Name of the job pod in the job namespace.")
    exit_code: int | None = Field(None, description="Exit code of the job container.")
    start_time: str | None = Field(None, description="When provisioning started.")
    completion_time: str | None = Field(None, description="When the BuildJob finished.")
    duration: str | None = Field(None, description="completionTime - startTime, e.g. 1m12s.")
    cleaned_up: bool | None = Field(
        None, description="True once the job namespace was deleted after the TTL."
    )
    observed_generation: int | None = Field(None, description="The generation last acted on.")
    conditions: list[Condition] | None = Field(
        None,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="EngineReady, Complete and Failed, in the metav1.Condition shape.",
    )


class BuildJob(ApiModel):
    """The whole object as the operator reads it."""

    spec: BuildJobSpec = Field(
        json_schema_extra={
            "x-kubernetes-validations": [cel("self == oldSelf", "spec is immutable")]
        },
        description="What to run and with which engine. Immutable once created.",
    )
    status: BuildJobStatus | None = Field(None, description="Observed state.")
