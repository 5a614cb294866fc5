"""Property-based BuildJobs against the real API server with the operator running.

Specs are generated valid, then (mostly) broken by one mutation whose outcome and field are
known. test_generated_specs creates them for real: each is refused at admission with a message
naming the spec field, or admitted and driven to a definite phase (Succeeded, or Failed/JobFailed
with the job's exit code, or Failed/InvalidSpec with a message naming the cause when it passes
admission but cannot work, or Failed with the kubelet's words when a kubelet would not start its
pods: an image that cannot be pulled, an engine that never answers, a reference to a Secret or
ConfigMap the job namespace does not hold; kwok's pod-start stage plays that kubelet, and
kubelet_refusal is the oracle's copy of its rules). Throughout, the operator must not crash,
restart or log an error, must not write to a finished BuildJob except in the designed ways
below, and must go quiet once nothing is due. test_admission checks admission alone, at
volume, with dry runs.

The one write to a finished BuildJob that is by design (at most once per BuildJob):
`status.cleanedUp: true`, once `ttlSecondsAfterFinished` has passed since `completionTime`
(reconcile._finish deletes the job namespace, then writes it). Nothing else of kopf's is
written at all (no finalizer, progress or diff-base annotations: handlers.py registers event
handlers only), so any such write fails the check.
"""

import calendar
import itertools
import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, Phase, example, given, seed, settings
from hypothesis import strategies as st
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from remote_docker_operator import models, names

from ..support import Kube, OperatorProcess, wait_for
from .conftest import OPERATOR_ENV

pytestmark = pytest.mark.integration

# A fixed seed, so CI runs the same examples every time and a failure there replays here; set
# RDO_FUZZ_SEED to explore other examples. (Not derandomize=True: its seed changes with every
# edit of this file, which makes "it passed yesterday" meaningless.)
SEED = int(os.environ.get("RDO_FUZZ_SEED", "20261126"))
EXAMPLES = int(os.environ.get("RDO_FUZZ_EXAMPLES", "40"))

TERMINAL = ("Succeeded", "Failed")
RESYNC = float(OPERATOR_ENV["RDO_RESYNC_SECONDS"])
DEFAULT_TTL = int(OPERATOR_ENV["RDO_DEFAULT_TTL_SECONDS"])
# Short TTLs expire during the run (the namespace is deleted, cleanedUp written); the long ones
# (and the default) never do, so nothing is scheduled to happen in the quiet window.
SHORT_TTL = 3
QUIET_SECONDS = 5 * RESYNC


# What a generated spec is expected to do.
VALID = "valid"  # admitted; Succeeded, or Failed/JobFailed with the job's non-zero exit code
REFUSED = "refused"  # 422 at admission, the message naming `field`
INVALID = "invalid"  # admitted, then Failed/InvalidSpec, the message naming `field`
# Admitted and valid, but a kubelet would not start its pods: Failed/`reason`, the message
# carrying the kubelet's words (`field`).
UNSTARTABLE = "unstartable"


@dataclass(frozen=True)
class Case:
    spec: dict[str, Any]
    expect: str
    mutation: str
    field: str = ""  # what a refusal's or an InvalidSpec's message must contain
    exit_code: int = 0  # a VALID case's job exit code
    reason: str = ""  # an UNSTARTABLE case's status.reason


# -- valid specs ------------------------------------------------------------------------------

