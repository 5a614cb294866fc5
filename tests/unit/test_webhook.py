"""The admission webhook's decisions as data, against an in-memory API (the integration tier
runs it behind a real API server)."""

import base64
import json
from typing import Any

from kubernetes.client.exceptions import ApiException

from remote_docker_operator import names, webhook
from remote_docker_operator.webhook import Admitter

Obj = dict[str, Any]
ENGINE_ENV = [
    {"name": k, "valueFrom": {"secretKeyRef": {"name": "runner-dockerengine", "key": k}}}
    for k in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")
] + [{"name": "REMOTE_DOCKER_ENGINE", "value": "runner"}]
MOUNT = {"name": "remote-docker-client", "mountPath": names.CERT_DIR, "readOnly": True}


def pod(labels: Obj | None = None, **meta: Any) -> Obj:
    return {
        "metadata": {"labels": labels or {}, **meta},
        "spec": {"containers": [{"name": "build", "image": "ci"}]},
    }


def request(body: Obj, **fields: Any) -> Obj:
    return {
        "uid": "u-1",
        "operation": "CREATE",
        "namespace": "ci",
        "object": body,
        **fields,
    }


class FakeKube:
    """The API as the webhook sees it: access reviews answered by `allowed`, DockerEngines kept."""

    def __init__(self, allowed: bool = True) -> None:
        self.allowed = allowed
        self.reviews: list[Obj] = []
        self.engines: dict[str, Obj] = {}
        self.fail_with: Exception | None = None

    def request(self, method: str, url_path: str, body: Obj) -> Obj:
        assert (method, url_path) == ("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews")
        self.reviews.append(body["spec"])
        return {"status": {"allowed": self.allowed}}

    def create(self, manifest: Obj) -> Obj | None:
        if self.fail_with:
            raise self.fail_with
        name = manifest["metadata"]["name"]
        if name in self.engines:
            return None
        self.engines[name] = manifest
        return manifest

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self.engines.get(name)


def admit(kube: FakeKube, req: Obj, wait_image: str = "") -> Obj:
    admitter: Any = Admitter(kube, wait_image, "IfNotPresent")  # type: ignore[arg-type]
    answer: Obj = admitter.review({"request": req})["response"]
    assert answer["uid"] == "u-1"
    return answer


def patch_of(answer: Obj) -> list[Obj]:
    assert answer["allowed"], answer
    assert answer["patchType"] == "JSONPatch"
    ops: list[Obj] = json.loads(base64.b64decode(answer["patch"]))
    return ops


def test_a_pod_that_asks_for_nothing_is_let_through_untouched() -> None:
    kube = FakeKube()
    answer = admit(kube, request(pod({"app": "x"}, name="web")))
    assert answer == {"uid": "u-1", "allowed": True}
    assert kube.reviews == []
    assert kube.engines == {}


def test_a_labelled_pod_gets_its_engine_its_environment_and_the_wait() -> None:
    kube = FakeKube()
    body = pod({names.LABEL_ENGINE_REQUEST: "fast"}, name="runner", namespace="ci")
    body["spec"]["serviceAccountName"] = "gitlab-runner"
    body["spec"]["containers"][0]["env"] = [{"name": "CI", "value": "1"}]
    ops = patch_of(admit(kube, request(body), wait_image="rdo:1"))
    # The DockerEngine: named after the pod, for that pod, of the class the label names.
    assert kube.engines["runner"]["spec"] == {
        "clientPod": {"name": "runner"},
        "engine": {"className": "fast"},
    }
    assert kube.engines["runner"]["metadata"] == {"namespace": "ci", "name": "runner"}
    # Asked as the pod's own ServiceAccount, in the pod's namespace.
    assert kube.reviews == [webhook.access_review("ci", "gitlab-runner")["spec"]]
    assert kube.reviews[0]["user"] == "system:serviceaccount:ci:gitlab-runner"
    assert kube.reviews[0]["resourceAttributes"]["resource"] == "dockerengines"
    by_path = {op["path"]: op["value"] for op in ops}
    assert all(op["op"] == "add" for op in ops)
    assert by_path["/metadata/annotations"] == {}
    assert by_path["/metadata/annotations/remotedocker.dev~1dockerengine"] == "runner"
    # The container's own variable stays first; ours are appended after it, so they win.
    env_ops = [op["value"] for op in ops if op["path"] == "/spec/containers/0/env/-"]
    assert env_ops == ENGINE_ENV
    assert by_path["/spec/containers/0/volumeMounts"] == [MOUNT]
    assert by_path["/spec/volumes"] == [
        {
            "name": "remote-docker-client",
            "secret": {
                "secretName": "runner-dockerengine",
                "items": [{"key": k, "path": k} for k in ("ca.pem", "cert.pem", "key.pem")],
                "defaultMode": 0o444,
            },
        }
    ]
    (wait,) = by_path["/spec/initContainers"]
    assert wait["name"] == names.CLIENT_WAIT_CONTAINER
    assert wait["image"] == "rdo:1"
    assert wait["command"][-3:] == ["wait", "--timeout", str(webhook.WAIT_SECONDS)]
    assert wait["env"] == ENGINE_ENV
    assert wait["securityContext"]["runAsNonRoot"] is True
    assert wait["securityContext"]["allowPrivilegeEscalation"] is False
    assert "/metadata/name" not in by_path


