"""The operator under API-server back-pressure: 429 with Retry-After, and 409 on create.

A reverse proxy between the operator and the real kube-apiserver answers the first attempt of
every write the operator makes with 429 (as the API server's priority and fairness would): the
reconciler's creates, replaces, status patches, deletes and Events, and any write of kopf's own
(there should be none). It forwards everything else, watch streams included, and records every
answer. The session operator is stopped meanwhile, so the proxied operator alone converges the
BuildJob, and every one of its writes goes through the 429 path exactly once.
"""

import asyncio
import datetime
import hashlib
import json
import ssl
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml
from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web
from kubernetes.client import NetworkingV1Api
from localcluster import Cluster
from yarl import URL

from remote_docker_operator import builders, certs, names

from ..support import Kube, OperatorProcess, make_target, wait_for
from .conftest import ENGINE_CLASS, OPERATOR_ENV

pytestmark = pytest.mark.integration

# Every write, on any path, by anyone in the operator's process.
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class Write(NamedTuple):
    """One write, however often it is attempted. A create is one write per object, whatever its
    body (the TLS secrets get new keys each time a reconcile starts over), keyed by the new
    object's path; any other write (and a create whose name the server generates, as kopf's
    Events) is one write per content."""

    agent: str  # "kopf" (kopf's own client says User-Agent kopf/...) or "operator"
    method: str
    path: str
    digest: str = ""

    @property
    def kind(self) -> str:
        """What kind of write: method, who, and the resource (with its subresource)."""
        parts = self.path.strip("/").split("/")
        rest = parts[2:] if parts[0] == "api" else parts[3:]
        if rest[0] == "namespaces" and len(rest) > 2:
            rest = rest[2:]  # namespaced: drop namespaces/<name>
        resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
        return f"{self.agent} {self.method} {resource}"


# Per connection or re-framed by the proxy (it streams every response chunked).
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "host",
    "upgrade",
    "proxy-connection",
    "te",
    "trailer",
}


