"""`remote-docker setup` from a plain pod standing in for a CI runner, on the real cluster: the
pod asks for its own DockerEngine, builds, runs and composes on it, and tears it down; another
pod of the same namespace cannot reach that engine, not even with a copy of its certificates.

Every network check is a real connection attempt between pods of this cluster.
"""

import re
from typing import Any

import pytest
from kubernetes.stream import stream

from remote_docker_operator import names

from ..support import CREATE_ENGINES, ROOT, SETUP_RULES, Kube, OperatorProcess, wait_for
from .conftest import JOB_IMAGE
from .test_e2e import COMPOSE, MULTI_STAGE, checks
from .test_published_ports import PUBLISH

pytestmark = pytest.mark.e2e

DE = names.DOCKER_ENGINE_PLURAL
RUNNER_SA = "ci-runner"


@pytest.fixture
def runner_account(kube: Kube, ns: str) -> str:
    """A CI runner's ServiceAccount, allowed what `remote-docker setup` needs."""
    kube.grant(ns, RUNNER_SA, *SETUP_RULES)
    return RUNNER_SA


def runner_pod(kube: Kube, ns: str, name: str, script: str, account: str = RUNNER_SA) -> None:
    """A pod as a CI system makes one: the job image, its own ServiceAccount, and the downward
    API telling `remote-docker` which pod it is."""
    wait_for(
        lambda: any(
            a.metadata.name == account for a in kube.core.list_namespaced_service_account(ns).items
        ),
        what=f"ServiceAccount {account}",
    )
    field = {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    kube.core.create_namespaced_pod(
        ns,
        {
            "metadata": {"name": name},
            "spec": {
                "serviceAccountName": account,
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "runner",
                        "image": JOB_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["bash", "-c", script],
                        "env": [
                            {"name": k, "valueFrom": {"fieldRef": {"fieldPath": v}}}
                            for k, v in field.items()
                        ],
                    }
                ],
            },
        },
    )


def finished_log(kube: Kube, ns: str, name: str, timeout: float = 400) -> tuple[str, str]:
    wait_for(
        lambda: kube.pod(ns, name).status.phase in ("Succeeded", "Failed"),
        timeout=timeout,
        what=f"pod {name} done",
    )
    log: str = kube.core.read_namespaced_pod_log(name, ns)
    print(log)  # shown by pytest when an assertion on the result fails
    return kube.pod(ns, name).status.phase, log


