"""Isolation tiers on the real cluster: what a job can do to the node through its engine.

The UserNamespace and Rootless tiers' engines run the patterns a CI job needs without a
privileged pod (the Rootless one a baseline pod), and the escape checks fail there; the same
checks against the Privileged tier show what it exposes, so the difference is on record. Every
check runs from a job, through its own engine; the uids the engine's processes have on the node
are read from the node itself.
"""

import errno
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from remote_docker_operator import names

from ..support import ROOT, Kube, OperatorProcess, engine_class, wait_for
from .conftest import BUSYBOX, ENGINE_CLASS, delete_kept_volumes, released
from .test_cache import BUILD as CACHED_BUILD
from .test_e2e import COMPOSE, LOAD_BUSYBOX, MULTI_STAGE, checks, job, job_log, run
from .test_published_ports import OPENED, PUBLISH

pytestmark = pytest.mark.e2e

# The profile the local cluster's kubelet has (cluster/node.py), as a platform team installs it.
PROFILE = "remote-docker-operator/user-namespace-engine.json"
# Each tier's class: the privileged default, and the UserNamespace tier unconfined (its default)
# and with the project's seccomp profile.
TIERS = {
    "Privileged": {"isolation": "Privileged"},
    "UserNamespace": {"isolation": "UserNamespace"},
    "UserNamespace+seccomp": {"isolation": "UserNamespace", "seccompProfile": PROFILE},
    # The local cluster's RuntimeClass whose containers get /dev/net/tun (cluster/node.py).
    "Rootless": {"isolation": "Rootless", "seccompProfile": PROFILE, "runtimeClassName": "rdo-tun"},
}
# The tiers without a privileged pod, as the pattern test runs them.
UNPRIVILEGED = ("UserNamespace+seccomp", "Rootless")


def test_the_seccomp_profile_is_containerds_default_regenerated(tmp_path: Path) -> None:
    """seccomp/user-namespace-engine.json is what seccomp/generate.sh makes of containerd's
    default profile at the cluster's containerd version: regenerate it when that changes."""
    fresh = tmp_path / "profile.json"
    subprocess.run([ROOT / "seccomp" / "generate.sh", fresh], check=True)
    committed = ROOT / "seccomp" / "user-namespace-engine.json"
    assert fresh.read_text() == committed.read_text(), "run seccomp/generate.sh"


def test_a_node_without_the_profile_fails_the_buildjob_with_the_kubelets_words(
    kube: Kube, operator: OperatorProcess, ns: str, classes: Any
) -> None:
    """A class naming a profile the node lacks: the engine pod never starts, and the BuildJob
    says why instead of waiting for its deadline."""
    missing = "remote-docker-operator/not-installed.json"
    spec = {**ENGINE_CLASS, "isolation": "UserNamespace", "seccompProfile": missing}
    name = classes(engine_class("tier-missing-profile", spec))
    kube.create_buildjob(ns, "missing", job("docker version", **engine(name)))
    status = kube.wait_phase(ns, "missing", "Succeeded", "Failed", timeout=120)
    assert status["phase"] == "Failed", status
    assert "not-installed.json" in status["message"], status


def test_a_rootless_engine_without_tun_fails_the_buildjob_saying_so(
    kube: Kube, operator: OperatorProcess, ns: str, classes: Any
) -> None:
    """A Rootless class without the RuntimeClass that gives its engine /dev/net/tun (the
    positive control: the Rootless tests below, with it)."""
    spec = {**ENGINE_CLASS, **TIERS["Rootless"]}
    del spec["runtimeClassName"]
    name = classes(engine_class("tier-rootless-no-tun", spec))
    kube.create_buildjob(ns, "no-tun", job("docker version", **engine(name)))
    status = kube.wait_phase(ns, "no-tun", "Succeeded", "Failed", timeout=120)
    assert (status["phase"], status["reason"]) == ("Failed", "EngineFailed"), status
    assert "no /dev/net/tun in the engine container" in status["message"], status