def status_429(method: str, path: str) -> dict[str, Any]:
    """The body kube-apiserver sends with a 429."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"Too many requests, please try again later ({method} {path}).",
        "reason": "TooManyRequests",
        "details": {"retryAfterSeconds": 1},
        "code": 429,
    }


class ThrottlingProxy:
    """Plain-HTTP reverse proxy on loopback to the cluster's API server, run by its own event
    loop in a background thread. Writes are keyed by (method, object path): a create's key is
    the collection path plus the new object's name, so the engine and job pods (one collection)
    are distinct writes."""

    def __init__(self, kubeconfig: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        self.upstream = cluster["server"].rstrip("/")
        self.ssl = ssl.create_default_context(cafile=cluster["certificate-authority"])
        self.ssl.load_cert_chain(user["client-certificate"], user["client-key"])
        self.port = 0
        self.lock = threading.Lock()
        # Every answer to every write, in order: 429 from the proxy, else the API server's.
        self.answers: defaultdict[Write, list[int]] = defaultdict(list)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="throttling-proxy", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._loop.close()

    async def _start(self) -> None:
        # No overall timeout: watch streams last as long as the API server keeps them open.
        # No decompression: bodies pass through byte for byte, Content-Encoding included.
        self._session = ClientSession(
            connector=TCPConnector(ssl=self.ssl),
            timeout=ClientTimeout(total=None, connect=10),
            auto_decompress=False,
        )
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A client that goes away (the operator stopped) ends its handler and upstream watch.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def _stop(self) -> None:
        await self._session.close()  # ends any watch still streaming
        await self._runner.cleanup()

    def _write(self, request: web.Request, body: bytes) -> Write | None:
        """The write this request attempts, or None when it reads."""
        if request.method not in WRITES:
            return None
        agent = "kopf" if request.headers.get("User-Agent", "").startswith("kopf/") else "operator"
        if request.method == "POST":
            name = (json.loads(body).get("metadata") or {}).get("name")
            if name:
                return Write(agent, "POST", f"{request.path}/{name}")
        return Write(agent, request.method, request.path, hashlib.sha256(body).hexdigest())

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        write = self._write(request, body)
        if write is not None:
            with self.lock:
                first = not self.answers[write]
                if first:
                    self.answers[write].append(429)
            if first:
                return web.json_response(
                    status_429(request.method, request.path),
                    status=429,
                    headers={"Retry-After": "1"},
                )
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            upstream = await self._session.request(
                request.method,
                URL(self.upstream + request.raw_path, encoded=True),
                headers=headers,
                data=body or None,
                allow_redirects=False,
            )
        except ClientError as e:
            return web.Response(status=502, text=f"proxy: {e}")
        async with upstream:
            if write is not None:
                with self.lock:
                    self.answers[write].append(upstream.status)
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    response.headers.add(name, value)
            await response.prepare(request)
            # Chunk by chunk as they arrive: a watch is an endless body.
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    def record(self) -> dict[Write, list[int]]:
        with self.lock:
            return {w: list(a) for w, a in self.answers.items()}

    def settled(self) -> dict[Write, list[int]]:
        """The record once no write waits for its retry."""
        wait_for(
            lambda: all(a[-1] != 429 for a in self.record().values()),
            timeout=30,
            what="every throttled write retried",
        )
        return self.record()

    def write_kubeconfig(self, path: Path) -> Path:
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "proxy",
                    "clusters": [
                        {"name": "proxy", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}
                    ],
                    "users": [{"name": "anonymous", "user": {}}],
                    "contexts": [
                        {"name": "proxy", "context": {"cluster": "proxy", "user": "anonymous"}}
                    ],
                }
            )
        )
        return path


@pytest.fixture
def proxy(cluster: Cluster) -> Iterator[ThrottlingProxy]:
    p = ThrottlingProxy(cluster.kubeconfig)
    p.start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def proxied_operator(
    cluster: Cluster,
    ns: str,
    restore_operator: OperatorProcess,
    proxy: ThrottlingProxy,
    tmp_path: Path,
) -> Iterator[OperatorProcess]:
    """An operator (not started yet) that reaches the API server only through the proxy. The
    session operator is stopped until after the test (restore_operator restarts it), and this
    fixture depends on `ns` so that both run again before the test namespace is deleted."""
    restore_operator.stop()
    op = OperatorProcess(
        proxy.write_kubeconfig(tmp_path / "proxy.kubeconfig"),
        cluster.logs / "operator-throttling.log",
        **OPERATOR_ENV,
    )
    try:
        yield op
    finally:
        op.stop()


def log_since(op: OperatorProcess, offset: int) -> str:
    with op.log.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def log_size(op: OperatorProcess) -> int:
    return op.log.stat().st_size if op.log.exists() else 0


def spec(exit_code: int = 0) -> dict[str, Any]:
    """test_lifecycle's minimal BuildJob: the job pod exits with exit_code at once."""
    return {
        "job": {
            "image": "local/job:1",
            "command": ["sh", "-c"],
            "args": ["docker version"],
            "env": [{"name": "KWOK_EXIT_CODE", "value": str(exit_code)}],
        }
    }


def status_path(namespace: str, name: str) -> str:
    return f"/apis/{names.API_VERSION}/namespaces/{namespace}/{names.PLURAL}/{name}/status"


def child_paths(job_ns: str, ns: str, name: str) -> dict[str, str]:
    """Object paths of every child a minimal BuildJob gets: the engine's side in its job
    namespace, the job's beside the BuildJob."""
    base = f"/api/v1/namespaces/{job_ns}"
    policies = f"/apis/networking.k8s.io/v1/namespaces/{job_ns}/networkpolicies"
    beside = f"/api/v1/namespaces/{ns}"
    return {
        "namespace": base,
        "policy default-deny": f"{policies}/{names.POLICY_DEFAULT_DENY}",
        "policy engine": f"{policies}/{names.POLICY_ENGINE}",
        "policy job": f"/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/"
        + names.job_policy(name),
        "service": f"{base}/services/{names.ENGINE_SERVICE}",
        "quota": f"{base}/resourcequotas/{names.QUOTA}",
        "secret engine-tls": f"{base}/secrets/{names.ENGINE_TLS_SECRET}",
        "secret docker-client": f"{beside}/secrets/{names.client_secret(name)}",
        "engine pod": f"{base}/pods/{names.ENGINE_POD}",
        "job pod": f"{beside}/pods/{names.job_pod(name)}",
    }


