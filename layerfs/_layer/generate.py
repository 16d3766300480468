"""An upper directory back into a layer: the OCI tar stream of a writable mount's changes.

``generate_layer(upper, lowers, out)`` turns an upper directory in the kernel overlay's format
(docs/overlay.rst "The upper directory") into an OCI layer tar, written to ``out`` gzip'ed (isal),
zstd'ed or plain, computing the diff ID (sha256 of the tar) and the blob digest as it writes.  It
is the reverse of the unpacker (``unpack``): unpacking the tar over the same lowers gives the view
the upper gave.  The conversion is moby's for overlay uppers (``pkg/archive`` ``TarWithOptions``
with ``OverlayWhiteoutFormat``, ``overlayWhiteoutConverter.ConvertWrite``, ``addTarFile``), with
the differences marked *deviation*:

- Entries are written depth first, a directory before its children, the names of a directory in
  byte order (Go's ``filepath.WalkDir``), so the same upper always gives the same bytes.
- A 0/0 character device (or an xattr whiteout in a directory marked ``overlay.opaque=x``) named
  X becomes an empty regular file ``.wh.X``, mode 0600, with the device's owner and mtime (moby).
  *Deviation*: only when the lowers show an X in that directory (it must hide something): a
  whiteout inside an opaque or upper-only directory, or of a name no lower has, changes nothing,
  and moby writes it anyway.
- A directory carrying ``overlay.opaque=y`` (``trusted.``, ``user.``, or fuse-overlayfs's
  ``user.fuseoverlayfs.opaque``) is written, then ``DIR/.wh..wh..opq``, an empty file with the
  directory's permission bits and owner (moby).  *Deviation*: again only when the lowers show a
  directory there to hide.
- A metadata-only copy-up (``overlay.metacopy``, docs/overlay.rst "Metadata-only copy-up") is
  written with the upper file's metadata and the data of the lower file at the same path, or at
  the path its ``overlay.redirect`` names (the kernel's overlayfs.rst "Metadata only copy up").
- Other entries keep type, permission bits with setuid/setgid/sticky, numeric owner (no names),
  mtime (PAX ``mtime`` with nanoseconds when they are not zero, formatted as Go's
  ``archive/tar`` does; *deviation*: moby truncates to seconds, which would change what a
  container showed), symlink targets verbatim, device numbers, fifos.  No atime or ctime (moby).
- xattrs go into ``SCHILY.xattr.NAME`` PAX records, except the overlay-private ones
  (``whiteout.PRIVATE_XATTR_PREFIXES``) and ``security.selinux`` and ``system.nfs4_acl``, which are
  host-specific (umoci's ``ignoreXattrs``).  A ``security.capability`` of revision 3 (with a
  namespace root uid) becomes revision 2, as moby's ``ReadSecurityXattrToTarHeader`` does.
  *Deviation*: moby keeps only ``security.capability``; the unpacker restores them all.
- Non-directories with several links in the upper are written once, then as tar hard links to
  the first name (moby's ``SeenFiles``).  Sparse files are written dense.  Sockets cannot be in a
  tar (Go's ``archive/tar``): they are skipped and counted.
- The root is written as ``./`` with the upper root's attributes, which is what the merged root
  shows.  *Deviation*: moby leaves the root out, so a committed image loses a changed root mode.
- Owners, modes and device numbers kept in ``user.containers.override_stat`` (an unprivileged
  mount's upper, an unprivileged unpack's layers: ``override``) are those written, where the
  mount believes them: in an upper or a layer whose root carries one and is root's or the
  caller's.  The xattr itself is private, never written.

Refused, with :class:`LayerfsError` naming the path: a name starting with ``.wh.`` (image-spec
layer.md "Whiteouts": no such file may exist in a layer), a whiteout of a name longer than 251
bytes (its ``.wh.`` name would not fit in a directory), a directory carrying ``overlay.redirect``
(a directory renamed with ``redirect_dir=on``: its lower children would have to be copied), and a
metacopy file whose lower data cannot be found.

Safety: the upper and each lower are opened once; every directory below them is opened with
``openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS)`` from that root, every final name with
``O_NOFOLLOW`` or an ``*at`` call that does not follow it, so no symlink of the upper or of a
lower is ever followed.  Memory: one directory listing per level of the walk and one 1 MiB
block; never a file or the layer.

The lower side, :class:`Lowers`, follows the merge rules (docs/overlay.rst "Layers and lookup"),
reading every whiteout and opaque form (``whiteout``).  :mod:`.changes` uses the same walk for
``layerfs diff``.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import logging
import os
import stat
import tarfile
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Protocol

import isal.isal_zlib
import zstandard

from .. import _sys
from .._errors import LayerfsError
from .._oci.digest import Hasher
from . import override as _override
from . import whiteout as _whiteout
from .compress import Compression

log = logging.getLogger(__name__)

#: The OCI media type of a layer of each compression (image-spec media-types.md).
MEDIA_TYPES = {
    Compression.PLAIN: "application/vnd.oci.image.layer.v1.tar",
    Compression.GZIP: "application/vnd.oci.image.layer.v1.tar+gzip",
    Compression.ZSTD: "application/vnd.oci.image.layer.v1.tar+zstd",
}
#: Default levels: isal's 0-3 (2 is its default), zstd's 1-19 (3 is its default).
DEFAULT_LEVELS = {Compression.GZIP: 2, Compression.ZSTD: 3}
#: xattrs that are host-specific and never go into a layer (umoci ``ignoreXattrs``).
IGNORED_XATTRS = ("security.selinux", "system.nfs4_acl")

_BLOCK = 1 << 20
_RECORD = 512
_XATTR_PREFIX = "SCHILY.xattr."
_CAPABILITY = "security.capability"
_NAME_MAX = 255
#: Directory fds kept open per tree (the walk goes depth first: ancestors are reused).
_DIR_CACHE = 64
_RESOLVE = _sys.RESOLVE_IN_ROOT | _sys.RESOLVE_NO_SYMLINKS | _sys.RESOLVE_NO_MAGICLINKS
_NS = 1_000_000_000


class Writable(Protocol):
    """Where the blob goes: a binary file whose ``write`` writes everything (a buffered file)."""

    def write(self, data: bytes, /) -> object: ...


@dataclasses.dataclass(frozen=True)
class GeneratedLayer:
    """What :func:`generate_layer` wrote."""

    #: sha256 of the tar stream (the config's ``rootfs.diff_ids`` entry)
    diff_id: str
    #: sha256 of the blob as written (compressed), the manifest's layer digest
    digest: str
    #: bytes of the blob
    size: int
    #: the layer's OCI media type
    media_type: str
    compression: Compression
    #: tar entries, markers included
    entries: int
    #: ``.wh.X`` markers written
    whiteouts: int
    #: ``.wh..wh..opq`` markers written
    opaque_dirs: int
    #: paths left out because a tar cannot hold them (sockets)
    skipped: tuple[str, ...] = ()


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def show(path: str) -> str:
    """A path of the tree as a user sees it: ``"a/b"`` -> ``"/a/b"``, ``""`` -> ``"/"``."""
    return "/" + path


# -- reading trees by relative path, never following a symlink ---------------------------------

class _Tree:
    """A directory tree opened once, read by relative path, resolved inside it."""

    def __init__(self, path: str | os.PathLike[str], what: str) -> None:
        self.what = what
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise OSError(err.errno, f"{what} {os.fspath(path)}: {err.strerror}") from None
        self._dirs: collections.OrderedDict[str, int] = collections.OrderedDict()

    def dir(self, path: str) -> int:
        """An fd (O_RDONLY) of directory ``path`` (``""``: the root); cached: do not close it.

        Raises:
            OSError: ``ELOOP`` if a component is a symlink, ``ENOTDIR``, ``ENOENT``.
        """
        if not path:
            return self.fd
        fd = self._dirs.get(path)
        if fd is not None:
            self._dirs.move_to_end(path)
            return fd
        fd = _sys.openat2(self.fd, path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, 0, _RESOLVE)
        self._dirs[path] = fd
        if len(self._dirs) > _DIR_CACHE:
            os.close(self._dirs.popitem(last=False)[1])
        return fd

    def close(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _lstat(dirfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _listxattr(dirfd: int, name: str) -> tuple[str, ...]:
    """The xattr names of ``name`` in ``dirfd`` (``""``: the directory itself), not following it.

    An entry is named through ``/proc/self/fd/DIRFD/NAME``: the magic link is the directory
    itself, and the l* call does not follow the final name, which holds no ``/``.
    """
    try:
        if not name:
            return tuple(os.listxattr(dirfd))
        return tuple(os.listxattr(f"/proc/self/fd/{dirfd}/{name}", follow_symlinks=False))
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.ENODATA):
            return ()
        raise


# -- the lowers: the merged view an upper sits on ---------------------------------------------

@dataclasses.dataclass(frozen=True)
class LowerEntry:
    """An object of the merged lowers: its lstat in the topmost layer that has it."""

    st: os.stat_result
    #: the layer holding it (0 = the topmost lower)
    layer: int
    #: a directory: the layers whose same-named directories merge into it, top first
    layers: tuple[int, ...] = ()

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)


class Lowers:
    """The lower layer directories of an upper, read with the merge rules (docs/overlay.rst
    "Layers and lookup"): a name is the first non-whiteout object top down, a directory merges
    with the same-named directories below until an opaque one, a whiteout or a non-directory.
    Every marker form of ``whiteout`` counts (0/0 devices, xattr whiteouts, OCI ``.wh.`` files,
    opaque xattrs and ``.wh..wh..opq``), and marker names are never visible.

    Args:
        dirs: the layer directories, base first (as ``Store.layer_dirs``).
    """

    def __init__(self, dirs: Sequence[str | os.PathLike[str]]) -> None:
        self.trees: list[_Tree] = []
        try:
            for i, d in enumerate(reversed(dirs)):
                self.trees.append(_Tree(d, f"lower layer {len(dirs) - i}"))
        except BaseException:
            self.close()
            raise
        #: (layer, dir path) -> (opaque, holds xattr whiteouts)
        self._info: dict[tuple[int, str], tuple[bool, bool]] = {}
        #: per layer: its owners kept in overrides are believed (``override.trusted_layer``)
        self._believed = [_override.trusted_layer(tree.fd) for tree in self.trees]

    def _stat(self, layer: int, fd: int, name: str, st: os.stat_result) -> os.stat_result:
        """``st`` (the lstat of ``name`` in ``fd`` of ``layer``) with its override, if believed."""
        return _override.effective(st, _override.read(fd, name, st)) if self._believed[layer] else st

    def close(self) -> None:
        for tree in self.trees:
            tree.close()

    def root(self) -> LowerEntry | None:
        """The merged root: always merged across every layer (an opaque root changes nothing)."""
        if not self.trees:
            return None
        fd = self.trees[0].fd
        return LowerEntry(self._stat(0, fd, "", os.fstat(fd)), 0, tuple(range(len(self.trees))))

    def _dir_info(self, layer: int, path: str) -> tuple[bool, bool]:
        key = (layer, path)
        info = self._info.get(key)
        if info is None:
            fd = self.trees[layer].dir(path)
            info = (_whiteout.is_opaque(fd), _whiteout.holds_xattr_whiteouts(fd))
            self._info[key] = info
        return info

    def child(self, parent: LowerEntry, parent_path: str, name: str) -> LowerEntry | None:
        """The merged object ``name`` in the merged directory ``parent`` at ``parent_path``.

        Returns:
            None when no layer shows it (absent, whited out, or a marker name).

        Raises:
            OSError: a layer cannot be read.
        """
        if not parent.is_dir or _whiteout.classify(name) is not _whiteout.Marker.NONE:
            return None
        path = _join(parent_path, name)
        found: os.stat_result | None = None
        top = 0
        layers: list[int] = []
        for layer in parent.layers:
            fd = self.trees[layer].dir(parent_path)
            st = _lstat(fd, name)
            marker = len(os.fsencode(name)) <= _NAME_MAX - 4 and _lstat(fd, _whiteout.whiteout_name(name)) is not None
            xattr_whiteouts = self._dir_info(layer, parent_path)[1]
            if st is None or _whiteout.is_whiteout(st, dirfd=fd, name=name, xattr_whiteouts=xattr_whiteouts):
                if st is not None or marker:
                    break  # a whiteout: nothing below counts
                continue
            if found is None:
                found, top = self._stat(layer, fd, name, st), layer
                if not stat.S_ISDIR(st.st_mode):
                    return LowerEntry(found, layer)
            elif not stat.S_ISDIR(st.st_mode):
                break  # a non-directory ends the merge of a directory
            layers.append(layer)
            if marker or self._dir_info(layer, path)[0]:
                break  # whited out below (OCI: not in its own layer), or opaque
        return None if found is None else LowerEntry(found, top, tuple(layers))

    def lookup(self, path: str) -> LowerEntry | None:
        """The merged object at ``path`` (``"a/b"``), from the root."""
        entry = self.root()
        parent = ""
        for name in [p for p in path.split("/") if p]:
            if entry is None:
                return None
            entry = self.child(entry, parent, name)
            parent = _join(parent, name)
        return entry

    def names(self, entry: LowerEntry, path: str) -> set[str]:
        """The names the merged directory ``entry`` at ``path`` shows."""
        seen: set[str] = set()
        hidden: set[str] = set()
        for layer in entry.layers:
            fd = self.trees[layer].dir(path)
            xattr_whiteouts = self._dir_info(layer, path)[1]
            below: set[str] = set()
            with os.scandir(fd) as it:
                for d in it:
                    kind = _whiteout.classify(d.name)
                    if kind is _whiteout.Marker.WHITEOUT:
                        below.add(d.name[len(_whiteout.WHITEOUT_PREFIX):])
                        continue
                    if kind is not _whiteout.Marker.NONE:
                        continue
                    if not d.is_dir(follow_symlinks=False) and not d.is_symlink():
                        st = d.stat(follow_symlinks=False)
                        if _whiteout.is_whiteout(st, dirfd=fd, name=d.name, xattr_whiteouts=xattr_whiteouts):
                            below.add(d.name)
                            continue
                    if d.name not in hidden:
                        seen.add(d.name)
            hidden |= below
        return seen

    def dir_fd(self, entry: LowerEntry, parent_path: str) -> int:
        """The fd of the directory holding ``entry`` in its layer (cached: do not close it)."""
        return self.trees[entry.layer].dir(parent_path)


# -- the upper --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class UpperEntry:
    """One name of an upper directory, as lstat and listxattr see it."""

    name: str
    #: relative to the upper (``"a/b"``)
    path: str
    st: os.stat_result
    #: every xattr name, private ones included
    xattrs: tuple[str, ...]

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)


@dataclasses.dataclass(frozen=True)
class UpperDir:
    """A directory of the upper, with what the lowers say about it."""

    #: relative to the upper (``""``: the root)
    path: str
    st: os.stat_result
    #: the object the lowers show at this path (any type), or None
    lower: LowerEntry | None
    #: the view shows the lower directory's children too (not opaque, and the lower is a dir)
    merged: bool
    #: the directory carries an ``overlay.opaque=y`` form
    opaque: bool
    #: the directory holds xattr whiteouts (``overlay.opaque=x``)
    xattr_whiteouts: bool


class UpperView:
    """An upper directory over its lowers: listings, whiteouts, and the lower object of a name.

    Use as a context manager (it holds the directory fds).

    Args:
        upper: the upper directory (kernel overlay format).
        lowers: the layer directories below it, base first.
    """

    def __init__(self, upper: str | os.PathLike[str], lowers: Sequence[str | os.PathLike[str]]) -> None:
        self.upper = _Tree(upper, "upper")
        try:
            self.lowers = Lowers(lowers)
            #: owners kept in overrides are believed (``override.trusted_layer``: an unprivileged
            #: container's upper, whose root the mount gave one)
            self.believed = _override.trusted_layer(self.upper.fd)
        except BaseException:
            self.upper.close()
            raise

    def __enter__(self) -> UpperView:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.upper.close()
        self.lowers.close()

    def root(self) -> tuple[UpperDir, tuple[str, ...]]:
        """The root directory (always merged with the lowers' root) and its xattr names."""
        fd = self.upper.fd
        xattrs = _listxattr(fd, "")
        lower = self.lowers.root()
        holds = _has_value(fd, "", xattrs, _whiteout.KERNEL_OPAQUE_XATTRS, _whiteout.XATTR_WHITEOUTS_VALUE)
        return UpperDir("", self._stat(fd, "", os.fstat(fd), xattrs), lower, lower is not None, False, holds), xattrs

    def _stat(self, fd: int, name: str, st: os.stat_result, xattrs: Sequence[str]) -> os.stat_result:
        """``st`` with the override of ``name`` in ``fd`` (listing ``xattrs``), where believed."""
        if not self.believed or _override.XATTR not in xattrs:
            return st
        return _override.effective(st, _override.read(fd, name, st))

    def entries(self, d: UpperDir) -> list[UpperEntry]:
        """The names of upper directory ``d``, in byte order (never ``.``/``..``)."""
        fd = self.upper.dir(d.path)
        out = []
        with os.scandir(fd) as it:
            for e in it:
                xattrs = _listxattr(fd, e.name)
                out.append(UpperEntry(e.name, _join(d.path, e.name),
                                      self._stat(fd, e.name, e.stat(follow_symlinks=False), xattrs), xattrs))
        out.sort(key=lambda e: os.fsencode(e.name))
        return out

    def is_whiteout(self, d: UpperDir, e: UpperEntry) -> bool:
        """A 0/0 device, or an empty file with ``overlay.whiteout`` in a dir that holds them."""
        if _whiteout.is_whiteout_device(e.st):
            return True
        return (d.xattr_whiteouts and stat.S_ISREG(e.st.st_mode) and e.st.st_size == 0
                and any(x in _whiteout.WHITEOUT_XATTRS for x in e.xattrs))

    def lower_child(self, d: UpperDir, name: str) -> LowerEntry | None:
        """What the lowers show at ``d/name`` (for ``diff``: whether or not ``d`` merges)."""
        if d.lower is None:
            return None
        return self.lowers.child(d.lower, d.path, name)

    def visible_lower(self, d: UpperDir, name: str) -> LowerEntry | None:
        """The lower object the view sees through ``d/name``: only where ``d`` merges."""
        return self.lower_child(d, name) if d.merged else None

    def subdir(self, d: UpperDir, e: UpperEntry) -> UpperDir:
        """The :class:`UpperDir` of the directory entry ``e`` of ``d``.

        Raises:
            LayerfsError: the directory carries ``overlay.redirect`` (renamed with redirect_dir).
        """
        fd = self.upper.dir(d.path)
        if any(x in _whiteout.REDIRECT_XATTRS for x in e.xattrs):
            raise LayerfsError(f"upper {show(e.path)}: a directory renamed with redirect_dir "
                               f"(overlay.redirect) cannot be stored in a layer; mount without redirect_dir")
        opaque = _has_value(fd, e.name, e.xattrs, _whiteout.OPAQUE_XATTRS, _whiteout.OPAQUE_VALUE)
        lower = self.lower_child(d, e.name)
        merged = d.merged and not opaque and lower is not None and lower.is_dir
        return UpperDir(e.path, e.st, lower, merged, opaque,
                        _has_value(fd, e.name, e.xattrs, _whiteout.KERNEL_OPAQUE_XATTRS,
                                   _whiteout.XATTR_WHITEOUTS_VALUE))

    def metacopy_source(self, d: UpperDir, e: UpperEntry) -> tuple[LowerEntry, str] | None:
        """For a metadata-only copy-up: the lower file holding its data and that file's path;
        None for an ordinary file.

        Raises:
            LayerfsError: a metacopy file whose lower data is not a regular file of the lowers.
        """
        if not any(x in _whiteout.METACOPY_XATTRS for x in e.xattrs):
            return None
        fd = self.upper.dir(d.path)
        redirect = None
        for attr in _whiteout.REDIRECT_XATTRS:
            if attr in e.xattrs:
                redirect = _sys.getxattrat(fd, e.name, attr)
                break
        if redirect is not None and redirect.startswith(b"/"):
            path = os.fsdecode(redirect).strip("/")
            lower = self.lowers.lookup(path)
        else:
            name = os.fsdecode(redirect) if redirect else e.name
            path = _join(d.path, name)
            lower = None if "/" in name else self.visible_lower(d, name)
        if lower is None or not stat.S_ISREG(lower.st.st_mode):
            raise LayerfsError(f"upper {show(e.path)}: a metadata-only copy-up whose data ({show(path)}) "
                               f"is not a file of the lower layers")
        return lower, path

    def read_xattrs(self, d: UpperDir, e: UpperEntry | None, names: Sequence[str]) -> list[tuple[str, bytes]]:
        """The xattrs of ``e`` (None: the directory ``d`` itself) that a layer carries, sorted."""
        fd = self.upper.dir(d.path)
        name = e.name if e is not None else ""
        out = []
        for attr in sorted(names):
            if _whiteout.is_private_xattr(attr) or attr in IGNORED_XATTRS:
                continue
            value = _sys.getxattrat(fd, name, attr)
            if value is None:
                continue  # removed since it was listed
            if attr == _CAPABILITY:
                value = _capability_v2(value)
            out.append((attr, value))
        return out


def _has_value(fd: int, name: str, present: Sequence[str], attrs: Sequence[str], want: bytes) -> bool:
    """Whether one of ``attrs`` (among the ``present`` names) of ``name`` in ``fd`` is ``want``."""
    for attr in attrs:
        if attr in present:
            try:
                if _sys.getxattrat(fd, name, attr) == want:
                    return True
            except PermissionError:
                continue  # trusted.* unreadable unprivileged: not ours
    return False


def _capability_v2(value: bytes) -> bytes:
    """A ``security.capability`` of VFS_CAP_REVISION_3 as revision 2 (moby
    ``ReadSecurityXattrToTarHeader``: the namespace root uid means nothing outside it)."""
    if len(value) >= 24 and value[3] == 3:
        return value[:3] + b"\x02" + value[4:20]
    return value


def capability(view: UpperView, d: UpperDir, e: UpperEntry) -> bytes | None:
    """The ``security.capability`` of an upper entry, if any."""
    if _CAPABILITY not in e.xattrs:
        return None
    return _sys.getxattrat(view.upper.dir(d.path), e.name, _CAPABILITY)


def lower_capability(view: UpperView, d: UpperDir, name: str, lower: LowerEntry) -> bytes | None:
    """The ``security.capability`` of the lower object shown at ``d/name``."""
    return _sys.getxattrat(view.lowers.dir_fd(lower, d.path), name, _CAPABILITY)


# -- the output: tar, compression, digests -------------------------------------------------------

class _Sink:
    """The tar stream on its way out: hashed (diff ID), compressed, hashed again (digest), written."""

    def __init__(self, out: Writable, compression: Compression, level: int | None) -> None:
        self._out = out
        self.diff = Hasher()
        self.blob = Hasher()
        self._buf = bytearray()
        self._gzip: isal.isal_zlib.Compress | None = None
        self._zstd: zstandard.ZstdCompressionObj | None = None
        if compression is Compression.GZIP:
            self._gzip = isal.isal_zlib.compressobj(DEFAULT_LEVELS[compression] if level is None else level,
                                                    isal.isal_zlib.DEFLATED, 31)
        elif compression is Compression.ZSTD:
            zlevel = DEFAULT_LEVELS[compression] if level is None else level
            self._zstd = zstandard.ZstdCompressor(level=zlevel).compressobj()

    def write(self, data: bytes) -> None:
        """Queue small pieces (headers, padding) to be processed by the block."""
        self._buf += data
        if len(self._buf) >= _BLOCK:
            self._flush()

    def data(self, view: memoryview) -> None:
        """Process a block of file data at once (not kept: the caller reuses its buffer)."""
        self._flush()
        self._process(view)

    def _flush(self) -> None:
        if self._buf:
            data, self._buf = bytes(self._buf), bytearray()
            self._process(data)

    def _process(self, data: bytes | memoryview) -> None:
        self.diff.update(data)
        if self._gzip is not None:
            self._emit(self._gzip.compress(data))
        elif self._zstd is not None:
            self._emit(self._zstd.compress(data))
        else:
            self._emit(bytes(data))

    def _emit(self, data: bytes) -> None:
        if data:
            self.blob.update(data)
            self._out.write(data)

    def close(self) -> None:
        self._flush()
        if self._gzip is not None:
            self._emit(self._gzip.flush())
        elif self._zstd is not None:
            self._emit(self._zstd.flush())


def pax_time(ns: int) -> str:
    """A time in ns as a PAX record value, as Go's ``archive/tar`` writes it (``formatPAXTime``):
    seconds, then ``.`` and the nanoseconds without trailing zeros."""
    sign = "-" if ns < 0 else ""
    secs, frac = divmod(abs(ns), _NS)
    if not frac:
        return f"{sign}{secs}"
    return f"{sign}{secs}.{frac:09d}".rstrip("0")


class _Generator:
    def __init__(self, view: UpperView, sink: _Sink) -> None:
        self.view = view
        self.sink = sink
        self.entries = 0
        self.whiteouts = 0
        self.opaque_dirs = 0
        self.skipped: list[str] = []
        self._links: dict[tuple[int, int], str] = {}
        self._buf = bytearray(_BLOCK)

    def header(self, name: str, kind: bytes, st: os.stat_result, *, mode: int | None = None, size: int = 0,
               linkname: str = "", xattrs: Sequence[tuple[str, bytes]] = ()) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = stat.S_IMODE(st.st_mode) if mode is None else mode
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = info.gname = ""
        info.size = size
        info.mtime = st.st_mtime_ns // _NS
        info.linkname = linkname
        if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        pax: dict[str, str] = {}
        if st.st_mtime_ns % _NS:
            pax["mtime"] = pax_time(st.st_mtime_ns)
        for attr, value in xattrs:
            pax[_XATTR_PREFIX + attr] = value.decode("utf-8", "surrogateescape")
        info.pax_headers = pax
        self.sink.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        self.entries += 1

    def run(self) -> None:
        root, root_xattrs = self.view.root()
        self.header("./", tarfile.DIRTYPE, root.st, xattrs=self.view.read_xattrs(root, None, root_xattrs))
        stack: list[tuple[UpperDir, Iterator[UpperEntry]]] = [(root, iter(self.view.entries(root)))]
        while stack:
            d, it = stack[-1]
            e = next(it, None)
            if e is None:
                stack.pop()
                continue
            try:
                sub = self.entry(d, e)
            except OSError as err:
                raise OSError(err.errno, f"upper {show(e.path)}: {err.strerror or err}") from None
            if sub is not None:
                stack.append((sub, iter(self.view.entries(sub))))
        self.sink.write(bytes(2 * _RECORD))

    def entry(self, d: UpperDir, e: UpperEntry) -> UpperDir | None:
        """Write entry ``e`` of ``d``; returns the directory to descend into, if ``e`` is one."""
        view = self.view
        if view.is_whiteout(d, e):
            if view.visible_lower(d, e.name) is not None:
                marker = _whiteout.whiteout_name(e.name)
                if len(os.fsencode(marker)) > _NAME_MAX:
                    raise LayerfsError(f"upper {show(e.path)}: the whiteout of a name longer than "
                                       f"{_NAME_MAX - 4} bytes cannot be stored in a layer ({marker[:12]}... "
                                       f"would be longer than {_NAME_MAX} bytes)")
                self.header(_join(d.path, marker), tarfile.REGTYPE, e.st, mode=0o600)
                self.whiteouts += 1
            return None
        if e.name.startswith(_whiteout.WHITEOUT_PREFIX):
            raise LayerfsError(f"upper {show(e.path)}: a name starting with {_whiteout.WHITEOUT_PREFIX} cannot be "
                               f"stored in an OCI layer, where it marks a whiteout (image-spec layer.md)")
        mode = e.st.st_mode
        if stat.S_ISDIR(mode):
            sub = view.subdir(d, e)
            self.header(e.path + "/", tarfile.DIRTYPE, e.st, xattrs=view.read_xattrs(d, e, e.xattrs))
            if sub.opaque and d.merged and sub.lower is not None and sub.lower.is_dir:
                self.header(_join(e.path, _whiteout.OPAQUE_MARKER), tarfile.REGTYPE, e.st,
                            mode=stat.S_IMODE(mode) & 0o777)
                self.opaque_dirs += 1
            return sub
        if stat.S_ISSOCK(mode):
            log.info("upper %s: a socket cannot be stored in a layer: left out", show(e.path))
            self.skipped.append(show(e.path))
            return None
        xattrs = view.read_xattrs(d, e, e.xattrs)
        if e.st.st_nlink > 1:
            key = (e.st.st_dev, e.st.st_ino)
            first = self._links.get(key)
            if first is not None:
                self.header(e.path, tarfile.LNKTYPE, e.st, linkname=first, xattrs=xattrs)
                return None
            self._links[key] = e.path
        if stat.S_ISREG(mode):
            self.header(e.path, tarfile.REGTYPE, e.st, size=e.st.st_size, xattrs=xattrs)
            self.data(d, e)
        elif stat.S_ISLNK(mode):
            target = os.readlink(e.name, dir_fd=view.upper.dir(d.path))
            self.header(e.path, tarfile.SYMTYPE, e.st, linkname=target, xattrs=xattrs)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            self.header(e.path, tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE, e.st, xattrs=xattrs)
        elif stat.S_ISFIFO(mode):
            self.header(e.path, tarfile.FIFOTYPE, e.st, xattrs=xattrs)
        else:
            raise LayerfsError(f"upper {show(e.path)}: unknown file type {stat.S_IFMT(mode):o}")
        return None

    def data(self, d: UpperDir, e: UpperEntry) -> None:
        """Write the data of regular file ``e`` (a metacopy's from its lower file), then padding."""
        view = self.view
        source = view.metacopy_source(d, e)
        if source is None:
            dirfd, name, expect = view.upper.dir(d.path), e.name, e.st
        else:
            lower, path = source
            parent, _, name = path.rpartition("/")
            dirfd, expect = view.lowers.dir_fd(lower, parent), lower.st
        size = e.st.st_size
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dirfd)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (expect.st_dev, expect.st_ino) or not stat.S_ISREG(st.st_mode):
                raise LayerfsError(f"upper {show(e.path)}: changed while being read")
            view_ = memoryview(self._buf)
            left = size
            while left:
                n = os.readv(fd, [view_[:min(left, _BLOCK)]])
                if n == 0:
                    raise LayerfsError(f"upper {show(e.path)}: the file is shorter than its size of {size} "
                                       f"bytes (changed while being read?)")
                self.sink.data(view_[:n])
                left -= n
        finally:
            os.close(fd)
        if size % _RECORD:
            self.sink.write(bytes(_RECORD - size % _RECORD))


