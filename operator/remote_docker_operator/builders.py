"""Pure functions that return every child object of a BuildJob or DockerEngine as a manifest.

This module is the one place that knows the shape of each child: the reconciler only creates
what these return, and the unit tests check them as data.
"""

import hashlib
import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from . import names
from .cache import Volume
from .certs import Issued
from .classes import Engine
from .config import Settings
from .models import BuildJobSpec, DockerEngineSpec, EngineRequestSpec

Manifest = dict[str, Any]

# Where CoreDNS runs in kubeadm-style clusters (kind included); the only DNS server pods may use.
DNS_PEER: Manifest = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
}
SERVER_CERT_DIR = "/certs/server"
POD_DEADLINE_MARGIN_SECONDS = 120
DOCKER_CONFIG_DIR = "/docker-config"


@dataclass(frozen=True)
class Target:
    """A BuildJob or DockerEngine as the builders need it: who it is, what it asks for, where
    it lives, and the engine its class gives it."""

    name: str
    namespace: str
    uid: str
    spec: EngineRequestSpec
    settings: Settings
    job_namespace: str
    engine: Engine
    kind: str = names.KIND
    # The id a warm engine was started under (its namespace is named after it): set on a warm
    # engine's own Target (kind EngineClass, uid the id) and on the Target that claimed it.
    warm_id: str | None = None

    @property
    def idle(self) -> bool:
        """A warm engine not claimed yet: nobody's, so nobody may reach it."""
        return self.kind == names.CLASS_KIND

    @property
    def job_spec(self) -> BuildJobSpec:
        """A BuildJob's spec: only a BuildJob has a job pod and its fence."""
        assert isinstance(self.spec, BuildJobSpec), f"a {self.kind} has no job pod"
        return self.spec

    @property
    def client_secret(self) -> str:
        return names.client_secret(self.name, self.kind)

    @property
    def engine_host(self) -> str:
        return f"{names.ENGINE_SERVICE}.{self.job_namespace}.svc"

    @property
    def docker_host(self) -> str:
        return f"tcp://{self.engine_host}:{names.ENGINE_PORT}"

    @property
    def deadline_seconds(self) -> int:
        return deadline_seconds(self.spec, self.settings)

    @property
    def pod_deadline_seconds(self) -> int:
        """The pods' own activeDeadlineSeconds: the kubelet ends them even while the operator
        is down. A margin past the BuildJob's deadline, so the operator normally ends them
        first and reports why."""
        return self.deadline_seconds + POD_DEADLINE_MARGIN_SECONDS

    @property
    def ttl_seconds(self) -> int:
        return ttl_seconds(self.spec, self.settings)


def warm_target(
    class_name: str, warm_id: str, engine: Engine, settings: Settings, prefix: str
) -> Target:
    """A warm engine of the class: owned by the class, under its warm id, until claimed."""
    spec = DockerEngineSpec.model_validate({"clientPod": {"name": "none"}})
    namespace = names.job_namespace(prefix, warm_id)
    return Target(
        class_name, "", warm_id, spec, settings, namespace, engine, names.CLASS_KIND, warm_id
    )


def deadline_seconds(spec: EngineRequestSpec | None, settings: Settings) -> int:
    """The activeDeadlineSeconds asked for, else the operator's default."""
    given = spec.active_deadline_seconds if spec is not None else None
    return given or settings.default_deadline_seconds


def ttl_seconds(spec: EngineRequestSpec, settings: Settings) -> int:
    """ttlSecondsAfterFinished (0 included), else the operator's default for a BuildJob (whose
    finished job pod keeps its log until then) and 0 for a DockerEngine (nothing to read)."""
    ttl = spec.ttl_seconds_after_finished
    if ttl is not None:
        return ttl
    return settings.default_ttl_seconds if isinstance(spec, BuildJobSpec) else 0


def owner(namespace: str, name: str, uid: str, kind: str) -> dict[str, str]:
    """The labels that name a child's owner (a BuildJob's children carry no kind label, as
    before DockerEngines existed)."""
    labels = {
        names.LABEL_OWNER_NAMESPACE: namespace,
        names.LABEL_OWNER_NAME: name,
        names.LABEL_OWNER_UID: uid,
    }
    if kind != names.KIND:
        labels[names.LABEL_OWNER_KIND] = kind
    return labels


def owner_labels(t: Target, component: str | None = None) -> dict[str, str]:
    labels = {names.LABEL_MANAGED_BY: names.APP, **owner(t.namespace, t.name, t.uid, t.kind)}
    if component:
        labels[names.LABEL_COMPONENT] = component
    return labels


def _meta(t: Target, name: str, component: str | None = None) -> Manifest:
    return {"name": name, "namespace": t.job_namespace, "labels": owner_labels(t, component)}