@pytest.fixture
def tiers(classes: Any) -> dict[str, str]:
    """One EngineClass per tier: {tier: class name}."""
    return {
        tier: classes(engine_class(f"tier-{i}", {**ENGINE_CLASS, **spec}))
        for i, (tier, spec) in enumerate(TIERS.items())
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


# In the Rootless tier a published port answers once pasta's next scan (each second) has found
# it bound in the engine's network namespace: the job waits for the fixed one, as a client that
# retries (testcontainers) does, before the probes.
PUBLISHED_AND_FORWARDED = PUBLISH.replace(
    "sleep 1\n",
    'for _ in $(seq 40); do timeout 1 bash -c "exec 3<>/dev/tcp/$host/8080" 2>/dev/null '
    "&& break; sleep 0.25; done\n",
)
assert PUBLISHED_AND_FORWARDED != PUBLISH


@pytest.mark.parametrize("tier", UNPRIVILEGED)
def test_unprivileged_engine_runs_what_a_ci_job_needs(
    kube: Kube, operator: OperatorProcess, ns: str, tiers: dict[str, str], tier: str
) -> None:
    """With the seccomp profile (the UserNamespace tier unconfined, its default, runs the warm,
    cached and published-ports test below)."""
    name = tier.lower().replace("+", "-")
    kube.create_buildjob(ns, name, job(PATTERNS, **engine(tiers[tier])))
    # While the job runs: the engine pod is not privileged, in a user namespace of its own.
    job_ns = kube.wait_phase(ns, name, "Running", timeout=300)["namespace"]
    pod = kube.pod(job_ns, names.ENGINE_POD)
    assert pod is not None
    assert pod.spec.host_users is False
    context = pod.spec.containers[0].security_context
    assert context.privileged is False
    assert (context.seccomp_profile.type, context.seccomp_profile.localhost_profile) == (
        "Localhost",
        PROFILE,
    )
    enforced = kube.core.read_namespace(job_ns).metadata.labels[
        "pod-security.kubernetes.io/enforce"
    ]
    if tier == "Rootless":
        # No capability added, and a namespace that enforces baseline, which admitted it.
        assert context.capabilities is None
        assert enforced == "baseline"
    else:
        assert context.capabilities.add == ["SYS_ADMIN", "NET_ADMIN"]
        assert enforced == "privileged"
    status = kube.wait_phase(ns, name, "Succeeded", "Failed", timeout=300)
    output = job_log(kube, ns, name)
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


@pytest.mark.parametrize("tier", ["UserNamespace", "Rootless"])
def test_unprivileged_engines_come_warm_cached_and_publish_ports(
    kube: Kube, operator: OperatorProcess, ns: str, classes: Any, tier: str
) -> None:
    """The tier with what else a class offers: a warm engine claimed and built on, a layer
    cache found on the second run, published ports reached from the job."""
    spec = {
        **ENGINE_CLASS,
        **TIERS[tier],
        "imagePullPolicy": "Never",
        "warmPool": {"size": 1},
        "cache": {"storageClassName": "local-path", "size": "5Gi"},
    }
    name = classes(engine_class(f"tier-{tier.lower()}-features", spec))

    def warm_ready() -> bool:
        body = kube.custom.get_cluster_custom_object(
            names.GROUP, names.VERSION, names.CLASS_PLURAL, name
        )
        return bool(((body.get("status") or {}).get("warmPool") or {}).get("ready"))

    try:
        wait_for(warm_ready, timeout=180, what="a warm engine of the tier ready")
        kube.create_buildjob(ns, "warm", job(MULTI_STAGE, **engine(name)))
        running = kube.wait_phase(ns, "warm", "Running", timeout=120)
        assert running["engine"]["warm"] is True, running
        pod = kube.pod(running["namespace"], names.ENGINE_POD)
        assert pod is not None
        assert pod.spec.host_users is False
        status = kube.wait_phase(ns, "warm", "Succeeded", "Failed", timeout=300)
        output = job_log(kube, ns, "warm")
        assert status["phase"] == "Succeeded", (status, output)
        assert "built in stage one" in output, output
        assert "buildx built" in output, output

        # A cache key asks for more than the class's defaults: these engines start cold.
        cached = {"engine": {**engine(name)["engine"], "cacheKey": "app"}}
        first, cold = run(kube, ns, "cached-1", CACHED_BUILD, **cached)
        assert (first["phase"], first["cache"]["hit"]) == ("Succeeded", False), (first, cold)
        volume = first["cache"]["volume"]
        wait_for(lambda: released(kube, volume), timeout=60, what=f"{volume} released")
        second, warm = run(kube, ns, "cached-2", CACHED_BUILD, **cached)
        assert (second["phase"], second["cache"]["hit"]) == ("Succeeded", True), (second, warm)
        assert "CACHED" not in cold, cold
        assert "CACHED" in warm, warm

        status, output = run(
            kube, ns, "ports", PUBLISHED_AND_FORWARDED, network=OPENED, **engine(name)
        )
        assert status["phase"] == "Succeeded", (status, output)
        assert checks(output) == {
            "ephemeral-port-given": "yes",
            "fixed": "open",
            "ephemeral": "open",
            "unlisted": "closed",
            "engine-api": "open",
        }, output
    finally:
        delete_kept_volumes(kube)


def escape_script(device: str, fstype: str, marker: Path) -> str:
    """CHECK lines: what uid 0 in the engine's containers is on the node; whether a privileged
    container in the engine starts at all, sees the node's block device, and writes a file on
    the node's filesystem through it; the seccomp mode of a container (2: filtered) by default
    and when it asks for none, and what io_uring_setup(2) gives it then (the errno: perl from
    the engine's own filesystem makes the call); whether the engine's host PID namespace is
    the node's."""
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
seccomp() {{ docker run --rm "$@" {BUSYBOX} awk '/^Seccomp:/ {{print $2}}' /proc/self/status; }}
check seccomp-default "$(seccomp)"
check seccomp-unconfined "$(seccomp --security-opt seccomp=unconfined)"
io_uring() {{ docker run --rm "$@" -v /:/engine:ro {BUSYBOX} chroot /engine \
  perl -e 'syscall(425, 1, 0); print $!+0'; }}
check io-uring-default "$(io_uring)"
check io-uring-unconfined "$(io_uring --security-opt seccomp=unconfined)"
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
            f"escape-{tier.lower().replace('+', '-')}",
            escape_script(device, fstype, marker),
            **engine(tiers[tier]),
        )
        assert status["phase"] == "Succeeded", (status, output)
        found = checks(output)
        written = marker.exists() and marker.read_text().strip() == "escaped"
    finally:
        marker.unlink(missing_ok=True)
    inside, outside, count = (int(n) for n in found.pop("uid-map").split(":"))
    if tier == "Rootless":
        # Its containers' user namespace is the one dockerd runs in, nested in the pod's and
        # mapped one to one onto it: the node's uids are seen from the node (the test below).
        assert (inside, outside, count) == (0, 0, 65536), output
        outside = 65536
    # Positive controls: the engine's own processes are seen, and Docker filters a container's
    # system calls by default, in every tier.
    assert found.pop("engine-pids") == "visible", output
    assert found.pop("seccomp-default") == "2", output
    # A container that asks Docker for no filter still has the engine pod's own, if it has one:
    # seccomp filters are inherited and cannot be dropped.
    profiled = "seccompProfile" in TIERS[tier]
    assert found.pop("seccomp-unconfined") == ("2" if profiled else "0")
    # io_uring_setup(2), which both Docker's and containerd's default profiles refuse (moby
    # #46762: io_uring has been a way out of containers): refused by Docker's filter in every
    # tier; with Docker's filter off it reaches the kernel (EFAULT, for its NULL argument: the
    # positive control) unless the engine pod's own profile refuses it.
    assert found.pop("io-uring-default") == str(errno.EPERM), output
    expected = errno.EPERM if profiled else errno.EFAULT
    assert found.pop("io-uring-unconfined") == str(expected), output
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


