"""Helpers shared by the integration and e2e tiers: the operator process, waiting, BuildJobs."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from remote_docker_operator import names

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("RDO_ARTIFACTS", ROOT / ".artifacts"))
T = TypeVar("T")


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

    def __init__(self, kubeconfig: Path, log: Path, **env: str) -> None:
        self.kubeconfig = kubeconfig
        self.log = log
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
                [sys.executable, "-m", "remote_docker_operator"],
                env=full,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

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

    def create_buildjob(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {
            "apiVersion": names.API_VERSION,
            "kind": names.KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        result: dict[str, Any] = self.custom.create_namespaced_custom_object(
            names.GROUP, names.VERSION, namespace, names.PLURAL, body
        )
        return result

    def get_buildjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.custom.get_namespaced_custom_object(
                names.GROUP, names.VERSION, namespace, names.PLURAL, name
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return result

    def delete_buildjob(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(
                names.GROUP, names.VERSION, namespace, names.PLURAL, name
            )
        except ApiException as e:
            if e.status != 404:
                raise

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        bj = self.get_buildjob(namespace, name) or {}
        return dict(bj.get("status") or {})

    def wait_phase(
        self, namespace: str, name: str, *phases: str, timeout: float = 120
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            status = self.status(namespace, name)
            return status if status.get("phase") in phases else None

        try:
            return wait_for(check, timeout, what=f"{namespace}/{name} in {phases}")
        except AssertionError as e:
            raise AssertionError(f"{e}; last status: {self.status(namespace, name)}") from None

    def pod(self, namespace: str, name: str) -> Any:
        try:
            return self.core.read_namespaced_pod(name, namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

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


def operator_for(cluster: Any, env: dict[str, str]) -> Iterator[OperatorProcess]:
    """The body of each tier's session-scoped `operator` fixture (each tier has its own
    cluster, so each needs its own fixture: pytest keeps one value per fixture definition)."""
    op = OperatorProcess(cluster.kubeconfig, cluster.logs / "operator.log", **env)
    op.start()
    yield op
    op.stop()
