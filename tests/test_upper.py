"""Writable mounts: layerfs against the kernel overlay, operation by operation, and the upper in
the kernel's own format both ways.

- Differential: the same operations on a writable layerfs mount and on a kernel overlay of the
  same lower dirs give the same results (errno included) and the same views, entry by entry
  (hypothesis draws the operation sequences; a fixed set of named scenarios runs first).
- Kernel format, layerfs -> kernel: after ``umount``, ``mount -t overlay`` of the same lowers on
  layerfs's upper and work shows exactly what layerfs showed, mtimes to the nanosecond
  (``metacopy=on`` when layerfs wrote metadata-only copy-ups, as the kernel requires).
- Kernel format, kernel -> layerfs: an upper the kernel wrote mounts in layerfs with the kernel's view.

What is compared is the view (docs/testing.rst "Comparing trees"): type, mode, owner, size, content,
link target, xattrs, mtime of non-directories, hard-link groups.  Between two live systems mtimes of
objects each one wrote differ by the clock (they are compared in the format tests, on one upper).
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest
from _trees import assert_same_tree, snapshot
from _upper import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    Dir,
    Fifo,
    File,
    HardLink,
    Link,
    Whiteout,
    kernel_overlay,
    layerfs_writable,
    make_layer,
    run_op,
)
from conftest import require_fuse, require_root

BASE = {
    "a": File(b"base a\n"),
    "b": File(b"b" * 5000, mode=0o4755),
    "d": Dir(mode=0o750),
    "d/f": File(b"f in d\n", mode=0o600, uid=1000, gid=1000, xattrs={"user.k": b"v"}),
    "d/g": File(b"g\n"),
    "d/sub": Dir(),
    "d/sub/x": File(b"x\n"),
    "hl1": File(b"linked\n"),
    "hl2": HardLink("hl1"),
    "sl": Link("a"),
    "fifo": Fifo(),
    "gone": File(b"whited out above\n"),
    "opq": Dir(),
    "opq/old": File(b"hidden by the opaque dir above\n"),
    "e": Dir(),
    "e/only": File(b"1\n"),
}
TOP = {
    "t": File(b"top\n"),
    "gone": Whiteout(),
    "opq": Dir(opaque=True),
    "opq/new": File(b"new\n"),
    "d": Dir(mode=0o755, mtime=1_100_000_000),
    "d/t2": File(b"t2\n"),
}


@pytest.fixture
def lowers(tmp_path: Path) -> list[Path]:
    """Two layer dirs in overlay form, top first."""
    require_root()
    require_fuse()
    base = make_layer(tmp_path / "l1", BASE)
    top = make_layer(tmp_path / "l2", TOP)
    return [top, base]


def _fresh(tmp_path: Path, name: str) -> tuple[Path, Path, Path]:
    d = tmp_path / name
    for sub in ("upper", "work", "mnt"):
        (d / sub).mkdir(parents=True)
    return d / "upper", d / "work", d / "mnt"


def _both(tmp_path: Path, lowers: list[Path], ops: list[tuple[object, ...]], tag: str = "x",
          redirect_dir: bool = False) -> None:
    """Run ``ops`` on layerfs and on the kernel overlay; compare results and views; then check
    that the kernel reads layerfs's upper as layerfs showed it, and layerfs the kernel's (each
    reader with its defaults: both follow redirects)."""
    lu, lw, lm = _fresh(tmp_path, f"lfs-{tag}")
    ku, kw, km = _fresh(tmp_path, f"krn-{tag}")
    with kernel_overlay(lowers, ku, kw, km, options="redirect_dir=on" if redirect_dir else ""):
        kernel_results = [run_op(km, op) for op in ops]
        kernel_view = snapshot(km)
        kernel_view_untimed = snapshot(km, mtimes=False)
    with layerfs_writable(lowers, lu, lw, lm, redirect_dir=redirect_dir):
        ours = [run_op(lm, op) for op in ops]
        our_view = snapshot(lm)
        our_view_untimed = snapshot(lm, mtimes=False)
    mismatched = [f"{op}: kernel {k}, layerfs {o}" for op, k, o in zip(ops, kernel_results, ours) if k != o]
    assert mismatched == [], "\n".join(mismatched)
    assert_same_tree(our_view_untimed, kernel_view_untimed, names=("layerfs", "kernel"))
    # layerfs's upper, read by the kernel: the same view, times included
    _, _, km2 = _fresh(tmp_path, f"krn2-{tag}")
    with kernel_overlay(lowers, lu, lw, km2, options="metacopy=on"):
        assert_same_tree(snapshot(km2), our_view, names=("kernel on layerfs's upper", "layerfs"))
    # the kernel's upper, read by layerfs
    _, _, lm2 = _fresh(tmp_path, f"lfs2-{tag}")
    with layerfs_writable(lowers, ku, kw, lm2):
        assert_same_tree(snapshot(lm2), kernel_view, names=("layerfs on the kernel's upper", "kernel"))


SCENARIOS: dict[str, list[tuple[object, ...]]] = {
    "create, append, overwrite": [
        ("write", "new", b"hello\n", "w"), ("write", "a", b"more\n", "a"), ("write", "t", b"TOP", "r+"),
        ("read", "a"), ("read", "t"), ("read", "new"), ("write", "new", b"x", "x"),
    ],
    "unlink lower, upper and missing": [
        ("unlink", "a"), ("unlink", "a"), ("write", "n", b"1", "w"), ("unlink", "n"), ("listdir", "."),
        ("unlink", "d"), ("unlink", "d/f"), ("listdir", "d"), ("read", "d/g"),
    ],
    "rmdir and re-create is opaque": [
        ("rmdir", "d"), ("unlink", "d/f"), ("unlink", "d/g"), ("unlink", "d/t2"), ("rmdir", "d"),
        ("rmtree", "d/sub"), ("rmdir", "d"), ("mkdir", "d"), ("listdir", "d"), ("stat", "d"),
        ("rmdir", "e"), ("rmtree", "e"), ("mkdir", "e"), ("listdir", "e"),
    ],
    "rename files, EXDEV for lower dirs": [
        ("rename", "a", "a2", 0), ("read", "a2"), ("rename", "d", "d2", 0), ("rename", "d/sub", "sub2", 0),
        ("mkdir", "nd"), ("write", "nd/x", b"x", "w"), ("rename", "nd", "nd2", 0), ("listdir", "nd2"),
        ("rename", "t", "hl1", 0), ("read", "hl1"), ("read", "hl2"), ("rename", "nd2", "e", 0),
        ("rename", "e/only", "e/only2", 0), ("listdir", "e"),
    ],
    "rename flags": [
        ("rename", "a", "t", RENAME_NOREPLACE), ("rename", "a", "zz", RENAME_NOREPLACE), ("read", "zz"),
        ("rename", "zz", "t", RENAME_EXCHANGE), ("read", "zz"), ("read", "t"),
        ("rename", "t", "nothere", RENAME_EXCHANGE), ("mkdir", "m1"), ("mkdir", "m2"),
        ("write", "m1/f", b"1", "w"), ("rename", "m1", "m2", RENAME_EXCHANGE), ("listdir", "m2"),
        ("rename", "m2", "d", RENAME_EXCHANGE),
    ],
    "metadata copy-up": [
        ("chmod", "b", 0o700), ("stat", "b"), ("read", "b"), ("chown", "d/f", 12, 34), ("stat", "d/f"),
        ("utime", "a", 1_234_567_890_123_456_789), ("setxattr", "d/g", "user.new", b"1"),
        ("removexattr", "d/f", "user.k"), ("removexattr", "d/f", "user.k"), ("removexattr", "a", "user.none"),
        ("chmod", "d", 0o700), ("stat", "d"), ("truncate", "b", 10), ("read", "b"), ("truncate", "hl1", 0),
    ],
    "hard links": [
        ("write", "hl1", b"changed\n", "a"), ("read", "hl1"), ("read", "hl2"), ("stat", "hl1"), ("stat", "hl2"),
        ("link", "a", "a-link"), ("write", "a-link", b"via link\n", "a"), ("read", "a"), ("stat", "a"),
        ("link", "d", "dlink"), ("link", "nothere", "x"), ("link", "a", "t"), ("unlink", "a"), ("read", "a-link"),
    ],
    # a metadata-only copy-up has its data at its own lower path: a new name has none there
    "link of an untouched lower file": [("link", "a", "d/a-link"), ("read", "d/a-link"), ("stat", "d/a-link")],
    "symlinks, fifos and names": [
        ("symlink", "a", "s2"), ("read", "s2"), ("symlink", "x", "sl"), ("unlink", "sl"), ("symlink", "t", "sl"),
        ("read", "sl"), ("mkfifo", "ff"), ("stat", "ff"), ("stat", "fifo"), ("chmod", "fifo", 0o600),
        ("write", "n" * 255, b"long", "w"), ("read", "n" * 255), ("write", "n" * 256, b"x", "w"),
        ("unlink", "gone"), ("write", "gone", b"back\n", "w"), ("read", "gone"), ("listdir", "opq"),
        ("unlink", "opq/new"), ("listdir", "opq"), ("write", "opq/old", b"1", "w"), ("listdir", "opq"),
    ],
    "directories: mkdir over files, rmdir errors": [
        ("mkdir", "a"), ("mkdir", "nd"), ("mkdir", "nd"), ("rmdir", "a"), ("rmdir", "nothere"),
        ("write", "nd/f", b"1", "w"), ("rmdir", "nd"), ("unlink", "nd/f"), ("rmdir", "nd"), ("stat", "nd"),
        ("write", "d/sub/y", b"y", "w"), ("rmtree", "d"), ("listdir", "."), ("mkdir", "d"), ("listdir", "d"),
    ],
}


@pytest.mark.parametrize("name", SCENARIOS, ids=list(SCENARIOS))
def test_scenario_matches_the_kernel(name: str, lowers: list[Path], tmp_path: Path) -> None:
    _both(tmp_path, lowers, SCENARIOS[name], tag="s")


#: Renames of directories with lower parts, which -o redirect_dir=on allows (and off answers EXDEV).
REDIRECTS: dict[str, list[tuple[object, ...]]] = {
    "move a merged directory and what it holds": [
        ("rename", "d", "d2", 0), ("listdir", "d2"), ("read", "d2/f"), ("stat", "d2"), ("stat", "d"),
        ("write", "d2/new", b"n", "w"), ("unlink", "d2/g"), ("listdir", "d2"),
        ("rename", "d2/sub", "sub2", 0), ("listdir", "sub2"), ("read", "sub2/x"), ("listdir", "d2"),
        ("mkdir", "d"), ("listdir", "d"), ("rename", "sub2", "d/back", 0), ("listdir", "d/back"),
    ],
    "onto lower names, exchanged, moved twice, removed": [
        ("rename", "e", "t", 0), ("rename", "e", "a", 0), ("rmtree", "opq"), ("rename", "e", "opq", 0),
        ("listdir", "opq"), ("read", "opq/only"), ("rename", "d", "opq", RENAME_EXCHANGE), ("listdir", "opq"),
        ("listdir", "d"), ("rename", "d", "d3", RENAME_NOREPLACE), ("rename", "d3", "opq/d4", 0),
        ("listdir", "opq/d4"), ("read", "opq/d4/only"), ("rename", "opq/sub", "gone", 0), ("listdir", "gone"),
        ("rmtree", "opq/d4"), ("listdir", "opq"), ("mkdir", "e"), ("listdir", "e"),
    ],
}


@pytest.mark.parametrize("name", REDIRECTS, ids=list(REDIRECTS))
def test_redirect_dir_matches_the_kernel(name: str, lowers: list[Path], tmp_path: Path) -> None:
    """-o redirect_dir=on renames directories with lower parts as the kernel's does, in its format."""
    _both(tmp_path, lowers, REDIRECTS[name], tag="r", redirect_dir=True)


