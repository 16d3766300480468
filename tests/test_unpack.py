"""layerfs._layer.unpack: applying layer tars in overlay form, verifying digests, refusing hostile tars.

Tables of named cases (umoci's TestUnpackEntry* style):

- ENTRY_CASES: one tar each, built with Python's tarfile (PAX), applied as root and rootless; the
  expected tree is checked attribute by attribute.
- HOSTILE_CASES: tars that try to leave the root or break the rules; each must raise the named
  error with the entry in the message, and leave the sentinel dir beside ``dest`` untouched.
- STREAM_CASES: compression forms, digests, truncation and trailing bytes.
- GNU tar: a real tree with setcap, setuid, sparse, devices, hardlinks, long and non-UTF-8 names,
  archived by GNU tar and compared with the original.
- a kernel overlay mounted over unpacked layers shows the whiteouts and opaque dirs obeyed.
- a rootless run (a subprocess as uid 65534) writes ``user.overlay.opaque`` and keeps owners,
  modes and devices in ``user.containers.override_stat`` (the rootless cases read attributes
  through it, as the mount does: :func:`lstat_image`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard
from conftest import require_root, require_tool

from layerfs._errors import BadArchive, DigestMismatch
from layerfs._layer import override as _override
from layerfs._layer.unpack import MAX_HEADER_BYTES, LayerStats, inherit_attributes, unpack_layer

ROOT = os.geteuid() == 0
#: security.capability of ``setcap cap_net_bind_service=ep`` (version 2)
CAPABILITY = bytes.fromhex("0100000200040000000000000000000000000000")
T0 = 1_600_000_000   # a fixed mtime


# -- building tars ------------------------------------------------------------------------

@dataclass
class E:
    """One tar entry to build."""

    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: float = T0
    link: str = ""
    dev: tuple[int, int] = (0, 0)
    pax: dict[str, str] = field(default_factory=dict)


def d(name: str, mode: int = 0o755, **kw: object) -> E:
    return E(name, tarfile.DIRTYPE, mode=mode, **kw)  # type: ignore[arg-type]


def f(name: str, data: bytes = b"", mode: int = 0o644, **kw: object) -> E:
    return E(name, tarfile.REGTYPE, data=data, mode=mode, **kw)  # type: ignore[arg-type]


def sym(name: str, target: str, **kw: object) -> E:
    return E(name, tarfile.SYMTYPE, link=target, mode=0o777, **kw)  # type: ignore[arg-type]


def hard(name: str, target: str, **kw: object) -> E:
    return E(name, tarfile.LNKTYPE, link=target, **kw)  # type: ignore[arg-type]


def make_tar(entries: list[E], *, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A tar of ``entries`` in order (duplicates and markers kept as given)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tf:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.kind
            info.mode = e.mode
            info.uid, info.gid = e.uid, e.gid
            info.mtime = e.mtime
            info.linkname = e.link
            info.devmajor, info.devminor = e.dev
            info.size = len(e.data) if e.kind == tarfile.REGTYPE else 0
            info.pax_headers = dict(e.pax)
            tf.addfile(info, io.BytesIO(e.data) if info.size else None)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def unpack(data: bytes, dest: Path, *, blob: bytes | None = None, privileged: bool | None = None,
           **kw: object) -> LayerStats:
    """Unpack tar ``data`` (sent as ``blob`` if given) into a fresh 0700 ``dest``."""
    dest.mkdir(mode=0o700)
    return unpack_layer(io.BytesIO(data if blob is None else blob), dest, diff_id=sha(data),
                        privileged=privileged, **kw)  # type: ignore[arg-type]


# -- reading trees ------------------------------------------------------------------------

def xattrs_of(path: Path) -> dict[str, bytes]:
    """The xattrs of ``path`` the image gave it (not the override, which holds its owner and mode)."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in names
            if not n.startswith(("security.selinux", _override.PREFIX))}


def lstat_image(path: Path, priv: bool = False) -> os.stat_result:
    """``lstat`` as the image means it: with the owner, mode and device number that an
    unprivileged unpack keeps in ``user.containers.override_stat`` (as the mount shows them)."""
    st = os.lstat(path)
    if priv or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return st
    try:
        value = os.getxattr(path, _override.XATTR, follow_symlinks=False)
    except OSError:
        return st
    return _override.effective(st, _override.parse(value, st.st_mode))


