"""BuildJobs on a real cluster: the engine really builds, the network policy really isolates.

Every network check below is a real connection attempt between pods, or to a server of the
test's own on an address this machine holds; nothing is sent anywhere else.
"""

import re
from typing import Any

import pytest
from kubernetes.stream import stream

from remote_docker_operator import names

from ..support import Kube, OperatorProcess, wait_for
from .conftest import BUSYBOX, JOB_IMAGE

pytestmark = pytest.mark.e2e

# A plain TCP connect with a timeout, from the job pod (bash's /dev/tcp).
PROBE = (
    'probe() { if timeout 4 bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null; '
    'then echo "CHECK $1=open"; else echo "CHECK $1=closed"; fi; }\n'
)
# The same from a container the job starts in its engine: through the engine pod's network.
# (BusyBox's nc has no -z; `-e PROG`, last, runs PROG once connected: exit 0 only on connect.)
ENGINE_PROBE = (
    f'eprobe() {{ if docker run --rm {BUSYBOX} nc -w 4 "$2" "$3" -e true; '
    'then echo "CHECK $1=open"; else echo "CHECK $1=closed"; fi; }\n'
)
LOAD_BUSYBOX = "docker load -i /images/busybox.tar >/dev/null\n"
# The job's own engine host, from DOCKER_HOST (the job pod runs in the BuildJob's namespace,
# where the short name "engine" means nothing).
OWN_ENGINE = "own=${DOCKER_HOST#tcp://}; own=${own%:*}\n"


def job(script: str, **extra: Any) -> dict[str, Any]:
    return {
        "job": {
            "image": JOB_IMAGE,
            "imagePullPolicy": "Never",
            "command": ["bash", "-c"],
            "args": [script],
        },
        "engine": {"imagePullPolicy": "Never"},
        **extra,
    }


def job_log(kube: Kube, ns: str, name: str) -> str:
    """The job's log, where its owner reads it: `kubectl logs NAME` in the BuildJob's
    namespace."""
    text: str = kube.core.read_namespaced_pod_log(names.job_pod(name), ns)
    return text


def checks(text: str) -> dict[str, str]:
    return dict(re.findall(r"^CHECK (\S+)=(\S+)$", text, re.MULTILINE))


def run(
    kube: Kube, ns: str, name: str, script: str, timeout: float = 300, **extra: Any
) -> tuple[dict[str, Any], str]:
    kube.create_buildjob(ns, name, job(script, **extra))
    status = kube.wait_phase(ns, name, "Succeeded", "Failed", timeout=timeout)
    return status, job_log(kube, ns, name)


def run_checks(kube: Kube, ns: str, name: str, script: str, **extra: Any) -> dict[str, str]:
    """Runs a job that prints CHECK lines; it must succeed; returns {check: open|closed}."""
    status, output = run(kube, ns, name, script, **extra)
    assert status["phase"] == "Succeeded", (status, output)
    found = checks(output)
    print(output)  # shown by pytest when an assertion on the result fails
    return found


def running_engine(kube: Kube, ns: str, name: str) -> str:
    """Starts a BuildJob whose job just sleeps; returns its engine's host name."""
    kube.create_buildjob(ns, name, job("sleep 600"))
    endpoint: str = kube.wait_phase(ns, name, "Running", timeout=300)["engine"]["endpoint"]
    return endpoint.removeprefix("tcp://").split(":")[0]


MULTI_STAGE = f"""set -e
{LOAD_BUSYBOX}mkdir -p /tmp/app && cd /tmp/app
printf '%s\\n' 'FROM {BUSYBOX} AS build' 'RUN echo "built in stage one" > /message' \\
  'FROM {BUSYBOX}' 'COPY --from=build /message /message' 'CMD ["cat", "/message"]' > Dockerfile
docker build -t app .
docker run --rm app
docker buildx build -q -t app-buildx . >/dev/null && echo "buildx built"
docker version --format 'engine={{{{.Server.Version}}}}'
"""