def _tenant_meta(t: Target, name: str) -> Manifest:
    """The job's side (a DockerEngine's client Secret), in the owner's own namespace: owned by
    it, so the garbage collector removes it with the owner even while no operator runs."""
    component = (
        names.COMPONENT_CLIENT if t.kind == names.DOCKER_ENGINE_KIND else names.COMPONENT_JOB
    )
    return {
        "name": name,
        "namespace": t.namespace,
        "labels": owner_labels(t, component),
        "ownerReferences": [
            {
                "apiVersion": names.API_VERSION,
                "kind": t.kind,
                "name": t.name,
                "uid": t.uid,
                "controller": True,
            }
        ],
    }


def stamped(manifest: Manifest) -> Manifest:
    """The manifest, annotated with a hash of itself: a child carries what it was built from,
    so the reconciler sees when what exists is no longer what the operator would build (its
    content edited, or an operator upgrade building it differently)."""
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
    meta = manifest["metadata"]
    meta["annotations"] = {**meta.get("annotations", {}), names.ANNOTATION_BUILT_FROM: digest}
    return manifest


def build_namespace(t: Target) -> Manifest:
    labels = owner_labels(t)
    labels[names.LABEL_ENGINE_CLASS] = t.engine.class_name
    if t.warm_id:
        labels[names.LABEL_WARM_ENGINE] = t.warm_id
    # The engine is all this namespace holds. Only a Rootless one is a baseline pod: the others
    # are privileged, or (UserNamespace) have capabilities baseline does not allow.
    rootless = t.engine.isolation == names.ISOLATION_ROOTLESS
    labels["pod-security.kubernetes.io/enforce"] = "baseline" if rootless else "privileged"
    return stamped(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": t.job_namespace, "labels": labels},
        }
    )


# What a job namespace ever holds: the engine pod, its Service and its TLS secret. The quota
# (made once the engine pod exists) makes anything more fail, whoever tries: the namespace
# cannot be turned into a foothold.
QUOTA_HARD: Manifest = {
    "pods": "1",
    "services": "1",
    "services.loadbalancers": "0",
    "services.nodeports": "0",
    "secrets": "1",
    "configmaps": "1",  # kube-root-ca.crt, which Kubernetes puts in every namespace
    "persistentvolumeclaims": "0",
    "replicationcontrollers": "0",
    "resourcequotas": "1",
}


def build_quota(t: Target) -> Manifest:
    return stamped(
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": _meta(t, names.QUOTA),
            # A cached engine's volume is its one claim.
            "spec": {
                "hard": {**QUOTA_HARD, "persistentvolumeclaims": "1" if t.engine.cache else "0"}
            },
        }
    )


def build_limit_range(t: Target) -> Manifest | None:
    """The class's CPU and memory bounds on the engine's containers (the job pod lives in the
    BuildJob's namespace, under that namespace's own limits); None when the class sets no
    maximum."""
    most = t.engine.resource_max
    if not most:
        return None
    return stamped(
        {
            "apiVersion": "v1",
            "kind": "LimitRange",
            "metadata": _meta(t, names.LIMIT_RANGE),
            "spec": {
                "limits": [
                    {
                        "type": "Container",
                        "max": dict(most),
                        "default": dict(most),
                        "defaultRequest": dict(t.engine.default_request),
                    }
                ]
            },
        }
    )


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


def engine_ports(t: Target) -> list[Manifest]:
    """What the job may reach on its engine: 2376, and the ports containers publish there when
    spec.network.publishedPorts opens them."""
    ports: list[Manifest] = list(_ENGINE_PORT)
    published = t.spec.network.published_ports
    if published is not None:
        if published.ephemeral:
            first, last = names.EPHEMERAL_PORTS
            ports.append({"protocol": "TCP", "port": first, "endPort": last})
        ports += [{"protocol": "TCP", "port": p} for p in published.ports or []]
    return ports


def _policy(meta: Manifest, spec: Manifest) -> Manifest:
    return stamped(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": meta,
            "spec": spec,
        }
    )


def _in_namespace(namespace: str, pods: Manifest) -> Manifest:
    return {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "podSelector": {"matchLabels": pods},
    }


def _job_pod_labels(t: Target) -> Manifest:
    return {names.LABEL_OWNER_UID: t.uid, names.LABEL_COMPONENT: names.COMPONENT_JOB}


def client_labels(t: Target) -> Manifest:
    """The labels of the one pod the engine admits: a BuildJob's job pod, or the client pod a
    DockerEngine names (labelled so by the operator when the engine is provisioned)."""
    if t.kind == names.DOCKER_ENGINE_KIND:
        return {names.client_label(t.uid): "true"}
    return _job_pod_labels(t)


