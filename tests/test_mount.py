"""FUSE mounts of layerfs compared with the kernel overlay, and the mount lifecycle.

- The edge image (``_images``: every edge a layer can hold) loaded into a store and mounted must
  equal a kernel overlay of the same layer dirs, entry by entry (``_trees``).
- Every overlay rule case of ``test_merge`` mounted with ``-o lowerdir=`` on plain dirs holding
  OCI ``.wh.`` markers must equal a kernel overlay of the converted dirs.
- Lifecycle: umount waits for the daemon, SIGTERM unmounts, clear errors for a missing, non-dir,
  non-empty, already mounted or busy mount point; the daemon survives failed requests; NAME_MAX,
  statfs, stable inode numbers, hard links, ``.``/``..``, xattrs; the store records the mount.

Every mount goes through the ``mounts`` fixture: a timeout on each step, an unconditional
unmount in teardown, and a failure if a daemon outlives its mount.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from _images import BuiltImage, edge_image, edge_tar_layers  # noqa: F401
from _trees import assert_same_tree, snapshot
from conftest import daemons_of, require, require_fuse, require_root, require_tool, run_layerfs
from test_merge import CASES, LONG, build_stack

from layerfs import Image, MountError, Store, _proc
from layerfs._mount import daemon as _mount
from layerfs._mount import idmap as _idmap
from layerfs._transfer.load import load

DAEMON_EXIT_TIMEOUT = 10.0


def _is_mounted(path: Path) -> bool:
    return os.path.realpath(path) in _proc.mountpoints()


class Mounts:
    """Mounts made by one test; teardown unmounts them all and checks their daemons are gone."""

    def __init__(self, store: Store, engine: str) -> None:
        self.store = store
        self.engine = engine
        self.points: list[Path] = []
        self.pids: set[int] = set()

    def mount(self, source: str | Sequence[Path], mnt: Path, *, engine: str | None = None) -> _mount.MountHandle:
        mnt.mkdir(parents=True, exist_ok=True)
        self.points.append(mnt)
        handle = _mount.mount(self.store, source if isinstance(source, str) else [str(p) for p in source], mnt,
                              engine=engine or self.engine)
        self.pids.add(handle.pid)
        return handle

    def track(self, mnt: Path) -> int:
        """Track a mount made another way (the CLI); returns its daemon pid."""
        self.points.append(mnt)
        pid = next(m.pid for m in _mount.mounts() if m.mountpoint == os.path.realpath(mnt))
        self.pids.add(pid)
        return pid

    def teardown(self) -> list[str]:
        problems = []
        for mnt in self.points:
            if _is_mounted(mnt):
                try:
                    _mount.umount(mnt, store=self.store, timeout=DAEMON_EXIT_TIMEOUT)
                except MountError as err:
                    problems.append(f"teardown umount {mnt}: {err}")
                    subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
        deadline = time.monotonic() + DAEMON_EXIT_TIMEOUT
        for pid in self.pids:
            while _proc.pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            if _proc.pid_alive(pid):
                problems.append(f"daemon {pid} outlived its mount")
                os.kill(pid, signal.SIGKILL)
        return problems


@pytest.fixture(params=_mount.ENGINES)
def mounts(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mounts]:
    """Every mount test runs on each engine: the C session (the default) and pyfuse3 (the base
    of the writable upper); the CLI gets the engine through $LAYERFS_ENGINE."""
    require_root()
    require_fuse()
    engine = str(request.param)
    monkeypatch.setenv("LAYERFS_ENGINE", engine)
    m = Mounts(Store(tmp_path / "store"), engine)
    yield m
    problems = m.teardown()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


# ---------------------------------------------------------------------------------------------
# The merged view = the kernel's

def _load(store: Store, image: BuiltImage) -> Image:
    """Load a built image into the store (needs the unpacker)."""
    (loaded,) = load(store, image.source)
    return loaded


def test_edge_layers_match_kernel_overlay(mounts: Mounts, edge_tar_layers: list[Path], tmp_path: Path) -> None:
    """The edge image's layers as GNU tar extracts them (overlay form), mounted with lowerdir=."""
    from _oracles import kernel_overlay

    mounts.mount(edge_tar_layers[::-1], tmp_path / "mnt")
    ours = snapshot(tmp_path / "mnt")
    with kernel_overlay(edge_tar_layers[::-1], tmp_path / "kernel") as kmnt:
        kernel = snapshot(kmnt)
    assert len(ours) > 50
    assert_same_tree(ours, kernel, names=("layerfs", "kernel"))


def test_edge_image_matches_kernel_overlay(mounts: Mounts, edge_image: BuiltImage, tmp_path: Path) -> None:  # noqa: F811
    """The edge image loaded into the store and mounted by ID."""
    from _oracles import kernel_overlay

    image = _load(mounts.store, edge_image)
    layers = mounts.store.layer_dirs(image)
    mounts.mount(image.id, tmp_path / "mnt")
    ours = snapshot(tmp_path / "mnt")
    with kernel_overlay(layers[::-1], tmp_path / "kernel") as kmnt:
        kernel = snapshot(kmnt)
    assert len(ours) > 50
    assert_same_tree(ours, kernel, names=("layerfs", "kernel"))


@pytest.mark.parametrize("name", list(CASES))
def test_lowerdir_mount_matches_kernel_overlay(name: str, mounts: Mounts, tmp_path: Path) -> None:
    from _oracles import kernel_overlay

    ours = build_stack(tmp_path, CASES[name], kernel_form=False)  # OCI .wh. markers as they are
    theirs = build_stack(tmp_path, CASES[name], kernel_form=True)
    mounts.mount(ours[::-1], tmp_path / "mnt")
    merged = snapshot(tmp_path / "mnt")
    with kernel_overlay(theirs[::-1], tmp_path / "kernel") as kmnt:
        kernel = snapshot(kmnt)
    assert_same_tree(merged, kernel, names=("layerfs", "kernel"))


# ---------------------------------------------------------------------------------------------
# Lifecycle

def test_cli_mount_mounts_umount(mounts: Mounts, tmp_path: Path) -> None:
    layers = build_stack(tmp_path, [["f a 1", "f d/b 2"], ["f d/c 3", "W a"]], kernel_form=False)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    lower = ":".join(str(p) for p in layers[::-1])
    run_layerfs("mount", "-o", f"lowerdir={lower}", str(mnt), root=mounts.store.root)
    pid = mounts.track(mnt)
    assert sorted(os.listdir(mnt)) == ["d"]
    assert sorted(os.listdir(mnt / "d")) == ["b", "c"]
    listed = run_layerfs("mounts", root=mounts.store.root).stdout
    assert str(mnt) in listed and f"lowerdir={lower}" in listed
    stats = run_layerfs("mount-stats", str(mnt), root=mounts.store.root).stdout
    assert '"readdirplus"' in stats or '"readdir"' in stats  # a listing was served
    run_layerfs("umount", str(mnt), root=mounts.store.root)
    assert not _is_mounted(mnt)
    assert not _proc.pid_alive(pid), "umount returned before the daemon exited"


def test_daemon_keeps_none_of_the_callers_files_open(mounts: Mounts, tmp_path: Path) -> None:
    """A program that mounts and exits must not leave its pipes held open by the daemon: a
    reader waiting for EOF (a shell pipeline, a test runner capturing output) would hang."""
    layers = build_stack(tmp_path, [["f a 1"]], kernel_form=False)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = (f"import os, sys; from layerfs._mount import daemon as _mount; r, w = os.pipe(); "
              f"os.set_inheritable(w, True); "
              f"print(os.fstat(w).st_ino); sys.stdout.flush(); "
              f"_mount.mount(None, [{str(layers[0])!r}], {str(mnt)!r})")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    callers = {f"pipe:[{os.fstat(f.fileno()).st_ino}]" for f in (proc.stdout, proc.stderr)}
    try:
        out, err = proc.communicate(timeout=30)  # EOF comes only when nobody holds the pipe
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the daemon kept the caller's stdout pipe open")
    finally:
        mounts.points.append(mnt)
    assert proc.returncode == 0, err
    callers.add(f"pipe:[{int(out.split()[0])}]")  # the extra pipe the script opened
    pid = mounts.track(mnt)
    held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    assert not held & callers, held & callers


def test_image_mount_is_recorded_and_blocks_rm(mounts: Mounts, edge_image: BuiltImage,  # noqa: F811
                                               tmp_path: Path) -> None:
    from layerfs import Conflict

    image = _load(mounts.store, edge_image)
    handle = mounts.mount(image.id, tmp_path / "mnt")
    recs = mounts.store.mounts()
    assert [(r.image_id, r.mountpoint, r.pid) for r in recs] == [(image.id, str(tmp_path / "mnt"), handle.pid)]
    with pytest.raises(Conflict), mounts.store.writer() as w:
        w.remove(image.id, force=True)
    _mount.umount(tmp_path / "mnt", store=mounts.store)
    assert mounts.store.mounts() == []