def snapshot(top: Path, *, times: bool = True) -> dict[str, tuple[object, ...]]:
    """Everything a user relies on, per path: type, mode, owner, size, content, link, device,
    xattrs, mtime (not for dirs when ``times`` is False), inode group (hardlinks)."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = os.fsencode(p.relative_to(top))
            content: object = None
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            link = os.readlink(p) if stat.S_ISLNK(st.st_mode) else None
            group = inodes.setdefault(st.st_ino, rel.decode("utf-8", "surrogateescape"))
            mtime = None if stat.S_ISDIR(st.st_mode) and not times else st.st_mtime_ns
            out[rel.decode("utf-8", "surrogateescape")] = (
                stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                st.st_size if not stat.S_ISDIR(st.st_mode) else None, content, link,
                st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else None,
                tuple(sorted(xattrs_of(p).items())), mtime, group)
    return out


# -- the entry table ----------------------------------------------------------------------

Check = Callable[[Path, bool], None]


def kind_of(p: Path) -> str:
    st = lstat_image(p)
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return "whiteout"
    return {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFCHR: "chr",
            stat.S_IFBLK: "blk", stat.S_IFIFO: "fifo"}[stat.S_IFMT(st.st_mode)]


def opaque(p: Path, privileged: bool) -> bool:
    attr = "trusted.overlay.opaque" if privileged else "user.overlay.opaque"
    return xattrs_of(p).get(attr) == b"y"


@dataclass
class Case:
    name: str
    entries: list[E]
    #: path -> expected kind ("file", "dir", "symlink", "whiteout", "fifo", "chr", "absent")
    kinds: dict[str, str] = field(default_factory=dict)
    #: extra checks (dest, privileged)
    check: Check | None = None


def _check(fn: Check) -> Check:
    return fn


def chk_file_attrs(dest: Path, priv: bool) -> None:
    st = lstat_image(dest / "bin" / "su", priv)
    assert stat.S_IMODE(st.st_mode) == 0o4755
    assert (dest / "bin" / "su").read_bytes() == b"setuid"
    assert st.st_mtime_ns == 1_234_567_890 * 10**9
    assert (st.st_uid, st.st_gid) == (3_000_000, 42)
    if not priv:
        assert stat.S_IMODE(os.lstat(dest / "bin" / "su").st_mode) == 0o755, "no setuid bit on disk"
    st = lstat_image(dest / "tmp", priv)
    assert stat.S_IMODE(st.st_mode) == 0o1777
    assert st.st_mtime_ns == 1_000_000_000 * 10**9, "dir mtime set after its children"


def chk_exact_times(dest: Path, priv: bool) -> None:
    st = os.lstat(dest / "f")
    assert st.st_mtime_ns == 1_500_000_000_123_456_789
    assert st.st_atime_ns == 1_700_000_000_000_000_001
    st = os.lstat(dest / "old")
    assert st.st_atime_ns == st.st_mtime_ns == 1_500_000_000 * 10**9, "atime is never before mtime"
    assert os.lstat(dest / "link").st_mtime_ns == 1_400_000_000 * 10**9, "symlink mtime via lutimes"
    assert os.lstat(dest / "pre1970").st_mtime_ns == 0, "times before the epoch become the epoch"


def chk_hardlink(dest: Path, priv: bool) -> None:
    a, b = os.lstat(dest / "a"), os.lstat(dest / "dir" / "b")
    assert a.st_ino == b.st_ino and a.st_nlink == 2
    assert (dest / "dir" / "b").read_bytes() == b"shared"


def chk_symlink(dest: Path, priv: bool) -> None:
    assert os.readlink(dest / "abs") == "/etc/passwd"
    assert os.readlink(dest / "rel") == "../nowhere"
    if priv:
        assert os.lstat(dest / "abs").st_uid == 7


def chk_long_names(dest: Path, priv: bool) -> None:
    long_dir = "d" * 120
    comp = "n" * 255
    assert (dest / long_dir / comp).read_bytes() == b"long"
    assert os.readlink(dest / "longlink") == "t" * 300


def chk_non_utf8(dest: Path, priv: bool) -> None:
    names = os.listdir(os.fsencode(dest))
    assert b"caf\xe9" in names and b"\xff\xfe.txt" in names
    assert (dest / os.fsdecode(b"\xff\xfe.txt")).read_bytes() == b"latin"


def chk_whiteout_owner(dest: Path, priv: bool) -> None:
    st = os.lstat(dest / "gone")
    assert stat.S_IMODE(st.st_mode) == 0
    if priv:
        assert (st.st_uid, st.st_gid) == (11, 12)


def chk_opaque(dest: Path, priv: bool) -> None:
    assert opaque(dest / "o", priv)
    assert opaque(dest / "late", priv), "a marker before its dir's entry still counts"
    assert not opaque(dest / "plain", priv)


def chk_same_layer_dir_whiteout(dest: Path, priv: bool) -> None:
    assert opaque(dest / "x", priv), "dir X whited out in its own layer becomes opaque"
    assert opaque(dest / "y", priv)
    assert (dest / "x" / "kept").read_bytes() == b"k"


def chk_replaced_dirs_opaque(dest: Path, priv: bool) -> None:
    for name in ("a", "b", "c"):
        assert opaque(dest / name, priv), f"{name}: replaced in its own layer, so nothing below shows"
    assert not opaque(dest / "keep", priv), "a dir over a dir is the same dir"


def chk_setgid_parents(dest: Path, priv: bool) -> None:
    for path, gid in (("g/h", 7), ("later", 8)):
        st = lstat_image(dest / path, priv)
        assert stat.S_IMODE(st.st_mode) == 0o2755, path
        assert st.st_gid == gid, path


def chk_dir_over_dir(dest: Path, priv: bool) -> None:
    assert stat.S_IMODE(lstat_image(dest / "d", priv).st_mode) == 0o700
    assert {k: v for k, v in xattrs_of(dest / "d").items() if k.startswith("user.")} == {"user.b": b"2"}, \
        "the later entry's xattrs replace the earlier's, as its mode does"
    assert (dest / "d" / "child").exists()


def chk_root_entry(dest: Path, priv: bool) -> None:
    st = lstat_image(dest, priv)
    assert stat.S_IMODE(st.st_mode) == 0o750
    assert st.st_mtime_ns == 1_111_111_111 * 10**9
    assert st.st_uid == 5


def chk_no_root_entry(dest: Path, priv: bool) -> None:
    for p in (dest, dest / "a", dest / "a" / "b"):
        st = lstat_image(p, priv)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o755, 0, 0), "implied dirs: 0755, root's"
    for p in (dest, dest / "a", dest / "a" / "b"):
        assert os.lstat(p).st_mtime_ns == 0, "implied dirs get a fixed time, never the clock"


def chk_xattrs(dest: Path, priv: bool) -> None:
    x = xattrs_of(dest / "f")
    assert x.get("user.bin") == b"\x00\xff\xfe binary"
    assert x.get("user.text") == b"hello"
    assert "user.empty" not in x, "an empty pax value deletes the record"
    assert "user.overlay.opaque" not in x and "trusted.overlay.opaque" not in x
    assert "user.fuseoverlayfs.opaque" not in xattrs_of(dest / "d")
    assert not opaque(dest / "d", True) and not opaque(dest / "d", False), "tar-supplied opaque dropped"
    if priv:
        assert x.get("trusted.t") == b"1"
    assert xattrs_of(dest / "dir").get("user.d") == b"dir"


def chk_devices(dest: Path, priv: bool) -> None:
    st = lstat_image(dest / "null", priv)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(st.st_mode) == 0o666
    st = lstat_image(dest / "loop0", priv)
    assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(7, 0)
    assert os.lstat(dest / "nulllink").st_ino == os.lstat(dest / "null").st_ino
    assert stat.S_ISFIFO(lstat_image(dest / "fifo", priv).st_mode)
    if not priv:   # what is on disk: empty regular files the caller can read
        for name in ("null", "loop0", "fifo"):
            st = os.lstat(dest / name)
            assert stat.S_ISREG(st.st_mode) and st.st_size == 0 and stat.S_IMODE(st.st_mode) & 0o600 == 0o600


def chk_symlink_parent(dest: Path, priv: bool) -> None:
    assert (dest / "real" / "f").read_bytes() == b"via link"
    assert (dest / "x").read_bytes() == b"clamped"


def chk_pax_fractional(dest: Path, priv: bool) -> None:
    assert (dest / "f").read_bytes() == b"dup-2"


ENTRY_CASES = [
    Case("file attributes", [
        d("bin"), f("bin/su", b"setuid", mode=0o4755, uid=3_000_000, gid=42, mtime=1_234_567_890),
        d("tmp", mode=0o1777, mtime=1_000_000_000), f("tmp/child", b"c")],
        {"bin/su": "file", "tmp": "dir"}, chk_file_attrs),
    Case("exact times", [
        f("f", b"x", pax={"mtime": "1500000000.123456789", "atime": "1700000000.000000001"}),
        f("old", b"x", mtime=1_500_000_000, pax={"atime": "1000000000"}),
        sym("link", "f", mtime=1_400_000_000), f("pre1970", b"x", mtime=-86400)],
        {"f": "file"}, chk_exact_times),
    Case("hardlink to an earlier entry", [f("a", b"shared"), d("dir"), hard("dir/b", "a")],
         {"dir/b": "file"}, chk_hardlink),
    Case("a hard link keeps its target's capability", [
        f("a", b"cap", mode=0o755, pax={"SCHILY.xattr.security.capability": os.fsdecode(CAPABILITY)}),
        hard("b", "a", mode=0o755)], {"b": "file"},
        lambda dest, priv: None if not priv or xattrs_of(dest / "b").get("security.capability") == CAPABILITY
        else pytest.fail("the link's chown dropped security.capability")),
    Case("symlinks stored verbatim", [sym("abs", "/etc/passwd", uid=7), sym("rel", "../nowhere")],
         {"abs": "symlink", "rel": "symlink"}, chk_symlink),
    Case("long names", [d("d" * 120), f("d" * 120 + "/" + "n" * 255, b"long"), sym("longlink", "t" * 300)],
         {}, chk_long_names),
    Case("non-UTF-8 names", [f(os.fsdecode(b"caf\xe9"), b"x"), f(os.fsdecode(b"\xff\xfe.txt"), b"latin")],
         {}, chk_non_utf8),
    Case("whiteout of a file", [f(".wh.gone", uid=11, gid=12)], {"gone": "whiteout", ".wh.gone": "absent"},
         chk_whiteout_owner),
    Case("whiteouts of dir and symlink", [d("sub"), f("sub/.wh.dir"), f(".wh.link")],
         {"sub/dir": "whiteout", "link": "whiteout", "sub/.wh.dir": "absent"}),
    Case("whiteouts of 252- to 255-byte names", [
        f(".wh." + "n" * 255), f(".wh." + "m" * 252), d("d"), f("d/.wh." + "o" * 254)],
        {"n" * 255: "whiteout", "m" * 252: "whiteout", "d/" + "o" * 254: "whiteout"}),
    Case("opaque dir, marker before and after", [
        d("o"), f("o/.wh..wh..opq"), f("o/new"), f("late/.wh..wh..opq"), d("late"), d("plain")],
        {"o/.wh..wh..opq": "absent", "o/new": "file", "late": "dir"}, chk_opaque),
    Case("same-layer file and whiteout: file stays", [f("a", b"1"), f(".wh.a"), f(".wh.b"), f("b", b"2")],
         {"a": "file", "b": "file"}),
    Case("same-layer dir and whiteout: dir stays, opaque", [
        d("x"), f("x/kept", b"k"), f(".wh.x"), f(".wh.y"), d("y")],
        {"x": "dir", "y": "dir"}, chk_same_layer_dir_whiteout),
    Case("whiteout then file below it", [f(".wh.w"), f("w/inner", b"i")],
         {"w": "dir", "w/inner": "file"}, lambda dest, priv: None if opaque(dest / "w", priv) else
         pytest.fail("implied dir over a whiteout must be opaque")),
    Case("type changes: later duplicate wins", [
        f("a", b"file"), d("a"), d("b"), f("b/child"), f("b", b"now a file"), f("c", b"x"), sym("c", "a"),
        sym("e", "/"), d("e"), f("./g", b"dup-1"), f("g", b"dup-2")],
        {"a": "dir", "b": "file", "b/child": "absent", "c": "symlink", "e": "dir", "g": "file"},
        lambda dest, priv: None if (dest / "g").read_bytes() == b"dup-2" else pytest.fail("dup")),
    Case("a symlink below the root replaced by a file", [d("x"), sym("x/l", "t"), f("x/l", b"file")],
         {"x/l": "file"}),
    Case("a dir below the root replaced by a file", [
        d("x"), d("x/y"), d("x/y/s"), f("x/y/s/c"), f("x/y/s", b"file"), f("x/y/t", b"after")],
        {"x/y/s": "file", "x/y/t": "file"}),
    Case("a dir replacing an entry of its layer is opaque", [
        E("a", tarfile.FIFOTYPE), d("a"), d("b"), f("b/.wh.f"), f("b/g"), E("b", tarfile.FIFOTYPE), d("b"),
        f("c"), d("c"), d("keep"), d("keep")],
        {"a": "dir", "b": "dir", "b/f": "absent", "b/g": "absent", "c": "dir"}, chk_replaced_dirs_opaque),
    Case("whiteouts an opaque dir of the layer covers are left out", [
        d("a"), f("a/.wh..wh..opq"), f("a/.wh.f"), f("b/.wh.x"), f("b/.wh..wh..opq"), f("c/d/.wh.e"),
        f("c/.wh..wh..opq"), f(".wh.w"), f("w/.wh.v"), d("x"), f("x/.wh.y"), f(".wh..wh..opq"), f(".wh.r")],
        {"a/f": "absent", "b/x": "absent", "c/d/e": "absent", "w/v": "absent", "x/y": "whiteout",
         "r": "whiteout"}),
    Case("dirs made only for markers go when the layer whites them out or their parent opaque", [
        f("m/.wh.x"), f(".wh.m"), f("n/o/.wh.x"), f("n/.wh..wh..opq"), f("p/q/r"), f("p/.wh.z"), f(".wh.p")],
        {"m": "whiteout", "n": "dir", "n/o": "absent", "p": "dir", "p/z": "absent", "p/q/r": "file"},
        lambda dest, priv: None if opaque(dest / "p", priv) else pytest.fail("p: whited out in its layer")),
    Case("an implicit dir in a setgid dir is setgid, as mkdir(2) makes it", [
        d("g", 0o2775, gid=7), f("g/h/x"), d("./", mode=0o2755, gid=8), f("later/x")],
        {"g/h": "dir"}, chk_setgid_parents),
    Case("a second root entry replaces the first's xattrs", [
        d("./", pax={"SCHILY.xattr.user.a": "1"}), d("./", pax={"SCHILY.xattr.user.b": "2"})], {},
        lambda dest, priv: None if {k for k in xattrs_of(dest) if k.startswith("user.")} == {"user.b"}
        else pytest.fail(str(xattrs_of(dest)))),
    Case("dir over dir keeps children", [
        d("d", pax={"SCHILY.xattr.user.a": "1"}), f("d/child"), d("d", mode=0o700, pax={"SCHILY.xattr.user.b": "2"})],
        {"d/child": "file"}, chk_dir_over_dir),
    Case("root entry", [d("./", mode=0o750, uid=5, mtime=1_111_111_111), f("x")], {"x": "file"},
         chk_root_entry),
    Case("implied parents", [f("a/b/c", b"deep")], {"a": "dir", "a/b/c": "file"}, chk_no_root_entry),
    Case("xattrs", [
        f("f", b"x", pax={"SCHILY.xattr.user.bin": os.fsdecode(b"\x00\xff\xfe binary"),
                          "SCHILY.xattr.user.text": "hello", "SCHILY.xattr.trusted.t": "1",
                          "SCHILY.xattr.user.empty": "",
                          "SCHILY.xattr.user.overlay.opaque": "y", "SCHILY.xattr.trusted.overlay.opaque": "y",
                          "SCHILY.xattr.security.selinux": "system_u:object_r:bin_t:s0"}),
        d("d", pax={"SCHILY.xattr.trusted.overlay.opaque": "y", "SCHILY.xattr.user.overlay.opaque": "y",
                    "SCHILY.xattr.user.fuseoverlayfs.opaque": "y"}),
        d("dir", pax={"SCHILY.xattr.user.d": "dir"})],
        {}, chk_xattrs),
    Case("devices and fifos", [
        E("null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)), E("loop0", tarfile.BLKTYPE, mode=0o660, dev=(7, 0)),
        E("fifo", tarfile.FIFOTYPE, mode=0o600), hard("nulllink", "null", mode=0o666)], {}, chk_devices),
    Case("symlinked parent resolves inside the layer", [
        d("real"), sym("lnk", "real"), f("lnk/f", b"via link"), sym("up", ".."), f("up/up/x", b"clamped")],
        {"lnk": "symlink"}, chk_symlink_parent),
    Case("entries written through a symlink of the layer count at their real place", [
        d("real"), sym("lnk", "real"), d("lnk/sub"), f("lnk/sub/x", b"x"), f("real/.wh.sub")],
        {"real/sub": "dir", "real/sub/x": "file"},
        lambda dest, priv: None if opaque(dest / "real" / "sub", priv) else pytest.fail("real/sub: not opaque")),
    Case("markers under a non-dir of the layer are ignored", [
        d("x"), f("x/k"), f("d2f", b"now a file"), f("d2f/.wh.child"), f("d2f/.wh..wh..opq"),
        sym("lnk", "x"), f("lnk/.wh.k"), f("lnk/.wh..wh..opq"), f(".wh.w"), f("w/.wh.inner")],
        {"d2f": "file", "x/k": "file", "lnk": "symlink", "w": "whiteout"},
        lambda dest, priv: None if not opaque(dest / "x", priv) else pytest.fail("followed a symlink")),
    Case("AUFS metadata ignored", [d(".wh..wh.plnk"), f(".wh..wh.plnk/123.456", b"x"), f("kept")],
         {".wh..wh.plnk": "absent", "kept": "file"}),
    Case("non-escaping dotdot", [f("a/../b", b"b")], {"b": "file"}),
    Case("empty layer", [], {}),
]


def _ids(cases: list[Case]) -> list[str]:
    return [c.name for c in cases]


@pytest.mark.parametrize("privileged", [True, False], ids=["root", "rootless"])
@pytest.mark.parametrize("case", ENTRY_CASES, ids=_ids(ENTRY_CASES))
def test_entries(tmp_path: Path, case: Case, privileged: bool) -> None:
    if privileged:
        require_root()
    data = make_tar(case.entries)
    stats = unpack(data, tmp_path / "dest", privileged=privileged)
    dest = tmp_path / "dest"
    assert stats.diff_id == sha(data)
    assert stats.entries == len(case.entries)
    assert stats.size == sum(len(e.data) for e in case.entries if e.kind == tarfile.REGTYPE and ".wh." not in e.name)
    for path, kind in case.kinds.items():
        p = dest / path
        if kind == "absent":
            assert not os.path.lexists(p), path
        else:
            assert kind_of(p) == kind, path
    if case.check is not None:
        case.check(dest, privileged)


# -- implicit directories take the attributes of the layers below --------------------------

@dataclass
class Inherit:
    name: str
    #: the layers below, base first
    lowers: list[list[E]]
    top: list[E]
    #: path -> (mode, uid, mtime in s) expected in the top layer dir; "." is the root
    attrs: dict[str, tuple[int, int, int]]
    #: path -> xattrs expected (user.* only)
    xattrs: dict[str, dict[str, bytes]] = field(default_factory=dict)


DEFAULT = (0o755, 0, 0)   # an implicit dir with nothing below: fixed, never the clock
INHERIT_CASES = [
    Inherit("an implicit dir takes the lower dir's attributes",
            [[d("a", 0o700, uid=5, mtime=1234, pax={"SCHILY.xattr.user.x": "1"}), f("a/f"), f("a/g")]],
            [f("a/.wh.f")], {"a": (0o700, 5, 1234)}, {"a": {"user.x": b"1"}}),
    Inherit("the root without a root entry takes the lower root's", [[d("./", 0o750, uid=3, mtime=1111)]],
            [f("x")], {".": (0o750, 3, 1111)}),
    Inherit("the root entry is kept", [[d("./", 0o750, uid=3, mtime=1111)]], [d("./", 0o711, mtime=7), f("x")],
            {".": (0o711, 0, 7)}),
    Inherit("from the topmost layer below", [[d("a", 0o711, mtime=1)], [d("a", 0o700, mtime=2)]], [f("a/x")],
            {"a": (0o700, 0, 2)}),
    Inherit("a whiteout below hides the dirs under it", [[d("a", 0o711, mtime=1)], [f(".wh.a")]], [f("a/x")],
            {"a": DEFAULT}),
    Inherit("an opaque dir below hides what is under it, not itself",
            [[d("a", 0o711), d("a/b", 0o700, mtime=5)], [d("a", 0o750, mtime=6), f("a/.wh..wh..opq")]],
            [f("a/b/x")], {"a": (0o750, 0, 6), "a/b": DEFAULT}),
    Inherit("a symlink below is not a dir", [[d("b", 0o700), sym("a", "b")]], [f("a/x")], {"a": DEFAULT}),
    Inherit("over a whiteout of its own layer: the lower dir is gone", [[d("a", 0o700, mtime=3)]],
            [f(".wh.a"), f("a/x")], {"a": DEFAULT}),
    Inherit("below an opaque marker that came first: nothing below shows", [[d("a", 0o700), d("a/b", 0o711)]],
            [f("a/.wh..wh..opq"), f("a/b/x")], {"a": (0o700, 0, T0), "a/b": DEFAULT}),
    Inherit("below an opaque marker that came after: made while the lower dir showed (as umoci)",
            [[d("a", 0o700), d("a/b", 0o711, mtime=4)]], [f("a/b/x"), f("a/.wh..wh..opq")],
            {"a": (0o700, 0, T0), "a/b": (0o711, 0, 4)}),
    Inherit("a dir the layer carries keeps its own", [[d("a", 0o700, uid=5)]], [d("a", 0o750, mtime=9), f("a/x")],
            {"a": (0o750, 0, 9)}),
    Inherit("a 255-byte name, absent from a layer between", [[d("L" * 255, 0o700, mtime=3)], [f("other")]],
            [f("L" * 255 + "/x")],
            {"L" * 255: (0o700, 0, 3)}),
    Inherit("an implicit dir in a setgid dir below takes the setgid bit and group",
            [[d("./", 0o2755, gid=9), d("g", 0o2775, gid=7)]], [f("g/h/x"), f("x/y")],
            {"g/h": (0o2755, 0, 0), "x": (0o2755, 0, 0)}),
    Inherit("a root entry after: dirs made before it took the root below", [[d("./", 0o755)]],
            [d("b/c"), d("./", 0o2755, mtime=5)], {".": (0o2755, 0, 5), "b": DEFAULT}),
    Inherit("nothing below: fixed defaults", [[f("other")]], [f("n/x")], {".": DEFAULT, "n": DEFAULT}),
]


@pytest.mark.parametrize("case", INHERIT_CASES, ids=[c.name for c in INHERIT_CASES])
def test_inherit_attributes(tmp_path: Path, case: Inherit) -> None:
    require_root()
    lowers = []
    for i, entries in enumerate(case.lowers):
        unpack(make_tar(entries), tmp_path / f"lower{i}")
        lowers.append(tmp_path / f"lower{i}")
    top = tmp_path / "top"
    stats = unpack(make_tar(case.top), top)
    inherit_attributes(top, stats.implicit_dirs, lowers)
    for path, (mode, uid, mtime) in case.attrs.items():
        st = os.lstat(top / path)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime_ns) == (mode, uid, mtime * 10**9), path
    for path, want in case.xattrs.items():
        assert {k: v for k, v in xattrs_of(top / path).items() if k.startswith("user.")} == want, path


# -- hostile tars -------------------------------------------------------------------------

OUTSIDE = f"/tmp/layerfs-test-outside-{uuid.uuid4().hex[:8]}"


@dataclass
class Hostile:
    name: str
    entries: list[E]
    #: the error, or None when the tar is accepted but must stay contained
    error: type[Exception] | None
    #: text the message must contain (the entry)
    says: str = ""
    #: a path that must not exist anywhere afterwards
    absent: str = OUTSIDE


HOSTILE_CASES = [
    Hostile("dotdot", [f("../x")], BadArchive, "'../x': the name escapes the layer root"),
    Hostile("absolute", [f(OUTSIDE + "/x")], BadArchive, "is absolute"),
    Hostile("dotdot in the middle", [f("a/../../x")], BadArchive, "'a/../../x': the name escapes"),
    Hostile("absolute symlink then write through it", [sym("evil", OUTSIDE), f("evil/file", b"pwned")],
            BadArchive, "'evil/file': parent 'evil' is a symlink"),
    Hostile("symlink to / then write through it", [sym("evil", "/"), f("evil" + OUTSIDE + "/f", b"in")], None),
    Hostile("relative symlink chain up", [sym("a", ".."), sym("b", "a/../.."), f("b/b/a/x", b"in")], None),
    Hostile("a cached parent reached through a symlink that was replaced",
            [d("x"), sym("x/l", "."), f("x/l/l", b"now a file"), f("x/l/z", b"must not land in x")],
            BadArchive, "'x/l/z': parent 'x/l' is not a directory"),
    Hostile("hardlink to /etc/passwd", [hard("x", "/etc/passwd")], BadArchive, "'x': the hard link target is absolute"),
    Hostile("hardlink to ../outside", [hard("x", "../outside")], BadArchive, "the hard link target escapes"),
    Hostile("hardlink through a symlink", [sym("s", "/etc"), hard("x", "s/passwd")], BadArchive,
            "'x': hard link target 's/passwd' is not an earlier entry"),
    Hostile("hardlink to a lower layer", [hard("x", "usr/bin/ls")], BadArchive, "not an earlier entry"),
    Hostile("hardlink to a directory", [d("dir"), hard("x", "dir")], BadArchive, "hard link to directory"),
    Hostile("bare whiteout prefix", [f(".wh.")], BadArchive, "invalid whiteout name '.wh.'"),
    Hostile("whiteout of dotdot", [d("a"), f("a/.wh..")], BadArchive, "invalid whiteout name"),
    Hostile("marker as a directory", [f(".wh.a/b")], BadArchive, "used as a directory"),
    Hostile("unknown type flag", [E("v", b"V")], BadArchive, "unknown type flag"),
    Hostile("root entry not a dir", [f("./", b"x")], BadArchive, "the root entry is not a directory"),
    Hostile("parent is a file", [f("a", b"x"), f("a/b")], BadArchive, "parent 'a' is not a directory"),
    Hostile("component too long", [f("x" * 256)], BadArchive, "longer than 255 bytes"),
    Hostile("whiteout of a 256-byte name", [f(".wh." + "x" * 256)], BadArchive, "longer than 255 bytes"),
    Hostile("huge PAX header", [f("f", pax={"SCHILY.xattr.user.big": "x" * (MAX_HEADER_BYTES + 16384)})],
            BadArchive, "exceeds the limit"),
]


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[Callable[[], None]]:
    """A dir beside ``dest`` (and the OUTSIDE path); returns a check that nothing changed."""
    side = tmp_path / "sentinel"
    side.mkdir()
    (side / "file").write_text("untouched")
    os.symlink("file", side / "link")
    before = snapshot(tmp_path)
    passwd = os.lstat("/etc/passwd")

    def check() -> None:
        now = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("dest")}
        assert now == before, "something outside dest changed"
        assert not os.path.lexists(OUTSIDE)
        after = os.lstat("/etc/passwd")
        assert (after.st_nlink, after.st_mtime_ns) == (passwd.st_nlink, passwd.st_mtime_ns)

    try:
        yield check
    finally:
        shutil.rmtree(OUTSIDE, ignore_errors=True)


@pytest.mark.parametrize("case", HOSTILE_CASES, ids=[c.name for c in HOSTILE_CASES])
def test_hostile(tmp_path: Path, sentinel: Callable[[], None], case: Hostile) -> None:
    data = make_tar(case.entries)
    dest = tmp_path / "dest"
    if case.error is None:
        unpack(data, dest)
        sentinel()
        return
    with pytest.raises(case.error) as info:
        unpack(data, dest)
    assert case.says in str(info.value)
    assert "\n" not in str(info.value)
    sentinel()


def test_entry_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More entries than MAX_ENTRIES (lowered here to 3): refused, naming the limit."""
    from layerfs._layer import unpack as _unpack
    monkeypatch.setattr(_unpack, "MAX_ENTRIES", 3)
    unpack(make_tar([f("a"), f("b"), f("c")]), tmp_path / "ok")
    with pytest.raises(BadArchive, match="more than 3 entries"):
        unpack(make_tar([f("a"), f("b"), f("c"), f("d")]), tmp_path / "dest")


