"""The objects one BuildJob or DockerEngine owns: read, made, adopted, put back as built and
deleted, each only when it is that owner's (its labels, and a namespace's name, say so).

The reconciler (reconcile.py) decides when; this module knows how each child is made safely:
creates that meet what exists (409) adopt it only if it is the owner's, the TLS pair is made
whole from one CA, a pod the API server refuses becomes the refusal that names the field, and
a DockerEngine's client pod (the tenant's own) is read and labelled, never made or deleted.
"""

import datetime
import json
import logging
from collections.abc import Callable

from kubernetes.client.exceptions import ApiException

from . import builders, certs, decide, failpoints, names, pods
from .builders import Target
from .config import Settings
from .errors import ChildLost, ForeignObject, InvalidSpec, NotYet
from .jobstate import JobState
from .kube import Kube, Obj

logger = logging.getLogger(__name__)

# A new namespace's "default" ServiceAccount appears a moment after the namespace.
SA_RETRY_SECONDS = 0.1
# Certificates outlive the deadline by this much: enough for the job's last `docker` calls.
CERT_MARGIN = datetime.timedelta(hours=1)


class Children:
    def __init__(
        self, kube: Kube, settings: Settings, clock: Callable[[], datetime.datetime]
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.clock = clock

    @staticmethod
    def pod_place(state: JobState, role: str) -> tuple[str, str]:
        """Namespace and name of the engine pod or the job pod (a DockerEngine's: its client
        pod) (role: ENGINE_POD or JOB_POD)."""
        if role == names.ENGINE_POD:
            return state.job_namespace, names.ENGINE_POD
        return state.namespace, state.job_pod

    def pod(self, state: JobState, role: str, fresh: bool = False) -> Obj | None:
        if state.for_client and role == names.JOB_POD:
            return self.client(state, fresh)
        if state.started_here and role not in state.pods:
            state.pods[role] = None
        if fresh or role not in state.pods:
            namespace, name = self.pod_place(state, role)
            pod = self.owned(state, "Pod", name, namespace)
            state.pods[role] = None if pod is None else pods.essence(pod)
        return state.pods[role]

    def client(self, state: JobState, fresh: bool) -> Obj | None:
        """A DockerEngine's client pod: the tenant's own, read as it is (no events come for
        it) while provisioning and at each resync."""
        if fresh or state.phase == "Provisioning" or names.JOB_POD not in state.pods:
            pod = self.kube.get("Pod", state.namespace, state.job_pod)
            labels = ((pod or {}).get("metadata") or {}).get("labels") or {}
            state.client_bound = labels.get(names.client_label(state.uid)) == "true"
            state.pods[names.JOB_POD] = None if pod is None else pods.essence(pod)
        return state.pods[names.JOB_POD]

    def bind_client(self, state: JobState) -> None:
        """Makes the client pod the DockerEngine's owner (the garbage collector deletes the
        DockerEngine, and so the operator its engine, when the pod goes, even while no operator
        runs), then labels the pod, which the engine's policy admits by that label. In that
        order: the label is what says it is done."""
        client = state.pods.get(names.JOB_POD)
        assert client is not None, "a client pod is bound only once read"
        pod, pod_uid = client["metadata"]["name"], client["metadata"]["uid"]
        owner = self.kube.get(state.kind, state.namespace, state.name)
        if owner is None or owner["metadata"]["uid"] != state.uid:
            state.gone = True
            return
        meta = owner["metadata"]
        owners = meta.get("ownerReferences") or []
        if not any(o.get("uid") == pod_uid for o in owners):
            ref = {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": pod_uid}
            # Beside the owners it has (a CI system's own); the version read is a precondition.
            patch = [
                {
                    "op": "test",
                    "path": "/metadata/resourceVersion",
                    "value": meta["resourceVersion"],
                },
                {"op": "add", "path": "/metadata/ownerReferences", "value": [*owners, ref]},
            ]
            if not self.kube.patch(state.kind, state.namespace, state.name, patch):
                raise NotYet(f"{state.kind} {state.name} changed while being bound; again", 1)
        # The uid read is a precondition: a pod made since under that name is not labelled.
        label = {"metadata": {"uid": pod_uid, "labels": {names.client_label(state.uid): "true"}}}
        if not self.kube.patch("Pod", state.namespace, pod, label):
            state.pods.pop(names.JOB_POD, None)
            raise NotYet(f"client pod {state.namespace}/{pod} changed; reading it again", 1)
        state.client_bound = True

    def owned(
        self, state: JobState, kind: str, name: str | None = None, namespace: str | None = None
    ) -> Obj | None:
        """The child of that kind and name (no name: the job namespace itself; no namespace:
        in the job namespace), if it is this BuildJob's; ForeignObject if something else
        stands there."""
        if kind == "Namespace":
            obj = self.kube.get(kind, None, state.job_namespace)
            where = state.job_namespace
        else:
            assert name is not None
            namespace = namespace or state.job_namespace
            obj = self.kube.get(kind, namespace, name)
            where = f"{namespace}/{name}"
            if obj is not None and self._claimed_warm(state, obj, namespace):
                obj = self._relabel(state, obj)
        if obj is not None and not self.is_ours(state, obj):
            labels = obj["metadata"].get("labels") or {}
            if (
                namespace == state.namespace
                and labels.get(names.LABEL_MANAGED_BY) == names.APP
                and labels.get(names.LABEL_OWNER_NAME) == state.name
                and names.owner_kind(labels) == state.kind
            ):
                # The owner was deleted and made again under its name: its predecessor's job
                # pod, Secret or policy goes with it (the garbage collector, by their
                # ownerReference), which takes a moment.
                raise NotYet(f"{kind} {where} of an earlier {state.kind} {state.name} is going", 1)
            raise ForeignObject(
                f"{kind} {where} exists but was not made by the operator for this BuildJob; "
                "it was left alone and nothing of this BuildJob was put in it"
            )
        return obj

    @staticmethod
    def _claimed_warm(state: JobState, obj: Obj, namespace: str) -> bool:
        """A child of the warm engine this one claimed, not relabelled for it yet."""
        labels = obj["metadata"].get("labels") or {}
        return (
            state.warm_id is not None
            and namespace == state.job_namespace
            and labels.get(names.LABEL_MANAGED_BY) == names.APP
            and labels.get(names.LABEL_OWNER_UID) == state.warm_id
            and names.owner_kind(labels) == names.CLASS_KIND
        )

    def _relabel(self, state: JobState, obj: Obj) -> Obj:
        """Makes a claimed warm engine's child this owner's (the uid read as precondition)."""
        meta = obj["metadata"]
        patched = self.kube.patch(
            obj["kind"], meta["namespace"], meta["name"], claim_patch(state, meta["uid"])
        )
        if patched is None:
            raise NotYet(f"{obj['kind']} {meta['name']} changed while being claimed", 0.1)
        return patched

    def is_ours(self, state: JobState, obj: Obj) -> bool:
        meta = obj.get("metadata") or {}
        if obj.get("kind") == "Namespace":
            # Made before its BuildJob existed: someone guessed the name ahead of us (a warm
            # engine's was, but is named after its own id, which only the operator labels).
            labels = meta.get("labels") or {}
            return names.owns_namespace(obj, state.uid) and (
                meta.get("creationTimestamp", "") >= state.created
                or names.LABEL_WARM_ENGINE in labels
            )
        labels = meta.get("labels") or {}
        return (
            labels.get(names.LABEL_MANAGED_BY) == names.APP
            and labels.get(names.LABEL_OWNER_UID) == state.uid
        )

    def make(self, state: JobState, t: Target, check_first: bool) -> None:
        """Everything but the pods, in dependency order; each create adopts what exists, and
        only if it is this BuildJob's (ForeignObject otherwise)."""
        ns = self.ensure(state, builders.build_namespace(t), check_first)
        if ns.get("status", {}).get("phase") == "Terminating" or ns["metadata"].get(
            "deletionTimestamp"
        ):
            raise ChildLost(f"namespace {t.job_namespace} is being deleted")
        failpoints.reached("namespace")
        limits = builders.build_limit_range(t)
        if limits is not None:
            self.ensure(state, limits, check_first)
        for policy in builders.build_network_policies(t):
            self.ensure(state, policy, check_first)
        if not state.for_client:
            self.ensure(state, builders.build_job_policy(t), check_first)
        failpoints.reached("policies")
        service = self.ensure(state, builders.build_engine_service(t), check_first)
        failpoints.reached("service")
        self.ensure_tls(state, t, service["spec"].get("clusterIP"))
        failpoints.reached("tls")
        if t.engine.cache is not None:
            kept = state.cache_volume
            built = builders.build_cache_claim(t, kept)
            claim = self.ensure(state, built, check_first)
            if kept is not None and (claim.get("status") or {}).get("phase") != "Bound":
                # The PV controller binds a kept volume to its new claim (now and then only at
                # its resync, 15 s); an engine pod made before that is unschedulable until the
                # scheduler tries again, which may be later still.
                raise NotYet(f"claim {names.CACHE_CLAIM} not bound to its volume yet", 0.2)
        state.provisioned = True

    def ensure(self, state: JobState, manifest: Obj, check_first: bool) -> Obj:
        """Creates the child, or adopts the one that exists when it is this BuildJob's; with
        check_first, one that is no longer what was built is put back as built."""
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        where = manifest["metadata"].get("namespace")
        uid = state.warm_uids.pop((kind, name), None)
        if uid is not None and (rebuilt := self._rebuild(manifest, uid)) is not None:
            return rebuilt
        if check_first and (existing := self.owned(state, kind, name, where)) is not None:
            # A claimed warm engine's children were built for nobody: rebuilt, not drift.
            claiming = state.warm_id is not None and not state.provisioned
            return self.revert(manifest, existing, quiet=claiming)
        created = self.kube.create(manifest)
        if created is not None:
            return created
        existing = self.owned(state, kind, name, where)
        if existing is None:  # deleted between our 409 and our read: try once more
            return self.ensure(state, manifest, check_first=False)
        logger.info("Adopted existing %s %s", kind.lower(), name)
        # Something was made before after all (a previous operator's work): read before
        # creating from here on.
        state.started_here = False
        return existing

    def _rebuild(self, manifest: Obj, uid: str) -> Obj | None:
        """A claimed warm engine's child, made this owner's as built, in one write; None when
        it is gone or another object stands there (ensure then reads what does). The uid the
        pool made it with is the precondition, and nobody but the operator writes in a job
        namespace: what the write replaces is the pool's own."""
        body = {**manifest, "metadata": {**manifest["metadata"], "uid": uid}}
        try:
            return self.kube.replace(body)
        except ApiException as e:
            # 404 gone; 409 or 422, another uid there (the API server refuses to change it).
            if e.status in (404, 409, 422):
                return None
            raise

    def revert(self, built: Obj, existing: Obj, quiet: bool = False) -> Obj:
        if not decide.drifted(built, existing):
            return existing
        meta = existing["metadata"]
        # The resourceVersion read: a change made since then is seen at the next check.
        body = {
            **built,
            "metadata": {**built["metadata"], "resourceVersion": meta["resourceVersion"]},
        }
        logger.log(
            logging.DEBUG if quiet else logging.WARNING,
            "Reverted %s %s: it was changed from what the operator built",
            built["kind"].lower(),
            "/".join(filter(None, (meta.get("namespace"), meta["name"]))),
        )
        return self.kube.replace(body)

    def check_references(self, t: Target) -> None:
        """What the job pod will use of the BuildJob's namespace, read before the pod is made:
        one missing or not fit is a refusal that names the field, not a pod stuck waiting for a
        volume (or an account the namespace's owner never opened to BuildJobs)."""
        account = t.job_spec.job.service_account_name
        if account:
            field = "spec.job.serviceAccountName"
            found = self.kube.get("ServiceAccount", t.namespace, account)
            if found is None:
                raise InvalidSpec(f"{field}: ServiceAccount {t.namespace}/{account} not found")
            annotations = found["metadata"].get("annotations") or {}
            if annotations.get(names.ANNOTATION_JOB_ACCOUNT) != "true":
                raise InvalidSpec(
                    f"{field}: ServiceAccount {t.namespace}/{account} is not open to BuildJobs: "
                    f"its namespace's owner opens it with the annotation "
                    f'{names.ANNOTATION_JOB_ACCOUNT}: "true"'
                )
        self._check_secrets(t)

    def _check_secrets(self, t: Target) -> None:
        """The registry credentials the job pod will use: one missing or of another kind is a
        refusal that names the field."""
        spec = t.job_spec
        wanted: list[tuple[str, str, tuple[str, ...]]] = [
            (f"spec.imagePullSecrets[{i}].name", ref.name, builders.DOCKER_CONFIG_TYPES)
            for i, ref in enumerate(spec.image_pull_secrets or [])
        ]
        if spec.docker_config_secret:
            wanted.append(
                (
                    "spec.dockerConfigSecret.name",
                    spec.docker_config_secret.name,
                    builders.DOCKER_CONFIG_TYPES[:1],
                )
            )
        for field_path, source_name, types in wanted:
            source = self.kube.get("Secret", t.namespace, source_name)
            if source is None:
                raise InvalidSpec(f"{field_path}: Secret {t.namespace}/{source_name} not found")
            if source.get("type") not in types or not builders.registry_key(source):
                raise InvalidSpec(
                    f"{field_path}: Secret {t.namespace}/{source_name} is of type "
                    f"{source.get('type')!r}; it must be {' or '.join(types)} with its key"
                )

    def ensure_tls(self, state: JobState, t: Target, cluster_ip: str | None) -> None:
        """Both TLS secrets, from one CA. A mismatched or half-written pair (a crash between the
        two writes) is reissued while no engine uses it; after that, losing one is fatal."""
        if state.started_here and all(
            self.kube.create(m) is not None for m in self.tls_pair(t, cluster_ip)
        ):
            return  # else one existed after all (409): read both and check, as below
        secrets = [
            self.owned(state, "Secret", state.client_secret, state.namespace),
            self.owned(state, "Secret", names.ENGINE_TLS_SECRET),
        ]
        prints = {
            ((s or {}).get("metadata", {}).get("annotations") or {}).get(
                names.ANNOTATION_CA_FINGERPRINT
            )
            for s in secrets
        }
        if None not in secrets and len(prints) == 1 and None not in prints:
            return
        if self.owned(state, "Pod", names.ENGINE_POD) is not None:
            raise ChildLost("the engine's TLS secrets were deleted or changed while it runs")
        for manifest, existing in zip(self.tls_pair(t, cluster_ip), secrets, strict=True):
            if existing is not None or self.kube.create(manifest) is None:
                self.kube.replace(manifest)

    def tls_pair(self, t: Target, cluster_ip: str | None) -> tuple[Obj, Obj]:
        """A new CA's client and engine secrets, in that order (the CA's key is dropped
        here)."""
        valid_for = datetime.timedelta(seconds=t.deadline_seconds) + CERT_MARGIN
        bundle = certs.issue(
            builders.engine_dns_names(t),
            [cluster_ip] if cluster_ip and cluster_ip != "None" else [],
            valid_for,
            self.clock(),
        )
        return (
            builders.build_client_secret(t, bundle.client),
            builders.build_engine_tls_secret(t, bundle.server),
        )

    def create_pod(self, state: JobState, role: str, manifest: Obj) -> None:
        try:
            created = self.kube.create(manifest)
        except ApiException as e:
            # A namespace's "default" ServiceAccount appears a moment after the namespace;
            # until then the ServiceAccount admission plugin refuses pods with 403.
            if e.status == 403 and "serviceaccount" in (e.body or ""):
                raise NotYet("the job namespace has no ServiceAccount yet", SA_RETRY_SECONDS) from e
            # A field the user gave us refused (400, 422), or an admission rule (403: a
            # LimitRange maximum, Pod Security, a policy): either way this pod cannot be.
            if e.status in (400, 403, 422):
                raise InvalidSpec(_refused_pod_message(e, role)) from e
            raise
        # What the API server returned is as new as the watch's next event; one that already
        # existed (409) is read when next needed.
        if created is None:
            state.pods.pop(role, None)
        else:
            state.pods[role] = pods.essence(created)

    def delete_job_side(self, state: JobState, pod_only: bool = False) -> None:
        """The job pod and, unless pod_only, its Secret and NetworkPolicy: what the BuildJob has
        in its own namespace (the garbage collector removes them with the BuildJob too). A
        DockerEngine's client pod is the tenant's, never deleted: only its Secret is ours."""
        namespace = state.namespace
        if not state.for_client:
            pod = state.job_pod
            self.delete(state, "Pod", pod, grace_period_seconds=0, namespace=namespace)
        if not pod_only:
            self.delete(state, "Secret", state.client_secret, namespace=namespace)
            if not state.for_client:
                policy = names.job_policy(state.name)
                self.delete(state, "NetworkPolicy", policy, namespace=namespace)

    def delete(
        self,
        state: JobState,
        kind: str,
        name: str | None = None,
        grace_period_seconds: int | None = None,
        namespace: str | None = None,
    ) -> None:
        """Deletes a child if, and only if, it is this BuildJob's: read, check its labels (and a
        namespace's name), delete with the uid read as precondition."""
        try:
            obj = self.owned(state, kind, name, namespace)
        except (ForeignObject, NotYet) as e:
            logger.warning("BuildJob %s/%s: not deleting: %s", state.namespace, state.name, e)
            return
        if obj is not None:
            meta = obj["metadata"]
            self.kube.delete(
                kind, meta.get("namespace"), meta["name"], meta["uid"], grace_period_seconds
            )


def claim_patch(state: JobState, uid: str, **spec: object) -> Obj:
    """The merge patch that makes a warm engine's object (of this uid) the owner's: its owner
    labels, and `spec` fields if given."""
    # The class's kind label goes (null), unless the owner's kind replaces it.
    labels: dict[str, str | None] = {
        names.LABEL_OWNER_KIND: None,
        **builders.owner(state.namespace, state.name, state.uid, state.kind),
    }
    patch: Obj = {"metadata": {"uid": uid, "labels": labels}}
    if spec:
        patch["spec"] = spec
    return patch


# Pod field paths the API server names -> the BuildJob fields they are built from.
_FIELD_OF = {
    names.JOB_POD: {"spec.containers[0].": "spec.job."},
    names.ENGINE_POD: {
        "spec.containers[0].": "spec.engine.",
        "spec.volumes[0].emptyDir.sizeLimit": "spec.engine.storage",
    },
}


def _refused_pod_message(e: ApiException, role: str) -> str:
    """The API server's reason, with the pod's field paths turned into the BuildJob's."""
    try:
        message = str(json.loads(e.body or "").get("message", e.reason))
    except (TypeError, ValueError):
        message = str(e.reason)
    for pod_path, spec_path in _FIELD_OF[role].items():
        message = message.replace(pod_path, spec_path)
    return "the API server refused the pod: " + message
