"""Helpers shared by the integration and e2e tiers: the operator process, waiting, BuildJobs."""

import base64
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi, RbacAuthorizationV1Api
from kubernetes.client.exceptions import ApiException

from remote_docker_operator import certs, classes, names, webhook
from remote_docker_operator.builders import Target
from remote_docker_operator.config import Settings
from remote_docker_operator.models import BuildJobSpec, DockerEngineSpec, EngineClassSpec

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("RDO_ARTIFACTS", ROOT / ".artifacts"))
T = TypeVar("T")
DEFAULT_CLASS_SPEC: dict[str, Any] = {"image": "docker:27-dind"}


def make_target(
    spec: dict[str, Any] | None = None,
    engine_class: dict[str, Any] | None = None,
    uid: str = "0b5e6a52-2f9e-4c56-9a1d-7d3c2c1e9f00",
    name: str = "app-build",
    namespace: str = "ci",
    **settings: Any,
) -> Target:
    """A BuildJob (ci/app-build unless named) as the builders see it, resolved against a class
    "standard" (`engine_class` as its spec)."""
    parsed = BuildJobSpec.model_validate(
        spec
        or {"job": {"image": "docker:27-cli", "command": ["sh", "-c"], "args": ["docker version"]}}
    )
    cls = EngineClassSpec.model_validate(engine_class or DEFAULT_CLASS_SPEC)
    config = Settings(**settings)
    engine = classes.resolve("standard", cls, parsed, "ci", {})
    return Target(
        "app-build",
        "ci",
        uid,
        parsed,
        config,
        names.job_namespace(config.namespace_prefix, uid),
        engine,
    )


def make_engine_target(
    spec: dict[str, Any] | None = None, uid: str = "5d0c7d0e-52b1-4f7e-8a77-2a0e1f3b9c11"
) -> Target:
    """A DockerEngine ci/eng for pod ci/runner (unless `spec` says otherwise), resolved against
    the class "standard"."""
    parsed = DockerEngineSpec.model_validate(spec or {"clientPod": {"name": "runner"}})
    cls = EngineClassSpec.model_validate(DEFAULT_CLASS_SPEC)
    config = Settings()
    engine = classes.resolve("standard", cls, parsed, "ci", {})
    job_namespace = names.job_namespace(config.namespace_prefix, uid)
    return Target("eng", "ci", uid, parsed, config, job_namespace, engine, names.DOCKER_ENGINE_KIND)


def engine_class(name: str, spec: dict[str, Any], default: bool = False) -> dict[str, Any]:
    """An EngineClass object."""
    meta: dict[str, Any] = {"name": name}
    if default:
        meta["annotations"] = {names.ANNOTATION_DEFAULT_CLASS: "true"}
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.CLASS_KIND,
        "metadata": meta,
        "spec": spec,
    }


def wait_for(
    check: Callable[[], T], timeout: float = 30, interval: float = 0.2, what: str = "condition"
) -> T:
    """Polls until check() returns something truthy; returns it."""
    deadline = time.monotonic() + timeout
    last: T = check()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
        last = check()
    return last


