"""The remotedocker.dev/v1alpha1 API (BuildJob, DockerEngine, EngineClass) as pydantic models.

These models are the single source of truth: the CRD's OpenAPI schema is generated from them
(crd.py), and the operator parses every object through them. Constraints that the API server
can check are written here as schema constraints or CEL rules, so bad input is refused at
admission with a message that names the field.
"""

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

from . import names


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
VERSION_PATTERN = r"^[0-9]+(\.[0-9]+){0,2}$"
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
    service_account_name: ObjectName | None = Field(
        None,
        description="A ServiceAccount of this namespace for the job pod (its token mounted as "
        "the ServiceAccount says). It must carry the annotation "
        f'{names.ANNOTATION_JOB_ACCOUNT}: "true": whoever may create BuildJobs may not '
        "otherwise act as every ServiceAccount of the namespace. Unset: the job pod runs with "
        "no token.",
    )


# A cache's name as a tenant gives it: a repository's name fits (owner/repo, dots, dashes).
CacheKey = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=253, pattern=r"^[a-zA-Z0-9]([-a-zA-Z0-9._/]*[a-zA-Z0-9])?$"
    ),
]


class EngineSpec(ApiModel):
    """The remote Docker engine (what CircleCI calls setup_remote_docker). What may be asked for
    here is bounded by the EngineClass: the platform admin's, not the tenant's, decision."""

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
    class_name: ObjectName | None = Field(
        None,
        description="The EngineClass to run the engine with; the default class when unset.",
    )
    version: str | None = Field(
        None,
        max_length=16,
        pattern=VERSION_PATTERN,
        description="Docker version; selects the class's versioned engine image (e.g. 27 -> "
        "docker:27-dind). Mutually exclusive with image.",
    )
    image: ImageRef | None = Field(
        None, description="The engine image, overriding version; the class must allow it."
    )
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
    cache_key: CacheKey | None = Field(
        None,
        description="A layer cache to build with (say, the repository's name): the engine's "
        "/var/lib/docker is a volume kept for this key between BuildJobs and DockerEngines of "
        "this namespace and class, used by one engine at a time. The class must have a cache.",
    )


Port = Annotated[int, Field(ge=1, le=65535)]


