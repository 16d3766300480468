"""diff and commit of a writable mount's upper (``layerfs._layer.generate``, ``.changes``,
``layerfs._transfer.commit``).

- The conversion rules, one named case each, on uppers made by hand in the kernel's format: what
  the tar holds (``.wh.`` markers, ``.wh..wh..opq``, metacopy data, hard links, xattrs, times,
  order), and what is refused (``.wh.`` names, redirected directories, lost metacopy data).
- Round trips on uppers written by the real engines (layerfs's C engine, the kernel overlay with
  and without ``metacopy=on``): the generated tar, unpacked and stacked on the same lowers under
  a kernel overlay, shows what the writable mount showed, entry by entry, mtimes included; and
  ``changes`` lists what ``docker diff`` would (``_docker_diff``, moby's ``ChangesDirs`` on the
  two merged views).
- commit end to end: a writable mount over an image of a store, changes, commit, the new image
  mounted read-only equals what the container showed; the kernel's own upper likewise; the image
  exported as an OCI layout is accepted by skopeo, unpacked by umoci to the same tree, and loads
  back into another store as the same image.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard
from _docker_diff import docker_changes
from _images import BuiltImage, busybox_image, edge_image  # noqa: F401
from _oracles import blob_path, kernel_overlay, skopeo_copy, umoci_unpack
from _trees import Tree, assert_same_tree, snapshot
from _upper import Dir, Fifo, File, HardLink, Link, Spec, Whiteout, layerfs_writable, make_layer, run_op
from _upper import kernel_overlay as kernel_writable
from conftest import require_fuse, require_root, require_tool

from layerfs import LayerfsError, Store
from layerfs._layer.changes import changes
from layerfs._layer.compress import Compression
from layerfs._layer.generate import GeneratedLayer, generate_layer, pax_time
from layerfs._layer.unpack import unpack_layer
from layerfs._mount import daemon as _daemon
from layerfs._mount import upper as _upper_mod
from layerfs._transfer.commit import apply_changes, commit, rfc3339
from layerfs._transfer.load import load

T0 = 1_000_000_000
#: A valid security.capability (revision 2, effective, cap_net_bind_service).
CAP_V2 = b"\x01\x00\x00\x02" + b"\x00\x04\x00\x00" + bytes(12)


def _tar(blob: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tf:
        return tf.getmembers()


def _data(blob: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tf:
        f = tf.extractfile(name)
        assert f is not None
        return f.read()


def _generate(upper: Path, lowers: list[Path],
              compression: Compression = Compression.PLAIN) -> tuple[bytes, GeneratedLayer]:
    out = io.BytesIO()
    layer = generate_layer(upper, lowers, out, compression=compression)
    return out.getvalue(), layer


def _names(members: list[tarfile.TarInfo]) -> list[str]:
    kinds = {tarfile.DIRTYPE: "dir", tarfile.REGTYPE: "reg", tarfile.LNKTYPE: "link", tarfile.SYMTYPE: "sym",
             tarfile.FIFOTYPE: "fifo", tarfile.CHRTYPE: "chr", tarfile.BLKTYPE: "blk"}
    return [f"{m.name} {kinds[m.type]}" for m in members]


# ---------------------------------------------------------------------------------------------
# The rules, one case each: lowers (base first), an upper made by hand, the tar's entries.

@dataclass(frozen=True)
class Case:
    lowers: list[Spec]
    upper: Spec
    entries: list[str]
    changes: list[str]


CASES: dict[str, Case] = {
    "whiteout of a lower file": Case(
        [{"a": File(b"a"), "gone": File(b"g")}], {"gone": Whiteout()},
        [". dir", ".wh.gone reg"], ["D /gone"]),
    "whiteout of nothing is left out": Case(
        [{"a": File(b"a")}], {"never": Whiteout()}, [". dir"], []),
    "whiteout in a directory over a lower directory": Case(
        [{"d": Dir(), "d/f": File(b"f"), "d/g": File(b"g")}], {"d": Dir(), "d/f": Whiteout()},
        [". dir", "d dir", "d/.wh.f reg"], ["C /d", "D /d/f"]),
    "whiteout hidden by a lower whiteout is left out": Case(
        [{"x": File(b"x")}, {"x": Whiteout()}], {"x": Whiteout()}, [". dir"], []),
    "opaque directory over a lower directory": Case(
        [{"d": Dir(), "d/old": File(b"o"), "d/old2": File(b"o")}],
        {"d": Dir(opaque=True), "d/new": File(b"n"), "d/old": Whiteout()},
        [". dir", "d dir", "d/.wh..wh..opq reg", "d/new reg"], ["C /d", "A /d/new", "D /d/old", "D /d/old2"]),
    "opaque directory over nothing has no marker": Case(
        [{"a": File(b"a")}], {"n": Dir(opaque=True), "n/x": File(b"x")},
        [". dir", "n dir", "n/x reg"], ["A /n", "A /n/x"]),
    "directory over a lower file replaces it": Case(
        [{"f": File(b"f")}], {"f": Dir(opaque=True), "f/x": File(b"x")},
        [". dir", "f dir", "f/x reg"], ["C /f", "A /f/x"]),
    "file over a lower directory replaces it": Case(
        [{"d": Dir(), "d/x": File(b"x")}], {"d": File(b"now a file")},
        [". dir", "d reg"], ["C /d"]),
    "lower directory below a whiteout does not merge": Case(
        [{"d": Dir(), "d/x": File(b"x")}, {"d": Whiteout()}], {"d": Dir(), "d/y": File(b"y")},
        [". dir", "d dir", "d/y reg"], ["A /d", "A /d/y"]),
    "hard links in the upper": Case(
        [{"a": File(b"a")}], {"n1": File(b"n"), "n2": HardLink("n1"), "z": HardLink("n1")},
        [". dir", "n1 reg", "n2 link", "z link"], ["A /n1", "A /n2", "A /z"]),
    "names in byte order, depth first": Case(
        [{}], {"b": File(b""), "B": File(b""), "a": Dir(), "a/z": File(b""), "a-b": File(b""),
               os.fsdecode(b"\xc3\xa9"): File(b"")},
        [". dir", "B reg", "a dir", "a/z reg", "a-b reg", "b reg", "\xe9 reg"],
        ["A /B", "A /a", "A /a-b", "A /a/z", "A /b", "A /\xe9"]),
    "symlinks, fifos and devices": Case(
        [{"l": Link("x")}], {"l": Link("/etc/passwd"), "f": Fifo(), "s": Link("d/../..")},
        [". dir", "f fifo", "l sym", "s sym"], ["A /f", "C /l", "A /s"]),
    "unchanged copy-up is listed nowhere but the tar": Case(
        [{"d": Dir(), "d/x": File(b"x")}], {"d": Dir()}, [". dir", "d dir"], []),
}


def _make_upper(path: Path, spec: Spec) -> Path:
    """An upper in the kernel's format (make_layer writes 0/0 whiteouts and trusted.overlay.opaque)."""
    return make_layer(path, spec)


