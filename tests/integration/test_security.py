"""What the BuildJob pods and the operator's RBAC grant, checked by the real API server:
Pod Security admission levels of the generated pods, no service-account tokens in any pod,
and the chart's ClusterRole as `kubectl auth can-i` sees it."""

import functools
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes.client import AuthorizationV1Api
from kubernetes.client.exceptions import ApiException
from kubernetes.config import new_client_from_config

from remote_docker_operator import builders, names
from remote_docker_operator.builders import Target

from .. import support
from ..support import ROOT, Kube, OperatorProcess, wait_for
from .conftest import BIN, ENGINE_CLASS

pytestmark = pytest.mark.integration

HELM = BIN / "helm"
UID = "0b5e6a52-2f9e-4c56-9a1d-7d3c2c1e9f00"
LEVELS = ("privileged", "baseline", "restricted")

# -- (a) Pod Security admission ---------------------------------------------------------------

SPECS: dict[str, dict[str, Any]] = {
    "minimal": {"job": {"image": "docker:27-cli"}},
    "everything": {
        "job": {
            "image": "registry.example.com/ci/job:1",
            "command": ["sh", "-c"],
            "args": ["docker build ."],
            "env": [
                {"name": "A", "value": "1"},
                {"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            ],
            "envFrom": [{"configMapRef": {"name": "cfg"}}, {"secretRef": {"name": "sec"}}],
            "workingDir": "/src",
            "resources": {"requests": {"cpu": "100m"}, "limits": {"memory": "1Gi"}},
        },
        "engine": {
            "image": "local/dind:26.1",
            "storage": "5Gi",
            "mtu": 1400,
            "registryMirrors": ["https://mirror.example.com"],
            "insecureRegistries": ["10.0.0.1:5000"],
            "resources": {"limits": {"cpu": "2", "memory": "4Gi"}},
        },
        "imagePullSecrets": [{"name": "regcred"}],
        "dockerConfigSecret": {"name": "dockercfg"},
        "network": {"jobEgress": "None"},
    },
}


def make_target(spec: dict[str, Any], **settings: Any) -> Target:
    engine_class = {**ENGINE_CLASS, "image": "docker:27-dind"}
    return support.make_target(spec, engine_class, uid=UID, **settings)


@pytest.fixture(scope="module")
def pss_namespaces(kube: Kube) -> Iterator[dict[str, str]]:
    """One namespace per Pod Security Standards level, enforced."""
    suffix = uuid.uuid4().hex[:6]
    made = {level: f"pss-{level}-{suffix}" for level in LEVELS}
    for level, name in made.items():
        body: Any = {
            "metadata": {
                "name": name,
                "labels": {"pod-security.kubernetes.io/enforce": level},
            }
        }
        kube.core.create_namespace(body)
    for name in made.values():  # the ServiceAccount admission plugin needs "default"
        wait_for(
            functools.partial(kube.has_default_account, name),
            what=f"default ServiceAccount in {name}",
        )
    yield made
    for name in made.values():
        kube.core.delete_namespace(name)


def _dry_run(kube: Kube, ns: str, pod: dict[str, Any]) -> list[str]:
    """The Pod Security checks a server-side dry-run create fails, [] when admitted."""
    body: Any = {**pod, "metadata": {**pod["metadata"], "namespace": ns}}
    refusal: ApiException | None = None
    try:
        kube.core.create_namespaced_pod(ns, body, dry_run="All")
    except ApiException as e:
        refusal = e
    if refusal is None:
        return []
    assert refusal.status == 403, f"HTTP {refusal.status}: {refusal.body}"
    message = str(yaml.safe_load(refusal.body or "{}").get("message", ""))
    assert "violates PodSecurity" in message, message
    # ...: violates PodSecurity "restricted:latest": check1 (detail), check2 (detail)
    violations = message.split("violates PodSecurity ", 1)[1].split('": ', 1)[1]
    checks = []
    depth = 0
    current = ""
    for ch in violations:  # split on the commas outside the parenthesised details
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            checks.append(current)
            current = ""
        else:
            current += ch
    checks.append(current)
    return sorted(c.split("(")[0].strip() for c in checks if c.strip())


@pytest.mark.parametrize("wait_image", ["", "rdo/remote-docker-operator:1"])
@pytest.mark.parametrize("spec_name", sorted(SPECS))
def test_pod_security_levels(
    kube: Kube, pss_namespaces: dict[str, str], spec_name: str, wait_image: str
) -> None:
    """With and without the wait image: a job with a command waits behind the gate (its
    install-gate init container) or in wait-for-engine."""
    t = make_target(SPECS[spec_name], wait_image=wait_image)
    pods = {"job": builders.build_job_pod(t), "engine": builders.build_engine_pod(t)}
    gated = bool(wait_image and SPECS[spec_name]["job"].get("command"))
    init = pods["job"]["spec"]["initContainers"][0]["name"]
    assert init == (names.GATE_CONTAINER if gated else names.WAIT_CONTAINER)
    seen = {
        (pod, level): _dry_run(kube, pss_namespaces[level], manifest)
        for pod, manifest in pods.items()
        for level in LEVELS
    }
    # The job pod is unprivileged in every way but the user it runs as (CI images run as
    # root); the engine (dind) needs a privileged container and nothing else beyond baseline.
    assert seen[("job", "privileged")] == []
    assert seen[("job", "baseline")] == []
    assert seen[("job", "restricted")] == ["runAsNonRoot != true"], seen
    assert seen[("engine", "privileged")] == []
    assert seen[("engine", "baseline")] == ["privileged"], seen
    assert "privileged" in seen[("engine", "restricted")], seen
    assert set(seen[("engine", "restricted")]) <= {
        "privileged",
        "allowPrivilegeEscalation != false",
        "unrestricted capabilities",
        "runAsNonRoot != true",
        "seccompProfile",
    }, seen


PROFILE = "remote-docker-operator/user-namespace-engine.json"


@pytest.mark.parametrize(
    ("tier", "profile", "baseline"),
    [
        ("UserNamespace", None, ["non-default capabilities", "seccompProfile"]),
        ("UserNamespace", PROFILE, ["non-default capabilities"]),
        ("Rootless", PROFILE, []),
    ],
    ids=["UserNamespace", "UserNamespace+profile", "Rootless"],
)
def test_unprivileged_engine_pod_security(
    kube: Kube, pss_namespaces: dict[str, str], tier: str, profile: str | None, baseline: list[str]
) -> None:
    """The unprivileged tiers' engines are not privileged pods. A UserNamespace one fails
    baseline on exactly the checks the README names: its capabilities (held only in its user
    namespace) and, unless the class names a Localhost profile, its seccomp profile; a Rootless
    one passes it. (Their procMount passes: this API server, 1.34, relaxes it for
    user-namespaced pods with the UserNamespacesPodSecurityStandards gate, which the local
    cluster turns on, as 1.35 does by default.) Restricted refuses both."""
    cls = {**ENGINE_CLASS, "image": "docker:27-dind", "isolation": tier}
    if profile:
        cls["seccompProfile"] = profile
    pod = builders.build_engine_pod(support.make_target(SPECS["minimal"], cls, uid=UID))
    seen = {level: _dry_run(kube, pss_namespaces[level], pod) for level in LEVELS}
    assert seen["privileged"] == []
    assert seen["baseline"] == baseline, seen
    assert seen["restricted"], seen
    assert "privileged" not in seen["restricted"], seen


# -- (b) no service-account tokens ------------------------------------------------------------


def test_pods_mount_no_service_account_token(
    kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    kube.create_buildjob(ns, "sa", {"job": {"image": "local/job:1"}})  # runs until deleted
    job_ns = kube.wait_phase(ns, "sa", "Running")["namespace"]
    for where, name in ((job_ns, names.ENGINE_POD), (ns, names.job_pod("sa"))):
        pod = kube.pod(where, name)
        assert pod is not None, name
        assert pod.spec.automount_service_account_token is False, name
        for volume in pod.spec.volumes or []:
            sources = volume.projected.sources if volume.projected else []
            assert not any(s.service_account_token for s in sources or []), (name, volume.name)
            assert not volume.name.startswith("kube-api-access"), (name, volume.name)
        containers = [*(pod.spec.init_containers or []), *pod.spec.containers]
        for c in containers:
            for mount in c.volume_mounts or []:
                assert not mount.mount_path.startswith("/var/run/secrets/kubernetes.io"), (
                    name,
                    c.name,
                    mount.mount_path,
                )
    kube.delete_buildjob(ns, "sa")


# -- (c) RBAC ---------------------------------------------------------------------------------

VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
# Beyond what the chart lists: never granted (the resource as `kubectl auth can-i` names it).
REFUSED_EXTRA = [
    ("list", "secrets"),
    ("watch", "secrets"),
    ("create", "pods/exec"),
    ("create", "pods/attach"),
    ("create", "pods/portforward"),
    ("get", "pods/log"),
    ("create", "deployments.apps"),
    ("create", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("create", "roles.rbac.authorization.k8s.io"),
    ("get", "nodes"),
    ("delete", "buildjobs.remotedocker.dev"),
    ("update", "buildjobs.remotedocker.dev"),
    ("create", "buildjobs.remotedocker.dev"),
    ("get", "configmaps"),
    ("create", "serviceaccounts/token"),
    ("impersonate", "serviceaccounts"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("update", "namespaces"),
    ("delete", "services"),
    ("deletecollection", "secrets"),
]


def _resource(group: str, resource: str) -> str:
    base, _, sub = resource.partition("/")
    qualified = f"{base}.{group}" if group else base
    return f"{qualified}/{sub}" if sub else qualified


@pytest.fixture(scope="module")
def chart_role(cluster: Any, kube: Kube) -> Iterator[tuple[dict[str, Any], AuthorizationV1Api]]:
    """The chart's ClusterRole bound to a fresh ServiceAccount; yields the role and a client
    that asks as that ServiceAccount."""
    release = f"rbac{uuid.uuid4().hex[:6]}"
    rendered = subprocess.run(
        [
            str(HELM),
            "template",
            release,
            str(ROOT / "charts" / "remote-docker-operator"),
            "--show-only",
            "templates/clusterrole.yaml",
        ],
        check=True,
        text=True,
        capture_output=True,
    ).stdout
    role = yaml.safe_load(rendered)
    role_name = role["metadata"]["name"]
    ns = f"rbac-{release}"
    kube.create_namespace(ns)
    wait_for(lambda: kube.has_default_account(ns), what="default ServiceAccount")
    extra = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "op", "namespace": ns}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": role_name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role_name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": "op", "namespace": ns}],
        },
    ]
    manifests = rendered + "\n---\n" + yaml.safe_dump_all(extra)
    cluster.kubectl("apply", "-f", "-", input=manifests)
    try:
        client = new_client_from_config(str(cluster.kubeconfig))
        client.set_default_header("Impersonate-User", f"system:serviceaccount:{ns}:op")
        yield role, AuthorizationV1Api(client)
    finally:
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found", input=manifests, check=False)
        kube.core.delete_namespace(ns)


