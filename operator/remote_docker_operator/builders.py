"""Pure functions that return every child object of a BuildJob as a manifest (a dict).

This module is the one place that knows the shape of each child: the reconciler only creates
what these return, and the unit tests check them as data.
"""

import ipaddress
from dataclasses import dataclass
from typing import Any

from . import names
from .certs import TLSBundle
from .config import Settings
from .models import BuildJobSpec, Resources

Manifest = dict[str, Any]

# Where CoreDNS runs in kubeadm-style clusters (kind included); the only DNS server pods may use.
DNS_PEER: Manifest = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
}
SERVER_CERT_DIR = "/certs/server"
DOCKER_CONFIG_DIR = "/docker-config"


@dataclass(frozen=True)
class Target:
    """A BuildJob as the builders need it: who it is, what it asks for, where it lives."""

    name: str
    namespace: str
    uid: str
    spec: BuildJobSpec
    settings: Settings

    @property
    def job_namespace(self) -> str:
        return names.job_namespace(self.settings.namespace_prefix, self.uid)

    @property
    def engine_host(self) -> str:
        return f"{names.ENGINE_SERVICE}.{self.job_namespace}.svc"

    @property
    def docker_host(self) -> str:
        return f"tcp://{self.engine_host}:{names.ENGINE_PORT}"

    @property
    def engine_image(self) -> str:
        engine = self.spec.engine
        if engine.image:
            return engine.image
        version = engine.version or self.settings.engine_version
        settings = self.settings
        return f"{settings.engine_image_repository}:{version}{settings.engine_image_suffix}"

    @property
    def deadline_seconds(self) -> int:
        return self.spec.active_deadline_seconds or self.settings.default_deadline_seconds

    @property
    def ttl_seconds(self) -> int:
        ttl = self.spec.ttl_seconds_after_finished
        return self.settings.default_ttl_seconds if ttl is None else ttl


def owner_labels(t: Target, component: str | None = None) -> dict[str, str]:
    labels = {
        names.LABEL_MANAGED_BY: names.APP,
        names.LABEL_OWNER_NAMESPACE: t.namespace,
        names.LABEL_OWNER_NAME: t.name,
        names.LABEL_OWNER_UID: t.uid,
    }
    if component:
        labels[names.LABEL_COMPONENT] = component
    return labels


def _meta(t: Target, name: str, component: str | None = None) -> Manifest:
    return {"name": name, "namespace": t.job_namespace, "labels": owner_labels(t, component)}


def build_namespace(t: Target) -> Manifest:
    labels = owner_labels(t)
    # dind needs a privileged pod; the job pod itself stays within "restricted" but runAsNonRoot.
    labels["pod-security.kubernetes.io/enforce"] = "privileged"
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": t.job_namespace, "labels": labels},
    }


# -- network policies -------------------------------------------------------------------------


def _internet_peers(denied_cidrs: list[str]) -> list[Manifest]:
    """ipBlocks for "anywhere but the denied ranges", one per IP family."""
    peers = []
    for everything in ("0.0.0.0/0", "::/0"):
        family = ipaddress.ip_network(everything).version
        except_ = [c for c in denied_cidrs if ipaddress.ip_network(c).version == family]
        block: Manifest = {"cidr": everything}
        if except_:
            block["except"] = except_
        peers.append({"ipBlock": block})
    return peers


def _component_selector(component: str) -> Manifest:
    return {"matchLabels": {names.LABEL_COMPONENT: component}}


_ENGINE_PORT = [{"protocol": "TCP", "port": names.ENGINE_PORT}]
_DNS_RULE: Manifest = {
    "to": [DNS_PEER],
    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
}


def build_network_policies(t: Target) -> list[Manifest]:
    """Default deny; job -> engine on 2376 only; DNS; internet egress minus the denied CIDRs."""
    internet = {"to": _internet_peers(t.settings.denied_cidrs)}

    def policy(name: str, spec: Manifest) -> Manifest:
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(t, name),
            "spec": spec,
        }

    job_egress = [
        {
            "to": [{"podSelector": _component_selector(names.COMPONENT_ENGINE)}],
            "ports": _ENGINE_PORT,
        },
        _DNS_RULE,
    ]
    if t.spec.network.job_egress == "Internet":
        job_egress.append(internet)
    return [
        policy(
            names.POLICY_DEFAULT_DENY, {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
        ),
        policy(
            names.POLICY_ENGINE,
            {
                "podSelector": _component_selector(names.COMPONENT_ENGINE),
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {
                        "from": [{"podSelector": _component_selector(names.COMPONENT_JOB)}],
                        "ports": _ENGINE_PORT,
                    }
                ],
                "egress": [_DNS_RULE, internet],
            },
        ),
        policy(
            names.POLICY_JOB,
            {
                "podSelector": _component_selector(names.COMPONENT_JOB),
                "policyTypes": ["Ingress", "Egress"],
                "egress": job_egress,
            },
        ),
    ]