@pytest.fixture
def root_only() -> None:
    require_root()


@pytest.mark.parametrize("name", CASES, ids=list(CASES))
def test_rule(name: str, tmp_path: Path, root_only: None) -> None:
    case = CASES[name]
    lowers = [make_layer(tmp_path / f"l{i}", spec) for i, spec in enumerate(case.lowers)]
    upper = _make_upper(tmp_path / "upper", case.upper)
    blob, _ = _generate(upper, lowers)
    members = _tar(blob)
    assert _names(members) == case.entries
    assert [str(c) for c in changes(upper, lowers)] == case.changes
    for m in members:
        if os.path.basename(m.name).startswith(".wh."):
            assert m.isreg() and m.size == 0
        if m.name.endswith(".wh..wh..opq"):
            assert m.mode == 0o755  # the directory's permission bits
        elif m.name.startswith(".wh.") or "/.wh." in m.name:
            assert m.mode == 0o600  # moby's whiteout mode
    links = {m.name: m.linkname for m in members if m.islnk()}
    assert all(target == "n1" for target in links.values())


def test_rule_xattr_whiteouts(tmp_path: Path, root_only: None) -> None:
    """An empty file with overlay.whiteout in a directory marked overlay.opaque=x is a whiteout;
    the directory is not opaque (the kernel's overlayfs.rst "Nesting overlayfs mounts")."""
    lower = make_layer(tmp_path / "l", {"d": Dir(), "d/f": File(b"f"), "d/g": File(b"g")})
    upper = make_layer(tmp_path / "u", {"d": Dir(), "d/f": File(b"", xattrs={"trusted.overlay.whiteout": b""}),
                                        "d/n": File(b"", xattrs={"user.k": b"v"})})
    os.setxattr(upper / "d", "trusted.overlay.opaque", b"x")
    members = _tar(_generate(upper, [lower])[0])
    assert _names(members) == [". dir", "d dir", "d/.wh.f reg", "d/n reg"]
    assert [str(c) for c in changes(upper, [lower])] == ["C /d", "D /d/f", "A /d/n"]


