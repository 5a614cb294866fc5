#!/usr/bin/env python3
"""Builds every container image the project runs, here, without pulling anything.

No container registry is reachable where this project is developed and tested, so each image is
built on this machine from Debian packages, Kubernetes' own source or the Go module proxy, and
written as one tar that both `ctr -n k8s.io images import` (OCI image layout: oci-layout,
index.json, blobs/sha256) and `docker load` (docker-archive: manifest.json) accept, the way
`docker save` writes it since Docker 25.

    python images/build.py [NAME...]      build the named images (default: all) and print the
                                          path of each one's archive, one a line
    python images/build.py --json [NAME...]   the same as {"name": {"ref": ..., "archive": ...}}
    python images/build.py --list         the image table

Everything is cached under ${RDO_CACHE:-/var/cache/remote-docker-operator}/images: every layer
and every archive is keyed by a hash of its inputs (package lists, versions, source files and the
code of the recipe that makes it), so a warm run takes well under a second and a cold run builds
only what changed. `<cache>/images/<name>.tar` links to each image's current archive.

Run as root on Debian bookworm; the tools a build needs (debootstrap, gcc, ...) are installed
with apt-get when missing. Go (for CoreDNS, and to fetch pause.c) must be on PATH or in
/usr/local/go. The operator image needs pip (this Python's, else Debian's python3-pip) and PyPI:
its layer is the project's wheel and the wheels of its dependencies, installed on this machine
into the image's /opt/app for the image's own Python.

Another kind of image: build its root filesystem in a directory, then
`rootfs_to_archive(rootfs, "rdo.local/name:tag", ImageConfig(...), out)`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import importlib.util
import inspect
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

# The checkout this script belongs to: the operator image is built from its source.
REPO_ROOT = Path(__file__).resolve().parents[1]


def project_version(root: Path = REPO_ROOT) -> str:
    """[project].version of root/pyproject.toml: the operator image's tag."""
    with (root / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


# The images, by the short name the command line takes. Tags are pinned; bump a tag with the
# recipe's version below. (Debian bookworm's busybox-static is 1.35.0: the 1.36 tag is the
# project's name for this image, not BusyBox's version.)
IMAGES: dict[str, str] = {
    "pause": "rdo.local/pause:3.10",
    "busybox": "rdo.local/busybox:1.36",
    "dind": "rdo.local/dind:26.1",
    "job": "rdo.local/job:1",
    "coredns": "rdo.local/coredns:1.14.7",
    "registry": "rdo.local/registry:3.1.2",
    "local-path": "rdo.local/local-path-provisioner:0.0.30",
    "operator": f"rdo.local/remote-docker-operator:{project_version()}",
}

DEBIAN_SUITE = "bookworm"
# The engine and job images are Debian trixie's: docker.io 26.1 with BuildKit, and the buildx and
# compose v2 CLI plugins, as users of the official docker:NN-dind images have them (bookworm's
# docker.io is 20.10: the legacy builder and compose v1).
ENGINE_SUITE = "trixie"
KUBERNETES_VERSION = "v1.34.4"  # pause.c is build/pause/linux/pause.c of this module
PAUSE_VERSION = "3.10"
COREDNS_MODULE = "github.com/coredns/coredns"
COREDNS_VERSION = "v1.14.7"
# The CNCF distribution registry, for the e2e tier's private-registry path (tests/e2e).
REGISTRY_MODULE = "github.com/distribution/distribution/v3/cmd/registry"
REGISTRY_VERSION = "v3.1.2"
# Its configuration in the image: filesystem storage and the port; a pod adds auth and TLS with
# REGISTRY_* variables (REGISTRY_AUTH_HTPASSWD_PATH, REGISTRY_HTTP_TLS_CERTIFICATE, ...).
REGISTRY_CONFIG = """version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: /var/lib/registry
  delete:
    enabled: true
http:
  addr: :5000
"""
# The local cluster's dynamic volume provisioner (cluster/addons/local-path.yaml): PVCs on real
# directories of the node, as a cloud's StorageClass gives them (its helper pods run busybox).
LOCAL_PATH_MODULE = "github.com/rancher/local-path-provisioner"
LOCAL_PATH_VERSION = "v0.0.30"
BUSYBOX_PACKAGE = "busybox-static"
# The engine's root filesystem; the job image is this plus JOB_PACKAGES (one shared layer).
# passt: pasta, the Rootless tier's network (builders.py).
ENGINE_PACKAGES = ("docker.io", "docker-cli", "iptables", "ca-certificates", "procps", "passt")
JOB_PACKAGES = (
    "docker-buildx",
    "docker-compose",
    "git",
    "curl",
    "wget",
    "ca-certificates",
    "python3",
)
# Python packages from PyPI in the job image (for its python3): testcontainers, so tests that
# start their services with it run against the remote engine unchanged.
JOB_PYTHON_PACKAGES = ("testcontainers==4.15.0",)
# The docker CLI plugins those packages install: `docker buildx`, `docker compose`.
CLI_PLUGINS = (
    "usr/libexec/docker/cli-plugins/docker-buildx",
    "usr/libexec/docker/cli-plugins/docker-compose",
)
BUSYBOX_IN_JOB = "images/busybox.tar"  # a docker-archive of the busybox image, in the job image
# `remote-docker setup` in the job image (a CI runner's image of its own needs the package):
# the modules engine_cli imports, which need only Python's standard library in a pod, beside a
# launcher on PATH. Only these: a change elsewhere in the operator leaves the job image as is.
REMOTE_DOCKER_MODULES = ("__init__.py", "names.py", "clitext.py", "kubeapi.py", "engine_cli.py")
REMOTE_DOCKER_DIR = "opt/remote-docker"
REMOTE_DOCKER_BIN = "usr/local/bin/remote-docker"
REMOTE_DOCKER_LAUNCHER = (
    "#!/usr/bin/python3\n"
    "import sys\n"
    f'sys.path.insert(0, "/{REMOTE_DOCKER_DIR}")\n'
    "from remote_docker_operator.engine_cli import main\n"
    "sys.exit(main())\n"
)
# The operator image: Debian's Python (python-is-python3: the chart runs `python`), and the
# project with its dependencies in OPERATOR_APP_DIR (on PYTHONPATH), a layer of its own.
OPERATOR_PACKAGES = ("python3", "python-is-python3", "ca-certificates", "libjemalloc2")
# The operator allocates through jemalloc, with CPython's own small-object allocator off so that
# every allocation does: after a burst of watch events (tens of MiB of decoded JSON at once)
# jemalloc hands freed pages back to the system, where pymalloc's arenas and glibc's heap stay
# at the peak's size, pinned by the few long-lived objects allocated among them. Scale bench,
# 1,000 BuildJobs, RSS once the operator has caught up: pymalloc 323 MiB, glibc malloc with
# malloc_trim every 20 s 252 MiB, jemalloc 219 MiB.
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
OPERATOR_ALLOCATOR_ENV = (f"LD_PRELOAD={JEMALLOC}", "PYTHONMALLOC=malloc")
OPERATOR_APP_DIR = "opt/app"
# Where the operator image holds the gate (gate/main.go) that job pods copy: names.GATE_IN_IMAGE.
GATE_IN_IMAGE = "/usr/local/bin/remote-docker-gate"
OPERATOR_USER = 65532  # "nonroot", as in distroless images; the chart runs the operator as it
# What the operator's wheel is built from (relative to the checkout): a change to any of these
# rebuilds the app layer only. Not the README (pyproject's `readme`): the wheel gets a stub, so
# editing the README rebuilds nothing.
OPERATOR_SOURCES = ("pyproject.toml", "operator/remote_docker_operator")
# Installed but never imported, left out of the image: kubernetes' asyncio client (a second copy
# of every API model, over a third of the image; kopf talks to the API server with aiohttp and
# the operator uses the synchronous client). The build imports the operator in the image to prove
# nothing needs what is left out.
OPERATOR_PRUNE = ("kubernetes/aio",)

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Directories kept empty in every layer: the runtime mounts them.
PSEUDO_DIRS = frozenset({"proc", "sys", "dev"})
APT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "DEBIAN_FRONTEND": "noninteractive",
    "LC_ALL": "C",
    "HOME": "/root",
}
APT_LOCK_WAIT = ("-o", "DPkg::Lock::Timeout=600")

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"