# -- secrets ----------------------------------------------------------------------------------


def engine_dns_names(t: Target) -> list[str]:
    """Every name the job may use for its engine, plus localhost for the engine's own probe."""
    service = names.ENGINE_SERVICE
    ns = t.job_namespace
    return [
        f"{service}.{ns}.svc",
        f"{service}.{ns}.svc.{t.settings.cluster_domain}",
        f"{service}.{ns}",
        service,
        "localhost",
    ]


def _tls_secret(
    t: Target, name: str, component: str, tls: TLSBundle, data: dict[str, str]
) -> Manifest:
    meta = _meta(t, name, component)
    meta["annotations"] = {names.ANNOTATION_CA_FINGERPRINT: tls.ca_fingerprint}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "Opaque",
        "stringData": data,
    }


def build_engine_tls_secret(t: Target, tls: TLSBundle) -> Manifest:
    """The engine's server certificate and key, and the CA to verify clients (never its key)."""
    return _tls_secret(
        t,
        names.ENGINE_TLS_SECRET,
        names.COMPONENT_ENGINE,
        tls,
        {
            "ca.pem": tls.ca_cert,
            "cert.pem": tls.server_cert,
            "key.pem": tls.server_key,
        },
    )


def build_client_secret(t: Target, tls: TLSBundle) -> Manifest:
    """What the job needs to reach its engine: the docker CLI's environment and client certs."""
    return _tls_secret(
        t,
        names.CLIENT_SECRET,
        names.COMPONENT_JOB,
        tls,
        {
            "DOCKER_HOST": t.docker_host,
            "DOCKER_TLS_VERIFY": "1",
            "DOCKER_CERT_PATH": names.CERT_DIR,
            "ca.pem": tls.ca_cert,
            "cert.pem": tls.client_cert,
            "key.pem": tls.client_key,
        },
    )


