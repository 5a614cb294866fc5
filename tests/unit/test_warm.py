"""Warm pools as data: what warm.plan keeps and starts, which claims fit, what a warm engine's
objects are, and the pool's claim against an in-memory API."""

import datetime
from dataclasses import replace
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from remote_docker_operator import builders, certs, names, warm
from remote_docker_operator.certs import Authority
from remote_docker_operator.jobstate import JobState
from remote_docker_operator.models import WarmPool
from remote_docker_operator.pool import Pool

from ..support import engine_class, make_target

NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
POOL = WarmPool(size=2, max_idle_seconds=600)


def member(age: float = 10, ready: bool = True, claimed: bool = False, **kw: Any) -> warm.Member:
    t = make_target()
    fields: dict[str, Any] = {
        "id": f"w-{age}-{ready}",
        "class_name": "standard",
        "namespace": "bj-warm",
        "engine": t.engine,
        "created": NOW - datetime.timedelta(seconds=age),
        "authority": Authority(datetime.timedelta(hours=3), NOW),
        "pod_deadline_seconds": warm.pod_deadline_seconds(POOL, 3600),
        "ready": ready,
        "claimed": claimed,
    }
    return warm.Member(**{**fields, **kw})


def test_an_empty_pool_starts_its_size() -> None:
    assert warm.plan(POOL, make_target().engine, [], NOW) == warm.Plan(2, [])


def test_a_full_pool_does_nothing_and_claimed_ones_do_not_count() -> None:
    members = [member(1), member(2, ready=False), member(3, claimed=True)]
    assert warm.plan(POOL, make_target().engine, members, NOW) == warm.Plan(0, [])


def test_stale_changed_and_stuck_members_are_dropped_and_replaced() -> None:
    engine = make_target().engine
    idle = member(601)
    stuck = member(warm.START_TIMEOUT_SECONDS + 1, ready=False)
    changed = member(5, engine=replace(engine, image="other:1"))
    fresh = member(5)
    plan = warm.plan(POOL, engine, [idle, stuck, changed, fresh], NOW)
    assert {m.id: why for m, why in plan.drop} == {
        idle.id: "idle past maxIdleSeconds (600s)",
        stuck.id: f"not ready within {warm.START_TIMEOUT_SECONDS}s",
        changed.id: "its class changed",
    }
    assert plan.start == 1


def test_a_smaller_pool_drops_starting_ones_first() -> None:
    engine = make_target().engine
    ready, starting = member(30), member(20, ready=False)
    plan = warm.plan(WarmPool(size=1), engine, [ready, starting], NOW)
    assert [m for m, _ in plan.drop] == [starting]
    assert plan.start == 0


def test_a_class_without_a_pool_drops_every_idle_member() -> None:
    idle, claimed = member(1), member(2, claimed=True)
    plan = warm.plan(None, None, [idle, claimed], NOW)
    assert [m for m, _ in plan.drop] == [idle]
    assert plan.start == 0


def test_only_the_defaults_fit_a_warm_engine() -> None:
    t = make_target()
    assert warm.fits(member(), t, NOW)
    assert not warm.fits(member(ready=False), t, NOW)
    assert not warm.fits(member(claimed=True), t, NOW)
    other = make_target(
        {"job": {"image": "x"}, "engine": {"version": "26"}},
        {"image": "docker:27-dind", "versionedImage": {"repository": "docker"}},
    )
    assert not warm.fits(member(), other, NOW)
    published = make_target({"job": {"image": "x"}, "network": {"publishedPorts": {"ports": [80]}}})
    assert not warm.fits(member(), published, NOW)
    # A deadline longer than the warm pod has left: cold.
    long = make_target({"job": {"image": "x"}, "activeDeadlineSeconds": 86400})
    assert not warm.fits(member(), long, NOW)


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [warm.backoff_seconds(n) for n in (0, 1, 2, 3)] == [0, 1, 2, 4]
    assert warm.backoff_seconds(100) == warm.MAX_BACKOFF_SECONDS


# -- what a warm engine is ---------------------------------------------------------------------


