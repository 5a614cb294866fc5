"""`remote-docker`: CircleCI's setup_remote_docker as a step in any CI pod.

    eval "$(remote-docker setup)"     a DockerEngine for the pod this runs in: waits until the
                                      engine is ready, writes the client certificates to a
                                      directory and prints the `export` lines for the docker CLI
    remote-docker teardown [NAME]     ends it early (it ends anyway when the pod does)
    remote-docker wait                waits until DOCKER_HOST answers over mutual TLS from this
                                      pod (the admission webhook's init container runs it)

Run inside a pod whose ServiceAccount may create, get and delete DockerEngines and get Secrets
in its namespace (README: "From a CI pod"). The pod is found by POD_NAME and POD_NAMESPACE (the
downward API), else its hostname and its ServiceAccount's namespace. Progress goes to stderr,
the export lines alone to stdout. Exit codes: 0 ready (or torn down); 1 when it could not be
(the message says why); 2 for bad arguments.
"""

import argparse
import base64
import http.client
import itertools
import os
import shlex
import socket
import ssl
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from . import kubeapi, names
from .clitext import CliError, api_message, progress

Obj = dict[str, Any]
# Polls of the API start fast and slow down: a warm engine is ready a quarter second after its
# create call, a cold one in seconds, and a thousand waiting pods should not poll ten times a
# second.
FIRST_POLL_SECONDS = 0.1
POLL_SECONDS = 1.0
# Connection tries from the pod, which the API server never sees, stay fast for two seconds: a
# NetworkPolicy controller lets a pod's new label in well within them.
FAST_TRIES = 20
CONNECT_SECONDS = 0.2
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# The client Secret's keys that are the docker CLI's environment, and those that are files.
ENV_KEYS = ("DOCKER_HOST", "DOCKER_TLS_VERIFY")
CERT_FILES = ("ca.pem", "cert.pem", "key.pem")
# Set by setup: what teardown ends when it is given no name.
ENGINE_VARIABLE = "REMOTE_DOCKER_ENGINE"


# -- pure ---------------------------------------------------------------------------------------


def pod_identity(
    env: Mapping[str, str], sa_namespace: str | None, namespace: str | None = None
) -> tuple[str, str]:
    """(namespace, pod) of the pod this runs in; `namespace` given wins."""
    namespace = namespace or env.get("POD_NAMESPACE") or sa_namespace
    pod = env.get("POD_NAME") or env.get("HOSTNAME") or socket.gethostname()
    if not namespace:
        raise CliError(
            "not in a pod: no POD_NAMESPACE and no ServiceAccount namespace file; "
            "give --namespace and --pod"
        )
    return namespace, pod


def engine_manifest(
    namespace: str,
    pod: str,
    name: str | None = None,
    class_name: str | None = None,
    version: str | None = None,
    published_ports: Sequence[int] = (),
    ephemeral_ports: bool = False,
    deadline_seconds: int | None = None,
) -> Obj:
    """The DockerEngine for `pod`: named `name`, else after the pod (a suffix made unique by
    the API server)."""
    meta: Obj = {"namespace": namespace}
    if name:
        meta["name"] = name
    else:
        # A DockerEngine's name is a label value (63 characters), the suffix is 5 of them.
        meta["generateName"] = pod[:50].rstrip("-.") + "-"
    engine: Obj = {k: v for k, v in (("className", class_name), ("version", version)) if v}
    spec: Obj = {"clientPod": {"name": pod}}
    if engine:
        spec["engine"] = engine
    if published_ports or ephemeral_ports:
        ports: Obj = {"ephemeral": ephemeral_ports} if ephemeral_ports else {}
        if published_ports:
            ports["ports"] = sorted(set(published_ports))
        spec["network"] = {"publishedPorts": ports}
    if deadline_seconds:
        spec["activeDeadlineSeconds"] = deadline_seconds
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.DOCKER_ENGINE_KIND,
        "metadata": meta,
        "spec": spec,
    }


def client_environment(secret_data: Mapping[str, str], cert_dir: Path, engine: str) -> Obj:
    """The docker CLI's environment for the engine, its certificates in cert_dir."""
    missing = [k for k in (*ENV_KEYS, *CERT_FILES) if k not in secret_data]
    if missing:
        raise CliError(f"the client Secret lacks {', '.join(missing)}")
    env = {k: secret_data[k] for k in ENV_KEYS}
    env["DOCKER_CERT_PATH"] = str(cert_dir)
    env[ENGINE_VARIABLE] = engine
    return env


