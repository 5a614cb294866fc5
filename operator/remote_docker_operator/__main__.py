"""`python -m remote_docker_operator`: runs the operator (all namespaces), once this replica holds
the leader Lease (leader.py)."""

import asyncio
import logging
from pathlib import Path

import kopf

from . import handlers, leader, metrics, webhook  # importing handlers registers them
from .config import get_settings
from .kube import Kube, load_config


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
    if settings.leader_election or settings.webhook_port:
        load_config(pool_size=handlers.WORKERS)
    if settings.webhook_port:
        # Every replica, the standbys too: admission is stateless, and a pod asking for an
        # engine must not wait for a new leader.
        admitter = webhook.Admitter(Kube(), settings.wait_image, settings.wait_image_pull_policy)
        webhook.serve(settings.webhook_port, Path(settings.webhook_cert_dir), admitter)
    if settings.leader_election:
        elector = leader.lead(settings, liveness)
    try:
        asyncio.run(kopf.operator(clusterwide=True, liveness_endpoint=liveness))
    finally:
        if elector is not None:
            elector.release()


if __name__ == "__main__":
    main()
