"""`python -m remote_docker_operator`: runs the operator (all namespaces, one replica)."""

import asyncio
import logging

import kopf

from . import handlers, metrics  # noqa: F401  (importing handlers registers them)
from .config import get_settings


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
    # once.
    metrics.serve(settings.metrics_port)
    asyncio.run(
        kopf.operator(clusterwide=True, liveness_endpoint=settings.liveness_endpoint or None)
    )


if __name__ == "__main__":
    main()
