"""`python -m remote_docker_operator`: runs the operator (all namespaces, one replica)."""

import asyncio
import os

import kopf

from . import handlers  # noqa: F401  (registers the handlers)


def main() -> None:
    liveness = os.environ.get("RDO_LIVENESS_ENDPOINT", "http://0.0.0.0:8080/healthz")
    asyncio.run(
        kopf.operator(clusterwide=True, standalone=True, liveness_endpoint=liveness or None)
    )


if __name__ == "__main__":
    main()
