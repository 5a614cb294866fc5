"""The reconciler's pure decisions: parsing, queue admission. (Its API side is exercised against
a real API server in tests/integration.)"""

from typing import Any

from remote_docker_operator import names
from remote_docker_operator.config import Settings
from remote_docker_operator.jobstate import parse_spec
from remote_docker_operator.kube import Kube
from remote_docker_operator.reconcile import Reconciler

from ..support import make_target


def body(uid: str, created: str, phase: str | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"bj-{uid}",
            "namespace": "ci",
            "uid": uid,
            "creationTimestamp": created,
            "generation": 1,
            "finalizers": [names.FINALIZER],
        },
        "spec": spec or {"job": {"image": "a"}},
        "status": {"phase": phase} if phase else {},
    }


def reconciler(**settings: Any) -> Reconciler:
    # Admission decisions never touch the API: no client is needed to test them.
    return Reconciler(Kube.__new__(Kube), Settings(**settings), lambda *_: None, lambda *_: None)


def test_parse_spec_names_the_field() -> None:
    spec, invalid = parse_spec(body("1", "t", job={"image": "a"}))
    assert spec is not None
    assert invalid is None
    spec, invalid = parse_spec(body("2", "t", job={"image": "a"}, activeDeadlineSeconds=0))
    assert spec is None
    assert invalid is not None
    assert invalid.startswith("spec.activeDeadlineSeconds:")


def test_unlimited_admits_everyone() -> None:
    rec = reconciler()
    states = [rec.observe(body(str(i), f"2026-01-01T00:00:0{i}Z")) for i in range(5)]
    assert all(rec._admit(s) is None for s in states)


def test_queue_admits_in_creation_order_up_to_the_limit() -> None:
    rec = reconciler(max_running=2)
    running = rec.observe(body("r", "2026-01-01T00:00:00Z", "Running"))
    late = rec.observe(body("c", "2026-01-01T00:00:09Z"))
    early = rec.observe(body("a", "2026-01-01T00:00:01Z"))
    middle = rec.observe(body("b", "2026-01-01T00:00:05Z"))
    assert running.phase == "Running"
    # One slot is free: it goes to the oldest waiting BuildJob, whoever asks first.
    assert rec._admit(late) is not None
    assert rec._admit(middle) is not None
    assert rec._admit(early) is None
    # Admitted but not yet Provisioning still holds its slot.
    assert rec._admit(middle) is not None
    # A finished BuildJob frees its slot.
    running.status = {"phase": "Succeeded"}
    assert rec._admit(middle) is None
    assert rec._admit(late) is not None
    early.status = {"phase": "Failed"}
    assert rec._admit(late) is None


def test_deleted_buildjobs_do_not_hold_slots() -> None:
    rec = reconciler(max_running=1)
    old = rec.observe(body("a", "2026-01-01T00:00:00Z", "Running"))
    new = rec.observe(body("b", "2026-01-01T00:00:01Z"))
    assert rec._admit(new) is not None
    old.deleting = True
    assert rec._admit(new) is None


def test_same_second_goes_in_the_order_seen() -> None:
    rec = reconciler(max_running=1)
    first = rec.observe(body("zzz", "2026-01-01T00:00:00Z"))
    second = rec.observe(body("aaa", "2026-01-01T00:00:00Z"))
    assert rec._admit(second) is not None  # uid order would have picked "aaa"
    assert rec._admit(first) is None


def test_namespace_cap_of_a_class() -> None:
    rec = reconciler()
    capped = {"image": "d", "maxEnginesPerNamespace": 1}

    def seen(uid: str, created: str, namespace: str, phase: str | None = None) -> Any:
        b = body(uid, created, phase)
        b["metadata"]["namespace"] = namespace
        state = rec.observe(b)
        state.target = make_target(b["spec"], capped, uid=uid, namespace=namespace)
        return state

    running = seen("a", "2026-01-01T00:00:00Z", "ci", "Running")
    waiting = seen("b", "2026-01-01T00:00:01Z", "ci")
    elsewhere = seen("c", "2026-01-01T00:00:02Z", "other")
    message = rec._admit(waiting)
    assert message is not None
    assert "maxEnginesPerNamespace" in message
    assert rec._admit(elsewhere) is None
    running.status = {"phase": "Succeeded"}
    assert rec._admit(waiting) is None
