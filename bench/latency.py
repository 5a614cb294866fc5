"""Latency on the real local cluster: a BuildJob against the pod a user would write by hand.

Each round runs the same build (load an image, a two-stage `docker build`, `docker run`) eight
times, one after the other: as a BuildJob that starts its engine cold, as a BuildJob of a class
with a warm pool (it claims a warm engine), as a BuildJob of a UserNamespace class and one of a
Rootless class (their engines cold and unprivileged), as a CI pod of its own that runs
`remote-docker setup` first (a DockerEngine, cold, then of the warm class: how a GitLab or
Actions runner pod gets its engine), as a CI pod labelled for an engine of the warm class, which
the admission webhook gives one as the pod is created (no step: its init container waits until
the engine answers), and as one pod whose dind engine is a native sidecar (an init container
with restartPolicy Always, so the pod completes when the job does) with a startup probe, so the
job container starts once dockerd answers. A ninth run is a plain pod of the job image that only
prints the build's first line: the floor under every "job started" here, as each job runs in a
new pod. They take turns going first, so none always runs on a node another has just warmed.
Before a warm run the pool is given time to be full again (it refills behind each claim, as it
would between jobs); a run that found it empty anyway is counted as a miss. Milestones are seen
by polling the API every 0.1 s; each is timed from just before the create call is sent (so the
create call itself counts):

  engine Ready   BuildJob: the engine pod's Ready condition; baseline: the sidecar started;
                 a CI pod's: its DockerEngine Running
  job started    the job's script began: its first line prints the node's clock, and the
                 bench reads it from the job's log (the node is this machine). A BuildJob's
                 job starts once the gate's mutual-TLS call to the engine succeeded from the
                 job pod; the baseline's once dockerd answered its startup probe; a CI pod's
                 once `remote-docker setup` returned, its own mutual-TLS call answered; a
                 labelled pod's once the webhook's init container saw the engine answer
  done           BuildJob Succeeded; baseline: the job container exited 0 (the pod itself
                 ends seconds later, once its dockerd sidecar has shut down)

Run with `make bench-latency` (or `python bench/latency.py --help`).
"""

import json
import re
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import common
from common import ROOT, describe, on_real_cluster, percentile, report
from kubernetes.client import CoreV1Api, CustomObjectsApi
from kubernetes.config import new_client_from_config
from localcluster import BIN, Cluster, free_port
from node import NODE_IP
from tests.support import (
    SETUP_RULES,
    Kube,
    OperatorProcess,
    engine_class,
    register_webhook,
    uninstall_make_up,
    unregister_webhook,
)

from remote_docker_operator import names

ENGINE_IMAGE = "rdo.local/dind:26.1"
JOB_IMAGE = "rdo.local/job:1"
OPERATOR_IMAGE = "rdo.local/remote-docker-operator:0.1.0"  # the webhook's wait container
BUSYBOX = "rdo.local/busybox:1.36"
ENV: dict[str, str] = {}
BUILD = f"""echo "job-start $(date +%s.%N)"
set -e
docker load -i /images/busybox.tar >/dev/null
mkdir -p /tmp/app && cd /tmp/app
printf '%s\\n' 'FROM {BUSYBOX} AS build' 'RUN echo built > /message' \\
  'FROM {BUSYBOX}' 'COPY --from=build /message /message' 'CMD ["cat", "/message"]' > Dockerfile
docker build -q -t app . >/dev/null
docker run --rm app
"""
MILESTONES = ("engine Ready", "job started", "done")
# Where a BuildJob's time to "job started" goes, in the notes: its job pod made by the operator,
# then its job container running (the gate, waiting for the engine; the kubelet starts it at its
# next relist after the install-gate init container ended, and reports it at the one after).
STEPS = ("job pod created", "job container running")
# A BuildJob's job pod is kept this long after it ends, for the bench to read its log; the
# bench deletes the BuildJob once it has.
LOG_TTL_SECONDS = 60
# A CI pod's own figures: `remote-docker setup`'s run, and what it says of the engine (from the
# DockerEngine's create call to the first mutual-TLS answer from the pod).
RUNNER_MILESTONES = ("setup", "usable")
KINDS = (
    "BuildJob",
    "warm BuildJob",
    "user-namespace BuildJob",
    "rootless BuildJob",
    "DockerEngine",
    "warm DockerEngine",
    "warm labelled pod",
    "baseline",
    "plain pod",
)
WARM_CLASS = "bench-warm"
USERNS_CLASS = "bench-userns"
ROOTLESS_CLASS = "bench-rootless"
# The Rootless tier's needs on the local cluster's node (cluster/node.py).
ROOTLESS_SPEC = {
    "isolation": "Rootless",
    "seccompProfile": "remote-docker-operator/user-namespace-engine.json",
    "runtimeClassName": "rdo-tun",
}
WARM_POOL = 2
# A CI pod's ServiceAccount, allowed what README's `remote-docker setup` section asks.
RUNNER_ACCOUNT = "ci-runner"
# What a CI pod's script prints, on the node's clock (so the bench can place it on its own).
SETUP_SCRIPT = """set -e
echo "setup-start $(date +%s.%N)"
engine_env=$(remote-docker setup --name "$POD_NAME" --class "$ENGINE_CLASS")
eval "$engine_env"
echo "setup-done $(date +%s.%N)"
"""


