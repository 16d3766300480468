"""Typed wrappers over the system calls of ``layerfs._native``: the only module that imports it.

Everything here acts relative to a directory fd, never on a joined host path
(docs/oci.rst "Resolving inside the root", fuse-overlayfs ``src/sys/``).  Every function raises
:class:`OSError` (with ``errno`` and the path) on failure and releases the GIL while in the kernel.

- :func:`open_in_root` resolves a path inside a root fd with ``openat2(RESOLVE_IN_ROOT)``: ``..``,
  absolute paths and symlinks are all clamped to the root.
- :func:`setxattrat` / :func:`getxattrat` work on a name relative to a dirfd without following a
  final symlink, or on the fd itself (``path=""``, O_PATH fds included).
- :func:`create_file` creates a regular file with its data, owner, mode and times in one call (the
  unpacker's hot path).
"""

from __future__ import annotations

import errno
import os

from . import _native  # the C extension (csrc/), no stubs: typed Any (the package's __getattr__)

RESOLVE_IN_ROOT: int = _native.RESOLVE_IN_ROOT
RESOLVE_NO_MAGICLINKS: int = _native.RESOLVE_NO_MAGICLINKS
RESOLVE_NO_SYMLINKS: int = _native.RESOLVE_NO_SYMLINKS
RESOLVE_BENEATH: int = _native.RESOLVE_BENEATH
RESOLVE_NO_XDEV: int = _native.RESOLVE_NO_XDEV

#: xattr flags of setxattr(2).
XATTR_CREATE: int = os.XATTR_CREATE
XATTR_REPLACE: int = os.XATTR_REPLACE

Path = str | bytes


def openat2(dirfd: int, path: Path, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2): open ``path`` relative to ``dirfd`` with ``RESOLVE_*`` restrictions.

    Args:
        dirfd: the directory ``path`` is relative to.
        path: a str (encoded with the filesystem encoding, surrogateescape) or bytes.
        flags: ``os.O_*`` flags; ``O_CLOEXEC`` is the caller's to add.
        mode: the mode for ``O_CREAT``.
        resolve: ``RESOLVE_*`` flags.

    Returns:
        The new fd.

    Raises:
        OSError: ``ENOENT``, ``ENOTDIR``, ``ELOOP``, ``EXDEV`` (a RESOLVE_* rule refused) etc.
    """
    fd: int = _native.openat2(dirfd, path, flags, mode, resolve)
    return fd


def open_in_root(rootfd: int, path: Path, flags: int = os.O_PATH | os.O_DIRECTORY) -> int:
    """Open ``path`` as if ``rootfd`` were ``/``: symlinks, ``..`` and absolute paths stay inside.

    Uses ``RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`` (``/proc/self/fd/N`` style links refused).
    ``O_CLOEXEC`` is always added.  ``path`` ``""`` or ``"."`` opens the root itself.

    Raises:
        OSError: as :func:`openat2`.
    """
    return openat2(rootfd, path or ".", flags | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)


def setxattrat(dirfd: int, path: Path, name: str, value: bytes, *, follow_symlinks: bool = False,
               flags: int = 0) -> None:
    """Set xattr ``name`` of ``path`` (relative to ``dirfd``; ``""`` = the fd itself).

    A final symlink is not followed unless ``follow_symlinks``: the symlink itself gets the xattr.
    Works on fifos and devices without opening them, and on O_PATH fds.

    Raises:
        OSError: ``EPERM`` (e.g. ``trusted.*`` unprivileged, ``user.*`` on a symlink), ``ENOTSUP``,
            ``E2BIG``, ``ENOENT``.
    """
    _native.setxattrat(dirfd, path, name, value, follow_symlinks, flags)


def getxattrat(dirfd: int, path: Path, name: str, *, follow_symlinks: bool = False) -> bytes | None:
    """The value of xattr ``name`` of ``path`` (relative to ``dirfd``; ``""`` = the fd itself).

    Returns:
        The value, or None if the inode has no such xattr (``ENODATA``) or the filesystem has no
        xattrs (``ENOTSUP``).

    Raises:
        OSError: ``ENOENT``, ``EACCES`` and the like.
    """
    try:
        value: bytes = _native.getxattrat(dirfd, path, name, follow_symlinks)
    except OSError as err:
        if err.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise
    return value


def create_file(dirfd: int, name: Path, data: bytes | bytearray | memoryview, *, mode: int, uid: int,
                gid: int, atime_ns: int, mtime_ns: int, chown: bool) -> None:
    """Create regular file ``name`` in ``dirfd`` holding ``data``, with owner, mode and times.

    One call does ``openat(O_CREAT|O_EXCL|O_NOFOLLOW)``, write, ``fchown`` (if ``chown``),
    ``fchmod`` then ``futimens`` (chown before chmod, since chown clears setuid bits), close.  A file
    it could not finish is unlinked.  Never follows a symlink: an existing name gives ``EEXIST``.

    Raises:
        OSError: ``EEXIST`` if the name exists; ``ENOSPC``, ``EPERM``, ``ENAMETOOLONG`` etc.
    """
    _native.create_file(dirfd, name, data, mode, uid, gid, atime_ns, mtime_ns, chown, False)


def create_file_open(dirfd: int, name: Path, data: bytes | bytearray | memoryview, *, uid: int, gid: int,
                     chown: bool) -> int:
    """Like :func:`create_file`, but stop after the write and ``fchown``, and return the fd.

    The file has mode 0600 until the caller's ``fchmod``; the caller closes the fd.

    Raises:
        OSError: as :func:`create_file`.
    """
    fd: int = _native.create_file(dirfd, name, data, 0o600, uid, gid, 0, 0, chown, True)
    return fd


def _use_xattrat_fallback(on: bool) -> None:
    """Tests only: make :func:`setxattrat`/:func:`getxattrat` use the ``O_PATH`` +
    ``/proc/self/fd`` path that kernels before 6.13 (no ``setxattrat(2)``) take."""
    _native._xattrat_fallback(on)
