"""Private images, end to end, on a real registry in the cluster: the CNCF distribution registry
(images/build.py builds it from the Go module proxy) with htpasswd auth and TLS. A job logs in
and pushes through spec.dockerConfigSecret; the node pulls a job image from it with
spec.imagePullSecrets; an engine pulls a Docker Hub name through spec.engine.registryMirrors
pointing at a second, open registry. A wrong password fails with the registry's own words.

The engines reach the registries because their EngineClass lists them in allowedDestinations
(the cluster's ranges are denied otherwise); nothing here leaves the machine: Docker Hub's name
does not resolve in this cluster, so a pull the mirror cannot serve fails at once.
"""

import base64
import datetime
import json
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import bcrypt
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from remote_docker_operator import certs, names

from ..support import ROOT, Kube, OperatorProcess, engine_class, wait_for
from .conftest import BUSYBOX, ENGINE_CLASS, Cluster
from .test_e2e import LOAD_BUSYBOX, checks, job, job_log

pytestmark = pytest.mark.e2e

REGISTRY_IMAGE = "rdo.local/registry:3.1.2"
CLASS = "with-registry"
FENCED_CLASS = "without-registry"  # the same, but for allowedDestinations
USER = "ci"


@dataclass(frozen=True)
class Registries:
    private: str  # host:port of the registry with auth (its pod: the node pulls from it)
    mirror: str  # host:port of the open one, a mirror of Docker Hub names (its Service)
    password: str