def test_the_wait_goes_first_among_init_containers_which_get_the_environment_too() -> None:
    body = pod({names.LABEL_ENGINE_REQUEST: ""}, name="runner")
    body["spec"]["initContainers"] = [{"name": "clone", "image": "git", "env": []}]
    body["spec"]["volumes"] = [{"name": "work", "emptyDir": {}}]
    ops = patch_of(admit(FakeKube(), request(body), wait_image="rdo:1"))
    paths = [op["path"] for op in ops]
    assert "/spec/initContainers/0" in paths
    assert "/spec/initContainers/0/env/-" in paths
    assert "/spec/volumes/-" in paths
    # The insertion comes after the clone container's own patches, which address it by index 0.
    assert paths.index("/spec/initContainers/0") > paths.index("/spec/initContainers/0/env/-")


def test_the_default_class_and_the_default_account_when_neither_is_named() -> None:
    kube = FakeKube()
    patch_of(admit(kube, request(pod({names.LABEL_ENGINE_REQUEST: ""}, name="runner"))))
    assert "engine" not in kube.engines["runner"]["spec"]
    assert kube.reviews[0]["user"] == "system:serviceaccount:ci:default"


def test_a_generated_name_is_made_at_admission_so_the_engine_can_name_its_pod() -> None:
    kube = FakeKube()
    body = pod({names.LABEL_ENGINE_REQUEST: ""}, generateName="runner-")
    ops = patch_of(admit(kube, request(body)))
    (name,) = [op["value"] for op in ops if op["path"] == "/metadata/name"]
    assert name.startswith("runner-")
    assert len(name) == len("runner-") + 5
    assert kube.engines[name]["spec"]["clientPod"] == {"name": name}
    assert webhook.generated_name("x" * 70, lambda _: "b") == "x" * 58 + "bbbbb"


def test_a_long_pod_name_gives_an_engine_name_that_fits_a_label() -> None:
    kube = FakeKube()
    long = "runner-" + "a" * 100
    patch_of(admit(kube, request(pod({names.LABEL_ENGINE_REQUEST: ""}, name=long))))
    (engine,) = kube.engines
    assert len(engine) <= 63
    assert kube.engines[engine]["spec"]["clientPod"] == {"name": long}
    assert names.pod_engine(long) == engine
    assert names.pod_engine(long + "b") != engine


def test_a_pod_whose_account_may_not_create_engines_is_refused_naming_the_label() -> None:
    kube = FakeKube(allowed=False)
    answer = admit(kube, request(pod({names.LABEL_ENGINE_REQUEST: ""}, name="runner")))
    assert answer["allowed"] is False
    assert answer["status"]["code"] == 403
    message = answer["status"]["message"]
    assert message.startswith("metadata.labels[remotedocker.dev/engine]:")
    assert "ServiceAccount 'default' may not create dockerengines" in message
    assert kube.engines == {}


def test_a_dry_run_creates_nothing_and_asks_nothing() -> None:
    kube = FakeKube(allowed=False)
    body = pod({names.LABEL_ENGINE_REQUEST: ""}, name="runner")
    ops = patch_of(admit(kube, request(body, dryRun=True)))
    assert ops
    assert kube.reviews == []
    assert kube.engines == {}


def test_an_engine_of_that_name_is_taken_only_if_it_is_this_pods_and_unbound() -> None:
    kube = FakeKube()
    body = pod({names.LABEL_ENGINE_REQUEST: ""}, name="runner")
    patch_of(admit(kube, request(body)))
    # Asked again (the API server gave up on the first answer): the same engine, still unbound.
    patch_of(admit(kube, request(body)))
    # Bound to an earlier pod of this name (its owner), or ended: refused, the pod made again.
    kube.engines["runner"]["metadata"]["ownerReferences"] = [{"uid": "old"}]
    answer = admit(kube, request(body))
    assert answer["allowed"] is False
    assert answer["status"]["message"].startswith("metadata.name: dockerengine ci/runner already")


def test_an_api_refusal_or_failure_refuses_the_pod_with_the_reason() -> None:
    kube = FakeKube()
    kube.fail_with = ApiException(status=422, reason="Unprocessable")
    kube.fail_with.body = json.dumps({"message": "spec.engine.className: too long"})
    body = pod({names.LABEL_ENGINE_REQUEST: ""}, name="runner")
    answer = admit(kube, request(body))
    assert answer["allowed"] is False
    assert answer["status"]["message"] == (
        "metadata.labels[remotedocker.dev/engine]: the DockerEngine was refused: "
        "spec.engine.className: too long"
    )
    kube.fail_with = ConnectionResetError("reset by peer")
    answer = admit(kube, request(body))
    assert answer["allowed"] is False
    assert "could not make its engine: reset by peer" in answer["status"]["message"]


def test_updates_and_subresources_are_not_its_business() -> None:
    kube = FakeKube()
    body = pod({names.LABEL_ENGINE_REQUEST: ""}, name="runner")
    assert admit(kube, request(body, operation="UPDATE")) == {"uid": "u-1", "allowed": True}
    assert admit(kube, request(body, subResource="binding")) == {"uid": "u-1", "allowed": True}
    assert kube.engines == {}
