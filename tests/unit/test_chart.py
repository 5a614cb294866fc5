"""The Helm chart (charts/remote-docker-operator): `helm lint --strict`, and `helm template`
output parsed with PyYAML and checked as data.

Needs the helm binary that `cluster/build-bins.sh tools` builds under $RDO_CACHE/bin.
"""

import base64
import importlib.util
import json
import os
import re
import shutil
import subprocess
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from pydantic import Field

from remote_docker_operator import crd, names, settings_chart, webhook
from remote_docker_operator.config import Settings
from remote_docker_operator.models import BuildJob, EngineClassSpec

Obj = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "remote-docker-operator"
CACHE = Path(os.environ.get("RDO_CACHE", "/var/cache/remote-docker-operator"))
HELM = CACHE / "bin" / "helm"
RELEASE = "rdo"
NAMESPACE = "rdo-system"
FULLNAME = "rdo-remote-docker-operator"
TEST_NAME = f"{FULLNAME}-test"


def kube_version() -> str:
    """The Kubernetes version the integration tier runs (helm's built-in default may be old)."""
    text = (ROOT / "cluster" / "versions.env").read_text()
    match = re.search(r"^K8S_VERSION=(\S+)$", text, re.MULTILINE)
    assert match, "K8S_VERSION missing from cluster/versions.env"
    return match.group(1)