class BuildError(RuntimeError):
    """A build step failed; the message says which and where its log is."""


# --- the data ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """The runtime part of an OCI image config (`config` in the config blob)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = (DEFAULT_PATH,)
    working_dir: str = "/"
    user: str = ""
    exposed_ports: tuple[str, ...] = ()  # e.g. "2376/tcp"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Env": list(self.env), "WorkingDir": self.working_dir}
        if self.user:
            out["User"] = self.user
        if self.entrypoint:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            out["Cmd"] = list(self.cmd)
        if self.exposed_ports:
            out["ExposedPorts"] = {port: {} for port in self.exposed_ports}
        return out


@dataclasses.dataclass(frozen=True)
class Layer:
    """An uncompressed layer tar: its digest is also its diff_id."""

    path: Path
    digest: str  # "sha256:<hex>"
    size: int
    created_by: str


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """A layer not yet built: `produce(path)` writes its tar; `key` names its inputs."""

    key: str
    created_by: str
    produce: Callable[[Path], None]


@dataclasses.dataclass(frozen=True)
class ImagePlan:
    name: str
    ref: str
    config: ImageConfig
    layers: tuple[LayerPlan, ...]

    @property
    def key(self) -> str:
        return input_key(
            "image",
            self.ref,
            self.config.to_json(),
            [layer.key for layer in self.layers],
            code=(write_archive, ImageConfig.to_json),
        )


# --- cache, logs, commands -----------------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("RDO_CACHE") or "/var/cache/remote-docker-operator") / "images"


def input_key(*parts: Any, code: Sequence[Callable[..., Any]] = ()) -> str:
    """A hash of JSON-able inputs and of the source of the functions that turn them into output."""
    h = hashlib.sha256()
    h.update(json.dumps(parts, sort_keys=True, default=str).encode())
    for fn in code:
        h.update(inspect.getsource(fn).encode())
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


_local = threading.local()
_key_locks: dict[str, threading.Lock] = {}
_key_locks_guard = threading.Lock()
_apt_lock = threading.Lock()
_debootstrap_lock = threading.Lock()


def _key_lock(key: str) -> threading.Lock:
    with _key_locks_guard:
        return _key_locks.setdefault(key, threading.Lock())


def say(message: str) -> None:
    name = getattr(_local, "name", "")
    print(f"[{name}] {message}" if name else message, file=sys.stderr, flush=True)


def _log_path() -> Path | None:
    path = getattr(_local, "log", None)
    return path if isinstance(path, Path) else None


def run(
    cmd: Sequence[str | Path],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    capture: bool = False,
) -> str:
    """Runs a command; its output goes to the current image's log file (or stderr)."""
    args = [str(c) for c in cmd]
    log = _log_path()
    with contextlib.ExitStack() as stack:
        out: Any = sys.stderr
        if log is not None:
            out = stack.enter_context(log.open("a"))
            out.write(f"\n$ {' '.join(args)}\n")
            out.flush()
        proc = subprocess.run(
            args,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else out,
            stderr=out,
            text=True,
            check=False,
        )
    if proc.returncode != 0:
        where = f"; log: {log}" if log is not None else ""
        tail = ""
        if log is not None:
            tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise BuildError(f"{' '.join(args)} exited {proc.returncode}{where}{tail}")
    return proc.stdout if capture else ""


def _installed(package: str) -> bool:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
    )
    return proc.returncode == 0 and proc.stdout.endswith(" installed")


def ensure_packages(*packages: str) -> None:
    """Installs the Debian packages that are missing (apt-get update first if that fails)."""
    with _apt_lock:
        missing = [p for p in packages if not _installed(p)]
        if not missing:
            return
        say(f"apt-get install {' '.join(missing)}")
        install = ["apt-get", *APT_LOCK_WAIT, "install", "-y", "-q", "--no-install-recommends"]
        try:
            run([*install, *missing], env=APT_ENV)
        except BuildError:
            run(["apt-get", *APT_LOCK_WAIT, "update", "-q"], env=APT_ENV)
            run([*install, *missing], env=APT_ENV)


def go_binary() -> str:
    found = shutil.which("go") or next(
        (p for p in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise BuildError("go is needed (on PATH or in /usr/local/go) to build this image")
    return found


def _mount_points_under(path: Path) -> list[Path]:
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        for esc, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
            point = point.replace(esc, char)
        if point == prefix or point.startswith(prefix + "/"):
            found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def remove_tree(path: Path) -> None:
    """rm -rf that first unmounts whatever is still mounted inside (never deletes through it)."""
    if not path.exists() and not path.is_symlink():
        return
    for point in _mount_points_under(path):
        subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)
    if _mount_points_under(path):
        raise BuildError(f"{path} still has mounts; not deleting it")
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def work_dir(name: str) -> Iterator[Path]:
    base = cache_dir() / "work"
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base))
    try:
        yield path
    finally:
        remove_tree(path)


# --- layers and archives (reusable for any image kind) -------------------------------------


