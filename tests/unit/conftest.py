from typing import Any

import pytest

from remote_docker_operator.builders import Target

from ..support import make_target as _make_target

UID = "0b5e6a52-2f9e-4c56-9a1d-7d3c2c1e9f00"


def make_target(
    spec: dict[str, Any] | None = None, engine_class: dict[str, Any] | None = None, **settings: Any
) -> Target:
    return _make_target(spec, engine_class, uid=UID, **settings)


@pytest.fixture
def target() -> Target:
    return make_target()
