"""A tenant who means harm, against the real API server, with the operator running as the
chart's ServiceAccount under the chart's RBAC and admission policies.

Each attack of the hostile-tenant issue is performed for real; each test shows the attack fail
(and the victim untouched) next to a positive control that shows the same path works when it
should. Where the chart's admission policies refuse an attack, the same attack is also made with
the policies' bindings removed, to show the operator refuses it on its own (clusters without
ValidatingAdmissionPolicy)."""

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient, NetworkingV1Api
from kubernetes.client.exceptions import ApiException
from kubernetes.config import new_client_from_config

from remote_docker_operator import names

from ..support import (
    CHART,
    RELEASE,
    RELEASE_NAMESPACE,
    Kube,
    OperatorProcess,
    engine_class,
    wait_for,
)
from .conftest import BIN

pytestmark = pytest.mark.integration

STRICT = "strict"
STRICT_SPEC: dict[str, Any] = {
    "image": "local/dind:27",
    "allowedImages": ["local/dind:*"],
    "storage": {"max": "10Gi"},
    "resources": {"max": {"cpu": "2", "memory": "4Gi"}},
    "daemon": {"allowRegistryMirrors": False},
    "namespaceSelector": {"matchLabels": {"ci.example/tier": "build"}},
}
RUNS = {"image": "local/job:1"}  # no KWOK_EXIT_CODE: runs until deleted


def finishing(code: int) -> dict[str, Any]:
    return {"image": "local/job:1", "env": [{"name": "KWOK_EXIT_CODE", "value": str(code)}]}


# -- identities --------------------------------------------------------------------------------


def token_client(cluster: Any, namespace: str, sa: str, where: Path) -> Kube:
    token = cluster.kubectl("create", "token", sa, "-n", namespace, "--duration=1h").stdout
    (where / f"{sa}.token").write_text(token.strip())
    config = json.loads(cluster.kubeconfig.read_text())
    config["users"] = [{"name": sa, "user": {"tokenFile": str(where / f"{sa}.token")}}]
    config["contexts"][0]["context"]["user"] = sa
    path = where / f"{sa}.kubeconfig"
    path.write_text(json.dumps(config))
    return Kube(new_client_from_config(str(path)))


@pytest.fixture
def tenant(cluster: Any, kube: Kube, ns: str, tmp_path: Path) -> Iterator[Kube]:
    """A namespace user as a platform would make one: `edit` in their namespace (BuildJobs come
    with it through the chart's aggregated role), and the right to create namespaces."""
    name = f"tenant-{ns}"
    cluster.kubectl("create", "serviceaccount", "tenant", "-n", ns)
    cluster.kubectl(
        "create",
        "rolebinding",
        "tenant-edit",
        "--clusterrole=edit",
        f"--serviceaccount={ns}:tenant",
        "-n",
        ns,
    )
    cluster.kubectl("create", "clusterrole", name, "--verb=create", "--resource=namespaces")
    cluster.kubectl(
        "create",
        "clusterrolebinding",
        name,
        f"--clusterrole={name}",
        f"--serviceaccount={ns}:tenant",
    )
    client = token_client(cluster, ns, "tenant", tmp_path)
    # Aggregation and authorizer caches take a moment: wait until the grant is seen.
    wait_for(
        lambda: _can(
            cluster,
            f"system:serviceaccount:{ns}:tenant",
            "create",
            "buildjobs.remotedocker.dev",
            ns,
        ),
        what="tenant's grant",
    )
    yield client
    cluster.kubectl("delete", "clusterrolebinding,clusterrole", name, check=False)


def _can(cluster: Any, subject: str, verb: str, resource: str, ns: str) -> bool:
    out = cluster.kubectl(
        "auth", "can-i", verb, resource, f"--as={subject}", "-n", ns, check=False
    ).stdout.strip()
    return bool(out == "yes")


@pytest.fixture(scope="module")
def strict_class(cluster: Any) -> Iterator[str]:
    body = engine_class(STRICT, STRICT_SPEC)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
    yield STRICT
    cluster.kubectl("delete", "engineclass", STRICT, check=False)


