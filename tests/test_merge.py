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
import errno
import hashlib
import os
import re
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

import _merge_oracle as _oracle
import pytest
from _trees import Entry, Tree, assert_same_tree, snapshot
from conftest import require_root

from layerfs._mount import index as _index
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
    """csrc/mergebuild.c writes the very bytes of the Python oracle, in both marker forms."""
    if kernel_form:
        require_root()  # trusted.overlay.* xattrs
    layers = build_stack(tmp_path, CASES[name], kernel_form=kernel_form)
    _merge.build(layers)  # the first listing of a new dir updates its atime (relatime): settle it
    data, stats = _merge.build(layers, key="k")
    ref, ref_stats = _oracle.build(layers, key="k")
    assert data == ref
    assert (stats.nodes, stats.dents, stats.hidden) == (ref_stats.nodes, ref_stats.dents, ref_stats.hidden)


@pytest.mark.parametrize("name", ["xattrs listed, private ones hidden", "xattr whiteout", "opaque dir",
                                  "merged dir metadata from the top"])
def test_c_build_without_xattrat_equals_python_reference(name: str, tmp_path: Path) -> None:
    """Kernels before 6.13 have no listxattrat/getxattrat: the walk then reads xattrs through
    /proc/self/fd, with the same result."""
    require_root()  # trusted.overlay.* xattrs
    layers = build_stack(tmp_path, CASES[name], kernel_form=True)
    _merge.build(layers)  # the first listing of a new dir updates its atime (relatime): settle it
    _index._use_xattrat_fallback(True)
    try:
        data, _ = _merge.build(layers, key="k")
    finally:
        _index._use_xattrat_fallback(False)
    assert data == _oracle.build(layers, key="k")[0]


#: Run as the user who may not list some directories: the C build and the oracle of one stack.
_BUILD_AS_USER = """\
import json, sys
sys.path.insert(0, sys.argv[1])
import _merge_oracle
from layerfs._mount import index, merge
out, layers = sys.argv[2], sys.argv[3:]
try:
    merge.build(layers)  # the first listing of a new dir updates its atime (relatime): settle it
    data, _ = merge.build(layers, key="k")
except OSError as err:
    print(json.dumps({"error": err.strerror}))
    sys.exit()
with open(out, "wb") as f:
    f.write(data)
ix = index.Index(out)
nodes = {ix.path(i).decode(): ix.node(i) for i in range(1, ix.n_nodes)}
print(json.dumps({"same": data == _merge_oracle.build(layers, key="k")[0],
                  "denied": sorted(p for p, n in nodes.items() if n.flags & index.FLAG_DENIED),
                  "merged": sorted(p for p, n in nodes.items() if n.flags & index.FLAG_MERGED),
                  "paths": sorted(nodes)}))
"""


