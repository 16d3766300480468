"""The merged index written by readable Python: the oracle ``csrc/mergebuild.c`` is checked against.

API::

    data, stats = build([base, ..., top], key="k")   # the index bytes the C walk must write
    HEADER, NODE, DENT, XATTR_HEAD                    # the records, as struct layouts

The rules are those ``layerfs/_mount/merge.py`` documents; the marker forms come from
``layerfs._layer.whiteout`` (their one definition for Python), the owners an unprivileged unpack
keeps in ``user.containers.override_stat`` from ``layerfs._layer.override``, and the format constants from
``layerfs._mount.index`` (read from ``csrc/merge.h`` through the extension).  The struct layouts
below are this oracle's own reading of ``merge.h``: tests/test_merge.py checks their sizes against
the extension's.  ``tests/test_merge.py`` compares :func:`build` with the C build byte for byte on
every rule case.
"""

from __future__ import annotations

import collections
import os
import stat
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from layerfs._layer import override as _override
from layerfs._layer import whiteout as _whiteout
from layerfs._mount import index as _index
from layerfs._mount.merge import MergeStatistics

#: magic, version, n_layers, n_nodes, n_dents, off_nodes, off_dents, off_blob, blob_size, key_off, key_len
HEADER = struct.Struct("<8sIIIIQQQQII")
#: mode, uid, gid, nlink, size, blocks, rdev, atime_ns, mtime_ns, ctime_ns, layer, parent, name_off,
#: name_len, first_dent, n_dents, xattr_off, xattr_len, target_off, target_len, flags, pad
NODE = struct.Struct("<IIIIQQQqqqIIIIIIIIIIII")
#: name_off, name_len, ino
DENT = struct.Struct("<III")
#: name length, value length (then the name and the value)
XATTR_HEAD = struct.Struct("<II")

_PRIVATE_XATTR_PREFIXES = tuple(p.encode() for p in _whiteout.PRIVATE_XATTR_PREFIXES)
_OPAQUE_XATTRS = tuple(n.encode() for n in _whiteout.OPAQUE_XATTRS)
_KERNEL_OPAQUE_XATTRS = tuple(n.encode() for n in _whiteout.KERNEL_OPAQUE_XATTRS)
_WHITEOUT_XATTRS = tuple(n.encode() for n in _whiteout.WHITEOUT_XATTRS)
_WH_PREFIX = _whiteout.WHITEOUT_PREFIX.encode()
_WH_META_PREFIX = _whiteout.META_PREFIX.encode()
_WH_OPAQUE = _whiteout.OPAQUE_MARKER.encode()


def _xattrs_of(path: bytes) -> dict[bytes, bytes]:
    """All xattrs of ``path`` (not following symlinks); an fs without xattrs gives ``{}``."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out: dict[bytes, bytes] = {}
    for name in names:
        try:
            out[os.fsencode(name)] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return out


def _is_opaque(xattrs: dict[bytes, bytes]) -> bool:
    """Whether a directory with these xattrs cuts off the layers below (``overlay.opaque=y``)."""
    return any(xattrs.get(name) == _whiteout.OPAQUE_VALUE for name in _OPAQUE_XATTRS)


def _holds_xattr_whiteouts(xattrs: dict[bytes, bytes]) -> bool:
    """Whether a directory is marked ``overlay.opaque=x``: its children may be xattr whiteouts."""
    return any(xattrs.get(name) == _whiteout.XATTR_WHITEOUTS_VALUE for name in _KERNEL_OPAQUE_XATTRS)


def _is_whiteout(st: os.stat_result, xattrs: dict[bytes, bytes] | None, parent_holds_x: bool) -> bool:
    """Whether an entry is a whiteout: a 0/0 char device, or an xattr whiteout in an ``x`` dir."""
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return True
    if parent_holds_x and stat.S_ISREG(st.st_mode) and st.st_size == 0 and xattrs is not None:
        return any(name in xattrs for name in _WHITEOUT_XATTRS)
    return False


@dataclass
class _Child:
    """A name of a directory being merged: the topmost object, and (for dirs) the layers below."""

    layer: int
    path: bytes
    st: os.stat_result | None  # None = hidden (whiteout)
    xattrs: dict[bytes, bytes]
    open: bool  # a directory still merging with lower layers
    layers: list[tuple[int, bool]] = field(default_factory=list)  # (layer, holds xattr whiteouts)


class _Blob:
    def __init__(self) -> None:
        self.data = bytearray()

    def add(self, value: bytes) -> int:
        off = len(self.data)
        self.data += value
        return off


def _with_override(st: os.stat_result, xattrs: dict[bytes, bytes], trusted: bool) -> os.stat_result:
    """``st`` as the override among ``xattrs`` gives it, in a layer whose overrides are believed."""
    value = xattrs.get(_override.XATTR.encode())
    if not trusted or value is None:
        return st
    return _override.effective(st, _override.parse(value, st.st_mode))


def _trusted(root: bytes, st: os.stat_result, xattrs: dict[bytes, bytes]) -> bool:
    """Whether a layer's overrides are believed: its root has a valid one and is root's, or this
    (unprivileged) process's (``layerfs._layer.override``)."""
    me = os.geteuid()
    if st.st_uid != 0 and (me == 0 or st.st_uid != me):
        return False
    value = xattrs.get(_override.XATTR.encode())
    return value is not None and _override.parse(value, st.st_mode) is not None