def test_rule_metacopy(tmp_path: Path, root_only: None) -> None:
    """A metadata-only copy-up carries the upper's metadata and the lower file's data."""
    lower = make_layer(tmp_path / "l", {"d": Dir(), "d/big": File(b"lower data\n" * 1000, mode=0o644)})
    upper = make_layer(tmp_path / "u", {"d": Dir()})
    f = upper / "d" / "big"
    f.touch()
    os.truncate(f, 11000)
    os.setxattr(f, "trusted.overlay.metacopy", b"")
    os.chmod(f, 0o600)
    os.utime(f, ns=(T0 * 10**9, T0 * 10**9))
    blob = _generate(upper, [lower])[0]
    big = {m.name: m for m in _tar(blob)}["d/big"]
    assert big.mode == 0o600 and _data(blob, "d/big") == b"lower data\n" * 1000
    assert not any(k.startswith("SCHILY.xattr.trusted.overlay") for k in big.pax_headers)
    assert [str(c) for c in changes(upper, [lower])] == ["C /d", "C /d/big"]


def test_rule_metacopy_never_follows_a_lower_symlink(tmp_path: Path, root_only: None) -> None:
    """The data of a metacopy file is looked up in the lowers by the merge rules: a lower
    symlink on the way is never followed, whatever it points at."""
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "f").write_bytes(b"not for the layer")
    lower = make_layer(tmp_path / "l", {"d": Link(str(secret))})
    upper = make_layer(tmp_path / "u", {"d": Dir()})
    f = upper / "d" / "f"
    f.touch()
    os.truncate(f, 17)
    os.setxattr(f, "trusted.overlay.metacopy", b"")
    with pytest.raises(LayerfsError, match=r"upper /d/f: a metadata-only copy-up whose data \(/d/f\)"):
        _generate(upper, [lower])


def test_rule_xattrs_times_and_root(tmp_path: Path, root_only: None) -> None:
    lower = make_layer(tmp_path / "l", {"a": File(b"a")})
    upper = make_layer(tmp_path / "u", {"x": File(b"x", xattrs={"user.bin": b"\xff\x00v", "user.k": b"v",
                                                                "trusted.overlay.origin": b"o",
                                                                "security.capability": CAP_V2})})
    os.utime(upper / "x", ns=(5, 1_600_000_000_123_456_700))
    os.chmod(upper, 0o711)
    members = {m.name: m for m in _tar(_generate(upper, [lower])[0])}
    x = members["x"]
    assert {k: v for k, v in x.pax_headers.items() if k.startswith("SCHILY.")} == {
        "SCHILY.xattr.user.bin": "\udcff\x00v", "SCHILY.xattr.user.k": "v",
        "SCHILY.xattr.security.capability": CAP_V2.decode("utf-8", "surrogateescape")}
    assert x.pax_headers["mtime"] == "1600000000.1234567"  # Go's formatPAXTime
    assert members["./"].mode == 0o711 if "./" in members else members["."].mode == 0o711
    assert pax_time(-1_500_000_000) == "-1.5" and pax_time(3 * 10**9) == "3"