def export_lines(env: Mapping[str, str]) -> str:
    """What `eval` takes: one `export` per variable, quoted for the shell."""
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


def env_file_lines(env: Mapping[str, str]) -> str:
    """KEY=VALUE lines, as GitHub Actions' $GITHUB_ENV and GitLab's dotenv reports read them."""
    return "".join(f"{k}={v}\n" for k, v in env.items())


def poll_delays() -> Iterator[float]:
    """Between API polls: 0.1, 0.2, 0.4, 0.8, then 1 s for ever."""
    delay = FIRST_POLL_SECONDS
    while True:
        yield delay
        delay = min(delay * 2, POLL_SECONDS)


def try_delays() -> Iterator[float]:
    """Between connection tries: 0.1 s for the first two seconds, then as poll_delays from
    0.2 s."""
    yield from itertools.repeat(FIRST_POLL_SECONDS, FAST_TRIES)
    yield from itertools.islice(poll_delays(), 1, None)


def docker_ping(host: str, cert_dir: Path, timeout: float = 2.0) -> str | None:
    """None when the engine at DOCKER_HOST `host` answers GET /_ping over mutual TLS with the
    certificates in cert_dir; otherwise why not."""
    url = urllib.parse.urlsplit(host)
    if url.scheme != "tcp" or not url.hostname:
        return f"DOCKER_HOST {host!r} is not tcp://HOST:PORT"
    try:
        context = ssl.create_default_context(cafile=str(cert_dir / "ca.pem"))
        context.load_cert_chain(cert_dir / "cert.pem", cert_dir / "key.pem")
        conn = http.client.HTTPSConnection(
            url.hostname, url.port or names.ENGINE_PORT, context=context, timeout=timeout
        )
        # A short connect: until the NetworkPolicy controller lets this pod in, its SYN is
        # dropped, and a fresh one a moment later beats the kernel's 1 s retransmission.
        raw = socket.create_connection((conn.host, conn.port), timeout=CONNECT_SECONDS)
        try:
            raw.settimeout(timeout)
            conn.sock = context.wrap_socket(raw, server_hostname=conn.host)
        except OSError:
            raw.close()
            raise
        try:
            conn.request("GET", "/_ping")
            response = conn.getresponse()
            response.read()
        finally:
            conn.close()
    except (OSError, http.client.HTTPException) as e:  # ssl.SSLError is an OSError
        return str(e) or type(e).__name__
    return None if response.status == 200 else f"HTTP {response.status} from /_ping"


# -- act ----------------------------------------------------------------------------------------


