"""Every name the operator gives to things: the API, labels, child objects.

One place, so that builders, the reconciler, the sweep and the tests agree.
"""

import hashlib
from typing import Any

GROUP = "remotedocker.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "BuildJob"
PLURAL = "buildjobs"
SINGULAR = "buildjob"
SHORT_NAMES = ("bj",)
# One engine for a pod that already runs (a CI runner's), rather than for a job of our own.
DOCKER_ENGINE_KIND = "DockerEngine"
DOCKER_ENGINE_PLURAL = "dockerengines"
DOCKER_ENGINE_SHORT_NAMES = ("de",)
CLASS_KIND = "EngineClass"
CLASS_PLURAL = "engineclasses"
CLASS_SHORT_NAMES = ("ec",)
# The class a BuildJob gets when it names none, marked as StorageClass marks its default.
ANNOTATION_DEFAULT_CLASS = "engineclass.remotedocker.dev/is-default-class"

# Earlier builds of the operator put this finalizer on every BuildJob; this one releases it
# when such a BuildJob is deleted. It writes none: a BuildJob's deletion event (or, when that
# was missed, the orphan sweep) brings its namespace down.
LEGACY_FINALIZER = f"{GROUP}/cleanup"

APP = "remote-docker-operator"

# The coordination.k8s.io Lease whose holder is the one replica that acts (leader.py); the chart
# names it after the release.
LEASE_NAME = APP
LEASE_API_VERSION = "coordination.k8s.io/v1"

# Labels on every child object. The per-job namespace is cluster-scoped and the engine's side
# lives there, so these labels (not an ownerReference) are what links it back to its BuildJob;
# the job's side, in the BuildJob's own namespace, has an ownerReference as well.
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_OWNER_NAMESPACE = f"{GROUP}/buildjob-namespace"
LABEL_OWNER_NAME = f"{GROUP}/buildjob-name"
LABEL_OWNER_UID = f"{GROUP}/buildjob-uid"
LABEL_ENGINE_CLASS = f"{GROUP}/engine-class"
# The kind of the owner the labels above name, on a DockerEngine's children only (absent: a
# BuildJob, as on every child made before DockerEngine existed).
LABEL_OWNER_KIND = f"{GROUP}/owner-kind"
# Put on a DockerEngine's client pod, one per engine (the key ends in the hash of its uid): the
# engine's NetworkPolicy admits pods with it. A pod may be the client of several engines.
CLIENT_LABEL_PREFIX = f"client.{GROUP}/"
# On a pod: "give me an engine" (the admission webhook, webhook.py); its value is the EngineClass,
# empty for the default one. A label, not an annotation: the webhook's objectSelector sees only
# labels, so the API server never calls the webhook (nor waits on it) for any other pod.
LABEL_ENGINE_REQUEST = f"{GROUP}/engine"
# Put on such a pod by the webhook: the DockerEngine it made for it.
ANNOTATION_DOCKER_ENGINE = f"{GROUP}/dockerengine"
# On a warm engine's namespace (pool.py), for good: the id it was started under, whose hash its
# name ends in. Until claimed its owner labels name its EngineClass (LABEL_OWNER_KIND) and this
# id as the owner's uid; the claim relabels them to the BuildJob's or DockerEngine's.
LABEL_WARM_ENGINE = f"{GROUP}/warm-engine"
# Annotation on both TLS secrets: they belong together only when their CA fingerprints match.
ANNOTATION_CA_FINGERPRINT = f"{GROUP}/ca-fingerprint"
# On a ServiceAccount: BuildJobs of its namespace may run their job pod as it
# (spec.job.serviceAccountName). The namespace's owner opts in per account, as GitLab's runner
# admin allows overwriting the ServiceAccount.
ANNOTATION_JOB_ACCOUNT = f"{GROUP}/buildjob-account"
# A hash of the manifest a child was built from (builders.stamped).
ANNOTATION_BUILT_FROM = f"{GROUP}/built-from"

# Layer caches (cache.py): a PersistentVolume kept for one (class, namespace, cacheKey), bound in
# turn to a claim of this name in the job namespace of each engine that uses it. The label's value
# is cache_id(); the annotations say the key as given, when it was last used, and how long an
# unused one is kept.
CACHE_CLAIM = "docker-cache"
LABEL_CACHE = f"{GROUP}/cache"
ANNOTATION_CACHE_KEY = f"{GROUP}/cache-key"
ANNOTATION_LAST_USED = f"{GROUP}/last-used"
ANNOTATION_RETENTION = f"{GROUP}/retention-seconds"
# The engine pod's init container that empties a cache the previous engine did not stop cleanly
# on, and the file on the volume that says an engine is (or was, until it stopped) using it.
CACHE_CHECK_CONTAINER = "cache-check"
CACHE_MARKER = ".remote-docker-in-use"

COMPONENT_ENGINE = "engine"
COMPONENT_JOB = "job"
COMPONENT_CLIENT = "client"  # a DockerEngine's client Secret, beside its client pod

