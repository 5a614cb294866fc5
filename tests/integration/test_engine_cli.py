"""`remote-docker setup`'s API calls against a real API server, made as a CI runner's
ServiceAccount: in a pod the command speaks to the API with the standard library alone, so these
are the calls, the watch and the RBAC a CI pod meets."""

import io
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from remote_docker_operator import engine_cli, kubeapi
from remote_docker_operator.clitext import CliError
from remote_docker_operator.engine_cli import Engines, Setup

from ..support import SETUP_RULES, Kube, OperatorProcess, wait_for
from .conftest import Cluster
from .test_dockerengine import runner

pytestmark = pytest.mark.integration

# The README's rules before `watch` was among them: setup polls instead.
NO_WATCH = tuple(
    {**rule, "verbs": [v for v in rule["verbs"] if v != "watch"]} for rule in SETUP_RULES
)


def pod_api(cluster: Cluster, kube: Kube, ns: str, account: str, tmp_path: Path) -> kubeapi.Api:
    """The API as a pod of `account` finds it: a token of that account (a TokenRequest, as the
    kubelet asks for one), the cluster's CA, and the API server's address in the env."""
    token = kube.core.create_namespaced_service_account_token(
        account, ns, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    server = config["clusters"][0]["cluster"]
    directory = tmp_path / account
    directory.mkdir()
    (directory / "token").write_text(token)
    (directory / "ca.crt").write_text(Path(server["certificate-authority"]).read_text())
    url = urllib.parse.urlsplit(server["server"])
    env = {"KUBERNETES_SERVICE_HOST": str(url.hostname), "KUBERNETES_SERVICE_PORT": str(url.port)}
    return kubeapi.in_cluster(env, directory)


@pytest.mark.parametrize("rules", [SETUP_RULES, NO_WATCH], ids=["watch", "no-watch"])
def test_setup_as_a_runners_account(
    cluster: Cluster,
    kube: Kube,
    operator: OperatorProcess,
    ns: str,
    tmp_path: Path,
    rules: tuple[dict[str, Any], ...],
) -> None:
    runner(kube, ns)
    kube.grant(ns, "ci-runner", *rules)
    engines = Engines(pod_api(cluster, kube, ns, "ci-runner", tmp_path))
    err = io.StringIO()
    created = engines.create(engine_cli.engine_manifest(ns, "runner"))
    name = created["metadata"]["name"]
    assert name.startswith("runner-")

    status = Setup(engines, err=err).wait_ready(ns, name, 60)
    assert f"dockerengine/{name}: Running" in err.getvalue().splitlines()[-1]
    # Followed by a watch where the account may watch, by polls where it may not.
    assert engines.watch_refused is (rules is NO_WATCH)
    data = engines.secret(ns, status["clientSecret"])
    assert {"DOCKER_HOST", "ca.pem", "cert.pem", "key.pem"} <= set(data)
    assert data["cert.pem"].startswith("-----BEGIN CERTIFICATE-----")

    assert engines.delete(ns, name) is True
    wait_for(lambda: engines.get(ns, name) is None, what="DockerEngine gone")
    assert engines.delete(ns, name) is False


def test_an_engine_that_fails_is_seen_through_the_watch(
    cluster: Cluster, kube: Kube, operator: OperatorProcess, ns: str, tmp_path: Path
) -> None:
    kube.grant(ns, "ci-runner", *SETUP_RULES)
    engines = Engines(pod_api(cluster, kube, ns, "ci-runner", tmp_path))
    created = engines.create(engine_cli.engine_manifest(ns, "nobody"))
    with pytest.raises(
        CliError, match=r"ended: Failed \(.*spec\.clientPod\.name: pod .* not found"
    ):
        Setup(engines, err=io.StringIO()).wait_ready(ns, created["metadata"]["name"], 60)
    assert engines.watch_refused is False


def test_refusals_carry_the_api_servers_words(
    cluster: Cluster, kube: Kube, operator: OperatorProcess, ns: str, tmp_path: Path
) -> None:
    """An account without the rules gets the API server's refusal, naming what it lacks; the
    same calls as an account with them go through."""
    kube.grant(ns, "nobody")
    kube.grant(ns, "ci-runner", *SETUP_RULES)
    refused = Engines(pod_api(cluster, kube, ns, "nobody", tmp_path))
    allowed = Engines(pod_api(cluster, kube, ns, "ci-runner", tmp_path))
    with pytest.raises(CliError, match=r"refused the DockerEngine: .*forbidden.*dockerengines"):
        refused.create(engine_cli.engine_manifest(ns, "runner"))
    assert allowed.create(engine_cli.engine_manifest(ns, "runner"))["metadata"]["uid"]
    with pytest.raises(CliError, match=r"reading the client Secret .*forbidden"):
        refused.secret(ns, "runner-dockerengine")
    with pytest.raises(CliError, match=r"reading the client Secret .*: not found"):
        allowed.secret(ns, "runner-dockerengine")


def test_outside_a_pod_it_is_kubectls_kubeconfig(
    cluster: Cluster,
    kube: Kube,
    operator: OperatorProcess,
    ns: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A person's shell: no pod's environment, the kubeconfig's user (here client
    certificates)."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    engines = Engines(engine_cli.connect())
    assert engines.get(ns, "absent") is None
    runner(kube, ns)
    engines.create(engine_cli.engine_manifest(ns, "runner", name="by-hand"))
    assert Setup(engines, err=io.StringIO()).wait_ready(ns, "by-hand", 60)["phase"] == "Running"
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig.with_name("missing")))
    with pytest.raises(CliError, match="not in a pod, and no usable kubeconfig"):
        engine_cli.connect()