def buildjob(name: str, class_name: str | None = None) -> dict[str, Any]:
    engine: dict[str, Any] = {"imagePullPolicy": "Never"}
    if class_name:
        engine["className"] = class_name
    return common.buildjob(name, JOB_IMAGE, BUILD, engine, LOG_TTL_SECONDS)


def job_started(log: str, wall: float) -> float:
    """Seconds from `wall` (time.time() before the create call) to the job's first line."""
    found = re.search(r"^job-start ([0-9.]+)$", log, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no job-start line in the job's log: {log[-500:]!r}")
    return float(found[1]) - wall


def job_container(script: str, env: list[dict[str, Any]]) -> dict[str, Any]:
    """The job image running `script`: the baseline's job and a CI pod's alike."""
    return {
        "name": "job",
        "image": JOB_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["bash", "-c", script],
        "env": env,
    }


def one_shot_pod(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    """A pod that runs once: the bench's own kinds of pod."""
    metadata: dict[str, Any] = {"name": name, **({"labels": labels} if labels else {})}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"restartPolicy": "Never", **spec},
    }


def baseline_pod(name: str) -> dict[str, Any]:
    """What a user writes by hand: dind as a native sidecar, plain TCP on loopback."""
    docker = ["docker", "--host=tcp://127.0.0.1:2375"]
    dind = {
        "name": "dind",
        "image": ENGINE_IMAGE,
        "imagePullPolicy": "Never",
        "restartPolicy": "Always",
        "command": ["dockerd", "--host=tcp://127.0.0.1:2375", "--tls=false"],
        "securityContext": {"privileged": True},
        "startupProbe": {
            "exec": {"command": [*docker, "version"]},
            "periodSeconds": 1,
            "failureThreshold": 120,
        },
        "volumeMounts": [{"name": "docker", "mountPath": "/var/lib/docker"}],
    }
    job = job_container(BUILD, [{"name": "DOCKER_HOST", "value": "tcp://127.0.0.1:2375"}])
    return one_shot_pod(
        name,
        automountServiceAccountToken=False,
        initContainers=[dind],
        containers=[job],
        volumes=[{"name": "docker", "emptyDir": {}}],
    )


def plain_pod(name: str) -> dict[str, Any]:
    """The floor under every kind's "job started": a pod of the job image that only prints its
    first line, no engine at all. Whatever runs a job in a new pod waits this long."""
    first_line = BUILD.splitlines()[0]
    return one_shot_pod(
        name, automountServiceAccountToken=False, containers=[job_container(first_line, [])]
    )


def runner_pod(name: str, class_name: str) -> dict[str, Any]:
    """A CI system's job pod (a GitLab or Actions runner's), which gets its engine itself."""
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "ENGINE_CLASS", "value": class_name},
    ]
    return one_shot_pod(
        name,
        serviceAccountName=RUNNER_ACCOUNT,
        containers=[job_container(SETUP_SCRIPT + BUILD, env)],
    )


