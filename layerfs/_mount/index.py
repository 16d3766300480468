"""The merged-tree index of a mount: the one Python wrapper of the native index code.

``_merge`` computes and saves the index (in C through :func:`build`, ``csrc/mergebuild.c``);
this module maps it (``csrc/merge.c``) and gives the
handlers typed, allocation-light accessors.  Every accessor reads memory only: no layer directory
is touched, nothing blocks.  Errors are ``OSError`` with the errno a FUSE reply should carry.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from .. import _native  # the C extension (csrc/), typed Any; the only importer of the native index type
from .idmap import IdMapping, overflow_ids

#: (ino, mode, nlink, uid, gid, rdev, size, blocks, atime_ns, mtime_ns, ctime_ns)
Attr = tuple[int, int, int, int, int, int, int, int, int, int, int]

# The index format, defined once in csrc/merge.h and read here from the extension.
#: The first 8 bytes of every index file.
MAGIC: bytes = _native.INDEX_MAGIC
#: Bumped whenever the format or the rules change, so that older index files are rebuilt.
FORMAT_VERSION: int = _native.INDEX_VERSION
#: Sizes of the header and of one node and one entry record.
HEADER_SIZE: int = _native.INDEX_HEADER_SIZE
NODE_SIZE: int = _native.INDEX_NODE_SIZE
DENT_SIZE: int = _native.INDEX_DENT_SIZE
#: The root's inode number; node 0 is unused.
ROOT_INO: int = _native.INDEX_ROOT_INO
#: Node flags: a directory merged from more than one layer; one that cuts off the layers below;
#: one the build could not list in a layer (EACCES: no entries recorded; mounts answer EACCES).
FLAG_MERGED: int = _native.INDEX_FLAG_MERGED
FLAG_OPAQUE: int = _native.INDEX_FLAG_OPAQUE
FLAG_DENIED: int = _native.INDEX_FLAG_DENIED
#: The longest name a directory entry may have.
NAME_MAX: int = _native.INDEX_NAME_MAX
#: The most bytes of names, symlink targets and xattrs one index can hold (32-bit offsets).
BLOB_MAX: int = _native.INDEX_BLOB_MAX

#: The names of the marker forms the C walk exports (their Python home is ``_layer.whiteout``).
MARKER_FORMS = ("WHITEOUT_PREFIX", "META_PREFIX", "OPAQUE_MARKER", "OPAQUE_VALUE", "XATTR_WHITEOUTS_VALUE",
                "OPAQUE_XATTRS", "KERNEL_OPAQUE_XATTRS", "WHITEOUT_XATTRS", "PRIVATE_XATTR_PREFIXES")


def marker_forms() -> dict[str, str | bytes | tuple[str, ...]]:
    """The whiteout and opaque marker forms ``csrc/mergebuild.c`` reads, by their names in
    ``layerfs._layer.whiteout`` (tests check the two are equal)."""
    forms: dict[str, str | bytes | tuple[str, ...]] = {name: getattr(_native, name) for name in MARKER_FORMS}
    return forms


def build(layer_dirs: list[str], key: str) -> tuple[bytes, int, int, int]:
    """Walk ``layer_dirs`` (base first) in C and return ``(index bytes, nodes, dents, hidden)``.

    The GIL is released during the walk.  See :func:`layerfs._mount.merge.build` for the rules.

    Raises:
        OSError: a layer directory is missing or unreadable.
    """
    data, nodes, dents, hidden = _native.merge_build(layer_dirs, key)
    return bytes(data), int(nodes), int(dents), int(hidden)


def _fail_allocation(n: int) -> int:
    """Tests only: make the ``n``-th allocation of :func:`build` from now fail (0: none).

    Returns:
        The blocks :func:`build` has allocated and not freed (0 between builds).
    """
    live: int = _native._merge_build_faults(n)
    return live


def _use_xattrat_fallback(on: bool) -> None:
    """Tests only: make :func:`build` read entries' xattrs the way it does on kernels before 6.13
    (no ``listxattrat``/``getxattrat``: through ``/proc/self/fd/N/name``)."""
    _native._merge_build_xattrat_fallback(on)


def _set_blob_limit(n: int) -> int:
    """Tests only: the most bytes of names, targets and xattrs :func:`build` may put in an index
    (0: the format's own, 4 GiB - 1).  Returns the limit that was in force."""
    previous: int = _native._merge_build_blob_limit(n)
    return previous


class NodeInfo(NamedTuple):
    """Where a node comes from: its layer (0 = base), its parent dir, its children range, flags."""

    layer: int
    parent: int
    first_dent: int
    n_dents: int
    flags: int


class Index:
    """A merged-tree index file, mapped read-only.

    Args:
        path: the index file (see ``_merge``).

    Raises:
        OSError: the file cannot be opened or mapped.
        ValueError: the file is not a valid index of the current format.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._ix = _native.MergedIndex(os.fspath(path))
        self.file = Path(path)

    @property
    def n_nodes(self) -> int:
        """Number of node slots: valid inode numbers are ``1 .. n_nodes - 1``."""
        n: int = self._ix.n_nodes
        return n

    @property
    def n_layers(self) -> int:
        n: int = self._ix.n_layers
        return n

    @property
    def key(self) -> str:
        """The name of the stack the index was built for (e.g. the top chain ID)."""
        k: str = self._ix.key
        return k

    def lookup(self, parent: int, name: bytes) -> int:
        """The inode of ``name`` in directory ``parent``, or 0 if the merged dir has no such name.

        Raises:
            OSError: ENOTDIR (parent is not a dir), ENAMETOOLONG (> 255 bytes), ESTALE (bad inode).
        """
        ino: int = self._ix.lookup(parent, name)
        return ino

    def getattr(self, ino: int) -> Attr:
        """The attributes of ``ino`` as recorded from its layer (merged dirs: nlink 1)."""
        attr: Attr = self._ix.getattr(ino)
        return attr

    def node(self, ino: int) -> NodeInfo:
        return NodeInfo(*self._ix.node(ino))

    def readdir(self, ino: int, start: int, count: int) -> list[tuple[bytes, int]]:
        """Up to ``count`` children of directory ``ino`` from position ``start``, in name order.

        Positions are stable across opens and mounts (the index never changes).
        """
        entries: list[tuple[bytes, int]] = self._ix.readdir(ino, start, count)
        return entries

    def readlink(self, ino: int) -> bytes:
        """A symlink's target, as written in its layer.  Raises OSError(EINVAL) for a non-link."""
        target: bytes = self._ix.readlink(ino)
        return target

    def listxattr(self, ino: int) -> list[bytes]:
        """The visible xattr names of ``ino`` (overlay-private ones were dropped at build)."""
        names: list[bytes] = self._ix.listxattr(ino)
        return names

    def getxattr(self, ino: int, name: bytes) -> bytes:
        """The value of xattr ``name``.  Raises OSError(ENODATA) when absent."""
        value: bytes = self._ix.getxattr(ino, name)
        return value

    def path(self, ino: int) -> bytes:
        """The path of ``ino`` relative to its layer's root (``b"."`` for the root)."""
        p: bytes = self._ix.path(ino)
        return p

    def layer(self, ino: int) -> int:
        """The index (0 = base) of the layer that holds ``ino``'s object (topmost for merged dirs)."""
        layer: int = self._ix.node(ino)[0]
        return layer


class NativeSession:
    """A merged mount served by the C engine (``csrc/session.c``): mounted on creation.

    Args:
        index: the merged index file of the stack; None: merge the layers lazily, each directory
            when a request first needs it (``csrc/merge.h``, ``lfs_lazy_open``): the mount reads
            only the layers' roots, not the whole tree.
        layer_dirs: the stack's layer directories, base layer first.
        mountpoint: where to mount (checked by the caller).
        options: FUSE mount options (``_cache.mount_options``).
        policy: the cache policy (``_cache.POLICY``): its timeouts go into every reply.
        threads: request threads (1 = libfuse's single-threaded loop).
        debug: libfuse's ``-d`` request trace on stderr.
        max_open: the most backing fds kept open at once (``_cache.max_open_files``): fds are
            cached per inode and the least recently used one is closed beyond that (CLOCK).
        upper, work: for a writable mount, the upper directory and the work directory
            (``WORKDIR/work``, empty, on the upper's file system); both None: read-only.
        privileged: write ``trusted.overlay.*`` markers (root) rather than ``user.overlay.*``.
        metacopy: copy only metadata up on chmod, chown, utimes and xattr changes.
        redirect_dir: rename directories that have a lower part, writing ``overlay.redirect``
            (else such a rename fails with EXDEV); privileged only, as the kernel's.
        idmap: the owners shown for those on disk, and back (``_mount.idmap``, ``csrc/idmap.h``);
            None or an empty mapping: the owners on disk, as they are.

    Raises:
        OSError: the index or a layer dir cannot be opened.
        ValueError: the index is malformed or does not match the number of layers, or the ID
            mapping is not one ``_mount.idmap.parse`` takes.
        RuntimeError: libfuse could not create the session or mount it.
    """

    def __init__(self, index: str | os.PathLike[str] | None, layer_dirs: list[str], mountpoint: str,
                 options: set[str], *, entry_timeout: float, attr_timeout: float, negative_timeout: float,
                 threads: int = 1, debug: bool = False, max_open: int = 4096, upper: str | None = None,
                 work: str | None = None, privileged: bool = True, metacopy: bool = False,
                 redirect_dir: bool = False, idmap: IdMapping | None = None) -> None:
        uidmap = gidmap = None
        if idmap:
            overflow_uid, overflow_gid = overflow_ids()
            if idmap.uids:
                uidmap = (overflow_uid, [(r.container, r.host, r.size) for r in idmap.uids])
            if idmap.gids:
                gidmap = (overflow_gid, [(r.container, r.host, r.size) for r in idmap.gids])
        path = None if index is None else os.fspath(index)
        self._s = _native.FuseSession(path, layer_dirs, mountpoint, ",".join(sorted(options)),
                                      entry_timeout, attr_timeout, negative_timeout, threads, debug, max_open,
                                      upper, work, privileged, metacopy, redirect_dir, uidmap, gidmap)

    def loop(self) -> int:
        """Serve requests until the kernel ends the connection or :meth:`exit`; blocks (GIL released)."""
        rc: int = self._s.loop()
        return rc

    def exit(self) -> None:
        """Ask the loop to end (it notices at its next request or when the connection ends)."""
        self._s.exit()

    def unmount(self) -> None:
        """Unmount (lazily, as libfuse does): the kernel then ends the connection."""
        self._s.unmount()

    def close(self) -> None:
        """Unmount if still mounted and free the session (after :meth:`loop` returned)."""
        self._s.close()

    def stats(self) -> tuple[dict[str, int], dict[str, int], int, int]:
        """(requests per opcode, failed requests per opcode, backing fds open now, index nodes).

        ``dir_merge`` among the requests counts the directories a lazily merged index (``index``
        None) has merged so far; its nodes grow with them."""
        out: tuple[dict[str, int], dict[str, int], int, int] = self._s.stats()
        return out