KUBE_VERSION = kube_version()


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    if not (HELM.is_file() and os.access(HELM, os.X_OK)):
        pytest.fail(
            f"helm binary not found at {HELM}: build it with `cluster/build-bins.sh tools` "
            "(or set RDO_CACHE to the cache that holds bin/helm)",
            pytrace=False,
        )
    return subprocess.run(
        [str(HELM), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def template(
    *args: str, release: str = RELEASE, chart: Path = CHART
) -> subprocess.CompletedProcess[str]:
    return helm(
        "template",
        release,
        str(chart),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
        *args,
    )


def render_text(*args: str, release: str = RELEASE, chart: Path = CHART) -> str:
    result = template(*args, release=release, chart=chart)
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(*args: str, release: str = RELEASE, chart: Path = CHART) -> list[Obj]:
    text = render_text(*args, release=release, chart=chart)
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    assert all(isinstance(d, dict) for d in docs)
    return docs


def find(docs: list[Obj], kind: str, hook: bool | None = None) -> list[Obj]:
    """Objects of a kind; hook=True only helm hooks, hook=False only release objects."""
    out = []
    for doc in docs:
        is_hook = "helm.sh/hook" in (doc["metadata"].get("annotations") or {})
        if doc["kind"] == kind and (hook is None or hook == is_hook):
            out.append(doc)
    return out


def one(docs: list[Obj], kind: str, hook: bool = False) -> Obj:
    found = find(docs, kind, hook)
    assert len(found) == 1, f"expected one {kind} (hook={hook}), got {len(found)}"
    return found[0]


def metrics_service(docs: list[Obj]) -> Obj:
    (found,) = [s for s in find(docs, "Service") if s["metadata"]["name"].endswith("-metrics")]
    return found


def container(pod_spec: Obj) -> Obj:
    containers: list[Obj] = pod_spec["containers"]
    assert len(containers) == 1
    return containers[0]


def env_values(c: Obj) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def operator_env(docs: list[Obj]) -> dict[str, str]:
    return env_values(container(one(docs, "Deployment")["spec"]["template"]["spec"]))


@pytest.fixture(scope="module")
def docs() -> list[Obj]:
    """The chart rendered with its default values."""
    return render()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No RDO_* variables from the test runner's environment."""
    for key in list(os.environ):
        if key.startswith("RDO_"):
            monkeypatch.delenv(key)
    return monkeypatch


# -- the chart's files --------------------------------------------------------------------------


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "remote-docker-operator"
    assert chart["version"] == "0.1.0"
    assert chart["appVersion"] == "0.1.0"
    assert chart["kubeVersion"] == ">=1.29.0-0"
    assert chart["description"]


def test_lint_strict() -> None:
    result = helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout
    assert "[ERROR]" not in result.stdout


def test_kube_version_below_1_29_is_refused() -> None:
    result = helm("template", RELEASE, str(CHART), "--kube-version", "1.28.9")
    assert result.returncode != 0
    assert "kubeVersion" in result.stderr


def test_chart_crds_are_byte_identical_to_crds_dir() -> None:
    source = {p.name: p.read_bytes() for p in (ROOT / "crds").iterdir() if p.is_file()}
    copied = {p.name: p.read_bytes() for p in (CHART / "crds").iterdir() if p.is_file()}
    assert sorted(copied) == sorted(source)
    for name, data in source.items():
        assert copied[name] == data, f"charts/remote-docker-operator/crds/{name} differs"


def test_every_value_is_documented() -> None:
    """Each key in values.yaml has a comment line directly above it."""
    assert not undocumented(CHART / "values.yaml")


def undocumented(values: Path) -> list[str]:
    lines = values.read_text().splitlines()
    key = re.compile(r"^(\s*)[A-Za-z][A-Za-z0-9]*:")
    out = []
    for i, line in enumerate(lines):
        match = key.match(line)
        if match is None:
            continue
        above = lines[i - 1] if i > 0 else ""
        if not above.strip().startswith("#") or not above.startswith(match.group(1) + "#"):
            out.append(line.strip())
    return out


def schema_objects(node: Obj, path: str = "") -> Iterator[tuple[str, Obj]]:
    """Every object node of the values schema that declares properties."""
    if "properties" in node:
        yield path, node
        for name, sub in node["properties"].items():
            yield from schema_objects(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from schema_objects(node["items"], f"{path}[]")


def load_schema() -> Obj:
    schema: Obj = yaml.safe_load((CHART / "values.schema.json").read_text())
    return schema


def test_schema_refuses_unknown_keys_at_every_level() -> None:
    schema = load_schema()
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    objects = dict(schema_objects(schema))
    assert {"", ".image", ".serviceAccount", ".resources", ".operator", ".test"} <= set(objects)
    assert ".engineClass.spec.daemon" in objects
    for path, node in objects.items():
        assert node.get("additionalProperties") is False, path or "(root)"


def test_engine_class_schema_is_the_crds() -> None:
    """values.schema.json's engineClass.spec is generated from the EngineClass model (make crds)."""
    schema = load_schema()["properties"]["engineClass"]["properties"]["spec"]
    assert schema == crd.engine_class_values_schema(), "stale: run `make crds`"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    EngineClassSpec.model_validate(values["engineClass"]["spec"])


def test_schema_and_values_cover_each_other() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = load_schema()

    def compare(value: Obj, node: Obj, path: str) -> None:
        declared = set(node["properties"]) - ({"global"} if path == "" else set())
        assert set(value) == declared, path or "(root)"
        for name, sub in node["properties"].items():
            # An empty default (affinity: {}) is a Kubernetes structure left open; the class's
            # spec sets a few of its many optional fields (its schema is the CRD's).
            if "properties" in sub and value.get(name) and f"{path}.{name}" != ".engineClass.spec":
                compare(value[name], sub, f"{path}.{name}")

    compare(values, schema, "")


# Settings the chart derives from the release and the pod, not from values.
PER_RELEASE_SETTINGS = {"lease_name", "lease_namespace", "leader_identity"}


def test_schema_bounds_match_config() -> None:
    """Minimums and maximums of the operator's settings are the ones config.py enforces."""
    props = load_schema()["properties"]["operator"]["properties"]
    in_chart = {s.env: s.key for s in settings_chart.settings() if s.chart == "value"}
    assert set(props) == set(in_chart.values())
    for field_name, field in Settings.model_fields.items():
        if f"RDO_{field_name.upper()}" not in in_chart:
            continue
        camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), field_name)
        if field_name == "metrics_port":
            # The chart says "off" with metrics.enabled, so its port starts at 1 (the
            # operator's 0 is "off"); the upper bound is the same.
            port = load_schema()["properties"]["metrics"]["properties"]["port"]
            assert (port["minimum"], port["maximum"]) == (1, 65535)
            assert {type(m).__name__: m for m in field.metadata}["Le"].le == 65535
            continue
        prop = props[camel]
        bounds = {type(m).__name__: m for m in field.metadata}
        expected = {
            "minimum": getattr(bounds.get("Ge"), "ge", None),
            "maximum": getattr(bounds.get("Le"), "le", None),
            "exclusiveMinimum": getattr(bounds.get("Gt"), "gt", None),
        }
        for keyword, bound in expected.items():
            if bound is None:
                continue
            assert prop.get(keyword) == bound, f"operator.{camel}: {keyword}"
        if camel == "namespacePrefix":
            patterns = [m.pattern for m in field.metadata if hasattr(m, "pattern")]
            assert prop["pattern"] in patterns


# -- rendering as a whole -----------------------------------------------------------------------


def test_one_resource_per_template() -> None:
    text = render_text()
    sources = Counter(re.findall(r"^# Source: remote-docker-operator/(\S+)$", text, re.M))
    assert sources == dict.fromkeys(
        [
            "templates/serviceaccount.yaml",
            "templates/clusterrole.yaml",
            "templates/clusterrolebinding.yaml",
            "templates/deployment.yaml",
            "templates/metrics-service.yaml",
            "templates/poddisruptionbudget.yaml",
            "templates/role-leader-election.yaml",
            "templates/rolebinding-leader-election.yaml",
            "templates/engineclass.yaml",
            "templates/aggregate-role-edit.yaml",
            "templates/aggregate-role-view.yaml",
            "templates/policy-buildjob-class.yaml",
            "templates/policy-buildjob-class-binding.yaml",
            "templates/policy-operator-guard.yaml",
            "templates/policy-operator-guard-binding.yaml",
            "templates/policy-job-namespaces.yaml",
            "templates/policy-job-namespaces-binding.yaml",
            "templates/webhook-secret.yaml",
            "templates/webhook-service.yaml",
            "templates/webhook-configuration.yaml",
            "templates/tests/test-serviceaccount.yaml",
            "templates/tests/test-role.yaml",
            "templates/tests/test-rolebinding.yaml",
            "templates/tests/test-buildjob.yaml",
        ],
        1,
    )


def test_every_object_carries_the_standard_labels(docs: list[Obj]) -> None:
    expected = {
        "app.kubernetes.io/name": "remote-docker-operator",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/version": "0.1.0",
        "app.kubernetes.io/managed-by": "Helm",
        "helm.sh/chart": "remote-docker-operator-0.1.0",
    }
    assert len(docs) == 24
    for doc in docs:
        labels = doc["metadata"].get("labels") or {}
        assert expected.items() <= labels.items(), f"{doc['kind']} {doc['metadata']['name']}"
    deployment = one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert expected.items() <= pod_labels.items()


def test_namespaced_objects_are_in_the_release_namespace(docs: list[Obj]) -> None:
    cluster_scoped = {
        "ClusterRole",
        "ClusterRoleBinding",
        "EngineClass",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "MutatingWebhookConfiguration",
    }
    for doc in docs:
        if doc["kind"] in cluster_scoped:
            assert "namespace" not in doc["metadata"]
        else:
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["kind"]


def test_names_fit_in_63_characters_for_a_long_release_name() -> None:
    release = "r" * 53
    everything = ("--set", "metrics.serviceMonitor.enabled=true")
    everything += ("--set", "metrics.dashboard.enabled=true")
    for doc in render(*everything, release=release):
        assert len(doc["metadata"]["name"]) <= 63, doc["kind"]
    pod = one(render(release=release), "Pod", hook=True)
    prefix = env_values(container(pod["spec"]))["RDO_TEST_NAME_PREFIX"]
    # The API server adds 5 characters to a generateName; BuildJob names are at most 63.
    assert len(prefix) <= 58


# -- the Deployment -----------------------------------------------------------------------------


def test_deployment_shape(docs: list[Obj]) -> None:
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]
    assert deployment["metadata"]["name"] == FULLNAME
    assert spec["replicas"] == 2
    # A new pod joins as a standby before an old one goes.
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    template = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    pod = template["spec"]
    assert pod["serviceAccountName"] == FULLNAME
    assert pod["automountServiceAccountToken"] is True
    assert "annotations" not in template["metadata"]
    c = container(pod)
    assert c["image"] == "remote-docker-operator:0.1.0"  # tag defaults to appVersion
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert c["command"] == ["python", "-m", "remote_docker_operator"]
    assert "args" not in c
    assert c["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "512Mi"},
    }
    for absent in ("nodeSelector", "tolerations", "imagePullSecrets"):
        assert absent not in pod
    # By default the replicas prefer different nodes, so one node's loss leaves a standby.
    preferred = pod["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert [p["podAffinityTerm"] for p in preferred] == [
        {
            "topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": spec["selector"]["matchLabels"]},
        }
    ]
    assert set(pod["affinity"]) == {"podAntiAffinity"}


