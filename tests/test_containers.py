"""Containers: every writable mount of an image belongs to one, as a docker user expects.

- ``layerfs mount IMAGE DIR`` makes a container (a generated name, printed) and mounts it writable;
  its changes survive ``umount`` and come back with ``mount --name NAME``;
- ``--rm`` removes the container and its changes when the mount ends; ``--read-only`` makes none;
- ``ps`` lists containers with image, mount point and size; ``rm NAME`` removes one, refused while
  it is mounted; an image a container was made from cannot be deleted (``-f``: untagged, kept);
- ``--upper/--work`` keep the changes elsewhere; after ``umount`` the kernel overlay mounts the
  image's layer dirs with the container's upper and shows what layerfs showed.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from _images import BuiltImage, busybox_image  # noqa: F401 - a fixture
from _trees import assert_same_tree, snapshot
from conftest import require_fuse, require_root, run_layerfs

from layerfs import _proc


@pytest.fixture
def root(tmp_path: Path, busybox_image: BuiltImage) -> Iterator[Path]:  # noqa: F811
    """A store holding the busybox image as ``bb:1``; every mount under tmp_path is gone after."""
    require_root()
    require_fuse()
    store = tmp_path / "store"
    run_layerfs("load", "--tag", "bb:1", busybox_image.source, root=store)
    yield store
    for m in [m.mountpoint for m in _proc.mounts() if m.mountpoint.startswith(str(tmp_path))]:
        subprocess.run(["umount", "-l", m], capture_output=True)


def _ps(store: Path) -> list[dict[str, str]]:
    out = run_layerfs("ps", "--format", "json", root=store).stdout
    return [json.loads(line) for line in out.splitlines()]


def _mnt(tmp_path: Path, name: str = "mnt") -> Path:
    p = tmp_path / name
    p.mkdir(exist_ok=True)
    return p


def test_a_writable_mount_makes_a_container_whose_changes_persist(root: Path, tmp_path: Path) -> None:
    mnt = _mnt(tmp_path)
    name = run_layerfs("mount", "bb:1", str(mnt), root=root).stdout.strip()
    assert name and "_" in name
    (mnt / "new.txt").write_text("kept\n")
    os.unlink(mnt / "etc" / "group")
    (rows,) = _ps(root)
    assert rows["Names"] == name and rows["Image"] == "bb:1" and rows["MountedOn"] == str(mnt)
    run_layerfs("umount", str(mnt), root=root)
    assert _ps(root)[0]["MountedOn"] == ""
    run_layerfs("mount", "--name", name, "bb:1", str(mnt), root=root)
    assert (mnt / "new.txt").read_text() == "kept\n"
    assert not (mnt / "etc" / "group").exists()
    run_layerfs("umount", str(mnt), root=root)
    assert len(_ps(root)) == 1


def test_rm_of_a_mounted_container_is_refused_then_works(root: Path, tmp_path: Path) -> None:
    mnt = _mnt(tmp_path)
    run_layerfs("mount", "--name", "web", "bb:1", str(mnt), root=root)
    refused = run_layerfs("rm", "web", root=root, check=False)
    assert refused.returncode == 1 and "mounted" in refused.stderr
    image_id = json.loads(run_layerfs("inspect", "bb:1", root=root).stdout)[0]["Id"]
    refused = run_layerfs("rm", "-f", image_id, root=root, check=False)
    assert refused.returncode == 1 and "being used by the mount" in refused.stderr
    run_layerfs("umount", str(mnt), root=root)
    run_layerfs("rm", "bb:1", root=root)  # untag: one repository left
    image_rm = run_layerfs("rm", image_id, root=root, check=False)
    assert image_rm.returncode == 1 and "being used by stopped container" in image_rm.stderr
    assert run_layerfs("rm", "web", root=root).stdout.strip() == "web"
    assert _ps(root) == []
    assert not list((root / "containers").iterdir())
    assert f"Deleted: {image_id}" in run_layerfs("rm", image_id, root=root).stdout


def test_rm_option_removes_the_container_at_umount(root: Path, tmp_path: Path) -> None:
    mnt = _mnt(tmp_path)
    run_layerfs("mount", "--rm", "--name", "tmp1", "bb:1", str(mnt), root=root)
    (mnt / "x").write_text("gone soon")
    assert [r["Names"] for r in _ps(root)] == ["tmp1"]
    run_layerfs("umount", str(mnt), root=root)
    assert _ps(root) == []


def test_read_only_makes_no_container(root: Path, tmp_path: Path) -> None:
    mnt = _mnt(tmp_path)
    run_layerfs("mount", "--read-only", "bb:1", str(mnt), root=root)
    with pytest.raises(OSError):
        (mnt / "x").write_text("no")
    run_layerfs("umount", str(mnt), root=root)
    assert _ps(root) == []


def test_a_failed_mount_leaves_no_container(root: Path, tmp_path: Path) -> None:
    busy = _mnt(tmp_path, "busy")
    (busy / "not-empty").write_text("x")
    failed = run_layerfs("mount", "--name", "nope", "bb:1", str(busy), root=root, check=False)
    assert failed.returncode == 1 and "not empty" in failed.stderr
    assert _ps(root) == []


def test_names_are_unique_and_checked(root: Path, tmp_path: Path) -> None:
    mnt, mnt2 = _mnt(tmp_path), _mnt(tmp_path, "mnt2")
    run_layerfs("mount", "--name", "one", "bb:1", str(mnt), root=root)
    twice = run_layerfs("mount", "--name", "one", "bb:1", str(mnt2), root=root, check=False)
    assert twice.returncode == 1 and "already mounted" in twice.stderr
    bad = run_layerfs("mount", "--name", "-bad name", "bb:1", str(mnt2), root=root, check=False)
    assert bad.returncode == 1 and "Invalid container name" in bad.stderr
    run_layerfs("umount", str(mnt), root=root)


def test_upper_elsewhere_is_the_kernel_format(root: Path, tmp_path: Path) -> None:
    """The container's upper, after umount, mounted by the kernel over the image's layer dirs
    (metacopy=on: layerfs copies only metadata on chmod), shows what layerfs showed."""
    mnt, upper, work = _mnt(tmp_path), tmp_path / "u", tmp_path / "w"
    upper.mkdir()
    work.mkdir()
    run_layerfs("mount", "--upper", str(upper), "--work", str(work), "bb:1", str(mnt), root=root)
    (mnt / "etc" / "motd").write_text("hello\n")
    os.chmod(mnt / "bin" / "busybox", 0o700)
    os.unlink(mnt / "etc" / "passwd")
    os.mkdir(mnt / "data")
    ours = snapshot(mnt)
    run_layerfs("umount", str(mnt), root=root)
    assert (upper / "etc" / "motd").read_text() == "hello\n"
    layers = json.loads(run_layerfs("inspect", "bb:1", root=root).stdout)[0]["GraphDriver"]["Data"]["LowerDir"]
    kmnt = _mnt(tmp_path, "kernel")
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={layers},upperdir={upper},workdir={work},metacopy=on", str(kmnt)], check=True)
    try:
        assert_same_tree(snapshot(kmnt), ours, names=("kernel overlay", "layerfs"))
    finally:
        subprocess.run(["umount", str(kmnt)], check=True)


def test_diff_and_commit_from_the_command_line(root: Path, tmp_path: Path) -> None:
    """`diff` prints docker's lines for a container (by name or mount point); `commit` makes an
    image that, mounted, shows what the container showed."""
    mnt = _mnt(tmp_path)
    run_layerfs("mount", "--name", "work", "bb:1", str(mnt), root=root)
    (mnt / "new").write_text("hi\n")
    os.unlink(mnt / "etc" / "group")
    os.mkdir(mnt / "etc" / "x")
    expected = ["C /etc", "D /etc/group", "A /etc/x", "A /new"]
    assert run_layerfs("diff", "work", root=root).stdout.splitlines() == expected
    assert run_layerfs("diff", str(mnt), root=root).stdout.splitlines() == expected
    container_view = snapshot(mnt)
    image_id = run_layerfs("commit", "-m", "made in a test", "work", "mine:1", root=root).stdout.strip()
    assert image_id.startswith("sha256:")
    run_layerfs("umount", str(mnt), root=root)
    ro = _mnt(tmp_path, "ro")
    run_layerfs("mount", "--read-only", "mine:1", str(ro), root=root)
    try:
        assert_same_tree(snapshot(ro), container_view, names=("committed image", "container"))
    finally:
        run_layerfs("umount", str(ro), root=root)
    history = json.loads(run_layerfs("inspect", "mine:1", root=root).stdout)[0]["Comment"]
    assert history == "made in a test"
    missing = run_layerfs("diff", "nosuch", root=root, check=False)
    assert missing.returncode == 1 and missing.stderr.strip() == "Error: No such container: nosuch"