def labelled_pod(name: str, class_name: str) -> dict[str, Any]:
    """A CI pod that asks for its engine with a label: the webhook does the rest."""
    return one_shot_pod(
        name,
        {names.LABEL_ENGINE_REQUEST: class_name},
        serviceAccountName=RUNNER_ACCOUNT,
        containers=[job_container(BUILD, [])],
    )


def container(pod: Any, name: str, init: bool = False) -> Any:
    statuses = (pod.status.init_container_statuses if init else pod.status.container_statuses) or []
    return next((s for s in statuses if s.name == name), None)


def started(pod: Any, name: str) -> bool:
    status = container(pod, name) if pod else None
    return bool(status and (status.state.running or status.state.terminated))


def follow(
    checks: Callable[[], dict[str, bool]],
    t0: float,
    timeout: float = 300,
    milestones: tuple[str, ...] = MILESTONES,
) -> dict[str, float]:
    """Polls until every milestone is reached; returns seconds from t0 (time.monotonic(), taken
    before the create call) to each (and to each step reached before the last milestone)."""
    seen: dict[str, float] = {}
    while not all(m in seen for m in milestones):
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"milestones reached: {seen}")
        for milestone, reached in checks().items():
            if reached and milestone not in seen:
                seen[milestone] = time.monotonic() - t0
        time.sleep(0.1)
    return seen


def run_buildjob(
    custom: CustomObjectsApi, core: CoreV1Api, ns: str, name: str, class_name: str | None = None
) -> dict[str, float]:
    def checks() -> dict[str, bool]:
        bj = custom.get_namespaced_custom_object(names.GROUP, names.VERSION, ns, names.PLURAL, name)
        status = bj.get("status") or {}
        if status.get("phase") == "Failed":
            raise RuntimeError(f"BuildJob {name} failed: {status.get('message')}")
        engine = job = None
        if status.get("namespace"):
            engines = core.list_namespaced_pod(status["namespace"]).items
            engine = next((p for p in engines if p.metadata.name == names.ENGINE_POD), None)
            beside = core.list_namespaced_pod(ns, field_selector=f"metadata.name={name}").items
            job = beside[0] if beside else None
        conditions = (engine.status.conditions or []) if engine else []
        warm["hit"] = warm["hit"] or bool((status.get("engine") or {}).get("warm"))
        return {
            "engine Ready": any(c.type == "Ready" and c.status == "True" for c in conditions),
            "done": status.get("phase") == "Succeeded",
            "job pod created": job is not None,
            "job container running": started(job, names.JOB_CONTAINER),
        }

    warm = {"hit": False}
    t0, wall = time.monotonic(), time.time()
    custom.create_namespaced_custom_object(
        names.GROUP, names.VERSION, ns, names.PLURAL, buildjob(name, class_name)
    )
    try:
        seen = follow(checks, t0, milestones=("engine Ready", "done"))
        log = core.read_namespaced_pod_log(name, ns, container=names.JOB_CONTAINER)
    finally:
        custom.delete_namespaced_custom_object(names.GROUP, names.VERSION, ns, names.PLURAL, name)
    return {**seen, "job started": job_started(str(log), wall), "warm": float(warm["hit"])}


def pool_ready(custom: CustomObjectsApi) -> bool:
    body = custom.get_cluster_custom_object(
        names.GROUP, names.VERSION, names.CLASS_PLURAL, WARM_CLASS
    )
    return int(((body.get("status") or {}).get("warmPool") or {}).get("ready") or 0) >= WARM_POOL