def tree_members(root: Path) -> list[str]:
    """Every path under root, relative, parents first, sorted; proc/sys/dev stay empty."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        prefix = "" if rel == "." else rel + "/"
        out.extend(prefix + name for name in sorted(dirnames + filenames))
        dirnames[:] = sorted(d for d in dirnames if prefix + d not in PSEUDO_DIRS)
    return out


def _normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Numeric owners only (the host's user names mean nothing in the image) and whole-second
    # times (a float mtime costs a pax header per file).
    info.uname = info.gname = ""
    info.mtime = int(info.mtime)
    return info


def write_layer(
    root: Path,
    out: Path,
    members: Iterable[str] | None = None,
    whiteouts: Iterable[str] = (),
) -> None:
    """Writes an uncompressed layer tar of root: all of it, or just `members` (relative paths)
    plus OCI whiteouts (`.wh.<name>`) for the relative paths in `whiteouts`."""
    names = tree_members(root) if members is None else list(members)
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            tar.add(root / name, arcname=name, recursive=False, filter=_normalize)
        for name in whiteouts:
            parent, _, base = name.rpartition("/")
            info = tarfile.TarInfo(f"{parent}/.wh.{base}" if parent else f".wh.{base}")
            info.mode = 0o644
            tar.addfile(info)


def _signature(kind: str, mode: int, uid: int, gid: int, size: int, mtime: int, link: str) -> str:
    return f"{kind} {mode & 0o7777:o} {uid}:{gid} {size if kind == 'f' else 0} {mtime} {link}"


_TAR_KINDS = {
    tarfile.REGTYPE: "f",
    tarfile.AREGTYPE: "f",
    tarfile.CONTTYPE: "f",
    tarfile.DIRTYPE: "d",
    tarfile.SYMTYPE: "l",
    tarfile.CHRTYPE: "c",
    tarfile.BLKTYPE: "b",
    tarfile.FIFOTYPE: "p",
}


def _stat_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISREG, "f"),
        (stat.S_ISDIR, "d"),
        (stat.S_ISLNK, "l"),
        (stat.S_ISCHR, "c"),
        (stat.S_ISBLK, "b"),
        (stat.S_ISFIFO, "p"),
    ):
        if test(mode):
            return kind
    return "?"


def diff_tree(base_layer: Path, root: Path) -> tuple[list[str], list[str]]:
    """What changed in root since it was extracted from base_layer (by type, mode, owner, size,
    mtime and link target): (added or changed paths, deleted paths to white out)."""
    with tarfile.open(base_layer) as tar:
        members = {m.name: m for m in tar.getmembers()}
    before: dict[str, str] = {}
    for name, m in members.items():
        target = members.get(m.linkname, m) if m.islnk() else m
        kind = _TAR_KINDS.get(target.type, "?")
        link = target.linkname if kind == "l" else ""
        before[name] = _signature(
            kind, target.mode, target.uid, target.gid, target.size, int(target.mtime), link
        )
    now = tree_members(root)
    changed = []
    for name in now:
        st = (root / name).lstat()
        kind = _stat_kind(st.st_mode)
        link = os.readlink(root / name) if kind == "l" else ""
        sig = _signature(kind, st.st_mode, st.st_uid, st.st_gid, st.st_size, int(st.st_mtime), link)
        if before.get(name) != sig:
            changed.append(name)
    present = {"", *now}
    deleted = [
        name
        for name in sorted(members)
        if name not in present and name.rpartition("/")[0] in present
    ]
    return changed, deleted


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = mtime
    tar.addfile(info, io.BytesIO(data))


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def split_ref(ref: str) -> tuple[str, str]:
    """'rdo.local/busybox:1.36' -> ('rdo.local/busybox', '1.36')."""
    repo, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag or not repo:
        raise ValueError(f"{ref!r} has no tag")
    return repo, tag


def write_archive(ref: str, layers: Sequence[Layer], config: ImageConfig, out: Path) -> Path:
    """Writes the image as one tar holding both an OCI image layout (for `ctr images import`)
    and a docker-archive manifest.json (for `docker load`), sharing the same blobs."""
    _, tag = split_ref(ref)
    now = datetime.datetime.now(datetime.UTC)
    created = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    mtime = int(now.timestamp())
    config_blob = _json_bytes(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": config.to_json(),
            "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
            "history": [{"created": created, "created_by": layer.created_by} for layer in layers],
        }
    )
    config_digest = "sha256:" + hashlib.sha256(config_blob).hexdigest()
    manifest_blob = _json_bytes(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {
                "mediaType": MEDIA_CONFIG,
                "digest": config_digest,
                "size": len(config_blob),
            },
            "layers": [
                {"mediaType": MEDIA_LAYER, "digest": layer.digest, "size": layer.size}
                for layer in layers
            ],
        }
    )
    manifest_digest = "sha256:" + hashlib.sha256(manifest_blob).hexdigest()
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_blob),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": ref,
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        ],
    }

    def blob(digest: str) -> str:
        return "blobs/sha256/" + digest.removeprefix("sha256:")

    docker_manifest = [
        {
            "Config": blob(config_digest),
            "RepoTags": [ref],
            "Layers": [blob(layer.digest) for layer in layers],
        }
    ]
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
            tar.addfile(info)
        seen: set[str] = set()
        for layer in layers:
            if layer.digest not in seen:
                seen.add(layer.digest)
                info = tar.gettarinfo(layer.path, arcname=blob(layer.digest))
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode, info.mtime = 0o644, mtime
                with layer.path.open("rb") as f:
                    tar.addfile(info, f)
        _add_bytes(tar, blob(config_digest), config_blob, mtime)
        _add_bytes(tar, blob(manifest_digest), manifest_blob, mtime)
        _add_bytes(tar, "index.json", _json_bytes(index), mtime)
        _add_bytes(tar, "manifest.json", _json_bytes(docker_manifest), mtime)
        _add_bytes(tar, "oci-layout", _json_bytes({"imageLayoutVersion": "1.0.0"}), mtime)
    os.replace(tmp, out)
    return out


def layer_from_file(path: Path, created_by: str) -> Layer:
    return Layer(path, "sha256:" + sha256_file(path), path.stat().st_size, created_by)


def rootfs_to_archive(rootfs: Path, ref: str, config: ImageConfig, out: Path) -> Path:
    """One directory holding a whole root filesystem -> an importable/loadable image archive."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        layer_tar = Path(tmp) / "layer.tar"
        write_layer(rootfs, layer_tar)
        return write_archive(
            ref, [layer_from_file(layer_tar, f"rootfs {rootfs.name}")], config, out
        )


# --- building with the cache ---------------------------------------------------------------


def materialize(plan: LayerPlan) -> Layer:
    """The plan's layer from the cache, built first if it is not there."""
    with _key_lock(plan.key):
        tar = cache_dir() / "layers" / f"{plan.key}.tar"
        meta = tar.with_suffix(".json")
        if tar.exists() and meta.exists():
            data = json.loads(meta.read_text())
            return Layer(tar, data["digest"], data["size"], plan.created_by)
        tar.parent.mkdir(parents=True, exist_ok=True)
        say(f"building layer: {plan.created_by}")
        started = time.monotonic()
        tmp = tar.with_name(tar.name + ".tmp")
        tmp.unlink(missing_ok=True)
        plan.produce(tmp)
        layer = layer_from_file(tmp, plan.created_by)
        os.replace(tmp, tar)
        meta.write_text(json.dumps({"digest": layer.digest, "size": layer.size}))
        say(f"layer built in {time.monotonic() - started:.0f}s ({layer.size >> 20} MiB)")
        return dataclasses.replace(layer, path=tar)


def archive_path(plan: ImagePlan) -> Path:
    return cache_dir() / f"{plan.name}-{plan.key[:16]}.tar"