def build_network_policies(t: Target) -> list[Manifest]:
    """The engine's namespace: default deny; the engine reached from this BuildJob's job pod
    (or this DockerEngine's client pod) only, on 2376 (and the published ports when opened);
    DNS, the internet minus the denied CIDRs and the class's allowed in-cluster pods out of
    it."""
    internet = {"to": _internet_peers(list(t.engine.denied_cidrs))}
    allowed = [
        {
            "to": [_in_namespace(namespace, dict(labels))],
            "ports": [{"protocol": "TCP", "port": port} for port in ports],
        }
        for namespace, labels, ports in t.engine.allowed_destinations
    ]

    def policy(name: str, spec: Manifest) -> Manifest:
        return _policy(_meta(t, name), spec)

    # An idle warm engine admits nobody; its claim rebuilds this rule for its client.
    ingress = (
        []
        if t.idle
        else [{"from": [_in_namespace(t.namespace, client_labels(t))], "ports": engine_ports(t)}]
    )

    return [
        policy(
            names.POLICY_DEFAULT_DENY, {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
        ),
        policy(
            names.POLICY_ENGINE,
            {
                "podSelector": _component_selector(names.COMPONENT_ENGINE),
                "policyTypes": ["Ingress", "Egress"],
                "ingress": ingress,
                "egress": [_DNS_RULE, internet, *allowed],
            },
        ),
    ]


def build_job_policy(t: Target) -> Manifest:
    """The job pod's fence in the BuildJob's namespace: no ingress; egress to its engine (2376,
    and the published ports when opened), DNS and, as spec.network.jobEgress says, the internet
    minus the denied CIDRs. Policies add up: one the namespace's owner adds may open more for
    their own pod, never for the engine."""
    egress = [
        {
            "to": [
                _in_namespace(
                    t.job_namespace, _component_selector(names.COMPONENT_ENGINE)["matchLabels"]
                )
            ],
            "ports": engine_ports(t),
        },
        _DNS_RULE,
    ]
    if t.job_spec.network.job_egress == "Internet":
        egress.append({"to": _internet_peers(list(t.engine.denied_cidrs))})
    return _policy(
        _tenant_meta(t, names.job_policy(t.name)),
        {
            "podSelector": {"matchLabels": _job_pod_labels(t)},
            "policyTypes": ["Ingress", "Egress"],
            "egress": egress,
        },
    )


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


def _tls_secret(meta: Manifest, tls: Issued, data: dict[str, str]) -> Manifest:
    meta["annotations"] = {names.ANNOTATION_CA_FINGERPRINT: tls.ca_fingerprint}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "Opaque",
        "stringData": data,
    }


def build_engine_tls_secret(t: Target, tls: Issued) -> Manifest:
    """The engine's server certificate and key, and the CA to verify clients (never its key)."""
    return _tls_secret(
        _meta(t, names.ENGINE_TLS_SECRET, names.COMPONENT_ENGINE),
        tls,
        {
            "ca.pem": tls.ca_cert,
            "cert.pem": tls.cert,
            "key.pem": tls.key,
        },
    )


def build_client_secret(t: Target, tls: Issued) -> Manifest:
    """What the job (or the client pod) needs to reach its engine: the docker CLI's environment
    and client certs, in the owner's namespace."""
    return _tls_secret(
        _tenant_meta(t, t.client_secret),
        tls,
        {
            "DOCKER_HOST": t.docker_host,
            "DOCKER_TLS_VERIFY": "1",
            "DOCKER_CERT_PATH": names.CERT_DIR,
            "ca.pem": tls.ca_cert,
            "cert.pem": tls.cert,
            "key.pem": tls.key,
        },
    )


# Secret types that hold registry credentials, each with its one key: what a pull secret or
# docker config the BuildJob names must be (checked before the job pod mounts it).
DOCKER_CONFIG_TYPES = ("kubernetes.io/dockerconfigjson", "kubernetes.io/dockercfg")
_REGISTRY_KEYS = {
    "kubernetes.io/dockerconfigjson": ".dockerconfigjson",
    "kubernetes.io/dockercfg": ".dockercfg",
}


def registry_key(source: Manifest) -> str | None:
    """The registry-credential key of a pull secret, if it is one and has it."""
    key = _REGISTRY_KEYS.get(str(source.get("type")))
    return key if key and key in (source.get("data") or {}) else None


# -- service and pods -------------------------------------------------------------------------


