"""Scale on kwok fake nodes: a burst of BuildJobs, a restart with thousands waiting, memory.

A kwok-tier cluster of its own (real kube-apiserver, etcd, controllers; kwok runs the pods),
the operator as a real process with its own user, whose every write the API server's audit
log records. Phases:

  burst    N BuildJobs created at once: throughput to Running, all Succeeded, API writes
           per BuildJob (everything the operator wrote, TTL clean-up included), 409s, 429s,
           every namespace gone after the TTL.
  restart  M more run to Succeeded, the operator is stopped, their TTL runs out, and the
           operator is started again: time until every one of them is cleaned up.
  memory   more BuildJobs until T exist; the operator's peak RSS since its restart.

Run with `make bench-scale` (or `python bench/scale.py --help`).
"""

import argparse
import collections
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, Progress, describe, report, wait_until
from kubernetes.client import ApiClient, Configuration, CoreV1Api, CustomObjectsApi
from kubernetes.config import load_kube_config
from localcluster import Cluster, Ports
from tests.support import OperatorProcess, engine_class

from remote_docker_operator import names

OPERATOR_USER = "remote-docker-operator"
NAMESPACE = "bench"
ENV = {
    "RDO_LOG_LEVEL": os.environ.get("RDO_LOG_LEVEL", "INFO"),
}


def client_for(kubeconfig: Path) -> ApiClient:
    config = Configuration()
    load_kube_config(str(kubeconfig), client_configuration=config)
    config.connection_pool_maxsize = 32
    return ApiClient(config)


def spec(ttl: int) -> dict[str, Any]:
    return {
        "job": {
            "image": "local/job:1",
            "command": ["sh", "-c", "docker build ."],
            "env": [{"name": "KWOK_EXIT_CODE", "value": "0"}],
        },
        "ttlSecondsAfterFinished": ttl,
    }


def create_many(api: CustomObjectsApi, prefix: str, count: int, ttl: int) -> set[str]:
    """Creates `count` BuildJobs from 32 threads at once; returns their uids."""

    def create(i: int) -> str:
        body = {
            "apiVersion": names.API_VERSION,
            "kind": names.KIND,
            "metadata": {"name": f"{prefix}-{i:05d}"},
            "spec": spec(ttl),
        }
        created = api.create_namespaced_custom_object(
            names.GROUP, names.VERSION, NAMESPACE, names.PLURAL, body
        )
        return str(created["metadata"]["uid"])

    with ThreadPoolExecutor(32) as pool:
        return set(pool.map(create, range(count)))


class Audit:
    """The operator's writes, read from the API server's audit log between two marks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def since_mark(self) -> list[dict[str, Any]]:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            return [json.loads(line) for line in f if line.strip()]


WRITES = frozenset({"create", "update", "patch", "delete", "deletecollection"})


def summarize_requests(entries: list[dict[str, Any]], jobs: int) -> tuple[str, str, list[str]]:
    """(writes per BuildJob, reads per BuildJob, a breakdown) of the operator's requests."""
    by_kind: collections.Counter[str] = collections.Counter()
    codes: collections.Counter[int] = collections.Counter()
    entries = [e for e in entries if e["stage"] == "ResponseComplete" and e["verb"] != "watch"]
    writes = [e for e in entries if e["verb"] in WRITES]
    for e in entries:
        ref = e.get("objectRef", {})
        resource = "/".join(filter(None, (ref.get("resource"), ref.get("subresource"))))
        by_kind[f"{e['verb']} {resource}"] += 1
        codes[e.get("responseStatus", {}).get("code", 0)] += 1
    breakdown = [
        f"  {what}: {count / jobs:.2f} per BuildJob"
        for what, count in sorted(by_kind.items(), key=lambda kv: -kv[1])
    ]
    return (
        f"{len(writes) / jobs:.2f}",
        f"{(len(entries) - len(writes)) / jobs:.2f}",
        [
            "Operator requests per BuildJob, by verb and resource (audit log):",
            *breakdown,
            f"  response codes: {dict(sorted(codes.items()))}",
        ],
    )


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of a process, MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def cpu_seconds(pid: int) -> float:
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / 100  # utime + stime, in clock ticks of 1/100 s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--restart", type=int, default=2000)
    parser.add_argument("--total", type=int, default=5000)
    parser.add_argument("--ttl", type=int, default=30, help="burst BuildJobs' TTL (s)")
    args = parser.parse_args()

    workdir = RESULTS / "kwok-cluster"
    if workdir.exists():  # a fresh cluster each run: stop the last one, drop its data
        Cluster(workdir).down()
        shutil.rmtree(workdir)
    cluster = Cluster(workdir, Ports.free(), tier="kwok", audit_users=(OPERATOR_USER,))
    cluster.up()
    try:
        return run(cluster, args)
    finally:
        cluster.down()


def run(cluster: Cluster, args: argparse.Namespace) -> int:
    cluster.install_crds(ROOT / "crds")
    default = engine_class("bench", {"image": "local/dind:27"}, default=True)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(default))
    client = client_for(cluster.kubeconfig)
    api, core = CustomObjectsApi(client), CoreV1Api(client)
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    kubeconfig = cluster.component_kubeconfig("operator", OPERATOR_USER, org="system:masters")
    log = cluster.logs / "operator.log"
    op = OperatorProcess(kubeconfig, log, **ENV)
    audit = Audit(cluster.dir / "audit.log")
    progress = Progress(client)
    op.start()
    try:
        return phases(args, api, core, op, audit, progress)
    finally:
        progress.stop()
        op.stop()


