"""The admission webhook behind a real API server (the chart's MutatingWebhookConfiguration,
pointed at the session's operator): a labelled pod gets its DockerEngine and its environment
with no step of its own; its ServiceAccount must be allowed; a pod that asks for nothing never
depends on the webhook."""

import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from remote_docker_operator import names

from ..support import CREATE_ENGINES, Kube, OperatorProcess, wait_for
from .conftest import WAIT_IMAGE, Cluster

pytestmark = pytest.mark.integration

DE = names.DOCKER_ENGINE_PLURAL


def allow_engines(kube: Kube, ns: str, account: str) -> None:
    """A ServiceAccount that may create DockerEngines in its namespace (as a runner's would)."""
    kube.grant(ns, account, CREATE_ENGINES)


def client_pod(account: str, engine_class: str = "", **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"labels": {names.LABEL_ENGINE_REQUEST: engine_class}, **meta},
        "spec": {
            "serviceAccountName": account,
            "restartPolicy": "Never",
            "containers": [
                {"name": "build", "image": "local/job:1", "env": [{"name": "CI", "value": "1"}]}
            ],
        },
    }


def env_of(container: Any) -> dict[str, Any]:
    return {
        e.name: e.value if e.value is not None else e.value_from.secret_key_ref.name
        for e in container.env
    }


def test_a_labelled_pod_gets_its_engine_with_no_step(
    kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    allow_engines(kube, ns, "runner")
    created = kube.core.create_namespaced_pod(ns, client_pod("runner", generateName="job-"))
    name = created.metadata.name
    secret = f"{name}-dockerengine"
    # Named at admission (it had only a generateName), and wired to the engine's Secret.
    assert name.startswith("job-")
    assert created.metadata.annotations[names.ANNOTATION_DOCKER_ENGINE] == name
    build = created.spec.containers[0]
    assert env_of(build) == {
        "CI": "1",
        "DOCKER_HOST": secret,
        "DOCKER_TLS_VERIFY": secret,
        "DOCKER_CERT_PATH": secret,
        "REMOTE_DOCKER_ENGINE": name,
    }
    assert [(m.name, m.mount_path) for m in build.volume_mounts if m.name.startswith("remote")] == [
        (names.CLIENT_CERT_VOLUME, names.CERT_DIR)
    ]
    (wait,) = created.spec.init_containers
    assert (wait.name, wait.image) == (names.CLIENT_WAIT_CONTAINER, WAIT_IMAGE)
    assert any(v.name == names.CLIENT_CERT_VOLUME for v in created.spec.volumes)

    # Its DockerEngine, made by the operator's ServiceAccount for this pod, provisioned and bound.
    status = kube.wait_phase(ns, name, "Running", plural=DE)
    assert status["clientSecret"] == secret
    engine = kube.get_buildjob(ns, name, DE)
    assert engine is not None
    assert engine["spec"]["clientPod"] == {"name": name}
    assert [o["uid"] for o in engine["metadata"]["ownerReferences"]] == [created.metadata.uid]
    uid = engine["metadata"]["uid"]
    assert kube.pod(ns, name).metadata.labels[names.client_label(uid)] == "true"
    assert kube.core.read_namespaced_secret(secret, ns).data["DOCKER_HOST"]

    # A pod that asks for nothing, beside it: untouched, and no engine for it.
    plain = kube.core.create_namespaced_pod(
        ns, {"metadata": {"name": "plain"}, "spec": client_pod("runner")["spec"]}
    )
    assert plain.spec.init_containers is None
    assert env_of(plain.spec.containers[0]) == {"CI": "1"}
    assert kube.get_buildjob(ns, "plain", DE) is None

    # The pod goes, and the engine with it.
    job_ns = status["namespace"]
    kube.core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
    wait_for(lambda: kube.get_buildjob(ns, name, DE) is None, what="DockerEngine collected")
    wait_for(lambda: not kube.namespace_exists(job_ns), timeout=60, what="engine namespace gone")


def test_only_a_pod_whose_account_may_create_engines_gets_one(
    kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    """Whoever may create a pod may run it as any account of the namespace; the webhook gives
    it no more than that account could get with `remote-docker setup`."""
    allow_engines(kube, ns, "runner")
    kube.core.create_namespaced_service_account(ns, {"metadata": {"name": "other"}})
    with pytest.raises(ApiException) as refused:
        kube.core.create_namespaced_pod(ns, client_pod("other", name="sneaky"))
    assert refused.value.status == 403
    message = json.loads(refused.value.body)["message"]
    assert "metadata.labels[remotedocker.dev/engine]" in message
    assert "ServiceAccount 'other' may not create dockerengines" in message
    assert kube.get_buildjob(ns, "sneaky", DE) is None
    # The control: the same pod as the account that may.
    kube.core.create_namespaced_pod(ns, client_pod("runner", name="sneaky"))
    assert kube.get_buildjob(ns, "sneaky", DE) is not None


def test_a_class_that_does_not_exist_fails_the_engine_naming_it(
    kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    allow_engines(kube, ns, "runner")
    kube.core.create_namespaced_pod(ns, client_pod("runner", "no-such-class", name="job"))
    status = kube.wait_phase(ns, "job", "Failed", plural=DE)
    assert status["reason"] == "EngineClassNotFound"
    assert "no-such-class" in status["message"]


def test_a_server_side_dry_run_makes_no_engine(
    cluster: Cluster, kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    allow_engines(kube, ns, "runner")
    out = cluster.kubectl(
        "create",
        "--dry-run=server",
        "-o",
        "json",
        "-n",
        ns,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "Pod", **client_pod("runner", name="dry")}),
    ).stdout
    # The patch as it would be, and nothing made.
    assert json.loads(out)["spec"]["initContainers"][0]["name"] == names.CLIENT_WAIT_CONTAINER
    assert kube.get_buildjob(ns, "dry", DE) is None


def test_a_webhook_that_is_down_blocks_only_pods_that_ask_for_an_engine(
    kube: Kube, restore_operator: OperatorProcess, ns: str
) -> None:
    allow_engines(kube, ns, "runner")
    restore_operator.stop()
    with pytest.raises(ApiException) as refused:
        kube.core.create_namespaced_pod(ns, client_pod("runner", name="asks"))
    assert "failed calling webhook" in json.loads(refused.value.body)["message"]
    # Every other pod is admitted as if the webhook did not exist.
    plain = kube.core.create_namespaced_pod(
        ns, {"metadata": {"name": "plain"}, "spec": client_pod("runner")["spec"]}
    )
    assert plain.spec.init_containers is None
    # And back up, the labelled pod is admitted again (the control: the refusal was the outage).
    restore_operator.start()
    wait_for(lambda: _admitted(kube, ns), timeout=60, what="webhook serving again")


def _admitted(kube: Kube, ns: str) -> bool:
    try:
        kube.core.create_namespaced_pod(ns, client_pod("runner", name="asks"))
    except ApiException as e:
        if "failed calling webhook" in (e.body or ""):
            return False
        raise
    return True