def build_engine_service(t: Target) -> Manifest:
    """The engine's name. With published ports it is headless: the name then resolves to the
    engine pod itself, so a port a container publishes there (any port of a range, which a
    Service cannot list) is reached at the same host name as DOCKER_HOST, as testcontainers
    expects. Its address is published before the engine is Ready: the job's own wait is what
    gates on the engine, and a Service that waited for readiness would add the endpoint
    controller's and the service proxy's next sync (a second or more) to every cold start."""
    headless: Manifest = {}
    if t.spec.network.published_ports is not None:
        headless = {"clusterIP": "None"}
    return stamped(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(t, names.ENGINE_SERVICE, names.COMPONENT_ENGINE),
            "spec": {
                "type": "ClusterIP",
                **headless,
                "publishNotReadyAddresses": True,
                # Not the owner's uid: a warm engine's pod is relabelled for its claimant
                # before its Service is, and a selector that stopped matching in between takes
                # the address away until the service proxy's next sync (a second: it was most
                # of a warm DockerEngine's wait). The namespace holds one pod, the operator's
                # (its quota, and nobody else may write there).
                "selector": {names.LABEL_COMPONENT: names.COMPONENT_ENGINE},
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
    )


def dockerd_args(t: Target) -> list[str]:
    """dockerd flags given in full, so the official docker:NN-dind image and a plain Debian
    dockerd behave alike: TLS on 2376 only, never the unauthenticated 2375."""
    engine = t.engine
    # A Rootless dockerd is handed its listening socket, made in the pod's network namespace
    # (its own has no way in but pasta's port forwarding): socket activation.
    rootless = engine.isolation == names.ISOLATION_ROOTLESS
    args = [
        "--host=fd://" if rootless else f"--host=tcp://0.0.0.0:{names.ENGINE_PORT}",
        "--tlsverify",
        f"--tlscacert={SERVER_CERT_DIR}/ca.pem",
        f"--tlscert={SERVER_CERT_DIR}/cert.pem",
        f"--tlskey={SERVER_CERT_DIR}/key.pem",
    ]
    args += [f"--registry-mirror={m}" for m in engine.registry_mirrors]
    args += [f"--insecure-registry={r}" for r in engine.insecure_registries]
    args += [f"--default-address-pool=base={b},size={n}" for b, n in engine.address_pools]
    if engine.mtu:
        args.append(f"--mtu={engine.mtu}")
    if engine.cache:
        args.append(f"--shutdown-timeout={CACHED_SHUTDOWN_SECONDS}")
    if engine.isolation in (names.ISOLATION_USER_NAMESPACE, names.ISOLATION_ROOTLESS):
        # The pod's user namespace (or, Rootless, the one nested in it) is the one RootlessKit
        # would make. Rootless, dockerd gives its containers no cgroups of their own where it
        # cannot make them: on a cgroup v1 node the pod's cgroups belong to the node's root.
        args.append("--rootless")
    return args


# The official image wraps dockerd in its `dind` script (cgroup and mount set-up); Debian's
# dockerd has no such script and needs none on the nodes where it runs. Unless the MTU is set,
# Docker's networks take the pod interface's: Docker's default 1500 is too big on an overlay
# network, where large packets from the engine's containers would vanish.
_MTU = (
    'if [ -n "$MTU_FROM" ] && [ -r "/sys/class/net/$MTU_FROM/mtu" ]; then '
    'set -- "$@" "--mtu=$(cat "/sys/class/net/$MTU_FROM/mtu")"; fi; '
)
_DIND_LAUNCHER = (
    _MTU + 'if command -v dind >/dev/null; then exec dind dockerd "$@"; fi; exec dockerd "$@"'
)
# On a cache volume: dockerd runs as a child, so that once it has stopped cleanly (SIGTERM,
# passed on) the volume's in-use marker goes; an engine killed, or one whose dockerd failed,
# leaves it, and the next engine's cache-check empties the volume instead of trusting it.
_CACHED_LAUNCHER = (
    _MTU
    + 'if command -v dind >/dev/null; then set -- dind dockerd "$@"; else set -- dockerd "$@"; '
    + 'fi; "$@" & pid=$!; trap \'kill -TERM "$pid"\' TERM INT; wait "$pid"; rc=$?; '
    + 'if kill -0 "$pid" 2>/dev/null; then wait "$pid"; rc=$?; fi; '
    + f'if [ "$rc" -eq 0 ]; then rm -f /var/lib/docker/{names.CACHE_MARKER}; fi; exit "$rc"'
)
_CACHE_CHECK = (
    f"m=/var/lib/docker/{names.CACHE_MARKER}; "
    'if [ -e "$m" ]; then find /var/lib/docker -mindepth 1 -maxdepth 1 -exec rm -rf {} +; '
    "echo discarded > /dev/termination-log; fi; "
    ': > "$m"'
)
# The Rootless tier's engine: dockerd in a user namespace of its own (with its mount and network
# namespaces), nested in the pod's, where it holds every capability it needs, so the pod adds
# none. Pod root maps the pod's 65536 ids into it one to one (CAP_SETUID in the pod's namespace,
# a default capability, is all that takes). Its network namespace reaches out through pasta,
# which copies the pod's address and routes into it over a tap device and forwards published
# ports in (auto: the ports bound inside, rescanned each second); the API socket is made here,
# in the pod's network namespace, and handed to dockerd as fd 3 (socket activation), so the
# job's and the probe's connections reach dockerd directly. dockerd starts once its network is
# up (pasta forks when it is), and runs as a child, so that SIGTERM reaches it and, on a cache
# volume, a clean stop clears the in-use marker.
_ROOTLESS_NET_READY = "/run/remote-docker-net-ready"
_ROOTLESS_FAIL = 'fail() { echo "$1" | tee /dev/termination-log >&2; exit 1; }; '
_ROOTLESS_LAUNCHER = (
    _MTU
    + _ROOTLESS_FAIL
    + f'[ -c {names.TUN_DEVICE} ] || fail "no {names.TUN_DEVICE} in the engine container: the '
    + "Rootless tier's network (pasta) needs it; give it with the class's runtimeClassName\"; "
    + f"rm -f {_ROOTLESS_NET_READY}; "
    + "perl -MIO::Socket::INET -MPOSIX -e '"
    # $^F: descriptors up to 3 stay open across exec (perl closes the rest).
    + "$^F = 3; "
    + "$s = IO::Socket::INET->new(Listen => 1024, LocalPort => shift, ReuseAddr => 1) "
    + 'or die "engine port: $!\\n"; fileno($s) == 3 or POSIX::dup2(fileno($s), 3) or die; '
    + "exec @ARGV or die"
    + f"' {names.ENGINE_PORT} "
    + "unshare --user --map-users=0:0:65536 --map-groups=0:0:65536 --net --mount --fork "
    + "--kill-child sh -c '"
    + f"while [ ! -e {_ROOTLESS_NET_READY} ]; do sleep 0.01; done; "
    # (its own pid from /proc/self, which the shell itself opens: Kubernetes would make $$ $)
    + 'read -r LISTEN_PID _ < /proc/self/stat; export LISTEN_PID LISTEN_FDS=1; exec "$@"\' '
    + '- dockerd "$@" & '
    # The child to attach pasta to is unshare's in the new user namespace (unshare's helper
    # that writes the id maps, a child too, is in ours).
    + "u=$!; c=; me=$(readlink /proc/self/ns/user); "
    + "until c=$(for p in $(cat /proc/$u/task/$u/children 2>/dev/null); do "
    + 'n=$(readlink /proc/$p/ns/user) && [ "$n" != "$me" ] && echo "$p"; done) '
    + '&& [ -n "$c" ]; do '
    + 'kill -0 "$u" 2>/dev/null '
    + '|| { wait "$u"; fail "the engine user namespace: unshare exit $?"; }; '
    + "sleep 0.01; done; "
    + 'pasta --config-net --quiet --no-map-gw -t auto -u none -T none -U none "$c" '
    + '|| { rc=$?; kill "$u"; fail "the engine network: pasta exit $rc"; }; '
    + f": > {_ROOTLESS_NET_READY}; "
    + "trap 'kill -TERM \"$c\" 2>/dev/null' TERM INT; "
    + 'wait "$u"; rc=$?; if kill -0 "$u" 2>/dev/null; then wait "$u"; rc=$?; fi; '
)


def launcher(isolation: str, cached: bool) -> str:
    """The engine container's script (its arguments are dockerd's). Cached, dockerd runs as a
    child whose clean stop clears the volume's in-use marker."""
    if isolation != names.ISOLATION_ROOTLESS:
        return _CACHED_LAUNCHER if cached else _DIND_LAUNCHER
    done = (
        f'if [ "$rc" -eq 0 ]; then rm -f /var/lib/docker/{names.CACHE_MARKER}; fi; '
        if cached
        else ""
    )
    return _ROOTLESS_LAUNCHER + done + 'exit "$rc"'


# A cached engine stops its containers within this, and then itself, inside its pod's grace.
CACHED_SHUTDOWN_SECONDS = 10
CACHED_GRACE_SECONDS = 30

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


# The UserNamespace tier's engine: root in the pod's own user namespace, an unprivileged uid on
# the node. Its capabilities hold only there: dockerd mounts image layers and containers' root
# filesystems (SYS_ADMIN) and builds their networks (NET_ADMIN). The runc it drives mounts each
# container a fresh /proc, which the kernel refuses over a masked one (procMount), and joins a
# session keyring, which the runtime's default seccomp profile refuses with EPERM: Unconfined,
# unless the class names a Localhost profile (seccomp/user-namespace-engine.json answers ENOSYS,
# on which runc goes on without one).
USER_NAMESPACE_ENGINE: Manifest = {
    "privileged": False,
    "procMount": "Unmasked",
    "capabilities": {"add": ["SYS_ADMIN", "NET_ADMIN"]},
    "seccompProfile": {"type": "Unconfined"},
}


# The Rootless tier's: a baseline pod. The runc that its dockerd drives still mounts each
# container a fresh /proc (procMount: baseline allows Unmasked in a pod with its own user
# namespace from Kubernetes 1.35, or 1.33-1.34 with the UserNamespacesPodSecurityStandards gate);
# its seccomp profile is the class's (required: the runtime's default refuses the nested user
# namespace without CAP_SYS_ADMIN).
ROOTLESS_ENGINE: Manifest = {"privileged": False, "procMount": "Unmasked"}


def build_engine_pod(t: Target) -> Manifest:
    engine = t.engine
    # Keep the official entrypoint's certificate generation out of the way.
    env = [{"name": "DOCKER_TLS_CERTDIR", "value": ""}]
    if not engine.mtu:
        env.append({"name": "MTU_FROM", "value": "eth0"})
    container: Manifest = {
        "name": names.ENGINE_CONTAINER,
        "image": engine.image,
        "command": [
            "sh",
            "-c",
            launcher(engine.isolation, cached=engine.cache is not None),
            "dockerd",
        ],
        "args": dockerd_args(t),
        "env": env,
        "ports": [{"name": "docker-tls", "containerPort": names.ENGINE_PORT, "protocol": "TCP"}],
        "securityContext": {"privileged": True},
        "readinessProbe": {
            "exec": {"command": _READY_COMMAND},
            "periodSeconds": 1,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "resources": dict(engine.resources),
        "volumeMounts": [
            {"name": "docker-data", "mountPath": "/var/lib/docker"},
            {"name": "engine-tls", "mountPath": SERVER_CERT_DIR, "readOnly": True},
        ],
    }
    if engine.image_pull_policy:
        container["imagePullPolicy"] = engine.image_pull_policy
    data: Manifest = {"emptyDir": {"sizeLimit": engine.storage}}
    spec: Manifest = {
        **engine.placement,
        "restartPolicy": "Never",
        "activeDeadlineSeconds": t.pod_deadline_seconds,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 10,
        "containers": [container],
    }
    if engine.isolation != names.ISOLATION_PRIVILEGED:
        spec["hostUsers"] = False
        rootless = engine.isolation == names.ISOLATION_ROOTLESS
        container["securityContext"] = {**(ROOTLESS_ENGINE if rootless else USER_NAMESPACE_ENGINE)}
        if engine.seccomp_profile:
            container["securityContext"]["seccompProfile"] = {
                "type": "Localhost",
                "localhostProfile": engine.seccomp_profile,
            }
        if rootless:
            # Its launcher's own words (tee'd to the termination log) when it fails before
            # dockerd.
            container["terminationMessagePolicy"] = "FallbackToLogsOnError"
    if engine.cache:
        data = {"persistentVolumeClaim": {"claimName": names.CACHE_CLAIM}}
        spec["terminationGracePeriodSeconds"] = CACHED_GRACE_SECONDS
        check: Manifest = {
            "name": names.CACHE_CHECK_CONTAINER,
            "image": engine.image,
            "command": ["sh", "-c", _CACHE_CHECK],
            "volumeMounts": [{"name": "docker-data", "mountPath": "/var/lib/docker"}],
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
        }
        if engine.image_pull_policy:
            check["imagePullPolicy"] = engine.image_pull_policy
        spec["initContainers"] = [check]
    spec["volumes"] = [
        {"name": "docker-data", **data},
        {
            "name": "engine-tls",
            "secret": {"secretName": names.ENGINE_TLS_SECRET, "defaultMode": 0o400},
        },
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta(t, names.ENGINE_POD, names.COMPONENT_ENGINE),
        "spec": spec,
    }


def build_cache_claim(t: Target, volume: Volume | None) -> Manifest:
    """The engine's claim on its cache: on the key's kept volume (already pre-bound to this
    claim; asked for as it is, whatever the class says now), or a new one from the class's
    StorageClass."""
    cache = t.engine.cache
    assert cache is not None, "only a cached engine has a cache claim"
    labels = {**owner_labels(t, names.COMPONENT_ENGINE), names.LABEL_CACHE: cache.id}
    spec: Manifest = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": volume.capacity if volume else cache.size}},
    }
    if volume:
        spec["storageClassName"] = volume.storage_class
        spec["volumeName"] = volume.name
    elif cache.storage_class:
        spec["storageClassName"] = cache.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": names.CACHE_CLAIM, "namespace": t.job_namespace, "labels": labels},
        "spec": spec,
    }


