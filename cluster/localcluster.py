"""A local Kubernetes cluster from binaries built from source (cluster/build-bins.sh).

Tier "kwok" (the integration tests): etcd, kube-apiserver, kube-controller-manager (namespace
deletion, garbage collection), kube-scheduler and kwok with one fake node whose pods "run"
through kwok stages. Every process listens on loopback only; every log goes to <dir>/logs.

    python cluster/localcluster.py up --dir DIR     # idempotent: running parts are kept
    python cluster/localcluster.py down --dir DIR   # stops every process it started
"""

import argparse
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pki import PKI

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("RDO_CACHE", "/var/cache/remote-docker-operator"))
BIN = CACHE / "bin"
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
KWOK_NODE = "kwok-node-0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Ports:
    apiserver: int = 6443
    etcd_client: int = 2379
    etcd_peer: int = 2380
    kwok: int = 10247

    @classmethod
    def free(cls) -> "Ports":
        return cls(free_port(), free_port(), free_port(), free_port())


@dataclass
class Cluster:
    dir: Path
    ports: Ports = field(default_factory=Ports)
    tier: str = "kwok"

    def __post_init__(self) -> None:
        self.dir = self.dir.resolve()
        self.logs = self.dir / "logs"
        self.pids = self.dir / "pids"
        for d in (self.logs, self.pids):
            d.mkdir(parents=True, exist_ok=True)
        self.pki = PKI(self.dir / "pki")
        self.kubeconfig = self.dir / "admin.kubeconfig"
        saved = self.dir / "ports.json"
        if saved.exists():  # a running cluster keeps the ports it was started with
            self.ports = Ports(**json.loads(saved.read_text()))
        else:
            saved.write_text(json.dumps(self.ports.__dict__))

    # -- processes ------------------------------------------------------------------------------

    def _pid(self, name: str) -> int | None:
        path = self.pids / name
        if not path.exists():
            return None
        pid = int(path.read_text())
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def start(self, name: str, argv: list[str]) -> None:
        if self._pid(name):
            return
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True
        )
        (self.pids / name).write_text(str(proc.pid))

    def stop(self, name: str, timeout: float = 3) -> None:
        pid = self._pid(name)
        if pid is None:
            (self.pids / name).unlink(missing_ok=True)
            return
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._pid(name):
            time.sleep(0.1)
        if self._pid(name):
            os.killpg(pid, signal.SIGKILL)
        (self.pids / name).unlink(missing_ok=True)

    def running(self) -> list[str]:
        return sorted(p.name for p in self.pids.iterdir() if self._pid(p.name))

    # -- configuration ----------------------------------------------------------------------------

    def write_kubeconfig(self, path: Path, user: str, cert: Path, key: Path) -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "local",
                    "clusters": [
                        {
                            "name": "local",
                            "cluster": {
                                "server": f"https://127.0.0.1:{self.ports.apiserver}",
                                "certificate-authority": str(self.pki.ca_cert_path),
                            },
                        }
                    ],
                    "users": [
                        {
                            "name": user,
                            "user": {"client-certificate": str(cert), "client-key": str(key)},
                        }
                    ],
                    "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
                },
                indent=1,
            )
        )
        return path

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            text=True,
            capture_output=True,
            check=check,
        )

    # -- components -------------------------------------------------------------------------------

    def up(self) -> None:
        self._etcd()
        self._apiserver()
        self._wait_ready()
        self._controller_manager()
        self._scheduler()
        if self.tier == "kwok":
            self._kwok()

    def down(self) -> None:
        for name in ("kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            self.stop(name)

    def _etcd(self) -> None:
        p = self.ports
        self.start(
            "etcd",
            [
                str(BIN / "etcd"),
                "--name=local",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{p.etcd_client}",
                f"--advertise-client-urls=http://127.0.0.1:{p.etcd_client}",
                f"--listen-peer-urls=http://127.0.0.1:{p.etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{p.etcd_peer}",
                f"--initial-cluster=local=http://127.0.0.1:{p.etcd_peer}",
                "--quota-backend-bytes=4294967296",
                "--log-level=warn",
                # The tests create and delete thousands of objects; fsync per write is not needed.
                "--unsafe-no-fsync",
            ],
        )

    def _apiserver(self) -> None:
        serving = self.pki.issue(
            "apiserver",
            "kube-apiserver",
            dns=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            ips=("127.0.0.1", "10.96.0.1"),
            server=True,
        )
        admin = self.pki.issue("admin", "admin", org="system:masters")
        sa_private, sa_public = self.pki.service_account_keys()
        self.write_kubeconfig(self.kubeconfig, "admin", *admin)
        self.start(
            "kube-apiserver",
            [
                str(BIN / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.ports.etcd_client}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.ports.apiserver}",
                f"--tls-cert-file={serving[0]}",
                f"--tls-private-key-file={serving[1]}",
                f"--client-ca-file={self.pki.ca_cert_path}",
                f"--service-account-key-file={sa_public}",
                f"--service-account-signing-key-file={sa_private}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                # Loopback may not be an endpoint of the kubernetes Service; nothing here needs it.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--v=1",
            ],
        )

    def _wait_ready(self, timeout: float = 120) -> None:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert_path))
        ctx.load_cert_chain(*self.pki.issue("admin", "admin", org="system:masters"))
        url = f"https://127.0.0.1:{self.ports.apiserver}/readyz"
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"kube-apiserver not ready; see {self.logs}")
            if not self._pid("kube-apiserver"):
                raise RuntimeError(f"kube-apiserver exited; see {self.logs}/kube-apiserver.log")
            time.sleep(0.5)

    def _component_kubeconfig(self, name: str, cn: str) -> Path:
        cert = self.pki.issue(name, cn)
        return self.write_kubeconfig(self.dir / f"{name}.kubeconfig", cn, *cert)

    def _controller_manager(self) -> None:
        kubeconfig = self._component_kubeconfig(
            "kube-controller-manager", "system:kube-controller-manager"
        )
        sa_private, _ = self.pki.service_account_keys()
        self.start(
            "kube-controller-manager",
            [
                str(BIN / "kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--leader-elect=false",
                f"--service-account-private-key-file={sa_private}",
                f"--root-ca-file={self.pki.ca_cert_path}",
                "--use-service-account-credentials=true",
                f"--cluster-cidr={POD_CIDR}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allocate-node-cidrs=true",
                "--controllers=*",
                "--v=1",
            ],
        )

    def _scheduler(self) -> None:
        kubeconfig = self._component_kubeconfig("kube-scheduler", "system:kube-scheduler")
        self.start(
            "kube-scheduler",
            [
                str(BIN / "kube-scheduler"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--leader-elect=false",
                "--v=1",
            ],
        )

    def _kwok(self) -> None:
        self.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": KWOK_NODE,
                        "annotations": {"kwok.x-k8s.io/node": "fake"},
                        "labels": {"type": "kwok", "kubernetes.io/hostname": KWOK_NODE},
                    },
                    "spec": {},
                }
            ),
        )
        self.start(
            "kwok",
            [
                str(BIN / "kwok"),
                f"--kubeconfig={self.kubeconfig}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--config={HERE / 'kwok-stages.yaml'}",
                "--cidr=10.244.0.0/16",
                "--node-ip=127.0.0.1",
                f"--server-address=127.0.0.1:{self.ports.kwok}",
            ],
        )
        deadline = time.monotonic() + 60
        while (
            "True"
            not in self.kubectl(
                "get",
                "node",
                KWOK_NODE,
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                check=False,
            ).stdout
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"kwok node not ready; see {self.logs}/kwok.log")
            time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument(
        "--dir", type=Path, default=Path(os.environ.get("RDO_CLUSTER_DIR", "/tmp/rdo-cluster"))
    )
    parser.add_argument("--tier", choices=["kwok"], default="kwok")
    args = parser.parse_args()
    cluster = Cluster(args.dir, tier=args.tier)
    if args.command == "up":
        cluster.up()
        print(f"export KUBECONFIG={cluster.kubeconfig}")
    elif args.command == "down":
        cluster.down()
    else:
        print("\n".join(cluster.running()) or "stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