def _visible_xattrs(xattrs: dict[bytes, bytes]) -> bytes:
    out = bytearray()
    for name in sorted(xattrs):
        if name.startswith(_PRIVATE_XATTR_PREFIXES):
            continue
        value = xattrs[name]
        out += XATTR_HEAD.pack(len(name), len(value)) + name + value
    return bytes(out)


def build(layer_dirs: Sequence[str | os.PathLike[str]], *, key: str = "") -> tuple[bytes, MergeStatistics]:
    """The merged index of a layer stack, as ``layerfs._mount.merge.build`` must write it.

    Reads every layer directory once (scandir, lstat and xattrs of each entry).  Nothing is written.

    Args:
        layer_dirs: the layer directories, **base layer first**.
        key: a string stored in the index naming the stack.

    Returns:
        ``(index bytes, statistics)``.

    Raises:
        OSError: a layer directory is missing or unreadable.
        struct.error: the index would exceed the format's 32-bit offsets or counts.
    """
    started = time.perf_counter()
    roots = [os.fsencode(os.fspath(d)) for d in layer_dirs]
    if not roots:
        raise ValueError("a merged tree needs at least one layer")
    blob = _Blob()
    key_off = blob.add(key.encode())
    nodes: list[bytes] = [bytes(NODE.size)]  # node 0 unused
    dents: list[bytes] = []
    hidden = 0
    links: dict[tuple[int, int, int], int] = {}

    def pack_node(st: os.stat_result, layer: int, parent: int, name_off: int, name_len: int,
                  xattrs: dict[bytes, bytes], target: bytes = b"") -> bytes:
        xblob = _visible_xattrs(xattrs)
        x_off = blob.add(xblob) if xblob else 0
        t_off = blob.add(target) if target else 0
        return NODE.pack(st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_size, st.st_blocks,
                         st.st_rdev, st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns, layer, parent,
                         name_off, name_len, 0, 0, x_off, len(xblob), t_off, len(target), 0, 0)

    top = len(roots) - 1
    root_layers = []
    trusted = [False] * len(roots)
    for li in range(top, -1, -1):
        xa = _xattrs_of(roots[li])
        root_layers.append((li, _holds_xattr_whiteouts(xa)))
        trusted[li] = _trusted(roots[li], os.stat(roots[li]), xa)
    root_st = os.stat(roots[top])  # a root is the caller's path: followed, as the C build opens it
    root_xa = _xattrs_of(roots[top])
    nodes.append(pack_node(_with_override(root_st, root_xa, trusted[top]), top, _index.ROOT_INO, 0, 0, root_xa))
    # Directories to fill: (ino, relative path with trailing "/" or b"", layers top first).
    queue: collections.deque[tuple[int, bytes, list[tuple[int, bool]], bool]] = collections.deque()
    queue.append((_index.ROOT_INO, b"", root_layers, True))
    while queue:
        ino, rel, layers, is_root = queue.popleft()
        children: dict[bytes, _Child] = {}
        used = 0
        opaque_below = denied = False
        for li, holds_x in layers:
            used += 1
            whiteouts: list[bytes] = []
            cut = False
            try:
                with os.scandir(roots[li] + b"/" + rel if rel else roots[li]) as it:
                    entries = list(it)
                for entry in entries:
                    name = entry.name
                    if name.startswith(_WH_PREFIX):
                        if name == _WH_OPAQUE:
                            cut = True
                        elif not name.startswith(_WH_META_PREFIX) and len(name) > len(_WH_PREFIX):
                            whiteouts.append(name[len(_WH_PREFIX):])
                        continue
                    child = children.get(name)
                    if child is not None and not child.open:
                        continue
                    st = entry.stat(follow_symlinks=False)
                    is_dir = stat.S_ISDIR(st.st_mode)
                    xattrs = _xattrs_of(entry.path) if (is_dir or holds_x or child is None) else None
                    if child is None:
                        if _is_whiteout(st, xattrs, holds_x):
                            children[name] = _Child(li, entry.path, None, {}, False)
                            continue
                        assert xattrs is not None
                        opaque = is_dir and _is_opaque(xattrs)
                        children[name] = _Child(li, entry.path, _with_override(st, xattrs, trusted[li]), xattrs,
                                                is_dir and not opaque,
                                                [(li, _holds_xattr_whiteouts(xattrs))] if is_dir else [])
                    elif is_dir and not _is_whiteout(st, xattrs, holds_x):
                        assert xattrs is not None
                        child.layers.append((li, _holds_xattr_whiteouts(xattrs)))
                        if _is_opaque(xattrs):
                            child.open = False
                    else:
                        child.open = False  # a whiteout or a non-directory ends the merge
            except PermissionError:
                if is_root:
                    raise
                # not ours to list (no r, or r without x): its entries are unknown, none is recorded
                denied, used = True, len(layers)
                children.clear()
                break
            for name in whiteouts:  # .wh.X hides X in the layers below this one only
                child = children.get(name)
                if child is None:
                    children[name] = _Child(li, b"", None, {}, False)
                else:
                    child.open = False
            if cut and not is_root:
                opaque_below = True
                break
        flags = ((_index.FLAG_MERGED if used > 1 else 0) | (_index.FLAG_OPAQUE if opaque_below else 0)
                 | (_index.FLAG_DENIED if denied else 0))
        first = len(dents)
        for name in sorted(children):
            child = children[name]
            if child.st is None:
                hidden += 1
                continue
            st = child.st
            name_off = blob.add(name)
            link_key = (child.layer, st.st_dev, st.st_ino)
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1 and link_key in links:
                child_ino = links[link_key]
            else:
                child_ino = len(nodes)
                target = os.readlink(child.path) if stat.S_ISLNK(st.st_mode) else b""
                nodes.append(pack_node(st, child.layer, ino, name_off, len(name), child.xattrs, target))
                if stat.S_ISDIR(st.st_mode):
                    queue.append((child_ino, rel + name + b"/", child.layers, False))
                elif st.st_nlink > 1:
                    links[link_key] = child_ino
            dents.append(DENT.pack(name_off, len(name), child_ino))
        # Fill in the directory's entry range, flags and (merged: 1) nlink.
        node = list(NODE.unpack(nodes[ino]))
        node[14], node[15], node[20] = first, len(dents) - first, flags
        if used > 1:
            node[3] = 1
        nodes[ino] = NODE.pack(*node)
    off_nodes = HEADER.size
    off_dents = off_nodes + NODE.size * len(nodes)
    off_blob = off_dents + DENT.size * len(dents)
    header = HEADER.pack(_index.MAGIC, _index.FORMAT_VERSION, len(roots), len(nodes), len(dents), off_nodes,
                         off_dents, off_blob, len(blob.data), key_off, len(key.encode()))
    data = b"".join([header, *nodes, *dents, bytes(blob.data)])
    stats = MergeStatistics(layers=len(roots), nodes=len(nodes) - 1, dents=len(dents), hidden=hidden,
                            seconds=time.perf_counter() - started, bytes=len(data))
    return data, stats