def phases(
    args: argparse.Namespace,
    api: CustomObjectsApi,
    core: CoreV1Api,
    op: OperatorProcess,
    audit: "Audit",
    progress: Progress,
) -> int:
    log = op.log
    rows: list[tuple[str, str, str]] = []
    notes: list[str] = []
    wait_until(lambda: "authentication has finished" in log.read_text(), 60, "operator up")

    # -- burst -----------------------------------------------------------------------------
    print(f"burst: creating {args.burst} BuildJobs")
    audit.mark()
    cpu0 = cpu_seconds(_pid(op))
    t0 = time.monotonic()
    burst = create_many(api, "burst", args.burst, args.ttl)
    created = time.monotonic() - t0
    wait_until(lambda: progress.count("Succeeded", burst) == len(burst), 900, "burst Succeeded")
    running = [t - t0 for t in progress.times("Running", burst)]
    done = [t - t0 for t in progress.times("Succeeded", burst)]
    all_running = max(running)
    rows += [
        (f"{args.burst} BuildJobs: created (client, 32 threads)", f"{created:.1f} s", "-"),
        (f"{args.burst} BuildJobs: all provisioned (Running)", f"{all_running:.1f} s", "<= 60 s"),
        ("provisioning throughput", f"{len(running) / all_running:.1f} jobs/s", ">= 20/s"),
        (f"{args.burst} BuildJobs: all Succeeded", f"{max(done):.1f} s", "-"),
        ("operator CPU for the burst", f"{cpu_seconds(_pid(op)) - cpu0:.1f} s", "-"),
    ]
    notes.append(f"Created -> Running, from the first create: {describe(running)}")
    print(rows[-4:])
    wait_until(lambda: progress.count("cleanedUp", burst) == len(burst), 900, "burst cleaned up")
    wait_until(lambda: not _job_namespaces(core), 900, "burst namespaces gone")
    rows.append(("every namespace gone after the TTL", "yes", "yes"))
    writes, reads, breakdown = summarize_requests(audit.since_mark(), len(burst))
    rows.append(("API writes per BuildJob (create to TTL clean-up)", writes, "<= 10"))
    rows.append(("API reads per BuildJob (watches excluded)", reads, "-"))
    notes += breakdown
    throttled = log.read_text().count("API server throttled")
    rows.append(("throttled (429) responses to the operator", str(throttled), "0"))

    if args.restart:
        restart(args, api, op, progress, rows, notes, burst_rate=len(running) / all_running)
    if args.total:
        memory(args, api, op, progress, rows, args.total - args.burst - args.restart)
    report("Scale on kwok", rows, notes)
    return 0


def restart(
    args: argparse.Namespace,
    api: CustomObjectsApi,
    op: OperatorProcess,
    progress: Progress,
    rows: list[tuple[str, str, str]],
    notes: list[str],
    burst_rate: float,
) -> None:
    # Long enough that none is due before the operator stops (estimated from the burst).
    ttl = int(args.restart / burst_rate * 1.5) + 30
    print(f"restart: {args.restart} BuildJobs to Succeeded, then the operator stopped")
    waiting = create_many(api, "restart", args.restart, ttl)
    wait_until(
        lambda: progress.count("Succeeded", waiting) == len(waiting), 1800, "restart Succeeded"
    )
    op.stop()
    last = max(progress.times("Succeeded", waiting))
    time.sleep(max(0, last + ttl + 2 - time.monotonic()))  # every TTL runs out meanwhile
    due = len(waiting) - progress.count("cleanedUp", waiting)
    t1 = time.monotonic()
    op.start()
    wait_until(
        lambda: progress.count("cleanedUp", waiting) == len(waiting), 1800, "restart cleaned"
    )
    cleaned = [t - t1 for t in progress.times("cleanedUp", waiting)]
    rows.append(
        (
            f"restart with {args.burst + len(waiting)} BuildJobs, {due} of them "
            "due for clean-up: all reconciled",
            f"{max(cleaned):.1f} s",
            "<= 60 s",
        )
    )
    notes.append(f"Restart -> cleanedUp: {describe(cleaned)}")


def memory(
    args: argparse.Namespace,
    api: CustomObjectsApi,
    op: OperatorProcess,
    progress: Progress,
    rows: list[tuple[str, str, str]],
    more: int,
) -> None:
    print(f"memory: {more} more BuildJobs, {args.total} in all")
    extra = create_many(api, "memory", more, 3600)
    wait_until(lambda: progress.count("Succeeded", extra) == len(extra), 1800, "memory Succeeded")
    current, peak = rss_mib(_pid(op))
    rows.append(
        (
            f"operator RSS with {args.total} BuildJobs: now / peak since restart",
            f"{current:.0f} / {peak:.0f} MiB",
            "<= 200 MB",
        )
    )


def _pid(op: OperatorProcess) -> int:
    assert op.proc is not None
    return op.proc.pid


def _job_namespaces(core: CoreV1Api) -> list[str]:
    selector = f"{names.LABEL_MANAGED_BY}={names.APP}"
    return [n.metadata.name for n in core.list_namespace(label_selector=selector).items]


if __name__ == "__main__":
    raise SystemExit(main())
