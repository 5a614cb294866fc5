"""`remote-docker`: its pure parts as data, and setup against an in-memory API."""

import io
import stat
from pathlib import Path
from typing import Any

import pytest

from remote_docker_operator import engine_cli, names
from remote_docker_operator.cli import CliError
from remote_docker_operator.engine_cli import Setup

SECRET = {
    "DOCKER_HOST": "tcp://engine.bj-1.svc:2376",
    "DOCKER_TLS_VERIFY": "1",
    "DOCKER_CERT_PATH": "/certs/client",
    "ca.pem": "CA",
    "cert.pem": "CERT",
    "key.pem": "KEY",
}


def test_the_pod_is_found_by_the_downward_api_else_its_hostname() -> None:
    env = {"POD_NAME": "runner-1", "POD_NAMESPACE": "ci", "HOSTNAME": "h"}
    assert engine_cli.pod_identity(env, "sa-ns") == ("ci", "runner-1")
    assert engine_cli.pod_identity({"HOSTNAME": "h"}, "sa-ns") == ("sa-ns", "h")
    assert engine_cli.pod_identity(env, "sa-ns", "flag") == ("flag", "runner-1")
    with pytest.raises(CliError, match="not in a pod"):
        engine_cli.pod_identity({"HOSTNAME": "h"}, None)


def test_the_manifest_names_the_pod_and_only_what_was_asked() -> None:
    plain = engine_cli.engine_manifest("ci", "runner-abc")
    assert plain == {
        "apiVersion": names.API_VERSION,
        "kind": names.DOCKER_ENGINE_KIND,
        "metadata": {"namespace": "ci", "generateName": "runner-abc-"},
        "spec": {"clientPod": {"name": "runner-abc"}},
    }
    full = engine_cli.engine_manifest("ci", "p", "eng", "fast", "27", [8080, 8080, 80], True, 3600)
    assert full["metadata"] == {"namespace": "ci", "name": "eng"}
    assert full["spec"] == {
        "clientPod": {"name": "p"},
        "engine": {"className": "fast", "version": "27"},
        "network": {"publishedPorts": {"ephemeral": True, "ports": [80, 8080]}},
        "activeDeadlineSeconds": 3600,
    }
    # A long pod name still leaves a DockerEngine name that fits a label value.
    long = engine_cli.engine_manifest("ci", "x" * 80)["metadata"]["generateName"]
    assert len(long) + 5 <= 63


def test_export_lines_are_quoted_for_eval() -> None:
    env = {"DOCKER_HOST": "tcp://h:2376", "ODD": "a b'c"}
    assert engine_cli.export_lines(env) == (
        "export DOCKER_HOST=tcp://h:2376\nexport ODD='a b'\"'\"'c'\n"
    )
    assert engine_cli.env_file_lines({"A": "1"}) == "A=1\n"


class FakeEngines:
    """The API as setup sees it: the DockerEngine goes through the given statuses."""

    def __init__(self, statuses: list[dict[str, Any]]) -> None:
        self.statuses = statuses
        self.created: list[dict[str, Any]] = []

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        self.created.append(body)
        meta = body["metadata"]
        return {"metadata": {"namespace": meta["namespace"], "name": "runner-x1"}}

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return {"status": status}

    def secret(self, namespace: str, name: str) -> dict[str, str]:
        assert (namespace, name) == ("ci", "runner-x1-dockerengine")
        return dict(SECRET)


def setup_with(statuses: list[dict[str, Any]], timeout: float = 600) -> tuple[Setup, io.StringIO]:
    err = io.StringIO()
    ticks = iter(range(10_000))
    engines: Any = FakeEngines(statuses)
    return Setup(engines, err, sleep=lambda _: None, clock=lambda: float(next(ticks))), err


def test_setup_waits_writes_the_certificates_and_returns_the_environment(tmp_path: Path) -> None:
    running = {"phase": "Running", "clientSecret": "runner-x1-dockerengine"}
    setup, err = setup_with([{}, {"phase": "Provisioning"}, running])
    env = setup.setup(engine_cli.engine_manifest("ci", "runner"), tmp_path, 60)
    cert_dir = tmp_path / "runner-x1"
    assert env == {
        "DOCKER_HOST": SECRET["DOCKER_HOST"],
        "DOCKER_TLS_VERIFY": "1",
        "DOCKER_CERT_PATH": str(cert_dir),
        "REMOTE_DOCKER_ENGINE": "runner-x1",
    }
    assert (cert_dir / "key.pem").read_text() == "KEY"
    assert stat.S_IMODE((cert_dir / "key.pem").stat().st_mode) == 0o600
    lines = err.getvalue().splitlines()
    assert lines[0].startswith("dockerengine.remotedocker.dev/runner-x1 created for pod ci/runner")
    assert lines[1:] == [
        "dockerengine/runner-x1: Pending",
        "dockerengine/runner-x1: Provisioning",
        "dockerengine/runner-x1: Running",
    ]


def test_setup_fails_with_the_operators_words(tmp_path: Path) -> None:
    failed = {"phase": "Failed", "reason": "EngineClassNotFound", "message": "spec.engine.x"}
    setup, _ = setup_with([failed])
    with pytest.raises(CliError, match=r"ended: Failed \(EngineClassNotFound: spec\.engine\.x\)"):
        setup.setup(engine_cli.engine_manifest("ci", "runner"), tmp_path, 60)
    assert not (tmp_path / "runner-x1").exists()


def test_setup_gives_up_at_its_timeout(tmp_path: Path) -> None:
    setup, _ = setup_with([{"phase": "Pending", "reason": "Queued"}])
    with pytest.raises(CliError, match="not ready after 5s"):
        setup.setup(engine_cli.engine_manifest("ci", "runner"), tmp_path, 5)


def test_a_secret_without_the_client_keys_is_an_error(tmp_path: Path) -> None:
    partial = {k: v for k, v in SECRET.items() if k != "key.pem"}
    with pytest.raises(CliError, match=r"lacks key\.pem"):
        engine_cli.client_environment(partial, tmp_path, "e")
    assert engine_cli.client_environment(SECRET, tmp_path, "e")["DOCKER_TLS_VERIFY"] == "1"