class OperatorProcess:
    """The operator as a real process (python -m remote_docker_operator), so tests can SIGKILL
    and restart it like a crashing pod."""

    def __init__(
        self, kubeconfig: Path, log: Path, python: str = sys.executable, **env: str
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log = log
        # The interpreter: this one by default; the scale bench can name another (a newer Python).
        self.python = python
        self.base_env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, **env: str) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        full = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            # This checkout's operator, whichever checkout the shared virtualenv came from.
            "PYTHONPATH": str(ROOT / "operator"),
            **self.base_env,
            **env,
            "RDO_LIVENESS_ENDPOINT": "",
        }
        with self.log.open("ab") as log:
            log.write(f"\n==== start {env} ====\n".encode())
            self.proc = subprocess.Popen(
                [self.python, "-m", "remote_docker_operator"],
                env=full,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        port = full.get("RDO_WEBHOOK_PORT", "0")
        if port != "0":
            # Admission waits on nothing: a pod made before the webhook listens is refused.
            wait_for(lambda: self._listening(int(port)), what=f"webhook on port {port}")

    def _listening(self, port: int) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, f"exited: see {self.log}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, **env: str) -> None:
        self.stop()
        self.start(**env)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


# What a CI runner's ServiceAccount needs for the webhook: the pod's engine is made in its name.
CREATE_ENGINES = {"apiGroups": [names.GROUP], "resources": ["dockerengines"], "verbs": ["create"]}
# What a CI runner's ServiceAccount needs for `remote-docker setup` (the README's rules):
# DockerEngines, and reading the client Secret the operator writes for it.
SETUP_RULES = (
    {
        "apiGroups": [names.GROUP],
        "resources": ["dockerengines"],
        "verbs": ["create", "get", "watch", "delete"],
    },
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
)


class Kube:
    """What tests do with the API: BuildJobs and the children they make."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client
        self.core = CoreV1Api(client)
        self.custom = CustomObjectsApi(client)

    def create_namespace(self, name: str) -> None:
        try:
            self.core.create_namespace({"metadata": {"name": name}})
        except ApiException as e:
            if e.status != 409:
                raise

    def create_buildjob(
        self,
        namespace: str,
        name: str,
        spec: dict[str, Any],
        finalizers: list[str] | None = None,
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "namespace": namespace}
        if finalizers:
            meta["finalizers"] = finalizers
        body = {"apiVersion": names.API_VERSION, "kind": names.KIND, "metadata": meta, "spec": spec}
        result: dict[str, Any] = self.custom.create_namespaced_custom_object(
            names.GROUP, names.VERSION, namespace, names.PLURAL, body
        )
        return result

    def create_dockerengine(
        self, namespace: str, name: str, spec: dict[str, Any]
    ) -> dict[str, Any]:
        body = {
            "apiVersion": names.API_VERSION,
            "kind": names.DOCKER_ENGINE_KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        result: dict[str, Any] = self.custom.create_namespaced_custom_object(
            names.GROUP, names.VERSION, namespace, names.DOCKER_ENGINE_PLURAL, body
        )
        return result

    def get_buildjob(
        self, namespace: str, name: str, plural: str = names.PLURAL
    ) -> dict[str, Any] | None:
        """A BuildJob (plural: or a DockerEngine, names.DOCKER_ENGINE_PLURAL)."""
        try:
            result: dict[str, Any] = self.custom.get_namespaced_custom_object(
                names.GROUP, names.VERSION, namespace, plural, name
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return result

    def delete_buildjob(self, namespace: str, name: str, plural: str = names.PLURAL) -> None:
        try:
            self.custom.delete_namespaced_custom_object(
                names.GROUP, names.VERSION, namespace, plural, name
            )
        except ApiException as e:
            if e.status != 404:
                raise

    def status(self, namespace: str, name: str, plural: str = names.PLURAL) -> dict[str, Any]:
        bj = self.get_buildjob(namespace, name, plural) or {}
        return dict(bj.get("status") or {})

    def wait_phase(
        self,
        namespace: str,
        name: str,
        *phases: str,
        timeout: float = 120,
        plural: str = names.PLURAL,
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            status = self.status(namespace, name, plural)
            return status if status.get("phase") in phases else None

        try:
            return wait_for(check, timeout, what=f"{namespace}/{name} in {phases}")
        except AssertionError as e:
            last = self.status(namespace, name, plural)
            raise AssertionError(f"{e}; last status: {last}") from None

    def pod(self, namespace: str, name: str) -> Any:
        try:
            return self.core.read_namespaced_pod(name, namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def grant(self, namespace: str, account: str, *rules: dict[str, Any]) -> None:
        """A new ServiceAccount, and a Role of these rules bound to it in its namespace (a CI
        runner's account)."""
        self.core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
        rbac = RbacAuthorizationV1Api(self.client)
        rbac.create_namespaced_role(
            namespace, {"metadata": {"name": account}, "rules": list(rules)}
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": account},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": account,
                },
                "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
            },
        )

    def has_default_account(self, namespace: str) -> bool:
        """Whether the namespace's "default" ServiceAccount exists yet: it appears a moment
        after the namespace, and pods wait for it."""
        try:
            self.core.read_namespaced_service_account("default", namespace)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    def namespace_exists(self, name: str) -> bool:
        try:
            self.core.read_namespace(name)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    def wait_event(self, namespace: str, name: str, type_: str, reason: str) -> None:
        """Waits for an Event on the object: the operator posts events asynchronously."""
        wait_for(
            lambda: (type_, reason) in self.events_for(namespace, name),
            timeout=30,
            what=f"{type_} event {reason} on {namespace}/{name}",
        )

    def events_for(self, namespace: str, name: str) -> list[tuple[str, str]]:
        events = self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={name}"
        ).items
        return [(e.type, e.reason) for e in events]


