import datetime
from typing import Any

from remote_docker_operator import builders, certs, names
from remote_docker_operator.builders import Target

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


def test_every_namespaced_child_lives_in_the_job_namespace(target: Target) -> None:
    bundle = certs.issue(["engine"], [], datetime.timedelta(hours=1))
    children = [
        *builders.build_network_policies(target),
        builders.build_engine_tls_secret(target, bundle),
        builders.build_client_secret(target, bundle),
        builders.build_engine_service(target),
        builders.build_engine_pod(target),
        builders.build_job_pod(target),
    ]
    for child in children:
        assert child["metadata"]["namespace"] == target.job_namespace
        assert child["metadata"]["labels"][names.LABEL_OWNER_UID] == UID


def test_network_policies(target: Target) -> None:
    policies = by_name(builders.build_network_policies(target))
    assert set(policies) == {"default-deny", "engine", "job"}
    deny = policies["default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}

    engine = policies["engine"]["spec"]
    assert engine["podSelector"] == {"matchLabels": {names.LABEL_COMPONENT: "engine"}}
    [ingress] = engine["ingress"]
    assert ingress["from"] == [{"podSelector": {"matchLabels": {names.LABEL_COMPONENT: "job"}}}]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 2376}]
    internet = engine["egress"][1]["to"]
    v4 = next(p["ipBlock"] for p in internet if p["ipBlock"]["cidr"] == "0.0.0.0/0")
    assert "169.254.0.0/16" in v4["except"]
    assert "10.0.0.0/8" in v4["except"]
    # DNS only to the cluster's DNS pods
    assert engine["egress"][0]["to"] == [builders.DNS_PEER]

    job = policies["job"]["spec"]
    assert "ingress" not in job  # nothing may connect to the job pod
    assert job["egress"][0] == {
        "to": [{"podSelector": {"matchLabels": {names.LABEL_COMPONENT: "engine"}}}],
        "ports": [{"protocol": "TCP", "port": 2376}],
    }
    assert len(job["egress"]) == 3  # engine, DNS, internet


def test_job_egress_none_drops_the_internet() -> None:
    t = make_target({"job": {"image": "a"}, "network": {"jobEgress": "None"}})
    job = by_name(builders.build_network_policies(t))["job"]["spec"]
    assert len(job["egress"]) == 2
    assert all("ipBlock" not in peer for rule in job["egress"] for peer in rule["to"])


def test_denied_cidrs_split_by_family() -> None:
    t = make_target(denied_cidrs=["10.0.0.0/8", "fd00::/8"])
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


def test_engine_options() -> None:
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
        }
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
    image = make_target({"job": {"image": "a"}, "engine": {"image": "local/dind:1"}})
    assert builders.build_engine_pod(image)["spec"]["containers"][0]["image"] == "local/dind:1"
    settings = make_target(engine_image_repository="mirror/docker", engine_version="28")
    assert settings.engine_image == "mirror/docker:28-dind"


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
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "docker-client", "key": key}
    assert c["command"] == ["sh", "-c"]
    assert c["args"] == ["docker version"]
    [volume] = spec["volumes"]
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
    assert pod["spec"]["imagePullSecrets"] == [{"name": "pull-regcred"}]
    config = next(v for v in pod["spec"]["volumes"] if v["name"] == "docker-config")
    assert config["secret"]["items"] == [{"key": ".dockerconfigjson", "path": "config.json"}]


def test_service(target: Target) -> None:
    svc = builders.build_engine_service(target)
    assert svc["spec"]["selector"] == {names.LABEL_OWNER_UID: UID, names.LABEL_COMPONENT: "engine"}
    assert svc["spec"]["ports"][0]["port"] == 2376
    assert target.docker_host == f"tcp://engine.{target.job_namespace}.svc:2376"


def test_secrets_hold_no_ca_key(target: Target) -> None:
    bundle = certs.issue(
        builders.engine_dns_names(target), ["10.96.0.20"], datetime.timedelta(hours=1)
    )
    engine = builders.build_engine_tls_secret(target, bundle)
    client = builders.build_client_secret(target, bundle)
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


def test_secret_copy(target: Target) -> None:
    source = {
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": "e30="},
        "metadata": {"name": "hub", "namespace": "ci", "resourceVersion": "7"},
    }
    copy = builders.build_secret_copy(target, source, "docker-config")
    assert copy["type"] == "kubernetes.io/dockerconfigjson"
    assert copy["data"] == {".dockerconfigjson": "e30="}
    assert copy["metadata"]["namespace"] == target.job_namespace
    assert "resourceVersion" not in copy["metadata"]


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
    assert last["valueFrom"]["secretKeyRef"]["name"] == "docker-client"


def test_job_waits_for_its_engine_over_tls(target: Target) -> None:
    pod = builders.build_job_pod(target)
    [init] = pod["spec"]["initContainers"]
    assert init["name"] == "wait-for-engine"
    assert init["image"] == target.engine_image  # it has the docker CLI
    assert "docker version" in init["command"][-1]
    assert init["securityContext"] == pod["spec"]["containers"][0]["securityContext"]
    assert {e["name"] for e in init["env"]} == {
        "DOCKER_HOST",
        "DOCKER_TLS_VERIFY",
        "DOCKER_CERT_PATH",
    }
    assert init["volumeMounts"][0]["mountPath"] == "/certs/client"