def test_remount_reuses_the_index(mounts: Mounts, edge_image: BuiltImage, tmp_path: Path) -> None:  # noqa: F811
    image = _load(mounts.store, edge_image)
    mounts.mount(image.id, tmp_path / "m1")
    (idx,) = list(mounts.store.state_dir("merged").iterdir())
    before = os.stat(idx)
    inodes = {p: os.lstat(tmp_path / "m1" / p).st_ino for p in ("bin", "bin/busybox", "etc/passwd", "edge/hl1")}
    _mount.umount(tmp_path / "m1", store=mounts.store)
    started = time.perf_counter()
    handle = mounts.mount(image.id, tmp_path / "m2")
    elapsed = time.perf_counter() - started
    after = os.stat(idx)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "index rebuilt"
    assert {p: os.lstat(tmp_path / "m2" / p).st_ino for p in inodes} == inodes
    assert handle.statistics().index_seconds < 0.05
    assert elapsed < 2.0  # milliseconds in practice; generous for a loaded CI machine


@pytest.mark.parametrize("inside", ["lowerdir", "upperdir", "workdir"])
def test_a_mount_point_inside_its_own_directories_is_refused(inside: str, lifecycle: Mounts, tmp_path: Path) -> None:
    """A mount point inside a layer (or the upper or work dir) would have the engine, which reads
    them while it serves, read through its own mount (a merge that waits on itself): refused in
    one line naming both, nothing mounted."""
    (layer,) = build_stack(tmp_path, [["f a 1", "d sub"]], kernel_form=False)
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    mnt = {"lowerdir": layer / "sub", "upperdir": upper / "mnt", "workdir": work / "mnt"}[inside]
    mnt.mkdir(exist_ok=True)
    opts = f"lowerdir={layer},upperdir={upper},workdir={work}"
    proc = subprocess.run([sys.executable, "-m", "layerfs", "mount", "-o", opts, str(mnt)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0
    (line,) = proc.stderr.strip().splitlines()
    assert f"mount point {mnt}: inside the {inside}" in line, line
    assert not _is_mounted(mnt)


def test_statistics_asked_while_the_daemon_starts_never_stop_it(lifecycle: Mounts, tmp_path: Path) -> None:
    """``mount-stats`` (SIGUSR1) may come the moment a daemon has written its record, while it
    writes its statistics itself: each mount must come up and stay.  Two writes of the one
    temporary name once made the later fail, and the failure stopped the mount (the mount
    command then said "the daemon exited before it was ready", or the mount vanished after it)."""
    (layer,) = build_stack(tmp_path, [["f d/f 1"]], kernel_form=False)
    for i in range(10):
        mnt = tmp_path / f"m{i}"
        mnt.mkdir()
        record = _mount.runtime_dir(mnt) / "mount.json"
        lifecycle.points.append(mnt)
        proc = subprocess.Popen([sys.executable, "-m", "layerfs", "mount", "-o", f"lowerdir={layer}", str(mnt)],
                                stderr=subprocess.PIPE, text=True)
        started, deadline = time.monotonic(), time.monotonic() + 30
        # from the daemon's record on, while the command runs and 0.3 s after it returned
        while time.monotonic() < deadline and (proc.poll() is None or time.monotonic() < started + 0.3):
            with contextlib.suppress(OSError, ValueError, KeyError, ProcessLookupError):
                os.kill(int(json.loads(record.read_text())["pid"]), signal.SIGUSR1)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        time.sleep(0.2)  # a daemon stopped by a failed write unmounts within this
        assert _is_mounted(mnt), f"mount {i} vanished"
        assert os.listdir(mnt / "d") == ["f"]
        lifecycle.track(mnt)


def test_sigterm_unmounts_cleanly(mounts: Mounts, tmp_path: Path) -> None:
    layers = build_stack(tmp_path, [["f a 1"]], kernel_form=False)
    handle = mounts.mount(layers, tmp_path / "mnt")
    assert os.listdir(tmp_path / "mnt") == ["a"]
    os.kill(handle.pid, signal.SIGTERM)
    deadline = time.monotonic() + DAEMON_EXIT_TIMEOUT
    while (_proc.pid_alive(handle.pid) or _is_mounted(tmp_path / "mnt")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _is_mounted(tmp_path / "mnt")
    assert not _proc.pid_alive(handle.pid)


@pytest.mark.parametrize("case", ["missing", "file", "not empty", "already mounted"])
def test_bad_mount_points(case: str, mounts: Mounts, tmp_path: Path) -> None:
    layers = build_stack(tmp_path, [["f a 1"]], kernel_form=False)
    mnt = tmp_path / "mnt"
    expect = {"missing": "does not exist", "file": "is not a directory", "not empty": "is not empty",
              "already mounted": "already a mount point"}[case]
    if case == "file":
        mnt.write_text("x")
    elif case == "not empty":
        mnt.mkdir()
        (mnt / "x").write_text("x")
    elif case == "already mounted":
        mounts.mount(layers, mnt)
    with pytest.raises(MountError, match=expect):
        _mount.mount(mounts.store, [str(layers[0])], mnt)
    # the CLI says the same in one line
    proc = run_layerfs("mount", "-o", f"lowerdir={layers[0]}", str(mnt), root=mounts.store.root, check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("Error: ") and expect in proc.stderr


def test_busy_umount_is_refused(mounts: Mounts, tmp_path: Path) -> None:
    layers = build_stack(tmp_path, [["f a 1"]], kernel_form=False)
    handle = mounts.mount(layers, tmp_path / "mnt")
    with open(tmp_path / "mnt" / "a", "rb"):
        with pytest.raises(MountError, match="busy"):
            _mount.umount(tmp_path / "mnt")
        assert _proc.pid_alive(handle.pid)
    _mount.umount(tmp_path / "mnt")
    assert not _proc.pid_alive(handle.pid)


def test_umount_of_something_not_mounted(tmp_path: Path) -> None:
    with pytest.raises(MountError, match="not mounted"):
        _mount.umount(tmp_path)


def test_daemon_survives_failed_requests(mounts: Mounts, tmp_path: Path) -> None:
    layers = build_stack(tmp_path, [["f a 1", "l s a", "d d"]], kernel_form=False)
    handle = mounts.mount(layers, tmp_path / "mnt")
    mnt = tmp_path / "mnt"
    expected = [
        (lambda: os.stat(mnt / "missing"), errno.ENOENT),
        (lambda: os.stat(mnt / "a" / "x"), errno.ENOTDIR),
        (lambda: os.readlink(mnt / "a"), errno.EINVAL),
        (lambda: os.getxattr(mnt / "a", "user.none"), errno.ENODATA),
        (lambda: os.open(mnt / "a", os.O_WRONLY), errno.EROFS),
        (lambda: os.open(mnt / "new", os.O_CREAT | os.O_WRONLY), errno.EROFS),
        (lambda: os.mkdir(mnt / "d" / "x"), errno.EROFS),
        (lambda: os.stat(mnt / ("n" * 256)), errno.ENAMETOOLONG),
        (lambda: os.listdir(mnt / "a"), errno.ENOTDIR),
    ]
    for call, code in expected:
        with pytest.raises(OSError) as err:
            call()
        assert err.value.errno == code, call
    assert (mnt / "a").read_text() == "1\n"
    assert _proc.pid_alive(handle.pid)
    stats = handle.statistics()
    assert stats.requests.get("lookup", 0) >= 1 and stats.total > 0


def test_name_max_and_statfs(mounts: Mounts, tmp_path: Path) -> None:
    layers = build_stack(tmp_path, [[f"f {LONG} x"]], kernel_form=False)
    mounts.mount(layers, tmp_path / "mnt")
    st = os.statvfs(tmp_path / "mnt")
    assert st.f_namemax == 255 and st.f_bsize > 0 and st.f_blocks > 0
    assert (tmp_path / "mnt" / LONG).read_text() == "x\n"
    with pytest.raises(OSError) as err:
        os.lstat(tmp_path / "mnt" / (LONG + "n"))
    assert err.value.errno == errno.ENAMETOOLONG


def test_hardlinks_dots_and_xattrs(mounts: Mounts, tmp_path: Path) -> None:
    layers = build_stack(tmp_path, [["f a x", "h b a", "f c y", "x c user.k=v",
                                     "x c trusted.overlay.opaque=y", "x c trusted.t=1"],
                                    ["f d/e z"]], kernel_form=False)
    mounts.mount(layers[::-1], tmp_path / "mnt")
    mnt = tmp_path / "mnt"
    a, b, c = (os.lstat(mnt / n) for n in "abc")
    assert a.st_ino == b.st_ino != c.st_ino and a.st_nlink == b.st_nlink == 2
    listing = subprocess.run(["ls", "-a1f", str(mnt)], capture_output=True, text=True, check=True).stdout.split()
    assert sorted(listing) == [".", "..", "a", "b", "c", "d"]
    inos = {line.split()[1]: int(line.split()[0]) for line in
            subprocess.run(["ls", "-ai1", str(mnt)], capture_output=True, text=True, check=True).stdout.splitlines()}
    assert inos["a"] == a.st_ino and inos["."] == os.lstat(mnt).st_ino  # d_ino == st_ino
    assert sorted(os.listxattr(mnt / "c")) == ["trusted.t", "user.k"]
    assert os.getxattr(mnt / "c", "user.k") == b"v"
    with pytest.raises(OSError) as err:
        os.getxattr(mnt / "c", "trusted.overlay.opaque")
    assert err.value.errno == errno.ENODATA


def test_big_file_reads(mounts: Mounts, tmp_path: Path) -> None:
    layer = tmp_path / "l0"
    layer.mkdir()
    data = os.urandom(3 << 20) + b"tail"
    (layer / "big").write_bytes(data)
    mounts.mount([layer], tmp_path / "mnt")
    assert (tmp_path / "mnt" / "big").read_bytes() == data
    fd = os.open(tmp_path / "mnt" / "big", os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 1 << 20) == data[1 << 20:(1 << 20) + 4096]
        assert os.pread(fd, 100, len(data) - 4) == b"tail"
    finally:
        os.close(fd)


def test_open_backing_files_stay_bounded(mounts: Mounts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading more files than the fd cache holds evicts fds instead of failing with EMFILE."""
    monkeypatch.setenv("LAYERFS_MAX_OPEN_FILES", "8")
    layer = tmp_path / "l0"
    (layer / "d").mkdir(parents=True)
    for i in range(60):
        (layer / "d" / f"f{i:02d}").write_bytes(b"%d\n" % i * (i + 1))
    handle = mounts.mount([layer], tmp_path / "mnt", engine="c")  # the C engine's own fd table
    d = tmp_path / "mnt" / "d"
    for _ in range(2):  # the second round rereads from the page cache (keep_cache): no READs
        for i in range(60):
            assert (d / f"f{i:02d}").read_bytes() == b"%d\n" % i * (i + 1)
    # files read at once, more than the cache holds: every READ pins its fd
    fds = [os.open(d / f"f{i:02d}", os.O_RDONLY) for i in range(20)]
    try:
        for i, fd in enumerate(fds):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            assert os.pread(fd, 1 << 20, 0) == b"%d\n" % i * (i + 1)
    finally:
        for fd in fds:
            os.close(fd)
    # concurrent READs (the engine runs several request threads) while fds are being evicted
    import concurrent.futures

    def reread(i: int) -> bool:
        fd = os.open(d / f"f{i % 60:02d}", os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            return os.pread(fd, 1 << 20, 0) == b"%d\n" % (i % 60) * (i % 60 + 1)
        finally:
            os.close(fd)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert all(pool.map(reread, range(600)))
    stats = handle.statistics()
    assert stats.requests.get("read", 0) >= 60
    assert 0 < stats.open_files <= 8
    assert not stats.errors


def test_warm_listing_sends_no_request(mounts: Mounts, tmp_path: Path) -> None:
    """Listings are cached by the kernel (cache_readdir, or no OPENDIR at all): a second walk is free."""
    layers = build_stack(tmp_path, [["f a/b/c 1", "f a/d 2", "l a/s c"], ["f a/e 3", "d x/y"]], kernel_form=False)
    handle = mounts.mount(layers[::-1], tmp_path / "mnt", engine="c")  # pyfuse3 cannot cache listings
    first = sorted(p for p, _, _ in os.walk(tmp_path / "mnt"))
    before = handle.statistics().requests
    assert sorted(p for p, _, _ in os.walk(tmp_path / "mnt")) == first
    after = handle.statistics().requests
    listing_ops = ("opendir", "readdir", "readdirplus", "releasedir")
    assert {op: after.get(op, 0) - before.get(op, 0) for op in listing_ops} == dict.fromkeys(listing_ops, 0)


# ---------------------------------------------------------------------------------------------
# -o lowerdir= stacks, merged lazily by the C engine (csrc/merge.h, lfs_lazy_open)

def _wide_stack(base: Path, *, kernel_form: bool) -> list[Path]:
    """Three layers (base first) of 31 directories with whiteouts, an opaque dir and a hard link."""
    bottom = [f"f d{i:02d}/s/f{j} {i}{j}" for i in range(30) for j in range(3)] + ["f deep/a/b/c/file x"]
    middle = [f"f d{i:02d}/g {i}" for i in range(0, 30, 2)] + ["W d01", "O d02", "f d02/new y"]
    top = ["f d03/s/f9 top", "w d04/s/f0", "f d06/hl linked", "h d05/s/hl d06/hl"]
    return build_stack(base, [bottom, middle, top], kernel_form=kernel_form)


def test_a_lowerdir_mount_merges_each_directory_when_first_needed(lifecycle: Mounts, tmp_path: Path) -> None:
    """Plain dirs are not content-addressed, so their merged tree cannot be kept between mounts:
    mounting reads the layers' roots only, a directory is merged when a request first needs it
    (the way to one file reads the directories on its path, not the whole tree), each one once,
    and the view is the kernel overlay's."""
    from _oracles import kernel_overlay

    handle = lifecycle.mount(_wide_stack(tmp_path, kernel_form=False)[::-1], tmp_path / "mnt")

    def merged() -> int:
        return handle.statistics().requests.get("dir_merge", 0)

    assert merged() == 1  # the root, at mount
    assert (tmp_path / "mnt/deep/a/b/c/file").read_text() == "x\n"
    on_the_way = merged()
    assert 2 <= on_the_way <= 5, on_the_way  # the root, deep, a, b, c: not the 60 others
    ours = snapshot(tmp_path / "mnt")
    dirs = 1 + sum(len(ds) for _, ds, _ in os.walk(tmp_path / "mnt"))
    assert dirs > 60
    assert merged() == dirs  # every directory once, none twice
    with kernel_overlay(_wide_stack(tmp_path, kernel_form=True)[::-1], tmp_path / "kernel") as kmnt:
        kernel = snapshot(kmnt)
    assert_same_tree(ours, kernel, names=("layerfs", "kernel"))


def test_first_requests_in_parallel_see_one_tree(lifecycle: Mounts, tmp_path: Path) -> None:
    """Walks started together on a fresh mount make the engine merge directories from several
    request threads at once, while others read what is merged: each walk sees the kernel's view."""
    import concurrent.futures

    from _oracles import kernel_overlay

    with kernel_overlay(_wide_stack(tmp_path, kernel_form=True)[::-1], tmp_path / "kernel") as kmnt:
        kernel = snapshot(kmnt)
    for round_ in range(3):
        mnt = tmp_path / f"mnt{round_}"
        lifecycle.mount(_wide_stack(tmp_path / f"r{round_}", kernel_form=False)[::-1], mnt)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            walks = list(pool.map(snapshot, [mnt] * 4))
        for ours in walks:
            assert_same_tree(ours, kernel, names=("layerfs", "kernel"))


def test_a_directory_that_cannot_be_merged_fails_its_request_not_the_mount(lifecycle: Mounts, tmp_path: Path) -> None:
    """A lowerdir= tree is the caller's and may change under the mount: a directory swapped for a
    symlink after mounting is never followed (ELOOP for the request that needed it), nothing of
    the failed merge stays, and once the directory is back a new request merges it."""
    (layer,) = build_stack(tmp_path, [["f a/b 1", "f c 2"]], kernel_form=False)
    mnt = tmp_path / "mnt"
    lifecycle.mount([layer], mnt)
    (layer / "a").rename(layer / "a.real")
    (layer / "a").symlink_to("a.real")
    with pytest.raises(OSError) as err:
        os.listdir(mnt / "a")
    assert err.value.errno == errno.ELOOP
    (layer / "a").unlink()
    (layer / "a.real").rename(layer / "a")
    assert os.listdir(mnt / "a") == ["b"]
    assert (mnt / "a/b").read_text() == "1\n"
    assert sorted(os.listdir(mnt)) == ["a", "c"]


def test_non_root_user_mounts_through_fusermount(tmp_path: Path) -> None:
    from conftest import require

    require_root()
    require_fuse()
    # libfuse opens /dev/fuse itself before it falls back to fusermount3: Debian's udev rule makes
    # it 0666; some containers leave it 0600, and then no user but root can mount any FUSE fs.
    require(os.stat("/dev/fuse").st_mode & 0o006 == 0o006, "/dev/fuse usable by every user (mode 0666)")
    base = Path(f"/tmp/layerfs-nonroot-{os.getpid()}")
    base.mkdir(mode=0o755)
    try:
        os.chmod(base, 0o777)
        layers = build_stack(base, [["f a 1", "f d/b 2"], ["W a", "f d/c 3"]], kernel_form=False)
        mnt, runtime, root = base / "mnt", base / "run", base / "store"
        for p in (mnt, runtime, root):
            p.mkdir()
        subprocess.run(["chown", "-R", "65534:65534", str(base)], check=True)
        env = dict(os.environ, LAYERFS_RUNTIME_DIR=str(runtime), HOME=str(base))
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "layerfs",
                     "--root", str(root)]
        lower = f"lowerdir={layers[1]}:{layers[0]}"
        proc = subprocess.run([*as_nobody, "mount", "-o", lower, str(mnt)], capture_output=True, text=True,
                              env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        try:
            # without allow_other only the mounting user may look inside (root included)
            ls = subprocess.run([*as_nobody[:4], "ls", "-A", str(mnt), str(mnt / "d")], capture_output=True,
                                text=True, timeout=30)
            assert ls.returncode == 0 and ls.stdout.split() == [f"{mnt}:", "d", f"{mnt / 'd'}:", "b", "c"], ls
        finally:
            proc = subprocess.run([*as_nobody, "umount", str(mnt)], capture_output=True, text=True, env=env,
                                  timeout=60)
            if proc.returncode != 0:
                subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
        assert proc.returncode == 0, proc.stderr
        assert not _is_mounted(mnt)
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


#: What a reader sees of each path of the denied-directory tree, as JSON (run as the reader).
_PROBE = """\
import json, os, sys
mnt, writable = sys.argv[1], sys.argv[2] == "rw"
out = {}
def probe(what, fn):
    try:
        got = fn()
        out[what] = "ok" if got is None else got
    except OSError as err:
        out[what] = os.strerror(err.errno)
at = lambda p: os.path.join(mnt, p)
for d in [".", "pub", "secret", "secret/inner", "acl", "pub2"]:
    probe("ls " + d, lambda d=d: sorted(os.listdir(at(d))))
for f in ["pub/f", "secret/inner/f", "secret/below", "acl/g"]:
    probe("read " + f, lambda f=f: open(at(f)).read())
for d in ["secret", "acl"]:
    probe("mode " + d, lambda d=d: oct(os.stat(at(d)).st_mode))
if writable:
    probe("rmdir acl", lambda: os.rmdir(at("acl")))
    probe("create acl/x", lambda: open(at("acl/x"), "w").close())
    probe("rmdir pub2", lambda: os.rmdir(at("pub2")))
    probe("mkdir new", lambda: os.mkdir(at("new")))
    probe("ls . after", lambda: sorted(os.listdir(mnt)))
print(json.dumps(out, sort_keys=True))
"""

_AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _acl_denying(uid: int) -> bytes:
    """A POSIX access ACL (the ``system.posix_acl_access`` value, as the kernel's
    include/uapi/linux/posix_acl_xattr.h lays it out) of mode 0755 that gives ``uid`` nothing."""
    def entry(tag: int, perm: int, qualifier: int = 0xFFFFFFFF) -> bytes:
        return struct.pack("<HHI", tag, perm, qualifier)
    # version 2; owner rwx, the user nothing, group r-x, mask r-x, others r-x
    return struct.pack("<I", 2) + b"".join([entry(0x01, 7), entry(0x02, 0, uid), entry(0x04, 5), entry(0x10, 5),
                                            entry(0x20, 5)])


@pytest.mark.parametrize("engine,writable", [("c", False), ("pyfuse3", False), ("c", True)])
def test_a_directory_the_mounter_may_not_read_answers_eacces(engine: str, writable: bool, tmp_path: Path) -> None:
    """A lower directory the mounting user may not list failed the whole mount.  The kernel
    overlay mounts it and answers EACCES for that directory alone; layerfs, mounted by that user
    (nobody), must answer as the kernel overlay does for the same reader: mounted by root
    (`secret`, 0700 and another user's: the mode bits refuse), and mounted by nobody in a user
    namespace (`acl`, 0755 with an ACL that gives nobody nothing: FUSE checks no ACL, so the
    daemon itself must refuse, from what the index records)."""
    require_root()
    require_fuse()
    require_tool("setpriv", "unshare")
    require(os.access("/usr/bin/python3", os.X_OK), "the system's /usr/bin/python3")
    require(os.stat("/dev/fuse").st_mode & 0o006 == 0o006, "/dev/fuse usable by every user (mode 0666)")
    userns = subprocess.run([*_AS_NOBODY, "unshare", "-Urm", "true"], capture_output=True)
    require(userns.returncode == 0, "unprivileged user namespaces (unshare -Urm)")
    base = Path(f"/tmp/layerfs-denied-{os.getpid()}")
    base.mkdir(mode=0o755)
    try:
        top, low = base / "top", base / "low"
        for path, text in [(top / "pub" / "f", "p\n"), (top / "secret" / "inner" / "f", "s\n"),
                           (low / "secret" / "below", "b\n"), (top / "acl" / "g", "g\n")]:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        (low / "pub2").mkdir()
        run = {n: base / n for n in ("mnt", "kmnt", "run", "store", "up", "work", "kup", "kwork")}
        for p in run.values():
            p.mkdir()
        subprocess.run(["chown", "-R", "65534:65534", str(base)], check=True)
        os.chown(top / "secret", 4243, 4243)  # another user's, 0700: mode bits refuse
        os.chmod(top / "secret", 0o700)
        os.chown(top / "acl", 0, 0)  # 0755, but its ACL refuses nobody: only the daemon can tell
        os.setxattr(top / "acl", "system.posix_acl_access", _acl_denying(65534))
        lower = f"lowerdir={top}:{low}"
        # the probe runs after unshare, which finds its program by path: this venv's python may lie
        # under a home that nobody cannot search (setpriv opens its program before dropping root)
        probe = ["/usr/bin/python3", "-c", _PROBE]
        mode = "rw" if writable else "ro"

        # layerfs, mounted by nobody
        env = dict(os.environ, LAYERFS_RUNTIME_DIR=str(run["run"]), HOME=str(base))
        layerfs = [*_AS_NOBODY, sys.executable, "-m", "layerfs", "--root", str(run["store"])]
        opts = lower + (f",upperdir={run['up']},workdir={run['work']}" if writable else "")
        proc = subprocess.run([*layerfs, "mount", "--engine", engine, "-o", opts, str(run["mnt"])],
                              capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        try:
            got = subprocess.run([*_AS_NOBODY, *probe, str(run["mnt"]), mode], capture_output=True, text=True,
                                 timeout=60, check=True)
        finally:
            proc = subprocess.run([*layerfs, "umount", str(run["mnt"])], capture_output=True, text=True, env=env,
                                  timeout=60)
            if proc.returncode != 0:
                subprocess.run(["fusermount3", "-uz", str(run["mnt"])], capture_output=True)
        assert proc.returncode == 0, proc.stderr
        ours = json.loads(got.stdout)
        assert ours["ls ."] == ["acl", "pub", "pub2", "secret"] and ours["ls pub"] == ["f"], ours
        assert ours["ls secret"] == ours["ls acl"] == ours["read acl/g"] == "Permission denied", ours

        # the kernel overlay, mounted by nobody in a user namespace: the mounter's rights fail alike.
        # A writable one needs userxattr, and then the kernel reads each lower directory's
        # user.overlay.* xattrs at lookup, which needs read permission: it refuses even the stat
        # of a directory the mounter may not read, where layerfs shows its attributes.
        kopts = lower + (f",upperdir={run['kup']},workdir={run['kwork']},userxattr" if writable else "")
        script = 'mount -t overlay -o "$1" none "$2" && shift 2 && exec "$@"'
        kernel = subprocess.run([*_AS_NOBODY, "unshare", "-Urm", "sh", "-c", script, "sh", kopts, str(run["kmnt"]),
                                 *probe, str(run["kmnt"]), mode], capture_output=True, text=True, timeout=60)
        assert kernel.returncode == 0, kernel.stderr
        theirs = json.loads(kernel.stdout)
        if writable:
            for key in ("mode secret", "mode acl"):
                assert theirs.pop(key) == "Permission denied" and ours.pop(key).startswith("0o40"), key
        assert ours == theirs

        # the kernel overlay mounted by root, read by nobody: the same, but for the ACL (FUSE
        # enforces none, "noacl" in layerfs/_cli/mount.py: root's layerfs mount would serve `acl`)
        if not writable:
            with contextlib.ExitStack() as stack:
                subprocess.run(["mount", "-t", "overlay", "-o", lower, "none", str(run["kmnt"])], check=True)
                stack.callback(subprocess.run, ["umount", str(run["kmnt"])], check=True)
                by_root = subprocess.run([*_AS_NOBODY, *probe, str(run["kmnt"]), mode], capture_output=True,
                                         text=True, timeout=60, check=True)
            theirs = json.loads(by_root.stdout)
            assert {k: v for k, v in ours.items() if "acl" not in k} == {k: v for k, v in theirs.items()
                                                                       if "acl" not in k}
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


# ---------------------------------------------------------------------------------------------
# Backing files are opened inside their layer; a damaged stored index is rebuilt, not served.

def test_backing_files_are_opened_inside_their_layer(mounts: Mounts, tmp_path: Path) -> None:
    """A ``lowerdir=`` tree is the caller's and may change under a root daemon: a directory
    swapped for a symlink after the mount must not lead an open out of the layer."""
    layer, outside = tmp_path / "layer", tmp_path / "outside"
    (layer / "d").mkdir(parents=True)
    (layer / "d" / "f").write_text("inside\n")
    outside.mkdir()
    (outside / "f").write_text("OUTSIDE\n")
    mounts.mount([layer], tmp_path / "mnt")
    assert os.listdir(tmp_path / "mnt" / "d") == ["f"]  # the kernel now knows d/f
    os.rename(layer / "d", tmp_path / "d.moved")
    os.symlink(outside, layer / "d")
    with pytest.raises(OSError) as err:  # before: "OUTSIDE" (cut to the 7 bytes the index says)
        (tmp_path / "mnt" / "d" / "f").read_text()
    assert err.value.errno == errno.ELOOP  # the layer changed under the mount: refused


# ---------------------------------------------------------------------------------------------
# Setuid bits and device nodes of an image are inert unless asked for (-o suid, -o dev).

@contextlib.contextmanager
def _public_dir(tag: str) -> Iterator[Path]:
    """A directory every user can reach (tmp_path's parents are root's alone), removed after."""
    base = Path(f"/tmp/layerfs-{tag}-{os.getpid()}")
    base.mkdir(mode=0o755)
    try:
        os.chmod(base, 0o755)
        yield base
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False)


def _privileged_layer(base: Path) -> Path:
    """A layer holding a setuid-root ``id`` and a character device (1:3, the null device)."""
    layer = base / "layer"
    (layer / "bin").mkdir(parents=True)
    (layer / "dev").mkdir()
    shutil.copy2("/usr/bin/id", layer / "bin" / "id")
    os.chown(layer / "bin" / "id", 0, 0)
    os.chmod(layer / "bin" / "id", 0o4755)
    os.mknod(layer / "dev" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return layer


def _effective_uid_as_nobody(program: Path) -> str:
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(program), "-u"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def _mount_flags(mnt: Path) -> set[str]:
    real = os.path.realpath(mnt)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == real:
                return set(fields[5].split(","))
    raise AssertionError(f"{mnt} is not mounted")


@pytest.mark.parametrize("how", ["default", "-o suid,dev"])
def test_setuid_and_devices_of_an_image(how: str, mounts: Mounts) -> None:
    """By default (``nosuid,nodev``, as for untrusted media) the setuid bit shows but gives no
    privilege, and a device node cannot be opened; ``-o suid,dev`` allow both (chroot use)."""
    require_tool("setpriv")
    with _public_dir("privileges") as base:
        layer, mnt = _privileged_layer(base), base / "mnt"
        mnt.mkdir()
        args = ["-o", f"lowerdir={layer}", str(mnt)] + (["-o", "suid,dev"] if how != "default" else [])
        run_layerfs("mount", *args, root=mounts.store.root)
        mounts.track(mnt)
        try:
            allowed = how != "default"
            flags = _mount_flags(mnt)
            assert ("nosuid" in flags, "nodev" in flags) == (not allowed, not allowed), flags
            assert os.stat(mnt / "bin" / "id").st_mode & stat.S_ISUID
            assert _effective_uid_as_nobody(layer / "bin" / "id") == "0"  # the binary does what it says
            assert _effective_uid_as_nobody(mnt / "bin" / "id") == ("0" if allowed else "65534")
            if allowed:
                with open(mnt / "dev" / "null", "rb") as f:
                    assert f.read() == b""
            else:
                with pytest.raises(OSError) as err:
                    open(mnt / "dev" / "null", "rb")
                assert err.value.errno in (errno.EACCES, errno.EPERM, errno.ENXIO)
        finally:
            _mount.umount(mnt, store=mounts.store)


def test_suid_and_dev_are_explained_in_help(tmp_path: Path) -> None:
    helptext = run_layerfs("mount", "--help", root=tmp_path).stdout
    assert "nosuid" in helptext and "-o suid" in helptext and "-o dev" in helptext


def test_mount_options_keep_suid_and_dev_off_unless_asked() -> None:
    from layerfs._mount import cache as _cache

    assert {"nosuid", "nodev", "allow_other"} <= _cache.mount_options(fsname="x", euid=0)
    assert {"suid", "dev"} <= _cache.mount_options(fsname="x", euid=0, suid=True, dev=True)
    user = _cache.mount_options(fsname="x", euid=1000)
    assert {"nosuid", "nodev"} <= user and "allow_other" not in user
    with pytest.raises(MountError, match="-o suid: only root"):
        _cache.mount_options(fsname="x", euid=1000, suid=True)


@pytest.mark.parametrize("values,expected", [
    ([], (False, False)), (["suid"], (True, False)), (["dev,ro"], (False, True)), (["suid,dev"], (True, True)),
    (["suid", "nosuid"], (False, False)), (["nodev,dev"], (False, True)),
])
def test_suid_and_dev_options_parse_as_mount_8_does(values: list[str], expected: tuple[bool, bool]) -> None:
    from layerfs._cli.mount import _parse_options

    opts = _parse_options(values)
    assert (opts.suid, opts.dev) == expected and opts.lowerdir is None


# The store's side of a mount's life: records, leases, failures, other namespaces (issue 8)

@pytest.fixture
def lifecycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mounts]:
    """Like ``mounts``, on the C engine only: these tests are about the life around the daemon."""
    require_root()
    require_fuse()
    monkeypatch.setenv("LAYERFS_ENGINE", "c")
    m = Mounts(Store(tmp_path / "store"), "c")
    yield m
    problems = m.teardown()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


def _small_image(store: Store, tmp_path: Path, tag: str = "1.0") -> Image:
    from test_store import BASE, make_layout

    make_layout(tmp_path / f"app-{tag}", [BASE, {"app/main": b"app"}], tag=tag)
    (image,) = load(store, f"oci:{tmp_path / f'app-{tag}'}")
    return image


def _layerfs(root: Path, *args: str, strace: Sequence[str] = ()) -> subprocess.Popen[str]:
    """Start the CLI (under ``strace`` with the given arguments, if any)."""
    argv = [sys.executable, "-m", "layerfs", "--root", str(root), *args]
    if strace:
        argv = ["strace", "-o", "/dev/null", *strace, *argv]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(what: str, condition: Callable[[], object], proc: subprocess.Popen[str] | None = None,
              timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the command ended before {what}: {proc.communicate()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_a_writers_clean_up_spares_the_index_a_mount_is_writing(lifecycle: Mounts, tmp_path: Path) -> None:
    """The first mount of an image writes its merged index without the store lock; a writer
    cleaning up meanwhile must leave that temporary file alone.  strace holds each rename of the
    mount command for 1.5 s, so the temporary index is there while the writer cleans."""
    require_tool("strace")
    store = lifecycle.store
    image = _small_image(store, tmp_path)
    final = f"{image.chain_ids[-1][7:]}.idx"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    lifecycle.points.append(mnt)
    delay = ["-e", "trace=rename,renameat,renameat2", "-e", "inject=rename,renameat,renameat2:delay_enter=1500000"]
    proc = _layerfs(store.root, "mount", image.id, str(mnt), strace=delay)

    def temp_index() -> bool:
        names = [n for d in ("tmp", "state/merged") if (store.root / d).is_dir() for n in os.listdir(store.root / d)]
        return any(".idx" in n and n != final for n in names)

    _wait_for("the temporary index", temp_index, proc)
    with store.writer():
        pass
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lifecycle.track(mnt)
    assert (mnt / "app" / "main").read_bytes() == b"app"
    assert os.listdir(store.state_dir("merged")) == [final]


def _waits_for_lock(pid: int) -> bool:
    """Whether ``pid`` is blocked in flock(2) (a ``->`` line of /proc/locks)."""
    with open("/proc/locks") as f:
        return any(line.split()[1:3] == ["->", "FLOCK"] and line.split()[5] == str(pid) for line in f)


def test_rm_during_a_mount_never_orphans_it(lifecycle: Mounts, tmp_path: Path) -> None:
    """Issue 8 item 5.  The test holds the store lock while `layerfs mount` runs; once the command
    waits for it, the image is removed under that lock.  The command must then end either with a
    recorded mount of an image still there, or failed with no mount and no daemon: never with a
    daemon serving layers that are gone, recorded nowhere."""
    from layerfs import Conflict

    store = lifecycle.store
    image = _small_image(store, tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    lifecycle.points.append(mnt)
    with store.writer() as w:
        proc = _layerfs(store.root, "mount", image.id, str(mnt))
        _wait_for("the mount command to wait for the store lock", lambda: _waits_for_lock(proc.pid), proc)
        try:
            w.remove(image.id)
            removed = True
        except Conflict:
            removed = False
    out, err = proc.communicate(timeout=60)
    if removed:
        assert proc.returncode == 1 and err.startswith("Error: ") and "No such image" in err, err
        assert not _is_mounted(mnt), "a mount of a removed image is still served"
        assert daemons_of(mnt) == []
        assert store.mounts() == []
    else:
        assert proc.returncode == 0, err
        lifecycle.track(mnt)
        assert [m.image_id for m in store.mounts()] == [image.id]


def test_a_mount_that_fails_leaves_no_mount(lifecycle: Mounts, tmp_path: Path) -> None:
    """Issue 8 item 12: with the store full, `layerfs mount` of an image mounted before fails in
    one line, and leaves no mount, no daemon and no record."""
    from test_store import _fill

    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=True)
    mnt = tmp_path / "mnt"
    try:
        lifecycle.store = store = Store(small / "store")
        image = _small_image(store, tmp_path)
        lifecycle.mount(image.id, mnt)  # the merged index is made now: the next mount writes only its record
        _mount.umount(mnt, store=store)
        (store.root / "reserve").unlink()
        _fill(small / "filler")
        proc = run_layerfs("mount", "--read-only", image.id, str(mnt), root=store.root, check=False)
        assert proc.returncode == 1
        [line] = proc.stderr.strip().splitlines()
        assert line.startswith(f"Error: mount {image.id} on {mnt}: ") and "No space left on device" in line, line
        assert not _is_mounted(mnt)
        assert daemons_of(mnt) == []
        assert store.mounts() == [] and os.listdir(store.root / "mounts") == []
    finally:
        if _is_mounted(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        for pid in daemons_of(mnt):
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["umount", str(small)], check=True)


@pytest.mark.parametrize("kind", ["tmpfs", "fuse-overlayfs"])
def test_umount_refuses_what_is_not_a_layerfs_mount(lifecycle: Mounts, tmp_path: Path, kind: str) -> None:
    """Issue 8 item 11: `layerfs umount` of a tmpfs or a fuse-overlayfs mount fails and leaves it."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if kind == "tmpfs":
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], check=True)
    else:
        require_tool("fuse-overlayfs")
        (tmp_path / "lower").mkdir()
        subprocess.run(["fuse-overlayfs", "-o", f"lowerdir={tmp_path / 'lower'}", str(mnt)], check=True)
    try:
        proc = run_layerfs("umount", str(mnt), root=lifecycle.store.root, check=False)
        assert proc.returncode == 1
        assert proc.stderr.startswith(f"Error: {mnt}: not a layerfs mount"), proc.stderr
        assert _is_mounted(mnt)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("where", ["other namespace", "this namespace, with fusectl"])
def test_umount_leaves_the_mounts_of_other_namespaces_served(lifecycle: Mounts, tmp_path: Path, where: str) -> None:
    """Issue 8 item 13: unmounting in one mount namespace must not take the file system from
    another.  `umount` returns at once, says the daemon stays, and never stops it; the daemon
    exits when the kernel closes the connection (the last mount of it gone).

    "other namespace": a process in a copy of our namespace reads the mount before and after our
    umount.  "this namespace, with fusectl": umount runs in a copy where /sys/fs/fuse/connections
    is mounted (the kernel's own record of live connections) and the test's namespace keeps it.
    """
    require_tool("unshare")
    layers = build_stack(tmp_path, [["f a 1"]], kernel_form=False)
    mnt = tmp_path / "mnt"
    handle = lifecycle.mount(layers, mnt)
    layerfs = [sys.executable, "-m", "layerfs", "--root", str(lifecycle.store.root)]
    inner = None
    if where == "other namespace":
        script = ("import sys; print(open(sys.argv[1]).read().strip(), flush=True); sys.stdin.readline(); "
                  "print(open(sys.argv[1]).read().strip(), flush=True)")
        inner = subprocess.Popen(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", script,
                                  str(mnt / "a")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert inner.stdout is not None and inner.stdout.readline().strip() == "1"
        argv = [*layerfs, "umount", str(mnt)]
    else:
        shell = 'mount -t fusectl none /sys/fs/fuse/connections && exec "$@"'
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", shell, "sh", *layerfs, "umount", str(mnt)]
    try:
        started = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        took = time.monotonic() - started
        assert proc.returncode == 0, proc.stderr
        assert took < 5, f"umount took {took:.1f} s"
        assert f"daemon (pid {handle.pid}) keeps serving" in proc.stderr, proc.stderr
        assert _proc.pid_alive(handle.pid)
        if inner is not None:
            assert not _is_mounted(mnt)
            again = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            assert again.returncode == 1 and "not mounted in this mount namespace" in again.stderr, again.stderr
            assert _proc.pid_alive(handle.pid)
            out, _ = inner.communicate("\n", timeout=30)
            assert (inner.returncode, out.strip()) == (0, "1"), "the other namespace lost the mount"
            inner = None
        else:
            assert _is_mounted(mnt) and (mnt / "a").read_text() == "1\n"
            _mount.umount(mnt, store=lifecycle.store)
        deadline = time.monotonic() + DAEMON_EXIT_TIMEOUT
        while _proc.pid_alive(handle.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _proc.pid_alive(handle.pid), "the daemon outlived the last mount of it"
    finally:
        if inner is not None:
            inner.kill()
            inner.wait()


def test_the_runtime_directory_is_private_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 8 item 8: mount records never go to a predictable name in /tmp; a runtime directory
    that another user owns is refused, not used; ours is made mode 0700."""
    require_root()
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    monkeypatch.setenv("LAYERFS_RUNTIME_DIR", str(theirs))
    with pytest.raises(MountError, match="owned by uid 65534"):
        _mount.runtime_dir(tmp_path / "mnt", create=True)
    with pytest.raises(MountError, match="owned by uid 65534"):
        _mount.mounts()
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o755)
    os.chmod(ours, 0o755)
    monkeypatch.setenv("LAYERFS_RUNTIME_DIR", str(ours))
    rundir = _mount.runtime_dir(tmp_path / "mnt", create=True)
    assert rundir.parent == ours and (os.stat(ours).st_mode & 0o777, os.stat(rundir).st_mode & 0o777) == (0o700, 0o700)
    os.symlink(theirs, tmp_path / "link")
    monkeypatch.setenv("LAYERFS_RUNTIME_DIR", str(tmp_path / "link"))
    with pytest.raises(MountError, match="symbolic link"):
        _mount.runtime_dir(tmp_path / "mnt", create=True)
    # A user without $XDG_RUNTIME_DIR: a private directory of theirs, not /tmp/layerfs-<uid>.
    base = Path(f"/tmp/runtime-test-{os.getpid()}")
    base.mkdir(mode=0o755)
    try:
        home = base / "home"
        home.mkdir()
        os.chown(home, 65534, 65534)
        env = {"PATH": os.environ["PATH"], "HOME": str(home)}
        script = ("from layerfs._mount import daemon as d; import os; r = d.runtime_dir('/x', create=True).parent; "
                  "st = os.stat(r); print(r, st.st_uid, oct(st.st_mode & 0o777))")
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                               script], capture_output=True, text=True, env=env, cwd=str(base), timeout=60)
        assert proc.returncode == 0, proc.stderr
        where, uid, mode = proc.stdout.split()
        assert not where.startswith("/tmp/layerfs-") and where.startswith(str(home)), where
        assert (uid, mode) == ("65534", "0o700")
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


@pytest.mark.parametrize("name", ["sha256:" + "ab" * 32, "sha256:abab12"])
def test_mount_of_an_image_id_the_store_lacks_pulls_nothing(tmp_path: Path, name: str) -> None:
    """Issue 13 item 7: an image ID (full, or a short sha256: one) is never a reference to pull."""
    (tmp_path / "mnt").mkdir()
    started = time.monotonic()
    proc = run_layerfs("mount", name, str(tmp_path / "mnt"), root=tmp_path / "store", check=False,
                       env={"LAYERFS_STALL_TIMEOUT": "2"})
    assert proc.returncode == 1
    assert proc.stderr == f"Error: No such image: {name}\n"
    assert time.monotonic() - started < 10


# ---------------------------------------------------------------------------------------------
# A drop-in for fuse-overlayfs (issue 9): `-o` as mount(8), the kernel overlay, fuse-overlayfs and
# containers-storage pass it, and the two ways a mount program is called:
#   layerfs -o OPTIONS TARGET            (containers-storage's mount_program, run in its home dir)
#   layerfs SOURCE TARGET -o OPTIONS     (mount.fuse3, for mount(8) and fstab)

@dataclass(frozen=True)
class OptCase:
    name: str
    values: list[str]
    expected: dict[str, object] | str  # the MountOptions fields that differ from the defaults, or the refusal


OPTION_CASES = [
    OptCase("what containers-storage passes for a container (the trailing comma too)",
            ["lowerdir=/o/l/A:/o/l/B,upperdir=/o/c/diff,workdir=/o/c/work,"],
            {"lowerdir": ["/o/l/A", "/o/l/B"], "upperdir": "/o/c/diff", "workdir": "/o/c/work"}),
    OptCase("podman's --rm and fsync=0", ["lowerdir=/a,volatile,fsync=0"], {"lowerdir": ["/a"]}),
    OptCase("the identity ID mapping",
            ["lowerdir=/a,uidmapping=0:0:4294967295,gidmapping=0:0:10:10:10:100"],
            {"lowerdir": ["/a"], "idmap": _idmap.IdMapping((_idmap.IdRange(0, 0, 4294967295),),
                                                           (_idmap.IdRange(0, 0, 10), _idmap.IdRange(10, 10, 100)))}),
    OptCase("rootless podman's ID mapping (containers-storage joins ranges with colons)",
            ["lowerdir=/a,uidmapping=0:1000:1:1:100000:65536,gidmapping=0:1000:1"],
            {"lowerdir": ["/a"],
             "idmap": _idmap.IdMapping((_idmap.IdRange(0, 1000, 1), _idmap.IdRange(1, 100000, 65536)),
                                       (_idmap.IdRange(0, 1000, 1),))}),
    OptCase("overlapping ID ranges", ["lowerdir=/a,uidmapping=0:1000:10:5:2000:1"], "overlap on the container side"),
    OptCase("a mangled ID mapping", ["uidmapping=0:1"], "not a list of CONTAINER:HOST:SIZE"),
    OptCase("squash_to_uid", ["squash_to_uid=1000"], "squashing owners is not supported"),
    OptCase("an SELinux context without SELinux, its comma quoted",
            ['lowerdir=/a,context="system_u:object_r:container_file_t:s0:c1,c2",ro'],
            {"lowerdir": ["/a"], "read_only": True}),
    OptCase("fuse-overlayfs's harmless options",
            ["static_nlink,noacl,xino=auto,timeout=5,threaded=1,fast_ino=1,noxattrs=1,xattr_permissions=0"], {}),
    OptCase("mount(8)'s and FUSE's", ["rw,defaults,noatime,nodiratime,nofail,_netdev,x-systemd.automount",
                                       "default_permissions,allow_other,exec,async"], {"read_write": True}),
    OptCase("the last of ro/rw wins", ["ro", "rw"], {"read_write": True}),
    OptCase("the last of rw/ro wins", ["rw", "ro"], {"read_only": True}),
    OptCase("userxattr and metacopy", ["userxattr,metacopy=on,metacopy=off,metacopy=on"],
            {"userxattr": True, "metacopy": True}),
    OptCase("debug", ["debug"], {"debug": True}),
    OptCase("escapes: colon in a lowerdir, comma in the upper", [r"lowerdir=/a\:b:/c,upperdir=/u\,v"],
            {"lowerdir": ["/a:b", "/c"], "upperdir": "/u,v"}),
    OptCase("redirect_dir=off is what layerfs does", ["redirect_dir=off,index=off,nfs_export=off"], {}),
    OptCase("metacopy=off", ["metacopy=off"], {"metacopy": False}),
    OptCase("data-only lower layers", ["lowerdir=/a::/b"], r"data-only lower layers \(::\) are not supported"),
    OptCase("redirect_dir=on", ["redirect_dir=on"], {"redirect_dir": True}),
    OptCase("the last redirect_dir= wins", ["redirect_dir=on,redirect_dir=follow"], {}),
    OptCase("redirect_dir=nofollow", ["redirect_dir=nofollow"], "redirect_dir=nofollow: not supported"),
    OptCase("index=on", ["index=on"], "index=on: overlay's inode index"),
    OptCase("noexec", ["lowerdir=/a,noexec"], "noexec: not supported yet"),
    OptCase("sync", ["sync"], "sync: not supported yet"),
    OptCase("permissions in xattrs", ["xattr_permissions=2"], "xattr_permissions=2: permissions kept in xattrs"),
    OptCase("an unknown option", ["lowerdir=/a,bogus=1"], r"-o bogus=1: unknown mount option"),
    OptCase("a flag given a value", ["ro=1"], r"-o ro=1: unknown mount option"),
]


@pytest.mark.parametrize("case", OPTION_CASES, ids=[c.name for c in OPTION_CASES])
def test_mount_options_as_podman_mount8_and_fuse_overlayfs_pass_them(case: OptCase) -> None:
    from layerfs._cli.mount import MountOptions, _parse_options

    if isinstance(case.expected, str):
        with pytest.raises(MountError, match=case.expected):
            _parse_options(case.values)
        return
    opts = _parse_options(case.values)
    defaults = MountOptions._field_defaults
    got = {name: getattr(opts, name) for name in MountOptions._fields
           if name != "ignored" and getattr(opts, name) != defaults.get(name, ...)}
    assert got == case.expected
    named = {opt.partition("=")[0] for value in case.values for opt in value.split(",")}
    assert all(why for _, why in opts.ignored) and {o.partition("=")[0] for o, _ in opts.ignored} <= named


FO, MF = ["--called-as", "fuse-overlayfs"], ["--called-as", "mount.fuse"]  # which form it was
FORMS = [
    ("containers-storage", ["-o", "lowerdir=l/A,upperdir=c/diff,workdir=c/work", "c/merged"],
     ["mount", *FO, "-o", "lowerdir=l/A,upperdir=c/diff,workdir=c/work", "c/merged"]),
    ("fuse-overlayfs's flags", ["-f", "-olowerdir=/a", "-d", "/m"],
     ["mount", *FO, "--foreground", "-olowerdir=/a", "--debug", "--foreground", "/m"]),
    ("an -o value that looks like a flag", ["-o", "-d", "/m"], ["mount", *FO, "-o", "-d", "/m"]),
    ("mount.fuse3", ["none", "/m", "-o", "rw,lowerdir=/a,dev,suid"],
     ["mount", *MF, "none", "/m", "-o", "rw,lowerdir=/a,dev,suid"]),
    ("mount.fuse3, an image", ["busybox:latest", "/m", "-o", "rw"], ["mount", *MF, "busybox:latest", "/m", "-o", "rw"]),
    ("global options first", ["--root", "/s", "--debug", "-o", "lowerdir=/a", "/m"],
     ["--root", "/s", "--debug", "mount", *FO, "-o", "lowerdir=/a", "/m"]),
    ("a command", ["mount", "-o", "lowerdir=/a", "/m"], None),
    ("a command after --root=", ["--root=/s", "images"], None),
    ("a mistyped command", ["imagse"], None),
    ("help", ["--help"], None),
    ("nothing", [], None),
]


@pytest.mark.parametrize("argv,expected", [f[1:] for f in FORMS], ids=[f[0] for f in FORMS])
def test_the_ways_a_mount_program_is_called(argv: list[str], expected: list[str] | None) -> None:
    from layerfs._cli.main import build_parser, mount_program_argv

    assert mount_program_argv(argv, build_parser().get_default("commands")) == expected


def _storage_home(tmp_path: Path) -> tuple[Path, str]:
    """Lower layers as containers-storage's overlay driver keeps them: ``ID/diff`` directories
    named by links ``l/SHORT -> ../ID/diff`` that the options give relative to its home (the
    current directory of the mount program), and a second ``diff1`` reached through a link and
    ``..`` (``l/SHORT/../diff1``).  Returns the home and the ``-o`` value for container ``c``."""
    from _upper import Dir, File, Link, Whiteout, make_layer

    home = tmp_path / "overlay"
    make_layer(home / "base" / "diff", {"etc": Dir(), "etc/os": File(b"base\n"), "gone": File(b"x\n"),
                                        "big": File(b"B" * 100_000, mode=0o755), "sl": Link("etc/os")})
    make_layer(home / "base" / "diff1", {"extra": File(b"from diff1\n")})
    make_layer(home / "top" / "diff", {"gone": Whiteout(), "etc/top": File(b"top\n")})
    (home / "l").mkdir()
    os.symlink("../base/diff", home / "l" / "BASE")
    os.symlink("../top/diff", home / "l" / "TOP")
    for d in ("diff", "work", "merged"):
        (home / "c" / d).mkdir(parents=True)
    return home, "lowerdir=l/TOP:l/BASE:l/BASE/../diff1,upperdir=c/diff,workdir=c/work"


def _mount_program(args: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None,
                   program: Sequence[str] = (sys.executable, "-m", "layerfs")) -> subprocess.CompletedProcess[str]:
    """Run layerfs as a mount program is run: no subcommand, no --root."""
    return subprocess.run([*program, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def _umount_syscall_ends_the_daemon(lifecycle: Mounts, mnt: Path) -> None:
    """umount(2) as podman's fallback does it (umount(8)): the daemon exits and its record goes."""
    pid = lifecycle.track(mnt)
    rundir = _mount.runtime_dir(mnt)
    subprocess.run(["umount", str(mnt)], check=True, capture_output=True)
    _wait_for(f"daemon {pid} to exit after umount(2)", lambda: not _proc.pid_alive(pid), timeout=DAEMON_EXIT_TIMEOUT)
    assert not _is_mounted(mnt) and not rundir.exists()


def test_mount_program_form_writes_the_kernel_format_and_ends_with_umount(lifecycle: Mounts, tmp_path: Path) -> None:
    from _upper import kernel_overlay

    home, opts = _storage_home(tmp_path)
    proc = _mount_program(["-o", opts + ",fsync=0,volatile,", "c/merged"], cwd=home)
    assert proc.returncode == 0, proc.stderr
    mnt = home / "c" / "merged"
    lifecycle.track(mnt)
    assert sorted(os.listdir(mnt)) == ["big", "etc", "extra", "sl"]
    assert (mnt / "sl").read_bytes() == b"base\n" and (mnt / "extra").read_bytes() == b"from diff1\n"
    (mnt / "new").write_bytes(b"written\n")
    with open(mnt / "etc" / "os", "ab") as f:
        f.write(b"appended\n")
    os.unlink(mnt / "etc" / "top")
    os.chmod(mnt / "big", 0o700)
    ours = snapshot(mnt)
    up = home / "c" / "diff"
    assert (up / "new").read_bytes() == b"written\n" and (up / "etc" / "os").read_bytes() == b"base\nappended\n"
    st = os.lstat(up / "etc" / "top")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, "a whiteout in the kernel's form"
    # metacopy is off unless asked, as in the kernel: the chmod copied the data too
    assert (up / "big").stat().st_size == 100_000 and "trusted.overlay.metacopy" not in os.listxattr(up / "big")
    _umount_syscall_ends_the_daemon(lifecycle, mnt)
    # the kernel overlay on the same options shows what layerfs showed
    lowers = [home / "top" / "diff", home / "base" / "diff", home / "base" / "diff1"]
    with kernel_overlay(lowers, up, home / "c" / "work", tmp_path / "kernel") as kmnt:
        assert_same_tree(snapshot(kmnt), ours, names=("kernel overlay", "layerfs"))


def test_the_mount_program_imports_neither_store_nor_network(lifecycle: Mounts, tmp_path: Path) -> None:
    """podman runs its mount program at every container start, and waits for it (issue 9 asks for
    under 50 ms): a ``-o lowerdir=`` mount of plain directories imports none of the store, the
    image formats, the network or the pyfuse3 engine, each of which costs it milliseconds."""
    home, opts = _storage_home(tmp_path)
    code = ("import sys\nfrom layerfs._cli.main import main\n"
            f"status = main(['-o', {opts!r}, 'c/merged'])\n"
            "print(status, *sorted(sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=home, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lifecycle.track(home / "c" / "merged")
    status, *loaded = proc.stdout.split()
    unwanted = {"layerfs._store", "layerfs._oci", "layerfs._transfer", "layerfs._registry", "layerfs._layer.unpack",
                "layerfs._cli.registry", "trio", "pyfuse3", "httpx", "subprocess", "tarfile"}
    assert status == "0" and "layerfs._mount.daemon" in loaded
    assert not unwanted & set(loaded)


def test_mount_program_errors_are_one_line_and_leave_nothing(lifecycle: Mounts, tmp_path: Path) -> None:
    home, opts = _storage_home(tmp_path)
    cases = {
        f"{opts},bogus": "Error: -o bogus: unknown mount option",
        f"{opts},uidmapping=0:100000": "Error: -o uidmapping=0:100000: not a list of CONTAINER:HOST:SIZE ranges",
        opts.replace("l/BASE/../diff1", "l/NONE"): "Error: lowerdir l/NONE: No such file or directory",
        opts.replace("workdir=c/work", "workdir=c/nowork"): "Error: workdir c/nowork: No such file or directory",
        opts.replace(",workdir=c/work", ""): "Error: -o upperdir=: needs both upperdir= and workdir=",
        f"{opts},userxattr,metacopy=on": "Error: -o userxattr,metacopy=on: metadata-only copy-up needs trusted",
    }
    for value, error in cases.items():
        proc = _mount_program(["-o", value, "c/merged"], cwd=home)
        assert proc.returncode == 1 and proc.stderr.startswith(error), (value, proc.stderr)
        assert len(proc.stderr.splitlines()) == 1 and not _is_mounted(home / "c" / "merged")
        assert os.listdir(home / "c" / "diff") == []
    # an image's container has the store's upper: its options are not for -o
    proc = run_layerfs("mount", "-o", "metacopy=off", "busybox:latest", str(home / "c" / "merged"),
                       root=tmp_path / "store", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: -o userxattr, metacopy=, redirect_dir=: only with -o lowerdir=")


def test_ignored_options_are_noted_with_debug(lifecycle: Mounts, tmp_path: Path) -> None:
    home, opts = _storage_home(tmp_path)
    proc = _mount_program(["--debug", "-o", f"{opts},fsync=0,static_nlink", "c/merged"], cwd=home)
    assert proc.returncode == 0, proc.stderr
    lifecycle.track(home / "c" / "merged")
    assert "mount option 'fsync=0' ignored: layerfs passes every fsync on" in proc.stderr
    assert "mount option 'static_nlink' ignored: directories show their real link count" in proc.stderr


def test_ro_mounts_the_upper_unchanged_on_top(lifecycle: Mounts, tmp_path: Path) -> None:
    home, opts = _storage_home(tmp_path)
    (home / "c" / "diff" / "mine").write_bytes(b"in the upper\n")
    os.mknod(home / "c" / "diff" / "big", stat.S_IFCHR, os.makedev(0, 0))
    before = snapshot(home / "c")
    proc = _mount_program(["-o", f"{opts},ro", "c/merged"], cwd=home)
    assert proc.returncode == 0, proc.stderr
    mnt = home / "c" / "merged"
    lifecycle.track(mnt)
    assert sorted(os.listdir(mnt)) == ["etc", "extra", "mine", "sl"]
    with pytest.raises(OSError) as err:
        (mnt / "x").write_bytes(b"")
    assert err.value.errno == errno.EROFS
    _umount_syscall_ends_the_daemon(lifecycle, mnt)
    assert_same_tree(snapshot(home / "c"), before, names=("after", "before"))


@pytest.mark.parametrize("option,marker,absent", [
    ("", "trusted.overlay.opaque", "user.overlay.opaque"),
    ("userxattr", "user.overlay.opaque", "trusted.overlay.opaque"),
])
def test_userxattr_puts_the_markers_in_user_xattrs(lifecycle: Mounts, tmp_path: Path, option: str, marker: str,
                                                   absent: str) -> None:
    home, opts = _storage_home(tmp_path)
    proc = _mount_program(["-o", f"{opts},{option}", "c/merged"], cwd=home)
    assert proc.returncode == 0, proc.stderr
    mnt = home / "c" / "merged"
    lifecycle.track(mnt)
    shutil.rmtree(mnt / "etc")
    os.mkdir(mnt / "etc")  # where a lower directory was removed: opaque
    assert os.listdir(mnt / "etc") == []
    up = home / "c" / "diff" / "etc"
    assert os.getxattr(up, marker) == b"y" and absent not in os.listxattr(up)
    _umount_syscall_ends_the_daemon(lifecycle, mnt)


def test_metacopy_on_copies_metadata_only(lifecycle: Mounts, tmp_path: Path) -> None:
    home, opts = _storage_home(tmp_path)
    proc = _mount_program(["-o", f"{opts},metacopy=on", "c/merged"], cwd=home)
    assert proc.returncode == 0, proc.stderr
    mnt = home / "c" / "merged"
    lifecycle.track(mnt)
    os.chmod(mnt / "big", 0o700)
    assert "trusted.overlay.metacopy" in os.listxattr(home / "c" / "diff" / "big")
    assert (mnt / "big").read_bytes() == b"B" * 100_000
    _umount_syscall_ends_the_daemon(lifecycle, mnt)


def _console_script() -> Path:
    """The venv's ``layerfs``, whose shebang names the venv's python: what mount_program and
    fstab point at."""
    script = Path(sys.executable).parent / "layerfs"
    require(script.is_file(), f"the console script {script} (scripts/setup installs it)")
    return script


def test_fstab_line_through_mount_8(lifecycle: Mounts, tmp_path: Path) -> None:
    """The README's fstab line with the program named in the source (mount(8) runs its helpers
    with PATH=/usr/local/sbin:...:/bin), mounted from a private fstab (mount -T)."""
    require_tool("mount.fuse3")
    home, opts = _storage_home(tmp_path)
    opts = opts.replace("l/", f"{home}/l/").replace("c/", f"{home}/c/")
    mnt = home / "c" / "merged"
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{_console_script()}#none  {mnt}  fuse  {opts},nosuid,nodev  0  0\n")
    subprocess.run(["mount", "-T", str(fstab), str(mnt)], check=True, capture_output=True, timeout=120)
    lifecycle.track(mnt)
    assert _mount_flags(mnt) >= {"nosuid", "nodev"}
    (mnt / "new").write_bytes(b"via fstab\n")
    assert (home / "c" / "diff" / "new").read_bytes() == b"via fstab\n"
    _umount_syscall_ends_the_daemon(lifecycle, mnt)


def test_mount_fuse3_runs_the_fuse_layerfs_type(lifecycle: Mounts, tmp_path: Path) -> None:
    """``-t fuse.layerfs``: mount.fuse3 runs ``layerfs none MNT -o OPTIONS,dev,suid`` from PATH;
    as for any file system mount(8) mounts, suid and dev are on unless nosuid,nodev are given."""
    require_tool("mount.fuse3")
    home, opts = _storage_home(tmp_path)
    mnt = home / "c" / "merged"
    path = f"{_console_script().parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    proc = subprocess.run(["mount.fuse3", "none", str(mnt), "-t", "fuse.layerfs", "-o", opts], cwd=home,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PATH": path})
    assert proc.returncode == 0, proc.stderr
    lifecycle.track(mnt)
    assert not _mount_flags(mnt) & {"nosuid", "nodev"}
    assert sorted(os.listdir(mnt)) == ["big", "etc", "extra", "sl"]
    _umount_syscall_ends_the_daemon(lifecycle, mnt)
