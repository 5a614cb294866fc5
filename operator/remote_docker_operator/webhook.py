"""The admission webhook: a pod labelled `remotedocker.dev/engine` gets a DockerEngine and the
docker CLI's environment as it is created, so a CI runner's pod template carries one label and
no job script changes (README: "From a CI pod, with no step").

At the pod's admission it
- names the pod if it has only a generateName (the DockerEngine must name its client pod);
- asks the API server whether the pod's ServiceAccount may create DockerEngines in the pod's
  namespace (a SubjectAccessReview): whoever may create that pod may run as that account and
  so could have run `remote-docker setup` in it; no more is granted;
- creates the DockerEngine (not on a dry run), which the operator provisions as any other;
- patches the pod: DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH from the client Secret,
  the certificates mounted, and a first init container that holds the pod's own containers
  back until the engine answers over mutual TLS from this pod (`remote-docker wait`).

Stateless, so every replica serves it, the leader or not. `review` is the one place that turns
what went wrong into the AdmissionReview's answer.
"""

import base64
import json
import logging
import random
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

from . import builders, names
from .clitext import api_message
from .engine_cli import ENGINE_VARIABLE, engine_manifest
from .kube import Kube, Obj, path

logger = logging.getLogger(__name__)
PATH = "/mutate-pods"
# What the API server's name generator appends to a generateName (its base cut to 58).
GENERATED_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
GENERATED_BASE_MAX = 58
WAIT_SECONDS = 600


class Denied(Exception):
    """The pod is refused; the message (naming the field) is what its creator reads."""


def generated_name(generate_name: str, pick: Callable[[str], str] = random.choice) -> str:
    """What the API server would make of a generateName, made here first."""
    suffix = "".join(pick(GENERATED_SUFFIX_ALPHABET) for _ in range(5))
    return generate_name[:GENERATED_BASE_MAX] + suffix


def access_review(namespace: str, service_account: str) -> Obj:
    """May this ServiceAccount create DockerEngines in its namespace?"""
    return {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": f"system:serviceaccount:{namespace}:{service_account}",
            "groups": [
                "system:serviceaccounts",
                f"system:serviceaccounts:{namespace}",
                "system:authenticated",
            ],
            "resourceAttributes": {
                "namespace": namespace,
                "verb": "create",
                "group": names.GROUP,
                "resource": names.DOCKER_ENGINE_PLURAL,
            },
        },
    }