def build_secret_copy(t: Target, source: Manifest, name: str) -> Manifest:
    """A copy of a user's secret (pull secret or docker config) inside the job namespace."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(t, name),
        "type": source.get("type", "Opaque"),
        "data": dict(source.get("data") or {}),
    }


# -- service and pods -------------------------------------------------------------------------


def build_engine_service(t: Target) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(t, names.ENGINE_SERVICE, names.COMPONENT_ENGINE),
        "spec": {
            "type": "ClusterIP",
            "selector": {
                names.LABEL_OWNER_UID: t.uid,
                names.LABEL_COMPONENT: names.COMPONENT_ENGINE,
            },
            "ports": [
                {
                    "name": "docker-tls",
                    "protocol": "TCP",
                    "port": names.ENGINE_PORT,
                    "targetPort": names.ENGINE_PORT,
                }
            ],
        },
    }


def _resources(resources: Resources | None) -> Manifest:
    return resources.model_dump(exclude_none=True) if resources else {}


def dockerd_args(t: Target) -> list[str]:
    """dockerd flags given in full, so the official docker:NN-dind image and a plain Debian
    dockerd behave alike: TLS on 2376 only, never the unauthenticated 2375."""
    engine = t.spec.engine
    args = [
        f"--host=tcp://0.0.0.0:{names.ENGINE_PORT}",
        "--tlsverify",
        f"--tlscacert={SERVER_CERT_DIR}/ca.pem",
        f"--tlscert={SERVER_CERT_DIR}/cert.pem",
        f"--tlskey={SERVER_CERT_DIR}/key.pem",
    ]
    args += [f"--registry-mirror={m}" for m in engine.registry_mirrors or []]
    args += [f"--insecure-registry={r}" for r in engine.insecure_registries or []]
    if engine.mtu:
        args.append(f"--mtu={engine.mtu}")
    return args


# The official image wraps dockerd in its `dind` script (cgroup and mount set-up); Debian's
# dockerd has no such script and needs none on the nodes where it runs.
_DIND_LAUNCHER = 'if command -v dind >/dev/null; then exec dind dockerd "$@"; fi; exec dockerd "$@"'

# The engine's own server keypair doubles as the probe's client keypair (its certificate carries
# clientAuth too), so the probe proves a full mutual-TLS round trip without the job's keys.
_READY_COMMAND = [
    "docker",
    f"--host=tcp://localhost:{names.ENGINE_PORT}",
    "--tlsverify",
    f"--tlscacert={SERVER_CERT_DIR}/ca.pem",
    f"--tlscert={SERVER_CERT_DIR}/cert.pem",
    f"--tlskey={SERVER_CERT_DIR}/key.pem",
    "version",
    "--format",
    "{{.Server.Version}}",
]


def build_engine_pod(t: Target) -> Manifest:
    engine = t.spec.engine
    container: Manifest = {
        "name": names.ENGINE_CONTAINER,
        "image": t.engine_image,
        "command": ["sh", "-c", _DIND_LAUNCHER, "dockerd"],
        "args": dockerd_args(t),
        # Keep the official entrypoint's certificate generation out of the way.
        "env": [{"name": "DOCKER_TLS_CERTDIR", "value": ""}],
        "ports": [{"name": "docker-tls", "containerPort": names.ENGINE_PORT, "protocol": "TCP"}],
        "securityContext": {"privileged": True},
        "readinessProbe": {
            "exec": {"command": _READY_COMMAND},
            "periodSeconds": 1,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "resources": _resources(engine.resources),
        "volumeMounts": [
            {"name": "docker-data", "mountPath": "/var/lib/docker"},
            {"name": "engine-tls", "mountPath": SERVER_CERT_DIR, "readOnly": True},
        ],
    }
    if engine.image_pull_policy:
        container["imagePullPolicy"] = engine.image_pull_policy
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta(t, names.ENGINE_POD, names.COMPONENT_ENGINE),
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 10,
            "containers": [container],
            "volumes": [
                {
                    "name": "docker-data",
                    "emptyDir": {"sizeLimit": engine.storage or t.settings.engine_storage},
                },
                {
                    "name": "engine-tls",
                    "secret": {"secretName": names.ENGINE_TLS_SECRET, "defaultMode": 0o400},
                },
            ],
        },
    }


def _client_env() -> list[Manifest]:
    return [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": names.CLIENT_SECRET, "key": key}}}
        for key in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")
    ]


UNPRIVILEGED: Manifest = {
    "privileged": False,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
# The job pod starts with the engine, so this covers pulling the engine image as well; an
# engine that cannot start fails the BuildJob long before (EngineFailed).
WAIT_FOR_ENGINE_SECONDS = 600


def _wait_for_engine(t: Target) -> Manifest:
    """An init container that holds the job back until a mutual-TLS call to the engine succeeds
    from inside the job pod: the engine being Ready does not mean this new pod's traffic is
    already allowed (a NetworkPolicy controller programs a new pod's rules a moment after it
    starts) or that its DNS works. It runs the engine image, which has the docker CLI."""
    script = (
        f"for i in $(seq {WAIT_FOR_ENGINE_SECONDS * 2}); do "
        "docker version >/dev/null 2>&1 && exit 0; sleep 0.5; done; "
        'echo "engine $DOCKER_HOST unreachable over mutual TLS" >&2; exit 1'
    )
    container: Manifest = {
        "name": names.WAIT_CONTAINER,
        "image": t.engine_image,
        "command": ["sh", "-c", script],
        "env": _client_env(),
        "volumeMounts": [{"name": "docker-client", "mountPath": names.CERT_DIR, "readOnly": True}],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
        "securityContext": UNPRIVILEGED,
    }
    if t.spec.engine.image_pull_policy:
        container["imagePullPolicy"] = t.spec.engine.image_pull_policy
    return container


def build_job_pod(t: Target) -> Manifest:
    job = t.spec.job
    # The user's variables first, so spec.job.env[i] is the pod's env[i] in API errors; ours
    # last, so they win over a user's variable of the same name.
    env = [e.model_dump(by_alias=True, exclude_none=True) for e in job.env or []]
    env += _client_env()
    mounts: list[Manifest] = [
        {"name": "docker-client", "mountPath": names.CERT_DIR, "readOnly": True}
    ]
    volumes: list[Manifest] = [
        {
            "name": "docker-client",
            "secret": {
                "secretName": names.CLIENT_SECRET,
                "items": [{"key": k, "path": k} for k in ("ca.pem", "cert.pem", "key.pem")],
                "defaultMode": 0o444,
            },
        }
    ]
    if t.spec.docker_config_secret:
        env.append({"name": "DOCKER_CONFIG", "value": DOCKER_CONFIG_DIR})
        mounts.append({"name": "docker-config", "mountPath": DOCKER_CONFIG_DIR, "readOnly": True})
        volumes.append(
            {
                "name": "docker-config",
                "secret": {
                    "secretName": names.DOCKER_CONFIG_SECRET,
                    "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                },
            }
        )
    container: Manifest = {
        "name": names.JOB_CONTAINER,
        "image": job.image,
        "env": env,
        "resources": _resources(job.resources),
        "volumeMounts": mounts,
        "securityContext": UNPRIVILEGED,
    }
    optional = {
        "imagePullPolicy": job.image_pull_policy,
        "command": job.command,
        "args": job.args,
        "workingDir": job.working_dir,
        "envFrom": [e.model_dump(by_alias=True, exclude_none=True) for e in job.env_from]
        if job.env_from
        else None,
    }
    container.update({k: v for k, v in optional.items() if v is not None})
    spec: Manifest = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "initContainers": [_wait_for_engine(t)],
        "containers": [container],
        "volumes": volumes,
    }
    if t.spec.image_pull_secrets:
        spec["imagePullSecrets"] = [
            {"name": names.pull_secret_copy(ref.name)} for ref in t.spec.image_pull_secrets
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta(t, names.JOB_POD, names.COMPONENT_JOB),
        "spec": spec,
    }
