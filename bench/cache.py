"""Layer caches on the real local cluster: the same build cold and on its key's kept volume.

The build has what a cache saves: a layer of some size (200 MiB written by a RUN step, standing
in for a large base image, which this machine cannot pull) and a slow step (`sleep 5`). Each
round runs it as a BuildJob whose cacheKey is new (cold: a new volume) and as one whose key was
used before (cached: the key's kept volume, freed by the previous run), one after the other.
Two times are taken: the build itself, as the job measures it around `docker build`, and the
BuildJob end to end, from before the create call to Succeeded (polled every 0.1 s). Then a mixed
sequence of keys, each run after the last, gives the hit rate the status records (a key's
first run misses; each later one hits if its volume was free).

Run with `make bench-cache` (or `python bench/cache.py --help`).
"""

import json
import re
import time
import uuid
from typing import Any

import common
from common import ROOT, describe, on_real_cluster, percentile, report
from kubernetes.client import CoreV1Api, CustomObjectsApi
from kubernetes.config import new_client_from_config
from localcluster import Cluster
from tests.support import OperatorProcess, engine_class, uninstall_make_up

from remote_docker_operator import names

ENGINE_IMAGE = "rdo.local/dind:26.1"
JOB_IMAGE = "rdo.local/job:1"
BUSYBOX = "rdo.local/busybox:1.36"
CLASS = "bench-cache"
BUILD = f"""set -e
docker load -i /images/busybox.tar >/dev/null
mkdir -p /tmp/app && cd /tmp/app
printf '%s\\n' 'FROM {BUSYBOX}' \\
  'RUN head -c 209715200 /dev/urandom > /blob' 'RUN sleep 5 && echo slow > /slow' \\
  'CMD ["cat", "/slow"]' > Dockerfile
start=$(date +%s%N)
docker build -q -t app . >/dev/null
end=$(date +%s%N)
echo "BUILD_MS=$(( (end - start) / 1000000 ))"
docker run --rm app
"""
MIXED = ("a", "b", "a", "c", "a", "b", "d", "a", "b", "c")


def buildjob(name: str, key: str) -> dict[str, Any]:
    engine = {"className": CLASS, "imagePullPolicy": "Never", "cacheKey": key}
    # Its log is read once it has ended: kept a while (the volume is freed as the engine stops).
    return common.buildjob(name, JOB_IMAGE, BUILD, engine, ttl=600)


def run(custom: CustomObjectsApi, core: CoreV1Api, ns: str, name: str, key: str) -> dict[str, Any]:
    """Runs the build as a BuildJob; returns its end-to-end and build seconds, and the cache
    status, once its volume is free again (the next run of its key may take it)."""
    t0 = time.monotonic()
    custom.create_namespaced_custom_object(
        names.GROUP, names.VERSION, ns, names.PLURAL, buildjob(name, key)
    )
    while True:
        body = custom.get_namespaced_custom_object(
            names.GROUP, names.VERSION, ns, names.PLURAL, name
        )
        status = body.get("status") or {}
        if status.get("phase") == "Failed":
            raise RuntimeError(f"BuildJob {name} failed: {status.get('message')}")
        if status.get("phase") == "Succeeded":
            break
        if time.monotonic() - t0 > 600:
            raise TimeoutError(name)
        time.sleep(0.1)
    done = time.monotonic() - t0
    log = core.read_namespaced_pod_log(name, ns)
    found = re.search(r"BUILD_MS=([0-9]+)", log)
    if not found:
        raise RuntimeError(f"no build time in the log of {name}: {log}")
    volume = (status.get("cache") or {}).get("volume")
    deadline = time.monotonic() + 120
    while volume and time.monotonic() < deadline:
        if core.read_persistent_volume(volume).status.phase == "Released":
            break
        time.sleep(0.2)
    return {"done": done, "build": int(found.group(1)) / 1000, "cache": status.get("cache") or {}}


def main() -> int:
    return on_real_cluster(measure, __doc__, rounds=5)


def hand_back(core: CoreV1Api) -> None:
    """The bench's kept volumes, handed to the provisioner to delete (their retention would,
    later)."""
    selector = f"{names.LABEL_MANAGED_BY}={names.APP},{names.LABEL_CACHE}"
    for pv in core.list_persistent_volume(label_selector=selector).items:
        policy = {"spec": {"persistentVolumeReclaimPolicy": "Delete"}}
        core.patch_persistent_volume(pv.metadata.name, policy)


def measure(cluster: Cluster, rounds: int) -> int:
    uninstall_make_up(cluster)
    cluster.install_crds(ROOT / "crds")
    cache = {"storageClassName": "local-path", "size": "5Gi"}
    body = engine_class(CLASS, {"image": ENGINE_IMAGE, "imagePullPolicy": "Never", "cache": cache})
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
    client = new_client_from_config(str(cluster.kubeconfig))
    custom, core = CustomObjectsApi(client), CoreV1Api(client)
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns}})
    op = OperatorProcess(cluster.kubeconfig, cluster.logs / "operator-bench.log")
    op.start()
    results: dict[str, list[dict[str, Any]]] = {"cold": [], "cached": []}
    mixed: list[dict[str, Any]] = []
    try:
        # Unmeasured: the node's page cache warmed, and the cached key's volume made.
        run(custom, core, ns, "seed", "hot")
        for i in range(rounds):
            results["cold"].append(run(custom, core, ns, f"cold-{i}", f"cold-{i}"))
            results["cached"].append(run(custom, core, ns, f"cached-{i}", "hot"))
            print(f"round {i}: cold {results['cold'][-1]} / cached {results['cached'][-1]}")
        for i, key in enumerate(MIXED):
            mixed.append(run(custom, core, ns, f"mixed-{i}", f"mixed-{key}"))
    finally:
        op.stop()
        core.delete_namespace(ns)
        cluster.kubectl("delete", "engineclass", CLASS, "--ignore-not-found")
        time.sleep(5)  # the namespaces' claims go, the volumes are Released
        hand_back(core)
    rows: list[tuple[str, str, str]] = []
    for measure_ in ("build", "done"):
        what = "docker build" if measure_ == "build" else "BuildJob end to end"
        for kind in ("cold", "cached"):
            values = [r[measure_] for r in results[kind]]
            rows.append(
                (
                    f"{what}, {kind} (p50 / max)",
                    f"{percentile(values, 50):.2f} s / {max(values):.2f} s",
                    "-",
                )
            )
        speedup = percentile([r[measure_] for r in results["cold"]], 50) / percentile(
            [r[measure_] for r in results["cached"]], 50
        )
        rows.append((f"{what}: cold / cached (p50)", f"{speedup:.1f}x", ">= 5x"))
    hits = [bool(r["cache"].get("hit")) for r in results["cached"]]
    rows.append(("cached runs that hit", f"{sum(hits)} / {len(hits)}", "all"))
    mixed_hits = sum(bool(r["cache"].get("hit")) for r in mixed)
    expected = len(MIXED) - len(set(MIXED))
    rows.append(
        (
            f"hit rate over the keys {' '.join(MIXED)}",
            f"{mixed_hits} / {len(MIXED)}",
            f"{expected} / {len(MIXED)} (each key's first run misses)",
        )
    )
    notes = [
        f"{rounds} rounds of a cold and a cached run, one at a time, on the single-node cluster's "
        "local-path volumes; build: a 200 MiB layer written by a RUN step and a 5 s RUN step.",
        *(
            f"{kind} {m}: {describe([r[m] for r in runs])}"
            for kind, runs in results.items()
            for m in ("build", "done")
        ),
    ]
    report("Layer cache on the real cluster", rows, notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