def test_rule_devices_and_large_ids(tmp_path: Path, root_only: None) -> None:
    """Devices keep their numbers; ids past the ustar field (7 octal digits) go into PAX records,
    and the unpacker restores both."""
    upper = make_layer(tmp_path / "u", {"f": File(b"f", uid=3_000_000, gid=3_000_001)})
    os.mknod(upper / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(upper / "loop", stat.S_IFBLK | 0o660, os.makedev(7, 0))
    blob, layer = _generate(upper, [])
    members = {m.name: m for m in _tar(blob)}
    assert (members["null"].type, members["null"].devmajor, members["null"].devminor) == (tarfile.CHRTYPE, 1, 3)
    assert (members["loop"].type, members["loop"].devmajor, members["loop"].devminor) == (tarfile.BLKTYPE, 7, 0)
    assert (members["f"].uid, members["f"].gid) == (3_000_000, 3_000_001)
    assert members["f"].pax_headers["uid"] == "3000000"
    new = tmp_path / "new"
    new.mkdir(mode=0o700)
    unpack_layer(io.BytesIO(blob), new, diff_id=layer.diff_id)
    assert_same_tree(snapshot(new), snapshot(upper), names=("unpacked", "upper"))


def test_rule_capability_v3_becomes_v2(tmp_path: Path, root_only: None) -> None:
    """moby's ReadSecurityXattrToTarHeader: a namespaced (revision 3) capability is written as
    revision 2, its root uid dropped."""
    upper = make_layer(tmp_path / "u", {"x": File(b"x")})
    v3 = b"\x01\x00\x00\x03" + b"\x00\x04\x00\x00" + bytes(12) + (1000).to_bytes(4, "little")
    os.setxattr(upper / "x", "security.capability", v3)
    value = os.getxattr(upper / "x", "security.capability")
    members = {m.name: m for m in _tar(_generate(upper, [])[0])}
    written = members["x"].pax_headers["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape")
    assert written == (CAP_V2 if value[3] == 3 else value)


def test_refused_wh_names(tmp_path: Path, root_only: None) -> None:
    upper = make_layer(tmp_path / "u", {"d": Dir(), "d/.wh.x": File(b"")})
    with pytest.raises(LayerfsError, match=r"upper /d/\.wh\.x: a name starting with \.wh\. cannot be stored"):
        _generate(upper, [])


def test_refused_long_whiteout(tmp_path: Path, root_only: None) -> None:
    name = "n" * 253
    lower = make_layer(tmp_path / "l", {name: File(b"x")})
    upper = make_layer(tmp_path / "u", {name: Whiteout()})
    with pytest.raises(LayerfsError, match=r"the whiteout of a name longer than 251 bytes"):
        _generate(upper, [lower])
    assert [str(c) for c in changes(upper, [lower])] == [f"D /{name}"]


def test_refused_redirected_directory(tmp_path: Path, root_only: None) -> None:
    lower = make_layer(tmp_path / "l", {"d": Dir(), "d/x": File(b"x")})
    upper = make_layer(tmp_path / "u", {"e": Dir(), "d": Whiteout()})
    os.setxattr(upper / "e", "trusted.overlay.redirect", b"/d")
    for fn in (lambda: _generate(upper, [lower]), lambda: changes(upper, [lower])):
        with pytest.raises(LayerfsError, match=r"upper /e: a directory renamed with redirect_dir"):
            fn()


def test_sockets_are_left_out(tmp_path: Path, root_only: None) -> None:
    import socket

    upper = make_layer(tmp_path / "u", {"f": File(b"f")})
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(os.fspath(upper / "sock"))
    blob, layer = _generate(upper, [])
    assert _names(_tar(blob)) == [". dir", "f reg"]
    assert layer.skipped == ("/sock",)


@pytest.mark.parametrize("compression", list(Compression), ids=[c.value for c in Compression])
def test_digests_and_compression(compression: Compression, tmp_path: Path, root_only: None) -> None:
    """The diff ID is the sha256 of the tar, the digest that of the blob; the same upper gives
    the same bytes again; the media type names the compression."""
    upper = make_layer(tmp_path / "u", {"d": Dir(), "d/f": File(os.urandom(3 << 20)), "g": File(b"g" * 100)})
    blob, layer = _generate(upper, [], compression)
    again, _ = _generate(upper, [], compression)
    assert blob == again
    if compression is Compression.GZIP:
        import gzip
        tar = gzip.decompress(blob)
    elif compression is Compression.ZSTD:
        tar = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    else:
        tar = blob
    assert layer.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert layer.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert layer.size == len(blob)
    assert layer.media_type.endswith({"plain": ".tar", "gzip": ".tar+gzip", "zstd": ".tar+zstd"}[compression.value])
    assert tar.endswith(bytes(1024)) and len(tar) % 512 == 0


def test_streams_without_holding_the_layer(tmp_path: Path, root_only: None) -> None:
    """A 256 MiB (sparse) file goes through block by block: Python never holds more than a few MiB."""
    import tracemalloc

    upper = make_layer(tmp_path / "u", {"f": File(b"")})
    with open(upper / "f", "r+b") as f:
        f.truncate(256 << 20)
        f.seek(100 << 20)
        f.write(b"middle")

    class Null:
        def write(self, data: bytes) -> int:
            return len(data)

    tracemalloc.start()
    try:
        layer = generate_layer(upper, [], Null(), compression=Compression.ZSTD)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak} bytes"
    assert layer.entries == 2


