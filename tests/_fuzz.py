"""Differential fuzzing of the unpacker and the mount: random multi-layer images, three views.

API::

    layers = generate(seed)                       # list of layers, each a list of TarEntry
    views = image_views(layers, work)             # umoci unpack, layerfs mount, kernel overlay
    problems = differences(views)                 # [] when the three agree (rules below applied)
    small = shrink(layers, work)                  # a smaller image with the same kind of difference
    print(describe(small))                        # the image, one entry a line

One image, three views, compared entry by entry (``_trees``: type, mode, owner, size, content
hash, link target, device numbers, xattrs, mtime of every entry, directories and root included,
and hard-link groups):

- **layerfs**: the image loaded into a fresh store (:func:`layerfs._transfer.load.load`) and
  mounted with ``layerfs mount`` (the C engine);
- **kernel**: the kernel's overlay mounted over layerfs's own layer directories: the overlay form
  the unpacker writes must read the same to the kernel as to layerfs;
- **umoci**: ``umoci unpack``, which applies each layer's entries in order to one tree, as the
  image spec describes.

Where an oracle is known to be wrong, the rule is written here and applied before comparing
(:func:`differences`), each with its reason:

- *umoci's clock*: umoci stamps with the current time a directory it creates without an entry of
  its own (a missing parent), and the directory it creates one in (it puts back the times of an
  entry's own parent only, not of the grandparent a missing parent changed); layerfs gives an
  implicit directory the attributes of the same directory below or, with none, time 0 (never the
  clock), and no layer's entry said anything about the grandparent.  So a directory whose umoci
  mtime falls within the run of ``umoci unpack`` is not compared on its mtime.  (Generated times
  all lie before 2021, the run after.)
- *the kernel's ghosts*: inside a directory that only one layer has, the kernel lists a 0/0
  whiteout device as a name and then fails its lookup (ENOENT); layerfs and the OCI rules hide
  it.  Such names (type ``ghost`` in the kernel's snapshot) are not compared.
- nlink is never compared (``_trees``): umoci's counts ignore overlay, and overlay's own counts
  of hard links broken across layers keep the lower's number.

What the generator leaves out, because the tools differ by design there and not by defect:

- a whiteout or opaque marker whose directory does not exist: layerfs (like moby) makes the
  directory to hold it, umoci makes nothing;
- an opaque marker at the root: the kernel overlay never makes a layer's root opaque (nor do
  docker's overlay2 and layerfs, which follow it), umoci removes every lower root entry;
- an entry below a symlink or a non-directory of the merged tree: umoci resolves it in the merged
  tree, a per-layer extractor inside its own layer (and umoci fails where a parent is a file);
- a hard link to a file of a lower layer (only the same layer can be linked: overlay2 refuses it
  too), and a hard link whose header carries attributes other than its target's (moby and
  layerfs apply them to the shared inode, umoci ignores them);
- a 0/0 character device entry (in overlay form it is a whiteout);
- user xattrs on symlinks, fifos and devices (the kernel refuses them);
- times after the 2020s (see the clock rule);
- a layer twice in one image (empty layers are made distinct with trailing zero blocks): the
  store unpacks a diff ID once, so the directories a layer makes only as parents, and its root
  without a root entry, take their attributes from the layers below its first place
  (:func:`layerfs._layer.unpack.inherit_attributes` documents this limit).

Everything else is generated: directories, files, symlinks, hard links, fifos, char and block
devices, whiteouts, opaque markers, type changes at any depth and within a layer, duplicate
entries, setuid/setgid/sticky modes, owners, PAX mtimes to the nanosecond, binary user xattrs,
``trusted.*`` xattrs and file capabilities, 255-byte, non-UTF-8 and ``x/../`` names, root
entries and empty layers.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from _images import TarEntry, gzip_bytes, sha256, tar_bytes, write_layout
from _oracles import kernel_overlay, umoci_unpack
from _trees import Tree, diff, snapshot

Layers = list[list[TarEntry]]

LONG_NAME = "L" * 255
NON_UTF8_NAME = os.fsdecode(b"\xe9t\xe9")
NAMES = ["a", "b", "c", "d", "e f", ".h"]
DIR_MODES = [0o755] * 4 + [0o700, 0o750, 0o711, 0o1777, 0o2755, 0o555]
FILE_MODES = [0o644] * 4 + [0o600, 0o755, 0o4755, 0o2755, 0o6755, 0o444, 0o000, 0o1644]
OWNERS = [(0, 0)] * 5 + [(1000, 1000), (65534, 65534), (3_000_000, 7), (5, 0)]
SYMLINK_TARGETS = ["a", "../b", "/etc/passwd", "c/d", "t" * 100, ".", "/"]
DEVICES = [(tarfile.CHRTYPE, (1, 3)), (tarfile.CHRTYPE, (1, 5)), (tarfile.CHRTYPE, (10, 200)),
           (tarfile.BLKTYPE, (7, 0)), (tarfile.BLKTYPE, (8, 1))]
#: security.capability of ``setcap cap_net_bind_service=ep`` (version 2)
CAPABILITY = bytes.fromhex("0100000200040000000000000000000000000000")
#: Generated times stay before this (2020-09-13): well before any run of umoci (the clock rule).
MAX_MTIME = 1_600_000_000


# ---------------------------------------------------------------------------------------------
# The generator: a model of the tree as umoci builds it, so that every entry is valid

@dataclass
class _Node:
    kind: str            # dir reg lnk fifo chr blk
    #: touched by the current layer (an entry, or the parent of one): whiteouts spare it
    upper: bool
    #: the entry of the current layer that made this inode (a hard-link target), if any
    entry: TarEntry | None = None


class _Model:
    """The merged tree after each entry, with umoci's rules (entries applied in order; a whiteout
    or opaque marker removes what the layer did not touch)."""

    def __init__(self) -> None:
        self.nodes: dict[str, _Node] = {"": _Node("dir", False)}

    def new_layer(self) -> None:
        for node in self.nodes.values():
            node.upper = False
            node.entry = None

    def _below(self, path: str) -> list[str]:
        prefix = path + "/" if path else ""
        return [p for p in self.nodes if p.startswith(prefix) and p != path]

    def _remove(self, path: str) -> None:
        for p in self._below(path) + [path]:
            self.nodes.pop(p, None)

    def add(self, path: str, kind: str, entry: TarEntry | None) -> None:
        parts = path.split("/")
        for i in range(1, len(parts)):
            anc = "/".join(parts[:i])
            node = self.nodes.get(anc)
            if node is None:
                self.nodes[anc] = _Node("dir", True)
            else:
                assert node.kind == "dir", f"{anc} is not a dir"
                node.upper = True
        self.nodes[""].upper = True
        old = self.nodes.get(path)
        if old is not None and not (old.kind == "dir" and kind == "dir"):
            self._remove(path)
            old = None
        if old is None:
            self.nodes[path] = _Node(kind, True, entry)
        else:
            old.upper, old.entry = True, entry

    def whiteout(self, path: str, *, keep_self: bool = False) -> None:
        """Remove ``path`` and what is below it, except what the current layer touched."""
        if path not in self.nodes:
            return
        if not keep_self and not self.nodes[path].upper:
            self._remove(path)
            return
        for p in sorted(self._below(path)):
            node = self.nodes.get(p)
            if node is not None and not node.upper:
                self._remove(p)

    def dirs(self) -> list[str]:
        return [p for p, n in self.nodes.items() if n.kind == "dir"]

    def children(self, path: str) -> list[str]:
        prefix = path + "/" if path else ""
        return [p[len(prefix):] for p in self.nodes if p.startswith(prefix) and p != path
                and "/" not in p[len(prefix):]]


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _depth(path: str) -> int:
    return path.count("/") + 1 if path else 0


class _Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.model = _Model()

    def name(self) -> str:
        r = self.rng.random()
        if r < 0.03:
            return LONG_NAME
        if r < 0.06:
            return NON_UTF8_NAME
        return self.rng.choice(NAMES)

    def mtime(self) -> int | str:
        seconds = self.rng.randrange(0, MAX_MTIME)
        if self.rng.random() < 0.2:
            return f"{seconds}.{self.rng.randrange(10**9):09d}"
        return seconds

    def xattrs(self, *, file: bool = False) -> tuple[tuple[str, bytes], ...]:
        if self.rng.random() > 0.25:
            return ()
        pool = [("user.a", bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 12)))),
                ("user.b", b"v" * self.rng.randrange(1, 200)), ("user.c", b""), ("trusted.t", b"1")]
        if file:
            pool.append(("security.capability", CAPABILITY))
        return tuple(sorted(self.rng.sample(pool, self.rng.randrange(1, 3))))

    def path(self) -> str | None:
        """A path for a new entry: in an existing dir, maybe below new (implicit) dirs."""
        dirs = [d for d in self.model.dirs() if _depth(d) <= 2]
        parent = self.rng.choice(dirs)
        while self.rng.random() < 0.15 and _depth(parent) < 3:
            name = self.name()
            child = _join(parent, name)
            if child in self.model.nodes:
                if self.model.nodes[child].kind != "dir":
                    return None
            parent = child
        return _join(parent, self.name())

    def entry(self, path: str) -> tuple[TarEntry, str] | None:
        rng = self.rng
        uid, gid = rng.choice(OWNERS)
        r = rng.random()
        name = path
        if r < 0.35:
            name = rng.choice([path, path + "/", "./" + path, "x/../" + path])
            return TarEntry(name, tarfile.DIRTYPE, mode=rng.choice(DIR_MODES), uid=uid, gid=gid,
                            mtime=self.mtime(), xattrs=self.xattrs()), "dir"
        if r < 0.65:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
            return TarEntry(name, data=data, mode=rng.choice(FILE_MODES), uid=uid, gid=gid, mtime=self.mtime(),
                            xattrs=self.xattrs(file=True)), "reg"
        if r < 0.78:
            return TarEntry(name, tarfile.SYMTYPE, linkname=rng.choice(SYMLINK_TARGETS), mode=0o777, uid=uid,
                            gid=gid, mtime=self.mtime()), "lnk"
        if r < 0.86:
            return TarEntry(name, tarfile.FIFOTYPE, mode=rng.choice([0o644, 0o600, 0o666]), uid=uid, gid=gid,
                            mtime=self.mtime()), "fifo"
        if r < 0.92:
            kind, dev = rng.choice(DEVICES)
            return TarEntry(name, kind, mode=rng.choice([0o666, 0o600, 0o660]), uid=uid, gid=gid,
                            mtime=self.mtime(), dev=dev), "chr" if kind == tarfile.CHRTYPE else "blk"
        targets = [p for p, n in self.model.nodes.items()
                   if n.entry is not None and p != path
                   and not p.startswith(path + "/")]
        if not targets:
            return None
        target = rng.choice(sorted(targets))
        node = self.model.nodes[target]
        assert node.entry is not None
        t = node.entry
        return TarEntry(name, tarfile.LNKTYPE, linkname=target, mode=t.mode, uid=t.uid, gid=t.gid,
                        mtime=t.mtime), node.kind

    def layer(self, most: int) -> list[TarEntry]:
        rng = self.rng
        self.model.new_layer()
        entries: list[TarEntry] = []
        if rng.random() < 0.1:
            return entries
        for _ in range(rng.randrange(1, most + 1)):
            r = rng.random()
            if r < 0.06:   # the root entry
                uid, gid = rng.choice(OWNERS)
                entries.append(TarEntry(rng.choice(["./", "."]), tarfile.DIRTYPE, mode=rng.choice(DIR_MODES),
                                        uid=uid, gid=gid, mtime=self.mtime(), xattrs=self.xattrs()))
                self.model.nodes[""].upper = True
            elif r < 0.2:   # a whiteout, of something that exists or not
                parent = rng.choice(self.model.dirs())
                children = self.model.children(parent)
                target = rng.choice(children) if children and rng.random() < 0.7 else self.name()
                uid, gid = rng.choice(OWNERS)
                entries.append(TarEntry(_join(parent, ".wh." + target), uid=uid, gid=gid, mode=0o644,
                                        mtime=self.mtime()))
                self.model.whiteout(_join(parent, target))
            elif r < 0.26:   # an opaque marker
                dirs = [d for d in self.model.dirs() if d]
                if not dirs:
                    continue
                parent = rng.choice(dirs)
                entries.append(TarEntry(_join(parent, ".wh..wh..opq"), mtime=self.mtime()))
                self.model.whiteout(parent, keep_self=True)
            elif r < 0.32 and entries:   # an entry again, as it was
                again = rng.choice(entries)
                path = _clean(again.name)
                if not path or ".wh." in again.name or again.type == tarfile.LNKTYPE:
                    continue
                parent = path.rpartition("/")[0]
                node = self.model.nodes.get(parent)
                if node is None or node.kind != "dir":
                    continue
                kind = {tarfile.DIRTYPE: "dir", tarfile.REGTYPE: "reg", tarfile.SYMTYPE: "lnk",
                        tarfile.FIFOTYPE: "fifo", tarfile.CHRTYPE: "chr", tarfile.BLKTYPE: "blk"}[again.type]
                entries.append(again)
                self.model.add(path, kind, again if kind != "dir" else None)
            else:
                path = self.path()
                if path is None:
                    continue
                made = self.entry(path)
                if made is None:
                    continue
                entry, kind = made
                if entry.type == tarfile.LNKTYPE:
                    self.model.add(path, kind, self.model.nodes[entry.linkname].entry)
                else:
                    self.model.add(path, kind, entry if kind != "dir" else None)
                entries.append(entry)
        return entries


def _clean(name: str) -> str:
    """``name`` as a path, cleaned lexically (``x/../a/`` is ``a``)."""
    parts: list[str] = []
    for part in name.split("/"):
        if part == "..":
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/".join(parts)


_KINDS = {tarfile.DIRTYPE: "dir", tarfile.REGTYPE: "reg", tarfile.SYMTYPE: "lnk", tarfile.FIFOTYPE: "fifo",
          tarfile.CHRTYPE: "chr", tarfile.BLKTYPE: "blk"}


def valid(layers: Sequence[Sequence[TarEntry]]) -> bool:
    """True if the image keeps the generator's rules (module docstring): the shrinker only tries
    images the generator could have made, so a difference it keeps is not one of the known ones."""
    model = _Model()
    for layer in layers:
        model.new_layer()
        for e in layer:
            path = _clean(e.name)
            parent, _, base = path.rpartition("/")
            if base.startswith(".wh."):
                node = model.nodes.get(parent)
                if node is None or node.kind != "dir":
                    return False
                if base == ".wh..wh..opq":
                    if not parent:
                        return False
                    model.whiteout(parent, keep_self=True)
                else:
                    model.whiteout(_join(parent, base[len(".wh."):]))
                continue
            if not path:
                continue   # the root entry
            parts = path.split("/")
            for i in range(1, len(parts)):
                node = model.nodes.get("/".join(parts[:i]))
                if node is not None and node.kind != "dir":
                    return False
            if e.type == tarfile.LNKTYPE:
                target = model.nodes.get(e.linkname)
                t = target.entry if target is not None else None
                if t is None or target is None or target.kind == "dir" or e.linkname == path \
                        or e.linkname.startswith(path + "/") or (e.mode, e.uid, e.gid, e.mtime) != (
                            t.mode, t.uid, t.gid, t.mtime):
                    return False
                model.add(path, target.kind, t)
            else:
                kind = _KINDS[e.type]
                model.add(path, kind, e if kind != "dir" else None)
    return True


def generate(seed: int) -> Layers:
    """A random image for ``seed`` (the same image for the same seed): 1 to 5 layers of up to 21
    entries, or one time in ten 1 to 8 layers of up to 80."""
    gen = _Generator(seed)
    big = gen.rng.random() < 0.1
    return [gen.layer(80 if big else 21) for _ in range(gen.rng.randrange(1, 9 if big else 6))]


# ---------------------------------------------------------------------------------------------
# The three views

@dataclass
class Views:
    """One image seen three ways; a str instead of a tree is the error its tool gave."""

    umoci: Tree | str
    layerfs: Tree | str
    kernel: Tree | str
    #: (start, end) of the ``umoci unpack`` run, ns (the clock rule)
    umoci_run: tuple[int, int]


def _shot(root: Path) -> Tree:
    return snapshot(root, dir_mtimes=True)


def build_layout(layers: Sequence[Sequence[TarEntry]], layout: Path) -> str:
    """Write ``layers`` as a gzip OCI layout; returns its ``oci:`` source.

    A layer that would repeat an earlier one (empty layers do) gets zero blocks added after its
    end, which changes its diff ID and nothing else: see the module docstring on repeated layers.
    """
    tars: list[bytes] = []
    for layer in layers:
        tar = tar_bytes(layer)
        while tar in tars:
            tar += bytes(512)
        tars.append(tar)
    img = write_layout(layout, "fuzz", [(gzip_bytes(t), sha256(t)) for t in tars])
    return img.source


def image_views(layers: Sequence[Sequence[TarEntry]], work: Path) -> Views:
    """Build the image in ``work`` (an empty dir), take the three views, unmount, return them."""
    from layerfs import LayerfsError, Store
    from layerfs._mount import daemon as _mount
    from layerfs._transfer.load import load

    source = build_layout(layers, work / "layout")
    start = time.time_ns()
    umoci: Tree | str
    try:
        umoci = _shot(umoci_unpack(work / "layout", "fuzz", work / "bundle"))
    except AssertionError as err:
        umoci = "refused: " + str(err).strip().splitlines()[-1]
    end = time.time_ns()
    store = Store(work / "store")
    try:
        (image,) = load(store, source)
    except LayerfsError as err:
        return Views(umoci, f"refused: {err}", "not run", (start, end))
    mnt = work / "mnt"
    mnt.mkdir()
    _mount.mount(store, image.id, mnt)
    try:
        ours = _shot(mnt)
    finally:
        _mount.umount(mnt, store=store)
    with kernel_overlay(_distinct(store.layer_dirs(image), work / "copies")[::-1], work / "kernel") as kmnt:
        kernel = _shot(kmnt)
    return Views(umoci, ours, kernel, (start, end))


def _distinct(dirs: Sequence[Path], copies: Path) -> list[Path]:
    """``dirs`` with a repeated one replaced by a copy (``cp -a``): the kernel refuses a lower dir
    given twice (ELOOP), and an image may hold a layer twice (empty layers often)."""
    out: list[Path] = []
    for i, d in enumerate(dirs):
        if d in out:
            copy = copies / str(i)
            copies.mkdir(exist_ok=True)
            subprocess.run(["cp", "-a", os.fspath(d), os.fspath(copy)], check=True)
            d = copy
        out.append(d)
    return out


# ---------------------------------------------------------------------------------------------
# The comparison, with the rules of the module docstring

@dataclass(frozen=True)
class Difference:
    """One difference: between which views, at which path, in what, and the details."""

    between: str
    path: str
    what: str
    line: str

    @property
    def kind(self) -> tuple[str, str]:
        """What stays when an image is shrunk: the views and the field, not the path."""
        return self.between, self.what


def _without_ghosts(tree: Tree) -> Tree:
    """The kernel's ghost rule: names listed but not found are not compared."""
    return dataclasses.replace(tree, entries={p: e for p, e in tree.entries.items() if e.type != "ghost"})


