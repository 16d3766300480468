"""Apply one layer blob to an empty directory, in overlay form, safely and in one streaming pass.

``unpack_layer(stream, dest, diff_id=...)`` reads the compressed blob once, hashing it (digest,
size) and, after decompression, hashing the tar stream to its very end (diff_id: EOF blocks and
trailing bytes included, docs/oci.rst "Digests and identifiers").  It never holds a layer in memory:
a 1 MiB decompressed chunk, the decompressor's queue and one extended header at most.

What lands in ``dest`` (docs/oci.rst "Applying a layer",
docs/overlay.rst "Whiteouts and opaque directories"):

- Entries keep type, mode (setuid/setgid/sticky too), numeric owner (as root), mtime and atime
  (atime = max(atime, mtime); times before 1970 or beyond 64-bit ns become the epoch, like moby),
  and ``SCHILY.xattr.*`` PAX xattrs (binary values too; an empty value deletes the record, as
  POSIX pax says and Go's tar, which writes most images, reads it).  Per entry: create, lchown,
  xattrs (chown clears ``security.capability``), chmod (chown clears setuid), times.  Directory
  times are set after the whole layer.  Symlinks get lchown and lutimes; their targets are
  stored verbatim.
- ``.wh.X`` becomes a 0/0 char device X owned by the marker's uid/gid; ``.wh..wh..opq`` becomes
  ``trusted.overlay.opaque=y`` (``user.overlay.opaque=y`` unprivileged) on its directory; the
  markers themselves are not written.  Following the spec, a whiteout never removes an entry of its
  own layer, in either order: if the layer also has X, X stays, and if X is a directory it is made
  opaque (the whiteout removed the lower X, so the new dir must not merge with it).  What the
  layer's entries did not make (a directory made only to hold the layer's markers) is not spared:
  the whiteout takes its place, and an opaque marker removes it from its directory (as umoci,
  which spares the paths the layer's entries made and their parents).  Markers never follow a
  symlink of the layer, and a marker below a symlink or non-directory of its own layer is redundant
  (that entry already hides everything below it) and ignored.  A whiteout below a directory the
  same layer makes opaque (not the root, which the kernel never makes opaque) hides nothing and is
  left out: the kernel would list it as an entry that cannot be looked up.
- A later entry for the same path wins, as if the entries were applied one by one to the merged
  tree (umoci does exactly that): a dir over a dir replaces the attributes (xattrs too) and keeps
  the children; anything else removes the old entry (a dir recursively) and creates the new one.
  A directory made where the layer removed an entry of its own is opaque: the removed entry had
  replaced whatever lay below, which must not come back.  Hard-link entries apply their header's
  owner, mode and times to the shared inode, as moby and containerd do (the owner only if it
  differs: a chown drops the file's ``security.capability``).
- ``.``/``./`` only sets the root's attributes (xattrs replaced, as for any directory) and must
  be a directory.  Missing parents are created 0755, with the setgid bit and group that mkdir(2)
  gives in a setgid directory.  Without a root entry the root is 0755 (``dest`` arrives 0700).
  These implicit directories get the time 0, never the clock (two unpacks of a layer give the same
  tree), and :func:`inherit_attributes` then gives them the attributes of the same directory below.
- Hard links may only point at earlier entries of the same layer: a target elsewhere (a lower
  layer) raises :class:`BadArchive`, like overlay2's per-layer extraction.
- Sparse files (GNU old, PAX 0.0/0.1/1.0) keep their holes on disk.
- Unprivileged (no CAP_CHOWN, CAP_MKNOD): files belong to the caller, and every regular file and
  directory, the root included, keeps the image's owner and mode in the xattr
  ``user.containers.override_stat``, as rootless containers-storage writes it; devices and fifos
  are empty regular files whose override gives their type and device numbers; the modes on disk
  let the caller work (``layerfs._layer.override`` has the table).  What cannot be kept: the
  owners of symlinks (a symlink takes no ``user.*`` xattr) and the ``trusted.*`` / ``security.*``
  xattrs the kernel refuses (file capabilities); :attr:`LayerStats.not_kept` counts them and
  :func:`take_not_kept` gathers them for the one line the command line prints.

Safety (docs/oci.rst "Unpack security"): ``dest`` is opened once; every entry's parent is resolved with
``openat2(RESOLVE_IN_ROOT|RESOLVE_NO_MAGICLINKS)`` so that ``..`` and symlinks, even ones the layer
itself plants, resolve inside ``dest``; the final component is created with ``O_EXCL``/``mkdirat``/
``mknodat``/``symlinkat``/``linkat`` on that parent fd and never followed.  Refused with
:class:`BadArchive` naming the entry: absolute names and ``..`` that climb above the root (like
moby), ``.wh.``/``.wh..``/``.wh...``, a marker used as a directory, unknown type flags, a non-dir
root, hard-link targets outside the root or not in the layer, a parent that is a dangling symlink
or not a directory, and the limits below.  Dropped: xattrs ``trusted.overlay.*``, ``user.overlay.*``,
``user.fuseoverlayfs.*``, ``security.selinux``; PAX global headers (ignored, like moby); AUFS
``.wh..wh.*`` metadata entries (so AUFS hard links into ``.wh..wh.plnk`` fail).  Only
``SCHILY.xattr.*`` records are read (GNU tar, Go, Python; bsdtar writes them too).  Not done: no
cap on the total uncompressed size (the filesystem's space bounds it) and no ID mapping.

Limits: :data:`MAX_ENTRIES` entries per layer, :data:`MAX_HEADER_BYTES` of extended headers per
entry (PAX records, GNU long names, sparse maps; Go's limit), names of :data:`MAX_PATH_BYTES`
bytes and components of :data:`MAX_NAME_BYTES` bytes (a whiteout marker ``.wh.X`` is never written
as a name: the limit applies to its X, so the whiteout of a 255-byte name loads).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import queue
import shutil
import stat
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Generic, TypeVar

from .. import _sys
from .._errors import BadArchive, DigestMismatch
from .._oci.digest import ALGORITHM, Hasher, Readable, check_digest
from . import override as _override
from . import whiteout as _whiteout
from .compress import BLOCK_SIZE, Compression, Reader, open_decompressed
from .whiteout import Marker

log = logging.getLogger(__name__)

#: Most entries one layer may have (the largest real layers hold a few 100,000).
MAX_ENTRIES = 1 << 22
#: Most bytes of extended headers (PAX, GNU long name/link, sparse maps) before one entry.
MAX_HEADER_BYTES = 1 << 20
#: Longest entry name or hard-link target, in bytes (PATH_MAX - 1).
MAX_PATH_BYTES = 4095
#: Longest path component, in bytes (NAME_MAX).
MAX_NAME_BYTES = 255

#: xattrs never taken from a layer tar (docs/overlay.rst "Private xattrs"; umoci drops
#: security.selinux).
_DROPPED_XATTRS = ("security.selinux",)
_XATTR_PREFIX = "SCHILY.xattr."
_REGULAR = frozenset((tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE))
_NS = 1_000_000_000
_MAX_NS = (1 << 63) - 1
#: Parent directory fds kept open between entries (entries come grouped by directory).
_PARENT_CACHE = 64
#: errnos that say something about the machine, not the archive: raised as OSError.
_ENVIRONMENT_ERRNOS = frozenset((errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM,
                                 errno.EMFILE, errno.ENFILE, errno.EACCES))


@dataclass(frozen=True)
class ImplicitDir:
    """A directory a layer made only as a parent (or its root, without a root entry): its
    attributes are those of the merged tree below, which :func:`inherit_attributes` knows."""

    #: the real path in the layer ("" for the root)
    path: str
    #: the same directory below was still visible when the layer made it (no whiteout, opaque
    #: marker or replaced entry of the layer hid it): it takes that directory's attributes
    below_visible: bool = True
    #: its parent was then implicit with attributes from below, so the setgid bit and group
    #: mkdir(2) gave it depend on those
    after_parent: bool = False
    #: the group mkdir(2) gave it with the setgid bit of its parent in the layer, or -1
    setgid_gid: int = -1
    #: an entry of the layer gave it attributes later: they stay (listed for its children)
    explicit: bool = False


@dataclass(frozen=True)
class LayerStats:
    """What :func:`unpack_layer` did."""

    #: sha256 of the whole decompressed stream, as verified
    diff_id: str
    #: digest of the blob as read (compressed)
    digest: str
    #: bytes of the blob as read
    compressed_size: int
    #: sum of the regular files' sizes (docker's layer size)
    size: int
    #: tar entries, markers included
    entries: int
    #: "gzip", "zstd" or "plain", from the magic bytes
    compression: str = "plain"
    #: whiteout markers (``.wh.X``) the layer holds
    whiteouts: int = 0
    #: directories marked opaque by ``.wh..wh..opq``
    opaque_dirs: int = 0
    #: entries or xattrs skipped: refused xattrs when unprivileged, dropped private xattrs, AUFS
    #: metadata
    skipped: int = 0
    #: directories the layer made only as parents (the root first, without a root entry), in
    #: the order made: their attributes come from the layers below (:func:`inherit_attributes`)
    implicit_dirs: tuple[ImplicitDir, ...] = ()
    #: what an unprivileged unpack could not keep (None when privileged or nothing was lost)
    not_kept: NotKept | None = None


@dataclass(frozen=True)
class NotKept:
    """What an unprivileged unpack could not keep of the image (``layerfs._layer.override``)."""

    #: symlinks whose owner was not the caller's (they are the caller's now)
    symlink_owners: int = 0
    #: (xattr name, entries) of the xattrs the kernel refused, by name
    xattrs: tuple[tuple[str, int], ...] = ()

    def __add__(self, other: NotKept) -> NotKept:
        names: dict[str, int] = dict(self.xattrs)
        for name, n in other.xattrs:
            names[name] = names.get(name, 0) + n
        return NotKept(self.symlink_owners + other.symlink_owners, tuple(sorted(names.items())))

    def __bool__(self) -> bool:
        return bool(self.symlink_owners or self.xattrs)


_not_kept_lock = threading.Lock()
_not_kept = NotKept()


def take_not_kept() -> NotKept:
    """What the unprivileged unpacks of this process could not keep since the last call (a
    command prints it once, after its progress: :func:`not_kept_line`), and forget it."""
    global _not_kept
    with _not_kept_lock:
        taken, _not_kept = _not_kept, NotKept()
    return taken


def _record_not_kept(lost: NotKept) -> None:
    global _not_kept
    with _not_kept_lock:
        _not_kept = _not_kept + lost


def not_kept_line(lost: NotKept) -> str:
    """The one plain line that says what an unprivileged unpack kept and what it could not."""
    parts = []
    if lost.symlink_owners:
        n = lost.symlink_owners
        parts.append(f"the owners of {n} symlink{'s' if n != 1 else ''} (now yours)")
    if lost.xattrs:
        n = sum(count for _, count in lost.xattrs)
        names = ", ".join(name for name, _ in lost.xattrs)
        parts.append(f"{n} xattr{'s' if n != 1 else ''} that only root may set ({names})")
    return (f"Note: unpacked without root: the image's owners, modes and device nodes are kept in "
            f"{_override.XATTR} xattrs, which layerfs mount and fuse-overlayfs show; not kept: "
            f"{' and '.join(parts)}")


def unpack_layer(stream: Readable, dest: str | os.PathLike[str], *, diff_id: str, digest: str | None = None,
                 size: int | None = None, media_type: str | None = None,
                 privileged: bool | None = None) -> LayerStats:
    """Unpack the layer blob ``stream`` into the empty directory ``dest``, in overlay form.

    Args:
        stream: the blob (gzip, zstd or plain tar; sniffed by magic), read forward to its end.
        dest: an existing empty directory (mode 0700) made by the caller, who removes it if this
            raises.  Nothing outside it is ever written.
        diff_id: the expected digest of the decompressed stream (``config.rootfs.diff_ids[i]``).
        digest: the expected digest of the blob as read, if known.
        size: the expected byte count of the blob, if known (reads stop just past it).
        media_type: the descriptor's media type, if known (must be a layer type).
        privileged: write as root (owners, devices, ``trusted.*`` xattrs); default: effective
            uid 0 outside a user namespace.

    Returns:
        A :class:`LayerStats`.

    Raises:
        DigestMismatch: the blob's size or digest, or the diff_id, differ (naming both digests).
            A corrupt or cut blob whose digest is wrong raises this rather than BadArchive.
        BadArchive: the tar, its compression or an entry is broken, unsafe or beyond the limits
            (the message names the entry).
        InvalidReference: ``diff_id`` or ``digest`` is not a well-formed digest.
        ValueError: ``dest`` is not empty.
        OSError: the machine failed (no space, I/O error), with the entry in the message.
    """
    check_digest(diff_id)
    if digest is not None:
        check_digest(digest)
    if privileged is None:
        privileged = default_privileged()
    rootfd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with os.scandir(rootfd) as it:
            if next(it, None) is not None:
                raise ValueError(f"unpack destination {os.fspath(dest)!r} is not empty")
        blob = _BlobReader(stream, digest, size)
        applier = _Applier(rootfd, privileged)
        try:
            reader, compression = open_decompressed(blob, media_type=media_type)
            # a plain blob is its own tar: when the algorithms agree, one hash gives both digests
            same = compression is Compression.PLAIN and blob.hasher.algorithm == diff_id.partition(":")[0]
            inflater = _Inflater(reader, None if same else Hasher(diff_id.partition(":")[0]))
            try:
                tar = _TarInput(inflater)
                _apply_tar(tar, applier)
                tar.drain()
            finally:
                inflater.close()
                reader.close()
            applier.finish()
        except (BadArchive, DigestMismatch) as err:
            problem = blob.problem(drain=True)
            if problem is not None and problem is not err:
                raise problem from err
            raise
        finally:
            applier.close()
        problem = blob.problem(drain=True)
        if problem is not None:
            raise problem
        actual = (inflater.hasher or blob.hasher).digest()
        if actual != diff_id:
            raise DigestMismatch("layer diff_id", diff_id, actual)
        lost = NotKept(applier.lost_owners, tuple(sorted(applier.lost_xattrs.items())))
        if lost:
            _record_not_kept(lost)
        return LayerStats(diff_id=actual, digest=blob.hasher.digest(), compressed_size=blob.hasher.size,
                          size=applier.size, entries=applier.entries, compression=compression.value,
                          whiteouts=applier.whiteouts, opaque_dirs=applier.opaque_dirs,
                          skipped=applier.skipped, implicit_dirs=applier.implicit_dirs(),
                          not_kept=lost or None)
    finally:
        os.close(rootfd)


def inherit_attributes(dest: str | os.PathLike[str], implicit_dirs: Sequence[ImplicitDir],
                       lower_dirs: Sequence[str | os.PathLike[str]], *, privileged: bool | None = None) -> int:
    """Give each implicit directory of the unpacked layer ``dest`` the attributes (mode, owner,
    times and xattrs) of the same directory as the layers below show it.

    A layer that creates a directory only as the parent of its entries (or has no root entry)
    carries nothing for it: in the merged tree it is still the directory below, so the layer dir
    must hold that directory's attributes, or the kernel overlay (which takes a directory's
    attributes from its topmost layer) would show the unpacker's defaults.  containerd does the
    same when it applies a layer on its parents.  The directory below is the one the kernel
    overlay of ``lower_dirs`` shows: the topmost layer where the path is a directory, reached
    through no whiteout, non-directory or opaque directory above it.  Where there is none (or the
    layer itself hid it before making the directory), the directory keeps the unpacker's fixed
    defaults (0755, root, time 0), except that in a setgid directory it takes the setgid bit and
    the directory's group, as mkdir(2) gives them (and umoci, which makes it in the merged tree).

    The decision for shared layers: a layer directory serves every image with that diff ID (and a
    layer an image repeats is unpacked once, at its first place), so this runs once, with the
    layers below the first place the layer was added at.  The directory is then right for that
    image and for every image that puts the layer on lowers with the same directories (the
    common case: a shared base); an image that puts it on lowers whose directories differ sees,
    for those implicit directories only, the attributes of the first (in the layerfs mount as in
    the kernel overlay).  Layers that carry their parent directories, as image builders write
    them, have nothing to inherit but their root when they have no root entry; the one layer often
    found on different lowers is the empty one, whose root then shows the first lowers' root.
    Right for every image would be an unpack per ChainID, as docker's overlay2 keeps layers (a
    copy per parent chain), or the mount's index taking an implicit directory's attributes from
    the layers below (which needs the implicit directories recorded with the layer).

    Args:
        dest: the layer directory, as :func:`unpack_layer` left it (before it is published).
        implicit_dirs: ``LayerStats.implicit_dirs``, parents first.
        lower_dirs: the layer directories below it in the image, base first, in overlay form.
        privileged: as for :func:`unpack_layer` (owners and ``trusted.*`` xattrs only as root).

    Returns:
        How many directories took attributes from below.

    Raises:
        OSError: a layer directory cannot be read or ``dest`` written.
    """
    if not implicit_dirs:
        return 0
    if privileged is None:
        privileged = default_privileged()
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    resolve = _sys.RESOLVE_IN_ROOT | _sys.RESOLVE_NO_SYMLINKS
    lowers: list[int] = []
    rootfd = os.open(dest, flags)
    try:
        for lower in reversed(lower_dirs):
            lowers.append(os.open(lower, flags))
        done = 0
        #: path -> the group a setgid bit gives (or -1), as the merged tree had the directory when
        #: the layer made it
        made: dict[str, int] = {}
        for d in implicit_dirs:
            src = _lower_dir(lowers, d.path.split("/") if d.path else []) if d.below_visible else None
            want = -2   # -2: leave as it is; -1: no setgid bit; else: setgid with that group
            if src is not None:
                st = _dir_stat(src, privileged)
                made[d.path] = st.st_gid if st.st_mode & stat.S_ISGID else -1
            elif d.after_parent:
                # made by mkdir(2) in its parent as the merged tree then had it, not as the layer did
                want = made[d.path] = made.get(d.path.rpartition("/")[0], -1)
                if want == d.setgid_gid:
                    want = -2
            else:
                made[d.path] = d.setgid_gid   # the root with nothing below: -1, as umoci's
            if d.explicit or (src is None and want == -2):
                if src is not None and src not in lowers:
                    os.close(src)
                continue
            dst = _sys.openat2(rootfd, d.path or ".", flags, resolve=resolve)
            try:
                if src is not None:
                    _copy_dir_attributes(src, dst, privileged)
                    done += 1
                elif privileged:
                    os.fchown(dst, -1, max(want, 0))
                    mode = stat.S_IMODE(os.fstat(dst).st_mode) & ~stat.S_ISGID
                    os.fchmod(dst, mode | (stat.S_ISGID if want >= 0 else 0))
                else:
                    st = _dir_stat(dst, privileged)
                    mode = stat.S_IMODE(st.st_mode) & ~stat.S_ISGID | (stat.S_ISGID if want >= 0 else 0)
                    _override.write(dst, "", _override.Override(st.st_uid, max(want, 0), stat.S_IFDIR | mode))
            finally:
                os.close(dst)
                if src is not None and src not in lowers:
                    os.close(src)
        return done
    finally:
        for fd in lowers:
            os.close(fd)
        os.close(rootfd)


def _lower_dir(lowers: list[int], comps: list[str]) -> int | None:
    """An fd of directory ``comps`` in the topmost of ``lowers`` (root fds, top first) that shows
    it in their overlay, or None (the caller closes it unless it is one of ``lowers``)."""
    if not lowers:
        return None
    current = list(lowers)   # the layers in which the path so far is a merged directory, top first
    try:
        for name in comps:
            found: list[int] = []
            try:
                for fd in current:
                    st = _lstat(fd, name)
                    if st is None:
                        marker = _whiteout.whiteout_name(name)
                        if len(os.fsencode(marker)) <= MAX_NAME_BYTES and _lstat(fd, marker) is not None:
                            break   # an OCI marker left as a file
                        continue
                    if not stat.S_ISDIR(st.st_mode):
                        break       # a whiteout or another type hides the layers below
                    found.append(os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                         dir_fd=fd))
                    if _whiteout.is_opaque(found[-1]):
                        break
            finally:
                for fd in current:
                    if fd not in lowers:
                        os.close(fd)
                current = found
            if not current:
                return None
        top, rest = current[0], current[1:]
        current = rest
        return top
    finally:
        for fd in current:
            if fd not in lowers:
                os.close(fd)


def _dir_stat(fd: int, privileged: bool) -> os.stat_result:
    """The fstat of directory ``fd`` of a layer, with its override when unprivileged (the layers
    an unprivileged unpack builds on are its own, unpacked so)."""
    st = os.fstat(fd)
    return st if privileged else _override.effective(st, _override.read(fd, "", st))


def _copy_dir_attributes(src: int, dst: int, privileged: bool) -> None:
    """Owner, xattrs (not the overlay's private ones), mode and times of ``src`` onto ``dst``
    (unprivileged: owner and mode into the override)."""
    st = _dir_stat(src, privileged)
    if privileged:
        os.fchown(dst, st.st_uid, st.st_gid)
    else:
        _override.write(dst, "", _override.Override(st.st_uid, st.st_gid, st.st_mode))
    for attr in os.listxattr(src):
        if _whiteout.is_private_xattr(attr) or attr in _DROPPED_XATTRS:
            continue
        try:
            os.setxattr(dst, attr, os.getxattr(src, attr))
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA):
                raise
    os.fchmod(dst, stat.S_IMODE(st.st_mode) if privileged else _override.disk_mode(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def default_privileged() -> bool:
    """True when the process is root in the initial user namespace (the full identity uid map):
    then owners, devices and ``trusted.*`` xattrs can be written."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/uid_map", encoding="ascii") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return True


