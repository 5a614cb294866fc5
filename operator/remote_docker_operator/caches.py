"""Layer caches, the acting half: takes a key's kept volume for an engine, keeps a new one,
releases it when the engine stops and deletes those unused past their retention (cache.py
decides which)."""

import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass

from . import cache, names
from .builders import Target
from .cache import Volume
from .kube import Kube, Obj

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Taken:
    """What an engine starts on: a kept volume (a hit), or a new one (volume None); busy: every
    kept volume is in use and the class says to wait."""

    volume: Volume | None
    busy: bool = False


class Caches:
    def __init__(self, kube: Kube, clock: Callable[[], datetime.datetime]) -> None:
        self.kube = kube
        self.clock = clock

    def _volumes(self, cache_id: str | None = None) -> list[Obj]:
        selector = f"{names.LABEL_MANAGED_BY}={names.APP},{names.LABEL_CACHE}"
        if cache_id:
            selector += f"={cache_id}"
        return self.kube.list("PersistentVolume", selector)

    def take(self, t: Target) -> Taken:
        """A free volume of the engine's cache, pre-bound to its claim-to-be; or none."""
        wanted = t.engine.cache
        assert wanted is not None, "only a cached engine takes a cache"
        found = self._volumes(wanted.id)
        for pv in cache.candidates(found):
            # The version read is the precondition: one other engine taking it first wins.
            patch = cache.take_patch(pv, t.job_namespace, self.clock())
            if self.kube.patch("PersistentVolume", "", pv["metadata"]["name"], patch):
                logger.info("%s takes cache volume %s", t.job_namespace, pv["metadata"]["name"])
                return Taken(cache.volume(pv))
        return Taken(None, busy=bool(found) and wanted.when_busy == "Wait")

    def keep(self, t: Target) -> str | None:
        """Once the engine runs: its volume (bound by now) made the cache's and kept; returns
        its name (None: the claim is not bound, or gone)."""
        wanted = t.engine.cache
        assert wanted is not None
        claim = self.kube.get("PersistentVolumeClaim", t.job_namespace, names.CACHE_CLAIM)
        name = ((claim or {}).get("spec") or {}).get("volumeName")
        if not name:
            return None
        if self.kube.patch("PersistentVolume", "", name, cache.keep_patch(wanted, self.clock())):
            return str(name)
        return None

    def release(self, job_namespace: str) -> None:
        """The engine stopped: its claim goes (once its pod has, the volume is Released and free
        for the key's next engine), and the volume it holds says when it was last used."""
        claim = self.kube.get("PersistentVolumeClaim", job_namespace, names.CACHE_CLAIM)
        if claim is None:
            return
        meta = claim["metadata"]
        volume = (claim.get("spec") or {}).get("volumeName")
        if volume:
            self.kube.patch("PersistentVolume", "", volume, cache.used_patch(self.clock()))
        self.kube.delete("PersistentVolumeClaim", job_namespace, meta["name"], meta["uid"])

    def expire(self) -> list[str]:
        """Deletes the cache volumes unused past their retention; returns their names."""
        now = self.clock()
        gone = []
        for pv in self._volumes():
            if not cache.expired(pv, now):
                continue
            name = pv["metadata"]["name"]
            # Its provisioner deletes what it holds, then the volume object.
            if self.kube.patch("PersistentVolume", "", name, cache.expire_patch(pv)):
                gone.append(name)
        for name in gone:
            logger.info("Cache volume %s unused past its retention: deleted", name)
        return gone
