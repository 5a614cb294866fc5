"""images/build.py: the archive format, layers, whiteouts and cache keys (no image is built)."""

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from remote_docker_operator import names

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rdo_images_build", ROOT / "images/build.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


build = _load()


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RDO_CACHE", str(tmp_path / "cache"))


def make_rootfs(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "etc/sub").mkdir(parents=True)
    (root / "proc").mkdir()
    (root / "bin/tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "bin/tool").chmod(0o755)
    (root / "bin/alias").symlink_to("tool")
    os.link(root / "bin/tool", root / "bin/hardlink")
    (root / "etc/config").write_text("a=1\n")
    (root / "etc/sub/gone").write_text("x\n")
    (root / "etc/old").write_text("old\n")
    return root


def read_archive(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: (f.read() if (f := tar.extractfile(m)) else b"") for m in tar.getmembers()}


def test_the_table_is_pinned_and_complete() -> None:
    assert (
        set(build.IMAGES)
        == set(build.PLANS)
        == {"pause", "busybox", "dind", "job", "coredns", "registry", "local-path", "operator"}
    )
    for ref in build.IMAGES.values():
        repo, tag = build.split_ref(ref)
        assert repo.startswith("rdo.local/")
        assert tag not in ("", "latest")


def test_split_ref() -> None:
    assert build.split_ref("rdo.local/busybox:1.36") == ("rdo.local/busybox", "1.36")
    with pytest.raises(ValueError, match="no tag"):
        build.split_ref("rdo.local:5000/busybox")


def test_layer_holds_the_tree_with_numeric_owners(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path / "rootfs")
    (root / "proc/self").mkdir()  # the contents of proc, sys and dev never go into a layer
    out = tmp_path / "layer.tar"
    build.write_layer(root, out)
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert "proc" in members
    assert "proc/self" not in members
    assert members["bin/tool"].mode == 0o755
    assert members["bin/alias"].issym()
    assert members["bin/alias"].linkname == "tool"
    assert members["bin/hardlink"].islnk() or members["bin/tool"].islnk()
    assert all(m.uname == "" and m.gname == "" for m in members.values())


def test_archive_is_both_an_oci_layout_and_a_docker_archive(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path / "rootfs")
    config = build.ImageConfig(
        entrypoint=("/bin/tool",), cmd=("--help",), user="65535:65535", exposed_ports=("53/udp",)
    )
    out = build.rootfs_to_archive(root, "rdo.local/thing:1.2", config, tmp_path / "thing.tar")
    files = read_archive(out)

    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    (descriptor,) = index["manifests"]
    assert descriptor["annotations"] == {
        "io.containerd.image.name": "rdo.local/thing:1.2",
        "org.opencontainers.image.ref.name": "1.2",
    }
    manifest_blob = files["blobs/sha256/" + descriptor["digest"].removeprefix("sha256:")]
    assert hashlib.sha256(manifest_blob).hexdigest() == descriptor["digest"][7:]
    assert len(manifest_blob) == descriptor["size"]
    manifest = json.loads(manifest_blob)

    (docker,) = json.loads(files["manifest.json"])
    assert docker["RepoTags"] == ["rdo.local/thing:1.2"]
    assert docker["Config"] == "blobs/sha256/" + manifest["config"]["digest"][7:]
    assert docker["Layers"] == [
        "blobs/sha256/" + layer["digest"][7:] for layer in manifest["layers"]
    ]

    cfg: dict[str, Any] = json.loads(files[docker["Config"]])
    assert cfg["architecture"] == "amd64"
    assert cfg["os"] == "linux"
    assert cfg["config"]["Entrypoint"] == ["/bin/tool"]
    assert cfg["config"]["Cmd"] == ["--help"]
    assert cfg["config"]["User"] == "65535:65535"
    assert cfg["config"]["WorkingDir"] == "/"
    assert cfg["config"]["ExposedPorts"] == {"53/udp": {}}
    assert cfg["config"]["Env"][0].startswith("PATH=")
    for path, diff_id in zip(docker["Layers"], cfg["rootfs"]["diff_ids"], strict=True):
        assert "sha256:" + hashlib.sha256(files[path]).hexdigest() == diff_id


def test_diff_layer_has_changes_and_whiteouts(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path / "rootfs")
    base = tmp_path / "base.tar"
    build.write_layer(root, base)
    (root / "etc/config").write_text("a=2, longer\n")
    (root / "etc/new").write_text("new\n")
    (root / "etc/old").unlink()
    (root / "etc/sub/gone").unlink()
    (root / "etc/sub").rmdir()

    changed, deleted = build.diff_tree(base, root)
    assert {"etc/config", "etc/new"} <= set(changed)
    assert not {"bin/tool", "bin/alias", "bin/hardlink"} & set(changed)
    assert deleted == ["etc/old", "etc/sub"]  # not etc/sub/gone: its directory is whited out

    layer = tmp_path / "diff.tar"
    build.write_layer(root, layer, changed, deleted)
    with tarfile.open(layer) as tar:
        names = set(tar.getnames())
    assert {"etc/.wh.old", "etc/.wh.sub", "etc/new", "etc/config"} <= names


def test_keys_follow_inputs_and_the_base_layer_is_shared() -> None:
    assert build.input_key("a", 1) == build.input_key("a", 1)
    assert build.input_key("a", 1) != build.input_key("a", 2)
    assert build.input_key("a", code=(build.write_layer,)) != build.input_key("a")

    dind, job = build.plan_dind(), build.plan_job()
    assert dind.layers[0].key == job.layers[0].key
    assert len(job.layers) == 5  # base, packages, python, images, remote-docker
    assert dind.key != job.key
    assert build.plan_busybox().key == build.plan_busybox().key


def test_cached_layers_are_reused(tmp_path: Path) -> None:
    calls: list[Path] = []

    def produce(out: Path) -> None:
        calls.append(out)
        with tarfile.open(out, "w"):
            pass

    plan = build.LayerPlan("k" * 64, "test", produce)
    first = build.materialize(plan)
    second = build.materialize(plan)
    assert len(calls) == 1
    assert first == second
    assert first.path.parent == tmp_path / "cache/images/layers"


def fake_checkout(root: Path, version: str) -> Path:
    (root / "operator/remote_docker_operator/__pycache__").mkdir(parents=True)
    (root / "pyproject.toml").write_text(f'[project]\nname = "x"\nversion = "{version}"\n')
    (root / "README.md").write_text("# x\n")
    (root / "operator/remote_docker_operator/__init__.py").write_text("")
    (root / "operator/remote_docker_operator/handlers.py").write_text("A = 1\n")
    (root / "operator/remote_docker_operator/__pycache__/handlers.cpython-311.pyc").write_bytes(b"")
    (root / "operator/remote_docker_operator.egg-info").mkdir()
    (root / "gate").mkdir()
    (root / "gate/main.go").write_text("package main\n")
    return root


def test_operator_image_is_tagged_with_the_project_version() -> None:
    with (ROOT / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert build.IMAGES["operator"] == f"rdo.local/remote-docker-operator:{version}"
    plan = build.plan_operator()
    assert plan.ref == build.IMAGES["operator"]
    config = plan.config.to_json()
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["python3", "-m", "remote_docker_operator"]
    assert config["WorkingDir"] == "/"
    assert {"PYTHONPATH=/opt/app", "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1"} <= set(
        config["Env"]
    )
    # the chart runs `python -m remote_docker_operator` and `python -c` (helm test)
    assert "python-is-python3" in build.OPERATOR_PACKAGES
    # jemalloc, preloaded, from the Debian package that ships it
    assert "libjemalloc2" in build.OPERATOR_PACKAGES
    assert {f"LD_PRELOAD={build.JEMALLOC}", "PYTHONMALLOC=malloc"} <= set(config["Env"])


def test_operator_sources_are_the_package_and_its_metadata() -> None:
    sources = build.operator_sources()
    assert {"pyproject.toml", "operator/remote_docker_operator/__main__.py"} <= set(sources)
    assert all(
        name == "pyproject.toml" or name.startswith("operator/remote_docker_operator/")
        for name in sources
    )
    assert not [name for name in sources if "__pycache__" in name or name.endswith(".pyc")]


def test_a_source_change_rebuilds_only_its_layer(tmp_path: Path) -> None:
    checkout = fake_checkout(tmp_path / "repo", "9.8.7")
    first = build.plan_operator(checkout)
    assert first.ref == "rdo.local/remote-docker-operator:9.8.7"
    base, gate, app = first.layers
    assert base.key == build.plan_operator_base().key
    assert base.key != build.plan_debian_base().key

    pyc = checkout / "operator/remote_docker_operator/__pycache__/handlers.cpython-311.pyc"
    pyc.write_bytes(b"compiled")  # not a source
    (checkout / "README.md").write_text("# x, better explained\n")  # the wheel gets a stub
    assert build.plan_operator(checkout).key == first.key

    (checkout / "operator/remote_docker_operator/handlers.py").write_text("A = 2\n")
    second = build.plan_operator(checkout)
    assert [layer.key for layer in second.layers[:2]] == [base.key, gate.key]
    assert second.layers[2].key != app.key
    assert second.key != first.key

    (checkout / "operator/remote_docker_operator/new.py").write_text("")
    third = build.plan_operator(checkout)
    assert third.layers[2].key != second.layers[2].key

    # The gate's layer follows the gate's source, and only it does.
    (checkout / "gate/main.go").write_text("package main // changed\n")
    fourth = build.plan_operator(checkout)
    assert fourth.layers[1].key != gate.key
    assert [fourth.layers[0].key, fourth.layers[2].key] == [base.key, third.layers[2].key]


def test_the_gate_is_where_job_pods_copy_it_from() -> None:
    assert build.GATE_IN_IMAGE == names.GATE_IN_IMAGE
    assert set(build.gate_sources()) == {"go.mod", "main.go"}


def test_manylinux_platforms_cover_older_glibcs() -> None:
    platforms = build.manylinux_platforms("2.36")
    assert platforms[0] == "manylinux_2_36_x86_64"
    assert {"manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64"} <= set(
        platforms
    )
    assert "manylinux2014_x86_64" in platforms
    assert "manylinux_2_37_x86_64" not in platforms
    with pytest.raises(build.BuildError, match="older than manylinux2014"):
        build.manylinux_platforms("2.12")


def test_engine_and_job_images_are_built_from_trixies_docker() -> None:
    """docker.io 26 with BuildKit, and the buildx and compose v2 plugins in the job image; the
    e2e tier proves they work (test_e2e: BuildKit, buildx, compose)."""
    base = build.plan_debian_base()
    assert base.created_by.endswith(" trixie")
    bookworm = build.debian_layer_key(
        "debian-base", build.ENGINE_PACKAGES, build.produce_debian_base, "bookworm"
    )
    assert base.key != bookworm
    assert {"docker-buildx", "docker-compose"} <= set(build.JOB_PACKAGES)
    assert build.IMAGES["dind"].endswith(":26.1")


def test_remote_docker_modules_are_all_engine_cli_imports(tmp_path: Path) -> None:
    """The job image holds only REMOTE_DOCKER_MODULES of the package: engine_cli imports from
    those alone (a relative import of any other module fails here as it would in the image),
    and nothing from outside the standard library (the job image has no kubernetes package)."""
    for name, source in build.remote_docker_sources().items():
        dest = tmp_path / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
    root = tmp_path / build.REMOTE_DOCKER_DIR
    check = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import remote_docker_operator.engine_cli as m; "
        "assert m.__file__.startswith(sys.argv[1]), m.__file__; "
        "assert not {'kubernetes', 'yaml', 'urllib3'} & set(sys.modules), sys.modules; "
        "print(sorted(k for k in sys.modules if k.startswith('remote_docker_operator.')))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", check, str(root)], check=True, capture_output=True, text=True
    ).stdout
    loaded = {f"{m.removesuffix('.py')}" for m in build.REMOTE_DOCKER_MODULES} - {"__init__"}
    assert out.strip() == repr(sorted(f"remote_docker_operator.{m}" for m in loaded))
    # The launcher runs it the same way.
    assert f'sys.path.insert(0, "/{build.REMOTE_DOCKER_DIR}")' in build.REMOTE_DOCKER_LAUNCHER
