"""Helpers of the writable-mount tests: layer dirs in overlay form, kernel overlay mounts, layerfs
writable mounts, and a small language of file-system operations run the same way on both.

API::

    make_layer(path, {"a": File(b"x"), "d": Dir(), "d/w": Whiteout(), "o": Dir(opaque=True)})
    with kernel_overlay(lowers_top_first, upper, work, mnt, options="metacopy=on"): ...
    with layerfs_writable(lowers_top_first, upper, work, mnt) as handle: ...
    result = run_op(root, op)       # ("ok", value) or ("err", "ENOENT"), the same on any file system

An operation is a tuple ``(name, *args)`` with paths relative to the mount root; see :data:`OPS`.
Results carry what a user sees (content, listings, type/mode/size), never inode numbers or times.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import os
import stat
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from layerfs._mount import daemon as _mount
from layerfs._mount import upper as _upper


@dataclass(frozen=True)
class File:
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 1_000_000_000
    xattrs: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Dir:
    mode: int = 0o755
    opaque: bool = False
    mtime: int = 1_000_000_000
    uid: int = 0
    gid: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Link:
    target: str
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class HardLink:
    to: str


@dataclass(frozen=True)
class Fifo:
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Whiteout:
    pass


Spec = dict[str, File | Dir | Link | HardLink | Fifo | Whiteout]


def make_layer(root: Path, spec: Spec) -> Path:
    """Make a layer directory in the kernel's overlay form (0/0 whiteouts, trusted.overlay.opaque)."""
    root.mkdir(parents=True, exist_ok=True)
    dir_times = []
    for rel, what in spec.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(what, File):
            path.write_bytes(what.data)
            os.chown(path, what.uid, what.gid)
            for k, v in what.xattrs.items():
                os.setxattr(path, k, v)
            os.chmod(path, what.mode)
            os.utime(path, ns=(what.mtime * 10**9, what.mtime * 10**9))
        elif isinstance(what, Dir):
            path.mkdir(exist_ok=True)
            if what.opaque:
                os.setxattr(path, "trusted.overlay.opaque", b"y")
            os.chown(path, what.uid, what.gid)
            for k, v in what.xattrs.items():
                os.setxattr(path, k, v)
            os.chmod(path, what.mode)
            dir_times.append((path, what.mtime))
        elif isinstance(what, Link):
            os.symlink(what.target, path)
            os.lchown(path, what.uid, what.gid)
        elif isinstance(what, HardLink):
            os.link(root / what.to, path)
        elif isinstance(what, Fifo):
            os.mkfifo(path, what.mode)
            os.chown(path, what.uid, what.gid)
            os.chmod(path, what.mode)
        elif isinstance(what, Whiteout):
            os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
    for path, mtime in reversed(dir_times):
        os.utime(path, ns=(mtime * 10**9, mtime * 10**9))
    return root


def _umount(mnt: Path) -> None:
    for _ in range(50):
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0:
            return
        import time
        time.sleep(0.05)
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@contextlib.contextmanager
def kernel_overlay(lowers: Sequence[Path], upper: Path, work: Path, mnt: Path, options: str = "") -> Iterator[Path]:
    """The kernel's overlay over ``lowers`` (top first), writable on upper/work."""
    mnt.mkdir(parents=True, exist_ok=True)
    opts = f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work}"
    if options:
        opts += "," + options
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)], check=True, capture_output=True)
    try:
        yield mnt
    finally:
        _umount(mnt)


@contextlib.contextmanager
def layerfs_writable(lowers: Sequence[Path], upper: Path, work: Path, mnt: Path,
                     metacopy: bool | None = None, redirect_dir: bool = False) -> Iterator[_mount.MountHandle]:
    """A writable layerfs mount (the C engine) of plain lower dirs, top first."""
    mnt.mkdir(parents=True, exist_ok=True)
    handle = _mount.mount(None, [str(p) for p in lowers], mnt, engine="c",
                          upper=_upper.check(upper, work, metacopy=metacopy, redirect_dir=redirect_dir))
    try:
        yield handle
    finally:
        _mount.umount(mnt)


# ---------------------------------------------------------------------------------------------
# Operations

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def renameat2(src: Path, dst: Path, flags: int) -> None:
    if _libc.renameat2(-100, os.fsencode(src), -100, os.fsencode(dst), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(src))


def _describe(path: Path) -> tuple[object, ...]:
    st = os.lstat(path)
    kind = stat.S_IFMT(st.st_mode)
    size = st.st_size if stat.S_ISREG(st.st_mode) else None
    nlink = st.st_nlink if not stat.S_ISDIR(st.st_mode) else None
    return (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size, nlink)


