"""What the operator remembers of one BuildJob or DockerEngine between triggers."""

import threading
from dataclasses import dataclass, field

from pydantic import ValidationError

from . import names
from . import status as st
from .builders import Target
from .cache import Volume
from .kube import Obj
from .models import BuildJob, DockerEngine, DockerEngineSpec, EngineRequestSpec


@dataclass
class JobState:
    uid: str
    namespace: str
    name: str
    created: str  # creationTimestamp: the queue's order (to the second)
    seen: int  # the order this operator first saw it in: breaks ties within a second
    generation: int | None
    spec: EngineRequestSpec | None
    invalid: str | None  # why the spec cannot work, when it cannot
    status: st.Status
    # Never read from the BuildJob (its status is writable by more than the operator): the
    # namespace this operator found labelled for the uid at start-up, else made from the prefix.
    job_namespace: str
    kind: str = names.KIND  # or names.DOCKER_ENGINE_KIND: an engine for a pod of the tenant's
    # The warm engine it claimed (builders.Target.warm_id): its children, labelled for that id
    # until the claim relabels them, are this one's.
    warm_id: str | None = None
    # Its children's uids as the pool made them, by (kind, name), until Children.ensure has
    # rebuilt each for it (its TLS Secret is relabelled by ensure_tls, which compares the pair).
    warm_uids: dict[tuple[str, str], str] = field(default_factory=dict)
    # Its layer cache: whether a volume was looked for (and which kept one it got: None, a new
    # one), and whether the one it runs on is kept for its key.
    cache_taken: bool = False
    cache_volume: Volume | None = None
    cache_kept: bool = False
    # The BuildJob with its class resolved; set when it is admitted, or found running.
    target: Target | None = None
    deleting: bool = False
    gone: bool = False
    admitted: bool = False
    provisioned: bool = False
    cleaned: bool = False  # engine (and a cut-short job's pod) deleted after finishing
    # Provisioning was written in this very step: no child exists yet, nothing needs reading.
    started_here: bool = False
    client_bound: bool = False  # a DockerEngine's client pod carries its label (as last read)
    retries: int = 0  # requeues in a row (errors.NotYet): the next one waits twice as long
    # The newest body of each child pod from the pod watch (None: deleted), so that following
    # a job costs no reads; a pod not seen yet is read from the API server.
    pods: dict[str, Obj | None] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def phase(self) -> str | None:
        return self.status.get("phase")

    @property
    def live(self) -> bool:
        return not self.deleting and not self.gone

    @property
    def order(self) -> tuple[str, int]:
        return self.created, self.seen

    @property
    def for_client(self) -> bool:
        """A DockerEngine: its "job pod" is the tenant's client pod, never made or deleted here."""
        return self.kind == names.DOCKER_ENGINE_KIND

    @property
    def job_pod(self) -> str:
        """The name of the job pod, or of a DockerEngine's client pod ("" while unknown)."""
        if not self.for_client:
            return names.job_pod(self.name)
        spec = self.spec
        return spec.client_pod.name if isinstance(spec, DockerEngineSpec) else ""

    @property
    def client_secret(self) -> str:
        return names.client_secret(self.name, self.kind)

    @property
    def ready_condition(self) -> str:
        return st.READY if self.for_client else st.ENGINE_READY

    @property
    def cached(self) -> bool:
        """Its engine's /var/lib/docker is a cache volume (spec.engine.cacheKey)."""
        return self.spec is not None and self.spec.engine.cache_key is not None

    @property
    def ref(self) -> Obj:
        return {
            "apiVersion": names.API_VERSION,
            "kind": self.kind,
            "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid},
        }


def parse_spec(body: Obj, kind: str = names.KIND) -> tuple[EngineRequestSpec | None, str | None]:
    model = DockerEngine if kind == names.DOCKER_ENGINE_KIND else BuildJob
    try:
        job = model.model_validate({"spec": body.get("spec")})
    except ValidationError as e:
        first = e.errors()[0]
        where = "spec." + ".".join(str(p) for p in first["loc"][1:])
        return None, f"{where}: {first['msg']}"
    return job.spec, None