def build_ns(kube: Kube, ns: str) -> str:
    """Opens the namespace to the strict class."""
    kube.core.patch_namespace(ns, {"metadata": {"labels": {"ci.example/tier": "build"}}})
    return ns


POLICY_BINDINGS = [
    f"{RELEASE}-remote-docker-operator-{p}"
    for p in ("buildjob-class", "operator-guard", "job-namespaces")
]


@pytest.fixture
def without_policies(cluster: Any, kube: Kube) -> Iterator[None]:
    """The cluster as one without the chart's admission policies: their bindings removed, and
    back after the test."""
    saved = cluster.kubectl(
        "get", "validatingadmissionpolicybinding", *POLICY_BINDINGS, "-o", "json"
    ).stdout
    cluster.kubectl("delete", "validatingadmissionpolicybinding", *POLICY_BINDINGS)
    # The API server drops a binding a moment after it is deleted.
    wait_for(lambda: _class_policy_gone(kube), timeout=30, what="policy bindings dropped")
    try:
        yield
    finally:
        items = json.loads(saved)["items"]
        for item in items:
            for key in (
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "generation",
                "managedFields",
            ):
                item["metadata"].pop(key, None)
            item.pop("status", None)
        cluster.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
        )
        wait_for(lambda: not _class_policy_gone(kube), timeout=30, what="policy bindings back")


def _class_policy_gone(kube: Kube) -> bool:
    """Whether a BuildJob the strict class refuses is admitted (server-side dry run)."""
    body = {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": "probe", "namespace": "default"},
        "spec": {"job": RUNS, "engine": {"className": STRICT, "image": "evil/root:1"}},
    }
    try:
        kube.custom.create_namespaced_custom_object(
            names.GROUP, names.VERSION, "default", names.PLURAL, body, dry_run="All"
        )
    except ApiException:
        return False
    return True


def refusal(call: Any, status: int = 403) -> str:
    """The message of the refusal the call meets: 422 for a field the class does not allow,
    403 for what no one but the operator (or an admin) may do."""
    with pytest.raises(ApiException) as e:
        call()
    assert e.value.status == status, e.value.body
    return str(json.loads(e.value.body or "{}").get("message", ""))


# -- 1. a privileged image (or size, or setting) of the tenant's choosing ----------------------

REFUSED = [
    ("spec.engine.image", {"image": "evil/root:1"}, True),
    ("spec.engine.storage", {"storage": "1Ei"}, True),
    ("spec.engine.resources", {"resources": {"limits": {"memory": "64Gi"}}}, True),
    ("spec.engine.registryMirrors", {"registryMirrors": ["https://m.example"]}, True),
    ("spec.engine.insecureRegistries", {"insecureRegistries": ["r.example:5000"]}, True),
    ("spec.engine.version", {"version": "27"}, True),
    ("spec.engine.className", {}, False),  # asked from a namespace the class is not open to
]


@pytest.mark.parametrize(("field", "engine", "open_ns"), REFUSED, ids=[r[0] for r in REFUSED])
def test_class_refuses_at_admission(
    kube: Kube,
    tenant: Kube,
    operator: OperatorProcess,
    strict_class: str,
    ns: str,
    field: str,
    engine: dict[str, Any],
    open_ns: bool,
) -> None:
    if open_ns:
        build_ns(kube, ns)
    spec = {"job": RUNS, "engine": {"className": strict_class, **engine}}
    message = refusal(lambda: tenant.create_buildjob(ns, "evil", spec), 422)
    assert field in message, message
    assert f"EngineClass '{strict_class}'" in message, message


