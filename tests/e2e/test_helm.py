"""The Helm chart on the real cluster: install with the locally built operator image, helm test,
a BuildJob, the UserNamespace tier's seccomp profile written to the node and used, a pod given
an engine by the chart's webhook, an upgrade whose new setting takes effect, and an uninstall
that leaves only the CRDs.
"""

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..support import (
    CREATE_ENGINES,
    ROOT,
    Kube,
    OperatorProcess,
    engine_class,
    install_chart_identity,
    register_webhook,
    uninstall_chart_identity,
    unregister_webhook,
    wait_for,
)
from .conftest import BUSYBOX, ENGINE_CLASS, HELM, JOB_IMAGE
from .test_tiers import PROFILE

pytestmark = pytest.mark.e2e

RELEASE, NAMESPACE = "rdo", "rdo-system"
POLICIES = ("buildjob-class", "job-namespaces", "operator-guard")
CHART = str(ROOT / "charts" / "remote-docker-operator")
VALUES = [
    "--set",
    "image.repository=rdo.local/remote-docker-operator",
    "--set",
    "image.tag=0.1.0",
    "--set",
    "image.pullPolicy=Never",
    "--set-json",
    f"engineClass.spec={json.dumps(ENGINE_CLASS)}",
    "--set",
    f"test.jobImage={JOB_IMAGE}",
]


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and result.returncode:
        raise AssertionError(f"{argv} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def helm(cluster: Any, operator: OperatorProcess) -> Iterator[Any]:
    """helm and kubectl against the cluster, with the test session's operator process stopped
    (the chart's operator must be the only one) and its chart objects (the same release's
    ServiceAccount, RBAC, policies and class) handed to Helm, then back afterwards."""

    def helm_(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(HELM, "--kubeconfig", str(cluster.kubeconfig), *args, check=check)

    operator.stop()
    uninstall_chart_identity(cluster, Path(HELM), ENGINE_CLASS)
    # The session's webhook registration has the chart's name (the chart would refuse to take
    # it over) and points at the stopped process.
    unregister_webhook(cluster, Path(HELM))
    try:
        yield helm_
    finally:
        helm_("uninstall", RELEASE, "-n", NAMESPACE, "--wait", check=False)
        install_chart_identity(cluster, Path(HELM), ENGINE_CLASS, cluster.dir / "operator.token")
        env = operator.base_env
        register_webhook(
            cluster,
            Path(HELM),
            int(env["RDO_WEBHOOK_PORT"]),
            env["RDO_WAIT_IMAGE"],
            env["RDO_WAIT_IMAGE_PULL_POLICY"],
        )
        operator.start()


def chart_objects(cluster: Any) -> dict[str, list[str]]:
    """What the chart creates outside the CRD, by kind."""
    found = {}
    for kind, namespaced in (
        ("deployments", True),
        ("daemonsets", True),
        ("serviceaccounts", True),
        ("clusterroles", False),
        ("clusterrolebindings", False),
        ("engineclasses", False),
        ("validatingadmissionpolicies", False),
        ("validatingadmissionpolicybindings", False),
        ("mutatingwebhookconfigurations", False),
    ):
        scope = ["-n", NAMESPACE] if namespaced else []
        out = cluster.kubectl(
            "get", kind, *scope, "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "json"
        ).stdout
        found[kind] = sorted(i["metadata"]["name"] for i in json.loads(out)["items"])
    return found


def test_chart_lifecycle(cluster: Any, kube: Kube, helm: Any) -> None:
    # The node's copy of the seccomp profile (cluster/node.py's) goes: the chart writes it.
    installed = cluster.node.dir / "kubelet" / "seccomp" / PROFILE
    installed.unlink(missing_ok=True)
    try:
        chart_lifecycle(cluster, kube, helm, installed)
    finally:
        if not installed.exists():
            shutil.copy(ROOT / "seccomp" / "user-namespace-engine.json", installed)


def chart_lifecycle(cluster: Any, kube: Kube, helm: Any, installed: Path) -> None:
    values = [
        *VALUES,
        "--set",
        "seccompProfile.install=true",
        "--set",
        f"seccompProfile.kubeletRootDir={cluster.node.dir / 'kubelet'}",
    ]
    helm("lint", "--strict", CHART, *values)
    # (the test hook is left out: its pod needs the hook's ServiceAccount to exist)
    rendered = helm("template", RELEASE, CHART, "-n", NAMESPACE, "--skip-tests", *values).stdout
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    dry = cluster.kubectl(
        "apply", "--dry-run=server", "-n", NAMESPACE, "-f", "-", input=rendered, check=False
    )
    assert dry.returncode == 0, dry.stderr

    helm("install", RELEASE, CHART, "-n", NAMESPACE, *values, "--wait", "--timeout", "180s")
    # --wait waited for the DaemonSet: its init container has written the profile.
    assert installed.read_bytes() == (ROOT / "seccomp" / "user-namespace-engine.json").read_bytes()
    cluster.kubectl("-n", NAMESPACE, "rollout", "status", "deployment", "--timeout=120s")
    tested = helm("test", RELEASE, "-n", NAMESPACE, "--timeout", "300s", check=False)
    if tested.returncode:
        logs = cluster.kubectl(
            "logs", "-n", NAMESPACE, "rdo-remote-docker-operator-test", check=False
        )
        raise AssertionError(tested.stdout + tested.stderr + logs.stdout + logs.stderr)
    assert "Phase:          Succeeded" in tested.stdout
    # The image's allocator is in the running operator (a preload that fails is only a warning).
    maps = cluster.kubectl(
        "exec", "-n", NAMESPACE, "deploy/rdo-remote-docker-operator", "--", "cat", "/proc/1/maps"
    ).stdout
    assert "libjemalloc.so.2" in maps
    assert "libpython3" in maps or "python3" in maps  # the maps of the operator's python

    # Its own name each run: a run that failed half way leaves its BuildJobs in the tier's etcd.
    tenant = f"helm-e2e-{uuid.uuid4().hex[:8]}"
    kube.create_namespace(tenant)
    spec = {
        "job": {
            "image": JOB_IMAGE,
            "command": ["bash", "-c"],
            "args": [
                f"docker load -i /images/busybox.tar && docker run --rm {BUSYBOX} "
                "echo built-by-the-chart-operator"
            ],
        }
    }
    kube.create_buildjob(tenant, "first", spec)
    # Beside it, an engine of a class naming the profile the chart wrote.
    userns = {**ENGINE_CLASS, "isolation": "UserNamespace", "seccompProfile": PROFILE}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(engine_class("helm-userns", userns)))
    with_profile = {**spec, "engine": {"className": "helm-userns", "imagePullPolicy": "Never"}}
    kube.create_buildjob(tenant, "profiled", with_profile)
    first = kube.wait_phase(tenant, "first", "Succeeded", "Failed", timeout=300)
    assert first["phase"] == "Succeeded", first
    assert first["namespace"].startswith("bj-")
    profiled = kube.wait_phase(tenant, "profiled", "Succeeded", "Failed", timeout=300)
    assert profiled["phase"] == "Succeeded", profiled
    cluster.kubectl("delete", "engineclass", "helm-userns")
    labelled_pod_gets_an_engine(kube, tenant)

    # An upgrade rolls the operator, and the new setting takes effect.
    before = operator_pods(cluster)
    helm(
        "upgrade",
        RELEASE,
        CHART,
        "-n",
        NAMESPACE,
        *values,
        "--set",
        "operator.namespacePrefix=up-",
        "--wait",
        "--timeout",
        "180s",
    )
    cluster.kubectl("-n", NAMESPACE, "rollout", "status", "deployment", "--timeout=120s")
    # The rollout is "complete" while an old pod is still stopping, and the old leader holds the
    # Lease until it has stopped: a BuildJob made then may still be the old settings' to make.
    cluster.kubectl("-n", NAMESPACE, "wait", "--for=delete", "--timeout=120s", *before)
    kube.create_buildjob(tenant, "second", spec)
    second = kube.wait_phase(tenant, "second", "Succeeded", "Failed", timeout=300)
    assert second["phase"] == "Succeeded", second
    assert second["namespace"].startswith("up-")

    for name in ("first", "profiled", "second"):
        kube.delete_buildjob(tenant, name)
        wait_for(
            lambda n=name: kube.get_buildjob(tenant, n) is None,
            timeout=60,
            what=f"BuildJob {name} deleted by the chart's operator",
        )
    policies = [f"rdo-remote-docker-operator-{p}" for p in POLICIES]
    assert chart_objects(cluster) == {
        "deployments": ["rdo-remote-docker-operator"],
        "daemonsets": ["rdo-remote-docker-operator-seccomp"],
        "serviceaccounts": ["rdo-remote-docker-operator"],
        "clusterroles": [
            "rdo-remote-docker-operator",
            "rdo-remote-docker-operator-edit",
            "rdo-remote-docker-operator-view",
        ],
        "clusterrolebindings": ["rdo-remote-docker-operator"],
        "engineclasses": ["standard"],
        "validatingadmissionpolicies": policies,
        "validatingadmissionpolicybindings": policies,
        "mutatingwebhookconfigurations": ["rdo-remote-docker-operator-webhook"],
    }
    helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait")
    assert all(not objects for objects in chart_objects(cluster).values())
    for crd in ("buildjobs.remotedocker.dev", "engineclasses.remotedocker.dev"):
        assert cluster.kubectl("get", "crd", crd).returncode == 0
    kube.core.delete_namespace(tenant)


def labelled_pod_gets_an_engine(kube: Kube, tenant: str) -> None:
    """The chart's webhook, as the API server reaches it: through its Service, with the chart's
    serving certificate, answered by the chart's operator pods with the chart's RBAC."""
    kube.grant(tenant, "runner", CREATE_ENGINES)
    pod = kube.core.create_namespaced_pod(
        tenant,
        {
            "metadata": {"name": "labelled", "labels": {"remotedocker.dev/engine": ""}},
            "spec": {
                "serviceAccountName": "runner",
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "job",
                        "image": JOB_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["bash", "-c", "docker version --format '{{.Server.Os}}'"],
                    }
                ],
            },
        },
    )
    assert pod.metadata.annotations["remotedocker.dev/dockerengine"] == "labelled"
    assert pod.spec.init_containers[0].image == "rdo.local/remote-docker-operator:0.1.0"
    wait_for(
        lambda: kube.pod(tenant, "labelled").status.phase in ("Succeeded", "Failed"),
        timeout=300,
        what="the labelled pod done",
    )
    log = kube.core.read_namespaced_pod_log("labelled", tenant)
    assert kube.pod(tenant, "labelled").status.phase == "Succeeded", log
    assert log.strip() == "linux"
    kube.core.delete_namespaced_pod("labelled", tenant)


def operator_pods(cluster: Any) -> list[str]:
    """pod/NAME of each operator pod of the release, as kubectl takes them."""
    out = cluster.kubectl(
        "-n",
        NAMESPACE,
        "get",
        "pods",
        "-o",
        "name",
        "-l",
        "app.kubernetes.io/name=remote-docker-operator,app.kubernetes.io/component!=test",
    ).stdout
    return out.split()
