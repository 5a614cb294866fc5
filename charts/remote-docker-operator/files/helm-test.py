"""`helm test`: one tiny BuildJob must reach phase Succeeded.

Runs in the operator's own image (Python and the kubernetes client) as the test's Pod. It
creates a BuildJob whose job runs `docker version` against its engine, waits for it to succeed
(failing on Failed or on the timeout, with the status printed), and deletes it. The BuildJob is
owned by this Pod, so the garbage collector removes it even if this script is killed.
"""

import json
import os
import sys
import time
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

GROUP = "remotedocker.dev"
VERSION = "v1alpha1"
PLURAL = "buildjobs"
POLL_SECONDS = 2


def log(message: str) -> None:
    print(message, flush=True)


def build_job() -> dict[str, Any]:
    timeout = int(os.environ["RDO_TEST_TIMEOUT_SECONDS"])
    spec: dict[str, Any] = {
        "job": {
            "image": os.environ["RDO_TEST_JOB_IMAGE"],
            "command": ["sh", "-c"],
            "args": ["docker version"],
        },
        "activeDeadlineSeconds": timeout,
        "ttlSecondsAfterFinished": 0,
    }
    engine_image = os.environ.get("RDO_TEST_ENGINE_IMAGE", "")
    if engine_image:
        spec["engine"] = {"image": engine_image}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BuildJob",
        "metadata": {
            "generateName": os.environ["RDO_TEST_NAME_PREFIX"],
            "namespace": os.environ["RDO_TEST_NAMESPACE"],
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": os.environ["RDO_TEST_POD_NAME"],
                    "uid": os.environ["RDO_TEST_POD_UID"],
                }
            ],
        },
        "spec": spec,
    }


def wait(api: client.CustomObjectsApi, namespace: str, name: str, timeout: int) -> bool:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    phase = None
    while time.monotonic() < deadline:
        body = cast(
            dict[str, Any],
            api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name),
        )
        status = body.get("status") or {}
        if status.get("phase") != phase:
            phase = status.get("phase")
            log(f"phase {phase}: {status.get('reason')}: {status.get('message')}")
        if phase == "Succeeded":
            return True
        if phase == "Failed":
            break
        time.sleep(POLL_SECONDS)
    else:
        log(f"timed out after {timeout}s")
    log("status: " + json.dumps(status, indent=2, sort_keys=True))
    return False


def main() -> int:
    config.load_incluster_config()  # type: ignore[no-untyped-call]
    api = client.CustomObjectsApi()
    namespace = os.environ["RDO_TEST_NAMESPACE"]
    timeout = int(os.environ["RDO_TEST_TIMEOUT_SECONDS"])
    created = cast(
        dict[str, Any],
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, build_job()),
    )
    name = created["metadata"]["name"]
    log(f"created BuildJob {namespace}/{name}")
    try:
        ok = wait(api, namespace, name, timeout)
    finally:
        try:
            api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            log(f"deleted BuildJob {namespace}/{name}")
        except ApiException as e:
            if e.status != 404:
                log(f"could not delete BuildJob {namespace}/{name}: {e.status} {e.reason}")
    log("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
