"""The pyfuse3 request handlers of a read-only merged mount: thin, synchronous, never fatal.

Every handler body is a few calls into the loaded index (``_index``, served from C) or one system
call on a layer file; none awaits, so requests are served one at a time by one worker task
(docs/fuse.rst "The pyfuse3 request loop": a second worker would only add scheduling cost).
Metadata requests (lookup, getattr, readdir, readlink, getxattr, listxattr, statfs) read no layer
directory; open opens the backing file inside its layer's root (``openat2``, relative to the
layer's dir fd); read is one ``pread``.

The one error translation point is :func:`_handler`: ``OSError`` becomes ``FUSEError(errno)``,
anything else is logged with its traceback and answered ``EIO``; the daemon never dies of a
request (docs/fuse.rst "Errors and termination").  It also counts requests per opcode for
:meth:`Handlers.statistics`.

Kernel view: lookup counts are not tracked and ``forget`` is a no-op, because an inode number
names one index node for the life of the mount (the index is immutable); nothing is ever freed.
"""

from __future__ import annotations

import collections
import errno
import functools
import logging
import os
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import pyfuse3
from pyfuse3 import EntryAttributes, FileHandleT, FileInfo, InodeT, ReaddirToken, RequestContext

from .. import _sys
from .cache import POLICY, CachePolicy
from .index import FLAG_DENIED, NAME_MAX, Index

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_S_IFMT = 0o170000
_S_IFDIR = 0o040000
_S_IFREG = 0o100000
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT
_READDIR_BATCH = 256


@dataclass(frozen=True)
class HandlerStatistics:
    """Requests answered since the mount, per opcode, and how many ended in an error."""

    requests: dict[str, int]
    errors: dict[str, int]
    open_files: int

    @property
    def total(self) -> int:
        return sum(self.requests.values())


