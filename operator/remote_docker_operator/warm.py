"""Warm pools, the deciding half: which warm engines a class keeps, drops and hands out.

Pure functions over `Member`s (pool.py acts on what they return). A warm engine is started from
its class's defaults alone, so it can serve exactly the BuildJobs and DockerEngines whose
resolved engine is those defaults; anything else they ask for starts a cold engine.
"""

import datetime
import math
from dataclasses import dataclass, field

from . import builders
from .certs import Authority
from .classes import Engine
from .models import WarmPool

# A warm engine not ready this long after it was started (an image that will not pull, a node
# that will not schedule it) is dropped, and its class waits before starting more.
START_TIMEOUT_SECONDS = 600
# Failures in a row back a class's refills off twice as long each time, up to this.
MAX_BACKOFF_SECONDS = 300.0


@dataclass
class Member:
    """A warm engine this operator started (its CA key is in `authority`, in memory only)."""

    id: str  # the warm id: its namespace's name ends in its hash
    class_name: str
    namespace: str
    engine: Engine  # what it was started as
    created: datetime.datetime
    authority: Authority = field(repr=False)
    # The engine pod's activeDeadlineSeconds: its idle life and the longest job it takes.
    pod_deadline_seconds: int
    ready: bool = False
    claimed: bool = False
    # The uid of each child the pool made, by (kind, name): the claim's preconditions, so it
    # rebuilds each child for its claimant in one write instead of reading it first.
    uids: dict[tuple[str, str], str] = field(default_factory=dict)

    def age(self, now: datetime.datetime) -> float:
        return (now - self.created).total_seconds()


@dataclass(frozen=True)
class Plan:
    start: int
    drop: list[tuple[Member, str]]


def plan(
    pool: WarmPool | None, engine: Engine | None, members: list[Member], now: datetime.datetime
) -> Plan:
    """What the class's pool needs now: members to drop (and why) and how many to start.
    pool/engine None: the class is gone or has no pool (or no longer resolves): drop all."""
    idle = [m for m in members if not m.claimed]
    if pool is None or engine is None:
        return Plan(0, [(m, "its class has no warm pool") for m in idle])
    drop: list[tuple[Member, str]] = []
    keep: list[Member] = []
    for m in idle:
        if m.engine != engine:
            drop.append((m, "its class changed"))
        elif m.ready and m.age(now) > pool.max_idle_seconds:
            drop.append((m, f"idle past maxIdleSeconds ({pool.max_idle_seconds}s)"))
        elif not m.ready and m.age(now) > START_TIMEOUT_SECONDS:
            drop.append((m, f"not ready within {START_TIMEOUT_SECONDS}s"))
        else:
            keep.append(m)
    # A smaller pool: the starting ones go first, then the oldest.
    keep.sort(key=lambda m: (m.ready, -m.age(now)))
    surplus = max(len(keep) - pool.size, 0)
    drop += [(m, "the pool is smaller now") for m in keep[:surplus]]
    return Plan(max(pool.size - len(keep), 0), drop)


def fits(member: Member, t: builders.Target, now: datetime.datetime) -> bool:
    """Whether the warm engine can be this BuildJob's (or DockerEngine's) as it is: ready,
    not handed out, the same engine, the plain Service (published ports make it headless), and
    pod life enough left for the job's deadline."""
    return (
        member.ready
        and not member.claimed
        and member.engine == t.engine
        and t.spec.network.published_ports is None
        and claimed_pod_deadline(member, t, now) <= member.pod_deadline_seconds
    )


def claimed_pod_deadline(member: Member, t: builders.Target, now: datetime.datetime) -> int:
    """The engine pod's activeDeadlineSeconds once claimed (counted from the pod's start, which
    was after the member's creation): what it has lived plus the job's own pod deadline."""
    return math.ceil(member.age(now)) + t.pod_deadline_seconds


def backoff_seconds(failures: int) -> float:
    return 0.0 if failures <= 0 else min(2.0 ** (failures - 1), MAX_BACKOFF_SECONDS)


def pod_deadline_seconds(pool: WarmPool, default_deadline_seconds: int) -> int:
    """A warm engine pod's activeDeadlineSeconds: its idle life, then a job of the default
    deadline (and the margin every engine pod has)."""
    return pool.max_idle_seconds + default_deadline_seconds + builders.POD_DEADLINE_MARGIN_SECONDS