def test_without_redirect_dir_lower_directories_do_not_move(lowers: list[Path], tmp_path: Path) -> None:
    """The default: EXDEV, as the kernel's (so mv copies), and nothing written."""
    _both(tmp_path, lowers, REDIRECTS["move a merged directory and what it holds"][:3], tag="n")


def test_upper_is_the_kernel_format_markers(lowers: list[Path], tmp_path: Path) -> None:
    """The upper holds the kernel's markers, no OCI files: 0/0 whiteouts, opaque xattrs."""
    u, w, m = _fresh(tmp_path, "fmt")
    with layerfs_writable(lowers, u, w, m):
        os.unlink(m / "a")
        import shutil
        shutil.rmtree(m / "d")
        os.mkdir(m / "d")
    st = os.lstat(u / "a")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(u / "d", "trusted.overlay.opaque") == b"y"
    assert not [p for p in u.rglob("*") if p.name.startswith(".wh.")]
    assert os.listdir(w / "work") == []


# ---------------------------------------------------------------------------------------------
# Random operation sequences (hypothesis): CI runs a fixed number of examples (derandomized);
# `LAYERFS_UPPER_EXAMPLES=N .venv/bin/python -m pytest tests/test_upper.py -k random` runs N new ones.

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_EXISTING = [p for p, w in {**BASE, **TOP}.items() if not isinstance(w, Whiteout)] + ["gone", "opq/old"]
_NEW = ["n1", "n2", "d/n3", "nd", "nd/n4", "d/sub/n5", "opq/n6", "e/n7"]
_paths = st.sampled_from(sorted(set(_EXISTING + _NEW)))
_data = st.sampled_from([b"", b"x", b"hello\n", b"z" * 5000])