def _without_umoci_clock(tree: Tree, run: tuple[int, int]) -> Tree:
    """umoci's clock rule: a dir stamped during the unpack run is not compared on its mtime."""
    start, end = run
    entries = {p: dataclasses.replace(e, mtime=None) if e.type == "dir" and e.mtime is not None
               and start - 10**9 <= e.mtime <= end + 10**9 else e for p, e in tree.entries.items()}
    return dataclasses.replace(tree, entries=entries)


_LINE = re.compile(r"^'(?P<path>.*?)': (?P<what>only in \w+|xattr [^:]+|\w+)")


def _parse(between: str, lines: list[str]) -> list[Difference]:
    out = []
    for line in lines:
        m = _LINE.match(line)
        if m:
            what = re.sub(r"^xattr .*", "xattr", m["what"])
            out.append(Difference(between, m["path"], what, line))
        else:
            out.append(Difference(between, "", line.split(":")[0], line))
    return out


def differences(views: Views) -> list[Difference]:
    """Every difference between the views, the rules applied; [] when they agree."""
    ours, umoci, kernel = views.layerfs, views.umoci, views.kernel
    if isinstance(ours, str) or isinstance(umoci, str):
        if isinstance(ours, str) and isinstance(umoci, str):
            return []   # both refused the image
        who = "layerfs" if isinstance(ours, str) else "umoci"
        why = ours if isinstance(ours, str) else umoci
        return [Difference("layerfs/umoci", "", f"{who} refused", f"{who} {why}")]
    assert not isinstance(kernel, str)
    out = _parse("layerfs/kernel", diff(ours, _without_ghosts(kernel), names=("layerfs", "kernel")))
    out += _parse("layerfs/umoci", diff(ours, _without_umoci_clock(umoci, views.umoci_run),
                                        names=("layerfs", "umoci")))
    return out


