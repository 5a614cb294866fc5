"""remote-docker's API client as data: how a pod's ServiceAccount becomes its connection. (Its
calls run against a real API server in tests/integration/test_engine_cli.py.)"""

import datetime
from pathlib import Path

import pytest

from remote_docker_operator import certs, kubeapi

ENV = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def service_account(directory: Path) -> Path:
    directory.mkdir()
    (directory / "token").write_text("tok\n")
    ca = certs.issue(["localhost"], [], datetime.timedelta(hours=1)).ca_cert
    (directory / "ca.crt").write_text(ca)
    return directory


def test_a_pod_uses_its_service_account_at_the_kubernetes_service(tmp_path: Path) -> None:
    api = kubeapi.in_cluster(ENV, service_account(tmp_path / "sa"))
    assert api.url == "https://10.96.0.1:443"
    assert dict(api.headers) == {"Authorization": "Bearer tok"}
    assert api.context is not None
    assert api.context.verify_mode.name == "CERT_REQUIRED"
    v6 = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}
    assert kubeapi.in_cluster(v6, tmp_path / "sa").url == "https://[fd00::1]:6443"


def test_outside_a_pod_it_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(kubeapi.NotConfigured, match="KUBERNETES_SERVICE_HOST"):
        kubeapi.in_cluster({}, service_account(tmp_path / "sa"))
    with pytest.raises(kubeapi.NotConfigured, match="no ServiceAccount token"):
        kubeapi.in_cluster(ENV, tmp_path / "none")