_op = st.one_of(
    st.tuples(st.just("write"), _paths, _data, st.sampled_from(["w", "x"])),
    # a write of nothing through O_APPEND or O_RDWR copies a lower file up on the kernel overlay
    # only, which copies up at open (tests/test_posix.py "opened for writing")
    st.tuples(st.just("write"), _paths, _data.filter(bool), st.sampled_from(["a", "r+"])),
    st.tuples(st.just("read"), _paths),
    st.tuples(st.just("truncate"), _paths, st.sampled_from([0, 3, 7000])),
    st.tuples(st.just("mkdir"), _paths),
    st.tuples(st.just("rmdir"), _paths),
    st.tuples(st.just("unlink"), _paths),
    st.tuples(st.just("rename"), _paths, _paths, st.sampled_from([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE])),
    st.tuples(st.just("symlink"), st.sampled_from(["a", "../x", "d/f", "n1", "n2"]), _paths),  # n1 <-> n2: ELOOP
    st.tuples(st.just("link"), _paths, _paths),
    st.tuples(st.just("chmod"), _paths, st.sampled_from([0o600, 0o755, 0o4711, 0o1777])),
    st.tuples(st.just("chown"), _paths, st.sampled_from([0, 7]), st.sampled_from([0, 9])),
    st.tuples(st.just("utime"), _paths, st.sampled_from([0, 1_500_000_000_123_456_789])),
    st.tuples(st.just("setxattr"), _paths, st.sampled_from(["user.a", "trusted.t"]), _data),
    st.tuples(st.just("removexattr"), _paths, st.sampled_from(["user.a", "user.k"])),
    st.tuples(st.just("mkfifo"), _paths),
    st.tuples(st.just("listdir"), _paths),
    st.tuples(st.just("stat"), _paths),
    st.tuples(st.just("rmtree"), st.sampled_from(["d", "e", "opq", "nd", "d/sub"])),
    st.tuples(st.just("unlinked"), _paths, st.sampled_from([b"x", b"written after unlink\n"])),
    st.tuples(st.just("fallocate"), _paths, st.sampled_from([0, 1, 3]), st.sampled_from([0, 4096]),
              st.sampled_from([1, 8192])),
    st.tuples(st.just("append2"), _paths, _data.filter(bool), _data.filter(bool)),
    st.tuples(st.just("renameopen"), _paths, _paths),
)