# ---------------------------------------------------------------------------------------------
# Round trips on uppers the real engines wrote

BASE: Spec = {
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
    "big": File(b"0123456789" * 30000),
}
TOP: Spec = {
    "t": File(b"top\n"),
    "gone": Whiteout(),
    "opq": Dir(opaque=True),
    "opq/new": File(b"new\n"),
    "d": Dir(mode=0o755, mtime=1_100_000_000),
    "d/t2": File(b"t2\n"),
}

Op = tuple[object, ...]

SCENARIOS: dict[str, list[Op]] = {
    "files": [
        ("write", "new", b"hello\n", "w"), ("write", "a", b"more\n", "a"), ("write", "t", b"TOP", "r+"),
        ("truncate", "big", 7), ("unlink", "d/g"), ("write", "tmp", b"x", "w"), ("unlink", "tmp"),
        ("link", "new", "new-link"), ("link", "hl1", "hl3"), ("symlink", "../etc/passwd", "d/sym"),
        ("mkfifo", "d/ff"), ("write", "hl2", b"broken link\n", "a"), ("utime", "new", 1_500_000_000_123_456_789),
    ],
    "directories": [
        ("rmtree", "d"), ("mkdir", "d"), ("write", "d/f", b"new f\n", "w"), ("rmtree", "e"), ("mkdir", "e"),
        ("mkdir", "n"), ("mkdir", "n/m"), ("write", "n/m/deep", b"deep\n", "w"), ("rename", "t", "n/t", 0),
        ("unlink", "opq/new"), ("chmod", "n", 0o700), ("mkdir", "gone"), ("write", "gone/x", b"x", "w"),
    ],
    "metadata": [
        ("chmod", "big", 0o600), ("chown", "d/f", 12, 34), ("utime", "a", 1_234_567_890_123_456_789),
        ("setxattr", "d/g", "user.new", b"1"), ("removexattr", "d/f", "user.k"), ("chmod", "d", 0o700),
        ("setxattr", "b", "security.capability", CAP_V2), ("chown", "sl", 5, 6), ("chmod", "hl1", 0o640),
        ("chown", "e/only", 3_000_000, 3_000_000),
        ("utime", "d/sub/x", 1_000_000_000_000_000_000),
    ],
}


def _run_ops(root: Path, ops: list[Op]) -> None:
    for op in ops:
        result = run_op(root, op)
        assert result[0] == "ok", f"{op}: {result}"


@pytest.fixture
def stack(tmp_path: Path) -> list[Path]:
    """Two layer dirs in overlay form, base first."""
    require_root()
    return [make_layer(tmp_path / "l1", BASE), make_layer(tmp_path / "l2", TOP)]


@contextlib.contextmanager
def _writable(engine: str, lowers_top_first: list[Path], upper: Path, work: Path, mnt: Path) -> Iterator[Path]:
    if engine == "layerfs":
        require_fuse()
        with layerfs_writable(lowers_top_first, upper, work, mnt):
            yield mnt
    else:
        with kernel_writable(lowers_top_first, upper, work, mnt, options="metacopy=on" if engine == "kernel-metacopy"
                             else ""):
            yield mnt


ENGINES = ("layerfs", "kernel", "kernel-metacopy")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=list(SCENARIOS))
def test_round_trip(scenario: str, engine: str, stack: list[Path], tmp_path: Path) -> None:
    """Generate, unpack, stack: the kernel overlay of the lowers plus the new layer shows what the
    writable mount showed (mtimes included); changes() is what docker diff prints."""
    upper, work, mnt = tmp_path / "upper", tmp_path / "work", tmp_path / "mnt"
    upper.mkdir()
    work.mkdir()
    top_first = stack[::-1]
    with _writable(engine, top_first, upper, work, mnt):
        _run_ops(mnt, SCENARIOS[scenario])
        container = snapshot(mnt)
    with kernel_overlay(top_first, tmp_path / "image") as image_mnt:
        image = snapshot(image_mnt)
    if engine != "kernel" and scenario == "metadata":  # the case under test is there
        assert any("trusted.overlay.metacopy" in os.listxattr(p, follow_symlinks=False)
                   for p in upper.rglob("*") if p.is_file() and not p.is_symlink())
    assert [str(c) for c in changes(upper, stack)] == docker_changes(container, image)
    blob = tmp_path / "layer.tar.gz"
    with open(blob, "wb") as f:
        layer = generate_layer(upper, stack, f)
    new = tmp_path / "new"
    new.mkdir(mode=0o700)
    with open(blob, "rb") as f:
        unpack_layer(f, new, diff_id=layer.diff_id, digest=layer.digest, size=layer.size)
    with kernel_overlay([new, *top_first], tmp_path / "committed") as committed:
        assert_same_tree(snapshot(committed), container, names=("lowers + generated layer", f"{engine} container"))