def test_deployment_security_context(docs: list[Obj]) -> None:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    sc = container(pod)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc.get("privileged", False) is False
    assert_restricted(pod)


def test_deployment_tmp_is_an_empty_dir(docs: list[Obj]) -> None:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in container(pod)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # Nothing else but the webhook's serving certificate: no hostPath, no ConfigMap.
    assert set(volumes) == {"tmp", "webhook-tls"}
    assert volumes["webhook-tls"]["secret"]["secretName"] == f"{FULLNAME}-webhook"
    off = one(render("--set", "webhook.enabled=false"), "Deployment")["spec"]["template"]["spec"]
    assert [v["name"] for v in off["volumes"]] == ["tmp"]


def test_liveness_probe_is_kopfs_endpoint(docs: list[Obj]) -> None:
    c = container(one(docs, "Deployment")["spec"]["template"]["spec"])
    probe = c["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports.get(probe["port"], probe["port"]) == 8080
    assert env_values(c)["RDO_LIVENESS_ENDPOINT"] == "http://0.0.0.0:8080/healthz"


def test_env_defaults_are_the_operators_defaults(
    docs: list[Obj], clean_env: pytest.MonkeyPatch
) -> None:
    """Every setting of config.py has its variable, and the chart's defaults parse to exactly
    the operator's own defaults."""
    env = {k: v for k, v in operator_env(docs).items() if k.startswith("RDO_")}
    # The one deliberate difference: the chart serves metrics by default, while the operator
    # run by hand binds no port unasked (test_metrics_values).
    assert env.pop("RDO_METRICS_PORT") == "8000"
    assert Settings().metrics_port == 0
    # Likewise the webhook, and the image of the waits (the webhook's, the job pods' gate):
    # the chart's own.
    assert env.pop("RDO_WEBHOOK_PORT") == "9443"
    assert Settings().webhook_port == 0
    assert env.pop("RDO_WAIT_IMAGE") == "remote-docker-operator:0.1.0"
    assert Settings().wait_image == ""
    c = container(one(docs, "Deployment")["spec"]["template"]["spec"])
    fields = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in c["env"]
        if "valueFrom" in e and e["name"].startswith("RDO_")
    }
    settings_vars = {f"RDO_{name.upper()}" for name in Settings.model_fields}
    # RDO_FAILPOINT: test-only, not in the chart.
    popped = {"RDO_METRICS_PORT", "RDO_WEBHOOK_PORT", "RDO_WAIT_IMAGE"}
    assert set(env) | set(fields) | popped == settings_vars - {"RDO_FAILPOINT"}
    # The Lease: named after the release, in its namespace, held under the pod's name.
    assert fields == {
        "RDO_LEASE_NAMESPACE": "metadata.namespace",
        "RDO_LEADER_IDENTITY": "metadata.name",
    }
    assert env.pop("RDO_LEASE_NAME") == FULLNAME
    defaults = Settings()
    for key, value in env.items():
        clean_env.setenv(key, value)
    assert Settings() == defaults
    assert env["RDO_LOG_LEVEL"] == "INFO"
    assert env["RDO_LOG_FORMAT"] == "full"


@pytest.mark.parametrize(
    ("args", "var", "expected"),
    [
        (["--set", "operator.maxRunning=3"], "RDO_MAX_RUNNING", "3"),
        (["--set", "operator.namespacePrefix=ci-"], "RDO_NAMESPACE_PREFIX", "ci-"),
        (
            ["--set", "operator.defaultDeadlineSeconds=86400"],
            "RDO_DEFAULT_DEADLINE_SECONDS",
            "86400",
        ),
        # Big numbers must not come out in float notation (1e+06).
        (["--set", "operator.defaultTtlSeconds=1000000"], "RDO_DEFAULT_TTL_SECONDS", "1000000"),
        (["--set-json", "operator.resyncSeconds=0.5"], "RDO_RESYNC_SECONDS", "0.5"),
        (["--set", "operator.clusterDomain=corp.example"], "RDO_CLUSTER_DOMAIN", "corp.example"),
        (["--set", "operator.logLevel=DEBUG"], "RDO_LOG_LEVEL", "DEBUG"),
        (["--set", "operator.logFormat=json"], "RDO_LOG_FORMAT", "json"),
        (["--set", "operator.logFormat=plain"], "RDO_LOG_FORMAT", "plain"),
        (["--set", "operator.leaseDurationSeconds=30"], "RDO_LEASE_DURATION_SECONDS", "30"),
        (
            ["--set-json", "operator.leaseRenewDeadlineSeconds=2.5"],
            "RDO_LEASE_RENEW_DEADLINE_SECONDS",
            "2.5",
        ),
        (
            ["--set-json", "operator.leaseRetryPeriodSeconds=0.5"],
            "RDO_LEASE_RETRY_PERIOD_SECONDS",
            "0.5",
        ),
        (
            ["--set", "replicaCount=1", "--set", "operator.leaderElection=false"],
            "RDO_LEADER_ELECTION",
            "false",
        ),
    ],
)
def test_values_set_the_env(args: list[str], var: str, expected: str) -> None:
    assert operator_env(render(*args))[var] == expected