def test_class_admits_within_bounds(
    kube: Kube, tenant: Kube, operator: OperatorProcess, strict_class: str, ns: str
) -> None:
    """The positive control of the refusals above: the same tenant, the same class, a spec
    within its bounds; and the class's fences on what the operator builds."""
    build_ns(kube, ns)
    engine = {
        "className": strict_class,
        "image": "local/dind:26",
        "storage": "10Gi",
        "resources": {"limits": {"cpu": "2", "memory": "4Gi"}},
    }
    tenant.create_buildjob(ns, "good", {"job": RUNS, "engine": engine})
    status = kube.wait_phase(ns, "good", "Running")
    assert status["engineClass"] == strict_class
    job_ns = status["namespace"]
    engine_pod = kube.pod(job_ns, names.ENGINE_POD)
    assert engine_pod.spec.containers[0].image == "local/dind:26"
    for pod in (engine_pod, kube.pod(ns, names.job_pod("good"))):
        assert pod.spec.active_deadline_seconds is not None  # ends even without the operator
    limits = kube.core.read_namespaced_limit_range(names.LIMIT_RANGE, job_ns)
    assert limits.spec.limits[0].max == {"cpu": "2", "memory": "4Gi"}
    quota = kube.core.read_namespaced_resource_quota(names.QUOTA, job_ns)
    assert quota.spec.hard["pods"] == "1"
    # Both IP families are fenced: the default denied ranges include IPv6's private ones.
    policy = NetworkingV1Api(kube.client).read_namespaced_network_policy("engine", job_ns)
    blocks = {p.ip_block.cidr: p.ip_block._except for p in policy.spec.egress[1].to}
    assert "fc00::/7" in blocks["::/0"]
    assert "169.254.0.0/16" in blocks["0.0.0.0/0"]


@pytest.mark.parametrize(("field", "engine", "open_ns"), REFUSED, ids=[r[0] for r in REFUSED])
def test_operator_refuses_without_the_policies(
    kube: Kube,
    operator: OperatorProcess,
    strict_class: str,
    ns: str,
    without_policies: None,
    field: str,
    engine: dict[str, Any],
    open_ns: bool,
) -> None:
    if open_ns:
        build_ns(kube, ns)
    kube.create_buildjob(ns, "evil", {"job": RUNS, "engine": {"className": strict_class, **engine}})
    status = kube.wait_phase(ns, "evil", "Failed")
    assert status["reason"] == "EngineClassRefused"
    assert status["message"].startswith(f"{field}"), status["message"]
    assert not kube.namespace_exists(names.job_namespace("bj-", _uid(kube, ns, "evil")))


def test_unknown_class_fails_naming_it(kube: Kube, operator: OperatorProcess, ns: str) -> None:
    kube.create_buildjob(ns, "nope", {"job": RUNS, "engine": {"className": "no-such-class"}})
    status = kube.wait_phase(ns, "nope", "Failed")
    assert status["reason"] == "EngineClassNotFound"
    assert status["message"].startswith("spec.engine.className: EngineClass 'no-such-class'")


def _uid(kube: Kube, ns: str, name: str) -> str:
    return str((kube.get_buildjob(ns, name) or {})["metadata"]["uid"])


# -- 2. a foreign pod posing as a victim's job -------------------------------------------------


def test_foreign_pod_cannot_finish_a_victim(
    kube: Kube, tenant: Kube, operator: OperatorProcess, ns: str
) -> None:
    victim_ns = f"v-{uuid.uuid4().hex[:6]}"
    kube.create_namespace(victim_ns)
    try:
        kube.create_buildjob(victim_ns, "victim", {"job": RUNS})
        status = kube.wait_phase(victim_ns, "victim", "Running")
        uid = _uid(kube, victim_ns, "victim")
        log_mark = operator.log.stat().st_size
        fake = {
            "metadata": {
                "name": names.job_pod("victim"),
                "labels": {
                    names.LABEL_MANAGED_BY: names.APP,
                    names.LABEL_OWNER_NAMESPACE: victim_ns,
                    names.LABEL_OWNER_NAME: "victim",
                    names.LABEL_OWNER_UID: uid,
                    names.LABEL_COMPONENT: names.COMPONENT_JOB,
                },
            },
            "spec": {"containers": [{"name": names.JOB_CONTAINER, **finishing(0)}]},
        }
        tenant.core.create_namespaced_pod(ns, fake)
        wait_for(
            lambda: tenant.core.read_namespaced_pod("victim", ns).status.phase == "Succeeded",
            what="the fake job pod to exit 0",
        )
        time.sleep(3)  # three resync periods
        after = kube.status(victim_ns, "victim")
        assert after["phase"] == "Running", after
        assert kube.pod(status["namespace"], names.ENGINE_POD) is not None
        # The event did reach the operator: it was seen, and refused.
        log = operator.log.read_text(errors="replace")[log_mark:]
        assert f"Ignored pod {ns}/victim" in log
        # Positive control: the victim's own job pod does move it.
        kube.core.delete_namespaced_pod(names.job_pod("victim"), victim_ns)
        assert kube.wait_phase(victim_ns, "victim", "Failed")["reason"] == "JobPodDeleted"
    finally:
        kube.core.delete_namespace(victim_ns)


