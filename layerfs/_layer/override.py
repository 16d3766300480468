"""Owners, modes and device numbers an unprivileged unpack cannot give a file: kept in an xattr.

Without CAP_CHOWN and CAP_MKNOD a process cannot make a file owned by someone else, nor a device
node, and it should not leave setuid files or directories it cannot write on disk.  Rootless
containers-storage (its ``force_mask`` option) and fuse-overlayfs agree on where the real values
go: the xattr ``user.containers.override_stat`` of the file on disk (docs/overlay.rst "Owners kept
in an xattr" has the format and cites both projects).  This module is that format's one
definition for Python; ``csrc/override.c`` is the C one (the merged index and the writable upper
read and write it), and ``tests/test_rootless.py`` checks that the two read every value alike.

What an unpack without root writes (``layerfs._layer.unpack``), and what reads it:

==================================  ======================================================  ==========
entry of the tar                    on disk                                                 override
==================================  ======================================================  ==========
the layer root, a directory         a directory, mode ``& 0755 | 0700``                     always
regular file                        a regular file, mode ``& 0755 | 0600``                  always
char / block device (not 0/0)       an empty regular file, mode 0600                        with type
fifo                                an empty regular file, mode 0600                        with type
symbolic link                       a symbolic link, owned by the caller                    none
0/0 char device, whiteout           a 0/0 char device, as root writes it (no CAP_MKNOD      none
                                    needed since Linux 5.8)
==================================  ======================================================  ==========

So the mode on disk never has setuid, setgid or sticky bits, never lets others write, and always
lets the owner read and write (a directory: also search), so that the unpacker, the mount and
``rm`` can do their work; the override has the image's values.  A symlink cannot carry a
``user.*`` xattr (the kernel allows them on regular files and directories only): its owner is the
one thing about a file an unprivileged unpack cannot keep, with the xattrs whose namespaces need
privilege (``trusted.*``, ``security.*``: file capabilities).

Readers take an override only from a layer whose root directory carries one (fuse-overlayfs's
rule: the root turns the mode on), and, for a privileged reader, only from a layer whose root
belongs to root: a user's ``user.*`` xattrs must not make a root mount show files as root's.  An
override that does not parse, or that would turn a directory into a file or a file into a
directory, is ignored (the file shows as it is on disk).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import NamedTuple

from .. import _sys

#: The xattr (containers-storage ``idtools.ContainersOverrideXattr``).
XATTR = "user.containers.override_stat"
#: The namespace of containers-storage's overrides: private (never taken from a tar, never shown).
PREFIX = "user.containers.override_"

#: Type words of the value, as containers-storage writes them; devices add ``-MAJOR-MINOR``.
_TYPES = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFIFO: "pipe",
          stat.S_IFSOCK: "socket", stat.S_IFBLK: "block", stat.S_IFCHR: "char"}
_WORDS = {word: kind for kind, word in _TYPES.items()}
_U32 = (1 << 32) - 1


class Override(NamedTuple):
    """The attributes an override gives a file."""

    uid: int
    gid: int
    #: the whole ``st_mode``: type bits and permission bits (``0o7777``)
    mode: int
    #: device number (``os.makedev``) of a char or block device, else 0
    rdev: int = 0


def format_value(o: Override) -> bytes:
    """The xattr value of ``o``: ``UID:GID:MODE:TYPE``, MODE four octal digits, TYPE ``file``,
    ``dir``, ``symlink``, ``pipe``, ``socket``, ``char-MAJOR-MINOR`` or ``block-MAJOR-MINOR``
    (containers-storage ``FormatContainersOverrideXattrDevice``).

    Raises:
        ValueError: an owner beyond 32 bits, or a mode without a known type.
    """
    if not (0 <= o.uid <= _U32 and 0 <= o.gid <= _U32):
        raise ValueError(f"owner {o.uid}:{o.gid} out of range")
    kind = stat.S_IFMT(o.mode)
    word = _TYPES.get(kind)
    if word is None:
        raise ValueError(f"mode {o.mode:o} has no file type")
    if kind in (stat.S_IFCHR, stat.S_IFBLK):
        word = f"{word}-{os.major(o.rdev)}-{os.minor(o.rdev)}"
    return f"{o.uid}:{o.gid}:{stat.S_IMODE(o.mode):04o}:{word}".encode("ascii")


def _number(text: str, base: int, limit: int) -> int:
    digits = "01234567" if base == 8 else "0123456789"
    if not text or len(text) > 11 or any(c not in digits for c in text):
        raise ValueError(text)
    value = int(text, base)
    if value > limit:
        raise ValueError(text)
    return value


def parse(value: bytes, disk_mode: int) -> Override | None:
    """Read an override value for a file whose ``st_mode`` on disk is ``disk_mode``.

    ``UID:GID:MODE`` keeps the type on disk; ``UID:GID:MODE:TYPE`` gives the type (a device's
    ``-MAJOR-MINOR``; further ``-`` parts are ignored, as containers-storage ignores them).  A
    type may only turn a regular file into a device (not a 0/0 char device: that is a whiteout),
    fifo or socket: a directory stays one, and a regular file never becomes a directory or a symlink.

    Returns:
        The override, or None when the value is malformed or does not fit the file.
    """
    try:
        text = value.decode("ascii")
        fields = text.split(":")
        if len(fields) not in (3, 4):
            return None
        uid, gid = _number(fields[0], 10, _U32), _number(fields[1], 10, _U32)
        perm = _number(fields[2], 8, 0o7777)
        disk = stat.S_IFMT(disk_mode)
        kind, rdev = disk, 0
        if len(fields) == 4:
            word, _, rest = fields[3].partition("-")
            if word not in _WORDS:
                return None
            kind = _WORDS[word]
            if kind in (stat.S_IFCHR, stat.S_IFBLK):
                parts = rest.split("-")
                if len(parts) < 2:
                    return None
                rdev = os.makedev(_number(parts[0], 10, 0xFFFFFFFF), _number(parts[1], 10, 0xFFFFFFFF))
            elif rest:
                return None
    except (UnicodeDecodeError, ValueError, OverflowError):
        return None
    if kind != disk and not (disk == stat.S_IFREG and kind in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO,
                                                               stat.S_IFSOCK)):
        return None
    if kind == stat.S_IFCHR and rdev == 0:
        return None   # a 0/0 char device is a whiteout: made as one, never kept in an override
    return Override(uid, gid, kind | perm, rdev)


def disk_mode(mode: int) -> int:
    """The permission bits an unprivileged unpack gives an entry on disk whose image mode is
    ``mode`` (type bits included): no setuid, setgid or sticky bit and no write for others; the
    owner may read and write (and search a directory)."""
    owner = 0o700 if stat.S_ISDIR(mode) else 0o600
    return (stat.S_IMODE(mode) & 0o755) | owner


def write(dirfd: int, name: str, o: Override) -> None:
    """Set the override of ``name`` in ``dirfd`` (``""``: ``dirfd`` itself).

    Raises:
        OSError: ``EPERM`` on anything but a regular file or a directory, ``ENOTSUP``.
    """
    _sys.setxattrat(dirfd, name, XATTR, format_value(o))


def read(dirfd: int, name: str, st: os.stat_result) -> Override | None:
    """The override of ``name`` in ``dirfd`` (``""``: ``dirfd`` itself) with lstat result ``st``,
    or None if it has none (or one that does not parse, see :func:`parse`).

    Raises:
        OSError: the xattr cannot be read for another reason than its absence.
    """
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return None
    try:
        value = _sys.getxattrat(dirfd, name, XATTR)
    except OSError as err:
        if err.errno in (errno.EPERM, errno.EACCES):
            return None
        raise
    return None if value is None else parse(value, st.st_mode)


def trusted_layer(rootfd: int, *, euid: int | None = None) -> bool:
    """Whether the overrides of the layer whose root directory is ``rootfd`` are to be believed
    (see the module docstring): its root carries one, and it is the reader's or root's (only
    root's for a reader that is root)."""
    st = os.fstat(rootfd)
    uid = os.geteuid() if euid is None else euid
    if st.st_uid not in (0, uid):
        return False
    return read(rootfd, "", st) is not None


def effective(st: os.stat_result, o: Override | None) -> os.stat_result:
    """``st`` with the owner, mode and device number of ``o`` (``st`` itself when None)."""
    if o is None:
        return st
    fields = list(st[:10])
    fields[0], fields[4], fields[5] = o.mode, o.uid, o.gid
    extra = {name: getattr(st, name) for name in ("st_atime", "st_mtime", "st_ctime", "st_atime_ns", "st_mtime_ns",
                                                  "st_ctime_ns", "st_blksize", "st_blocks")}
    extra["st_rdev"] = o.rdev
    return os.stat_result(fields, extra)
