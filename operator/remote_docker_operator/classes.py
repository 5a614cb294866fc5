"""EngineClasses: which one a BuildJob gets, whether it may, and the engine that comes of it.

Pure functions over plain objects: the reconciler hands in the classes it knows and the
BuildJob namespace's labels, and gets an `Engine` back or a refusal naming the field.
"""

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity
from pydantic import ValidationError

from . import names
from .errors import ClassNotFound, ClassRefused
from .models import EngineClass, EngineClassSpec, EngineRequestSpec, LabelSelector

Obj = dict[str, Any]
DEFAULT_REQUEST = {"cpu": "100m", "memory": "128Mi"}


@dataclass(frozen=True)
class Cache:
    """A BuildJob's layer cache as its class keeps it (cache.py)."""

    key: str  # spec.engine.cacheKey as given
    id: str  # names.cache_id: per class and namespace
    storage_class: str | None
    size: str
    retention_seconds: int
    when_busy: str


@dataclass(frozen=True)
class Engine:
    """The engine a BuildJob gets: its spec within its class's bounds, with the class's
    defaults filled in. The builders read only this, never the class or the spec's engine."""

    class_name: str
    image: str
    image_pull_policy: str | None
    storage: str
    resources: Obj
    registry_mirrors: tuple[str, ...]
    insecure_registries: tuple[str, ...]
    mtu: int | None
    address_pools: tuple[tuple[str, int], ...]
    denied_cidrs: tuple[str, ...]
    # (namespace, pod labels, TCP ports): in-cluster pods the engine may reach despite the above
    allowed_destinations: tuple[tuple[str, tuple[tuple[str, str], ...], tuple[int, ...]], ...]
    probe_targets: tuple[str, ...] | None  # None: the probe is off; (): the API server
    max_per_namespace: int
    placement: Obj  # nodeSelector, tolerations, affinity, runtimeClassName, priorityClassName
    isolation: str  # Privileged | UserNamespace
    seccomp_profile: str | None  # UserNamespace: a Localhost profile; None: Unconfined
    resource_max: Obj
    default_request: Obj  # what a container that asks for nothing requests, within the maximum
    cache: Cache | None = None  # /var/lib/docker on the key's kept volume, not an emptyDir


def parse_class(body: Obj) -> EngineClassSpec | str:
    """The class's spec, or why it cannot be used (its objects passed the CRD's schema, so this
    only fails on what the schema cannot say)."""
    try:
        return EngineClass.model_validate({"spec": body.get("spec")}).spec
    except ValidationError as e:
        first = e.errors()[0]
        return ".".join(str(p) for p in first["loc"]) + ": " + first["msg"]


def is_default(body: Obj) -> bool:
    annotations = body.get("metadata", {}).get("annotations") or {}
    return annotations.get(names.ANNOTATION_DEFAULT_CLASS) == "true"


def pick(classes: dict[str, Obj], wanted: str | None) -> tuple[str, EngineClassSpec]:
    """The named class, or the default one (the newest, when several are marked, as
    Kubernetes does for StorageClasses)."""
    if wanted is None:
        defaults = sorted(
            (b for b in classes.values() if is_default(b)),
            key=lambda b: (b["metadata"].get("creationTimestamp", ""), b["metadata"]["name"]),
        )
        if not defaults:
            raise ClassNotFound(
                "spec.engine.className: not set, and no EngineClass is marked default "
                f'(annotation {names.ANNOTATION_DEFAULT_CLASS}: "true")'
            )
        body = defaults[-1]
    elif wanted in classes:
        body = classes[wanted]
    else:
        raise ClassNotFound(f"spec.engine.className: EngineClass {wanted!r} does not exist")
    name = body["metadata"]["name"]
    spec = parse_class(body)
    if isinstance(spec, str):
        raise ClassNotFound(f"spec.engine.className: EngineClass {name!r} is invalid: {spec}")
    return name, spec


def selects(selector: LabelSelector | None, labels: dict[str, str]) -> bool:
    """metav1.LabelSelector semantics; no selector selects everything."""
    if selector is None:
        return True
    if any(labels.get(k) != v for k, v in (selector.match_labels or {}).items()):
        return False
    for req in selector.match_expressions or []:
        present = req.key in labels
        value_in = present and labels[req.key] in (req.values or [])
        ok = {
            "In": value_in,
            "NotIn": not value_in,
            "Exists": present,
            "DoesNotExist": not present,
        }[req.operator]
        if not ok:
            return False
    return True


def image_allowed(image: str, patterns: list[str]) -> bool:
    return any(image.startswith(p[:-1]) if p.endswith("*") else image == p for p in patterns)


def _quantity(value: str) -> Decimal:
    return Decimal(parse_quantity(value))  # type: ignore[no-untyped-call]