class Extended(Settings):
    """Settings with one field of each kind the generator passes through Helm."""

    lease_seconds: int = Field(15, ge=1, description="An integer setting.")
    lease_name: str | None = Field(None, max_length=63, description="A nullable setting.")
    elect: bool = Field(False, description="A boolean setting.")
    ratio: float = Field(0.25, gt=0, description="A number setting.")
    zones: list[str] = Field(["a", "b"], description="A list setting.")


def test_a_new_setting_needs_no_edit_but_generate(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """Adding a field to Settings and running the generator is enough: the chart (its
    deployment.yaml untouched) passes the new values to the operator, its schema validates them,
    values.yaml documents them and the README lists them."""
    shutil.copytree(CHART, tmp_path / settings_chart.CHART)
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    settings_chart.write(tmp_path, Extended)
    chart = tmp_path / settings_chart.CHART

    env = operator_env(render(chart=chart))
    assert env["RDO_LEASE_SECONDS"] == "15"
    assert env["RDO_ELECT"] == "false"
    assert env["RDO_RATIO"] == "0.25"
    assert "RDO_LEASE_NAME" not in env  # null: the operator's own default
    # Derived settings (RDO_METRICS_PORT) follow other values of the chart, not the default.
    derived = {s.env for s in settings_chart.settings(Extended) if s.chart == "derived"}
    for key, value in env.items():
        if key.startswith("RDO_") and key not in derived:
            clean_env.setenv(key, value)
    assert Extended() == Extended.model_construct()  # the chart's defaults are the operator's

    env = operator_env(
        render(
            "--set", "operator.leaseSeconds=30",
            "--set", "operator.leaseName=rdo",
            "--set", "operator.elect=true",
            "--set-json", "operator.ratio=1.5",
            "--set-json", 'operator.zones=["x"]',
            chart=chart,
        )
    )  # fmt: skip
    for key, value in env.items():
        if key.startswith("RDO_"):
            clean_env.setenv(key, value)
    new = Extended()
    assert (new.lease_seconds, new.lease_name, new.elect, new.ratio, new.zones) == (
        30, "rdo", True, 1.5, ["x"]
    )  # fmt: skip

    for refused in (
        "operator.leaseSeconds=0",
        "operator.elect=maybe",
        f"operator.leaseName={'x' * 64}",
    ):
        result = template("--set", refused, chart=chart)
        assert result.returncode != 0, refused
        assert "schema" in result.stderr, refused
    values = yaml.safe_load((chart / "values.yaml").read_text())["operator"]
    assert values["leaseSeconds"] == 15
    assert values["leaseName"] is None
    assert values["zones"] == ["a", "b"]
    assert not undocumented(chart / "values.yaml")
    assert (
        "| `RDO_LEASE_SECONDS` | `operator.leaseSeconds` | `15` |"
        in (tmp_path / "README.md").read_text()
    )
    assert (chart / "templates" / "deployment.yaml").read_bytes() == (
        CHART / "templates" / "deployment.yaml"
    ).read_bytes()


def test_big_values_file_numbers_render_as_integers(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("operator:\n  defaultTtlSeconds: 10000000\n  maxRunning: 1000000\n")
    env = operator_env(render("--values", str(values)))
    assert env["RDO_DEFAULT_TTL_SECONDS"] == "10000000"
    assert env["RDO_MAX_RUNNING"] == "1000000"


def test_rendered_env_is_what_the_operator_reads(clean_env: pytest.MonkeyPatch) -> None:
    env = operator_env(
        render(
            "--set", "operator.maxRunning=3",
            "--set-json", "operator.resyncSeconds=2.5",
            "--set", "operator.namespacePrefix=ci-",
        )
    )  # fmt: skip
    for key, value in env.items():
        if key.startswith("RDO_"):
            clean_env.setenv(key, value)
    settings = Settings()
    assert settings.max_running == 3
    assert settings.resync_seconds == 2.5
    assert settings.namespace_prefix == "ci-"


def test_image_and_pod_values() -> None:
    docs = render(
        "--set", "image.repository=registry.example/rdo",
        "--set", "image.tag=1.2.3",
        "--set", "image.pullPolicy=Always",
        "--set", "imagePullSecrets[0].name=regcred",
        "--set-json", 'nodeSelector={"kubernetes.io/os":"linux"}',
        "--set-json", 'tolerations=[{"key":"ci","operator":"Exists","effect":"NoSchedule"}]',
        "--set-json", 'affinity={"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":'
        '{"nodeSelectorTerms":[{"matchExpressions":[{"key":"pool","operator":"In",'
        '"values":["ops"]}]}]}}}',
        "--set-string", "podAnnotations.prometheus\\.io/scrape=false",
        "--set", "resources.limits.cpu=1",
    )  # fmt: skip
    pod_template = one(docs, "Deployment")["spec"]["template"]
    pod = pod_template["spec"]
    c = container(pod)
    assert c["image"] == "registry.example/rdo:1.2.3"
    assert c["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"] == [{"key": "ci", "operator": "Exists", "effect": "NoSchedule"}]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in pod["affinity"]["nodeAffinity"]
    assert set(pod["affinity"]) == {"nodeAffinity"}  # given affinity replaces the default
    assert pod_template["metadata"]["annotations"] == {"prometheus.io/scrape": "false"}
    assert c["resources"]["limits"] == {"cpu": 1, "memory": "512Mi"}
    test_pod = container(one(docs, "Pod", hook=True)["spec"])
    assert test_pod["image"] == "registry.example/rdo:1.2.3"


# -- ServiceAccount and RBAC --------------------------------------------------------------------


def test_service_account_values() -> None:
    docs = render("--set", "serviceAccount.annotations.example\\.com/role=rdo")
    sa = one(docs, "ServiceAccount")
    assert sa["metadata"]["name"] == FULLNAME
    assert sa["metadata"]["annotations"] == {"example.com/role": "rdo"}

    docs = render("--set", "serviceAccount.create=false", "--set", "serviceAccount.name=ops")
    assert find(docs, "ServiceAccount", hook=False) == []
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    assert one(docs, "ClusterRoleBinding")["subjects"][0]["name"] == "ops"

    docs = render("--set", "serviceAccount.create=false")
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "default"


def rule_set(rules: list[Obj]) -> set[tuple[str, str, frozenset[str]]]:
    out = set()
    for rule in rules:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames etc.
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.add((group, resource, frozenset(rule["verbs"])))
    return out


EXPECTED_OPERATOR_RULES = {
    (names.GROUP, "buildjobs", frozenset({"get", "list", "watch", "patch"})),
    (names.GROUP, "dockerengines", frozenset({"get", "list", "watch", "patch"})),
    # The admission webhook's: a labelled pod's DockerEngine, once its account may.
    (names.GROUP, "dockerengines", frozenset({"create"})),
    ("authorization.k8s.io", "subjectaccessreviews", frozenset({"create"})),
    (names.GROUP, "engineclasses", frozenset({"get", "list", "watch"})),
    # patch on a job namespace's objects: a warm engine's, relabelled at its claim.
    ("", "resourcequotas", frozenset({"get", "create", "patch"})),
    ("", "limitranges", frozenset({"get", "create", "patch"})),
    # Layer caches: each engine's claim, and the kept volumes.
    ("", "persistentvolumeclaims", frozenset({"get", "create", "delete"})),
    ("", "persistentvolumes", frozenset({"list", "patch"})),
    (names.GROUP, "buildjobs/status", frozenset({"patch"})),
    (names.GROUP, "dockerengines/status", frozenset({"patch"})),
    (names.GROUP, "engineclasses/status", frozenset({"patch"})),
    ("", "events", frozenset({"create"})),
    ("", "namespaces", frozenset({"get", "list", "create", "delete", "patch"})),
    ("", "pods", frozenset({"get", "list", "watch", "create", "delete", "patch"})),
    ("", "secrets", frozenset({"get", "create", "update", "patch", "delete"})),
    ("", "services", frozenset({"get", "create", "update", "patch"})),
    ("", "serviceaccounts", frozenset({"get"})),
    (
        "networking.k8s.io",
        "networkpolicies",
        frozenset({"get", "create", "update", "patch", "delete"}),
    ),
}


def test_cluster_role_rules_are_exactly_the_expected_set(docs: list[Obj]) -> None:
    role = next(d for d in find(docs, "ClusterRole") if d["metadata"]["name"] == FULLNAME)
    assert role["metadata"]["name"] == FULLNAME
    assert rule_set(role["rules"]) == EXPECTED_OPERATOR_RULES
    # One rule per resource (BuildJobs and DockerEngines share theirs).
    assert sum(len(r["resources"]) for r in role["rules"]) == len(EXPECTED_OPERATOR_RULES)


def test_every_cluster_role_rule_has_a_comment() -> None:
    lines = (CHART / "templates" / "clusterrole.yaml").read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith("- apiGroups:")]
    assert len(starts) == len(EXPECTED_OPERATOR_RULES) - 3  # the shared rules
    for i in starts:
        assert lines[i - 1].lstrip().startswith("#"), lines[i]


def test_cluster_role_binding(docs: list[Obj]) -> None:
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": FULLNAME,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
    ]


