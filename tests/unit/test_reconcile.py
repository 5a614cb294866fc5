"""The reconciler's pure decisions: parsing, queue admission. (Its API side is exercised against
a real API server in tests/integration.)"""

import asyncio
import concurrent.futures
import contextvars
from typing import Any, ClassVar, cast

import kopf
import pytest
import urllib3

from remote_docker_operator import handlers, names, pods
from remote_docker_operator.config import Settings
from remote_docker_operator.errors import ClassNotFound, ForeignObject, NotYet
from remote_docker_operator.jobstate import parse_spec
from remote_docker_operator.kube import Kube
from remote_docker_operator.reconcile import Reconciler

from ..support import make_target

# Stands for kopf's own ContextVars, which kopf.event reads: work handed to a thread must carry
# them, as kopf's own sync handlers do.
KOPF_CONTEXT: contextvars.ContextVar[str] = contextvars.ContextVar("kopf_context")


def body(uid: str, created: str, phase: str | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"bj-{uid}",
            "namespace": "ci",
            "uid": uid,
            "creationTimestamp": created,
            "generation": 1,
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


def test_a_step_that_must_wait_is_requeued_with_backoff_not_slept_on() -> None:
    requeued: list[tuple[str, float]] = []
    rec = Reconciler(Kube.__new__(Kube), Settings(), lambda *_: None, lambda *a: requeued.append(a))
    state = rec.observe(body("u", "2026-01-01T00:00:00Z"))
    calls = 0

    def step(*_: Any) -> None:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise NotYet("no ServiceAccount yet", 0.1)

    rec._step = step  # type: ignore[method-assign]
    for _ in range(4):
        rec._guarded_step(state, drift_check=False)
    assert requeued == [("u", 0.1), ("u", 0.2), ("u", 0.4)]
    assert state.retries == 0  # a step that went through resets the backoff
    assert state.phase is None  # waiting is not failing


def test_requeue_runs_the_buildjob_again_from_another_thread() -> None:
    memo = kopf.Memo()
    ran: list[str] = []

    class Rec:
        jobs: ClassVar[dict[str, str]] = {"u": "state-of-u"}

        def reconcile(self, state: str) -> None:
            ran.append(f"{state} {KOPF_CONTEXT.get()}")

    memo.reconciler = Rec()

    async def main() -> None:
        KOPF_CONTEXT.set("in context")
        requeue = handlers.requeue_on(asyncio.get_running_loop(), memo)
        await asyncio.to_thread(requeue, "u", 0.05)
        await asyncio.to_thread(requeue, "gone", 0.01)  # forgotten meanwhile: nothing runs
        for _ in range(100):
            if ran:
                break
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert ran == ["state-of-u in context"]


def test_resync_loop_steps_every_unfinished_buildjob_and_survives_a_failure() -> None:
    stepped: list[str] = []

    class Rec:
        def due_for_resync(self) -> list[Any]:
            return [body_state(u) for u in ("a", "boom", "c")]

        def resync(self, state: Any) -> None:
            if state.uid == "boom":
                raise RuntimeError("API server gone")
            KOPF_CONTEXT.get()  # kopf.event reads kopf's settings from a ContextVar
            stepped.append(state.uid)

    def body_state(uid: str) -> Any:
        return reconciler().observe(body(uid, "2026-01-01T00:00:00Z"))

    async def main() -> None:
        KOPF_CONTEXT.set("kopf's settings")
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            task = asyncio.create_task(handlers.resync_forever(Rec(), 0.01, pool))  # type: ignore[arg-type]
            for _ in range(200):
                await asyncio.sleep(0.01)
                if stepped.count("c") >= 2:
                    break
            task.cancel()

    asyncio.run(main())
    # Every tick reaches each due BuildJob, the one that fails included, and ticks go on.
    assert stepped.count("a") >= 2
    assert stepped.count("c") >= 2


def test_resync_loop_survives_a_sweep_that_fails_below_the_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sweep cut short by the connection (a timeout, a reset: urllib3's errors, not an
    ApiException) must not end the loop: it is the only retry a failed event handler gets."""
    monkeypatch.setattr(handlers, "SWEEP_EVERY", 2)
    sweeps: list[int] = []
    stepped: list[str] = []

    class Rec:
        def sweep(self) -> list[str]:
            sweeps.append(1)
            raise urllib3.exceptions.ProtocolError("Connection aborted.")

        def due_for_resync(self) -> list[Any]:
            return [reconciler().observe(body("a", "2026-01-01T00:00:00Z"))]

        def resync(self, state: Any) -> None:
            stepped.append(state.uid)

    async def main() -> None:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            task = asyncio.create_task(handlers.resync_forever(Rec(), 0.01, pool))  # type: ignore[arg-type]
            for _ in range(300):
                await asyncio.sleep(0.01)
                if len(sweeps) >= 3:
                    break
            task.cancel()

    asyncio.run(main())
    assert len(sweeps) >= 3
    assert stepped.count("a") >= 5


def test_pod_essence_decides_as_the_whole_pod_does() -> None:
    pod = {
        "metadata": {"name": "job", "uid": "p", "managedFields": [{"big": "x" * 1000}]},
        "spec": {"containers": [{"name": "job", "image": "a"}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": None}],
            "containerStatuses": [
                {"name": "job", "imageID": "sha", "state": {"terminated": {"exitCode": 3}}}
            ],
            "initContainerStatuses": [
                {"name": names.WAIT_CONTAINER, "state": {"terminated": {"exitCode": 0}}}
            ],
        },
    }
    small = pods.essence(pod)
    assert "spec" not in small
    assert "managedFields" not in small["metadata"]
    for check in (pods.is_ready, pods.is_terminating):
        assert check(small) == check(pod)
    assert pods.terminated(small, "job") == pods.terminated(pod, "job")
    assert pods.init_failed(small, names.WAIT_CONTAINER) == pods.init_failed(
        pod, names.WAIT_CONTAINER
    )


class Listed:
    """Just enough of Kube for Reconciler.sweep: BuildJobs and namespaces in memory, and what
    was deleted or patched."""

    def __init__(self, buildjobs: list[dict[str, Any]], namespaces: list[dict[str, Any]]) -> None:
        self.buildjobs, self.namespaces = buildjobs, namespaces
        self.deleted: list[str] = []
        self.released: list[str] = []

    def list(self, kind: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        return self.buildjobs if kind == names.KIND else self.namespaces

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return next((n for n in self.namespaces if n["metadata"]["name"] == name), None)

    def delete(self, kind: str, namespace: str | None, name: str, uid: str, *_: Any) -> bool:
        self.deleted.append(name)
        return True

    def remove_finalizer(self, kind: str, meta: dict[str, Any], finalizer: str) -> None:
        self.released.append(f"{meta['name']}:{finalizer}")


def job_ns(uid: str) -> dict[str, Any]:
    return {
        "kind": "Namespace",
        "metadata": {
            "name": names.job_namespace("bj-", uid),
            "uid": f"ns-{uid}",
            "creationTimestamp": "2026-01-01T00:00:09Z",
            "labels": {names.LABEL_MANAGED_BY: names.APP, names.LABEL_OWNER_UID: uid},
        },
    }


def test_sweep_forgets_the_gone_and_deletes_what_they_left() -> None:
    live, gone = body("live", "2026-01-01T00:00:01Z"), body("gone", "2026-01-01T00:00:02Z")
    going = body("going", "2026-01-01T00:00:03Z")
    going["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    going["metadata"]["finalizers"] = [names.LEGACY_FINALIZER]
    api = Listed([live, going], [job_ns("live"), job_ns("gone"), job_ns("going")])
    rec = Reconciler(cast(Kube, api), Settings(), lambda *_: None, lambda *_: None)
    for b in (live, gone, going):
        rec.observe(b)

    rec.sweep()

    assert set(rec.jobs) == {"live"}  # "gone" vanished unseen; "going" is being deleted
    assert sorted(api.deleted) == sorted(
        [names.job_namespace("bj-", "gone"), names.job_namespace("bj-", "going")]
    )
    assert api.released == [f"bj-going:{names.LEGACY_FINALIZER}"]


def test_sweep_keeps_a_buildjob_first_seen_after_its_list() -> None:
    """Seen after the list was asked for, a BuildJob missing from it is newer than the list,
    not gone."""
    api = Listed([], [])
    rec = Reconciler(cast(Kube, api), Settings(), lambda *_: None, lambda *_: None)
    original = api.list

    def list_then_create(kind: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        if kind == names.KIND:
            rec.observe(body("new", "2026-01-01T00:00:05Z"))  # its ADDED event, meanwhile
        return original(kind, label_selector)

    api.list = list_then_create  # type: ignore[method-assign]
    rec.sweep()
    assert set(rec.jobs) == {"new"}
    assert api.deleted == []


def test_sweep_keeps_the_namespace_of_a_buildjob_created_between_its_lists() -> None:
    """A BuildJob and its namespace made while the sweep lists: the namespaces are listed
    first, so every namespace listed has its BuildJob in the later list (deleting it would
    fail a running job: seen in the helm test while the sweep listed BuildJobs first)."""
    api = Listed([], [])
    rec = Reconciler(cast(Kube, api), Settings(), lambda *_: None, lambda *_: None)
    original = api.list

    def world_moves_after_first_list(
        kind: str, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        answer = list(original(kind, label_selector))
        if not api.buildjobs:
            api.buildjobs.append(body("new", "2026-01-01T00:00:05Z"))
            api.namespaces.append(job_ns("new"))
        return answer

    api.list = world_moves_after_first_list  # type: ignore[method-assign]
    assert rec.sweep() == []
    assert api.deleted == []


class OnePod:
    """An API that holds one pod, in the BuildJob's namespace under its name."""

    def __init__(self, labels: dict[str, str]) -> None:
        self.pod = {
            "kind": "Pod",
            "metadata": {"name": "bj-u", "namespace": "ci", "labels": labels},
        }

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.pod if (kind, namespace, name) == ("Pod", "ci", "bj-u") else None


def _labels(uid: str, name: str = "bj-u") -> dict[str, str]:
    return {
        names.LABEL_MANAGED_BY: names.APP,
        names.LABEL_OWNER_NAME: name,
        names.LABEL_OWNER_UID: uid,
    }


def test_the_job_pod_is_looked_for_beside_the_buildjob_and_only_its_own_is_taken() -> None:
    def owned(labels: dict[str, str]) -> Any:
        rec = Reconciler(cast(Kube, OnePod(labels)), Settings(), lambda *_: None, lambda *_: None)
        state = rec.observe(body("u", "2026-01-01T00:00:01Z"))
        return rec.children.pod(state, names.JOB_POD, fresh=True)

    # Its own: found in the BuildJob's namespace under the BuildJob's name.
    assert owned(_labels("u"))["metadata"]["name"] == "bj-u"
    # A predecessor's (the BuildJob made again under its name): waited for, not failed on.
    with pytest.raises(NotYet, match="earlier BuildJob bj-u"):
        owned(_labels("earlier-uid"))
    # Anyone else's pod of that name: never adopted.
    with pytest.raises(ForeignObject, match="ci/bj-u exists but was not made by the operator"):
        owned({"app": "mine"})
    with pytest.raises(ForeignObject):
        owned(_labels("other-uid", name="another-buildjob"))


class ClassesOnRead:
    """The API as _resolve may see it: only EngineClasses, by name."""

    def __init__(self, found: dict[str, Any]) -> None:
        self.found = found
        self.reads: list[str] = []

    def get(self, kind: str, namespace: str | None, name: str) -> Any:
        assert (kind, namespace) == (names.CLASS_KIND, None)
        self.reads.append(name)
        return self.found.get(name)


def test_a_class_not_seen_yet_is_read_before_the_buildjob_is_refused() -> None:
    """A class applied together with its first BuildJob: the class's watch event may come
    after the BuildJob's."""
    fresh = {"metadata": {"name": "fresh"}, "spec": {"image": "docker:27-dind"}}
    kube = ClassesOnRead({"fresh": fresh})
    rec = Reconciler(cast(Kube, kube), Settings(), lambda *_: None, lambda *_: None)
    uses = body("1", "t", job={"image": "a"}, engine={"className": "fresh"})
    spec, _ = parse_spec(uses)
    assert spec is not None
    target = rec._resolve(rec.observe(uses), spec)
    assert target.engine.class_name == "fresh"
    assert rec.classes["fresh"] == fresh
    rec._resolve(rec.observe(uses), spec)
    assert kube.reads == ["fresh"]  # known from then on
    # One that does not exist is still refused, the field named.
    missing = body("2", "t", job={"image": "a"}, engine={"className": "gone"})
    spec, _ = parse_spec(missing)
    assert spec is not None
    with pytest.raises(
        ClassNotFound, match=r"spec\.engine\.className: EngineClass 'gone' does not"
    ):
        rec._resolve(rec.observe(missing), spec)