def _can(authz: AuthorizationV1Api, verb: str, resource: str, namespace: str) -> bool:
    """What `kubectl auth can-i VERB RESOURCE --as=SUBJECT` answers (a SelfSubjectAccessReview
    made as the subject, the client impersonating it), in one call instead of one process."""
    qualified, _, sub = resource.partition("/")
    name, _, group = qualified.partition(".")
    attributes = {"verb": verb, "resource": name, "group": group, "namespace": namespace}
    if sub:
        attributes["subresource"] = sub
    review = {"spec": {"resourceAttributes": attributes}}
    return bool(authz.create_self_subject_access_review(review).status.allowed)


WHERE = ("", "default", "bj-anything")  # "": all namespaces


def test_rbac_grants_exactly_the_chart_rules(
    chart_role: tuple[dict[str, Any], AuthorizationV1Api],
) -> None:
    role, authz = chart_role
    granted: dict[str, set[str]] = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"], rule
        assert "*" not in rule["resources"], rule
        assert not rule.get("resourceNames"), rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault(_resource(group, resource), set()).update(rule["verbs"])
    assert granted  # the chart lists rules at all
    wrong = []
    for resource, verbs in sorted(granted.items()):
        for verb in VERBS:
            for where in WHERE:
                if _can(authz, verb, resource, where) != (verb in verbs):
                    wrong.append((verb, resource, where, verb in verbs))
    assert wrong == [], f"(verb, resource, scope, expected allowed) mismatches: {wrong}"


def test_rbac_refuses_what_the_operator_never_needs(
    chart_role: tuple[dict[str, Any], AuthorizationV1Api],
) -> None:
    _, authz = chart_role
    allowed = [
        (verb, resource, where)
        for verb, resource in REFUSED_EXTRA
        for where in WHERE
        if _can(authz, verb, resource, where)
    ]
    assert allowed == []