def apis(kube: Kube) -> tuple[Any, Any]:
    """CoreV1 and NetworkingV1, untyped: their models declare every field optional, and these
    tests take manifests as dicts and read fields that are always there."""
    return kube.core, NetworkingV1Api(kube.client)


# The kinds of write one BuildJob's life makes, from its creation to its deletion.
LIFE_WRITES = {
    "operator POST events",  # each phase change worth one
    "operator POST namespaces",
    "operator POST networkpolicies",
    "operator POST secrets",
    "operator POST services",
    "operator POST pods",
    "operator POST resourcequotas",
    "operator PATCH buildjobs/status",
    "operator DELETE pods",  # the engine, once the job has ended
    "operator DELETE namespaces",  # the job namespace, once the BuildJob is deleted
}


def unthrottled(record: dict[Write, list[int]], success: set[int]) -> list[str]:
    """Every write whose answers were not: 429 once, then one of `success`."""
    return [
        f"{w.method} {w.path} ({w.agent}): {a}"
        for w, a in record.items()
        if len(a) != 2 or a[0] != 429 or a[1] not in success
    ]


def test_throttled_writes_are_retried_once_each(
    kube: Kube, ns: str, proxy: ThrottlingProxy, proxied_operator: OperatorProcess
) -> None:
    offset = log_size(proxied_operator)
    proxied_operator.start()
    kube.create_buildjob(ns, "tp", spec(0))
    done = kube.wait_phase(ns, "tp", "Succeeded", timeout=120)
    assert done["exitCode"] == 0
    job_ns = done["namespace"]
    paths = child_paths(job_ns, ns, "tp")

    # What exists is one of each child, all tied to this BuildJob.
    uid = kube.get_buildjob(ns, "tp")["metadata"]["uid"]  # type: ignore[index]
    core, networking = apis(kube)
    owned = core.list_namespace(label_selector=f"{names.LABEL_OWNER_UID}={uid}").items
    assert [n.metadata.name for n in owned] == [job_ns]
    policies = networking.list_namespaced_network_policy(job_ns).items
    assert sorted(p.metadata.name for p in policies) == ["default-deny", "engine"]
    beside = networking.list_namespaced_network_policy(ns).items
    assert [p.metadata.name for p in beside] == [names.job_policy("tp")]
    services = core.list_namespaced_service(job_ns).items
    assert [s.metadata.name for s in services] == [names.ENGINE_SERVICE]
    secrets = {s.metadata.name for s in core.list_namespaced_secret(job_ns).items}
    assert secrets == {names.ENGINE_TLS_SECRET}
    assert core.read_namespaced_secret(names.client_secret("tp"), ns) is not None
    # The engine goes once the job has ended; the job pod stays (until the TTL).
    wait_for(lambda: kube.pod(job_ns, names.ENGINE_POD) is None, what="engine pod deleted")
    assert core.list_namespaced_pod(job_ns).items == []
    assert kube.pod(ns, names.job_pod("tp")) is not None
    # Deleted: the operator deletes the job namespace.
    kube.delete_buildjob(ns, "tp")
    wait_for(lambda: kube.get_buildjob(ns, "tp") is None, timeout=60, what="BuildJob gone")

    # Every write of every kind met a 429 first, then went through once (nothing given up
    # on); every child was created once (201).
    record = proxy.settled()
    assert unthrottled(record, {200, 201, 202}) == []
    kinds = {w.kind for w in record}
    assert not LIFE_WRITES - kinds, f"not seen: {LIFE_WRITES - kinds}"
    for what, path in paths.items():
        assert record.get(Write("operator", "POST", path)) == [429, 201], what
    creates = {
        w.path
        for w in record
        if w.method == "POST" and w.kind not in ("operator POST events", "operator POST leases")
    }
    assert creates == set(paths.values())
    # Provisioning, Running, Succeeded: each a distinct status patch. No finalizer, no kopf
    # annotation: nothing but the status is written to the BuildJob.
    status = [w for w in record if w.kind == "operator PATCH buildjobs/status"]
    assert len(status) >= 3, status
    assert [w for w in record if w.kind.endswith("PATCH buildjobs")] == []
    print("throttled once, then done:", sorted(Counter(w.kind for w in record).items()))

    # kube.py's retries did it (not a later resync re-running a failed reconcile).
    # (DELETE and PUT never reach kube.py's loop: the kubernetes client's urllib3 retries
    # idempotent methods on 429 after Retry-After itself; the record above shows they were.)
    log = log_since(proxied_operator, offset)
    assert "API server throttled POST /api/v1/namespaces;" in log
    assert f"API server throttled POST /api/v1/namespaces/{job_ns}/pods;" in log
    assert f"API server throttled POST /api/v1/namespaces/{ns}/pods;" in log
    assert f"API server throttled PATCH {status_path(ns, 'tp')};" in log
    # kopf itself wrote nothing (it used to: the finalizer, its annotations), so the
    # operator's own writes above are the BuildJob's whole life.
    assert [w for w in record if w.agent == "kopf"] == []
    assert "Traceback" not in log, "a 429 surfaced as an error"


