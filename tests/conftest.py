"""Fixtures both cluster tiers share; each tier's conftest provides `cluster` and
`operator_env`."""

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.config import new_client_from_config

from .support import Kube, OperatorProcess


@pytest.fixture(scope="session")
def kube(cluster: Any) -> Kube:
    return Kube(new_client_from_config(str(cluster.kubeconfig)))


@pytest.fixture(scope="session")
def operator(cluster: Any, operator_env: dict[str, str]) -> Iterator[OperatorProcess]:
    """The operator as a real process, for the whole session."""
    op = OperatorProcess(cluster.kubeconfig, cluster.logs / "operator.log", **operator_env)
    op.start()
    yield op
    op.stop()
