"""Leader election on a coordination.k8s.io Lease: of several replicas, only the Lease's holder
runs the operator; the others are standbys that poll the Lease and take it over once it expires.

The process does not start kopf until it holds the Lease (__main__.py). A background thread
renews it every retry period; when it has not renewed for the renew deadline (the API server
unreachable, the Lease taken by another replica) the process exits at once, non-zero, and the
kubelet restarts it as a standby: the controller-runtime way. The exit is os._exit, not a
graceful kopf shutdown, because a graceful shutdown keeps handlers running past the deadline.

Safety: a standby measures expiry on its own monotonic clock, from the moment it first saw the
Lease's current resourceVersion, so it takes over no sooner than `duration` after the leader's
last renewal was sent; the leader gives up `renew deadline` after sending its last successful
renewal, and every request it makes is cut off at that deadline. duration > renew deadline, so
the leader has stopped before a standby may start; no clocks are compared across hosts. Writes
carry the resourceVersion last read (optimistic concurrency): of two replicas that both find the
Lease expired, one write wins and the other gets 409.

A graceful stop (SIGTERM: a rolling update, a drain) releases the Lease after kopf has stopped,
so a standby takes over within one retry period rather than a whole duration.

Why not the official client's kubernetes.leaderelection (37.0.2, installed here, has a
LeaseLock)? Its requests have no timeout, so one hung renewal keeps the leader believing it
leads long after a standby has taken over (client-go bounds them for exactly this reason); its
lock uses the global client, and it measures deadlines on the wall clock and never releases.

What no Lease can do without fencing tokens: a leader frozen (SIGSTOP, a paused VM) while a
write is on the wire may have that write land after a standby took over; on resuming it finds
its deadline passed and exits.
"""

import contextlib
import copy
import http.server
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException

from . import names
from .config import Settings

logger = logging.getLogger(__name__)
Obj = dict[str, Any]


class LeaseLost(Exception):
    """Another replica holds the Lease, or it was deleted."""


class Leases(Protocol):
    """The three calls election makes on one Lease. create and replace return None on 409."""

    def get(self, timeout: float) -> Obj | None: ...
    def create(self, lease: Obj, timeout: float) -> Obj | None: ...
    def replace(self, lease: Obj, timeout: float) -> Obj | None: ...


