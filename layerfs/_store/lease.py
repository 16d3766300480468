"""Leases: who owns a temporary name in the store's ``tmp/``, and when its leftovers may go.

Every temporary file or directory a command makes in the store (a file being written, a layer
being unpacked, a tree being removed, a hold on layers) is leased: its owner holds an exclusive
flock(2) on it from the moment it exists until it is renamed into place or removed.  The kernel
drops the lock when the owner's last descriptor of it closes, however the process ends (return,
exception, SIGKILL), so:

- clean-up removes a temporary entry only after taking its lock without waiting
  (``LOCK_EX | LOCK_NB``): a killed owner's leftovers go at once, a live owner's never;
- an owner checks, once it holds the lock, that the name still is the object it locked (clean-up
  may have removed it between its creation and the lock) and otherwise starts over.

flock(2) locks belong to the open file description, so two threads of one process exclude each
other as two processes do.  The lock follows the inode: renaming a leased entry into place (or
a tree into ``tmp/`` to remove it) keeps it leased.  Descriptors are close-on-exec; the mount
daemon closes what it inherits, so no lease outlives the command that took it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path

#: How often a waiting :func:`claim_dir` asks again (flock has no timeout of its own).
POLL_SECONDS = 0.05


class Lease:
    """An exclusive flock(2) on a temporary file or directory, held until :meth:`release`.

    ``fd`` is open read-write for a file (write the content through it), read-only for a directory.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    def release(self) -> None:
        """Close the descriptor, which drops the lock (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def write_all(self, data: bytes) -> None:
        """Write ``data`` to a leased file and fsync it."""
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        os.fsync(self.fd)


def _same(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the object open as ``fd``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _lock_new(path: Path, fd: int) -> Lease | None:
    """Lock a just-created entry; None (fd closed) if clean-up got to it first."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)  # a clean-up holds it: it is about to remove it
        return None
    if not _same(fd, path):
        os.close(fd)  # removed between its creation and the lock
        return None
    return Lease(path, fd)


def new_file(directory: Path, hint: str) -> Lease:
    """Create and lease a new empty file ``directory/<hint>-<random>`` (mode 0600).

    Raises:
        OSError: the file cannot be created.
    """
    while True:
        path = directory / f"{hint}-{secrets.token_hex(8)}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        lease = _lock_new(path, fd)
        if lease is not None:
            return lease


def new_dir(directory: Path, hint: str) -> Lease:
    """Create and lease a new empty directory ``directory/<hint>-<random>`` (mode 0700).

    Raises:
        OSError: the directory cannot be created.
    """
    while True:
        path = directory / f"{hint}-{secrets.token_hex(8)}"
        os.mkdir(path, 0o700)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        lease = _lock_new(path, fd)
        if lease is not None:
            return lease


def claim_dir(path: Path, *, cancelled: Callable[[], bool] | None = None) -> tuple[Lease, bool]:
    """Lease the directory ``path`` (a fixed name), creating it if missing, waiting for its owner.

    This is how two commands that need the same thing (one layer) make it once: the first
    creates and leases the directory; the others wait here until it is released, and find it
    published (gone from ``path``) or abandoned (still there, theirs to take over).

    Args:
        path: the directory's name.
        cancelled: asked while waiting; true makes this raise InterruptedError.
    Returns:
        ``(lease, created)``: ``created`` is false when the directory was already there (the
        leftover of an owner that died): its content is the caller's to clear.
    Raises:
        InterruptedError: ``cancelled`` said so while waiting.
        OSError: the directory cannot be created or opened.
    """
    while True:
        try:
            os.mkdir(path, 0o700)
            created = True
        except FileExistsError:
            created = False
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # published or removed meanwhile: try again
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if cancelled is not None and cancelled():
                        raise InterruptedError(errno.EINTR, "cancelled while waiting", str(path)) from None
                    time.sleep(POLL_SECONDS)
        except BaseException:
            os.close(fd)
            raise
        if _same(fd, path):
            return Lease(path, fd), created
        os.close(fd)  # the owner published or removed it: the caller checks which


def take(path: Path) -> Lease | None:
    """Lease an existing file or directory whose owner is gone; None if it is owned (or gone).

    Raises:
        OSError: ``path`` cannot be opened for another reason (ELOOP: it is a symlink).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if not _same(fd, path):
        os.close(fd)
        return None
    return Lease(path, fd)


def reap(path: Path, remove: Callable[[Path], None]) -> bool:
    """Remove the temporary entry ``path`` with ``remove`` if no one owns it.

    The lease is held while ``remove`` runs, so no other clean-up works on it at the same time.

    Returns:
        True if it was removed (or was already gone), False if a live owner holds it.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        os.unlink(path)  # no command makes anything else here, and opening a device or fifo could block
        return True
    lease = take(path)
    if lease is None:
        return not (path.exists() or os.path.islink(path))
    with lease:
        remove(path)
    return True
