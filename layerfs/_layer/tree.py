"""The digest of an unpacked layer directory: what ``verify`` rechecks a layer against.

A layer's diff ID is the digest of its tar stream, which cannot be rebuilt byte for byte from the
unpacked directory (entry order, header fields, padding are the builder's).  So the store records,
when it publishes a layer, the digest of the *tree* it unpacked to, and ``verify`` recomputes it:
one pass over the directory, reading every file once.  It catches any change of content,
metadata (type, mode, owner, size, times of non-directories, link target, device numbers,
xattrs) or names; it is as strong as the sha256 it is built on.

The tree is walked by directory fd (``O_NOFOLLOW``, ``dir_fd=``): a symlink of the layer is
recorded as a link, never followed.  Entries are visited in byte order of their names; each
contributes one record to the hash::

    <path>\\0<type><mode>\\0<uid>\\0<gid>\\0<size>\\0<mtime_ns>\\0<rdev>\\0<target or content sha256>\\0<xattrs>\\n

Left out: directory mtimes (a directory's times are the unpacker's to set last) and the mtime of
0/0 whiteout devices (made when the layer is unpacked, not carried by the tar); hard links are
recorded as their content, like any file.  Two unpacks of one blob give one digest.
"""

from __future__ import annotations

import hashlib
import os
import stat

_CHUNK = 1 << 20


def _xattrs(dirfd: int, name: str) -> bytes:
    """``name=hex(value)`` pairs, sorted, of an entry (not following a final symlink)."""
    path = f"/proc/self/fd/{dirfd}/{name}"
    try:
        names = sorted(os.listxattr(path, follow_symlinks=False))
    except OSError:
        return b""
    out = []
    for attr in names:
        try:
            value = os.getxattr(path, attr, follow_symlinks=False)
        except OSError:
            continue
        out.append(f"{attr}={value.hex()}".encode())
    return b",".join(out)


def _content(dirfd: int, name: str) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        h = hashlib.sha256()
        while chunk := os.read(fd, _CHUNK):
            h.update(chunk)
        return h.hexdigest().encode()
    finally:
        os.close(fd)


def digest(root: str | os.PathLike[str]) -> str:
    """The tree digest (``sha256:<hex>``) of the directory ``root`` (see the module docstring).

    Raises:
        OSError: a directory or file cannot be read.
    """
    h = hashlib.sha256()

    def walk(dirfd: int, prefix: bytes) -> None:
        names = sorted(os.fsencode(e) for e in os.listdir(dirfd))
        for raw in names:
            name = os.fsdecode(raw)
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            kind = stat.S_IFMT(st.st_mode)
            path = prefix + raw
            if stat.S_ISREG(st.st_mode):
                extra = _content(dirfd, name)
            elif stat.S_ISLNK(st.st_mode):
                extra = os.fsencode(os.readlink(name, dir_fd=dirfd))
            else:
                extra = b""
            whiteout = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
            mtime = b"" if stat.S_ISDIR(st.st_mode) or whiteout else str(st.st_mtime_ns).encode()
            h.update(b"\0".join([path, b"%o%o" % (kind >> 12, stat.S_IMODE(st.st_mode)), str(st.st_uid).encode(),
                                 str(st.st_gid).encode(), str(st.st_size if kind == stat.S_IFREG else 0).encode(),
                                 mtime, str(st.st_rdev).encode(), extra, _xattrs(dirfd, name)]) + b"\n")
            if stat.S_ISDIR(st.st_mode):
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
                try:
                    walk(fd, path + b"/")
                finally:
                    os.close(fd)

    rootfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        st = os.fstat(rootfd)
        h.update(b"\0".join([b".", b"%o" % stat.S_IMODE(st.st_mode), str(st.st_uid).encode(),
                             str(st.st_gid).encode(), _xattrs(rootfd, ".")]) + b"\n")
        walk(rootfd, b"")
    finally:
        os.close(rootfd)
    return f"sha256:{h.hexdigest()}"