def engines(kube: Kube, ns: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = kube.custom.list_namespaced_custom_object(
        names.GROUP, names.VERSION, ns, DE
    )["items"]
    return found


def engine_namespaces(kube: Kube, uid: str) -> list[str]:
    selector = f"{names.LABEL_OWNER_UID}={uid}"
    return [n.metadata.name for n in kube.core.list_namespace(label_selector=selector).items]


# The recipe the README gives: the assignment fails (and `set -e` ends the step) when setup
# does; `eval "$(remote-docker setup)"` alone would go on without an engine.
SETUP = """set -e
engine_env=$(remote-docker setup --timeout 300)
eval "$engine_env"
echo "CHECK engine=$REMOTE_DOCKER_ENGINE"
"""


def test_setup_builds_runs_composes_and_tears_down(
    kube: Kube, operator: OperatorProcess, ns: str, runner_account: str
) -> None:
    script = (
        SETUP
        + MULTI_STAGE
        + COMPOSE
        + "remote-docker teardown\n"
        # The engine stops as its namespace goes: within its grace period, not at once.
        + "after=open; for i in $(seq 60); do\n"
        + "  docker version >/dev/null 2>&1 || { after=closed; break; }; sleep 1; done\n"
        + 'echo "CHECK after=$after"\n'
    )
    runner_pod(kube, ns, "runner", script)
    phase, log = finished_log(kube, ns, "runner")
    assert phase == "Succeeded", log
    assert "built in stage one" in log
    assert "buildx built" in log
    assert re.search(r"Docker Compose version v?2\.", log), log
    assert "served-by-web" in log
    found = checks(log)
    assert found["engine"].startswith("runner-"), log
    # Torn down: the engine no longer answers, and nothing of it is left.
    assert found["after"] == "closed", log
    wait_for(lambda: engines(kube, ns) == [], what="DockerEngine gone")
    wait_for(
        lambda: (
            kube.core.list_namespaced_secret(
                ns, label_selector=f"{names.LABEL_COMPONENT}={names.COMPONENT_CLIENT}"
            ).items
            == []
        ),
        what="client Secret gone",
    )
    labelled = f"{names.LABEL_OWNER_NAME}={found['engine']}"
    wait_for(
        lambda: kube.core.list_namespace(label_selector=labelled).items == [],
        timeout=60,
        what="engine namespace gone",
    )


def test_no_other_pod_reaches_the_engine_not_even_with_its_certificates(
    kube: Kube, operator: OperatorProcess, ns: str, runner_account: str
) -> None:
    # This time with --env-file, which later steps (here: kubectl exec) read.
    script = """set -e
remote-docker setup --timeout 300 --env-file /tmp/engine.env >/dev/null
set -a; . /tmp/engine.env; set +a
echo "CHECK engine=$REMOTE_DOCKER_ENGINE"
docker version
sleep 600
"""
    runner_pod(kube, ns, "runner", script)
    wait_for(
        lambda: [e for e in engines(kube, ns) if (e.get("status") or {}).get("phase") == "Running"],
        timeout=300,
        what="the runner's DockerEngine running",
    )
    [engine] = engines(kube, ns)
    uid, secret = engine["metadata"]["uid"], engine["status"]["clientSecret"]
    host = engine["status"]["engine"]["endpoint"].removeprefix("tcp://").split(":")[0]
    # The runner itself reaches it (the positive control), once its setup has returned.
    wait_for(
        lambda: "CHECK engine=" in kube.core.read_namespaced_pod_log("runner", ns),
        timeout=120,
        what="runner set up",
    )
    own = stream(
        kube.core.connect_get_namespaced_pod_exec,
        "runner",
        ns,
        container="runner",
        command=[
            "bash",
            "-c",
            "set -a; . /tmp/engine.env; docker version --format 'CHECK own={{.Server.Os}}'",
        ],
        stderr=True,
        stdout=True,
    )
    assert checks(own) == {"own": "linux"}, own

    # Another pod of the namespace, with the very same certificates and environment mounted
    # from the client Secret: the policy admits only the runner, so the engine never answers.
    intruder = f"""
timeout 4 bash -c 'exec 3<>/dev/tcp/10.96.0.10/53' && echo CHECK dns=open || echo CHECK dns=closed
timeout 4 bash -c 'exec 3<>/dev/tcp/{host}/2376' && echo CHECK tcp=open || echo CHECK tcp=closed
timeout 20 docker version >/dev/null 2>&1 && echo CHECK tls=open || echo CHECK tls=closed
"""
    kube.core.create_namespaced_pod(
        ns,
        {
            "metadata": {"name": "intruder"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "intruder",
                        "image": JOB_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["bash", "-c", intruder],
                        "env": [
                            {
                                "name": k,
                                "valueFrom": {"secretKeyRef": {"name": secret, "key": k}},
                            }
                            for k in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")
                        ],
                        "volumeMounts": [{"name": "certs", "mountPath": names.CERT_DIR}],
                    }
                ],
                "volumes": [{"name": "certs", "secret": {"secretName": secret}}],
            },
        },
    )
    _, log = finished_log(kube, ns, "intruder", timeout=120)
    # DNS is the control: it proves the intruder's network works at all.
    assert checks(log) == {"dns": "open", "tcp": "closed", "tls": "closed"}, log

    # The runner goes: its engine goes with it (the garbage collector, then the operator).
    kube.core.delete_namespaced_pod("runner", ns, grace_period_seconds=0)
    wait_for(lambda: engines(kube, ns) == [], timeout=60, what="DockerEngine collected")
    wait_for(lambda: engine_namespaces(kube, uid) == [], timeout=60, what="namespace gone")


