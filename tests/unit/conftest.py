from typing import Any

import pytest

from remote_docker_operator.builders import Target
from remote_docker_operator.config import Settings
from remote_docker_operator.models import BuildJobSpec

UID = "0b5e6a52-2f9e-4c56-9a1d-7d3c2c1e9f00"


def make_target(spec: dict[str, Any] | None = None, **settings: Any) -> Target:
    spec = spec or {
        "job": {"image": "docker:27-cli", "command": ["sh", "-c"], "args": ["docker version"]}
    }
    return Target("app-build", "ci", UID, BuildJobSpec.model_validate(spec), Settings(**settings))


@pytest.fixture
def target() -> Target:
    return make_target()