_EXAMPLES = int(os.environ.get("LAYERFS_UPPER_EXAMPLES", "25"))


@settings(max_examples=_EXAMPLES, deadline=None, derandomize="LAYERFS_UPPER_EXAMPLES" not in os.environ,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(_op, min_size=1, max_size=25))
def test_random_operations_match_the_kernel(ops: list[tuple[object, ...]], lowers: list[Path], tmp_path: Path) -> None:
    import uuid

    _both(tmp_path, lowers, ops, tag=uuid.uuid4().hex[:8])


# ---------------------------------------------------------------------------------------------
# Concurrency: the engine serves requests from several threads (``_cache.NATIVE_THREADS``); many
# writers, readers and renamers at once must leave exactly what each one did.

def test_parallel_writers_readers_and_renamers(tmp_path: Path) -> None:
    """Eight threads at once: each creates, appends, renames, links and unlinks its own names in
    shared directories, appends to one shared lower file, copies lower files up and reads lower
    files.  Afterwards every thread's result is exactly what it did, and the kernel, mounted on
    the upper, shows what layerfs showed."""
    import threading

    require_root()
    require_fuse()
    spec: dict[str, File | Dir | Link | HardLink | Fifo | Whiteout] = {
        "shared": Dir(), "log": File(b"lower line\n"), "lowers": Dir()}
    for i in range(64):
        spec[f"lowers/f{i:02}"] = File(f"lower {i}\n".encode() * 100)
    lower = make_layer(tmp_path / "lower", spec)
    u, w, m = _fresh(tmp_path, "par")
    threads, rounds = 8, 100
    errors: list[str] = []

    def work(t: int) -> None:
        try:
            for i in range(rounds):
                name = m / "shared" / f"t{t}-{i}"
                name.write_bytes(f"{t} {i}\n".encode())
                with open(m / "log", "ab") as f:
                    f.write(f"{t} {i}\n".encode())
                os.rename(name, m / "shared" / f"t{t}-{i}.r")
                if i % 3 == 0:
                    os.link(m / "shared" / f"t{t}-{i}.r", m / "shared" / f"t{t}-{i}.l")
                if i % 2 == 0:
                    os.unlink(m / "shared" / f"t{t}-{i}.r")
                k = (t * rounds + i) % 64
                data = (m / "lowers" / f"f{k:02}").read_bytes()
                if not data.startswith(f"lower {k}\n".encode()):
                    errors.append(f"t{t}: lowers/f{k:02} reads {data[:20]!r}")
                if i % 8 == t % 8:  # a copy-up of a lower file several threads read
                    with open(m / "lowers" / f"f{k:02}", "ab") as f:
                        f.write(f"t{t}\n".encode())
                os.makedirs(m / f"dir{t}" / str(i))
                sorted(os.listdir(m / "shared"))
        except Exception as err:  # noqa: BLE001 - reported below with the thread's name
            errors.append(f"t{t}: {err!r}")

    with layerfs_writable([lower], u, w, m):
        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for th in workers:
            th.start()
        for th in workers:
            th.join(timeout=120)
        assert not [th for th in workers if th.is_alive()], "a thread hangs"
        assert errors == []
        names = set(os.listdir(m / "shared"))
        expected = {f"t{t}-{i}.r" for t in range(threads) for i in range(rounds) if i % 2}
        expected |= {f"t{t}-{i}.l" for t in range(threads) for i in range(rounds) if i % 3 == 0}
        assert names == expected
        for t in range(threads):
            for i in range(rounds):
                if i % 2:
                    assert (m / "shared" / f"t{t}-{i}.r").read_bytes() == f"{t} {i}\n".encode()
            assert sorted(os.listdir(m / f"dir{t}"), key=int) == [str(i) for i in range(rounds)]
        lines = (m / "log").read_bytes().splitlines()
        assert lines[0] == b"lower line" and sorted(lines[1:]) == sorted(
            f"{t} {i}".encode() for t in range(threads) for i in range(rounds))
        view = snapshot(m)
    assert os.listdir(w / "work") == []
    _, _, km = _fresh(tmp_path, "par-kernel")
    with kernel_overlay([lower], u, w, km, options="metacopy=on"):
        assert_same_tree(snapshot(km), view, names=("kernel on layerfs's upper", "layerfs"))