def check(layers: Sequence[Sequence[TarEntry]], work: Path) -> list[Difference]:
    """:func:`differences` of the image ``layers``, built in ``work`` (emptied after)."""
    work.mkdir(parents=True, exist_ok=True)
    try:
        return differences(image_views(layers, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Shrinking and showing

def shrink(layers: Layers, work: Path, *, budget: int = 300,
           probe: Callable[[Layers, Path], list[Difference]] = check) -> tuple[Layers, list[Difference]]:
    """Drop layers, then entries, while the first difference's kind persists.

    Args:
        layers: an image with at least one difference.
        work: a scratch dir.
        budget: most images to try.
        probe: what finds the differences (:func:`check`).

    Returns:
        The smallest image found and its differences.
    """
    found = probe(layers, work / "probe")
    if not found:
        return layers, found
    kind = found[0].kind
    tries = 0

    def same(candidate: Layers) -> list[Difference] | None:
        nonlocal tries
        if not valid(candidate):
            return None
        tries += 1
        try:
            got = probe(candidate, work / "probe")
        except Exception:   # noqa: BLE001 - a broken candidate is just not smaller
            return None
        return got if any(d.kind == kind for d in got) else None

    current, diffs = layers, found
    # whole layers first, then runs of entries, halving the run length
    i = 0
    while i < len(current) and len(current) > 1 and tries < budget:
        candidate = current[:i] + current[i + 1:]
        got = same(candidate)
        if got is not None:
            current, diffs = candidate, got
        else:
            i += 1
    for li in range(len(current)):
        size = max(1, len(current[li]) // 2)
        while size >= 1 and tries < budget:
            start = 0
            while start < len(current[li]) and tries < budget:
                layer = current[li]
                candidate = current[:li] + [layer[:start] + layer[start + size:]] + current[li + 1:]
                got = same(candidate)
                if got is not None:
                    current, diffs = candidate, got
                else:
                    start += size
            size //= 2
    return current, diffs


def _mode(e: TarEntry) -> str:
    return f"{e.mode:04o} {e.uid}:{e.gid} t={e.mtime}"


def describe(layers: Sequence[Sequence[TarEntry]]) -> str:
    """The image as text: one line per entry, layer by layer (base first)."""
    kinds = {tarfile.DIRTYPE: "dir", tarfile.REGTYPE: "file", tarfile.SYMTYPE: "symlink",
             tarfile.LNKTYPE: "hardlink", tarfile.FIFOTYPE: "fifo", tarfile.CHRTYPE: "chr", tarfile.BLKTYPE: "blk"}
    lines = []
    for i, layer in enumerate(layers, 1):
        lines.append(f"layer {i}:" + ("" if layer else " (empty)"))
        for e in layer:
            kind = kinds.get(e.type, repr(e.type))
            name = os.fsencode(e.name)
            shown = repr(name)[2:-1] if len(name) < 60 else repr(name[:20])[2:-1] + f"...({len(name)} bytes)"
            extra = ""
            if kind == "file":
                extra = f" {len(e.data)} bytes"
            elif kind in ("symlink", "hardlink"):
                extra = f" -> {e.linkname[:40]!r}"
            elif kind in ("chr", "blk"):
                extra = f" {e.dev[0]}:{e.dev[1]}"
            if e.xattrs:
                extra += " xattrs " + ",".join(k for k, _ in e.xattrs)
            if ".wh." in e.name:
                lines.append(f"  {shown}")
            else:
                lines.append(f"  {kind} {shown} {_mode(e)}{extra}")
    return "\n".join(lines)
