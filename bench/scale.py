"""Scale on kwok fake nodes: a burst of BuildJobs, a restart with thousands waiting, memory.

A kwok-tier cluster of its own (real kube-apiserver with API Priority and Fairness on, as in
every real cluster; etcd, controllers; kwok runs the pods), the operator as a real process
under the chart's ServiceAccount, ClusterRole and admission policies (never an admin), whose
every request the API server's audit log records. Beside each throughput figure: the CPU the
operator, the API server and etcd used over the same window, so the reader can tell who sets
the pace. Phases:

  burst    N BuildJobs created at once: throughput to Running, all Succeeded, API writes
           per BuildJob (everything the operator wrote, TTL clean-up included), 409s, 429s,
           every namespace gone after the TTL.
  restart  M more run to Succeeded, the operator is stopped, their TTL runs out, and the
           operator is started again: time until every one of them is cleaned up.
  memory   more BuildJobs until T exist; the operator's peak RSS since its restart.
  churn    C more created and deleted in batches of 1,000 (TTL 0): RSS after each batch, which
           should stay flat.

Run with `make bench-scale` (or `python bench/scale.py --help`).
"""

import argparse
import collections
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, Progress, describe, report, wait_until
from images.build import OPERATOR_ALLOCATOR_ENV, ensure_packages
from kubernetes.client import ApiClient, Configuration, CoreV1Api, CustomObjectsApi
from kubernetes.config import load_kube_config
from localcluster import BIN, Cluster, Ports
from tests.support import (
    WRITES,
    Audit,
    OperatorProcess,
    chart_identity_user,
    install_chart_identity,
    lease_env,
)

from remote_docker_operator import names

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


def delete_many(api: CustomObjectsApi, prefix: str, count: int) -> None:
    """Deletes what create_many made, from 32 threads."""

    def delete(i: int) -> None:
        api.delete_namespaced_custom_object(
            names.GROUP, names.VERSION, NAMESPACE, names.PLURAL, f"{prefix}-{i:05d}"
        )

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(delete, range(count)))


@dataclass
class Requests:
    """The operator's requests over a window, per BuildJob."""

    writes: float
    reads: float
    watches: float
    rejected: int  # 429: APF (or max-inflight) turned the request away
    breakdown: list[str]