# ---------------------------------------------------------------------------------------------
# A full upper: the writer gets ENOSPC, the mount keeps serving.

def test_full_upper_gives_enospc_and_the_mount_serves_on(tmp_path: Path) -> None:
    """The upper on a 4 MiB tmpfs: a write that does not fit fails with ENOSPC, so does the
    copy-up of a lower file bigger than the room left (the file still reads as the lower file,
    and the work directory keeps nothing); then reads, deletes and small writes work again."""
    require_root()
    require_fuse()
    big = b"L" * (6 << 20)
    lower = make_layer(tmp_path / "lower", {"big": File(big), "small": File(b"small\n"), "d": Dir()})
    room = tmp_path / "room"
    room.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(room)], check=True)
    try:
        u, w, m = room / "upper", room / "work", tmp_path / "mnt"
        u.mkdir()
        w.mkdir()
        with layerfs_writable([lower], u, w, m):
            with pytest.raises(OSError) as err:
                with open(m / "fill", "wb") as f:
                    for _ in range(8):
                        f.write(b"x" * (1 << 20))
                        f.flush()
            assert err.value.errno == errno.ENOSPC
            assert run_op(m, ("write", "big", b"!", "a")) == ("err", "ENOSPC")  # the copy-up cannot fit
            assert (m / "big").read_bytes() == big
            assert os.listdir(w / "work") == []
            assert (m / "small").read_bytes() == b"small\n"
            os.unlink(m / "fill")
            (m / "d" / "new").write_bytes(b"fits\n")
            assert (m / "d" / "new").read_bytes() == b"fits\n"
            assert run_op(m, ("write", "small", b"more\n", "a")) == ("ok", None)
            assert sorted(os.listdir(m)) == ["big", "d", "small"]
            assert (m / "small").read_bytes() == b"small\nmore\n"
    finally:
        subprocess.run(["umount", "-l", str(room)], capture_output=True)