class Engines:
    """The API calls: DockerEngines and their client Secrets."""

    def __init__(self, api: kubeapi.Api) -> None:
        self.api = api
        # The account may not watch DockerEngines (the README's rules before `watch`): poll.
        self.watch_refused = False

    @staticmethod
    def _path(namespace: str, name: str = "") -> str:
        plural = f"/apis/{names.GROUP}/{names.VERSION}/namespaces/{namespace}/"
        return plural + names.DOCKER_ENGINE_PLURAL + (f"/{name}" if name else "")

    def _call(self, doing: str, method: str, path: str, body: Obj | None = None) -> Obj | None:
        """The answer; None when the object is not there; CliError saying what we were doing
        and why it failed."""
        try:
            return self.api.request(method, path, body)
        except kubeapi.ApiError as e:
            if e.status == 404 and method != "POST":
                return None
            raise CliError(f"{doing}: {api_message(e)}") from e
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise CliError(f"{doing}: the API server at {self.api.url}: {e}") from e

    def create(self, body: Obj) -> Obj:
        namespace = body["metadata"]["namespace"]
        created = self._call(
            "the API server refused the DockerEngine", "POST", self._path(namespace), body
        )
        assert created is not None  # POST never reads as absent
        return created

    def get(self, namespace: str, name: str) -> Obj | None:
        return self._call(
            f"reading dockerengine {namespace}/{name}", "GET", self._path(namespace, name)
        )

    def states(self, namespace: str, name: str, timeout: float) -> Iterator[Obj | None]:
        """The DockerEngine now, then each version of it as the API server sees it change,
        for about `timeout` seconds; None once it is deleted. A watch, not polls: a warm
        engine is handed out in a fraction of a second, and a poll would lag it."""
        until, delays = time.monotonic() + timeout, poll_delays()
        while (left := until - time.monotonic()) > 0:
            found = self.get(namespace, name)
            yield found
            if found is None:
                return
            if self.watch_refused:
                time.sleep(min(next(delays), left))
                continue
            query = {
                "fieldSelector": f"metadata.name={name}",
                "resourceVersion": found["metadata"]["resourceVersion"],
            }
            try:
                for event in self.api.watch(self._path(namespace), query, left):
                    if event.get("type") == "DELETED":
                        yield None
                        return
                    if event.get("type") not in ("ADDED", "MODIFIED"):
                        break  # an ERROR (410: too old): read it afresh, watch again
                    yield event["object"]
            except TimeoutError:
                return
            except kubeapi.ApiError as e:
                if e.status != 403:
                    raise CliError(
                        f"watching dockerengine {namespace}/{name}: {api_message(e)}"
                    ) from e
                self.watch_refused = True
            except (OSError, http.client.HTTPException, ValueError):
                time.sleep(POLL_SECONDS)  # the stream broke: read it afresh, watch again

    def delete(self, namespace: str, name: str) -> bool:
        path = self._path(namespace, name)
        return self._call(f"deleting dockerengine {namespace}/{name}", "DELETE", path) is not None

    def secret(self, namespace: str, name: str) -> dict[str, str]:
        doing = f"reading the client Secret {namespace}/{name}"
        found = self._call(doing, "GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
        if found is None:
            raise CliError(f"{doing}: not found")
        return {k: base64.b64decode(v).decode() for k, v in (found.get("data") or {}).items()}


def write_certs(secret_data: Mapping[str, str], cert_dir: Path) -> None:
    """ca.pem, cert.pem and key.pem, readable by this user alone."""
    cert_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name in CERT_FILES:
        path = cert_dir / name
        path.write_text(secret_data[name])
        path.chmod(0o600)


class Waiter:
    """Waits, telling on stderr what it waits for; the clock, sleep and ping are the tests'."""

    def __init__(
        self,
        err: TextIO = sys.stderr,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        ping: Callable[[str, Path], str | None] = docker_ping,
    ) -> None:
        self.err, self.sleep, self.clock, self.ping = err, sleep, clock, ping

    def say(self, line: str) -> None:
        print(line, file=self.err, flush=True)

    def wait_answers(self, host: str, cert_dir: Path, timeout: float) -> None:
        """Until the engine answers from this pod: Ready means it answers its own probe, not
        that this pod's traffic is let through yet (a NetworkPolicy controller programs a
        pod's new label a moment later) or that its name resolves here."""
        until, told, delays = self.clock() + timeout, "", try_delays()
        while (why := self.ping(host, cert_dir)) is not None:
            if why != told:
                self.say(f"waiting for {host}: {why}")
                told = why
            if self.clock() >= until:
                raise CliError(f"{host} did not answer over mutual TLS in {timeout:.0f}s: {why}")
            self.sleep(next(delays))
        self.say(f"{host} answers over mutual TLS")


class Setup(Waiter):
    def __init__(self, engines: Engines, **waiter: Any) -> None:
        super().__init__(**waiter)
        self.engines = engines

    def wait_ready(self, namespace: str, name: str, timeout: float) -> Obj:
        """Follows the DockerEngine, telling each change, until it runs; CliError if it ends,
        goes, or the time is up."""
        told = ""
        for found in self.engines.states(namespace, name, timeout):
            if found is None:
                raise CliError(f"dockerengine {namespace}/{name} was deleted while starting")
            status = found.get("status") or {}
            line = progress(status)
            if line != told:
                self.say(f"dockerengine/{name}: {line}")
                told = line
            if status.get("phase") == "Running":
                return status
            if status.get("phase") in ("Succeeded", "Failed"):
                raise CliError(f"dockerengine {namespace}/{name} ended: {line}")
        raise CliError(f"dockerengine {namespace}/{name} not ready after {timeout:.0f}s")

    def setup(self, manifest: Obj, cert_root: Path, timeout: float) -> Obj:
        """Creates the DockerEngine, waits for it, writes its certificates; the environment."""
        start = self.clock()
        created = self.engines.create(manifest)
        meta = created["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        self.say(
            f"dockerengine.{names.GROUP}/{name} created for pod {namespace}/"
            f"{manifest['spec']['clientPod']['name']}"
        )
        status = self.wait_ready(namespace, name, timeout)
        data = self.engines.secret(namespace, status["clientSecret"])
        cert_dir = cert_root / name
        env = client_environment(data, cert_dir, name)
        write_certs(data, cert_dir)
        self.wait_answers(env["DOCKER_HOST"], cert_dir, timeout)
        self.say(f"dockerengine/{name}: usable {self.clock() - start:.2f}s after its create call")
        return env


# -- the command line ---------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="remote-docker", description="An isolated remote Docker engine for this pod."
    )
    top.add_argument("-n", "--namespace", help="default: POD_NAMESPACE, else the pod's own")
    commands = top.add_subparsers(dest="command", required=True)
    setup = commands.add_parser("setup", help="start an engine; print the export lines")
    setup.add_argument("--pod", help="the client pod (default: POD_NAME, else the hostname)")
    setup.add_argument("--name", help="the DockerEngine's name (default: after the pod)")
    setup.add_argument("--class", dest="class_name", help="the EngineClass (default: default)")
    setup.add_argument("--version", dest="engine_version", help="Docker version, e.g. 27")
    setup.add_argument(
        "--publish",
        type=int,
        action="append",
        default=[],
        metavar="PORT",
        help="a host port containers publish on the engine that this pod may reach (repeat)",
    )
    setup.add_argument(
        "--publish-ephemeral",
        action="store_true",
        help="Docker's ephemeral host ports too (docker run -P, testcontainers)",
    )
    setup.add_argument("--deadline", type=int, help="seconds until the engine is stopped")
    setup.add_argument(
        "--cert-dir",
        type=Path,
        default=Path(os.environ.get("TMPDIR", "/tmp")) / "remote-docker",
        help="certificates go in DIR/NAME (default: $TMPDIR/remote-docker)",
    )
    setup.add_argument("--env-file", type=Path, help="also append KEY=VALUE lines to this file")
    setup.add_argument("--timeout", type=float, default=600, help="seconds to wait (600)")
    wait = commands.add_parser(
        "wait", help="wait until $DOCKER_HOST answers over mutual TLS ($DOCKER_CERT_PATH)"
    )
    wait.add_argument("--timeout", type=float, default=600, help="seconds to wait (600)")
    teardown = commands.add_parser("teardown", help="end an engine early")
    teardown.add_argument("name", nargs="?", help=f"default: ${ENGINE_VARIABLE}")
    return top


