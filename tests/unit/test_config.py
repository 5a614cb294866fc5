import pytest
from pydantic import ValidationError

from remote_docker_operator.config import Settings


def test_defaults_deny_private_ranges_and_metadata() -> None:
    s = Settings()
    assert "169.254.0.0/16" in s.denied_cidrs
    assert s.max_running == 0
    assert s.namespace_prefix == "bj-"


def test_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RDO_DENIED_CIDRS", "10.96.0.0/12, 10.244.0.0/16,192.0.2.1")
    monkeypatch.setenv("RDO_MAX_RUNNING", "3")
    monkeypatch.setenv("RDO_ENGINE_VERSION", "26")
    s = Settings()
    assert s.denied_cidrs == ["10.96.0.0/12", "10.244.0.0/16", "192.0.2.1/32"]
    assert s.max_running == 3
    assert s.engine_version == "26"
    monkeypatch.setenv("RDO_DENIED_CIDRS", '["fd00::/8"]')
    assert Settings().denied_cidrs == ["fd00::/8"]


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("RDO_DENIED_CIDRS", "not-a-cidr"),
        ("RDO_DEFAULT_DEADLINE_SECONDS", "0"),
        ("RDO_NAMESPACE_PREFIX", "Bad_"),
        ("RDO_MAX_RUNNING", "-1"),
    ],
)
def test_bad_env_is_refused(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError):
        Settings()