def generate_layer(upper: str | os.PathLike[str], lowers: Sequence[str | os.PathLike[str]], out: Writable, *,
                   compression: Compression = Compression.GZIP, level: int | None = None) -> GeneratedLayer:
    """Write the OCI layer of an upper directory to ``out`` (see the module docstring for the rules).

    Args:
        upper: the upper directory, in the kernel overlay's format; it should not change meanwhile
            (unmounted, or a container that is not writing).
        lowers: the layer directories below it, base first (as ``Store.layer_dirs``).
        out: where the blob goes (written forward only, block by block).
        compression: gzip (isal), zstd or plain.
        level: the compression level (default :data:`DEFAULT_LEVELS`).

    Returns:
        A :class:`GeneratedLayer`: diff ID, digest, size and media type of what was written.

    Raises:
        LayerfsError: something the upper holds cannot be stored in a layer (naming the path).
        OSError: the upper or a lower cannot be read, or ``out`` cannot be written (naming the path).
    """
    sink = _Sink(out, compression, level)
    with UpperView(upper, lowers) as view:
        gen = _Generator(view, sink)
        gen.run()
    sink.close()
    return GeneratedLayer(diff_id=sink.diff.digest(), digest=sink.blob.digest(), size=sink.blob.size,
                          media_type=MEDIA_TYPES[compression], compression=compression, entries=gen.entries,
                          whiteouts=gen.whiteouts, opaque_dirs=gen.opaque_dirs, skipped=tuple(gen.skipped))


__all__ = ["DEFAULT_LEVELS", "MEDIA_TYPES", "GeneratedLayer", "Lowers", "UpperView", "generate_layer", "pax_time"]
