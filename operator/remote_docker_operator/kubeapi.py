"""The few Kubernetes API calls `remote-docker` makes, over the standard library: it runs at the
start of every CI job, where importing the kubernetes client alone took half a second, and a CI
runner's own image then needs no more than python3 to hold it."""

import http.client
import json
import ssl
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

Obj = dict[str, Any]
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
REQUEST_SECONDS = 30.0


class ApiError(Exception):
    """The API server answered with an error status; `body` is its Status object, as text."""

    def __init__(self, status: int, reason: str, body: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status: int | None = status
        self.reason: str | None = reason
        self.body: str | None = body


class NotConfigured(Exception):
    """Neither in a pod nor a usable kubeconfig; the message says what was missing."""


@dataclass(frozen=True)
class Api:
    """One API server: where, how to trust it, and the headers that authenticate us."""

    url: str
    context: ssl.SSLContext | None
    headers: Mapping[str, str] = field(default_factory=dict)

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        parts = urllib.parse.urlsplit(self.url)
        host, port = parts.hostname or "", parts.port
        if parts.scheme == "http":
            return http.client.HTTPConnection(host, port, timeout=timeout)
        return http.client.HTTPSConnection(host, port, context=self.context, timeout=timeout)

    def _send(
        self, conn: http.client.HTTPConnection, method: str, path: str, body: Obj | None
    ) -> http.client.HTTPResponse:
        prefix = urllib.parse.urlsplit(self.url).path.rstrip("/")
        headers = {**self.headers, "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, prefix + path, body=data, headers=headers)
        response = conn.getresponse()
        if response.status >= 300:
            raise ApiError(
                response.status, response.reason, response.read().decode(errors="replace")
            )
        return response

    def request(self, method: str, path: str, body: Obj | None = None) -> Obj:
        """The decoded answer; ApiError when the API server refuses, OSError when unreachable."""
        conn = self._connect(REQUEST_SECONDS)
        try:
            return cast(Obj, json.loads(self._send(conn, method, path, body).read()))
        finally:
            conn.close()

    def watch(self, path: str, query: Mapping[str, str], timeout: float) -> Iterator[Obj]:
        """Each watch event ({type, object}) as it comes, until the API server ends the watch
        (it does after `timeout`); TimeoutError when none comes for `timeout`."""
        params = {**query, "watch": "1", "timeoutSeconds": str(max(1, round(timeout)))}
        conn = self._connect(timeout + 1)
        try:
            response = self._send(conn, "GET", f"{path}?{urllib.parse.urlencode(params)}", None)
            while line := response.readline():
                yield cast(Obj, json.loads(line))
        finally:
            conn.close()


def in_cluster(env: Mapping[str, str], directory: Path = SERVICE_ACCOUNT_DIR) -> Api:
    """As the pod's ServiceAccount, at the kubernetes Service the kubelet names in the env."""
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise NotConfigured("not in a pod: KUBERNETES_SERVICE_HOST/PORT are not set")
    try:
        token = (directory / "token").read_text().strip()
        context = ssl.create_default_context(cafile=str(directory / "ca.crt"))
    except OSError as e:
        raise NotConfigured(f"no ServiceAccount token to use: {e}") from e
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return Api(f"https://{netloc}", context, {"Authorization": f"Bearer {token}"})


def from_kubeconfig(env: Mapping[str, str]) -> Api:
    """As kubectl's current context. Only off a pod (a person's shell) does this import the
    kubernetes client, which reads every kind of kubeconfig, exec plugins included."""
    try:
        from kubernetes import client, config  # noqa: PLC0415 (see the docstring)
    except ImportError as e:
        raise NotConfigured("not in a pod, and no kubernetes package to read a kubeconfig") from e
    conf = client.Configuration()
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=env.get("KUBECONFIG"), client_configuration=conf
        )
    except (config.ConfigException, OSError) as e:
        raise NotConfigured(f"not in a pod, and no usable kubeconfig: {e}") from e
    context = None
    if conf.host.startswith("https:"):
        context = ssl.create_default_context(cafile=conf.ssl_ca_cert)
        if not conf.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if conf.cert_file:
            context.load_cert_chain(conf.cert_file, conf.key_file)
    headers = {}
    if token := conf.get_api_key_with_prefix("authorization"):
        headers["Authorization"] = token
    elif basic := conf.username and conf.get_basic_auth_token():
        headers["Authorization"] = basic
    return Api(conf.host, context, headers)


def connect(env: Mapping[str, str]) -> Api:
    """In a pod, its ServiceAccount; elsewhere kubectl's kubeconfig (KUBECONFIG, else
    ~/.kube/config)."""
    try:
        return in_cluster(env)
    except NotConfigured:
        return from_kubeconfig(env)
