"""`python -m remote_docker_operator`: runs the operator (all namespaces), once this replica holds
the leader Lease (leader.py)."""

import asyncio
import logging
import os

import kopf

from . import handlers, leader  # importing handlers registers them
from .config import get_settings
from .kube import load_config


def main() -> None:
    debug = os.environ.get("RDO_LOG_LEVEL", "").upper() == "DEBUG"
    kopf.configure(
        verbose=debug,
        log_format=kopf.LogFormat.JSON
        if os.environ.get("RDO_LOG_FORMAT") == "json"
        else kopf.LogFormat.FULL,
        log_prefix=True,
    )
    if not debug:
        # kopf says "Handler succeeded" for every event and timer tick; our own log lines say
        # what actually happened ("Created engine pod", phase changes). Failures still show.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    liveness = os.environ.get("RDO_LIVENESS_ENDPOINT", "http://0.0.0.0:8080/healthz")
    settings = get_settings()
    elector = None
    if settings.leader_election:
        load_config(pool_size=handlers.WORKERS)
        elector = leader.lead(settings, liveness or None)
    try:
        asyncio.run(
            kopf.operator(clusterwide=True, standalone=True, liveness_endpoint=liveness or None)
        )
    finally:
        if elector is not None:
            elector.release()


if __name__ == "__main__":
    main()