def build_image(plan: ImagePlan) -> Path:
    """The image's archive from the cache, built (with whichever layers are missing) if needed."""
    with _key_lock(plan.key):
        out = archive_path(plan)
        if not out.exists():
            layers = [materialize(layer) for layer in plan.layers]
            write_archive(plan.ref, layers, plan.config, out)
            say(f"{plan.ref}: {out} ({out.stat().st_size >> 20} MiB)")
        link = cache_dir() / f"{plan.name}.tar"
        if not link.is_symlink() or os.readlink(link) != out.name:
            tmp = link.with_name(link.name + ".tmp")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(out.name)
            os.replace(tmp, link)
        return out


# --- Debian root filesystems ---------------------------------------------------------------


def apt_mirrors() -> tuple[str, str]:
    """The Debian and Debian-security mirrors this machine's apt uses (deb.debian.org if none)."""
    mirror, security = "http://deb.debian.org/debian", "http://deb.debian.org/debian-security"
    entries: list[tuple[list[str], list[str], list[str]]] = []  # (types, uris, suites)
    etc = Path("/etc/apt")
    one_line = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if not path.is_file():
            continue
        for raw in path.read_text().splitlines():
            words = raw.split("#", 1)[0].split()
            if words and words[1:2] and words[1].startswith("["):
                while words[1:] and not words[1].endswith("]"):
                    del words[1]
                del words[1]
            if len(words) >= 3:
                entries.append(([words[0]], [words[1]], [words[2]]))
    for path in sorted((etc / "sources.list.d").glob("*.sources")):
        for paragraph in path.read_text().split("\n\n"):
            fields: dict[str, list[str]] = {}
            for raw in paragraph.splitlines():
                key, sep, value = raw.partition(":")
                if sep and not raw.startswith((" ", "#")):
                    fields[key.strip().lower()] = value.split()
            if fields.get("enabled", ["yes"]) != ["no"]:
                entries.append(
                    (fields.get("types", []), fields.get("uris", []), fields.get("suites", []))
                )
    for types, uris, suites in entries:
        if "deb" in types and uris:
            if DEBIAN_SUITE in suites and mirror.startswith("http://deb.debian.org/"):
                mirror = uris[0].rstrip("/")
            if f"{DEBIAN_SUITE}-security" in suites and security.startswith("http://deb.debian"):
                security = uris[0].rstrip("/")
    return mirror, security


def _kill_processes_rooted_in(root: Path) -> None:
    """Ends any process a chroot step left behind (a daemon a maintainer script started)."""
    target = str(root.resolve())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            proc_root = os.readlink(proc / "root")
            if proc_root == target or proc_root.startswith(target + "/"):
                say(f"killing leftover process {proc.name} in {target}")
                os.kill(int(proc.name), 9)


@contextlib.contextmanager
def chroot_session(root: Path) -> Iterator[None]:
    """/proc, a minimal /dev, the host's DNS and a policy-rc.d that starts no service."""
    mounts: list[Path] = []
    policy = root / "usr/sbin/policy-rc.d"
    resolv = root / "etc/resolv.conf"
    try:
        for point, args in (
            (root / "proc", ["-t", "proc", "proc"]),
            (root / "dev", ["-t", "tmpfs", "-o", "mode=755,size=16m", "tmpfs"]),
        ):
            point.mkdir(exist_ok=True)
            run(["mount", *args, point])
            mounts.append(point)
        for name, major, minor in (
            ("null", 1, 3),
            ("zero", 1, 5),
            ("full", 1, 7),
            ("random", 1, 8),
            ("urandom", 1, 9),
            ("tty", 5, 0),
        ):
            os.mknod(root / "dev" / name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            os.chmod(root / "dev" / name, 0o666)
        for name, target in (
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ):
            os.symlink(target, root / "dev" / name)
        resolv.unlink(missing_ok=True)
        shutil.copyfile("/etc/resolv.conf", resolv)
        policy.write_text("#!/bin/sh\n# no service starts while an image is built\nexit 101\n")
        policy.chmod(0o755)
        yield
    finally:
        _kill_processes_rooted_in(root)
        for point in reversed(mounts):
            if subprocess.run(["umount", str(point)], check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(point)], check=False)
        policy.unlink(missing_ok=True)
        resolv.unlink(missing_ok=True)


def chroot_apt(root: Path, *args: str) -> None:
    run(["chroot", root, "apt-get", "-q", "-y", *args], env=APT_ENV)


def _remove_contents(directory: Path, keep: Callable[[Path], bool] = lambda p: False) -> None:
    """Deletes the files under directory (keeping the directories themselves)."""
    if not directory.is_dir() or directory.is_symlink():
        return
    for dirpath, _dirnames, filenames in os.walk(directory):
        for name in filenames:
            path = Path(dirpath) / name
            if not keep(path):
                path.unlink()


def slim_rootfs(root: Path) -> None:
    """Drops what an image does not need: apt lists and caches, logs, docs (but the copyright
    files), man pages, translations; and what came from the build host (DNS, hostname)."""
    _remove_contents(root / "var/lib/apt/lists")
    _remove_contents(root / "var/cache/apt")
    _remove_contents(root / "var/log")
    _remove_contents(root / "usr/share/doc", keep=lambda p: p.name == "copyright")
    for sub in ("usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian"):
        _remove_contents(root / sub)
    for pattern in (
        "var/cache/debconf/*-old",
        "var/lib/dpkg/*-old",
        "var/cache/ldconfig/*",
        "etc/*.dpkg-old",
    ):
        for path in root.glob(pattern):
            path.unlink()
    for name in ("etc/resolv.conf", "etc/hostname", "etc/machine-id"):
        (root / name).unlink(missing_ok=True)
    for pseudo in (*PSEUDO_DIRS, "tmp"):
        path = root / pseudo
        remove_tree(path)
        path.mkdir()
        path.chmod(0o1777 if pseudo == "tmp" else 0o755)


DPKG_EXCLUDES = """\
# Set by images/build.py: packages installed later leave out docs, man pages and translations.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
"""


