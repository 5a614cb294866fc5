"""Isolation tiers on the real cluster: what a job can do to the node through its engine.

The UserNamespace tier's engine runs the patterns a CI job needs without a privileged pod, and
the escape checks fail there; the same checks against the Privileged tier show what it exposes,
so the difference is on record. Every check runs from a job, through its own engine.
"""

import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from remote_docker_operator import names

from ..support import Kube, OperatorProcess, engine_class
from .conftest import BUSYBOX, ENGINE_CLASS
from .test_e2e import COMPOSE, LOAD_BUSYBOX, MULTI_STAGE, checks, job, job_log, run

pytestmark = pytest.mark.e2e

TIERS = ("Privileged", "UserNamespace")


@pytest.fixture
def tiers(classes: Any) -> dict[str, str]:
    """One EngineClass per tier: {isolation: class name}."""
    return {
        tier: classes(engine_class(f"tier-{tier.lower()}", {**ENGINE_CLASS, "isolation": tier}))
        for tier in TIERS
    }


def engine(class_name: str) -> dict[str, Any]:
    return {"engine": {"className": class_name, "imagePullPolicy": "Never"}}


PATTERNS = (
    MULTI_STAGE
    + f"""docker run -d --name app {BUSYBOX} httpd -f -p 8080 -h /etc
sleep 1
docker exec app wget -qO- localhost:8080/hostname >/dev/null && echo "exec worked"
docker run --rm --user 1000 {BUSYBOX} id -u
docker run --rm --network container:app {BUSYBOX} wget -qO- localhost:8080/hostname \\
  >/dev/null && echo "shared netns worked"
"""
    + COMPOSE.removeprefix("set -e\n")
    + "exit 7\n"
)


def test_user_namespace_engine_runs_what_a_ci_job_needs(
    kube: Kube, operator: OperatorProcess, ns: str, tiers: dict[str, str]
) -> None:
    kube.create_buildjob(ns, "userns", job(PATTERNS, **engine(tiers["UserNamespace"])))
    # While the job runs: the engine pod is not privileged, in a user namespace of its own.
    job_ns = kube.wait_phase(ns, "userns", "Running", timeout=300)["namespace"]
    pod = kube.pod(job_ns, names.ENGINE_POD)
    assert pod is not None
    assert pod.spec.host_users is False
    assert pod.spec.containers[0].security_context.privileged is False
    status = kube.wait_phase(ns, "userns", "Succeeded", "Failed", timeout=300)
    output = job_log(kube, ns, "userns")
    # The job's own exit code, after every pattern worked.
    assert (status["phase"], status["reason"], status["exitCode"]) == ("Failed", "JobFailed", 7), (
        status,
        output,
    )
    assert "built in stage one" in output
    assert "buildx built" in output
    assert "exec worked" in output
    assert "shared netns worked" in output
    assert re.search(r"^1000$", output, re.MULTILINE), output  # a container of a non-root user
    assert "served-by-web" in output


def escape_script(device: str, fstype: str, marker: Path) -> str:
    """CHECK lines: what uid 0 in the engine's containers is on the node; whether a privileged
    container in the engine starts at all, sees the node's block device, and writes a file on
    the node's filesystem through it; whether the engine's host PID namespace is the node's."""
    privileged = f"docker run --rm --privileged {BUSYBOX} sh -c"
    return (
        LOAD_BUSYBOX
        + f"""check() {{ echo "CHECK $1=$2"; }}
check uid-map "$(docker run --rm {BUSYBOX} head -n1 /proc/self/uid_map | xargs | tr ' ' :)"
if out=$({privileged} 'echo started' 2>&1); then check privileged-run "$out"
else echo "$out"; check privileged-run refused; fi
out=$({privileged} 'test -b /dev/{device} && echo visible || echo hidden' 2>/dev/null)
check node-block-device "${{out:-refused}}"
out=$({privileged} 'mkdir /node && mount -t {fstype} /dev/{device} /node \\
  && echo escaped > /node{marker} && echo written' 2>/dev/null)
check node-file-write "${{out:-refused}}"
pids=$(docker run --rm --pid host {BUSYBOX} ps -o comm)
case "$pids" in *dockerd*) check engine-pids visible;; *) check engine-pids hidden;; esac
case "$pids" in *kubelet*) check node-pids visible;; *) check node-pids hidden;; esac
"""
    )


def node_disk() -> tuple[str, str, Path]:
    """The block device this test's directory is on, its filesystem type, and the directory (a
    file written there through the device is a file on the node)."""
    here = Path(__file__).resolve().parent
    source, fstype = subprocess.run(
        ["findmnt", "-no", "SOURCE,FSTYPE", "-T", str(here)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return source.removeprefix("/dev/").split("[")[0], fstype, here


@pytest.mark.parametrize("tier", TIERS)
def test_escape_checks(
    kube: Kube, operator: OperatorProcess, ns: str, tiers: dict[str, str], tier: str
) -> None:
    device, fstype, directory = node_disk()
    marker = directory / f".escape-{uuid.uuid4().hex[:8]}"
    try:
        status, output = run(
            kube,
            ns,
            f"escape-{tier.lower()}",
            escape_script(device, fstype, marker),
            **engine(tiers[tier]),
        )
        assert status["phase"] == "Succeeded", (status, output)
        found = checks(output)
        written = marker.exists() and marker.read_text().strip() == "escaped"
    finally:
        marker.unlink(missing_ok=True)
    inside, outside, count = (int(n) for n in found.pop("uid-map").split(":"))
    # Positive control for the PID check: the engine's own processes are seen either way.
    assert found.pop("engine-pids") == "visible", output
    if tier == "Privileged":
        # What the privileged tier exposes: uid 0 is the node's root; a privileged container
        # sees the node's disk and writes a file the node sees.
        assert (inside, outside) == (0, 0), output
        assert found == {
            "privileged-run": "started",
            "node-block-device": "visible",
            "node-file-write": "written",
            "node-pids": "hidden",
        }, output
        assert written
    else:
        # uid 0 in the engine is an unprivileged uid on the node, one of a range of its own;
        # a privileged container does not start (the engine's /sys is read-only, so it cannot
        # mount a writable one); nothing reaches the node.
        assert (inside, count) == (0, 65536), output
        assert outside >= 65536, output
        assert "operation not permitted" in output
        assert found == {
            "privileged-run": "refused",
            "node-block-device": "refused",
            "node-file-write": "refused",
            "node-pids": "hidden",
        }, output
        assert not written
