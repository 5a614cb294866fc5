import datetime
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from remote_docker_operator import builders, certs, names
from remote_docker_operator.builders import Target
from remote_docker_operator.models import EngineClassSpec

from ..support import DEFAULT_CLASS_SPEC
from .conftest import UID, make_target


def by_name(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs}


def test_namespace_is_deterministic_and_labelled(target: Target) -> None:
    ns = builders.build_namespace(target)
    assert ns["metadata"]["name"] == target.job_namespace
    assert target.job_namespace == names.job_namespace("bj-", UID)
    assert target.job_namespace.startswith("bj-")
    assert len(target.job_namespace) == 15
    labels = ns["metadata"]["labels"]
    assert labels[names.LABEL_OWNER_UID] == UID
    assert labels[names.LABEL_OWNER_NAMESPACE] == "ci"
    assert labels[names.LABEL_OWNER_NAME] == "app-build"
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"


def test_the_engine_side_lives_in_the_job_namespace_the_job_side_beside_the_buildjob(
    target: Target,
) -> None:
    bundle = certs.issue(["engine"], [], datetime.timedelta(hours=1))
    engine_side = [
        *builders.build_network_policies(target),
        builders.build_engine_tls_secret(target, bundle.server),
        builders.build_engine_service(target),
        builders.build_engine_pod(target),
        builders.build_quota(target),
    ]
    for child in engine_side:
        assert child["metadata"]["namespace"] == target.job_namespace
        assert child["metadata"]["labels"][names.LABEL_OWNER_UID] == UID
        assert "ownerReferences" not in child["metadata"]
    job_side = [
        builders.build_job_policy(target),
        builders.build_client_secret(target, bundle.client),
        builders.build_job_pod(target),
    ]
    assert [c["metadata"]["name"] for c in job_side] == [
        "app-build-job",
        "app-build-docker",
        "app-build",  # kubectl logs app-build
    ]
    for child in job_side:
        meta = child["metadata"]
        assert meta["namespace"] == "ci"
        assert meta["labels"][names.LABEL_OWNER_UID] == UID
        assert meta["labels"][names.LABEL_COMPONENT] == "job"
        # Gone with the BuildJob, by the garbage collector, even while no operator runs.
        assert meta["ownerReferences"] == [
            {
                "apiVersion": names.API_VERSION,
                "kind": "BuildJob",
                "name": "app-build",
                "uid": UID,
                "controller": True,
            }
        ]


JOB_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ci"}},
    "podSelector": {"matchLabels": {names.LABEL_OWNER_UID: UID, names.LABEL_COMPONENT: "job"}},
}


def test_network_policies(target: Target) -> None:
    policies = by_name(builders.build_network_policies(target))
    assert set(policies) == {"default-deny", "engine"}
    deny = policies["default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}

    engine = policies["engine"]["spec"]
    assert engine["podSelector"] == {"matchLabels": {names.LABEL_COMPONENT: "engine"}}
    [ingress] = engine["ingress"]
    # From this BuildJob's job pod only: its namespace, its uid.
    assert ingress["from"] == [JOB_PEER]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 2376}]
    internet = engine["egress"][1]["to"]
    v4 = next(p["ipBlock"] for p in internet if p["ipBlock"]["cidr"] == "0.0.0.0/0")
    assert "169.254.0.0/16" in v4["except"]
    assert "10.0.0.0/8" in v4["except"]
    # DNS only to the cluster's DNS pods
    assert engine["egress"][0]["to"] == [builders.DNS_PEER]

    job = builders.build_job_policy(target)["spec"]
    assert job["podSelector"] == {"matchLabels": JOB_PEER["podSelector"]["matchLabels"]}
    assert job["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in job  # nothing may connect to the job pod
    assert job["egress"][0] == {
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": target.job_namespace}
                },
                "podSelector": {"matchLabels": {names.LABEL_COMPONENT: "engine"}},
            }
        ],
        "ports": [{"protocol": "TCP", "port": 2376}],
    }
    assert job["egress"][1]["to"] == [builders.DNS_PEER]
    assert job["egress"][2]["to"] == engine["egress"][1]["to"]  # the internet, minus the same


