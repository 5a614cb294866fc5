import re
from pathlib import Path

import kopf
import pytest
from pydantic import ValidationError

import remote_docker_operator
from remote_docker_operator.config import Settings


def test_defaults() -> None:
    s = Settings()
    assert s.max_running == 0
    assert s.namespace_prefix == "bj-"


def test_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RDO_MAX_RUNNING", "3")
    monkeypatch.setenv("RDO_NAMESPACE_PREFIX", "ci-")
    s = Settings()
    assert s.max_running == 3
    assert s.namespace_prefix == "ci-"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("RDO_DEFAULT_DEADLINE_SECONDS", "0"),
        ("RDO_NAMESPACE_PREFIX", "Bad_"),
        ("RDO_MAX_RUNNING", "-1"),
        ("RDO_LOG_LEVEL", "verbose"),
        ("RDO_LOG_LEVEL", ""),
        ("RDO_LOG_FORMAT", "xml"),
        ("RDO_CLUSTER_DOMAIN", "Bad_Domain"),
        ("RDO_LIVENESS_ENDPOINT", "https://0.0.0.0:8080/healthz"),  # kopf serves http only
        ("RDO_RESYNC_SECONDS", "0"),
    ],
)
def test_bad_env_is_refused(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("RDO_LOG_LEVEL", "DEBUG", "DEBUG"),
        ("RDO_LOG_FORMAT", "json", "json"),
        ("RDO_CLUSTER_DOMAIN", "corp.example", "corp.example"),
        ("RDO_LIVENESS_ENDPOINT", "", ""),  # disables kopf's probe (the integration tests do)
        ("RDO_LIVENESS_ENDPOINT", "http://127.0.0.1:9090/hz", "http://127.0.0.1:9090/hz"),
        ("RDO_RESYNC_SECONDS", "0.5", 0.5),
    ],
)
def test_good_env_is_accepted(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, expected: object
) -> None:
    monkeypatch.setenv(var, value)
    assert getattr(Settings(), var.removeprefix("RDO_").lower()) == expected


def test_every_log_format_is_a_kopf_format() -> None:
    """__main__ hands log_format to kopf by name."""
    formats = Settings.model_json_schema()["properties"]["log_format"]["enum"]
    assert {kopf.LogFormat[f.upper()] for f in formats} == set(kopf.LogFormat)


def test_only_config_reads_the_environment() -> None:
    """Settings are read only through Settings: no other module of the operator reads the
    environment itself. (engine_cli is no part of the operator: `remote-docker` runs in a CI
    pod, and reads that pod's POD_NAME, POD_NAMESPACE and TMPDIR.)"""
    package = Path(remote_docker_operator.__file__).parent
    readers = {
        path.name
        for path in package.glob("*.py")
        if re.search(r"\bos\.environ\b|\bgetenv\(", path.read_text())
    }
    assert readers == {"engine_cli.py"}


@pytest.mark.parametrize(
    ("duration", "deadline", "retry"),
    [("5", "5", "1"), ("8", "9", "1"), ("8", "5", "5")],
)
def test_lease_timing_must_let_the_leader_give_up_first(
    monkeypatch: pytest.MonkeyPatch, duration: str, deadline: str, retry: str
) -> None:
    monkeypatch.setenv("RDO_LEASE_DURATION_SECONDS", duration)
    monkeypatch.setenv("RDO_LEASE_RENEW_DEADLINE_SECONDS", deadline)
    monkeypatch.setenv("RDO_LEASE_RETRY_PERIOD_SECONDS", retry)
    with pytest.raises(ValidationError, match="lease_duration_seconds > "):
        Settings()


def test_lease_defaults_take_over_well_within_15_seconds() -> None:
    """Worst case after the leader dies: a standby sees its last renewal up to one retry period
    late, waits the duration, and notices expiry up to one retry period late."""
    s = Settings()
    assert s.lease_duration_seconds + 2 * s.lease_retry_period_seconds <= 10
    assert s.lease_duration_seconds > s.lease_renew_deadline_seconds