# -- 3. status.namespace pointed elsewhere -----------------------------------------------------


def test_written_status_namespace_misdirects_nothing(
    kube: Kube, restore_operator: OperatorProcess, ns: str
) -> None:
    operator = restore_operator
    precious = f"precious-{uuid.uuid4().hex[:6]}"
    kube.create_namespace(precious)
    wait_for(lambda: kube.core.list_namespaced_service_account(precious).items, what="default SA")
    try:
        for pod in (names.ENGINE_POD, names.job_pod("liar")):
            kube.core.create_namespaced_pod(
                precious,
                {"metadata": {"name": pod}, "spec": {"containers": [{"name": "c", **RUNS}]}},
            )
        kube.create_buildjob(ns, "liar", {"job": RUNS, "ttlSecondsAfterFinished": 1})
        real_ns = kube.wait_phase(ns, "liar", "Running")["namespace"]
        # A tenant allowed to write buildjobs/status (an admin here) points it elsewhere, and
        # the operator restarts, reading every BuildJob's status afresh.
        operator.stop()
        kube.custom.patch_namespaced_custom_object_status(
            names.GROUP,
            names.VERSION,
            ns,
            names.PLURAL,
            "liar",
            {"status": {"namespace": precious}},
        )
        operator.start()
        kube.core.delete_namespaced_pod(names.job_pod("liar"), ns)  # -> Failed, engine gone, TTL
        assert kube.wait_phase(ns, "liar", "Failed")["reason"] == "JobPodDeleted"
        wait_for(lambda: kube.status(ns, "liar").get("cleanedUp"), what="TTL clean-up")
        wait_for(
            lambda: not kube.namespace_exists(real_ns), timeout=60, what="its own namespace gone"
        )
        kube.delete_buildjob(ns, "liar")
        wait_for(lambda: kube.get_buildjob(ns, "liar") is None, what="BuildJob deleted")
        assert kube.namespace_exists(precious)
        assert kube.core.read_namespace(precious).status.phase == "Active"
        for pod in (names.ENGINE_POD, names.job_pod("liar")):
            assert kube.pod(precious, pod).metadata.deletion_timestamp is None, pod
    finally:
        kube.core.delete_namespace(precious)


# -- 4. the orphan sweep and namespaces labelled by their owners -------------------------------


def test_sweep_spares_namespaces_merely_labelled(
    kube: Kube, restore_operator: OperatorProcess
) -> None:
    ghost = str(uuid.uuid4())  # a BuildJob that does not exist
    suffix = uuid.uuid4().hex[:6]
    labelled = f"team-b-prod-{suffix}"
    real_orphan = names.job_namespace("bj-", ghost)
    wrong_hash = names.job_namespace("bj-", str(uuid.uuid4()))
    labels = {names.LABEL_MANAGED_BY: names.APP, names.LABEL_OWNER_UID: ghost}
    for name in (labelled, real_orphan, wrong_hash):
        kube.core.create_namespace({"metadata": {"name": name, "labels": labels}})
    try:
        restore_operator.restart()
        # Positive control: the real orphan (its name is the prefix and its owner's hash) goes.
        wait_for(lambda: not kube.namespace_exists(real_orphan), timeout=60, what="orphan swept")
        for name in (labelled, wrong_hash):
            assert kube.core.read_namespace(name).status.phase == "Active", name
    finally:
        for name in (labelled, wrong_hash):
            kube.core.delete_namespace(name)


