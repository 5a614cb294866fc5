import pytest
from pydantic import ValidationError

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
    ],
)
def test_bad_env_is_refused(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError):
        Settings()


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