# Image tags kwok's pod-start stage treats as a registry without the image, and as a dockerd
# that never answers (cluster/kwok-stages.yaml).
PULL_FAILS = ":does-not-exist"
NEVER_ANSWERS = ":never-answers"
_path = st.from_regex(r"\A[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,4})?\Z")
images = st.builds(
    lambda domain, parts, tag: domain + "/".join(parts) + tag,
    st.sampled_from(["", "local/", "localhost:5000/", "registry.example.com/", "ghcr.io/"]),
    st.lists(_path, min_size=1, max_size=3),
    st.sampled_from(["", ":1", ":27-cli", ":v1.2.3", ":latest", "@sha256:" + "a" * 64, PULL_FAILS]),
)
# What the tier's default class allows (local/*); others are the "engine-image-not-allowed" case.
engine_images = st.builds(
    lambda parts, tag: "local/" + "/".join(parts) + tag,
    st.lists(_path, min_size=1, max_size=3),
    st.sampled_from(["", ":1", ":27-dind", "@sha256:" + "a" * 64, PULL_FAILS, NEVER_ANSWERS]),
)
env_names = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_.]{0,15}\Z").filter(
    lambda n: n != "KWOK_EXIT_CODE"
)
env_values = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
# References resolve in the BuildJob's namespace; the kwok stage's stand-in for one that is not
# there is a name starting with missing- (cluster/kwok-stages.yaml).
value_from = st.sampled_from(
    [
        {"secretKeyRef": {"name": "some-secret", "key": "token"}},
        {"secretKeyRef": {"name": "missing-secret", "key": "token"}},
        {"secretKeyRef": {"name": "missing-secret", "key": "token", "optional": True}},
        {"configMapKeyRef": {"name": "some-config", "key": "k"}},
        {"configMapKeyRef": {"name": "missing-config", "key": "k"}},
        {"configMapKeyRef": {"name": "missing-config", "key": "k", "optional": True}},
        {"configMapKeyRef": {"name": "kube-root-ca.crt", "key": "ca.crt"}},
        {"fieldRef": {"fieldPath": "metadata.name"}},
        {"resourceFieldRef": {"resource": "limits.cpu", "containerName": "job"}},
    ]
)
env_var = st.one_of(
    st.builds(lambda n, v: {"name": n, "value": v}, env_names, env_values),
    st.builds(lambda n, vf: {"name": n, "valueFrom": vf}, env_names, value_from),
)
env_from = st.builds(
    lambda kind, name, optional, prefix: {
        kind: {"name": name, **({} if optional is None else {"optional": optional})},
        **({"prefix": prefix} if prefix else {}),
    },
    st.sampled_from(["configMapRef", "secretRef"]),
    st.sampled_from(["cfg", "creds", "missing-one", "kube-root-ca.crt"]),
    st.sampled_from([None, False, True, True]),
    st.sampled_from([None, "X_", "APP_"]),
)
# Small, so kwok's node always fits them (an unschedulable pod waits for its deadline); requests
# never above limits.
cpu = st.sampled_from(["10m", "50m", "100m", "0.1", "1"])
memory = st.sampled_from(["16Mi", "32Mi", "64Mi", "67108864"])
resources = st.one_of(
    st.just({"requests": {"cpu": "10m", "memory": "16Mi"}}),
    st.builds(lambda c, m: {"limits": {"cpu": c, "memory": m}}, cpu, memory),
    st.just({"requests": {"cpu": "10m"}, "limits": {"cpu": "100m", "memory": "64Mi"}}),
    st.just({"limits": {"cpu": 1}}),  # an integer quantity
)
engines = st.fixed_dictionaries(
    {},
    optional={
        "version": st.sampled_from(["27", "26.1", "25.0.3"]),
        "storage": st.sampled_from(["1Gi", "500Mi", "20Gi", "1e9"]),
        "mtu": st.integers(576, 9216),
        "registryMirrors": st.lists(
            st.sampled_from(["https://mirror.example.com", "http://10.0.0.1:5000/v2"]),
            max_size=2,
            unique=True,
        ),
        "insecureRegistries": st.lists(
            st.sampled_from(["10.0.0.1:5000", "registry.local", "[::1]:5000"]),
            max_size=2,
            unique=True,
        ),
        "imagePullPolicy": st.sampled_from(["Always", "IfNotPresent", "Never"]),
        "resources": resources,
    },
)
ttls = st.one_of(st.integers(0, SHORT_TTL), st.integers(3600, 2592000))
exit_codes = st.one_of(st.just(0), st.integers(1, 255))


@st.composite
def valid_specs(draw: st.DrawFn) -> tuple[dict[str, Any], int]:
    code = draw(exit_codes)
    env = draw(st.lists(env_var, max_size=4))
    # Last, so it wins (kwok's stage reads the last KWOK_EXIT_CODE).
    job: dict[str, Any] = {
        "image": draw(images),
        "env": [*env, {"name": "KWOK_EXIT_CODE", "value": str(code)}],
    }
    if draw(st.booleans()):
        job["envFrom"] = draw(st.lists(env_from, max_size=2))
    if draw(st.booleans()):
        job["workingDir"] = draw(st.sampled_from(["/", "/src", "/work/a b", "/tmp/ü"]))
    if draw(st.booleans()):
        job["command"] = ["sh", "-c"]
        job["args"] = draw(st.lists(env_values, max_size=3))
    if draw(st.booleans()):
        job["imagePullPolicy"] = draw(st.sampled_from(["Always", "IfNotPresent", "Never"]))
    if draw(st.booleans()):
        job["resources"] = draw(resources)
    spec: dict[str, Any] = {"job": job}
    engine: dict[str, Any] = draw(engines)
    if draw(st.booleans()) and "version" in engine:
        del engine["version"]
        engine["image"] = draw(engine_images)
    with_engine = bool(engine) or draw(st.booleans())  # sometimes an empty engine: {}
    if with_engine:
        spec["engine"] = engine
    if draw(st.booleans()):
        spec["activeDeadlineSeconds"] = draw(st.integers(600, 86400))
    if draw(st.booleans()):
        spec["ttlSecondsAfterFinished"] = draw(ttls)
    if draw(st.booleans()):
        spec["network"] = {"jobEgress": draw(st.sampled_from(["Internet", "None"]))}
    return spec, code


# -- mutations: what each does to a valid spec, its outcome, and the field it names ----------

Spec = dict[str, Any]


def _job(spec: Spec, **changes: Any) -> Spec:
    return {**spec, "job": {**spec["job"], **changes}}


def _engine(spec: Spec, **changes: Any) -> Spec:
    engine = {k: v for k, v in (spec.get("engine") or {}).items() if k != "image"}
    return {**spec, "engine": {**engine, **changes}}


def _env(spec: Spec, var: dict[str, Any]) -> Spec:
    """The variable goes first, so the message's field is spec.job.env[0]."""
    return _job(spec, env=[var, *spec["job"]["env"]])