def run_op(root: Path, op: tuple[object, ...]) -> tuple[str, object]:
    """Run one operation under ``root``; returns ``("ok", value)`` or ``("err", errno name)``."""
    name, *args = op
    p = [root / str(a) if isinstance(a, str) and i < _PATH_ARGS.get(str(name), 0) else a
         for i, a in enumerate(args)]
    try:
        value: object = None
        if name == "write":
            path, data, how = p
            flags = {"w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "a": os.O_WRONLY | os.O_APPEND,
                     "r+": os.O_RDWR, "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL}[str(how)]
            fd = os.open(path, flags | os.O_NONBLOCK, 0o640)  # a fifo without reader: ENXIO, not a hang
            try:
                os.write(fd, bytes(data))  # type: ignore[arg-type]
            finally:
                os.close(fd)
        elif name == "read":
            fd = os.open(p[0], os.O_RDONLY | os.O_NONBLOCK)  # a fifo: empty, not a hang
            try:
                chunks = []
                while chunk := os.read(fd, 1 << 16):
                    chunks.append(chunk)
            finally:
                os.close(fd)
            value = hashlib.sha256(b"".join(chunks)).hexdigest()[:16]
        elif name == "truncate":
            os.truncate(p[0], int(p[1]))  # type: ignore[call-overload]
        elif name == "mkdir":
            os.mkdir(p[0], 0o750)
        elif name == "rmdir":
            os.rmdir(p[0])
        elif name == "unlink":
            os.unlink(p[0])
        elif name == "rename":
            renameat2(p[0], p[1], int(p[2]))  # type: ignore[call-overload]
        elif name == "symlink":
            os.symlink(str(args[0]), p[1])
        elif name == "link":
            os.link(p[0], p[1], follow_symlinks=False)
        elif name == "chmod":
            os.chmod(p[0], int(p[1]), follow_symlinks=True)  # type: ignore[call-overload]
        elif name == "chown":
            os.lchown(p[0], int(p[1]), int(p[2]))  # type: ignore[call-overload]
        elif name == "utime":
            os.utime(p[0], ns=(int(p[1]), int(p[1])), follow_symlinks=False)  # type: ignore[call-overload]
        elif name == "setxattr":
            os.setxattr(p[0], str(p[1]), bytes(p[2]), follow_symlinks=False)  # type: ignore[arg-type]
        elif name == "removexattr":
            os.removexattr(p[0], str(p[1]), follow_symlinks=False)
        elif name == "mkfifo":
            os.mkfifo(p[0], 0o640)
        elif name == "listdir":
            value = sorted(os.listdir(p[0]))
        elif name == "stat":
            value = _describe(Path(p[0]))
        elif name == "rmtree":
            _rmtree(p[0])  # type: ignore[arg-type]
        elif name == "unlinked":  # open, unlink, then write and read through the fd
            fd = os.open(p[0], os.O_RDWR | os.O_NONBLOCK)
            try:
                os.unlink(p[0])
                os.pwrite(fd, bytes(p[1]), 1)  # type: ignore[arg-type]
                value = (os.pread(fd, 1 << 16, 0), os.fstat(fd).st_nlink)
            finally:
                os.close(fd)
        elif name == "fallocate":
            fd = os.open(p[0], os.O_RDWR | os.O_NONBLOCK)
            try:
                if _libc.fallocate(fd, int(p[1]), ctypes.c_long(int(p[2])),  # type: ignore[call-overload]
                                   ctypes.c_long(int(p[3]))) != 0:  # type: ignore[call-overload]
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
                value = os.fstat(fd).st_size
            finally:
                os.close(fd)
        elif name == "append2":  # two O_APPEND descriptors writing in turn
            fds = [os.open(p[0], os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK) for _ in range(2)]
            try:
                for i in range(4):
                    os.write(fds[i % 2], bytes(p[1 + i % 2]))  # type: ignore[arg-type]
            finally:
                for fd in fds:
                    os.close(fd)
        elif name == "renameopen":  # rename over a file open for reading, then read it
            fd = os.open(p[1], os.O_RDONLY | os.O_NONBLOCK)
            try:
                renameat2(p[0], p[1], 0)  # type: ignore[arg-type]
                value = (hashlib.sha256(os.pread(fd, 1 << 16, 0)).hexdigest()[:16], os.fstat(fd).st_nlink)
            finally:
                os.close(fd)
        else:
            raise ValueError(f"unknown operation {name!r}")
        return ("ok", value)
    except OSError as err:
        return ("err", errno.errorcode.get(err.errno or 0, str(err.errno)))


def _rmtree(path: str | Path) -> None:
    """shutil.rmtree, but ENOTDIR for a fifo: rmtree opens its argument before it looks at its type,
    and opening a fifo for reading waits for a writer."""
    import shutil

    if stat.S_ISFIFO(os.lstat(path).st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    shutil.rmtree(path)


#: how many leading arguments of each operation are paths under the root
_PATH_ARGS = {"write": 1, "read": 1, "truncate": 1, "mkdir": 1, "rmdir": 1, "unlink": 1, "rename": 2,
              "symlink": 2, "link": 2, "chmod": 1, "chown": 1, "utime": 1, "setxattr": 1, "removexattr": 1,
              "mkfifo": 1, "listdir": 1, "stat": 1, "rmtree": 1, "unlinked": 1, "fallocate": 1, "append2": 1,
              "renameopen": 2}


# ---------------------------------------------------------------------------------------------
# Steps: the POSIX set's language (tests/test_posix.py), richer than run_op: open file
# descriptors, several users, time rules.  A step is a tuple ``(name, *args)``; paths are relative
# to the case's directory; a file descriptor is named by a string (``"fd1"``) for later steps.
#
#   ("open", path, "O_RDWR|O_CREAT", fdname[, mode])    ("close", fd)
#   ("write", fd, data)  ("pwrite", fd, data, off)  ("read", fd, n)  ("pread", fd, n, off)
#   ("openat", dirfd, name, flags, fdname)  ("mkdirat", dirfd, name): relative to an open directory
#   ("mmapwrite", fd, data, off)  ("mmapread", fd, n): through a shared mapping
#   ("lseek", fd, off, whence)  ("fstat", fd)  ("ftruncate", fd, n)  ("fchmod", fd, mode)
#   ("fchown", fd, uid, gid)  ("fsync", fd)  ("fallocate", fd, mode, off, len)  ("flink", fd, path)
#   ("stat", path)  ("statf", path)  ("mkdir", path, mode)  ("rmdir", path)  ("unlink", path)
#   ("rename", a, b, flags)  ("link", a, b)  ("symlink", target, path)  ("mkfifo", path, mode)
#   ("mknod", path, mode, major, minor)  ("chmod", path, mode)  ("chown", path, uid, gid)  (lchown)
#   ("truncate", path, n)  ("utime", path, atime_ns | None, mtime_ns | None)  (None: now)
#   ("setxattr", path, name, value, flags)  ("getxattr", path, name)  ("listxattr", path)
#   ("removexattr", path, name)  ("readlink", path)  ("listdir", path)  ("access", path, mode)
#   ("cat", path)  ("put", path, data)  ("exists", path)  ("rmtree", path)  ("namemax", path)
#   ("dino", path): every entry's d_ino equals its st_ino   ("ts", path): exact (atime, mtime) in ns
#   ("times", path, key): remember atime/mtime/ctime   ("changed", path, key): which changed,
#   as a string of the letters a, m, c ("" = none)     ("tick",): let the clock move on
#
# Results: ("ok", value) or ("err", errno name); values never hold inode numbers or raw times.

FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2


def _flags(spec: str) -> int:
    flags = 0
    for token in spec.split("|"):
        flags |= getattr(os, token.strip())
    return flags


def describe(st: os.stat_result) -> tuple[object, ...]:
    """What a stat shows a user, comparably between two file systems: type, mode, owner, size
    (regular files), link count (directories included)."""
    kind = stat.S_IFMT(st.st_mode)
    return (stat.filemode(st.st_mode), st.st_uid, st.st_gid,
            st.st_size if kind == stat.S_IFREG else None, st.st_nlink)


class Steps:
    """Runs the steps of one case in one directory; keeps the named fds and remembered times."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fds: dict[str, int] = {}
        self.times: dict[str, tuple[int, int, int]] = {}

    def path(self, rel: object) -> str:
        return os.path.join(self.root, str(rel))

    def close_all(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()

    def run(self, step: tuple[object, ...]) -> tuple[str, object]:
        try:
            return ("ok", self._do(step))
        except OSError as err:
            return ("err", errno.errorcode.get(err.errno or 0, str(err.errno)))
        except KeyError as err:  # a step on an fd an earlier failed step did not open
            return ("err", f"no fd {err}")

    def _do(self, step: tuple[object, ...]) -> object:  # noqa: C901 - one branch per step
        name, *a = step
        p = self.path
        fd = self.fds.get(str(a[0]), -1) if a else -1
        if name in ("close", "write", "pwrite", "read", "pread", "lseek", "fstat", "ftruncate", "fchmod",
                    "fchown", "fsync", "fallocate", "flink", "openat", "mkdirat", "mmapwrite",
                    "mmapread") and str(a[0]) not in self.fds:
            raise KeyError(a[0])
        if name == "open":
            mode = int(a[3]) if len(a) > 3 else 0o640  # type: ignore[call-overload]
            self.fds[str(a[2])] = os.open(p(a[0]), _flags(str(a[1])) | os.O_CLOEXEC, mode)
            return None
        if name == "close":
            os.close(self.fds.pop(str(a[0])))
            return None
        if name == "write":
            return os.write(fd, bytes(a[1]))  # type: ignore[arg-type]
        if name == "pwrite":
            return os.pwrite(fd, bytes(a[1]), int(a[2]))  # type: ignore[arg-type, call-overload]
        if name == "read":
            return os.read(fd, int(a[1]))  # type: ignore[call-overload]
        if name == "pread":
            return os.pread(fd, int(a[1]), int(a[2]))  # type: ignore[call-overload]
        if name == "lseek":
            return os.lseek(fd, int(a[1]), int(a[2]))  # type: ignore[call-overload]
        if name == "fstat":
            return describe(os.fstat(fd))
        if name == "ftruncate":
            os.ftruncate(fd, int(a[1]))  # type: ignore[call-overload]
            return None
        if name == "fchmod":
            os.fchmod(fd, int(a[1]))  # type: ignore[call-overload]
            return None
        if name == "fchown":
            os.fchown(fd, int(a[1]), int(a[2]))  # type: ignore[call-overload]
            return None
        if name == "fsync":
            os.fsync(fd)
            return None
        if name == "fallocate":
            if _libc.fallocate(fd, int(a[1]), ctypes.c_long(int(a[2])),  # type: ignore[call-overload]
                               ctypes.c_long(int(a[3]))) != 0:  # type: ignore[call-overload]
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            return None
        if name == "openat":  # ("openat", dirfd, name, flags, newfd): relative to an open directory
            self.fds[str(a[3])] = os.open(str(a[1]), _flags(str(a[2])) | os.O_CLOEXEC, 0o640, dir_fd=fd)
            return None
        if name == "mkdirat":
            os.mkdir(str(a[1]), 0o755, dir_fd=fd)
            return None
        if name == "mmapwrite":  # ("mmapwrite", fd, data, off): through a shared mapping, then msync
            import mmap
            size = os.fstat(fd).st_size
            with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as m:
                data = bytes(a[1])  # type: ignore[arg-type]
                m[int(a[2]):int(a[2]) + len(data)] = data  # type: ignore[call-overload]
                m.flush()
            return None
        if name == "mmapread":  # ("mmapread", fd, n): the first n bytes through a shared mapping
            import mmap
            with mmap.mmap(fd, int(a[1]), mmap.MAP_SHARED, mmap.PROT_READ) as m:  # type: ignore[call-overload]
                return bytes(m[:int(a[1])])  # type: ignore[call-overload]
        if name == "flink":  # linkat(AT_FDCWD, "/proc/self/fd/N", ..., AT_SYMLINK_FOLLOW)
            os.link(f"/proc/self/fd/{fd}", p(a[1]), follow_symlinks=True)
            return None
        if name == "stat":
            return describe(os.lstat(p(a[0])))
        if name == "statf":
            return describe(os.stat(p(a[0])))
        if name == "mkdir":
            os.mkdir(p(a[0]), int(a[1]) if len(a) > 1 else 0o755)  # type: ignore[call-overload]
            return None
        if name == "rmdir":
            os.rmdir(p(a[0]))
            return None
        if name == "unlink":
            os.unlink(p(a[0]))
            return None
        if name == "rename":
            renameat2(Path(p(a[0])), Path(p(a[1])), int(a[2]) if len(a) > 2 else 0)  # type: ignore[call-overload]
            return None
        if name == "link":
            os.link(p(a[0]), p(a[1]), follow_symlinks=False)
            return None
        if name == "symlink":
            os.symlink(str(a[0]), p(a[1]))
            return None
        if name == "mkfifo":
            os.mkfifo(p(a[0]), int(a[1]) if len(a) > 1 else 0o644)  # type: ignore[call-overload]
            return None
        if name == "mknod":
            os.mknod(p(a[0]), int(a[1]), os.makedev(int(a[2]), int(a[3])))  # type: ignore[call-overload]
            return None
        if name == "chmod":
            os.chmod(p(a[0]), int(a[1]))  # type: ignore[call-overload]
            return None
        if name in ("chown", "lchown"):
            os.chown(p(a[0]), int(a[1]), int(a[2]), follow_symlinks=name == "chown")  # type: ignore[call-overload]
            return None
        if name == "truncate":
            os.truncate(p(a[0]), int(a[1]))  # type: ignore[call-overload]
            return None
        if name == "utime":
            if a[1] is None and a[2] is None:
                os.utime(p(a[0]), follow_symlinks=False)
            else:
                os.utime(p(a[0]), ns=(int(a[1]), int(a[2])), follow_symlinks=False)  # type: ignore[call-overload]
            return None
        if name == "setxattr":
            os.setxattr(p(a[0]), str(a[1]), bytes(a[2]), int(a[3]) if len(a) > 3 else 0,  # type: ignore[arg-type, call-overload]
                        follow_symlinks=False)
            return None
        if name == "getxattr":
            return os.getxattr(p(a[0]), str(a[1]), follow_symlinks=False)
        if name == "listxattr":
            return sorted(n for n in os.listxattr(p(a[0]), follow_symlinks=False) if not n.startswith("security."))
        if name == "removexattr":
            os.removexattr(p(a[0]), str(a[1]), follow_symlinks=False)
            return None
        if name == "readlink":
            return os.readlink(p(a[0]))
        if name == "listdir":
            return sorted(os.listdir(p(a[0])))
        if name == "access":
            return os.access(p(a[0]), int(a[1]))  # type: ignore[call-overload]
        if name == "cat":
            with open(p(a[0]), "rb") as f:
                return f.read()
        if name == "put":
            with open(p(a[0]), "wb") as f:
                f.write(bytes(a[1]))  # type: ignore[arg-type]
            return None
        if name == "exists":
            return os.path.lexists(p(a[0]))
        if name == "rmtree":
            _rmtree(p(a[0]))
            return None
        if name == "namemax":
            return os.statvfs(p(a[0])).f_namemax
        if name == "dino":
            with os.scandir(p(a[0])) as it:
                return all(e.inode() == os.lstat(e.path).st_ino for e in it)
        if name == "ts":  # exact times, after a utime that set them
            st = os.lstat(p(a[0]))
            return (st.st_atime_ns, st.st_mtime_ns)
        if name == "times":
            st = os.lstat(p(a[0]))
            self.times[str(a[1])] = (st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns)
            return None
        if name == "changed":
            st = os.lstat(p(a[0]))
            was = self.times[str(a[1])]
            now = (st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns)
            return "".join(letter for letter, x, y in zip("amc", was, now) if x != y)
        if name == "tick":
            import time
            time.sleep(0.02)
            return None
        raise ValueError(f"unknown step {name!r}")


def run_steps(root: Path, steps: Sequence[tuple[object, ...]]) -> list[tuple[str, object]]:
    """Run a case's steps in ``root``; returns one result per step (see "Steps" above)."""
    runner = Steps(root)
    try:
        return [runner.run(step) for step in steps]
    finally:
        runner.close_all()


def as_user(uid: int, gid: int, groups: Sequence[int] = ()) -> list[str]:
    """The command prefix that runs a program as ``uid:gid`` with supplementary ``groups`` (setpriv,
    as tests/test_mount.py runs things as nobody; it resolves the program before dropping root)."""
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}",
            f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups"]


def run_steps_as(uid: int, gid: int, groups: Sequence[int],
                 cases: Sequence[tuple[Path, Sequence[tuple[object, ...]]]],
                 timeout: float = 300) -> list[list[tuple[str, object]]]:
    """Run several cases' steps as user ``uid`` (a child process, so that the kernel checks that
    user's permissions), each in its directory; returns their results in order.

    Raises:
        AssertionError: the child failed (its stderr in the message).
    """
    import pickle
    import sys

    code = ("import pickle, sys; sys.path.insert(0, sys.argv[1]); import _upper; "
            "cases = pickle.load(sys.stdin.buffer); "
            "out = [_upper.run_steps(root, steps) for root, steps in cases]; "
            "sys.stdout.buffer.write(pickle.dumps(out))")
    proc = subprocess.run([*as_user(uid, gid, groups), sys.executable, "-c", code, str(Path(__file__).parent)],
                          input=pickle.dumps(list(cases)), capture_output=True, timeout=timeout, cwd="/")
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    results: list[list[tuple[str, object]]] = pickle.loads(proc.stdout)
    return results
