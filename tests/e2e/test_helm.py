"""The Helm chart on the real cluster: install with the locally built operator image, helm test,
a BuildJob, an upgrade whose new setting takes effect, and an uninstall that leaves only the CRD.
"""

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from ..support import ROOT, Kube, OperatorProcess, wait_for
from .conftest import BUSYBOX, HELM, JOB_IMAGE

pytestmark = pytest.mark.e2e

RELEASE, NAMESPACE = "rdo", "rdo-system"
CHART = str(ROOT / "charts" / "remote-docker-operator")
VALUES = [
    "--set",
    "image.repository=rdo.local/remote-docker-operator",
    "--set",
    "image.tag=0.1.0",
    "--set",
    "image.pullPolicy=Never",
    "--set",
    "operator.engineImageRepository=rdo.local/dind",
    "--set",
    "operator.engineVersion=20.10",
    "--set",
    "operator.engineImageSuffix=",
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
    (the chart's operator must be the only one) and started again afterwards."""

    def helm_(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(HELM, "--kubeconfig", str(cluster.kubeconfig), *args, check=check)

    operator.stop()
    try:
        yield helm_
    finally:
        helm_("uninstall", RELEASE, "-n", NAMESPACE, "--wait", check=False)
        operator.start()


def chart_objects(cluster: Any) -> dict[str, list[str]]:
    """What the chart creates outside the CRD, by kind."""
    found = {}
    for kind, namespaced in (
        ("deployments", True),
        ("serviceaccounts", True),
        ("clusterroles", False),
        ("clusterrolebindings", False),
    ):
        scope = ["-n", NAMESPACE] if namespaced else []
        out = cluster.kubectl(
            "get", kind, *scope, "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "json"
        ).stdout
        found[kind] = sorted(i["metadata"]["name"] for i in json.loads(out)["items"])
    return found


def test_chart_lifecycle(cluster: Any, kube: Kube, helm: Any) -> None:
    helm("lint", "--strict", CHART, *VALUES)
    # (the test hook is left out: its pod needs the hook's ServiceAccount to exist)
    rendered = helm("template", RELEASE, CHART, "-n", NAMESPACE, "--skip-tests", *VALUES).stdout
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    dry = cluster.kubectl(
        "apply", "--dry-run=server", "-n", NAMESPACE, "-f", "-", input=rendered, check=False
    )
    assert dry.returncode == 0, dry.stderr

    helm("install", RELEASE, CHART, "-n", NAMESPACE, *VALUES, "--wait", "--timeout", "180s")
    cluster.kubectl("-n", NAMESPACE, "rollout", "status", "deployment", "--timeout=120s")
    tested = helm("test", RELEASE, "-n", NAMESPACE, "--timeout", "300s", check=False)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "Phase:          Succeeded" in tested.stdout

    kube.create_namespace("helm-e2e")
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
    kube.create_buildjob("helm-e2e", "first", spec)
    first = kube.wait_phase("helm-e2e", "first", "Succeeded", "Failed", timeout=300)
    assert first["phase"] == "Succeeded", first
    assert first["namespace"].startswith("bj-")

    # An upgrade rolls the operator, and the new setting takes effect.
    helm(
        "upgrade",
        RELEASE,
        CHART,
        "-n",
        NAMESPACE,
        *VALUES,
        "--set",
        "operator.namespacePrefix=up-",
        "--wait",
        "--timeout",
        "180s",
    )
    cluster.kubectl("-n", NAMESPACE, "rollout", "status", "deployment", "--timeout=120s")
    kube.create_buildjob("helm-e2e", "second", spec)
    second = kube.wait_phase("helm-e2e", "second", "Succeeded", "Failed", timeout=300)
    assert second["phase"] == "Succeeded", second
    assert second["namespace"].startswith("up-")

    for name in ("first", "second"):
        kube.delete_buildjob("helm-e2e", name)
        wait_for(
            lambda n=name: kube.get_buildjob("helm-e2e", n) is None,
            timeout=60,
            what=f"BuildJob {name} deleted by the chart's operator",
        )
    assert chart_objects(cluster) == {
        "deployments": ["rdo-remote-docker-operator"],
        "serviceaccounts": ["rdo-remote-docker-operator"],
        "clusterroles": ["rdo-remote-docker-operator"],
        "clusterrolebindings": ["rdo-remote-docker-operator"],
    }
    helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait")
    assert chart_objects(cluster) == {
        "deployments": [],
        "serviceaccounts": [],
        "clusterroles": [],
        "clusterrolebindings": [],
    }
    assert cluster.kubectl("get", "crd", "buildjobs.remotedocker.dev").returncode == 0
    kube.core.delete_namespace("helm-e2e")