def connect() -> kubeapi.Api:
    try:
        return kubeapi.connect(os.environ)
    except kubeapi.NotConfigured as e:
        raise CliError(str(e)) from e


def _sa_namespace() -> str | None:
    try:
        return SA_NAMESPACE_FILE.read_text().strip() or None
    except OSError:
        return None


def teardown(engines: Engines, namespace: str, name: str | None) -> None:
    name = name or os.environ.get(ENGINE_VARIABLE)
    if not name:
        raise CliError(f"no DockerEngine named, and ${ENGINE_VARIABLE} is not set")
    gone = engines.delete(namespace, name)
    print(f"dockerengine/{name} {'deleted' if gone else 'not found'}", file=sys.stderr)


def wait(env: Mapping[str, str], timeout: float) -> None:
    host, cert_dir = env.get("DOCKER_HOST"), env.get("DOCKER_CERT_PATH")
    if not host or not cert_dir:
        raise CliError("DOCKER_HOST and DOCKER_CERT_PATH must be set")
    Waiter().wait_answers(host, Path(cert_dir), timeout)


def setup(engines: Engines, args: argparse.Namespace, namespace: str, pod: str) -> Obj:
    manifest = engine_manifest(
        namespace,
        args.pod or pod,
        args.name,
        args.class_name,
        args.engine_version,
        args.publish,
        args.publish_ephemeral,
        args.deadline,
    )
    env = Setup(engines).setup(manifest, args.cert_dir, args.timeout)
    if args.env_file:
        with args.env_file.open("a") as f:
            f.write(env_file_lines(env))
    return env


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "wait":
            wait(os.environ, args.timeout)
            return 0
        engines = Engines(connect())
        namespace, pod = pod_identity(os.environ, _sa_namespace(), args.namespace)
        if args.command == "teardown":
            teardown(engines, namespace, args.name)
        else:
            out.write(export_lines(setup(engines, args, namespace, pod)))
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
