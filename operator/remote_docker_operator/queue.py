"""The queue: which waiting BuildJobs may start now. Pure over the JobStates it is given; the
reconciler holds the lock that makes "decide and mark admitted" one step.

At most max_running BuildJobs provision or run at once, and at most an EngineClass's
maxEnginesPerNamespace of that class in one namespace; the rest start in creation order as
slots free up.
"""

from collections.abc import Iterable

from .decide import ACTIVE_PHASES
from .jobstate import JobState

WAITING_PHASES = (None, "Pending")


def waiting_for(state: JobState, jobs: Iterable[JobState], max_running: int) -> str | None:
    """None when `state` may start now, else what it waits for."""
    jobs = list(jobs)
    capped = _class_cap(state, jobs)
    if capped is not None:
        return capped
    if max_running == 0:
        return None
    # Admitted but not yet written as Provisioning counts too: two threads must not both take
    # the last slot.
    active = sum(
        1
        for s in jobs
        if s.live and (s.phase in ACTIVE_PHASES or (s.admitted and s.phase in WAITING_PHASES))
    )
    waiting = sorted(
        s.order
        for s in jobs
        if s.phase in WAITING_PHASES and not s.admitted and s.live and s.spec is not None
    )
    rank = waiting.index(state.order) if state.order in waiting else len(waiting)
    if rank < max_running - active:
        return None
    return f"waiting: {max_running} BuildJobs are running (the operator's maxRunning)"


def _class_cap(state: JobState, jobs: list[JobState]) -> str | None:
    t = state.target
    if t is None or t.engine.max_per_namespace == 0:
        return None
    same = [
        s
        for s in jobs
        if s is not state
        and s.namespace == state.namespace
        and s.target is not None
        and s.target.engine.class_name == t.engine.class_name
        and s.live
    ]
    active = sum(1 for s in same if s.admitted or s.phase in ACTIVE_PHASES)
    earlier = sum(
        1 for s in same if not s.admitted and s.phase in WAITING_PHASES and s.order < state.order
    )
    if active + earlier < t.engine.max_per_namespace:
        return None
    return (
        f"waiting: {t.engine.max_per_namespace} engines of EngineClass "
        f"{t.engine.class_name!r} run in namespace {state.namespace} "
        "(its maxEnginesPerNamespace)"
    )


def next_up(jobs: Iterable[JobState], max_running: int) -> list[JobState]:
    """The waiting BuildJobs that may get a free slot, oldest first."""
    waiting = sorted(
        (s for s in jobs if s.phase == "Pending" and not s.admitted and not s.deleting),
        key=lambda s: s.order,
    )
    return waiting[:max_running] if max_running else waiting