class PublishedPorts(ApiModel):
    """Ports that containers publish on the engine (`docker run -p`), opened to this job's pod
    and no other: what testcontainers and `docker run -p` tests need."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "(has(self.ephemeral) && self.ephemeral) || "
                    "(has(self.ports) && size(self.ports) > 0)",
                    "publishedPorts opens nothing: set ephemeral: true or list ports",
                )
            ]
        }
    )
    ephemeral: bool = Field(
        False,
        description=f"Docker's ephemeral range, {names.EPHEMERAL_PORTS[0]}-"
        f"{names.EPHEMERAL_PORTS[1]}: the host ports `docker run -P`, "
        "`-p CONTAINER_PORT` and testcontainers get.",
    )
    ports: list[Port] | None = Field(
        None,
        max_length=32,
        json_schema_extra={
            "x-kubernetes-list-type": "set",
            "x-kubernetes-validations": [
                cel(
                    f"!self.exists(p, p == {names.ENGINE_PORT} || p == {names.ENGINE_PLAIN_PORT})",
                    f"{names.ENGINE_PORT} and {names.ENGINE_PLAIN_PORT} are the engine's own "
                    "API, never published",
                )
            ],
        },
        description="Fixed host ports (`docker run -p 8080:80` publishes 8080).",
    )

    @model_validator(mode="after")
    def _opens_something(self) -> "PublishedPorts":
        if not self.ephemeral and not self.ports:
            raise ValueError("publishedPorts opens nothing: set ephemeral: true or list ports")
        if {names.ENGINE_PORT, names.ENGINE_PLAIN_PORT} & set(self.ports or []):
            raise ValueError(
                f"ports: {names.ENGINE_PORT} and {names.ENGINE_PLAIN_PORT} are the engine's own "
                "API, never published"
            )
        return self


class EngineNetworkSpec(ApiModel):
    published_ports: PublishedPorts | None = Field(
        None,
        description="Off unless set: ports containers publish on the engine that the client pod "
        "may reach (its engine's 2376 only, otherwise).",
    )


class NetworkSpec(ApiModel):
    job_egress: Literal["Internet", "None"] = Field(
        "Internet",
        description="Internet: the job pod may reach the internet (never the cluster); None: the "
        "job pod reaches only its engine and DNS. The engine may always pull from the internet.",
    )
    published_ports: PublishedPorts | None = Field(
        None,
        description="Off unless set: ports containers publish on the engine that this job's pod "
        "may reach (its engine's 2376 only, otherwise).",
    )


class DockerEngineSpec(ApiModel):
    """One engine for one pod that already runs (a CI runner's): CircleCI's setup_remote_docker
    as a resource."""

    client_pod: LocalObjectReference = Field(
        description="The pod in this namespace that uses the engine: the only one its policy "
        "admits, and the engine goes when it goes (deleted or finished)."
    )
    engine: EngineSpec = Field(default_factory=EngineSpec, description="The Docker engine.")
    network: EngineNetworkSpec = Field(
        default_factory=EngineNetworkSpec, description="What the client may reach."
    )
    active_deadline_seconds: int | None = Field(
        None,
        ge=1,
        le=86400,
        description="Seconds from start after which the engine is stopped (DeadlineExceeded).",
    )
    ttl_seconds_after_finished: int | None = Field(
        None,
        ge=0,
        le=2592000,
        description="Seconds after the engine ends until its namespace is deleted (default 0: "
        "an engine's namespace holds nothing worth keeping once it stopped).",
    )


class BuildJobSpec(ApiModel):
    job: JobContainer = Field(description="The job container.")
    engine: EngineSpec = Field(
        default_factory=EngineSpec, description="The job's private Docker engine."
    )
    image_pull_secrets: list[LocalObjectReference] | None = Field(
        None,
        max_length=8,
        description="Secrets in this namespace for pulling the job image (the job pod runs here "
        "too).",
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


class CacheStatus(ApiModel):
    key: str | None = Field(None, description="spec.engine.cacheKey.")
    hit: bool | None = Field(
        None, description="Whether the engine started on the key's kept volume (else a new one)."
    )
    discarded: bool | None = Field(
        None,
        description="Whether the kept volume was emptied first: the engine that used it last "
        "did not stop cleanly, so its layers could not be trusted.",
    )
    volume: str | None = Field(None, description="The PersistentVolume holding the cache.")


class EngineStatus(ApiModel):
    endpoint: str | None = Field(None, description="DOCKER_HOST as the job sees it.")
    ready: bool = Field(False, description="Whether the engine answers over mutual TLS.")
    warm: bool | None = Field(
        None, description="Whether the engine was taken from its class's warm pool."
    )


class BuildJobStatus(ApiModel):
    phase: Phase | None = Field(
        None, description="Pending, Provisioning, Running, Succeeded or Failed."
    )
    reason: str | None = Field(None, description="Why the BuildJob is in its phase (CamelCase).")
    message: str | None = Field(None, description="Details for a person.")
    namespace: str | None = Field(None, description="The engine's per-job namespace.")
    engine_class: str | None = Field(None, description="The EngineClass the engine runs with.")
    engine: EngineStatus | None = Field(None, description="The remote engine.")
    cache: CacheStatus | None = Field(None, description="The layer cache (spec.engine.cacheKey).")
    job_pod: str | None = Field(
        None, description="Name of the job pod, in the BuildJob's namespace (kubectl logs NAME)."
    )
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


class DockerEngineStatus(ApiModel):
    phase: Phase | None = Field(
        None,
        description="Pending, Provisioning, Running (ready for the client), Succeeded (the "
        "client ended) or Failed.",
    )
    reason: str | None = Field(None, description="Why the engine is in its phase (CamelCase).")
    message: str | None = Field(None, description="Details for a person.")
    namespace: str | None = Field(None, description="The engine's own namespace.")
    engine_class: str | None = Field(None, description="The EngineClass the engine runs with.")
    engine: EngineStatus | None = Field(None, description="The remote engine.")
    cache: CacheStatus | None = Field(None, description="The layer cache (spec.engine.cacheKey).")
    client_secret: str | None = Field(
        None,
        description="The Secret in this namespace with DOCKER_HOST, DOCKER_TLS_VERIFY, "
        "DOCKER_CERT_PATH and the client's ca.pem, cert.pem and key.pem.",
    )
    start_time: str | None = Field(None, description="When provisioning started.")
    completion_time: str | None = Field(None, description="When the engine ended.")
    duration: str | None = Field(None, description="completionTime - startTime, e.g. 1m12s.")
    cleaned_up: bool | None = Field(
        None, description="True once the engine's namespace was deleted after the TTL."
    )
    observed_generation: int | None = Field(None, description="The generation last acted on.")
    conditions: list[Condition] | None = Field(
        None,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="Ready, Complete and Failed, in the metav1.Condition shape.",
    )


class DockerEngine(ApiModel):
    """The whole object as the operator reads it."""

    spec: DockerEngineSpec = Field(
        json_schema_extra={
            "x-kubernetes-validations": [cel("self == oldSelf", "spec is immutable")]
        },
        description="Which pod the engine serves and what engine it is. Immutable once created.",
    )
    status: DockerEngineStatus | None = Field(None, description="Observed state.")


# Either resource that asks for an engine: what the reconciler, the queue and the builders
# share (a DockerEngine has no job of its own).
EngineRequestSpec = BuildJobSpec | DockerEngineSpec


# -- EngineClass (cluster-scoped, the platform admin's) ---------------------------------------

# A CIDR checked by the API server (CEL's network library); the operator parses it again.
Cidr = Annotated[
    str,
    StringConstraints(max_length=64),
    AfterValidator(lambda v: str(ipaddress.ip_network(v, strict=False))),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": 64,
            "x-kubernetes-validations": [cel("isCIDR(self)", "must be a CIDR such as 10.0.0.0/8")],
        }
    ),
]
# An exact image reference, or a prefix of one ending in "*" (e.g. registry.corp/dind@sha256:*).
ImagePattern = Annotated[
    str, StringConstraints(min_length=1, max_length=512, pattern=r"^[a-zA-Z0-9._/:@-]+\*?$")
]
LabelMap = dict[
    Annotated[str, StringConstraints(max_length=317)],
    Annotated[str, StringConstraints(max_length=63)],
]

# Everything a pod must never reach by default: private, shared (CGNAT), link-local (cloud
# metadata: 169.254.169.254, fd00:ec2::254 and fd20:ce::254 fall in these) and NAT64 ranges,
# which would lead back to private IPv4 addresses. Both families, so a dual-stack cluster's
# pod and service ranges stay closed.
DEFAULT_DENIED_CIDRS = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "fc00::/7",
    "fe80::/10",
)


class VersionedImage(ApiModel):
    repository: Annotated[str, StringConstraints(min_length=1, max_length=255)] = Field(
        pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._/:-]*[a-zA-Z0-9]$",
        description="Image repository; spec.engine.version N selects <repository>:N<tagSuffix>.",
    )
    tag_suffix: str = Field(
        "", max_length=64, pattern=r"^[a-zA-Z0-9_.-]*$", description="Appended to the version."
    )
    versions: list[Annotated[str, StringConstraints(pattern=VERSION_PATTERN)]] | None = Field(
        None, max_length=64, description="The versions a BuildJob may ask for; unset: any."
    )


class AddressPool(ApiModel):
    base: Cidr = Field(description="A range for the engine's own Docker networks.")
    size: int = Field(ge=8, le=30, description="Prefix length of each network cut from base.")


class DaemonPolicy(ApiModel):
    allow_registry_mirrors: bool = Field(
        True, description="Whether a BuildJob may set spec.engine.registryMirrors."
    )
    allow_insecure_registries: bool = Field(
        False, description="Whether a BuildJob may set spec.engine.insecureRegistries."
    )
    registry_mirrors: list[Annotated[str, StringConstraints(max_length=512)]] | None = Field(
        None, max_length=8, description="Mirrors every engine of the class uses."
    )
    mtu: int | None = Field(
        None,
        ge=576,
        le=9216,
        description="dockerd --mtu for every engine; unset: the engine pod's own interface MTU "
        "(an overlay network's MTU is smaller than Docker's default 1500).",
    )
    default_address_pools: list[AddressPool] | None = Field(
        None,
        max_length=8,
        description="dockerd --default-address-pool: ranges for the engine's networks that do "
        "not overlap the cluster's (Docker's defaults are 172.17.0.0/16 and up).",
    )


class ResourceBounds(ApiModel):
    default: Resources | None = Field(
        None, description="The engine pod's resources when a BuildJob gives none."
    )
    max: dict[Literal["cpu", "memory"], Quantity] | None = Field(
        None, description="The most a BuildJob may request or limit for its engine."
    )


class StorageBounds(ApiModel):
    default: Quantity = Field("20Gi", description="Size limit of /var/lib/docker by default.")
    max: Quantity | None = Field(None, description="The most a BuildJob may ask for.")


class LabelSelectorRequirement(ApiModel):
    key: str = Field(max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[Annotated[str, StringConstraints(max_length=63)]] | None = Field(
        None, max_length=64
    )


class LabelSelector(ApiModel):
    match_labels: LabelMap | None = Field(None, max_length=32)
    match_expressions: list[LabelSelectorRequirement] | None = Field(None, max_length=16)


class NetworkPolicyProbe(ApiModel):
    enabled: bool = Field(
        True,
        description="Before the job starts, prove from inside the job pod that a destination "
        "the NetworkPolicies deny is unreachable; if it is reachable the BuildJob ends "
        "Failed/NetworkPolicyNotEnforced.",
    )
    targets: (
        list[
            Annotated[
                str, StringConstraints(max_length=261, pattern=r"^[a-zA-Z0-9.:\[\]-]+:[0-9]+$")
            ]
        ]
        | None
    ) = Field(
        None,
        max_length=4,
        description="host:port destinations that must be unreachable; unset: the API server's "
        "ClusterIP (the kubernetes Service).",
    )


DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class InClusterDestination(ApiModel):
    namespace: Annotated[
        str, StringConstraints(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)
    ] = Field(description="The namespace of the pods.")
    pod_selector: LabelMap = Field(
        min_length=1, max_length=16, description="Labels the pods carry (matchLabels)."
    )
    ports: list[Port] = Field(
        min_length=1, max_length=16, description="TCP ports of those pods the engines may reach."
    )


class WarmPool(ApiModel):
    size: int = Field(
        ge=0,
        le=100,
        description="Engines kept started and idle, each in its own namespace, for BuildJobs "
        "and DockerEngines of the class that ask for nothing the class's defaults do not give.",
    )
    max_idle_seconds: int = Field(
        3600,
        ge=60,
        le=86400,
        description="An idle warm engine older than this is replaced by a new one.",
    )


class LayerCache(ApiModel):
    storage_class_name: ObjectName | None = Field(
        None, description="StorageClass of the cache volumes; unset: the cluster's default."
    )
    size: Quantity = Field("20Gi", description="Size of each cache volume.")
    retention_seconds: int = Field(
        604800,
        ge=60,
        le=31536000,
        description="A cache volume no engine used for this long is deleted.",
    )
    when_busy: Literal["Fresh", "Wait"] = Field(
        "Fresh",
        description="When every volume of the key is in use by another engine: Fresh starts on "
        "a new volume (kept for the key as well), Wait stays Pending (CacheBusy) until one is "
        "free. Two engines never share one: dockerd does not survive that.",
    )


# A Localhost seccomp profile: a path below the kubelet's seccomp directory. No segment starts
# with a dot, so it cannot climb out of it.
SeccompProfilePath = Annotated[
    str,
    StringConstraints(
        max_length=253, pattern=r"^([a-zA-Z0-9_][-a-zA-Z0-9_.]*/)*[a-zA-Z0-9_][-a-zA-Z0-9_.]*$"
    ),
]


SECCOMP_NOT_PRIVILEGED = (
    f"seccompProfile is for isolation {names.ISOLATION_USER_NAMESPACE} or "
    f"{names.ISOLATION_ROOTLESS} only (a privileged engine is unconfined whatever its profile)"
)
# The runtime's default profile refuses the user namespace a Rootless engine makes (it allows
# unshare only with CAP_SYS_ADMIN), and Unconfined is not a baseline pod.
ROOTLESS_NEEDS_SECCOMP = (
    f"isolation {names.ISOLATION_ROOTLESS} needs seccompProfile (a Localhost profile that allows "
    "user namespaces, such as the project's seccomp/user-namespace-engine.json)"
)


class EngineClassSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.seccompProfile) || (has(self.isolation) && "
                    f"self.isolation != '{names.ISOLATION_PRIVILEGED}')",
                    SECCOMP_NOT_PRIVILEGED,
                    field_path=".seccompProfile",
                ),
                cel(
                    "!has(self.isolation) || "
                    f"self.isolation != '{names.ISOLATION_ROOTLESS}' || has(self.seccompProfile)",
                    ROOTLESS_NEEDS_SECCOMP,
                    field_path=".seccompProfile",
                ),
            ]
        }
    )
    image: ImageRef = Field(
        description="The engine image when a BuildJob names neither engine.image nor "
        "engine.version (pin it by digest)."
    )
    versioned_image: VersionedImage | None = Field(
        None, description="Lets BuildJobs choose a version (spec.engine.version); unset: refused."
    )
    allowed_images: list[ImagePattern] | None = Field(
        None,
        max_length=64,
        description="Images a BuildJob may name in spec.engine.image: exact references, or "
        "prefixes ending in '*'. Unset: none but the class's own. Each is run privileged "
        "in the privileged tier: list only images you trust.",
    )
    image_pull_policy: PullPolicy | None = Field(None, description="Pull policy of the engine.")
    isolation: Literal["Privileged", "UserNamespace", "Rootless"] = Field(
        "Privileged",
        description="How an engine is fenced from its node. Privileged: a privileged pod, so "
        "whoever drives the engine (every job does) can become root on the node. "
        "UserNamespace: an unprivileged pod in its own user namespace (hostUsers: false); root "
        "in the engine is an unprivileged uid on the node, and its capabilities hold only in the "
        "pod. Needs nodes with containerd >= 2.0 and runc >= 1.2; in it `docker run "
        "--privileged` is refused and, on cgroup v1 nodes, the engine's containers get no "
        "resource limits of their own (the engine pod's still hold). Rootless: as "
        "UserNamespace, with dockerd rootless in a user namespace of its own inside the pod's "
        "and no added capability, so the engine pod is a Pod Security baseline one; needs "
        "seccompProfile, /dev/net/tun in the engine's container (runtimeClassName) and an engine "
        "image with unshare, perl and pasta.",
    )
    seccomp_profile: SeccompProfilePath | None = Field(
        None,
        description="UserNamespace and Rootless engines: the engine pod's Localhost seccomp "
        "profile, a path under each node's kubelet seccomp directory (the project's "
        "seccomp/user-namespace-engine.json is containerd's default profile for the engine's "
        "capabilities, the kernel keyring answered as absent). Unset: Unconfined (UserNamespace; "
        "Rootless needs one).",
    )
    daemon: DaemonPolicy = Field(
        default_factory=DaemonPolicy, description="dockerd settings and which a BuildJob may set."
    )
    resources: ResourceBounds = Field(
        default_factory=ResourceBounds, description="Engine CPU and memory."
    )
    storage: StorageBounds = Field(
        default_factory=StorageBounds, description="Size of the engine's /var/lib/docker."
    )
    node_selector: LabelMap | None = Field(
        None, max_length=32, description="Node labels an engine pod must match."
    )
    tolerations: list[FreeForm] | None = Field(
        None, max_length=32, description="Tolerations of engine pods (e.g. of builder nodes)."
    )
    affinity: FreeForm | None = Field(None, description="Affinity of engine pods.")
    runtime_class_name: ObjectName | None = Field(
        None, description="RuntimeClass of engine pods (e.g. a sandboxed runtime)."
    )
    priority_class_name: ObjectName | None = Field(
        None, description="PriorityClass of engine pods."
    )
    namespace_selector: LabelSelector | None = Field(
        None, description="Namespaces whose BuildJobs may use the class; unset: every namespace."
    )
    max_engines_per_namespace: int = Field(
        0,
        ge=0,
        le=10000,
        description="Engines of this class one namespace may run at once; the rest wait as "
        "Pending/Queued. 0: no limit.",
    )
    denied_cidrs: list[Cidr] = Field(
        default_factory=lambda: list(DEFAULT_DENIED_CIDRS),
        max_length=64,
        description="Egress to these ranges is denied to engine and job pods. They must cover the "
        "cluster's pod and service ranges and the metadata addresses, in both IP families. "
        "Unset: every private, shared, link-local and NAT64 range of IPv4 and IPv6.",
    )
    allowed_destinations: list[InClusterDestination] | None = Field(
        None,
        max_length=16,
        description="In-cluster pods every engine of the class may reach although deniedCidrs "
        "covers them: a registry, a registry mirror, a build cache. By pod (reached directly or "
        "through its Service), never by address; the engines only, not the job pods.",
    )
    network_policy_probe: NetworkPolicyProbe = Field(
        default_factory=NetworkPolicyProbe, description="Check that NetworkPolicy is enforced."
    )
    cache: LayerCache | None = Field(
        None,
        description="Layer caches: BuildJobs and DockerEngines that name a spec.engine.cacheKey "
        "get /var/lib/docker on a volume kept for that key. Unset: refused.",
    )
    warm_pool: WarmPool | None = Field(
        None,
        description="Engines started ahead of demand: a BuildJob or DockerEngine claims one "
        "instead of waiting for a new engine. Each is handed out once, with a client "
        "certificate issued at the claim. Unset: none.",
    )

    @model_validator(mode="after")
    def _seccomp_profile_fits_isolation(self) -> "EngineClassSpec":
        if self.seccomp_profile and self.isolation == names.ISOLATION_PRIVILEGED:
            raise ValueError(SECCOMP_NOT_PRIVILEGED)
        if not self.seccomp_profile and self.isolation == names.ISOLATION_ROOTLESS:
            raise ValueError(ROOTLESS_NEEDS_SECCOMP)
        return self


class WarmPoolStatus(ApiModel):
    size: int = Field(0, description="The pool's size as the class asks for it.")
    ready: int = Field(0, description="Warm engines ready to be claimed.")
    starting: int = Field(0, description="Warm engines starting.")
    claims: int = Field(0, description="Warm engines claimed since the operator started.")
    misses: int = Field(
        0, description="Engines of the class started cold since the operator started."
    )
    oldest_idle_seconds: int | None = Field(
        None, description="Age of the oldest warm engine ready to be claimed."
    )


class EngineClassStatus(ApiModel):
    warm_pool: WarmPoolStatus | None = Field(None, description="The class's warm pool.")


class EngineClass(ApiModel):
    """An EngineClass as the operator reads it."""

    spec: EngineClassSpec = Field(description="What the class's engines may be and do.")
    status: EngineClassStatus | None = Field(None, description="Observed state.")
