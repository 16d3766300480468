"""A full disk (issue 12): the store on a small tmpfs that fills.

For pull, load, commit and save, the file system is filled and then given back some room, from
none up to more than the command needs (:data:`LEVELS`), so that ENOSPC strikes at every stage: a
layer being unpacked, its kept blob, a record, the archive being written.  At each level where the
command fails it must fail with one line naming the command and the cause, give back every byte it
took (the free space is what it was before), leave the store as it was (records, layers, blobs,
``tmp/``), and leave every other image and the container intact (``verify`` passes, the upper's
file is there).  Where it has room it must succeed.

A write in a mounted container that fills the disk gets ENOSPC (at write, or at the close that
flushes it); the daemon keeps serving: the other files read, and once the big file is removed,
new writes work.  ``rm`` and every ``prune`` work with zero bytes free.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _registry_server import Registry, push
from conftest import require_fuse, require_root, require_tool, run_layerfs
from test_store import BASE, _fill, make_layout, store_contents

from layerfs import Store, _proc

#: Bytes left free before each command: from none to more than any of them needs.
LEVELS = (0, 4 << 10, 16 << 10, 48 << 10, 96 << 10, 160 << 10, 256 << 10, 400 << 10, 640 << 10, 1 << 20,
          3 << 20, 8 << 20)


@dataclass
class Disk:
    """A store on its own 16 MiB tmpfs, with keep:1, its container ``keep`` (a file in its upper)
    and a filler file that takes the rest of the room."""

    small: Path
    root: Path
    filler: Path
    layouts: Path
    registry: Registry | None = None

    def free(self) -> int:
        st = os.statvfs(self.small)
        return st.f_bavail * st.f_frsize

    def leave(self, nbytes: int) -> None:
        """Fill the file system, then free ``nbytes`` (whole pages)."""
        _fill(self.filler)
        size = os.stat(self.filler).st_size
        os.truncate(self.filler, max(0, size - nbytes))

    def intact(self) -> None:
        """verify passes, keep:1 is there and the container's file too."""
        proc = run_layerfs("verify", "-q", root=self.root, check=False)
        assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr
        assert Store(self.root).get("keep:1")
        assert (self.root / "containers").is_dir()
        (upper,) = [p / "upper" for p in (self.root / "containers").iterdir()]
        assert (upper / "mine.txt").read_text() == "the container's own file\n"


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    require_root()
    require_fuse()
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(small)], check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        lay = tmp_path / "layouts"
        make_layout(lay / "keep", [BASE, {"keep/data": os.urandom(200 << 10)}], tag="1")
        make_layout(lay / "new", [BASE, {"new/a": os.urandom(300 << 10)}, {"new/b": os.urandom(200 << 10)}], tag="1")
        d = Disk(small, small / "store", small / "filler", lay)
        run_layerfs("load", "--tag", "keep:1", f"oci:{lay / 'keep'}:1", root=d.root)
        run_layerfs("mount", "--name", "keep", "keep:1", str(mnt), root=d.root)
        try:
            (mnt / "mine.txt").write_text("the container's own file\n")
            (mnt / "big.bin").write_bytes(os.urandom(400 << 10))  # for commit
        finally:
            run_layerfs("umount", str(mnt), root=d.root)
        yield d
    finally:
        for m in _proc.mounts():
            if m.mountpoint.startswith(str(tmp_path)) and m.mountpoint != str(small):
                subprocess.run(["umount", "-l", m.mountpoint], capture_output=True)
        subprocess.run(["umount", "-l", str(small)], check=False)


def _sweep(disk: Disk, argv: list[str], what: str, *, outside: Path | None = None) -> int:
    """Run ``argv`` at every level of free space; check each failure; returns how many failed.

    The command must fail at 0 bytes free and succeed with the most room."""
    failed = 0
    for level in LEVELS:
        disk.leave(level)
        before, free = store_contents(Store(disk.root)), disk.free()
        proc = run_layerfs(*argv, root=disk.root, check=False)
        if proc.returncode == 0:
            assert level > 0, f"{what} succeeded with no room at all"
            disk.intact()
            print(f"{what}: ENOSPC at {failed} levels of free space, then succeeded with {level} bytes free")
            return failed
        failed += 1
        errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]  # load's progress: stderr
        assert len(errors) == 1 and proc.stderr.strip().endswith(errors[0]), proc.stderr
        assert errors[0].startswith(f"Error: {what}") and "no space left on device" in errors[0].lower(), errors[0]
        assert store_contents(Store(disk.root)) == before, f"at {level} bytes free"
        assert disk.free() == free, f"at {level} bytes free: {free - disk.free()} bytes not given back"
        if outside is not None:
            assert not any(p.name.startswith(f".{outside.name}") or p == outside for p in outside.parent.iterdir())
        disk.filler.unlink()  # room for verify's own runs
        disk.intact()
    raise AssertionError(f"{what} failed even with {LEVELS[-1]} bytes free")


def test_load_on_a_full_disk(disk: Disk) -> None:
    failed = _sweep(disk, ["load", "--tag", "new:1", f"oci:{disk.layouts / 'new'}:1"], "load ")
    assert failed >= 6
    assert Store(disk.root).get("new:1")


def test_commit_on_a_full_disk(disk: Disk) -> None:
    failed = _sweep(disk, ["commit", "keep", "committed:1"], "commit")
    assert failed >= 6
    image = Store(disk.root).get("committed:1")
    assert (Store(disk.root).layer_dirs(image)[-1] / "mine.txt").is_file()


