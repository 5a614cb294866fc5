"""kopf's API session: a bounded pool that cleans up closed TLS transports (memory, issue 10)."""

import asyncio
import json
import logging
from pathlib import Path

import aiohttp.connector
import kopf
import pytest
from kopf._core.intents.causes import Activity
from kubernetes.config import kube_config

from remote_docker_operator import handlers, kopfclient


def test_login_is_the_operators_own() -> None:
    """kopf uses its own login (and its own unbounded pool) unless one is registered."""
    registry = kopf.get_default_registry()
    # What kopf runs to log in: registered handlers, else its fallbacks (login_via_client).
    logins = [h.fn for h in registry._activities.get_handlers(activity=Activity.AUTHENTICATION)]
    assert logins == [kopfclient.login]
    assert handlers.kopfclient is kopfclient


def test_session_has_a_bounded_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": "https://127.0.0.1:6443",
                            "insecure-skip-tls-verify": True,
                        },
                    }
                ],
                "users": [{"name": "u", "user": {"token": "secret-token"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    # The client reads $KUBECONFIG once, at import.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    async def login() -> tuple[int, bool, str | None, str]:
        context = await kopfclient.login(
            logger=logging.getLogger("test"), settings=kopf.OperatorSettings()
        )
        session = context.aiohttp_session
        try:
            connector = session.connector
            assert isinstance(connector, aiohttp.TCPConnector)
            return (
                connector.limit,
                connector._cleanup_closed_disabled,
                session.headers.get("Authorization"),
                context.server,
            )
        finally:
            await session.close()

    limit, cleanup_disabled, auth, server = asyncio.run(login())
    assert limit == kopfclient.CONNECTIONS > 0  # kopf's own is 0: unlimited
    # Aborting closed TLS transports where the running Python leaks them (< 3.12.8, 3.13.0).
    assert cleanup_disabled is not aiohttp.connector.NEEDS_CLEANUP_CLOSED
    assert auth == "Bearer secret-token"
    assert server == "https://127.0.0.1:6443"
