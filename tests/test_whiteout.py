"""layerfs._layer.whiteout: marker names, writing the overlay form, reading every form of
docs/overlay.rst "Whiteouts and opaque directories".

The read side is checked against the kernel: a whiteout the kernel overlay itself writes (an
unlink through a mount) must read as one, and ours must hide lower entries in a kernel mount.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_root, require_tool

from layerfs import _sys
from layerfs._layer import whiteout as _whiteout
from layerfs._layer.whiteout import Marker

CLASSIFY_CASES = [
    ("plain", "file", Marker.NONE, None),
    ("dot-prefixed", ".whx", Marker.NONE, None),
    ("whiteout", ".wh.file", Marker.WHITEOUT, "file"),
    ("whiteout of dotfile", ".wh..bashrc", Marker.WHITEOUT, ".bashrc"),
    ("opaque", ".wh..wh..opq", Marker.OPAQUE, None),
    ("aufs link dir", ".wh..wh.plnk", Marker.META, None),
    ("aufs other", ".wh..wh.aufs", Marker.META, None),
    ("bare prefix", ".wh.", Marker.INVALID, None),
    ("whiteout of dot", ".wh..", Marker.INVALID, None),
    ("whiteout of dotdot", ".wh...", Marker.INVALID, None),
]


@pytest.mark.parametrize("name,component,kind,target", CLASSIFY_CASES, ids=[c[0] for c in CLASSIFY_CASES])
def test_classify(name: str, component: str, kind: Marker, target: str | None) -> None:
    assert _whiteout.classify(component) is kind
    assert _whiteout.whiteout_target(component) == target
    if target is not None:
        assert _whiteout.whiteout_name(target) == component


def test_private_xattrs() -> None:
    for attr in ("trusted.overlay.opaque", "user.overlay.redirect", "user.fuseoverlayfs.opaque"):
        assert _whiteout.is_private_xattr(attr)
    for attr in ("user.foo", "security.capability", "trusted.other", "user.overlayx"):
        assert not _whiteout.is_private_xattr(attr)


@pytest.fixture
def dirfd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def test_write_whiteout(tmp_path: Path, dirfd: int) -> None:
    _whiteout.write_whiteout(dirfd, "gone")
    st = os.lstat(tmp_path / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 and stat.S_IMODE(st.st_mode) == 0
    assert _whiteout.is_whiteout(st)
    with pytest.raises(FileExistsError):
        _whiteout.write_whiteout(dirfd, "gone")
    if os.geteuid() == 0:
        _whiteout.write_whiteout(dirfd, "owned", uid=1000, gid=2000)
        st = os.lstat(tmp_path / "owned")
        assert (st.st_uid, st.st_gid) == (1000, 2000)


@pytest.mark.parametrize("privileged", [True, False], ids=["root", "rootless"])
def test_write_opaque(tmp_path: Path, privileged: bool) -> None:
    if privileged:
        require_root()
    (tmp_path / "d").mkdir()
    fd = os.open(tmp_path / "d", os.O_PATH | os.O_DIRECTORY)   # O_PATH fds are enough
    try:
        assert not _whiteout.is_opaque(fd)
        _whiteout.write_opaque(fd, privileged=privileged)
        attr = "trusted.overlay.opaque" if privileged else "user.overlay.opaque"
        assert os.getxattr(tmp_path / "d", attr) == b"y"
        assert _whiteout.is_opaque(fd)
    finally:
        os.close(fd)


def _opaque_dir(tmp_path: Path, name: str, setup: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    if setup.startswith("xattr "):
        attr, _, value = setup[len("xattr "):].partition("=")
        os.setxattr(d, attr, value.encode())
    elif setup == "marker file":
        (d / ".wh..wh..opq").write_bytes(b"")
    return d


OPAQUE_CASES = [
    # (name, setup, is_opaque, holds_xattr_whiteouts, needs root)
    ("nothing", "", False, False, False),
    ("trusted y", "xattr trusted.overlay.opaque=y", True, False, True),
    ("user y", "xattr user.overlay.opaque=y", True, False, False),
    ("fuse-overlayfs y", "xattr user.fuseoverlayfs.opaque=y", True, False, False),
    ("OCI marker file", "marker file", True, False, False),
    ("trusted x is not opaque", "xattr trusted.overlay.opaque=x", False, True, True),
    ("user x is not opaque", "xattr user.overlay.opaque=x", False, True, False),
    ("other value", "xattr user.overlay.opaque=n", False, False, False),
]


@pytest.mark.parametrize("name,setup,opaque,xattr_whiteouts,root", OPAQUE_CASES,
                         ids=[c[0] for c in OPAQUE_CASES])
def test_read_opaque(tmp_path: Path, name: str, setup: str, opaque: bool, xattr_whiteouts: bool,
                     root: bool) -> None:
    if root:
        require_root()
    d = _opaque_dir(tmp_path, "d", setup)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert _whiteout.is_opaque(fd) is opaque
        assert _whiteout.holds_xattr_whiteouts(fd) is xattr_whiteouts
    finally:
        os.close(fd)


def test_read_whiteout_forms(tmp_path: Path) -> None:
    require_root()   # trusted.* xattrs and a real char device
    d = tmp_path / "d"
    d.mkdir()
    os.setxattr(d, "trusted.overlay.opaque", b"x")   # may hold xattr whiteouts
    os.mknod(d / "dev00", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    os.mknod(d / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (d / "xw").write_bytes(b"")
    os.setxattr(d / "xw", "trusted.overlay.whiteout", b"")
    (d / "uxw").write_bytes(b"")
    os.setxattr(d / "uxw", "user.overlay.whiteout", b"")
    (d / "plain").write_bytes(b"")
    (d / ".wh.oci").write_bytes(b"")
    (d / "sub").mkdir()
    os.symlink("dev00", d / "link")
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        expect = {"dev00": True, "null": False, "xw": True, "uxw": True, "plain": False, "sub": False,
                  "link": False, ".wh.oci": False}
        for name, want in expect.items():
            st = os.lstat(d / name)
            assert _whiteout.is_whiteout(st, dirfd=fd, name=name, xattr_whiteouts=True) is want, name
        # without overlay.opaque=x on the parent, xattr whiteouts are ordinary files
        st = os.lstat(d / "xw")
        assert not _whiteout.is_whiteout(st, dirfd=fd, name="xw", xattr_whiteouts=False)
        assert _whiteout.whited_out_names(fd) == {"dev00", "xw", "uxw", "oci"}
    finally:
        os.close(fd)


def _mount_overlay(lowers: list[Path], mnt: Path, upper: Path | None = None, work: Path | None = None) -> None:
    opts = "lowerdir=" + ":".join(str(p) for p in lowers)
    if upper is not None and work is not None:
        opts += f",upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)], check=True, timeout=30)


def test_kernel_whiteouts_read_and_ours_obeyed(tmp_path: Path) -> None:
    """The kernel's own whiteouts read as whiteouts; ours hide lower entries in a kernel mount."""
    require_root()
    require_tool("mount", "umount")
    lower, upper, work, mnt = (tmp_path / n for n in ("lower", "upper", "work", "mnt"))
    for p in (lower, upper, work, mnt):
        p.mkdir()
    (lower / "f").write_text("lower")
    (lower / "d").mkdir()
    (lower / "d" / "old").write_text("lower")
    _mount_overlay([lower], mnt, upper, work)
    try:
        os.unlink(mnt / "f")
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)
    st = os.lstat(upper / "f")
    assert _whiteout.is_whiteout(st), "the kernel's whiteout"

    # our overlay form, as a layer above `lower`
    ours = tmp_path / "ours"
    ours.mkdir()
    fd = os.open(ours, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _whiteout.write_whiteout(fd, "f")
        os.mkdir("d", dir_fd=fd)
        dfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        try:
            _whiteout.write_opaque(dfd, privileged=True)
            _sys.create_file(dfd, "new", b"ours", mode=0o644, uid=0, gid=0, atime_ns=0, mtime_ns=0,
                             chown=False)
        finally:
            os.close(dfd)
    finally:
        os.close(fd)
    _mount_overlay([ours, lower], mnt)
    try:
        assert sorted(os.listdir(mnt)) == ["d"]
        assert os.listdir(mnt / "d") == ["new"]
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)


