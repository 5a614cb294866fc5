"""`python -m remote_docker_operator`: runs the operator (all namespaces), once this replica holds
the leader Lease (leader.py)."""

import asyncio
import logging

import kopf

from . import handlers, leader, metrics  # importing handlers registers them
from .config import get_settings
from .kube import load_config


def main() -> None:
    settings = get_settings()
    debug = settings.log_level == "DEBUG"
    kopf.configure(
        verbose=debug, log_format=kopf.LogFormat[settings.log_format.upper()], log_prefix=True
    )
    if not debug:
        # kopf says "Handler succeeded" for every event and timer tick; our own log lines say
        # what actually happened ("Created engine pod", phase changes). Failures still show.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # Peering (standalone or not) is decided in handlers.startup with kopf's other settings.
    # Metrics before kopf starts, and once: kopf may retry its startup handler, a port binds
    # once. A standby serves them too, with no BuildJobs: it has seen none.
    metrics.serve(settings.metrics_port)
    liveness = settings.liveness_endpoint or None
    elector = None
    if settings.leader_election:
        load_config(pool_size=handlers.WORKERS)
        elector = leader.lead(settings, liveness)
    try:
        asyncio.run(kopf.operator(clusterwide=True, liveness_endpoint=liveness))
    finally:
        if elector is not None:
            elector.release()


if __name__ == "__main__":
    main()
