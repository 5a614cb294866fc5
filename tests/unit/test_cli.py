"""`kubectl buildjob`: what it makes of files and statuses, and how `run --follow` goes, against
a scripted cluster. The e2e tier runs it against the real one (test_cli_e2e)."""

import io
from collections.abc import Iterator
from typing import Any, cast

import pytest
from kubernetes.client.exceptions import ApiException

from remote_docker_operator import cli

BJ = """
apiVersion: remotedocker.dev/v1alpha1
kind: BuildJob
metadata: {name: hello}
spec: {job: {image: busybox}}
"""


def test_a_buildjob_file_lands_in_the_current_namespace_unless_it_names_one() -> None:
    assert cli.load_buildjob(BJ, "f.yaml", "ci")["metadata"]["namespace"] == "ci"
    own = BJ.replace("{name: hello}", "{name: hello, namespace: team}")
    assert cli.load_buildjob(own, "f.yaml", "ci")["metadata"]["namespace"] == "team"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (BJ.replace("kind: BuildJob", "kind: Pod"), "found remotedocker.dev/v1alpha1, Pod"),
        (BJ + "---\n" + BJ, "expected one BuildJob, found 2 documents"),
        (BJ.replace("{name: hello}", "{labels: {a: b}}"), "metadata.name"),
        ("key: [unclosed", "not YAML"),
        ("", "found 0 documents"),
    ],
)
def test_a_file_that_is_not_one_buildjob_is_refused_saying_why(text: str, says: str) -> None:
    with pytest.raises(cli.CliError, match=r"^f\.yaml: .*" + says.replace(".", r"\.")):
        cli.load_buildjob(text, "f.yaml", "ci")


def test_progress_and_exit_codes() -> None:
    assert cli.progress({}) == "Pending"
    assert cli.progress({"phase": "Pending", "reason": "Queued", "message": "2 ahead"}) == (
        "Pending (Queued: 2 ahead)"
    )
    done = {"phase": "Succeeded", "reason": "Succeeded", "message": "exited 0"}
    assert cli.progress(done) == "Succeeded (exited 0)"  # the reason is not said twice
    assert cli.exit_code({"phase": "Succeeded", "exitCode": 0}) == 0
    assert cli.exit_code({"phase": "Failed", "exitCode": 7}) == 7
    assert cli.exit_code({"phase": "Failed", "reason": "EngineFailed"}) == 1


class Scripted:
    """A cluster whose BuildJob goes through the given statuses, one per read (the last stays),
    and whose job log answers each read with the next of `logs`: bytes, or an API error."""

    def __init__(self, statuses: list[dict[str, Any]], logs: list[bytes | int]) -> None:
        self.statuses, self.logs = statuses, logs
        self.reads = 0
        self.log_reads = 0
        self.logged: set[tuple[str, str]] = set()

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        status = self.statuses[min(self.reads, len(self.statuses) - 1)]
        self.reads += 1
        return {"metadata": {"name": name, "namespace": namespace}, "status": status}

    def log(self, namespace: str, pod: str, follow: bool) -> Iterator[bytes]:
        answer = self.logs[min(self.log_reads, len(self.logs) - 1)]
        self.log_reads += 1
        self.logged.add((namespace, pod))
        if isinstance(answer, int):
            raise ApiException(status=answer, reason="waiting to start")
        yield answer


def session(cluster: Scripted) -> tuple[cli.Session, io.BytesIO, io.StringIO]:
    out, err = io.BytesIO(), io.StringIO()
    return cli.Session(cast(cli.Cluster, cluster), out, err, sleep=lambda _: None), out, err


RUNNING = {"phase": "Running", "namespace": "bj-1", "jobPod": "hello"}


def test_follow_waits_for_the_job_container_streams_its_log_and_exits_with_its_code() -> None:
    cluster = Scripted(
        [
            {},
            {"phase": "Provisioning"},
            RUNNING,
            RUNNING,
            RUNNING,
            {**RUNNING, "phase": "Failed", "reason": "JobFailed", "exitCode": 3},
        ],
        [400, b"building\nran\n"],  # the first read: the container has not started yet
    )
    s, out, err = session(cluster)
    assert s.finish("ci", "hello") == 3
    assert out.getvalue() == b"building\nran\n"
    # The job pod runs in the BuildJob's own namespace, not the engine's (bj-1).
    assert cluster.logged == {("ci", "hello")}
    lines = err.getvalue().splitlines()
    assert lines == [
        "buildjob/hello: Pending",
        "buildjob/hello: Provisioning",
        "buildjob/hello: Running",
        "buildjob/hello: Failed (JobFailed)",
        "buildjob/hello: exit code 3",
    ]


def test_a_buildjob_that_ends_before_its_job_runs_exits_1_without_a_log() -> None:
    failed = {"phase": "Failed", "reason": "EngineFailed", "message": "image not found"}
    cluster = Scripted([{"phase": "Provisioning"}, failed], [b"never read"])
    s, out, err = session(cluster)
    assert s.finish("ci", "hello") == 1
    assert cluster.log_reads == 0
    assert out.getvalue() == b""
    assert "Failed (EngineFailed: image not found)" in err.getvalue()


def test_a_job_container_that_never_starts_ends_the_wait_when_the_buildjob_ends() -> None:
    """Its pod exists, its container never started (400 on every read), then the BuildJob
    failed: the command ends with it instead of asking for the log for ever."""
    failed = {**RUNNING, "phase": "Failed", "reason": "EngineFailed"}
    cluster = Scripted([RUNNING, RUNNING, failed], [400])
    s, _, _ = session(cluster)
    assert s.finish("ci", "hello") == 1
    assert cluster.log_reads == 2


def test_a_log_that_is_gone_says_so() -> None:
    cluster = Scripted([{**RUNNING, "phase": "Succeeded", "cleanedUp": True}], [404])
    s, _, _ = session(cluster)
    with pytest.raises(cli.CliError, match="its job pod was deleted"):
        s.logs("ci", "hello", follow=False)


def test_bad_arguments_exit_2() -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(["run"])  # -f is required
    assert stopped.value.code == 2