def warm_target() -> builders.Target:
    t = make_target()
    return builders.warm_target("standard", "w-1", t.engine, t.settings, "bj-")


def test_a_warm_engine_admits_nobody_and_is_named_after_its_id() -> None:
    t = warm_target()
    assert t.job_namespace == names.job_namespace("bj-", "w-1")
    ns = builders.build_namespace(t)
    labels = ns["metadata"]["labels"]
    assert labels[names.LABEL_WARM_ENGINE] == "w-1"
    assert labels[names.LABEL_OWNER_KIND] == names.CLASS_KIND
    assert labels[names.LABEL_OWNER_UID] == "w-1"
    assert names.owns_namespace(ns, "w-1")
    engine_policy = builders.build_network_policies(t)[1]
    assert engine_policy["spec"]["ingress"] == []
    # Claimed, the same namespace admits the claimant's job pod.
    claimed = replace(make_target(), job_namespace=t.job_namespace, warm_id="w-1")
    ingress = builders.build_network_policies(claimed)[1]["spec"]["ingress"]
    assert ingress[0]["from"][0]["podSelector"]["matchLabels"][names.LABEL_OWNER_UID] == (
        claimed.uid
    )
    relabelled = {
        **ns,
        "metadata": {**ns["metadata"], "labels": {**labels, names.LABEL_OWNER_UID: claimed.uid}},
    }
    assert names.owns_namespace(relabelled, claimed.uid)
    assert not names.owns_namespace(relabelled, "w-1")


def test_a_claim_keeps_the_engine_services_selector() -> None:
    """The claim relabels the engine pod and rebuilds its Service one after the other: a
    selector naming the owner would match no pod in between, and the service proxy would take
    the engine's address away until its next sync (a second here)."""
    t = warm_target()
    claimed = replace(make_target(), job_namespace=t.job_namespace, warm_id="w-1")
    before, after = (builders.build_engine_service(x)["spec"]["selector"] for x in (t, claimed))
    assert before == after
    # And it still selects the engine pod, before the claim and after it.
    for x in (t, claimed):
        labels = builders.build_engine_pod(x)["metadata"]["labels"]
        assert before.items() <= labels.items()
    assert not before.items() <= builders.build_job_pod(claimed)["metadata"]["labels"].items()


def test_a_warm_engine_has_every_child_but_the_client_with_its_quota_last() -> None:
    t = warm_target()
    server = Authority(datetime.timedelta(hours=1), NOW).server(["engine"], [])
    made = builders.build_warm_children(t, server, 7200)
    assert [m["kind"] for m in made] == [
        "Namespace",
        "NetworkPolicy",
        "NetworkPolicy",
        "Service",
        "Secret",
        "Pod",
        "ResourceQuota",
    ]
    pod = made[5]
    assert pod["spec"]["activeDeadlineSeconds"] == 7200
    assert all(m["metadata"].get("namespace", t.job_namespace) == t.job_namespace for m in made)
    assert "key.pem" in made[4]["stringData"]
    assert "ca-key.pem" not in made[4]["stringData"]


def test_an_authority_issues_clients_only_it_verifies() -> None:
    ca = Authority(datetime.timedelta(hours=2), NOW)
    client = ca.client(NOW + datetime.timedelta(days=30))
    cert = x509.load_pem_x509_certificate(client.cert.encode())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.ca_cert.encode()))
    assert cert.not_valid_after_utc == ca.not_after  # never past the CA's end
    other = Authority(datetime.timedelta(hours=2), NOW)
    assert other.fingerprint != ca.fingerprint
    with pytest.raises((ValueError, InvalidSignature)):
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(other.ca_cert.encode()))
    assert isinstance(certs.issue(["e"], [], datetime.timedelta(hours=1), NOW).client, certs.Issued)


# -- the pool's claim --------------------------------------------------------------------------


