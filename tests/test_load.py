"""`layerfs load`, end to end: the foundation's "done means".

For the edge image (every layer edge, ``_images``) in each format a user may hand us (OCI dir with
gzip layers, oci-archive, docker-archive, OCI dir with zstd layers, OCI dir in docker v2s2 form):

- ``layerfs --root R load SOURCE`` prints the image ID, and it is the config digest;
- each layer dir in the store equals the GNU tar oracle's dir for that layer, entry by entry,
  overlay-private xattrs included (0/0 whiteouts, ``trusted.overlay.opaque=y``);
- the kernel overlay of the store's layer dirs equals ``umoci unpack``'s rootfs;
- ``layerfs inspect`` and ``layerfs images`` show it as docker does;
- all copies in one store make one image and one dir per diff ID; a second image shares the base;
- hostile layouts fail with exit 1 and a one-line ``Error: ...`` naming the culprit, and leave
  the store empty and everything outside it untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from _images import (  # noqa: F401
    HOSTILE_KINDS,
    BuiltImage,
    Copies,
    Copy,
    build_hostile,
    edge_copies,
    edge_image,
    edge_rootfs,
    edge_tar_layers,
    second_image,
    sha256,
)
from _oracles import blob_path, kernel_overlay, skopeo_config_digest
from _trees import Tree, assert_same_tree, diff, snapshot
from conftest import require_root, require_tool, run_layerfs

from layerfs import Store

COPY_NAMES = ("oci", "oci-archive", "docker-archive", "zstd", "v2s2")


def _copy(copies: Copies, name: str) -> Copy:
    return {c.name: c for c in copies.all()}[name]


@dataclass(frozen=True)
class Loaded:
    """One copy loaded into its own fresh store."""

    copy: Copy
    root: Path
    proc: subprocess.CompletedProcess[str]


_LOADED: dict[str, Loaded] = {}


@pytest.fixture(scope="module", autouse=True)
def _needs_root() -> None:
    require_root()
    require_tool("skopeo", "umoci")


def _load_once(copies: Copies, name: str, factory: pytest.TempPathFactory) -> Loaded:
    if name not in _LOADED:
        root = factory.mktemp(f"store-{name}") / "root"
        proc = run_layerfs("load", _copy(copies, name).source, root=root, check=False)
        _LOADED[name] = Loaded(_copy(copies, name), root, proc)
    loaded = _LOADED[name]
    assert loaded.proc.returncode == 0, f"layerfs load {loaded.copy.source}:\n{loaded.proc.stderr}"
    return loaded


@pytest.fixture(params=COPY_NAMES)
def loaded(request: pytest.FixtureRequest, edge_copies: Copies,
           tmp_path_factory: pytest.TempPathFactory) -> Loaded:
    return _load_once(edge_copies, request.param, tmp_path_factory)


@pytest.fixture(scope="session")
def oracle_layer_trees(edge_tar_layers: list[Path]) -> list[Tree]:
    return [snapshot(d, overlay_xattrs=True) for d in edge_tar_layers]


@pytest.fixture(scope="session")
def umoci_rootfs_tree(edge_rootfs: Path) -> Tree:
    return snapshot(edge_rootfs)


def _store(root: Path) -> Store:
    return Store(root)


# ---------------------------------------------------------------------------------------------
# One copy per store

def test_copies_have_the_same_image_id(edge_copies: Copies, edge_image: BuiltImage) -> None:
    """The fixture's promise (docs/oci.rst "Digests and identifiers"): every copy has the config,
    hence the image ID."""
    for copy in edge_copies.all():
        if copy.image is None:
            assert skopeo_config_digest(copy.source) == edge_image.config_digest, copy.name
        else:  # skopeo 1.9's oci: transport cannot read a v2s2 manifest back: read the layout
            config = blob_path(copy.image.layout, copy.image.config_digest).read_bytes()
            assert sha256(config) == copy.image.config_digest == edge_image.config_digest, copy.name
    assert edge_copies.zstd.image is not None and edge_copies.v2s2.image is not None
    assert edge_copies.zstd.image.layer_digests != edge_image.layer_digests
    assert set(edge_copies.zstd.image.layer_media_types) == {"application/vnd.oci.image.layer.v1.tar+zstd"}
    assert set(edge_copies.v2s2.image.layer_media_types) == {"application/vnd.docker.image.rootfs.diff.tar.gzip"}


def test_load_prints_the_image_id(loaded: Loaded, edge_image: BuiltImage) -> None:
    """As docker load: `Loaded image: NAME` per name the source gives, else `Loaded image ID: ID`."""
    tags = _store(loaded.root).get(edge_image.config_digest).repo_tags
    want = [f"Loaded image: {t}" for t in tags] or [f"Loaded image ID: {edge_image.config_digest}"]
    assert loaded.proc.stdout.splitlines() == want
    quiet = run_layerfs("load", "-q", loaded.copy.source, root=loaded.root)
    assert quiet.stdout.strip() == edge_image.config_digest
    images = _store(loaded.root).images()
    assert [i.id for i in images] == [edge_image.config_digest]
    assert list(images[0].diff_ids) == list(edge_image.diff_ids)


def test_layer_dirs_equal_the_tar_oracle(loaded: Loaded, edge_image: BuiltImage,
                                         oracle_layer_trees: list[Tree]) -> None:
    store = _store(loaded.root)
    dirs = store.layer_dirs(store.get(edge_image.config_digest))
    assert len(dirs) == len(oracle_layer_trees) == 4
    problems = []
    for i, (ours, oracle) in enumerate(zip(dirs, oracle_layer_trees)):
        problems += [f"layer {i}: {line}" for line in
                     diff(snapshot(ours, overlay_xattrs=True), oracle, names=("layerfs", "GNU tar"))]
    assert not problems, "\n".join(problems[:30])


def test_kernel_overlay_of_store_equals_umoci(loaded: Loaded, edge_image: BuiltImage, umoci_rootfs_tree: Tree,
                                              tmp_path: Path) -> None:
    store = _store(loaded.root)
    dirs = store.layer_dirs(store.get(edge_image.config_digest))
    with kernel_overlay(dirs[::-1], tmp_path / "mnt") as mnt:
        merged = snapshot(mnt)
    assert_same_tree(merged, umoci_rootfs_tree, names=("kernel overlay of layerfs", "umoci"))


def test_inspect(loaded: Loaded, edge_image: BuiltImage) -> None:
    out = json.loads(run_layerfs("inspect", edge_image.config_digest, root=loaded.root).stdout)
    assert len(out) == 1
    assert out[0]["Id"] == edge_image.config_digest
    assert out[0]["RootFS"] == {"Type": "layers", "Layers": list(edge_image.diff_ids)}
    if loaded.copy.name == "oci-archive":  # its entry has only a bare tag: no name, as docker load
        assert out[0]["RepoTags"] == []
    else:
        assert out[0]["RepoTags"], "a loaded image is tagged (layout name:tag, or the archive's RepoTags)"
    for tag in out[0]["RepoTags"]:
        again = json.loads(run_layerfs("inspect", tag, root=loaded.root).stdout)
        assert again[0]["Id"] == edge_image.config_digest


def test_images_lists_it(loaded: Loaded, edge_image: BuiltImage) -> None:
    lines = run_layerfs("images", root=loaded.root).stdout.splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    short = edge_image.config_digest.split(":")[1][:12]
    rows = [line.split() for line in lines[1:]]
    assert rows and all(short in row for row in rows), lines
    tags = {f"{row[0]}:{row[1]}" for row in rows}
    assert {t.removeprefix("docker.io/library/") for t in tags} >= {
        t.removeprefix("docker.io/library/") for t in _store(loaded.root).get(edge_image.config_digest).repo_tags}


# ---------------------------------------------------------------------------------------------
# Several copies and images in one store

def _entries(path: Path) -> set[str]:
    return set(os.listdir(path)) if path.exists() else set()


def test_all_copies_share_one_image_and_its_layers(edge_copies: Copies, edge_image: BuiltImage,
                                                   tmp_path: Path) -> None:
    root = tmp_path / "root"
    for copy in edge_copies.all():
        out = run_layerfs("load", "-q", copy.source, root=root).stdout.strip()
        assert out == edge_image.config_digest, copy.name
    store = _store(root)
    assert [i.id for i in store.images()] == [edge_image.config_digest]
    assert _entries(root / "layers") == {d.split(":")[1] for d in edge_image.diff_ids}
    assert [store.layer_dir(d) for d in edge_image.diff_ids] == store.layer_dirs(store.images()[0])
    assert not _entries(root / "tmp")


def test_bare_paths_are_detected(edge_copies: Copies, edge_image: BuiltImage, tmp_path: Path) -> None:
    """A layout dir, an oci-archive and a docker-archive given as plain paths load the same image."""
    root = tmp_path / "root"
    paths = [edge_image.layout,
             Path(edge_copies.oci_archive.source.split(":")[1]),
             Path(edge_copies.docker_archive.source.split(":", 1)[1])]
    for path in paths:
        assert path.exists()
        out = run_layerfs("load", "-q", str(path), root=root).stdout.split()
        assert out == [edge_image.config_digest], path
    assert len(_store(root).images()) == 1


def test_a_second_image_shares_the_base_layer(edge_image: BuiltImage, second_image: BuiltImage,
                                              tmp_path: Path) -> None:
    assert second_image.diff_ids[0] == edge_image.diff_ids[0]
    root = tmp_path / "root"
    run_layerfs("load", edge_image.source, root=root)
    run_layerfs("load", second_image.source, root=root)
    store = _store(root)
    assert {i.id for i in store.images()} == {edge_image.config_digest, second_image.config_digest}
    first, second = store.get(edge_image.config_digest), store.get(second_image.config_digest)
    assert store.layer_dirs(first)[0] == store.layer_dirs(second)[0]
    assert len(_entries(root / "layers")) == len(set(edge_image.diff_ids) | set(second_image.diff_ids)) == 5
    assert (store.layer_dirs(second)[1] / "etc" / "second-release").read_text() == "second image\n"


# ---------------------------------------------------------------------------------------------
# Hostile layouts

def _files_below(root: Path) -> set[str]:
    """Every non-directory under root, relative."""
    out = set()
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            out.add(os.path.relpath(os.path.join(dirpath, name), root))
    return out


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
def test_hostile_layout_is_refused_and_leaves_nothing(kind: str, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_text("untouched\n")
    hostile = build_hostile(kind, tmp_path / "build", outside=outside)
    root = tmp_path / "store" / "root"
    before = snapshot(tmp_path)
    hostname_links = os.stat("/etc/hostname").st_nlink if os.path.exists("/etc/hostname") else None

    proc = run_layerfs("load", "-q", hostile.image.source, root=root, check=False)

    lines = proc.stderr.strip().splitlines()
    contained = kind == "symlink-escape" and proc.returncode == 0
    if contained:
        # A symlink in the layer is resolved inside it (RESOLVE_IN_ROOT, as moby's
        # FollowSymlinkInScope does): accepted, provided the file landed inside the layer.
        store = _store(root)
        (image,) = store.images()
        assert any(p.endswith("pwned") for p in _files_below(store.layer_dirs(image)[0]))
    else:
        assert proc.returncode == 1, f"{kind}: exit {proc.returncode}\n{proc.stderr}"
        assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
        assert any(name in lines[0] for name in hostile.names), f"{lines[0]!r} names none of {hostile.names}"
        assert "Traceback" not in proc.stderr
        assert _store(root).images() == []
        leftovers = {f for f in _files_below(root) if f not in ("lock", "repositories.json")}
        assert not leftovers, f"{kind}: the store kept {sorted(leftovers)}"
        assert not _entries(root / "tmp") and not _entries(root / "layers")

    after = snapshot(tmp_path)
    outside_changes = [line for line in diff(before, after, names=("before", "after"))
                       if not line.startswith("'store")]
    assert not outside_changes, f"{kind} changed things outside the store:\n" + "\n".join(outside_changes)
    if hostname_links is not None:
        assert os.stat("/etc/hostname").st_nlink == hostname_links


def test_hostile_builders_are_consistent_but_for_the_hostile_part(tmp_path: Path) -> None:
    """skopeo copies every hostile layout except the corrupt blob (it checks blob digests only),
    so a loader cannot fail on anything but the intended defect."""
    for kind in HOSTILE_KINDS:
        hostile = build_hostile(kind, tmp_path / kind, outside=tmp_path / "outside")
        proc = subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet", hostile.image.source,
                               f"oci:{tmp_path / kind / 'copy'}:x"], capture_output=True, text=True)
        if kind == "corrupt-blob":
            assert proc.returncode != 0 and "digest" in proc.stderr.lower(), proc.stderr
        else:
            assert proc.returncode == 0, f"{kind}: {proc.stderr}"