# ---------------------------------------------------------------------------------------------
# commit, end to end through a store

CONTAINER_OPS: list[Op] = [
    ("write", "etc/passwd", b"user:x:1000:1000::/home/user:/bin/sh\n", "a"), ("mkdir", "home"),
    ("mkdir", "home/user"), ("write", "home/user/notes", b"notes\n", "w"), ("link", "home/user/notes", "home/n2"),
    ("symlink", "user/notes", "home/latest"), ("chmod", "bin/busybox", 0o4711), ("chown", "etc/group", 7, 8),
    ("utime", "etc/group", 1_700_000_000_987_654_321), ("setxattr", "etc/passwd", "user.note", b"\xffbin"),
    ("mkfifo", "home/pipe"), ("unlink", "bin/cat"), ("write", "tmp-file", b"x" * 70000, "w"),
]
EDGE_OPS: list[Op] = [
    ("write", "edge/hl1", b"through hl1\n", "a"), ("chmod", "edge/setuid", 0o755), ("unlink", "edge/fifo"),
    ("rmtree", "edge/deep"), ("mkdir", "edge/deep"), ("write", "edge/deep/new", b"n\n", "w"),
    ("truncate", "edge/sparse", 1 << 20), ("chown", "edge/uid3000000", 1, 1), ("rmtree", "opq"),
    ("write", "edge/xattr", b"changed\n", "w"), ("rename", "mixed/file", "mixed/moved", 0),
]


@dataclass
class Based:
    store: Store
    image: BuiltImage
    image_id: str


def _load(store_root: Path, image: BuiltImage) -> Based:
    store = Store(store_root)
    [loaded] = load(store, image.source)
    # load keeps the manifest it read, as pull does: a commit needs its layer descriptors
    assert loaded.manifest_digest is not None and store.has_blob(loaded.manifest_digest)
    return Based(store, image, loaded.id)


@contextlib.contextmanager
def _mounted(store: Store, name: str, mnt: Path, upper: tuple[Path, Path] | None = None) -> Iterator[Path]:
    mnt.mkdir(parents=True, exist_ok=True)
    checked = _upper_mod.check(*upper) if upper else None
    _daemon.mount(store, name, mnt, engine="c", upper=checked)
    try:
        yield mnt
    finally:
        _daemon.umount(mnt)


def _container(based: Based, tmp_path: Path, ops: list[Op]) -> tuple[Path, Tree]:
    """A writable layerfs mount over the image, ``ops`` run in it; returns its upper and view."""
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    with _mounted(based.store, based.image_id, tmp_path / "container", (upper, work)) as mnt:
        _run_ops(mnt, ops)
        view = snapshot(mnt)
    return upper, view


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_commit_shows_what_the_container_showed(compress: str, edge_image: BuiltImage, tmp_path: Path) -> None:
    require_fuse()
    based = _load(tmp_path / "store", edge_image)
    upper, container = _container(based, tmp_path, EDGE_OPS)
    t = 1_750_000_000_250_000_000
    image = commit(based.store, upper, based.image_id, "layerfs-test/committed:1", message="edge changes",
                   compress=compress, author="me <me@example.com>", changes=["ENV A=1", 'CMD ["sh"]'],
                   created_by="/bin/sh", now_ns=t)
    assert based.store.get("layerfs-test/committed:1").id == image.id
    assert list(image.diff_ids[:-1]) == list(edge_image.diff_ids) and len(image.diff_ids) == 5
    with _mounted(based.store, "layerfs-test/committed:1", tmp_path / "committed") as mnt:
        assert_same_tree(snapshot(mnt), container, names=("committed image", "container"))
    config = json.loads(based.store.read_blob(image.id))
    base_config = edge_image.config()
    assert config["created"] == rfc3339(t) == "2025-06-15T15:06:40.25Z"
    assert config["author"] == "me <me@example.com>"
    assert config["history"][:-1] == base_config["history"]
    assert config["history"][-1] == {"created": rfc3339(t), "author": "me <me@example.com>", "created_by": "/bin/sh",
                                     "comment": "edge changes"}
    assert config["config"]["Cmd"] == ["sh"] and "A=1" in config["config"]["Env"]
    assert config["rootfs"]["diff_ids"] == list(image.diff_ids)
    assert image.manifest_digest is not None
    manifest = json.loads(based.store.read_blob(image.manifest_digest))
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["digest"] == image.id
    assert manifest["layers"][:-1] == [{"mediaType": d["mediaType"], "digest": d["digest"], "size": d["size"]}
                                       for d in edge_image.manifest()["layers"]]
    assert manifest["layers"][-1]["mediaType"] == f"application/vnd.oci.image.layer.v1.tar+{compress}"
    # the blob is not kept, but the same upper gives it again, byte for byte
    with open(tmp_path / "again", "wb") as f:
        again = generate_layer(upper, based.store.layer_dirs(based.store.get(based.image_id)), f,
                               compression=Compression(compress))
    assert (again.digest, again.size, again.diff_id) == (manifest["layers"][-1]["digest"],
                                                         manifest["layers"][-1]["size"], image.diff_ids[-1])


