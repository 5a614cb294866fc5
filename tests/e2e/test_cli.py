"""`kubectl buildjob` on the real cluster: kubectl finds the plugin the package installs, `run
--follow` shows progress, streams the job's log and exits with the job's own exit code."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ..support import ROOT, OperatorProcess
from .conftest import BIN, JOB_IMAGE

pytestmark = pytest.mark.e2e

GREETING = "Hello from an image built in my own remote engine"


def kubectl_buildjob(cluster: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """`kubectl buildjob ARGS` as a user would type it: kubectl on PATH with the plugin beside
    the Python the package is installed in."""
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), str(BIN), os.environ["PATH"]]),
        "KUBECONFIG": str(cluster.kubeconfig),
    }
    return subprocess.run(
        [str(BIN / "kubectl"), "buildjob", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )


def test_run_follow_streams_the_log_and_exits_0(
    cluster: Any, operator: OperatorProcess, ns: str
) -> None:
    hello = str(ROOT / "examples" / "hello.yaml")
    done = kubectl_buildjob(cluster, "-n", ns, "run", "-f", hello, "--follow")
    assert done.returncode == 0, done.stdout + done.stderr
    assert GREETING in done.stdout  # the job's own output, on stdout
    progress = done.stderr.splitlines()
    assert progress[0] == f"buildjob.remotedocker.dev/hello created in namespace {ns}"
    # Each change of phase on its own line, the reason and message beside it.
    phases = [line.split()[1] for line in progress[1:-1]]
    assert phases[-2:] == ["Running", "Succeeded"], progress
    assert progress[-1] == "buildjob/hello: exit code 0"

    # The finished job's log, again, by name.
    again = kubectl_buildjob(cluster, "-n", ns, "logs", "hello")
    assert again.returncode == 0, again.stderr
    assert GREETING in again.stdout


@pytest.mark.parametrize(
    ("example", "says"),
    [
        ("compose.yaml", "Hello from the web service"),
        ("testcontainers.yaml", "Hello from a testcontainer"),
    ],
)
def test_the_examples_run_as_a_ci_step_would_run_them(
    cluster: Any, operator: OperatorProcess, ns: str, example: str, says: str
) -> None:
    """Every example that needs no registry (hello above; hello-dockerhub pulls from Docker
    Hub), through the plugin, to exit 0 with its output."""
    done = kubectl_buildjob(
        cluster, "-n", ns, "run", "-f", str(ROOT / "examples" / example), "--follow"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert says in done.stdout


def test_run_follow_exits_with_the_jobs_own_exit_code(
    cluster: Any, operator: OperatorProcess, ns: str, tmp_path: Path
) -> None:
    failing = tmp_path / "failing.yaml"
    failing.write_text(
        f"""apiVersion: remotedocker.dev/v1alpha1
kind: BuildJob
metadata:
  name: failing
spec:
  job:
    image: {JOB_IMAGE}
    imagePullPolicy: Never
    command: [bash, -c, 'docker version --format "engine {{{{.Server.Version}}}}"; exit 7']
  engine:
    imagePullPolicy: Never
"""
    )
    done = kubectl_buildjob(cluster, "-n", ns, "run", "-f", str(failing), "--follow")
    assert done.returncode == 7, done.stdout + done.stderr
    assert "engine 26." in done.stdout  # it ran, against its engine, before it failed
    assert "buildjob/failing: exit code 7" in done.stderr


def test_a_refused_buildjob_says_which_field(
    cluster: Any, operator: OperatorProcess, ns: str, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: remotedocker.dev/v1alpha1\nkind: BuildJob\nmetadata: {name: bad}\n"
        "spec: {job: {image: busybox}, activeDeadlineSeconds: -1}\n"
    )
    done = kubectl_buildjob(cluster, "-n", ns, "run", "-f", str(bad), "--follow")
    assert done.returncode == 1
    assert "the API server refused the BuildJob" in done.stderr
    assert "spec.activeDeadlineSeconds" in done.stderr