def _handler(fn: Callable[P, Coroutine[object, object, R]]) -> Callable[P, Coroutine[object, object, R]]:
    """Count the request, and turn any exception into a FUSE error reply (never a crash)."""
    op = fn.__name__

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        self = args[0]
        assert isinstance(self, Handlers)
        self._requests[op] += 1
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError as err:
            self._errors[op] += 1
            raise err
        except OSError as err:
            self._errors[op] += 1
            log.debug("%s%r: %s", op, args[1:], err)
            raise pyfuse3.FUSEError(err.errno or errno.EIO) from None
        except Exception:
            self._errors[op] += 1
            log.exception("%s%r failed; answered EIO", op, args[1:])
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class Handlers(pyfuse3.Operations):
    """pyfuse3 operations serving the merged view described by an index.

    Args:
        index: the loaded merged index of the stack.
        layer_dirs: the stack's layer directories, base layer first (index layer numbers).
        policy: the cache policy (``_cache.POLICY``).

    Raises:
        OSError: a layer directory cannot be opened.
    """

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, index: Index, layer_dirs: Sequence[str | os.PathLike[str]],
                 policy: CachePolicy = POLICY) -> None:
        super().__init__()
        if len(layer_dirs) != index.n_layers:
            raise ValueError(f"index has {index.n_layers} layers, {len(layer_dirs)} given")
        self._ix = index
        self._policy = policy
        self._layer_fds = [os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for d in layer_dirs]
        self._statfs_fd = self._layer_fds[-1]
        # O_NOATIME needs ownership or CAP_FOWNER; lowers are immutable, atime is not kept anyway.
        self._open_flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_NOATIME if os.geteuid() == 0 else 0)
        self._attrs: list[EntryAttributes | None] = [None] * index.n_nodes
        self._open: set[int] = set()
        self._requests: collections.Counter[str] = collections.Counter()
        self._errors: collections.Counter[str] = collections.Counter()
        neg = EntryAttributes()
        neg.st_ino = 0
        neg.entry_timeout = policy.negative_timeout
        self._negative = neg

    def close(self) -> None:
        """Close the open files and layer fds (after the session ended)."""
        for fd in list(self._open) + self._layer_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._open.clear()
        self._layer_fds = []

    def statistics(self) -> HandlerStatistics:
        return HandlerStatistics(requests=dict(self._requests), errors=dict(self._errors),
                                 open_files=len(self._open))

    # -- helpers (memory only) -----------------------------------------------------------------

    def _attr(self, ino: int) -> EntryAttributes:
        """The cached reply attributes of ``ino`` (built once; pyfuse3 copies them at reply)."""
        attr = self._attrs[ino] if 0 < ino < len(self._attrs) else None
        if attr is None:
            (n, mode, nlink, uid, gid, rdev, size, blocks, atime, mtime, ctime) = self._ix.getattr(ino)
            attr = EntryAttributes()
            attr.st_ino = InodeT(n)
            attr.st_mode = mode
            attr.st_nlink = nlink
            attr.st_uid = uid
            attr.st_gid = gid
            attr.st_rdev = rdev
            attr.st_size = size
            attr.st_blocks = blocks
            attr.st_blksize = 4096
            attr.st_atime_ns = atime
            attr.st_mtime_ns = mtime
            attr.st_ctime_ns = ctime
            attr.entry_timeout = self._policy.entry_timeout
            attr.attr_timeout = self._policy.attr_timeout
            self._attrs[ino] = attr
        return attr

    # -- metadata: index only --------------------------------------------------------------------

    @_handler
    async def lookup(self, parent_inode: InodeT, name: bytes, ctx: RequestContext) -> EntryAttributes:
        """Look ``name`` up in a merged dir; a miss is a cached negative entry (``_cache``).
        EACCES in a directory the index could not list (``FLAG_DENIED``), as the kernel overlay."""
        self._check_listable(parent_inode)
        ino = self._ix.lookup(parent_inode, name)
        if ino == 0:
            return self._negative
        return self._attr(ino)

    @_handler
    async def forget(self, inode_list: Sequence[tuple[InodeT, int]]) -> None:
        """Nothing to free: index nodes live as long as the mount."""

    @_handler
    async def getattr(self, inode: InodeT, ctx: RequestContext) -> EntryAttributes:
        return self._attr(inode)

    @_handler
    async def readlink(self, inode: InodeT, ctx: RequestContext) -> bytes:
        return self._ix.readlink(inode)

    @_handler
    async def opendir(self, inode: InodeT, ctx: RequestContext) -> FileHandleT:
        """The handle is the inode itself: listings come from the immutable index."""
        if self._ix.getattr(inode)[1] & _S_IFMT != _S_IFDIR:
            raise OSError(errno.ENOTDIR, "not a directory")
        self._check_listable(inode)
        return FileHandleT(inode)

    def _check_listable(self, inode: int) -> None:
        """Raise EACCES for a directory the index could not list (the mounter may not read it)."""
        if self._ix.node(inode).flags & FLAG_DENIED:
            raise OSError(errno.EACCES, "the mounter may not list this directory")

    @_handler
    async def readdir(self, fh: FileHandleT, start_id: int, token: ReaddirToken) -> None:
        """List ``.``, ``..``, then the merged children in name order.

        Offsets are positions (0 = ``.``, 1 = ``..``, 2 + i = child i): stable across opens and
        remounts.  readdirplus replies carry each entry's attributes.
        """
        ino = int(fh)
        pos = start_id
        if pos == 0:
            if not pyfuse3.readdir_reply(token, b".", self._attr(ino), 1):
                return
            pos = 1
        if pos == 1:
            parent = self._ix.node(ino).parent
            if not pyfuse3.readdir_reply(token, b"..", self._attr(parent), 2):
                return
            pos = 2
        while True:
            batch = self._ix.readdir(ino, pos - 2, _READDIR_BATCH)
            if not batch:
                return
            for name, child in batch:
                if not pyfuse3.readdir_reply(token, name, self._attr(child), pos + 1):
                    return
                pos += 1

    @_handler
    async def releasedir(self, fh: FileHandleT) -> None:
        """Nothing to release (see opendir)."""

    @_handler
    async def getxattr(self, inode: InodeT, name: bytes, ctx: RequestContext) -> bytes:
        return self._ix.getxattr(inode, name)

    @_handler
    async def listxattr(self, inode: InodeT, ctx: RequestContext) -> Sequence[bytes]:
        return self._ix.listxattr(inode)

    @_handler
    async def statfs(self, ctx: RequestContext) -> pyfuse3.StatvfsData:
        """Sizes of the filesystem holding the top layer; names up to 255 bytes
        (docs/overlay.rst "Name length")."""
        st = os.statvfs(self._statfs_fd)
        out = pyfuse3.StatvfsData()
        out.f_bsize = st.f_bsize
        out.f_frsize = st.f_frsize
        out.f_blocks = st.f_blocks
        out.f_bfree = st.f_bfree
        out.f_bavail = st.f_bavail
        out.f_files = st.f_files
        out.f_ffree = st.f_ffree
        out.f_favail = st.f_favail
        out.f_namemax = NAME_MAX
        return out

    # -- data: the backing file ------------------------------------------------------------------

    @_handler
    async def open(self, inode: InodeT, flags: int, ctx: RequestContext) -> FileInfo:
        """Open the backing file read-only, inside its layer's root; keep its page cache.

        The path is resolved with ``openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS)`` relative to
        the layer's dir fd, as the C engine does: every directory on the path is a real directory
        of the layer (the index only descends through them), but a ``lowerdir=`` tree is the
        caller's and may change under the daemon: a directory swapped for a symlink fails the
        open (ELOOP) instead of leading it elsewhere.

        Raises EROFS for any write intent (the kernel already refuses on a ``ro`` mount).
        """
        if flags & _WRITE_FLAGS:
            raise OSError(errno.EROFS, "read-only mount")
        if self._ix.getattr(inode)[1] & _S_IFMT != _S_IFREG:
            raise OSError(errno.EINVAL, "not a regular file")
        fd = _sys.openat2(self._layer_fds[self._ix.layer(inode)], self._ix.path(inode), self._open_flags, 0,
                          _sys.RESOLVE_IN_ROOT | _sys.RESOLVE_NO_MAGICLINKS | _sys.RESOLVE_NO_SYMLINKS)
        self._open.add(fd)
        return FileInfo(fh=FileHandleT(fd), keep_cache=self._policy.keep_cache)

    @_handler
    async def read(self, fh: FileHandleT, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    @_handler
    async def release(self, fh: FileHandleT) -> None:
        self._open.discard(fh)
        os.close(fh)