def wait_pool(custom: CustomObjectsApi, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not pool_ready(custom) and time.monotonic() < deadline:
        time.sleep(0.2)


def run_baseline(core: CoreV1Api, ns: str, name: str) -> dict[str, float]:
    def checks() -> dict[str, bool]:
        pod = core.read_namespaced_pod(name, ns)
        if pod.status.phase == "Failed":
            raise RuntimeError(f"baseline pod {name} failed")
        dind = container(pod, "dind", init=True)
        job = container(pod, "job")
        return {
            "engine Ready": bool(dind and dind.started),
            # The job's exit, not the pod's end: that waits for dockerd to shut down as well.
            "done": bool(job and job.state.terminated and job.state.terminated.exit_code == 0),
        }

    t0, wall = time.monotonic(), time.time()
    core.create_namespaced_pod(ns, baseline_pod(name))
    try:
        seen = follow(checks, t0, milestones=("engine Ready", "done"))
        log = core.read_namespaced_pod_log(name, ns, container="job")
    finally:
        core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
    return {**seen, "job started": job_started(str(log), wall)}


def run_plain(core: CoreV1Api, ns: str, name: str) -> dict[str, float]:
    def checks() -> dict[str, bool]:
        pod = core.read_namespaced_pod(name, ns)
        if pod.status.phase == "Failed":
            raise RuntimeError(f"plain pod {name} failed")
        return {"done": pod.status.phase == "Succeeded"}

    t0, wall = time.monotonic(), time.time()
    core.create_namespaced_pod(ns, plain_pod(name))
    try:
        seen = follow(checks, t0, milestones=("done",))
        log = core.read_namespaced_pod_log(name, ns, container="job")
    finally:
        core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
    return {**seen, "job started": job_started(str(log), wall)}


def engine_status(custom: CustomObjectsApi, ns: str, name: str) -> dict[str, Any]:
    """The status of DockerEngine ns/name; {} while there is none."""
    found = custom.list_namespaced_custom_object(
        names.GROUP,
        names.VERSION,
        ns,
        names.DOCKER_ENGINE_PLURAL,
        field_selector=f"metadata.name={name}",
    )["items"]
    return dict(found[0].get("status") or {}) if found else {}


def run_runner(
    custom: CustomObjectsApi, core: CoreV1Api, ns: str, name: str, class_name: str
) -> dict[str, float]:
    """A CI pod that runs `remote-docker setup`, then the build. Its own clock marks setup's
    start and end ("setup"), and its build's first line ("job started"); setup says what it
    saw of the engine ("usable": from the DockerEngine's create call to its first mutual-TLS
    answer from this pod)."""

    def checks() -> dict[str, bool]:
        pod = core.read_namespaced_pod(name, ns)
        if pod.status.phase == "Failed":
            raise RuntimeError(f"CI pod {name} failed: {log()}")
        status = engine_status(custom, ns, name)
        warm["hit"] = warm["hit"] or bool((status.get("engine") or {}).get("warm"))
        return {
            # Succeeded: the pod ended (its engine with it) between two polls.
            "engine Ready": status.get("phase") in ("Running", "Succeeded"),
            "done": pod.status.phase == "Succeeded",
        }

    def log() -> str:
        return str(core.read_namespaced_pod_log(name, ns, container="job"))

    warm = {"hit": False}
    t0, wall = time.monotonic(), time.time()
    core.create_namespaced_pod(ns, runner_pod(name, class_name))
    try:
        seen = follow(checks, t0, milestones=("engine Ready", "done"))
        lines = log().splitlines()
    finally:
        core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
    marks = dict(line.split(" ", 1) for line in lines if line.startswith("setup-"))
    usable = next(m for line in lines if (m := re.search(r"usable ([0-9.]+)s after", line)))
    return {
        **seen,
        "job started": job_started("\n".join(lines), wall),
        "setup": float(marks["setup-done"]) - float(marks["setup-start"]),
        "usable": float(usable[1]),
        "warm": float(warm["hit"]),
    }


def run_labelled(
    custom: CustomObjectsApi, core: CoreV1Api, ns: str, name: str, class_name: str
) -> dict[str, float]:
    def checks() -> dict[str, bool]:
        pod = core.read_namespaced_pod(name, ns)
        if pod.status.phase == "Failed":
            raise RuntimeError(f"labelled pod {name} failed")
        status = engine_status(custom, ns, name)
        warm["hit"] = warm["hit"] or bool((status.get("engine") or {}).get("warm"))
        return {
            "engine Ready": status.get("phase") in ("Running", "Succeeded"),
            "done": pod.status.phase == "Succeeded",
        }

    warm = {"hit": False}
    t0, wall = time.monotonic(), time.time()
    core.create_namespaced_pod(ns, labelled_pod(name, class_name))
    try:
        seen = follow(checks, t0, milestones=("engine Ready", "done"))
        log = core.read_namespaced_pod_log(name, ns, container="job")
    finally:
        core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
    return {**seen, "job started": job_started(str(log), wall), "warm": float(warm["hit"])}


def label(kind: str, milestone: str) -> str:
    """A figure's name: a CI pod's are timed from its own create call, but for its setup."""
    if milestone == "setup":
        return "`remote-docker setup`, start to end"
    if milestone == "usable":
        return "DockerEngine create call -> usable from the CI pod (setup's count)"
    ci_pod = "DockerEngine" in kind or "labelled" in kind
    return f"{'CI pod ' if ci_pod else ''}create call -> {milestone}"


def order(round_: int) -> tuple[str, ...]:
    """The order of a round's runs: rotated, so each goes first as often as the others."""
    shift = round_ % len(KINDS)
    return KINDS[shift:] + KINDS[:shift]


def main() -> int:
    return on_real_cluster(measure, __doc__, rounds=20)


def apply_classes(cluster: Cluster) -> None:
    """The bench's EngineClasses: the default (cold), a warm-pool one, and one of each
    unprivileged tier."""
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(engine_class("bench", {"image": ENGINE_IMAGE}, default=True)),
    )
    warm_spec = {
        "image": ENGINE_IMAGE,
        "imagePullPolicy": "Never",
        "warmPool": {"size": WARM_POOL},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(engine_class(WARM_CLASS, warm_spec)))
    userns_spec = {"image": ENGINE_IMAGE, "isolation": "UserNamespace"}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(engine_class(USERNS_CLASS, userns_spec)))
    rootless_spec = {"image": ENGINE_IMAGE, **ROOTLESS_SPEC}
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps(engine_class(ROOTLESS_CLASS, rootless_spec))
    )