# ---------------------------------------------------------------------------------------------
# One home for the marker forms: the C walk of the merged index (csrc/mergebuild.c) reads the
# forms this module defines, and the Python readers here apply the same rule.

def test_the_merge_reads_the_forms_defined_here() -> None:
    from layerfs._mount import index as _index

    assert _index.marker_forms() == {name: getattr(_whiteout, name) for name in _index.MARKER_FORMS}


def test_fuse_overlayfs_opaque_x_holds_no_xattr_whiteouts(tmp_path: Path) -> None:
    """``x`` is a value of the kernel's ``overlay.opaque`` only: with fuse-overlayfs's xattr it
    means nothing, for these readers as for the merge (which kept ``y/x`` rules apart before)."""
    from layerfs._mount import merge as _merge
    from layerfs._mount.index import Index

    (tmp_path / "layer").mkdir()
    d = _opaque_dir(tmp_path / "layer", "d", "xattr user.fuseoverlayfs.opaque=x")
    (d / "uxw").write_bytes(b"")
    os.setxattr(d / "uxw", "user.overlay.whiteout", b"")
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert not _whiteout.is_opaque(fd)
        assert not _whiteout.holds_xattr_whiteouts(fd)
        assert _whiteout.whited_out_names(fd) == set()
    finally:
        os.close(fd)
    data, _ = _merge.build([tmp_path / "layer"])
    (tmp_path / "i.idx").write_bytes(data)
    index = Index(tmp_path / "i.idx")
    assert index.lookup(index.lookup(1, b"d"), b"uxw") > 0  # an ordinary file in the merged view