def test_a_directory_the_caller_may_not_list_is_recorded_denied(tmp_path: Path) -> None:
    """A non-root user's build met a directory it may not list (EACCES on its open, or on an
    entry's lstat when it may read but not search) and failed.  It is recorded with no entries
    and FLAG_DENIED (the mount answers EACCES there); the oracle agrees byte for byte.  A layer's
    root the user may not read still fails the build."""
    import json
    import subprocess
    import sys

    from conftest import REPO, require_tool

    require_root()
    require_tool("setpriv")
    base = Path(f"/tmp/layerfs-denied-merge-{os.getpid()}")
    base.mkdir(mode=0o755)
    try:
        layers = build_stack(base, [["f top/below 1", "f lowdeny/x 1", "f pub/a 1"],
                                    ["f top/own 2", "f noread/f 2", "f nosearch/f 2", "f lowdeny/y 2", "f pub/b 2"]],
                             kernel_form=False)
        deny = {layers[1] / "top": 0o700, layers[1] / "noread": 0o311, layers[1] / "nosearch": 0o744,
                layers[0] / "lowdeny": 0o700}
        for path, mode in deny.items():
            os.chown(path, 4243, 4243)
            os.chmod(path, mode)
        os.chmod(base, 0o777)

        def build_as_nobody(*dirs: Path) -> dict[str, object]:
            proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                                   "-c", _BUILD_AS_USER, str(REPO / "tests"), str(base / "index"), *map(str, dirs)],
                                  capture_output=True, text=True, timeout=60, check=True)
            got: dict[str, object] = json.loads(proc.stdout)
            return got

        got = build_as_nobody(*layers)
        assert got == {"same": True, "denied": ["lowdeny", "noread", "nosearch", "top"],
                       "merged": [".", "lowdeny", "pub", "top"],  # in both layers, listed or not
                       "paths": [".", "lowdeny", "noread", "nosearch", "pub", "pub/a", "pub/b", "top"]}, got
        os.chmod(layers[1], 0o700)
        os.chown(layers[1], 4243, 4243)
        assert build_as_nobody(*layers) == {"error": "Permission denied"}
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


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
    off_dents = _oracle.HEADER.unpack_from(bad)[6]
    bad[off_dents + 8:off_dents + 12] = (10**6).to_bytes(4, "little")
    path = tmp_path / "bad.idx"
    path.write_bytes(bytes(bad))
    with pytest.raises(ValueError):
        Index(path)
    path.write_bytes(data[:100])
    with pytest.raises(ValueError):
        Index(path)


# ---------------------------------------------------------------------------------------------
# Hand-corrupted index files: each is refused at load (csrc/merge.c lfs_index_open), so that no
# request can walk a parent cycle or a directory cycle, or pass a name that is not a component.

class _Parsed:
    """An index file taken apart into editable fields, and packed again (offsets recomputed)."""

    # NODE field positions
    MODE, LAYER, PARENT, NAME_OFF, NAME_LEN, FIRST_DENT, N_DENTS = 0, 10, 11, 12, 13, 14, 15
    XATTR_OFF, XATTR_LEN, TARGET_OFF, TARGET_LEN = 16, 17, 18, 19

    def __init__(self, data: bytes) -> None:
        self.header = list(_oracle.HEADER.unpack_from(data))
        n_nodes, n_dents, off_nodes, off_dents, off_blob, blob_size = (self.header[i] for i in (3, 4, 5, 6, 7, 8))
        self.nodes = [list(_oracle.NODE.unpack_from(data, off_nodes + i * _oracle.NODE.size)) for i in range(n_nodes)]
        self.dents = [list(_oracle.DENT.unpack_from(data, off_dents + i * _oracle.DENT.size)) for i in range(n_dents)]
        self.blob = bytearray(data[off_blob:off_blob + blob_size])

    def dent_of(self, dir_ino: int, name: bytes) -> list[int]:
        node = self.nodes[dir_ino]
        for d in self.dents[node[self.FIRST_DENT]:node[self.FIRST_DENT] + node[self.N_DENTS]]:
            if bytes(self.blob[d[0]:d[0] + d[1]]) == name:
                return d
        raise KeyError(name)

    def pack(self) -> bytes:
        h = self.header
        h[3], h[4] = len(self.nodes), len(self.dents)
        h[5] = _oracle.HEADER.size
        h[6] = h[5] + _oracle.NODE.size * len(self.nodes)
        h[7] = h[6] + _oracle.DENT.size * len(self.dents)
        h[8] = len(self.blob)
        return b"".join([_oracle.HEADER.pack(*h), *(_oracle.NODE.pack(*n) for n in self.nodes),
                         *(_oracle.DENT.pack(*d) for d in self.dents), bytes(self.blob)])


def _set_name(p: _Parsed, ino: int, value: bytes) -> None:
    """Overwrite the name bytes of node ``ino`` (shared with the entry that lists it)."""
    node = p.nodes[ino]
    assert len(value) == node[p.NAME_LEN]
    p.blob[node[p.NAME_OFF]:node[p.NAME_OFF] + len(value)] = value