def operator_for(
    cluster: Any, env: dict[str, str], kubeconfig: Path | None = None
) -> Iterator[OperatorProcess]:
    """The body of each tier's session-scoped `operator` fixture (each tier has its own
    cluster, so each needs its own fixture: pytest keeps one value per fixture definition).
    It holds the chart's Lease under one fixed identity, as a pod does under its name: restarted
    after a kill, it takes its own Lease back at once instead of waiting for it to expire."""
    env = {**lease_env("session-operator"), **env}
    op = OperatorProcess(kubeconfig or cluster.kubeconfig, cluster.logs / "operator.log", **env)
    op.start()
    yield op
    op.stop()


# -- the operator as the chart installs it ---------------------------------------------------

CHART = ROOT / "charts" / "remote-docker-operator"
RELEASE = "rdo"
RELEASE_NAMESPACE = "rdo-system"
# The chart's fullname: its ServiceAccount, and its Lease (which its Role names).
FULLNAME = f"{RELEASE}-{names.APP}"
OPERATOR_USER = f"system:serviceaccount:{RELEASE_NAMESPACE}:{FULLNAME}"
# What the tests install of the chart: the operator's identity, rights and admission policies and
# the aggregated roles (the operator itself runs as a process).
CHART_TEMPLATES = (
    "serviceaccount.yaml",
    "clusterrole.yaml",
    "clusterrolebinding.yaml",
    "role-leader-election.yaml",
    "rolebinding-leader-election.yaml",
    "aggregate-role-edit.yaml",
    "aggregate-role-view.yaml",
    "policy-buildjob-class.yaml",
    "policy-buildjob-class-binding.yaml",
    "policy-operator-guard.yaml",
    "policy-operator-guard-binding.yaml",
    "policy-job-namespaces.yaml",
    "policy-job-namespaces-binding.yaml",
)


def render_chart_identity(helm: Path, spec: dict[str, Any]) -> str:
    """The chart's templates above, and the default class "standard" with exactly this spec
    (not the chart's template: Helm would merge the spec into the chart's default values)."""
    rendered = render_chart(helm, *CHART_TEMPLATES)
    return rendered + "\n---\n" + yaml.safe_dump(engine_class("standard", spec, default=True))