# -- leader election ----------------------------------------------------------------------------


def test_leader_election_role_is_the_lease_alone(docs: list[Obj]) -> None:
    """get/update of the one Lease the operator uses, create (RBAC cannot name what a create
    makes), in the release namespace only; nothing cluster-wide grants leases."""
    role = one(docs, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [operator_env(docs)["RDO_LEASE_NAME"]],
            "verbs": ["get", "update"],
        },
    ]
    binding = one(docs, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
    ]
    for cluster_role in find(docs, "ClusterRole"):
        for rule in cluster_role["rules"]:
            assert "leases" not in rule["resources"], cluster_role["metadata"]["name"]


def test_pod_disruption_budget(docs: list[Obj]) -> None:
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert find(render("--set", "podDisruptionBudget.enabled=false"), "PodDisruptionBudget") == []
    pdb = one(render("--set", "podDisruptionBudget.maxUnavailable=2"), "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 2


def test_a_single_replica_may_run_without_election() -> None:
    docs = render("--set", "replicaCount=1", "--set", "operator.leaderElection=false")
    spec = one(docs, "Deployment")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}  # the old pod goes before the new one acts
    assert find(docs, "Role", hook=False) == []
    assert find(docs, "RoleBinding", hook=False) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "operator.leaderElection=false"], "replicaCount > 1 needs"),
        (["--set", "operator.leaseRenewDeadlineSeconds=8"], "leaseDurationSeconds must be"),
        (["--set", "operator.leaseRetryPeriodSeconds=5"], "leaseRenewDeadlineSeconds must be"),
    ],
)
def test_unsafe_election_values_are_refused(args: list[str], message: str) -> None:
    result = template(*args)
    assert result.returncode != 0
    assert message in result.stderr


# -- schema: what helm refuses ------------------------------------------------------------------


