"""The C engine's session (csrc/session.c): how it stops, and where it opens backing files.

- Stopping follows libfuse's order (passthrough_hp.cc): a signal only asks the loop to exit; the
  loop returns once its request threads are joined; then the daemon unmounts; then it destroys the
  session.  Stopping a daemon while readers hammer it must never give a reader wrong data, and the
  daemon must exit by itself, with status 0, leaving no mount.
- A backing file is opened inside its layer's root, so a caller's lowerdir that changes under a
  mount (a directory swapped for a symlink to elsewhere) can never make the daemon read outside it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_fuse, require_root

from layerfs import Store, _proc
from layerfs._mount import daemon as _mount


@pytest.fixture
def c_mounts(tmp_path: Path) -> Iterator[list[Path]]:
    """Mount points made by the test; each is unmounted (lazily if need be) afterwards."""
    require_root()
    require_fuse()
    points: list[Path] = []
    yield points
    for mnt in points:
        if os.path.realpath(mnt) in _proc.mountpoints():
            os.system(f"fusermount3 -uz {mnt} 2>/dev/null")


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _proc.pid_alive(pid):
            return True
        time.sleep(0.01)
    return False


def _wait_status(pid: int, timeout: float) -> int | None:
    """The exit status of our child ``pid`` (the daemon is forked from this process), or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    return None


def test_stopping_under_load_never_gives_wrong_data(c_mounts: list[Path], tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    layer.mkdir()
    expected = {}
    for i in range(64):
        data = hashlib.sha256(str(i).encode()).digest() * (512 + i)
        (layer / f"f{i:02d}").write_bytes(data)
        expected[f"f{i:02d}"] = data
    rounds, wrong = 20, []
    for r in range(rounds):
        mnt = tmp_path / f"mnt{r}"
        mnt.mkdir()
        c_mounts.append(mnt)
        handle = _mount.mount(Store(tmp_path / "store"), [str(layer)], mnt, engine="c")
        stop = threading.Event()

        def reader(seed: int, stop: threading.Event = stop, mnt: Path = mnt, r: int = r) -> None:
            n = seed
            while not stop.is_set():
                name = f"f{n % 64:02d}"
                n += 7
                try:
                    fd = os.open(mnt / name, os.O_RDONLY)
                except OSError:
                    continue
                try:
                    data = b""
                    while chunk := os.read(fd, 65536):
                        data += chunk
                except OSError as err:
                    if err.errno not in (errno.ENOTCONN, errno.ENODEV, errno.EIO, errno.ECONNABORTED):
                        wrong.append(f"{name}: {err}")
                    continue
                finally:
                    os.close(fd)
                if data != expected[name]:
                    wrong.append(f"round {r}: {name}: {len(data)} bytes, not the file's {len(expected[name])}")
                # drop this file's pages so the next read reaches the daemon again
                if n % 8 == 0:
                    with open("/proc/sys/vm/drop_caches", "w") as f:
                        f.write("1")

        threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.15)
        os.kill(handle.pid, signal.SIGTERM)
        status = _wait_status(handle.pid, 10)
        stop.set()
        for t in threads:
            t.join()
        assert status == 0, f"round {r}: the daemon ended with {status} after SIGTERM"
        assert os.path.realpath(mnt) not in _proc.mountpoints(), f"round {r}: still mounted"
    assert wrong == []
    assert {p.name: p.read_bytes() for p in layer.iterdir()} == expected, "a layer file changed"


def test_backing_files_are_opened_inside_the_layer(c_mounts: list[Path], tmp_path: Path) -> None:
    layer, outside = tmp_path / "layer", tmp_path / "outside"
    (layer / "d").mkdir(parents=True)
    (layer / "d" / "f").write_bytes(b"inside\n")
    outside.mkdir()
    (outside / "f").write_bytes(b"SECRET outside the layer\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    c_mounts.append(mnt)
    handle = _mount.mount(Store(tmp_path / "store"), [str(layer)], mnt, engine="c")
    try:
        # The caller's directory changes under the mount: d becomes a symlink to elsewhere.
        os.rename(layer / "d", layer / "d.old")
        os.symlink(outside, layer / "d")
        try:
            data = (mnt / "d" / "f").read_bytes()
        except OSError as err:
            data = f"error {errno.errorcode[err.errno or 0]}".encode()
        assert b"SECRET" not in data
    finally:
        _mount.umount(mnt)
    assert _wait_gone(handle.pid, 10)


def test_a_session_that_fails_to_start_closes_no_descriptor_of_its_caller(tmp_path: Path) -> None:
    """A new session owns no descriptor until it opens one.  Before: a fresh session's first
    clean-up closed fd 0 (twice: as its upper and its work directory), so the daemon's caller lost
    its stdin, and a process that made a session which failed (a bad index, a bad option) had
    its next descriptor 0 closed under it."""
    from layerfs._mount.index import NativeSession

    def fds() -> dict[int, tuple[int, int]]:
        out = {}
        for name in os.listdir("/proc/self/fd"):
            try:
                st = os.fstat(int(name))
            except OSError:
                continue  # the listing's own descriptor
            out[int(name)] = (st.st_dev, st.st_ino)
        return out

    with open(os.devnull) as null:
        saved = os.dup(0)
        os.dup2(null.fileno(), 0)  # fd 0 is ours to watch, whatever pytest made of stdin
        try:
            before = fds()
            for _ in range(2):
                with pytest.raises((OSError, ValueError)):
                    NativeSession(tmp_path / "missing.idx", [], str(tmp_path), set(), entry_timeout=1.0,
                                  attr_timeout=1.0, negative_timeout=1.0)
            assert fds() == before
        finally:
            os.dup2(saved, 0)
            os.close(saved)


def test_a_mounted_session_cannot_be_initialised_again(tmp_path: Path) -> None:
    """``__init__`` on a session that is mounted refuses (RuntimeError) and leaves it mounted and
    whole: before, a second ``__init__`` freed the live session (its mount, its descriptors)
    under the kernel.  Closing it then unmounts it.  Nothing here touches the mount point itself:
    no loop serves it, so a stat would wait for ever."""
    require_root()
    require_fuse()
    from layerfs._mount import merge as _merge
    from layerfs._mount.index import NativeSession

    layer = tmp_path / "layer"
    layer.mkdir()
    (layer / "f").write_text("f\n")
    index = tmp_path / "index"
    index.write_bytes(_merge.build([layer])[0])
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    options = {"ro", "fsname=layerfs-test", "subtype=layerfs", "default_permissions"}
    args = (os.fspath(index), [os.fspath(layer)], os.fspath(mnt), ",".join(sorted(options)), 1.0, 1.0, 1.0)
    session = NativeSession(index, [os.fspath(layer)], os.fspath(mnt), options, entry_timeout=1.0, attr_timeout=1.0,
                            negative_timeout=1.0)
    try:
        assert str(mnt) in _proc.mountpoints()  # tmp_path is a real path
        with pytest.raises(RuntimeError, match="already initialised"):
            session._s.__init__(*args)
        assert str(mnt) in _proc.mountpoints()
    finally:
        session.close()
    assert str(mnt) not in _proc.mountpoints()
