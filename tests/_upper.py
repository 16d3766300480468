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


@dataclass(frozen=True)
class Link:
    target: str


@dataclass(frozen=True)
class HardLink:
    to: str


@dataclass(frozen=True)
class Fifo:
    mode: int = 0o644


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
            os.chmod(path, what.mode)
            dir_times.append((path, what.mtime))
        elif isinstance(what, Link):
            os.symlink(what.target, path)
        elif isinstance(what, HardLink):
            os.link(root / what.to, path)
        elif isinstance(what, Fifo):
            os.mkfifo(path, what.mode)
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
                     metacopy: bool | None = None) -> Iterator[_mount.MountHandle]:
    """A writable layerfs mount (the C engine) of plain lower dirs, top first."""
    mnt.mkdir(parents=True, exist_ok=True)
    handle = _mount.mount(None, [str(p) for p in lowers], mnt, engine="c",
                          upper=_upper.check(upper, work, metacopy=metacopy))
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
            import shutil
            shutil.rmtree(p[0])
        else:
            raise ValueError(f"unknown operation {name!r}")
        return ("ok", value)
    except OSError as err:
        return ("err", errno.errorcode.get(err.errno or 0, str(err.errno)))


#: how many leading arguments of each operation are paths under the root
_PATH_ARGS = {"write": 1, "read": 1, "truncate": 1, "mkdir": 1, "rmdir": 1, "unlink": 1, "rename": 2,
              "symlink": 2, "link": 2, "chmod": 1, "chown": 1, "utime": 1, "setxattr": 1, "removexattr": 1,
              "mkfifo": 1, "listdir": 1, "stat": 1, "rmtree": 1}
