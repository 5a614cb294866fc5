"""A local Kubernetes cluster from binaries built from source (cluster/build-bins.sh).

Tier "kwok" (the integration tests): etcd, kube-apiserver, kube-controller-manager (namespace
deletion, garbage collection), kube-scheduler and kwok with one fake node whose pods "run"
through kwok stages. Every process listens on loopback only.

Tier "real" (the e2e tests, `make up`): the same control plane on an address of a bridge this
tool creates, plus a real node (node.py): containerd, kubelet, CNI bridge, kube-proxy,
kube-router's NetworkPolicy firewall and CoreDNS; pods really run.

Every log goes to <dir>/logs.

    python cluster/localcluster.py up --tier real --dir DIR   # idempotent
    python cluster/localcluster.py down --dir DIR             # stops and removes everything
"""

import argparse
import contextlib
import functools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node import NODE_IP, NODE_NAME, Node
from pki import PKI

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("RDO_CACHE", "/var/cache/remote-docker-operator"))
BIN = CACHE / "bin"
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
KWOK_NODE = "kwok-node-0"


def build_images(*names: str) -> dict[str, Path]:
    """Builds (or finds cached) the node's images: {ref: archive}."""
    out = subprocess.run(
        [sys.executable, str(HERE.parent / "images" / "build.py"), "--json", *names],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {image["ref"]: Path(image["archive"]) for image in json.loads(out).values()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def signal_tree(pid: int, sig: int) -> None:
    """Signals a process's group (each component is started as a session leader), or the
    process alone if it leads none."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


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
    # Users whose requests the API server records in <dir>/audit.log (the benchmark counts them).
    audit_users: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.dir = self.dir.resolve()
        self.logs = self.dir / "logs"
        self.pids = self.dir / "pids"
        for d in (self.logs, self.pids):
            d.mkdir(parents=True, exist_ok=True)
        self.pki = PKI(self.dir / "pki")
        self.kubeconfig = self.dir / "admin.kubeconfig"
        saved = self.dir / "cluster.json"
        if saved.exists():  # a running cluster keeps the ports and tier it was started with
            state = json.loads(saved.read_text())
            self.ports, self.tier = Ports(**state["ports"]), state["tier"]
        else:
            saved.write_text(json.dumps({"ports": self.ports.__dict__, "tier": self.tier}))
        # The real tier serves on the node's own address (pods reach the API server through
        # the kubernetes Service); the kwok tier never leaves loopback.
        self.host = NODE_IP if self.tier == "real" else "127.0.0.1"
        self.node = Node(self, BIN, POD_CIDR, SERVICE_CIDR)

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

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        if self._pid(name):
            return
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        (self.pids / name).write_text(str(proc.pid))

    def stop(self, name: str, timeout: float = 3) -> None:
        pid = self._pid(name)
        if pid is None:
            (self.pids / name).unlink(missing_ok=True)
            return
        signal_tree(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._pid(name):
            time.sleep(0.1)
        if self._pid(name):
            signal_tree(pid, signal.SIGKILL)
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
                                "server": f"https://{self.host}:{self.ports.apiserver}",
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

    def wait_node_ready(self, node: str, log: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        ready = "jsonpath={.status.conditions[?(@.type=='Ready')].status}"
        while "True" not in self.kubectl("get", "node", node, "-o", ready, check=False).stdout:
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {node} not ready; see {self.logs}/{log}.log")
            time.sleep(0.5)

    def install_crds(self, directory: Path) -> None:
        self.kubectl("apply", "--server-side", "-f", str(directory))
        for crd in sorted(directory.glob("*.yaml")):
            self.kubectl("wait", "--for=condition=Established", f"crd/{crd.stem}")

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

    def up(self, images: dict[str, Path] | None = None) -> None:
        if self.tier == "real":
            self.node.network_up()
        self._etcd()
        self._apiserver()
        self._wait_ready()
        self._controller_manager()
        self._scheduler()
        if self.tier == "kwok":
            self._kwok()
            return
        node = self.node
        node.containerd_up()
        node.import_images(images if images is not None else build_images())
        node.kubelet_up()
        node.proxy_up()
        self.wait_node_ready(NODE_NAME, "kubelet")
        node.firewall_up()  # kube-router needs the Node object to exist
        node.addons_up()
        self.kubectl(
            "-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=120s"
        )

    def down(self) -> None:
        """Stops everything; each step runs even if an earlier one fails."""

        def stopping(*names: str) -> list[Callable[[], None]]:
            return [functools.partial(self.stop, name) for name in names]

        known = {
            "kwok",
            "kube-router",
            "kube-proxy",
            "kubelet",
            "containerd",
            "kube-scheduler",
            "kube-controller-manager",
            "kube-apiserver",
            "etcd",
        }
        # Processes others registered here first (e.g. the operator `make up` started).
        steps = stopping(*(p.name for p in self.pids.iterdir() if p.name not in known))
        steps += stopping("kwok", "kube-router", "kube-proxy", "kubelet")
        if self.tier == "real":
            steps += [self.node.stop_containers, *stopping("containerd"), self.node.stop_containers]
        steps += stopping("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")
        if self.tier == "real":
            steps += [self.node.unmount_all, self.node.remove_cgroups, self.node.network_down]
        errors = []
        for step in steps:
            try:
                step()
            except Exception as e:
                errors.append(e)
        if errors:
            raise RuntimeError(f"teardown finished with errors: {errors}")

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
            ips=("127.0.0.1", "10.96.0.1", NODE_IP),
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
                f"--bind-address={self.host}",
                f"--advertise-address={self.host}",
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
                # Pod Security's baseline lets a pod with its own user namespace set procMount:
                # Unmasked (the Rootless engine tier's pod): Kubernetes 1.35 does so by default.
                "--feature-gates=UserNamespacesPodSecurityStandards=true",
                # Loopback may not be an endpoint of the kubernetes Service (kwok tier).
                f"--endpoint-reconciler-type={'lease' if self.tier == 'real' else 'none'}",
                "--profiling=false",
                # Webhooks (and aggregated APIs) reached at their Service's endpoints, the pods
                # themselves: this machine routes the Service range nowhere (a blackhole), and a
                # ClusterIP is translated only for packets already routed.
                "--enable-aggregator-routing=true",
                "--v=1",
                *self._kubelet_client_flags(),
                *self._audit_flags(),
            ],
        )

    def _audit_flags(self) -> list[str]:
        if not self.audit_users:
            return []
        policy = self.dir / "audit-policy.yaml"
        policy.write_text(
            json.dumps(
                {
                    "apiVersion": "audit.k8s.io/v1",
                    "kind": "Policy",
                    "omitStages": ["RequestReceived"],
                    "rules": [
                        {"level": "Metadata", "users": list(self.audit_users)},
                        {"level": "None"},
                    ],
                }
            )
        )
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.dir / 'audit.log'}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
        ]

    def _kubelet_client_flags(self) -> list[str]:
        """How the API server reaches kubelets for logs and exec (the real tier has one)."""
        if self.tier != "real":
            return []
        cert, key = self.pki.issue(
            "apiserver-kubelet-client", "kube-apiserver-kubelet-client", org="system:masters"
        )
        return [
            f"--kubelet-client-certificate={cert}",
            f"--kubelet-client-key={key}",
            f"--kubelet-certificate-authority={self.pki.ca_cert_path}",
            "--kubelet-preferred-address-types=InternalIP",
        ]

    def _wait_ready(self, timeout: float = 120) -> None:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert_path))
        ctx.load_cert_chain(*self.pki.issue("admin", "admin", org="system:masters"))
        url = f"https://{self.host}:{self.ports.apiserver}/readyz"
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

    def component_kubeconfig(self, name: str, cn: str, org: str | None = None) -> Path:
        """<dir>/<name>.kubeconfig with a client certificate for user `cn` (group `org`)."""
        cert = self.pki.issue(name, cn, org=org)
        return self.write_kubeconfig(self.dir / f"{name}.kubeconfig", cn, *cert)

    @staticmethod
    def _component_flags(kubeconfig: Path) -> list[str]:
        """A control-plane controller: its identity, no serving port, the only instance."""
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            "--leader-elect=false",
        ]

    def _controller_manager(self) -> None:
        kubeconfig = self.component_kubeconfig(
            "kube-controller-manager", "system:kube-controller-manager"
        )
        sa_private, _ = self.pki.service_account_keys()
        self.start(
            "kube-controller-manager",
            [
                str(BIN / "kube-controller-manager"),
                *self._component_flags(kubeconfig),
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
        kubeconfig = self.component_kubeconfig("kube-scheduler", "system:kube-scheduler")
        self.start(
            "kube-scheduler",
            [
                str(BIN / "kube-scheduler"),
                *self._component_flags(kubeconfig),
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
                # Heartbeats through a node lease: without one the node controller marks the
                # node NotReady every grace period, and with it every pod Ready=False.
                "--node-lease-duration-seconds=40",
                "--node-ip=127.0.0.1",
                f"--server-address=127.0.0.1:{self.ports.kwok}",
            ],
        )
        self.wait_node_ready(KWOK_NODE, "kwok")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument(
        "--dir", type=Path, default=Path(os.environ.get("RDO_CLUSTER_DIR", "/tmp/rdo-cluster"))
    )
    parser.add_argument("--tier", choices=["kwok", "real"], default="kwok")
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