#: The stack every corruption starts from: a, d, s, LONG (root); d/b, d/ee, d/f; d/ee/c.
_GOOD_STACK = [["f a 1", "x a user.k=v", "f d/b 2", "f d/ee/c 3", "d d/f", "l s target", f"f {LONG} x"]]

Ino = Callable[[str], int]
#: name -> (what the refusal says, the edit).
CORRUPTIONS: dict[str, tuple[str, Callable[[_Parsed, Ino], None]]] = {}


def corruption(name: str, reason: str) -> Callable[[Callable[[_Parsed, Ino], None]], None]:
    def register(fn: Callable[[_Parsed, Ino], None]) -> None:
        CORRUPTIONS[name] = (reason, fn)
    return register


P = _Parsed


@corruption("two nodes each other's parent", "parent is not numbered before")
def _(p: P, ino: Ino) -> None:
    p.nodes[ino("d/ee")][P.PARENT] = ino("d/ee/c")


@corruption("a node its own parent", "parent is not numbered before")
def _(p: P, ino: Ino) -> None:
    p.nodes[ino("d/b")][P.PARENT] = ino("d/b")


@corruption("parent zero", "parent is not numbered before")
def _(p: P, ino: Ino) -> None:
    p.nodes[ino("a")][P.PARENT] = 0


@corruption("root's parent another node", "the root")
def _(p: P, ino: Ino) -> None:
    p.nodes[1][P.PARENT] = ino("d")


@corruption("root not a directory", "the root")
def _(p: P, ino: Ino) -> None:
    p.nodes[1][P.MODE] = stat.S_IFREG | 0o755


@corruption("parent a file", "parent is not a directory")
def _(p: P, ino: Ino) -> None:
    p.nodes[ino("d/ee/c")][P.PARENT] = ino("a")


@corruption("name holds a slash", "node's name")
def _(p: P, ino: Ino) -> None:
    _set_name(p, ino("d/b"), b"/")


@corruption("name holds NUL", "node's name")
def _(p: P, ino: Ino) -> None:
    _set_name(p, ino("d/b"), b"\0")


@corruption("name is dot", "node's name")
def _(p: P, ino: Ino) -> None:
    _set_name(p, ino("d/b"), b".")


@corruption("name is dotdot", "node's name")
def _(p: P, ino: Ino) -> None:
    _set_name(p, ino("d/ee"), b"..")


@corruption("name empty", "node's name")
def _(p: P, ino: Ino) -> None:
    p.nodes[ino("d/b")][P.NAME_LEN] = 0
    p.dent_of(ino("d"), b"b")[1] = 0


@corruption("name longer than 255 bytes", "node's name")
def _(p: P, ino: Ino) -> None:
    p.blob += b"n" * 256
    p.nodes[ino(LONG)][P.NAME_OFF] = len(p.blob) - 256
    p.nodes[ino(LONG)][P.NAME_LEN] = 256


@corruption("entry name holds a slash", "entry's name")
def _(p: P, ino: Ino) -> None:
    dent = p.dent_of(ino("d"), b"b")
    p.blob += b"x/y"
    dent[0], dent[1] = len(p.blob) - 3, 3


@corruption("entry name empty", "entry's name")
def _(p: P, ino: Ino) -> None:
    p.dent_of(ino("d"), b"b")[1] = 0


@corruption("directory cycle through an entry", "not its parent")
def _(p: P, ino: Ino) -> None:
    p.dent_of(ino("d/ee"), b"c")[2] = ino("d")  # d/ee/c is d: find would never end


@corruption("directory listed under a second name", "not its parent")
def _(p: P, ino: Ino) -> None:
    p.dent_of(1, b"a")[2] = ino("d")


@corruption("entry names the root", "names no node, or the root")
def _(p: P, ino: Ino) -> None:
    p.dent_of(ino("d"), b"b")[2] = 1


@corruption("entry names no node", "names no node")
def _(p: P, ino: Ino) -> None:
    p.dent_of(ino("d"), b"b")[2] = len(p.nodes)