class KubeLeases:
    """The Lease over the kubernetes client's REST transport, as plain dicts (as kube.py)."""

    def __init__(self, client: ApiClient, namespace: str, name: str) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.collection = f"/apis/{names.LEASE_API_VERSION}/namespaces/{namespace}/leases"

    def _call(self, method: str, path: str, body: Obj | None, timeout: float) -> Obj | None:
        """The response body, or None for 404 and 409."""
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        method_, url, header_params, payload, _ = self.client.param_serialize(
            method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        response = self.client.call_api(
            method_, url, header_params, payload, _request_timeout=timeout
        )
        data = response.read()  # type: ignore[no-untyped-call]
        if response.status in (404, 409):
            return None
        if response.status >= 400:
            raise ApiException.from_response(
                http_resp=response, body=data.decode(errors="replace"), data=None
            )
        result: Obj = json.loads(data)
        return result

    def get(self, timeout: float) -> Obj | None:
        return self._call("GET", f"{self.collection}/{self.name}", None, timeout)

    def create(self, lease: Obj, timeout: float) -> Obj | None:
        return self._call("POST", self.collection, lease, timeout)

    def replace(self, lease: Obj, timeout: float) -> Obj | None:
        return self._call("PUT", f"{self.collection}/{self.name}", lease, timeout)


def micro_time(now: datetime | None = None) -> str:
    """A metav1.MicroTime."""
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_identity() -> str:
    """Unique per process: two processes on one host must never share an identity."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


class Elector:
    """One replica's view of the Lease. try_acquire and try_renew are single attempts (what the
    unit tests drive, with a fake clock); acquire and start_renewing loop over them."""

    def __init__(
        self,
        leases: Leases,
        name: str,
        namespace: str,
        identity: str,
        duration: int,
        renew_deadline: float,
        retry_period: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.leases = leases
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.duration = duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.clock = clock
        self.lease: Obj | None = None  # as last written or read
        self.renewed_at = 0.0  # when the last successful write of ours was sent
        self.leading = False
        self._observed: tuple[str, float] = ("", 0.0)  # (resourceVersion, first seen at)
        self._waiting_for = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- single attempts -----------------------------------------------------------------------

    def _timeout(self, deadline: float | None = None) -> float:
        # client-go's rule: a request may take half the renew deadline, so one slow request
        # leaves time to retry; and never past the deadline itself.
        timeout = self.renew_deadline / 2
        if deadline is not None:
            timeout = min(timeout, deadline - self.clock())
        return max(timeout, 0.05)

    def _spec(self, old: Obj, now: str) -> Obj:
        spec = dict(old)
        ours = spec.get("holderIdentity") == self.identity
        spec["holderIdentity"] = self.identity
        spec["leaseDurationSeconds"] = self.duration
        spec["renewTime"] = now
        if not ours or not spec.get("acquireTime"):
            spec["acquireTime"] = now
        if not ours and old:
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        return spec

    def _hold(self, lease: Obj, sent: float) -> None:
        self.lease = lease
        self.renewed_at = sent
        if not self.leading:
            logger.info("Acquired lease %s/%s as %s", self.namespace, self.name, self.identity)
        self.leading = True
        self._waiting_for = ""

    def try_acquire(self) -> bool:
        """One attempt to take the Lease: it does not exist, nobody holds it, its holder let it
        expire, or its holder is this identity (the same pod, restarted)."""
        sent = self.clock()
        lease = self.leases.get(self._timeout())
        now = micro_time()
        if lease is None:
            body = {
                "apiVersion": names.LEASE_API_VERSION,
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec({}, now),
            }
            created = self.leases.create(body, self._timeout())
            if created is None:
                return False
            self._hold(created, sent)
            return True
        version = lease["metadata"]["resourceVersion"]
        if version != self._observed[0]:
            # Seen now, at the earliest: expiry counts from here, never from the holder's clock.
            self._observed = (version, self.clock())
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self.identity:
            duration = spec.get("leaseDurationSeconds") or self.duration
            if self.clock() < self._observed[1] + duration:
                if holder != self._waiting_for:
                    logger.info("Standing by: lease %s/%s is held by %s", self.namespace,
                                self.name, holder)  # fmt: skip
                    self._waiting_for = holder
                return False
            logger.info("Lease %s/%s of %s expired; taking it over", self.namespace, self.name,
                        holder)  # fmt: skip
        body = copy.deepcopy(lease)
        body["spec"] = self._spec(spec, now)
        replaced = self.leases.replace(body, self._timeout())
        if replaced is None:
            return False
        self._hold(replaced, sent)
        return True

    def try_renew(self, deadline: float | None = None) -> bool:
        """One attempt to renew; raises LeaseLost when the Lease is no longer ours."""
        assert self.lease is not None, "renewing a lease never acquired"
        sent = self.clock()
        body = copy.deepcopy(self.lease)
        body["spec"] = self._spec(body.get("spec") or {}, micro_time())
        replaced = self.leases.replace(body, self._timeout(deadline))
        if replaced is not None:
            self._hold(replaced, sent)
            return True
        # 409: written by someone since. Still ours (say, a label added): retry with it.
        current = self.leases.get(self._timeout(deadline))
        holder = ((current or {}).get("spec") or {}).get("holderIdentity")
        if current is None or holder != self.identity:
            raise LeaseLost(f"lease {self.namespace}/{self.name} is now held by {holder!r}")
        self.lease = current
        return False

    # -- loops ---------------------------------------------------------------------------------

    def acquire(self) -> None:
        """Blocks until this replica holds the Lease."""
        while True:
            try:
                if self.try_acquire():
                    return
            except Exception as e:
                logger.warning("Could not read or take lease %s/%s: %s", self.namespace,
                               self.name, e)  # fmt: skip
            time.sleep(self.retry_period)

    def renew_until_lost(self) -> str:
        """Renews every retry period; returns why leadership was lost, or "" once stopped."""
        while not self._stop.wait(self.retry_period):
            deadline = self.renewed_at + self.renew_deadline
            while True:
                if self.clock() >= deadline:
                    return f"lease not renewed within {self.renew_deadline}s"
                try:
                    if self.try_renew(deadline):
                        break
                except LeaseLost as e:
                    return str(e)
                except Exception as e:
                    logger.warning("Could not renew lease %s/%s: %s", self.namespace,
                                   self.name, e)  # fmt: skip
                pause = min(self.retry_period, deadline - self.clock())
                if pause > 0 and self._stop.wait(pause):
                    return ""
        return ""

    def start_renewing(self, on_lost: Callable[[str], None]) -> None:
        def run() -> None:
            try:
                reason = self.renew_until_lost()
            except BaseException as e:  # a bug here must not leave an unguarded leader
                reason = f"renewal failed: {e!r}"
            if reason:
                self.leading = False
                on_lost(reason)

        self._thread = threading.Thread(target=run, name="lease-renewal", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stops renewing and, if still the holder, gives the Lease up so that a standby need
        not wait for it to expire."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.leading or self.lease is None:
            return
        self.leading = False
        if self.clock() >= self.renewed_at + self.renew_deadline:
            return  # past our deadline a standby may already hold it: do not write
        body = copy.deepcopy(self.lease)
        now = micro_time()
        spec = body.get("spec") or {}
        spec.update(holderIdentity=None, leaseDurationSeconds=1, renewTime=now, acquireTime=now)
        body["spec"] = spec
        try:
            released = self.leases.replace(body, self._timeout())
        except Exception as e:
            logger.warning("Could not release lease %s/%s: %s", self.namespace, self.name, e)
            return
        if released is not None:
            logger.info("Released lease %s/%s", self.namespace, self.name)


def exit_on_loss(reason: str) -> None:
    """Leadership lost: stop acting now. kopf's graceful shutdown would keep handlers running."""
    logger.critical("Lost leadership (%s); exiting so that a standby takes over", reason)
    logging.shutdown()
    os._exit(1)