def test_commit_of_the_kernel_upper(busybox_image: BuiltImage, tmp_path: Path) -> None:
    """An upper the kernel overlay wrote (``mount -t overlay`` over the store's layer dirs)
    commits to an image whose mount shows what the kernel showed."""
    require_fuse()
    based = _load(tmp_path / "store", busybox_image)
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    lowers = based.store.layer_dirs(based.store.get(based.image_id))
    empty = tmp_path / "empty"
    empty.mkdir()
    with kernel_writable([*lowers[::-1], empty], upper, work, tmp_path / "container") as mnt:
        _run_ops(mnt, CONTAINER_OPS)
        container = snapshot(mnt)
    assert [str(c) for c in changes(upper, lowers)][:4] == ["C /bin", "C /bin/busybox", "D /bin/cat", "C /etc"]
    image = commit(based.store, upper, based.image_id, "layerfs-test/kernel")
    with _mounted(based.store, image.id, tmp_path / "committed") as mnt:
        assert_same_tree(snapshot(mnt), container, names=("committed image", "kernel container"))


def _export(store: Store, base: BuiltImage, image_id: str, blob: Path, layout: Path, tag: str) -> None:
    """An OCI layout holding the committed image: the base image's blobs, the regenerated layer
    blob, and the config and manifest from the store."""
    shutil.copytree(base.layout, layout)
    image = store.get(image_id)
    assert image.manifest_digest is not None
    manifest_data = store.read_blob(image.manifest_digest)
    manifest = json.loads(manifest_data)
    new = manifest["layers"][-1]
    shutil.copyfile(blob, blob_path(layout, new["digest"]))
    blob_path(layout, image.id).write_bytes(store.read_blob(image.id))
    blob_path(layout, image.manifest_digest).write_bytes(manifest_data)
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": manifest["mediaType"], "digest": image.manifest_digest,
                            "size": len(manifest_data), "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (layout / "index.json").write_text(json.dumps(index))


def test_committed_image_is_accepted_by_skopeo_and_umoci(busybox_image: BuiltImage, tmp_path: Path) -> None:
    """Exported as an OCI layout: skopeo copies it (checking every digest), umoci unpacks it to
    what the layerfs mount shows, and a load into another store gives the same image and layers."""
    require_fuse()
    require_tool("skopeo", "umoci")
    based = _load(tmp_path / "store", busybox_image)
    upper, container = _container(based, tmp_path, CONTAINER_OPS)
    image = commit(based.store, upper, based.image_id, "layerfs-test/exported:2")
    blob = tmp_path / "blob"
    with open(blob, "wb") as f:
        generate_layer(upper, based.store.layer_dirs(based.store.get(based.image_id)), f)
    layout = tmp_path / "layout"
    _export(based.store, busybox_image, image.id, blob, layout, "committed")
    skopeo_copy(f"oci:{layout}:committed", f"oci:{tmp_path / 'copy'}:committed")
    rootfs = umoci_unpack(tmp_path / "copy", "committed", tmp_path / "bundle")
    with _mounted(based.store, image.id, tmp_path / "committed") as mnt:
        ours = snapshot(mnt)
    assert_same_tree(snapshot(rootfs), ours, names=("umoci unpack", "layerfs mount"))
    assert_same_tree(ours, container, names=("layerfs mount", "container"))
    other = Store(tmp_path / "other")
    [loaded] = load(other, f"oci:{layout}:committed")
    assert loaded.id == image.id and loaded.diff_ids == image.diff_ids
    assert_same_tree(snapshot(other.layer_dirs(loaded)[-1], overlay_xattrs=True),
                     snapshot(based.store.layer_dirs(image)[-1], overlay_xattrs=True), names=("load", "commit"))


