"""gate/main.go, built here and run against a mutual-TLS server of the test's own on 127.0.0.1:
it starts the command once the engine answers, and gives up as the operator expects."""

import datetime
import http.server
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from remote_docker_operator import builders, certs, names

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    out = tmp_path_factory.mktemp("gate") / names.GATE_BINARY
    subprocess.run(
        [go, "build", "-o", str(out), "."],
        cwd=ROOT / "gate",
        check=True,
        env={**os.environ, "CGO_ENABLED": "0"},
    )
    return out


class Ping(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path == "/_ping"
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b"OK" if ok else b"")

    def log_message(self, *args: object) -> None:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def tls(tmp_path: Path) -> tuple[certs.TLSBundle, Path]:
    bundle = certs.issue(["localhost"], ["127.0.0.1"], datetime.timedelta(hours=1))
    client = tmp_path / "client"
    client.mkdir()
    (client / "ca.pem").write_text(bundle.ca_cert)
    (client / "cert.pem").write_text(bundle.client_cert)
    (client / "key.pem").write_text(bundle.client_key)
    return bundle, client


def serve(
    bundle: certs.TLSBundle, directory: Path, port: int, clients_ca: str | None = None
) -> http.server.HTTPServer:
    """The engine's API as dockerd serves it with --tlsverify: a client certificate of its CA
    (or of clients_ca) or no handshake."""
    (directory / "server.pem").write_text(bundle.server_cert)
    (directory / "server-key.pem").write_text(bundle.server_key)
    (directory / "server-ca.pem").write_text(clients_ca or bundle.ca_cert)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "server.pem", directory / "server-key.pem")
    context.load_verify_locations(directory / "server-ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Ping)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def listener() -> Iterator[str]:
    """A destination that answers: one the policies would deny, reachable here."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"127.0.0.1:{s.getsockname()[1]}"


def run_gate(
    gate: Path, client: Path, port: int, tmp_path: Path, *args: str
) -> tuple[subprocess.CompletedProcess[str], str]:
    log = tmp_path / "termination-log"
    env = {
        "PATH": os.environ["PATH"],
        "DOCKER_HOST": f"tcp://127.0.0.1:{port}",
        "DOCKER_CERT_PATH": str(client),
        "DOCKER_TLS_VERIFY": "1",
    }
    done = subprocess.run(
        [str(gate), f"-termination-log={log}", *args],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, log.read_text() if log.exists() else ""


def test_the_command_starts_once_the_engine_answers(
    gate: Path, tls: tuple[certs.TLSBundle, Path], tmp_path: Path
) -> None:
    bundle, client = tls
    port = free_port()
    # The engine comes up a moment after the gate starts: the gate keeps trying.
    later = threading.Timer(0.8, lambda: servers.append(serve(bundle, tmp_path, port)))
    servers: list[http.server.HTTPServer] = []
    started = time.monotonic()
    later.start()
    try:
        done, log = run_gate(
            gate, client, port, tmp_path, "--", "sh", "-c", 'echo "ran $1"; exit 7', "sh", "it"
        )
    finally:
        later.join()
        for server in servers:
            server.shutdown()
    assert (done.returncode, done.stdout, log) == (7, "ran it\n", "")
    assert time.monotonic() - started >= 0.8


def test_a_certificate_of_another_ca_never_gets_an_answer(
    gate: Path, tls: tuple[certs.TLSBundle, Path], tmp_path: Path
) -> None:
    bundle, client = tls
    other = certs.issue(["localhost"], ["127.0.0.1"], datetime.timedelta(hours=1))
    (client / "cert.pem").write_text(other.client_cert)
    (client / "key.pem").write_text(other.client_key)
    port = free_port()
    server = serve(bundle, tmp_path, port)
    try:
        done, log = run_gate(gate, client, port, tmp_path, "-timeout=1s", "--", "true")
    finally:
        server.shutdown()
    assert done.returncode == 1
    assert log.startswith(names.GATE_MARK + f"engine tcp://127.0.0.1:{port} unreachable")
    assert log in done.stderr


def test_an_engine_with_a_certificate_of_another_ca_is_not_trusted(
    gate: Path, tls: tuple[certs.TLSBundle, Path], tmp_path: Path
) -> None:
    bundle, client = tls
    impostor = certs.issue(["localhost"], ["127.0.0.1"], datetime.timedelta(hours=1))
    port = free_port()
    # It accepts the job's certificate, but its own is not of the job's CA.
    server = serve(impostor, tmp_path, port, clients_ca=bundle.ca_cert)
    marker = tmp_path / "ran"
    try:
        done, log = run_gate(
            gate, client, port, tmp_path, "-timeout=1s", "--", "touch", str(marker)
        )
    finally:
        server.shutdown()
    assert done.returncode == 1
    assert "certificate" in log
    assert not marker.exists()


def test_a_denied_destination_that_answers_stops_the_job(
    gate: Path, tls: tuple[certs.TLSBundle, Path], tmp_path: Path, listener: str
) -> None:
    bundle, client = tls
    port = free_port()
    server = serve(bundle, tmp_path, port)
    marker = tmp_path / "ran"
    try:
        # The control: a probed destination that does not answer lets the job run.
        closed = f"127.0.0.1:{free_port()}"
        ok, _ = run_gate(
            gate, client, port, tmp_path, f"-probe={closed}", "--", "touch", str(marker)
        )
        assert ok.returncode == 0
        assert marker.exists()
        marker.unlink()
        done, log = run_gate(
            gate,
            client,
            port,
            tmp_path,
            "-grace=0.5s",
            f"-probe={listener}",
            "--",
            "touch",
            str(marker),
        )
    finally:
        server.shutdown()
    assert done.returncode == builders.PROBE_REACHABLE_EXIT
    assert log == (
        f"{names.GATE_MARK}NetworkPolicy is not enforced: {listener}, which the policies deny, "
        "answered from the job pod"
    )
    assert not marker.exists()


def test_a_missing_command_is_the_jobs_failure_not_the_gates(
    gate: Path, tls: tuple[certs.TLSBundle, Path], tmp_path: Path
) -> None:
    bundle, client = tls
    port = free_port()
    server = serve(bundle, tmp_path, port)
    try:
        done, log = run_gate(gate, client, port, tmp_path, "--", "no-such-command")
    finally:
        server.shutdown()
    assert done.returncode == 127
    assert "no-such-command" in done.stderr
    assert log == ""


def test_install_copies_the_gate(gate: Path, tmp_path: Path) -> None:
    into = tmp_path / "volume"
    into.mkdir()
    subprocess.run([str(gate), "install", str(into)], check=True)
    copied = into / names.GATE_BINARY
    assert copied.read_bytes() == gate.read_bytes()
    assert copied.stat().st_mode & 0o777 == 0o755