def _escape(key: str) -> str:
    """A map key as one JSON-pointer token (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def pod_patch(
    pod: Obj, name: str | None, engine: str, wait_image: str, pull_policy: str
) -> list[Obj]:
    """The JSON patch that makes `pod` the client of DockerEngine `engine`: its name (when the
    API server would have generated it), every container's docker environment and
    certificates, and the wait first among the init containers (none if wait_image is empty)."""
    spec, meta = pod.get("spec") or {}, pod.get("metadata") or {}
    secret = names.client_secret(engine, names.DOCKER_ENGINE_KIND)
    env = [*builders.client_env(secret), {"name": ENGINE_VARIABLE, "value": engine}]
    mount = {"name": names.CLIENT_CERT_VOLUME, "mountPath": names.CERT_DIR, "readOnly": True}
    ops: list[Obj] = []
    if name:
        ops.append({"op": "add", "path": "/metadata/name", "value": name})
    if "annotations" not in meta:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {}})
    ops.append(
        {
            "op": "add",
            "path": f"/metadata/annotations/{_escape(names.ANNOTATION_DOCKER_ENGINE)}",
            "value": engine,
        }
    )
    for field in ("initContainers", "containers"):
        for i, container in enumerate(spec.get(field) or []):
            at = f"/spec/{field}/{i}"
            # Ours after the container's own, so they win over a variable of the same name.
            for key, value in (("env", env), ("volumeMounts", [mount])):
                if key in container:
                    ops += [{"op": "add", "path": f"{at}/{key}/-", "value": v} for v in value]
                else:
                    ops.append({"op": "add", "path": f"{at}/{key}", "value": value})
    volume = {"name": names.CLIENT_CERT_VOLUME, "secret": builders.client_cert_volume(secret)}
    if "volumes" in spec:
        ops.append({"op": "add", "path": "/spec/volumes/-", "value": volume})
    else:
        ops.append({"op": "add", "path": "/spec/volumes", "value": [volume]})
    if wait_image:
        wait = wait_container(wait_image, pull_policy, env, mount)
        if "initContainers" in spec:
            ops.append({"op": "add", "path": "/spec/initContainers/0", "value": wait})
        else:
            ops.append({"op": "add", "path": "/spec/initContainers", "value": [wait]})
    return ops


def wait_container(image: str, pull_policy: str, env: list[Obj], mount: Obj) -> Obj:
    """Runs `remote-docker wait` from the operator's image: the pod's own containers start once
    its engine answers from this pod over mutual TLS. Restricted as Pod Security's `restricted`
    level wants, so it never makes a pod less admissible than it was."""
    return {
        "name": names.CLIENT_WAIT_CONTAINER,
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": [
            "python",
            "-m",
            "remote_docker_operator.engine_cli",
            "wait",
            "--timeout",
            str(WAIT_SECONDS),
        ],
        "env": env,
        "volumeMounts": [mount],
        "resources": {
            "requests": {"cpu": "10m", "memory": "32Mi"},
            "limits": {"memory": "128Mi"},
        },
        "securityContext": {
            **builders.UNPRIVILEGED,
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "readOnlyRootFilesystem": True,
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def response(uid: str, patch: list[Obj] | None = None, denied: str | None = None) -> Obj:
    answer: Obj = {"uid": uid, "allowed": denied is None}
    if denied is not None:
        answer["status"] = {"code": 403, "reason": "Forbidden", "message": denied}
    elif patch:
        answer["patchType"] = "JSONPatch"
        answer["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": answer}


class Admitter:
    def __init__(self, kube: Kube, wait_image: str, pull_policy: str) -> None:
        self.kube, self.wait_image, self.pull_policy = kube, wait_image, pull_policy

    def review(self, review: Obj) -> Obj:
        """The answer to one AdmissionReview: every outcome goes through here."""
        request = review.get("request") or {}
        uid = str(request.get("uid", ""))
        try:
            return response(uid, patch=self.admit(request))
        except Denied as e:
            return response(uid, denied=str(e))
        except Exception as e:
            # The API server, or its connection: the pod asked for an engine and gets none, so
            # it is refused (its creator retries) rather than started without one.
            logger.exception("Admission of a pod asking for an engine failed")
            return response(uid, denied=f"remote-docker-operator could not make its engine: {e}")

    def admit(self, request: Obj) -> list[Obj]:
        pod = request.get("object") or {}
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        if (
            request.get("operation") != "CREATE"
            or request.get("subResource")
            or names.LABEL_ENGINE_REQUEST not in labels
        ):
            return []
        namespace = str(request.get("namespace") or meta.get("namespace") or "")
        given = meta.get("name") or ""
        generate = meta.get("generateName") or ""
        if not given and not generate:
            return []  # the API server refuses a pod without either, in its own words
        name = given or generated_name(generate)
        engine = names.pod_engine(name)
        if not request.get("dryRun"):
            account = (pod.get("spec") or {}).get("serviceAccountName") or "default"
            self.authorize(namespace, account)
            self.create(namespace, name, engine, labels[names.LABEL_ENGINE_REQUEST] or None)
        return pod_patch(pod, None if given else name, engine, self.wait_image, self.pull_policy)

    def authorize(self, namespace: str, account: str) -> None:
        answer = self.kube.request(
            "POST", path("SubjectAccessReview"), access_review(namespace, account)
        )
        if not (answer.get("status") or {}).get("allowed"):
            raise Denied(
                f"metadata.labels[{names.LABEL_ENGINE_REQUEST}]: the pod asks for an engine, but "
                f"its ServiceAccount {account!r} may not create "
                f"{names.DOCKER_ENGINE_PLURAL}.{names.GROUP} in namespace {namespace!r} "
                "(grant it as for remote-docker setup)"
            )

    def create(self, namespace: str, pod: str, engine: str, class_name: str | None) -> None:
        manifest = engine_manifest(namespace, pod, engine, class_name)
        try:
            created = self.kube.create(manifest)
        except ApiException as e:
            raise Denied(
                f"metadata.labels[{names.LABEL_ENGINE_REQUEST}]: the DockerEngine was refused: "
                f"{api_message(e)}"
            ) from e
        if created is not None:
            return
        # Already there: this pod's own, made by an admission the API server then gave up on
        # (a timeout), is taken as it is; one bound to another pod of this name, or ended, not.
        found = self.kube.get(names.DOCKER_ENGINE_KIND, namespace, engine) or {}
        if (
            (found.get("spec") or {}).get("clientPod", {}).get("name") != pod
            or found.get("metadata", {}).get("ownerReferences")
            or (found.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        ):
            raise Denied(
                f"metadata.name: dockerengine {namespace}/{engine} already exists for an earlier "
                "pod of this name (it goes with that pod); create this pod again in a moment"
            )


def serve(port: int, cert_dir: Path, admitter: Admitter) -> ThreadingHTTPServer:
    """HTTPS on `port` (all addresses), in threads of its own; tls.crt and tls.key from
    cert_dir, as a kubernetes.io/tls Secret mounts them."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path.split("?")[0] != PATH:
                self.send_error(404)
                return
            try:
                review = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            except ValueError:
                self.send_error(400, "not an AdmissionReview")
                return
            body = json.dumps(admitter.review(review)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("webhook: " + format, *args)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_dir / "tls.crt", cert_dir / "tls.key")
    server = ThreadingHTTPServer(("", port), Handler)
    # The handshake in the request's thread, not the accepting one: a slow client holds up
    # only itself.
    server.socket = context.wrap_socket(
        server.socket, server_side=True, do_handshake_on_connect=False
    )
    threading.Thread(target=server.serve_forever, name="webhook", daemon=True).start()
    return server