def build_warm_engine_pod(t: Target, pod_deadline_seconds: int) -> Manifest:
    """A warm engine's pod: its life is its idle time and then a job's (warm.py)."""
    pod = build_engine_pod(t)
    pod["spec"]["activeDeadlineSeconds"] = pod_deadline_seconds
    return pod


def build_warm_children(t: Target, server: Issued, pod_deadline_seconds: int) -> list[Manifest]:
    """Everything a warm engine is, in the order it is made: the children a cold engine has
    (its quota last, once its pod exists), with no client yet."""
    limits = build_limit_range(t)
    return [
        build_namespace(t),
        *([limits] if limits is not None else []),
        *build_network_policies(t),
        build_engine_service(t),
        build_engine_tls_secret(t, server),
        build_warm_engine_pod(t, pod_deadline_seconds),
        build_quota(t),
    ]


def client_env(secret: str) -> list[Manifest]:
    """The docker CLI's environment, from a client Secret (a job pod's, or a webhook client's)."""
    return [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        for key in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")
    ]


def client_cert_volume(secret: str) -> Manifest:
    """The `secret` volume source with a client Secret's certificates, for names.CERT_DIR."""
    return {
        "secretName": secret,
        "items": [{"key": k, "path": k} for k in ("ca.pem", "cert.pem", "key.pem")],
        "defaultMode": 0o444,
    }