def test_copy_up_keeps_holes_and_metacopy_writes_no_data(tmp_path: Path) -> None:
    """A 64 MiB lower file with two written blocks: appending one byte copies it up sparse (the
    upper file allocates what the lower one does, not 64 MiB); a chmod of another such file
    copies metadata only; both read back as before."""
    require_root()
    require_fuse()
    lower = tmp_path / "lower"
    lower.mkdir()
    for name in ("sparse", "meta"):
        with open(lower / name, "wb") as f:
            f.truncate(64 << 20)
            f.seek(4096)
            f.write(b"A" * 4096)
            f.seek(40 << 20)
            f.write(b"B" * 4096)
    allocated = os.stat(lower / "sparse").st_blocks
    u, w, m = _fresh(tmp_path, "sparse")
    with layerfs_writable([lower], u, w, m):
        with open(m / "sparse", "ab") as f:
            f.write(b"!")
        os.chmod(m / "meta", 0o600)
        data = (m / "sparse").read_bytes()
        assert len(data) == (64 << 20) + 1 and data[4096:8192] == b"A" * 4096 and data[-1:] == b"!"
        assert data.count(b"B") == 4096 and (m / "meta").read_bytes() == (lower / "meta").read_bytes()
    assert os.stat(u / "sparse").st_blocks <= allocated + 16  # the byte appended, maybe a block
    assert os.stat(u / "meta").st_blocks == 0 and os.stat(u / "meta").st_size == 64 << 20
    assert os.getxattr(u / "meta", "trusted.overlay.metacopy") == b""