def test_job_runs_beside_its_buildjob_with_its_owners_secrets(
    kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    """The job pod runs in the BuildJob's namespace, as a real kubelet resolves it: env and
    envFrom name the owner's own Secret and ConfigMap, and the log is `kubectl logs NAME`
    there."""
    kube.core.create_namespaced_secret(
        ns, {"metadata": {"name": "ci-token"}, "stringData": {"token": "s3cret-value"}}
    )
    kube.core.create_namespaced_config_map(
        ns, {"metadata": {"name": "ci-settings"}, "data": {"STAGE": "test"}}
    )
    spec = job('echo "CHECK token=$TOKEN"; echo "CHECK stage=$STAGE"; docker version >/dev/null')
    spec["job"]["env"] = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "ci-token", "key": "token"}}}
    ]
    spec["job"]["envFrom"] = [{"configMapRef": {"name": "ci-settings"}}]
    kube.create_buildjob(ns, "owned", spec)
    status = kube.wait_phase(ns, "owned", "Succeeded", "Failed", timeout=300)
    output = job_log(kube, ns, "owned")
    assert status["phase"] == "Succeeded", (status, output)
    assert status["jobPod"] == "owned"
    assert checks(output) == {"token": "s3cret-value", "stage": "test"}
    pod = kube.pod(ns, "owned")
    assert [r.kind for r in pod.metadata.owner_references] == ["BuildJob"]
    # The engine's side stays in its own namespace, where the job pod is not.
    wait_for(
        lambda: not kube.core.list_namespaced_pod(status["namespace"]).items,
        timeout=60,
        what="the engine stopped, and nothing else there",
    )