def test_tenant_cannot_label_a_namespace_as_the_operators(
    tenant: Kube, operator: OperatorProcess
) -> None:
    name = f"fake-{uuid.uuid4().hex[:6]}"
    forged = {"metadata": {"name": name, "labels": {names.LABEL_MANAGED_BY: names.APP}}}
    message = refusal(lambda: tenant.core.create_namespace(forged, dry_run="All"))
    assert "only the remote-docker-operator" in message, message
    # Positive control: the same tenant may create a namespace without the label.
    tenant.core.create_namespace({"metadata": {"name": name}}, dry_run="All")


# -- 5. a namespace squatted under a BuildJob's future name ------------------------------------


def test_squatted_namespace_is_not_adopted(
    kube: Kube, tenant: Kube, restore_operator: OperatorProcess, ns: str
) -> None:
    operator = restore_operator
    kube.core.create_namespaced_secret(
        ns,
        {
            "metadata": {"name": "hub-login"},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": '{"auths": {"r.example": {"auth": "c2VjcmV0"}}}'},
        },
    )
    operator.stop()
    kube.create_buildjob(
        ns, "victim", {"job": finishing(0), "dockerConfigSecret": {"name": "hub-login"}}
    )
    squat = names.job_namespace("bj-", _uid(kube, ns, "victim"))
    # The attacker (who may create namespaces) takes the name first, with allow-all policies,
    # a Service and a TLS secret of its own.
    tenant.core.create_namespace({"metadata": {"name": squat}})
    allow_all = {
        "metadata": {"name": "default-deny"},
        "spec": {
            "podSelector": {},
            "ingress": [{}],
            "egress": [{}],
            "policyTypes": ["Ingress", "Egress"],
        },
    }
    NetworkingV1Api(kube.client).create_namespaced_network_policy(squat, allow_all)
    kube.core.create_namespaced_service(
        squat, {"metadata": {"name": "engine"}, "spec": {"ports": [{"port": 2376}]}}
    )
    kube.core.create_namespaced_secret(
        squat, {"metadata": {"name": "engine-tls"}, "stringData": {"ca.pem": "attacker"}}
    )
    try:
        operator.start()
        status = kube.wait_phase(ns, "victim", "Failed")
        assert status["reason"] == "ForeignObject", status
        assert squat in status["message"]
        secrets = {s.metadata.name for s in kube.core.list_namespaced_secret(squat).items}
        assert secrets == {"engine-tls"}, "nothing of the victim's was copied in"
        assert kube.core.list_namespaced_pod(squat).items == []
        assert kube.core.read_namespace(squat).status.phase == "Active"
        # Positive control: a BuildJob whose name is free provisions and succeeds.
        kube.create_buildjob(
            ns, "fine", {"job": finishing(0), "dockerConfigSecret": {"name": "hub-login"}}
        )
        assert kube.wait_phase(ns, "fine", "Succeeded")["reason"] == "Succeeded"
    finally:
        kube.core.delete_namespace(squat)


def test_registry_secrets_only(kube: Kube, operator: OperatorProcess, ns: str) -> None:
    """A pull secret that is not registry credentials (a service-account token, say) is refused
    before any job pod would use it."""
    kube.core.create_namespaced_secret(
        ns, {"metadata": {"name": "not-a-pull-secret"}, "stringData": {"token": "hunter2"}}
    )
    kube.create_buildjob(
        ns, "steal", {"job": finishing(0), "imagePullSecrets": [{"name": "not-a-pull-secret"}]}
    )
    status = kube.wait_phase(ns, "steal", "Failed")
    assert status["reason"] == "InvalidSpec"
    assert status["message"].startswith("spec.imagePullSecrets[0].name:"), status["message"]
    assert kube.pod(ns, names.job_pod("steal")) is None
    # Positive control: a registry credential of the same tenant is taken.
    kube.core.create_namespaced_secret(
        ns,
        {
            "metadata": {"name": "regcred"},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": '{"auths": {}}'},
        },
    )
    kube.create_buildjob(
        ns, "pull", {"job": finishing(0), "imagePullSecrets": [{"name": "regcred"}]}
    )
    assert kube.wait_phase(ns, "pull", "Succeeded")["reason"] == "Succeeded"


