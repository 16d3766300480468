"""layerfs._sys: openat2 confinement, *xattrat on names and O_PATH fds, create_file.

Cases are tables; every path is relative to a fresh directory, and a sentinel file outside it
checks that nothing escaped.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_root

from layerfs import _sys


@pytest.fixture
def root(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A root dir holding a few links that try to leave it, and its fd."""
    top = tmp_path / "root"
    top.mkdir()
    (tmp_path / "outside").write_text("secret")
    (top / "etc").mkdir()
    (top / "etc" / "passwd").write_text("inside")
    os.symlink("/", top / "rootlink")
    os.symlink("../../..", top / "etc" / "up")
    os.symlink("/etc", top / "etclink")
    os.symlink("../outside", top / "escape")
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield top, fd
    finally:
        os.close(fd)


IN_ROOT_CASES = [
    # (name, path, expected content of the file opened, or an errno)
    ("plain", "etc/passwd", "inside"),
    ("absolute", "/etc/passwd", "inside"),
    ("dotdot", "../../../../etc/passwd", "inside"),
    ("symlink to /", "rootlink/etc/passwd", "inside"),
    ("relative symlink up", "etc/up/etc/passwd", "inside"),
    ("absolute symlink", "etclink/passwd", "inside"),
    ("symlink to outside", "escape", errno.ENOENT),
    ("magic link", "/proc/self/fd/0", errno.ENOENT),
]


@pytest.mark.parametrize("name,path,expected", IN_ROOT_CASES, ids=[c[0] for c in IN_ROOT_CASES])
def test_open_in_root_stays_inside(root: tuple[Path, int], name: str, path: str, expected: str | int) -> None:
    _, rootfd = root
    if isinstance(expected, int):
        with pytest.raises(OSError) as info:
            _sys.open_in_root(rootfd, path, os.O_RDONLY)
        assert info.value.errno == expected
        return
    fd = _sys.open_in_root(rootfd, path, os.O_RDONLY)
    try:
        assert os.read(fd, 100).decode() == expected
    finally:
        os.close(fd)


def test_openat2_no_symlinks(root: tuple[Path, int]) -> None:
    _, rootfd = root
    with pytest.raises(OSError) as info:
        _sys.openat2(rootfd, "etclink/passwd", os.O_RDONLY, resolve=_sys.RESOLVE_NO_SYMLINKS)
    assert info.value.errno == errno.ELOOP