def test_commit_refuses_and_leaves_the_store_as_it_was(busybox_image: BuiltImage, tmp_path: Path) -> None:
    require_root()
    based = _load(tmp_path / "store", busybox_image)
    upper = make_layer(tmp_path / "upper", {"etc": Dir(), "etc/.wh.x": File(b"")})
    before = sorted(p.name for p in (based.store.root / "layers").iterdir())
    with pytest.raises(LayerfsError, match=r"^commit: upper /etc/\.wh\.x: a name starting with \.wh\."):
        commit(based.store, upper, based.image_id, "layerfs-test/bad")
    with pytest.raises(LayerfsError, match=r"^commit: --change 'FROM x': FROM is not an instruction"):
        commit(based.store, tmp_path / "upper", based.image_id, changes=["FROM x"])
    with pytest.raises(LayerfsError, match=r"--compress bzip2: unknown compression"):
        commit(based.store, upper, based.image_id, compress="bzip2")
    assert sorted(p.name for p in (based.store.root / "layers").iterdir()) == before
    assert [i.id for i in based.store.images()] == [based.image_id]
    assert not [p for p in based.store.tmp_dir.iterdir() if not p.name.startswith("hold-")]


def test_commit_untagged_and_twice(busybox_image: BuiltImage, tmp_path: Path) -> None:
    """Without a reference the image is only an ID (docker's dangling image); committing the same
    upper again reuses the layer."""
    require_root()
    based = _load(tmp_path / "store", busybox_image)
    upper = make_layer(tmp_path / "upper", {"new": File(b"n")})
    first = commit(based.store, upper, based.image_id, now_ns=1)
    second = commit(based.store, upper, based.image_id, "layerfs-test/twice", now_ns=2)
    assert first.repo_tags == () and second.repo_tags == ("layerfs-test/twice:latest",)
    assert first.diff_ids == second.diff_ids and first.id != second.id


# ---------------------------------------------------------------------------------------------
# --change

def test_apply_changes() -> None:
    config: dict[str, object] = {"Env": ["PATH=/bin", "A=0"], "Cmd": ["sh"], "WorkingDir": "/srv"}
    apply_changes(config, [
        "ENV A=1 B=\"two words\"", "ENV C the rest of it", "LABEL x=1 'y z'=2", "EXPOSE 80 53/udp 8000-8001",
        "WORKDIR app", "USER nobody", "VOLUME [\"/data\", \"/logs\"]", "VOLUME /cache", "STOPSIGNAL SIGINT",
        "onbuild run make", "ENTRYPOINT /entry --flag", "HEALTHCHECK --interval=1m30s --retries=3 CMD curl -f x",
    ])
    assert config["Env"] == ["PATH=/bin", "A=1", "B=two words", "C=the rest of it"]
    assert config["Labels"] == {"x": "1", "y z": "2"}
    assert config["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}, "8000/tcp": {}, "8001/tcp": {}}
    assert config["WorkingDir"] == "/srv/app" and config["User"] == "nobody" and config["StopSignal"] == "SIGINT"
    assert config["Volumes"] == {"/data": {}, "/logs": {}, "/cache": {}}
    assert config["OnBuild"] == ["RUN make"]
    assert config["Entrypoint"] == ["/bin/sh", "-c", "/entry --flag"] and config["Cmd"] is None
    assert config["Healthcheck"] == {"Interval": 90_000_000_000, "Retries": 3, "Test": ["CMD-SHELL", "curl -f x"]}
    kept: dict[str, object] = {}
    apply_changes(kept, ['CMD ["a"]', 'ENTRYPOINT ["b"]', "HEALTHCHECK NONE"])
    assert kept == {"Cmd": ["a"], "Entrypoint": ["b"], "Healthcheck": {"Test": ["NONE"]}}
    for bad, why in [("ADD x y", "not an instruction"), ("ENV", "requires an argument"), ("EXPOSE 80/xx", "proto"),
                     ("ENV A", "needs a value"), ("HEALTHCHECK --interval=5x CMD x", "invalid duration")]:
        with pytest.raises(LayerfsError, match=why):
            apply_changes({}, [bad])