@corruption("entries out of order", "not sorted")
def _(p: P, ino: Ino) -> None:
    first = p.nodes[ino("d")][P.FIRST_DENT]
    p.dents[first], p.dents[first + 1] = p.dents[first + 1], p.dents[first]


@corruption("entry ranges overlap", "entry range")
def _(p: P, ino: Ino) -> None:
    p.nodes[ino("d/ee")][P.FIRST_DENT] = p.nodes[ino("d")][P.FIRST_DENT]


@corruption("an entry of no directory", "no directory")
def _(p: P, ino: Ino) -> None:
    p.dents.append(list(p.dents[0]))


@corruption("a file lists entries", "non-directory lists")
def _(p: P, ino: Ino) -> None:
    p.nodes[ino("a")][P.N_DENTS] = 1


@corruption("a node its parent does not list", "not listed by its parent")
def _(p: P, ino: Ino) -> None:
    p.nodes[ino("a")][P.NAME_OFF] = p.nodes[ino("s")][P.NAME_OFF]  # a calls itself s


@corruption("symlink target holds NUL", "target")
def _(p: P, ino: Ino) -> None:
    p.blob[p.nodes[ino("s")][P.TARGET_OFF]] = 0


@corruption("a file with a target", "has a target")
def _(p: P, ino: Ino) -> None:
    p.nodes[ino("a")][P.TARGET_OFF] = p.nodes[ino("s")][P.TARGET_OFF]
    p.nodes[ino("a")][P.TARGET_LEN] = p.nodes[ino("s")][P.TARGET_LEN]


@corruption("xattr name holds NUL", "xattr name")
def _(p: P, ino: Ino) -> None:
    p.blob[p.nodes[ino("a")][P.XATTR_OFF] + 8] = 0


@corruption("xattr records overrun their range", "tile")
def _(p: P, ino: Ino) -> None:
    p.nodes[ino("a")][P.XATTR_LEN] -= 1


@corruption("unknown file type", "file type")
def _(p: P, ino: Ino) -> None:
    p.nodes[ino("a")][P.MODE] = 0o170644


@corruption("layer beyond the stack", "layer")
def _(p: P, ino: Ino) -> None:
    p.nodes[ino("a")][P.LAYER] = 5


@corruption("no layer", "no layer")
def _(p: P, ino: Ino) -> None:
    p.header[2] = 0


@pytest.fixture(scope="module")
def good_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, int]]:
    """The index bytes of _GOOD_STACK, and the inode of each path in it."""
    base = tmp_path_factory.mktemp("good")
    layers = build_stack(base, _GOOD_STACK, kernel_form=False)
    index = build_index(base / "index", layers)
    inos = {}
    for path in ("a", "d", "s", LONG, "d/b", "d/ee", "d/f", "d/ee/c"):
        ino = 1
        for part in path.split("/"):
            ino = index.lookup(ino, part.encode())
        assert ino > 1, path
        inos[path] = ino
    return index.file.read_bytes(), inos


def test_the_uncorrupted_index_loads(good_index: tuple[bytes, dict[str, int]], tmp_path: Path) -> None:
    """Packing the parsed file again gives the same bytes, which load: each case below differs by its edit only."""
    data, _ = good_index
    assert _Parsed(data).pack() == data
    (tmp_path / "ok.idx").write_bytes(_Parsed(data).pack())
    Index(tmp_path / "ok.idx")


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupt_index_is_refused_at_load(name: str, good_index: tuple[bytes, dict[str, int]],
                                          tmp_path: Path) -> None:
    data, inos = good_index
    reason, edit = CORRUPTIONS[name]
    parsed = _Parsed(data)
    edit(parsed, inos.__getitem__)
    path = tmp_path / "bad.idx"
    path.write_bytes(parsed.pack())
    with pytest.raises(ValueError, match=f"not a layerfs merged index.*{re.escape(reason)}"):
        Index(path)