def resolve(
    class_name: str,
    cls: EngineClassSpec,
    spec: EngineRequestSpec,
    namespace: str,
    ns_labels: dict[str, str],
) -> Engine:
    """The engine the spec gets from the class, or ClassRefused naming the first field the class
    does not allow."""
    engine = spec.engine

    def refuse(field: str, why: str) -> ClassRefused:
        return ClassRefused(f"spec.engine.{field}: EngineClass {class_name!r} {why}")

    if not selects(cls.namespace_selector, ns_labels):
        raise refuse("className", f"is not open to namespace {namespace!r}")
    if engine.image:
        if engine.image != cls.image and not image_allowed(engine.image, cls.allowed_images or []):
            allowed = [cls.image, *(cls.allowed_images or [])]
            raise refuse("image", f"does not allow image {engine.image!r} (allowed: {allowed})")
        image = engine.image
    elif engine.version:
        versioned = cls.versioned_image
        if versioned is None:
            raise refuse("version", "offers no choice of version; leave version unset")
        if versioned.versions is not None and engine.version not in versioned.versions:
            raise refuse(
                "version", f"does not offer version {engine.version!r} ({versioned.versions})"
            )
        image = f"{versioned.repository}:{engine.version}{versioned.tag_suffix}"
    else:
        image = cls.image
    if engine.registry_mirrors and not cls.daemon.allow_registry_mirrors:
        raise refuse("registryMirrors", "does not allow registry mirrors")
    if engine.insecure_registries and not cls.daemon.allow_insecure_registries:
        raise refuse("insecureRegistries", "does not allow insecure registries")
    most = cls.storage.max
    if engine.storage and most and _quantity(engine.storage) > _quantity(most):
        raise refuse("storage", f"allows at most {most} (asked: {engine.storage})")
    storage = engine.storage or cls.storage.default
    if most and _quantity(storage) > _quantity(most):
        storage = most  # a class's maximum below the default size lowers the default too
    resources = engine.resources or cls.resources.default
    resource_max: Obj = {str(k): v for k, v in (cls.resources.max or {}).items()}
    for kind in ("requests", "limits"):
        asked = getattr(resources, kind) if resources else None
        for key, most in resource_max.items():
            value = (asked or {}).get(key)
            if value is not None and _quantity(value) > _quantity(most):
                raise refuse(f"resources.{kind}.{key}", f"allows at most {most} (asked: {value})")
    # A LimitRange's maximum is also every container's default limit, and without a default
    # request its request too: a container that asks for nothing must not reserve the maximum.
    wanted = (cls.resources.default.requests if cls.resources.default else None) or {}
    default_request = {
        key: min(wanted.get(key, DEFAULT_REQUEST[key]), most, key=_quantity)
        for key, most in resource_max.items()
        if key in DEFAULT_REQUEST
    }
    placement = {
        "nodeSelector": cls.node_selector,
        "tolerations": cls.tolerations,
        "affinity": cls.affinity,
        "runtimeClassName": cls.runtime_class_name,
        "priorityClassName": cls.priority_class_name,
    }
    cache = None
    if engine.cache_key:
        if cls.cache is None:
            raise refuse("cacheKey", "keeps no layer caches")
        cache = Cache(
            engine.cache_key,
            names.cache_id(class_name, namespace, engine.cache_key),
            cls.cache.storage_class_name,
            cls.cache.size,
            cls.cache.retention_seconds,
            cls.cache.when_busy,
        )
    probe = cls.network_policy_probe
    return Engine(
        class_name=class_name,
        image=image,
        image_pull_policy=engine.image_pull_policy or cls.image_pull_policy,
        storage=storage,
        resources=resources.model_dump(exclude_none=True) if resources else {},
        registry_mirrors=tuple(
            [*(cls.daemon.registry_mirrors or []), *(engine.registry_mirrors or [])]
        ),
        insecure_registries=tuple(engine.insecure_registries or []),
        mtu=engine.mtu or cls.daemon.mtu,
        address_pools=tuple((p.base, p.size) for p in cls.daemon.default_address_pools or []),
        denied_cidrs=tuple(cls.denied_cidrs),
        allowed_destinations=tuple(
            (d.namespace, tuple(sorted(d.pod_selector.items())), tuple(sorted(set(d.ports))))
            for d in cls.allowed_destinations or []
        ),
        probe_targets=tuple(probe.targets or []) if probe.enabled else None,
        max_per_namespace=cls.max_engines_per_namespace,
        placement={k: v for k, v in placement.items() if v},
        isolation=cls.isolation,
        seccomp_profile=cls.seccomp_profile,
        resource_max=resource_max,
        default_request=default_request,
        cache=cache,
    )
