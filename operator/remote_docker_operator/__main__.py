"""`python -m remote_docker_operator`: runs the operator (all namespaces, one replica)."""

import asyncio
import logging
import os

import kopf

from . import handlers, metrics  # importing handlers registers them


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
    # Before kopf starts, and once: kopf may retry its startup handler, a port binds once.
    metrics.serve(handlers.SETTINGS.metrics_port)
    liveness = os.environ.get("RDO_LIVENESS_ENDPOINT", "http://0.0.0.0:8080/healthz")
    asyncio.run(
        kopf.operator(clusterwide=True, standalone=True, liveness_endpoint=liveness or None)
    )


if __name__ == "__main__":
    main()