def test_bad_arguments_raise_the_first_error(good_index: tuple[bytes, dict[str, int]], tmp_path: Path) -> None:
    """Each argument is converted only while no exception is pending (the C API's rule): the
    error raised is the first argument's, not one a later conversion set on top of it."""
    (tmp_path / "ok.idx").write_bytes(good_index[0])
    index = Index(tmp_path / "ok.idx")
    with pytest.raises(OverflowError):
        index.readdir(-1, "not an int", 1)  # type: ignore[arg-type]
    with pytest.raises(OverflowError):
        index.readdir(1, -1, "not an int")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        index.readdir("not an int", 0, -1)  # type: ignore[arg-type]
    assert index.readdir(1, 0, 100)  # still usable


def test_a_build_that_runs_out_of_memory_frees_all_it_had(tmp_path: Path) -> None:
    """Fail the 1st, 2nd, ... allocation of a build in turn: each failed build raises MemoryError
    and leaves no block allocated (csrc/mergebuild.c counts them), until one needs no more."""
    many = [f"f d/many/f{i:03d} {i}" for i in range(150)]  # grows every table past its first size
    layers = build_stack(tmp_path, [["f a x", "h b a", "x a user.one=1", "x a user.two=2", "l s a", "f d/e/f 1",
                                     "X d/x", "d d/e"],
                                    ["W a", "f d/g 2", "O d/e", "f d/e/h 3", "o d/o", "w d/x", *many],
                                    ["f d/e/i 4", "x . user.root=3"], ["x . user.root=4"], ["x . user.root=5"],
                                    ["f d/g 6"]], kernel_form=False)
    _merge.build(layers)  # the first listing of a new dir updates its atime (relatime): settle it
    expected, _ = _merge.build(layers, key="k")
    assert _index._fail_allocation(0) == 0
    failures = 0
    try:
        for n in range(1, 100_000):
            _index._fail_allocation(n)
            try:
                data, _ = _merge.build(layers, key="k")
            except MemoryError:
                failures += 1
                assert _index._fail_allocation(0) == 0, f"allocation {n} failed: blocks leaked"
                continue
            assert data == expected
            break
    finally:
        live = _index._fail_allocation(0)
    assert live == 0 and failures > 100


def test_an_index_beyond_the_format_limits_is_refused(tmp_path: Path) -> None:
    """Offsets into the blob are 32-bit: a stack whose names, targets and xattrs exceed that is
    refused with EFBIG, never written with offsets cut to 32 bits.  (4 GiB of names is too much
    for a test: the limit is lowered to the size of this small stack's blob.)"""
    layers = build_stack(tmp_path, [["f a 1", "f d/b 2", "l s target", "x a user.k=value"]], kernel_form=False)
    _merge.build(layers)  # the first listing of a new dir updates its atime (relatime): settle it
    data, stats = _merge.build(layers, key="k")
    blob_size = _oracle.HEADER.unpack_from(data)[8]
    assert _index._set_blob_limit(blob_size) == 2**32 - 1
    try:
        assert _merge.build(layers, key="k")[0] == data  # exactly at the limit: fine
        (layers[0] / "d" / "c").write_text("")  # one byte more: the name "c"
        with pytest.raises(OSError, match="exceed its format's limits") as err:
            _merge.build(layers, key="k")
        assert err.value.errno == errno.EFBIG
    finally:
        _index._set_blob_limit(0)
    assert _merge.build(layers, key="k")[1].nodes == stats.nodes + 1  # the format's own limit is far


def test_a_listing_ends_cleanly_after_an_entry_that_set_errno(tmp_path: Path) -> None:
    """The end of a listing is told from a failed one by errno alone: reading a whiteout's
    xattrs (more than 1 KiB of names: a second call after ERANGE) must not leave an errno that
    makes the end of its directory look like an error."""
    require_root()  # trusted.* xattrs on a device node
    layers = build_stack(tmp_path, [["f d/a 1"], ["w d/a"]], kernel_form=True)
    for i in range(20):
        os.setxattr(layers[1] / "d" / "a", f"trusted.{i:02d}" + "n" * 60, b"v", follow_symlinks=False)
    data, stats = _merge.build(layers, key="k")
    assert stats.hidden == 1 and stats.nodes == 2  # root and d: a is whited out