Mutate = Callable[[Spec, str], Spec]
MUTATIONS: dict[str, tuple[Mutate, str, str]] = {
    "image-upper": (lambda s, x: _job(s, image="Local/Job:1"), REFUSED, "spec.job.image"),
    "image-space": (lambda s, x: _job(s, image=f"local/job {x}"), REFUSED, "spec.job.image"),
    "image-empty": (lambda s, x: _job(s, image=""), REFUSED, "spec.job.image"),
    "image-null": (lambda s, x: _job(s, image=None), REFUSED, "spec.job.image"),
    "image-long": (lambda s, x: _job(s, image="a" * 513), REFUSED, "spec.job.image"),
    "image-bad-digest": (
        lambda s, x: _job(s, image="local/job@sha256:abc"),
        REFUSED,
        "spec.job.image",
    ),
    "image-number": (lambda s, x: _job(s, image=7), REFUSED, "spec.job.image"),
    "command-string": (lambda s, x: _job(s, command=f"sh {x}"), REFUSED, "spec.job.command"),
    "args-too-many": (lambda s, x: _job(s, args=[x] * 257), REFUSED, "spec.job.args"),
    "env-too-many": (
        lambda s, x: _job(s, env=[{"name": f"V{i}", "value": x} for i in range(129)]),
        REFUSED,
        "spec.job.env",
    ),
    "env-name-digit": (
        lambda s, x: _env(s, {"name": "1X", "value": x}),
        REFUSED,
        "spec.job.env[0].name",
    ),
    "env-name-empty": (
        lambda s, x: _env(s, {"name": "", "value": x}),
        REFUSED,
        "spec.job.env[0].name",
    ),
    "env-name-space": (lambda s, x: _env(s, {"name": "A B"}), REFUSED, "spec.job.env[0].name"),
    "env-no-name": (lambda s, x: _env(s, {"value": x}), REFUSED, "spec.job.env[0].name"),
    "env-value-int": (
        lambda s, x: _env(s, {"name": "N", "value": 3}),
        REFUSED,
        "spec.job.env[0].value",
    ),
    "valueFrom-not-object": (
        lambda s, x: _env(s, {"name": "N", "valueFrom": x}),
        REFUSED,
        "spec.job.env[0].valueFrom",
    ),
    "envFrom-both": (
        lambda s, x: _job(s, envFrom=[{"configMapRef": {"name": "a"}, "secretRef": {"name": "b"}}]),
        REFUSED,
        "spec.job.envFrom[0]",
    ),
    "envFrom-neither": (
        lambda s, x: _job(s, envFrom=[{"prefix": "P_"}]),
        REFUSED,
        "spec.job.envFrom[0]",
    ),
    "envFrom-bad-name": (
        lambda s, x: _job(s, envFrom=[{"secretRef": {"name": "A_B"}}]),
        REFUSED,
        "spec.job.envFrom[0].secretRef.name",
    ),
    "workdir-relative": (lambda s, x: _job(s, workingDir="src"), REFUSED, "spec.job.workingDir"),
    "workdir-empty": (lambda s, x: _job(s, workingDir=""), REFUSED, "spec.job.workingDir"),
    "pull-policy": (
        lambda s, x: _job(s, imagePullPolicy="Sometimes"),
        REFUSED,
        "spec.job.imagePullPolicy",
    ),
    "cpu-garbage": (
        lambda s, x: _job(s, resources={"limits": {"cpu": "lots"}}),
        REFUSED,
        "spec.job.resources.limits.cpu",
    ),
    "memory-unit": (
        lambda s, x: _job(s, resources={"limits": {"memory": "1GB"}}),
        REFUSED,
        "spec.job.resources.limits.memory",
    ),
    "engine-version-word": (
        lambda s, x: _engine(s, version="latest"),
        REFUSED,
        "spec.engine.version",
    ),
    "engine-version-long": (
        lambda s, x: _engine(s, version="1.2.3.4"),
        REFUSED,
        "spec.engine.version",
    ),
    "engine-image-and-version": (
        lambda s, x: {**s, "engine": {"image": "local/dind:1", "version": "27"}},
        REFUSED,
        "spec.engine",
    ),
    "engine-image-bad": (
        lambda s, x: {**s, "engine": {"image": "UP/per"}},
        REFUSED,
        "spec.engine.image",
    ),
    "engine-image-not-allowed": (
        lambda s, x: {**s, "engine": {"image": "ghcr.io/evil/root:1"}},
        REFUSED,
        "spec.engine.image",
    ),
    "engine-storage-over-class-max": (
        lambda s, x: _engine(s, storage="1Ei"),
        REFUSED,
        "spec.engine.storage",
    ),
    "engine-storage-word": (
        lambda s, x: _engine(s, storage="big"),
        REFUSED,
        "spec.engine.storage",
    ),
    "engine-mtu-low": (lambda s, x: _engine(s, mtu=575), REFUSED, "spec.engine.mtu"),
    "engine-mtu-high": (lambda s, x: _engine(s, mtu=9217), REFUSED, "spec.engine.mtu"),
    "engine-mtu-string": (lambda s, x: _engine(s, mtu="1500"), REFUSED, "spec.engine.mtu"),
    "engine-mirror-ftp": (
        lambda s, x: _engine(s, registryMirrors=["ftp://m.example"]),
        REFUSED,
        "spec.engine.registryMirrors[0]",
    ),
    "engine-mirror-space": (
        lambda s, x: _engine(s, registryMirrors=["https://a b.example"]),
        REFUSED,
        "spec.engine.registryMirrors[0]",
    ),
    "engine-too-many-mirrors": (
        lambda s, x: _engine(s, registryMirrors=[f"https://m{i}.example" for i in range(9)]),
        REFUSED,
        "spec.engine.registryMirrors",
    ),
    "engine-insecure-space": (
        lambda s, x: _engine(s, insecureRegistries=["a b"]),
        REFUSED,
        "spec.engine.insecureRegistries[0]",
    ),
    "engine-pull-policy": (
        lambda s, x: _engine(s, imagePullPolicy="Sometimes"),
        REFUSED,
        "spec.engine.imagePullPolicy",
    ),
    "deadline-zero": (
        lambda s, x: {**s, "activeDeadlineSeconds": 0},
        REFUSED,
        "spec.activeDeadlineSeconds",
    ),
    "deadline-huge": (
        lambda s, x: {**s, "activeDeadlineSeconds": 86401},
        REFUSED,
        "spec.activeDeadlineSeconds",
    ),
    "deadline-string": (
        lambda s, x: {**s, "activeDeadlineSeconds": "60"},
        REFUSED,
        "spec.activeDeadlineSeconds",
    ),
    "ttl-negative": (
        lambda s, x: {**s, "ttlSecondsAfterFinished": -1},
        REFUSED,
        "spec.ttlSecondsAfterFinished",
    ),
    "ttl-huge": (
        lambda s, x: {**s, "ttlSecondsAfterFinished": 2592001},
        REFUSED,
        "spec.ttlSecondsAfterFinished",
    ),
    "pull-secret-bad-name": (
        lambda s, x: {**s, "imagePullSecrets": [{"name": "Not_Valid"}]},
        REFUSED,
        "spec.imagePullSecrets[0].name",
    ),
    "pull-secrets-too-many": (
        lambda s, x: {**s, "imagePullSecrets": [{"name": f"s{i}"} for i in range(9)]},
        REFUSED,
        "spec.imagePullSecrets",
    ),
    "docker-config-no-name": (
        lambda s, x: {**s, "dockerConfigSecret": {}},
        REFUSED,
        "spec.dockerConfigSecret.name",
    ),
    "egress-bad": (
        lambda s, x: {**s, "network": {"jobEgress": "Some"}},
        REFUSED,
        "spec.network.jobEgress",
    ),
    "no-job": (lambda s, x: {k: v for k, v in s.items() if k != "job"}, REFUSED, "spec.job"),
    # Admitted, cannot work.
    "env-value-and-from": (
        lambda s, x: _env(s, {"name": "N", "value": "v", "valueFrom": {"fieldRef": {}}}),
        INVALID,
        "spec.job.env[0].valueFrom",
    ),
    "valueFrom-empty": (
        lambda s, x: _env(s, {"name": "N", "valueFrom": {}}),
        INVALID,
        "spec.job.env[0].valueFrom",
    ),
    "valueFrom-no-key": (
        lambda s, x: _env(s, {"name": "N", "valueFrom": {"secretKeyRef": {"name": "s"}}}),
        INVALID,
        "spec.job.env[0].valueFrom.secretKeyRef.key",
    ),
    "valueFrom-two-sources": (
        lambda s, x: _env(
            s,
            {
                "name": "N",
                "valueFrom": {
                    "secretKeyRef": {"name": "s", "key": "k"},
                    "configMapKeyRef": {"name": "c", "key": "k"},
                },
            },
        ),
        INVALID,
        "spec.job.env[0].valueFrom",
    ),
    "valueFrom-bad-fieldpath": (
        lambda s, x: _env(s, {"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "nope"}}}),
        INVALID,
        "spec.job.env[0].valueFrom.fieldRef.fieldPath",
    ),
    # Unknown fields are pruned by the API server: an empty valueFrom is left.
    "valueFrom-garbage": (
        lambda s, x: _env(s, {"name": "N", "valueFrom": {"fuzz": {"x": x}}}),
        INVALID,
        "spec.job.env[0].valueFrom",
    ),
    "envFrom-bad-prefix": (
        lambda s, x: _job(s, envFrom=[{"prefix": "1=", "secretRef": {"name": "a"}}]),
        INVALID,
        "spec.job.envFrom[0].prefix",
    ),
    "request-over-limit": (
        lambda s, x: _job(s, resources={"requests": {"cpu": "200m"}, "limits": {"cpu": "100m"}}),
        INVALID,
        "spec.job.resources.requests",
    ),
    "memory-request-over-limit": (
        lambda s, x: _job(
            s, resources={"requests": {"memory": "64Mi"}, "limits": {"memory": "32Mi"}}
        ),
        INVALID,
        "spec.job.resources.requests",
    ),
    "negative-cpu": (
        lambda s, x: _job(s, resources={"requests": {"cpu": "-1"}}),
        INVALID,
        "spec.job.resources.requests[cpu]",
    ),
    "engine-request-over-limit": (
        lambda s, x: _engine(s, resources={"requests": {"cpu": "200m"}, "limits": {"cpu": "100m"}}),
        INVALID,
        "spec.engine.resources.requests",
    ),
    "engine-negative-memory": (
        lambda s, x: _engine(s, resources={"limits": {"memory": "-1"}}),
        INVALID,
        "spec.engine.resources.limits[memory]",
    ),
    "engine-storage-negative": (
        lambda s, x: _engine(s, storage="-1Gi"),
        INVALID,
        "spec.engine.storage",
    ),
    "pull-secret-missing": (
        lambda s, x: {**s, "imagePullSecrets": [{"name": "does-not-exist"}]},
        INVALID,
        "spec.imagePullSecrets[0].name",
    ),
    "docker-config-missing": (
        lambda s, x: {**s, "dockerConfigSecret": {"name": "no-such-config"}},
        INVALID,
        "spec.dockerConfigSecret.name",
    ),
    # Pruned or dropped by the API server: the rest of the spec runs as if they were absent.
    "unknown-fields": (
        lambda s, x: {**_job(s, bogus=x), "bogus": {"x": x}},
        VALID,
        "",
    ),
    "null-optionals": (
        lambda s, x: {**_job(s, workingDir=None, args=None), "engine": None},
        VALID,
        "",
    ),
}


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A valid spec, as generated or after one mutation; a third each of unmutated, refused and
    admitted mutations (there are many more ways to be refused than to pass and fail later)."""
    spec, code = draw(valid_specs())
    kind = draw(st.sampled_from(["unmutated", "refused", "admitted"]))
    if kind == "unmutated":
        return classified(Case(spec, VALID, "none", exit_code=code))
    refused = kind == "refused"
    name = draw(st.sampled_from([m for m, v in MUTATIONS.items() if (v[1] == REFUSED) == refused]))
    mutate, expect, field = MUTATIONS[name]
    extra = draw(st.text(st.characters(codec="ascii", categories=("L", "N")), max_size=8))
    return classified(Case(mutate(spec, extra), expect, name, field, code))


OK_JOB: Spec = {"image": "local/job:1", "env": [{"name": "KWOK_EXIT_CODE", "value": "0"}]}


def _mutated(name: str, code: int = 0, **spec: Any) -> Case:
    base: Spec = {"job": {**OK_JOB, "env": [{"name": "KWOK_EXIT_CODE", "value": str(code)}]}}
    mutate, expect, field = MUTATIONS[name]
    return classified(Case(mutate({**base, **spec}, ""), expect, name, field, code))


def _unstartable(job: Spec | None = None, **spec: Any) -> Case:
    """OK_JOB with changes that a kubelet would not start."""
    return classified(Case({"job": {**OK_JOB, **(job or {})}, **spec}, VALID, "none"))


# -- what a kubelet refuses -------------------------------------------------------------------


def _refs(job: Spec) -> list[tuple[str, Spec]]:
    """The job container's Secret and ConfigMap references in the order a kubelet resolves
    them (envFrom, then env): (kind, reference)."""
    found: list[tuple[str, Spec]] = []
    for source in job.get("envFrom") or []:
        for key, kind in (("secretRef", "secret"), ("configMapRef", "configmap")):
            if source.get(key):
                found.append((kind, source[key]))
    for var in job.get("env") or []:
        value_from = var.get("valueFrom") or {}
        for key, kind in (("secretKeyRef", "secret"), ("configMapKeyRef", "configmap")):
            if value_from.get(key):
                found.append((kind, value_from[key]))
    return found


# What the BuildJob's namespace lacks, as the kwok stage plays it.
MISSING = "missing-"


def _pull_failed(image: str) -> str:
    return (
        "ErrImagePull: rpc error: code = NotFound desc = failed to pull and unpack image "
        f'"{image}": not found'
    )


def kubelet_refusal(spec: Spec) -> tuple[str, str] | None:
    """(reason, words of the message) with which an admitted, valid spec fails because its
    pods cannot start, in the order a kubelet meets the causes; None when they start. The
    engine pod is judged before the job pod, whose init container runs the engine image when
    the job has no command. (One with a command waits behind the gate in its job container,
    which kwok does not run: there the job runs to its KWOK_EXIT_CODE whether the engine
    answers or not. tests/unit/test_gate.py and the e2e tier prove the gate's wait.)"""
    engine = spec.get("engine") or {}
    engine_image = engine.get("image") or ""
    job = spec["job"]
    if engine_image.endswith(PULL_FAILS):
        return "EngineFailed", f"the engine cannot start: {_pull_failed(engine_image)}"
    if engine_image.endswith(NEVER_ANSWERS) and "command" not in job:
        return "EngineFailed", "the job pod could not reach its engine: exit code 1"
    if job["image"].endswith(PULL_FAILS):
        return "ImagePullFailed", f"the job container cannot start: {_pull_failed(job['image'])}"
    for kind, ref in _refs(job):
        if ref.get("optional") is not True and str(ref.get("name")).startswith(MISSING):
            return "InvalidSpec", (
                "the job container cannot start: CreateContainerConfigError: "
                f'{kind} "{ref.get("name")}" not found'
            )
    return None


def classified(case: Case) -> Case:
    """A VALID case whose pods a kubelet would not start becomes UNSTARTABLE."""
    refusal = kubelet_refusal(case.spec) if case.expect == VALID else None
    if refusal is None:
        return case
    reason, words = refusal
    return Case(case.spec, UNSTARTABLE, case.mutation, words, case.exit_code, reason)


# -- watching every write ---------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    at: float  # wall clock, comparable with the operator's status timestamps
    type: str
    obj: dict[str, Any]


class Recorder:
    """Every watch event on one namespace's BuildJobs, in order, from a background thread."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.seen: list[Seen] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._version = str(_list_buildjobs(kube, namespace)["metadata"]["resourceVersion"])
        self._thread = threading.Thread(target=self._run, name="buildjob-recorder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                    self.kube.custom.list_namespaced_custom_object,
                    names.GROUP,
                    names.VERSION,
                    self.namespace,
                    names.PLURAL,
                    resource_version=self._version,
                    timeout_seconds=1,
                )
                for event in stream:  # (the client raises on an ERROR event)
                    obj = event["object"]
                    self._version = obj["metadata"]["resourceVersion"]
                    self.seen.append(Seen(time.time(), event["type"], obj))
        except BaseException as e:
            self.error = e

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def stop(self) -> list[Seen]:
        """Stops watching; every write until now, after checking none was missed."""
        self.close()
        assert not self._thread.is_alive(), "the watch did not stop"
        assert self.error is None, f"the watch failed, so writes may be missing: {self.error!r}"
        return list(self.seen)


def _list_buildjobs(kube: Kube, ns: str) -> dict[str, Any]:
    listed = kube.custom.list_namespaced_custom_object(names.GROUP, names.VERSION, ns, names.PLURAL)
    return cast(dict[str, Any], listed)


def _completion(status: dict[str, Any]) -> float:
    return float(calendar.timegm(time.strptime(status["completionTime"], "%Y-%m-%dT%H:%M:%SZ")))


def _ttl(obj: dict[str, Any]) -> int:
    ttl = obj["spec"].get("ttlSecondsAfterFinished")
    return DEFAULT_TTL if ttl is None else int(ttl)


def _late_write(prev: dict[str, Any], cur: dict[str, Any], at: float) -> tuple[list[str], str]:
    """What one write to an already finished BuildJob changed: the designed changes it made,
    and a description of anything else (empty when there is nothing else)."""
    allowed: list[str] = []
    other: list[str] = []
    before, after = prev.get("status") or {}, cur.get("status") or {}
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    if changed == {"cleanedUp"} and before.get("cleanedUp") is None and after["cleanedUp"] is True:
        due = _completion(after) + _ttl(cur)
        if not after.get("namespace"):
            other.append("status.cleanedUp written for a BuildJob that has no job namespace")
        elif at < due:
            other.append(f"status.cleanedUp written {due - at:.1f}s before its TTL ended")
        else:
            allowed.append("status.cleanedUp")
    elif changed:
        other.append(
            "status: "
            + ", ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in sorted(changed))
        )
    if prev.get("spec") != cur.get("spec"):
        other.append(f"spec: {prev.get('spec')} -> {cur.get('spec')}")

    pm, cm = prev["metadata"], cur["metadata"]
    if pm.get("finalizers") != cm.get("finalizers"):
        other.append(f"finalizers: {pm.get('finalizers')} -> {cm.get('finalizers')}")
    pa, ca = pm.get("annotations") or {}, cm.get("annotations") or {}
    for key in sorted(pa.keys() | ca.keys()):
        if pa.get(key) != ca.get(key):
            other.append(f"annotation {key}: {pa.get(key)!r} -> {ca.get(key)!r}")
    ignored = {"annotations", "finalizers", "resourceVersion", "managedFields"}
    for key in sorted((pm.keys() | cm.keys()) - ignored):
        if pm.get(key) != cm.get(key):
            other.append(f"metadata.{key}: {pm.get(key)!r} -> {cm.get(key)!r}")
    if not allowed and not other:
        other.append("a write that changed nothing visible")
    return allowed, "; ".join(other)


def late_writes(seen: list[Seen]) -> tuple[Counter[str], list[str]]:
    """Every write to a BuildJob after it first showed a terminal phase, checked against the
    designed ones; returns their tally and the writes that are not designed."""
    last: dict[str, dict[str, Any]] = {}
    finished: set[str] = set()
    tally: Counter[str] = Counter()
    problems: list[str] = []
    for event in seen:
        name = event.obj["metadata"]["name"]
        prev = last.get(name)
        last[name] = event.obj
        if event.type == "MODIFIED" and prev is not None and name in finished:
            allowed, other = _late_write(prev, event.obj, event.at)
            tally.update(allowed)
            if other:
                problems.append(
                    f"{name} rv {event.obj['metadata']['resourceVersion']}, "
                    f"{len(allowed)} designed changes {allowed}, and: {other}"
                )
        if (event.obj.get("status") or {}).get("phase") in TERMINAL:
            finished.add(name)
        elif name in finished:
            problems.append(f"{name} left its terminal phase: {event.obj.get('status')}")
    return tally, problems


# -- the operator's log -----------------------------------------------------------------------

LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+\] \S+\s+\[(?P<level>\w+)\s*\] (?P<msg>.*)$")
# The resync loop's DEBUG line for each BuildJob it steps (Reconciler.resync).
TIMER = re.compile(r"^Resync of BuildJob (?P<ns>[^/\s]+)/(?P<name>\S+)$")


def _log_since(path: Path, offset: int) -> list[str]:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace").splitlines()


def _errors(lines: list[str]) -> list[str]:
    bad = []
    for line in lines:
        m = LINE.match(line)
        if "Traceback" in line or (m and m["level"] in ("ERROR", "CRITICAL")):
            bad.append(line)
    return bad


# -- the quiet window -------------------------------------------------------------------------


def _settled(kube: Kube, recorder: Recorder, ns: str, name: str) -> bool:
    """Nothing more is due for the BuildJob: a short TTL has expired and its job namespace is
    gone (with its pods, whose events the operator hears), and nothing has written the
    BuildJob for a resync period (a loop would never let this hold, or be caught in the quiet
    window)."""
    bj = kube.get_buildjob(ns, name) or {}
    status = bj.get("status") or {}
    job_ns = str(status.get("namespace") or "")
    expired = bool(job_ns) and _ttl(bj) <= SHORT_TTL
    if expired and (not status.get("cleanedUp") or kube.namespace_exists(job_ns)):
        return False
    last = max(s.at for s in list(recorder.seen) if s.obj["metadata"]["name"] == name)
    return time.time() - last >= RESYNC


def check_quiet(kube: Kube, operator: OperatorProcess, recorder: Recorder, ns: str) -> None:
    """Over several resync periods with nothing due: no writes to any BuildJob, no Events, and
    no operator activity for this namespace but the resync loop's ticks; and those ticks go on
    for every BuildJob not cleaned up (so the quiet is not a stalled operator), and have stopped
    for those that are."""
    bjs = [bj["metadata"]["name"] for bj in _list_buildjobs(kube, ns)["items"]]
    for name in bjs:
        wait_for(partial(_settled, kube, recorder, ns, name), timeout=60, what=f"{name} settled")
    mark, log_mark = len(recorder.seen), operator.log.stat().st_size
    events = len(kube.core.list_namespaced_event(ns).items)
    time.sleep(QUIET_SECONDS)
    window = _log_since(operator.log, log_mark)
    writes = [
        (s.type, s.obj["metadata"]["name"], s.obj["metadata"]["resourceVersion"])
        for s in recorder.seen[mark:]
    ]
    assert writes == [], f"BuildJobs written while nothing was due: {writes}"
    assert len(kube.core.list_namespaced_event(ns).items) == events, "Events posted meanwhile"

    statuses = {name: kube.status(ns, name) for name in bjs}
    job_namespaces = {s["namespace"] for s in statuses.values() if s.get("namespace")}
    ticks: Counter[str] = Counter()
    busy = []
    for line in window:
        if ns not in line and not any(j in line for j in job_namespaces):
            continue  # not about these BuildJobs
        m = LINE.match(line)
        timer = TIMER.match(m["msg"]) if m else None
        if timer and timer["ns"] == ns:
            ticks[timer["name"]] += 1
        else:
            busy.append(line)
    assert busy == [], "the operator was busy while nothing was due:\n" + "\n".join(busy)
    for name, status in statuses.items():
        if status.get("cleanedUp"):
            assert ticks[name] == 0, f"{name}: resync still ticking after cleanup: {ticks}"
        else:
            # About one tick a period; at least two of five, leaving room for a loaded machine.
            assert ticks[name] >= 2, f"{name}: resync stalled: {ticks}"


# -- the property -----------------------------------------------------------------------------


def _create(kube: Kube, ns: str, name: str, spec: Spec) -> ApiException | None:
    try:
        kube.create_buildjob(ns, name, spec)
    except ApiException as e:
        return e
    return None


def run_examples(kube: Kube, operator: OperatorProcess, ns: str) -> Counter[str]:
    """Runs the property over the explicit and generated cases; returns the outcomes' tally."""
    counter = itertools.count()
    outcomes: Counter[str] = Counter()

    # No shrinking: every example is a BuildJob on a live cluster (seconds each), and a failure
    # message carries the whole spec. The database is off: the seed alone decides the examples.
    @seed(SEED)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(case=cases())
    # Each kind of outcome at least once, and a TTL that expires, whatever the draws.
    @example(case=Case({"job": OK_JOB}, VALID, "none"))
    @example(case=_mutated("unknown-fields", 3, ttlSecondsAfterFinished=0))
    @example(case=_mutated("image-space"))
    @example(case=_mutated("request-over-limit", ttlSecondsAfterFinished=1))
    @example(case=_mutated("pull-secret-missing"))
    @example(case=_mutated("engine-request-over-limit"))
    @example(case=_unstartable({"image": "local/job" + PULL_FAILS}))
    @example(case=_unstartable(engine={"image": "local/dind" + PULL_FAILS}))
    @example(case=_unstartable(engine={"image": "local/dind" + NEVER_ANSWERS}))
    @example(case=_unstartable({"envFrom": [{"secretRef": {"name": "creds"}}]}))
    def check(case: Case) -> None:
        name = f"fz-{next(counter)}"
        what = f"{name} ({case.mutation}, expected {case.expect}): {json.dumps(case.spec)}"
        refusal = _create(kube, ns, name, case.spec)
        if refusal is not None:
            assert refusal.status == 422, f"{what}: HTTP {refusal.status}: {refusal.body}"
            message = json.loads(refusal.body or "{}").get("message", "")
            assert case.expect == REFUSED, f"{what}: refused: {message}"
            assert case.field in message, (
                f"{what}: the refusal does not name {case.field}: {message}"
            )
            outcomes["refused"] += 1
            return
        assert case.expect != REFUSED, f"{what}: admitted"
        status = kube.wait_phase(ns, name, *TERMINAL, timeout=60)
        outcome = f"{status['phase']}/{status.get('reason')}"
        outcomes[outcome] += 1
        if case.expect == VALID and case.exit_code == 0:
            assert outcome == "Succeeded/Succeeded", f"{what}: {status}"
            assert status.get("exitCode") == 0, f"{what}: {status}"
        elif case.expect == VALID:
            assert outcome == "Failed/JobFailed", f"{what}: {status}"
            assert status.get("exitCode") == case.exit_code, f"{what}: {status}"
        elif case.expect == UNSTARTABLE:
            assert outcome == f"Failed/{case.reason}", f"{what}: {status}"
            assert case.field in (status.get("message") or ""), f"{what}: {status}"
            assert "exitCode" not in status, f"{what}: {status}"
        else:
            assert outcome == "Failed/InvalidSpec", f"{what}: {status}"
            assert case.field in (status.get("message") or ""), f"{what}: {status}"
        assert status.get("completionTime"), f"{what}: {status}"
        assert operator.alive(), f"the operator died on {what}"

    check()
    return outcomes


ADMISSION_EXAMPLES = 6  # per mutation, and for unmutated specs


def _dry_run(kube: Kube, spec: Spec) -> tuple[dict[str, Any] | None, ApiException | None]:
    """Creates a BuildJob as a server-side dry run: admitted and pruned, or refused; never
    stored, so no operator sees it (and the namespace may be any existing one)."""
    body = {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": "dry"},
        "spec": spec,
    }
    try:
        stored = kube.custom.create_namespaced_custom_object(
            names.GROUP, names.VERSION, "default", names.PLURAL, body, dry_run="All"
        )
    except ApiException as e:
        return None, e
    return cast(dict[str, Any], stored), None


def _admission_property(kube: Kube, mutation: str) -> Callable[[], None]:
    """The admission property for one mutation ("none": the unmutated generator)."""

    @seed(SEED)
    @settings(
        max_examples=ADMISSION_EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(base=valid_specs(), extra=st.text(max_size=8))
    def check(base: tuple[Spec, int], extra: str) -> None:
        spec, code = base
        case = Case(spec, VALID, mutation, exit_code=code)
        if mutation != "none":
            mutate, expect, field = MUTATIONS[mutation]
            case = Case(mutate(spec, extra), expect, mutation, field, code)
        what = f"{case.mutation}: {json.dumps(case.spec)}"
        stored, refusal = _dry_run(kube, case.spec)
        if refusal is not None:
            assert refusal.status == 422, f"{what}: HTTP {refusal.status}: {refusal.body}"
            message = json.loads(refusal.body or "{}").get("message", "")
            assert case.expect == REFUSED, f"{what}: refused: {message}"
            assert case.field in message, (
                f"{what}: the refusal does not name {case.field}: {message}"
            )
            return
        assert case.expect != REFUSED, f"{what}: admitted"
        assert stored is not None
        # What was admitted (and pruned) the operator can parse, as reconcile.parse_spec does.
        models.BuildJob.model_validate({"spec": stored["spec"]})

    return cast(Callable[[], None], check)


def test_admission(kube: Kube, operator_kubeconfig: Path) -> None:
    """Admission alone, at volume: every mutation, and the unmutated generator, each against
    several generated specs. Refusals name the field; what is admitted, the operator parses.
    What a class does not allow is refused by the chart's admission policy, which
    operator_kubeconfig installs (without it, this test passed only after another had)."""
    not_allowed = {"job": OK_JOB, "engine": {"image": "ghcr.io/evil/root:1"}}
    wait_for(
        lambda: _dry_run(kube, not_allowed)[1] is not None,
        timeout=30,
        what="the chart's admission policy in force",
    )
    for mutation in ["none", *MUTATIONS]:
        _admission_property(kube, mutation)()


def test_generated_specs(kube: Kube, operator: OperatorProcess, ns: str) -> None:
    assert operator.proc is not None
    pid = operator.proc.pid
    log_start = operator.log.stat().st_size
    recorder = Recorder(kube, ns)
    try:
        outcomes = run_examples(kube, operator, ns)
        print(f"fuzz outcomes (seed {SEED}): {dict(outcomes)}")
        check_quiet(kube, operator, recorder, ns)
        tally, problems = late_writes(recorder.stop())
        print(f"designed writes to finished BuildJobs: {dict(tally)}")
        assert not problems, "undesigned writes to finished BuildJobs:\n" + "\n".join(problems)
        assert operator.alive(), "the operator died"
        assert operator.proc.pid == pid, "the operator was restarted"
        errors = _errors(_log_since(operator.log, log_start))
        assert errors == [], "the operator logged errors:\n" + "\n".join(errors)
        # The property's branches all ran (the explicit examples make sure they can).
        for outcome in (
            "refused",
            "Succeeded/Succeeded",
            "Failed/JobFailed",
            "Failed/InvalidSpec",
            "Failed/ImagePullFailed",
            "Failed/EngineFailed",
        ):
            assert outcomes[outcome] >= 1, outcomes
        assert tally["status.cleanedUp"] >= 2, tally
    finally:
        recorder.close()
        created = [bj["metadata"]["name"] for bj in _list_buildjobs(kube, ns)["items"]]
        for name in created:
            kube.delete_buildjob(ns, name)
    wait_for(
        lambda: all(kube.get_buildjob(ns, n) is None for n in created),
        timeout=60,
        what="fuzzed BuildJobs deleted",
    )
