"""The overlay rules of the merged index, as a table of named cases (umoci-style).

Each case is a stack of hand-built layer dirs, written in a tiny language (see :func:`build_layer`).
The stack is built twice: in the form layerfs reads (OCI ``.wh.`` markers kept as they are) and in
the kernel's form (markers converted to 0/0 devices and ``trusted.overlay.opaque=y``).  The merged
index of the first (walked through ``layerfs._mount.index``, no FUSE) must equal a real kernel overlay
mount of the second, entry by entry (``_trees``: type, mode, owner, size, content, link target,
device numbers, xattrs, mtime, hard-link groups).  ``test_mount.py`` runs the same cases through
a FUSE mount.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest
from _trees import Entry, Tree, assert_same_tree, snapshot
from conftest import require_root

from layerfs._mount import merge as _merge
from layerfs._mount.index import Index

# ---------------------------------------------------------------------------------------------
# The layer language.  One op per string; paths are relative to the layer root:
#   f PATH [TEXT]      regular file (parents made)      d PATH             directory
#   l PATH TARGET      symlink                           h PATH EXISTING    hard link
#   w PATH             0/0 whiteout                      o PATH             opaque dir (xattr)
#   W PATH             OCI whiteout .wh.NAME             O PATH             OCI opaque dir marker
#   X PATH             xattr whiteout (kernel form; parent marked opaque=x)
#   x PATH NAME=VALUE  set an xattr                      m PATH MODE        chmod (octal)
#   u PATH UID:GID     chown                             c PATH MAJ:MIN     char device
#   p PATH             fifo                              s PATH SIZE        sparse file
#   t PATH NS          mtime (ns)


def _parents(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)


def build_layer(root: Path, ops: Sequence[str], *, kernel_form: bool) -> Path:
    """Create one layer dir from ``ops``; ``kernel_form`` converts OCI markers the moby way."""
    root.mkdir(parents=True, exist_ok=True)
    for op in ops:
        kind, _, rest = op.partition(" ")
        path_s, _, arg = rest.partition(" ")
        p = root / path_s
        if kind == "W" and kernel_form:
            kind = "w"
        if kind == "O" and kernel_form:
            kind = "o"
        if kind == "f":
            _parents(p)
            p.write_text(arg + "\n" if arg else "")
            os.utime(p, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
        elif kind == "d":
            p.mkdir(parents=True, exist_ok=True)
        elif kind == "l":
            _parents(p)
            os.symlink(arg, p)
        elif kind == "h":
            _parents(p)
            os.link(root / arg, p)
        elif kind == "w":
            _parents(p)
            os.mknod(p, 0o600 | stat.S_IFCHR, os.makedev(0, 0))
        elif kind == "o":
            p.mkdir(parents=True, exist_ok=True)
            os.setxattr(p, "trusted.overlay.opaque", b"y")
        elif kind == "W":
            _parents(p)
            (p.parent / f".wh.{p.name}").write_bytes(b"")
        elif kind == "O":
            p.mkdir(parents=True, exist_ok=True)
            (p / ".wh..wh..opq").write_bytes(b"")
        elif kind == "X":
            _parents(p)
            p.write_bytes(b"")
            os.setxattr(p, "trusted.overlay.whiteout", b"")
            os.setxattr(p.parent, "trusted.overlay.opaque", b"x")
        elif kind == "x":
            name, _, value = arg.partition("=")
            os.setxattr(p, name, value.encode(), follow_symlinks=False)
        elif kind == "m":
            os.chmod(p, int(arg, 8))
        elif kind == "u":
            uid, _, gid = arg.partition(":")
            os.chown(p, int(uid), int(gid), follow_symlinks=False)
        elif kind == "c":
            _parents(p)
            major, _, minor = arg.partition(":")
            os.mknod(p, 0o644 | stat.S_IFCHR, os.makedev(int(major), int(minor)))
        elif kind == "p":
            _parents(p)
            os.mkfifo(p)
        elif kind == "s":
            _parents(p)
            with open(p, "wb") as f:
                f.truncate(int(arg))
                f.seek(int(arg) // 2)
                f.write(b"middle")
        elif kind == "t":
            os.utime(p, ns=(int(arg), int(arg)), follow_symlinks=False)
        else:
            raise ValueError(f"unknown op {op!r}")
        if kind in "lcps" and not p.is_dir():  # the same mtime in both builds of a stack
            os.utime(p, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000), follow_symlinks=False)
    return root


def build_stack(base: Path, layers: Sequence[Sequence[str]], *, kernel_form: bool) -> list[Path]:
    """The layer dirs of a case, base first."""
    tag = "k" if kernel_form else "l"
    return [build_layer(base / f"{tag}{i}", ops, kernel_form=kernel_form) for i, ops in enumerate(layers)]


LONG = "n" * 255

#: name -> layers (base first).  Each is one overlay rule (docs/overlay.rst "Layers and lookup",
#: "Whiteouts and opaque directories", "Readdir", "Hard links", "Private xattrs", "Name length").
CASES: dict[str, list[list[str]]] = {
    "upper file wins": [["f a lower", "f keep k"], ["f a upper"]],
    "whiteout of a file": [["f a x", "f b y"], ["w a"]],
    "whiteout of a dir": [["f d/a x", "f d/sub/b y", "f e z"], ["w d"]],
    "whiteout of a symlink": [["l s target", "f t x"], ["w s"]],
    "oci whiteouts of file, dir, symlink": [["f a x", "f d/a y", "l s a", "f k k"], ["W a", "W d", "W s"]],
    "whiteout hides every layer below": [["f d/a 1"], ["f d/a 2", "f d/b 2"], ["w d/a"]],
    "opaque dir": [["f d/a x", "f d/b y"], ["o d", "f d/c z"]],
    "oci opaque dir": [["f d/a x", "f d/b y"], ["O d", "f d/c z"]],
    "opaque dir in the middle": [["f d/a 1"], ["o d", "f d/b 2"], ["f d/c 3"]],
    "opaque dir nested in a merged dir": [["f d/e/a 1", "f d/f 1"], ["o d/e", "f d/e/b 2", "f d/g 2"]],
    "dirs merge across three layers": [["f d/a 1", "f d/s/x 1"], ["f d/b 2", "f d/s/y 2"], ["f d/c 3"]],
    "merged dir metadata from the top": [["d d", "m d 0700", "x d user.k=lower", "f d/a 1"],
                                         ["d d", "m d 0755", "u d 1000:1000", "x d user.k=upper"]],
    "type change file to dir": [["f a x"], ["f a/b y"]],
    "type change dir to file": [["f a/b x", "f a/c y"], ["f a z"]],
    "type change file to symlink": [["f a x"], ["l a /elsewhere"]],
    "type change symlink to dir": [["l a b", "f b x"], ["f a/c y"]],
    "non-dir in the middle cuts the merge": [["f d/a 1"], ["f d 2"], ["f d/c 3"]],
    "recreate after delete": [["f d/a 1", "f d/b 1"], ["w d"], ["f d/c 3"]],
    "recreate file after delete": [["f a 1"], ["w a"], ["f a 3"]],
    "metadata-only change": [["f a same", "m a 0644"], ["f a same", "m a 0600", "u a 1:2"]],
    "hard links in a layer": [["f a x", "h b a", "f d/c y", "h d/e d/c"]],
    "hard link partner whited out": [["f a x", "h b a"], ["w b"]],
    "hard links are per layer": [["f a x", "h b a"], ["f a x", "f c z"]],
    "xattrs listed, private ones hidden": [["f a x", "x a user.one=1", "x a trusted.two=2",
                                            "x a trusted.overlay.secret=s", "d d", "x d user.d=dir"]],
    "devices and fifos": [["c dev/null 1:3", "c dev/zero 1:5", "p dev/fifo"], ["c dev/tty 5:0"]],
    "sparse and long-named files": [["s sparse 10000000", f"f {LONG} long", f"f d/{LONG} long2"]],
    "modes and owners": [["f a x", "m a 4755", "f b y", "m b 2711", "d t", "m t 1777",
                          "f c z", "u c 123:456"]],
    "mtimes": [["f a x", "t a 1234567890123456789", "l s a", "t s 1000000000000000000"]],
    "xattr whiteout": [["f d/a x", "f d/b y"], ["d d", "X d/a"]],
    "empty top layer": [["f a x", "d d", "f d/b y"], []],
    "whiteout without a lower name": [["f a x"], ["f d/b y", "w c"]],
    "opaque marker on a new dir": [["f a x"], ["O n", "f n/b y"]],
    "four layers mixed": [["f usr/bin/a 1", "f usr/lib/x 1", "l usr/bin/sh a", "f etc/p 1"],
                          ["f usr/bin/b 2", "w usr/lib", "f etc/p 2"],
                          ["f usr/lib/y 3", "O etc", "f etc/q 3"],
                          ["W usr/bin/a", "f usr/bin/c 4", "l etc/p /x"]],
}


def index_tree(index: Index, layer_dirs: Sequence[Path]) -> Tree:
    """A ``_trees`` snapshot of what the index says (content read from the backing layer files)."""
    entries: dict[str, Entry] = {}
    by_ino: dict[int, list[str]] = {}
    kinds = {stat.S_IFREG: "reg", stat.S_IFDIR: "dir", stat.S_IFLNK: "lnk", stat.S_IFCHR: "chr",
             stat.S_IFBLK: "blk", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "sock"}

    def add(rel: str, ino: int) -> None:
        _, mode, _, uid, gid, rdev, size, _, _, mtime, _ = index.getattr(ino)
        kind = kinds[stat.S_IFMT(mode)]
        xattrs = tuple(sorted((n.decode(), index.getxattr(ino, n)) for n in index.listxattr(ino)
                              if not n.startswith((b"trusted.overlay.", b"user.overlay."))))
        e = Entry(type=kind, mode=stat.S_IMODE(mode), uid=uid, gid=gid, xattrs=xattrs)
        if kind == "reg":
            data = (layer_dirs[index.layer(ino)] / os.fsdecode(index.path(ino))).read_bytes()
            e = dataclasses.replace(e, size=size, sha256=hashlib.sha256(data).hexdigest())
        elif kind == "lnk":
            e = dataclasses.replace(e, target=index.readlink(ino))
        elif kind in ("chr", "blk"):
            e = dataclasses.replace(e, rdev=(os.major(rdev), os.minor(rdev)))
        if kind != "dir":
            e = dataclasses.replace(e, mtime=mtime)
            by_ino.setdefault(ino, []).append(rel)
        entries[rel] = e

    add(".", 1)
    stack = [("", 1)]
    while stack:
        prefix, dir_ino = stack.pop()
        for name, child in index.readdir(dir_ino, 0, 1 << 30):
            rel = prefix + os.fsdecode(name)
            add(rel, child)
            if index.getattr(child)[1] & 0o170000 == 0o040000:
                stack.append((rel + "/", child))
    groups = frozenset(frozenset(v) for v in by_ino.values() if len(v) > 1)
    return Tree(root=Path(index.file), entries=entries, hardlinks=groups)


def build_index(tmp_path: Path, layers: Sequence[Path]) -> Index:
    data, _ = _merge.build(layers, key="test")
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "merged.idx"
    _merge.write_atomic(path, data)
    return Index(path)


@pytest.mark.parametrize("name", list(CASES))
def test_rule_matches_kernel_overlay(name: str, tmp_path: Path) -> None:
    require_root()
    from _oracles import kernel_overlay

    ours = build_stack(tmp_path, CASES[name], kernel_form=False)
    theirs = build_stack(tmp_path, CASES[name], kernel_form=True)
    index = build_index(tmp_path, ours)
    with kernel_overlay(theirs[::-1], tmp_path / "kernel") as mnt:
        kernel = snapshot(mnt)
    assert_same_tree(index_tree(index, ours), kernel, names=("index", "kernel"))


@pytest.mark.parametrize("kernel_form", [False, True], ids=["oci-form", "kernel-form"])
@pytest.mark.parametrize("name", list(CASES))
def test_c_build_equals_python_reference(name: str, kernel_form: bool, tmp_path: Path) -> None:
    """csrc/mergebuild.c writes the very bytes of the Python reference, in both marker forms."""
    if kernel_form:
        require_root()  # trusted.overlay.* xattrs
    layers = build_stack(tmp_path, CASES[name], kernel_form=kernel_form)
    _merge.build(layers)  # the first listing of a new dir updates its atime (relatime): settle it
    data, stats = _merge.build(layers, key="k")
    ref, ref_stats = _merge._build_python(layers, key="k")
    assert data == ref
    assert (stats.nodes, stats.dents, stats.hidden) == (ref_stats.nodes, ref_stats.dents, ref_stats.hidden)


def test_c_build_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        _merge.build([tmp_path / "missing"])
    with pytest.raises(ValueError):
        _merge.build([])


# ---------------------------------------------------------------------------------------------
# Properties of the index itself (no oracle needed).

def test_inode_numbers_are_deterministic(tmp_path: Path) -> None:
    layers = build_stack(tmp_path, CASES["four layers mixed"], kernel_form=False)
    a, b = build_index(tmp_path / "a", layers), build_index(tmp_path / "b", layers)
    assert a.n_nodes == b.n_nodes > 10
    assert [a.path(i) for i in range(1, a.n_nodes)] == [b.path(i) for i in range(1, b.n_nodes)]


def test_nlink_of_merged_and_single_layer_dirs(tmp_path: Path) -> None:
    layers = build_stack(tmp_path, [["f m/a 1", "f solo/sub/x 1"], ["f m/b 2"]], kernel_form=False)
    index = build_index(tmp_path, layers)
    merged, solo = index.lookup(1, b"m"), index.lookup(1, b"solo")
    assert index.getattr(merged)[2] == 1  # merged dir: nlink 1 (ovl_getattr)
    assert index.getattr(solo)[2] == os.lstat(layers[0] / "solo").st_nlink == 3
    assert index.getattr(1)[2] == 1


def test_lookup_edges(tmp_path: Path) -> None:
    layers = build_stack(tmp_path, [["f d/a 1", f"f {LONG} x"]], kernel_form=False)
    index = build_index(tmp_path, layers)
    d = index.lookup(1, b"d")
    assert index.lookup(d, b"a") > 0
    assert index.lookup(d, b"missing") == 0
    assert index.lookup(d, b".") == d and index.lookup(d, b"..") == 1
    assert index.lookup(1, LONG.encode()) > 0
    with pytest.raises(OSError) as err:
        index.lookup(1, b"n" * 256)
    assert err.value.errno == 36  # ENAMETOOLONG
    with pytest.raises(OSError) as err:
        index.lookup(index.lookup(d, b"a"), b"x")
    assert err.value.errno == 20  # ENOTDIR
    with pytest.raises(OSError) as err:
        index.getattr(10**6)
    assert err.value.errno == 116  # ESTALE
    assert [n for n, _ in index.readdir(1, 0, 100)] == sorted([b"d", LONG.encode()])
    assert index.readdir(1, 1, 100) == index.readdir(1, 0, 100)[1:]


def test_ensure_rebuilds_only_when_stale(tmp_path: Path) -> None:
    layers = build_stack(tmp_path, [["f a 1"]], kernel_form=False)
    path = tmp_path / "state" / "x.idx"
    assert _merge.ensure(path, layers, key="one") is not None
    assert _merge.ensure(path, layers, key="one") is None
    assert _merge.ensure(path, layers, key="two") is not None  # another stack: rebuilt
    path.write_bytes(b"garbage")
    assert _merge.ensure(path, layers, key="two") is not None


def test_malformed_index_is_refused(tmp_path: Path) -> None:
    layers = build_stack(tmp_path, [["f a 1", "f d/b 2"]], kernel_form=False)
    data, _ = _merge.build(layers, key="k")
    bad = bytearray(data)
    # point the first dent at a node that does not exist
    off_dents = _merge.HEADER.unpack_from(bad)[6]
    bad[off_dents + 8:off_dents + 12] = (10**6).to_bytes(4, "little")
    path = tmp_path / "bad.idx"
    path.write_bytes(bytes(bad))
    with pytest.raises(ValueError):
        Index(path)
    path.write_bytes(data[:100])
    with pytest.raises(ValueError):
        Index(path)