def _deleted_upper_fds(pid: int, *dirs: Path) -> list[str]:
    """The daemon's fds that hold a file of the upper or work directory whose last name is gone."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(tuple(map(str, dirs))) and target.endswith(" (deleted)"):
            out.append(target)
    return out


def test_removed_files_are_let_go(tmp_path: Path) -> None:
    """Once every name of a file is gone and no fd holds it, the daemon holds it no longer either
    (its disk space comes back): a copied-up lower file, linked elsewhere, both names removed;
    a file unlinked while open, then closed."""
    import time

    require_root()
    require_fuse()
    lower = make_layer(tmp_path / "lower", {"a": File(b"a" * 100_000), "b": File(b"b" * 100_000),
                                            "c": File(b"c" * 100_000), "d2": Dir()})
    u, w, m = _fresh(tmp_path, "gone")
    with layerfs_writable([lower], u, w, m) as handle:
        os.chmod(m / "a", 0o600)
        os.link(m / "a", m / "d2" / "a2")
        os.unlink(m / "a")
        assert (m / "d2" / "a2").read_bytes() == b"a" * 100_000
        os.unlink(m / "d2" / "a2")
        for name, write_first in (("b", True), ("c", False)):  # copied up before the unlink, or after
            fd = os.open(m / name, os.O_RDWR)
            try:
                if write_first:
                    os.pwrite(fd, b"W", 0)
                os.unlink(m / name)
                os.pwrite(fd, b"X", 1)  # "c": the write makes an anonymous copy in the work directory
                assert os.pread(fd, 3, 0) == (b"WXb" if write_first else b"cXc")
                assert _deleted_upper_fds(handle.pid, u, w) != []  # held while open
            finally:
                os.close(fd)
        for _ in range(100):
            if not _deleted_upper_fds(handle.pid, u, w):
                break
            time.sleep(0.02)
        assert _deleted_upper_fds(handle.pid, u, w) == []


def test_rm_rf_of_a_lower_tree_writes_one_whiteout_and_copies_nothing(tmp_path: Path) -> None:
    """``rm -rf`` of a lower directory of 300 entries (files, a symlink, subdirectories) leaves
    in the upper one whiteout, the directory's, and nothing else: no entry is copied up and no
    child gets a whiteout of its own (the kernel's overlay does the same).  Removing a lower
    file in a surviving directory copies that directory up empty but for the file's whiteout."""
    require_root()
    require_fuse()
    lower = tmp_path / "lower"
    for i in range(10):
        sub = lower / "tree" / f"d{i}"
        sub.mkdir(parents=True)
        for k in range(28):
            (sub / f"f{k}").write_text(f"{i}/{k}\n")
        (sub / "link").symlink_to("f0")
    (lower / "keep").mkdir()
    (lower / "keep" / "a").write_text("a\n")
    (lower / "keep" / "b").write_text("b\n")
    u, w, m = _fresh(tmp_path, "rmrf")
    with layerfs_writable([lower], u, w, m):
        subprocess.run(["rm", "-rf", str(m / "tree")], check=True)
        os.unlink(m / "keep" / "a")
        assert not (m / "tree").exists() and os.listdir(m / "keep") == ["b"]
    found = sorted(str(p.relative_to(u)) for p in u.rglob("*"))
    assert found == ["keep", "keep/a", "tree"], found
    for name in ("tree", "keep/a"):
        st = os.lstat(u / name)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, name  # the kernel's whiteout