# Child objects inside the per-job namespace. Fixed names make every create idempotent.
ENGINE_POD = "engine"
ENGINE_SERVICE = "engine"
ENGINE_TLS_SECRET = "engine-tls"
POLICY_DEFAULT_DENY = "default-deny"
POLICY_ENGINE = "engine"
QUOTA = "engine-quota"
LIMIT_RANGE = "engine-limits"
JOB_CONTAINER = "job"
ENGINE_CONTAINER = "dockerd"
# EngineClass spec.isolation: the privileged tier, the tier whose engine pod runs in its own user
# namespace...
ISOLATION_PRIVILEGED = "Privileged"
ISOLATION_USER_NAMESPACE = "UserNamespace"
# ... and the tier whose dockerd is rootless in a user namespace nested in the pod's: no added
# capability, so its pod is a baseline one.
ISOLATION_ROOTLESS = "Rootless"
# Where a Rootless engine's container finds the tun device its network needs (pasta).
TUN_DEVICE = "/dev/net/tun"
WAIT_CONTAINER = "wait-for-engine"
# A job pod whose command is known waits for its engine in the job container itself, behind the
# gate (gate/main.go): this init container copies it from the wait image into the volume.
GATE_CONTAINER = "install-gate"
GATE_VOLUME = "remote-docker-gate"
GATE_DIR = "/remote-docker-gate"
GATE_BINARY = "remote-docker-gate"
GATE_IN_IMAGE = f"/usr/local/bin/{GATE_BINARY}"
# How the gate's own words begin (its termination log), as told from the job's.
GATE_MARK = f"{GATE_BINARY}: "
# The webhook's init container in a client pod, and the volume with its client certificates.
CLIENT_WAIT_CONTAINER = "remote-docker-wait"
CLIENT_CERT_VOLUME = "remote-docker-client"

ENGINE_PORT = 2376
ENGINE_PLAIN_PORT = 2375  # dockerd's unauthenticated port: never listened on, never published
# Docker's ephemeral host ports (the engine's ip_local_port_range): what `docker run -P` and
# testcontainers get; opened to the job by spec.network.publishedPorts.ephemeral.
EPHEMERAL_PORTS = (32768, 60999)
CERT_DIR = "/certs/client"


def uid_hash(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()[:12]


def job_namespace(prefix: str, uid: str) -> str:
    """The per-job namespace: derived from the BuildJob's uid, so a BuildJob recreated under
    the same name never collides with its predecessor's namespace that is still terminating."""
    return f"{prefix}{uid_hash(uid)}"


def owns_namespace(namespace: dict[str, Any], uid: str) -> bool:
    """Whether a namespace is the operator's job namespace of the BuildJob with this uid: its
    name ends in the uid's hash (a claimed warm engine's: its warm id's) and it carries the
    operator's labels for that uid. Labels alone could be copied from any job namespace onto
    any other; the name binds them to the uid."""
    meta = namespace.get("metadata") or {}
    labels = meta.get("labels") or {}
    # A warm engine's namespace was named before its owner existed: after the id it started
    # under, which its owner labels named until the claim.
    named_after = labels.get(LABEL_WARM_ENGINE) or uid
    return (
        str(meta.get("name", "")).endswith(uid_hash(named_after))
        and labels.get(LABEL_MANAGED_BY) == APP
        and labels.get(LABEL_OWNER_UID) == uid
    )


# The job's side lives in the BuildJob's own namespace, named after the BuildJob (unique there),
# so its owner reads the log with `kubectl logs NAME` and its env refers to their own Secrets.
# JOB_POD is the job pod's role, the key it is known by beside ENGINE_POD.
JOB_POD = "job"


def job_pod(buildjob: str) -> str:
    return buildjob


def client_secret(owner: str, kind: str = KIND) -> str:
    """DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH and the client certificate: a
    DockerEngine's named apart from a BuildJob's, as both kinds may share a name in one
    namespace."""
    if kind == DOCKER_ENGINE_KIND:
        return f"{owner}-dockerengine"
    return f"{owner}-docker"


def pod_engine(pod: str) -> str:
    """The DockerEngine the webhook makes for a pod: named after it, within the 63 characters a
    DockerEngine's name may have (it is a label value), unique by a hash when cut."""
    if len(pod) <= 63:
        return pod
    return pod[:50].rstrip("-.") + "-" + hashlib.sha256(pod.encode()).hexdigest()[:12]


def cache_id(class_name: str, namespace: str, key: str) -> str:
    """The cache a key names: per class and namespace, so one tenant's key never reaches
    another's layers."""
    return hashlib.sha256(f"{class_name}\n{namespace}\n{key}".encode()).hexdigest()[:16]


def job_policy(buildjob: str) -> str:
    return f"{buildjob}-job"


def client_label(uid: str) -> str:
    """The label key on a DockerEngine's client pod (CLIENT_LABEL_PREFIX)."""
    return CLIENT_LABEL_PREFIX + uid_hash(uid)


def owner_kind(labels: dict[str, str]) -> str:
    """The kind of the owner a child's labels name."""
    return labels.get(LABEL_OWNER_KIND, KIND)
