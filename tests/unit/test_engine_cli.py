"""`remote-docker`: its pure parts as data, and setup against an in-memory API."""

import datetime
import http.server
import io
import itertools
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from remote_docker_operator import certs, engine_cli, names
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

    def states(self, namespace: str, name: str, timeout: float) -> Iterator[dict[str, Any]]:
        """Each status once, as a watch would bring them; then the watch's time is up."""
        for status in self.statuses:
            yield {"status": status}

    def secret(self, namespace: str, name: str) -> dict[str, str]:
        assert (namespace, name) == ("ci", "runner-x1-dockerengine")
        return dict(SECRET)


def setup_with(
    statuses: list[dict[str, Any]],
    pings: list[str | None] | None = None,
    slept: list[float] | None = None,
) -> tuple[Setup, io.StringIO]:
    """`pings`: what each mutual-TLS call from the pod finds (None: the engine answered);
    `slept` gets each pause asked for."""
    err = io.StringIO()
    ticks = iter(range(10_000))
    pauses = [] if slept is None else slept
    engines: Any = FakeEngines(statuses)
    answers = list(pings or [None])

    def ping(host: str, cert_dir: Path) -> str | None:
        assert host == SECRET["DOCKER_HOST"]
        assert (cert_dir / "ca.pem").read_text() == "CA"
        return answers.pop(0) if len(answers) > 1 else answers[0]

    setup = Setup(
        engines, err=err, sleep=pauses.append, clock=lambda: float(next(ticks)), ping=ping
    )
    return setup, err


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
        f"{SECRET['DOCKER_HOST']} answers over mutual TLS",
        # The fake clock ticks once a reading: 0 before the create call, 1 as the engine is
        # first tried, 2 here.
        "dockerengine/runner-x1: usable 2.00s after its create call",
    ]


def test_setup_tries_the_engine_fast_at_first_then_once_a_second(tmp_path: Path) -> None:
    """A NetworkPolicy controller lets the pod in a fraction of a second after its engine
    runs: the first tries come quickly; for an engine that stays unreachable they settle at
    one a second. (The DockerEngine itself is watched: no pauses before it runs.)"""
    running = {"phase": "Running", "clientSecret": "runner-x1-dockerengine"}
    slept: list[float] = []
    setup, _ = setup_with([{}, {}, running], ["timed out"] * 25 + [None], slept)
    setup.setup(engine_cli.engine_manifest("ci", "runner"), tmp_path, 60)
    assert slept == [0.1] * 20 + [0.2, 0.4, 0.8, 1.0, 1.0]
    # Polls of the API itself (an account that may not watch) slow down from the start.
    assert list(itertools.islice(engine_cli.poll_delays(), 6)) == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_setup_returns_only_once_the_engine_answers_from_this_pod(tmp_path: Path) -> None:
    """Running is the engine answering its own probe; this pod's new label may not be let
    through the engine's NetworkPolicy yet."""
    running = {"phase": "Running", "clientSecret": "runner-x1-dockerengine"}
    setup, err = setup_with([running], ["timed out", "timed out", None])
    setup.setup(engine_cli.engine_manifest("ci", "runner"), tmp_path, 60)
    assert err.getvalue().splitlines()[-3:-1] == [
        f"waiting for {SECRET['DOCKER_HOST']}: timed out",
        f"{SECRET['DOCKER_HOST']} answers over mutual TLS",
    ]
    never, _ = setup_with([running], ["connection refused"])
    with pytest.raises(CliError, match="did not answer over mutual TLS in 30s: connection refused"):
        never.setup(engine_cli.engine_manifest("ci", "runner"), tmp_path, 30)


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


def _write(bundle: certs.TLSBundle, directory: Path) -> Path:
    directory.mkdir()
    for name, pem in (
        ("ca.pem", bundle.ca_cert),
        ("cert.pem", bundle.client_cert),
        ("key.pem", bundle.client_key),
    ):
        (directory / name).write_text(pem)
    return directory


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[str, certs.TLSBundle]]:
    """A stand-in for dockerd's TLS port on this machine: mutual TLS, GET /_ping answers OK."""
    bundle = certs.issue(["localhost"], ["127.0.0.1"], datetime.timedelta(hours=1))
    (tmp_path / "server.pem").write_text(bundle.server_cert)
    (tmp_path / "server-key.pem").write_text(bundle.server_key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.pem", tmp_path / "server-key.pem")
    context.load_verify_locations(cadata=bundle.ca_cert)
    context.verify_mode = ssl.CERT_REQUIRED

    class Ping(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/_ping" else 404)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ping)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"tcp://localhost:{server.server_address[1]}", bundle
    server.shutdown()
    server.server_close()


def test_ping_is_a_mutual_tls_call_that_only_the_engines_own_certificates_pass(
    engine: tuple[str, certs.TLSBundle], tmp_path: Path
) -> None:
    host, bundle = engine
    assert engine_cli.docker_ping(host, _write(bundle, tmp_path / "own")) is None
    other = certs.issue(["localhost"], [], datetime.timedelta(hours=1))
    # Another engine's certificates: our CA does not trust that server, nor it our client.
    refused = engine_cli.docker_ping(host, _write(other, tmp_path / "other"))
    assert refused is not None
    assert "certificate" in refused.lower()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    assert engine_cli.docker_ping(f"tcp://127.0.0.1:{port}", tmp_path / "own") is not None
    assert "not tcp://" in str(engine_cli.docker_ping("unix:///var/run/docker.sock", tmp_path))


def test_wait_reads_the_docker_clis_environment(
    engine: tuple[str, certs.TLSBundle], tmp_path: Path
) -> None:
    host, bundle = engine
    cert_dir = _write(bundle, tmp_path / "own")
    engine_cli.wait({"DOCKER_HOST": host, "DOCKER_CERT_PATH": str(cert_dir)}, 5)
    with pytest.raises(CliError, match="DOCKER_HOST and DOCKER_CERT_PATH must be set"):
        engine_cli.wait({"DOCKER_HOST": host}, 5)