def test_existing_children_are_adopted_after_throttling(
    kube: Kube, ns: str, proxy: ThrottlingProxy, proxied_operator: OperatorProcess
) -> None:
    """Children already there (a previous operator's work) answer the retried create with 409,
    and the operator adopts them instead of failing or replacing them."""
    offset = log_size(proxied_operator)
    # No operator runs yet: the BuildJob is only known to the API server.
    body = kube.create_buildjob(ns, "adopt", spec(0))
    meta = body["metadata"]
    target = make_target(body["spec"], ENGINE_CLASS, meta["uid"], meta["name"], meta["namespace"])
    job_ns = target.job_namespace
    core, networking = apis(kube)
    namespace = core.create_namespace(builders.build_namespace(target))
    service = core.create_namespaced_service(job_ns, builders.build_engine_service(target))
    policy = next(
        p
        for p in builders.build_network_policies(target)
        if p["metadata"]["name"] == names.POLICY_DEFAULT_DENY
    )
    deny = networking.create_namespaced_network_policy(job_ns, policy)
    # Half a TLS pair (a crash between its two writes): reissued, so replaced (PUT).
    bundle = certs.issue(builders.engine_dns_names(target), [], datetime.timedelta(hours=1), None)
    half = core.create_namespaced_secret(
        job_ns, builders.build_engine_tls_secret(target, bundle.server)
    )

    proxied_operator.start()
    done = kube.wait_phase(ns, "adopt", "Succeeded", timeout=120)
    assert done["namespace"] == job_ns
    assert done["exitCode"] == 0

    # Still one of each, the very objects created above.
    assert core.read_namespace(job_ns).metadata.uid == namespace.metadata.uid
    services = core.list_namespaced_service(job_ns).items
    assert [s.metadata.uid for s in services] == [service.metadata.uid]
    policies = {
        p.metadata.name: p.metadata.uid
        for p in networking.list_namespaced_network_policy(job_ns).items
    }
    assert sorted(policies) == ["default-deny", "engine"]
    assert policies[names.POLICY_DEFAULT_DENY] == deny.metadata.uid

    tls = core.read_namespaced_secret(names.ENGINE_TLS_SECRET, job_ns)
    assert tls.metadata.uid == half.metadata.uid
    assert tls.data["ca.pem"] != half.data["ca.pem"], "the half pair was not reissued"

    # Each create was throttled, then answered 409 and adopted; the rest were created; the
    # half pair's secret replaced. Every other write, too, was throttled once, then done.
    paths = child_paths(job_ns, ns, "adopt")
    record = proxy.settled()
    adopted = ("namespace", "service", "policy default-deny")
    for what, path in paths.items():
        expected = [429, 409] if what in adopted else [429, 201]
        if what == "secret engine-tls":
            # Once a child was adopted the operator reads before creating: it found the half
            # pair's secret, so it put the new one there (PUT) without a doomed create.
            expected = None
        assert record.get(Write("operator", "POST", path)) == expected, what
    replaced = [a for w, a in record.items() if w.kind == "operator PUT secrets"]
    assert replaced == [[429, 200]], replaced
    assert unthrottled(record, {200, 201, 202, 409}) == []
    assert "Traceback" not in log_since(proxied_operator, offset), "a 409 surfaced as an error"