# -- 6. the operator's own rights --------------------------------------------------------------


def test_operator_writes_only_in_its_own_namespaces(
    cluster: Any, kube: Kube, operator: OperatorProcess, operator_kubeconfig: Path, ns: str
) -> None:
    as_operator = Kube(new_client_from_config(str(operator_kubeconfig)))
    secret = {"metadata": {"name": "planted"}, "stringData": {"a": "b"}}
    # RBAC alone would allow it (secrets are cluster-wide for the operator)...
    subject = f"system:serviceaccount:{RELEASE_NAMESPACE}:{RELEASE}-remote-docker-operator"
    assert _can(cluster, subject, "create", "secrets", ns)
    # ...the chart's policy does not, in a tenant namespace, nor deleting one.
    message = refusal(lambda: as_operator.core.create_namespaced_secret(ns, secret, dry_run="All"))
    assert "may write only in its own job namespaces" in message, message
    refusal(lambda: as_operator.core.delete_namespace(ns, dry_run="All"))
    refusal(lambda: as_operator.core.create_namespace({"metadata": {"name": "x"}}, dry_run="All"))
    policy = {"metadata": {"name": "planted"}, "spec": {"podSelector": {}}}
    networking = NetworkingV1Api(as_operator.client)
    refusal(lambda: networking.create_namespaced_network_policy(ns, policy, dry_run="All"))
    # Positive control: in a job namespace of its own, the same write is admitted (a policy: its
    # quota, full once the job runs, refuses another Secret there, whoever writes it).
    kube.create_buildjob(ns, "own", {"job": RUNS})
    job_ns = kube.wait_phase(ns, "own", "Running")["namespace"]
    networking.create_namespaced_network_policy(job_ns, policy, dry_run="All")

    # Beside a BuildJob, only its job side: labelled for a BuildJob of that namespace...
    labels = {
        names.LABEL_MANAGED_BY: names.APP,
        names.LABEL_COMPONENT: names.COMPONENT_JOB,
        names.LABEL_OWNER_NAMESPACE: ns,
        names.LABEL_OWNER_UID: _uid(kube, ns, "own"),
    }
    job_side = {"metadata": {"name": "planted", "labels": labels}, "stringData": {"a": "b"}}
    as_operator.core.create_namespaced_secret(ns, job_side, dry_run="All")  # admitted
    elsewhere = {**labels, names.LABEL_OWNER_NAMESPACE: "another-team"}
    refusal(
        lambda: as_operator.core.create_namespaced_secret(
            ns, {**job_side, "metadata": {"name": "planted", "labels": elsewhere}}, dry_run="All"
        )
    )
    # ...and a pod only if unprivileged: the operator's own job pod is the positive control.
    own_pod = ApiClient().sanitize_for_serialization(kube.pod(ns, names.job_pod("own")))
    manifest = {
        "metadata": {"name": "planted", "labels": labels},
        "spec": {
            k: v
            for k, v in own_pod["spec"].items()
            if k not in ("nodeName", "tolerations", "priority", "schedulerName")
        },
    }
    as_operator.core.create_namespaced_pod(ns, manifest, dry_run="All")
    privileged = json.loads(json.dumps(manifest))
    privileged["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    message = refusal(lambda: as_operator.core.create_namespaced_pod(ns, privileged, dry_run="All"))
    assert "only unprivileged pods" in message, message
    host = json.loads(json.dumps(manifest))
    host["spec"]["hostPID"] = True
    refusal(lambda: as_operator.core.create_namespaced_pod(ns, host, dry_run="All"))


def test_operator_relabels_only_its_own_job_namespaces(
    kube: Kube, operator: OperatorProcess, operator_kubeconfig: Path, ns: str
) -> None:
    """The operator may patch namespaces (a claimed warm engine's is relabelled for its
    claimant); the guard keeps it from labelling a tenant's namespace as a job namespace, which
    would then pass every other rule of the guard."""
    as_operator = Kube(new_client_from_config(str(operator_kubeconfig)))
    kube.create_buildjob(ns, "own", {"job": RUNS})
    job_ns = kube.wait_phase(ns, "own", "Running")["namespace"]
    uid = _uid(kube, ns, "own")
    takeover = {
        "metadata": {"labels": {names.LABEL_MANAGED_BY: names.APP, names.LABEL_OWNER_UID: uid}}
    }
    message = refusal(lambda: as_operator.core.patch_namespace(ns, takeover, dry_run="All"))
    assert "may write only in its own job namespaces" in message, message
    # Control: its own job namespace it may relabel.
    relabel = {"metadata": {"labels": {names.LABEL_OWNER_NAME: "own"}}}
    as_operator.core.patch_namespace(job_ns, relabel, dry_run="All")


def test_namespace_users_get_buildjobs_but_not_their_status(
    cluster: Any, tenant: Kube, ns: str
) -> None:
    me = f"system:serviceaccount:{ns}:tenant"
    for verb in ("create", "get", "list", "watch", "delete"):
        assert _can(cluster, me, verb, "buildjobs.remotedocker.dev", ns), verb
    assert not _can(cluster, me, "patch", "buildjobs.remotedocker.dev/status", ns)
    assert not _can(cluster, me, "update", "buildjobs.remotedocker.dev/status", ns)
    assert not _can(cluster, me, "create", "engineclasses.remotedocker.dev", ns)


def test_chart_renders_what_the_tests_install() -> None:
    """The policies the suite relies on are the chart's own, by name."""
    out = subprocess.run(
        [str(BIN / "helm"), "template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE],
        check=True,
        text=True,
        capture_output=True,
    ).stdout
    for binding in POLICY_BINDINGS:
        assert f"name: {binding}\n" in out, binding


# -- 7. a ServiceAccount of the namespace for the job ------------------------------------------


def test_a_job_runs_as_a_service_account_only_when_its_owner_opened_it(
    kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    """Whoever may create BuildJobs may not thereby act as every ServiceAccount of the
    namespace: the account must carry the annotation its namespace's owner puts on it."""
    wait_for(lambda: kube.has_default_account(ns), what="default ServiceAccount")
    kube.core.create_namespaced_service_account(ns, {"metadata": {"name": "deployer"}})
    as_deployer = {**finishing(0), "serviceAccountName": "deployer"}
    kube.create_buildjob(ns, "closed", {"job": as_deployer})
    failed = kube.wait_phase(ns, "closed", "Failed")
    assert failed["reason"] == "InvalidSpec", failed
    assert failed["message"].startswith(
        f"spec.job.serviceAccountName: ServiceAccount {ns}/deployer is not open to BuildJobs"
    ), failed
    assert kube.pod(ns, "closed") is None
    kube.create_buildjob(ns, "missing", {"job": {**finishing(0), "serviceAccountName": "nobody"}})
    failed = kube.wait_phase(ns, "missing", "Failed")
    assert failed["message"] == f"spec.job.serviceAccountName: ServiceAccount {ns}/nobody not found"
    # The positive control: opened, the same job runs as it.
    opened = {"metadata": {"annotations": {names.ANNOTATION_JOB_ACCOUNT: "true"}}}
    kube.core.patch_namespaced_service_account("deployer", ns, opened)
    kube.create_buildjob(ns, "opened", {"job": as_deployer})
    assert kube.wait_phase(ns, "opened", "Succeeded")["reason"] == "Succeeded"
    assert kube.pod(ns, "opened").spec.service_account_name == "deployer"