# -- the two streams ------------------------------------------------------------------------

class _BlobReader:
    """The compressed side: hashes and counts what passes, stops just past the announced size."""

    def __init__(self, raw: Readable, expected: str | None, size: int | None) -> None:
        self._raw = raw
        self.expected = expected
        self.expected_size = size
        self.hasher = Hasher(expected.partition(":")[0] if expected else ALGORITHM)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1, /) -> bytes:
        if n is None or n < 0:
            n = BLOCK_SIZE
        if self.expected_size is not None:
            # one byte past the announced size is enough to tell it was wrong
            n = min(n, self.expected_size + 1 - self.hasher.size)
            if n <= 0:
                return b""
        data = self._raw.read(n)
        if data:
            self.hasher.update(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def problem(self, *, drain: bool) -> DigestMismatch | None:
        """Read to EOF (if ``drain``), then say what is wrong with size or digest, if anything."""
        if drain:
            while self.read(BLOCK_SIZE):
                pass
        actual = self.hasher.digest()
        if self.expected_size is not None and self.hasher.size != self.expected_size:
            got = (f"more than {self.expected_size}" if self.hasher.size > self.expected_size
                   else str(self.hasher.size))
            return DigestMismatch(f"layer blob: size {got} bytes (expected {self.expected_size})",
                                  self.expected or "(no digest given)", actual)
        if self.expected is not None and actual != self.expected:
            return DigestMismatch("layer blob", self.expected, actual)
        return None


class _Inflater:
    """A worker thread that decompresses the blob and hashes both streams, handing decompressed
    chunks of up to :data:`BLOCK_SIZE` to the unpacking thread through a bounded queue.

    Reading, inflating and hashing release the GIL, so on two cores they overlap the unpacking
    thread's tar parsing and file writes.  Memory: at most ``_DEPTH + 2`` chunks.
    """

    _DEPTH = 4

    def __init__(self, reader: Reader, hasher: Hasher | None) -> None:
        self._reader = reader
        #: the diff_id hash; None when the blob's own hash covers the same bytes (plain tar)
        self.hasher = hasher
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(self._DEPTH)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="layerfs-inflate", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        item: bytes | BaseException
        try:
            while not self._stop.is_set():
                item = self._reader.read(BLOCK_SIZE)
                if item and self.hasher is not None:
                    self.hasher.update(item)
                self._put(item)
                if not item:
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the unpacking thread, re-raised there
            self._put(err)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def read(self) -> bytes:
        """The next chunk; b"" at EOF.  Re-raises what the worker raised."""
        if self._done:
            return b""
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if not item:
            self._done = True
        return item

    def close(self) -> None:
        """Stop and join the worker (it may finish one blocking read first)."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()


class _TarInput:
    """The decompressed tar stream, with the forward-only ``read``/``tell``/``seek`` that
    :class:`tarfile.TarFile` needs and zero-copy data views.

    ``read`` serves tarfile's header reads only and enforces :data:`MAX_HEADER_BYTES`.
    """

    def __init__(self, source: _Inflater) -> None:
        self._source = source
        self._data = b""
        self._view = memoryview(self._data)
        self._pos = 0
        self.offset = 0
        self.budget = MAX_HEADER_BYTES + 2048
        #: the last read() result: tells how the archive ended
        self.last_read = b""

    def _fill(self) -> bool:
        """Load the next chunk; False at EOF.  Only call when the current chunk is used up."""
        data = self._source.read()
        if not data:
            return False
        self._data = data
        self._view = memoryview(data)
        self._pos = 0
        return True

    def at_eof(self) -> bool:
        return self._pos >= len(self._data) and not self._fill()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.offset

    def write(self, data: bytes) -> int:
        raise OSError("the layer tar is read-only")

    def close(self) -> None:
        pass   # the inflater is closed by unpack_layer

    def read(self, n: int = -1, /) -> bytes:
        if n < 0 or n > self.budget:
            raise BadArchive(f"layer tar: extended header at offset {self.offset} exceeds the limit of "
                             f"{MAX_HEADER_BYTES} bytes")
        self.budget -= n
        end = self._pos + n
        if end <= len(self._data):
            data = self._data[self._pos:end]
            self._pos = end
        else:
            parts = [self._data[self._pos:]]
            need = n - len(parts[0])
            self._pos = len(self._data)
            while need > 0 and self._fill():
                take = min(need, len(self._data))
                parts.append(self._data[:take])
                self._pos = take
                need -= take
            data = b"".join(parts)
        self.offset += len(data)
        self.last_read = data
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0 or pos < self.offset:
            raise BadArchive(f"layer tar: cannot seek back to offset {pos}")
        self.skip(pos - self.offset)
        return self.offset

    def skip(self, n: int) -> None:
        """Skip ``n`` bytes (still hashed)."""
        while n > 0:
            avail = len(self._data) - self._pos
            if avail == 0:
                if not self._fill():
                    raise BadArchive(f"layer tar: truncated at offset {self.offset}")
                continue
            take = min(avail, n)
            self._pos += take
            self.offset += take
            n -= take

    def available(self) -> int:
        """Bytes left in the current chunk (loading the next one if this one is used up)."""
        if self._pos >= len(self._data):
            self._fill()
        return len(self._data) - self._pos

    def take(self, n: int) -> memoryview:
        """The next ``n`` bytes as a view; ``n`` must be at most :meth:`available`."""
        view = self._view[self._pos:self._pos + n]
        self._pos += n
        self.offset += n
        return view

    def chunks(self, n: int) -> Iterator[memoryview]:
        """The next ``n`` bytes as views of at most one chunk each.

        Raises:
            BadArchive: the stream ends first.
        """
        while n > 0:
            avail = self.available()
            if avail == 0:
                raise BadArchive(f"layer tar: truncated at offset {self.offset}")
            view = self.take(min(avail, n))
            n -= len(view)
            yield view

    def drain(self) -> None:
        """Read (and hash) everything left: EOF blocks and trailing bytes."""
        self._pos = len(self._data)
        while self._fill():
            self.offset += len(self._data)
            self._pos = len(self._data)


class _IgnoredGlobals(dict[str, str]):
    """``TarFile.pax_headers`` that stays empty: PAX global headers are ignored (moby)."""

    def __setitem__(self, key: str, value: str) -> None:
        pass


# -- walking the tar ------------------------------------------------------------------------

def _apply_tar(tar: _TarInput, applier: _Applier) -> None:
    """Apply every entry of the tar stream ``tar``, then check the archive ended properly."""
    if tar.at_eof():
        return   # a 0-byte (decompressed) blob is an empty layer
    try:
        tf = tarfile.TarFile(fileobj=tar, mode="r", encoding="utf-8", errors="surrogateescape",
                             format=tarfile.PAX_FORMAT, pax_headers=_IgnoredGlobals())
    except (tarfile.TarError, ValueError) as err:
        raise BadArchive(f"layer tar: {err}") from None
    while True:
        tar.budget = MAX_HEADER_BYTES + 2048
        try:
            info = tf.next()
        except (tarfile.TarError, ValueError) as err:
            raise BadArchive(f"layer tar: {err} (at offset {tf.offset})") from None
        if info is None:
            break
        tf.members.clear()  # type: ignore[attr-defined]  # TarFile keeps every member otherwise
        if applier.entries >= MAX_ENTRIES:
            raise BadArchive(f"layer tar: more than {MAX_ENTRIES} entries")
        if tar.offset != info.offset_data:
            tar.seek(info.offset_data)
        applier.apply(info, tar, data_end=tf.offset)
    end = tar.last_read
    if end and end.count(0) != len(end):
        raise BadArchive(f"layer tar: truncated or invalid header at offset {tf.offset}")


def _split(name: str, what: str, entry: str) -> list[str]:
    """Clean ``name`` into components; raise BadArchive for escapes and over-long names."""
    if name.startswith("/"):
        raise BadArchive(f"layer entry {entry!r}: {what} is absolute")
    parts: list[str] = []
    for part in name.split("/"):
        if part == "" or part == ".":
            continue
        if part == "..":
            if not parts:
                raise BadArchive(f"layer entry {entry!r}: {what} escapes the layer root")
            parts.pop()
            continue
        # a marker ".wh.X" is never written as a name: what must fit is the X it whites out
        limit = MAX_NAME_BYTES + (len(_whiteout.WHITEOUT_PREFIX) if part.startswith(_whiteout.WHITEOUT_PREFIX)
                                  else 0)
        if len(part) > MAX_NAME_BYTES // 4 and len(os.fsencode(part)) > limit:
            raise BadArchive(f"layer entry {entry!r}: a component of {what} is longer than "
                             f"{MAX_NAME_BYTES} bytes")
        parts.append(part)
    if len(name) > MAX_PATH_BYTES // 4 and len(os.fsencode(name)) > MAX_PATH_BYTES:
        raise BadArchive(f"layer entry {entry!r}: {what} is longer than {MAX_PATH_BYTES} bytes")
    return parts


def _times(info: tarfile.TarInfo) -> tuple[int, int]:
    """(atime_ns, mtime_ns) of an entry: exact from PAX strings, atime >= mtime, bad -> epoch."""
    pax = info.pax_headers
    mtime = _to_ns(pax["mtime"]) if "mtime" in pax else _to_ns(info.mtime)
    atime = _to_ns(pax["atime"]) if "atime" in pax else mtime
    return max(atime, mtime), mtime


def _to_ns(value: str | float) -> int:
    try:
        ns = int(value) * _NS if isinstance(value, int) else int(Decimal(value) * _NS)
    except (InvalidOperation, ValueError, OverflowError):
        return 0
    return ns if 0 <= ns <= _MAX_NS else 0


V = TypeVar("V")


class _Removals:
    """The directories a layer removed (replaced by a later entry), each with the time it was
    removed, on a clock that also stamps what :class:`_PathMap` records.

    A removed tree takes everything recorded below it with it.  Rather than scan every record at
    each removal (quadratic in a layer that replaces many directories), a record is alive if no
    directory above it, or itself, was removed after it was made: O(depth) per lookup.
    """

    def __init__(self) -> None:
        self.clock = 0
        self.removed: dict[str, int] = {}

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def remove(self, path: str) -> None:
        """``path`` and everything below it were removed."""
        self.removed[path] = self.tick()

    def alive(self, path: str, stamp: int) -> bool:
        """True if nothing at or above ``path`` was removed after ``stamp``."""
        while True:
            when = self.removed.get(path)
            if when is not None and when > stamp:
                return False
            if not path:
                return True
            path = path.rpartition("/")[0]


class _PathMap(Generic[V]):
    """Per-path values (in the order set) that forget what a removed directory held."""

    def __init__(self, removals: _Removals) -> None:
        self._removals = removals
        self._items: dict[str, tuple[int, V]] = {}

    def set(self, path: str, value: V) -> None:
        self._items.pop(path, None)   # to the end: the order is the order of making
        self._items[path] = (self._removals.tick(), value)

    def update(self, path: str, value: V) -> None:
        """Change the value of a live record, keeping its place and time."""
        stamp, _ = self._items[path]
        self._items[path] = (stamp, value)

    def get(self, path: str) -> V | None:
        item = self._items.get(path)
        if item is None or not self._removals.alive(path, item[0]):
            return None
        return item[1]

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and self.get(path) is not None

    def discard(self, path: str) -> None:
        self._items.pop(path, None)

    def items(self) -> list[tuple[str, V]]:
        return [(p, v) for p, (stamp, v) in self._items.items() if self._removals.alive(p, stamp)]


class _PathSet(_PathMap[bool]):
    """A set of paths that forgets what a removed directory held."""

    def add(self, path: str) -> None:
        self.set(path, True)

    def paths(self) -> list[str]:
        return [p for p, _ in self.items()]


class _Applier:
    """Applies tar entries to the root fd; holds the per-layer state (see the module doc)."""

    def __init__(self, rootfd: int, privileged: bool) -> None:
        self.rootfd = rootfd
        self.privileged = privileged
        self.opaque_attr = _whiteout.opaque_xattr(privileged)
        #: the root's path as /proc shows it, to name directories reached through symlinks
        try:
            self._root_real: str | None = os.readlink(f"/proc/self/fd/{rootfd}")
        except OSError:
            self._root_real = None   # no /proc: paths through a symlink are named as written
        #: parent dir (as named in the tar) -> (O_PATH fd, its real path in the layer)
        self._parents: OrderedDict[str, tuple[int, str]] = OrderedDict()
        #: fds dropped from ``_parents`` while an entry may still use one: closed after the entry
        self._retired: list[int] = []
        # Per-path state, keyed by the real path in the layer ("" is the root).
        #: dir path -> (atime_ns, mtime_ns), applied by finish()
        self._removals = _Removals()
        self._dir_times: _PathMap[tuple[int, int]] = _PathMap(self._removals)
        #: paths where this layer cut off what lies below (a whiteout, or an entry of this layer
        #: replaced by a later one): a directory made there is opaque
        self._cut = _PathSet(self._removals)
        #: whiteouts this layer wrote (0/0 devices); finish() drops those an opaque dir covers
        self._whited = _PathSet(self._removals)
        #: directories of this layer that are opaque
        self._opaque = _PathSet(self._removals)
        #: what the layer's entries made, and their parents (umoci's "upper paths"): a whiteout or
        #: an opaque marker of the layer removes what is not in it (dirs made only for markers)
        self._upper = _PathSet(self._removals)
        #: directories made only as parents, in order (see :class:`ImplicitDir`)
        self._implicit: _PathMap[ImplicitDir] = _PathMap(self._removals)
        #: the caller's ids: what an unprivileged unpack gives every entry on disk
        self.uid, self.gid = os.geteuid(), os.getegid()
        #: what an unprivileged unpack could not keep: symlink owners, refused xattrs by name
        self.lost_owners = 0
        self.lost_xattrs: dict[str, int] = {}
        self._root_seen = False
        #: the root entry came after other entries
        self._root_seen_after = False
        self.entries = 0
        self.size = 0
        self.whiteouts = 0
        self.opaque_dirs = 0
        self.skipped = 0

    # -- parents ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close every cached fd (not the root)."""
        self._invalidate()
        self._close_retired()

    def _invalidate(self) -> None:
        """Forget cached parents: a dir or symlink was removed, so a cached path may now resolve
        elsewhere (through the removed symlink, or into the removed tree).

        The fds are not closed here: the entry being applied still holds its parent's fd (which
        stays valid: it is the directory the removed name was in).  They are closed once the
        entry is done (:meth:`_close_retired`).
        """
        self._retired.extend(fd for fd, _ in self._parents.values())
        self._parents.clear()

    def _close_retired(self) -> None:
        while self._retired:
            os.close(self._retired.pop())

    def _parent(self, comps: list[str], entry: str) -> tuple[int, str]:
        """The fd and real path of directory ``comps`` (made, 0755, if missing); cached, do not
        close the fd."""
        if not comps:
            return self.rootfd, ""
        key = "/".join(comps)
        cached = self._parents.get(key)
        if cached is not None:
            self._parents.move_to_end(key)
            return cached
        try:
            try:
                fd = _sys.openat2(self.rootfd, key, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
                                  resolve=_sys.RESOLVE_IN_ROOT | _sys.RESOLVE_NO_SYMLINKS)
                real = key
            except OSError as err:
                if err.errno != errno.ELOOP:
                    raise
                # through a symlink of the layer: where does it lead?
                fd = _sys.open_in_root(self.rootfd, key)
                real = self._real_path(fd, key)
        except OSError as err:
            if err.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise
            fd, real = self._make_parents(comps, entry)
        self._parents[key] = (fd, real)
        if len(self._parents) > _PARENT_CACHE:
            os.close(self._parents.popitem(last=False)[1][0])
        return fd, real

    def _real_path(self, fd: int, named: str) -> str:
        """The path, relative to the root, of the directory ``fd`` (resolved inside the root),
        which the layer named ``named``."""
        if self._root_real is None:
            return named
        real = os.readlink(f"/proc/self/fd/{fd}")
        if real == self._root_real:
            return ""
        if not real.startswith(self._root_real + "/"):
            raise OSError(errno.EXDEV, f"{real!r} is not below the layer root")
        return real[len(self._root_real) + 1:]

    def _make_parents(self, comps: list[str], entry: str) -> tuple[int, str]:
        """Walk ``comps`` from the root, making missing directories; returns an fd to close and
        the real path."""
        fd, real = self.rootfd, ""
        try:
            for i in range(len(comps)):
                sub = "/".join(comps[: i + 1])
                try:
                    nfd = _sys.open_in_root(self.rootfd, sub)
                    nreal = self._real_path(nfd, sub)
                except OSError as err:
                    if err.errno not in (errno.ENOENT, errno.ENOTDIR):
                        raise
                    nreal = f"{real}/{comps[i]}" if real else comps[i]
                    self._make_dir_at(fd, comps[i], nreal, entry)
                    nfd = os.open(comps[i], os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  dir_fd=fd)
                if fd != self.rootfd:
                    os.close(fd)
                fd, real = nfd, nreal
        except BaseException:
            if fd != self.rootfd:
                os.close(fd)
            raise
        return fd, real

    def _make_dir_at(self, dirfd: int, name: str, path: str, entry: str) -> None:
        """Make the implied directory ``name`` (path ``path``) in ``dirfd``, 0755, and note it as
        implicit: finish() gives it fixed times, :func:`inherit_attributes` the lower dir's
        attributes if that was visible."""
        st = _lstat(dirfd, name)
        if st is not None:
            if not _whiteout.is_whiteout_device(st):
                what = "a symlink that does not lead to a directory in the layer" if stat.S_ISLNK(
                    st.st_mode) else "not a directory"
                raise BadArchive(f"layer entry {entry!r}: parent {path!r} is {what}")
            os.unlink(name, dir_fd=dirfd)   # a whiteout (or 0/0 device) of this layer
            self._whited.discard(path)
            self._cut.add(path)
        os.mkdir(name, 0o755, dir_fd=dirfd)
        # not the umask's idea; but a setgid parent gives the setgid bit (and its group) as mkdir(2) does
        if self.privileged:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            os.chmod(name, 0o755 | (st.st_mode & stat.S_ISGID), dir_fd=dirfd)
        else:   # root's mkdir(2) would make it root's, and setgid in a parent the override says is
            pst = os.fstat(dirfd)
            above = _override.effective(pst, _override.read(dirfd, "", pst))
            setgid = above.st_mode & stat.S_ISGID
            keep = _override.Override(0, above.st_gid if setgid else 0, stat.S_IFDIR | 0o755 | setgid)
            os.chmod(name, 0o755, dir_fd=dirfd)
            _override.write(dirfd, name, keep)
            st = _override.effective(os.stat(name, dir_fd=dirfd, follow_symlinks=False), keep)
        parent_path = path.rpartition("/")[0]
        parent = self._implicit.get(parent_path) if parent_path else (
            None if self._root_seen else ImplicitDir(""))
        self._implicit.set(path, ImplicitDir(
            path, below_visible=not self._hidden_below(path),
            after_parent=parent is not None and not parent.explicit and (parent.below_visible or parent.after_parent),
            setgid_gid=st.st_gid if st.st_mode & stat.S_ISGID else -1))
        if path in self._cut:
            self._make_opaque(dirfd, name, path)

    def _hidden_below(self, path: str) -> bool:
        """True if this layer hides what lies below ``path`` in the layers under it: ``path`` or
        a directory above it (not the root, which the kernel never makes opaque) is opaque or
        was cut off."""
        while path:
            if path in self._opaque or path in self._cut:
                return True
            path = path.rpartition("/")[0]
        return False

    def _make_opaque(self, dirfd: int, name: str, path: str) -> None:
        """Mark directory ``name`` in ``dirfd`` (``""``: dirfd itself) opaque."""
        _sys.setxattrat(dirfd, name, self.opaque_attr, b"y")
        self._opaque.add(path)

    # -- entries ---------------------------------------------------------------------------

    def apply(self, info: tarfile.TarInfo, tar: _TarInput, data_end: int) -> None:
        """Apply one entry; its data (if any) is next in ``tar`` and ends before ``data_end``."""
        self.entries += 1
        entry = info.name
        try:
            self._apply(info, tar, data_end, entry)
        except OSError as err:
            raise _entry_error(err, entry) from err
        except (OverflowError, ValueError) as err:   # an id or number out of range, a NUL in a name
            raise BadArchive(f"layer entry {entry!r}: {err}") from err
        finally:
            self._close_retired()

    def _apply(self, info: tarfile.TarInfo, tar: _TarInput, data_end: int, entry: str) -> None:
        kind = info.type
        if kind not in _REGULAR and kind not in (tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                                                 tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE):
            raise BadArchive(f"layer entry {entry!r}: unknown type flag {kind!r}")
        comps = _split(info.name, "the name", entry)
        if not comps:
            if kind != tarfile.DIRTYPE:
                raise BadArchive(f"layer entry {entry!r}: the root entry is not a directory")
            if not self._root_seen and self.entries > 1:
                self._root_seen_after = True   # dirs may have been made below the implicit root
            self._root_seen = True
            self._clear_xattrs(self.rootfd)   # a later root entry replaces an earlier one's
            self._attrs(self.rootfd, "", info, entry, stat.S_IFDIR)
            self._dir_times.set("", _times(info))
            return
        for part in comps[:-1]:
            marker = _whiteout.classify(part)
            if marker is Marker.META:
                self.skipped += 1   # inside AUFS metadata (.wh..wh.plnk/...): ignored
                return
            if marker is not Marker.NONE:
                raise BadArchive(f"layer entry {entry!r}: whiteout marker {part!r} used as a directory")
        name = comps[-1]
        marker = _whiteout.classify(name)
        if marker is not Marker.NONE:
            self._marker(marker, comps, info, entry)
            return
        parent, parent_path = self._parent(comps[:-1], entry)
        path = f"{parent_path}/{name}" if parent_path else name
        if kind in _REGULAR:
            self._regular(parent, name, path, info, tar, data_end, entry)
        elif kind == tarfile.DIRTYPE:
            self._directory(parent, name, path, info, entry)
        elif kind == tarfile.SYMTYPE:
            self._symlink(parent, name, path, info, entry)
        elif kind == tarfile.LNKTYPE:
            self._hardlink(parent, name, path, info, entry)
        else:
            self._special(parent, name, path, info, entry)
        while path and path not in self._upper:   # (an alive path's parents are alive too)
            self._upper.add(path)
            path = path.rpartition("/")[0]

    def _marker(self, marker: Marker, comps: list[str], info: tarfile.TarInfo, entry: str) -> None:
        if marker is Marker.INVALID:
            raise BadArchive(f"layer entry {entry!r}: invalid whiteout name {comps[-1]!r}")
        if marker is Marker.META:
            self.skipped += 1
            return
        parent = self._marker_parent(comps[:-1], entry)
        if parent is None:
            return
        try:
            if marker is Marker.OPAQUE:
                path = "/".join(comps[:-1])
                self._make_opaque(parent, "", path)
                if path:   # the kernel never makes the root opaque: what is in it still counts
                    self._drop_markers_only(parent, path)
                self.opaque_dirs += 1
                return
            target = comps[-1][len(_whiteout.WHITEOUT_PREFIX):]
            path = "/".join(comps[:-1] + [target])
            self._cut.add(path)
            self.whiteouts += 1
            try:
                self._write_whiteout(parent, target, path, info)
            except FileExistsError:
                st = _lstat(parent, target)
                if st is None or not stat.S_ISDIR(st.st_mode):
                    return   # the layer's own entry stays (spec), or a whiteout already
                if path in self._upper:
                    # the layer has its own dir there: it stays, but must not merge below
                    self._make_opaque(parent, target, path)
                    self._drop_markers_only(parent, path, name=target)
                    return
                # a dir made only to hold the layer's markers: the whiteout takes its place
                shutil.rmtree(target, dir_fd=parent)
                self._invalidate()
                self._forget_below(path)
                self._cut.add(path)
                self._write_whiteout(parent, target, path, info)
        finally:
            if parent != self.rootfd:
                os.close(parent)

    def _write_whiteout(self, parent: int, name: str, path: str, info: tarfile.TarInfo) -> None:
        """Write the 0/0 device ``name`` (path ``path``) in ``parent``, owned as the marker."""
        if self.privileged:
            _whiteout.write_whiteout(parent, name, uid=info.uid, gid=info.gid)
        else:
            _whiteout.write_whiteout(parent, name)
        self._whited.add(path)

    def _drop_markers_only(self, parent: int, path: str, name: str = "") -> None:
        """Remove from directory ``name`` in ``parent`` (``""``: parent itself; path ``path``)
        what no entry of the layer made: directories made only to hold markers, and whiteouts
        (both hide nothing now that the directory is opaque), as umoci's opaque marker does."""
        fd = os.open(name or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            with os.scandir(fd) as it:
                children = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
            for child, is_dir in children:
                sub = f"{path}/{child}" if path else child
                if sub in self._upper:
                    if is_dir:
                        self._drop_markers_only(fd, sub, child)
                    continue
                if is_dir:
                    shutil.rmtree(child, dir_fd=fd)
                    self._invalidate()
                else:
                    os.unlink(child, dir_fd=fd)
                self._forget_below(sub)
        finally:
            os.close(fd)

    def _marker_parent(self, comps: list[str], entry: str) -> int | None:
        """The directory a whiteout or opaque marker acts in (an fd to close), or None to ignore
        the marker.

        Unlike other entries, a marker never follows a symlink of its layer: ``a/.wh.b`` with
        ``a -> x`` must not white out ``x/b`` (so the path named is the real path).  If a parent in
        this layer is a symlink or not a directory (umoci writes ``d/.wh.child`` after turning dir
        ``d`` into a file), that entry already hides everything below it in lower layers: the
        marker is redundant and ignored.  Missing parents are made, 0755.
        """
        if not comps:
            return self.rootfd
        resolve = _sys.RESOLVE_IN_ROOT | _sys.RESOLVE_NO_SYMLINKS | _sys.RESOLVE_NO_MAGICLINKS
        try:
            return _sys.openat2(self.rootfd, "/".join(comps), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
                                resolve=resolve)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR):
                log.debug("layer entry %r: ignored, a parent in this layer is not a directory", entry)
                self.skipped += 1
                return None
            if err.errno != errno.ENOENT:
                raise
        # no symlink up to the first missing component (else ELOOP): just make the rest
        return self._make_parents(comps, entry)[0]

    def _remove(self, parent: int, name: str, path: str, for_dir: bool) -> bool:
        """Make room for a new entry ``name`` (real path ``path``) of this layer: remove what an
        earlier entry put there.  The lower entry is then cut off (a directory made there is
        opaque, as the old entry had replaced the lower one).

        Returns:
            True if an existing directory is kept (``for_dir``: a dir over a dir).
        """
        st = _lstat(parent, name)
        if st is None:
            return False
        if stat.S_ISDIR(st.st_mode):
            if for_dir:
                return True
            shutil.rmtree(name, dir_fd=parent)
            self._invalidate()
            self._forget_below(path)
        else:
            os.unlink(name, dir_fd=parent)
            if stat.S_ISLNK(st.st_mode):
                self._invalidate()
            self._whited.discard(path)
        self._cut.add(path)
        return False

    def _forget_below(self, path: str) -> None:
        """Drop the per-path state of ``path`` and everything below it (the tree was removed)."""
        self._removals.remove(path)

    def _xattrs(self, info: tarfile.TarInfo) -> list[tuple[str, bytes]]:
        pax = info.pax_headers
        if not pax:
            return []
        out = []
        for key, value in pax.items():
            if not key.startswith(_XATTR_PREFIX):
                continue
            attr = key[len(_XATTR_PREFIX):]
            if not value:
                continue   # an empty pax value deletes the record (POSIX pax; Go's tar reads it so)
            if _whiteout.is_private_xattr(attr) or attr in _DROPPED_XATTRS:
                log.debug("layer entry %r: xattr %s dropped", info.name, attr)
                self.skipped += 1
                continue
            out.append((attr, value.encode("utf-8", "surrogateescape")))
        return out

    def _set_xattrs(self, fd: int, name: str, xattrs: list[tuple[str, bytes]], entry: str) -> None:
        """Set ``xattrs`` on ``name`` in ``fd`` (``""``: fd itself); skip what the kernel refuses
        for lack of privilege or support (moby/containerd)."""
        for attr, value in xattrs:
            try:
                _sys.setxattrat(fd, name, attr, value)
            except OSError as err:
                if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise BadArchive(f"layer entry {entry!r}: xattr {attr}: {err.strerror}") from None
                log.debug("layer entry %r: xattr %s not set: %s", entry, attr, err.strerror)
                self.skipped += 1
                if not self.privileged and err.errno == errno.EPERM:
                    self.lost_xattrs[attr] = self.lost_xattrs.get(attr, 0) + 1

    def _attrs(self, fd: int, name: str, info: tarfile.TarInfo, entry: str, kind: int, rdev: int = 0) -> None:
        """lchown, xattrs, chmod of ``name`` in ``fd`` (``""``: fd itself, a real fd), in that
        order; unprivileged, the override of a regular file or directory instead of the lchown
        (``kind``, ``rdev``: the entry's type and device number, which the override records for a
        device made as a regular file).  Not for symlinks (no chmod)."""
        if self.privileged:
            if name:
                os.chown(name, info.uid, info.gid, dir_fd=fd, follow_symlinks=False)
            else:
                os.fchown(fd, info.uid, info.gid)
        self._set_xattrs(fd, name, self._xattrs(info), entry)
        mode = info.mode & 0o7777
        if not self.privileged and (kind, rdev) != (stat.S_IFCHR, 0):
            _override.write(fd, name, _override.Override(info.uid, info.gid, kind | mode, rdev))
            mode = _override.disk_mode(kind | mode)
        if name:
            os.chmod(name, mode, dir_fd=fd)
        else:
            os.fchmod(fd, mode)

    def _regular(self, parent: int, name: str, path: str, info: tarfile.TarInfo, tar: _TarInput,
                 data_end: int, entry: str) -> None:
        size = info.size
        self.size += size
        xattrs = self._xattrs(info)
        atime, mtime = _times(info)
        mode = info.mode & 0o7777
        sparse: list[tuple[int, int]] | None = info.sparse  # type: ignore[assignment]  # typeshed
        keep = None if self.privileged else _override.Override(info.uid, info.gid, stat.S_IFREG | mode)
        if keep is not None:
            mode = _override.disk_mode(keep.mode)
        if not xattrs and sparse is None and size <= tar.available():
            # the hot path: one native call creates, fills, chowns, chmods and stamps the file
            data = tar.take(size)
            try:
                _sys.create_file(parent, name, data, mode=mode, uid=info.uid, gid=info.gid,
                                 atime_ns=atime, mtime_ns=mtime, chown=self.privileged)
            except FileExistsError:
                self._remove(parent, name, path, for_dir=False)
                _sys.create_file(parent, name, data, mode=mode, uid=info.uid, gid=info.gid,
                                 atime_ns=atime, mtime_ns=mtime, chown=self.privileged)
            if keep is not None:
                _override.write(parent, name, keep)
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, 0o600, dir_fd=parent)
        except FileExistsError:
            self._remove(parent, name, path, for_dir=False)
            fd = os.open(name, flags, 0o600, dir_fd=parent)
        try:
            if sparse is None:
                for view in tar.chunks(size):
                    _write_all(fd, view)
            else:
                stored = sum(n for _, n in sparse)
                if tar.offset + stored > data_end:
                    raise BadArchive(f"layer entry {entry!r}: sparse map larger than the stored data")
                for offset, length in sparse:
                    for view in tar.chunks(length):
                        _pwrite_all(fd, view, offset)
                        offset += len(view)
                os.ftruncate(fd, size)
            if self.privileged:
                os.fchown(fd, info.uid, info.gid)
            self._set_xattrs(fd, "", xattrs, entry)
            if keep is not None:
                _override.write(fd, "", keep)
            os.fchmod(fd, mode)
            os.utime(fd, ns=(atime, mtime))
        finally:
            os.close(fd)

    def _directory(self, parent: int, name: str, path: str, info: tarfile.TarInfo, entry: str) -> None:
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            if self._remove(parent, name, path, for_dir=True):
                # a dir over a dir: the later entry's attributes replace the earlier's, xattrs too
                implicit = self._implicit.get(path)
                if implicit is not None:
                    self._implicit.update(path, dataclasses.replace(implicit, explicit=True))
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
                try:
                    self._clear_xattrs(fd)
                finally:
                    os.close(fd)
            else:
                os.mkdir(name, 0o700, dir_fd=parent)
        self._attrs(parent, name, info, entry, stat.S_IFDIR)
        if path in self._cut and path not in self._opaque:
            self._make_opaque(parent, name, path)
        self._dir_times.set(path, _times(info))

    def _clear_xattrs(self, fd: int) -> None:
        """Remove the xattrs an earlier entry gave directory ``fd`` (not the private ones)."""
        for attr in os.listxattr(fd):
            if not _whiteout.is_private_xattr(attr) and attr not in _DROPPED_XATTRS:
                os.removexattr(fd, attr)

    def _symlink(self, parent: int, name: str, path: str, info: tarfile.TarInfo, entry: str) -> None:
        target = info.linkname
        if not target:
            raise BadArchive(f"layer entry {entry!r}: symlink with an empty target")
        if len(target) > MAX_PATH_BYTES // 4 and len(os.fsencode(target)) > MAX_PATH_BYTES:
            raise BadArchive(f"layer entry {entry!r}: symlink target longer than {MAX_PATH_BYTES} bytes")
        try:
            os.symlink(target, name, dir_fd=parent)
        except FileExistsError:
            self._remove(parent, name, path, for_dir=False)
            os.symlink(target, name, dir_fd=parent)
        if self.privileged:
            os.chown(name, info.uid, info.gid, dir_fd=parent, follow_symlinks=False)
        elif (info.uid, info.gid) != (self.uid, self.gid):
            self.lost_owners += 1   # a symlink takes no user.* xattr: its owner is ours
        self._set_xattrs(parent, name, self._xattrs(info), entry)
        os.utime(name, ns=_times(info), dir_fd=parent, follow_symlinks=False)

    def _hardlink(self, parent: int, name: str, path: str, info: tarfile.TarInfo, entry: str) -> None:
        tcomps = _split(info.linkname, "the hard link target", entry)
        if not tcomps:
            raise BadArchive(f"layer entry {entry!r}: hard link to the layer root")
        tpath = "/".join(tcomps)
        if tpath == path:
            return   # a link to itself: nothing to do
        try:
            tparent = _sys.open_in_root(self.rootfd, "/".join(tcomps[:-1]))
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.ENOTDIR):
                raise BadArchive(f"layer entry {entry!r}: hard link target {info.linkname!r} is not "
                                 f"an earlier entry of this layer") from None
            raise
        try:
            tname = tcomps[-1]
            st = _lstat(tparent, tname)
            if st is None or (tpath in self._whited and _whiteout.is_whiteout_device(st)):
                raise BadArchive(f"layer entry {entry!r}: hard link target {info.linkname!r} is not "
                                 f"an earlier entry of this layer")
            if stat.S_ISDIR(st.st_mode):
                raise BadArchive(f"layer entry {entry!r}: hard link to directory {info.linkname!r}")
            try:
                os.link(tname, name, src_dir_fd=tparent, dst_dir_fd=parent, follow_symlinks=False)
            except FileExistsError:
                self._remove(parent, name, path, for_dir=False)
                os.link(tname, name, src_dir_fd=tparent, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(tparent)
        # moby/containerd apply the link header's attributes to the (shared) inode; but a chown,
        # even to the same owner, drops security.capability and setuid: only when it changes
        mode = info.mode & 0o7777
        if self.privileged and (st.st_uid, st.st_gid) != (info.uid, info.gid):
            os.chown(name, info.uid, info.gid, dir_fd=parent, follow_symlinks=False)
        elif not self.privileged and stat.S_ISREG(st.st_mode):
            # the link's header applies to the shared inode; a device made as a file stays one
            kept = _override.read(parent, name, st)
            kind, rdev = (stat.S_IFMT(kept.mode), kept.rdev) if kept else (stat.S_IFREG, 0)
            _override.write(parent, name, _override.Override(info.uid, info.gid, kind | mode, rdev))
            mode = _override.disk_mode(kind | mode)
        elif not self.privileged and stat.S_ISLNK(st.st_mode) and (info.uid, info.gid) != (self.uid, self.gid):
            self.lost_owners += 1
        self._set_xattrs(parent, name, self._xattrs(info), entry)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(name, mode, dir_fd=parent)
        os.utime(name, ns=_times(info), dir_fd=parent, follow_symlinks=False)

    def _special(self, parent: int, name: str, path: str, info: tarfile.TarInfo, entry: str) -> None:
        if info.type == tarfile.FIFOTYPE:
            kind, device = stat.S_IFIFO, 0
        else:
            kind = stat.S_IFCHR if info.type == tarfile.CHRTYPE else stat.S_IFBLK
            device = os.makedev(info.devmajor, info.devminor)
        # unprivileged: an empty regular file whose override says what it is (but a 0/0 char
        # device, a whiteout anyway, needs no CAP_MKNOD since Linux 5.8)
        as_file = not self.privileged and (kind, device) != (stat.S_IFCHR, 0)
        try:
            _make_special(parent, name, kind, device, as_file)
        except FileExistsError:
            self._remove(parent, name, path, for_dir=False)
            _make_special(parent, name, kind, device, as_file)
        self._attrs(parent, name, info, entry, kind, device)
        os.utime(name, ns=_times(info), dir_fd=parent, follow_symlinks=False)

    # -- the end ---------------------------------------------------------------------------

    def finish(self) -> None:
        """End the layer: drop the whiteouts an opaque directory of the layer covers (the kernel
        would list them, docs/overlay.rst "Whiteouts and opaque directories"), give the
        directories made only as parents (and the root, without a root entry) fixed attributes,
        0755 and time 0, never the clock, then set the directory times (after every entry, since
        adding children changes them)."""
        for path in sorted(self._whited.paths()):
            if not self._covered(path):
                continue
            parent_path, _, name = path.rpartition("/")
            parent = self._parent_lookup(parent_path.split("/") if parent_path else [])
            st = _lstat(parent, name)
            if st is not None and _whiteout.is_whiteout_device(st):
                os.unlink(name, dir_fd=parent)
        if not self._root_seen:
            os.fchmod(self.rootfd, 0o755)
            if not self.privileged:
                _override.write(self.rootfd, "", _override.Override(0, 0, stat.S_IFDIR | 0o755))
            self._dir_times.set("", (0, 0))
        for path, implicit in self._implicit.items():
            if not implicit.explicit:
                self._dir_times.set(path, (0, 0))
        for path, times in self._dir_times.items():
            if not path:
                os.utime(self.rootfd, ns=times)
                continue
            comps = path.split("/")
            try:
                parent = self._parent_lookup(comps[:-1])
                os.utime(comps[-1], ns=times, dir_fd=parent, follow_symlinks=False)
            except OSError as err:
                if err.errno not in (errno.ENOENT, errno.ENOTDIR):
                    raise _entry_error(err, path) from err

    def _covered(self, path: str) -> bool:
        """True if a directory above ``path`` (not the root: the kernel never makes the root
        opaque) is opaque in this layer: nothing below it merges with a lower layer."""
        path = path.rpartition("/")[0]
        while path:
            if path in self._opaque:
                return True
            path = path.rpartition("/")[0]
        return False

    def implicit_dirs(self) -> tuple[ImplicitDir, ...]:
        """The directories made only as parents, in order, after the root (explicit if it had a
        root entry: its children made before that entry still depend on it)."""
        found = tuple(implicit for _, implicit in self._implicit.items())
        return (ImplicitDir("", explicit=self._root_seen_after),) + found \
            if not self._root_seen or self._root_seen_after else found

    def _parent_lookup(self, comps: list[str]) -> int:
        """Like :meth:`_parent`, without making anything."""
        if not comps:
            return self.rootfd
        key = "/".join(comps)
        cached = self._parents.get(key)
        if cached is not None:
            return cached[0]
        fd = _sys.open_in_root(self.rootfd, key)
        self._parents[key] = (fd, key)
        if len(self._parents) > _PARENT_CACHE:
            os.close(self._parents.popitem(last=False)[1][0])
        return fd


def _make_special(dirfd: int, name: str, kind: int, device: int, as_file: bool) -> None:
    """Make the device or fifo ``name`` in ``dirfd`` (mode 0600), or an empty regular file in its
    place (``as_file``).  Raises FileExistsError if the name exists."""
    if as_file:
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dirfd))
    else:
        os.mknod(name, kind | 0o600, device, dir_fd=dirfd)


def _lstat(dirfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _entry_error(err: OSError, entry: str) -> Exception:
    """An OSError while applying ``entry``: the machine's (OSError) or the archive's (BadArchive)."""
    if err.errno in _ENVIRONMENT_ERRNOS:
        return OSError(err.errno, f"layer entry {entry!r}: {err.strerror}")
    return BadArchive(f"layer entry {entry!r}: {err.strerror or err}")


__all__ = [
    "MAX_ENTRIES",
    "MAX_HEADER_BYTES",
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "ImplicitDir",
    "LayerStats",
    "NotKept",
    "default_privileged",
    "inherit_attributes",
    "not_kept_line",
    "take_not_kept",
    "unpack_layer",
]