def test_the_walk_never_follows_a_directory_swapped_for_a_symlink(tmp_path: Path) -> None:
    """``lowerdir=`` trees belong to the caller and may change while they are walked: a directory
    replaced by a symlink after its parent was listed must not lead the walk out of its layer
    (into names, xattrs and targets the mount would then show to every user)."""
    import ctypes
    import threading

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret-name").write_text("")
    layer = tmp_path / "layer"
    (layer / "d").mkdir(parents=True)
    (layer / "d" / "inside").write_text("")
    for i in range(6000):  # merged before d (breadth-first, by name): time for the swap below, under load too
        (layer / f"c{i:05d}").mkdir()
    libc = ctypes.CDLL(None, use_errno=True)
    in_close_nowrite, in_oneshot = 0x10, 0x80000000
    inotify = libc.inotify_init1(os.O_CLOEXEC)
    assert inotify >= 0, os.strerror(ctypes.get_errno())
    try:
        assert libc.inotify_add_watch(inotify, bytes(layer), ctypes.c_uint32(in_close_nowrite | in_oneshot)) >= 0

        def swap() -> None:
            os.read(inotify, 4096)  # the layer root's listing was closed: d is yet to be opened
            os.rename(layer / "d", tmp_path / "d.moved")
            os.symlink(outside, layer / "d")

        swapper = threading.Thread(target=swap)
        swapper.start()
        try:
            with pytest.raises(OSError) as err:  # before: an index listing d/secret-name
                _merge.build([layer], key="k")
        finally:
            swapper.join(timeout=30)
    finally:
        os.close(inotify)
    assert err.value.errno == errno.ELOOP and str(err.value.filename).endswith("/d/"), err.value


def test_the_format_is_defined_once(tmp_path: Path) -> None:
    """csrc/merge.h defines the format; Python reads it from the extension (``_mount.index``),
    the oracle's struct layouts have its sizes, and the C build writes what it says."""
    assert (_oracle.HEADER.size, _oracle.NODE.size, _oracle.DENT.size) == (
        _index.HEADER_SIZE, _index.NODE_SIZE, _index.DENT_SIZE)
    layers = build_stack(tmp_path, [["f a 1"]], kernel_form=False)
    data, _ = _merge.build(layers, key="k")
    magic, version = _oracle.HEADER.unpack_from(data)[:2]
    assert (magic, version) == (_index.MAGIC, _index.FORMAT_VERSION)
    path = tmp_path / "i.idx"
    path.write_bytes(data)
    assert _merge.is_current(path, "k")
    parsed = _Parsed(data)
    parsed.header[1] = _index.FORMAT_VERSION + 1
    path.write_bytes(parsed.pack())
    assert not _merge.is_current(path, "k")
    with pytest.raises(ValueError, match=f"format {_index.FORMAT_VERSION}"):
        Index(path)


def test_ensure_rebuilds_a_damaged_index(good_index: tuple[bytes, dict[str, int]], tmp_path: Path) -> None:
    """An index whose header and key are right but whose body is damaged (here: a parent cycle,
    which made a request thread of the C engine loop forever) is rebuilt, never served."""
    layers = build_stack(tmp_path, _GOOD_STACK, kernel_form=False)
    path = tmp_path / "state" / "x.idx"
    assert _merge.ensure(path, layers, key="k") is not None
    parsed = _Parsed(path.read_bytes())
    CORRUPTIONS["two nodes each other's parent"][1](parsed, good_index[1].__getitem__)
    path.write_bytes(parsed.pack())
    assert not _merge.is_current(path, "k")
    assert _merge.ensure(path, layers, key="k") is not None
    assert _merge.is_current(path, "k")
    assert _merge.ensure(path, layers, key="k") is None
