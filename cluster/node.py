"""The real node of the local cluster: containerd, kubelet, CNI, kube-proxy, kube-router's
NetworkPolicy firewall, CoreDNS. Pods really run here.

Keeping every packet on this machine: the node's address sits on a bridge this tool creates
(rdo0), pods live on the CNI bridge (cni0), the pod and service ranges have blackhole routes
behind the per-pod routes, pod traffic is never masqueraded, and a guard chain drops anything
from the pod range that would leave through another interface. CoreDNS answers cluster names
only; it has no upstream.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Protocol

from pki import PKI

NODE_NAME = "rdo-node"
NODE_BRIDGE = "rdo0"
NODE_IP = "10.250.0.1"
POD_BRIDGE = "cni0"
NODE_POD_CIDR = "10.244.0.0/24"
CLUSTER_DNS = "10.96.0.10"
GUARD_CHAIN = "RDO-GUARD"
# Extra addresses on rdo0 for the isolation tests' own servers: one stands in for "the
# internet", one for a denied range such as the cloud metadata block.
STAND_IN_INTERNET = "198.18.0.1"
STAND_IN_DENIED = "198.19.0.1"
# A second containerd runtime handler: runc behind a wrapper that logs every call.
TRACED_RUNTIME = "rdo-traced"
# A third, whose containers get /dev/net/tun (its base OCI spec lists the device): the Rootless
# engine tier's network (pasta) needs it, and Kubernetes gives pods no device otherwise but
# through a device plugin (none is served here) or a privileged container.
TUN_RUNTIME = "rdo-tun"
TUN = Path("/dev/net/tun")
HERE = Path(__file__).resolve().parent


def sh(
    *argv: str, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, text=True, capture_output=True, input=input)


def link_exists(name: str) -> bool:
    return sh("ip", "link", "show", name, check=False).returncode == 0


class ControlPlane(Protocol):
    """What the node needs of the cluster it joins (localcluster.Cluster is one). A protocol, so
    the dependency goes one way: localcluster imports node, never the reverse."""

    @property
    def dir(self) -> Path: ...
    @property
    def logs(self) -> Path: ...
    @property
    def pki(self) -> PKI: ...

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = ...) -> None: ...
    def stop(self, name: str, timeout: float = ...) -> None: ...
    def component_kubeconfig(self, name: str, cn: str, org: str | None = ...) -> Path: ...
    def kubectl(
        self, *args: str, input: str | None = ..., check: bool = ...
    ) -> subprocess.CompletedProcess[str]: ...


class Node:
    def __init__(
        self, cluster: ControlPlane, bin_dir: Path, pod_cidr: str, service_cidr: str
    ) -> None:
        self.c = cluster
        self.bin = bin_dir
        self.pod_cidr = pod_cidr
        self.service_cidr = service_cidr
        self.dir = cluster.dir / "node"
        self.socket = self.dir / "containerd.sock"
        self.cni_conf = self.dir / "cni"

    # -- network ----------------------------------------------------------------------------------

    def network_up(self) -> None:
        if not link_exists(NODE_BRIDGE):
            sh("ip", "link", "add", NODE_BRIDGE, "type", "bridge")
        for address in (NODE_IP, STAND_IN_INTERNET, STAND_IN_DENIED):
            sh("ip", "addr", "replace", f"{address}/32", "dev", NODE_BRIDGE)
        sh("ip", "link", "set", NODE_BRIDGE, "up")
        for cidr in (self.pod_cidr, self.service_cidr):
            sh("ip", "route", "replace", "blackhole", cidr)
        for key, value in (
            ("net/ipv4/ip_forward", "1"),
            ("net/bridge/bridge-nf-call-iptables", "1"),
            ("net/bridge/bridge-nf-call-ip6tables", "1"),
        ):
            Path("/proc/sys", key).write_text(value)
        # Pod traffic may go to pods, to this host, and nowhere else. In the mangle table, so
        # no ACCEPT that kube-proxy or kube-router insert in filter/FORWARD comes before it.
        guard = ("iptables", "-t", "mangle")
        sh(*guard, "-N", GUARD_CHAIN, check=False)
        sh(*guard, "-F", GUARD_CHAIN)
        sh(*guard, "-A", GUARD_CHAIN, "-s", self.pod_cidr, "-o", POD_BRIDGE, "-j", "RETURN")
        sh(*guard, "-A", GUARD_CHAIN, "-s", self.pod_cidr, "-j", "DROP")
        if sh(*guard, "-C", "FORWARD", "-j", GUARD_CHAIN, check=False).returncode:
            sh(*guard, "-I", "FORWARD", "1", "-j", GUARD_CHAIN)
        self.cni_conf.mkdir(parents=True, exist_ok=True)
        (self.cni_conf / "10-rdo.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "0.4.0",
                    "name": "rdo",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": POD_BRIDGE,
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": NODE_POD_CIDR}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(self.dir / "cni-ipam"),
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                },
                indent=1,
            )
        )

    def network_down(self) -> None:
        guard = ("iptables", "-t", "mangle")
        for args in (
            ("-D", "FORWARD", "-j", GUARD_CHAIN),
            ("-F", GUARD_CHAIN),
            ("-X", GUARD_CHAIN),
        ):
            sh(*guard, *args, check=False)
        for cidr in (self.pod_cidr, self.service_cidr):
            sh("ip", "route", "del", "blackhole", cidr, check=False)
        for link in (POD_BRIDGE, NODE_BRIDGE):
            if link_exists(link):
                sh("ip", "link", "del", link, check=False)
        # veths of pods whose sandboxes were torn down without CNI DEL
        for line in sh("ip", "-o", "link", "show", "type", "veth").stdout.splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            if name.startswith("veth"):
                sh("ip", "link", "del", name, check=False)
        # Rules and sets that kube-proxy, kube-router and the CNI plugins made: every chain
        # they create is named KUBE-* or CNI-*, so dropping each line that names one leaves
        # everything else in the table as it was.
        for table in ("filter", "nat", "mangle", "raw"):
            lines = sh("iptables-save", "-t", table).stdout.splitlines()
            kept = [line for line in lines if not re.search(r"\b(KUBE|CNI)-[\w-]+", line)]
            if len(kept) != len(lines):
                sh("iptables-restore", input="\n".join(kept) + "\n", check=False)
        for name in sh("ipset", "list", "-n", check=False).stdout.split():
            if name.startswith(("KUBE-", "kube-router", "inet6:")):
                sh("ipset", "destroy", name, check=False)

    # -- containerd ---------------------------------------------------------------------------

    def containerd_up(self) -> None:
        config = self.dir / "containerd.toml"
        self.dir.mkdir(parents=True, exist_ok=True)
        config.write_text(f"""version = 2
