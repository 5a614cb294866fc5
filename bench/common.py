"""What both benchmarks share: BuildJob progress seen through a watch, percentiles, the table."""

import argparse
import collections
import datetime
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import watch
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import ProtocolError

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "cluster"), str(ROOT)]

from localcluster import Cluster, Ports  # noqa: E402

from remote_docker_operator import names  # noqa: E402

RESULTS = Path(os.environ.get("RDO_ARTIFACTS", ROOT / ".artifacts")) / "bench"


class Progress:
    """Watches every BuildJob and records, per uid, when each milestone was first seen
    (time.monotonic()): its phases, `cleanedUp` once the TTL has removed its namespace, and
    `deleted`. It also counts the watch events it sees: the operator's own watches (every
    BuildJob; pods with the operator's label, when `pods` is set) see the same ones."""

    def __init__(self, client: ApiClient, pods: bool = False) -> None:
        self.api = CustomObjectsApi(client)
        self.core = CoreV1Api(client)
        self.seen: dict[str, dict[str, float]] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if pods:
            threading.Thread(target=self._count_pods, daemon=True).start()

    def _count_pods(self) -> None:
        selector = f"{names.LABEL_MANAGED_BY}={names.APP}"
        version = self.core.list_pod_for_all_namespaces(
            label_selector=selector
        ).metadata.resource_version
        while not self._stop.is_set():
            try:
                for event in watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces,
                    label_selector=selector,
                    resource_version=version,
                    timeout_seconds=60,
                    allow_watch_bookmarks=False,
                ):
                    version = event["object"].metadata.resource_version
                    with self._lock:
                        self.counts["pods"] += 1
            except ApiException as e:
                if e.status != 410:
                    raise
                version = self.core.list_pod_for_all_namespaces(
                    label_selector=selector
                ).metadata.resource_version
            except ProtocolError:
                pass

    def events(self) -> dict[str, int]:
        """Watch events seen so far, by resource."""
        with self._lock:
            return dict(self.counts)

    def _record(self, obj: dict[str, Any]) -> None:
        now = time.monotonic()
        uid = obj["metadata"]["uid"]
        status = obj.get("status") or {}
        with self._lock:
            marks = self.seen.setdefault(uid, {})
            cleaned = "cleanedUp" if status.get("cleanedUp") else None
            for milestone in (status.get("phase"), cleaned):
                if milestone and milestone not in marks:
                    marks[milestone] = now

    def _run(self) -> None:
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    listed = self.api.list_cluster_custom_object(
                        names.GROUP, names.VERSION, names.PLURAL
                    )
                    for obj in listed["items"]:
                        self._record(obj)
                    version = listed["metadata"]["resourceVersion"]
                for event in watch.Watch().stream(
                    self.api.list_cluster_custom_object,
                    names.GROUP,
                    names.VERSION,
                    names.PLURAL,
                    resource_version=version,
                    timeout_seconds=60,
                ):
                    obj = event["object"]
                    version = obj["metadata"]["resourceVersion"]
                    with self._lock:
                        self.counts["buildjobs"] += 1
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._record(obj)
                    elif event["type"] == "DELETED":
                        with self._lock:
                            self.seen.setdefault(obj["metadata"]["uid"], {})["deleted"] = 0.0
            except ApiException as e:
                if e.status != 410:
                    raise
                version = ""  # too old: list again
            except ProtocolError:
                pass  # the server ended the stream: watch again from where it was

    def count(self, milestone: str, uids: set[str]) -> int:
        with self._lock:
            return sum(1 for uid in uids if milestone in self.seen.get(uid, {}))

    def times(self, milestone: str, uids: set[str]) -> list[float]:
        with self._lock:
            return [self.seen[u][milestone] for u in uids if milestone in self.seen.get(u, {})]

    def gone(self, uids: set[str]) -> int:
        return self.count("deleted", uids)

    def stop(self) -> None:
        self._stop.set()


def wait_until(check: Callable[[], bool], timeout: float, what: str, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, round(p / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def describe(values: list[float]) -> str:
    return (
        f"p50 {percentile(values, 50):.2f} s, p95 {percentile(values, 95):.2f} s, "
        f"p99 {percentile(values, 99):.2f} s, max {max(values):.2f} s (n={len(values)})"
    )


def machine() -> str:
    cores = os.cpu_count()
    mem_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return f"{cores} cores, {mem_kib / 2**20:.0f} GiB, Linux {platform.release()}"


def report(title: str, rows: list[tuple[str, str, str]], notes: list[str]) -> str:
    """Prints a table (figure, value, target) and writes it to .artifacts/bench/<title>.md."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    width = max(len(r[0]) for r in rows)
    lines = [f"## {title}", "", f"{stamp}; {machine()}", ""]
    lines += ["| figure | measured | target |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {target} |" for name, value, target in rows]
    lines += ["", *notes]
    text = "\n".join(lines) + "\n"
    for name, value, target in rows:
        print(f"{name:<{width}}  {value}   [{target}]")
    for note in notes:
        print(note)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{title.lower().replace(' ', '-')}.md"
    path.write_text(text)
    print(f"written to {path}")
    return text


def on_real_cluster(measure: Callable[[Cluster, int], int], doc: str | None, rounds: int) -> int:
    """A benchmark's command line (--rounds) on the real local cluster: the one running, or one
    started (and stopped after) for it."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=rounds)
    args = parser.parse_args()
    cluster = Cluster(
        Path(os.environ.get("RDO_CLUSTER_DIR", ROOT / ".artifacts" / "cluster")), Ports(), "real"
    )
    started_here = not cluster.running()
    cluster.up()
    try:
        return measure(cluster, args.rounds)
    finally:
        if started_here:
            cluster.down()


def buildjob(
    name: str, image: str, script: str, engine: dict[str, Any], ttl: int = 0
) -> dict[str, Any]:
    """A BuildJob that runs `script` with bash in `image` (pulled never: built here), cleaned
    up `ttl` seconds after it ends."""
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": name},
        "spec": {
            "job": {"image": image, "imagePullPolicy": "Never", "command": ["bash", "-c", script]},
            "engine": engine,
            "ttlSecondsAfterFinished": ttl,
        },
    }