def engine_processes(container_id: str) -> dict[int, tuple[str, int]]:
    """{pid: (command, uid)}, as the node sees them, of the engine container's processes and
    every process descended from them (the containers its dockerd runs, wherever their cgroups
    are)."""
    table: dict[int, tuple[int, str, int, bool]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text()
            cgroup = (entry / "cgroup").read_text()
        except OSError:  # gone meanwhile
            continue
        uid = re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE)
        assert uid is not None
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        command = stat[stat.index("(") + 1 : stat.rindex(")")]
        table[int(entry.name)] = (ppid, command, int(uid.group(1)), container_id in cgroup)
    found = {pid for pid, row in table.items() if row[3]}
    while True:
        more = {pid for pid, row in table.items() if row[0] in found} - found
        if not more:
            return {pid: table[pid][1:3] for pid in found}
        found |= more


@pytest.mark.parametrize("tier", ["Privileged", "Rootless"])
def test_engine_processes_seen_from_the_node(
    kube: Kube, operator: OperatorProcess, ns: str, tiers: dict[str, str], tier: str
) -> None:
    """What uid each process of the engine, and of a container the job runs in it, has on the
    node: root in the Privileged tier; in the Rootless tier none is below 65536 (uids 0-65535
    are the node's own users), the container's process among them."""
    name = f"uids-{tier.lower()}"
    script = LOAD_BUSYBOX + f"docker run -d {BUSYBOX} sleep 600 && sleep 600\n"
    kube.create_buildjob(ns, name, job(script, **engine(tiers[tier])))
    job_ns = kube.wait_phase(ns, name, "Running", timeout=300)["namespace"]
    pod = kube.pod(job_ns, names.ENGINE_POD)
    container_id = pod.status.container_statuses[0].container_id.split("://")[1]

    def container_started() -> dict[int, tuple[str, int]] | None:
        processes = engine_processes(container_id)
        return processes if any(c == "sleep" for c, _ in processes.values()) else None

    processes = wait_for(container_started, timeout=120, what="the job's container running")
    commands = {command for command, _ in processes.values()}
    assert {"dockerd", "containerd", "sleep"} <= commands, processes
    uids = {command: uid for command, uid in processes.values()}
    if tier == "Privileged":
        assert uids["dockerd"] == uids["sleep"] == 0, processes
    else:
        assert any(c.startswith("pasta") for c in commands), processes  # pasta.avx2 where it can
        assert min(uid for _, uid in processes.values()) >= 65536, processes
    kube.delete_buildjob(ns, name)


def test_the_rootless_example_runs_as_a_user_would_apply_it(
    cluster: Any, kube: Kube, operator: OperatorProcess, ns: str
) -> None:
    """examples/rootless-engine.yaml (its EngineClass and BuildJob), applied with kubectl."""
    example = ROOT / "examples" / "rootless-engine.yaml"
    cluster.kubectl("apply", "-n", ns, "-f", str(example))
    try:
        status = kube.wait_phase(ns, "rootless-engine", "Succeeded", "Failed", timeout=300)
        output = job_log(kube, ns, "rootless-engine")
    finally:
        cluster.kubectl("delete", "engineclass", "rootless", "--ignore-not-found")
    assert status["phase"] == "Succeeded", (status, output)
    assert "privileged: refused" in output, output