def test_build_and_run_through_the_remote_engine(
    kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    status, output = run(kube, ns, "build", MULTI_STAGE)
    assert status["phase"] == "Succeeded", (status, output)
    assert status["exitCode"] == 0
    assert "built in stage one" in output
    # BuildKit builds it (its progress names its steps so; the legacy builder's says "Step 1/5"),
    # through the buildx plugin, on the engine version the images are built with.
    assert "load build definition from Dockerfile" in output
    assert "Step 1/" not in output
    assert "buildx built" in output
    assert re.search(r"^engine=26\.", output, re.MULTILINE), output


COMPOSE = f"""set -e
{LOAD_BUSYBOX}mkdir -p /tmp/app && cd /tmp/app
cat > compose.yaml <<'YAML'
services:
  web:
    image: {BUSYBOX}
    command: sh -c 'echo served-by-web > /index.html && httpd -f -p 8080 -h /'
  client:
    image: {BUSYBOX}
    depends_on: [web]
    command: >-
      sh -c 'for i in 1 2 3 4 5 6 7 8 9 10;
      do wget -qO- web:8080/index.html && exit 0; sleep 1; done; exit 1'
YAML
docker compose version
docker compose up --abort-on-container-exit --exit-code-from client
docker compose down
"""


def test_compose_v2_one_service_reaches_another(
    kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    """`docker compose` (v2, the CLI plugin) runs two services on the remote engine, and one
    reaches the other by its service name on the project's network."""
    status, output = run(kube, ns, "compose", COMPOSE)
    assert status["phase"] == "Succeeded", (status, output)
    assert re.search(r"Docker Compose version v?2\.", output), output
    assert "served-by-web" in output


def test_failing_build_reports_the_real_exit_code(
    kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    script = f"""{LOAD_BUSYBOX}mkdir -p /tmp/app && cd /tmp/app
printf '%s\\n' 'FROM {BUSYBOX}' 'RUN exit 7' > Dockerfile
docker build -t broken . || exit "$(( $? + 40 ))"
"""
    status, output = run(kube, ns, "broken", script)
    assert status["phase"] == "Failed", (status, output)
    assert status["reason"] == "JobFailed"
    # BuildKit's docker build exits 1 and names the step's own code; the job's code is the
    # script's, whatever it is (41 here, so a stray 1 from elsewhere cannot pass).
    assert status["exitCode"] == 41
    assert "did not complete successfully: exit code: 7" in output


def test_separation_of_environments(kube: Kube, operator: OperatorProcess, ns: str) -> None:
    """Containers the job starts live in the engine, reachable through docker, not directly."""
    script = (
        PROBE
        + OWN_ENGINE
        + LOAD_BUSYBOX
        + f"""docker run -d --name app {BUSYBOX} httpd -f -p 8080 -h /etc
sleep 1
docker exec app wget -qO- localhost:8080/hostname >/dev/null && echo "CHECK exec=open"
docker run --rm --network container:app {BUSYBOX} wget -qO- localhost:8080/hostname \\
  >/dev/null && echo "CHECK shared-netns=open"
probe direct-container "$(docker inspect -f '{{{{.NetworkSettings.IPAddress}}}}' app)" 8080
probe engine-pod-8080 "$(getent hosts "$own" | awk '{{print $1}}')" 8080
true
"""
    )
    assert run_checks(kube, ns, "sep", script) == {
        "exec": "open",
        "shared-netns": "open",
        "direct-container": "closed",
        "engine-pod-8080": "closed",
    }


def test_isolation(kube: Kube, operator: OperatorProcess, ns: str, servers: dict[str, Any]) -> None:
    """Only a job's own pod reaches its engine, on 2376, with its own certificates; neither
    job nor engine reaches the API server or a denied range; the engine reaches 'the internet'.
    """
    host_b = running_engine(kube, ns, "b")
    internet, denied = servers["internet"], servers["denied"]
    script = (
        PROBE
        + OWN_ENGINE
        + ENGINE_PROBE
        + LOAD_BUSYBOX
        + f"""
docker version >/dev/null 2>&1 && echo "CHECK own-engine-tls=open"
probe own-engine-2376 "$own" 2376
probe own-engine-2375 "$own" 2375
probe other-engine-2376 {host_b} 2376
DOCKER_HOST=tcp://{host_b}:2376 timeout 20 docker version >/dev/null 2>&1 \\
  && echo "CHECK other-engine-tls=open" || echo "CHECK other-engine-tls=closed"
probe job-apiserver 10.96.0.1 443
eprobe engine-apiserver 10.96.0.1 443
probe job-denied {denied[0]} {denied[1]}
eprobe engine-denied {denied[0]} {denied[1]}
eprobe engine-internet {internet[0]} {internet[1]}
true
"""
    )
    assert run_checks(kube, ns, "a", script) == {
        "own-engine-tls": "open",
        "own-engine-2376": "open",
        "own-engine-2375": "closed",
        "other-engine-2376": "closed",
        "other-engine-tls": "closed",
        "job-apiserver": "closed",
        "engine-apiserver": "closed",
        "job-denied": "closed",
        "engine-denied": "closed",
        "engine-internet": "open",
    }


@pytest.mark.parametrize(("egress", "expected"), [("Internet", "open"), ("None", "closed")])
def test_job_egress(
    kube: Kube,
    operator: OperatorProcess,
    ns: str,
    servers: dict[str, Any],
    egress: str,
    expected: str,
) -> None:
    """jobEgress decides whether the job reaches the (stand-in) internet; its engine and DNS
    it reaches either way (the positive controls of the closed case)."""
    internet = servers["internet"]
    script = (
        PROBE
        + f"""docker version >/dev/null 2>&1 && echo "CHECK own-engine-tls=open"
getent hosts kubernetes.default.svc.cluster.local >/dev/null && echo "CHECK dns=open"
probe job-internet {internet[0]} {internet[1]}
true
"""
    )
    kube.create_buildjob(ns, "egress", job(script, network={"jobEgress": egress}))
    status = kube.wait_phase(ns, "egress", "Succeeded", "Failed", timeout=300)
    output = job_log(kube, ns, "egress")
    assert status["phase"] == "Succeeded", (status, output)
    assert checks(output) == {"own-engine-tls": "open", "dns": "open", "job-internet": expected}


MATRIX_SIZE = 3


def exec_in_job(kube: Kube, ns: str, name: str, script: str) -> str:
    """Runs a bash script in a running job pod (kubectl exec); returns stdout and stderr."""
    output: str = stream(
        kube.core.connect_get_namespaced_pod_exec,
        names.job_pod(name),
        ns,
        container="job",
        command=["bash", "-c", script],
        stderr=True,
        stdout=True,
    )
    print(name, output)  # shown by pytest when an assertion on the result fails
    return output


def test_isolation_matrix(kube: Kube, operator: OperatorProcess, ns: str) -> None:
    """N BuildJobs at once, every job pod against every engine, by TCP on 2376 and by TLS
    with its own certificates: only the diagonal (own job -> own engine) is open."""
    jobs = [f"m{i}" for i in range(MATRIX_SIZE)]
    for name in jobs:
        kube.create_buildjob(ns, name, job("sleep 600"))
    job_ns = {name: kube.wait_phase(ns, name, "Running", timeout=300)["namespace"] for name in jobs}
    script = PROBE + "".join(
        f"""probe tcp-{target} engine.{job_ns[target]}.svc 2376
DOCKER_HOST=tcp://engine.{job_ns[target]}.svc:2376 timeout 20 docker version >/dev/null 2>&1 \\
  && echo "CHECK tls-{target}=open" || echo "CHECK tls-{target}=closed"
"""
        for target in jobs
    )
    found = {}
    for source in jobs:
        # The job container starts once its init container has reached the engine.
        wait_for(
            lambda s=source: kube.pod(ns, s).status.phase == "Running",
            timeout=120,
            what=f"job pod of {source} running",
        )
        found[source] = checks(exec_in_job(kube, ns, source, script))
    expected = {
        source: {
            f"{probe}-{target}": "open" if source == target else "closed"
            for target in jobs
            for probe in ("tcp", "tls")
        }
        for source in jobs
    }
    assert found == expected

    # Certificates alone refuse a stranger too: the first job's own engine, reached through the
    # open path, with the second job's client certificate (the first's CA, to trust the server).
    other = kube.core.read_namespaced_secret(names.client_secret(jobs[1]), ns).data
    foreign = f"""mkdir -p /tmp/foreign && cp /certs/client/ca.pem /tmp/foreign/
echo {other["cert.pem"]} | base64 -d > /tmp/foreign/cert.pem
echo {other["key.pem"]} | base64 -d > /tmp/foreign/key.pem
DOCKER_CERT_PATH=/tmp/foreign timeout 20 docker version 2>&1 && echo "CHECK foreign=open" \\
  || echo "CHECK foreign=closed"
"""
    output = exec_in_job(kube, ns, jobs[0], foreign)
    assert checks(output) == {"foreign": "closed"}, output
    assert "certificate" in output, output  # refused in the TLS handshake, not for another cause


def test_pod_elsewhere_cannot_reach_an_engine(
    kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    host = running_engine(kube, ns, "target")
    kube.core.create_namespaced_pod(
        ns,
        {
            "metadata": {"name": "intruder"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "nc",
                        "image": BUSYBOX,
                        "imagePullPolicy": "Never",
                        # The cluster DNS is the control: it proves this pod's network works at all.
                        "command": [
                            "sh",
                            "-c",
                            f"""
                nc -w 4 10.96.0.10 53 -e true && echo dns=open || echo dns=closed
                nc -w 4 {host} 2376 -e true && echo engine=open || echo engine=closed""",
                        ],
                    }
                ],
            },
        },
    )
    wait_for(
        lambda: kube.pod(ns, "intruder").status.phase in ("Succeeded", "Failed"),
        timeout=60,
        what="intruder pod done",
    )
    output = kube.core.read_namespaced_pod_log("intruder", ns)
    assert [line for line in output.splitlines() if "=" in line] == ["dns=open", "engine=closed"], (
        output
    )


def test_engine_lost_mid_job(kube: Kube, operator: OperatorProcess, ns: str) -> None:
    kube.create_buildjob(ns, "lost", job("sleep 3600"))
    job_ns = kube.wait_phase(ns, "lost", "Running", timeout=300)["namespace"]
    kube.core.delete_namespaced_pod("engine", job_ns, grace_period_seconds=0)
    status = kube.wait_phase(ns, "lost", "Failed", timeout=60)
    assert status["reason"] == "EngineFailed"


def test_deadline_ends_a_long_job(kube: Kube, operator: OperatorProcess, ns: str) -> None:
    kube.create_buildjob(ns, "slow", job("sleep 3600", activeDeadlineSeconds=20))
    status = kube.wait_phase(ns, "slow", "Failed", timeout=120)
    assert status["reason"] == "DeadlineExceeded"
    wait_for(
        lambda: (
            not kube.core.list_namespaced_pod(status["namespace"]).items
            and kube.pod(ns, "slow") is None
        ),
        timeout=60,
        what="pods gone",
    )


def test_delete_mid_run_and_ttl_leave_nothing(
    kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    kube.create_buildjob(ns, "mid", job("sleep 3600"))
    mid_ns = kube.wait_phase(ns, "mid", "Running", timeout=300)["namespace"]
    kube.delete_buildjob(ns, "mid")
    status, _ = run(kube, ns, "ttl", "echo done", ttlSecondsAfterFinished=5)
    assert status["phase"] == "Succeeded"
    for job_ns in (mid_ns, status["namespace"]):
        wait_for(
            lambda n=job_ns: not kube.namespace_exists(n),
            timeout=120,
            what=f"namespace {job_ns} gone",
        )
    assert kube.get_buildjob(ns, "mid") is None
