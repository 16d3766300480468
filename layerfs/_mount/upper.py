"""The writable upper of a mount: checking and preparing the upper and work directories.

A writable mount keeps its changes in an upper directory, in the kernel overlay's own format
(docs/overlay.rst "The writable upper"), written by the C engine (``csrc/upper.c``).  This module
is the Python side: the policy and the set-up the engine relies on.

- The upper and the work directory are existing directories on one file system, neither inside
  the other; the work directory is used for atomic copy-up and whiteout replacement, in its
  ``work/`` subdirectory, as the kernel uses it.  So after ``layerfs umount`` the same lowers,
  upper and work directory mount with ``mount -t overlay`` (and the reverse).
- A work directory serves one mount at a time: the daemon holds an flock(2) on it for the life
  of the mount (the kernel overlay refuses a shared work directory with EBUSY); leftovers of a
  crashed mount in ``work/`` are removed before mounting, as the kernel does.
- Privileged (root in the initial user namespace): markers are ``trusted.overlay.*`` and metacopy
  (a metadata-only copy-up for chmod, chown, utimes and xattr changes of lower files) is on by
  default; a kernel overlay then needs ``-o metacopy=on`` to follow such files.  Unprivileged:
  ``user.overlay.*`` markers (the kernel's ``userxattr`` mode), which forbids metacopy, and what
  the daemon cannot make as it is (an owner not its own, a device node) keeps its owner, mode and
  device number in ``user.containers.override_stat`` (``csrc/upper.c``; docs/overlay.rst "Owners
  kept in an xattr").  The root of a container's upper, which the store makes, is root's then
  too, as under a root store (:func:`own_root`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import NamedTuple

from .._errors import MountError
from .._layer import override as _override


class Upper(NamedTuple):
    """The upper and work directories of a writable mount, checked."""

    upper: Path
    work: Path
    privileged: bool
    metacopy: bool
    redirect_dir: bool = False

    @property
    def work_dir(self) -> Path:
        """``WORK/work``: where the engine makes objects before renaming them into the upper."""
        return self.work / "work"


def default_privileged() -> bool:
    """Root in the initial user namespace: ``trusted.*`` xattrs can be written."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/uid_map", encoding="ascii") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return True


def check(upper: str | os.PathLike[str], work: str | os.PathLike[str], *, metacopy: bool | None = None,
          redirect_dir: bool = False) -> Upper:
    """Check an upper and a work directory as a writable mount needs them.

    Args:
        upper, work: existing directories on one file system, neither inside the other.
        metacopy: metadata-only copy-up; default on when privileged (it needs ``trusted.*``).
        redirect_dir: rename directories that have a lower part with ``overlay.redirect``
            (privileged only: ``trusted.*``; the kernel's userxattr mode refuses it too).

    Returns:
        The checked pair (absolute, symlinks resolved).

    Raises:
        MountError: one line naming the directory and what is wrong with it.
    """
    dirs = []
    for what, value in (("upperdir", upper), ("workdir", work)):
        path = Path(os.path.abspath(value))
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise MountError(f"{what} {path}: does not exist") from None
        except OSError as err:
            raise MountError(f"{what} {path}: {err.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise MountError(f"{what} {path}: is not a directory")
        dirs.append((Path(os.path.realpath(path)), st))
    (up, ust), (wk, wst) = dirs
    if ust.st_dev != wst.st_dev:
        raise MountError(f"workdir {wk}: must be on the same file system as upperdir {up}")
    if up == wk or up in wk.parents or wk in up.parents:
        raise MountError(f"workdir {wk} and upperdir {up}: neither may be inside the other")
    privileged = default_privileged()
    if metacopy and not privileged:
        raise MountError("-o metacopy=on: needs root (its trusted.overlay.* xattr); not available unprivileged")
    if redirect_dir and not privileged:
        raise MountError("-o redirect_dir=on: needs root (its trusted.overlay.* xattr); not available unprivileged")
    return Upper(up, wk, privileged, privileged if metacopy is None else metacopy, redirect_dir)


def own_root(u: Upper) -> bool:
    """Give the root of a container's upper (made by the store, 0755) the owner root's store gives
    it, root, in its override, when the mount is unprivileged and it has none: the merged root
    shows the upper's root (the kernel's overlayfs.rst "Directories"), so a rootless container
    then shows ``/`` as a root one does.  Returns whether it wrote one.

    Raises:
        OSError: the upper cannot be read or written.
    """
    if u.privileged:
        return False
    fd = os.open(u.upper, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if _override.read(fd, "", st) is not None:
            return False
        _override.write(fd, "", _override.Override(0, 0, stat.S_IFDIR | stat.S_IMODE(st.st_mode)))
        return True
    finally:
        os.close(fd)


def prepare(u: Upper) -> int:
    """Take the work directory for this mount and empty ``WORK/work``; returns the lock's fd.

    Called in the daemon, which keeps the fd (and so the lock) for the life of the mount.

    Raises:
        MountError: another mount uses the work directory, or it cannot be prepared.
    """
    fd = os.open(u.work, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise MountError(f"workdir {u.work}: in use by another mount") from None
    try:
        _empty_work(u)
    except OSError as err:
        os.close(fd)
        raise MountError(f"workdir {u.work}: cannot prepare {u.work_dir}: {err.strerror}") from None
    return fd


def _empty_work(u: Upper) -> None:
    """Make ``WORK/work`` an empty directory (what a crashed mount left there goes)."""
    wd = u.work_dir
    try:
        st = os.lstat(wd)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        os.unlink(wd)
        st = None
    if st is None:
        os.mkdir(wd, 0o700)
    else:
        # shutil.rmtree with a dir fd walks by fd and never follows a symlink (rmtree's own
        # "fd-based" mode): nothing outside WORK/work can be removed.  (Imported here: a mount
        # program's start needs it only after a crash, issue 9.)
        import shutil

        fd = os.open(wd, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            for entry in os.scandir(fd):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.name, dir_fd=fd)
                else:
                    try:
                        os.unlink(entry.name, dir_fd=fd)
                    except OSError as err:
                        if err.errno != errno.ENOENT:
                            raise
        finally:
            os.close(fd)
    # the kernel makes work/work mode 0; root passes any mode, a user needs its own access
    os.chmod(wd, 0 if os.geteuid() == 0 else 0o700)