def debootstrap(root: Path, packages: Sequence[str], suite: str = DEBIAN_SUITE) -> None:
    """A slimmed debootstrap minbase of suite with packages in root (a new directory), upgraded
    from -updates and -security, apt pointed at this machine's mirrors."""
    ensure_packages("debootstrap", "debian-archive-keyring")
    mirror, security = apt_mirrors()
    debs = cache_dir() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    with _debootstrap_lock:  # one at a time: they share the .deb cache
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(packages)}",
                f"--cache-dir={debs}",
                suite,
                root,
                mirror,
            ],
            env=APT_ENV,
        )
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    (root / "etc/apt/sources.list.d/debian.sources").write_text(
        f"Types: deb\nURIs: {mirror}\nSuites: {suite} {suite}-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        f"Types: deb\nURIs: {security}\nSuites: {suite}-security\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    (root / "etc/dpkg/dpkg.cfg.d/excludes").write_text(DPKG_EXCLUDES)
    with chroot_session(root):
        chroot_apt(root, "update")
        chroot_apt(root, "-o", "Dpkg::Options::=--force-confold", "dist-upgrade")
        chroot_apt(root, "clean")
    slim_rootfs(root)


def require_files(root: Path, *names: str) -> None:
    for name in names:
        if not os.path.lexists(root / name):
            raise BuildError(f"/{name} is missing from the root filesystem")


def produce_debian_base(out: Path) -> None:
    """debootstrap minbase trixie with ENGINE_PACKAGES (the dind and job images' base)."""
    with work_dir("debian") as work:
        root = work / "rootfs"
        debootstrap(root, ENGINE_PACKAGES, ENGINE_SUITE)
        require_files(root, "usr/bin/docker", "usr/sbin/dockerd", "usr/sbin/iptables")
        write_layer(root, out)


def produce_packages_layer(
    base: LayerPlan, packages: Sequence[str], out: Path, required: Sequence[str] = ()
) -> None:
    """The layer that installing packages on top of base adds (with whiteouts for removals);
    the required files must be among what they installed."""
    base_layer = materialize(base)
    with work_dir("packages") as work:
        root = work / "rootfs"
        root.mkdir()
        run(["tar", "--numeric-owner", "-xpf", base_layer.path, "-C", root])
        with chroot_session(root):
            chroot_apt(root, "update")
            chroot_apt(root, "install", "--no-install-recommends", *packages)
            chroot_apt(root, "clean")
        require_files(root, *required)
        slim_rootfs(root)
        changed, deleted = diff_tree(base_layer.path, root)
        write_layer(root, out, changed, deleted)


def debian_layer_key(
    name: str, packages: Sequence[str], produce: Callable[..., Any], suite: str = DEBIAN_SUITE
) -> str:
    return input_key(
        name,
        suite,
        packages,
        apt_mirrors(),
        DPKG_EXCLUDES,
        code=(
            produce,
            debootstrap,
            require_files,
            slim_rootfs,
            chroot_session,
            write_layer,
            _normalize,
        ),
    )


def plan_debian_base() -> LayerPlan:
    return LayerPlan(
        debian_layer_key("debian-base", ENGINE_PACKAGES, produce_debian_base, ENGINE_SUITE),
        f"debootstrap --variant=minbase --include={','.join(ENGINE_PACKAGES)} {ENGINE_SUITE}",
        produce_debian_base,
    )


# --- the images ----------------------------------------------------------------------------


def _files_layer(files: dict[str, Path], out: Path, scripts: dict[str, str] | None = None) -> None:
    """A layer holding the given host files at the given image paths (mode 0644), and scripts
    (image path -> text, mode 0755); root-owned."""
    with work_dir("files") as work:
        for name, source in files.items():
            dest = work / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
            dest.chmod(0o644)
        for name, text in (scripts or {}).items():
            dest = work / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)
            dest.chmod(0o755)
        for path in work.rglob("*"):
            if path.is_dir():
                path.chmod(0o755)
        write_layer(work, out)


