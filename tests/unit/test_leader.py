"""leader.py against an in-memory Lease with the API server's optimistic concurrency (a write
with a stale resourceVersion gets 409), on a fake clock."""

import copy
import socket
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest

from remote_docker_operator import leader
from remote_docker_operator.leader import Elector, LeaseLost

Obj = dict[str, Any]
DURATION, DEADLINE, RETRY = 8, 5.0, 1.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeLeases:
    """One Lease as the API server keeps it; `down` makes every call fail."""

    def __init__(self) -> None:
        self.lease: Obj | None = None
        self.version = 0
        self.down = False
        self.writes: list[str] = []  # holderIdentity of each successful write

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("API server unreachable")

    def get(self, timeout: float) -> Obj | None:
        self._check()
        return copy.deepcopy(self.lease)

    def _store(self, lease: Obj) -> Obj:
        self.version += 1
        stored = copy.deepcopy(lease)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.lease = stored
        self.writes.append(stored["spec"].get("holderIdentity") or "")
        return copy.deepcopy(stored)

    def create(self, lease: Obj, timeout: float) -> Obj | None:
        self._check()
        if self.lease is not None:
            return None
        return self._store(lease)

    def replace(self, lease: Obj, timeout: float) -> Obj | None:
        self._check()
        assert self.lease is not None
        if lease["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            return None
        return self._store(lease)

    def holder(self) -> str:
        assert self.lease is not None
        return str(self.lease["spec"].get("holderIdentity") or "")


def elector(leases: FakeLeases, identity: str, clock: Clock) -> Elector:
    return Elector(leases, "rdo", "rdo-system", identity, DURATION, DEADLINE, RETRY, clock)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def leases() -> FakeLeases:
    return FakeLeases()


def test_first_replica_creates_the_lease(leases: FakeLeases, clock: Clock) -> None:
    a = elector(leases, "a", clock)
    assert a.try_acquire()
    assert a.leading
    spec = leases.lease["spec"]  # type: ignore[index]
    assert spec["holderIdentity"] == "a"
    assert spec["leaseDurationSeconds"] == DURATION
    assert spec["renewTime"].endswith("Z")
    assert spec["acquireTime"] == spec["renewTime"]


def test_standby_waits_the_full_duration_from_the_last_renewal_it_saw(
    leases: FakeLeases, clock: Clock
) -> None:
    a, b = elector(leases, "a", clock), elector(leases, "b", clock)
    assert a.try_acquire()
    # While a renews, b never writes, however long it waits.
    for _ in range(20):
        clock.advance(RETRY)
        assert not b.try_acquire()
        assert a.try_renew()
    assert leases.writes == ["a"] * 21
    # a stops renewing (SIGKILL). b counts from when it first saw the last renewal.
    clock.advance(RETRY)
    assert not b.try_acquire()  # sees a's last version: expiry counts from now
    clock.advance(DURATION - 0.01)
    assert not b.try_acquire()
    assert leases.holder() == "a"
    clock.advance(0.02)
    assert b.try_acquire()
    assert leases.holder() == "b"
    assert leases.lease["spec"]["leaseTransitions"] == 1  # type: ignore[index]


def test_a_lease_found_stale_is_still_waited_for(leases: FakeLeases, clock: Clock) -> None:
    """A standby trusts no remote clock: an old renewTime does not shorten its wait."""
    a = elector(leases, "a", clock)
    assert a.try_acquire()
    leases.lease["spec"]["renewTime"] = "2000-01-01T00:00:00.000000Z"  # type: ignore[index]
    b = elector(leases, "b", clock)
    assert not b.try_acquire()
    clock.advance(DURATION + 0.01)
    assert b.try_acquire()


def test_the_old_leader_loses_after_a_takeover(leases: FakeLeases, clock: Clock) -> None:
    a, b = elector(leases, "a", clock), elector(leases, "b", clock)
    assert a.try_acquire()
    assert not b.try_acquire()
    clock.advance(DURATION + 0.01)
    assert b.try_acquire()
    with pytest.raises(LeaseLost, match="held by 'b'"):
        a.try_renew()
    assert leases.holder() == "b"


def test_two_standbys_racing_for_an_expired_lease_one_wins(
    leases: FakeLeases, clock: Clock
) -> None:
    a, b, c = (elector(leases, x, clock) for x in "abc")
    assert a.try_acquire()
    assert not b.try_acquire()
    assert not c.try_acquire()
    clock.advance(DURATION + 0.01)
    # Both read the expired lease; only the first write with that resourceVersion succeeds.
    stale = leases.get(1)
    assert b.try_acquire()
    leases_get = leases.get
    leases.get = lambda timeout: copy.deepcopy(stale)  # type: ignore[method-assign]
    assert not c.try_acquire()
    leases.get = leases_get  # type: ignore[method-assign]
    assert leases.holder() == "b"
    assert not c.leading


def test_same_identity_takes_its_own_lease_back_at_once(leases: FakeLeases, clock: Clock) -> None:
    """A restarted container of the same pod: its predecessor is dead, no need to wait."""
    assert elector(leases, "pod-0", clock).try_acquire()
    acquired = leases.lease["spec"]["acquireTime"]  # type: ignore[index]
    again = elector(leases, "pod-0", clock)
    assert again.try_acquire()
    assert leases.lease["spec"]["acquireTime"] == acquired  # type: ignore[index]
    assert leases.lease["spec"].get("leaseTransitions", 0) == 0  # type: ignore[index]


def test_release_lets_a_standby_take_over_at_once(leases: FakeLeases, clock: Clock) -> None:
    a, b = elector(leases, "a", clock), elector(leases, "b", clock)
    assert a.try_acquire()
    assert not b.try_acquire()
    a.release()
    assert leases.holder() == ""
    assert not a.leading
    assert b.try_acquire()


def test_release_past_the_deadline_writes_nothing(leases: FakeLeases, clock: Clock) -> None:
    a = elector(leases, "a", clock)
    assert a.try_acquire()
    clock.advance(DEADLINE)
    a.release()
    assert leases.writes == ["a"]


def test_a_foreign_edit_is_not_a_loss(leases: FakeLeases, clock: Clock) -> None:
    """Someone labels the Lease: the renewal's 409 is retried with the new version."""
    a = elector(leases, "a", clock)
    assert a.try_acquire()
    edited = leases.get(1)
    assert edited is not None
    edited["metadata"]["labels"] = {"x": "y"}
    leases.replace(edited, 1)
    assert not a.try_renew()
    assert a.try_renew()
    assert leases.lease["metadata"]["labels"] == {"x": "y"}  # type: ignore[index]


def test_a_deleted_lease_is_a_loss(leases: FakeLeases, clock: Clock) -> None:
    a = elector(leases, "a", clock)
    assert a.try_acquire()
    leases.lease["metadata"]["resourceVersion"] = "other"  # type: ignore[index]
    leases_get = leases.get
    leases.get = lambda timeout: None  # type: ignore[method-assign]
    with pytest.raises(LeaseLost):
        a.try_renew()
    leases.get = leases_get  # type: ignore[method-assign]


def test_the_leader_gives_up_before_a_standby_may_take_over(
    leases: FakeLeases, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renewal loop, API server unreachable: it returns (the process then exits) by its
    last renewal + the renew deadline, which is before a standby's expiry of duration."""
    a = elector(leases, "a", clock)
    assert a.try_acquire()
    last_renewal = a.renewed_at
    leases.down = True
    # The loop's waits advance the fake clock instead of sleeping.
    monkeypatch.setattr(a._stop, "wait", lambda t: clock.advance(t) or False)
    reason = a.renew_until_lost()
    assert "not renewed within" in reason
    assert clock.now <= last_renewal + DEADLINE + RETRY
    assert last_renewal + DEADLINE < last_renewal + DURATION


def test_a_failed_renewal_is_retried_before_the_deadline(
    leases: FakeLeases, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = elector(leases, "a", clock)
    assert a.try_acquire()
    waits: list[float] = []

    def wait(t: float) -> bool:
        waits.append(t)
        clock.advance(t)
        # Waits 1-3 precede failing attempts, wait 4 one that succeeds (within the deadline),
        # wait 5 the next regular renewal; wait 6 stops the loop.
        leases.down = len(waits) < 4
        return len(waits) > 5

    monkeypatch.setattr(a._stop, "wait", wait)
    assert a.renew_until_lost() == ""
    assert a.leading
    assert leases.writes == ["a", "a", "a"]
    assert waits[:4] == [RETRY] * 4


def test_request_timeouts_end_at_the_deadline(leases: FakeLeases, clock: Clock) -> None:
    a = elector(leases, "a", clock)
    assert a._timeout() == DEADLINE / 2
    assert a._timeout(clock.now + 1.0) == 1.0
    assert a._timeout(clock.now - 3) == 0.05


def test_start_renewing_reports_a_loss(leases: FakeLeases, clock: Clock) -> None:
    a = Elector(leases, "rdo", "rdo-system", "a", 2, 0.2, 0.05)
    assert a.try_acquire()
    lost: list[str] = []
    done = threading.Event()

    def on_lost(reason: str) -> None:
        lost.append(reason)
        done.set()

    a.start_renewing(on_lost)
    leases.down = True
    assert done.wait(5)
    assert "not renewed within" in lost[0]
    assert not a.leading


def test_default_identity_is_unique_per_process() -> None:
    assert leader.default_identity() != leader.default_identity()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_standby_answers_the_liveness_probe_and_frees_the_port() -> None:
    """A standby is healthy (the kubelet must not restart it for lack of kopf's endpoint), and
    the port is free again for kopf once it leads."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/healthz"
    with leader.standby_health(url), urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))  # as aiohttp binds kopf's endpoint