def test_setup_without_the_grant_fails_clearly(
    kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    """A pod whose ServiceAccount may not create DockerEngines gets the API server's refusal,
    and a non-zero exit, not a hang."""
    runner_pod(kube, ns, "nogrant", SETUP, account="default")
    phase, log = finished_log(kube, ns, "nogrant", timeout=120)
    assert phase == "Failed", log
    assert "error: the API server refused the DockerEngine" in log, log
    assert "forbidden" in log, log
    assert engines(kube, ns) == []


@pytest.mark.parametrize(
    ("flags", "published"),
    [("--publish 8080 --publish-ephemeral", "open"), ("", "closed")],
)
def test_setup_opens_published_ports_when_asked(
    kube: Kube,
    operator: OperatorProcess,
    ns: str,
    runner_account: str,
    flags: str,
    published: str,
) -> None:
    """A DockerEngine's publishedPorts, from `remote-docker setup`: the ports containers
    publish are reached from the runner when opened, refused when not; the engine's own API
    answers either way (the network works)."""
    script = SETUP.replace("remote-docker setup", f"remote-docker setup {flags}") + PUBLISH
    runner_pod(kube, ns, "runner", script)
    phase, log = finished_log(kube, ns, "runner")
    assert phase == "Succeeded", log
    found = checks(log)
    found.pop("engine")
    assert found == {
        "ephemeral-port-given": "yes",
        "fixed": published,
        "ephemeral": published,
        "unlisted": "closed",
        "engine-api": "open",
    }, log


def test_a_labelled_pod_gets_its_engine_with_no_step_at_all(
    kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    """The admission webhook: the pod carries one label and runs docker as if the engine were
    local. Its first init container holds the job back until the engine answers it over mutual
    TLS (a real kubelet runs it); the engine ends with the pod."""
    account = "labelled-runner"
    # All the runner's account needs: the webhook makes the engine in its name.
    kube.grant(ns, account, CREATE_ENGINES)
    wait_for(lambda: kube.has_default_account(ns), what="default ServiceAccount")
    created = kube.core.create_namespaced_pod(
        ns,
        {
            "metadata": {"generateName": "job-", "labels": {names.LABEL_ENGINE_REQUEST: ""}},
            "spec": {
                "serviceAccountName": account,
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "job",
                        "image": JOB_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["bash", "-c", MULTI_STAGE + COMPOSE],
                    }
                ],
            },
        },
    )
    name = created.metadata.name
    phase, log = finished_log(kube, ns, name)
    assert phase == "Succeeded", log
    assert "built in stage one" in log
    assert "served-by-web" in log
    wait_log = kube.core.read_namespaced_pod_log(name, ns, container=names.CLIENT_WAIT_CONTAINER)
    assert "answers over mutual TLS" in wait_log, wait_log
    # The pod ended, so its engine did (ClientGone), and its namespace with the TTL of 0; the
    # DockerEngine stays, with the pod, to be read.
    [engine] = engines(kube, ns)
    uid = engine["metadata"]["uid"]
    wait_for(lambda: engine_namespaces(kube, uid) == [], timeout=120, what="namespace gone")
    status = kube.wait_phase(ns, name, "Succeeded", plural=DE)
    assert status["reason"] == "ClientGone", status
    # The pod goes: so does the DockerEngine (the garbage collector).
    kube.core.delete_namespaced_pod(name, ns)
    wait_for(lambda: engines(kube, ns) == [], timeout=120, what="DockerEngine collected")


def test_the_ci_pod_example_runs_as_applied(
    cluster: Any, kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    """examples/ci-pod.yaml, applied as a user would: its ServiceAccount, grant and labelled pod."""
    wait_for(lambda: kube.has_default_account(ns), what="default ServiceAccount")
    cluster.kubectl("apply", "-n", ns, "-f", str(ROOT / "examples" / "ci-pod.yaml"))
    phase, log = finished_log(kube, ns, "ci-pod")
    assert phase == "Succeeded", log
    assert "Hello from a CI pod's own engine" in log