def render_chart(helm: Path, *templates: str) -> str:
    """These templates of the chart, rendered with its default values."""
    args = [str(helm), "template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE]
    for template in templates:
        args += ["--show-only", f"templates/{template}"]
    return subprocess.run(args, check=True, text=True, capture_output=True).stdout


def chart_webhook_configuration(helm: Path) -> dict[str, Any]:
    """The chart's MutatingWebhookConfiguration, as it renders by default."""
    rendered = render_chart(helm, "webhook-configuration.yaml")
    found: dict[str, Any] = next(
        doc
        for doc in yaml.safe_load_all(rendered)
        if doc and doc["kind"] == "MutatingWebhookConfiguration"
    )
    return found


def register_webhook(
    cluster: Any, helm: Path, port: int, wait_image: str, pull_policy: str
) -> dict[str, str]:
    """The chart's MutatingWebhookConfiguration, pointed at an operator process on this machine
    (a url instead of the chart's Service), and that process's webhook settings: a serving
    certificate for 127.0.0.1 and `port`. unregister_webhook removes it."""
    cert_dir = cluster.dir / "webhook"
    cert_dir.mkdir(exist_ok=True)
    bundle = certs.issue(["localhost"], ["127.0.0.1"], datetime.timedelta(days=2))
    (cert_dir / "tls.crt").write_text(bundle.server_cert)
    (cert_dir / "tls.key").write_text(bundle.server_key)
    config = chart_webhook_configuration(helm)
    config["webhooks"][0]["clientConfig"] = {
        "url": f"https://127.0.0.1:{port}{webhook.PATH}",
        "caBundle": base64.b64encode(bundle.ca_cert.encode()).decode(),
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(config))
    return {
        "RDO_WEBHOOK_PORT": str(port),
        "RDO_WEBHOOK_CERT_DIR": str(cert_dir),
        "RDO_WAIT_IMAGE": wait_image,
        "RDO_WAIT_IMAGE_PULL_POLICY": pull_policy,
    }


def unregister_webhook(cluster: Any, helm: Path) -> None:
    name = chart_webhook_configuration(helm)["metadata"]["name"]
    cluster.kubectl("delete", "--ignore-not-found", "mutatingwebhookconfiguration", name)


def install_chart_identity(
    cluster: Any, helm: Path, engine_class: dict[str, Any], token_file: Path
) -> Path:
    """Applies the chart's ServiceAccount, RBAC, policies and default class (`engine_class` as
    its spec) and returns a kubeconfig that authenticates as that ServiceAccount, so the
    operator under test has exactly the chart's rights, never an admin's."""
    rendered = render_chart_identity(helm, engine_class)
    cluster.kubectl("create", "namespace", RELEASE_NAMESPACE, check=False)
    cluster.kubectl("apply", "-f", "-", input=rendered)
    return service_account_kubeconfig(cluster, _service_account_name(rendered), token_file)


def service_account_kubeconfig(cluster: Any, sa_name: str, token_file: Path) -> Path:
    """A kubeconfig with a new token of the release's ServiceAccount `sa_name`. Each token has
    its own id, which the API server's audit log shows (user.extra, credential-id)."""
    token = cluster.kubectl(
        "create", "token", sa_name, "-n", RELEASE_NAMESPACE, "--duration=48h"
    ).stdout.strip()
    token_file.write_text(token)
    config = json.loads(cluster.kubeconfig.read_text())
    config["users"] = [{"name": sa_name, "user": {"tokenFile": str(token_file)}}]
    config["contexts"][0]["context"]["user"] = sa_name
    path = token_file.with_suffix(".kubeconfig")
    path.write_text(json.dumps(config, indent=1))
    return path


def lease_env(identity: str) -> dict[str, str]:
    """Settings of an operator process that holds the chart's Lease as `identity`."""
    return {
        "RDO_LEASE_NAME": FULLNAME,
        "RDO_LEASE_NAMESPACE": RELEASE_NAMESPACE,
        "RDO_LEADER_IDENTITY": identity,
    }


def _service_account_name(rendered: str) -> str:
    return next(
        str(doc["metadata"]["name"])
        for doc in yaml.safe_load_all(rendered)
        if doc and doc["kind"] == "ServiceAccount"
    )


def chart_identity_user(helm: Path) -> str:
    """The user name the API server gives the chart's ServiceAccount (for an audit policy,
    written before the ServiceAccount exists)."""
    name = _service_account_name(render_chart_identity(helm, DEFAULT_CLASS_SPEC))
    return f"system:serviceaccount:{RELEASE_NAMESPACE}:{name}"


def uninstall_chart_identity(cluster: Any, helm: Path, engine_class: dict[str, Any]) -> None:
    """Removes what install_chart_identity applied (so a real `helm install` can own it)."""
    rendered = render_chart_identity(helm, engine_class)
    cluster.kubectl("delete", "--ignore-not-found", "--wait", "-f", "-", input=rendered)


def uninstall_make_up(cluster: Any) -> None:
    """Removes the release `make up` installs (cluster/up.sh), cluster-wide objects and all."""
    helm = Path(os.environ.get("RDO_CACHE", "/var/cache/remote-docker-operator")) / "bin" / "helm"
    release = ("remote-docker-operator", "-n", "remote-docker-operator")
    subprocess.run(
        [str(helm), "--kubeconfig", str(cluster.kubeconfig), "uninstall", *release, "--wait"],
        check=False,
        capture_output=True,
    )
    cluster.kubectl("delete", "namespace", "remote-docker-operator", "--ignore-not-found", "--wait")


# The verbs that change something, as the API server's audit log names them.
WRITES = frozenset({"create", "update", "patch", "delete", "deletecollection"})


class Audit:
    """The API server's audit log (a localcluster Cluster's <dir>/audit.log) from a mark on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def since_mark(self) -> list[dict[str, Any]]:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            # Stages ResponseStarted (a watch begins) and ResponseComplete.
            return [json.loads(line) for line in f if line.strip()]
