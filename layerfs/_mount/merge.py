"""The merged tree of a layer stack, computed once and kept as a compact binary index.

A mount never looks at a layer directory to answer a lookup, getattr, readdir, readlink or xattr
request: everything it needs was computed here, once per stack, and saved beside the layers
(``store.state_dir("merged")/<top chain ID>.idx``, written to a temp name and renamed).  Layer
directories are only opened for file data.

The overlay rules applied (docs/overlay.rst explains each one, after the kernel's
Documentation/filesystems/overlayfs.rst):

- Lookup order is top-down; the first non-directory or whiteout ends the search for a name; a
  directory merges with same-named directories below until an opaque directory (inclusive), a
  whiteout or a non-directory (the kernel's overlayfs.rst "Directories";
  docs/overlay.rst "Layers and lookup").
- A merged directory's metadata and xattrs come from its topmost directory
  (docs/overlay.rst "Merged directories"); its nlink is 1, a directory from one layer keeps its own
  (fs/overlayfs/inode.c, ovl_getattr; docs/overlay.rst "Link counts").
- Whiteouts and opaque markers are read in every form the kernel or OCI writes
  (docs/overlay.rst "Whiteouts and opaque directories"; their one definition for Python is
  ``layerfs._layer.whiteout``, which the C walk's forms are tested against): 0/0 character
  devices; empty regular files with ``overlay.whiteout`` in a dir marked ``overlay.opaque=x``;
  ``overlay.opaque=y`` (``trusted.`` or ``user.``) and ``user.fuseoverlayfs.opaque=y``; OCI
  ``.wh.X`` (hides X in the layers *below* only) and ``.wh..wh..opq``; other ``.wh..wh.*`` names
  (AUFS metadata) are ignored.  Markers are never visible.
  Deliberate deviation: the kernel lists a 0/0 whiteout inside a directory that comes from one
  layer only (it iterates the real directory); layerfs hides whiteouts everywhere.
- The root merges every layer (the kernel never applies ``opaque`` to the root).
- Overlay-private xattrs (``trusted.overlay.*``, ``user.overlay.*``, ``user.fuseoverlayfs.*``) are
  dropped (docs/overlay.rst "Private xattrs").
- Hard links: names of one backing inode in one layer share one node, so one inode number and the
  layer's nlink (docs/overlay.rst "Hard links"); links are never merged across layers.
- A directory below a layer's root that the building user may not list (EACCES on its open, or
  on an entry's lstat: a user's ``-o lowerdir=`` holding another user's 0700 directory) keeps its
  attributes, gets no entries and the flag ``FLAG_DENIED``; the mount answers EACCES to listing
  it, to a lookup in it and to its removal, as the kernel overlay does, which reads its lowers
  with the mounter's rights.  Known differences: in a directory the user may search but not read
  (``--x``) the kernel finds names a lookup gives, layerfs answers EACCES; one the user may read
  but not search (``r--``) the kernel lists, layerfs does not.  A layer's root the user may not
  read fails the build.
- Owners, modes and device numbers an unprivileged unpack kept in ``user.containers.override_stat``
  are those the index records, in a layer whose root carries one and belongs to root or to the
  (unprivileged) builder; the xattr itself is private (docs/overlay.rst "Owners kept in an xattr",
  ``layerfs._layer.override``).  Which layers are believed depends on who builds, so the daemon
  names an image's index with a key naming the user other than root (:func:`stored_key`).

Inode numbers are the node numbers of the index: the root is 1, then breadth-first, children in
byte order of their names.  The index of an image is computed once and kept, so numbers are stable
across remounts; recomputing it from the same layers gives the same numbers.  A writable upper
sits on top of this index: it is consulted first, and objects only it holds get numbers of their
own (``csrc/fs.h`` "Identities").

A ``-o lowerdir=`` stack of plain directories is not content-addressed, so no index of it can be
kept: the C engine merges it lazily instead (``csrc/merge.h``, ``lfs_lazy_open``).  Mounting reads
the layers' roots; each directory is merged by these same rules, by the same code
(``csrc/mergebuild.c``'s ``merge_dir``), when a request first needs its entries or its link count,
and its entries get the next free node numbers.  So a directory's entries are in the same form
and order as in a built index, but node numbers follow the order in which directories were first
needed, and differ between mounts.  The pyfuse3 reference engine builds the whole index at every
such mount.

File format (little-endian), defined once in ``csrc/merge.h``: the extension exports its magic,
version, record sizes and flags, and ``layerfs._mount.index`` reads them from there.  Written by
``csrc/mergebuild.c`` only; ``csrc/merge.c`` loads it (``tests/_merge_oracle.py`` has it in
Python, as struct layouts)::

    header  64 bytes  magic "LFSMERGE", version, n_layers, n_nodes, n_dents,
                      offsets of nodes, dents and blob, blob size, key (offset, length in blob)
    nodes   n_nodes x 112 bytes; node 0 is unused, so a node's number is its inode number
    dents   n_dents x 12 bytes (name offset, name length, node); each directory's entries are
            contiguous and sorted by name bytes, so lookup is a binary search
    blob    names, symlink targets, xattrs (u32 name length, u32 value length, name, value)...

Offsets into the blob are 32-bit: a stack whose names, targets and xattrs exceed 4 GiB is
refused (EFBIG).  A loaded index is validated once (``merge.h`` lists what is checked): parents
are numbered before their children, each directory is listed once, by its parent, and every
name is a path component, so no walk over an index can loop or leave its layer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from . import index as _index


class MergeStatistics(NamedTuple):
    """What building one index cost."""

    layers: int
    nodes: int
    dents: int
    hidden: int
    seconds: float
    bytes: int


def build(layer_dirs: Sequence[str | os.PathLike[str]], *, key: str = "") -> tuple[bytes, MergeStatistics]:
    """Compute the merged tree of a layer stack and return it as index bytes.

    Reads every layer directory once (getdents, fstatat and xattrs of each entry, every one
    relative to its directory's fd), in C (``csrc/mergebuild.c``, GIL released); the result is
    byte-for-byte that of the readable Python oracle ``tests/_merge_oracle.py`` (tests/test_merge.py
    checks it on every rule case).  Measured on the 25k-entry bench image (5 layers): 90 ms
    against 225 ms for the Python walk; what is left is two system calls per entry (fstatat,
    listxattrat).  Nothing is written.

    Args:
        layer_dirs: the layer directories, **base layer first** (``Store.layer_dirs`` order).
        key: a string stored in the index naming the stack (e.g. the top chain ID).

    Returns:
        ``(index bytes, statistics)``.

    Raises:
        OSError: a layer directory is missing or unreadable, or changed under the walk (ELOOP:
            a directory became a symlink); EFBIG: the stack exceeds the format's limits.
    """
    started = time.perf_counter()
    dirs = [os.fspath(d) for d in layer_dirs]
    if not dirs:
        raise ValueError("a merged tree needs at least one layer")
    data, nodes, dents, hidden = _index.build(dirs, key)
    stats = MergeStatistics(layers=len(dirs), nodes=nodes, dents=dents, hidden=hidden,
                            seconds=time.perf_counter() - started, bytes=len(data))
    return data, stats


def stored_key(key: str) -> str:
    """The key to store the index of the stack named ``key`` under: ``key`` as root, ``key`` and
    the user's ID otherwise, since the overrides a build believes depend on who builds it (see
    the module docstring): a store that root and a user share keeps their indexes apart."""
    euid = os.geteuid()
    return key if euid == 0 else f"{key} uid={euid}"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp name in the same dir, fsync, then rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def is_current(path: Path, key: str) -> bool:
    """Whether ``path`` holds a valid index of this format for the stack named ``key``.

    The file is loaded and validated as a mount loads it (``csrc/merge.c``), so a damaged index
    is rebuilt instead of being served.
    """
    try:
        return _index.Index(path).key == key
    except (OSError, ValueError):
        return False


def ensure(path: Path, layer_dirs: Sequence[str | os.PathLike[str]], *, key: str) -> MergeStatistics | None:
    """Make sure ``path`` holds the current index of the stack; build and save it if not.

    Args:
        path: where the index lives (``store.state_dir("merged")/<top chain ID>.idx``).
        layer_dirs: the stack, base layer first.
        key: the stack's name, stored in the index and checked here.

    Returns:
        The statistics of the build, or None when the saved index was current (nothing read).

    Raises:
        OSError: a layer directory cannot be read, or the index cannot be written.
    """
    if is_current(path, key):
        return None
    data, stats = build(layer_dirs, key=key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
    return stats