@contextlib.contextmanager
def standby_health(endpoint: str | None) -> Iterator[None]:
    """Answers kopf's liveness endpoint (200 on any path) while standing by, so the kubelet does
    not restart a healthy standby; kopf serves it once leading."""
    if not endpoint:
        yield
        return
    url = urlsplit(endpoint)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"standby\n")

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a probe every few seconds is not news

    server = http.server.ThreadingHTTPServer((url.hostname or "", url.port or 80), Handler)
    thread = threading.Thread(target=server.serve_forever, name="standby-health", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def lead(settings: Settings, liveness_endpoint: str | None) -> Elector:
    """Blocks until this process holds the Lease, then keeps renewing it in the background and
    exits the process if it cannot. Needs the client configuration loaded (kube.load_config)."""
    identity = settings.leader_identity or default_identity()
    client = ApiClient(Configuration.get_default_copy())
    # Tells the replicas apart in the API server's audit log.
    client.user_agent = f"{names.APP}/{identity}"
    elector = Elector(
        KubeLeases(client, settings.lease_namespace, settings.lease_name),
        settings.lease_name,
        settings.lease_namespace,
        identity,
        settings.lease_duration_seconds,
        settings.lease_renew_deadline_seconds,
        settings.lease_retry_period_seconds,
    )
    with standby_health(liveness_endpoint):
        elector.acquire()
    elector.start_renewing(exit_on_loss)
    return elector