root = "{self.dir / "containerd-root"}"
state = "{self.dir / "containerd-state"}"
[grpc]
  address = "{self.socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "rdo.local/pause:3.10"
  # This VM's capability bounding set lacks CAP_SYS_RESOURCE, so no process may lower its
  # oom_score_adj; sandboxes (-998) and Guaranteed pods (-997) would fail to start.
  restrict_oom_score_adj = true
  enable_unprivileged_ports = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
    # runc behind a wrapper that logs each call: a RuntimeClass with this handler is seen used.
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{TRACED_RUNTIME}]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{TRACED_RUNTIME}.options]
        SystemdCgroup = false
        BinaryName = "{self.traced_runc()}"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{TUN_RUNTIME}]
      runtime_type = "io.containerd.runc.v2"
      base_runtime_spec = "{self.tun_base_spec()}"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{TUN_RUNTIME}.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{self.cni_conf}"
  # hosts.toml per registry (read at each pull): the e2e tier's own registry, its CA.
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{self.registry_hosts}"
""")
        # Its shims and runc are ours (build-bins.sh), found first on its PATH.
        path = f"{self.bin}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        self.c.start(
            "containerd", [str(self.bin / "containerd"), "--config", str(config)], {"PATH": path}
        )
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"containerd did not start; see {self.c.logs}/containerd.log")
            time.sleep(0.2)

    @property
    def registry_hosts(self) -> Path:
        """containerd's registry host directory: <host:port>/hosts.toml for each registry whose
        address or certificate authority is not the default."""
        return self.dir / "certs.d"

    def traced_runc(self) -> Path:
        """The traced handler's runc: logs its arguments to traced_runc_log, then is runc."""
        wrapper = self.dir / "runc-traced"
        runc = self.bin / "runc"
        wrapper.write_text(f'#!/bin/sh\necho "$*" >> {self.traced_runc_log}\nexec {runc} "$@"\n')
        wrapper.chmod(0o755)
        return wrapper

    def tun_base_spec(self) -> Path:
        """The tun handler's base OCI spec: containerd's default, plus /dev/net/tun and the
        device-cgroup rule that lets it be opened. In a pod with its own user namespace runc
        cannot make device nodes and bind-mounts the node's, whose mode then holds: 0666, as
        systemd-udev's default rules make it (this VM has no udev, and it was 0600). Opening
        it is harmless: making an interface needs CAP_NET_ADMIN in its network namespace."""
        spec = json.loads(sh(str(self.bin / "ctr"), "oci", "spec").stdout)
        spec["linux"].setdefault("devices", []).append(
            {"path": str(TUN), "type": "c", "major": 10, "minor": 200, "fileMode": 0o666}
        )
        rule = {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rwm"}
        spec["linux"]["resources"]["devices"].append(rule)
        path = self.dir / "tun-base-spec.json"
        path.write_text(json.dumps(spec, indent=1))
        TUN.chmod(0o666)
        return path

    @property
    def traced_runc_log(self) -> Path:
        return self.dir / "runc-traced.log"

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh(
            str(self.bin / "ctr"), "--address", str(self.socket), "-n", "k8s.io", *args, check=check
        )

    def import_images(self, images: dict[str, Path]) -> None:
        """Imports each {ref: archive} unless containerd holds that ref at the archive's
        manifest: a ref alone would keep running an image built before the last change."""
        held = {}
        for line in self.ctr("images", "ls").stdout.splitlines()[1:]:
            ref, _, digest, *_ = line.split()
            held[ref] = digest
        for ref, archive in images.items():
            if held.get(ref) != archive_manifest(archive):
                self.ctr("images", "import", "--no-unpack", str(archive))

    def stop_containers(self) -> None:
        """SIGKILLs every container of this node with its shim: the processes of a container
        are the shim's descendants, and they outlive both containerd and the shim otherwise."""
        children: dict[int, list[int]] = {}
        shims = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                stat = (proc / "stat").read_text()
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(proc.name))
            if "containerd-shim" in cmdline and str(self.socket) in cmdline:
                shims.append(int(proc.name))
        doomed, todo = [], list(shims)
        while todo:
            pid = todo.pop()
            doomed.append(pid)
            todo += children.get(pid, [])
        for pid in reversed(doomed):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def remove_cgroups(self) -> None:
        """The pod cgroups the kubelet made (cgroupfs driver), deepest first."""
        for controller in Path("/sys/fs/cgroup").iterdir():
            root = controller / "kubepods"
            if not root.is_dir():
                continue
            for directory in sorted(
                (p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
            ):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            with contextlib.suppress(OSError):
                root.rmdir()

    # -- kubelet, kube-proxy, kube-router ---------------------------------------------------------

    def kubelet_up(self) -> None:
        pki = self.c.pki
        serving = pki.issue(
            "kubelet-serving", NODE_NAME, ips=(NODE_IP,), dns=(NODE_NAME,), server=True
        )
        kubeconfig = self.c.component_kubeconfig(
            "kubelet", f"system:node:{NODE_NAME}", org="system:nodes"
        )
        resolv = self.dir / "resolv.conf"
        resolv.write_text("# no upstream resolver: pods resolve cluster names only\n")
        # The UserNamespace engine tier's Localhost seccomp profile, where a platform team puts
        # it on its nodes: below the kubelet's seccomp directory.
        profiles = self.dir / "kubelet" / "seccomp" / "remote-docker-operator"
        profiles.mkdir(parents=True, exist_ok=True)
        shutil.copy(HERE.parent / "seccomp" / "user-namespace-engine.json", profiles)
        config = self.dir / "kubelet.yaml"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": True},
                        "x509": {"clientCAFile": str(pki.ca_cert_path)},
                    },
                    "authorization": {"mode": "Webhook"},
                    "address": NODE_IP,
                    "readOnlyPort": 0,
                    "port": 10250,
                    "tlsCertFile": str(serving[0]),
                    "tlsPrivateKeyFile": str(serving[1]),
                    "cgroupDriver": "cgroupfs",
                    "failSwapOn": False,
                    "failCgroupV1": False,
                    "containerRuntimeEndpoint": f"unix://{self.socket}",
                    "clusterDNS": [CLUSTER_DNS],
                    "clusterDomain": "cluster.local",
                    "resolvConf": str(resolv),
                    # Locally built images can never be pulled again: never collect them.
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    "evictionHard": {
                        "memory.available": "100Mi",
                        "nodefs.available": "1%",
                        "imagefs.available": "1%",
                    },
                    "podCIDR": NODE_POD_CIDR,
                    "maxPods": 250,
                    "serializeImagePulls": False,
                    "registerNode": True,
                    "syncFrequency": "10s",
                    "fileCheckFrequency": "10s",
                },
                indent=1,
            )
        )
        self.c.start(
            "kubelet",
            [
                str(self.bin / "kubelet"),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                f"--root-dir={self.dir / 'kubelet'}",
                "--v=1",
            ],
        )

    def proxy_up(self) -> None:
        kubeconfig = self.c.component_kubeconfig("kube-proxy", "system:kube-proxy")
        self.c.start(
            "kube-proxy",
            [
                str(self.bin / "kube-proxy"),
                f"--kubeconfig={kubeconfig}",
                "--proxy-mode=iptables",
                f"--cluster-cidr={self.pod_cidr}",
                f"--hostname-override={NODE_NAME}",
                f"--bind-address={NODE_IP}",
                "--conntrack-max-per-core=0",
                "--metrics-bind-address=127.0.0.1:10249",
                "--healthz-bind-address=127.0.0.1:10256",
                "--v=1",
            ],
        )

    def firewall_up(self) -> None:
        kubeconfig = self.c.component_kubeconfig("kube-router", "kube-router", org="system:masters")
        self.c.start(
            "kube-router",
            [
                str(self.bin / "kube-router"),
                f"--kubeconfig={kubeconfig}",
                "--run-firewall=true",
                "--run-router=false",
                "--run-service-proxy=false",
                "--enable-cni=false",
                "--enable-ipv6=false",
                f"--hostname-override={NODE_NAME}",
                "--health-port=0",
                "--metrics-port=0",
                "--v=1",
            ],
        )

    def firewall_down(self) -> None:
        """Stops kube-router and removes its rules: NetworkPolicy is no longer enforced (the
        tests' stand-in for a network plugin that ignores policies). firewall_up() restores."""
        self.c.stop("kube-router")
        subprocess.run(
            [str(self.bin / "kube-router"), "--cleanup-config"],
            check=False,
            capture_output=True,
        )

    def addons_up(self) -> None:
        self.c.kubectl("apply", "-f", str(HERE / "addons" / "coredns.yaml"))
        runtime_class = {
            "apiVersion": "node.k8s.io/v1",
            "kind": "RuntimeClass",
            "metadata": {"name": TUN_RUNTIME},
            "handler": TUN_RUNTIME,
        }
        self.c.kubectl("apply", "-f", "-", input=json.dumps(runtime_class))
        self.local_path.mkdir(parents=True, exist_ok=True)
        storage = (HERE / "addons" / "local-path.yaml").read_text()
        self.c.kubectl(
            "apply", "-f", "-", input=storage.replace("@LOCAL_PATH@", str(self.local_path))
        )

    @property
    def local_path(self) -> Path:
        """Where the local-path provisioner makes each volume's directory."""
        return self.dir / "local-path"

    def unmount_all(self) -> None:
        mounts = [
            line.split()[1]
            for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(self.dir))
        ]
        for mount in sorted(mounts, key=len, reverse=True):
            sh("umount", "-l", mount, check=False)
        for netns in Path("/run/netns").glob("cni-*") if Path("/run/netns").exists() else []:
            sh("ip", "netns", "del", netns.name, check=False)

    def wipe(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def archive_manifest(archive: Path) -> str:
    """The manifest digest an OCI image archive's index names (what `ctr images ls` shows)."""
    with tarfile.open(archive) as tar:
        index = tar.extractfile("index.json")
        manifests = json.load(index)["manifests"] if index else []
    return str(manifests[0]["digest"]) if manifests else ""