@pytest.fixture(params=["setxattrat(2)", "O_PATH + /proc fallback"])
def xattrat_path(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run a test with the native *xattrat syscalls, then with the pre-6.13 fallback."""
    _sys._use_xattrat_fallback(request.param != "setxattrat(2)")
    try:
        yield
    finally:
        _sys._use_xattrat_fallback(False)


@pytest.mark.usefixtures("xattrat_path")
def test_xattrat_on_names_and_fds(tmp_path: Path) -> None:
    require_root()   # trusted.* on a symlink and a fifo
    os.symlink("/nonexistent", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "file").write_bytes(b"")
    dirfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    pathfd = os.open(tmp_path / "file", os.O_PATH)
    try:
        cases = [("symlink itself", dirfd, "link"), ("fifo, not opened", dirfd, "fifo"),
                 ("O_PATH fd", pathfd, ""), ("dir fd", dirfd, "")]
        for what, fd, name in cases:
            value = os.urandom(300) + what.encode()   # > 256 bytes: the large-value path
            _sys.setxattrat(fd, name, "trusted.test", value)
            assert _sys.getxattrat(fd, name, "trusted.test") == value, what
            assert _sys.getxattrat(fd, name, "trusted.absent") is None, what
        # the symlink's target was never touched; the xattr sits on the link
        assert os.getxattr(tmp_path / "link", "trusted.test", follow_symlinks=False).endswith(b"symlink itself")
        with pytest.raises(OSError) as info:
            _sys.setxattrat(dirfd, "link", "user.test", b"x")   # user.* is refused on symlinks
        assert info.value.errno == errno.EPERM
        with pytest.raises(FileNotFoundError):
            _sys.getxattrat(dirfd, "missing", "user.test")
    finally:
        os.close(pathfd)
        os.close(dirfd)


def test_create_file(tmp_path: Path) -> None:
    dirfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        privileged = os.geteuid() == 0
        uid = 1234 if privileged else os.getuid()
        gid = 5678 if privileged else os.getgid()
        _sys.create_file(dirfd, "f", b"hello", mode=0o4755, uid=uid, gid=gid, atime_ns=3_000_000_007,
                         mtime_ns=1_000_000_123, chown=privileged)
        st = os.lstat(tmp_path / "f")
        assert (tmp_path / "f").read_bytes() == b"hello"
        # chown before chmod: setuid survives
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o4755, uid, gid)
        assert (st.st_atime_ns, st.st_mtime_ns) == (3_000_000_007, 1_000_000_123)
        # never follows or replaces an existing name, a symlink least of all
        os.symlink(tmp_path / "target", tmp_path / "link")
        for name in ("f", "link"):
            with pytest.raises(FileExistsError):
                _sys.create_file(dirfd, name, b"x", mode=0o644, uid=0, gid=0, atime_ns=0, mtime_ns=0,
                                 chown=False)
        assert not (tmp_path / "target").exists()
        fd = _sys.create_file_open(dirfd, "g", memoryview(b"abcdef")[2:], uid=0, gid=0, chown=False)
        try:
            os.write(fd, b"!")
        finally:
            os.close(fd)
        assert (tmp_path / "g").read_bytes() == b"cdef!"
    finally:
        os.close(dirfd)


def test_create_file_removes_what_it_could_not_finish(tmp_path: Path) -> None:
    # a file size limit of 2 bytes makes the write fail (EFBIG; Python ignores SIGXFSZ)
    code = (
        "import os, resource, sys\n"
        "from layerfs import _sys\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (2, resource.RLIM_INFINITY))\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
        "try:\n"
        "    _sys.create_file(fd, 'f', b'data', mode=0o644, uid=0, gid=0, atime_ns=0, mtime_ns=0,"
        " chown=False)\n"
        "except OSError as err:\n"
        "    print(err.errno)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=False,
                          timeout=60)
    assert proc.stdout.strip() == str(errno.EFBIG), proc.stderr
    assert not (tmp_path / "f").exists()


# ---------------------------------------------------------------------------------------------
# Data races in the C extension, found by ThreadSanitizer: the extension is built again with
# -fsanitize=thread and driven from several threads, which run the C code with the GIL released.

_TSAN_DRIVER = r"""
import importlib.machinery, importlib.util, os, sys, threading
loader = importlib.machinery.ExtensionFileLoader("layerfs._native", sys.argv[1])
spec = importlib.util.spec_from_loader("layerfs._native", loader)
native = importlib.util.module_from_spec(spec)
loader.exec_module(native)
work = sys.argv[2]
fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
for i in range(4):
    os.makedirs(f"{work}/layer/d{i}", exist_ok=True)
    open(f"{work}/layer/d{i}/f", "w").close()

def xattrs(n):
    for k in range(200):
        native.setxattrat(fd, "", "user.t%d" % n, b"v")
        try:
            native.getxattrat(fd, "", "user.none")
        except OSError:
            pass

def build(n):
    for k in range(20):
        native.merge_build([f"{work}/layer"], "k")

data = native.merge_build([f"{work}/layer"], "k")[0]
with open(f"{work}/index", "wb") as f:
    f.write(data)
index = native.MergedIndex(f"{work}/index")

def reload(n):  # __init__ again (the GIL released while it maps) while others read the index
    for k in range(100):
        if n == 0:
            index.__init__(f"{work}/index")
        else:
            index.getattr(1), index.readdir(1, 0, 10), index.path(2)

threads = [threading.Thread(target=f, args=(n,)) for f in (xattrs, build, reload) for n in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()

# A writable mount of a lazily merged stack: first walks in parallel (directories merged by
# several request threads while others read the index) while files are created in it.
for li in range(2):
    for i in range(40):
        os.makedirs(f"{work}/lazy{li}/d{i}/s{li}", exist_ok=True)
        open(f"{work}/lazy{li}/d{i}/f{li}", "w").close()
for d in ("upper", "work/work", "mnt"):
    os.makedirs(f"{work}/{d}")
session = native.FuseSession(None, [f"{work}/lazy0", f"{work}/lazy1"], f"{work}/mnt", "default_permissions",
                             60.0, 60.0, 0.0, 4, False, 64, f"{work}/upper", f"{work}/work/work", True)
served = threading.Thread(target=session.loop)
served.start()

def walk(n):
    for top, dirs, files in os.walk(f"{work}/mnt"):
        for name in files + dirs:
            os.lstat(os.path.join(top, name))
        if n == 0 and "f1" in files:
            open(os.path.join(top, "new"), "w").close()

threads = [threading.Thread(target=walk, args=(n,)) for n in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert sum(len(f) for _, _, f in os.walk(f"{work}/mnt")) == 40 * 3, "the walks saw another tree"
session.exit()
served.join()
session.unmount()
session.close()
print("driven")
"""


def test_native_code_has_no_data_race(tmp_path: Path) -> None:
    """Calls that release the GIL share no unsynchronised state (sys.c's "do the *xattrat
    system calls exist" flag, mergebuild.c's allocation counters, a MergedIndex mapped again
    by ``__init__`` while other threads read it), nor do the request threads of a writable mount
    of a lazily merged stack, walked by several threads at once (csrc/merge.h, lfs_ready)."""
    from conftest import REPO, require, require_fuse, require_tool

    require_root()
    require_fuse()
    require_tool("gcc", "pkg-config")
    tsan = os.path.realpath(subprocess.run(["gcc", "-print-file-name=libtsan.so"], capture_output=True,
                                           text=True, check=True).stdout.strip())
    require(os.path.exists(tsan), "ThreadSanitizer's runtime (libtsan, with gcc)")
    import sysconfig

    lib = tmp_path / "_native_tsan.so"
    fuse = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True,
                          check=True).stdout.split()
    subprocess.run(["gcc", "-std=gnu11", "-O1", "-g", "-fsanitize=thread", "-fPIC", "-shared",
                    f"-I{sysconfig.get_paths()['include']}", *sorted(str(p) for p in (REPO / "csrc").glob("*.c")),
                    *fuse, "-lpthread", "-o", str(lib)], check=True, capture_output=True, timeout=300)
    (tmp_path / "work").mkdir()
    proc = subprocess.run([sys.executable, "-c", _TSAN_DRIVER, str(lib), str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, LD_PRELOAD=tsan, TSAN_OPTIONS="halt_on_error=0"))
    assert proc.returncode == 0 and "driven" in proc.stdout, proc.stderr[-3000:]
    assert "ThreadSanitizer" not in proc.stderr, proc.stderr[-6000:]