UNPRIVILEGED: Manifest = {
    "privileged": False,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
# The job pod starts with the engine, so this covers pulling the engine image as well; an
# engine that cannot start fails the BuildJob long before (EngineFailed).
WAIT_FOR_ENGINE_SECONDS = 600


# The wait container's exit code when a destination the policies deny answered: NetworkPolicy is
# not enforced on this cluster. A new pod's rules are programmed a moment after it starts, so the
# probe runs from the start, alongside the wait for the engine, until the destination stops
# answering; once the engine answers (by then this pod's rules are in place: the engine admits
# it), the destination has PROBE_GRACE_SECONDS more to fall silent.
PROBE_REACHABLE_EXIT = 3
PROBE_GRACE_SECONDS = 10
_PROBE_DONE = '"${TMPDIR:-/tmp}/.rdo-denied-unreachable"'

# Whether host:port answers a TCP connection, with the only client every engine image has: the
# docker CLI, without TLS. Anything but "cannot connect" (a TLS or HTTP error from the server)
# means a connection was made; a dropped packet runs into the timeout. Every job waits out that
# timeout once (a policy that drops does not answer), so it is short; a destination that does
# answer does so in milliseconds, and the call is repeated while it does.
PROBE_CALL_SECONDS = 1
_REACHABLE = (
    "reachable() { out=$(env -u DOCKER_TLS_VERIFY -u DOCKER_CERT_PATH "
    f"timeout {PROBE_CALL_SECONDS} "
    'docker --host "tcp://$1" version 2>&1); [ $? -ge 124 ] && return 1; '
    'case "$out" in *"Cannot connect"*|*"connection refused"*|*"no route to host"*'
    '|*"i/o timeout"*|*"network is unreachable"*) return 1;; esac; return 0; }; '
)


def _probe_start(targets: tuple[str, ...]) -> str:
    """Starts the prober in the background: it marks _PROBE_DONE once no target answers. It
    tries again soon: the job pod's own policy usually lands a fraction of a second after it
    starts, and the job waits for this."""
    listed = " ".join(targets) or (
        # The API server through the kubernetes Service, which every pod is told of.
        '"$(case $KUBERNETES_SERVICE_HOST in *:*) echo "[$KUBERNETES_SERVICE_HOST]";; '
        '*) echo "$KUBERNETES_SERVICE_HOST";; esac):$KUBERNETES_SERVICE_PORT"'
    )
    return (
        _REACHABLE
        + f"denied={listed}; "
        + '( for target in $denied; do while reachable "$target"; do sleep 0.2; done; done; '
        + f": > {_PROBE_DONE} ) & prober=$!; "
    )


# Checked every 0.1 s: the engine often answers first, and the prober is done a moment later.
_PROBE_FINISH = (
    f"n=0; until [ -e {_PROBE_DONE} ]; do n=$((n+1)); "
    f'if [ $n -gt {PROBE_GRACE_SECONDS * 10} ]; then kill "$prober" 2>/dev/null; '
    'echo "NetworkPolicy is not enforced: $denied, which the policies deny, answered from '
    f'the job pod" >&2; exit {PROBE_REACHABLE_EXIT}; fi; sleep 0.1; done; '
)


def _wait_for_engine(t: Target) -> Manifest:
    """An init container that holds the job back until a mutual-TLS call to the engine succeeds
    from inside the job pod: the engine being Ready does not mean this new pod's traffic is
    already allowed (a NetworkPolicy controller programs a new pod's rules a moment after it
    starts) or that its DNS works. It runs the engine image, which has the docker CLI. Unless
    the class turns it off, it proves meanwhile that what the policies deny is unreachable."""
    probe = t.engine.probe_targets is not None
    script = _probe_start(t.engine.probe_targets or ()) if probe else ""
    script += (
        f"ok=; for i in $(seq {WAIT_FOR_ENGINE_SECONDS * 2}); do "
        "docker version >/dev/null 2>&1 && ok=1 && break; sleep 0.5; done; "
        '[ -n "$ok" ] || { echo "engine $DOCKER_HOST unreachable over mutual TLS" >&2; exit 1; }; '
    )
    if probe:
        script += _PROBE_FINISH
    script += "exit 0"
    container: Manifest = {
        "name": names.WAIT_CONTAINER,
        "image": t.engine.image,
        "command": ["sh", "-c", script],
        "env": client_env(t.client_secret),
        "volumeMounts": [{"name": "docker-client", "mountPath": names.CERT_DIR, "readOnly": True}],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
        "securityContext": UNPRIVILEGED,
        # Its last words (which destination answered, which engine did not) become the
        # terminated state's message, and so the BuildJob's.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if t.engine.image_pull_policy:
        container["imagePullPolicy"] = t.engine.image_pull_policy
    return container


def _gate_flags(t: Target) -> list[str]:
    """The gate's probe of what the policies deny, as the wait container's: the class's
    targets, else the API server; none when the class turns the probe off."""
    flags = [f"-timeout={WAIT_FOR_ENGINE_SECONDS}s"]
    targets = t.engine.probe_targets
    if targets is None:
        return flags
    flags.append(f"-grace={PROBE_GRACE_SECONDS}s")
    if not targets:
        return [*flags, "-probe-api"]
    return flags + [f"-probe={target}" for target in targets]


def _install_gate(t: Target) -> Manifest:
    """The init container that puts the gate where the job container finds it: it only copies
    a file, so it has ended by the kubelet's next look and the job container starts then."""
    return {
        "name": names.GATE_CONTAINER,
        "image": t.settings.wait_image,
        "imagePullPolicy": t.settings.wait_image_pull_policy,
        "command": [names.GATE_IN_IMAGE, "install", names.GATE_DIR],
        "volumeMounts": [{"name": names.GATE_VOLUME, "mountPath": names.GATE_DIR}],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
        "securityContext": UNPRIVILEGED,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def gated(t: Target) -> bool:
    """Whether the job container waits for its engine itself, behind the gate: it needs the
    job's command (an image's own entrypoint is not known here) and the wait image."""
    return bool(t.settings.wait_image and t.job_spec.job.command)


def build_job_pod(t: Target) -> Manifest:
    request = t.job_spec
    job = request.job
    # The user's variables first, so spec.job.env[i] is the pod's env[i] in API errors; ours
    # last, so they win over a user's variable of the same name.
    env = [e.model_dump(by_alias=True, exclude_none=True) for e in job.env or []]
    env += client_env(t.client_secret)
    mounts: list[Manifest] = [
        {"name": "docker-client", "mountPath": names.CERT_DIR, "readOnly": True}
    ]
    volumes: list[Manifest] = [
        {"name": "docker-client", "secret": client_cert_volume(t.client_secret)}
    ]
    if request.docker_config_secret:
        # The docker CLI writes beside its config.json (buildx keeps its builders there, and
        # `docker build` is buildx): the directory is the pod's own, the Secret's config.json a
        # file mounted into it.
        env.append({"name": "DOCKER_CONFIG", "value": DOCKER_CONFIG_DIR})
        mounts += [
            {"name": "docker-config-dir", "mountPath": DOCKER_CONFIG_DIR},
            {
                "name": "docker-config",
                "mountPath": f"{DOCKER_CONFIG_DIR}/config.json",
                "subPath": "config.json",
                "readOnly": True,
            },
        ]
        volumes += [
            {"name": "docker-config-dir", "emptyDir": {"sizeLimit": "64Mi"}},
            {
                "name": "docker-config",
                "secret": {
                    "secretName": request.docker_config_secret.name,
                    "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                },
            },
        ]
    container: Manifest = {
        "name": names.JOB_CONTAINER,
        "image": job.image,
        "env": env,
        "resources": job.resources.model_dump(exclude_none=True) if job.resources else {},
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
    if gated(t):
        # Both lists in the command, since the kubelet expands $(VAR) in each alike.
        command = [*(job.command or []), *(job.args or [])]
        container["command"] = [
            f"{names.GATE_DIR}/{names.GATE_BINARY}",
            *_gate_flags(t),
            "--",
            *command,
        ]
        container.pop("args", None)
        mounts.append({"name": names.GATE_VOLUME, "mountPath": names.GATE_DIR, "readOnly": True})
        volumes.append({"name": names.GATE_VOLUME, "emptyDir": {"sizeLimit": "32Mi"}})
        init = _install_gate(t)
    else:
        init = _wait_for_engine(t)
    spec: Manifest = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": t.pod_deadline_seconds,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "initContainers": [init],
        "containers": [container],
        "volumes": volumes,
    }
    if request.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": ref.name} for ref in request.image_pull_secrets]
    if job.service_account_name:
        # Its token as the ServiceAccount says (its automountServiceAccountToken).
        spec["serviceAccountName"] = job.service_account_name
        del spec["automountServiceAccountToken"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _tenant_meta(t, names.job_pod(t.name)),
        "spec": spec,
    }


# -- events -----------------------------------------------------------------------------------


def build_event(ref: Manifest, type_: str, reason: str, message: str, at: str) -> Manifest:
    """A core/v1 Event about the BuildJob `ref` (apiVersion, kind, metadata name/namespace/uid),
    as `kubectl describe` shows them; `at` is its RFC 3339 time."""
    meta = ref["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": ref["apiVersion"],
            "kind": ref["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "type": type_,
        "reason": reason,
        # The API server refuses a message over 1 KiB.
        "message": message[:1024],
        "source": {"component": names.APP},
        "reportingComponent": names.APP,
        "reportingInstance": names.APP,
        "firstTimestamp": at,
        "lastTimestamp": at,
        "count": 1,
    }