@pytest.mark.parametrize(
    "assignment",
    [
        "bogus=1",
        "operator.bogus=1",
        "image.bogus=1",
        "serviceAccount.bogus=1",
        "resources.bogus=1",
        "affinity.bogus=1",
        "test.bogus=1",
        "metrics.bogus=1",
        "metrics.serviceMonitor.bogus=1",
        "metrics.dashboard.bogus=1",
        "imagePullSecrets[0].bogus=1",
    ],
)
def test_unknown_keys_are_refused(assignment: str) -> None:
    result = template("--set", assignment)
    assert result.returncode != 0
    assert "schema" in result.stderr
    assert "bogus" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--set", "image.pullPolicy=Sometimes"],
        ["--set", "operator.logFormat=xml"],
        ["--set", "operator.logLevel=loud"],
        ["--set", "operator.logLevel="],  # the chart's old "normal log"; now INFO
        ["--set", "operator.clusterDomain=Bad_Domain"],
        # The chart fixes the liveness endpoint (its probe depends on it): no value for it.
        ["--set", "operator.livenessEndpoint=http://0.0.0.0:9090/healthz"],
        ["--set", "operator.failpoint=tls"],  # test-only: never in the chart
        ["--set", "operator.maxRunning=-1"],
        ["--set", "operator.defaultDeadlineSeconds=0"],
        ["--set", "operator.defaultDeadlineSeconds=86401"],
        ["--set", "operator.defaultTtlSeconds=-1"],
        ["--set", "operator.resyncSeconds=0"],
        ["--set-string", "operator.maxRunning=three"],
        ["--set", "operator.namespacePrefix=Bad_"],
        ["--set", "operator.deniedCidrs={not-a-cidr}"],
        ["--set", "operator.engineStorage=lots"],
        ["--set", "test.timeoutSeconds=0"],
        ["--set", "serviceAccount.create=maybe"],
        ["--set", "metrics.port=0"],
        ["--set", "metrics.port=65536"],
        ["--set", "metrics.serviceMonitor.interval=soon"],
        ["--set", "metrics.enabled=yes"],
        ["--set", "replicaCount=0"],
        ["--set", "podDisruptionBudget.maxUnavailable=0"],
        ["--set", "operator.leaderElection=maybe"],
        ["--set", "operator.leaseDurationSeconds=1"],
        ["--set", "operator.leaseDurationSeconds=301"],
        ["--set", "operator.leaseRetryPeriodSeconds=0"],
    ],
)
def test_invalid_values_are_refused(args: list[str]) -> None:
    result = template(*args)
    assert result.returncode != 0
    assert "schema" in result.stderr


# -- metrics --------------------------------------------------------------------------------------


def test_metrics_values(clean_env: pytest.MonkeyPatch) -> None:
    """On by default: the operator gets the port, the pod names it, a Service selects the pod
    by that name. Off: port 0 (the operator serves nothing) and no Service."""
    docs = render("--set", "metrics.port=9100")
    c = container(one(docs, "Deployment")["spec"]["template"]["spec"])
    assert {"name": "metrics", "containerPort": 9100, "protocol": "TCP"} in c["ports"]
    assert env_values(c)["RDO_METRICS_PORT"] == "9100"
    clean_env.setenv("RDO_METRICS_PORT", env_values(c)["RDO_METRICS_PORT"])
    assert Settings().metrics_port == 9100
    service = metrics_service(docs)
    assert service["metadata"]["name"] == f"{FULLNAME}-metrics"
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9100, "targetPort": "metrics", "protocol": "TCP"}
    ]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert not find(docs, "ServiceMonitor")
    assert not find(docs, "ConfigMap")

    off = render("--set", "metrics.enabled=false", "--set", "metrics.serviceMonitor.enabled=true")
    c = container(one(off, "Deployment")["spec"]["template"]["spec"])
    assert env_values(c)["RDO_METRICS_PORT"] == "0"
    assert [p["name"] for p in c["ports"]] == ["healthz", "webhook"]
    assert not [s for s in find(off, "Service") if s["metadata"]["name"].endswith("-metrics")]
    assert not find(off, "ServiceMonitor")  # nothing to scrape


def test_service_monitor() -> None:
    docs = render(
        "--set", "metrics.serviceMonitor.enabled=true",
        "--set", "metrics.serviceMonitor.labels.release=prom",
        "--set", "metrics.serviceMonitor.interval=15s",
    )  # fmt: skip
    monitor, service = one(docs, "ServiceMonitor"), metrics_service(docs)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    spec = monitor["spec"]
    # It selects exactly the metrics Service, in the release namespace, by its port's name.
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert spec["selector"]["matchLabels"]["app.kubernetes.io/component"] == "metrics"
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert spec["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    assert spec["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_dashboard_config_map() -> None:
    docs = render(
        "--set", "metrics.dashboard.enabled=true",
        "--set", "metrics.dashboard.annotations.grafana_folder=CI",
    )  # fmt: skip
    cm = one(docs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "CI"}
    shipped = cm["data"]["remote-docker-operator.json"]
    source = (CHART / "dashboards" / "remote-docker-operator.json").read_text()
    assert json.loads(shipped) == json.loads(source)


# -- admission webhook ---------------------------------------------------------------------------


def test_webhook_is_served_by_the_operator_pods_with_a_certificate_for_its_service(
    clean_env: pytest.MonkeyPatch,
) -> None:
    docs = render("--set", "webhook.port=9555", "--set", "webhook.timeoutSeconds=5")
    deployment = one(docs, "Deployment")["spec"]["template"]
    c = container(deployment["spec"])
    assert {"name": "webhook", "containerPort": 9555, "protocol": "TCP"} in c["ports"]
    clean_env.setenv("RDO_WEBHOOK_PORT", env_values(c)["RDO_WEBHOOK_PORT"])
    assert Settings().webhook_port == 9555
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["webhook-tls"] == Settings().webhook_cert_dir
    assert env_values(c)["RDO_WAIT_IMAGE"] == c["image"]

    name = f"{FULLNAME}-webhook"
    (service,) = [s for s in find(docs, "Service") if s["metadata"]["name"] == name]
    assert service["spec"]["selector"].items() <= deployment["metadata"]["labels"].items()
    assert service["spec"]["ports"] == [
        {"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"}
    ]
    secret = one(docs, "Secret")
    config = one(docs, "MutatingWebhookConfiguration")
    (hook,) = config["webhooks"]
    # One CA in both, though the Secret and the configuration are separate templates.
    assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    assert hook["clientConfig"]["service"] == {
        "name": name, "namespace": NAMESPACE, "path": webhook.PATH, "port": 443
    }  # fmt: skip
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"{name}.{NAMESPACE}.svc" in sans.get_values_for_type(x509.DNSName)
    # Called for labelled pods only, never in job namespaces; a labelled pod it cannot answer
    # for is refused; a dry run is answered without the DockerEngine.
    assert hook["objectSelector"] == {
        "matchExpressions": [{"key": names.LABEL_ENGINE_REQUEST, "operator": "Exists"}]
    }
    assert hook["namespaceSelector"] == {
        "matchExpressions": [
            {"key": names.LABEL_MANAGED_BY, "operator": "NotIn", "values": [names.APP]}
        ]
    }
    assert hook["rules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert (hook["failurePolicy"], hook["sideEffects"], hook["timeoutSeconds"]) == (
        "Fail", "NoneOnDryRun", 5
    )  # fmt: skip


def test_webhook_off(clean_env: pytest.MonkeyPatch) -> None:
    docs = render("--set", "webhook.enabled=false")
    c = container(one(docs, "Deployment")["spec"]["template"]["spec"])
    assert env_values(c)["RDO_WEBHOOK_PORT"] == "0"
    assert "webhook" not in {p["name"] for p in c["ports"]}
    assert not find(docs, "MutatingWebhookConfiguration")
    assert not find(docs, "Secret")
    assert [s["metadata"]["name"] for s in find(docs, "Service")] == [f"{FULLNAME}-metrics"]


# -- helm test ----------------------------------------------------------------------------------


def test_test_hook_objects(docs: list[Obj]) -> None:
    hooks = [d for d in docs if "helm.sh/hook" in (d["metadata"].get("annotations") or {})]
    assert sorted(d["kind"] for d in hooks) == ["Pod", "Role", "RoleBinding", "ServiceAccount"]
    weights = {}
    for hook in hooks:
        annotations = hook["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "test"
        assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
        assert hook["metadata"]["name"] == TEST_NAME
        weights[hook["kind"]] = int(annotations["helm.sh/hook-weight"])
    # RBAC exists before the Pod that needs it.
    assert weights["ServiceAccount"] < weights["Role"] < weights["RoleBinding"] < weights["Pod"]

    role = one(docs, "Role", hook=True)
    assert rule_set(role["rules"]) == {
        (names.GROUP, names.PLURAL, frozenset({"create", "get", "delete"}))
    }
    binding = one(docs, "RoleBinding", hook=True)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": TEST_NAME,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": TEST_NAME, "namespace": NAMESPACE}
    ]