def measure(cluster: Cluster, rounds: int) -> int:
    # This benchmark runs its own operator: remove the one `make up` installed, if any.
    uninstall_make_up(cluster)
    cluster.install_crds(ROOT / "crds")
    apply_classes(cluster)
    client = new_client_from_config(str(cluster.kubeconfig))
    custom, core = CustomObjectsApi(client), CoreV1Api(client)
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns}})
    Kube(client).grant(ns, RUNNER_ACCOUNT, *SETUP_RULES)
    helm = BIN / "helm"
    webhook_env = register_webhook(cluster, helm, free_port(), OPERATOR_IMAGE, "Never")
    op = OperatorProcess(
        cluster.kubeconfig, cluster.logs / "operator-bench.log", **ENV, **webhook_env
    )
    op.start()
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    try:
        # One unmeasured round of each warms the node's page cache for both images.
        run_buildjob(custom, core, ns, "warm-up")
        wait_pool(custom)
        run_buildjob(custom, core, ns, "warm-up-warm", WARM_CLASS)
        run_buildjob(custom, core, ns, "warm-up-userns", USERNS_CLASS)
        run_buildjob(custom, core, ns, "warm-up-rootless", ROOTLESS_CLASS)
        run_runner(custom, core, ns, "warm-up-runner", "bench")
        run_labelled(custom, core, ns, "warm-up-labelled", "bench")
        run_baseline(core, ns, "warm-up")
        run_plain(core, ns, "warm-up-plain")
        for i in range(rounds):
            run: dict[str, Callable[[], dict[str, float]]] = {
                "BuildJob": partial(run_buildjob, custom, core, ns, f"round-{i:02d}"),
                "warm BuildJob": partial(
                    run_buildjob, custom, core, ns, f"warm-{i:02d}", WARM_CLASS
                ),
                "user-namespace BuildJob": partial(
                    run_buildjob, custom, core, ns, f"userns-{i:02d}", USERNS_CLASS
                ),
                "rootless BuildJob": partial(
                    run_buildjob, custom, core, ns, f"rootless-{i:02d}", ROOTLESS_CLASS
                ),
                "DockerEngine": partial(run_runner, custom, core, ns, f"runner-{i:02d}", "bench"),
                "warm DockerEngine": partial(
                    run_runner, custom, core, ns, f"warm-runner-{i:02d}", WARM_CLASS
                ),
                "warm labelled pod": partial(
                    run_labelled, custom, core, ns, f"labelled-{i:02d}", WARM_CLASS
                ),
                "baseline": partial(run_baseline, core, ns, f"baseline-{i:02d}"),
                "plain pod": partial(run_plain, core, ns, f"plain-{i:02d}"),
            }
            for kind in order(i):
                if kind.startswith("warm"):
                    wait_pool(custom)
                results[kind].append(run[kind]())
            print(
                f"round {i} ({' then '.join(order(i))}): "
                + " / ".join(str(results[kind][-1]) for kind in KINDS),
                flush=True,
            )
    finally:
        op.stop()
        unregister_webhook(cluster, helm)
        cluster.kubectl(
            "delete", "engineclass", WARM_CLASS, USERNS_CLASS, ROOTLESS_CLASS, "--ignore-not-found"
        )
        core.delete_namespace(ns)
    rows: list[tuple[str, str, str]] = []
    targets = {
        ("BuildJob", "engine Ready"): "p50 <= 3 s, p99 <= 6 s",
        ("warm BuildJob", "job started"): "p50 <= 0.5 s, p99 <= 2 s",
        ("warm DockerEngine", "usable"): "p50 <= 0.5 s, p99 <= 2 s",
    }
    for kind, runs in results.items():
        for milestone in MILESTONES + RUNNER_MILESTONES:
            if milestone not in runs[0]:
                continue
            values = [r[milestone] for r in runs]
            rows.append(
                (
                    f"{kind}: {label(kind, milestone)} (p50 / p95 / p99)",
                    " / ".join(f"{percentile(values, p):.2f} s" for p in (50, 95, 99)),
                    targets.get((kind, milestone), "-"),
                )
            )
    baseline = percentile([r["done"] for r in results["baseline"]], 50)
    for kind, target in (
        ("BuildJob", "<= 1.2x"),
        ("warm BuildJob", "<= 0.9x"),
        ("user-namespace BuildJob", "-"),
        ("rootless BuildJob", "-"),
        ("DockerEngine", "-"),
        ("warm DockerEngine", "<= 0.9x"),
        ("warm labelled pod", "-"),
    ):
        ratio = percentile([r["done"] for r in results[kind]], 50) / baseline
        rows.append((f"end to end, {kind} / baseline (p50)", f"{ratio:.2f}x", target))
    floor = percentile([r["job started"] for r in results["plain pod"]], 50)
    for kind in ("BuildJob", "warm BuildJob", "warm labelled pod", "baseline"):
        above = percentile([r["job started"] for r in results[kind]], 50) - floor
        rows.append((f"job started, {kind} less the plain pod (p50)", f"{above:+.2f} s", "-"))
    for kind in ("warm BuildJob", "warm DockerEngine", "warm labelled pod"):
        hits = sum(int(r["warm"]) for r in results[kind])
        rows.append((f"{kind}s that got a warm engine", f"{hits} / {rounds}", "-"))
    notes = [
        f"{rounds} rounds, each a cold BuildJob, a warm-pool BuildJob (pool of {WARM_POOL}), a "
        "cold BuildJob of the UserNamespace tier and one of the Rootless tier, a CI pod "
        "running `remote-docker setup` (cold, "
        "then warm: the DockerEngine kinds), a CI pod labelled for a warm engine and the "
        "baseline pod, and a plain pod of the job image that only prints its first line (the "
        "floor under every job start: a new pod on this node), one at a time, the order "
        "rotated each round, "
        f"on the single-node cluster at {NODE_IP}; each milestone timed from before the "
        "create call.",
        *(
            f"{kind} {milestone}: {describe([r[milestone] for r in runs])}"
            for kind, runs in results.items()
            for milestone in MILESTONES + RUNNER_MILESTONES
            if milestone in runs[0]
        ),
        *(
            f"{kind} {step}: {describe([r[step] for r in results[kind]])}"
            for kind in KINDS
            for step in STEPS
            if all(step in r for r in results[kind])
        ),
    ]
    report("Latency on the real cluster", rows, notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
