"""The oracles agree with each other, and the comparison can fail.

Every other test trusts ``_trees.diff`` and the oracles in ``_oracles``; this file is why:

- ``umoci unpack`` (flattening), the kernel overlay and fuse-overlayfs over the GNU tar per-layer
  dirs give the same tree for the edge image, entry by entry, with zero differences
  (docs/testing.rst "Oracles");
- each view has every edge the image builder promises (a table of named expectations), so the
  agreement is not the vacuous one of two empty or two wrong trees;
- the per-layer dirs are in overlay form (0/0 whiteouts, ``trusted.overlay.opaque=y``, no markers);
- corner cases umoci never writes itself (a whiteout and a dir of the same name in one layer,
  whiteouts of missing paths, ...) also agree, umoci vs kernel overlay;
- ``diff`` reports each kind of difference (a table of named mutations of a real copy on disk), and
  does not report what it documents as ignored.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _images import (  # noqa: F401
    DEEP_PATH,
    LONG_NAME,
    NON_UTF8_NAME,
    OLD_MTIME,
    BuiltImage,
    TarEntry,
    busybox_image,
    edge_image,
    edge_rootfs,
    edge_tar_layers,
    gzip_bytes,
    sha256,
    tar_bytes,
    write_layout,
)
from _oracles import fuse_overlayfs, kernel_overlay, tar_layer_dirs, umoci_unpack
from _trees import Tree, assert_same_tree, diff, snapshot
from conftest import require_fuse, require_root, require_tool

MiB = 1 << 20


@pytest.fixture(scope="session")
def umoci_tree(edge_rootfs: Path) -> Tree:
    return snapshot(edge_rootfs)


# ---------------------------------------------------------------------------------------------
# The edges, as seen in a merged view.

def _children(tree: Tree, parent: str) -> set[str]:
    prefix = parent + "/"
    return {p[len(prefix):] for p in tree.paths() if p.startswith(prefix) and "/" not in p[len(prefix):]}


@dataclass(frozen=True)
class Expect:
    name: str
    check: Callable[[Tree], bool]


MERGED_EXPECTATIONS = [
    Expect("busybox binary", lambda t: t["bin/busybox"].type == "reg" and t["bin/busybox"].mode == 0o755),
    Expect("applet symlink", lambda t: t["bin/sh"].type == "lnk" and t["bin/sh"].target == b"busybox"),
    Expect("setuid 4755", lambda t: t["edge/setuid"].mode == 0o4755),
    Expect("security.capability", lambda t: t["edge/cap"].xattr("security.capability") is not None),
    Expect("user.* xattrs", lambda t: t["edge/xattr"].xattr("user.test") == b"value"
           and t["edge/xattr"].xattr("user.binary") == b"\xff\x00\xfe"),
    Expect("char device 1/3", lambda t: t["edge/chr"].type == "chr" and t["edge/chr"].rdev == (1, 3)),
    Expect("block device 7/0", lambda t: t["edge/blk"].type == "blk" and t["edge/blk"].rdev == (7, 0)),
    Expect("fifo", lambda t: t["edge/fifo"].type == "fifo" and t["edge/fifo"].mode == 0o640),
    Expect("sparse 64 MiB", lambda t: t["edge/sparse"].size == 64 * MiB),
    Expect("hard-link pair", lambda t: frozenset({"edge/hl1", "edge/hl2"}) in t.hardlinks),
    Expect("255-byte name", lambda t: f"edge/long/{LONG_NAME}" in t),
    Expect("path over 256 bytes", lambda t: DEEP_PATH in t and len(DEEP_PATH) > 256),
    Expect("non-UTF-8 name", lambda t: f"edge/{NON_UTF8_NAME}" in t
           and os.fsencode(f"edge/{NON_UTF8_NAME}") == b"edge/caf\xe9"),
    Expect("uid 3000000", lambda t: (t["edge/uid3000000"].uid, t["edge/uid3000000"].gid) == (3_000_000,) * 2),
    Expect("symlink mtime 2001", lambda t: t["edge/oldlink"].mtime == OLD_MTIME * 10**9),
    Expect("empty dir", lambda t: t["edge/emptydir"].mode == 0o711 and not _children(t, "edge/emptydir")),
    Expect("whiteouts of file, dir, symlink", lambda t: _children(t, "del") == {"keep"}),
    Expect("whiteout in hand-made layer", lambda t: "edge/old" not in t and "edge/oldlink" in t),
    Expect("chmod only", lambda t: t["meta/chmod"].mode == 0o600),
    Expect("chown only", lambda t: (t["meta/chown"].uid, t["meta/chown"].gid) == (1234, 5678)),
    Expect("file -> dir", lambda t: t["type/f2d"].type == "dir" and _children(t, "type/f2d") == {"inside"}),
    Expect("dir -> file", lambda t: t["type/d2f"].type == "reg" and "type/d2f/child" not in t),
    Expect("symlink -> file", lambda t: t["type/l2f"].type == "reg"),
    Expect("file -> symlink", lambda t: t["type/f2l"].target == b"../etc/group"),
    Expect("recreated dir", lambda t: _children(t, "recreate") == {"new"}),
    Expect("content change", lambda t: t["etc/passwd"].size == 102),
    Expect("hard link broken across layers", lambda t: not any("hlbreak/a" in g for g in t.hardlinks)
           and t["hlbreak/a"].size != t["hlbreak/b"].size),
    Expect("opaque dir, marker first", lambda t: _children(t, "opq") == {"new"} and t["opq"].mode == 0o750),
    Expect("opaque dir, marker last", lambda t: _children(t, "opq2") == {"z"}),
    Expect("x naming without ./", lambda t: t["mixed/file"].type == "reg"),
    Expect("no markers visible", lambda t: not any(os.path.basename(p).startswith(".wh.") for p in t.paths())),
    Expect("no whiteouts visible", lambda t: not any(e.is_whiteout for e in t.entries.values())),
]


@pytest.mark.parametrize("expect", MERGED_EXPECTATIONS, ids=lambda e: e.name)
def test_umoci_view_has_every_edge(umoci_tree: Tree, expect: Expect) -> None:
    assert expect.check(umoci_tree), f"{expect.name}: not as built"


def test_kernel_overlay_of_tar_layers_equals_umoci(edge_tar_layers: list[Path], umoci_tree: Tree,
                                                   tmp_path: Path) -> None:
    require_root()
    with kernel_overlay(edge_tar_layers[::-1], tmp_path / "mnt") as mnt:
        kernel = snapshot(mnt)
    assert not os.path.ismount(tmp_path / "mnt")
    assert_same_tree(umoci_tree, kernel, names=("umoci", "kernel overlay"))
    failed = [e.name for e in MERGED_EXPECTATIONS if not e.check(kernel)]
    assert not failed


def test_fuse_overlayfs_of_tar_layers_equals_umoci(edge_tar_layers: list[Path], umoci_tree: Tree,
                                                   tmp_path: Path) -> None:
    require_fuse()
    require_tool("fuse-overlayfs")
    with fuse_overlayfs(edge_tar_layers[::-1], tmp_path / "mnt") as mnt:
        fuse = snapshot(mnt)
    assert not os.path.ismount(tmp_path / "mnt")
    assert_same_tree(umoci_tree, fuse, names=("umoci", "fuse-overlayfs"))


def test_kernel_overlay_single_layer(busybox_image: BuiltImage, tmp_path: Path) -> None:
    """One lower dir (the kernel wants two), in a dir whose name holds ':' (escaped)."""
    layers = tar_layer_dirs(busybox_image.layout, busybox_image.tag, tmp_path / "odd:name")
    rootfs = umoci_unpack(busybox_image.layout, busybox_image.tag, tmp_path / "bundle")
    with kernel_overlay(layers, tmp_path / "mnt") as mnt:
        kernel = snapshot(mnt)
        assert (mnt / "bin" / "busybox").stat().st_size > 0
    assert_same_tree(snapshot(rootfs), kernel, names=("umoci", "kernel overlay"))


def test_mount_helpers_unmount_on_failure(edge_tar_layers: list[Path], tmp_path: Path) -> None:
    require_root()
    with pytest.raises(RuntimeError):
        with kernel_overlay(edge_tar_layers[::-1], tmp_path / "mnt"):
            raise RuntimeError("body failed")
    assert not os.path.ismount(tmp_path / "mnt")


# ---------------------------------------------------------------------------------------------
# The per-layer dirs are in overlay form.

@dataclass(frozen=True)
class LayerExpect:
    name: str
    layer: int
    check: Callable[[Tree], bool]


def _whiteout(t: Tree, path: str) -> bool:
    return path in t and t[path].is_whiteout and t[path].mode == 0


LAYER_EXPECTATIONS = [
    LayerExpect("whiteout of a file", 1, lambda t: _whiteout(t, "del/file")),
    LayerExpect("whiteout of a dir", 1, lambda t: _whiteout(t, "del/dir")),
    LayerExpect("whiteout of a symlink", 1, lambda t: _whiteout(t, "del/link")),
    LayerExpect("whiteout of a deleted-then-recreated dir", 1, lambda t: _whiteout(t, "recreate")),
    LayerExpect("marker below a file is dropped", 1, lambda t: t["type/d2f"].type == "reg"
                and "type/d2f/child" not in t),
    LayerExpect("metadata-only change carried whole", 1, lambda t: t["meta/chmod"].mode == 0o600
                and t["meta/chmod"].size == 9),
    LayerExpect("recreated dir is not opaque", 2, lambda t: t["recreate"].xattr("trusted.overlay.opaque") is None),
    LayerExpect("opaque dir, marker first", 3, lambda t: t["opq"].xattr("trusted.overlay.opaque") == b"y"
                and _children(t, "opq") == {"new"}),
    LayerExpect("opaque dir, marker last", 3, lambda t: t["opq2"].xattr("trusted.overlay.opaque") == b"y"
                and _children(t, "opq2") == {"z"}),
    LayerExpect("whiteout in an implied dir", 3, lambda t: _whiteout(t, "edge/old")),
    LayerExpect("only opaque dirs are opaque", 3, lambda t: sum(
        e.xattr("trusted.overlay.opaque") is not None for e in t.entries.values()) == 2),
]


@pytest.fixture(scope="session")
def layer_trees(edge_tar_layers: list[Path]) -> list[Tree]:
    return [snapshot(d, overlay_xattrs=True) for d in edge_tar_layers]


@pytest.mark.parametrize("expect", LAYER_EXPECTATIONS, ids=lambda e: e.name)
def test_tar_layer_dirs_are_overlay_form(layer_trees: list[Tree], expect: LayerExpect) -> None:
    assert expect.check(layer_trees[expect.layer]), f"layer {expect.layer}: {expect.name}"


def test_tar_layer_dirs_hold_no_markers(layer_trees: list[Tree], edge_image: BuiltImage) -> None:
    assert len(layer_trees) == len(edge_image.diff_ids) == 4
    for i, tree in enumerate(layer_trees):
        markers = [p for p in tree.paths() if os.path.basename(p).startswith(".wh.")]
        assert not markers, f"layer {i}"


def test_overlay_xattrs_hidden_by_default(edge_tar_layers: list[Path], layer_trees: list[Tree]) -> None:
    plain = snapshot(edge_tar_layers[3])
    assert plain["opq"].xattr("trusted.overlay.opaque") is None
    assert diff(plain, layer_trees[3]) == ["'opq': xattr trusted.overlay.opaque: a -, b b'y'",
                                           "'opq2': xattr trusted.overlay.opaque: a -, b b'y'"]


# ---------------------------------------------------------------------------------------------
# diff() sees every kind of difference, on a real copy.

@dataclass(frozen=True)
class Mutation:
    name: str
    mutate: Callable[[Path], None]
    #: Substrings, each of which some reported line must contain.  Empty: no difference expected.
    reported: tuple[str, ...]


def _rewrite(path: Path, data: bytes) -> None:
    st = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _break_link(path: Path) -> None:
    data, st = path.read_bytes(), path.stat()
    path.unlink()
    path.write_bytes(data)
    os.chmod(path, stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _retarget(path: Path, target: str) -> None:
    st = path.lstat()
    path.unlink()
    path.symlink_to(target)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


MUTATIONS = [
    Mutation("mode", lambda r: os.chmod(r / "edge/setuid", 0o755), ("'edge/setuid': mode: a 4755, b 0755",)),
    Mutation("content, same size and mtime", lambda r: _rewrite(r / "etc/group", b"X" * 27),
             ("'etc/group': sha256",)),
    Mutation("size", lambda r: _rewrite(r / "etc/group", b"short"), ("'etc/group': size: a 27, b 5",)),
    Mutation("xattr value", lambda r: os.setxattr(r / "edge/xattr", "user.test", b"other"),
             ("'edge/xattr': xattr user.test: a b'value', b b'other'",)),
    Mutation("xattr removed", lambda r: os.removexattr(r / "edge/cap", "security.capability"),
             ("'edge/cap': xattr security.capability",)),
    Mutation("owner", lambda r: os.chown(r / "meta/chown", 1234, 1), ("'meta/chown': gid: a 5678, b 1",)),
    Mutation("mtime", lambda r: os.utime(r / "etc/passwd", (5, 5)), ("'etc/passwd': mtime",)),
    Mutation("symlink target", lambda r: _retarget(r / "bin/ls", "busybox2"),
             ("'bin/ls': target: a b'busybox', b b'busybox2'",)),
    Mutation("missing", lambda r: os.unlink(r / "del/keep"), ("'del/keep': only in a (reg)",)),
    Mutation("extra", lambda r: (r / "edge/emptydir/new").write_bytes(b""), ("'edge/emptydir/new': only in b",)),
    Mutation("type", lambda r: (os.unlink(r / "edge/fifo"), (r / "edge/fifo").mkdir()),
             ("'edge/fifo': type: a 'fifo', b 'dir'",)),
    Mutation("device numbers", lambda r: (os.unlink(r / "edge/chr"),
                                          os.mknod(r / "edge/chr", stat.S_IFCHR | 0o666, os.makedev(1, 5))),
             ("'edge/chr': rdev: a (1, 3), b (1, 5)",)),
    Mutation("hard link broken", lambda r: _break_link(r / "edge/hl2"),
             ("hard links: a groups ['edge/hl1', 'edge/hl2'], b does not",)),
    Mutation("hard link made", lambda r: (os.unlink(r / "del/keep"), os.link(r / "etc/group", r / "del/keep")),
             ("hard links: b groups ['del/keep', 'etc/group'], a does not", "'del/keep': sha256")),
    Mutation("non-UTF-8 name", lambda r: os.unlink(os.fsencode(r / "edge" / NON_UTF8_NAME)),
             ("'edge/caf\\udce9': only in a",)),
    Mutation("root mode", lambda r: os.chmod(r, 0o700), ("'.': mode: a 0755, b 0700",)),
    # Documented as not compared: they must not be reported.
    Mutation("dir mtime ignored", lambda r: os.utime(r / "etc", (5, 5)), ()),
    Mutation("overlay xattr ignored", lambda r: os.setxattr(r / "opq", "trusted.overlay.opaque", b"y"), ()),
]


@pytest.fixture
def rootfs_copy(edge_rootfs: Path, tmp_path: Path) -> Iterator[Path]:
    """A fresh ``cp -a`` of the umoci rootfs (xattrs, owners, links, devices, times kept)."""
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", "--sparse=always", os.fspath(edge_rootfs), os.fspath(copy)], check=True)
    yield copy
    shutil.rmtree(copy, ignore_errors=True)


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_diff_reports_each_difference(umoci_tree: Tree, rootfs_copy: Path, mutation: Mutation) -> None:
    assert_same_tree(umoci_tree, snapshot(rootfs_copy), names=("original", "cp -a"))
    mutation.mutate(rootfs_copy)
    problems = diff(umoci_tree, snapshot(rootfs_copy))
    if not mutation.reported:
        assert problems == []
        return
    for wanted in mutation.reported:
        assert any(wanted in line for line in problems), f"{wanted!r} not in {problems}"
    with pytest.raises(AssertionError, match="differ in"):
        assert_same_tree(umoci_tree, snapshot(rootfs_copy))


def test_snapshot_options(edge_rootfs: Path, rootfs_copy: Path) -> None:
    """hash_content=False / mtimes=False really stop comparing those fields."""
    _rewrite(rootfs_copy / "etc/group", b"X" * 27)
    os.utime(rootfs_copy / "etc/passwd", (5, 5))
    a = snapshot(edge_rootfs, hash_content=False, mtimes=False)
    assert a["etc/group"].sha256 is None and a["etc/passwd"].mtime is None
    assert diff(a, snapshot(rootfs_copy, hash_content=False, mtimes=False)) == []
    assert len(diff(snapshot(edge_rootfs), snapshot(rootfs_copy))) == 2


def test_snapshot_does_not_cross_mounts(busybox_image: BuiltImage, tmp_path: Path) -> None:
    require_root()
    layers = tar_layer_dirs(busybox_image.layout, busybox_image.tag, tmp_path / "layers")
    outer = tmp_path / "outer"
    (outer / "mnt").mkdir(parents=True)
    (outer / "file").write_text("x")
    with kernel_overlay(layers, outer / "mnt"):
        tree = snapshot(outer)
    assert set(tree.paths()) == {".", "file", "mnt"}
    assert tree["mnt"].type == "dir"


# ---------------------------------------------------------------------------------------------
# Corner cases umoci's repack never writes: hand-made two-layer images, umoci vs kernel overlay.

LOWER = [TarEntry("x/", tarfile.DIRTYPE, mode=0o755), TarEntry("x/a", data=b"a\n"),
         TarEntry("x/sub/", tarfile.DIRTYPE, mode=0o755), TarEntry("x/sub/b", data=b"b\n"),
         TarEntry("keep", data=b"keep\n")]

CORNER_CASES = {
    # name: (upper layer entries, the children of x expected in the merged view, or None = no x)
    "whiteout before own dir": ([TarEntry(".wh.x"), TarEntry("x/", tarfile.DIRTYPE, mode=0o700),
                                 TarEntry("x/new", data=b"new\n")], {"new"}),
    "whiteout after own dir": ([TarEntry("x/", tarfile.DIRTYPE, mode=0o700), TarEntry("x/new", data=b"new\n"),
                                TarEntry(".wh.x")], {"new"}),
    "whiteout of a missing path": ([TarEntry(".wh.missing"), TarEntry("x/.wh.nothere")], {"a", "sub"}),
    "opaque marker only": ([TarEntry("x/.wh..wh..opq")], set()),
    "whiteout then file of the name": ([TarEntry(".wh.x"), TarEntry("x", data=b"file now\n")], None),
}


@pytest.mark.parametrize("name", CORNER_CASES)
def test_corner_case_umoci_equals_kernel_overlay(name: str, tmp_path: Path) -> None:
    require_root()
    require_tool("umoci")
    upper, children = CORNER_CASES[name]
    lower_tar, upper_tar = tar_bytes(LOWER), tar_bytes(upper)
    img = write_layout(tmp_path / "layout", "t", [(gzip_bytes(lower_tar), sha256(lower_tar)),
                                                  (gzip_bytes(upper_tar), sha256(upper_tar))])
    umoci = snapshot(umoci_unpack(img.layout, img.tag, tmp_path / "bundle"))
    layers = tar_layer_dirs(img.layout, img.tag, tmp_path / "layers")
    with kernel_overlay(layers[::-1], tmp_path / "mnt") as mnt:
        kernel = snapshot(mnt)
    assert_same_tree(umoci, kernel, names=("umoci", "kernel overlay"))
    if children is None:
        assert kernel["x"].type == "reg"
    else:
        assert _children(kernel, "x") == children
    assert "keep" in kernel