def test_test_pod(docs: list[Obj]) -> None:
    pod = one(docs, "Pod", hook=True)["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == TEST_NAME
    assert pod["automountServiceAccountToken"] is True
    assert_restricted(pod)
    c = container(pod)
    operator = container(one(docs, "Deployment")["spec"]["template"]["spec"])
    assert c["image"] == operator["image"]
    assert c["command"][:2] == ["python", "-c"]
    assert c["command"][2] == (CHART / "files" / "helm-test.py").read_text()
    env = env_values(c)
    assert env["RDO_TEST_NAMESPACE"] == NAMESPACE
    assert env["RDO_TEST_JOB_IMAGE"] == "docker:27-cli"
    assert env["RDO_TEST_ENGINE_IMAGE"] == ""
    assert env["RDO_TEST_TIMEOUT_SECONDS"] == "240"
    fields = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"] if "valueFrom" in e
    }
    assert fields == {"RDO_TEST_POD_NAME": "metadata.name", "RDO_TEST_POD_UID": "metadata.uid"}


def test_test_values() -> None:
    docs = render(
        "--set", "test.jobImage=registry.example/docker:27-cli",
        "--set", "test.engineImage=registry.example/docker:27-dind",
        "--set", "test.timeoutSeconds=900",
    )  # fmt: skip
    env = env_values(container(one(docs, "Pod", hook=True)["spec"]))
    assert env["RDO_TEST_JOB_IMAGE"] == "registry.example/docker:27-cli"
    assert env["RDO_TEST_ENGINE_IMAGE"] == "registry.example/docker:27-dind"
    assert env["RDO_TEST_TIMEOUT_SECONDS"] == "900"

    docs = render("--set", "test.enabled=false")
    assert [d for d in docs if "helm.sh/hook" in (d["metadata"].get("annotations") or {})] == []
    assert len(docs) == 20


@pytest.mark.parametrize("engine_image", ["", "registry.example/docker:27-dind"])
def test_test_script_builds_a_valid_buildjob(
    monkeypatch: pytest.MonkeyPatch, engine_image: str
) -> None:
    spec = importlib.util.spec_from_file_location("helm_test", CHART / "files" / "helm-test.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for key, value in {
        "RDO_TEST_NAMESPACE": NAMESPACE,
        "RDO_TEST_NAME_PREFIX": f"{TEST_NAME}-",
        "RDO_TEST_JOB_IMAGE": "docker:27-cli",
        "RDO_TEST_ENGINE_IMAGE": engine_image,
        "RDO_TEST_TIMEOUT_SECONDS": "300",
        "RDO_TEST_POD_NAME": TEST_NAME,
        "RDO_TEST_POD_UID": "0b6f7f3e-5d4c-4c1e-9a57-0a4b1c2d3e4f",
    }.items():
        monkeypatch.setenv(key, value)
    body: Obj = module.build_job()
    assert body["apiVersion"] == names.API_VERSION
    assert body["kind"] == names.KIND
    assert body["metadata"]["ownerReferences"][0]["kind"] == "Pod"
    job = BuildJob.model_validate({"spec": body["spec"]})
    assert job.spec.job.command == ["sh", "-c"]
    assert job.spec.job.args == ["docker version"]
    assert (job.spec.engine.image if job.spec.engine else None) == (engine_image or None)


def test_notes_example_is_a_valid_buildjob() -> None:
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    for step in ("kubectl apply", "get bj -w", "helm test"):
        assert step in notes
    match = re.search(r"<<'YAML'\n(.*?)\n\s*YAML\n", notes, re.S)
    assert match, "NOTES.txt has no example BuildJob"
    example = yaml.safe_load(textwrap.dedent(match.group(1)))
    assert example["apiVersion"] == names.API_VERSION
    assert example["kind"] == names.KIND
    BuildJob.model_validate({"spec": example["spec"]})


# -- Pod Security Standards ---------------------------------------------------------------------