def pause_source() -> Path:
    """pause.c from the Kubernetes module in the Go module cache (downloaded if missing)."""
    gopath = os.environ.get("GOPATH", "").split(os.pathsep)[0] or str(Path.home() / "go")
    modcache = Path(os.environ.get("GOMODCACHE") or Path(gopath) / "pkg/mod")
    rel = f"k8s.io/kubernetes@{KUBERNETES_VERSION}/build/pause/linux/pause.c"
    if not (modcache / rel).exists():
        go = go_binary()
        with tempfile.TemporaryDirectory() as tmp:
            run([go, "mod", "download", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"], cwd=Path(tmp))
        modcache = Path(run([go, "env", "GOMODCACHE"], capture=True).strip())
    return modcache / rel


def produce_pause(out: Path) -> None:
    ensure_packages("gcc", "libc6-dev", "binutils")
    with work_dir("pause") as work:
        root = work / "rootfs"
        root.mkdir()
        binary = root / "pause"
        run(
            [
                "gcc",
                "-Os",
                "-Wall",
                "-Werror",
                "-static",
                f"-DVERSION={PAUSE_VERSION}",
                "-o",
                binary,
                pause_source(),
            ]
        )
        run(["strip", binary])
        binary.chmod(0o755)
        write_layer(root, out)


def plan_pause() -> ImagePlan:
    source = pause_source()
    layer = LayerPlan(
        input_key("pause", PAUSE_VERSION, sha256_file(source), code=(produce_pause, write_layer)),
        f"gcc -Os -static -DVERSION={PAUSE_VERSION} pause.c (kubernetes {KUBERNETES_VERSION})",
        produce_pause,
    )
    # As upstream's image: runs as 65535.
    config = ImageConfig(entrypoint=("/pause",), user="65535:65535")
    return ImagePlan("pause", IMAGES["pause"], config, (layer,))


def apt_download(package: str, into: Path) -> Path:
    cmd = ["apt-get", "-q", "download", package]
    try:
        run(cmd, cwd=into, env=APT_ENV)
    except BuildError:
        with _apt_lock:
            run(["apt-get", *APT_LOCK_WAIT, "update", "-q"], env=APT_ENV)
        run(cmd, cwd=into, env=APT_ENV)
    return next(into.glob(f"{package}_*.deb"))


def produce_busybox(out: Path) -> None:
    with work_dir("busybox") as work:
        deb = apt_download(BUSYBOX_PACKAGE, work)
        run(["dpkg-deb", "-x", deb, work / "deb"])
        found = [p for p in (work / "deb/bin/busybox", work / "deb/usr/bin/busybox") if p.exists()]
        if not found:
            raise BuildError(f"no busybox binary in {deb.name}")
        root = work / "rootfs"
        for directory, mode in (
            ("bin", 0o755),
            ("sbin", 0o755),
            ("usr/bin", 0o755),
            ("usr/sbin", 0o755),
            ("etc", 0o755),
            ("root", 0o700),
            ("tmp", 0o1777),
            ("var", 0o755),
            ("home", 0o755),
        ):
            (root / directory).mkdir(parents=True, exist_ok=True)
            (root / directory).chmod(mode)
        busybox = root / "bin/busybox"
        shutil.copyfile(found[0], busybox)
        busybox.chmod(0o755)
        for applet in run([busybox, "--list-full"], capture=True).split():
            link = root / applet
            if applet != "bin/busybox" and not os.path.lexists(link):
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to("/bin/busybox")
        (root / "etc/passwd").write_text(
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n"
        )
        (root / "etc/group").write_text("root:x:0:\nnobody:x:65534:\n")
        write_layer(root, out)


def plan_busybox() -> ImagePlan:
    layer = LayerPlan(
        input_key("busybox", BUSYBOX_PACKAGE, code=(produce_busybox, write_layer)),
        f"{BUSYBOX_PACKAGE} from Debian {DEBIAN_SUITE}, busybox --list-full as symlinks",
        produce_busybox,
    )
    return ImagePlan("busybox", IMAGES["busybox"], ImageConfig(cmd=("sh",)), (layer,))


def plan_dind() -> ImagePlan:
    # The operator starts it with `sh -c '... exec dockerd ...'`.
    config = ImageConfig(cmd=("dockerd",), exposed_ports=("2376/tcp",))
    return ImagePlan("dind", IMAGES["dind"], config, (plan_debian_base(),))


def compile_in_image(root: Path, directory: str) -> None:
    """Bytecode for every module under `directory`, by the image's own Python (its format);
    hash-based, so nothing is ever checked against mtimes. Inside a chroot_session."""
    run(
        [
            "chroot",
            root,
            "python3",
            "-m",
            "compileall",
            "-q",
            "--invalidation-mode=unchecked-hash",
            directory,
        ],
        env=APT_ENV,
    )


def produce_python_packages(
    layers: Sequence[LayerPlan], requirements: Sequence[str], out: Path
) -> None:
    """requirements' wheels, installed on this machine for the python3 of the image that
    `layers` make, into its /usr/local dist-packages (on that Python's path): a layer of that
    directory only."""
    pip = pip_command()
    with work_dir("python-packages") as work:
        root = work / "rootfs"
        root.mkdir()
        for layer in layers:  # enough of the image to ask its python3 what it is
            run(["tar", "--numeric-owner", "-xpf", materialize(layer).path, "-C", root])
        version, platforms = image_python(root)
        new = work / "layer"
        target = new / f"usr/local/lib/python{version}/dist-packages"
        run(
            [
                *pip,
                "install",
                "--no-compile",
                "--target",
                target,
                "--only-binary=:all:",
                "--implementation=cp",
                f"--python-version={version}",
                *(f"--platform={p}" for p in platforms),
                *requirements,
            ],
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"},
        )
        shutil.rmtree(target / "bin", ignore_errors=True)  # scripts for this machine's Python
        # Compiled by the image's Python, where it will run: without the bytecode every new
        # container compiles what it imports first (`remote-docker setup` spent about 3 s of
        # its 4.7 s on the kubernetes package that way).
        inside = root / target.relative_to(new)
        inside.parent.mkdir(parents=True, exist_ok=True)
        if inside.exists():
            inside.rmdir()  # the image's own, empty: ours takes its place
        shutil.move(target, inside)
        with chroot_session(root):
            compile_in_image(root, f"/{target.relative_to(new)}")
        shutil.move(inside, target)
        for path in [new, *new.rglob("*")]:
            if not path.is_symlink():
                path.chmod(0o755 if path.is_dir() or path.stat().st_mode & 0o111 else 0o644)
        write_layer(new, out)


def remote_docker_sources(root: Path = REPO_ROOT) -> dict[str, Path]:
    package = root / "operator" / "remote_docker_operator"
    return {
        f"{REMOTE_DOCKER_DIR}/remote_docker_operator/{m}": package / m
        for m in REMOTE_DOCKER_MODULES
    }


def plan_job() -> ImagePlan:
    base = plan_debian_base()
    packages = LayerPlan(
        input_key(
            "job-packages",
            base.key,
            JOB_PACKAGES,
            CLI_PLUGINS,
            code=(produce_packages_layer, diff_tree, slim_rootfs, chroot_session, write_layer),
        ),
        f"apt-get install {' '.join(JOB_PACKAGES)}",
        lambda out: produce_packages_layer(base, JOB_PACKAGES, out, CLI_PLUGINS),
    )
    python = LayerPlan(
        input_key(
            "job-python",
            packages.key,
            JOB_PYTHON_PACKAGES,
            code=(
                produce_python_packages,
                image_python,
                manylinux_platforms,
                chroot_session,
                compile_in_image,
                write_layer,
            ),
        ),
        "pip install --target /usr/local/lib/python3.N/dist-packages "
        f"{' '.join(JOB_PYTHON_PACKAGES)}",
        lambda out: produce_python_packages((base, packages), JOB_PYTHON_PACKAGES, out),
    )
    busybox = plan_busybox()
    images = LayerPlan(
        input_key("job-images", BUSYBOX_IN_JOB, busybox.key, code=(_files_layer, write_layer)),
        f"COPY {busybox.ref} docker-archive /{BUSYBOX_IN_JOB}",
        lambda out: _files_layer({BUSYBOX_IN_JOB: build_image(busybox)}, out),
    )
    sources = remote_docker_sources()
    remote_docker = LayerPlan(
        input_key(
            "job-remote-docker",
            REMOTE_DOCKER_LAUNCHER,
            {name: sha256_file(path) for name, path in sources.items()},
            code=(_files_layer, write_layer),
        ),
        f"COPY {', '.join(REMOTE_DOCKER_MODULES)} /{REMOTE_DOCKER_DIR}; remote-docker launcher",
        lambda out: _files_layer(sources, out, {REMOTE_DOCKER_BIN: REMOTE_DOCKER_LAUNCHER}),
    )
    layers = (base, packages, python, images, remote_docker)
    return ImagePlan("job", IMAGES["job"], ImageConfig(cmd=("sh",)), layers)


def go_install(module: str, version: str, root: Path, work: Path) -> None:
    """A static binary of module@version from the Go module proxy, into root."""
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false", "GOBIN": str(root)}
    run(
        [go_binary(), "install", "-trimpath", "-ldflags=-s -w", f"{module}@{version}"],
        env=env,
        cwd=work,
    )


def produce_coredns(out: Path) -> None:
    with work_dir("coredns") as work:
        root = work / "rootfs"
        root.mkdir()
        go_install(COREDNS_MODULE, COREDNS_VERSION, root, work)
        (root / "coredns").chmod(0o755)
        write_layer(root, out)


def produce_registry(out: Path) -> None:
    with work_dir("registry") as work:
        root = work / "rootfs"
        (root / "bin").mkdir(parents=True)
        go_install(REGISTRY_MODULE, REGISTRY_VERSION, root / "bin", work)
        (root / "bin/registry").chmod(0o755)
        config = root / "etc/distribution/config.yml"
        config.parent.mkdir(parents=True)
        config.write_text(REGISTRY_CONFIG)
        for directory, mode in (("var/lib/registry", 0o777), ("tmp", 0o1777)):
            (root / directory).mkdir(parents=True)
            (root / directory).chmod(mode)
        write_layer(root, out)


def produce_local_path(out: Path) -> None:
    with work_dir("local-path") as work:
        root = work / "rootfs"
        (root / "bin").mkdir(parents=True)
        go_install(LOCAL_PATH_MODULE, LOCAL_PATH_VERSION, root / "bin", work)
        (root / "bin/local-path-provisioner").chmod(0o755)
        write_layer(root, out)


def plan_local_path() -> ImagePlan:
    layer = LayerPlan(
        input_key(
            "local-path",
            LOCAL_PATH_MODULE,
            LOCAL_PATH_VERSION,
            code=(produce_local_path, go_install, write_layer),
        ),
        f"CGO_ENABLED=0 go install {LOCAL_PATH_MODULE}@{LOCAL_PATH_VERSION}",
        produce_local_path,
    )
    config = ImageConfig(entrypoint=("/bin/local-path-provisioner",))
    return ImagePlan("local-path", IMAGES["local-path"], config, (layer,))


def plan_registry() -> ImagePlan:
    layer = LayerPlan(
        input_key(
            "registry",
            REGISTRY_MODULE,
            REGISTRY_VERSION,
            REGISTRY_CONFIG,
            code=(produce_registry, go_install, write_layer),
        ),
        f"CGO_ENABLED=0 go install {REGISTRY_MODULE}@{REGISTRY_VERSION}; its config.yml",
        produce_registry,
    )
    config = ImageConfig(
        entrypoint=("/bin/registry",),
        cmd=("serve", "/etc/distribution/config.yml"),
        exposed_ports=("5000/tcp",),
        user="65534:65534",
    )
    return ImagePlan("registry", IMAGES["registry"], config, (layer,))


def plan_coredns() -> ImagePlan:
    layer = LayerPlan(
        input_key(
            "coredns",
            COREDNS_MODULE,
            COREDNS_VERSION,
            code=(produce_coredns, go_install, write_layer),
        ),
        f"CGO_ENABLED=0 go install {COREDNS_MODULE}@{COREDNS_VERSION}",
        produce_coredns,
    )
    config = ImageConfig(entrypoint=("/coredns",), exposed_ports=("53/tcp", "53/udp"))
    return ImagePlan("coredns", IMAGES["coredns"], config, (layer,))


def produce_operator_base(out: Path) -> None:
    """debootstrap minbase bookworm with OPERATOR_PACKAGES, and the user the operator runs as."""
    with work_dir("operator-base") as work:
        root = work / "rootfs"
        debootstrap(root, OPERATOR_PACKAGES)
        require_files(
            root, "usr/bin/python3", "usr/bin/python", "etc/ssl/certs/ca-certificates.crt"
        )
        # As in distroless images: uid and gid 65532 have a name and a home directory.
        uid = OPERATOR_USER
        with (root / "etc/passwd").open("a") as f:
            f.write(f"nonroot:x:{uid}:{uid}:nonroot:/home/nonroot:/usr/sbin/nologin\n")
        with (root / "etc/group").open("a") as f:
            f.write(f"nonroot:x:{uid}:\n")
        home = root / "home/nonroot"
        home.mkdir(mode=0o700)
        os.chown(home, uid, uid)
        write_layer(root, out)


def plan_operator_base() -> LayerPlan:
    return LayerPlan(
        debian_layer_key("operator-base", OPERATOR_PACKAGES, produce_operator_base),
        f"debootstrap --variant=minbase --include={','.join(OPERATOR_PACKAGES)} {DEBIAN_SUITE}",
        produce_operator_base,
    )


def operator_sources(root: Path = REPO_ROOT) -> dict[str, Path]:
    """The files under root the operator's wheel is built from, by relative path, sorted."""
    found: dict[str, Path] = {}
    for name in OPERATOR_SOURCES:
        path = root / name
        if path.is_file():
            found[name] = path
        elif path.is_dir():
            for child in path.rglob("*"):
                rel = child.relative_to(root)
                if child.is_file() and "__pycache__" not in rel.parts and child.suffix != ".pyc":
                    found[rel.as_posix()] = child
        else:
            raise BuildError(f"{path} is missing")
    return dict(sorted(found.items()))


def pip_command() -> list[str]:
    """pip of the Python running this script, else Debian's."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    ensure_packages("python3-pip")
    return ["/usr/bin/python3", "-m", "pip"]


def manylinux_platforms(glibc: str) -> list[str]:
    """The wheel platforms a glibc of this version runs: manylinux for it and for each older one
    (pip does not work those out from one --platform; it adds manylinux2010 and 1 to 2014)."""
    major, minor = (int(n) for n in glibc.split(".")[:2])
    if major != 2 or minor < 17:
        raise BuildError(f"glibc {glibc} is older than manylinux2014 (2.17)")
    return [*(f"manylinux_2_{m}_x86_64" for m in range(minor, 4, -1)), "manylinux2014_x86_64"]


def image_python(root: Path) -> tuple[str, list[str]]:
    """The Python version of the root filesystem ("3.11") and the wheel platforms it runs."""
    probe = (
        "import os, sys; print('%d.%d' % sys.version_info[:2], os.confstr('CS_GNU_LIBC_VERSION'))"
    )
    words = run(["chroot", root, "python3", "-c", probe], env=APT_ENV, capture=True).split()
    if len(words) != 3 or words[1] != "glibc":
        raise BuildError(f"unexpected answer from the image's python3: {' '.join(words)}")
    return words[0], manylinux_platforms(words[2])


def produce_operator_app(base: LayerPlan, sources: dict[str, Path], out: Path) -> None:
    """The project's wheel and its dependencies' wheels, installed on this machine for the
    image's Python into /OPERATOR_APP_DIR and byte-compiled by that Python: a layer holding
    that directory only."""
    base_layer = materialize(base)
    pip = pip_command()
    pip_env = {
        **os.environ,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
        "PIP_ROOT_USER_ACTION": "ignore",
    }
    with work_dir("operator-app") as work:
        src = work / "src"  # a copy: building in the checkout would leave build/ and egg-info
        for name, path in sources.items():
            dest = src / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
        with (src / "pyproject.toml").open("rb") as f:
            readme = tomllib.load(f).get("project", {}).get("readme")
        if isinstance(readme, str) and not (src / readme).exists():
            (src / readme).write_text("remote-docker-operator: see the project's README.\n")
        wheels = work / "wheels"
        run([*pip, "wheel", "--no-deps", "--wheel-dir", wheels, src], env=pip_env)
        (wheel,) = wheels.glob("*.whl")
        root = work / "rootfs"
        root.mkdir()
        run(["tar", "--numeric-owner", "-xpf", base_layer.path, "-C", root])
        app = root / OPERATOR_APP_DIR
        with chroot_session(root):
            version, platforms = image_python(root)
            run(
                [
                    *pip,
                    "install",
                    "--no-compile",
                    "--target",
                    app,
                    "--only-binary=:all:",
                    "--implementation=cp",
                    f"--python-version={version}",
                    *(f"--platform={p}" for p in platforms),
                    wheel,
                ],
                env=pip_env,
            )
            shutil.rmtree(app / "bin", ignore_errors=True)  # scripts for this machine's Python
            for rel in OPERATOR_PRUNE:
                shutil.rmtree(app / rel, ignore_errors=True)
            for path in [app, *app.rglob("*")]:  # anyone reads, only root writes
                if not path.is_symlink():
                    executable = path.is_dir() or path.stat().st_mode & 0o111
                    path.chmod(0o755 if executable else 0o644)
            compile_in_image(root, f"/{OPERATOR_APP_DIR}")
            # Everything imports, as the operator's user, without writing anything.
            run(
                [
                    "chroot",
                    f"--userspec={OPERATOR_USER}:{OPERATOR_USER}",
                    root,
                    "python3",
                    "-c",
                    "import remote_docker_operator.__main__",
                ],
                env={
                    **APT_ENV,
                    "PYTHONPATH": f"/{OPERATOR_APP_DIR}",
                    "PYTHONDONTWRITEBYTECODE": "1",
                },
            )
        top = OPERATOR_APP_DIR.partition("/")[0]
        write_layer(root, out, [top, *(f"{top}/{name}" for name in tree_members(root / top))])


def plan_operator_app(base: LayerPlan, checkout: Path = REPO_ROOT) -> LayerPlan:
    sources = operator_sources(checkout)
    return LayerPlan(
        input_key(
            "operator-app",
            base.key,
            OPERATOR_APP_DIR,
            OPERATOR_USER,
            OPERATOR_PRUNE,
            {name: sha256_file(path) for name, path in sources.items()},
            code=(
                produce_operator_app,
                image_python,
                manylinux_platforms,
                pip_command,
                operator_sources,
                compile_in_image,
                write_layer,
            ),
        ),
        f"pip install --target /{OPERATOR_APP_DIR} remote-docker-operator=="
        f"{project_version(checkout)} and its dependencies (wheels)",
        lambda out: produce_operator_app(base, sources, out),
    )


def gate_sources(checkout: Path = REPO_ROOT) -> dict[str, Path]:
    """The gate's Go module (gate/): standard library only, so it builds without the proxy."""
    return {path.name: path for path in sorted((checkout / "gate").glob("*")) if path.is_file()}


def produce_gate(sources: dict[str, Path], out: Path) -> None:
    with work_dir("gate") as work:
        module = work / "gate"
        module.mkdir()
        for name, path in sources.items():
            shutil.copy(path, module / name)
        root = work / "rootfs"
        binary = root / GATE_IN_IMAGE.lstrip("/")
        binary.parent.mkdir(parents=True)
        env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"}
        run(
            [go_binary(), "build", "-trimpath", "-ldflags=-s -w", "-o", binary, "."],
            env=env,
            cwd=module,
        )
        binary.chmod(0o755)
        # The layer's usr/local/bin replaces the base image's: 0755 whatever this machine's
        # umask, or install-gate (uid 65532) could not reach the gate.
        for directory in binary.parents:
            if directory == root:
                break
            directory.chmod(0o755)
        write_layer(root, out)


def plan_gate(checkout: Path = REPO_ROOT) -> LayerPlan:
    """The gate a BuildJob's job container starts behind (gate/main.go), copied from the
    operator image into the job pod."""
    sources = gate_sources(checkout)
    return LayerPlan(
        input_key(
            "gate",
            GATE_IN_IMAGE,
            {name: sha256_file(path) for name, path in sources.items()},
            code=(produce_gate, write_layer),
        ),
        f"CGO_ENABLED=0 go build -o {GATE_IN_IMAGE} ./gate",
        lambda out: produce_gate(sources, out),
    )


def plan_operator(checkout: Path = REPO_ROOT) -> ImagePlan:
    """Debian's Python in one layer, the project and its dependencies in another: a change to
    the source rebuilds only the second."""
    base = plan_operator_base()
    config = ImageConfig(
        entrypoint=("python3", "-m", "remote_docker_operator"),
        env=(
            DEFAULT_PATH,
            f"PYTHONPATH=/{OPERATOR_APP_DIR}",
            "PYTHONUNBUFFERED=1",
            "PYTHONDONTWRITEBYTECODE=1",
            *OPERATOR_ALLOCATOR_ENV,
        ),
        user=f"{OPERATOR_USER}:{OPERATOR_USER}",
        working_dir="/",
    )
    ref = IMAGES["operator"]
    if checkout != REPO_ROOT:
        ref = f"{split_ref(ref)[0]}:{project_version(checkout)}"
    layers = (base, plan_gate(checkout), plan_operator_app(base, checkout))
    return ImagePlan("operator", ref, config, layers)


PLANS: dict[str, Callable[[], ImagePlan]] = {
    "pause": plan_pause,
    "busybox": plan_busybox,
    "dind": plan_dind,
    "job": plan_job,
    "coredns": plan_coredns,
    "registry": plan_registry,
    "local-path": plan_local_path,
    "operator": plan_operator,
}


# --- entry points --------------------------------------------------------------------------


def _prune(plans: Sequence[ImagePlan]) -> None:
    """Deletes cached layers and archives that no current image uses (after a full build)."""
    keep_layers: set[str] = set()
    keep_archives = {archive_path(plan).name for plan in plans}
    for plan in plans:
        keep_layers.update(layer.key for layer in plan.layers)
    keep_layers.update(layer.key for layer in plan_busybox().layers)
    cache = cache_dir()
    for path in (cache / "layers").glob("*"):
        if path.name.split(".")[0] not in keep_layers:
            path.unlink()
    for path in cache.glob("*-*.tar"):
        if path.name not in keep_archives and not path.is_symlink():
            path.unlink()


def build(names: Sequence[str] = (), jobs: int = 2) -> dict[str, Path]:
    """Builds the named images (default: all) and returns each one's archive."""
    unknown = [n for n in names if n not in IMAGES]
    if unknown:
        raise BuildError(f"unknown image(s) {', '.join(unknown)}; known: {', '.join(IMAGES)}")
    wanted = list(dict.fromkeys(names)) or list(IMAGES)
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "logs").mkdir(exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        remove_tree(cache / "work")
        plans = {name: PLANS[name]() for name in wanted}

        def task(name: str) -> Path:
            _local.name = name
            log = cache / "logs" / f"{name}.log"
            _local.log = log
            plan = plans[name]
            if archive_path(plan).exists():
                return build_image(plan)
            log.write_text(f"# {plan.ref}\n")
            started = time.monotonic()
            out = build_image(plan)
            say(f"built in {time.monotonic() - started:.0f}s")
            return out

        # The slowest first (the Go builds and a debootstrap), so they overlap.
        slowest = [
            "coredns",
            "dind",
            "registry",
            "local-path",
            "operator",
            "job",
            "pause",
            "busybox",
        ]
        order = sorted(wanted, key=slowest.index)
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = {name: pool.submit(task, name) for name in order}
        errors = [f"{n}: {f.exception()}" for n, f in futures.items() if f.exception()]
        if errors:
            raise BuildError("\n".join(errors))
        if not names:
            _prune(list(plans.values()))
        return {name: futures[name].result() for name in wanted}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build the project's container images locally (see the module docstring)."
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(IMAGES))
    parser.add_argument("--json", action="store_true", help="print {name: {ref, archive}}")
    parser.add_argument("--list", action="store_true", help="print the image table and exit")
    parser.add_argument("--jobs", type=int, default=2, help="images built at once (default 2)")
    args = parser.parse_args(argv)
    if args.list:
        for name, ref in IMAGES.items():
            print(f"{name}\t{ref}")
        return 0
    if os.geteuid() != 0:
        print("build.py must run as root (debootstrap, chroot, mount)", file=sys.stderr)
        return 2
    try:
        built = build(args.names, jobs=args.jobs)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({n: {"ref": IMAGES[n], "archive": str(p)} for n, p in built.items()}))
    else:
        for path in built.values():
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
