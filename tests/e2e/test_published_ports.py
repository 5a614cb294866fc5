"""spec.network.publishedPorts on the real cluster: a port a container publishes on the engine
is reached from the job at its engine's host name when opened, refused when not, and never from
another job."""

from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from ..support import Kube, OperatorProcess, wait_for
from .conftest import BUSYBOX
from .test_e2e import LOAD_BUSYBOX, PROBE, job, job_log, run_checks

pytestmark = pytest.mark.e2e

OPENED = {"publishedPorts": {"ephemeral": True, "ports": [8080]}}

# Web servers in the engine: one on a fixed host port, one on whichever ephemeral port Docker
# picks (as testcontainers has it), one on a port never listed; each probed at the engine's
# host name.
PUBLISH = (
    PROBE
    + LOAD_BUSYBOX
    + f"""docker run -d -p 8080:8080 {BUSYBOX} httpd -f -p 8080 -h /etc
docker run -d --name eph -p 8081 {BUSYBOX} httpd -f -p 8081 -h /etc
docker run -d -p 9090:9090 {BUSYBOX} httpd -f -p 9090 -h /etc
port=$(docker port eph 8081/tcp | head -1 | sed 's/.*://')
[ -n "$port" ] && [ "$port" -ge 32768 ] && echo "CHECK ephemeral-port-given=yes"
host=${{DOCKER_HOST#tcp://}}; host=${{host%:*}}
sleep 1
probe fixed "$host" 8080
probe ephemeral "$host" "$port"
probe unlisted "$host" 9090
docker version >/dev/null && echo "CHECK engine-api=open"
"""
)


def test_published_ports_reached_when_opened(
    kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    found = run_checks(kube, ns, "opened", PUBLISH, network=OPENED)
    assert found == {
        "ephemeral-port-given": "yes",
        "fixed": "open",
        "ephemeral": "open",
        "unlisted": "closed",  # opened are the listed ports and the range, not every port
        "engine-api": "open",
    }


def test_published_ports_refused_when_not_opened(
    kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    """The same job without publishedPorts: the containers run and publish, the engine answers
    on 2376 (so the network works), and the published ports are closed to the job."""
    found = run_checks(kube, ns, "closed", PUBLISH)
    assert found == {
        "ephemeral-port-given": "yes",
        "fixed": "closed",
        "ephemeral": "closed",
        "unlisted": "closed",
        "engine-api": "open",
    }


def test_another_job_never_reaches_published_ports(
    kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    """Job A publishes 8080, opened to A, and reaches it itself; job B, with publishedPorts
    opened to itself, reaches its own 8080 and nothing of A's engine."""
    own = f"""docker run -d -p 8080:8080 {BUSYBOX} httpd -f -p 8080 -h /etc
host=${{DOCKER_HOST#tcp://}}; host=${{host%:*}}
sleep 1
probe own-8080 "$host" 8080
"""
    kube.create_buildjob(ns, "a", job(PROBE + LOAD_BUSYBOX + own + "sleep 600\n", network=OPENED))
    status: dict[str, Any] = kube.wait_phase(ns, "a", "Running", timeout=300)
    wait_for(
        lambda: "CHECK own-8080=open" in log_so_far(kube, ns, "a"),
        timeout=120,
        what="job A serving on its published 8080, and reaching it",
    )
    a_host = status["engine"]["endpoint"].removeprefix("tcp://").rsplit(":", 1)[0]
    other = f"probe other-8080 {a_host} 8080\nprobe other-2376 {a_host} 2376\n"
    found = run_checks(kube, ns, "b", PROBE + LOAD_BUSYBOX + own + other, network=OPENED)
    kube.delete_buildjob(ns, "a")
    assert found == {"own-8080": "open", "other-8080": "closed", "other-2376": "closed"}


# testcontainers (from PyPI, in the job image) as a test suite uses it: a container with an
# exposed port, reached at the host and port testcontainers reports; Ryuk (its reaper, pulled
# from Docker Hub) is off, as with any registry that cannot be reached.
TESTCONTAINERS = f"""set -e
{LOAD_BUSYBOX}cat > /tmp/t.py <<'PY'
import socket, time
from testcontainers.core.container import DockerContainer
web = DockerContainer("{BUSYBOX}").with_command("httpd -f -p 8080 -h /etc")
with web.with_exposed_ports(8080) as c:
    host, port = c.get_container_host_ip(), int(c.get_exposed_port(8080))
    print("CHECK host-is-the-engine=" + ("yes" if host.startswith("engine.") else host))
    for _ in range(10):
        try:
            socket.create_connection((host, port), timeout=3).close()
            print("CHECK testcontainers=open")
            break
        except OSError:
            time.sleep(0.5)
    else:
        print("CHECK testcontainers=closed")
PY
TESTCONTAINERS_RYUK_DISABLED=true python3 /tmp/t.py
"""


@pytest.mark.parametrize(("network", "reached"), [(OPENED, "open"), ({}, "closed")])
def test_testcontainers_unchanged_against_the_remote_engine(
    kube: Kube, operator: OperatorProcess, ns: str, network: dict[str, Any], reached: str
) -> None:
    found = run_checks(kube, ns, "tc", TESTCONTAINERS, network=network)
    assert found == {"host-is-the-engine": "yes", "testcontainers": reached}


def log_so_far(kube: Kube, ns: str, name: str) -> str:
    """The job's log, or nothing while its container has not started (400)."""
    try:
        return job_log(kube, ns, name)
    except ApiException as e:
        if e.status != 400:
            raise
        return ""
