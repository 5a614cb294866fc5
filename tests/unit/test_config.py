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
