"""Every name the operator gives to things: the API, labels, child objects.

One place, so that builders, the reconciler, the sweep and the tests agree.
"""

import hashlib

GROUP = "remotedocker.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "BuildJob"
PLURAL = "buildjobs"
SINGULAR = "buildjob"
SHORT_NAMES = ("bj",)

# Kopf adds this to every BuildJob and removes it once the per-job namespace is deleted.
FINALIZER = f"{GROUP}/cleanup"

APP = "remote-docker-operator"

# Labels on every child object; the per-job namespace is cluster-scoped, so these labels (not an
# ownerReference) are what links it back to its BuildJob.
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_OWNER_NAMESPACE = f"{GROUP}/buildjob-namespace"
LABEL_OWNER_NAME = f"{GROUP}/buildjob-name"
LABEL_OWNER_UID = f"{GROUP}/buildjob-uid"
# Annotation on both TLS secrets: they belong together only when their CA fingerprints match.
ANNOTATION_CA_FINGERPRINT = f"{GROUP}/ca-fingerprint"

COMPONENT_ENGINE = "engine"
COMPONENT_JOB = "job"

# Child objects inside the per-job namespace. Fixed names make every create idempotent.
ENGINE_POD = "engine"
JOB_POD = "job"
ENGINE_SERVICE = "engine"
ENGINE_TLS_SECRET = "engine-tls"
CLIENT_SECRET = "docker-client"
DOCKER_CONFIG_SECRET = "docker-config"
POLICY_DEFAULT_DENY = "default-deny"
POLICY_ENGINE = "engine"
POLICY_JOB = "job"
JOB_CONTAINER = "job"
ENGINE_CONTAINER = "dockerd"
WAIT_CONTAINER = "wait-for-engine"

ENGINE_PORT = 2376
CERT_DIR = "/certs/client"


def job_namespace(prefix: str, uid: str) -> str:
    """The per-job namespace: derived from the BuildJob's uid, so a BuildJob recreated under
    the same name never collides with its predecessor's namespace that is still terminating."""
    return f"{prefix}{hashlib.sha256(uid.encode()).hexdigest()[:12]}"


def pull_secret_copy(name: str) -> str:
    """Name of the copy of a user's image pull secret inside the job namespace."""
    return f"pull-{name}"