def test_job_egress_none_drops_the_internet() -> None:
    t = make_target({"job": {"image": "a"}, "network": {"jobEgress": "None"}})
    job = builders.build_job_policy(t)["spec"]
    assert len(job["egress"]) == 2
    assert all("ipBlock" not in peer for rule in job["egress"] for peer in rule["to"])


def test_published_ports_open_to_the_job_only_and_the_name_resolves_to_the_engine() -> None:
    net = {"publishedPorts": {"ephemeral": True, "ports": [8080, 5432]}}
    t = make_target({"job": {"image": "a"}, "network": net})
    policies = by_name(builders.build_network_policies(t))
    opened = [
        {"protocol": "TCP", "port": 2376},
        {"protocol": "TCP", "port": 32768, "endPort": 60999},
        {"protocol": "TCP", "port": 8080},
        {"protocol": "TCP", "port": 5432},
    ]
    [ingress] = policies["engine"]["spec"]["ingress"]
    assert ingress["from"] == [JOB_PEER]
    assert ingress["ports"] == opened
    assert builders.build_job_policy(t)["spec"]["egress"][0]["ports"] == opened
    service = builders.build_engine_service(t)["spec"]
    assert service["clusterIP"] == "None"
    assert service["publishNotReadyAddresses"] is True

    fixed = make_target({"job": {"image": "a"}, "network": {"publishedPorts": {"ports": [80]}}})
    [ingress] = by_name(builders.build_network_policies(fixed))["engine"]["spec"]["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 2376}, {"protocol": "TCP", "port": 80}]


def test_without_published_ports_the_engine_service_has_a_cluster_ip(target: Target) -> None:
    assert target.spec.network.published_ports is None
    spec = builders.build_engine_service(target)["spec"]
    assert "clusterIP" not in spec
    # Routed as soon as the engine pod has an address, not only once it is Ready: the job's
    # wait retries until dockerd answers, and readiness would add the proxy's next sync.
    assert spec["publishNotReadyAddresses"] is True


def test_denied_cidrs_split_by_family() -> None:
    t = make_target(engine_class={"image": "d", "deniedCidrs": ["10.0.0.0/8", "fd00::/8"]})
    engine = by_name(builders.build_network_policies(t))["engine"]["spec"]
    blocks = {p["ipBlock"]["cidr"]: p["ipBlock"].get("except") for p in engine["egress"][1]["to"]}
    assert blocks == {"0.0.0.0/0": ["10.0.0.0/8"], "::/0": ["fd00::/8"]}


def test_engine_pod(target: Target) -> None:
    pod = builders.build_engine_pod(target)
    spec = pod["spec"]
    [c] = spec["containers"]
    assert c["image"] == "docker:27-dind"
    assert c["securityContext"] == {"privileged": True}
    assert spec["automountServiceAccountToken"] is False
    assert spec["restartPolicy"] == "Never"
    assert "--tlsverify" in c["args"]
    assert "--host=tcp://0.0.0.0:2376" in c["args"]
    assert not any("2375" in a for a in c["args"])
    probe = c["readinessProbe"]["exec"]["command"]
    assert "--tlsverify" in probe
    assert "--tlscert=/certs/server/cert.pem" in probe
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["docker-data"]["emptyDir"] == {"sizeLimit": "20Gi"}
    assert volumes["engine-tls"]["secret"]["secretName"] == "engine-tls"
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert mounts == {"/var/lib/docker", "/certs/server"}


ROOTLESS = {
    "image": "d",
    "isolation": "Rootless",
    "seccompProfile": "remote-docker-operator/user-namespace-engine.json",
}


@pytest.mark.parametrize(
    ("engine_class", "context"),
    [
        (
            {"image": "d", "isolation": "UserNamespace"},
            {
                "privileged": False,
                "procMount": "Unmasked",
                "capabilities": {"add": ["SYS_ADMIN", "NET_ADMIN"]},
                "seccompProfile": {"type": "Unconfined"},
            },
        ),
        # A baseline pod: no capability added, the class's profile.
        (
            ROOTLESS,
            {
                "privileged": False,
                "procMount": "Unmasked",
                "seccompProfile": {
                    "type": "Localhost",
                    "localhostProfile": ROOTLESS["seccompProfile"],
                },
            },
        ),
    ],
    ids=["UserNamespace", "Rootless"],
)
def test_unprivileged_engine_pods(engine_class: dict[str, Any], context: dict[str, Any]) -> None:
    spec = builders.build_engine_pod(make_target(engine_class=engine_class))["spec"]
    [c] = spec["containers"]
    assert spec["hostUsers"] is False
    assert c["securityContext"] == context
    assert "--rootless" in c["args"]
    assert "--tlsverify" in c["args"]
    # The privileged tier is the default and unchanged.
    default = builders.build_engine_pod(make_target(engine_class={"image": "d"}))["spec"]
    assert "hostUsers" not in default
    assert default["containers"][0]["securityContext"] == {"privileged": True}
    assert "--rootless" not in default["containers"][0]["args"]


def test_user_namespace_engine_pod_with_a_seccomp_profile() -> None:
    profile = "remote-docker-operator/user-namespace-engine.json"
    t = make_target(
        engine_class={"image": "d", "isolation": "UserNamespace", "seccompProfile": profile}
    )
    [c] = builders.build_engine_pod(t)["spec"]["containers"]
    assert c["securityContext"]["seccompProfile"] == {
        "type": "Localhost",
        "localhostProfile": profile,
    }
    assert c["securityContext"]["capabilities"] == {"add": ["SYS_ADMIN", "NET_ADMIN"]}
    # The shared default is not changed by one class's profile.
    assert builders.USER_NAMESPACE_ENGINE["seccompProfile"] == {"type": "Unconfined"}


def test_rootless_engine_pod_runs_dockerd_nested_on_a_socket_it_is_handed() -> None:
    """dockerd takes its socket from the launcher (fd://) and runs rootless in the namespace
    the launcher nests in the pod's; its namespace enforces baseline, the other tiers' stay
    privileged."""
    t = make_target(engine_class=ROOTLESS)
    [c] = builders.build_engine_pod(t)["spec"]["containers"]
    assert c["command"][:2] == ["sh", "-c"]
    launcher = c["command"][2]
    assert "unshare --user" in launcher
    assert "pasta" in launcher
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["args"][:2] == ["--host=fd://", "--tlsverify"]
    assert not any(a.startswith("--host=tcp") for a in c["args"])
    labels = builders.build_namespace(t)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "baseline"
    for other in ({"image": "d"}, {"image": "d", "isolation": "UserNamespace"}):
        labels = builders.build_namespace(make_target(engine_class=other))["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    # The shared securityContext is not changed by one class's profile.
    assert "seccompProfile" not in builders.ROOTLESS_ENGINE


def test_rootless_launcher_is_valid_sh_and_clears_the_cache_marker_only_when_cached() -> None:
    cached = make_target(
        {"job": {"image": "a"}, "engine": {"cacheKey": "k"}},
        {**ROOTLESS, "cache": {"storageClassName": "fast", "size": "5Gi"}},
    )
    plain = builders.build_engine_pod(make_target(engine_class=ROOTLESS))
    for pod in (plain, builders.build_engine_pod(cached)):
        script = pod["spec"]["containers"][0]["command"][2]
        subprocess.run(["sh", "-n", "-c", script], check=True)
        # Kubernetes makes $$ in a command $ (its escape for $(VAR)).
        assert "$$" not in script
    assert names.CACHE_MARKER not in plain["spec"]["containers"][0]["command"][2]
    assert builders.launcher(names.ISOLATION_ROOTLESS, cached=True).count(names.CACHE_MARKER) == 1


def test_engine_options() -> None:
    versioned = {
        "image": "docker:27-dind",
        "versionedImage": {"repository": "docker", "tagSuffix": "-dind"},
        "daemon": {"allowInsecureRegistries": True},
    }
    t = make_target(
        {
            "job": {"image": "a"},
            "engine": {
                "version": "26.1",
                "storage": "5Gi",
                "mtu": 1400,
                "registryMirrors": ["https://mirror.local"],
                "insecureRegistries": ["reg.local:5000"],
                "resources": {"limits": {"cpu": 2, "memory": "4Gi"}},
                "imagePullPolicy": "Never",
            },
        },
        versioned,
    )
    pod = builders.build_engine_pod(t)
    [c] = pod["spec"]["containers"]
    assert c["image"] == "docker:26.1-dind"
    assert c["imagePullPolicy"] == "Never"
    assert "--mtu=1400" in c["args"]
    assert "--registry-mirror=https://mirror.local" in c["args"]
    assert "--insecure-registry=reg.local:5000" in c["args"]
    assert c["resources"] == {"limits": {"cpu": "2", "memory": "4Gi"}}
    assert pod["spec"]["volumes"][0]["emptyDir"]["sizeLimit"] == "5Gi"
    image = make_target(
        {"job": {"image": "a"}, "engine": {"image": "local/dind:1"}},
        {"image": "d", "allowedImages": ["local/*"]},
    )
    assert builders.build_engine_pod(image)["spec"]["containers"][0]["image"] == "local/dind:1"


def test_job_pod(target: Target) -> None:
    pod = builders.build_job_pod(target)
    spec = pod["spec"]
    [c] = spec["containers"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert c["securityContext"] == {
        "privileged": False,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    env = {e["name"]: e for e in c["env"]}
    for key in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "app-build-docker", "key": key}
    assert c["command"] == ["sh", "-c"]
    assert c["args"] == ["docker version"]
    [volume] = spec["volumes"]
    assert volume["secret"]["secretName"] == "app-build-docker"
    assert [i["key"] for i in volume["secret"]["items"]] == ["ca.pem", "cert.pem", "key.pem"]
    assert c["volumeMounts"] == [
        {"name": "docker-client", "mountPath": "/certs/client", "readOnly": True}
    ]
    assert "imagePullSecrets" not in spec


def test_job_pod_user_fields() -> None:
    t = make_target(
        {
            "job": {
                "image": "registry.local/ci:1",
                "workingDir": "/src",
                "env": [
                    {"name": "A", "value": "1"},
                    {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                ],
                "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "X_"}],
                "resources": {"requests": {"cpu": "500m"}},
            },
            "imagePullSecrets": [{"name": "regcred"}],
            "dockerConfigSecret": {"name": "hub"},
        }
    )
    pod = builders.build_job_pod(t)
    [c] = pod["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["A"] == {"name": "A", "value": "1"}
    assert env["B"]["valueFrom"] == {"secretKeyRef": {"name": "s", "key": "k"}}
    assert env["DOCKER_CONFIG"]["value"] == "/docker-config"
    assert c["envFrom"] == [{"prefix": "X_", "configMapRef": {"name": "cm"}}]
    assert c["workingDir"] == "/src"
    assert c["resources"] == {"requests": {"cpu": "500m"}}
    # The BuildJob's own Secrets, where the job pod runs: no copies.
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    config = next(v for v in pod["spec"]["volumes"] if v["name"] == "docker-config")
    assert config["secret"]["secretName"] == "hub"
    assert config["secret"]["items"] == [{"key": ".dockerconfigjson", "path": "config.json"}]
    # config.json is the Secret's, read-only; the directory around it is writable (buildx).
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/docker-config"]["name"]]
    assert mounts["/docker-config"].get("readOnly") is None
    assert mounts["/docker-config/config.json"] == {
        "name": "docker-config",
        "mountPath": "/docker-config/config.json",
        "subPath": "config.json",
        "readOnly": True,
    }


def test_service(target: Target) -> None:
    svc = builders.build_engine_service(target)
    # The engine pod, whoever owns it: a warm engine's is relabelled at its claim.
    assert svc["spec"]["selector"] == {names.LABEL_COMPONENT: "engine"}
    assert svc["spec"]["ports"][0]["port"] == 2376
    assert target.docker_host == f"tcp://engine.{target.job_namespace}.svc:2376"


def test_secrets_hold_no_ca_key(target: Target) -> None:
    bundle = certs.issue(
        builders.engine_dns_names(target), ["10.96.0.20"], datetime.timedelta(hours=1)
    )
    engine = builders.build_engine_tls_secret(target, bundle.server)
    client = builders.build_client_secret(target, bundle.client)
    assert set(engine["stringData"]) == {"ca.pem", "cert.pem", "key.pem"}
    assert engine["stringData"]["key.pem"] == bundle.server_key
    assert client["stringData"]["key.pem"] == bundle.client_key
    assert client["stringData"]["DOCKER_HOST"] == target.docker_host
    assert client["stringData"]["DOCKER_TLS_VERIFY"] == "1"
    for secret in (engine, client):
        assert secret["metadata"]["annotations"][names.ANNOTATION_CA_FINGERPRINT] == (
            bundle.ca_fingerprint
        )
        keys = [v for v in secret["stringData"].values() if "PRIVATE KEY" in v]
        assert len(keys) == 1  # only the leaf's own key, never the CA's


def test_user_env_comes_first_and_ours_win() -> None:
    t = make_target(
        {
            "job": {
                "image": "a",
                "env": [{"name": "X", "value": "1"}, {"name": "DOCKER_HOST", "value": "evil"}],
            }
        }
    )
    env = builders.build_job_pod(t)["spec"]["containers"][0]["env"]
    assert [e["name"] for e in env[:2]] == ["X", "DOCKER_HOST"]  # spec.job.env[i] is env[i]
    last = [e for e in env if e["name"] == "DOCKER_HOST"][-1]
    assert last["valueFrom"]["secretKeyRef"]["name"] == "app-build-docker"


def test_job_waits_for_its_engine_over_tls(target: Target) -> None:
    pod = builders.build_job_pod(target)
    [init] = pod["spec"]["initContainers"]
    assert init["name"] == "wait-for-engine"
    assert init["image"] == target.engine.image  # it has the docker CLI
    assert "docker version" in init["command"][-1]
    assert init["securityContext"] == pod["spec"]["containers"][0]["securityContext"]
    assert {e["name"] for e in init["env"]} == {
        "DOCKER_HOST",
        "DOCKER_TLS_VERIFY",
        "DOCKER_CERT_PATH",
    }
    assert init["volumeMounts"][0]["mountPath"] == "/certs/client"


GATE = f"{names.GATE_DIR}/{names.GATE_BINARY}"


def test_a_job_with_a_command_waits_behind_the_gate() -> None:
    t = make_target(
        {"job": {"image": "a", "command": ["sh", "-c"], "args": ["make $(TARGET)", "x"]}},
        wait_image="rdo/operator:1",
        wait_image_pull_policy="Never",
    )
    spec = builders.build_job_pod(t)["spec"]
    [install] = spec["initContainers"]
    assert install["name"] == names.GATE_CONTAINER
    assert (install["image"], install["imagePullPolicy"]) == ("rdo/operator:1", "Never")
    assert install["command"] == [names.GATE_IN_IMAGE, "install", names.GATE_DIR]
    [job] = spec["containers"]
    # The user's command and args, whole and in order, after the gate's flags: the kubelet
    # expands $(TARGET) in the command as it would have in args.
    assert job["command"] == [
        GATE,
        f"-timeout={builders.WAIT_FOR_ENGINE_SECONDS}s",
        f"-grace={builders.PROBE_GRACE_SECONDS}s",
        "-probe-api",
        "--",
        "sh",
        "-c",
        "make $(TARGET)",
        "x",
    ]
    assert "args" not in job
    volume = {"name": names.GATE_VOLUME, "emptyDir": {"sizeLimit": "32Mi"}}
    assert volume in spec["volumes"]
    mount = {"name": names.GATE_VOLUME, "mountPath": names.GATE_DIR}
    assert {**mount, "readOnly": True} in job["volumeMounts"]
    assert install["volumeMounts"] == [mount]
    assert install["securityContext"] == job["securityContext"] == builders.UNPRIVILEGED


@pytest.mark.parametrize(
    ("probe", "flags"),
    [
        ({"enabled": False}, []),
        (
            {"targets": ["10.0.0.1:443", "[fd00::1]:80"]},
            ["-probe=10.0.0.1:443", "-probe=[fd00::1]:80"],
        ),
    ],
)
def test_the_gate_probes_what_the_class_says(probe: dict[str, Any], flags: list[str]) -> None:
    t = make_target(
        {"job": {"image": "a", "command": ["true"]}},
        {"image": "d", "networkPolicyProbe": probe},
        wait_image="rdo/operator:1",
    )
    command = builders.build_job_pod(t)["spec"]["containers"][0]["command"]
    grace = [] if not flags else [f"-grace={builders.PROBE_GRACE_SECONDS}s"]
    assert command == [
        GATE,
        f"-timeout={builders.WAIT_FOR_ENGINE_SECONDS}s",
        *grace,
        *flags,
        "--",
        "true",
    ]


@pytest.mark.parametrize(
    ("job", "wait_image"),
    [
        ({"image": "a", "args": ["x"]}, "rdo/operator:1"),  # the image's own entrypoint
        ({"image": "a", "command": ["x"]}, ""),  # no wait image configured
    ],
)
def test_without_command_or_wait_image_the_init_container_waits(
    job: dict[str, Any], wait_image: str
) -> None:
    t = make_target({"job": job}, wait_image=wait_image)
    spec = builders.build_job_pod(t)["spec"]
    assert [c["name"] for c in spec["initContainers"]] == [names.WAIT_CONTAINER]
    [container] = spec["containers"]
    assert (container.get("command"), container.get("args")) == (
        job.get("command"),
        job.get("args"),
    )
    assert names.GATE_VOLUME not in [v["name"] for v in spec["volumes"]]


# -- what the EngineClass decides ------------------------------------------------------------


def test_class_placement_and_runtime_reach_the_engine_pod_only() -> None:
    toleration = {"key": "builders", "operator": "Exists", "effect": "NoSchedule"}
    t = make_target(
        engine_class={
            "image": "d",
            "nodeSelector": {"pool": "builders"},
            "tolerations": [toleration],
            "runtimeClassName": "kata",
            "priorityClassName": "ci",
            "affinity": {"nodeAffinity": {}},
        }
    )
    engine = builders.build_engine_pod(t)["spec"]
    assert engine["nodeSelector"] == {"pool": "builders"}
    assert engine["tolerations"] == [toleration]
    assert engine["runtimeClassName"] == "kata"
    assert engine["priorityClassName"] == "ci"
    assert engine["affinity"] == {"nodeAffinity": {}}
    job = builders.build_job_pod(t)["spec"]
    assert not {"nodeSelector", "tolerations", "runtimeClassName", "priorityClassName"} & set(job)


def test_both_pods_end_at_the_deadline_without_the_operator() -> None:
    t = make_target({"job": {"image": "a"}, "activeDeadlineSeconds": 300})
    for pod in (builders.build_engine_pod(t), builders.build_job_pod(t)):
        assert pod["spec"]["activeDeadlineSeconds"] == 300 + builders.POD_DEADLINE_MARGIN_SECONDS


def test_default_denied_ranges_cover_both_families() -> None:
    policies = by_name(builders.build_network_policies(make_target()))
    blocks = {
        p["ipBlock"]["cidr"]: p["ipBlock"]["except"]
        for p in policies["engine"]["spec"]["egress"][1]["to"]
    }
    assert "169.254.0.0/16" in blocks["0.0.0.0/0"]
    assert "10.0.0.0/8" in blocks["0.0.0.0/0"]
    assert "fc00::/7" in blocks["::/0"]  # ULA: pod ranges, fd00:ec2::254
    assert "fe80::/10" in blocks["::/0"]
    assert "64:ff9b::/96" in blocks["::/0"]  # NAT64 back into IPv4


def test_mtu_from_the_pod_interface_unless_set() -> None:
    auto = builders.build_engine_pod(make_target())["spec"]["containers"][0]
    assert {"name": "MTU_FROM", "value": "eth0"} in auto["env"]
    assert not any(a.startswith("--mtu") for a in auto["args"])
    fixed = builders.build_engine_pod(
        make_target(engine_class={"image": "d", "daemon": {"mtu": 1400}})
    )
    c = fixed["spec"]["containers"][0]
    assert "--mtu=1400" in c["args"]
    assert all(e["name"] != "MTU_FROM" for e in c["env"])


def test_address_pools() -> None:
    t = make_target(
        engine_class={
            "image": "d",
            "daemon": {"defaultAddressPools": [{"base": "192.168.240.0/20", "size": 24}]},
        }
    )
    args = builders.build_engine_pod(t)["spec"]["containers"][0]["args"]
    assert "--default-address-pool=base=192.168.240.0/20,size=24" in args


def test_quota_and_limit_range() -> None:
    quota = builders.build_quota(make_target())
    assert quota["spec"]["hard"]["pods"] == "1"  # the engine alone
    assert quota["spec"]["hard"]["secrets"] == "1"  # its TLS secret
    assert quota["spec"]["hard"]["services.nodeports"] == "0"
    assert builders.build_limit_range(make_target()) is None
    t = make_target(
        engine_class={"image": "d", "resources": {"max": {"cpu": "2", "memory": "4Gi"}}}
    )
    limits = builders.build_limit_range(t)
    assert limits is not None
    assert limits["spec"]["limits"] == [
        {
            "type": "Container",
            "max": {"cpu": "2", "memory": "4Gi"},
            "default": {"cpu": "2", "memory": "4Gi"},
            # a container that asks for nothing reserves little, not the maximum
            "defaultRequest": {"cpu": "100m", "memory": "128Mi"},
        }
    ]
    tiny = make_target(engine_class={"image": "d", "resources": {"max": {"cpu": "50m"}}})
    tiny_limits = builders.build_limit_range(tiny)
    assert tiny_limits is not None
    assert tiny_limits["spec"]["limits"][0]["defaultRequest"] == {"cpu": "50m"}


def test_probe_in_the_wait_container() -> None:
    on = builders.build_job_pod(make_target())["spec"]["initContainers"][0]["command"][-1]
    assert "KUBERNETES_SERVICE_HOST" in on
    targets = make_target(
        engine_class={"image": "d", "networkPolicyProbe": {"targets": ["192.0.2.9:80"]}}
    )
    script = builders.build_job_pod(targets)["spec"]["initContainers"][0]["command"][-1]
    assert "192.0.2.9:80" in script
    assert "KUBERNETES_SERVICE_HOST" not in script
    off = make_target(engine_class={"image": "d", "networkPolicyProbe": {"enabled": False}})
    script = builders.build_job_pod(off)["spec"]["initContainers"][0]["command"][-1]
    assert "reachable()" not in script


def _run_wait_script(
    tmp_path: Path, probe_answer: str, engine_ok: bool = True, answers: int = 1000000
) -> tuple[int, str]:
    """Runs the wait container's script with stand-ins for docker and sleep: the engine call
    (no --host) succeeds or fails; a probe call (--host) prints probe_answer."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    # A probe call answers PROBE_ANSWER for the first $ANSWERS calls, then cannot connect (a
    # policy programmed late); the engine call succeeds or not.
    docker.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --host ]; then n=$(cat "$TMPDIR/calls" 2>/dev/null || echo 0); '
        'echo $((n+1)) > "$TMPDIR/calls"; '
        'if [ "$n" -lt "$ANSWERS" ]; then echo "$PROBE_ANSWER" >&2; '
        'else echo "Cannot connect to the Docker daemon" >&2; fi; exit 1; fi\n'
        f"exit {0 if engine_ok else 1}\n"
    )
    # The engine wait's half seconds pass at once; the probe's seconds and the grace period's
    # tenths take a tenth, so the two keep their proportions.
    (bin_dir / "sleep").write_text(
        '#!/bin/sh\n[ "$1" = 0.5 ] && exit 0\n[ "$1" = 0.1 ] && exec /bin/sleep 0.01\n'
        "exec /bin/sleep 0.1\n"
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    script = builders.build_job_pod(make_target())["spec"]["initContainers"][0]["command"][-1]
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PROBE_ANSWER": probe_answer,
        "KUBERNETES_SERVICE_HOST": "fd00::1",
        "KUBERNETES_SERVICE_PORT": "443",
        "TMPDIR": str(tmp_path),
        "ANSWERS": str(answers),
    }
    done = subprocess.run(
        ["sh", "-c", script], check=False, env=env, capture_output=True, text=True, timeout=60
    )
    return done.returncode, done.stderr


@pytest.mark.parametrize(
    "answer",
    [
        "Cannot connect to the Docker daemon at tcp://[fd00::1]:443. Is the docker daemon running?",
        'error during connect: Get "http://[fd00::1]:443/v1.24/version": dial tcp: i/o timeout',
    ],
)
def test_probe_passes_when_denied(tmp_path: Path, answer: str) -> None:
    assert _run_wait_script(tmp_path, answer) == (0, "")


def test_probe_fails_when_a_denied_destination_answers(tmp_path: Path) -> None:
    code, err = _run_wait_script(tmp_path, "Client sent an HTTP request to an HTTPS server.")
    assert code == builders.PROBE_REACHABLE_EXIT
    assert "NetworkPolicy is not enforced: [fd00::1]:443" in err


def test_probe_waits_for_a_policy_programmed_late(tmp_path: Path) -> None:
    answer = "Client sent an HTTP request to an HTTPS server."
    assert _run_wait_script(tmp_path, answer, answers=3) == (0, "")


def test_engine_unreachable_still_exit_1(tmp_path: Path) -> None:
    code, err = _run_wait_script(tmp_path, "Cannot connect", engine_ok=False)
    assert code == 1
    assert "unreachable over mutual TLS" in err


def test_registry_credentials_are_told_apart() -> None:
    assert (
        builders.registry_key(
            {"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "e30="}}
        )
        == ".dockerconfigjson"
    )
    assert (
        builders.registry_key(
            {"type": "kubernetes.io/service-account-token", "data": {"token": "x"}}
        )
        is None
    )
    assert builders.registry_key({"type": "Opaque", "data": {".dockerconfigjson": "x"}}) is None


def test_a_named_service_account_runs_the_job_with_its_own_token_setting() -> None:
    job = {"image": "docker:27-cli"}
    plain = builders.build_job_pod(make_target({"job": job}))["spec"]
    assert plain["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in plain
    named = make_target({"job": {**job, "serviceAccountName": "deployer"}})
    spec = builders.build_job_pod(named)["spec"]
    assert spec["serviceAccountName"] == "deployer"
    # Unset on the pod: the ServiceAccount's own automountServiceAccountToken decides.
    assert "automountServiceAccountToken" not in spec


def test_allowed_destinations_open_those_pods_to_the_engine_only() -> None:
    """A class's in-cluster registry: the engine may reach those pods, by pod (so through their
    Service too), on those ports; the job pod gains nothing."""
    registry = {"namespace": "registry", "podSelector": {"app": "registry"}, "ports": [5000, 443]}
    t = make_target(engine_class={**DEFAULT_CLASS_SPEC, "allowedDestinations": [registry]})
    engine = by_name(builders.build_network_policies(t))["engine"]["spec"]
    assert engine["egress"][2:] == [
        {
            "to": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "registry"}
                    },
                    "podSelector": {"matchLabels": {"app": "registry"}},
                }
            ],
            "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 5000}],
        }
    ]
    assert builders.build_job_policy(t) == builders.build_job_policy(make_target())
    plain = by_name(builders.build_network_policies(make_target()))["engine"]["spec"]
    assert plain["egress"] == engine["egress"][:2]  # DNS and the internet, as before


@pytest.mark.parametrize(
    "bad",
    [
        {"namespace": "r", "podSelector": {}, "ports": [5000]},  # every pod of the namespace
        {"namespace": "r", "podSelector": {"a": "b"}, "ports": []},  # every port
        {"namespace": "R_1", "podSelector": {"a": "b"}, "ports": [5000]},
        {"namespace": "r", "podSelector": {"a": "b"}, "ports": [0]},
    ],
)
def test_allowed_destinations_name_pods_and_ports(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        EngineClassSpec.model_validate({**DEFAULT_CLASS_SPEC, "allowedDestinations": [bad]})