class Store:
    """Just enough of kube.Kube: objects by (kind, namespace, name)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.statuses: list[dict[str, Any]] = []
        self.n = 0

    def create(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        meta = manifest["metadata"]
        key = (manifest["kind"], meta.get("namespace") or "", meta["name"])
        if key in self.objects:
            return None
        self.n += 1
        obj = {**manifest, "metadata": {**meta, "uid": f"uid-{self.n}", "resourceVersion": "1"}}
        self.objects[key] = obj
        return obj

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind, namespace or "", name))

    def patch(self, kind: str, namespace: str, name: str, body: Any) -> dict[str, Any] | None:
        obj = self.objects.get((kind, namespace or "", name))
        if obj is None or body["metadata"].get("uid") not in (None, obj["metadata"]["uid"]):
            return None
        labels = {**obj["metadata"]["labels"], **body["metadata"].get("labels", {})}
        obj["metadata"]["labels"] = {k: v for k, v in labels.items() if v is not None}
        obj.setdefault("spec", {}).update(body.get("spec", {}))
        return obj

    def delete(self, kind: str, namespace: str | None, name: str, uid: str, *_: Any) -> bool:
        return self.objects.pop((kind, namespace or "", name), None) is not None

    def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> bool:
        self.statuses.append(status)
        return True


def test_a_claim_hands_one_engine_out_once_with_a_client_of_its_own_ca() -> None:
    store = Store()
    t = make_target()
    spec = {"image": "docker:27-dind", "warmPool": {"size": 1}}
    known = {"standard": engine_class("standard", spec)}
    kicked: list[str] = []
    pool = Pool(store, t.settings, known, kicked.append, lambda: NOW)  # type: ignore[arg-type]
    t = make_target(engine_class=spec)
    pool.refill("standard")
    (m,) = pool.of_class("standard")
    assert store.get("Namespace", None, m.namespace) is not None
    assert store.statuses[-1]["warmPool"]["starting"] == 1
    state = JobState(t.uid, t.namespace, t.name, "", 0, 1, t.spec, None, {}, t.job_namespace)
    assert not pool.claim(state, t), "a starting engine is not handed out"
    m.ready = True
    assert pool.claim(state, t)
    assert (state.warm_id, state.job_namespace) == (m.id, m.namespace)
    ns = store.get("Namespace", None, m.namespace)
    assert ns is not None
    assert ns["metadata"]["labels"][names.LABEL_OWNER_UID] == t.uid
    assert names.LABEL_OWNER_KIND not in ns["metadata"]["labels"]
    pod = store.get("Pod", m.namespace, names.ENGINE_POD)
    assert pod is not None
    assert pod["metadata"]["labels"][names.LABEL_OWNER_UID] == t.uid
    secret = store.get("Secret", t.namespace, t.client_secret)
    engine_tls = store.get("Secret", m.namespace, names.ENGINE_TLS_SECRET)
    assert secret is not None
    assert engine_tls is not None
    fingerprint = names.ANNOTATION_CA_FINGERPRINT
    assert secret["metadata"]["annotations"][fingerprint] == m.authority.fingerprint
    assert engine_tls["metadata"]["annotations"][fingerprint] == m.authority.fingerprint
    assert m.id not in pool.ids()
    assert pool.of_class("standard") == []
    other = JobState("u2", t.namespace, "b2", "", 1, 1, t.spec, None, {}, "bj-x")
    assert not pool.claim(other, t), "handed out once"
    assert (pool.claims["standard"], pool.misses["standard"]) == (1, 2)
    assert not kicked, "the refill waits until the claimant's pods exist"
    pool.refill_soon("standard")
    pool.refill_soon("no-pool")
    assert kicked == ["standard"]


def test_a_class_open_to_some_namespaces_keeps_a_pool_too() -> None:
    """Warm engines belong to no namespace until claimed; the claimant's namespace was checked
    against the selector before it claims."""
    store = Store()
    spec = {
        "image": "docker:27-dind",
        "warmPool": {"size": 1},
        "namespaceSelector": {"matchLabels": {"team": "a"}},
    }
    known = {"standard": engine_class("standard", spec)}
    pool = Pool(store, make_target().settings, known, [].append, lambda: NOW)  # type: ignore[arg-type]
    pool.refill("standard")
    assert len(pool.of_class("standard")) == 1