def summarize_requests(entries: list[dict[str, Any]], jobs: int) -> Requests:
    by_kind: collections.Counter[str] = collections.Counter()
    codes: collections.Counter[int] = collections.Counter()
    done = [e for e in entries if e["stage"] == "ResponseComplete"]
    # A watch is logged once it ends; one that is still open shows as ResponseStarted only.
    watches = {e["auditID"] for e in entries if e["verb"] == "watch"}
    others = [e for e in done if e["verb"] != "watch"]
    writes = [e for e in others if e["verb"] in WRITES]
    for e in others:
        ref = e.get("objectRef", {})
        resource = "/".join(filter(None, (ref.get("resource"), ref.get("subresource"))))
        by_kind[f"{e['verb']} {resource}"] += 1
    for e in done:
        codes[e.get("responseStatus", {}).get("code", 0)] += 1
    breakdown = [
        f"  {what}: {count / jobs:.2f} per BuildJob ({count})"
        for what, count in sorted(by_kind.items(), key=lambda kv: -kv[1])
    ]
    return Requests(
        writes=len(writes) / jobs,
        reads=(len(others) - len(writes)) / jobs,
        watches=len(watches) / jobs,
        rejected=codes[429],
        breakdown=[
            "Operator requests per BuildJob, by verb and resource (audit log):",
            *breakdown,
            f"  watch requests: {len(watches)}",
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


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / 100, sum(fields[:8]) / 100


class CPU:
    """CPU seconds the operator, the API server, etcd and the whole machine (every agent on it
    included) used between start() and stop()."""

    def __init__(self, cluster: Cluster, op: OperatorProcess) -> None:
        self.cluster, self.op = cluster, op

    def _sample(self) -> dict[str, float]:
        sample = {"operator": cpu_seconds(_pid(self.op))}
        for name in ("kube-apiserver", "etcd"):
            pid = self.cluster._pid(name)
            sample[name] = cpu_seconds(pid) if pid else 0.0
        sample["machine"], sample["wall"] = machine_busy()
        return sample

    def start(self) -> None:
        self.t0, self.s0 = time.monotonic(), self._sample()

    def stop(self) -> dict[str, float]:
        s1 = self._sample()
        used = {k: s1[k] - self.s0[k] for k in s1}
        used["elapsed"] = time.monotonic() - self.t0
        return used


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--restart", type=int, default=2000)
    parser.add_argument("--total", type=int, default=5000)
    parser.add_argument("--churn", type=int, default=2000, help="BuildJobs churned, by 1,000")
    parser.add_argument("--ttl", type=int, default=30, help="burst BuildJobs' TTL (s)")
    parser.add_argument(
        "--operator-python",
        default=sys.executable,
        help="the interpreter the operator runs on (it needs the operator's dependencies)",
    )
    args = parser.parse_args()

    workdir = RESULTS / "kwok-cluster"
    if workdir.exists():  # a fresh cluster each run: stop the last one, drop its data
        Cluster(workdir).down()
        shutil.rmtree(workdir)
    user = chart_identity_user(BIN / "helm")
    cluster = Cluster(workdir, Ports.free(), tier="kwok", audit_users=(user,))
    cluster.up()
    try:
        return run(cluster, args)
    finally:
        cluster.down()


def run(cluster: Cluster, args: argparse.Namespace) -> int:
    cluster.install_crds(ROOT / "crds")
    client = client_for(cluster.kubeconfig)
    api, core = CustomObjectsApi(client), CoreV1Api(client)
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    # The chart's ServiceAccount, RBAC, admission policies and default class, as in the
    # integration tier: the operator has exactly the rights the chart gives it.
    kubeconfig = install_chart_identity(
        cluster, BIN / "helm", {"image": "local/dind:27"}, cluster.dir / "operator.token"
    )
    log = cluster.logs / "operator.log"
    # The chart's Lease, which its Role lets the chart's ServiceAccount take; the image's
    # allocator (images/build.py says why), from this machine's Debian package of it.
    ensure_packages("libjemalloc2")
    allocator = dict(setting.split("=", 1) for setting in OPERATOR_ALLOCATOR_ENV)
    env = {**ENV, **allocator, **lease_env("bench-operator")}
    op = OperatorProcess(kubeconfig, log, python=args.operator_python, **env)
    audit = Audit(cluster.dir / "audit.log")
    progress = Progress(client, pods=True)
    op.start()
    try:
        return phases(args, api, core, cluster, op, audit, progress)
    finally:
        progress.stop()
        op.stop()


def phases(
    args: argparse.Namespace,
    api: CustomObjectsApi,
    core: CoreV1Api,
    cluster: Cluster,
    op: OperatorProcess,
    audit: Audit,
    progress: Progress,
) -> int:
    log = op.log
    rows: list[tuple[str, str, str]] = []
    notes: list[str] = []
    wait_until(lambda: "authentication has finished" in log.read_text(), 60, "operator up")
    version = subprocess.run(
        [args.operator_python, "-c", "import sys; print(sys.version.split()[0])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    notes.append(
        f"Operator on Python {version} ({args.operator_python}), "
        f"{' '.join(OPERATOR_ALLOCATOR_ENV)} as in its image"
    )

    # -- burst -----------------------------------------------------------------------------
    print(f"burst: creating {args.burst} BuildJobs")
    audit.mark()
    events0 = progress.events()
    cpu = CPU(cluster, op)
    cpu.start()
    t0 = time.monotonic()
    burst = create_many(api, "burst", args.burst, args.ttl)
    created = time.monotonic() - t0
    wait_until(lambda: progress.count("Running", burst) == len(burst), 900, "burst Running")
    used = cpu.stop()
    wait_until(lambda: progress.count("Succeeded", burst) == len(burst), 900, "burst Succeeded")
    running = [t - t0 for t in progress.times("Running", burst)]
    done = [t - t0 for t in progress.times("Succeeded", burst)]
    all_running = max(running)
    n = len(burst)
    rows += [
        (f"{args.burst} BuildJobs: created (client, 32 threads)", f"{created:.1f} s", "-"),
        (f"{args.burst} BuildJobs: all provisioned (Running)", f"{all_running:.1f} s", "<= 50 s"),
        ("provisioning throughput", f"{n / all_running:.1f} jobs/s", ">= 20/s"),
        (
            "operator CPU per BuildJob, created to Running",
            f"{used['operator'] / n * 1000:.0f} ms",
            "<= 20 ms",
        ),
        (
            "API server / etcd CPU over the same window",
            f"{used['kube-apiserver']:.0f} s / {used['etcd']:.0f} s "
            f"({used['kube-apiserver'] / used['elapsed'] * 100:.0f}% / "
            f"{used['etcd'] / used['elapsed'] * 100:.0f}% of one core)",
            "-",
        ),
        (
            "operator CPU over the same window",
            f"{used['operator']:.0f} s ({used['operator'] / used['elapsed'] * 100:.0f}% of "
            "one core)",
            "-",
        ),
        (
            "whole machine busy over the same window (every process on it)",
            f"{used['machine'] / used['wall'] * 100:.0f}% of {os.cpu_count()} cores",
            "-",
        ),
        (f"{args.burst} BuildJobs: all Succeeded", f"{max(done):.1f} s", "-"),
    ]
    notes.append(f"Created -> Running, from the first create: {describe(running)}")
    print(rows[-8:])
    wait_until(lambda: progress.count("cleanedUp", burst) == len(burst), 900, "burst cleaned up")
    wait_until(lambda: not _job_namespaces(core), 900, "burst namespaces gone")
    rows.append(("every namespace gone after the TTL", "yes", "yes"))
    requests = summarize_requests(audit.since_mark(), n)
    events = {k: (v - events0.get(k, 0)) / n for k, v in progress.events().items()}
    rows += [
        ("API writes per BuildJob (create to TTL clean-up)", f"{requests.writes:.2f}", "<= 12"),
        ("API reads per BuildJob (get, list)", f"{requests.reads:.2f}", "-"),
        ("watch requests per BuildJob", f"{requests.watches:.3f}", "-"),
        (
            "watch events per BuildJob (BuildJobs + the operator's pods)",
            f"{sum(events.values()):.2f} ({', '.join(f'{k} {v:.2f}' for k, v in events.items())})",
            "-",
        ),
        ("requests of the operator rejected (429)", str(requests.rejected), "0"),
        ("operator RSS after the burst", f"{rss_mib(_pid(op))[0]:.0f} MiB", "-"),
    ]
    notes += requests.breakdown

    if args.restart:
        restart(args, api, op, progress, rows, notes, burst_rate=n / all_running)
    if args.total:
        memory(args, api, op, progress, rows, args.total - args.burst - args.restart)
    if args.churn:
        churn(args, api, op, progress, rows, notes)
    audit.offset = 0  # every phase: bursts of creates in the later ones too
    rejected = summarize_requests(audit.since_mark(), 1).rejected
    rows.append(("requests of the operator rejected (429), whole run", str(rejected), "0"))
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
    settled = settle(op)
    rows.append(
        (
            f"operator RSS with {args.total} BuildJobs: at the last Succeeded / settled / "
            "peak since restart",
            f"{current:.0f} / {settled:.0f} / {peak:.0f} MiB",
            "<= 200 MB",
        )
    )


def settle(op: OperatorProcess, quiet: float = 0.05, most: float = 180) -> float:
    """The operator's RSS once it has caught up (under `quiet` CPU seconds per second for 10 s,
    or after `most` seconds): what it keeps for the BuildJobs that exist, not the backlog of
    events still being worked through at the last Succeeded."""
    pid, deadline = _pid(op), time.monotonic() + most
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(10)
        if cpu_seconds(pid) - before < quiet * 10:
            break
    return rss_mib(pid)[0]


def churn(
    args: argparse.Namespace,
    api: CustomObjectsApi,
    op: OperatorProcess,
    progress: Progress,
    rows: list[tuple[str, str, str]],
    notes: list[str],
) -> None:
    """Batches of 1,000 created (TTL 0), run, cleaned up and deleted, one after another:
    what the operator keeps of a BuildJob once it is gone shows as RSS growing batch by
    batch."""
    batch = 1000
    print(f"churn: {args.churn} BuildJobs created and deleted in batches of {batch}")
    samples: list[float] = []
    for start in range(0, args.churn, batch):
        count = min(batch, args.churn - start)
        uids = create_many(api, f"churn{start // batch:03d}", count, 0)
        all_of = len(uids)
        wait_until(
            lambda u=uids, n=all_of: progress.count("cleanedUp", u) == n, 1800, "churn cleaned"
        )
        delete_many(api, f"churn{start // batch:03d}", count)
        wait_until(lambda u=uids, n=all_of: progress.gone(u) == n, 1800, "churn deleted")
        samples.append(rss_mib(_pid(op))[0])
        print(f"churn: {start + count} done, operator RSS {samples[-1]:.0f} MiB")
    rows.append(
        (
            f"operator RSS over a churn of {args.churn} (every {batch}; first -> last)",
            f"{samples[0]:.0f} -> {samples[-1]:.0f} MiB",
            "flat",
        )
    )
    notes.append("Churn RSS by 1,000 (MiB): " + ", ".join(f"{s:.0f}" for s in samples))


def _pid(op: OperatorProcess) -> int:
    assert op.proc is not None
    return op.proc.pid


def _job_namespaces(core: CoreV1Api) -> list[str]:
    selector = f"{names.LABEL_MANAGED_BY}={names.APP}"
    return [n.metadata.name for n in core.list_namespace(label_selector=selector).items]


if __name__ == "__main__":
    raise SystemExit(main())