def test_contained_writes_land_inside(tmp_path: Path) -> None:
    unpack(make_tar([sym("evil", "/"), f("evil/etc/passwd", b"mine"), sym("a", ".."), f("a/a/x", b"in")]),
           tmp_path / "dest")
    assert (tmp_path / "dest" / "etc" / "passwd").read_bytes() == b"mine"
    assert (tmp_path / "dest" / "x").read_bytes() == b"in"


# -- streams: compression, digests, truncation ------------------------------------------------

BODY = make_tar([d("etc"), f("etc/hostname", b"layerfs\n"), f("big", os.urandom(300_000) + bytes(3_000_000))])


def _gzip_members(data: bytes) -> bytes:
    third = len(data) // 3
    return b"".join(gzip.compress(data[i:j]) for i, j in ((0, third), (third, 2 * third), (2 * third, None)))


def _zstd_frames(data: bytes) -> bytes:
    skippable = (0x184D2A50).to_bytes(4, "little") + (4).to_bytes(4, "little") + b"skip"
    half = len(data) // 2
    c = zstandard.ZstdCompressor()
    return skippable + c.compress(data[:half]) + skippable + c.compress(data[half:])


@dataclass
class Stream:
    name: str
    blob: bytes
    tar: bytes = BODY
    media_type: str | None = None
    #: digest / size to announce (default: the blob's)
    digest: str | None = "auto"
    size: int | None = -1
    diff_id: str | None = None
    error: type[Exception] | None = None
    says: tuple[str, ...] = ()
    compression: str = ""