def _registry_pod(name: str, auth: bool) -> dict[str, Any]:
    env = [
        {"name": "REGISTRY_HTTP_TLS_CERTIFICATE", "value": "/config/tls.crt"},
        {"name": "REGISTRY_HTTP_TLS_KEY", "value": "/config/tls.key"},
    ]
    if auth:
        env += [
            {"name": "REGISTRY_AUTH", "value": "htpasswd"},
            {"name": "REGISTRY_AUTH_HTPASSWD_REALM", "value": "rdo-e2e"},
            {"name": "REGISTRY_AUTH_HTPASSWD_PATH", "value": "/config/htpasswd"},
        ]
    return {
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "containers": [
                {
                    "name": "registry",
                    "image": REGISTRY_IMAGE,
                    "imagePullPolicy": "Never",
                    "env": env,
                    "ports": [{"containerPort": 5000}],
                    "volumeMounts": [{"name": "config", "mountPath": "/config"}],
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 65534,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
            "volumes": [{"name": "config", "secret": {"secretName": name}}],
        },
    }


@pytest.fixture(scope="module")
def registries(cluster: Cluster, kube: Kube, operator: OperatorProcess) -> Iterator[Registries]:
    """Both registries in a namespace of their own. The mirror is used at its Service's
    ClusterIP. The private one at its pod's address: the node's containerd pulls the job image
    from it, and this machine routes the service range nowhere (a ClusterIP is translated only
    for packets already routed); the pod's address is known only once it runs, after its
    certificate was made, so containerd is told (a hosts.toml) not to verify it, as the engines
    are (insecureRegistries). What these registries prove is auth, not TLS."""
    ns = f"registry-{uuid.uuid4().hex[:6]}"
    kube.create_namespace(ns)
    password = secrets.token_urlsafe(16)
    services: dict[str, str] = {}
    for name in ("private", "mirror"):
        service = kube.core.create_namespaced_service(
            ns,
            {
                "metadata": {"name": name},
                "spec": {"selector": {"app": name}, "ports": [{"port": 5000}]},
            },
        )
        ip = service.spec.cluster_ip
        tls = certs.issue([f"{name}.{ns}.svc"], [ip], datetime.timedelta(days=1))
        data = {"tls.crt": tls.server_cert, "tls.key": tls.server_key}
        if name == "private":
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
            data["htpasswd"] = f"{USER}:{hashed}\n"
        kube.core.create_namespaced_secret(ns, {"metadata": {"name": name}, "stringData": data})
        kube.core.create_namespaced_pod(ns, _registry_pod(name, auth=name == "private"))
        services[name] = f"{ip}:5000"
    for name in services:
        wait_for(lambda n=name: _ready(kube, ns, n), timeout=120, what=f"registry {name} ready")
    private = f"{kube.pod(ns, 'private').status.pod_ip}:5000"
    trust = cluster.node.registry_hosts / private
    trust.mkdir(parents=True, exist_ok=True)
    (trust / "hosts.toml").write_text(
        f'server = "https://{private}"\n\n[host."https://{private}"]\n'
        '  capabilities = ["pull", "resolve"]\n  skip_verify = true\n'
    )
    hosts = {"private": private, "mirror": services["mirror"]}
    fenced = {**ENGINE_CLASS, "daemon": {"allowInsecureRegistries": True}}
    allowed = [{"namespace": ns, "podSelector": {"app": n}, "ports": [5000]} for n in hosts]
    for name, spec in ((CLASS, {**fenced, "allowedDestinations": allowed}), (FENCED_CLASS, fenced)):
        kube.custom.create_cluster_custom_object(
            names.GROUP, names.VERSION, names.CLASS_PLURAL, engine_class(name, spec)
        )
    yield Registries(hosts["private"], hosts["mirror"], password)
    for name in (CLASS, FENCED_CLASS):
        kube.custom.delete_cluster_custom_object(
            names.GROUP, names.VERSION, names.CLASS_PLURAL, name
        )
    kube.core.delete_namespace(ns)
    (trust / "hosts.toml").unlink()
    trust.rmdir()


def _ready(kube: Kube, ns: str, name: str) -> bool:
    pod = kube.pod(ns, name)
    return bool(pod and pod.status.container_statuses and pod.status.container_statuses[0].ready)


def docker_config(kube: Kube, ns: str, name: str, host: str, password: str) -> None:
    auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
    config = json.dumps({"auths": {host: {"auth": auth}}})
    kube.core.create_namespaced_secret(
        ns,
        {
            "metadata": {"name": name},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": config},
        },
    )


def build_job(kube: Kube, ns: str, name: str, spec: dict[str, Any]) -> tuple[dict[str, Any], str]:
    kube.create_buildjob(ns, name, spec)
    status = kube.wait_phase(ns, name, "Succeeded", "Failed", timeout=300)
    try:
        log = job_log(kube, ns, name)
    except ApiException:
        log = ""  # no job container ever ran (an image that could not be pulled)
    print(name, status, log)  # shown by pytest when an assertion fails
    return status, log


def engine(registries: Registries, class_name: str = CLASS, **extra: Any) -> dict[str, Any]:
    return {
        "className": class_name,
        "imagePullPolicy": "Never",
        "insecureRegistries": [registries.private, registries.mirror],
        **extra,
    }


def test_push_with_the_docker_config_then_the_node_pulls_with_the_pull_secret(
    kube: Kube, ns: str, registries: Registries
) -> None:
    private = registries.private
    docker_config(kube, ns, "creds", private, registries.password)
    image = f"{private}/team/busybox:1"
    push = job(
        f"set -e\n{LOAD_BUSYBOX}docker tag {BUSYBOX} {image}\ndocker push {image}\n"
        "echo CHECK pushed=yes\n",
        dockerConfigSecret={"name": "creds"},
        engine=engine(registries),
    )
    status, log = build_job(kube, ns, "push", push)
    assert status["phase"] == "Succeeded", (status, log)
    assert checks(log) == {"pushed": "yes"}

    # The job image itself from the registry: pulled by the node's containerd with the pull
    # secret (the control: without it, the registry refuses the node).
    pulled = {
        # Always: an image already on the node would otherwise start without the registry
        # being asked (and so without the secret being needed).
        "job": {
            "image": image,
            "imagePullPolicy": "Always",
            "command": ["sh", "-c", "echo CHECK pulled=by-the-node"],
        },
        "engine": engine(registries),
        "imagePullSecrets": [{"name": "creds"}],
    }
    status, log = build_job(kube, ns, "pulled", pulled)
    assert status["phase"] == "Succeeded", (status, log)
    assert checks(log) == {"pulled": "by-the-node"}
    refused = {k: v for k, v in pulled.items() if k != "imagePullSecrets"}
    status, _ = build_job(kube, ns, "no-secret", refused)
    assert (status["phase"], status["reason"]) == ("Failed", "ImagePullFailed"), status
    assert image in status["message"]


def test_a_wrong_password_is_refused_in_the_registrys_words(
    kube: Kube, ns: str, registries: Registries
) -> None:
    private = registries.private
    docker_config(kube, ns, "wrong", private, registries.password + "-not")
    docker_config(kube, ns, "right", private, registries.password)
    script = (
        f"{LOAD_BUSYBOX}docker tag {BUSYBOX} {private}/team/denied:1\n"
        f"docker push {private}/team/denied:1 2>&1 | tail -1\nexit ${{PIPESTATUS[0]}}\n"
    )
    status, log = build_job(
        kube,
        ns,
        "wrong",
        job(script, dockerConfigSecret={"name": "wrong"}, engine=engine(registries)),
    )
    assert (status["phase"], status["reason"]) == ("Failed", "JobFailed"), status
    assert "unauthorized: authentication required" in log, log
    # The control: the same push with the right password.
    status, log = build_job(
        kube,
        ns,
        "right",
        job(script, dockerConfigSecret={"name": "right"}, engine=engine(registries)),
    )
    assert status["phase"] == "Succeeded", (status, log)


def test_registry_mirrors_serve_docker_hub_names(
    kube: Kube, ns: str, registries: Registries
) -> None:
    """A Docker Hub name (library/...) pulled through the class's engine with registryMirrors
    set: the mirror serves it. Without the mirror the same pull fails, since Docker Hub's name
    does not resolve here: the mirror is what served it."""
    name = f"rdo-mirror-{uuid.uuid4().hex[:6]}"
    seed = (
        f"set -e\n{LOAD_BUSYBOX}docker tag {BUSYBOX} {registries.mirror}/library/{name}:1\n"
        f"docker push {registries.mirror}/library/{name}:1\n"
    )
    status, log = build_job(kube, ns, "seed", job(seed, engine=engine(registries)))
    assert status["phase"] == "Succeeded", (status, log)

    pull = (
        f"docker pull {name}:1 >/dev/null 2>&1 && echo CHECK pulled=yes || echo CHECK pulled=no\n"
    )
    mirrored = engine(registries, registryMirrors=[f"https://{registries.mirror}"])
    status, log = build_job(kube, ns, "mirrored", job(pull, engine=mirrored))
    assert status["phase"] == "Succeeded", (status, log)
    assert checks(log) == {"pulled": "yes"}, log
    status, log = build_job(kube, ns, "unmirrored", job(pull, engine=engine(registries)))
    assert checks(log) == {"pulled": "no"}, log


def test_an_engine_of_a_class_without_the_destination_cannot_reach_the_registry(
    kube: Kube, ns: str, registries: Registries
) -> None:
    """allowedDestinations is what opens the registry to the engines: the same class without it
    cannot reach it (the controls: every push above, with it)."""
    script = (
        f"{LOAD_BUSYBOX}docker tag {BUSYBOX} {registries.mirror}/library/x:1\n"
        f"timeout 60 docker push {registries.mirror}/library/x:1 >/dev/null 2>&1 "
        "&& echo CHECK reached=yes || echo CHECK reached=no\n"
    )
    fenced = engine(registries, FENCED_CLASS)
    status, log = build_job(kube, ns, "fenced", job(script, engine=fenced))
    assert checks(log) == {"reached": "no"}, (status, log)


def test_the_build_and_push_example(kube: Kube, ns: str, registries: Registries) -> None:
    """examples/build-and-push.yaml against this registry (its host and this class put in), and
    the image it pushed run as a job image, pulled by the node."""
    example = (ROOT / "examples" / "build-and-push.yaml").read_text()
    body = yaml.safe_load(example.replace("registry.example.com", registries.private))
    body["spec"]["engine"] = engine(registries)
    docker_config(kube, ns, "registry-creds", registries.private, registries.password)
    status, log = build_job(kube, ns, "build-and-push", body["spec"])
    assert status["phase"] == "Succeeded", (status, log)
    pushed = {
        "job": {"image": f"{registries.private}/team/app:1", "imagePullPolicy": "Always"},
        "engine": engine(registries),
        "imagePullSecrets": [{"name": "registry-creds"}],
    }
    status, log = build_job(kube, ns, "run-pushed", pushed)
    assert status["phase"] == "Succeeded", (status, log)
    assert "Hello from a pushed image" in log