def test_save_on_a_full_disk(disk: Disk) -> None:
    out = disk.small / "out.tar"
    failed = _sweep(disk, ["save", "-o", str(out), "keep:1"], "save", outside=out)
    assert failed >= 4
    assert out.stat().st_size > 200 << 10


def test_pull_on_a_full_disk(disk: Disk, tmp_path: Path) -> None:
    require_tool("docker-registry", "skopeo")
    (tmp_path / "storage").mkdir()
    registry = Registry.start(tmp_path / "registry", tmp_path / "storage")
    try:
        push(f"oci:{disk.layouts / 'new'}:1", f"{registry.host}/full/new:1")
        ref = f"{registry.host}/full/new:1"
        failed = _sweep(disk, ["pull", "-q", ref], f"pull {ref}")
        assert failed >= 6
        assert Store(disk.root).get(ref)
    finally:
        registry.stop()


def test_a_pull_on_a_full_disk_leaves_the_layers_an_earlier_pull_kept(disk: Disk, tmp_path: Path) -> None:
    """The layers a failed pull of the image kept (for the next pull to resume) are not this
    pull's: its clean-up after ENOSPC forgets only what it marked itself."""
    require_tool("docker-registry", "skopeo")
    (tmp_path / "storage").mkdir()
    registry = Registry.start(tmp_path / "registry", tmp_path / "storage")
    try:
        ref = f"{registry.host}/full/new:1"
        push(f"oci:{disk.layouts / 'new'}:1", ref)
        run_layerfs("load", "--tag", "new:1", f"oci:{disk.layouts / 'new'}:1", root=disk.root)
        store = Store(disk.root)
        diff_ids = [d for d in store.get("new:1").diff_ids if d not in store.get("keep:1").diff_ids]
        with store.hold(diff_ids):  # as a pull of it that failed at its end keeps them
            run_layerfs("rm", "new:1", root=disk.root)
            for diff_id in diff_ids:
                store.keep_layer(diff_id)
        kept = store_contents(store)
        assert len(kept["layers"]) == 4 and len(kept["tmp"]) == 2
        disk.leave(0)
        proc = run_layerfs("pull", "-q", ref, root=disk.root, check=False)
        assert proc.returncode == 1 and "no space left on device" in proc.stderr.lower(), proc.stderr
        assert store_contents(store) == kept
        disk.filler.unlink()
        disk.intact()
    finally:
        registry.stop()


def test_a_write_in_a_mounted_container_gets_enospc_and_the_daemon_serves_on(disk: Disk, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    run_layerfs("mount", "--name", "keep", "keep:1", str(mnt), root=disk.root)
    try:
        disk.leave(64 << 10)
        with pytest.raises(OSError) as err:
            with open(mnt / "huge.bin", "wb") as f:
                for _ in range(64):
                    f.write(os.urandom(64 << 10))
                    f.flush()
                os.fsync(f.fileno())
        assert err.value.errno == errno.ENOSPC
        # the daemon serves on: what was there reads, and once room is made, writes work
        assert (mnt / "mine.txt").read_text() == "the container's own file\n"
        assert (mnt / "keep" / "data").stat().st_size == 200 << 10
        os.unlink(mnt / "huge.bin")
        (mnt / "after.txt").write_text("written after the disk was full\n")
        assert (mnt / "after.txt").read_text() == "written after the disk was full\n"
    finally:
        run_layerfs("umount", str(mnt), root=disk.root)
    disk.filler.unlink()
    disk.intact()


def test_rm_and_prune_work_with_zero_bytes_free(disk: Disk, tmp_path: Path) -> None:
    lay = disk.layouts
    for name in ("a", "b", "c"):
        make_layout(lay / name, [BASE, {name: os.urandom(100 << 10)}], tag="1")
        run_layerfs("load", "--tag", f"{name}:1", f"oci:{lay / name}:1", root=disk.root)
    mnt = tmp_path / "mnt"
    run_layerfs("mount", "--name", "spare", "c:1", str(mnt), root=disk.root)
    run_layerfs("umount", str(mnt), root=disk.root)
    run_layerfs("tag", "b:1", "a:1", root=disk.root)  # a's image is dangling now
    steps = [(["image", "prune", "-f"], "deleted: "), (["rm", "b:1", "a:1"], "Deleted: "),
             (["container", "prune", "-f"], "Deleted Containers:"), (["system", "prune", "-af"], "deleted: ")]
    kept = tmp_path / "kept"
    kept.mkdir()
    run_layerfs("mount", "--name", "keep", "keep:1", str(kept), root=disk.root)  # prune leaves it
    try:
        for argv, said in steps:
            disk.leave(0)
            assert disk.free() == 0
            proc = run_layerfs(*argv, root=disk.root, check=False)
            assert proc.returncode == 0 and said in proc.stdout, (argv, proc.stdout, proc.stderr)
    finally:
        run_layerfs("umount", str(kept), root=disk.root)
    disk.filler.unlink()
    disk.intact()
    ps = run_layerfs("ps", "--format", "json", root=disk.root).stdout
    names = [json.loads(line)["Names"] for line in ps.splitlines()]
    assert names == ["keep"]
    assert [i.repo_tags for i in Store(disk.root).images()] == [("keep:1",)]