GOOD = gzip.compress(BODY)
ZSTD = zstandard.ZstdCompressor().compress(BODY)
STREAM_CASES = [
    Stream("gzip", GOOD, media_type="application/vnd.oci.image.layer.v1.tar+gzip", compression="gzip"),
    Stream("gzip, docker media type", GOOD, media_type="application/vnd.docker.image.rootfs.diff.tar.gzip",
           compression="gzip"),
    Stream("multi-member gzip", _gzip_members(BODY), compression="gzip"),
    Stream("zstd", ZSTD, media_type="application/vnd.oci.image.layer.v1.tar+zstd", compression="zstd"),
    Stream("zstd, multi-frame with skippable frames", _zstd_frames(BODY), compression="zstd"),
    Stream("plain", BODY, media_type="application/vnd.oci.image.layer.v1.tar", compression="plain"),
    Stream("gzip under a plain media type: magic wins", GOOD, media_type="application/vnd.oci.image.layer.v1.tar",
           compression="gzip"),
    Stream("0-byte blob is an empty layer", b"", tar=b"", compression="plain"),
    Stream("gzip of nothing is an empty layer", gzip.compress(b""), tar=b"", compression="gzip"),
    Stream("no digest or size announced", GOOD, digest=None, size=None, compression="gzip"),
    Stream("trailing bytes after the tar count in the diff_id", gzip.compress(BODY + b"trailing junk"),
           tar=BODY + b"trailing junk", compression="gzip"),
    Stream("trailing bytes missing from the diff_id", gzip.compress(BODY + b"junk"), diff_id=sha(BODY),
           error=DigestMismatch, says=("layer diff_id", sha(BODY), sha(BODY + b"junk"))),
    Stream("wrong diff_id", GOOD, diff_id=sha(b"other"), error=DigestMismatch,
           says=("layer diff_id", sha(b"other"), sha(BODY))),
    Stream("wrong digest", GOOD, digest=sha(b"other"), error=DigestMismatch,
           says=("layer blob", sha(b"other"), sha(GOOD))),
    Stream("blob longer than announced", GOOD + b"x", size=len(GOOD), digest=sha(GOOD), error=DigestMismatch,
           says=(f"more than {len(GOOD)}",)),
    Stream("truncated gzip, digest known", GOOD[: len(GOOD) // 2], digest=sha(GOOD), size=len(GOOD),
           error=DigestMismatch, says=(f"expected {len(GOOD)}",)),
    Stream("truncated gzip, nothing announced", GOOD[: len(GOOD) // 2], digest=None, size=None,
           error=BadArchive, says=("gzip",)),
    Stream("truncated zstd, digest known", ZSTD[: len(ZSTD) // 2], digest=sha(ZSTD), error=DigestMismatch,
           says=("layer blob", sha(ZSTD))),
    Stream("truncated zstd, nothing announced", ZSTD[: len(ZSTD) // 2], digest=None, size=None,
           error=(BadArchive, DigestMismatch)),  # type: ignore[arg-type]
    Stream("truncated tar", BODY[:5000], tar=BODY, digest=None, size=None, error=BadArchive,
           says=("truncated",)),
    Stream("tar cut inside a header", BODY[:1024 + 100], tar=BODY, digest=None, size=None, error=BadArchive),
    Stream("garbage header", BODY[:1536] + b"\x01" * 512 + BODY[2048:], tar=BODY[:1536] + b"\x01" * 512 + BODY[2048:],
           digest=None, size=None, error=BadArchive, says=("invalid header",)),
    Stream("corrupt gzip", GOOD[:200] + bytes(100) + GOOD[300:], digest=None, size=None, error=BadArchive,
           says=("gzip",)),
    Stream("not a layer media type", GOOD, media_type="application/vnd.oci.image.config.v1+json",
           error=BadArchive, says=("is not a layer",)),
]


@pytest.mark.parametrize("case", STREAM_CASES, ids=[c.name for c in STREAM_CASES])
def test_streams(tmp_path: Path, case: Stream) -> None:
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o700)
    digest = sha(case.blob) if case.digest == "auto" else case.digest
    size = len(case.blob) if case.size == -1 else case.size
    diff_id = case.diff_id or sha(case.tar)

    def run() -> LayerStats:
        return unpack_layer(io.BytesIO(case.blob), dest, diff_id=diff_id, digest=digest, size=size,
                            media_type=case.media_type)

    if case.error is not None:
        with pytest.raises(case.error) as info:
            run()
        for text in case.says:
            assert text in str(info.value)
        return
    stats = run()
    assert (stats.diff_id, stats.digest, stats.compressed_size) == (diff_id, sha(case.blob), len(case.blob))
    assert stats.compression == case.compression
    if case.tar:
        assert (dest / "etc" / "hostname").read_bytes() == b"layerfs\n"
        assert stats.size == len(b"layerfs\n") + 3_300_000
    else:
        assert os.listdir(dest) == [] and stats.entries == 0


def test_dest_must_be_empty(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        unpack_layer(io.BytesIO(BODY), tmp_path, diff_id=sha(BODY))


def test_parallel_unpacks(tmp_path: Path) -> None:
    """The store calls unpack_layer from several threads at once."""
    blobs = [gzip.compress(make_tar([f(f"t{i}/f{j}", os.urandom(2000)) for j in range(200)])) for i in range(4)]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            dest = tmp_path / f"l{i}"
            dest.mkdir(mode=0o700)
            unpack_layer(io.BytesIO(blobs[i]), dest, diff_id=sha(gzip.decompress(blobs[i])))
        except Exception as err:  # noqa: BLE001 - collected and asserted empty below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for i in range(4):
        assert len(os.listdir(tmp_path / f"l{i}" / f"t{i}")) == 200


# -- GNU tar as producer; setcap, sparse -------------------------------------------------------

def _populate(src: Path) -> None:
    """A tree with what real images carry (as root)."""
    (src / "bin").mkdir()
    (src / "bin" / "ping").write_bytes(b"\x7fELF ping")
    (src / "bin" / "su").write_bytes(b"\x7fELF su")
    os.chown(src / "bin" / "su", 0, 0)
    os.chmod(src / "bin" / "su", 0o4755)
    (src / "bin" / "sg").write_bytes(b"sgid")
    os.chmod(src / "bin" / "sg", 0o2711)
    os.link(src / "bin" / "su", src / "bin" / "su-link")
    (src / "tmp").mkdir()
    os.chmod(src / "tmp", 0o1777)
    (src / "home").mkdir()
    os.chown(src / "home", 1000, 1000)
    (src / "home" / "notes").write_text("user file")
    os.chown(src / "home" / "notes", 1000, 100)
    os.setxattr(src / "home" / "notes", "user.comment", b"\x00binary\xff")
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mkfifo(src / "fifo", 0o640)
    os.symlink("/bin/su", src / "abs-link")
    os.symlink("bin/missing", src / "dangling")
    deep = src / ("d" * 200) / ("e" * 255)
    deep.mkdir(parents=True)
    (deep / ("f" * 250)).write_text("deep")
    (src / os.fsdecode(b"na\xefve-\xff")).write_text("latin-1 name")
    with open(src / "sparse", "wb") as fh:
        fh.seek(64 << 20)
        fh.write(b"end")
        fh.seek(1 << 20)
        fh.write(b"middle")
    for p in [src, *src.rglob("*")]:
        os.utime(p, ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000), follow_symlinks=False)
    os.utime(src / "home" / "notes", ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))


def test_gnu_tar_layer(tmp_path: Path) -> None:
    require_root()
    require_tool("tar", "setcap", "getcap")
    src = tmp_path / "src"
    src.mkdir()
    _populate(src)
    subprocess.run(["setcap", "cap_net_bind_service=ep", str(src / "bin" / "ping")], check=True, timeout=30)
    layer = tmp_path / "layer.tar"
    subprocess.run(["tar", "--format=pax", "--xattrs", "--xattrs-include=*", "--sparse", "--numeric-owner",
                    "--sort=name", "-C", str(src), "-cf", str(layer), "."], check=True, timeout=60)
    blob = gzip.compress(layer.read_bytes(), compresslevel=1)
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o700)
    stats = unpack_layer(io.BytesIO(blob), dest, diff_id=sha(layer.read_bytes()), digest=sha(blob),
                         size=len(blob), media_type="application/vnd.oci.image.layer.v1.tar+gzip")
    assert snapshot(dest) == snapshot(src)
    caps = subprocess.run(["getcap", str(dest / "bin" / "ping")], capture_output=True, text=True, check=True)
    assert "cap_net_bind_service=ep" in caps.stdout
    st = os.lstat(dest / "sparse")
    assert st.st_size == (64 << 20) + 3
    assert st.st_blocks * 512 < 1 << 20, "the sparse file keeps its holes"
    assert stats.size == sum(os.lstat(p).st_size for p in src.rglob("*") if p.is_file() and not p.is_symlink()
                             and os.lstat(p).st_nlink == 1) + len(b"\x7fELF su")


SPARSE_FORMATS = [
    ("gnu (old sparse headers)", ["--format=gnu"]),
    ("pax sparse 0.0", ["--format=pax", "--sparse-version=0.0"]),
    ("pax sparse 0.1", ["--format=pax", "--sparse-version=0.1"]),
    ("pax sparse 1.0", ["--format=pax", "--sparse-version=1.0"]),
    ("ustar (name prefix field)", ["--format=ustar"]),
]


@pytest.mark.parametrize("name,flags", SPARSE_FORMATS, ids=[c[0] for c in SPARSE_FORMATS])
def test_gnu_tar_formats(tmp_path: Path, name: str, flags: list[str]) -> None:
    """Sparse files keep their holes and long names survive in every GNU tar format."""
    require_tool("tar")
    src = tmp_path / "src"
    long_dir = src / ("p" * 90) / ("q" * 60)
    long_dir.mkdir(parents=True)
    (long_dir / ("r" * 90)).write_bytes(b"long name")
    with open(src / "holes", "wb") as fh:
        for offset in (0, 8 << 20, 40 << 20):
            fh.seek(offset)
            fh.write(b"data" * 1000)
        fh.truncate(48 << 20)
    sparse = [] if "ustar" in name else ["--sparse"]
    layer = subprocess.run(["tar", *flags, *sparse, "--numeric-owner", "--sort=name", "-C", str(src), "-cf", "-",
                            "."], capture_output=True, check=True, timeout=60).stdout
    dest = tmp_path / "dest"
    unpack(layer, dest)
    def seconds(tree: dict[str, tuple[object, ...]]) -> dict[str, tuple[object, ...]]:
        # gnu and ustar headers hold whole seconds
        return {k: v[:9] + (v[9] // 10**9 if isinstance(v[9], int) else None,) + v[10:] for k, v in tree.items()}

    assert seconds(snapshot(dest, times=False)) == seconds(snapshot(src, times=False))
    if sparse:
        st = os.lstat(dest / "holes")
        assert st.st_size == 48 << 20 and st.st_blocks * 512 < 1 << 20, "holes kept"


# -- the overlay form, as the kernel reads it --------------------------------------------------

def test_kernel_overlay_over_unpacked_layers(tmp_path: Path) -> None:
    """Two layers unpacked by us, mounted by the kernel: whiteouts and opaque dirs obeyed."""
    require_root()
    require_tool("mount", "umount")
    base = make_tar([d("a"), f("a/x", b"x"), f("a/y", b"y"), f("b", b"b"), d("c"), f("c/z", b"z"),
                     sym("s", "a"), d("keep"), f("keep/k", b"k")])
    top = make_tar([f(".wh.b"), f("a/.wh.x"), f("c/.wh..wh..opq"), f("c/new", b"n"), f(".wh.s"),
                    d("keep"), f("keep/.wh.nothing")])
    l1, l2, mnt = tmp_path / "l1", tmp_path / "l2", tmp_path / "mnt"
    unpack(base, l1)
    unpack(top, l2)
    mnt.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={l2}:{l1}", str(mnt)], check=True,
                   timeout=30)
    try:
        assert sorted(os.listdir(mnt)) == ["a", "c", "keep"]
        assert os.listdir(mnt / "a") == ["y"]
        assert os.listdir(mnt / "c") == ["new"]
        assert os.listdir(mnt / "keep") == ["k"]
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)


# -- rootless -------------------------------------------------------------------------------

def test_rootless_process(tmp_path: Path) -> None:
    """As uid 65534 (a forked child drops privileges): no chown, but the owners and devices kept
    in user.containers.override_stat, user.overlay.opaque, 0/0 whiteouts still made (Linux >=
    5.8), no log line."""
    require_root()   # to become 65534
    data = make_tar([d("o"), f("o/.wh..wh..opq"), f(".wh.gone"), E("null", tarfile.CHRTYPE, dev=(1, 3)),
                     f("file", b"x", uid=123), E("fifo", tarfile.FIFOTYPE)])
    top = Path(tempfile.mkdtemp(prefix="layerfs-rootless-"))
    try:
        os.chmod(top, 0o755)
        dest = top / "dest"
        dest.mkdir(mode=0o700)
        os.chown(dest, 65534, 65534)
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:   # the child: drop privileges, unpack, report, never return into pytest
            status = 1
            try:
                os.close(rfd)
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                stats = unpack_layer(io.BytesIO(data), dest, diff_id=sha(data))
                os.write(wfd, f"ok {stats.skipped} {stats.whiteouts} {stats.opaque_dirs}".encode())
                status = 0
            except Exception as err:  # noqa: BLE001 - collected and asserted empty below
                os.write(wfd, f"error {err!r}".encode())
            finally:
                os._exit(status)
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r:
            report = r.read().decode()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, report
        assert report == "ok 0 1 1"
        assert os.getxattr(dest / "o", "user.overlay.opaque") == b"y"
        assert kind_of(dest / "gone") == "whiteout"
        assert os.getxattr(dest / "null", _override.XATTR) == b"0:0:0644:char-1-3"
        assert kind_of(dest / "fifo") == "fifo"
        assert os.lstat(dest / "file").st_uid == 65534
        assert os.getxattr(dest / "file", _override.XATTR) == b"123:0:0644:file"
    finally:
        shutil.rmtree(top)
