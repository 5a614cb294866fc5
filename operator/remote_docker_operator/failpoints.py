"""Test-only crash switch: RDO_FAILPOINT=<step> makes the operator SIGKILL itself right after
that reconcile step, so the fault tests can prove a restart converges. Off by default."""

import os
import signal

from .config import get_settings

STEPS = (
    "namespace",
    "policies",
    "service",
    "tls",
    "engine-pod",
    "job-pod",
    "quota",
    "finished",
)
# A DockerEngine's step instead of "job-pod": its client pod labelled and made its owner.
CLIENT_STEPS = ("client-bound",)
# A warm engine claimed (its namespace relabelled, the client Secret written), before the status
# says so.
WARM_STEPS = ("warm-claimed",)


def reached(step: str) -> None:
    if get_settings().failpoint == step:
        os.kill(os.getpid(), signal.SIGKILL)