def assert_restricted(pod: Obj) -> None:
    """The "restricted" Pod Security Standard, as far as it concerns these pods."""
    pod_sc = pod.get("securityContext") or {}
    for host_namespace in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(host_namespace), host_namespace
    for volume in pod.get("volumes", []):
        assert set(volume) - {"name"} <= {
            "emptyDir", "configMap", "secret", "projected", "downwardAPI",
            "persistentVolumeClaim", "ephemeral", "csi",
        }  # fmt: skip
    for c in pod["containers"]:
        sc = c.get("securityContext") or {}
        assert sc.get("privileged", False) is False
        assert sc.get("allowPrivilegeEscalation") is False
        assert sc.get("capabilities", {}).get("drop") == ["ALL"]
        assert not sc.get("capabilities", {}).get("add")
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True
        assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile")) or {}
        assert seccomp.get("type") in ("RuntimeDefault", "Localhost")
        assert not c.get("ports") or all("hostPort" not in p for p in c["ports"])


# -- EngineClass, aggregated roles, admission policies ------------------------------------------


def test_default_engine_class(docs: list[Obj]) -> None:
    cls = one(docs, "EngineClass")
    assert cls["metadata"]["name"] == "standard"
    assert cls["metadata"]["annotations"] == {names.ANNOTATION_DEFAULT_CLASS: "true"}
    assert EngineClassSpec.model_validate(cls["spec"]).image == "docker:27-dind"
    docs = render("--set", "engineClass.default=false", "--set", "engineClass.name=small")
    assert "annotations" not in one(docs, "EngineClass")["metadata"]
    assert find(render("--set", "engineClass.create=false"), "EngineClass") == []


def test_aggregated_roles_never_grant_status(docs: list[Obj]) -> None:
    roles = {d["metadata"]["name"]: d for d in find(docs, "ClusterRole")}
    edit, view = roles[f"{FULLNAME}-edit"], roles[f"{FULLNAME}-view"]
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    for role in (edit, view):
        for rule in role["rules"]:
            assert rule["resources"] == ["buildjobs", "dockerengines"], rule
    assert "create" in edit["rules"][0]["verbs"]
    assert set(view["rules"][0]["verbs"]) == {"get", "list", "watch"}


def test_policies_bind_the_operator_by_its_service_account(docs: list[Obj]) -> None:
    policies = {d["metadata"]["name"]: d for d in find(docs, "ValidatingAdmissionPolicy")}
    bindings = {d["metadata"]["name"]: d for d in find(docs, "ValidatingAdmissionPolicyBinding")}
    assert set(policies) == set(bindings)
    for name, binding in bindings.items():
        assert binding["spec"]["policyName"] == name
        assert binding["spec"]["validationActions"] == ["Deny"]
    me = f"system:serviceaccount:{NAMESPACE}:{FULLNAME}"
    guard = policies[f"{FULLNAME}-operator-guard"]["spec"]["matchConditions"][0]["expression"]
    assert guard == f"request.userInfo.username == '{me}'"
    labels = policies[f"{FULLNAME}-job-namespaces"]["spec"]["matchConditions"][0]["expression"]
    assert labels == f"request.userInfo.username != '{me}'"
    by_class = bindings[f"{FULLNAME}-buildjob-class"]["spec"]["paramRef"]
    assert by_class == {"selector": {}, "parameterNotFoundAction": "Deny"}
    assert (
        find(render("--set", "admissionPolicies.enabled=false"), "ValidatingAdmissionPolicy") == []
    )


def test_seccomp_profile_is_not_installed_unless_asked(docs: list[Obj]) -> None:
    assert find(docs, "DaemonSet") == []


def test_seccomp_profile_daemonset_writes_the_projects_profile_to_the_kubelets_directory() -> None:
    """The chart's copy is the profile seccomp/generate.sh made; the DaemonSet's pods mount only
    the directory an EngineClass names it by, below the kubelet's seccomp directory, and write it
    as its owner with no capability; they are behind none of the operator's Services."""
    profile = ROOT / "seccomp" / "user-namespace-engine.json"
    copy = CHART / "files" / "seccomp" / "user-namespace-engine.json"
    assert copy.read_bytes() == profile.read_bytes()

    docs = render("--set", "seccompProfile.install=true")
    config_map = one(docs, "ConfigMap")
    assert json.loads(config_map["data"]["user-namespace-engine.json"]) == json.loads(
        profile.read_text()
    )
    daemon_set = one(docs, "DaemonSet")
    pod = daemon_set["spec"]["template"]
    spec = pod["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["profile"]["configMap"]["name"] == config_map["metadata"]["name"]
    # The directory is the one the example EngineClass's seccompProfile names.
    example = yaml.safe_load_all((ROOT / "examples" / "user-namespace-engine.yaml").read_text())
    (engine_class,) = [d for d in example if d["kind"] == "EngineClass"]
    directory = engine_class["spec"]["seccompProfile"].split("/")[0]
    assert volumes["node"]["hostPath"] == {
        "path": f"/var/lib/kubelet/seccomp/{directory}",
        "type": "DirectoryOrCreate",
    }
    # The init container writes it (a running pod is a node that has it), as root with no
    # capability; the container that holds the pod is nobody and mounts nothing.
    (writer,) = spec["initContainers"]
    assert writer["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert writer["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in writer["volumeMounts"]} == {"/profile", "/node"}
    holder = container(spec)
    assert holder["securityContext"]["runAsNonRoot"] is True
    assert "volumeMounts" not in holder
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert pod["metadata"]["annotations"]["checksum/profile"]
    for service in find(docs, "Service"):
        assert not service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()

    moved = render(
        "--set", "seccompProfile.install=true", "--set", "seccompProfile.kubeletRootDir=/data/k/"
    )
    volumes = {v["name"]: v for v in one(moved, "DaemonSet")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["node"]["hostPath"]["path"] == f"/data/k/seccomp/{directory}"
    relative = template(
        "--set", "seccompProfile.install=true", "--set", "seccompProfile.kubeletRootDir=k"
    )
    assert relative.returncode != 0
    assert "kubeletRootDir" in relative.stderr
